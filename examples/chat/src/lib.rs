//! Chat: the second link of the interceptor chain on `chat.post`.
//!
//! It sees only posts the moderation capsule let through, with the payload that link
//! returned, and fans each one out on `chat.room.message` with the poster's principal, which
//! the host vouches for (the caller context of the call).

#![deny(unsafe_code)]

use astrid_sdk::prelude::*;
use serde::Deserialize;
use serde_json::json;

#[derive(Default)]
pub struct Chat;

#[derive(Deserialize)]
pub struct Post {
    text: String,
}

#[capsule]
impl Chat {
    #[astrid::interceptor("deliver")]
    pub fn deliver(&self, post: Post) -> Result<(), SysError> {
        let from = runtime::caller()?
            .principal
            .unwrap_or_else(|| "host".to_string());
        ipc::publish_json(
            "chat.room.message",
            &json!({ "from": from, "text": post.text }),
        )
    }
}
