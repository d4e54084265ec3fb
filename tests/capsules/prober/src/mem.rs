//! Raw linear-memory probes: plant a secret where an instance keeps its data (heap, stack, a
//! page grown beyond the initial image) and scan the whole memory for it. The secret is derived
//! from a seed, so the payload that names it never holds its bytes.

use serde_json::{Value, json};

const WASM_PAGE: usize = 65536;
const SECRET_LEN: usize = 48;

/// Writes the secret for `seed` (a xorshift stream) into `out` byte by byte, so that no
/// other copy of it is left behind (a scan must not find its own needle on the stack).
fn fill_secret(seed: u64, out: &mut [u8]) {
    let mut x = seed | 1;
    for b in out.iter_mut().take(SECRET_LEN) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
}

fn secret(seed: u64) -> [u8; SECRET_LEN] {
    let mut out = [0u8; SECRET_LEN];
    fill_secret(seed, &mut out);
    out
}

/// Leaves the secret in a stack frame that is popped, not cleared.
#[inline(never)]
fn plant_on_stack(seed: u64) {
    let mut frame = [0u8; 4096];
    frame[..SECRET_LEN].copy_from_slice(&secret(seed));
    frame[2048..2048 + SECRET_LEN].copy_from_slice(&secret(seed));
    core::hint::black_box(&frame);
}

fn pages_now() -> usize {
    core::arch::wasm32::memory_size::<0>()
}

/// Grows memory by `extra` pages and returns the first new page's index (`None` if refused).
fn grow(extra: usize) -> Option<usize> {
    let old = core::arch::wasm32::memory_grow::<0>(extra);
    (old != usize::MAX).then_some(old)
}

/// Plants the secret of `seed` on the heap, on the stack and at the start of each of `pages`
/// freshly grown pages.
pub(crate) fn plant(seed: u64, pages: usize) -> Result<Value, String> {
    let heap: &'static mut [u8] = Box::leak(Box::new(secret(seed)));
    core::hint::black_box(&*heap);
    plant_on_stack(seed);
    let first = grow(pages).ok_or("grow refused")?;
    for page in first..first + pages {
        let at = (page * WASM_PAGE + 1024) as *mut [u8; SECRET_LEN];
        // SAFETY: the page was just grown by this instance and the allocator never hands out
        // memory it did not grow itself.
        unsafe { at.write_volatile(secret(seed)) };
    }
    Ok(json!({"pages": pages_now()}))
}

/// Grows memory to at least `to_pages` and returns every offset holding the secret of `seed`
/// (except the copy made here to search with).
pub(crate) fn scan(seed: u64, to_pages: usize) -> Result<Value, String> {
    if to_pages > pages_now() {
        grow(to_pages - pages_now()).ok_or("grow refused")?;
    }
    let mut needle = vec![0u8; SECRET_LEN];
    fill_secret(seed, &mut needle);
    let own = needle.as_ptr() as usize;
    let end = pages_now() * WASM_PAGE - SECRET_LEN;
    let mut found = Vec::new();
    let mut at = 8;
    while at < end {
        // SAFETY: every address below the memory size is readable linear memory.
        let first = unsafe { (at as *const u8).read_volatile() };
        if first == needle[0] && at != own {
            let same = (1..SECRET_LEN)
                // SAFETY: as above; `at + i` stays below `end + SECRET_LEN`.
                .all(|i| unsafe { ((at + i) as *const u8).read_volatile() } == needle[i]);
            if same {
                found.push(at);
            }
        }
        at += 1;
    }
    Ok(json!({"found": found, "pages": pages_now()}))
}
