//! What a held message costs the receiving host must stay near what it is charged. The NATS
//! client cuts each payload out of its read buffer without a copy, so a small message held
//! for the local bus could keep alive the whole buffer it was read into, though everything
//! else in it (junk from a client without the key, refused on arrival) is gone: tiny genuine
//! messages interleaved with large junk would then pin memory far beyond the byte bound.
//! Alone in its binary: the allocator below counts every allocation of the process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use capsule_bus::{Attribution, Bus, BusConfig, PrincipalId, Scope, Topic, TopicPattern};
use capsule_nats::async_nats;
use capsule_nats::{ClusterKey, Envelope, HostId, KEY_BYTES, SIGNATURE_HEADER};
use uuid::Uuid;

#[allow(dead_code)]
mod common;
use common::*;

/// Counts the bytes the process has allocated and not freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

fn size(layout: Layout) -> isize {
    isize::try_from(layout.size()).unwrap_or(isize::MAX)
}

// SAFETY: every call is passed on to the system allocator unchanged; only counts are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(size(layout), Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(size(layout), Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let grown = isize::try_from(new_size).unwrap_or(isize::MAX) - size(layout);
        LIVE.fetch_add(grown, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn key() -> ClusterKey {
    ClusterKey::from_bytes([0x42; KEY_BYTES])
}

/// Sends `body` as message `seq` of `host`'s publisher 1 on `topic`, signed with the key.
async fn signed(client: &async_nats::Client, host: &str, topic: &str, seq: u64, body: &str) {
    let subject = format!("capsule.c.{topic}");
    let env = Envelope {
        host: HostId::parse(host).unwrap_or_else(|e| panic!("{e}")),
        attribution: Attribution::Verified(
            PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}")),
        ),
        source: Uuid::from_u128(1),
        source_name: None,
        epoch: 1,
        seq,
        hops: 0,
    };
    let mut h = env.to_headers();
    h.insert(
        SIGNATURE_HEADER,
        key().sign(&subject, &env, body.as_bytes()).as_str(),
    );
    send(client, &subject, h, body).await;
}

/// Genuine messages of peer a held at once.
const M: u64 = 1000;
/// Bytes of junk before each of them.
const JUNK: usize = 60 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_do_not_pin_the_junk_read_with_them() {
    let nats = server();
    let bus = Bus::with_config(BusConfig {
        route_max_bytes: 64 << 20,
        queue_max_messages: 1 << 20,
        ..BusConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut cfg = config(&nats.url(), "b", "a", "", "in.*");
    cfg.peers
        .insert(HostId::parse("c").unwrap_or_else(|e| panic!("{e}")));
    cfg.key = Some(key());
    cfg.import_buffer = 4096;
    cfg.import_buffer_bytes = 4 << 20;
    // Peer c's first message stops the loop while everything arrives; a's first one stops
    // it again once everything was screened and a's messages are held.
    let (on_c, on_a) = (Arc::new(Gate::default()), Arc::new(Gate::default()));
    let (gc, ga) = (Arc::clone(&on_c), Arc::clone(&on_a));
    cfg.admit = Some(Arc::new(move |topic: &Topic, _who: &Attribution| {
        match topic.as_str() {
            "in.c" => gc.pass(),
            _ => ga.pass(),
        }
        Ok(())
    }));
    let b = start(&bus, cfg).await;
    let mut from_a = bus.subscribe(
        TopicPattern::parse("in.a").unwrap_or_else(|e| panic!("{e}")),
        Scope::All,
    );
    let peer_c = raw(&nats.url()).await;
    // One connection for the junk and a's messages keeps them interleaved on b's link; who
    // sends the junk does not matter, it needs no key.
    let mixed = raw(&nats.url()).await;

    signed(&peer_c, "c", "in.c", 1, r#"{"n":1}"#).await;
    wait_until("c's message to reach the check", || {
        on_c.entered.load(Ordering::SeqCst)
    })
    .await;
    let junk = "j".repeat(JUNK);
    for n in 1..=M {
        let r = mixed
            .publish("capsule.c.in.a", junk.clone().into_bytes().into())
            .await;
        r.unwrap_or_else(|e| panic!("{e}"));
        signed(&mixed, "a", "in.a", n, &format!(r#"{{"n":{n}}}"#)).await;
    }
    synced(&mixed).await;
    wait_until("everything to reach b's client", || {
        b.stats().received > 2 * M
    })
    .await;
    // Everything waits in the client's queue now; what stays once the junk is refused is
    // what the held messages keep.
    let before = live();
    on_c.release();
    wait_until("a's messages to be screened and held", || {
        on_a.entered.load(Ordering::SeqCst)
    })
    .await;
    let s = b.stats();
    assert!(s.refused >= M, "the junk was not refused: {s:?}");
    let kept = before - live();
    let after = live();
    on_a.release();

    let deadline = Instant::now() + PATIENCE;
    let mut seen = 0;
    while seen < M {
        assert!(
            Instant::now() < deadline,
            "only {seen} of a's messages arrived"
        );
        seen += from_a
            .recv(Duration::from_millis(100), usize::MAX)
            .await
            .messages
            .len() as u64;
    }
    // The junk alone was M * JUNK bytes; held, a's messages are charged a few hundred each.
    let junk_total = isize::try_from(M as usize * JUNK).unwrap_or(isize::MAX);
    assert!(
        kept > junk_total * 3 / 4,
        "the refused junk stayed in memory: {} MiB of it freed, {} MiB live with a's {M} \
         messages held ({s:?})",
        kept >> 20,
        after >> 20,
    );
}
