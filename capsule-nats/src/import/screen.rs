//! Admission to an import buffer: a received message takes buffer room only after every
//! check that needs no state has passed (the subject is a topic of this cluster under the
//! pattern it arrived on and not the audit topic; the envelope decodes; with a cluster key
//! the signature matches, before any header is believed; a batch's frames decode exactly;
//! the origin is a configured peer and not this host), each exactly once, then (the one
//! check here with state, with a cluster key) only if it is no copy of a message of its
//! stream already held once, and then only within its origin's share: every peer gets an equal part of the buffer's messages and
//! bytes, so one peer (or one key holder naming it) flooding drops its own messages, never
//! another peer's. What fails is refused, counted and audited here and never held; what is
//! held carries its decoded envelope and frames to [`Importer::accept`], which runs only the
//! checks that need state (the host's own admission, JSON, the sequence).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use capsule_bus::{AUDIT_TOPIC, Attribution, Outgoing, Topic};

use super::{Importer, signature};
use crate::batch::{BatchEnvelope, decode_frames, is_batch};
use crate::bridge::{ENVELOPE_NAME, audit, bump};
use crate::envelope::Envelope;
use crate::seq::{MAX_GAP, Observed};
use crate::subject::subject_topic;
use crate::tail::{is_tail, parse_tail};

/// What a screened message carries, decoded once.
pub(super) enum Body {
    /// A version-1 message: its envelope.
    Single(Envelope),
    /// A batch: its header and its frames, in order, each a view of the payload.
    Batch(BatchEnvelope, Vec<Bytes>),
    /// A tail mark (format version 3): its envelope, whose number is the stream's last.
    Tail(Envelope),
}

impl Body {
    /// The envelope naming the origin (a batch's first message's).
    fn envelope(&self) -> &Envelope {
        match self {
            Self::Single(e) | Self::Tail(e) | Self::Batch(BatchEnvelope { first: e, .. }, _) => e,
        }
    }

    /// Bus messages it carries.
    pub(super) fn messages(&self) -> usize {
        match self {
            Self::Single(_) | Self::Tail(_) => 1,
            Self::Batch(b, _) => b.count,
        }
    }
}

/// A received message that passed every check needing no state.
pub(super) struct Screened {
    /// The message as received (subject and payload are read again on release).
    pub(super) message: async_nats::Message,
    /// The local topic its subject names.
    pub(super) topic: Topic,
    /// Its decoded envelope (and frames).
    pub(super) body: Body,
    /// Its origin's place in the peer list, which indexes [`Held::shares`].
    peer: usize,
    /// Bytes it is charged.
    size: usize,
}

/// What one peer holds of an import buffer.
#[derive(Clone, Copy, Default)]
struct Share {
    /// NATS messages (a batch counts once), tail marks aside.
    messages: usize,
    /// Tail marks, bounded apart from the messages: a round of marks (which anyone able to
    /// publish on the request subject can set off) never takes a message's room.
    marks: usize,
    bytes: usize,
}

/// The messages one import pattern holds for the local bus, in arrival order, each peer
/// bounded by its share. Each holds a copy of its payload: the client cuts payloads out of
/// its read buffer without copying, and a held view would keep that whole buffer alive,
/// with the refused messages read beside it, far beyond what the message is charged.
pub(super) struct Held {
    queue: VecDeque<Screened>,
    /// Per peer, in the order of [`Importer::peers`].
    shares: Vec<Share>,
    /// Bytes the whole queue holds.
    bytes: usize,
}

impl Held {
    /// An empty buffer for `peers` peers.
    pub(super) fn new(peers: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            shares: vec![Share::default(); peers],
            bytes: 0,
        }
    }
}

/// Bytes a received message is charged: its size on the wire (headers and payload), or its
/// payload when the client did not record one.
fn charge(m: &async_nats::Message) -> usize {
    m.length.max(m.payload.len())
}

impl Importer {
    /// Each peer's part of an import pattern's bounds: `(messages, bytes)`, at least one of
    /// each.
    fn share(&self) -> (usize, usize) {
        let n = self.peers.len().max(1);
        (
            (self.config.import_buffer / n).max(1),
            (self.config.import_buffer_bytes / n).max(1),
        )
    }

