//! The `nats-server` the bridge's tests and the `cluster` benchmark start for themselves: found
//! where `capsule-nats` looks for it, else installed from the distribution's packages, else a
//! clear failure saying what to install. The xtask never starts the server itself; every test
//! starts its own on a free loopback port and kills it when done.

use std::path::PathBuf;
use std::process::Command;

use crate::run;

/// Where `capsule_nats::server_binary` looks, in its order.
fn installed() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CAPSULE_NATS_SERVER").map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// Makes sure `nats-server` is installed, with `apt-get` when it is missing.
pub(crate) fn ensure_server() -> Result<(), String> {
    if let Some(p) = installed() {
        eprintln!("xtask: nats-server found at {}", p.display());
        return Ok(());
    }
    let fail = |why: &str| {
        format!(
            "nats-server is missing and {why}; install it (Debian/Ubuntu: \
             `apt-get install nats-server`) or point CAPSULE_NATS_SERVER at the binary"
        )
    };
    let has_apt = Command::new("apt-get")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_apt {
        return Err(fail("apt-get is not available"));
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    update.env("DEBIAN_FRONTEND", "noninteractive");
    run("apt-get update", update).map_err(|e| fail(&e))?;
    let mut install = Command::new("apt-get");
    install.args(["install", "-y", "-q", "nats-server"]);
    install.env("DEBIAN_FRONTEND", "noninteractive");
    run("apt-get install nats-server", install).map_err(|e| fail(&e))?;
    installed()
        .map(|_| ())
        .ok_or_else(|| fail("apt-get did not install a nats-server binary"))
}
