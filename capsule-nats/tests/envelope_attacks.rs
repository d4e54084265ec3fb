//! Attacks on the one-header envelope and the bridge's hand-offs, through a real NATS server:
//! a source name the wire changes under its signature, a peer's real signed header rewritten
//! into another spelling of the same fields (and replayed), duplicated envelope headers, and
//! an export flood on a single-threaded runtime that must still let other tasks run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use capsule_bus::{
    Attribution, Bus, BusConfig, JsonPayload, Message, Outgoing, PrincipalId, Receiver, Scope,
    Topic,
};
use capsule_nats::async_nats::HeaderMap;
use capsule_nats::{
    Bridge, ClusterKey, ClusterName, ENVELOPE_HEADER, Envelope, HostId, KEY_BYTES, NatsServer,
    SIGNATURE_HEADER,
};
use futures::StreamExt;
use uuid::Uuid;

#[allow(dead_code)]
mod common;
use common::*;

fn publish(bus: &Bus, n: u64) {
    bus.publish(Outgoing {
        topic: Topic::parse("in.x").unwrap_or_else(|e| panic!("{e}")),
        payload: JsonPayload::parse(format!(r#"{{"n":{n}}}"#)).unwrap_or_else(|e| panic!("{e}")),
        source: Uuid::from_u128(7),
        attribution: Attribution::Verified(
            PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}")),
        ),
        hops: 0,
    });
}

/// Drains `rx` until a message numbered `last` arrives; returns the numbers seen.
async fn until(rx: &mut Receiver, last: u64) -> Vec<u64> {
    let deadline = Instant::now() + PATIENCE;
    let mut got: Vec<Arc<Message>> = Vec::new();
    while !got.iter().any(|m| number(m) == last) {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {last}: have {:?}",
            got.iter().map(|m| number(m)).collect::<Vec<_>>()
        );
        let d = rx.recv(Duration::from_millis(100), usize::MAX).await;
        got.extend(d.messages);
    }
    got.iter().map(|m| number(m)).collect()
}

