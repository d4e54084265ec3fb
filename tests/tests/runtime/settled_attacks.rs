//! Attacks on the warm-overlay check: an env overlay rewritten so that no `stat` field moves
//! (through a shared writable mapping, whose later stores never touch the file's times) still
//! applies to the principal's next call.

use std::os::fd::AsRawFd as _;

use serde_json::json;

use crate::common::*;

use crate::scope_cache_settled::{MANIFEST, settle};

/// A shared writable mapping of a whole file, unmapped on drop.
pub(crate) struct Mapping {
    at: *mut u8,
    len: usize,
}

impl Mapping {
    pub(crate) fn of(file: &std::fs::File, len: usize) -> Self {
        // SAFETY: a fresh shared mapping of an open file, at an address the kernel picks; it
        // aliases no Rust memory.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        Self { at: at.cast(), len }
    }

    pub(crate) fn store(&self, offset: usize, byte: u8) {
        assert!(offset < self.len);
        // SAFETY: in bounds of the live mapping made by `of`.
        unsafe { self.at.add(offset).write_volatile(byte) };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made by `of`, unmapped once.
        unsafe { libc::munmap(self.at.cast(), self.len) };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlay_rewritten_through_a_mapping_keeping_every_stat_field_still_applies() {
    let h = host_with(|c| c.handler_pool_size = 1);
    let dir = h.state().join("home/alice/.config/env");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("mapped.env.json");
    let text = r#"{"MODEL": "a1"}"#;
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{e}"));
    let map = Mapping::of(&file, text.len());
    let digit = text.find('1').unwrap_or_else(|| panic!("a digit"));
    // The first store makes the page writable (and moves the times once); later stores to it
    // do not fault again until the page is written back.
    map.store(digit, b'1');
    settle(&path);
    let p = h.load("mapped", "prober.wasm", MANIFEST).await;
    let model = |who: &'static str| {
        let p = p.clone();
        async move { ok(&call_as(&p, "config", json!({"key": "MODEL"}), Some(who)).await).clone() }
    };
    assert_eq!(model("alice").await, "a1");
    assert_eq!(model("alice").await, "a1", "the warm instance, same file");
    map.store(digit, b'2');
    assert_eq!(
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}")),
        r#"{"MODEL": "a2"}"#
    );
    assert_eq!(
        model("alice").await,
        "a2",
        "the rewrite applies to the warm instance"
    );
    assert_eq!(model("bob").await, "m1");
    assert_eq!(p.call_stats().failed, 0);
    drop(map);
    h.rt.shutdown().await;
}
