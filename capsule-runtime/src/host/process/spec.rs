//! A spawn request in version-neutral form and everything checked before a child starts:
//! the request's bounds (arguments, environment, labels, injections), variables that would
//! inject code into the child's loader or shell, the limits (a request may only lower its
//! principal's profile), the program's resolution on the fixed search path, and the working
//! directory, which opens only inside the principal's home or `/tmp` and never in the host's
//! own files under them. Injected files are created read-only and never over a name.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use capsule_security::PrincipalProfile;
use capsule_vfs::{GuestPath, Mount, Scheme, Tree, VfsError};

use super::child::{Limits, Overflow};
use super::*;

/// A request in version-neutral form.
pub(crate) struct SpawnSpec {
    pub(crate) cmd: String,
    pub(crate) args: Vec<String>,
    pub(crate) stdin: Option<Vec<u8>>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<String>,
    pub(crate) limits: RequestLimits,
    pub(crate) label: Option<String>,
    pub(crate) keep_stdin_open: bool,
    pub(crate) overflow: Option<Overflow>,
    pub(crate) ring_bytes: Option<u32>,
    pub(crate) lifetime_ms: Option<u64>,
    pub(crate) idle_ms: Option<u64>,
    pub(crate) retention_ms: Option<u64>,
    pub(crate) injections: Vec<Injection>,
}

/// Limits a request asks for; each may only lower the profile's.
pub(crate) struct RequestLimits {
    pub(crate) memory: Option<u64>,
    pub(crate) cpu: Option<u64>,
    pub(crate) pids: Option<u32>,
    pub(crate) files: Option<u32>,
}

/// A file to create for the child (1.1).
pub(crate) enum Injection {
    /// Under a name the host picks; its path goes in this variable.
    Env(String, Vec<u8>),
    /// Under this name in the working directory.
    Fixed(String, Vec<u8>),
}

fn valid_env_key(k: &str) -> bool {
    !k.is_empty() && !k.contains('=') && !k.contains('\0')
}

/// Variables that make the dynamic loader, the C library or a shell run or load code the
/// request names, so a granted program would run something nobody granted. A list cannot
/// know every program's variables: a granted program must be one that stays within its
/// grant under any other environment.
const CODE_VARS: &[&str] = &[
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    "LOCPATH",
    "NLSPATH",
    "HOSTALIASES",
    "RESOLV_HOST_CONF",
];

/// Whether `k` is a variable the host refuses to pass (see [`CODE_VARS`]).
pub(super) fn code_var(k: &str) -> bool {
    k.starts_with("LD_") || k.starts_with("BASH_FUNC_") || CODE_VARS.contains(&k)
}

pub(super) fn refuse_code_var(k: &str) -> Result<(), ProcessError> {
    if code_var(k) {
        return Err(ProcessError::Denied(format!(
            "the variable `{}` could make the program run code that is not granted",
            field(k)
        )));
    }
    Ok(())
}

/// Checks the request's sizes and names before anything is touched.
pub(super) fn validate(spec: &SpawnSpec) -> Result<(), ProcessError> {
    if spec.args.len() > MAX_ARGS
        || spec.args.iter().map(String::len).sum::<usize>() > MAX_ARG_BYTES
    {
        return Err(ProcessError::TooLarge(format!(
            "at most {MAX_ARGS} arguments of {MAX_ARG_BYTES} bytes in all"
        )));
    }
    if spec.args.iter().any(|a| a.contains('\0')) {
        return Err(ProcessError::Invalid("an argument contains NUL".into()));
    }
    if spec.env.len() > MAX_ENV_VARS
        || spec
            .env
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            > MAX_ENV_BYTES
    {
        return Err(ProcessError::TooLarge(format!(
            "at most {MAX_ENV_VARS} variables of {MAX_ENV_BYTES} bytes in all"
        )));
    }
    if spec
        .env
        .iter()
        .any(|(k, v)| !valid_env_key(k) || v.contains('\0'))
    {
        return Err(ProcessError::Invalid(
            "a variable name is empty or holds `=` or NUL, or a value holds NUL".into(),
        ));
    }
    if spec
        .stdin
        .as_ref()
        .is_some_and(|s| s.len() > MAX_STDIN_BYTES)
    {
        return Err(ProcessError::TooLarge(format!(
            "initial stdin is at most {MAX_STDIN_BYTES} bytes"
        )));
    }
    if spec
        .label
        .as_ref()
        .is_some_and(|l| l.len() > MAX_LABEL_BYTES)
    {
        return Err(ProcessError::TooLarge(format!(
            "a label is at most {MAX_LABEL_BYTES} bytes"
        )));
    }
    let injected: usize = spec
        .injections
        .iter()
        .map(|i| match i {
            Injection::Env(_, c) | Injection::Fixed(_, c) => c.len(),
        })
        .sum();
    if spec.injections.len() > MAX_INJECTIONS || injected > MAX_INJECTION_BYTES {
        return Err(ProcessError::TooLarge(format!(
            "at most {MAX_INJECTIONS} injected files of {MAX_INJECTION_BYTES} bytes in all"
        )));
    }
    for (k, _) in &spec.env {
        refuse_code_var(k)?;
    }
    for i in &spec.injections {
        if let Injection::Env(var, _) = i {
            refuse_code_var(var)?;
        }
        match i {
            Injection::Env(var, _) if !valid_env_key(var) => {
                return Err(ProcessError::Invalid(
                    "an injection's variable name is empty or holds `=` or NUL".into(),
                ));
            }
            Injection::Fixed(name, _) => injection_name(name)?,
            Injection::Env(..) => {}
        }
    }
    Ok(())
}

