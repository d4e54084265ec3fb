//! Test capsule: imports `test:needs-http/absent`, an interface no host serves, so loading it
//! must fail and name that import. (The crate keeps its historical name; an interface of its
//! own stays unserved however many astrid interfaces the host gains.)

wit_bindgen::generate!({
    inline: r#"
        package test:needs-http;
        interface absent {
            ping: func() -> u32;
        }
        world needs-http {
            import absent;
            include astrid:guest/interceptor@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

struct NeedsAbsent;

impl Guest for NeedsAbsent {
    fn astrid_hook_trigger(_action: String, _payload: Vec<u8>) -> CapsuleResult {
        let answer = test::needs_http::absent::ping();
        CapsuleResult {
            action: "continue".into(),
            data: Some(answer.to_string()),
        }
    }
}

export!(NeedsAbsent);
