//! Tail marks: how a receiver learns of messages lost at the end of a stream, which no later
//! message reveals as a hole. A mark (format version 3, header
//! `3;<host>;<attribution>;<source>;<epoch>;<last seq>;<hops>`, empty payload, on the
//! stream's own subject) tells every receiver the last number its publisher handed to NATS;
//! a receiver that saw less counts the difference as lost, exactly as for a hole.
//!
//! Marks are sent, for every stream an export pattern sent recently, whenever the bridge's
//! connection comes up (so what was written into a dying connection is covered) and whenever
//! another host asks on the cluster's request subject ([`request_subject`]), which a host
//! does whenever its own connection comes up (so what went by while it was away is covered).
//! Each mark is handed to the client after every message it covers, and the server keeps one
//! connection's order, so a mark never overtakes its stream. Why one of the two always
//! reaches a receiver that came back: the receiver's request reaches the server after its
//! subscriptions; either the publisher's subscription to requests was in place by then (it
//! answers, after the request, so after the subscriptions) or it was not, and then the
//! publisher reconnected later and sends its marks after that.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use capsule_bus::{Attribution, Topic};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::bridge::{ENVELOPE_NAME, SIGNATURE_NAME};
use crate::config::BridgeConfig;
use crate::envelope::{Envelope, EnvelopeError};
use crate::subject::{ClusterName, cluster_prefix, topic_subject};

/// The tail mark format version, the header's first field.
pub const TAIL_VERSION: &str = "3";

/// Streams each export pattern remembers for its marks; the oldest is forgotten first.
pub const TAILS_KEPT: usize = 4096;

/// Least time between two rounds of marks: requests arriving meanwhile are answered by one
/// round after it, so a flood of requests costs a bounded rate of marks.
const ROUND_GAP: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether an envelope header value is a tail mark's.
pub fn is_tail(header: &str) -> bool {
    header
        .strip_prefix(TAIL_VERSION)
        .is_some_and(|r| r.starts_with(';'))
}

/// The header value of a tail mark: `mark.seq` is the last number of the stream.
pub fn tail_header_value(mark: &Envelope) -> String {
    let mut m = mark.clone();
    // A mark carries no source name: receivers learn it from the messages.
    m.source_name = None;
    m.header_value_as(TAIL_VERSION)
}

/// Parses a tail mark's header value; `seq` of the result is the stream's last number.
pub fn parse_tail(value: &str) -> Result<Envelope, EnvelopeError> {
    Envelope::parse_as(value, TAIL_VERSION)
}

/// The subject on which a host asks every other host of `cluster` for its marks. It is the
/// cluster prefix itself, which no topic's subject (one token more) nor import subscription
/// (`prefix.…`) matches.
pub fn request_subject(cluster: &ClusterName) -> String {
    cluster_prefix(cluster)
}

/// What a mark says of one stream.
#[derive(Clone, Debug)]
struct Last {
    topic: Topic,
    source: Uuid,
    attribution: Attribution,
    hops: u8,
    epoch: u64,
    seq: u64,
}

/// The last number handed to the client for each stream one export pattern sent, recorded
/// after the hand-over so a mark built from it never overtakes its message. A full table
/// forgets the stream that sent least recently (not the one that began first), so a
/// long-lived stream that keeps sending is never pushed out by newer ones that fell silent.
#[derive(Debug)]
pub(crate) struct Tails {
    streams: Mutex<Recent>,
}

/// The streams of [`Tails`], each with the stamp of its latest record.
#[derive(Debug, Default)]
struct Recent {
    map: HashMap<(Uuid, Topic), (Last, u64)>,
    /// Keys by the stamp they were recorded under, oldest first. An entry whose stamp is no
    /// longer its key's is stale: the key sent again later and has a newer entry.
    order: VecDeque<((Uuid, Topic), u64)>,
    stamp: u64,
}

impl Tails {
    pub(crate) fn new() -> Self {
        Self {
            streams: Mutex::new(Recent::default()),
        }
    }

