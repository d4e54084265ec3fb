//! `cargo xtask`: the project's automation. Every command here is the single source of truth
//! for what CI and developers run; `.ci/run` calls `cargo xtask ci` and nothing else.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod demo;
mod nats;
mod package;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  demo                     build the examples and the host, run them, and play a scripted
                           conversation as two principals through the control socket
  examples                 build the example capsules (wasm32-wasip2) into their directories
  ci                       fmt check, clippy (warnings denied), tests (doc tests included),
                           docs (warnings denied), `cargo package` of the library crates,
                           then the demo end to end
  ci --stress              the integration tests only, with two CPU-burning processes running
  package [--verify-all]   package the published crates as `ci` does; --verify-all also builds
                           capsule-wit, capsule-runtime and capsule-cli from their packages
  bench <group> [--quick]  run a benchmark group (bus, runtime, storage, cluster) in release;
                           prints JSON lines
  fuzz <target> [--seconds N]
                           run one cargo-fuzz target for N seconds (default 60); installs
                           cargo-fuzz and a nightly toolchain when missing
  fuzz --list              list the fuzz targets
";

include!("../../tests/guest_build_env.rs");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") if args[1..] == ["--stress"] => stress(),
        Some("ci") if args.len() == 1 => ci(),
        Some("ci") => Err(format!(
            "unknown `ci` arguments {:?}\n\n{USAGE}",
            &args[1..]
        )),
        Some("demo") => demo::demo(),
        Some("examples") => demo::examples(),
        Some("package") if args[1..] == ["--verify-all"] => package::package(true),
        Some("package") if args.len() == 1 => package::package(false),
        Some("package") => Err(format!(
            "unknown `package` arguments {:?}\n\n{USAGE}",
            &args[1..]
        )),
        Some("bench") => bench(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some(BURN) => burn(),
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
const WASM_FREE: &[&str] = &[
    "capsule-ids",
    "capsule-bus",
    "capsule-vfs",
    "capsule-security",
    "capsule-store",
    "capsule-fuzz",
    "capsule-nats",
];

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
    // The bridge's tests start their own nats-server; a fresh machine may lack the binary.
    nats::ensure_server()?;
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

    package::package(false)?;

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
            "cluster" => {
                nats::ensure_server()?;
                ("capsule-nats", "cluster")
            }
            other => {
                return Err(format!(
                    "unknown bench group `{other}` (known: bus, runtime, storage, cluster)"
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

/// The hidden subcommand a CPU burner runs.
const BURN: &str = "__burn";

/// Spins on one core until the process that started it is gone, so a burner never outlives
/// an xtask that was killed before it could clean up.
fn burn() -> Result<(), String> {
    let parent = std::os::unix::process::parent_id();
    let mut x = 0u64;
    loop {
        let slice = Instant::now();
        while slice.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        if std::os::unix::process::parent_id() != parent {
            return Ok(());
        }
    }
}

/// Background CPU burners, killed and reaped when dropped (also when the run failed).
struct Burners(Vec<Child>);

impl Burners {
    fn start(n: usize) -> Result<Self, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find the xtask binary: {e}"))?;
        let mut burners = Self(Vec::with_capacity(n));
        for _ in 0..n {
            let child = Command::new(&exe)
                .arg(BURN)
                .stdin(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start a CPU burner: {e}"))?;
            burners.0.push(child);
        }
        Ok(burners)
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The integration tests with two CPU burners running: tests that only pass on an idle
/// machine fail here. The tests are built first, without the burners, so only the run is
/// under load.
fn stress() -> Result<(), String> {
    nats::ensure_server()?;
    let mut build = cargo();
    build.args(["test", "--package", "capsule-tests", "--locked", "--no-run"]);
    run("build the integration tests", build)?;
    let burners = Burners::start(2)?;
    let mut test = cargo();
    test.args(["test", "--package", "capsule-tests", "--locked"]);
    let result = run("cargo test -p capsule-tests, two CPU burners running", test);
    drop(burners);
    result
}

fn repo_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The fuzz targets: one file per target under `fuzz/fuzz_targets/`, sorted.
fn fuzz_targets(root: &Path) -> Result<Vec<(String, String)>, String> {
    let dir = root.join("fuzz").join("fuzz_targets");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(name) = path.file_stem().and_then(|s| s.to_str())
        {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let summary = text
                .lines()
                .find_map(|l| l.strip_prefix("//! Fuzz target: "))
                .unwrap_or("")
                .to_string();
            out.push((name.to_string(), summary));
        }
    }
    out.sort();
    Ok(out)
}

/// How the nightly-only cargo-fuzz build is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Toolchain {
    /// `rustup run nightly`.
    Nightly,
    /// The default (stable) toolchain with `RUSTC_BOOTSTRAP=1`.
    Bootstrap,
}

/// A command with the environment cargo set for xtask removed, so the child picks its own
/// toolchain.
fn clean(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn succeeds(mut cmd: Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Finds (or installs) a nightly toolchain; falls back to stable with `RUSTC_BOOTSTRAP=1`
/// when nightly cannot be installed. `CAPSULE_FUZZ_TOOLCHAIN=bootstrap` forces the fallback.
fn ensure_nightly() -> Toolchain {
    if std::env::var("CAPSULE_FUZZ_TOOLCHAIN").is_ok_and(|v| v == "bootstrap") {
        eprintln!(
            "xtask: CAPSULE_FUZZ_TOOLCHAIN=bootstrap: stable toolchain with RUSTC_BOOTSTRAP=1"
        );
        return Toolchain::Bootstrap;
    }
    let mut probe = clean("rustup");
    probe.args(["run", "nightly", "rustc", "--version"]);
    if succeeds(probe) {
        return Toolchain::Nightly;
    }
    let mut install = clean("rustup");
    install.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
    if run(
        "rustup toolchain install nightly --profile minimal",
        install,
    )
    .is_ok()
    {
        return Toolchain::Nightly;
    }
    eprintln!(
        "xtask: nightly could not be installed; building the fuzz targets with the stable \
         toolchain and RUSTC_BOOTSTRAP=1"
    );
    Toolchain::Bootstrap
}

fn ensure_cargo_fuzz() -> Result<(), String> {
    let mut probe = clean("cargo");
    probe.args(["fuzz", "--version"]);
    if succeeds(probe) {
        return Ok(());
    }
    let mut install = clean("cargo");
    install.args(["install", "cargo-fuzz", "--locked"]);
    run("cargo install cargo-fuzz --locked", install)
}

/// What libFuzzer reported at the end of a run.
#[derive(Debug, Default)]
struct FuzzStats {
    runs: Option<u64>,
    exec_per_sec: Option<u64>,
    artifact: Option<String>,
}

impl FuzzStats {
    fn read_line(&mut self, line: &str) {
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            self.runs = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            self.exec_per_sec = v.trim().parse().ok();
        } else if let Some(rest) = line.split("Test unit written to ").nth(1) {
            self.artifact = Some(rest.trim().to_string());
        }
    }
}

#[allow(
    clippy::print_stdout,
    reason = "`fuzz --list` answers on stdout so scripts can read the names"
)]
fn fuzz(args: &[String]) -> Result<(), String> {
    let root = repo_root();
    let targets = fuzz_targets(&root)?;
    let mut target: Option<&str> = None;
    let mut seconds: u64 = 60;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--list" => {
                for (name, summary) in &targets {
                    println!("{name:10} {summary}");
                }
                return Ok(());
            }
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--seconds needs a positive number")?;
            }
            t if !t.starts_with('-') && target.is_none() => target = Some(t),
            other => return Err(format!("unknown `fuzz` argument `{other}`\n\n{USAGE}")),
        }
    }
    let names: Vec<&str> = targets.iter().map(|(n, _)| n.as_str()).collect();
    let target = target.ok_or_else(|| format!("which target? one of: {}", names.join(", ")))?;
    if !names.contains(&target) {
        return Err(format!(
            "unknown fuzz target `{target}` (known: {})",
            names.join(", ")
        ));
    }
    let toolchain = ensure_nightly();
    ensure_cargo_fuzz()?;

    let target_dir = root.join("target").join("fuzz");
    let mut cmd = match toolchain {
        Toolchain::Nightly => {
            let mut c = clean("rustup");
            c.args(["run", "nightly", "cargo"]);
            c
        }
        Toolchain::Bootstrap => {
            let mut c = clean("cargo");
            c.env("RUSTC_BOOTSTRAP", "1");
            c
        }
    };
    cmd.current_dir(&root)
        .args(["fuzz", "run", target, "--target-dir"])
        .arg(&target_dir)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // Every input finishes in milliseconds; one that takes 10 s is a hang, a finding.
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .stderr(Stdio::piped());
    eprintln!("xtask: == cargo fuzz run {target} ({seconds} s, {toolchain:?} toolchain)");
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cargo fuzz: could not start: {e}"))?;
    let mut stats = FuzzStats::default();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            stats.read_line(&line);
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("cargo fuzz: could not wait: {e}"))?;
    let elapsed = started.elapsed().as_secs();
    let runs = stats.runs.map_or("?".to_string(), |r| r.to_string());
    let rate = stats
        .exec_per_sec
        .map_or("?".to_string(), |r| r.to_string());
    if status.success() {
        eprintln!(
            "xtask: fuzz {target}: {runs} executions, {rate} exec/s, no findings ({elapsed} s \
             including the build)"
        );
        Ok(())
    } else {
        Err(format!(
            "fuzz {target} failed ({status}) after {runs} executions ({rate} exec/s); \
             the input is {}",
            stats.artifact.as_deref().unwrap_or("not reported")
        ))
    }
}
