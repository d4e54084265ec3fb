//! The host's counters in the Prometheus text format (version 0.0.4), encoded by
//! `prometheus-client` from a [`Snapshot`]: one encoding for `capsule metrics` (over the
//! control socket) and for the loopback HTTP endpoint ([`endpoint`]), which serves them only
//! to a scraper holding the bearer token of `<state>/metrics.token` ([`token`]).

mod endpoint;
pub(crate) mod token;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub(crate) use endpoint::{Gate, loopback, serve};

use crate::report::Snapshot;

type Labels = Vec<(String, String)>;

fn label(capsule: &str) -> Labels {
    vec![("capsule".to_string(), capsule.to_string())]
}

/// Encodes `s` in the Prometheus text format.
pub(crate) fn encode(s: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("capsule");
    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Counter>::default();
        registry.register(name, help, family.clone());
        family
    };
    let gauge = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Gauge>::default();
        registry.register(name, help, family.clone());
        family
    };
    let info = gauge(
        &mut registry,
        "info",
        "A loaded capsule (always 1), labelled with its version and state",
    );
    let published = counter(
        &mut registry,
        "messages_published",
        "Messages a capsule published",
    );
    let received = counter(
        &mut registry,
        "messages_received",
        "Messages a capsule's subscriptions handed to it",
    );
    let dropped = counter(
        &mut registry,
        "messages_dropped",
        "Messages a capsule's subscriptions lost before it took them",
    );
    let denied = counter(
        &mut registry,
        "ipc_denied",
        "IPC requests of a capsule refused by its policy",
    );
    let handler_denials = counter(
        &mut registry,
        "handler_denials",
        "Messages a capsule's handlers stopped with deny or abort",
    );
    let traps = counter(
        &mut registry,
        "traps",
        "Handler calls and run loops of a capsule that trapped or were interrupted",
    );
    let calls = counter(
        &mut registry,
        "handler_calls",
        "Handler calls of a capsule by outcome (completed, failed, dropped)",
    );
    let resets = counter(
        &mut registry,
        "instance_resets",
        "Fresh instances made because the previous one served another principal",
    );
    let queued_messages = gauge(
        &mut registry,
        "queued_messages",
        "Messages waiting in a capsule's subscriptions",
    );
    let queued_calls = gauge(
        &mut registry,
        "queued_calls",
        "Handler calls waiting in a capsule's per-principal queues",
    );
    let subscriptions = gauge(
        &mut registry,
        "subscriptions",
        "Live subscriptions a capsule holds",
    );
    let memory_peak = gauge(
        &mut registry,
        "memory_peak_bytes",
        "Largest linear memory a principal made one of a capsule's instances reach",
    );
    let refused_grows = counter(
        &mut registry,
        "memory_refused_grows",
        "Memory growths refused because they exceeded the principal's quota",
    );
    for c in &s.capsules {
        let l = label(&c.name);
        let mut tagged = l.clone();
        tagged.push(("version".into(), c.version.clone()));
        tagged.push(("state".into(), c.state.clone()));
        info.get_or_create(&tagged).set(1);
        published.get_or_create(&l).inc_by(c.published);
        received.get_or_create(&l).inc_by(c.received);
        dropped.get_or_create(&l).inc_by(c.dropped);
        denied.get_or_create(&l).inc_by(c.denied);
        handler_denials.get_or_create(&l).inc_by(c.handler_denials);
        traps.get_or_create(&l).inc_by(c.traps);
        for (outcome, n) in [
            ("completed", c.calls_completed),
            ("failed", c.calls_failed),
            ("dropped", c.calls_dropped),
        ] {
            let mut with = l.clone();
            with.push(("outcome".into(), outcome.into()));
            calls.get_or_create(&with).inc_by(n);
        }
        resets.get_or_create(&l).inc_by(c.instance_resets);
        queued_messages
            .get_or_create(&l)
            .set(i64::try_from(c.queued_messages).unwrap_or(i64::MAX));
        queued_calls
            .get_or_create(&l)
            .set(i64::try_from(c.queued_calls).unwrap_or(i64::MAX));
        subscriptions
            .get_or_create(&l)
            .set(i64::try_from(c.subscriptions).unwrap_or(i64::MAX));
        for m in &c.memory {
            let mut with = l.clone();
            with.push(("principal".into(), m.principal.clone()));
            memory_peak
                .get_or_create(&with)
                .set(i64::try_from(m.peak_bytes).unwrap_or(i64::MAX));
            refused_grows.get_or_create(&with).inc_by(m.refused_grows);
        }
    }
    let host_counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        registry.register(name, help, c);
    };
    host_counter(
        &mut registry,
        "dispatch_chains",
        "Published messages that matched at least one handler",
        s.dispatch.chains,
    );
    host_counter(
        &mut registry,
        "dispatch_stopped",
        "Handler chains ended early by final, deny or abort",
        s.dispatch.stopped,
    );
    host_counter(
        &mut registry,
        "dispatch_failed_links",
        "Handler calls that failed while the chain went on",
        s.dispatch.failed_links,
    );
    host_counter(
        &mut registry,
        "dispatch_tap_dropped",
        "Messages the dispatcher lost because its tap was full",
        s.dispatch.tap_dropped,
    );
    host_counter(
        &mut registry,
        "control_refused",
        "Control socket requests refused for a wrong or missing session token",
        s.control_refused,
    );
    host_counter(
        &mut registry,
        "metrics_refused",
        "Metrics scrapes refused for a wrong or missing bearer token",
        s.metrics_refused,
    );
    let loaded = Gauge::<i64>::default();
    loaded.set(i64::try_from(s.capsules.len()).unwrap_or(i64::MAX));
    registry.register("loaded", "Capsules loaded now", loaded);
    let uptime = Gauge::<i64>::default();
    uptime.set(i64::try_from(s.uptime_ms / 1000).unwrap_or(i64::MAX));
    registry.register("uptime_seconds", "Seconds since the host started", uptime);
    if let Some(b) = &s.bridge {
        crate::cluster::register(&mut registry, b);
    }
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _complete = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
    text
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::report::{CapsuleRow, DispatchRow, MemoryRow};

    /// A snapshot of one capsule serving alice.
    pub(in crate::metrics) fn snapshot() -> Snapshot {
        Snapshot {
            state_dir: "/s".into(),
            owner: "default".into(),
            uptime_ms: 3000,
            control_refused: 2,
            metrics_refused: 6,
            dispatch: DispatchRow::default(),
            capsules: vec![CapsuleRow {
                name: "notes".into(),
                version: "0.1.0".into(),
                owner: "default".into(),
                session: "x".into(),
                state: "serving".into(),
                run_loop: "none".into(),
                handlers: Vec::new(),
                published: 5,
                received: 1,
                dropped: 0,
                denied: 3,
                handler_denials: 0,
                traps: 0,
                queued_messages: 4,
                queued_calls: 0,
                subscriptions: 1,
                calls_completed: 7,
                calls_failed: 1,
                calls_dropped: 0,
                instance_resets: 2,
                memory: vec![MemoryRow {
                    principal: "alice".into(),
                    peak_bytes: 1_114_112,
                    refused_grows: 0,
                }],
            }],
            principals: Vec::new(),
            bridge: None,
        }
    }

    #[test]
    fn counters_and_gauges_are_in_prometheus_text() {
        let text = encode(&snapshot());
        for line in [
            "# TYPE capsule_messages_published_total counter",
            "capsule_messages_published_total{capsule=\"notes\"} 5",
            "capsule_ipc_denied_total{capsule=\"notes\"} 3",
            "capsule_handler_calls_total{capsule=\"notes\",outcome=\"completed\"} 7",
            "capsule_queued_messages{capsule=\"notes\"} 4",
            "capsule_memory_peak_bytes{capsule=\"notes\",principal=\"alice\"} 1114112",
            "capsule_control_refused_total 2",
            "capsule_metrics_refused_total 6",
            "capsule_loaded 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
        assert!(
            !text.contains("# EOF"),
            "classic text format, not OpenMetrics"
        );
    }
}
