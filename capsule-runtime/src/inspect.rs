//! Load-time inspection of a component: which of its imports this host cannot serve (all of
//! them, named, before anything runs), which guest entry points it really exports, and which
//! of those are toolchain stubs that alias one another.

use std::collections::HashMap;

use wasmparser::{
    CanonicalFunction, ComponentAlias, ComponentExternalKind, ComponentTypeRef, ExternalKind,
    Instance, Parser, Payload,
};
use wasmtime::Engine;
use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::{Component, Type};

use crate::host::wasi::WASI_P2;

/// `run` export name.
pub(crate) const RUN: &str = "run";
/// Interceptor export name.
pub(crate) const HOOK: &str = "astrid-hook-trigger";
/// Install export name.
pub(crate) const INSTALL: &str = "astrid-install";
/// Upgrade export name.
pub(crate) const UPGRADE: &str = "astrid-upgrade";

/// Which guest entry points a capsule really has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Exports {
    /// `run`: a background loop.
    pub run: bool,
    /// `astrid-hook-trigger`: the interceptor entry point.
    pub hook: bool,
    /// `astrid-install`.
    pub install: bool,
    /// `astrid-upgrade`.
    pub upgrade: bool,
}

/// Splits `ns:pkg/iface@1.2.3` into (`ns:pkg/iface`, `Some(version)`).
fn split_version(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (name, None),
    }
}

/// Whether two versions are semver-compatible the way the component linker matches them
/// (same major, or same minor below 1.0).
fn compatible(a: &str, b: &str) -> bool {
    let parts = |v: &str| -> Vec<u64> {
        v.split(['.', '-', '+'])
            .take(3)
            .map(|p| p.parse().unwrap_or(u64::MAX))
            .collect()
    };
    let (a, b) = (parts(a), parts(b));
    match (a.first(), b.first()) {
        (Some(0), Some(0)) => a.get(1) == b.get(1) && a.get(1).is_some(),
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

fn served(name: &str, astrid: &[&str]) -> bool {
    let (iface, version) = split_version(name);
    if let Some(v) = version {
        if astrid.iter().any(|s| {
            let (si, sv) = split_version(s);
            si == iface && sv.is_some_and(|sv| compatible(sv, v))
        }) {
            return true;
        }
        if WASI_P2.contains(&iface) && compatible("0.2.0", v) {
            return true;
        }
    }
    false
}

/// Whether an imported instance carries anything that needs an implementation (a function or
/// a resource); instances holding only types (such as `astrid:guest/lifecycle`) need none.
fn needs_implementation(item: &ComponentItem, engine: &Engine) -> bool {
    match item {
        ComponentItem::ComponentInstance(inst) => inst
            .exports(engine)
            .any(|(_, e)| needs_implementation(&e.ty, engine)),
        ComponentItem::Type(_) => false,
        ComponentItem::ComponentFunc(_)
        | ComponentItem::CoreFunc(_)
        | ComponentItem::Module(_)
        | ComponentItem::Component(_)
        | ComponentItem::Resource(_) => true,
    }
}

/// Every import of `component` this host does not serve, by name, sorted.
pub(crate) fn missing_imports(
    component: &Component,
    engine: &Engine,
    astrid: &[&str],
) -> Vec<String> {
    let ty = component.component_type();
    let mut missing: Vec<String> = ty
        .imports(engine)
        .filter(|(name, ext)| needs_implementation(&ext.ty, engine) && !served(name, astrid))
        .map(|(name, _)| name.to_string())
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

fn is_unit_func(f: &ComponentFunc) -> bool {
    f.params().len() == 0 && f.results().len() == 0
}

fn is_hook_func(f: &ComponentFunc) -> bool {
    let params: Vec<Type> = f.params().map(|(_, t)| t).collect();
    let results: Vec<Type> = f.results().collect();
    let bytes = matches!(params.get(1), Some(Type::List(l)) if matches!(l.ty(), Type::U8));
    params.len() == 2
        && matches!(params.first(), Some(Type::String))
        && bytes
        && results.len() == 1
        && matches!(results.first(), Some(Type::Record(_)))
}

/// Why a component's exports cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadExport {
    pub(crate) name: &'static str,
    pub(crate) expected: &'static str,
}

/// The entry points a component exports with the right types, with aliased stubs removed.
pub(crate) fn exports(
    component: &Component,
    engine: &Engine,
    wasm: &[u8],
) -> Result<Exports, BadExport> {
    let ty = component.component_type();
    let mut found = Exports::default();
    for (name, ext) in ty.exports(engine) {
        let ComponentItem::ComponentFunc(f) = &ext.ty else {
            continue;
        };
        match name {
            RUN | INSTALL | UPGRADE => {
                if !is_unit_func(f) {
                    let n = [RUN, INSTALL, UPGRADE]
                        .into_iter()
                        .find(|n| *n == name)
                        .unwrap_or(RUN);
                    return Err(BadExport {
                        name: n,
                        expected: "func()",
                    });
                }
                match name {
                    RUN => found.run = true,
                    INSTALL => found.install = true,
                    _ => found.upgrade = true,
                }
            }
            HOOK => {
                if !is_hook_func(f) {
                    return Err(BadExport {
                        name: HOOK,
                        expected: "func(action: string, payload: list<u8>) -> capsule-result",
                    });
                }
                found.hook = true;
            }
            _ => {}
        }
    }
    // Aliasing needs at least two of the three; skip the walk otherwise.
    let trio = [found.run, found.install, found.upgrade]
        .iter()
        .filter(|p| **p)
        .count();
    let stubs = if trio >= 2 {
        aliased_stubs(wasm)
    } else {
        Vec::new()
    };
    for stub in stubs {
        match stub.as_str() {
            RUN => found.run = false,
            INSTALL => found.install = false,
            UPGRADE => found.upgrade = false,
            _ => {}
        }
    }
    Ok(found)
}

/// An entry point the component exports but the host treats as absent, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AliasedStub {
    /// The export (`run`, `astrid-install` or `astrid-upgrade`).
    pub export: String,
    /// The other entry points lifted from the very same core function.
    pub same_as: Vec<String>,
}

impl std::fmt::Display for AliasedStub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is treated as absent: it lifts the same core function as {}, the empty stub \
             toolchains emit for an entry point a capsule does not implement",
            self.export,
            self.same_as.join(", ")
        )
    }
}

