//! Loading: the compile cache, missing imports named at load, stub exports, manifest and
//! component checks, duplicate names and refused owners.

use capsule_runtime::{CacheOutcome, ComponentProblem, LoadError, Runtime};
use serde_json::json;

use crate::common::*;

/// A component this runtime already has is reused while its entry file is unchanged: the file
/// is not read again. The proof: damage made without changing the file's length, inode or
/// modification time goes unnoticed by this runtime (it serves its verified copy) while a
/// fresh runtime reading the file rejects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resident_component_is_reused_without_reading_its_file() {
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let h = host_with(|c| c.cache_dir = Some(cache.path().to_path_buf()));
    let first = h.load("resident", "prober.wasm", "").await;
    assert_eq!(first.report().cache, CacheOutcome::Miss);
    first.unload().await;
    for entry in std::fs::read_dir(cache.path()).unwrap_or_else(|e| panic!("{e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        std::io::Write::write_all(&mut &file, &bytes).unwrap_or_else(|e| panic!("{e}"));
        file.set_modified(meta.modified().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let second = h.load("resident", "prober.wasm", "").await;
    assert_eq!(second.report().cache, CacheOutcome::Hit);
    ok(&call(&second, "clock", json!({})).await);
    second.unload().await;

    let other = host_with(|c| c.cache_dir = Some(cache.path().to_path_buf()));
    let third = other.load("resident", "prober.wasm", "").await;
    assert!(
        matches!(third.report().cache, CacheOutcome::Rejected(ref why) if why.contains("checksum")),
        "a runtime that reads the file sees the damage: {:?}",
        third.report().cache
    );
    third.unload().await;
    other.rt.shutdown().await;
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_load_takes_the_cache_path_and_damage_is_recompiled() {
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let h = host_with(|c| c.cache_dir = Some(cache.path().to_path_buf()));
    let first = h.load("cached", "prober.wasm", "").await;
    assert_eq!(first.report().cache, CacheOutcome::Miss);
    first.unload().await;
    let second = h.load("cached", "prober.wasm", "").await;
    assert_eq!(second.report().cache, CacheOutcome::Hit);
    ok(&call(&second, "clock", json!({})).await);
    second.unload().await;

    // A fresh runtime over the same cache directory deserializes too.
    let other = host_with(|c| c.cache_dir = Some(cache.path().to_path_buf()));
    let third = other.load("cached", "prober.wasm", "").await;
    assert_eq!(third.report().cache, CacheOutcome::Hit);
    third.unload().await;

    // Corrupt every entry: the next load recompiles instead of trusting it.
    for entry in std::fs::read_dir(cache.path()).unwrap_or_else(|e| panic!("{e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
    }
    let fourth = other.load("cached", "prober.wasm", "").await;
    assert!(
        matches!(fourth.report().cache, CacheOutcome::Rejected(ref why) if why.contains("checksum"))
    );
    ok(&call(&fourth, "clock", json!({})).await);
    fourth.unload().await;
    let fifth = other.load("cached", "prober.wasm", "").await;
    assert_eq!(
        fifth.report().cache,
        CacheOutcome::Hit,
        "the bad entry was replaced"
    );
    other.rt.shutdown().await;
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_import_fails_the_load_and_is_named() {
    let h = host();
    let dir = h.capsule_dir("needs-http", "needs-http.wasm", "");
    match h.rt.load(&dir).await {
        Err(LoadError::MissingImports { capsule, imports }) => {
            assert_eq!(capsule, "needs-http");
            assert_eq!(imports, vec!["test:needs-http/absent".to_string()]);
        }
        other => panic!("expected missing imports, got {other:?}"),
    }
    let message =
        h.rt.load(&dir)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
    assert!(message.contains("test:needs-http/absent"), "{message}");
    assert!(
        h.rt.capsule("needs-http").is_none(),
        "nothing is left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliased_stub_exports_count_as_absent() {
    let h = host();
    let stubs = h.load("stubs", "stubs.wasm", "").await;
    let exports = stubs.report().exports;
    assert_eq!(
        (exports.run, exports.hook, exports.install, exports.upgrade),
        (false, true, false, false),
        "{exports:?}"
    );
    assert_eq!(stubs.wait_run_exit().await, None, "no run loop was started");
    let r = stubs
        .invoke("hello", b"", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.data.as_deref(), Some("hello"));
    let pong = h
        .load(
            "pong",
            "pong.wasm",
            "[publish]\n\"pong.*\" = \"x\"\n[subscribe]\n\"ping.*\" = \"x\"\n",
        )
        .await;
    assert!(pong.report().exports.run && !pong.report().exports.hook);
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_components_and_owners_are_refused() {
    let h = host();
    // A malformed manifest names the key.
    let dir = h.capsule_dir("badcap", "prober.wasm", "[capabilities]\nteleport = true\n");
    let e =
        h.rt.load(&dir)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
    assert!(
        e.contains("capabilities.teleport") && e.contains("Capsule.toml"),
        "{e}"
    );

    // The digest must match.
    let dir = h.capsule_dir("hashed", "prober.wasm", "");
    let text = std::fs::read_to_string(dir.join("Capsule.toml")).unwrap_or_default();
    let text = text.replace(
        "file = \"prober.wasm\"",
        &format!(
            "file = \"prober.wasm\"\nhash = \"sha256:{}\"",
            "0".repeat(64)
        ),
    );
    std::fs::write(dir.join("Capsule.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        h.rt.load(&dir).await,
        Err(LoadError::Component {
            problem: ComponentProblem::HashMismatch,
            ..
        })
    ));

    // Not a component.
    let dir = h.state().join("capsules").join("garbage");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("garbage.wasm"), b"\0asm garbage").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.join("Capsule.toml"),
        "[package]\nname = \"garbage\"\nversion = \"0.1.0\"\n[[component]]\nid = \"g\"\nfile = \"garbage.wasm\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        h.rt.load(&dir).await,
        Err(LoadError::Compile { .. })
    ));

    // A host version the capsule does not accept.
    let dir = h.capsule_dir("future", "prober.wasm", "");
    let text = std::fs::read_to_string(dir.join("Capsule.toml")).unwrap_or_default();
    let text = text.replace(
        "version = \"0.1.0\"",
        "version = \"0.1.0\"\nastrid-version = \">=9\"",
    );
    std::fs::write(dir.join("Capsule.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        h.rt.load(&dir).await,
        Err(LoadError::HostVersion { .. })
    ));

    // Two capsules may not share a name.
    let first = h.load("twin", "prober.wasm", "").await;
    let dir = h.capsule_dir("twin", "prober.wasm", "");
    assert!(matches!(
        h.rt.load(&dir).await,
        Err(LoadError::AlreadyLoaded(_))
    ));
    first.unload().await;

    // A disabled or malformed owner profile refuses the load; it is never silently defaulted.
    h.profile("mallory", "enabled = false\n");
    h.profile("broken", "[quotas]\nmax_memory_bytes = \"lots\"\n");
    for owner in ["mallory", "broken"] {
        let dir = h.capsule_dir(&format!("owned-by-{owner}"), "prober.wasm", "");
        assert!(
            matches!(
                h.rt.load_as(&dir, pid(owner)).await,
                Err(LoadError::OwnerRefused { .. })
            ),
            "{owner}"
        );
    }
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_runtime_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut c = config(dir.path());
    c.max_busy_windows = 0;
    assert!(Runtime::new(c).is_err());
    let mut c = config(dir.path());
    c.bus.max_fanout = 0;
    assert!(Runtime::new(c).is_err());
    let mut c = config(dir.path());
    c.pooling = None;
    let rt = Runtime::new(c).unwrap_or_else(|e| panic!("on-demand allocation works too: {e}"));
    drop(rt);
}
