//! Test capsule: imports `astrid:http/host@1.1.0`, which the host does not provide, so loading
//! it must fail and name that import.

wit_bindgen::generate!({
    inline: r#"
        package test:needs-http;
        world needs-http {
            import astrid:http/host@1.1.0;
            include astrid:guest/interceptor@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use astrid::http1_1_0::host as http;

struct NeedsHttp;

impl Guest for NeedsHttp {
    fn astrid_hook_trigger(_action: String, _payload: Vec<u8>) -> CapsuleResult {
        let request = http::HttpRequestData {
            url: "https://example.invalid/".into(),
            method: http::HttpMethod::Get,
            headers: Vec::new(),
            body: None,
        };
        let status = http::http_request(&request).map(|r| r.status).unwrap_or(0);
        CapsuleResult {
            action: "continue".into(),
            data: Some(status.to_string()),
        }
    }
}

export!(NeedsHttp);
