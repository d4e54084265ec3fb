//! The `Capsule.toml` text a [`Model`] describes.

use super::model::{Comp, Entry, Model};
use crate::profile::Val;
use crate::toml_str;

fn kv(out: &mut String, key: &str, v: &Option<Val>) {
    if let Some(v) = v {
        out.push_str(&format!("{key} = {}\n", v.render()));
    }
}

fn render_entry(e: &Entry) -> String {
    match e {
        Entry::Wit(w) => toml_str(w),
        Entry::Int => "3".to_string(),
        Entry::Table {
            wit,
            fanout,
            handler,
            priority,
            pins,
        } => {
            let mut parts = Vec::new();
            for (k, v) in [
                ("wit", wit),
                ("fanout", fanout),
                ("handler", handler),
                ("priority", priority),
            ] {
                if let Some(v) = v {
                    parts.push(format!("{k} = {}", v.render()));
                }
            }
            for pin in ["version", "tag"].iter().take(usize::from(*pins)) {
                parts.push(format!("{pin} = \"1\""));
            }
            format!("{{ {} }}", parts.join(", "))
        }
    }
}

impl Model {
    /// The `Capsule.toml` text this model describes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.top_unknown {
            out.push_str("colour = 1\n");
        }
        out.push_str("[package]\n");
        kv(&mut out, "name", &self.name);
        kv(&mut out, "version", &self.version);
        kv(&mut out, "description", &self.description);
        if self.package_unknown {
            out.push_str("colour = 1\n");
        }
        match &self.component {
            Comp::Missing => {}
            Comp::Two => out.push_str("[[component]]\nid = \"a\"\nfile = \"a.wasm\"\n[[component]]\nid = \"b\"\nfile = \"b.wasm\"\n"),
            Comp::One { id, file, hash, unknown } => {
                out.push_str("[[component]]\n");
                kv(&mut out, "id", id);
                kv(&mut out, "file", file);
                if let Some(h) = hash {
                    out.push_str(&format!("hash = {}\n", toml_str(h)));
                }
                if *unknown {
                    out.push_str("colour = 1\n");
                }
            }
        }
        if let Some(c) = &self.caps {
            out.push_str("[capabilities]\n");
            kv(&mut out, "uplink", &c.uplink);
            if let Some(list) = &c.fs_read {
                let items: Vec<String> = list.iter().map(|s| toml_str(s)).collect();
                out.push_str(&format!("fs_read = [{}]\n", items.join(", ")));
            }
            if c.unknown {
                out.push_str("teleport = true\n");
            }
        }
        for (section, entries) in [("publish", &self.publish), ("subscribe", &self.subscribe)] {
            if !entries.is_empty() {
                out.push_str(&format!("[{section}]\n"));
                for (p, e) in entries {
                    out.push_str(&format!("{} = {}\n", toml_str(p), render_entry(e)));
                }
            }
        }
        if !self.imports.is_empty() {
            out.push_str("[imports]\n");
            for (n, v) in &self.imports {
                out.push_str(&format!("{} = {}\n", toml_str(n), v.render()));
            }
        }
        for (k, e) in &self.env {
            out.push_str(&format!("[env.{k}]\n"));
            kv(&mut out, "type", &e.kind);
            kv(&mut out, "default", &e.default);
            kv(&mut out, "enum_values", &e.enum_values);
        }
        if self.inert_tool {
            out.push_str("[[tool]]\nname = \"x\"\n");
        }
        out
    }
}
