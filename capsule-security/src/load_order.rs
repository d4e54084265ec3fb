//! The load order of a set of capsules: every non-optional `[imports]` entry must be met by an
//! `[exports]` entry of another capsule (in the set or already loaded) whose version satisfies
//! the requirement, the import/export graph must be acyclic, and providers come before their
//! importers. Among capsules free to go next, uplink capsules go first, then by name, so the
//! order is deterministic.

use std::collections::{BTreeMap, BTreeSet};

use crate::manifest::Manifest;

/// Why a set of capsules cannot be ordered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// Two capsules in the set share a name.
    #[error("capsule `{0}` appears more than once in the set to load")]
    Duplicate(String),
    /// A non-optional import has no provider.
    #[error(
        "capsule `{capsule}` imports `{import} {requirement}`, which no capsule exports{}",
        describe_offers(offers)
    )]
    MissingImport {
        /// The importing capsule.
        capsule: String,
        /// The import's `namespace:name`.
        import: String,
        /// The version requirement.
        requirement: String,
        /// `(capsule, version)` of exports with that name whose version did not match.
        offers: Vec<(String, String)>,
    },
    /// The imports form a cycle; the capsules are listed in import order, the first repeated at
    /// the end.
    #[error("dependency cycle: {}", cycle.join(" -> "))]
    Cycle {
        /// The capsules on the cycle.
        cycle: Vec<String>,
    },
}

fn describe_offers(offers: &[(String, String)]) -> String {
    if offers.is_empty() {
        return String::new();
    }
    let list: Vec<String> = offers
        .iter()
        .map(|(c, v)| format!("`{c}` exports {v}"))
        .collect();
    format!(" in a matching version ({})", list.join(", "))
}

/// One capsule in a load plan.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadStep {
    /// Index into the input.
    pub index: usize,
    /// The capsule's name.
    pub name: String,
    /// Providers it must wait for, with whether the import that needs each is optional.
    pub providers: Vec<(String, bool)>,
}

/// Orders `set` (to be loaded) given `loaded` (already running, usable as providers).
pub fn plan_load(set: &[&Manifest], loaded: &[&Manifest]) -> Result<Vec<LoadStep>, GraphError> {
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, m) in set.iter().enumerate() {
        if index.insert(m.package.name.as_str(), i).is_some() {
            return Err(GraphError::Duplicate(m.package.name.as_str().to_string()));
        }
    }
    // Every export on offer: name -> [(capsule, version, in the set?)].
    let mut offered: BTreeMap<&str, Vec<(&str, &semver::Version)>> = BTreeMap::new();
    for m in set.iter().chain(loaded) {
        for e in &m.exports {
            offered
                .entry(e.name.as_str())
                .or_default()
                .push((m.package.name.as_str(), &e.version));
        }
    }

    // edges[i] = capsules in the set that i waits for; providers[i] also names loaded ones.
    let mut edges: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); set.len()];
    let mut providers: Vec<BTreeMap<String, bool>> = vec![BTreeMap::new(); set.len()];
    for (i, m) in set.iter().enumerate() {
        let me = m.package.name.as_str();
        for import in &m.imports {
            let all = offered
                .get(import.name.as_str())
                .map_or(&[][..], Vec::as_slice);
            let matching: Vec<&str> = all
                .iter()
                .filter(|(_, v)| import.version.matches(v))
                .map(|(c, _)| *c)
                .collect();
            if matching.is_empty() {
                if import.optional {
                    continue;
                }
                return Err(GraphError::MissingImport {
                    capsule: me.to_string(),
                    import: import.name.clone(),
                    requirement: import.version.to_string(),
                    offers: all
                        .iter()
                        .map(|(c, v)| (c.to_string(), v.to_string()))
                        .collect(),
                });
            }
            for provider in matching {
                // A capsule that would need itself is a cycle of one.
                if provider == me {
                    return Err(GraphError::Cycle {
                        cycle: vec![me.to_string(), me.to_string()],
                    });
                }
                let optional =
                    providers[i].get(provider).copied().unwrap_or(true) && import.optional;
                providers[i].insert(provider.to_string(), optional);
                if let Some(&j) = index.get(provider) {
                    edges[i].insert(j);
                }
            }
        }
    }

    // Kahn's algorithm; among the free, uplinks first, then by name.
    let key = |i: usize| (!set[i].capabilities.uplink, set[i].package.name.as_str(), i);
    let mut waiting: Vec<usize> = edges.iter().map(BTreeSet::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); set.len()];
    for (i, e) in edges.iter().enumerate() {
        for &j in e {
            dependents[j].push(i);
        }
    }
    let mut free: BTreeSet<(bool, &str, usize)> = (0..set.len())
        .filter(|&i| waiting[i] == 0)
        .map(key)
        .collect();
    let mut order = Vec::with_capacity(set.len());
    while let Some(first) = free.pop_first() {
        let i = first.2;
        order.push(LoadStep {
            index: i,
            name: set[i].package.name.as_str().to_string(),
            providers: std::mem::take(&mut providers[i]).into_iter().collect(),
        });
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                free.insert(key(d));
            }
        }
    }
    if order.len() < set.len() {
        let placed: BTreeSet<usize> = order.iter().map(|s| s.index).collect();
        let stuck: Vec<usize> = (0..set.len()).filter(|i| !placed.contains(i)).collect();
        return Err(GraphError::Cycle {
            cycle: find_cycle(&stuck, &edges, |i| set[i].package.name.as_str()),
        });
    }
    Ok(order)
}

