//! Test capsule: imports `astrid:process/host@1.0.0`, which the host does not provide, so
//! loading it must fail and name that import. (The crate keeps its historical name.)

wit_bindgen::generate!({
    inline: r#"
        package test:needs-http;
        world needs-http {
            import astrid:process/host@1.0.0;
            include astrid:guest/interceptor@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use astrid::process1_0_0::host as process;

struct NeedsProcess;

impl Guest for NeedsProcess {
    fn astrid_hook_trigger(_action: String, _payload: Vec<u8>) -> CapsuleResult {
        let found = process::list_processes(None).map_or(0, |a| a.len());
        CapsuleResult {
            action: "continue".into(),
            data: Some(found.to_string()),
        }
    }
}

export!(NeedsProcess);