/// Every aliased entry point with the others it shares its core function with, sorted.
pub(crate) fn aliased_stub_details(wasm: &[u8]) -> Vec<AliasedStub> {
    let Ok(targets) = export_targets(wasm) else {
        return Vec::new();
    };
    let trio: Vec<(&str, CoreFunc)> = targets
        .iter()
        .filter(|(n, _)| [RUN, INSTALL, UPGRADE].contains(&n.as_str()))
        .filter_map(|(n, t)| t.map(|t| (n.as_str(), t)))
        .collect();
    let mut out: Vec<AliasedStub> = trio
        .iter()
        .filter_map(|(name, target)| {
            let mut same_as: Vec<String> = trio
                .iter()
                .filter(|(other, t)| other != name && t == target)
                .map(|(other, _)| (*other).to_string())
                .collect();
            same_as.sort();
            (!same_as.is_empty()).then(|| AliasedStub {
                export: (*name).to_string(),
                same_as,
            })
        })
        .collect();
    out.sort_by(|a, b| a.export.cmp(&b.export));
    out
}

/// Names among `run`, `astrid-install` and `astrid-upgrade` whose lifted core function is the
/// very same core function as another of the three: toolchains emit unimplemented entry points
/// as identical stubs that the optimiser merges, so a shared target means the capsule does not
/// provide that entry point.
///
/// The chain followed is: component export -> `canon lift` -> core function alias -> (core
/// instance, export name) -> instantiated module -> that module's function index.
pub(crate) fn aliased_stubs(wasm: &[u8]) -> Vec<String> {
    let Ok(targets) = export_targets(wasm) else {
        return Vec::new();
    };
    let trio: Vec<(&str, CoreFunc)> = targets
        .iter()
        .filter(|(n, _)| [RUN, INSTALL, UPGRADE].contains(&n.as_str()))
        .filter_map(|(n, t)| t.map(|t| (n.as_str(), t)))
        .collect();
    trio.iter()
        .filter(|(name, target)| trio.iter().any(|(other, t)| other != name && t == target))
        .map(|(name, _)| (*name).to_string())
        .collect()
}

/// A core function, as (core module index, function index within that module).
type CoreFunc = (u32, u32);

