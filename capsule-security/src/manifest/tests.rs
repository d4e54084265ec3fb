//! Whole-manifest parsing: every section together, and errors that name their key.

use super::*;

const MINIMAL: &str = r#"
[package]
name = "pong"
version = "0.1.0"

[[component]]
id = "pong"
file = "pong.wasm"
"#;

fn parse(text: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse(text, Path::new("/caps/pong/Capsule.toml"))
}

fn err(text: &str) -> (String, String) {
    match parse(text) {
        Err(ManifestError::Invalid { key, reason, .. }) => (key, reason),
        Err(e) => panic!("expected an invalid-key error, got {e}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn minimal_manifest_parses() {
    let m = parse(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.package.name.as_str(), "pong");
    assert_eq!(m.package.version, semver::Version::new(0, 1, 0));
    assert_eq!(m.component.file, PathBuf::from("/caps/pong/pong.wasm"));
    assert!(m.publish.is_empty() && m.subscribe.is_empty());
    assert!(!m.capabilities.uplink);
}

#[test]
fn full_manifest_parses() {
    let text = format!(
        "{MINIMAL}{}",
        r#"
[imports]
"astrid:session" = "^1.0"
[imports.astrid]
registry = { version = "^2", optional = true }
[exports]
"astrid:pong" = "1.2.3"

[publish]
"pong.reply" = "reply-record"
"pong.fan.*" = { wit = "r", fanout = true, version = "1.0" }

[subscribe]
"ping.*" = { wit = "ping", handler = "on_ping", priority = 10 }
"other.topic" = { wit = "x", handler = "on_other" }
"acl.only" = "opaque"

[capabilities]
uplink = true
fs_read = ["home://notes"]

[env.MODEL]
type = "select"
enum_values = ["a", "b"]
default = "b"
[env.API_KEY]
type = "secret"
[env.TAGS]
type = "array"
default = ["x", "y"]

[[tool]]
name = "t"
description_for_llm = "d"
"#
    );
    let m = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.imports.len(), 2);
    assert_eq!(m.imports[0].name, "astrid:registry");
    assert!(m.imports[0].optional);
    assert_eq!(m.exports[0].version, semver::Version::new(1, 2, 3));
    assert_eq!(m.publish.len(), 2);
    let handlers: Vec<_> = m
        .handlers()
        .map(|(p, h)| (p.as_str().to_string(), h.clone()))
        .collect();
    assert_eq!(handlers.len(), 2);
    assert!(handlers.contains(&(
        "ping.*".into(),
        Handler {
            action: "on_ping".into(),
            priority: 10
        }
    )));
    assert!(handlers.contains(&(
        "other.topic".into(),
        Handler {
            action: "on_other".into(),
            priority: DEFAULT_HANDLER_PRIORITY
        }
    )));
    assert!(m.capabilities.uplink);
    assert_eq!(m.env["MODEL"].default.as_deref(), Some("b"));
    assert_eq!(m.env["TAGS"].default.as_deref(), Some(r#"["x","y"]"#));
    assert_eq!(m.env["API_KEY"].kind, EnvKind::Secret);
    assert_eq!(m.inert_tables, vec!["tool".to_string()]);
}

#[test]
fn syntax_errors_carry_line_and_column() {
    match parse("[package]\nname = \n") {
        Err(ManifestError::Syntax { line, .. }) => assert_eq!(line, 2),
        other => panic!("unexpected: {other:?}"),
    }
}

#[test]
fn bad_values_name_their_key() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            MINIMAL.replace("\"pong\"\nversion", "\"Pong\"\nversion"),
            "package.name",
            "[a-z0-9-]",
        ),
        (MINIMAL.replace("0.1.0", "one"), "package.version", "semver"),
        (
            MINIMAL.replace("[package]", "[package]\ncolour = 1"),
            "package.colour",
            "unknown key",
        ),
        (
            format!("{MINIMAL}\n[frobnicate]\nx = 1\n"),
            "frobnicate",
            "unknown top-level key",
        ),
        (
            format!("{MINIMAL}\n[publish]\n\"a..b\" = \"x\"\n"),
            "publish.\"a..b\"",
            "segment 1 is empty",
        ),
        (
            format!("{MINIMAL}\n[subscribe]\n\"a.b\" = {{ priority = 5 }}\n"),
            "subscribe.\"a.b\".priority",
            "requires a `handler`",
        ),
        (
            format!("{MINIMAL}\n[publish]\n\"a.b\" = {{ handler = \"h\" }}\n"),
            "publish.\"a.b\".handler",
            "unknown key",
        ),
        (
            format!("{MINIMAL}\n[capabilities]\nteleport = true\n"),
            "capabilities.teleport",
            "unknown capability",
        ),
        (
            format!("{MINIMAL}\n[capabilities]\nuplink = \"yes\"\n"),
            "capabilities.uplink",
            "expected a boolean",
        ),
        (
            format!("{MINIMAL}\n[capabilities]\nfs_read = [\"home://a\", \"home://../etc\"]\n"),
            "capabilities.fs_read[1]",
            "climbs out",
        ),
        (
            format!("{MINIMAL}\n[capabilities]\nnet = [\"*.com\"]\n"),
            "capabilities.net[0]",
            "single label",
        ),
        (
            format!("{MINIMAL}\n[capabilities]\nnet_connect = [\"db\"]\n"),
            "capabilities.net_connect[0]",
            "host:port",
        ),
        (
            format!("{MINIMAL}\n[env.K]\ntype = \"blob\"\n"),
            "env.K.type",
            "unknown type",
        ),
        (
            format!("{MINIMAL}\n[env.K]\ntype = \"secret\"\ndefault = \"sk-123\"\n"),
            "env.K.default",
            "secret",
        ),
        (
            format!("{MINIMAL}\n[imports]\n\"astrid:x\" = \"not-a-req\"\n"),
            "imports.\"astrid:x\"",
            "semver",
        ),
        (
            MINIMAL.replace(
                "file = \"pong.wasm\"",
                "file = \"pong.wasm\"\nhash = \"md5:00\"",
            ),
            "component[0].hash",
            "sha256",
        ),
        (
            format!("{MINIMAL}\n[[component]]\nid = \"two\"\nfile = \"two.wasm\"\n"),
            "component",
            "exactly one",
        ),
        (
            MINIMAL.replace("\"pong.wasm\"", "\"../x.wasm\""),
            "component[0].file",
            "inside the capsule directory",
        ),
        (
            MINIMAL.replace("\"pong.wasm\"", "\"/dev/zero\""),
            "component[0].file",
            "no absolute path",
        ),
        (
            MINIMAL.replace("\"pong.wasm\"", "\"lib/../../x.wasm\""),
            "component[0].file",
            "no `..`",
        ),
    ];
    for (text, key, reason) in cases {
        let (k, r) = err(&text);
        assert_eq!(k, key, "for reason {r}");
        assert!(r.contains(reason), "{k}: {r:?} should mention {reason:?}");
    }
}

