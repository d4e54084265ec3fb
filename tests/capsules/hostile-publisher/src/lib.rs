//! Test capsule: calls `astrid:ipc/host.publish` through its raw core import, with string
//! arguments no well-behaved binding could make: bytes that are not UTF-8, pointers past the
//! end of its memory, lengths that wrap around the address space. The action names the shape;
//! `raw-ok` sends a well-formed topic and payload the same way, so the raw path is known to
//! reach the host. Answers `continue` with data `{"code": <result discriminant>}` when the
//! host returned instead of trapping.

wit_bindgen::generate!({
    inline: r#"
        package test:hostile-publisher;
        world hostile-publisher {
            import astrid:ipc/host@1.0.0;
            include astrid:guest/interceptor@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

#[link(wasm_import_module = "astrid:ipc/host@1.0.0")]
unsafe extern "C" {
    /// `publish(topic: string, payload: string) -> result<_, error-code>`, lowered: two
    /// (pointer, length) pairs and the address the result is written to.
    #[link_name = "publish"]
    fn raw_publish(topic: usize, topic_len: usize, payload: usize, payload_len: usize, ret: usize);
}

struct Hostile;

/// The end of linear memory, in bytes.
fn memory_end() -> usize {
    core::arch::wasm32::memory_size::<0>() * 65_536
}

fn publish(topic: (usize, usize), payload: (usize, usize)) -> u8 {
    let mut ret = [0u32; 4];
    // SAFETY: the host reads the two ranges (or traps when they are not in memory) and writes
    // the result into `ret`, which is large and aligned enough for it.
    unsafe { raw_publish(topic.0, topic.1, payload.0, payload.1, ret.as_mut_ptr() as usize) };
    (ret[0] & 0xff) as u8
}

fn bytes(b: &'static [u8]) -> (usize, usize) {
    (b.as_ptr() as usize, b.len())
}

impl Guest for Hostile {
    fn astrid_hook_trigger(action: String, _payload: Vec<u8>) -> CapsuleResult {
        let topic = bytes(b"probe.raw");
        let payload = bytes(b"\"raw\"");
        let code = match action.as_str() {
            "raw-ok" => publish(topic, payload),
            "bad-utf8-topic" => publish(bytes(b"probe.\xff\xfe"), payload),
            "bad-utf8-payload" => publish(topic, bytes(b"\"\xc3\x28\"")),
            "lone-surrogate-payload" => publish(topic, bytes(b"\"\xed\xa0\x80\"")),
            "oob-topic" => publish((memory_end() - 4, 16), payload),
            "oob-payload" => publish(topic, (memory_end() + 4096, 2)),
            "huge-payload" => publish(topic, (0, 0x7fff_ffff)),
            "wrapping-topic" => publish((usize::MAX - 7, 64), payload),
            "wrapping-payload" => publish(topic, (0xffff_0000, 0x0002_0000)),
            _ => 255,
        };
        CapsuleResult {
            action: "continue".into(),
            data: Some(format!("{{\"code\":{code}}}")),
        }
    }
}

export!(Hostile);
