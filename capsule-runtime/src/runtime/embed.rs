//! What an embedder needs to talk to its capsules without assembling bus types by hand:
//! publishing as a verified principal or as the host, awaiting the first reply to a request
//! with a typed timeout, reading how each handler link ended, and the paths of the state
//! layout. Every input is checked the way the control socket checks it (topic grammar, the
//! audit topic, payload size and JSON, the principal's profile), and a refusal publishes
//! nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use capsule_bus::{
    AUDIT_TOPIC, Attribution, JsonPayload, Message, Outgoing, PrincipalId, Scope, Topic,
    TopicError, TopicPattern,
};
use capsule_security::PrincipalProfile;

use super::Runtime;
use crate::host::ipc::MAX_PAYLOAD_BYTES;
use crate::outcomes::DispatchOutcomes;
use crate::scope::audit_rule;

/// Whom a message an embedder publishes is attributed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sender {
    /// A principal, attributed `verified` once its profile is checked (present and enabled,
    /// or absent, which means the defaults).
    Principal(PrincipalId),
    /// The host itself, for no principal.
    System,
}

impl Sender {
    /// A principal by name: `Sender::principal("alice")`.
    pub fn principal(name: &str) -> Result<Self, PublishError> {
        PrincipalId::parse(name)
            .map(Self::Principal)
            .map_err(|e| PublishError::Principal {
                principal: name.to_string(),
                reason: e.to_string(),
            })
    }
}

impl From<PrincipalId> for Sender {
    fn from(p: PrincipalId) -> Self {
        Self::Principal(p)
    }
}

/// What one publish reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// The bus sequence number the message got.
    pub seq: u64,
    /// Subscriptions (and the dispatcher's tap) it was queued on.
    pub delivered: usize,
    /// Subscriptions that refused it or were cut by the fan-out cap (each counted a drop).
    pub dropped: usize,
}

/// Why [`Runtime::publish`] published nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The topic is not a valid topic.
    #[error("topic `{topic}`: {source}")]
    Topic {
        /// The topic as given.
        topic: String,
        /// Why it is invalid.
        source: TopicError,
    },
    /// Nothing but the host's audit entries may go on the audit topic.
    #[error("the audit topic carries host entries only; nothing may be published on it")]
    AuditTopic,
    /// The payload is larger than [`MAX_PAYLOAD_BYTES`](crate::MAX_PAYLOAD_BYTES).
    #[error("payload is {len} bytes; the limit is {limit}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The payload is not one JSON value.
    #[error("payload: {0}")]
    Payload(String),
    /// The principal is not a valid id, its profile is malformed, or it is disabled.
    #[error("principal `{principal}` refused: {reason}")]
    Principal {
        /// The principal as given.
        principal: String,
        /// Why.
        reason: String,
    },
}

/// Why [`Runtime::request`] returned no reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The request could not be published.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The reply pattern is not a valid pattern.
    #[error("reply pattern `{pattern}`: {source}")]
    ReplyPattern {
        /// The pattern as given.
        pattern: String,
        /// Why it is invalid.
        source: TopicError,
    },
    /// No matching reply arrived in time.
    #[error("no reply on `{pattern}` within {} ms", waited.as_millis())]
    Timeout {
        /// The reply pattern.
        pattern: String,
        /// How long the request waited.
        waited: Duration,
    },
}

/// The paths of a runtime's state directory, for an embedder that shows or inspects them.
#[derive(Clone, Debug)]
pub struct StatePaths {
    state_dir: PathBuf,
    workspace_root: Option<PathBuf>,
}

impl StatePaths {
    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// A principal's home (`home://`): `<state>/home/<principal>`.
    pub fn principal_home(&self, principal: &PrincipalId) -> PathBuf {
        self.state_dir.join("home").join(principal.as_str())
    }

    /// A principal's `/tmp/`: `<home>/.local/tmp`.
    pub fn principal_tmp(&self, principal: &PrincipalId) -> PathBuf {
        self.principal_home(principal).join(".local").join("tmp")
    }

    /// A principal's profile: `<state>/profiles/<principal>.toml`.
    pub fn principal_profile(&self, principal: &PrincipalId) -> PathBuf {
        PrincipalProfile::path(&self.state_dir, principal)
    }

    /// A capsule's workspace (`cwd://`): the configured shared root, or
    /// `<state>/workspaces/<capsule>`.
    pub fn capsule_workspace(&self, capsule: &str) -> PathBuf {
        match &self.workspace_root {
            Some(root) => root.clone(),
            None => self.state_dir.join("workspaces").join(capsule),
        }
    }

    /// A capsule's log for a principal: `<home>/.local/log/<capsule>.log`.
    pub fn capsule_log(&self, principal: &PrincipalId, capsule: &str) -> PathBuf {
        self.principal_home(principal)
            .join(".local")
            .join("log")
            .join(format!("{capsule}.log"))
    }

    /// The previous, rotated log: `<capsule>.log.1` beside [`capsule_log`](Self::capsule_log).
    pub fn capsule_log_rotated(&self, principal: &PrincipalId, capsule: &str) -> PathBuf {
        self.principal_home(principal)
            .join(".local")
            .join("log")
            .join(format!("{capsule}.log.1"))
    }

    /// The operator's grant for a capsule: `<state>/grants/<capsule>.toml`.
    pub fn capsule_grant(&self, capsule: &str) -> PathBuf {
        self.state_dir
            .join("grants")
            .join(format!("{capsule}.toml"))
    }
}

