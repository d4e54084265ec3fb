//! Where a key path (as written in a [`ManifestError`](super::ManifestError)) sits in the
//! manifest text, so diagnostics can be sorted the way the author reads the file. A key that
//! is missing is placed at its closest existing ancestor; nothing here can fail.

use toml::de::{DeTable, DeValue};

/// One step of a key path: a table key or an array index.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Splits `a."b.c"[2].d` into its steps. Quoted keys keep their dots.
fn steps(path: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = path.chars().peekable();
    let flush = |current: &mut String, out: &mut Vec<Step>| {
        if !current.is_empty() {
            out.push(Step::Key(std::mem::take(current)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => flush(&mut current, &mut out),
            '[' if !quoted => {
                flush(&mut current, &mut out);
                let mut digits = String::new();
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                    digits.push(d);
                }
                if let Ok(i) = digits.parse() {
                    out.push(Step::Index(i));
                }
            }
            c => current.push(c),
        }
    }
    flush(&mut current, &mut out);
    out
}

/// The byte offset of `path` in `text`: the key's own span when it exists, else the deepest
/// ancestor that does (0 when none does or the text is not TOML).
pub(crate) fn offset_of(text: &str, path: &str) -> usize {
    let Ok(root) = DeTable::parse(text) else {
        return 0;
    };
    let mut best = 0;
    let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
    let mut value: Option<&DeValue<'_>> = None;
    for step in steps(path) {
        match step {
            Step::Key(k) => {
                let Some(t) = table.or(match value {
                    Some(DeValue::Table(t)) => Some(t),
                    _ => None,
                }) else {
                    break;
                };
                let Some((key, v)) = t.iter().find(|(key, _)| key.get_ref().as_ref() == k) else {
                    break;
                };
                best = key.span().start;
                table = None;
                value = Some(v.get_ref());
            }
            Step::Index(i) => {
                let Some(DeValue::Array(a)) = value else {
                    break;
                };
                let Some(item) = a.get(i) else {
                    break;
                };
                best = item.span().start;
                table = None;
                value = Some(item.get_ref());
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_keep_quoted_dots_and_indexes() {
        assert_eq!(
            steps("subscribe.\"a.b\".priority"),
            vec![
                Step::Key("subscribe".into()),
                Step::Key("a.b".into()),
                Step::Key("priority".into())
            ]
        );
        assert_eq!(
            steps("component[0].capabilities.fs_read[2]"),
            vec![
                Step::Key("component".into()),
                Step::Index(0),
                Step::Key("capabilities".into()),
                Step::Key("fs_read".into()),
                Step::Index(2)
            ]
        );
    }

    #[test]
    fn offsets_point_at_the_key_or_its_closest_ancestor() {
        let text = "[package]\nname = \"x\"\n[subscribe]\n\"a.b\" = { priority = 3 }\n";
        assert_eq!(
            offset_of(text, "package.name"),
            text.find("name").unwrap_or(0)
        );
        assert_eq!(
            offset_of(text, "subscribe.\"a.b\".priority"),
            text.find("priority").unwrap_or(0)
        );
        // Missing: the closest existing ancestor.
        assert_eq!(
            offset_of(text, "package.version"),
            text.find("package").unwrap_or(0)
        );
        assert_eq!(offset_of("not = [toml", "package"), 0);
    }
}
