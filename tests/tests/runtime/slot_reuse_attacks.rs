//! Pool slots reused across principals: whatever one principal's instance left in its linear
//! memory (heap, a popped stack frame, pages grown past the initial image) must be gone when
//! another principal's fresh instance takes the same slot, however the first instance ended.

use capsule_runtime::PoolingConfig;
use serde_json::{Value, json};

use crate::common::*;

/// Seeds whose derived secrets no image or payload holds.
const SEEDS: [u64; 4] = [
    0x9e37_79b9_7f4a_7c15,
    0xc2b2_ae3d_27d4_eb4f,
    0x1656_67b1,
    0x27d4_eb2f,
];

fn found(v: &Value) -> Vec<u64> {
    ok(v)["found"]
        .as_array()
        .unwrap_or_else(|| panic!("no offsets in {v}"))
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_byte_of_a_freed_instance_reaches_another_principals_instance_in_its_slot() {
    // A pool this small has few memory slots to choose from, so bob's instances keep landing
    // in the slots alice's instances freed.
    let h = host_with(|c| {
        let mut pool = PoolingConfig::default();
        pool.max_instances = 4;
        pool.max_core_instances = 32;
        pool.max_memories = 6;
        c.pooling = Some(pool);
        c.handler_pool_size = 1;
    });
    let p = h.load("slots", "prober.wasm", "").await;
    for (round, seed) in SEEDS.into_iter().enumerate() {
        let planted = call_as(
            &p,
            "mem-plant",
            json!({"seed": seed, "pages": 3}),
            Some("alice"),
        )
        .await;
        let pages = ok(&planted)["pages"].as_u64().unwrap_or(0);
        // The scanner sees what the instance itself planted (heap and grown pages at least).
        let own = call_as(
            &p,
            "mem-scan",
            json!({"seed": seed, "to_pages": pages}),
            Some("alice"),
        )
        .await;
        assert!(
            found(&own).len() >= 4,
            "the scan must find her own secret: {own}"
        );
        // Her instance ends: by a trap in even rounds, displaced by bob's call in odd ones.
        if round % 2 == 0 {
            assert!(p.invoke("trap", b"{}", Some(pid("alice"))).await.is_err());
        }
        // Bob's instances, each fresh (a trap ends the one before), scan the same range.
        for _ in 0..3 {
            let scan = call_as(
                &p,
                "mem-scan",
                json!({"seed": seed, "to_pages": pages}),
                Some("bob"),
            )
            .await;
            assert!(
                found(&scan).is_empty(),
                "round {round}: bob's instance holds alice's secret: {scan}"
            );
            assert!(p.invoke("trap", b"{}", Some(pid("bob"))).await.is_err());
        }
    }
}
