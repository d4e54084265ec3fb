//! The receiving side's checks, in order: the subject must be a topic of this cluster under
//! the pattern it arrived on and not the audit topic; the headers must decode; with a cluster
//! key the signature must match (before any header is believed); a batch's frames must
//! decode exactly (else the whole NATS message is refused); the origin must be a
//! configured peer and not this host; with a key, the message must not be a copy of one
//! already taken into the buffer (`screen` runs these on arrival, before a message takes buffer room); then, once the message leaves the buffer, the host's own check
//! ([`crate::Admit`]) must pass; the payload (every frame of a batch) must be JSON; each
//! message's sequence number must be neither one already seen (a replay) nor an implausible
//! jump. Only then is a hole in the publisher's sequence reported as loss and the message
//! published into the local bus, with exactly the attribution the origin host sent (never a
//! stronger one) and a source id that records which host vouched for it. Local subscribers
//! then receive it only through subscriptions the host's own ACLs and audit scoping allowed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use capsule_bus::{Attribution, Bus, JsonPayload, Outgoing, Topic};
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use uuid::Uuid;

use crate::bridge::SIGNATURE_NAME;
use crate::bridge::{Counters, audit, bump};
use crate::config::BridgeConfig;
use crate::envelope::Envelope;
use crate::seq::{Bounded, MAX_GAP, Observed, SEQ_TABLE_CAPACITY, Tracking};
use crate::subject::HostId;

mod screen;
use screen::{Body, Held, Screened};

/// Origins the bridge remembers, newest first out of a full table.
const ORIGINS_KEPT: usize = 4096;

/// Where an imported message came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The peer host that published it and vouches for its attribution.
    pub host: HostId,
    /// The publishing capsule instance on that host.
    pub source: Uuid,
    /// The publishing capsule's name, if the host sent it.
    pub source_name: Option<String>,
}

/// The local source id of a remote publisher: a version-8 UUID derived from the host and the
/// remote instance id, so the same publisher always gets the same id and the export side can
/// tell imported messages from local ones.
pub fn imported_source(host: &HostId, source: &Uuid) -> Uuid {
    let mut h = blake3::Hasher::new();
    h.update(b"capsule-nats source v1\0");
    h.update(host.as_str().as_bytes());
    h.update(&[0]);
    h.update(source.as_bytes());
    let digest = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_bytes()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    Uuid::from_bytes(b)
}

pub(crate) struct Importer {
    bus: Bus,
    config: Arc<BridgeConfig>,
    counters: Arc<Counters>,
    /// The configured peers, sorted: a peer's place here names its share of each buffer.
    peers: Vec<HostId>,
    seqs: Mutex<Tracking<(HostId, Uuid, Topic)>>,
    /// With a cluster key, the last number of each stream taken into an import buffer, so a
    /// copy of a signed message (which anyone reading the subjects can play back) takes no
    /// room from its peer: it is refused on arrival, not only once released.
    held_seqs: Mutex<Tracking<(HostId, Uuid, Topic)>>,
    /// With a cluster key, the newest tail mark of each stream taken into an import buffer,
    /// so played-back marks take no room either.
    held_marks: Mutex<Tracking<(HostId, Uuid, Topic)>>,
    origins: Mutex<Bounded<Uuid, Origin>>,
}

impl Importer {
    pub(crate) fn new(bus: Bus, config: Arc<BridgeConfig>, counters: Arc<Counters>) -> Self {
        Self {
            peers: config.peers.iter().cloned().collect(),
            bus,
            config,
            counters,
            seqs: Mutex::new(Tracking::new(SEQ_TABLE_CAPACITY)),
            held_seqs: Mutex::new(Tracking::new(SEQ_TABLE_CAPACITY)),
            held_marks: Mutex::new(Tracking::new(SEQ_TABLE_CAPACITY)),
            origins: Mutex::new(Bounded::new(ORIGINS_KEPT)),
        }
    }

    pub(crate) fn origin(&self, source: &Uuid) -> Option<Origin> {
        self.origins.lock().get(source).cloned()
    }

    /// Publishes the accepted messages held in `out`, in order, waking each receiver once.
    /// Called before anything else this importer puts on the bus, so an audit entry or a
    /// reported loss never overtakes a message accepted before it.
    pub(crate) fn flush(&self, out: &mut Vec<Outgoing>) {
        if !out.is_empty() {
            self.bus.publish_batch(out.drain(..));
        }
    }

    fn refuse(&self, out: &mut Vec<Outgoing>, subject: &str, reason: String) {
        self.refuse_messages(out, subject, 1, reason);
    }

    /// Refuses `n` bus messages carried by one NATS message: counted each, audited as one.
    fn refuse_messages(&self, out: &mut Vec<Outgoing>, subject: &str, n: u64, reason: String) {
        self.flush(out);
        if bump(&self.counters.refused, n) {
            audit(
                &self.bus,
                Attribution::System,
                serde_json::json!({
                    "kind": "nats.refused",
                    "subject": subject,
                    "reason": reason,
                    "refused": self.counters.refused.load(Ordering::Relaxed),
                }),
            );
        }
    }

