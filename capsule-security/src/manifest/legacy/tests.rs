//! Each legacy construct, translated: the legacy manifest parses to the same values as its
//! current-layout equivalent, with one deprecation naming every place it occurs.

use std::path::Path;

use crate::manifest::{LegacyConstruct, Manifest, ManifestError};

const HEAD: &str = r#"
[package]
name = "old"
version = "0.1.0"

[[component]]
id = "old"
file = "old.wasm"
"#;

fn parse(body: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse(
        &format!("{HEAD}{body}"),
        Path::new("/caps/old/Capsule.toml"),
    )
}

fn ok(body: &str) -> Manifest {
    parse(body).unwrap_or_else(|e| panic!("{e}"))
}

fn summary(m: &Manifest) -> String {
    let publish: Vec<String> = m.publish.iter().map(|p| p.pattern.to_string()).collect();
    let subscribe: Vec<String> = m
        .subscribe
        .iter()
        .map(|s| format!("{} {:?} {:?}", s.pattern, s.handler, s.wit))
        .collect();
    let env: Vec<String> = m
        .env
        .iter()
        .map(|(k, e)| format!("{k} {:?} {:?}", e.kind, e.default))
        .collect();
    format!(
        "publish {publish:?}\nsubscribe {subscribe:?}\ncaps {:?}\nenv {env:?}",
        m.capabilities
    )
}

/// Asserts `legacy` and `current` parse alike and `legacy` carries exactly one deprecation,
/// of `construct`, at `keys`.
fn same(legacy: &str, current: &str, construct: LegacyConstruct, keys: &[&str]) {
    let old = ok(legacy);
    let new = ok(current);
    assert_eq!(summary(&old), summary(&new));
    assert_eq!(old.deprecations.len(), 1, "{:?}", old.deprecations);
    assert_eq!(old.deprecations[0].construct, construct);
    assert_eq!(old.deprecations[0].keys, keys);
    assert!(new.deprecations.is_empty() && new.migrated.is_none());
    // The migrated text is itself a current manifest with the same meaning.
    let migrated = old
        .migrated
        .as_deref()
        .unwrap_or_else(|| panic!("no migrated text"));
    let again = Manifest::parse(migrated, Path::new("/caps/old/Capsule.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{migrated}"));
    assert!(again.deprecations.is_empty(), "{migrated}");
    assert_eq!(summary(&again), summary(&new), "{migrated}");
}

#[test]
fn interceptors_become_subscribe_handlers() {
    same(
        r#"
[[interceptor]]
event = "chat.post"
action = "on_post"
priority = 10
[[interceptor]]
event = "chat.edit.*"
action = "on_edit"
"#,
        r#"
[subscribe]
"chat.post" = { handler = "on_post", priority = 10 }
"chat.edit.*" = { handler = "on_edit" }
"#,
        LegacyConstruct::Interceptor,
        &["interceptor[0]", "interceptor[1]"],
    );
}

#[test]
fn an_interceptor_joins_a_plain_subscribe_entry_of_its_pattern() {
    same(
        r#"
[subscribe]
"chat.post" = "post-type"
[[interceptor]]
event = "chat.post"
action = "on_post"
"#,
        r#"
[subscribe]
"chat.post" = { wit = "post-type", handler = "on_post" }
"#,
        LegacyConstruct::Interceptor,
        &["interceptor[0]"],
    );
}

#[test]
fn ipc_lists_become_the_acls() {
    same(
        r#"
[capabilities]
ipc_publish = ["chat.reply", "chat.fan.*"]
"#,
        r#"
[publish]
"chat.reply" = {}
"chat.fan.*" = {}
"#,
        LegacyConstruct::IpcPublish,
        &["capabilities.ipc_publish"],
    );
    same(
        r#"
[capabilities]
ipc_subscribe = ["chat.room.*"]
[subscribe]
"chat.room.*" = "room"
"#,
        r#"
[subscribe]
"chat.room.*" = "room"
"#,
        LegacyConstruct::IpcSubscribe,
        &["capabilities.ipc_subscribe"],
    );
    same(
        r#"
[component.capabilities]
ipc_subscribe = ["a.b"]
"#,
        r#"
[subscribe]
"a.b" = {}
"#,
        LegacyConstruct::IpcSubscribe,
        &["component[0].capabilities.ipc_subscribe"],
    );
}

#[test]
fn string_env_is_text() {
    same(
        r#"
[env]
greeting = { type = "string", default = "hi" }
"#,
        r#"
[env.greeting]
type = "text"
default = "hi"
"#,
        LegacyConstruct::EnvString,
        &["env.greeting.type"],
    );
}

