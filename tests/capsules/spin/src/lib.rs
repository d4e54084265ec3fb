//! Test capsule: a run loop that burns CPU forever and never waits for anything.

wit_bindgen::generate!({
    inline: r#"
        package test:spin;
        world spin {
            include astrid:guest/background@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

struct Spin;

impl Guest for Spin {
    fn run() {
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }
}

export!(Spin);