    /// Counts what one sequence number says about its publisher's stream.
    fn observed(&self, out: &mut Vec<Outgoing>, observed: Observed, env: &Envelope, topic: &Topic) {
        match observed {
            Observed::InOrder | Observed::Replayed | Observed::Implausible => {}
            Observed::Restarted { lost } => {
                self.counters.restarts.fetch_add(1, Ordering::Relaxed);
                self.lost(out, lost, env, topic);
            }
            Observed::Gap(lost) => self.lost(out, lost, env, topic),
        }
    }

    /// Reports `lost` messages of `env`'s publisher on `topic`: counted, told to the local
    /// subscribers and audited.
    fn lost(&self, out: &mut Vec<Outgoing>, lost: u64, env: &Envelope, topic: &Topic) {
        if lost == 0 {
            return;
        }
        self.flush(out);
        self.counters.dropped_in.fetch_add(lost, Ordering::Relaxed);
        self.bus
            .report_loss(topic, env.attribution.principal(), lost);
        audit(
            &self.bus,
            env.attribution.clone(),
            serde_json::json!({
                "kind": "nats.lost",
                "host": env.host.as_str(),
                "topic": topic.as_str(),
                "lost": lost,
                "principal": env.attribution.principal().map(|p| p.as_str()),
            }),
        );
    }

    /// Runs the checks that need state on a held message and adds what passes to `out`, for
    /// [`flush`](Self::flush) to publish: the host's own admission, every payload parsed as
    /// JSON (any failure of a batch's frame refuses the whole NATS message, nothing of it
    /// published), then each message's sequence check and hand-over.
    fn accept(&self, held: Screened, out: &mut Vec<Outgoing>) {
        let Screened {
            message: m,
            topic,
            body,
            ..
        } = held;
        let subject = m.subject.as_str();
        match body {
            Body::Single(env) => {
                if !self.admitted(out, &env, &topic, 1) {
                    return;
                }
                match json(&m.payload) {
                    Ok(payload) => self.deliver(out, subject, &env, topic, payload),
                    Err(e) => self.refuse(out, subject, e),
                }
            }
            Body::Batch(batch, frames) => {
                let mut env = batch.first;
                if !self.admitted(out, &env, &topic, batch.count as u64) {
                    return;
                }
                let mut payloads = Vec::with_capacity(frames.len());
                for (i, frame) in frames.iter().enumerate() {
                    match json(frame) {
                        Ok(p) => payloads.push(p),
                        Err(e) => {
                            return self.refuse(out, subject, format!("batch frame {i}: {e}"));
                        }
                    }
                }
                let first = env.seq;
                for (i, payload) in payloads.into_iter().enumerate() {
                    // In range: the header's parse refused a range past `u64::MAX`.
                    env.seq = first.saturating_add(i as u64);
                    self.deliver(out, subject, &env, topic.clone(), payload);
                }
            }
            Body::Tail(mark) => self.accept_tail(subject, &topic, &mark, out),
        }
    }

    /// Handles a tail mark (format version 3) the screen passed (signature, origin, an empty
    /// payload): after the host's own check, the stream's numbers past the last one seen up
    /// to the mark's are reported lost. Nothing is delivered.
    fn accept_tail(&self, subject: &str, topic: &Topic, mark: &Envelope, out: &mut Vec<Outgoing>) {
        if !self.admitted(out, mark, topic, 1) {
            return;
        }
        let key = (mark.host.clone(), mark.source, topic.clone());
        let observed = self
            .seqs
            .lock()
            .observe_tail(&key, mark.epoch, mark.seq, MAX_GAP);
        match observed {
            Observed::Replayed => self.refuse(
                out,
                subject,
                format!("tail mark of the earlier epoch {}: a replay", mark.epoch),
            ),
            Observed::Implausible => self.refuse(
                out,
                subject,
                format!(
                    "tail mark {} jumps more than {MAX_GAP} past the publisher's last",
                    mark.seq
                ),
            ),
            o => self.observed(out, o, mark, topic),
        }
    }

    /// The host's own check ([`crate::Admit`]) of `n` messages with one envelope, whose
    /// origin the screen found in the peer list; a refusal is counted per message and
    /// audited to the principal concerned.
    fn admitted(&self, out: &mut Vec<Outgoing>, env: &Envelope, topic: &Topic, n: u64) -> bool {
        if let Some(admit) = &self.config.admit
            && let Err(reason) = admit(topic, &env.attribution)
        {
            self.counters.refused.fetch_add(n, Ordering::Relaxed);
            self.flush(out);
            // The principal concerned sees the refusal in its own audit view.
            audit(
                &self.bus,
                env.attribution.clone(),
                serde_json::json!({
                    "kind": "nats.refused",
                    "host": env.host.as_str(),
                    "topic": topic.as_str(),
                    "principal": env.attribution.principal().map(|p| p.as_str()),
                    "reason": reason,
                    "messages": n,
                }),
            );
            return false;
        }
        true
    }

