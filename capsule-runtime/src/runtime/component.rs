//! The first step of every load and of `inspect`: the manifest read and checked against this
//! host's ABI, the component file read from inside the capsule directory (a regular file,
//! size-bounded, hash-checked), compiled or taken from the cache, its imports all served, its
//! exports of the right types, and linked. Nothing of the capsule runs before this succeeds.

use std::io::Read;
use std::path::Path;

use capsule_security::Manifest;
use wasmtime::component::InstancePre;

use super::Runtime;
use crate::cache::CacheOutcome;
use crate::error::{
    ComponentProblem, FileKind, HOST_ABI_VERSION, HostFailure, LoadError, MAX_COMPONENT_BYTES,
};
use crate::host::HostState;
use crate::inspect::{self, Exports};

/// A capsule that can be linked: what [`Runtime::prepare`] found out.
pub(super) struct Prepared {
    pub(super) manifest: Manifest,
    pub(super) cache: CacheOutcome,
    pub(super) exports: Exports,
    pub(super) pre: InstancePre<HostState>,
}

impl Runtime {
    /// Reads, verifies, compiles and links a capsule: everything that can fail before it runs.
    pub(super) async fn prepare(&self, dir: &Path) -> Result<Prepared, LoadError> {
        let manifest = Manifest::load(dir)?;
        let name = manifest.package.name.as_str().to_string();
        if let Some(required) = &manifest.package.host_version
            && !required.matches(&HOST_ABI_VERSION)
        {
            return Err(LoadError::HostVersion {
                capsule: name,
                required: required.clone(),
            });
        }
        let wasm = read_component(&manifest)?;
        let engine = self.inner.engine.clone();
        let cache = self.inner.cache.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let outcome = cache.load_or_compile(&engine, &wasm);
            (outcome, wasm)
        })
        .await
        .map_err(|e| LoadError::Host {
            capsule: name.clone(),
            failure: HostFailure::CompileTask(e),
        })?;
        let (outcome, wasm) = compiled;
        let (component, cache) = outcome.map_err(|source| LoadError::Compile {
            capsule: name.clone(),
            source,
        })?;
        let missing = inspect::missing_imports(&component, &self.inner.engine, &self.inner.served);
        if !missing.is_empty() {
            return Err(LoadError::MissingImports {
                capsule: name,
                imports: missing,
            });
        }
        let exports = inspect::exports(&component, &self.inner.engine, &wasm).map_err(|bad| {
            LoadError::BadExport {
                capsule: name.clone(),
                export: bad.name,
                expected: bad.expected,
            }
        })?;
        if !exports.hook && manifest.handlers().next().is_some() {
            return Err(LoadError::BadExport {
                capsule: name,
                export: inspect::HOOK,
                expected: "func(action: string, payload: list<u8>) -> capsule-result (the manifest declares handlers)",
            });
        }
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|source| LoadError::Link {
                capsule: name.clone(),
                source,
            })?;
        Ok(Prepared {
            manifest,
            cache,
            exports,
            pre,
        })
    }
}

/// Reads the component file: it must resolve (symlinks followed) inside the capsule directory
/// and be a regular file of at most [`MAX_COMPONENT_BYTES`]. Anything else (a device, a FIFO, a
/// directory, a link out of the capsule) is refused without reading from it.
fn read_component(manifest: &Manifest) -> Result<Vec<u8>, LoadError> {
    let file = manifest.component.file.clone();
    let bad = |problem| LoadError::Component {
        file: file.clone(),
        problem,
    };
    let io = |e| bad(ComponentProblem::Read(e));
    // A bare `Capsule.toml` has an empty parent: the current directory.
    let dir = match manifest.file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(dir).map_err(io)?;
    let resolved = std::fs::canonicalize(&file).map_err(io)?;
    if !resolved.starts_with(&dir) {
        return Err(bad(ComponentProblem::Outside { resolved, dir }));
    }
    let checked = |meta: &std::fs::Metadata| {
        if !meta.is_file() {
            return Err(bad(ComponentProblem::NotRegular(FileKind::of(
                meta.file_type(),
            ))));
        }
        if meta.len() > MAX_COMPONENT_BYTES {
            return Err(bad(ComponentProblem::TooLarge { size: meta.len() }));
        }
        Ok(())
    };
    checked(&std::fs::metadata(&resolved).map_err(io)?)?;
    // Opened without blocking and without following a link anywhere on the resolved path, so
    // a link swapped in since the check fails the open instead of leaving the capsule, then
    // checked again on the open file itself.
    let opened = capsule_vfs::open_file_no_links(&resolved).map_err(io)?;
    checked(&opened.metadata().map_err(io)?)?;
    let mut wasm = Vec::new();
    opened
        .take(MAX_COMPONENT_BYTES + 1)
        .read_to_end(&mut wasm)
        .map_err(io)?;
    if wasm.len() as u64 > MAX_COMPONENT_BYTES {
        return Err(bad(ComponentProblem::TooLarge {
            size: wasm.len() as u64,
        }));
    }
    if let Some(hash) = &manifest.component.hash
        && !hash.verify(&wasm)
    {
        return Err(bad(ComponentProblem::HashMismatch));
    }
    Ok(wasm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_named_without_a_directory_reads_its_component_beside_it() {
        // `capsule run Capsule.toml` from inside the capsule directory: the manifest's path has
        // an empty parent, which is the current directory (here, this crate's).
        let text = "[package]\nname = \"here\"\nversion = \"0.1.0\"\n\
                    [[component]]\nid = \"here\"\nfile = \"Cargo.toml\"\n";
        let m = Manifest::parse(text, Path::new("Capsule.toml")).unwrap_or_else(|e| panic!("{e}"));
        let read = read_component(&m).map_err(|e| e.to_string());
        assert_eq!(read.map(|bytes| bytes.starts_with(b"[package]")), Ok(true));
    }

    #[test]
    fn component_problems_read_as_before() {
        let shown = |problem| {
            LoadError::Component {
                file: "c.wasm".into(),
                problem,
            }
            .to_string()
        };
        assert_eq!(
            shown(ComponentProblem::NotRegular(FileKind::Fifo)),
            "c.wasm: is a FIFO, not a regular component file"
        );
        assert_eq!(
            shown(ComponentProblem::Outside {
                resolved: "/dev/zero".into(),
                dir: "/srv/c".into()
            }),
            "c.wasm: resolves to /dev/zero, outside the capsule directory /srv/c"
        );
        assert_eq!(
            shown(ComponentProblem::TooLarge { size: 1 << 40 }),
            format!(
                "c.wasm: component is {} bytes; the limit is {MAX_COMPONENT_BYTES}",
                1u64 << 40
            )
        );
        assert_eq!(
            shown(ComponentProblem::HashMismatch),
            "c.wasm: component does not match the manifest's hash"
        );
    }
}