    /// Records that message `seq` of `source`'s stream `epoch` on `topic` was dealt with
    /// (handed to the client, or dropped after it was numbered).
    pub(crate) fn record(
        &self,
        source: Uuid,
        topic: &Topic,
        attribution: Attribution,
        hops: u8,
        epoch: u64,
        seq: u64,
    ) {
        let mut guard = self.streams.lock();
        let Recent { map, order, stamp } = &mut *guard;
        *stamp += 1;
        let key = (source, topic.clone());
        if let Some((last, s)) = map.get_mut(&key) {
            *s = *stamp;
            if (epoch, seq) >= (last.epoch, last.seq) {
                last.attribution = attribution;
                last.hops = hops;
                last.epoch = epoch;
                last.seq = seq;
            }
        } else {
            // Each key has exactly one current entry in `order`, so this ends.
            while map.len() >= TAILS_KEPT {
                let Some((old, s)) = order.pop_front() else {
                    break;
                };
                if map.get(&old).is_some_and(|(_, current)| *current == s) {
                    map.remove(&old);
                }
            }
            let last = Last {
                topic: topic.clone(),
                source,
                attribution,
                hops,
                epoch,
                seq,
            };
            map.insert(key.clone(), (last, *stamp));
        }
        order.push_back((key, *stamp));
        // Stale entries dropped now and then: `order` stays within twice the table, at a
        // cost spread over the records that made it grow.
        if order.len() > 2 * TAILS_KEPT {
            order.retain(|(k, s)| map.get(k).is_some_and(|(_, current)| current == s));
        }
    }

    fn snapshot(&self) -> Vec<Last> {
        self.streams
            .lock()
            .map
            .values()
            .map(|(last, _)| last.clone())
            .collect()
    }
}

/// Sends a round of marks for every stream of `tails` each time `wake` is notified, at most
/// once per [`ROUND_GAP`].
pub(crate) async fn mark_loop(
    client: Client,
    config: Arc<BridgeConfig>,
    tails: Vec<Arc<Tails>>,
    wake: Arc<Notify>,
) {
    loop {
        wake.notified().await;
        for t in &tails {
            for last in t.snapshot() {
                send_mark(&client, &config, &last).await;
            }
        }
        tokio::time::sleep(ROUND_GAP).await;
    }
}

async fn send_mark(client: &Client, config: &BridgeConfig, last: &Last) {
    let mark = Envelope {
        host: config.host.clone(),
        attribution: last.attribution.clone(),
        source: last.source,
        source_name: None,
        epoch: last.epoch,
        seq: last.seq,
        hops: last.hops,
    };
    let subject = topic_subject(&config.cluster, &last.topic);
    let mut headers = HeaderMap::new();
    headers.insert(ENVELOPE_NAME, tail_header_value(&mark));
    if let Some(key) = &config.key {
        headers.insert(SIGNATURE_NAME, key.sign_tail(&subject, &mark));
    }
    // A mark the client refuses is sent again by the round after the next connect.
    if let Err(e) = client
        .publish_with_headers(subject, headers, Bytes::new())
        .await
    {
        tracing::debug!(target: crate::AUDIT_TARGET, error = %e, "tail mark not sent");
    }
}

/// Wakes the mark loop for every request another host of the cluster sends.
pub(crate) async fn request_loop(mut requests: async_nats::Subscriber, wake: Arc<Notify>) {
    while requests.next().await.is_some() {
        wake.notify_one();
    }
}

/// Asks every other host for its marks each time `connected` is notified (the connection
/// came up, after the client re-subscribed), and wakes this host's own mark loop.
pub(crate) async fn connect_loop(
    client: Client,
    cluster: ClusterName,
    connected: Arc<Notify>,
    marks: Arc<Notify>,
    importing: bool,
) {
    let subject = request_subject(&cluster);
    loop {
        connected.notified().await;
        marks.notify_one();
        if importing && let Err(e) = client.publish(subject.clone(), Bytes::new()).await {
            tracing::debug!(target: crate::AUDIT_TARGET, error = %e, "tail request not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn kept(t: &Tails) -> Vec<String> {
        let mut v: Vec<String> = t
            .snapshot()
            .iter()
            .map(|l| format!("{}={}", l.topic.as_str(), l.seq))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_full_table_forgets_the_stream_that_sent_least_recently() {
        let t = Tails::new();
        let s = Uuid::from_u128(1);
        let rec = |name: &str, seq| t.record(s, &topic(name), Attribution::System, 0, 1, seq);
        rec("long", 1);
        for i in 0..TAILS_KEPT - 1 {
            rec(&format!("o{i}"), 1);
        }
        rec("long", 2);
        rec("new", 1);
        let k = kept(&t);
        assert_eq!(k.len(), TAILS_KEPT);
        assert!(
            k.contains(&"long=2".to_string()),
            "the stream that sent last is kept"
        );
        assert!(
            !k.contains(&"o0=1".to_string()),
            "the least recent one is forgotten"
        );
        // Many records of one stream keep the order's stale entries bounded.
        for n in 3..(3 * TAILS_KEPT as u64) {
            rec("long", n);
        }
        assert!(t.streams.lock().order.len() <= 2 * TAILS_KEPT + 1);
        assert_eq!(kept(&t).len(), TAILS_KEPT);
    }
}