    /// Runs the checks that need no state on `m`, received on import pattern `index`; what
    /// fails is refused (counted, audited) or, if another pattern takes it, left to that one.
    fn screen(
        &self,
        index: usize,
        mut m: async_nats::Message,
        out: &mut Vec<Outgoing>,
    ) -> Option<Screened> {
        let subject = m.subject.as_str();
        let topic = match subject_topic(&self.config.cluster, subject) {
            Ok(t) => t,
            Err(e) => return self.refuse_none(out, subject, e.to_string()),
        };
        let pattern = self.config.import.get(index)?;
        if !pattern.matches(&topic) || topic.as_str() == AUDIT_TOPIC {
            return self.refuse_none(out, subject, "not an imported topic".into());
        }
        // Overlapping import patterns receive the same message; the first one takes it.
        if self.config.import[..index]
            .iter()
            .any(|p| p.matches(&topic))
        {
            return None;
        }
        let header = m
            .headers
            .as_ref()
            .and_then(|h| h.get(ENVELOPE_NAME))
            .map(|v| v.as_str());
        let (body, payload) = match header {
            Some(h) if is_batch(h) => self.screen_batch(subject, h, &m, out)?,
            Some(h) if is_tail(h) => {
                let mark = self.screen_tail(subject, h, &m, out)?;
                (Body::Tail(mark), Bytes::new())
            }
            _ => {
                let env = self.screen_single(subject, &m, out)?;
                (Body::Single(env), Bytes::copy_from_slice(&m.payload))
            }
        };
        let peer = self.origin_peer(out, body.envelope(), &topic, body.messages())?;
        m.payload = payload;
        let size = charge(&m);
        Some(Screened {
            message: m,
            topic,
            body,
            peer,
            size,
        })
    }

    fn refuse_none<T>(&self, out: &mut Vec<Outgoing>, subject: &str, reason: String) -> Option<T> {
        self.refuse(out, subject, reason);
        None
    }

    fn screen_single(
        &self,
        subject: &str,
        m: &async_nats::Message,
        out: &mut Vec<Outgoing>,
    ) -> Option<Envelope> {
        let env = match Envelope::from_headers(m.headers.as_ref()) {
            Ok(e) => e,
            Err(e) => return self.refuse_none(out, subject, e.to_string()),
        };
        // Nothing in the headers is believed, not even the origin host, before the tag is.
        if let Some(key) = &self.config.key {
            match signature(m) {
                None => return self.refuse_none(out, subject, "the message is not signed".into()),
                Some(t) if !key.verify(subject, &env, &m.payload, t) => {
                    return self.refuse_none(out, subject, "the signature does not match".into());
                }
                Some(_) => {}
            }
        }
        Some(env)
    }

    /// A batch (format version 2): the header and the whole framed payload are verified, then
    /// the frames decoded strictly; any failure refuses the whole NATS message. Returns the
    /// batch with its frames, views of the payload copied out (see [`Held`]).
    fn screen_batch(
        &self,
        subject: &str,
        header: &str,
        m: &async_nats::Message,
        out: &mut Vec<Outgoing>,
    ) -> Option<(Body, Bytes)> {
        let batch = match BatchEnvelope::parse(header) {
            Ok(b) => b,
            Err(e) => return self.refuse_none(out, subject, format!("batch: {e}")),
        };
        if let Some(key) = &self.config.key {
            match signature(m) {
                None => return self.refuse_none(out, subject, "the batch is not signed".into()),
                Some(t) if !key.verify_batch(subject, &batch, &m.payload, t) => {
                    return self.refuse_none(
                        out,
                        subject,
                        "the batch's signature does not match".into(),
                    );
                }
                Some(_) => {}
            }
        }
        let payload = Bytes::copy_from_slice(&m.payload);
        let frames = match decode_frames(&payload, batch.count) {
            Ok(f) => f.into_iter().map(|f| payload.slice_ref(f)).collect(),
            Err(e) => return self.refuse_none(out, subject, format!("batch: {e}")),
        };
        Some((Body::Batch(batch, frames), payload))
    }

    /// A tail mark (format version 3): its header verified under the marks' own signature
    /// domain; a mark carries no payload.
    fn screen_tail(
        &self,
        subject: &str,
        header: &str,
        m: &async_nats::Message,
        out: &mut Vec<Outgoing>,
    ) -> Option<Envelope> {
        let mark = match parse_tail(header) {
            Ok(e) => e,
            Err(e) => return self.refuse_none(out, subject, format!("tail mark: {e}")),
        };
        if let Some(key) = &self.config.key {
            match signature(m) {
                None => {
                    return self.refuse_none(out, subject, "the tail mark is not signed".into());
                }
                Some(t) if !key.verify_tail(subject, &mark, t) => {
                    return self.refuse_none(
                        out,
                        subject,
                        "the tail mark's signature does not match".into(),
                    );
                }
                Some(_) => {}
            }
        }
        if !m.payload.is_empty() {
            return self.refuse_none(out, subject, "a tail mark carries no payload".into());
        }
        Some(mark)
    }

