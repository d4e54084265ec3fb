//! Test capsule: implements only the interceptor, but exports `run`, `astrid-install` and
//! `astrid-upgrade` as empty bodies, the way SDK toolchains do. The optimiser merges the three
//! into one core function, which the host must recognise as "not implemented".

wit_bindgen::generate!({
    inline: r#"
        package test:stubs;
        world stubs {
            include astrid:guest/interceptor@1.0.0;
            include astrid:guest/background@1.0.0;
            include astrid:guest/installable@1.0.0;
            include astrid:guest/upgradable@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});


struct Stubs;

impl Guest for Stubs {
    fn astrid_hook_trigger(action: String, _payload: Vec<u8>) -> CapsuleResult {
        CapsuleResult {
            action: "continue".into(),
            data: Some(action),
        }
    }
    fn run() {}
    fn astrid_install() {}
    fn astrid_upgrade() {}
}

export!(Stubs);
