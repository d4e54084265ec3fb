//! `[publish]` and `[subscribe]`: the capsule's IPC ACLs, keyed by topic pattern, and the
//! interceptor bindings (`handler`, `priority`) a `[subscribe]` entry may carry.

use capsule_bus::{TopicError, TopicPattern};
use toml::{Table, Value};

use super::reader::{ManifestError, Reader, join};

/// Default interceptor priority (lower runs first).
pub const DEFAULT_HANDLER_PRIORITY: u32 = 100;

/// One `[publish]` entry; the key is the publish ACL pattern.
#[derive(Clone, Debug)]
pub struct PublishEntry {
    /// The topic pattern this capsule may publish to.
    pub pattern: TopicPattern,
    /// Payload type reference, informational.
    pub wit: Option<String>,
    /// Whether the last segment names a recipient, informational.
    pub fanout: bool,
}

/// One `[subscribe]` entry; the key is the subscribe ACL pattern.
#[derive(Clone, Debug)]
pub struct SubscribeEntry {
    /// The topic pattern this capsule may subscribe to.
    pub pattern: TopicPattern,
    /// Payload type reference, informational.
    pub wit: Option<String>,
    /// Whether the last segment names a recipient, informational.
    pub fanout: bool,
    /// The interceptor bound to this pattern, if any.
    pub handler: Option<Handler>,
}

/// An interceptor binding declared by `handler = "…"` in `[subscribe]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handler {
    /// The action name passed to `astrid-hook-trigger`.
    pub action: String,
    /// Dispatch priority; lower runs first.
    pub priority: u32,
}

fn topic_reason(e: &TopicError) -> String {
    format!("invalid topic pattern: {e}")
}

struct TopicEntry {
    wit: Option<String>,
    fanout: bool,
    handler: Option<Handler>,
}

fn parse_topics(
    r: &Reader<'_>,
    t: &Table,
    section: &str,
) -> Result<Vec<(TopicPattern, TopicEntry)>, ManifestError> {
    let mut out = Vec::with_capacity(t.len());
    for (k, v) in t {
        if let Some(entry) = r.keep(parse_topic(r, section, k, v)) {
            out.push(entry);
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// One entry of `[publish]` or `[subscribe]`.
fn parse_topic(
    r: &Reader<'_>,
    section: &str,
    k: &str,
    v: &Value,
) -> Result<(TopicPattern, TopicEntry), ManifestError> {
    let subscribe = section == "subscribe";
    {
        let key = join(section, k);
        let pattern = TopicPattern::parse(k).map_err(|e| r.invalid(&key, topic_reason(&e)))?;
        let entry = match v {
            Value::String(s) => TopicEntry {
                wit: Some(s.clone()),
                fanout: false,
                handler: None,
            },
            Value::Table(et) => {
                let known: &[&str] = if subscribe {
                    &[
                        "wit", "version", "tag", "rev", "branch", "path", "fanout", "handler",
                        "priority",
                    ]
                } else {
                    &["wit", "version", "tag", "rev", "branch", "path", "fanout"]
                };
                r.known_keys(et, &key, known)?;
                let pins = ["version", "tag", "rev", "branch", "path"]
                    .iter()
                    .filter(|p| et.contains_key(**p))
                    .count();
                if pins > 1 {
                    return Err(r.invalid(
                        &key,
                        "at most one of version, tag, rev, branch, path may be set",
                    ));
                }
                for pin in ["version", "tag", "rev", "branch", "path"] {
                    r.opt_string(et, &key, pin)?;
                }
                let fanout = et
                    .get("fanout")
                    .map(|f| r.bool(f, &join(&key, "fanout")))
                    .transpose()?
                    .unwrap_or(false);
                let action = r.opt_string(et, &key, "handler")?;
                if action.as_deref() == Some("") {
                    return Err(r.invalid(join(&key, "handler"), "must not be empty"));
                }
                let priority = et
                    .get("priority")
                    .map(|p| {
                        let pkey = join(&key, "priority");
                        let n = p.as_integer().ok_or_else(|| {
                            r.invalid(
                                &pkey,
                                format!("expected an integer, found {}", p.type_str()),
                            )
                        })?;
                        u32::try_from(n)
                            .map_err(|_| r.invalid(&pkey, "must be between 0 and 4294967295"))
                    })
                    .transpose()?;
                let handler = match (action, priority) {
                    (Some(action), p) => Some(Handler {
                        action,
                        priority: p.unwrap_or(DEFAULT_HANDLER_PRIORITY),
                    }),
                    (None, Some(_)) => {
                        return Err(
                            r.invalid(join(&key, "priority"), "`priority` requires a `handler`")
                        );
                    }
                    (None, None) => None,
                };
                TopicEntry {
                    wit: r.opt_string(et, &key, "wit")?,
                    fanout,
                    handler,
                }
            }
            other => {
                return Err(r.invalid(
                    key,
                    format!("expected a string or a table, found {}", other.type_str()),
                ));
            }
        };
        Ok((pattern, entry))
    }
}

/// Parses `[publish]`, sorted by pattern.
pub(crate) fn parse_publish(r: &Reader<'_>, t: &Table) -> Result<Vec<PublishEntry>, ManifestError> {
    Ok(parse_topics(r, t, "publish")?
        .into_iter()
        .map(|(pattern, e)| PublishEntry {
            pattern,
            wit: e.wit,
            fanout: e.fanout,
        })
        .collect())
}

/// Parses `[subscribe]`, sorted by pattern.
pub(crate) fn parse_subscribe(
    r: &Reader<'_>,
    t: &Table,
) -> Result<Vec<SubscribeEntry>, ManifestError> {
    Ok(parse_topics(r, t, "subscribe")?
        .into_iter()
        .map(|(pattern, e)| SubscribeEntry {
            pattern,
            wit: e.wit,
            fanout: e.fanout,
            handler: e.handler,
        })
        .collect())
}
