//! `cargo xtask`: the project's automation. Every command here is the single source of truth
//! for what CI and developers run; `.ci/run` calls `cargo xtask ci` and nothing else.

use std::process::{Command, ExitCode};

mod demo;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  demo                     build the examples and the host, run them, and play a scripted
                           conversation as two principals through the control socket
  examples                 build the example capsules (wasm32-wasip2) into their directories
  ci                       fmt check, clippy (warnings denied), tests, docs (warnings denied),
                           then the demo end to end
  bench <group> [--quick]  run a benchmark group (bus, runtime, storage) in release; prints JSON lines
";

/// The environment a nested guest build keeps (everything else is cleared, so flags meant
/// for the host build never leak into it); `tests/build.rs` keeps the same list, which lets
/// the test build and `cargo xtask examples` share one cache.
pub(crate) const BUILD_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "TMPDIR",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "CARGO_NET_OFFLINE",
    "CARGO_REGISTRIES_CRATES_IO_PROTOCOL",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("demo") => demo::demo(),
        Some("examples") => demo::examples(),
        Some("bench") => bench(&args[1..]),
        Some("-h" | "--help" | "help") => {
            eprint!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command `{other}`\n\n{USAGE}")),
        None => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
}

/// Runs a command to completion, failing with its description when it does not succeed.
pub(crate) fn run(step: &str, mut cmd: Command) -> Result<(), String> {
    eprintln!("xtask: == {step}");
    let status = cmd
        .status()
        .map_err(|e| format!("{step}: could not start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step} failed ({status})"))
    }
}

/// The crates that must never depend on wasmtime (they are tested without any wasm).
const WASM_FREE: &[&str] = &["capsule-bus", "capsule-vfs", "capsule-security"];

/// Fails if a domain crate has a wasmtime crate anywhere in its dependency tree.
fn check_wasm_free() -> Result<(), String> {
    eprintln!("xtask: == domain crates stay free of wasmtime");
    for krate in WASM_FREE {
        let out = cargo()
            .args([
                "tree",
                "--locked",
                "--edges",
                "normal,build,dev",
                "--prefix",
                "none",
                "--package",
                krate,
            ])
            .output()
            .map_err(|e| format!("cargo tree: could not start: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cargo tree -p {krate} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let tree = String::from_utf8_lossy(&out.stdout);
        if let Some(line) = tree.lines().find(|l| l.starts_with("wasmtime")) {
            return Err(format!(
                "{krate} depends on `{line}`; domain crates must not use wasmtime"
            ));
        }
    }
    Ok(())
}

fn ci() -> Result<(), String> {
    // The test build compiles guest capsules for these; a fresh machine may lack them.
    demo::ensure_targets(&["wasm32-wasip2", "wasm32-unknown-unknown"])?;
    check_wasm_free()?;

    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run("cargo fmt --check", fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]);
    run("cargo clippy", clippy)?;

    let mut test = cargo();
    test.args(["test", "--workspace", "--locked"]);
    run("cargo test", test)?;

    let mut doc = cargo();
    doc.args(["doc", "--workspace", "--no-deps", "--locked"]);
    doc.env("RUSTDOCFLAGS", "-D warnings");
    run("cargo doc", doc)?;

    // The README's first command must keep working: the demo runs end to end here.
    eprintln!("xtask: == cargo xtask demo");
    demo::demo_after_tests()?;
    Ok(())
}

fn bench(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    let groups: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let groups = if groups.is_empty() {
        vec!["bus"]
    } else {
        groups
    };
    for group in groups {
        let (package, bench) = match group {
            "bus" => ("capsule-bus", "bus"),
            "runtime" => ("capsule-tests", "runtime"),
            "storage" => ("capsule-tests", "storage"),
            other => {
                return Err(format!(
                    "unknown bench group `{other}` (known: bus, runtime, storage)"
                ));
            }
        };
        let mut cmd = cargo();
        cmd.args([
            "bench",
            "--quiet",
            "--package",
            package,
            "--bench",
            bench,
            "--",
        ]);
        if quick {
            cmd.arg("--quick");
        }
        run(&format!("bench {group}"), cmd)?;
    }
    Ok(())
}
