//! Shared harness: a runtime per test in its own state directory, capsule directories written
//! on the fly around the prebuilt fixtures, a JSON-speaking `call` for the prober, and a
//! tracing layer that captures audit events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use capsule_bus::{
    Attribution, JsonPayload, Outgoing, PrincipalId, Receiver, Scope, Topic, TopicPattern,
};
use capsule_runtime::{
    Approval, ApprovalRequest, Approver, Capsule, EpochMode, Runtime, RuntimeConfig,
};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::Value;
use tempfile::TempDir;
use tracing_subscriber::layer::SubscriberExt;

pub(crate) use capsule_tests::write_capsule;

/// The compile cache shared by tests that do not test the cache itself, so each fixture is
/// compiled once per test run.
pub(crate) fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("capsule-compile-cache")
}

pub(crate) fn pid(s: &str) -> PrincipalId {
    PrincipalId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A runtime with its own state directory.
pub(crate) struct Host {
    pub(crate) rt: Runtime,
    pub(crate) dir: TempDir,
}

/// A manifest granting the principal's home and declaring one env value, `MODEL` (`m1`
/// unless an overlay says otherwise).
pub(crate) const HOME_AND_MODEL: &str = "[capabilities]\nfs_read = [\"home://\"]\nfs_write = [\"home://\"]\n\
                                         [env.MODEL]\ntype = \"text\"\ndefault = \"m1\"\n";

impl Host {
    pub(crate) fn state(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `<state>/profiles/<principal>.toml`.
    pub(crate) fn profile(&self, principal: &str, toml: &str) {
        let dir = self.state().join("profiles");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join(format!("{principal}.toml")), toml)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Where capsule `capsule`'s env overlay for `principal` lives.
    pub(crate) fn overlay_path(&self, principal: &str, capsule: &str) -> PathBuf {
        self.state()
            .join("home")
            .join(principal)
            .join(".config")
            .join("env")
            .join(format!("{capsule}.env.json"))
    }

    /// Writes capsule `capsule`'s env overlay for `principal`.
    pub(crate) fn write_overlay(&self, principal: &str, capsule: &str, json: &str) {
        let path = self.overlay_path(principal, capsule);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(path, json).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Installs an approver that answers with `answer` and records every question, and
    /// returns it.
    pub(crate) fn approver(
        &self,
        answer: impl Fn(&ApprovalRequest) -> Approval + Send + Sync + 'static,
    ) -> Arc<Recorder> {
        let recorder = Arc::new(Recorder {
            answer: Box::new(answer),
            asked: Mutex::new(Vec::new()),
        });
        self.rt.set_approver(recorder.clone());
        recorder
    }

    /// Installs an approver that allows everything it is asked.
    pub(crate) fn approve_all(&self) -> Arc<Recorder> {
        self.approver(Approval::all)
    }

    /// Writes a capsule directory named `name` whose component is the fixture `wasm`, with
    /// `extra` appended to the manifest, and returns it.
    pub(crate) fn capsule_dir(&self, name: &str, wasm: &str, extra: &str) -> PathBuf {
        self.capsule_dir_at(name, wasm, "0.1.0", extra)
    }

    /// Like [`Host::capsule_dir`], at package version `version`.
    pub(crate) fn capsule_dir_at(
        &self,
        name: &str,
        wasm: &str,
        version: &str,
        extra: &str,
    ) -> PathBuf {
        write_capsule(
            &self.state().join("capsules").join(name),
            name,
            version,
            wasm,
            extra,
        )
    }

    pub(crate) async fn load(&self, name: &str, wasm: &str, extra: &str) -> Capsule {
        let dir = self.capsule_dir(name, wasm, extra);
        self.rt
            .load(&dir)
            .await
            .unwrap_or_else(|e| panic!("loading {name}: {e}"))
    }

    pub(crate) async fn load_as(
        &self,
        name: &str,
        wasm: &str,
        extra: &str,
        owner: &str,
    ) -> Capsule {
        let dir = self.capsule_dir(name, wasm, extra);
        self.rt
            .load_as(&dir, pid(owner))
            .await
            .unwrap_or_else(|e| panic!("loading {name}: {e}"))
    }

    pub(crate) fn subscribe(&self, pattern: &str) -> Receiver {
        self.rt.bus().subscribe(
            TopicPattern::parse(pattern).unwrap_or_else(|e| panic!("{e}")),
            Scope::All,
        )
    }

    /// Publishes as the host would, attributed as given.
    pub(crate) fn publish(&self, topic: &str, payload: &str, attribution: Attribution) {
        self.rt.bus().publish(Outgoing {
            topic: Topic::parse(topic).unwrap_or_else(|e| panic!("{e}")),
            payload: JsonPayload::parse(payload.to_string()).unwrap_or_else(|e| panic!("{e}")),
            source: uuid::Uuid::nil(),
            attribution,
            hops: 0,
        });
    }
}

/// An approver for tests: a fixed answering rule plus the record of every question.
pub(crate) struct Recorder {
    answer: Box<dyn Fn(&ApprovalRequest) -> Approval + Send + Sync>,
    pub(crate) asked: Mutex<Vec<ApprovalRequest>>,
}

impl Approver for Recorder {
    fn approve(&self, request: ApprovalRequest) -> BoxFuture<'static, Approval> {
        let answer = (self.answer)(&request);
        self.asked.lock().push(request);
        Box::pin(async move { answer })
    }
}

/// A fresh directory outside /tmp (which guests see as their own scratch space, so a host
/// directory there can never be granted): the target directory unless the checkout itself
/// lives under /tmp. Its path is canonical, as the host names granted directories.
pub(crate) fn outside_tmp() -> TempDir {
    let candidates = [env!("CARGO_TARGET_TMPDIR"), "/var/tmp", "/dev/shm"];
    candidates
        .iter()
        .filter_map(|c| std::fs::canonicalize(c).ok())
        .filter(|c| !c.starts_with("/tmp"))
        .find_map(|c| tempfile::tempdir_in(c).ok())
        .unwrap_or_else(|| panic!("no writable directory outside /tmp among {candidates:?}"))
}

pub(crate) fn config(dir: &Path) -> RuntimeConfig {
    let mut c = RuntimeConfig::new(dir);
    c.cache_dir = Some(shared_cache());
    c.epoch_window = Duration::from_millis(20);
    c.max_busy_windows = 500;
    // Most tests drive the prober step by step and keep guest state (subscriptions, open
    // files) between calls, so they use one pooled instance; pooling tests raise this.
    c.handler_pool_size = 1;
    c
}

pub(crate) fn host() -> Host {
    host_with(|_| {})
}

pub(crate) fn host_with(f: impl FnOnce(&mut RuntimeConfig)) -> Host {
    host_in(tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")), f)
}

/// A runtime whose state directory is `dir`.
pub(crate) fn host_in(dir: TempDir, f: impl FnOnce(&mut RuntimeConfig)) -> Host {
    capture_audit();
    let mut c = config(dir.path());
    f(&mut c);
    let rt = Runtime::new(c).unwrap_or_else(|e| panic!("{e}"));
    Host { rt, dir }
}

/// A host whose epoch advances only when the test says so.
pub(crate) fn manual_host(max_busy_windows: u32) -> Host {
    host_with(|c| {
        c.epoch_mode = EpochMode::Manual;
        c.max_busy_windows = max_busy_windows;
    })
}

/// Invokes the prober's `action` with JSON `args` (as `principal`, or the owner) and returns
/// its `{"ok": …}` / `{"err": …}` answer.
pub(crate) async fn call_as(
    c: &Capsule,
    action: &str,
    args: Value,
    principal: Option<&str>,
) -> Value {
    let payload = args.to_string();
    let response = c
        .invoke(action, payload.as_bytes(), principal.map(pid))
        .await
        .unwrap_or_else(|e| panic!("{action}: {e}"));
    assert_eq!(response.action, "continue");
    let data = response.data.unwrap_or_else(|| panic!("{action}: no data"));
    serde_json::from_str(&data).unwrap_or_else(|e| panic!("{action}: {e}: {data}"))
}

pub(crate) async fn call(c: &Capsule, action: &str, args: Value) -> Value {
    call_as(c, action, args, None).await
}

/// The error code of a prober answer, or a panic naming the unexpected success.
pub(crate) fn err(v: &Value) -> &str {
    v["err"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {v}"))
}

/// The success value of a prober answer, or a panic naming the error.
pub(crate) fn ok(v: &Value) -> &Value {
    assert!(v.get("err").is_none(), "expected success, got {v}");
    &v["ok"]
}

/// Waits (bounded) for the next message on a host receiver, taking exactly one.
pub(crate) async fn next(rx: &mut Receiver) -> Arc<capsule_bus::Message> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(m) = rx
            .try_drain_limited(usize::MAX, 1)
            .messages
            .into_iter()
            .next()
        {
            return m;
        }
        let ready = rx.readiness();
        if tokio::time::timeout_at(deadline, ready.ready())
            .await
            .is_err()
        {
            panic!("no message on {} within 20 s", rx.pattern());
        }
    }
}

/// One captured audit event: its fields as text.
pub(crate) type AuditEvent = HashMap<String, String>;

static AUDIT: OnceLock<Arc<Mutex<Vec<AuditEvent>>>> = OnceLock::new();

struct Capture(Arc<Mutex<Vec<AuditEvent>>>);

struct Fields(AuditEvent);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let target = event.metadata().target();
        // Every audit target (`capsule::audit::ipc`, `::secret`, `::dispatch`, `::fs`, …).
        if target.starts_with("capsule::audit::") {
            let mut fields = Fields(HashMap::new());
            event.record(&mut fields);
            fields.0.insert("target".into(), target.to_string());
            self.0.lock().push(fields.0);
        }
    }
}

/// Installs the audit-capturing subscriber once per test process.
pub(crate) fn capture_audit() {
    AUDIT.get_or_init(|| {
        let store = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(store.clone()));
        // Another subscriber may only be installed by a test harness; ours is the first.
        let _installed = tracing::subscriber::set_global_default(subscriber);
        store
    });
}

/// Audit events of `capsule` captured so far.
pub(crate) fn audit_events(capsule: &str) -> Vec<AuditEvent> {
    AUDIT
        .get()
        .map(|s| {
            s.lock()
                .iter()
                .filter(|e| e.get("capsule").map(String::as_str) == Some(capsule))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The standard prober manifest: may publish and subscribe under `probe.*`.
pub(crate) const PROBER_ACL: &str =
    "[publish]\n\"probe.*\" = \"opaque\"\n\n[subscribe]\n\"probe.*\" = \"opaque\"\n";
