//! Requests, coverage, diffs, effective capabilities, the stored form and the store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use capsule_bus::TopicPattern;
use capsule_ids::CapsuleName;

use super::*;
use crate::grants::{EndpointGrant, HostGrant};
use crate::manifest::{IdentityLevel, Manifest};

fn manifest(extra: &str) -> Manifest {
    let text = format!(
        "[package]\nname = \"cap\"\nversion = \"1.0.0\"\n[[component]]\nid = \"c\"\nfile = \"c.wasm\"\n{extra}"
    );
    Manifest::parse(&text, Path::new("/caps/cap/Capsule.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn pat(s: &str) -> TopicPattern {
    TopicPattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn only_reaching_capabilities_are_requests() {
    let m = manifest(
        "[subscribe]\n\"*\" = { handler = \"all\" }\n\"own.*\" = { handler = \"own\" }\n\
         \"*.x\" = { handler = \"x\" }\n\"astrid.v1.*\" = { handler = \"audit\" }\n\
         \"*.y\" = \"opaque\"\n\"own.acl\" = \"opaque\"\n\
         [capabilities]\nfs_read = [\"/srv/a\", \"home://n\", \"*\", \"/srv/b\"]\n\
         fs_write = [\"/srv/b\", \"cwd://out\"]\nuplink = true\nnet = [\"Api.Example.com\"]\n\
         host_process = [\"git\"]\nidentity = \"link\"\nkv = [\"x\"]\n",
    );
    let shown: Vec<String> = requests(&m).iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        vec![
            "fs_read /srv/a",
            "fs_write /srv/b",
            "uplink",
            "handler on `*`",
            "handler on `*.x`",
            "handler on `astrid.v1.*`",
            "subscribe to `*.y`",
            "net api.example.com",
            "host_process git",
            "identity link",
        ]
    );
    assert!(requests(&manifest("[capabilities]\nfs_read = [\"home://\"]\n")).is_empty());
}

#[test]
fn broad_handlers_are_the_ones_reaching_beyond_own_topics() {
    for p in [
        "*",
        "*.a",
        "*.*.b",
        "astrid.*",
        "astrid.v1.audit.entry",
        "astrid.*.audit.*",
    ] {
        assert!(is_broad_handler(&pat(p)), "{p}");
    }
    for p in ["own.*", "own.a", "a.*.b", "astrid.v1.session.*"] {
        assert!(!is_broad_handler(&pat(p)), "{p}");
    }
    for p in ["*", "*.a", "*.*.b"] {
        assert!(spans_namespaces(&pat(p)), "{p}");
    }
    for p in ["astrid.*", "astrid.v1.audit.entry", "own.*"] {
        assert!(
            !spans_namespaces(&pat(p)),
            "{p}: audit entries are scoped at delivery"
        );
    }
}

#[test]
fn coverage_follows_each_grammar() {
    let r = |p: &str| Request::FsRead(p.into());
    let w = |p: &str| Request::FsWrite(p.into());
    assert!(r("/srv").covers(&r("/srv/a")));
    assert!(w("/srv").covers(&r("/srv/a")));
    assert!(w("/srv").covers(&w("/srv")));
    assert!(!r("/srv").covers(&w("/srv")), "read does not cover write");
    assert!(!r("/srv/a").covers(&r("/srv")));
    assert!(!r("/sr").covers(&r("/srv")), "components, not bytes");
    let h = |s: &str| Request::Handler(pat(s));
    assert!(h("*").covers(&h("*.x")));
    assert!(!h("*.x").covers(&h("*")));
    let net = |s: &str| Request::Net(HostGrant::parse(s).unwrap_or_else(|e| panic!("{e}")));
    assert!(net("example.com").covers(&net("api.example.com")));
    assert!(!net("api.example.com").covers(&net("example.com")));
    let tcp =
        |s: &str| Request::NetConnect(EndpointGrant::parse(s).unwrap_or_else(|e| panic!("{e}")));
    assert!(tcp("db:*").covers(&tcp("db:5432")));
    assert!(!tcp("db:5432").covers(&tcp("db:*")));
    assert!(
        Request::Identity(IdentityLevel::Admin).covers(&Request::Identity(IdentityLevel::Link))
    );
    assert!(!Request::Uplink.covers(&Request::Persistent));
}

#[test]
fn diff_separates_new_kept_refused_and_dropped() {
    let m = manifest("[capabilities]\nfs_read = [\"/srv/a\", \"/srv/new\"]\nuplink = true\n");
    let mut g = Grant::new(&m);
    g.allow([
        Request::FsRead("/srv/a".into()),
        Request::FsRead("/srv/old".into()),
    ]);
    g.deny([Request::Uplink]);
    let d = PermissionDiff::between(&requests(&m), Some(&g));
    assert_eq!(d.added, vec![Request::FsRead("/srv/new".into())]);
    assert_eq!(d.unchanged, vec![Request::FsRead("/srv/a".into())]);
    assert_eq!(d.denied, vec![Request::Uplink]);
    assert_eq!(d.removed, vec![Request::FsRead("/srv/old".into())]);
    let first = PermissionDiff::between(&requests(&m), None);
    assert_eq!(first.added.len(), 3);
    assert!(!first.is_settled());
}

#[test]
fn effective_capabilities_are_the_intersection() {
    let m = manifest(
        "[capabilities]\nfs_read = [\"/srv/a\", \"home://n\"]\nfs_write = [\"/srv/w\", \"*\"]\n\
         uplink = true\nnet = [\"a.example\", \"b.example\"]\n",
    );
    // `/srv/w` is a link to `/data/w`: the grant names the real directory.
    let dirs: HashMap<PathBuf, PathBuf> = [("/srv/a", "/srv/a"), ("/srv/w", "/data/w")]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    let mut g = Grant::new(&m);
    g.allow([
        Request::FsRead("/data/w".into()),
        Request::Net(HostGrant::parse("a.example").unwrap_or_else(|e| panic!("{e}"))),
    ]);
    g.deny([Request::Uplink]);
    let e = g.effective(&m, &dirs);
    assert_eq!(e.fs_read, vec!["home://n", "/srv/w", "*"]);
    assert_eq!(e.fs_write, vec!["*"]);
    assert!(!e.uplink);
    assert_eq!(e.net, vec!["a.example"]);
    assert!(Grant::new(&m).effective(&m, &dirs).net.is_empty());
    // A grant of the spelling, not of the directory it resolves to, allows nothing; nor
    // does a directory that was never resolved.
    let mut spelled = Grant::new(&m);
    spelled.allow([
        Request::FsRead("/srv/w".into()),
        Request::FsRead("/srv/a".into()),
    ]);
    assert_eq!(
        spelled.effective(&m, &dirs).fs_read,
        vec!["/srv/a", "home://n", "*"]
    );
    assert_eq!(
        spelled.effective(&m, &HashMap::new()).fs_read,
        vec!["home://n", "*"]
    );
}

#[test]
fn grants_round_trip_through_toml() {
    let m = manifest("");
    let mut g = Grant::new(&m);
    g.allow([
        Request::FsWrite("/srv/out".into()),
        Request::Uplink,
        Request::Handler(pat("*")),
        Request::Subscribe(pat("*.chat")),
        Request::NetBind(EndpointGrant::parse("[::1]:80").unwrap_or_else(|e| panic!("{e}"))),
        Request::Identity(IdentityLevel::Resolve),
        Request::Process("git".into()),
    ]);
    g.deny([Request::Persistent, Request::FsRead("/srv/x".into())]);
    let text = g.to_toml();
    let back = Grant::parse(&text, Path::new("g.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back, g);
    for (bad, key) in [
        (
            text.replace("capsule = \"cap\"", "capsule = \"Cap\""),
            "capsule",
        ),
        (
            text.replace("uplink = true", "uplink = \"yes\""),
            "granted.uplink",
        ),
        (
            text.replace("handlers = [\"*\"]", "handlers = [\"a..b\"]"),
            "granted.handlers[0]",
        ),
        (format!("{text}\n[extra]\n"), "extra"),
        (
            text.replace("fs_write = [\"/srv/out\"]", "fs_write = [\"home://x\"]"),
            "granted.fs_write[0]",
        ),
    ] {
        match Grant::parse(&bad, Path::new("g.toml")) {
            Err(GrantError::Malformed { key: k, .. }) => assert_eq!(k, key, "{bad}"),
            other => panic!("expected a malformed grant at {key}, got {other:?}"),
        }
    }
}

#[test]
fn the_store_writes_private_files_and_lists_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = GrantStore::new(dir.path());
    let m = manifest("");
    assert!(
        store
            .load(&m.package.name)
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none()
    );
    let mut g = Grant::new(&m);
    g.allow([Request::Uplink]);
    store.save(&g).unwrap_or_else(|e| panic!("{e}"));
    let file = store.path(&m.package.name);
    let mode = std::fs::metadata(&file)
        .unwrap_or_else(|e| panic!("{e}"))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(dir.path().join("grants"))
        .unwrap_or_else(|e| panic!("{e}"))
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    assert_eq!(
        store
            .load(&m.package.name)
            .unwrap_or_else(|e| panic!("{e}")),
        Some(g.clone())
    );
    let listed: Vec<Grant> = store
        .list()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(listed, vec![g]);
    // A grant file renamed to another capsule's name is not that capsule's grant.
    let other = CapsuleName::parse("other").unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(&file, store.path(&other)).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        store.load(&other),
        Err(GrantError::WrongCapsule { .. })
    ));
    assert!(
        store
            .remove(&m.package.name)
            .unwrap_or_else(|e| panic!("{e}"))
    );
    assert!(
        !store
            .remove(&m.package.name)
            .unwrap_or_else(|e| panic!("{e}"))
    );
}
