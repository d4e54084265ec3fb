//! Notes: a KV-backed notes capsule that answers request/response topics per principal.
//!
//! `notes.add {"text": "…"}` stores a note and `notes.list {}` lists them; both answer on
//! `notes.reply`. The host calls the handlers on behalf of the message's principal, so the KV
//! namespace is that principal's: alice's notes are invisible to bob without this capsule
//! doing anything about it.

#![deny(unsafe_code)]

use astrid_sdk::prelude::*;
use serde::Deserialize;
use serde_json::json;

/// Longest note kept, in characters.
const MAX_NOTE_CHARS: usize = 500;
/// Most notes one principal keeps.
const MAX_NOTES: usize = 100;
/// The KV key holding the principal's notes (the namespace is already per principal).
const KEY: &str = "notes";

#[derive(Default)]
pub struct Notes;

#[derive(Deserialize)]
pub struct Add {
    text: String,
}

fn stored() -> Result<Vec<String>, SysError> {
    Ok(kv::get_json_opt(KEY)?.unwrap_or_default())
}

#[capsule]
impl Notes {
    /// Stores a note; a note that is empty, too long or one too many is denied with the reason.
    #[astrid::interceptor("add")]
    pub fn add(&self, request: Add) -> Result<(), SysError> {
        let text = request.text.trim().to_string();
        if text.is_empty() {
            return Err(SysError::ApiError("a note needs some text".into()));
        }
        if text.chars().count() > MAX_NOTE_CHARS {
            return Err(SysError::ApiError(format!(
                "a note holds at most {MAX_NOTE_CHARS} characters"
            )));
        }
        let mut notes = stored()?;
        if notes.len() >= MAX_NOTES {
            return Err(SysError::ApiError(format!("at most {MAX_NOTES} notes")));
        }
        notes.push(text);
        kv::set_json(KEY, &notes)?;
        ipc::publish_json("notes.reply", &json!({ "saved": notes.len() }))
    }

    /// Answers with the caller's notes.
    #[astrid::interceptor("list")]
    pub fn list(&self, _request: serde_json::Value) -> Result<(), SysError> {
        ipc::publish_json("notes.reply", &json!({ "notes": stored()? }))
    }
}
