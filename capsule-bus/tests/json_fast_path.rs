//! The payload check's fast path for plain JSON strings scans 64 bytes at a time: every byte
//! that decides validity (controls, quote, backslash, DEL, the first non-ASCII lead and
//! continuation bytes) is put at every offset around the block edges, and a payload must be
//! accepted exactly when `serde_json` accepts it, wherever the byte falls; nesting of any
//! depth neither overflows the stack nor passes unbalanced.

use capsule_bus::JsonPayload;

fn serde_ok(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

fn same_verdict(text: String) {
    let want = serde_ok(&text);
    let shown = format!("{text:?}");
    assert_eq!(JsonPayload::parse(text).is_ok(), want, "{shown}");
}

#[test]
fn every_deciding_character_at_every_offset_around_the_block_edges() {
    let pieces = [
        "\u{0}",
        "\u{1f}",
        " ",
        "\"",
        "\\",
        "\\\"",
        "\\n",
        "\\u00e9",
        "\\ud83d",
        "\u{7f}",
        "\u{80}",
        "é",
        "\u{800}",
        "\u{ffff}",
        "\u{1f600}",
    ];
    for len in [62usize, 63, 64, 65, 127, 128, 129, 200] {
        for at in 0..=len {
            for piece in pieces {
                let (head, tail) = ("a".repeat(at), "b".repeat(len - at));
                same_verdict(format!("\"{head}{piece}{tail}\""));
                // The closing quote moved before the piece: whatever follows is trailing.
                same_verdict(format!("\"{head}\"{piece}{tail}"));
            }
        }
    }
}

#[test]
fn strings_around_the_edges_of_whitespace_nesting_and_size() {
    let big = "x".repeat(1 << 20);
    for (text, valid) in [
        (format!("\"{big}\""), true),
        (format!("\"{big}"), false),
        (format!("{big}\""), false),
        (format!("\"{big}\"\n"), true),
        (format!("\t\"{big}\""), true),
        (format!("\"{big}\"\u{0}"), false),
        (format!("\"{big}\"\u{a0}"), false),
        (format!("\u{feff}\"{big}\""), false),
        // Any depth is checked without recursion (no stack to overflow), and must balance.
        (
            format!("{}\"a\"{}", "[".repeat(300_000), "]".repeat(300_000)),
            true,
        ),
        (
            format!("{}\"a\"{}", "[".repeat(300_000), "]".repeat(299_999)),
            false,
        ),
        ("\"\"".to_string(), true),
        ("\"".to_string(), false),
        (String::new(), false),
    ] {
        let start = &text[..text.len().min(40)];
        assert_eq!(serde_ok(&text), valid, "serde_json's verdict on {start:?}");
        let n = text.len();
        assert_eq!(JsonPayload::parse(text).is_ok(), valid, "{n} bytes");
    }
}
