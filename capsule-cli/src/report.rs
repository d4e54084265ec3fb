//! What `capsule ps` and `capsule metrics` show: one snapshot of the host's counters, taken on
//! the host and sent over the control socket as JSON, rendered as a table for people or kept
//! as JSON for scripts. The snapshot is the single source for both commands and the HTTP
//! metrics endpoint, so they never disagree about what a counter means.

use std::collections::BTreeMap;

use capsule_runtime::{Capsule, RunExit, Runtime};
use serde::{Deserialize, Serialize};

/// The host at one moment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// The state directory the host serves.
    pub(crate) state_dir: String,
    /// The principal capsules run for by default.
    pub(crate) owner: String,
    /// Milliseconds since the host started.
    pub(crate) uptime_ms: u64,
    /// Control requests refused for a wrong or missing token.
    pub(crate) control_refused: u64,
    /// Scrapes of the metrics endpoint refused for a wrong or missing bearer token.
    #[serde(default)]
    pub(crate) metrics_refused: u64,
    /// Interceptor dispatch counters.
    pub(crate) dispatch: DispatchRow,
    /// Loaded capsules, in load order.
    pub(crate) capsules: Vec<CapsuleRow>,
    /// Memory peaks by principal across every capsule.
    pub(crate) principals: Vec<MemoryRow>,
    /// The NATS bridge, when the host joined a cluster.
    #[serde(default)]
    pub(crate) bridge: Option<crate::cluster::BridgeRow>,
}

/// Interceptor dispatch counters of the host.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct DispatchRow {
    pub(crate) chains: u64,
    pub(crate) stopped: u64,
    pub(crate) failed_links: u64,
    pub(crate) tap_dropped: u64,
}

/// One handler binding.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct HandlerRow {
    pub(crate) topic: String,
    pub(crate) action: String,
    pub(crate) priority: u32,
}

/// One principal's memory figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct MemoryRow {
    pub(crate) principal: String,
    pub(crate) peak_bytes: u64,
    pub(crate) refused_grows: u64,
}

/// One capsule.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CapsuleRow {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) owner: String,
    pub(crate) session: String,
    /// `serving` (no run loop), `starting` (run loop not ready yet), `running`, or `stopped`.
    pub(crate) state: String,
    /// `none`, `running`, or how it ended.
    pub(crate) run_loop: String,
    pub(crate) handlers: Vec<HandlerRow>,
    pub(crate) published: u64,
    pub(crate) received: u64,
    pub(crate) dropped: u64,
    pub(crate) denied: u64,
    pub(crate) handler_denials: u64,
    pub(crate) traps: u64,
    pub(crate) queued_messages: u64,
    pub(crate) queued_calls: u64,
    pub(crate) subscriptions: u64,
    pub(crate) calls_completed: u64,
    pub(crate) calls_failed: u64,
    pub(crate) calls_dropped: u64,
    pub(crate) instance_resets: u64,
    pub(crate) memory: Vec<MemoryRow>,
}

fn memory_rows(
    stats: &std::collections::HashMap<
        capsule_runtime::bus::PrincipalId,
        capsule_runtime::MemoryStats,
    >,
) -> Vec<MemoryRow> {
    let sorted: BTreeMap<&str, &capsule_runtime::MemoryStats> =
        stats.iter().map(|(p, s)| (p.as_str(), s)).collect();
    sorted
        .into_iter()
        .map(|(p, s)| MemoryRow {
            principal: p.to_string(),
            peak_bytes: s.peak_bytes,
            refused_grows: s.refused_grows,
        })
        .collect()
}

