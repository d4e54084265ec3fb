//! Test capsule built with the public astrid SDK (astrid-sdk 0.7) the way an agent uses the
//! host: it runs host programs (`astrid:process` 1.1, synchronously and in the background),
//! asks a human before acting (`astrid:approval`) and maps a chat user to a principal
//! (`astrid:identity`). Each interceptor answers with what the SDK returned, errors as text,
//! so the test sees exactly what an SDK capsule sees.

#![deny(unsafe_code)]

use astrid_sdk::prelude::*;
use serde_json::{Value, json};

#[derive(Default)]
pub struct SdkAgent;

fn text(e: SysError) -> Value {
    json!({ "err": e.to_string() })
}

#[capsule]
impl SdkAgent {
    /// `echo hello` run to completion.
    #[astrid::interceptor("run")]
    pub fn run_echo(&self, _payload: Value) -> Result<Value, SysError> {
        Ok(
            match process::Command::new("/bin/echo").arg("hello").spawn() {
                Ok(out) => json!({
                    "stdout": out.stdout,
                    "code": out.exit.exit_code,
                }),
                Err(e) => text(e),
            },
        )
    }

    /// `cat` in the background: feeds it stdin, closes it and waits for its output.
    #[astrid::interceptor("pipe")]
    pub fn pipe(&self, payload: Value) -> Result<Value, SysError> {
        let input = payload["input"].as_str().unwrap_or_default().to_string();
        let run = || -> Result<Value, SysError> {
            let p = process::Command::new("/bin/cat")
                .keep_stdin_open(true)
                .spawn_background()?;
            p.write_stdin(input.as_bytes())?;
            p.close_stdin()?;
            let out = p.wait_with_output(Some(std::time::Duration::from_secs(30)))?;
            Ok(json!({ "stdout": out.stdout, "code": out.exit.exit_code }))
        };
        Ok(run().unwrap_or_else(text))
    }

    /// A program the operator did not grant.
    #[astrid::interceptor("forbidden")]
    pub fn forbidden(&self, _payload: Value) -> Result<Value, SysError> {
        Ok(
            match process::Command::new("/bin/sh").arg("-c").arg("id").spawn() {
                Ok(out) => json!({ "stdout": out.stdout }),
                Err(e) => text(e),
            },
        )
    }

    /// Asks for approval of `action` on `resource`.
    #[astrid::interceptor("ask")]
    pub fn ask(&self, payload: Value) -> Result<Value, SysError> {
        let action = payload["action"].as_str().unwrap_or_default();
        let resource = payload["resource"].as_str().unwrap_or_default();
        Ok(match approval::request_decision(action, resource) {
            Ok(d) => json!({ "decision": format!("{d:?}"), "approved": d.is_approved() }),
            Err(e) => text(e),
        })
    }

    /// Creates a user, links `platform`/`id` to it, resolves the link and lists the user's
    /// links.
    #[astrid::interceptor("onboard")]
    pub fn onboard(&self, payload: Value) -> Result<Value, SysError> {
        let platform = payload["platform"].as_str().unwrap_or_default();
        let id = payload["id"].as_str().unwrap_or_default();
        let run = || -> Result<Value, SysError> {
            let user = identity::create_user(Some("Ann"))?;
            identity::link(platform, id, &user, "chat")?;
            let resolved = identity::resolve(platform, id)?;
            let links = identity::list_links(&user)?;
            Ok(json!({
                "user": user,
                "resolved": resolved.map(|r| r.user_id),
                "links": links.iter().map(|l| l.platform_user_id.clone()).collect::<Vec<_>>(),
            }))
        };
        Ok(run().unwrap_or_else(text))
    }

    /// Resolves `platform`/`id`, `null` when nothing is linked.
    #[astrid::interceptor("resolve")]
    pub fn resolve(&self, payload: Value) -> Result<Value, SysError> {
        let platform = payload["platform"].as_str().unwrap_or_default();
        let id = payload["id"].as_str().unwrap_or_default();
        Ok(match identity::resolve(platform, id) {
            Ok(r) => json!({ "resolved": r.map(|r| r.user_id) }),
            Err(e) => text(e),
        })
    }
}
