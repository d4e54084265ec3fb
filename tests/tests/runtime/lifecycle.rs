//! Install, upgrade and elicitation with a real guest: install runs once per owner and version,
//! a version bump runs upgrade, a failing hook fails the load with the guest's words and leaves
//! nothing recorded, and `astrid:elicit` answers `not-in-lifecycle` outside those hooks.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use capsule_runtime::{
    ElicitAnswer, ElicitKind, ElicitPrompt, ElicitRefusal, Elicitor, LifecyclePhase, LoadError,
    Runtime,
};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::common::*;

/// Answers from a fixed script and remembers every question.
#[derive(Default)]
struct Scripted {
    answers: HashMap<&'static str, ElicitAnswer>,
    asked: Mutex<Vec<ElicitPrompt>>,
}

impl Scripted {
    fn new(answers: &[(&'static str, ElicitAnswer)]) -> Arc<Self> {
        Arc::new(Self {
            answers: answers.iter().cloned().collect(),
            asked: Mutex::new(Vec::new()),
        })
    }

    fn asked(&self) -> Vec<(String, ElicitKind, String)> {
        self.asked
            .lock()
            .iter()
            .map(|p| (p.key.clone(), p.kind, p.principal.to_string()))
            .collect()
    }
}

impl Elicitor for Scripted {
    fn elicit(
        &self,
        prompt: ElicitPrompt,
    ) -> Pin<Box<dyn Future<Output = Result<ElicitAnswer, ElicitRefusal>> + Send>> {
        let answer = self
            .answers
            .get(prompt.key.as_str())
            .cloned()
            .ok_or(ElicitRefusal::Cancelled);
        self.asked.lock().push(prompt);
        Box::pin(async move { answer })
    }
}

fn script() -> Arc<Scripted> {
    Scripted::new(&[
        ("greeting", ElicitAnswer::Value("hi there".into())),
        ("TOKEN", ElicitAnswer::Secret(b"tok-123".to_vec())),
        ("mode", ElicitAnswer::Value("safe".into())),
    ])
}

const ENV: &str = "[env.TOKEN]\ntype = \"secret\"\n";

fn fail_env(phase: &str) -> String {
    format!("{ENV}[env.fail]\ntype = \"text\"\ndefault = \"{phase}\"\n")
}

async fn load_at(
    rt: &Runtime,
    h: &Host,
    version: &str,
    extra: &str,
) -> Result<capsule_runtime::Capsule, LoadError> {
    let dir = h.capsule_dir_at("lifecycle", "lifecycle.wasm", version, extra);
    rt.load(&dir).await
}

async fn state(c: &capsule_runtime::Capsule) -> Value {
    ok(&call(c, "state", json!({})).await).clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_runs_once_and_a_version_bump_runs_upgrade() {
    let h = host();
    let answers = script();
    h.rt.set_elicitor(answers.clone());
    let c = load_at(&h.rt, &h, "0.1.0", ENV)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let s = state(&c).await;
    assert_eq!(s["installs"], "1");
    assert_eq!(s["greeting"], "hi there");
    assert_eq!(s["token"], "stored");
    assert_eq!(s["upgrades"], Value::Null);
    assert_eq!(
        answers.asked(),
        vec![
            ("greeting".into(), ElicitKind::Text, "default".into()),
            ("TOKEN".into(), ElicitKind::Secret, "default".into()),
        ]
    );
    assert_eq!(
        ok(&call(&c, "config", json!({"key": "TOKEN"})).await),
        "tok-123",
        "the elicited secret is in the owner's secret store"
    );
    assert_eq!(
        err(&call(&c, "elicit", json!({})).await),
        "not-in-lifecycle"
    );
    assert_eq!(
        err(&call(&c, "has-secret", json!({})).await),
        "not-in-lifecycle"
    );
    drop(c);
    assert!(h.rt.unload("lifecycle").await);

    // The same version again, even from a new runtime on the same state: nothing runs.
    h.rt.shutdown().await;
    let Host { rt, dir } = h;
    drop(rt);
    let h = Host {
        rt: Runtime::new(config(dir.path())).unwrap_or_else(|e| panic!("{e}")),
        dir,
    };
    h.rt.set_elicitor(answers.clone());
    let c = load_at(&h.rt, &h, "0.1.0", ENV)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state(&c).await["installs"], "1", "install ran once");
    assert_eq!(answers.asked().len(), 2, "nothing was asked again");
    drop(c);
    h.rt.unload("lifecycle").await;

    let c = load_at(&h.rt, &h, "0.2.0", ENV)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let s = state(&c).await;
    assert_eq!(s["installs"], "1");
    assert_eq!(s["upgrades"], "1");
    assert_eq!(s["upgraded_from"], "0.1.0");
    assert_eq!(s["mode"], "safe");
    assert_eq!(
        answers.asked().last().map(|a| a.0.clone()),
        Some("mode".into())
    );
    drop(c);
    h.rt.unload("lifecycle").await;

    // Another owner gets its own install, asked on its own behalf.
    let dir = h.capsule_dir_at("lifecycle", "lifecycle.wasm", "0.2.0", ENV);
    let c =
        h.rt.load_as(&dir, pid("alice"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state(&c).await["installs"], "1");
    assert_eq!(
        answers.asked()[3..],
        [
            ("greeting".into(), ElicitKind::Text, "alice".into()),
            ("TOKEN".into(), ElicitKind::Secret, "alice".into()),
        ]
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_lifecycle_call_fails_the_load_and_records_nothing() {
    let h = host();
    h.rt.set_elicitor(script());
    let e = load_at(&h.rt, &h, "0.1.0", &fail_env("install"))
        .await
        .err()
        .unwrap_or_else(|| panic!("a failing install must fail the load"));
    assert!(
        matches!(
            e,
            LoadError::Lifecycle {
                phase: LifecyclePhase::Install,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("install refused: the fail flag is set"),
        "the guest's own error is reported: {e}"
    );
    assert!(
        h.rt.capsule("lifecycle").is_none(),
        "a failed capsule is not registered"
    );

    // Nothing was recorded, so a fixed capsule installs.
    let c = load_at(&h.rt, &h, "0.1.0", &fail_env("none"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state(&c).await["installs"], "1");
    drop(c);
    h.rt.unload("lifecycle").await;

    // A failing upgrade keeps the old version recorded: the old version loads untouched.
    let e = load_at(&h.rt, &h, "0.2.0", &fail_env("upgrade"))
        .await
        .err()
        .unwrap_or_else(|| panic!("a failing upgrade must fail the load"));
    assert!(e.to_string().contains("upgrade refused"), "{e}");
    let c = load_at(&h.rt, &h, "0.1.0", &fail_env("none"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let s = state(&c).await;
    assert_eq!(
        (s["installs"].clone(), s["upgrades"].clone()),
        (json!("1"), Value::Null)
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_question_fails_the_install() {
    // Nobody to ask at all.
    let h = host();
    let e = load_at(&h.rt, &h, "0.1.0", ENV)
        .await
        .err()
        .unwrap_or_else(|| panic!("install cannot succeed without answers"));
    assert!(e.to_string().contains("no elicitation handler"), "{e}");
    // The operator declines the secret.
    let declines = Scripted::new(&[("greeting", ElicitAnswer::Value("yo".into()))]);
    h.rt.set_elicitor(declines.clone());
    let e = load_at(&h.rt, &h, "0.1.0", ENV)
        .await
        .err()
        .unwrap_or_else(|| panic!("a declined secret fails the install"));
    assert!(e.to_string().contains("TOKEN: Err(\"cancelled\")"), "{e}");
    // An answer outside the offered options is refused, not stored.
    let h2 = host();
    h2.rt.set_elicitor(script());
    let c = load_at(&h2.rt, &h2, "0.1.0", ENV)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(c);
    h2.rt.unload("lifecycle").await;
    h2.rt.set_elicitor(Scripted::new(&[(
        "mode",
        ElicitAnswer::Value("reckless".into()),
    )]));
    let e = load_at(&h2.rt, &h2, "0.2.0", ENV)
        .await
        .err()
        .unwrap_or_else(|| panic!("an unknown option fails the upgrade"));
    assert!(e.to_string().contains("invalid-input"), "{e}");
    h.rt.shutdown().await;
    h2.rt.shutdown().await;
}
