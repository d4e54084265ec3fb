//! Moderation: the first link of an interceptor chain on `chat.post`.
//!
//! It runs before the chat capsule's handler (priority 10 against 20). A post containing a
//! blocked word is denied with the reason, which stops the chain: the chat handler never sees
//! it, and the host records the denial on the audit topic for the poster. Any other post is
//! passed on with its text trimmed, which replaces the payload the next link receives.

#![deny(unsafe_code)]

use astrid_sdk::prelude::*;
use serde::Deserialize;
use serde_json::json;

#[derive(Default)]
pub struct Moderation;

#[derive(Deserialize)]
pub struct Post {
    text: String,
}

/// The blocked words, from the `blocked_words` setting (comma-separated).
fn blocked() -> Result<Vec<String>, SysError> {
    Ok(env::var("blocked_words")?
        .split(',')
        .map(|w| w.trim().to_lowercase())
        .filter(|w| !w.is_empty())
        .collect())
}

#[capsule]
impl Moderation {
    #[astrid::interceptor("moderate")]
    pub fn moderate(&self, post: Post) -> Result<serde_json::Value, SysError> {
        let lower = post.text.to_lowercase();
        if let Some(word) = blocked()?.into_iter().find(|w| lower.contains(w.as_str())) {
            return Err(SysError::ApiError(format!(
                "blocked by moderation: the post contains `{word}`"
            )));
        }
        Ok(json!({ "text": post.text.trim() }))
    }
}
