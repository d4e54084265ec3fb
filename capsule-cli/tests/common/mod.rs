//! What every test of the `capsule` program needs: the built binary, run once to completion
//! against a state directory with no terminal on stdin, and its output as text.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The `capsule` binary cargo built for these tests.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_capsule");

/// Runs `capsule --state <state> <args…>` to completion with stdin closed.
pub(crate) fn capsule(state: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--state")
        .arg(state)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("capsule {args:?}: {e}"))
}

/// Output bytes as text, invalid UTF-8 replaced.
pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
