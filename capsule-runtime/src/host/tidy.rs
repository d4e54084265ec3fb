//! The wiring guard: the capability list's served interfaces, the `imports` world of
//! `capsule-wit/wit/host.wit` and what the linker really serves must be the same set, so an
//! interface cannot be half-wired. The linker is asked the way a capsule asks it: a component
//! importing the interface is built from the WIT and pre-instantiated against it.

use std::collections::BTreeSet;
use std::path::PathBuf;

use wit_parser::abi::WasmType;
use wit_parser::{
    ManglingAndAbi, Resolve, ResourceIntrinsic, TypeDefKind, WasmExport, WasmImport, WorldId,
    WorldItem,
};

use super::{build_linker, served_interfaces};
use crate::config::RuntimeConfig;

fn wit_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("capsule-wit")
        .join(capsule_wit::WIT_DIR)
}

fn resolve() -> (Resolve, wit_parser::PackageId) {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_dir(wit_dir())
        .unwrap_or_else(|e| panic!("host.wit does not parse: {e:#}"));
    (resolve, pkg)
}

/// The interfaces the `imports` world imports, as `package/interface@version`.
fn world_imports(resolve: &Resolve, pkg: wit_parser::PackageId) -> BTreeSet<String> {
    let world = resolve
        .select_world(&[pkg], Some("imports"))
        .unwrap_or_else(|e| panic!("world `imports`: {e:#}"));
    resolve.worlds[world]
        .imports
        .values()
        .map(|item| match item {
            WorldItem::Interface { id, .. } => resolve
                .id_of(*id)
                .unwrap_or_else(|| panic!("the `imports` world imports an anonymous interface")),
            other => {
                panic!("the `imports` world imports something other than an interface: {other:?}")
            }
        })
        .collect()
}

/// Every `astrid:*` interface with something to implement (a function or a resource method).
fn astrid_interfaces(resolve: &Resolve) -> BTreeSet<String> {
    resolve
        .interfaces
        .iter()
        .filter(|(_, iface)| !iface.functions.is_empty())
        .filter_map(|(id, _)| resolve.id_of(id))
        .filter(|name| name.starts_with("astrid:"))
        .collect()
}

/// A component importing every interface in `names`, compiled for the runtime's engine.
fn importer(engine: &wasmtime::Engine, names: &[&str]) -> wasmtime::component::Component {
    let (mut resolve, _) = resolve();
    let imports: String = names.iter().map(|n| format!("  import {n};\n")).collect();
    let probe = resolve
        .push_str(
            "probe.wit",
            &format!("package tidy:probe;\nworld probe {{\n{imports}}}\n"),
        )
        .unwrap_or_else(|e| panic!("probe world for {names:?}: {e:#}"));
    let world = resolve
        .select_world(&[probe], Some("probe"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut module = probe_module(&resolve, world);
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let bytes = wit_component::ComponentEncoder::default()
        .module(&module)
        .and_then(|encoder| encoder.validate(true).encode())
        .unwrap_or_else(|e| panic!("probe component for {names:?}: {e:#}"));
    wasmtime::component::Component::new(engine, &bytes)
        .unwrap_or_else(|e| panic!("probe component for {names:?}: {e:#}"))
}

/// A core module that imports every function (and resource drop) of `world`'s imported
/// interfaces with its canonical-ABI signature and does nothing else: enough for the
/// component encoder to make a component that imports them all.
fn probe_module(resolve: &Resolve, world: WorldId) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, EntityType, ExportKind, ExportSection, Function, FunctionSection,
        ImportSection, MemorySection, MemoryType, Module, TypeSection, ValType,
    };
    let val = |t: &WasmType| match t {
        WasmType::I32 | WasmType::Pointer | WasmType::Length => ValType::I32,
        WasmType::I64 | WasmType::PointerOrI64 => ValType::I64,
        WasmType::F32 => ValType::F32,
        WasmType::F64 => ValType::F64,
    };
    let mut types = TypeSection::new();
    let mut imports = ImportSection::new();
    let ty = |types: &mut TypeSection, params: Vec<ValType>, results: Vec<ValType>| {
        types.ty().function(params, results);
        types.len() - 1
    };
    let mut imported = 0u32;
    for (key, item) in &resolve.worlds[world].imports {
        let WorldItem::Interface { id, .. } = item else {
            continue;
        };
        for func in resolve.interfaces[*id].functions.values() {
            let mangling = ManglingAndAbi::Standard32.for_func(func);
            let sig = resolve.wasm_signature(mangling.import_variant(), func);
            let (module, name) = resolve.wasm_import_name(
                mangling,
                WasmImport::Func {
                    interface: Some(key),
                    func,
                },
            );
            let t = ty(
                &mut types,
                sig.params.iter().map(val).collect(),
                sig.results.iter().map(val).collect(),
            );
            imports.import(&module, &name, EntityType::Function(t));
            imported += 1;
        }
        for resource in resolve.interfaces[*id].types.values() {
            if !matches!(resolve.types[*resource].kind, TypeDefKind::Resource) {
                continue;
            }
            let (module, name) = resolve.wasm_import_name(
                ManglingAndAbi::Standard32,
                WasmImport::ResourceIntrinsic {
                    interface: Some(key),
                    resource: *resource,
                    intrinsic: ResourceIntrinsic::ImportedDrop,
                },
            );
            let t = ty(&mut types, vec![ValType::I32], Vec::new());
            imports.import(&module, &name, EntityType::Function(t));
            imported += 1;
        }
    }
    let realloc_ty = ty(&mut types, vec![ValType::I32; 4], vec![ValType::I32]);
    let mut functions = FunctionSection::new();
    functions.function(realloc_ty);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: 0,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    let memory = resolve.wasm_export_name(ManglingAndAbi::Standard32, WasmExport::Memory);
    let realloc = resolve.wasm_export_name(ManglingAndAbi::Standard32, WasmExport::Realloc);
    exports.export(&memory, ExportKind::Memory, 0);
    exports.export(&realloc, ExportKind::Func, imported);
    let mut code = CodeSection::new();
    let mut body = Function::new([]);
    body.instructions().unreachable().end();
    code.function(&body);
    let mut module = Module::new();
    module
        .section(&types)
        .section(&imports)
        .section(&functions)
        .section(&memories)
        .section(&exports)
        .section(&code);
    module.finish()
}

