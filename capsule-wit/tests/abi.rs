//! The ABI guard: the documented WIT under `wit/deps/` must equal the reference copy under
//! `abi/` once doc comments are removed, both must parse, and the host's worlds must resolve.

use std::path::{Path, PathBuf};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `(package dir name, file name)` of every package under `root`, sorted.
fn packages(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    for entry in entries {
        let dir = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let files = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for f in files {
            let f = f.unwrap_or_else(|e| panic!("{e}")).path();
            let name = |p: &Path| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            out.push((name(&dir), name(&f)));
        }
    }
    out.sort();
    out
}

/// Removes doc-comment lines (`///`), which are ours to write; everything else is the ABI.
fn strip_docs(text: &str) -> String {
    text.split_inclusive('\n')
        .filter(|line| !line.trim_start().starts_with("///"))
        .collect()
}

#[test]
fn documented_wit_matches_the_reference_abi() {
    let abi = crate_dir().join("abi");
    let documented = crate_dir().join("wit").join("deps");
    let reference = packages(&abi);
    assert_eq!(reference.len(), 15, "the reference ABI has 15 packages");
    assert_eq!(packages(&documented), reference, "package sets differ");
    for (dir, file) in &reference {
        let want =
            std::fs::read_to_string(abi.join(dir).join(file)).unwrap_or_else(|e| panic!("{e}"));
        let have = std::fs::read_to_string(documented.join(dir).join(file))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            have.contains("///"),
            "{dir}/{file} carries no documentation"
        );
        let stripped = strip_docs(&have);
        if stripped != want {
            let line = stripped
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .map_or_else(|| "length".to_string(), |i| format!("line {}", i + 1));
            panic!("{dir}/{file} drifts from the reference ABI at {line} (doc lines removed)");
        }
    }
}

#[test]
fn the_documented_wit_and_the_host_worlds_parse() {
    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve
        .push_dir(crate_dir().join("wit"))
        .unwrap_or_else(|e| panic!("wit/ does not parse: {e:#}"));
    for world in ["imports", "capsule"] {
        resolve
            .select_world(&[pkg], Some(world))
            .unwrap_or_else(|e| panic!("world {world}: {e:#}"));
    }
    // Every astrid package is reachable, at the reference versions.
    let mut names: Vec<String> = resolve
        .packages
        .iter()
        .map(|(_, p)| p.name.to_string())
        .filter(|n| n.starts_with("astrid:"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 15, "{names:?}");
}

#[test]
fn the_reference_abi_parses_on_its_own() {
    let abi = crate_dir().join("abi");
    let mut resolve = wit_parser::Resolve::default();
    // io first: other packages use it.
    let mut dirs: Vec<(String, String)> = packages(&abi);
    dirs.sort_by_key(|(d, _)| !d.starts_with("astrid-io@"));
    for (dir, _) in dirs {
        resolve
            .push_dir(abi.join(&dir))
            .unwrap_or_else(|e| panic!("{dir}: {e:#}"));
    }
}

#[test]
fn a_changed_signature_is_detected() {
    // The guard itself must be able to fail: a renamed function survives doc stripping.
    let text = "/// Doc.\nfoo: func();\n";
    assert_eq!(strip_docs(text), "foo: func();\n");
    assert_ne!(strip_docs("/// Doc.\nfoo2: func();\n"), strip_docs(text));
}
