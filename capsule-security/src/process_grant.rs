//! The grammar of a `host_process` grant: which program a capsule may run and with which
//! arguments. A grant is parsed once; a request matches it only if it names the same program
//! and its arguments fit the patterns, so an operator who granted `git status **` has not
//! granted `git push`, and a shell runs only where the shell itself was granted.
//!
//! An entry is whitespace-separated: the program (an absolute path without `.`/`..`, or a bare
//! name the host looks up in its fixed search path), then optional argument patterns. With no
//! pattern every argument list is allowed. Otherwise each pattern matches one argument: a
//! literal matches itself, `*` any one argument, `prefix*` any argument starting with
//! `prefix`; a final `**` matches any number of remaining arguments (none included). The part
//! of an argument a prefix leaves free (from the component the prefix ends in) never has a
//! `..` component, so `cat /srv/data/*` does not stretch to `/srv/data/../../etc/shadow`, nor
//! `cat data*` to `data/../../etc/shadow`.

use std::path::{Component, Path};

/// Longest grant entry accepted, in bytes.
pub const MAX_PROCESS_GRANT: usize = 4096;

/// One argument pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ArgPattern {
    Literal(String),
    Any,
    Prefix(String),
}

impl ArgPattern {
    fn matches(&self, arg: &str) -> bool {
        match self {
            Self::Literal(l) => l == arg,
            Self::Any => true,
            Self::Prefix(p) => {
                // What the prefix leaves free starts at the component it ends in.
                let free = p.rfind('/').map_or(0, |i| i + 1);
                arg.starts_with(p.as_str()) && !arg[free..].split('/').any(|c| c == "..")
            }
        }
    }
}

/// A parsed `host_process` grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessGrant {
    program: String,
    /// `None`: any argument list.
    args: Option<Vec<ArgPattern>>,
    /// A final `**`: any remaining arguments.
    rest: bool,
}

impl ProcessGrant {
    /// Parses one grant entry; the error says what is wrong with it.
    pub fn parse(entry: &str) -> Result<Self, String> {
        if entry.len() > MAX_PROCESS_GRANT {
            return Err(format!("a grant is at most {MAX_PROCESS_GRANT} bytes"));
        }
        if entry.contains('\0') {
            return Err("a grant may not contain NUL".into());
        }
        let mut tokens = entry.split_whitespace();
        let program = tokens
            .next()
            .ok_or_else(|| "a command must be a non-empty name or path".to_string())?;
        if !valid_program(program) {
            return Err(format!(
                "`{program}` is neither an absolute path without `.`/`..` nor a bare program name"
            ));
        }
        let tokens: Vec<&str> = tokens.collect();
        if tokens.is_empty() {
            return Ok(Self {
                program: program.to_string(),
                args: None,
                rest: false,
            });
        }
        let mut args = Vec::new();
        let mut rest = false;
        for (i, t) in tokens.iter().enumerate() {
            if *t == "**" {
                if i + 1 != tokens.len() {
                    return Err("`**` may only be the last pattern".into());
                }
                rest = true;
            } else if *t == "*" {
                args.push(ArgPattern::Any);
            } else if let Some(prefix) = t.strip_suffix('*') {
                if prefix.contains('*') {
                    return Err(format!("pattern `{t}` has `*` other than at its end"));
                }
                args.push(ArgPattern::Prefix(prefix.to_string()));
            } else if t.contains('*') {
                return Err(format!("pattern `{t}` has `*` other than at its end"));
            } else {
                args.push(ArgPattern::Literal((*t).to_string()));
            }
        }
        Ok(Self {
            program: program.to_string(),
            args: Some(args),
            rest,
        })
    }

    /// The program as granted: an absolute path or a bare name.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Whether running `program` with `args` is covered by this grant.
    pub fn allows(&self, program: &str, args: &[String]) -> bool {
        if program != self.program {
            return false;
        }
        let Some(patterns) = &self.args else {
            return true;
        };
        if args.len() < patterns.len() || (!self.rest && args.len() != patterns.len()) {
            return false;
        }
        patterns.iter().zip(args).all(|(p, a)| p.matches(a))
    }
}