impl Runtime {
    /// Publishes `payload` (one JSON value) on `topic` as `sender`, exactly as the control
    /// socket does: a principal is attributed `verified` after its profile is checked.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use capsule_runtime::{Runtime, RuntimeConfig, Sender};
    /// let runtime = Runtime::new(RuntimeConfig::new("/var/lib/capsules"))?;
    /// runtime.publish("chat.post", r#"{"text":"hi"}"#, Sender::principal("alice")?)?;
    /// runtime.publish("chat.tick", "{}", Sender::System)?;
    /// # Ok(()) }
    /// ```
    pub fn publish(
        &self,
        topic: &str,
        payload: &str,
        sender: Sender,
    ) -> Result<Published, PublishError> {
        let topic = Topic::parse(topic).map_err(|source| PublishError::Topic {
            topic: topic.to_string(),
            source,
        })?;
        if topic.as_str() == AUDIT_TOPIC {
            return Err(PublishError::AuditTopic);
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(PublishError::TooLarge {
                len: payload.len(),
                limit: MAX_PAYLOAD_BYTES,
            });
        }
        let payload = JsonPayload::parse(payload.to_string())
            .map_err(|e| PublishError::Payload(e.to_string()))?;
        let attribution = match sender {
            Sender::Principal(p) => {
                self.verify(&p)?;
                Attribution::Verified(p)
            }
            Sender::System => Attribution::System,
        };
        let report = self.bus().publish(Outgoing {
            topic,
            payload,
            source: uuid::Uuid::nil(),
            attribution,
            hops: 0,
        });
        Ok(Published {
            seq: report.seq,
            delivered: report.delivered,
            dropped: report.refused + report.cut,
        })
    }

    /// Publishes like [`publish`](Self::publish) and returns the first message on
    /// `reply_pattern` that belongs to the same sender (the principal's own messages, or the
    /// host's for [`Sender::System`]), or [`RequestError::Timeout`] after `timeout`. The reply
    /// subscription exists before the request is published, so a fast reply is never missed.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use capsule_runtime::{Runtime, RuntimeConfig, Sender};
    /// let runtime = Runtime::new(RuntimeConfig::new("/var/lib/capsules"))?;
    /// runtime.load("capsules/notes").await?;
    /// let alice = Sender::principal("alice")?;
    /// let reply = runtime
    ///     .request("notes.list", "{}", alice, "notes.reply", Duration::from_secs(5))
    ///     .await?;
    /// println!("{}", reply.payload.as_str());
    /// # Ok(()) }
    /// ```
    pub async fn request(
        &self,
        topic: &str,
        payload: &str,
        sender: Sender,
        reply_pattern: &str,
        timeout: Duration,
    ) -> Result<Arc<Message>, RequestError> {
        let pattern =
            TopicPattern::parse(reply_pattern).map_err(|source| RequestError::ReplyPattern {
                pattern: reply_pattern.to_string(),
                source,
            })?;
        let scope = match &sender {
            Sender::Principal(p) => {
                self.verify(p)?;
                let firehose = PrincipalProfile::load(&self.inner.config.state_dir, p)
                    .is_ok_and(|profile| profile.audit_firehose());
                match audit_rule(&pattern, p, firehose) {
                    Scope::All => Scope::Principal(p.clone()),
                    scoped => scoped,
                }
            }
            Sender::System => Scope::System,
        };
        let mut replies = self.bus().subscribe(pattern, scope);
        self.publish(topic, payload, sender)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let drain = replies.recv(left, MAX_PAYLOAD_BYTES).await;
            if let Some(first) = drain.messages.into_iter().next() {
                return Ok(first);
            }
            if left.is_zero() || tokio::time::Instant::now() >= deadline {
                return Err(RequestError::Timeout {
                    pattern: reply_pattern.to_string(),
                    waited: timeout,
                });
            }
        }
    }

    /// A reader of how every handler link ends from now on: capsule, action, principal,
    /// topic, and the result (`deny`/`abort` with its reason, a failure with its trap
    /// message).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use capsule_runtime::{LinkResult, Runtime, RuntimeConfig, Sender};
    /// let runtime = Runtime::new(RuntimeConfig::new("/var/lib/capsules"))?;
    /// runtime.load("capsules/moderation").await?;
    /// let mut outcomes = runtime.dispatch_outcomes();
    /// runtime.publish("chat.post", r#"{"text":"spam"}"#, Sender::principal("bob")?)?;
    /// while let Some(o) = outcomes.next().await {
    ///     if let LinkResult::Deny { reason } = &o.result {
    ///         println!("{} denied {} for {:?}: {reason}", o.capsule, o.topic, o.principal);
    ///         break;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn dispatch_outcomes(&self) -> DispatchOutcomes {
        self.inner.dispatcher.outcomes()
    }

    /// The paths of this runtime's state layout.
    pub fn paths(&self) -> StatePaths {
        StatePaths {
            state_dir: self.inner.config.state_dir.clone(),
            workspace_root: self.inner.config.workspace_root.clone(),
        }
    }

    /// Checks that `principal` may act: its profile is absent or well-formed, and enabled.
    fn verify(&self, principal: &PrincipalId) -> Result<(), PublishError> {
        let refused = |reason: String| PublishError::Principal {
            principal: principal.to_string(),
            reason,
        };
        let profile = PrincipalProfile::load(&self.inner.config.state_dir, principal)
            .map_err(|e| refused(e.to_string()))?;
        if profile.enabled {
            Ok(())
        } else {
            Err(refused("its profile is disabled".into()))
        }
    }
}