/// Two signed bridges, `a` exporting `in.*` to `b`, with `names` naming a's publishers.
async fn signed_pair(
    nats: &NatsServer,
    names: Option<capsule_nats::SourceNames>,
) -> (Bus, Bus, Bridge, Bridge) {
    let key = ClusterKey::from_bytes([0x42; KEY_BYTES]);
    let (bus_a, bus_b) = (Bus::new(), Bus::new());
    let mut ca = config(&nats.url(), "a", "b", "in.*", "");
    ca.key = Some(key.clone());
    ca.source_names = names;
    let mut cb = config(&nats.url(), "b", "a", "", "in.*");
    cb.key = Some(key);
    let a = start(&bus_a, ca).await;
    let b = start(&bus_b, cb).await;
    (bus_a, bus_b, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_name_ending_in_whitespace_does_not_sink_signed_messages() {
    // The name is the header value's last field, and the client trims the value's end: a
    // name sent as signed would arrive as "notes" and fail the signature.
    let nats = server();
    for name in ["notes ", "notes\u{3000}", " "] {
        let name = name.to_string();
        let names: capsule_nats::SourceNames = Arc::new(move |_| Some(name.clone()));
        let (bus_a, bus_b, a, b) = signed_pair(&nats, Some(names)).await;
        let mut rx = bus_b.subscribe(pat("in.*"), Scope::All);
        publish(&bus_a, 1);
        publish(&bus_a, 2);
        assert_eq!(until(&mut rx, 2).await, [1, 2]);
        let s = b.stats();
        assert_eq!((s.imported, s.refused), (2, 0), "{s:?}");
        let source = capsule_nats::imported_source(
            &HostId::parse("a").unwrap_or_else(|e| panic!("{e}")),
            &Uuid::from_u128(7),
        );
        let origin = b
            .origin(&source)
            .unwrap_or_else(|| panic!("origin of {source} not recorded"));
        assert_eq!(
            origin.source_name, None,
            "an unsendable name travels not at all"
        );
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_header_respelled_is_still_a_replay_and_a_second_envelope_is_ignored() {
    let nats = server();
    let names: capsule_nats::SourceNames = Arc::new(|_| Some("notes".to_string()));
    let (bus_a, bus_b, _a, b) = signed_pair(&nats, Some(names)).await;
    let mut rx = bus_b.subscribe(pat("in.*"), Scope::All);
    let attacker = raw(&nats.url()).await;
    let mut tap = attacker
        .subscribe("capsule.c.>")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    synced(&attacker).await;
    publish(&bus_a, 1);
    let captured = tokio::time::timeout(PATIENCE, tap.next())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("the tap saw nothing"));
    let real = captured.headers.clone().unwrap_or_default();
    let value = real
        .get(ENVELOPE_HEADER)
        .map(|v| v.as_str().to_string())
        .unwrap_or_else(|| panic!("no envelope"));
    let env = Envelope::parse(&value).unwrap_or_else(|e| panic!("{e}"));
    let subject = captured.subject.to_string();
    let body = String::from_utf8(captured.payload.to_vec()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(until(&mut rx, 1).await, [1]);
    assert_eq!(number_of(&body), 1);

    // The same fields spelled otherwise: a leading `+`, leading zeros, the UUID without
    // hyphens, braced, as a URN, in capitals. The tag covers the parsed fields, so each still
    // verifies; the replay check must see through the spelling.
    let fields: Vec<&str> = value.splitn(8, ';').collect();
    let u = env.source;
    let respell = |i: usize, text: String| {
        let mut f: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
        f[i] = text;
        f.join(";")
    };
    let variants = [
        respell(5, format!("+{}", env.seq)),
        respell(5, format!("000{}", env.seq)),
        respell(4, format!("+{}", env.epoch)),
        respell(3, u.simple().to_string()),
        respell(3, u.braced().to_string()),
        respell(3, u.urn().to_string()),
        respell(3, u.hyphenated().to_string().to_uppercase()),
        respell(6, format!("+{}", env.hops)),
    ];
    for v in &variants {
        assert_eq!(Envelope::parse(v).as_ref(), Ok(&env), "{v}");
        let mut h = real.clone();
        h.insert(ENVELOPE_HEADER, v.as_str());
        send(&attacker, &subject, h, &body).await;
    }
    // A second envelope after the real one, naming bob; and a forged one first, then the real.
    let mut bob = env.clone();
    bob.attribution =
        Attribution::Verified(PrincipalId::parse("bob").unwrap_or_else(|e| panic!("{e}")));
    bob.seq += 100;
    let mut h = real.clone();
    h.append(ENVELOPE_HEADER, bob.to_header_value());
    send(&attacker, &subject, h, &body).await;
    let mut h = HeaderMap::new();
    h.insert(ENVELOPE_HEADER, bob.to_header_value());
    h.append(ENVELOPE_HEADER, value.as_str());
    if let Some(sig) = real.get(SIGNATURE_HEADER) {
        h.insert(SIGNATURE_HEADER, sig.as_str());
    }
    send(&attacker, &subject, h, &body).await;

    // The real message moved to another topic of the cluster: the subject is signed.
    send(&attacker, "capsule.c.in.y", real.clone(), &body).await;

    let expected = variants.len() as u64 + 3;
    wait_until("every respelled or doubled copy refused", || {
        b.stats().refused == expected
    })
    .await;
    let next = 2;
    publish(&bus_a, next);
    let after = until(&mut rx, next).await;
    assert_eq!(after, [next], "a respelled replay was delivered again");
    let s = b.stats();
    assert_eq!((s.refused, s.dropped_in), (expected, 0), "{s:?}");
}

fn number_of(body: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}"));
    v["n"].as_u64().unwrap_or_else(|| panic!("no n in {body}"))
}

/// Messages pushed through the export loop while another task on the same single thread
/// watches; more than the loop hands over between two yields.
const FLOOD: u64 = 5000;

#[test]
fn an_export_flood_on_one_thread_still_lets_other_tasks_run() {
    // The export loop hands messages to the client outside the cooperative budget; on a
    // single-threaded runtime, where the client's own writer and every other task share the
    // thread, it must still step aside now and then, or they would run only once the whole
    // flood is handed over.
    let nats = server();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let bus = Bus::with_config(BusConfig {
            route_max_bytes: 64 << 20,
            queue_max_messages: 1 << 20,
            ..BusConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let mut c = config(&nats.url(), "a", "b", "in.*", "");
        // Room for the whole flood in the client's queue: the loop never waits for it.
        c.buffer = 1 << 16;
        let a = Arc::new(start(&bus, c).await);
        let seen_between = Arc::new(AtomicU64::new(0));
        let watcher = {
            let (a, seen) = (Arc::clone(&a), Arc::clone(&seen_between));
            tokio::spawn(async move {
                loop {
                    let n = a.stats().exported;
                    if n > 0 && n < FLOOD {
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                    if n >= FLOOD {
                        return n;
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        // Every message is on the bus before the export loop runs again.
        for n in 1..=FLOOD {
            publish(&bus, n);
        }
        let n = tokio::time::timeout(PATIENCE, watcher)
            .await
            .unwrap_or_else(|_| panic!("the flood was never exported"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, FLOOD);
        assert_eq!(a.stats().dropped(), 0, "{:?}", a.stats());
        assert!(
            seen_between.load(Ordering::Relaxed) > 0,
            "the export loop handed over all {FLOOD} messages without another task running"
        );
    });
}

#[test]
fn injected_separators_unicode_and_out_of_range_fields_are_refused() {
    let u = Uuid::from_u128(9);
    let good = format!("1;a;verified:alice;{u};1;1;0");
    assert!(Envelope::parse(&good).is_ok());
    for value in [
        // A second attribution or a role smuggled into the principal.
        format!("1;a;verified:alice:root;{u};1;1;0"),
        format!("1;a;verified:alice,claimed:bob;{u};1;1;0"),
        format!("1;a;verified: alice;{u};1;1;0"),
        format!("1;a;verified:alicé;{u};1;1;0"),
        format!("1;a;verified:ali\u{200b}ce;{u};1;1;0"),
        format!("1;a;Verified:alice;{u};1;1;0"),
        format!("1;a;system:alice;{u};1;1;0"),
        // Hosts that are not host ids.
        format!("1; a;system;{u};1;1;0"),
        format!("1;a.b;system;{u};1;1;0"),
        format!("1;á;system;{u};1;1;0"),
        format!("1;;system;{u};1;1;0"),
        // Numbers out of range or not plain integers.
        format!("1;a;system;{u};18446744073709551616;1;0"),
        format!("1;a;system;{u};1;18446744073709551616;0"),
        format!("1;a;system;{u};1;1e3;0"),
        format!("1;a;system;{u};1; 1;0"),
        format!("1;a;system;{u};1;1;-0"),
        format!("1;a;system;{u};1;1;256"),
        format!("1;a;system;{u};1;0x1;0"),
        // Fields shifted by an empty one.
        format!("1;a;;system;{u};1;1;0"),
        format!("1;a;system;;{u};1;1;0"),
        format!(" 1;a;system;{u};1;1;0"),
    ] {
        assert!(Envelope::parse(&value).is_err(), "{value:?}");
    }
    // The name is the last field: separators in it stay in it and shift nothing.
    let named = format!("1;a;verified:alice;{u};1;1;0;x;1;2;verified:mallory");
    let env = Envelope::parse(&named).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        env.attribution,
        Attribution::Verified(PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}")))
    );
    assert_eq!(env.seq, 1);
    assert_eq!(env.source_name.as_deref(), Some("x;1;2;verified:mallory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_message_replayed_into_another_cluster_with_the_same_key_is_refused() {
    // An operator who reuses one key for two clusters on one server: a message of cluster c
    // played into cluster d must not pass, though host a is a peer there too.
    let nats = server();
    let names: capsule_nats::SourceNames = Arc::new(|_| Some("notes".to_string()));
    let (bus_a, bus_b, _a, _b) = signed_pair(&nats, Some(names)).await;
    let mut rx_b = bus_b.subscribe(pat("in.*"), Scope::All);
    let bus_d = Bus::new();
    let mut cd = config(&nats.url(), "d1", "a", "", "in.*");
    cd.cluster = ClusterName::parse("d").unwrap_or_else(|e| panic!("{e}"));
    cd.key = Some(ClusterKey::from_bytes([0x42; KEY_BYTES]));
    let d = start(&bus_d, cd).await;
    let mut rx_d = bus_d.subscribe(pat("in.*"), Scope::All);
    let attacker = raw(&nats.url()).await;
    let mut tap = attacker
        .subscribe("capsule.c.>")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    synced(&attacker).await;
    publish(&bus_a, 1);
    let captured = tokio::time::timeout(PATIENCE, tap.next())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("the tap saw nothing"));
    assert_eq!(until(&mut rx_b, 1).await, [1]);
    let subject = captured
        .subject
        .as_str()
        .replacen("capsule.c.", "capsule.d.", 1);
    let body = String::from_utf8(captured.payload.to_vec()).unwrap_or_else(|e| panic!("{e}"));
    send(
        &attacker,
        &subject,
        captured.headers.clone().unwrap_or_default(),
        &body,
    )
    .await;
    wait_until("the cross-cluster replay refused", || {
        d.stats().refused == 1
    })
    .await;
    let s = d.stats();
    assert_eq!((s.imported, s.refused), (0, 1), "{s:?}");
    assert!(rx_d.try_drain(usize::MAX).messages.is_empty());
}