    /// The per-message sequence check and hand-over of one message that passed every other
    /// check: a replay or an implausible jump is refused, a hole reported, and the message
    /// added to `out` with exactly the origin's attribution.
    fn deliver(
        &self,
        out: &mut Vec<Outgoing>,
        subject: &str,
        env: &Envelope,
        topic: Topic,
        payload: JsonPayload,
    ) {
        let key = (env.host.clone(), env.source, topic.clone());
        let observed = self.seqs.lock().observe(&key, env.epoch, env.seq, MAX_GAP);
        match observed {
            Observed::Replayed => {
                return self.refuse(
                    out,
                    subject,
                    format!(
                        "epoch {} sequence {} was already seen from {}: a replay",
                        env.epoch, env.seq, env.host
                    ),
                );
            }
            Observed::Implausible => {
                return self.refuse(
                    out,
                    subject,
                    format!(
                        "sequence {} jumps more than {MAX_GAP} past the publisher's last",
                        env.seq
                    ),
                );
            }
            o => self.observed(out, o, env, &topic),
        }
        let source = imported_source(&env.host, &env.source);
        self.origins.lock().entry(&source, || Origin {
            host: env.host.clone(),
            source: env.source,
            source_name: env.source_name.clone(),
        });
        // Counted first, so whoever sees the message also sees it counted.
        self.counters.imported.fetch_add(1, Ordering::Relaxed);
        out.push(Outgoing {
            topic,
            payload,
            source,
            attribution: env.attribution.clone(),
            hops: env.hops.saturating_add(1),
        });
    }
}

/// The signature header of `m`, if any.
fn signature(m: &async_nats::Message) -> Option<&str> {
    m.headers
        .as_ref()
        .and_then(|h| h.get(SIGNATURE_NAME))
        .map(|v| v.as_str())
}

/// A payload as one JSON value, or why not.
fn json(bytes: &[u8]) -> Result<JsonPayload, String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|e| e.to_string())
        .and_then(|s| JsonPayload::parse(s).map_err(|e| e.to_string()))
}

/// Messages an import loop handles between two yields to the scheduler.
const YIELD_EVERY: u32 = 1024;
/// Accepted messages an import loop publishes into the local bus together at most: the
/// receivers are woken once per batch, and a batch is published as soon as nothing more is
/// waiting, so a lone message is never held back.
const PUBLISH_BATCH: usize = 64;

/// Carries import pattern `index`'s messages into the local bus. Before each message it
/// handles, it moves everything the client has received into its own buffer, so the client's
/// queue stays short and whatever waits is bounded by the configured messages and bytes.
/// Accepted messages are published in batches of up to [`PUBLISH_BATCH`], a batch as soon
/// as the buffer is empty.
pub(crate) async fn import_loop(
    importer: Arc<Importer>,
    index: usize,
    mut sub: async_nats::Subscriber,
) {
    let mut held = Held::new(importer.peers.len());
    let mut out = Vec::with_capacity(PUBLISH_BATCH);
    let mut handled = 0u32;
    loop {
        // Outside the task's cooperative budget, so a spent budget never looks like an empty
        // queue while the client's queue overflows.
        while let Some(next) = tokio::task::unconstrained(sub.next()).now_or_never() {
            match next {
                Some(m) => importer.hold(index, &mut held, m, &mut out),
                None => return importer.flush(&mut out),
            }
        }
        if let Some(m) = importer.release(&mut held) {
            importer.accept(m, &mut out);
            if out.len() >= PUBLISH_BATCH {
                importer.flush(&mut out);
            }
            // Lets the other tasks of a busy worker run now and then, far less often than the
            // cooperative budget would (each yield is a trip through the scheduler).
            handled = handled.wrapping_add(1);
            if handled.is_multiple_of(YIELD_EVERY) {
                importer.flush(&mut out);
                tokio::task::yield_now().await;
            }
            continue;
        }
        // Nothing is waiting: what was accepted goes out before the loop sleeps.
        importer.flush(&mut out);
        match sub.next().await {
            Some(m) => importer.hold(index, &mut held, m, &mut out),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imported_sources_are_stable_per_host_and_marked() {
        let h1 = HostId::parse("h1").unwrap_or_else(|e| panic!("{e}"));
        let h2 = HostId::parse("h2").unwrap_or_else(|e| panic!("{e}"));
        let s = Uuid::new_v4();
        let a = imported_source(&h1, &s);
        assert_eq!(a, imported_source(&h1, &s));
        assert_ne!(a, imported_source(&h2, &s));
        assert_eq!(a.get_version_num(), 8);
        assert!(crate::bridge::is_imported_source(&a));
        assert!(!crate::bridge::is_imported_source(&s));
    }
}
