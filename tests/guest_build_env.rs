// Included by `tests/build.rs` and by the xtask (`cargo xtask examples`): one list, so the
// test build and the examples build keep the same environment and share one guest cache.

/// The environment a nested guest build keeps. Everything else is cleared, so flags meant for
/// the host build (clippy's wrapper, `RUSTFLAGS`, the outer target directory) never leak into
/// it.
const GUEST_BUILD_ENV: &[&str] = &[
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