/// For each exported component function, the core function it lifts, when the chain can be
/// followed.
fn export_targets(wasm: &[u8]) -> wasmparser::Result<Vec<(String, Option<CoreFunc>)>> {
    let mut module_exports: Vec<HashMap<String, u32>> = Vec::new();
    let mut core_instance_module: Vec<Option<u32>> = Vec::new();
    let mut core_funcs: Vec<Option<(u32, String)>> = Vec::new();
    let mut comp_funcs: Vec<Option<u32>> = Vec::new();
    let mut out = Vec::new();
    let mut depth = 0u32;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        if depth > 0 {
            match payload {
                Payload::ExportSection(reader) if depth == 1 => {
                    if let Some(exports) = module_exports.last_mut() {
                        for e in reader {
                            let e = e?;
                            if e.kind == ExternalKind::Func {
                                exports.insert(e.name.to_string(), e.index);
                            }
                        }
                    }
                }
                Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
                Payload::End(_) => depth -= 1,
                _ => {}
            }
            continue;
        }
        match payload {
            Payload::ModuleSection { .. } => {
                module_exports.push(HashMap::new());
                depth = 1;
            }
            Payload::ComponentSection { .. } => depth = 1,
            Payload::InstanceSection(reader) => {
                for i in reader {
                    core_instance_module.push(match i? {
                        Instance::Instantiate { module_index, .. } => Some(module_index),
                        Instance::FromExports(_) => None,
                    });
                }
            }
            Payload::ComponentImportSection(reader) => {
                for i in reader {
                    if matches!(i?.ty, ComponentTypeRef::Func(_)) {
                        comp_funcs.push(None);
                    }
                }
            }
            Payload::ComponentAliasSection(reader) => {
                for a in reader {
                    match a? {
                        ComponentAlias::CoreInstanceExport {
                            kind: ExternalKind::Func,
                            instance_index,
                            name,
                        } => core_funcs.push(Some((instance_index, name.to_string()))),
                        ComponentAlias::InstanceExport {
                            kind: ComponentExternalKind::Func,
                            ..
                        } => comp_funcs.push(None),
                        _ => {}
                    }
                }
            }
            Payload::ComponentCanonicalSection(reader) => {
                for c in reader {
                    match c? {
                        CanonicalFunction::Lift {
                            core_func_index, ..
                        } => comp_funcs.push(Some(core_func_index)),
                        // Every other canonical function defines a core function.
                        _ => core_funcs.push(None),
                    }
                }
            }
            Payload::ComponentExportSection(reader) => {
                for e in reader {
                    let e = e?;
                    if e.kind != ComponentExternalKind::Func {
                        continue;
                    }
                    let lifted = comp_funcs.get(e.index as usize).copied().flatten();
                    // An export introduces a new component function index.
                    comp_funcs.push(lifted);
                    let target = lifted
                        .and_then(|cf| core_funcs.get(cf as usize).cloned().flatten())
                        .and_then(|(inst, name)| {
                            let module =
                                core_instance_module.get(inst as usize).copied().flatten()?;
                            let index = *module_exports.get(module as usize)?.get(&name)?;
                            Some((module, index))
                        });
                    out.push((e.name.name.to_string(), target));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_compatibility_follows_the_linker() {
        assert!(compatible("1.0.0", "1.3.2"));
        assert!(!compatible("1.0.0", "2.0.0"));
        assert!(compatible("0.2.0", "0.2.6"));
        assert!(!compatible("0.2.0", "0.3.0"));
        assert!(!compatible("x", "1.0.0"));
    }

    #[test]
    fn served_names_need_a_compatible_version() {
        let astrid = ["astrid:ipc/host@1.0.0", "astrid:sys/host@1.0.0"];
        assert!(served("astrid:ipc/host@1.0.0", &astrid));
        assert!(served("astrid:ipc/host@1.2.0", &astrid));
        assert!(!served("astrid:ipc/host@2.0.0", &astrid));
        assert!(!served("astrid:ipc/host", &astrid));
        assert!(!served("astrid:http/host@1.1.0", &astrid));
        assert!(served("wasi:cli/stdout@0.2.6", &astrid));
        assert!(!served("wasi:cli/stdout@0.3.0", &astrid));
        assert!(!served("wasi:http/types@0.2.6", &astrid));
    }

    #[test]
    fn garbage_has_no_stubs() {
        assert!(aliased_stubs(b"not wasm").is_empty());
    }
}