/// A cycle among `stuck` (every one of which waits on another stuck node), by name.
fn find_cycle<'a>(
    stuck: &[usize],
    edges: &[BTreeSet<usize>],
    name: impl Fn(usize) -> &'a str,
) -> Vec<String> {
    let stuck_set: BTreeSet<usize> = stuck.iter().copied().collect();
    let Some(&start) = stuck.first() else {
        return Vec::new();
    };
    // Walk stuck edges until a node repeats; the walk from its first visit is the cycle.
    let mut path: Vec<usize> = vec![start];
    let mut seen: BTreeMap<usize, usize> = BTreeMap::from([(start, 0)]);
    let mut at = start;
    loop {
        let Some(&next) = edges[at].iter().find(|j| stuck_set.contains(j)) else {
            // Cannot happen for a stuck node; report what was walked.
            return path.into_iter().map(|i| name(i).to_string()).collect();
        };
        if let Some(&pos) = seen.get(&next) {
            let mut cycle: Vec<String> = path[pos..].iter().map(|&i| name(i).to_string()).collect();
            cycle.push(name(next).to_string());
            return cycle;
        }
        seen.insert(next, path.len());
        path.push(next);
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, extra: &str) -> Manifest {
        let text = format!(
            "[package]\nname = \"{name}\"\nversion = \"1.0.0\"\n\n[[component]]\nid = \"{name}\"\nfile = \"x.wasm\"\n\n{extra}\n"
        );
        Manifest::parse(&text, std::path::Path::new("/capsules/x"))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn names(steps: &[LoadStep]) -> Vec<&str> {
        steps.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn providers_first_uplinks_first_then_by_name() {
        let a = manifest("a", "[imports]\n\"x:svc\" = \"^1\"\n");
        let b = manifest("b", "[exports]\n\"x:svc\" = \"1.4.0\"\n");
        let c = manifest("c", "");
        let up = manifest("z-up", "[capabilities]\nuplink = true\n");
        let steps = plan_load(&[&a, &b, &c, &up], &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names(&steps), ["z-up", "b", "a", "c"]);
        assert_eq!(steps[2].providers, vec![("b".to_string(), false)]);
    }

    #[test]
    fn loaded_capsules_provide_and_optional_imports_may_go_unmet() {
        let a = manifest(
            "a",
            "[imports]\n\"x:svc\" = \"^1\"\n\"x:extra\" = { version = \"^1\", optional = true }\n",
        );
        let running = manifest("running", "[exports]\n\"x:svc\" = \"1.0.0\"\n");
        let steps = plan_load(&[&a], &[&running]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(steps[0].providers, vec![("running".to_string(), false)]);
    }

    #[test]
    fn a_missing_import_names_capsule_import_and_offers() {
        let a = manifest("a", "[imports]\n\"x:svc\" = \"^2\"\n");
        let b = manifest("b", "[exports]\n\"x:svc\" = \"1.4.0\"\n");
        let e = plan_load(&[&a, &b], &[])
            .err()
            .unwrap_or_else(|| panic!("must fail"));
        assert_eq!(
            e.to_string(),
            "capsule `a` imports `x:svc ^2`, which no capsule exports in a matching version \
             (`b` exports 1.4.0)"
        );
        let lone = plan_load(&[&a], &[])
            .err()
            .unwrap_or_else(|| panic!("must fail"));
        assert_eq!(
            lone.to_string(),
            "capsule `a` imports `x:svc ^2`, which no capsule exports"
        );
    }

    #[test]
    fn cycles_are_named() {
        let a = manifest(
            "a",
            "[imports]\n\"x:b\" = \"^1\"\n[exports]\n\"x:a\" = \"1.0.0\"\n",
        );
        let b = manifest(
            "b",
            "[imports]\n\"x:c\" = \"^1\"\n[exports]\n\"x:b\" = \"1.0.0\"\n",
        );
        let c = manifest(
            "c",
            "[imports]\n\"x:a\" = \"^1\"\n[exports]\n\"x:c\" = \"1.0.0\"\n",
        );
        let free = manifest("free", "");
        let e = plan_load(&[&free, &a, &b, &c], &[])
            .err()
            .unwrap_or_else(|| panic!("must fail"));
        assert_eq!(e.to_string(), "dependency cycle: a -> b -> c -> a");
        let me = manifest(
            "me",
            "[imports]\n\"x:me\" = \"^1\"\n[exports]\n\"x:me\" = \"1.0.0\"\n",
        );
        let e = plan_load(&[&me], &[])
            .err()
            .unwrap_or_else(|| panic!("must fail"));
        assert_eq!(e.to_string(), "dependency cycle: me -> me");
        let dup = plan_load(&[&free, &free], &[])
            .err()
            .unwrap_or_else(|| panic!("must fail"));
        assert_eq!(dup, GraphError::Duplicate("free".into()));
    }
}
