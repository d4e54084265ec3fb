//! Integration tests of the capsule runtime: the tests live in `tests/` and drive the public
//! APIs of the workspace crates. This library holds only what the test binary and the
//! benchmarks both need to set up capsules on disk.

use std::path::{Path, PathBuf};

/// Path of a built fixture component (built from `capsules/` by the build script).
pub fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CAPSULE_FIXTURES")).join(file)
}

/// A runnable copy of the example capsule `name` from `../examples` (its `Capsule.toml` and
/// the component built from its source), laid out by the build script.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CAPSULE_EXAMPLES")).join(name)
}

/// Writes the capsule directory `dir`: the fixture component `wasm` copied in beside a
/// `Capsule.toml` naming it relatively (components must lie inside their capsule directory),
/// with `extra` appended to the manifest. Returns `dir`.
pub fn write_capsule(dir: &Path, name: &str, version: &str, wasm: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let component = dir.join(wasm);
    // A hard link is instant; a copy serves when the fixture lives on another filesystem.
    if !component.exists() && std::fs::hard_link(fixture(wasm), &component).is_err() {
        std::fs::copy(fixture(wasm), &component).unwrap_or_else(|e| panic!("copying {wasm}: {e}"));
    }
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"{version}\"\n\n[[component]]\nid = \"{name}\"\nfile = \"{wasm}\"\n\n{extra}\n"
    );
    std::fs::write(dir.join("Capsule.toml"), manifest)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir.to_path_buf()
}
