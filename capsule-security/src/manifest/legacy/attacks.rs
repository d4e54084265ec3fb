//! Hostile legacy manifests: a capsule author writes the manifest, so a legacy construct must
//! never grant more than its current-layout spelling, never shadow a current entry, and never
//! crash or stall the parser.

use std::path::Path;

use crate::manifest::{Manifest, ManifestError};

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

fn refused(body: &str) -> String {
    match parse(body) {
        Err(e) => e.to_string(),
        Ok(m) => panic!("hostile manifest parsed: {:?}", m.capabilities),
    }
}

#[test]
fn workspace_scheme_cannot_climb_out_of_the_workspace() {
    for escape in [
        "workspace://..",
        "workspace://../etc",
        "workspace://a/../../etc",
        "workspace://./..",
    ] {
        let e = refused(&format!("[capabilities]\nfs_read = [\"{escape}\"]\n"));
        assert!(e.contains("climbs out"), "{escape}: {e}");
        // The same inside the component's own capabilities (the body continues its table).
        let e = refused(&format!("capabilities = {{ fs_write = [\"{escape}\"] }}\n"));
        assert!(e.contains("climbs out"), "{escape}: {e}");
    }
}

#[test]
fn workspace_scheme_with_extra_slashes_stays_inside_the_workspace() {
    // `workspace:///etc` must not become the host's `/etc`.
    let m = parse("[capabilities]\nfs_read = [\"workspace:///etc\", \"workspace:////\"]\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.capabilities.fs_read, vec!["cwd://etc", "*"]);
}

#[test]
fn empty_legacy_acl_patterns_are_refused_not_widened() {
    for list in ["ipc_publish", "ipc_subscribe"] {
        let e = refused(&format!("[capabilities]\n{list} = [\"\"]\n"));
        assert!(e.contains(&format!("capabilities.{list}[0]")), "{e}");
    }
    let e = refused("[[interceptor]]\nevent = \"\"\naction = \"x\"\n");
    assert!(e.contains("interceptor[0].event"), "{e}");
    let e = refused("[[interceptor]]\nevent = \"a.b\"\naction = \"\"\n");
    assert!(
        e.contains("interceptor[0].action") && e.contains("empty"),
        "{e}"
    );
}

#[test]
fn legacy_wildcards_mean_exactly_what_the_current_layout_says() {
    let legacy =
        parse("[capabilities]\nipc_publish = [\"a.*\", \"*.b\"]\nipc_subscribe = [\"c.*.d\"]\n")
            .unwrap_or_else(|e| panic!("{e}"));
    let current = parse("[publish]\n\"a.*\" = {}\n\"*.b\" = {}\n[subscribe]\n\"c.*.d\" = {}\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let pats = |m: &Manifest| {
        (
            m.publish
                .iter()
                .map(|p| p.pattern.to_string())
                .collect::<Vec<_>>(),
            m.subscribe
                .iter()
                .map(|p| p.pattern.to_string())
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(pats(&legacy), pats(&current));
    // Malformed wildcard forms are refused in the legacy lists as in the current sections.
    for bad in [">", "a.>", "a*", "**", "a..b", " "] {
        let e = refused(&format!("[capabilities]\nipc_publish = [\"{bad}\"]\n"));
        assert!(e.contains("publish"), "{bad}: {e}");
    }
}

#[test]
fn duplicate_legacy_entries_never_shadow_a_current_entry() {
    let m = parse(
        r#"
[publish]
"a.b" = { wit = "current-type" }
[subscribe]
"c.d" = { wit = "current-sub", fanout = true }
[capabilities]
ipc_publish = ["a.b", "a.b"]
ipc_subscribe = ["c.d", "c.d"]
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.publish.len(), 1);
    assert_eq!(m.publish[0].wit.as_deref(), Some("current-type"));
    assert_eq!(m.subscribe.len(), 1);
    assert_eq!(m.subscribe[0].wit.as_deref(), Some("current-sub"));
    assert!(m.subscribe[0].fanout);
    assert!(m.subscribe[0].handler.is_none());
}

#[test]
fn two_interceptors_on_one_pattern_are_refused() {
    let e = refused(
        "[[interceptor]]\nevent = \"a.b\"\naction = \"one\"\n[[interceptor]]\nevent = \"a.b\"\naction = \"two\"\n",
    );
    assert!(
        e.contains("interceptor[1].event") && e.contains("already has a handler"),
        "{e}"
    );
}

#[test]
fn a_legacy_construct_cannot_smuggle_a_grant_the_current_layout_lacks() {
    // The legacy lists are translated into ACLs only; nothing else in the capabilities table
    // changes, so operator-granted capabilities stay exactly what the table says.
    let legacy = parse("[capabilities]\nipc_publish = [\"a\"]\nnet = [\"example.com\"]\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let current = parse("[publish]\na = {}\n[capabilities]\nnet = [\"example.com\"]\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        format!("{:?}", legacy.capabilities),
        format!("{:?}", current.capabilities)
    );
}

#[test]
fn deeply_nested_legacy_values_are_refused_without_overflowing() {
    for depth in [1_000usize, 100_000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        for body in [
            format!("[capabilities]\nipc_publish = {nested}\n"),
            format!("[[interceptor]]\nevent = {nested}\naction = \"x\"\n"),
            format!("topic = {nested}\n"),
            format!("[env]\nx = {{ type = {nested} }}\n"),
        ] {
            assert!(parse(&body).is_err(), "depth {depth} parsed");
        }
        let inline = format!("{}1{}", "{a=".repeat(depth), "}".repeat(depth));
        assert!(parse(&format!("[env]\nx = {inline}\n")).is_err());
    }
}

#[test]
fn a_manifest_of_many_interceptors_parses_in_one_pass() {
    // Close to the manifest size limit: every entry is translated once (no quadratic rescans
    // that would stall the load).
    let mut body = String::new();
    for i in 0..20_000 {
        body.push_str(&format!(
            "[[interceptor]]\nevent = \"t.{i}\"\naction = \"a\"\n"
        ));
    }
    let m = parse(&body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.subscribe.len(), 20_000);
    assert_eq!(m.deprecations[0].keys.len(), 20_000);
}
