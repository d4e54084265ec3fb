//! Test capsule built with the public astrid SDK (astrid-sdk 0.7): an interceptor `echo` that
//! republishes its payload on `sdk.echo` and returns it, and a run loop that answers every
//! message on `sdk.in` with the same payload on `sdk.out`.

#![deny(unsafe_code)]

use astrid_sdk::prelude::*;

#[derive(Default)]
pub struct SdkEcho;

#[capsule]
impl SdkEcho {
    #[astrid::interceptor("echo")]
    pub fn echo(&self, payload: serde_json::Value) -> Result<serde_json::Value, SysError> {
        ipc::publish_json("sdk.echo", &payload)?;
        Ok(payload)
    }

    #[astrid::run]
    pub fn run(&self) -> Result<(), SysError> {
        let sub = ipc::subscribe("sdk.in")?;
        runtime::signal_ready()?;
        loop {
            match sub.recv(60_000) {
                Ok(batch) => {
                    for m in batch.messages {
                        ipc::publish("sdk.out", &m.payload)?;
                    }
                }
                Err(e) if e.to_string().contains("Timeout") => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