/// An injected file's fixed path must be one plain name inside the working directory.
pub(super) fn injection_name(name: &str) -> Result<(), ProcessError> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None)
            if !name.contains('/') && !name.contains('\0') && name.len() <= 255 =>
        {
            Ok(())
        }
        _ if name.is_empty() || name.contains('\0') => Err(ProcessError::Invalid(
            "an injected file needs a name".into(),
        )),
        _ => Err(ProcessError::Escape(
            "an injected file goes directly inside the working directory".into(),
        )),
    }
}

/// The request's limits bounded by the profile's; a zero is a malformed request.
pub(super) fn limits(spec: &SpawnSpec, profile: &PrincipalProfile) -> Result<Limits, ProcessError> {
    let q = &profile.quotas;
    let pick = |asked: Option<u64>, most: u64, what: &str| -> Result<u64, ProcessError> {
        match asked {
            Some(0) => Err(ProcessError::Invalid(format!("a {what} limit of 0"))),
            Some(n) => Ok(n.min(most)),
            None => Ok(most),
        }
    };
    let wall_most = q.max_process_wall_secs.saturating_mul(1000);
    let output = pick(
        spec.ring_bytes.map(u64::from),
        q.max_process_output_bytes,
        "output",
    )?;
    Ok(Limits {
        cpu_secs: pick(spec.limits.cpu, q.max_process_cpu_secs, "CPU")?,
        memory_bytes: pick(spec.limits.memory, q.max_process_memory_bytes, "memory")?,
        open_files: pick(
            spec.limits.files.map(u64::from),
            u64::from(q.max_process_open_files),
            "open-file",
        )?,
        pids: pick(
            spec.limits.pids.map(u64::from),
            u64::from(q.max_process_pids),
            "process-count",
        )?,
        wall: Duration::from_millis(pick(spec.lifetime_ms, wall_most, "lifetime")?),
        idle: spec
            .idle_ms
            .map(|ms| pick(Some(ms), wall_most, "idle"))
            .transpose()?
            .map(Duration::from_millis),
        output: usize::try_from(output).unwrap_or(usize::MAX),
    })
}

/// The program to execute: an absolute path as granted, or a bare name found in
/// [`SEARCH_PATH`].
pub(super) fn resolve_program(cmd: &str) -> Result<PathBuf, ProcessError> {
    if cmd.starts_with('/') {
        return Ok(PathBuf::from(cmd));
    }
    SEARCH_PATH
        .iter()
        .map(|d| Path::new(d).join(cmd))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
        .ok_or(ProcessError::Start(std::io::ErrorKind::NotFound))
}

pub(super) fn vfs_error(e: &VfsError) -> ProcessError {
    match e {
        VfsError::BoundaryEscape(_) => ProcessError::Escape("the path leaves its mount".into()),
        _ => ProcessError::Invalid("the working directory is not an existing directory".into()),
    }
}