#[test]
fn the_workspace_scheme_is_the_workspace_root() {
    same(
        r#"
[capabilities]
fs_read = ["workspace://", "workspace://data/in", "home://x"]
fs_write = ["workspace:///out/"]
"#,
        r#"
[capabilities]
fs_read = ["*", "cwd://data/in", "home://x"]
fs_write = ["cwd://out"]
"#,
        LegacyConstruct::WorkspaceScheme,
        &[
            "capabilities.fs_read[0]",
            "capabilities.fs_read[1]",
            "capabilities.fs_write[0]",
        ],
    );
}

#[test]
fn topic_declarations_are_documentation() {
    same(
        r#"
[[topic]]
name = "chat.post"
description = "a post"
[[topic]]
name = "chat.reply"
"#,
        "",
        LegacyConstruct::TopicDeclaration,
        &["topic[0]", "topic[1]"],
    );
}

#[test]
fn several_constructs_give_one_deprecation_each_sorted() {
    let m = ok(r#"
[[topic]]
name = "x"
[[interceptor]]
event = "a.b"
action = "go"
[capabilities]
ipc_publish = ["a.c"]
"#);
    let kinds: Vec<LegacyConstruct> = m.deprecations.iter().map(|d| d.construct).collect();
    assert_eq!(
        kinds,
        [
            LegacyConstruct::Interceptor,
            LegacyConstruct::IpcPublish,
            LegacyConstruct::TopicDeclaration
        ]
    );
    let shown = m.deprecations[0].to_string();
    assert!(
        shown.contains("`interceptor[0]`") && shown.contains("handler"),
        "{shown}"
    );
}

#[test]
fn malformed_legacy_constructs_are_keyed_errors_all_at_once() {
    let e = match parse(
        r#"
[[interceptor]]
event = "bad..topic"
action = "x"
[[interceptor]]
action = "y"
[[interceptor]]
event = "ok.topic"
action = "z"
priority = -1
[capabilities]
ipc_publish = [1]
"#,
    ) {
        Err(e) => e,
        Ok(_) => panic!("malformed legacy constructs parsed"),
    };
    let keys: Vec<String> = e
        .problems("")
        .into_iter()
        .map(|p| p.key)
        .collect::<Vec<_>>();
    for want in [
        "interceptor[0].event",
        "interceptor[1].event",
        "interceptor[2].priority",
        "capabilities.ipc_publish[0]",
    ] {
        assert!(keys.iter().any(|k| k == want), "{want} missing from {e}");
    }
}

#[test]
fn a_legacy_binding_never_replaces_a_current_handler() {
    let e = match parse(
        r#"
[subscribe]
"a.b" = { handler = "current" }
[[interceptor]]
event = "a.b"
action = "legacy"
"#,
    ) {
        Err(e) => e.to_string(),
        Ok(m) => panic!("two handlers on one pattern parsed: {:?}", m.subscribe),
    };
    assert!(
        e.contains("interceptor[0].event") && e.contains("already has a handler"),
        "{e}"
    );
}

#[test]
fn a_bad_pattern_in_a_legacy_list_is_located_at_the_legacy_entry() {
    let body = "\n[capabilities]\nipc_publish = [\"ok.topic\", \"a..b\"]\n";
    let text = format!("{HEAD}{body}");
    let e = match parse(body) {
        Err(e) => e,
        Ok(m) => panic!("an empty topic segment parsed: {:?}", m.publish),
    };
    let problems = e.problems(&text);
    let line = text
        .lines()
        .position(|l| l.starts_with("ipc_publish"))
        .map_or(0, |i| i + 1);
    let column = text
        .lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.find("\"a..b\""))
        .map_or(0, |c| c + 1);
    assert!(
        problems
            .iter()
            .any(|p| p.key == "capabilities.ipc_publish[1]"
                && p.line == line
                && p.column == column),
        "{problems:?}"
    );
}

#[test]
fn a_problem_in_a_translated_interceptor_names_the_legacy_field() {
    let body = "\n[[interceptor]]\nevent = \"a.b\"\naction = \"\"\n";
    let text = format!("{HEAD}{body}");
    let e = match parse(body) {
        Err(e) => e,
        Ok(m) => panic!("an empty action parsed: {:?}", m.subscribe),
    };
    let interceptor_line = text
        .lines()
        .position(|l| l == "[[interceptor]]")
        .map_or(0, |i| i + 1);
    let problems = e.problems(&text);
    assert!(
        problems
            .iter()
            .any(|p| p.key == "interceptor[0].action" && p.line > interceptor_line),
        "{problems:?}"
    );
}
