//! `capsule run`'s approval handler: a capsule's `astrid:approval` request waits in a pending
//! list that `capsule approve` lists and decides through the control socket, and, when stdin
//! is a terminal, is also asked there (one question at a time); the first answer wins. A
//! request nobody answers within the handler's timeout is denied by the runtime, and leaves
//! the list then. Guest text (capsule action and resource) is shown escaped, never
//! interpreted, on the terminal and in `capsule approve`'s listing, with the backquotes that
//! delimit it escaped too, so a capsule's text cannot close its quote and write the rest of
//! the question; a principal only claimed by an uplink is shown as `(claimed)` everywhere. One
//! capsule holds at most [`MAX_PENDING_PER_CAPSULE`] places of the list, so it cannot crowd out
//! another capsule's requests.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use capsule_runtime::{ActionDecision, ActionRequest, ApprovalHandler};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::terminal::shown;

/// Most requests waiting at once; beyond it new ones are denied without asking, so a capsule
/// cannot grow the list without bound.
pub(crate) const MAX_PENDING: usize = 256;

/// Most requests of one capsule waiting at once; beyond it that capsule's new ones are denied
/// without asking, and the other capsules' still reach the list.
pub(crate) const MAX_PENDING_PER_CAPSULE: usize = 32;

type Pending = BTreeMap<u64, (ActionRequest, oneshot::Sender<ActionDecision>)>;

