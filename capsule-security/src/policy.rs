//! `CapsulePolicy`: what one capsule may do, built once from its manifest. Every gate is
//! fail-closed and names the reason when it says no.

use capsule_bus::{Topic, TopicPattern};

use crate::capabilities::Capabilities;
use crate::manifest::Manifest;

/// The answer of a gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The action is permitted.
    Allowed,
    /// The action is refused, with the reason shown to operators and logs.
    Denied(String),
}

impl Decision {
    /// Whether the action is permitted.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed)
    }
}

/// A capsule's grants, derived from its manifest.
#[derive(Clone, Debug, Default)]
pub struct CapsulePolicy {
    publish_acl: Vec<TopicPattern>,
    subscribe_acl: Vec<TopicPattern>,
    capabilities: Capabilities,
}

impl CapsulePolicy {
    /// Builds the policy of a parsed manifest.
    pub fn from_manifest(manifest: &Manifest) -> Self {
        Self {
            publish_acl: manifest.publish.iter().map(|p| p.pattern.clone()).collect(),
            subscribe_acl: manifest
                .subscribe
                .iter()
                .map(|s| s.pattern.clone())
                .collect(),
            capabilities: manifest.capabilities.clone(),
        }
    }

    /// A policy from explicit parts (for embedders that do not use `Capsule.toml`).
    pub fn new(
        publish_acl: Vec<TopicPattern>,
        subscribe_acl: Vec<TopicPattern>,
        capabilities: Capabilities,
    ) -> Self {
        Self {
            publish_acl,
            subscribe_acl,
            capabilities,
        }
    }

    /// The manifest's capabilities.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// The `[publish]` patterns.
    pub fn publish_acl(&self) -> &[TopicPattern] {
        &self.publish_acl
    }

    /// The `[subscribe]` patterns.
    pub fn subscribe_acl(&self) -> &[TopicPattern] {
        &self.subscribe_acl
    }

    /// Whether publishing to `topic` is allowed by some `[publish]` pattern (empty = deny all).
    pub fn may_publish(&self, topic: &Topic) -> Decision {
        if self.publish_acl.is_empty() {
            return Decision::Denied("the manifest declares no [publish] topics".into());
        }
        if self.publish_acl.iter().any(|p| p.matches(topic)) {
            Decision::Allowed
        } else {
            Decision::Denied(format!("no [publish] pattern matches `{topic}`"))
        }
    }

    /// Whether subscribing to `pattern` is allowed: some `[subscribe]` pattern must cover every
    /// topic `pattern` can match (empty = deny all).
    pub fn may_subscribe(&self, pattern: &TopicPattern) -> Decision {
        if self.subscribe_acl.is_empty() {
            return Decision::Denied("the manifest declares no [subscribe] topics".into());
        }
        if self.subscribe_acl.iter().any(|acl| acl.covers(pattern)) {
            Decision::Allowed
        } else {
            Decision::Denied(format!("no [subscribe] pattern covers `{pattern}`"))
        }
    }

    /// Whether the capsule may use `publish-as` and the uplink interface.
    pub fn may_act_as_uplink(&self) -> Decision {
        if self.capabilities.uplink {
            Decision::Allowed
        } else {
            Decision::Denied("the manifest does not grant `uplink = true`".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(v: &[&str]) -> Vec<TopicPattern> {
        v.iter()
            .map(|s| TopicPattern::parse(s).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    fn topic(s: &str) -> Topic {
        Topic::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn empty_acls_deny_everything() {
        let p = CapsulePolicy::default();
        assert!(!p.may_publish(&topic("a")).is_allowed());
        assert!(!p.may_subscribe(&pats(&["a"])[0]).is_allowed());
        assert!(!p.may_act_as_uplink().is_allowed());
    }

    #[test]
    fn publish_uses_the_matcher() {
        let p = CapsulePolicy::new(pats(&["chat.*", "x.*.z"]), vec![], Capabilities::default());
        assert!(p.may_publish(&topic("chat.a.b")).is_allowed());
        assert!(p.may_publish(&topic("x.y.z")).is_allowed());
        assert!(!p.may_publish(&topic("chat")).is_allowed());
        assert!(!p.may_publish(&topic("x.y.z.w")).is_allowed());
    }

    #[test]
    fn subscribe_needs_coverage() {
        let p = CapsulePolicy::new(vec![], pats(&["a.*", "b.c"]), Capabilities::default());
        let ok = |s: &str| p.may_subscribe(&pats(&[s])[0]).is_allowed();
        assert!(ok("a.b.*"));
        assert!(ok("a.b"));
        assert!(ok("b.c"));
        assert!(!ok("a"));
        assert!(!ok("b.*"));
        assert!(!ok("*"));
    }
}
