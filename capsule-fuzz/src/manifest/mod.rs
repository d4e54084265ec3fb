//! `Capsule.toml`: a generated manifest (every key right or wrong in one of the ways users get
//! it wrong) parses to exactly what the documented rules say, or is refused naming one of the
//! keys that are wrong; damaged and raw text never panics, and every refusal names the file
//! and either a line and column inside the text or a key path.

mod expected;
mod model;
mod render;

use std::collections::HashMap;
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use capsule_security::{CapsulePolicy, Grant, Manifest, ManifestError, requests, spans_namespaces};

pub use expected::Summary;
pub use model::{Caps, Comp, Entry, Env, Model};

use crate::mutate_text;
use expected::FILE;

/// A manifest text: generated from a model, a model's text with one edit, or raw text.
#[derive(Debug)]
pub enum Input {
    /// Well-formed TOML whose meaning the model predicts.
    Model(Box<Model>),
    /// A model's text with one random edit.
    Damaged(String),
    /// Arbitrary text.
    Raw(String),
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0u8..=9)? {
            0..=5 => Self::Model(Box::new(Model::arbitrary(u)?)),
            6..=8 => {
                let text = Model::arbitrary(u)?.render();
                Self::Damaged(mutate_text(u, &text)?)
            }
            _ => Self::Raw(String::arbitrary(u)?),
        })
    }
}

/// Checks the shape of any parse outcome: errors locate the problem; a manifest's policy
/// allows what its ACLs name.
fn check_shape(text: &str, r: &Result<Manifest, ManifestError>) -> Result<(), String> {
    match r {
        Ok(m) => {
            let mut all = Grant::new(m);
            all.allow(requests(m));
            let policy = CapsulePolicy::granted(m, &all, &HashMap::new());
            let ungranted = CapsulePolicy::granted(m, &Grant::new(m), &HashMap::new());
            for p in &m.publish {
                let concrete = p.pattern.as_str().replace('*', "z");
                if let Ok(t) = capsule_bus::Topic::parse(&concrete)
                    && !policy.may_publish(&t).is_allowed()
                {
                    return Err(format!(
                        "publish ACL {} refuses its own instance {t}",
                        p.pattern
                    ));
                }
            }
            for s in &m.subscribe {
                if !policy.may_subscribe(&s.pattern).is_allowed() {
                    return Err(format!(
                        "subscribe ACL refuses its own pattern {}",
                        s.pattern
                    ));
                }
                // Without a grant, an entry spanning every namespace (and not a handler,
                // whose load fails instead) leaves the ACL; the model: allowed exactly when a
                // kept entry covers the pattern.
                let kept = |o: &&capsule_security::SubscribeEntry| {
                    o.handler.is_some() || !spans_namespaces(&o.pattern)
                };
                let model = m
                    .subscribe
                    .iter()
                    .filter(kept)
                    .any(|o| o.pattern.covers(&s.pattern));
                if ungranted.may_subscribe(&s.pattern).is_allowed() != model {
                    return Err(format!(
                        "ungranted subscribe ACL gets {} wrong (model: {model})",
                        s.pattern
                    ));
                }
            }
            let handlers = m.subscribe.iter().filter(|s| s.handler.is_some()).count();
            if m.handlers().count() != handlers {
                return Err("handlers() disagrees with the subscribe entries".into());
            }
            Ok(())
        }
        Err(e) => {
            if !e.to_string().contains(FILE) {
                return Err(format!("error {e} does not name the file"));
            }
            match e {
                ManifestError::Syntax {
                    line,
                    column,
                    message,
                    ..
                } => {
                    let lines = text.split('\n').count();
                    let width = text
                        .split('\n')
                        .nth(line.saturating_sub(1))
                        .map_or(0, str::len);
                    if *line == 0
                        || *line > lines
                        || *column == 0
                        || *column > width + 1
                        || message.is_empty()
                    {
                        return Err(format!(
                            "syntax error at {line}:{column} is outside the text"
                        ));
                    }
                    Ok(())
                }
                ManifestError::Invalid { key, reason, .. }
                    if key.is_empty() || reason.is_empty() =>
                {
                    Err(format!("error without a key or reason: {e}"))
                }
                ManifestError::Invalid { .. } => Ok(()),
                ManifestError::Many { problems, .. } => {
                    let lines = text.split('\n').count();
                    if problems.len() < 2 {
                        return Err(format!("fewer than two problems reported as many: {e}"));
                    }
                    if problems.iter().any(|p| {
                        p.key.is_empty() || p.reason.is_empty() || p.line == 0 || p.line > lines
                    }) {
                        return Err(format!("a problem without a key, reason or line: {e}"));
                    }
                    if problems
                        .windows(2)
                        .any(|w| (w[0].line, w[0].column) > (w[1].line, w[1].column))
                    {
                        return Err(format!("problems out of file order: {e}"));
                    }
                    Ok(())
                }
                ManifestError::Io { .. } | ManifestError::NotAManifest { .. } => {
                    Err(format!("parsing text gave a file error: {e}"))
                }
            }
        }
    }
}

/// Parses the input's text and checks the outcome.
pub fn check(input: &Input) -> Result<(), String> {
    let text = match input {
        Input::Model(m) => m.render(),
        Input::Damaged(t) | Input::Raw(t) => t.clone(),
    };
    let got = Manifest::parse(&text, Path::new(FILE));
    check_shape(&text, &got)?;
    let Input::Model(m) = input else {
        return Ok(());
    };
    match (&got, m.expected()) {
        (Ok(g), Ok(want)) => {
            let have = Summary::of(g);
            if have != want {
                return Err(format!(
                    "{text}\nparsed to {have:#?}\nthe rules say {want:#?}"
                ));
            }
        }
        (Err(ManifestError::Invalid { key, .. }), Err(bad)) => {
            if !bad.iter().any(|b| key.starts_with(b.as_str())) {
                return Err(format!(
                    "{text}\nrefused naming `{key}`, but the wrong keys are {bad:?}"
                ));
            }
        }
        // The model judges each key by the first rule it breaks, so it may not list every
        // problem the parser finds; at least one reported key must be one it knows is wrong.
        (Err(ManifestError::Many { problems, .. }), Err(bad)) => {
            if !problems
                .iter()
                .any(|p| bad.iter().any(|b| p.key.starts_with(b.as_str())))
            {
                let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
                return Err(format!(
                    "{text}\nrefused naming {keys:?}, but the wrong keys are {bad:?}"
                ));
            }
        }
        (got, want) => {
            return Err(format!(
                "{text}\nparsed to {:?}, the rules say {:?}",
                got.as_ref().map(Summary::of),
                want
            ));
        }
    }
    Ok(())
}