fn engine() -> wasmtime::Engine {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut config = RuntimeConfig::new(dir.path());
    config.pooling = None;
    crate::engine::build_engine(&config).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_served_list_is_the_imports_world() {
    let (resolve, pkg) = resolve();
    let world = world_imports(&resolve, pkg);
    let served: BTreeSet<String> = served_interfaces().map(str::to_string).collect();
    assert_eq!(
        served.len(),
        served_interfaces().count(),
        "an interface is served by two capabilities"
    );
    let unlisted: Vec<&String> = world.difference(&served).collect();
    let unimported: Vec<&String> = served.difference(&world).collect();
    assert!(
        unlisted.is_empty() && unimported.is_empty(),
        "host.wit's `imports` world and the capability list disagree: in the world but served \
         by no capability {unlisted:?}; served by a capability but not in the world {unimported:?}"
    );
}

#[test]
fn the_linker_serves_exactly_the_served_list() {
    let engine = engine();
    let linker = build_linker(&engine).unwrap_or_else(|e| panic!("{e:#}"));
    let served: Vec<&str> = served_interfaces().collect();
    // Everything listed is really registered: a capsule importing all of it links.
    if let Err(e) = linker.instantiate_pre(&importer(&engine, &served)) {
        panic!("a listed interface is not registered with the linker: {e:#}");
    }
    // Nothing else is: a capsule importing any other astrid interface does not link.
    let (resolve, _) = resolve();
    let others: Vec<String> = astrid_interfaces(&resolve)
        .into_iter()
        .filter(|name| !served.contains(&name.as_str()))
        .collect();
    // Once every astrid interface is served there is nothing left to probe here; that the
    // probe can refuse at all is `the_probe_can_tell_served_from_unserved`'s to show.
    for name in &others {
        assert!(
            linker
                .instantiate_pre(&importer(&engine, &[name.as_str()]))
                .is_err(),
            "the linker serves `{name}`, which no capability lists"
        );
    }
}

#[test]
fn the_probe_can_tell_served_from_unserved() {
    // The guard itself must be able to fail: an empty linker serves nothing that is listed.
    let engine = engine();
    let empty = wasmtime::component::Linker::<super::HostState>::new(&engine);
    let served: Vec<&str> = served_interfaces().collect();
    for name in served {
        assert!(
            empty.instantiate_pre(&importer(&engine, &[name])).is_err(),
            "{name} links against an empty linker"
        );
    }
}