    /// The origin's place in the peer list, for `n` messages with one envelope; this host's
    /// own messages and hosts outside the list are dropped here, counted per message.
    fn origin_peer(
        &self,
        out: &mut Vec<Outgoing>,
        env: &Envelope,
        topic: &Topic,
        n: usize,
    ) -> Option<usize> {
        let n = n as u64;
        if env.host == self.config.host {
            self.counters.looped.fetch_add(n, Ordering::Relaxed);
            return None;
        }
        let found = self.peers.binary_search(&env.host).ok();
        if found.is_none() && bump(&self.counters.foreign, n) {
            self.flush(out);
            audit(
                &self.bus,
                Attribution::System,
                serde_json::json!({
                    "kind": "nats.foreign-host",
                    "host": env.host.as_str(),
                    "topic": topic.as_str(),
                    "ignored": self.counters.foreign.load(Ordering::Relaxed),
                }),
            );
        }
        found
    }

    /// Screens `m` and takes it into `held` if its origin's share allows, else drops it,
    /// counted and audited.
    pub(super) fn hold(
        &self,
        index: usize,
        held: &mut Held,
        m: async_nats::Message,
        out: &mut Vec<Outgoing>,
    ) {
        let Some(s) = self.screen(index, m, out) else {
            return;
        };
        let n = s.body.messages() as u64;
        let env = s.body.envelope();
        // A batch is a copy only if its last number was held before; one overlapping newer
        // numbers is left to the per-message check on release.
        let last = env.seq.saturating_add(n - 1);
        let stream = (env.host.clone(), env.source, s.topic.clone());
        // Only a signed number proves a copy: without a key anyone writes any number, and a
        // forgery refused on release must not take its number from the message that has it.
        // Marks name the number of a message already held, so they keep their own record.
        let mark = matches!(s.body, Body::Tail(_));
        let table = if mark {
            &self.held_marks
        } else {
            &self.held_seqs
        };
        let mut held_seqs = self.config.key.as_ref().map(|_| table.lock());
        if let Some(t) = held_seqs
            .as_ref()
            .filter(|t| t.peek(&stream, env.epoch, last, MAX_GAP) == Observed::Replayed)
        {
            // A stream's mark is sent again on every connect and request round, so a mark of
            // the current epoch no newer than one already held is expected and says nothing:
            // it is dropped without a refusal, and a played-back copy takes no room either
            // way. A mark of an earlier epoch is a copy, refused like a message's.
            let earlier = t.epoch(&stream).is_some_and(|e| env.epoch < e);
            drop(held_seqs);
            if mark && !earlier {
                return;
            }
            let reason = format!(
                "epoch {} sequence {last} was already taken in from {}: a replay",
                env.epoch, env.host
            );
            return self.refuse_messages(out, s.message.subject.as_str(), n, reason);
        }
        let (max_messages, max_bytes) = self.share();
        let Some(share) = held.shares.get_mut(s.peer) else {
            return;
        };
        // The message bound counts NATS messages, as the client's own queue in front does;
        // marks have a count of their own but share the bytes, so the byte bound still holds.
        let count = if mark { share.marks } else { share.messages };
        let fits = count < max_messages && share.bytes.saturating_add(s.size) <= max_bytes;
        if !fits {
            drop(held_seqs);
            if bump(&self.counters.overflow_in, n) {
                self.flush(out);
                audit(
                    &self.bus,
                    Attribution::System,
                    serde_json::json!({
                        "kind": "nats.import-overflow",
                        "subject": s.message.subject.as_str(),
                        "host": s.body.envelope().host.as_str(),
                        "bytes": s.size,
                        "held_messages": share.messages,
                        "held_bytes": share.bytes,
                        "max_messages": max_messages,
                        "max_bytes": max_bytes,
                        "dropped": self.counters.overflow_in.load(Ordering::Relaxed),
                    }),
                );
            }
            return;
        }
        // Only what is held is recorded: a dropped message's copy may still fill its hole.
        if let Some(t) = held_seqs.as_mut() {
            t.observe(&stream, env.epoch, last, MAX_GAP);
        }
        drop(held_seqs);
        if mark {
            share.marks += 1;
        } else {
            share.messages += 1;
        }
        share.bytes += s.size;
        held.bytes += s.size;
        let c = &self.counters;
        c.import_held_bytes
            .fetch_add(s.size as u64, Ordering::Relaxed);
        c.import_peak_bytes
            .fetch_max(held.bytes as u64, Ordering::Relaxed);
        held.queue.push_back(s);
    }

    /// The oldest held message, its room given back to its origin's share.
    pub(super) fn release(&self, held: &mut Held) -> Option<Screened> {
        let s = held.queue.pop_front()?;
        if let Some(share) = held.shares.get_mut(s.peer) {
            if matches!(s.body, Body::Tail(_)) {
                share.marks -= 1;
            } else {
                share.messages -= 1;
            }
            share.bytes -= s.size;
        }
        held.bytes -= s.size;
        self.counters
            .import_held_bytes
            .fetch_sub(s.size as u64, Ordering::Relaxed);
        Some(s)
    }
}