fn capsule_row(c: &Capsule) -> CapsuleRow {
    let s = c.stats();
    let exports = c.report().exports;
    let (state, run_loop) = match (exports.run, c.run_exit()) {
        (false, _) => ("serving", "none".to_string()),
        (true, None) if c.is_ready() => ("running", "running".to_string()),
        (true, None) => ("starting", "running".to_string()),
        (true, Some(exit)) => (
            "stopped",
            match exit {
                RunExit::Returned => "returned".to_string(),
                RunExit::Interrupted(i) => format!("interrupted: {i}"),
                RunExit::Trapped(t) => format!("trapped: {}", t.lines().next().unwrap_or("")),
                RunExit::Failed(f) => format!("failed: {}", f.lines().next().unwrap_or("")),
                other => other.to_string(),
            },
        ),
    };
    CapsuleRow {
        name: c.name().to_string(),
        version: c.manifest().package.version.to_string(),
        owner: c.owner().to_string(),
        session: c.session().to_string(),
        state: state.to_string(),
        run_loop,
        handlers: c
            .manifest()
            .handlers()
            .map(|(pattern, h)| HandlerRow {
                topic: pattern.to_string(),
                action: h.action.clone(),
                priority: h.priority,
            })
            .collect(),
        published: s.published,
        received: s.received,
        dropped: s.dropped,
        denied: s.denied,
        handler_denials: s.handler_denials,
        traps: s.traps,
        queued_messages: s.queued_messages,
        queued_calls: s.calls.queued,
        subscriptions: s.subscriptions,
        calls_completed: s.calls.completed,
        calls_failed: s.calls.failed,
        calls_dropped: s.calls.dropped,
        instance_resets: s.calls.resets,
        memory: memory_rows(&s.memory),
    }
}

impl Snapshot {
    /// Takes a snapshot of `rt`.
    pub(crate) fn take(rt: &Runtime, uptime_ms: u64, control_refused: u64) -> Self {
        let d = rt.dispatch_stats();
        Self {
            state_dir: rt.config().state_dir.display().to_string(),
            owner: rt.config().owner.to_string(),
            uptime_ms,
            control_refused,
            metrics_refused: 0,
            dispatch: DispatchRow {
                chains: d.chains,
                stopped: d.stopped,
                failed_links: d.failed_links,
                tap_dropped: d.tap_dropped,
            },
            capsules: rt.capsules().iter().map(capsule_row).collect(),
            principals: memory_rows(&rt.memory_stats()),
            bridge: None,
        }
    }
}

/// Bytes for people: `512 B`, `1.5 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The `capsule ps` table: one row per capsule, then memory peaks per capsule and principal.
pub(crate) fn render_ps(s: &Snapshot) -> String {
    let bridge = s
        .bridge
        .as_ref()
        .map(crate::cluster::render)
        .unwrap_or_default();
    if s.capsules.is_empty() {
        return format!("no capsules loaded (state {})\n{bridge}", s.state_dir);
    }
    let mut rows = vec![
        [
            "NAME", "VERSION", "STATE", "RUN LOOP", "HANDLERS", "IN", "OUT", "DROPS", "DENIED",
            "TRAPS", "QUEUED",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for c in &s.capsules {
        let handlers = if c.handlers.is_empty() {
            "-".to_string()
        } else {
            c.handlers
                .iter()
                .map(|h| format!("{}→{}", h.topic, h.action))
                .collect::<Vec<_>>()
                .join(",")
        };
        rows.push(vec![
            c.name.clone(),
            c.version.clone(),
            c.state.clone(),
            c.run_loop.clone(),
            handlers,
            (c.received + c.calls_completed + c.calls_failed).to_string(),
            c.published.to_string(),
            (c.dropped + c.calls_dropped).to_string(),
            format!("{}/{}", c.denied, c.handler_denials),
            c.traps.to_string(),
            format!("{}+{}", c.queued_messages, c.queued_calls),
        ]);
    }
    let mut out = table(&rows);
    let mut memory = vec![
        ["CAPSULE", "PRINCIPAL", "MEMORY PEAK", "REFUSED GROWS"]
            .map(String::from)
            .to_vec(),
    ];
    for c in &s.capsules {
        for m in &c.memory {
            memory.push(vec![
                c.name.clone(),
                m.principal.clone(),
                bytes(m.peak_bytes),
                m.refused_grows.to_string(),
            ]);
        }
    }
    if memory.len() > 1 {
        out.push('\n');
        out.push_str(&table(&memory));
    }
    out.push_str(&format!(
        "\nIN = messages received + handler calls; DENIED = IPC refusals/handler denials; \
         QUEUED = subscription messages + handler calls waiting\n\
         dispatch: {} chains, {} stopped, {} failed links; control: {} refused; up {}s\n",
        s.dispatch.chains,
        s.dispatch.stopped,
        s.dispatch.failed_links,
        s.control_refused,
        s.uptime_ms / 1000
    ));
    out.push_str(&bridge);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_readable() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&[
            vec!["A".into(), "BB".into(), "C".into()],
            vec!["long".into(), "x".into(), "y".into()],
        ]);
        assert_eq!(t, "A     BB  C\nlong  x   y\n");
    }
}