/// An absolute path with only normal components, or a bare file name.
fn valid_program(p: &str) -> bool {
    if p.starts_with('/') {
        p.len() > 1
            && Path::new(p)
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
            && !p.ends_with('/')
    } else {
        !p.contains('/') && p != "." && p != ".."
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> ProcessGrant {
        ProcessGrant::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn a_bare_program_allows_any_arguments_of_that_program_only() {
        let grant = g("/bin/true");
        assert!(grant.allows("/bin/true", &[]));
        assert!(grant.allows("/bin/true", &args(&["x", "y"])));
        assert!(!grant.allows("true", &[]));
        assert!(!grant.allows("/bin/sh", &args(&["-c", "/bin/true"])));
    }

    #[test]
    fn patterns_match_argument_by_argument() {
        let grant = g("git status *");
        assert!(grant.allows("git", &args(&["status", "-s"])));
        assert!(!grant.allows("git", &args(&["status"])));
        assert!(!grant.allows("git", &args(&["status", "-s", "x"])));
        assert!(!grant.allows("git", &args(&["push", "-f"])));
        let rest = g("git log --format=* **");
        assert!(rest.allows("git", &args(&["log", "--format=%H"])));
        assert!(rest.allows("git", &args(&["log", "--format=%H", "a", "b"])));
        assert!(!rest.allows("git", &args(&["log", "--oneline"])));
    }

    #[test]
    fn a_path_prefix_does_not_stretch_through_dot_dot() {
        let grant = g("cat /srv/data/*");
        assert!(grant.allows("cat", &args(&["/srv/data/report.txt"])));
        assert!(grant.allows("cat", &args(&["/srv/data/a/..b/c"])));
        for climb in [
            "/srv/data/../../etc/shadow",
            "/srv/data/..",
            "/srv/data/x/../../other",
            "/srv/data/./../secret",
        ] {
            assert!(!grant.allows("cat", &args(&[climb])), "{climb}");
        }
        // The `..` may straddle the end of the prefix.
        let dotted = g("cat /srv/data/.*");
        assert!(dotted.allows("cat", &args(&["/srv/data/.hidden"])));
        assert!(!dotted.allows("cat", &args(&["/srv/data/../etc/passwd"])));
        let option = g("tool --input=/srv/in/*");
        assert!(option.allows("tool", &args(&["--input=/srv/in/x"])));
        assert!(!option.allows(
            "tool",
            &args(&["--input=/srv/in/../../root/.ssh/id_ed25519"])
        ));
        // A relative prefix does not climb either, but `..` the operator wrote stays.
        let relative = g("cat data*");
        assert!(relative.allows("cat", &args(&["data/x"])));
        assert!(relative.allows("cat", &args(&["data.csv"])));
        assert!(!relative.allows("cat", &args(&["data/../../etc/passwd"])));
        assert!(!g("cat .*").allows("cat", &args(&[".."])));
        let above = g("cat ../shared/*");
        assert!(above.allows("cat", &args(&["../shared/x"])));
        assert!(!above.allows("cat", &args(&["../shared/../../x"])));
        // `..` that is no path component is matched as written.
        let plain = g("git log --format=*");
        assert!(plain.allows("git", &args(&["log", "--format=.."])));
        assert!(plain.allows("git", &args(&["log", "--format=%H..%h"])));
    }

    #[test]
    fn malformed_grants_are_refused_with_a_reason() {
        for bad in [
            "",
            "   ",
            "../bin/sh",
            "bin/sh",
            "/bin/../bin/sh",
            "/",
            "/bin/sh/",
            "git ** status",
            "git a*b",
            "git **x",
            "a\0b",
        ] {
            assert!(ProcessGrant::parse(bad).is_err(), "{bad:?}");
        }
    }
}