/// Opens the working directory inside the principal's home or tmp, one component at a time
/// without following links, and returns it with its host path.
pub(super) fn open_cwd(
    cwd: Option<&str>,
    home: Option<&Arc<Mount>>,
    tmp: Option<&Arc<Mount>>,
) -> Result<(cap_std::fs::Dir, PathBuf), ProcessError> {
    let guest = GuestPath::parse(cwd.unwrap_or("home://")).map_err(|e| vfs_error(&e))?;
    let mount = match guest.scheme {
        Scheme::Home => home,
        Scheme::Tmp => tmp,
        Scheme::Workspace | Scheme::Absolute => {
            return Err(ProcessError::Denied(
                "a process runs in the principal's home (`home://…`) or `/tmp/…`".into(),
            ));
        }
    }
    .ok_or_else(|| ProcessError::Invalid("the principal's directories are unavailable".into()))?;
    // Besides the host-only subtrees, the directories holding them (`.local`, `.config`) are
    // never a working directory: a child would be given the directory its cwd is, and could
    // then move the host's own places out of it and put its own there.
    let host_only = |rel: &Path| {
        guest.scheme == Scheme::Home
            && (capsule_vfs::is_host_only(rel)
                || (capsule_vfs::holds_host_anchor(rel)
                    && !rel.as_os_str().is_empty()
                    && rel != Path::new(".local/tmp")))
    };
    if host_only(&guest.rel) {
        return Err(ProcessError::Escape(
            "the host's own parts of a home are out of reach".into(),
        ));
    }
    let canonical = mount.canonicalize(&guest.rel).map_err(|e| vfs_error(&e))?;
    if host_only(&canonical) {
        return Err(ProcessError::Escape(
            "the host's own parts of a home are out of reach".into(),
        ));
    }
    let mut dir = cap_std::fs::Dir::open_ambient_dir(mount.root(), cap_std::ambient_authority())
        .map_err(|_| ProcessError::Invalid("the principal's directories are unavailable".into()))?;
    for part in canonical.components() {
        let Component::Normal(name) = part else {
            return Err(ProcessError::Escape("the path leaves its mount".into()));
        };
        dir = cap_fs_ext::DirExt::open_dir_nofollow(&dir, name).map_err(|_| {
            ProcessError::Invalid("the working directory is not an existing directory".into())
        })?;
    }
    Ok((dir, mount.root().join(canonical)))
}

/// The names of injected files, and the variables pointing at those placed by the host.
type Written = (Vec<String>, Vec<(String, String)>);

/// Writes the injected files (0400, never over an existing entry, owned by `owner` when the
/// child runs as a principal's own user id) and returns their names and the variables that
/// point at them.
pub(super) fn inject(
    dir: &cap_std::fs::Dir,
    host_dir: &Path,
    injections: Vec<Injection>,
    owner: Option<super::uids::Ids>,
) -> Result<Written, ProcessError> {
    use cap_std::fs::OpenOptionsExt;
    let mut names = Vec::new();
    let mut vars = Vec::new();
    let write = |name: &str, content: &[u8], names: &mut Vec<String>| {
        let mut opts = cap_std::fs::OpenOptions::new();
        opts.write(true).create_new(true).mode(0o400);
        let mut f = dir.open_with(name, &opts).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                ProcessError::Invalid("an injected file's name is taken".into())
            } else {
                ProcessError::Invalid("an injected file could not be written".into())
            }
        })?;
        names.push(name.to_string());
        if let Some(ids) = owner {
            std::os::unix::fs::fchown(&f, Some(ids.uid), Some(ids.gid)).map_err(|_| {
                ProcessError::Invalid("an injected file could not be given to its user".into())
            })?;
        }
        std::io::Write::write_all(&mut f, content)
            .map_err(|_| ProcessError::Invalid("an injected file could not be written".into()))
    };
    let result = injections.into_iter().try_for_each(|i| match i {
        Injection::Fixed(name, content) => write(&name, &content, &mut names),
        Injection::Env(var, content) => {
            let name = format!(".astrid-inject-{}", uuid::Uuid::new_v4().simple());
            write(&name, &content, &mut names)?;
            vars.push((var, host_dir.join(&name).to_string_lossy().into_owned()));
            Ok(())
        }
    });
    match result {
        Ok(()) => Ok((names, vars)),
        Err(e) => {
            for n in &names {
                let _ = dir.remove_file(n);
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_and_shell_code_variables_are_refused_and_plain_ones_pass() {
        for bad in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "BASH_FUNC_true%%",
            "BASH_ENV",
            "ENV",
            "PS4",
            "GCONV_PATH",
        ] {
            assert!(
                matches!(refuse_code_var(bad), Err(ProcessError::Denied(_))),
                "{bad}"
            );
        }
        for good in ["FOO", "LANG", "PATH", "HOME", "OLD_PRELOAD"] {
            assert!(refuse_code_var(good).is_ok(), "{good}");
        }
    }
}