#[test]
fn missing_sections_are_named() {
    match parse("") {
        Err(e @ ManifestError::Many { .. }) => {
            let keys: Vec<String> = e.problems("").into_iter().map(|p| p.key).collect();
            assert_eq!(keys, ["component", "package"]);
        }
        other => panic!("expected both missing sections, got {:?}", other.err()),
    }
    assert_eq!(
        err("[package]\nname = \"a\"\nversion = \"1.0.0\"\n").0,
        "component"
    );
    assert_eq!(
        err("[package]\nversion = \"1.0.0\"\n[[component]]\nid = \"a\"\nfile = \"a.wasm\"\n").0,
        "package.name"
    );
}

#[test]
fn component_hash_is_verified() {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(b"wasm bytes");
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let text = MINIMAL.replace(
        "file = \"pong.wasm\"",
        &format!("file = \"pong.wasm\"\nhash = \"sha256:{hex}\""),
    );
    let m = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let h = m.component.hash.unwrap_or_else(|| panic!("hash parsed"));
    assert!(h.verify(b"wasm bytes"));
    assert!(!h.verify(b"other bytes"));
}

#[test]
fn three_mistakes_are_reported_in_one_pass_in_file_order() {
    let text = r#"
[package]
name = "pong"
version = "not-a-version"

[[component]]
id = "pong"
file = "pong.wasm"

[env.mode]
type = "colour"

[subscribe]
"bad..topic" = "x"
"#;
    let e = match parse(text) {
        Err(e) => e,
        Ok(_) => panic!("three mistakes parsed"),
    };
    let ManifestError::Many {
        ref file,
        ref problems,
    } = e
    else {
        panic!("expected every problem at once, got {e}");
    };
    assert_eq!(file, Path::new("/caps/pong/Capsule.toml"));
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "package.version",
            "env.mode.type",
            "subscribe.\"bad..topic\""
        ],
        "{e}"
    );
    let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [4, 11, 14], "{e}");
    assert!(problems[1].reason.contains("colour"), "{e}");
    let shown = e.to_string();
    assert!(
        shown.starts_with("/caps/pong/Capsule.toml: 3 problems:"),
        "{shown}"
    );
    assert!(
        shown.contains("line 14, column 1: `subscribe.\"bad..topic\"`"),
        "{shown}"
    );
}

#[test]
fn mistakes_in_one_section_are_each_reported() {
    let text = format!(
        "{MINIMAL}\n[capabilities]\nnet = 3\nteleport = true\n[publish]\n\"a.*.\" = 1\n\"ok.topic\" = {{ fanout = \"yes\" }}\n"
    );
    let problems = match parse(&text) {
        Err(e @ ManifestError::Many { .. }) => e.problems(&text),
        Err(e) => panic!("expected several problems, got {e}"),
        Ok(_) => panic!("parsed"),
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "capabilities.net",
            "capabilities.teleport",
            "publish.\"a.*.\"",
            "publish.\"ok.topic\".fanout"
        ]
    );
    assert!(problems.windows(2).all(|w| w[0].line < w[1].line));
}

#[test]
fn a_single_mistake_stays_a_keyed_error() {
    let (key, _) = err(&format!("{MINIMAL}\n[capabilities]\nteleport = true\n"));
    assert_eq!(key, "capabilities.teleport");
}