/// The pending requests, and whether to ask on the terminal too.
pub(crate) struct Approvals {
    pending: Arc<Mutex<Pending>>,
    terminal: bool,
    /// Serialises terminal questions.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl Approvals {
    /// Asks on the terminal too when stdin is one.
    pub(crate) fn new() -> Self {
        Self {
            pending: Arc::new(Mutex::new(BTreeMap::new())),
            terminal: std::io::stdin().is_terminal(),
            turn: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The pending requests, oldest first, as the control socket lists them (guest text
    /// escaped).
    pub(crate) fn list(&self) -> Value {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        json!(
            pending
                .values()
                .map(|(r, _)| json!({
                    "id": r.id,
                    "capsule": shown(&r.capsule),
                    "principal": r.principal.as_str(),
                    "claimed": r.claimed,
                    "action": shown(&r.action),
                    "resource": shown(&r.resource),
                }))
                .collect::<Vec<_>>()
        )
    }

    /// Decides request `id`; `false` when no such request is pending (decided, timed out or
    /// never made).
    pub(crate) fn decide(&self, id: u64, decision: ActionDecision) -> bool {
        let Some((_, reply)) = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id)
        else {
            return false;
        };
        reply.send(decision).is_ok()
    }
}

/// Removes a request from the list when its wait ends, however it ends.
struct Leave {
    pending: Arc<Mutex<Pending>>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl ApprovalHandler for Approvals {
    fn decide(&self, request: ActionRequest) -> BoxFuture<'static, ActionDecision> {
        let (tx, rx) = oneshot::channel();
        let id = request.id;
        {
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let of_capsule = pending
                .values()
                .filter(|(r, _)| r.capsule == request.capsule)
                .count();
            if pending.len() >= MAX_PENDING || of_capsule >= MAX_PENDING_PER_CAPSULE {
                tracing::warn!(capsule = %shown(&request.capsule), "too many pending approvals: denied");
                return Box::pin(async { ActionDecision::Deny });
            }
            pending.insert(id, (request.clone(), tx));
        }
        eprintln!("{}", announcement(&request));
        if self.terminal {
            let pending = Arc::clone(&self.pending);
            let turn = Arc::clone(&self.turn);
            tokio::spawn(async move {
                let _mine = turn.lock().await;
                if !pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .contains_key(&id)
                {
                    return;
                }
                let answer = tokio::task::spawn_blocking(move || ask(&request))
                    .await
                    .unwrap_or(ActionDecision::Deny);
                if let Some((_, reply)) = pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&id)
                {
                    let _decided = reply.send(answer);
                }
            });
        }
        let leave = Leave {
            pending: Arc::clone(&self.pending),
            id,
        };
        Box::pin(async move {
            let _leave = leave;
            rx.await.unwrap_or(ActionDecision::Deny)
        })
    }
}

/// Guest text between backquotes: escaped like all guest text, and its own backquotes too,
/// so it cannot end the quote early.
fn quoted(text: &str) -> String {
    format!("`{}`", shown(text).replace('`', "\\u{60}"))
}

/// Who a request acts for, marked when that principal was only claimed by an uplink.
fn principal(request: &ActionRequest) -> String {
    if request.claimed {
        format!("{} (claimed)", request.principal)
    } else {
        request.principal.to_string()
    }
}

/// The line `capsule run` prints when `request` starts waiting.
fn announcement(request: &ActionRequest) -> String {
    let id = request.id;
    format!(
        "approval #{id} pending: {} for {} asks to {} on {} (`capsule approve {id} once|session|always|deny`)",
        quoted(&request.capsule),
        principal(request),
        quoted(&request.action),
        quoted(&request.resource),
    )
}

/// The terminal question about `request`.
fn question(request: &ActionRequest) -> String {
    format!(
        "[#{} {} for {}] allow {} on {}? [o]nce / [s]ession / [a]lways / [d]eny: ",
        request.id,
        quoted(&request.capsule),
        principal(request),
        quoted(&request.action),
        quoted(&request.resource),
    )
}

/// The terminal question for `request`; anything but a decision's name (or its first
/// letter) is a denial.
fn ask(request: &ActionRequest) -> ActionDecision {
    match crate::terminal::read_answer(&question(request)) {
        Some(line) => parse_answer(&line),
        None => ActionDecision::Deny,
    }
}

/// A terminal answer: `o`/`once`, `s`/`session`, `a`/`always`; anything else denies.
fn parse_answer(line: &str) -> ActionDecision {
    match line.trim().to_ascii_lowercase().as_str() {
        "o" | "once" => ActionDecision::AllowOnce,
        "s" | "session" => ActionDecision::AllowSession,
        "a" | "always" => ActionDecision::AllowAlways,
        _ => ActionDecision::Deny,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsule_runtime::bus::PrincipalId;

    fn request(id: u64, action: &str) -> ActionRequest {
        let p = PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}"));
        ActionRequest::new(id, "tool", p, action, "/x")
    }

    #[test]
    fn answers_other_than_a_decision_deny() {
        assert_eq!(parse_answer("a\n"), ActionDecision::AllowAlways);
        assert_eq!(parse_answer(" Once "), ActionDecision::AllowOnce);
        assert_eq!(parse_answer("s"), ActionDecision::AllowSession);
        for no in ["", "y", "yes", "allow", "\u{1b}[A"] {
            assert_eq!(parse_answer(no), ActionDecision::Deny, "{no:?}");
        }
    }

    fn quiet() -> Approvals {
        Approvals {
            pending: Arc::new(Mutex::new(BTreeMap::new())),
            terminal: false,
            turn: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    #[tokio::test]
    async fn one_capsule_cannot_crowd_another_out_of_the_list() {
        let approvals = quiet();
        let p = PrincipalId::parse("mallory").unwrap_or_else(|e| panic!("{e}"));
        let mut flood = Vec::new();
        for id in 0..MAX_PENDING as u64 {
            flood.push(ApprovalHandler::decide(
                &approvals,
                ActionRequest::new(id, "flood", p.clone(), "x", &id.to_string()),
            ));
        }
        // The flood's requests beyond its share were denied without asking.
        let listed = approvals.list();
        let listed = listed.as_array().map_or(0, Vec::len);
        assert_eq!(listed, MAX_PENDING_PER_CAPSULE);
        assert_eq!(
            flood.pop().unwrap_or_else(|| panic!("one")).await,
            ActionDecision::Deny
        );
        // Another capsule's request still reaches the list and its answer.
        let waiting = ApprovalHandler::decide(&approvals, request(10_000, "delete"));
        assert_eq!(approvals.list().as_array().map_or(0, Vec::len), listed + 1);
        assert!(approvals.decide(10_000, ActionDecision::AllowOnce));
        assert_eq!(waiting.await, ActionDecision::AllowOnce);
    }

    #[test]
    fn a_question_shows_a_claim_and_guest_text_cannot_rewrite_it() {
        let p = PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}"));
        let mut forged = ActionRequest::new(
            3,
            "tool",
            p,
            "read` on `/tmp/harmless`? [o]nce / [s]ession / [a]lways / [d]eny: ",
            "/etc/shadow",
        );
        forged.claimed = true;
        for text in [question(&forged), announcement(&forged)] {
            assert!(text.contains("alice (claimed)"), "{text}");
            // Exactly the backquotes the host wrote: capsule, action and resource.
            assert_eq!(
                text.matches('`').count() - usize::from(text.contains("`capsule approve")) * 2,
                6,
                "{text}"
            );
            assert!(text.contains("\\u{60}"), "{text}");
        }
        let plain = question(&request(4, "delete"));
        assert!(!plain.contains("claimed"), "{plain}");
        assert!(plain.contains("allow `delete` on `/x`?"), "{plain}");
    }

    #[tokio::test]
    async fn the_control_socket_decides_pending_requests_once() {
        let approvals = Approvals {
            pending: Arc::new(Mutex::new(BTreeMap::new())),
            terminal: false,
            turn: Arc::new(tokio::sync::Mutex::new(())),
        };
        let waiting = ApprovalHandler::decide(&approvals, request(7, "rm\u{1b}[2J"));
        let listed = approvals.list();
        assert_eq!(listed[0]["id"], 7);
        assert!(
            !listed[0]["action"]
                .as_str()
                .unwrap_or("")
                .contains('\u{1b}'),
            "{listed}"
        );
        assert!(!approvals.decide(8, ActionDecision::AllowOnce));
        assert!(approvals.decide(7, ActionDecision::AllowAlways));
        assert!(!approvals.decide(7, ActionDecision::Deny), "decided once");
        assert_eq!(waiting.await, ActionDecision::AllowAlways);
        assert_eq!(approvals.list(), json!([]));
        // A wait that ends without an answer (the runtime's timeout drops it) leaves the list.
        drop(ApprovalHandler::decide(&approvals, request(9, "x")));
        assert_eq!(approvals.list(), json!([]));
    }
}
