//! Builds the guest capsules under `capsules/` for `wasm32-wasip2` (and the SDK capsule also
//! for `wasm32-unknown-unknown`, wrapped into a component) and exposes their directory to the
//! tests as `CAPSULE_FIXTURES`; builds the example capsules under `../examples` the same way
//! and lays each out as a runnable capsule directory under `CAPSULE_EXAMPLES`. A fixture or
//! example that fails to build fails the build: tests never skip for want of one.

use std::path::{Path, PathBuf};
use std::process::Command;

include!("guest_build_env.rs");

/// The members of the guest workspace whose `Cargo.toml` is at `manifest`: its directory names,
/// each also the name (dashes as underscores) of the crate's `.wasm`. Read when the script
/// runs, never compiled in, so the script built for one checkout is right for any other.
fn members(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest)
        .unwrap_or_else(|e| fail(&format!("{}: {e}", manifest.display())));
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| fail(&format!("{}: {e}", manifest.display())));
    let list = table
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .unwrap_or_else(|| fail(&format!("{}: no workspace.members", manifest.display())));
    list.iter()
        .map(|m| {
            m.as_str().map(str::to_owned).unwrap_or_else(|| {
                fail(&format!("{}: a member is not a string", manifest.display()))
            })
        })
        .collect()
}

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let capsules = manifest_dir.join("capsules");
    let fixtures = members(&capsules.join("Cargo.toml"));
    let wit = manifest_dir.join("..").join("capsule-wit").join("wit");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR is not set")))
            .join("fixtures");
    for path in [
        capsules.join("Cargo.toml"),
        capsules.join("Cargo.lock"),
        capsules.join(".cargo"),
        wit.clone(),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for dir in &fixtures {
        println!("cargo:rerun-if-changed={}", capsules.join(dir).display());
    }

    let examples = manifest_dir.join("..").join("examples");
    let example_names = members(&examples.join("Cargo.toml"));
    for path in [examples.join("Cargo.toml"), examples.join("Cargo.lock")] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    // Not the whole example directories: `cargo xtask examples` copies components into them.
    for name in &example_names {
        for part in ["src", "Capsule.toml", "Cargo.toml"] {
            println!(
                "cargo:rerun-if-changed={}",
                examples.join(name).join(part).display()
            );
        }
    }

    let target_dir = capsules.join("target");
    cargo_build(&capsules, &target_dir, "wasm32-wasip2", &[]);
    cargo_build(
        &capsules,
        &target_dir,
        "wasm32-unknown-unknown",
        &["sdk-echo"],
    );

    std::fs::create_dir_all(&out).unwrap_or_else(|e| fail(&format!("{}: {e}", out.display())));
    let release = |target: &str| target_dir.join(target).join("release");
    for dir in &fixtures {
        let from = release("wasm32-wasip2").join(format!("{}.wasm", dir.replace('-', "_")));
        copy_if_changed(&from, &out.join(format!("{dir}.wasm")));
    }
    // The SDK's wasm32-unknown-unknown build is a core module carrying its component type;
    // wrapping it gives a component that imports only astrid interfaces.
    let module_path = release("wasm32-unknown-unknown").join("sdk_echo.wasm");
    let module = std::fs::read(&module_path)
        .unwrap_or_else(|e| fail(&format!("{}: {e}", module_path.display())));
    let component = wit_component::ComponentEncoder::default()
        // Each imported version stays its own import (see `capsules/.cargo/config.toml`).
        .merge_imports_based_on_semver(false)
        .module(&module)
        .and_then(|e| e.validate(true).encode())
        .unwrap_or_else(|e| {
            fail(&format!(
                "wrapping {} into a component: {e:#}",
                module_path.display()
            ))
        });
    write_if_changed(&out.join("sdk-echo-uu.wasm"), &component);

    println!("cargo:rustc-env=CAPSULE_FIXTURES={}", out.display());

    // The examples share the fixtures' target directory: the SDK and its dependencies are
    // compiled once for both.
    let examples_target = target_dir.clone();
    cargo_build(&examples, &examples_target, "wasm32-wasip2", &[]);
    let laid_out =
        PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR is not set")))
            .join("examples");
    for name in &example_names {
        let dir = laid_out.join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(&format!("{}: {e}", dir.display())));
        copy_if_changed(
            &examples.join(name).join("Capsule.toml"),
            &dir.join("Capsule.toml"),
        );
        copy_if_changed(
            &examples_target
                .join("wasm32-wasip2")
                .join("release")
                .join(format!("{}.wasm", name.replace('-', "_"))),
            &dir.join(format!("{name}.wasm")),
        );
    }
    println!("cargo:rustc-env=CAPSULE_EXAMPLES={}", laid_out.display());
}

fn fail(msg: &str) -> ! {
    panic!("building test capsules: {msg}");
}

/// Runs cargo for the fixture workspace with a clean environment, so flags meant for the host
/// build (clippy's wrapper, RUSTFLAGS, the outer target directory) never leak into it.
fn cargo_build(dir: &Path, target_dir: &Path, target: &str, packages: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.env_clear();
    for key in GUEST_BUILD_ENV {
        if let Ok(v) = std::env::var(key) {
            cmd.env(key, v);
        }
    }
    cmd.current_dir(dir)
        .arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--target")
        .arg(target)
        .arg("--target-dir")
        .arg(target_dir);
    for p in packages {
        cmd.arg("--package").arg(p);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo: {e}")));
    if !status.success() {
        fail(&format!(
            "`cargo build --target {target}` in {} failed ({status}); is the target installed? \
             (rustup target add {target})",
            dir.display()
        ));
    }
}

fn copy_if_changed(from: &Path, to: &Path) {
    let bytes = std::fs::read(from).unwrap_or_else(|e| fail(&format!("{}: {e}", from.display())));
    write_if_changed(to, &bytes);
}

fn write_if_changed(to: &Path, bytes: &[u8]) {
    if std::fs::read(to).is_ok_and(|old| old == bytes) {
        return;
    }
    std::fs::write(to, bytes).unwrap_or_else(|e| fail(&format!("{}: {e}", to.display())));
}
