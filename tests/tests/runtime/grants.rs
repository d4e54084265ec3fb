//! Operator grants with real components: a manifest only requests, the operator decides, the
//! host never grants its own secrets, and a component file must be a regular file inside its
//! capsule directory.

use std::path::Path;
use std::time::Duration;

use capsule_runtime::security::{CapsuleName, Request};
use capsule_runtime::{Approval, LoadError, RefusalReason};
use serde_json::json;

use crate::common::*;

fn fs_read(dir: &Path) -> String {
    format!(
        "[capabilities]\nfs_read = [{:?}]\n",
        dir.display().to_string()
    )
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
}

fn name(s: &str) -> CapsuleName {
    CapsuleName::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

/// The refusals of a failed load, or a panic naming what happened instead.
fn refusals(r: Result<capsule_runtime::Capsule, LoadError>) -> Vec<capsule_runtime::Refusal> {
    match r {
        Err(LoadError::Refused { refusals }) => refusals,
        Err(e) => panic!("expected a refusal, got: {e}"),
        Ok(c) => panic!("capsule `{}` loaded", c.name()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_secrets_are_never_grantable_even_with_an_approver_that_says_yes() {
    // Outside /tmp, so the state directory is a host directory a manifest could name.
    let state = outside_tmp();
    let keys = outside_tmp();
    let links = outside_tmp();
    let key_file = keys.path().join("k").join("host.key");
    let state_path = state.path().to_path_buf();
    let h = host_in(state, |c| c.host_key_file = Some(key_file.clone()));
    let approver = h.approve_all();
    let to_state = links.path().join("innocent");
    let to_keys = links.path().join("also-innocent");
    std::os::unix::fs::symlink(&state_path, &to_state).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(keys.path().join("k"), &to_keys).unwrap_or_else(|e| panic!("{e}"));
    let cases = [
        (state_path.clone(), "state directory"),
        (state_path.join("profiles"), "state directory"),
        (keys.path().join("k"), "host key"),
        (Path::new("/proc").to_path_buf(), "/proc"),
        (Path::new("/proc/self").to_path_buf(), "/proc"),
        (Path::new("/dev").to_path_buf(), "/dev"),
        (Path::new("/sys").to_path_buf(), "/sys"),
        (to_state.clone(), "state directory"),
        (to_keys.clone(), "host key"),
        (keys.path().to_path_buf(), "host key"),
    ];
    std::fs::create_dir_all(state_path.join("profiles")).unwrap_or_else(|e| panic!("{e}"));
    for (i, (root, what)) in cases.iter().enumerate() {
        let dir = h.capsule_dir(&format!("greedy{i}"), "prober.wasm", &fs_read(root));
        let result = h.rt.load(&dir).await;
        let shown = result
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        let r = refusals(result);
        assert!(
            matches!(&r[0].reason, RefusalReason::Forbidden(f) if f.len() == 1),
            "{shown}"
        );
        assert!(
            shown.contains(&root.display().to_string()) && shown.contains(what),
            "the error names {} and why: {shown}",
            root.display()
        );
        assert!(shown.contains("can never be granted"), "{shown}");
    }
    assert!(
        approver.asked.lock().is_empty(),
        "the approver is never asked about what can never be granted"
    );
    assert!(
        h.rt.grants().list().unwrap_or_default().is_empty(),
        "nothing is recorded"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_directory_loads_only_after_approval_and_reads_there() {
    let h = host();
    let base = outside_tmp();
    let data = base.path().join("data");
    let out = base.path().join("out");
    write(&data.join("words"), "apple");
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{e}"));
    let manifest = format!(
        "[capabilities]\nfs_read = [{:?}]\nfs_write = [{:?}]\nuplink = true\n",
        data.display().to_string(),
        out.display().to_string()
    );
    let dir = h.capsule_dir("reader", "prober.wasm", &manifest);

    // No approver: one error naming every pending capability; nothing starts or is recorded.
    let r = refusals(h.rt.load(&dir).await);
    let expected = vec![
        Request::FsRead(data.clone()),
        Request::FsWrite(out.clone()),
        Request::Uplink,
    ];
    assert_eq!(r[0].reason, RefusalReason::NotApproved(expected.clone()));
    let shown = r[0].to_string();
    for part in [
        format!("fs_read {}", data.display()),
        format!("fs_write {}", out.display()),
        "uplink".to_string(),
    ] {
        assert!(shown.contains(&part), "{shown} should name {part}");
    }
    assert!(h.rt.capsule("reader").is_none());
    assert!(
        h.rt.grants()
            .load(&name("reader"))
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none()
    );

    // An approver that declines: the same refusal, after being shown exactly the requests.
    let declined = h.approver(|_| Approval::Decline);
    refusals(h.rt.load(&dir).await);
    {
        let asked = declined.asked.lock();
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].diff.added, expected);
        assert!(asked[0].diff.unchanged.is_empty() && asked[0].previous_version.is_none());
        assert!(
            asked[0].ungated.iter().any(|u| u.contains("home://")),
            "the ungated summary is shown too: {:?}",
            asked[0].ungated
        );
    }
    assert!(
        h.rt.grants()
            .load(&name("reader"))
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none()
    );

    // Approved: it loads, reads there, writes where granted, and the decision is on disk.
    h.approve_all();
    let c = h.rt.load(&dir).await.unwrap_or_else(|e| panic!("{e}"));
    let read = call(
        &c,
        "read",
        json!({"path": data.join("words").display().to_string()}),
    )
    .await;
    assert_eq!(ok(&read), "apple");
    let target = out.join("made.txt").display().to_string();
    ok(&call(&c, "write", json!({"path": target, "content": "hi"})).await);
    assert_eq!(
        std::fs::read_to_string(out.join("made.txt")).unwrap_or_default(),
        "hi"
    );
    assert_eq!(
        err(&call(
            &c,
            "write",
            json!({"path": data.join("w").display().to_string(), "content": "x"})
        )
        .await),
        "capability-denied",
        "a read grant does not write"
    );
    let stored =
        h.rt.grants()
            .load(&name("reader"))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("the grant is recorded"));
    assert_eq!(stored.granted, expected);
    assert_eq!(stored.version.to_string(), "0.1.0");
    let file = h.rt.grants().path(&name("reader"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{e}"))
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    c.unload().await;

    // Covered by the stored grant: loads again with nobody to ask.
    let silent = h.approver(|_| Approval::Decline);
    let again = h.rt.load(&dir).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(silent.asked.lock().is_empty());
    again.unload().await;

    // Revoked: the next load is refused again, naming what was revoked.
    let mut g = stored.clone();
    assert!(g.revoke(&Request::FsRead(data.clone())));
    h.rt.grants().save(&g).unwrap_or_else(|e| panic!("{e}"));
    let r = refusals(h.rt.load(&dir).await);
    assert_eq!(
        r[0].reason,
        RefusalReason::NotApproved(vec![Request::FsRead(data.clone())])
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_without_a_grant_is_capability_denied_at_publish_as() {
    let h = host();
    let base = outside_tmp();
    let manifest = format!(
        "{PROBER_ACL}\n[capabilities]\nuplink = true\nfs_read = [{:?}]\n",
        base.path().display().to_string()
    );
    // The operator allows the directory and refuses the uplink.
    h.approver(|req| {
        Approval::Grant(
            req.diff
                .added
                .iter()
                .filter(|r| **r != Request::Uplink)
                .cloned()
                .collect(),
        )
    });
    let c = h.load("half", "prober.wasm", &manifest).await;
    let args = json!({"topic": "probe.in", "payload": "{}", "principal": "carol"});
    assert_eq!(
        err(&call(&c, "publish-as", args.clone()).await),
        "capability-denied"
    );
    assert_eq!(
        ok(&call(&c, "capabilities", json!({})).await),
        &json!(["fs_read"]),
        "the capsule sees only what it was granted"
    );
    c.unload().await;
    // The refusal was recorded: the next load asks nobody and still denies.
    let nobody = h.approver(|_| panic!("nothing is pending"));
    let c = h.load("half", "prober.wasm", &manifest).await;
    assert!(nobody.asked.lock().is_empty());
    assert_eq!(
        err(&call(&c, "publish-as", args).await),
        "capability-denied"
    );
    let stored =
        h.rt.grants()
            .load(&name("half"))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("recorded"));
    assert_eq!(stored.denied, vec![Request::Uplink]);
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_on_everything_needs_a_grant() {
    let h = host();
    let manifest = "[subscribe]\n\"*\" = { wit = \"x\", handler = \"noop\" }\n\
                    \"own.topic\" = { wit = \"x\", handler = \"noop\" }\n";
    let dir = h.capsule_dir("watcher", "prober.wasm", manifest);
    let star = capsule_runtime::bus::TopicPattern::parse("*").unwrap_or_else(|e| panic!("{e}"));
    let r = refusals(h.rt.load(&dir).await);
    assert_eq!(
        r[0].reason,
        RefusalReason::NotApproved(vec![Request::Handler(star.clone())]),
        "only the broad binding needs a grant"
    );
    assert!(r[0].to_string().contains("handler on `*`"));
    // Refusing the binding still fails the load: a capsule cannot run half-bound.
    h.approver(|_| Approval::Grant(Vec::new()));
    refusals(h.rt.load(&dir).await);
    h.approve_all();
    let c = h.rt.load(&dir).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        h.rt.grants()
            .load(&name("watcher"))
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|g| g.granted),
        Some(vec![Request::Handler(star)])
    );
    c.unload().await;
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_asks_only_for_what_it_adds_and_one_that_asks_less_just_runs() {
    let h = host();
    let base = outside_tmp();
    let (a, b) = (base.path().join("a"), base.path().join("b"));
    write(&a.join("f"), "in a");
    write(&b.join("f"), "in b");
    let roots = |dirs: &[&Path]| {
        let list: Vec<String> = dirs
            .iter()
            .map(|d| format!("{:?}", d.display().to_string()))
            .collect();
        format!("[capabilities]\nfs_read = [{}]\n", list.join(", "))
    };
    let approver = h.approve_all();
    let load = |version: &'static str, extra: String| {
        let dir = h.capsule_dir_at("grower", "prober.wasm", version, &extra);
        let rt = h.rt.clone();
        async move { rt.load(&dir).await.unwrap_or_else(|e| panic!("{e}")) }
    };
    load("0.1.0", roots(&[&a])).await.unload().await;
    let c = load("0.2.0", roots(&[&a, &b])).await;
    {
        let asked = approver.asked.lock();
        assert_eq!(asked.len(), 2);
        assert_eq!(asked[1].diff.added, vec![Request::FsRead(b.clone())]);
        assert_eq!(asked[1].diff.unchanged, vec![Request::FsRead(a.clone())]);
        assert_eq!(
            asked[1].previous_version.as_ref().map(ToString::to_string),
            Some("0.1.0".to_string())
        );
    }
    let read = |c: &capsule_runtime::Capsule, d: &Path| {
        let c = c.clone();
        let path = d.join("f").display().to_string();
        async move { call(&c, "read", json!({ "path": path })).await }
    };
    assert_eq!(ok(&read(&c, &b).await), "in b");
    c.unload().await;
    // Asking for less: no question, and what is no longer requested is not reachable.
    let c = load("0.3.0", roots(&[&a])).await;
    assert_eq!(approver.asked.lock().len(), 2, "no new question");
    assert_eq!(ok(&read(&c, &a).await), "in a");
    assert_eq!(err(&read(&c, &b).await), "capability-denied");
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_all_names_every_refused_capsule_and_starts_none() {
    let h = host();
    let plain = h.capsule_dir("plain", "prober.wasm", "");
    let one = h.capsule_dir("one", "prober.wasm", "[capabilities]\nuplink = true\n");
    let two = h.capsule_dir(
        "two",
        "prober.wasm",
        "[subscribe]\n\"*.x\" = { wit = \"x\", handler = \"noop\" }\n",
    );
    let e = h.rt.load_all([&plain, &one, &two]).await.err();
    let shown = e.as_ref().map(ToString::to_string).unwrap_or_default();
    let r = refusals(e.map_or_else(|| panic!("the set loaded"), Err));
    let names: Vec<&str> = r.iter().map(|r| r.capsule.as_str()).collect();
    assert_eq!(names, vec!["one", "two"], "{shown}");
    assert!(
        shown.contains("uplink") && shown.contains("handler on `*.x`"),
        "{shown}"
    );
    for n in ["plain", "one", "two"] {
        assert!(h.rt.capsule(n).is_none(), "{n} was started");
    }
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_files_must_be_regular_files_inside_the_capsule() {
    let h = host();
    let load = |dir: std::path::PathBuf| {
        let rt = h.rt.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(60), rt.load(&dir))
                .await
                .unwrap_or_else(|_| panic!("loading {} hung", dir.display()))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| panic!("{} loaded", dir.display()))
        }
    };
    let with_file = |n: &str, file: &str| {
        let dir = h.capsule_dir(n, "prober.wasm", "");
        let text = std::fs::read_to_string(dir.join("Capsule.toml")).unwrap_or_default();
        let text = text.replace("file = \"prober.wasm\"", &format!("file = {file:?}"));
        std::fs::write(dir.join("Capsule.toml"), text).unwrap_or_else(|e| panic!("{e}"));
        dir
    };
    let e = load(with_file("up", "../prober.wasm")).await;
    assert!(
        e.contains("component[0].file") && e.contains("inside the capsule directory"),
        "{e}"
    );
    let e = load(with_file("dev", "/dev/zero")).await;
    assert!(
        e.contains("component[0].file") && e.contains("no absolute path"),
        "{e}"
    );

    let dir = with_file("fifo", "pipe.wasm");
    let made = std::process::Command::new("mkfifo")
        .arg(dir.join("pipe.wasm"))
        .status()
        .unwrap_or_else(|e| panic!("mkfifo: {e}"));
    assert!(made.success());
    let e = load(dir).await;
    assert!(e.contains("FIFO"), "{e}");

    let dir = with_file("linked", "out.wasm");
    std::os::unix::fs::symlink("/dev/zero", dir.join("out.wasm")).unwrap_or_else(|e| panic!("{e}"));
    let e = load(dir).await;
    assert!(e.contains("outside the capsule directory"), "{e}");

    let dir = with_file("folder", "sub.wasm");
    std::fs::create_dir(dir.join("sub.wasm")).unwrap_or_else(|e| panic!("{e}"));
    let e = load(dir).await;
    assert!(e.contains("a directory"), "{e}");
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_directory_does_not_stretch_through_a_link_inside_it() {
    let h = host();
    let base = outside_tmp();
    let data = base.path().join("data");
    let private = base.path().join("private");
    write(&data.join("f"), "public");
    write(&private.join("f"), "private");
    // A link inside the granted tree: confined at run time, so the operator's grant of
    // `data` never reached `private`.
    std::os::unix::fs::symlink(&private, data.join("link")).unwrap_or_else(|e| panic!("{e}"));
    let load = |version: &'static str, dir: &Path| {
        let capsule = h.capsule_dir_at("stretch", "prober.wasm", version, &fs_read(dir));
        let rt = h.rt.clone();
        async move { rt.load(&capsule).await }
    };
    h.approve_all();
    let c = load("0.1.0", &data).await.unwrap_or_else(|e| panic!("{e}"));
    let through = data.join("link").join("f").display().to_string();
    assert_ne!(
        call(&c, "read", json!({ "path": through })).await["ok"],
        json!("private"),
        "the link is confined inside the granted directory"
    );
    c.unload().await;
    // The upgrade names the link itself: that is `private`, which nobody approved.
    let asked = h.approver(|_| Approval::Decline);
    let r = refusals(load("0.2.0", &data.join("link")).await);
    let real = std::fs::canonicalize(&private).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r[0].reason,
        RefusalReason::NotApproved(vec![Request::FsRead(real.clone())])
    );
    {
        let asked = asked.asked.lock();
        assert_eq!(
            asked.len(),
            1,
            "the operator is asked about the directory it resolves to"
        );
        assert_eq!(asked[0].diff.added, vec![Request::FsRead(real)]);
    }
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_approves_the_directory_a_request_resolves_to() {
    let h = host();
    let base = outside_tmp();
    let docs = base.path().join("docs");
    let keys = base.path().join("ssh");
    write(&docs.join("f"), "docs");
    write(&keys.join("f"), "id_ed25519");
    // The manifest names a harmless-looking link; the screen must show where it leads.
    let pointer = base.path().join("capsule-docs");
    std::os::unix::fs::symlink(&docs, &pointer).unwrap_or_else(|e| panic!("{e}"));
    let approver = h.approve_all();
    let c = h.load("pointing", "prober.wasm", &fs_read(&pointer)).await;
    let real_docs = std::fs::canonicalize(&docs).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        approver.asked.lock()[0].diff.added,
        vec![Request::FsRead(real_docs.clone())],
        "the approval names the directory that is mounted"
    );
    let read = json!({ "path": pointer.join("f").display().to_string() });
    assert_eq!(ok(&call(&c, "read", read.clone()).await), "docs");
    c.unload().await;
    // The link is re-pointed (say, by a new release of the capsule's files): the grant
    // was for `docs`, so the next load asks again instead of mounting `ssh`.
    std::fs::remove_file(&pointer).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(&keys, &pointer).unwrap_or_else(|e| panic!("{e}"));
    let declined = h.approver(|_| Approval::Decline);
    let dir = h.capsule_dir("pointing", "prober.wasm", &fs_read(&pointer));
    let r = refusals(h.rt.load(&dir).await);
    let real_keys = std::fs::canonicalize(&keys).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r[0].reason,
        RefusalReason::NotApproved(vec![Request::FsRead(real_keys)])
    );
    assert_eq!(declined.asked.lock().len(), 1);
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_for_a_link_after_the_check_is_not_mounted() {
    let h = host();
    let base = outside_tmp();
    let data = base.path().join("data");
    let private = base.path().join("private");
    write(&data.join("f"), "data");
    write(&private.join("f"), "private");
    let dir = h.capsule_dir("swapped", "prober.wasm", &fs_read(&data));
    // The approver runs after the request was resolved and checked, before anything is
    // mounted: the moment a racing process would swap the directory for a link.
    let (swap_data, swap_private) = (data.clone(), private.clone());
    h.approver(move |req| {
        std::fs::rename(&swap_data, swap_data.with_extension("old"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&swap_private, &swap_data).unwrap_or_else(|e| panic!("{e}"));
        Approval::all(req)
    });
    match h.rt.load(&dir).await {
        Err(LoadError::Mount { path, .. }) => assert_eq!(path, data),
        Err(e) => panic!("expected the mount to be refused, got: {e}"),
        Ok(c) => {
            let read = call(
                &c,
                "read",
                json!({ "path": data.join("f").display().to_string() }),
            )
            .await;
            panic!("the swapped link was mounted; reading through it gave {read}");
        }
    }
    assert!(h.rt.capsule("swapped").is_none());
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_that_is_not_a_small_regular_file_is_refused_without_hanging() {
    let h = host();
    let load = |dir: std::path::PathBuf| {
        let rt = h.rt.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(60), rt.load(&dir))
                .await
                .unwrap_or_else(|_| panic!("loading {} hung", dir.display()))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| panic!("{} loaded", dir.display()))
        }
    };
    let replaced = |n: &str, make: &dyn Fn(&Path)| {
        let dir = h.capsule_dir(n, "prober.wasm", "");
        let manifest = dir.join("Capsule.toml");
        std::fs::remove_file(&manifest).unwrap_or_else(|e| panic!("{e}"));
        make(&manifest);
        dir
    };
    let fifo = replaced("fifo", &|m| {
        let made = std::process::Command::new("mkfifo")
            .arg(m)
            .status()
            .unwrap_or_else(|e| panic!("mkfifo: {e}"));
        assert!(made.success());
    });
    let e = load(fifo).await;
    assert!(e.contains("FIFO") && e.contains("Capsule.toml"), "{e}");
    let endless = replaced("endless", &|m| {
        std::os::unix::fs::symlink("/dev/zero", m).unwrap_or_else(|e| panic!("{e}"));
    });
    let e = load(endless).await;
    assert!(e.contains("device"), "{e}");
    let huge = replaced("huge", &|m| {
        let f = std::fs::File::create(m).unwrap_or_else(|e| panic!("{e}"));
        f.set_len(1 << 40).unwrap_or_else(|e| panic!("{e}"));
    });
    let e = load(huge).await;
    assert!(e.contains("the limit is"), "{e}");
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_for_one_capsule_never_serves_another_swapped_into_its_directory() {
    let h = host();
    let base = outside_tmp();
    let data = base.path().join("data");
    write(&data.join("f"), "approved for `first` only");
    let first = h.capsule_dir("first", "prober.wasm", &fs_read(&data));
    let second = h.capsule_dir("second", "prober.wasm", "[capabilities]\nuplink = true\n");
    // While the operator answers about `second`, `first`'s directory is given another
    // capsule's manifest asking for what `first` was just granted.
    let (swap_dir, swap_extra) = (first.clone(), fs_read(&data));
    let approver = h.approver(move |req| {
        if req.capsule == "second" {
            capsule_tests::write_capsule(
                &swap_dir,
                "intruder",
                "0.1.0",
                "prober.wasm",
                &swap_extra,
            );
        }
        Approval::all(req)
    });
    let loaded = h.rt.load_all([&first, &second]).await;
    let asked: Vec<String> = approver
        .asked
        .lock()
        .iter()
        .map(|r| r.capsule.clone())
        .collect();
    assert!(
        asked.contains(&"intruder".to_string()),
        "`intruder` ran on `first`'s decision without a question (asked about {asked:?}; loaded: {:?})",
        loaded
            .as_ref()
            .map(|v| v.iter().map(|c| c.name().to_string()).collect::<Vec<_>>())
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_reaching_beyond_own_topics_needs_a_grant_like_a_handler() {
    use capsule_runtime::bus::Attribution;
    let h = host();
    let manifest = "[subscribe]\n\"*\" = \"opaque\"\n\"own.*\" = \"opaque\"\n";
    // Refused by the operator: the capsule runs, but only with its own topics.
    h.approver(|_| Approval::Grant(Vec::new()));
    refusals(
        h.rt.load(h.capsule_dir("eavesdrop", "prober.wasm", manifest))
            .await,
    );
    let star = capsule_runtime::bus::TopicPattern::parse("*").unwrap_or_else(|e| panic!("{e}"));
    h.approver(move |r| {
        assert_eq!(r.diff.added, vec![Request::Subscribe(star.clone())]);
        Approval::Grant(vec![Request::Uplink])
    });
    refusals(
        h.rt.load(h.capsule_dir("eavesdrop", "prober.wasm", manifest))
            .await,
    );
    // A recorded refusal: the ACL entry is dropped and the capsule loads without it.
    let mut g = capsule_runtime::security::Grant::new(
        &capsule_runtime::security::Manifest::load(&h.capsule_dir(
            "eavesdrop",
            "prober.wasm",
            manifest,
        ))
        .unwrap_or_else(|e| panic!("{e}")),
    );
    g.deny([Request::Subscribe(
        capsule_runtime::bus::TopicPattern::parse("*").unwrap_or_else(|e| panic!("{e}")),
    )]);
    h.rt.grants().save(&g).unwrap_or_else(|e| panic!("{e}"));
    let c = h.load("eavesdrop", "prober.wasm", manifest).await;
    assert_eq!(
        err(&call(&c, "subscribe", json!({"pattern": "chat.*"})).await),
        "capability-denied",
        "another tenant's namespace is out of reach without the grant"
    );
    ok(&call(&c, "subscribe", json!({"pattern": "own.x"})).await);
    c.unload().await;

    // Granted: the operator chose to let it see every tenant's chat.
    let mut g = g;
    g.allow([Request::Subscribe(
        capsule_runtime::bus::TopicPattern::parse("*").unwrap_or_else(|e| panic!("{e}")),
    )]);
    h.rt.grants().save(&g).unwrap_or_else(|e| panic!("{e}"));
    let c = h.load("eavesdrop", "prober.wasm", manifest).await;
    let index = ok(&call(&c, "subscribe", json!({"pattern": "chat.*"})).await).clone();
    // Opened in a call for the owner, the subscription admits the owner's messages.
    h.publish(
        "chat.room",
        "\"hello\"",
        Attribution::Verified(pid("default")),
    );
    let got = ok(&call(&c, "recv", json!({"index": index, "timeout": 20000})).await).clone();
    assert_eq!(got["messages"][0]["topic"], "chat.room", "{got}");
    h.rt.shutdown().await;
}
