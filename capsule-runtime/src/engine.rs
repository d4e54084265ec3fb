//! The wasmtime engine: component model, async host calls, epoch interruption driven by one
//! ticker thread per engine, and an explicitly sized pooling allocator (with compact memory
//! slots when it is sized for many thousands of instances). A freed memory or table slot is
//! decommitted before reuse, so the next instance finds only zeros and the module's initial
//! image. The ticker holds only a weak reference, so it ends with the engine.

use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::{ConfigError, EpochMode, RuntimeConfig};

/// Builds the engine for a runtime configuration.
pub(crate) fn build_engine(config: &RuntimeConfig) -> Result<Engine, ConfigError> {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    c.consume_fuel(config.fuel);
    c.parallel_compilation(true);
    if let Some(p) = &config.pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(p.max_instances)
            .total_stacks(p.max_instances)
            .total_core_instances(p.max_core_instances)
            .total_memories(p.max_memories)
            .total_tables(p.max_memories)
            .max_memory_size(usize::try_from(p.max_memory_bytes).unwrap_or(usize::MAX))
            .max_core_instances_per_component(32)
            .max_memories_per_component(crate::spares::MEMORIES_PER_INSTANCE as u32)
            .max_tables_per_component(8)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20);
        // No slot is reset in place (`pagemap_scan` with `*_keep_resident`): wasmtime 48 resets
        // only the dirty pages the kernel reports present, so a page swapped out (or being
        // migrated) when the slot is freed is neither reset nor decommitted, and the next
        // instance in the slot, another principal's, reads it back. Decommitting the whole
        // slot also drops swapped pages.
        if p.compact_memories {
            c.memory_reservation(p.max_memory_bytes);
        }
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&c).map_err(|e| ConfigError::Engine(format!("{e:#}")))
}

/// Advances an engine's epoch every window on a background thread for as long as the engine
/// exists: capsules still running after their runtime was dropped keep being metered, and the
/// thread ends once the last engine handle is gone.
pub(crate) fn start_epoch_ticker(
    engine: &Engine,
    mode: EpochMode,
    window: Duration,
) -> Result<(), ConfigError> {
    if mode == EpochMode::Manual {
        return Ok(());
    }
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("capsule-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(window);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .map(drop)
        .map_err(|e| ConfigError::Engine(format!("cannot start the epoch ticker: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolingConfig;

    #[test]
    fn a_pool_sized_for_ten_thousand_capsules_builds() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut config = RuntimeConfig::new(dir.path());
        let pool = PoolingConfig::for_capsules(10_000);
        assert!(pool.max_instances >= 10_000 && pool.compact_memories);
        assert!(!PoolingConfig::for_capsules(100).compact_memories);
        config.pooling = Some(pool);
        config.validate().unwrap_or_else(|e| panic!("{e}"));
        build_engine(&config).unwrap_or_else(|e| panic!("{e}"));
    }
}
