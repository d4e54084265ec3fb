//! The identity directory's unit tests: limits, uniqueness, charges and the refusals of
//! malformed or look-alike names.

use super::*;

fn store() -> (tempfile::TempDir, KvStore, IdentityStore) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let kv = KvStore::open(&dir.path().join("kv.redb")).unwrap_or_else(|e| panic!("{e}"));
    let ids = IdentityStore::open(&kv).unwrap_or_else(|e| panic!("{e}"));
    (dir, kv, ids)
}

fn pi(platform: &str, user: &str) -> PlatformIdentity {
    PlatformIdentity::new(platform, user).unwrap_or_else(|e| panic!("{e}"))
}

fn user(ids: &IdentityStore, name: &str) -> PrincipalId {
    ids.create_user(Some(name))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_platform_identity_links_to_one_user_only() {
    let (_d, _kv, ids) = store();
    let (a, b) = (user(&ids, "Ann"), user(&ids, "Bo"));
    assert_ne!(a, b);
    ids.link(&pi("discord", "42"), &a, "oauth")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        ids.link(&pi("discord", "42"), &b, "oauth"),
        Err(IdentityError::AlreadyLinked)
    ));
    assert!(matches!(
        ids.link(&pi("discord", "42"), &a, "again"),
        Err(IdentityError::AlreadyLinked)
    ));
    // The same user id on another platform is another identity.
    ids.link(&pi("slack", "42"), &b, "admin")
        .unwrap_or_else(|e| panic!("{e}"));
    let resolved = ids
        .resolve(&pi("discord", "42"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resolved.map(|l| l.user), Some(a.clone()));
    assert_eq!(ids.links(&b).unwrap_or_else(|e| panic!("{e}")).len(), 1);
}

#[test]
fn link_unlink_resolve_and_list_agree() {
    let (_d, _kv, ids) = store();
    let a = user(&ids, "Ann");
    assert_eq!(
        ids.user(&a)
            .unwrap_or_else(|e| panic!("{e}"))
            .and_then(|u| u.display_name),
        Some("Ann".into())
    );
    for (p, u) in [("telegram", "9"), ("discord", "7"), ("discord", "10")] {
        ids.link(&pi(p, u), &a, "code")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let listed: Vec<_> = ids
        .links(&a)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|l| {
            format!(
                "{}/{}",
                l.identity.platform(),
                l.identity.platform_user_id()
            )
        })
        .collect();
    assert_eq!(listed, ["discord/10", "discord/7", "telegram/9"]);
    let link = ids
        .resolve(&pi("discord", "7"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("linked"));
    assert_eq!(link.method, "code");
    assert!(
        link.linked_at.ends_with('Z') && link.linked_at.len() == 20,
        "{}",
        link.linked_at
    );

    assert_eq!(
        ids.unlink(&pi("discord", "7"), None)
            .unwrap_or_else(|e| panic!("{e}")),
        a
    );
    assert!(matches!(
        ids.unlink(&pi("discord", "7"), None),
        Err(IdentityError::LinkNotFound)
    ));
    assert!(
        ids.resolve(&pi("discord", "7"))
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none()
    );
    assert_eq!(ids.links(&a).unwrap_or_else(|e| panic!("{e}")).len(), 2);
    // Unlinked, the identity may be linked again, to anyone.
    let b = user(&ids, "Bo");
    ids.link(&pi("discord", "7"), &b, "code")
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_conditional_unlink_never_touches_another_users_link() {
    let (_d, _kv, ids) = store();
    let (a, b) = (user(&ids, "Ann"), user(&ids, "Bo"));
    ids.link(&pi("discord", "1"), &a, "code")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        ids.unlink(&pi("discord", "1"), Some(&b)),
        Err(IdentityError::LinkNotFound)
    ));
    assert!(
        ids.resolve(&pi("discord", "1"))
            .unwrap_or_else(|e| panic!("{e}"))
            .is_some()
    );
    ids.unlink(&pi("discord", "1"), Some(&a))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn unknown_users_and_bad_fields_are_typed_errors() {
    let (_d, _kv, ids) = store();
    let ghost = parse_user("ghost").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        ids.link(&pi("discord", "1"), &ghost, "code"),
        Err(IdentityError::UserNotFound)
    ));
    assert!(matches!(
        ids.links(&ghost),
        Err(IdentityError::UserNotFound)
    ));
    for (p, u) in [
        ("", "1"),
        ("Discord", "1"),
        ("dis cord", "1"),
        ("discord", ""),
        ("discord", "a\u{1b}[2J"),
        ("discord", "a\u{202E}b"),
    ] {
        assert!(
            matches!(
                PlatformIdentity::new(p, u),
                Err(IdentityError::InvalidInput(_))
            ),
            "{p:?} {u:?}"
        );
    }
    let long = "x".repeat(MAX_PLATFORM_USER_BYTES + 1);
    assert!(PlatformIdentity::new("discord", &long).is_err());
    assert!(PlatformIdentity::new("discord", &long[1..]).is_ok());
    let a = user(&ids, "Ann");
    assert!(matches!(
        ids.link(&pi("discord", "1"), &a, "bad method"),
        Err(IdentityError::InvalidInput(InvalidField {
            field: "method",
            ..
        }))
    ));
    assert!(ids.create_user(Some("\u{1b}]0;pwned\u{7}")).is_err());
    assert!(
        ids.create_user(Some(&"n".repeat(MAX_DISPLAY_NAME_BYTES + 1)))
            .is_err()
    );
    assert!(parse_user("../etc").is_err());
}

#[test]
fn one_user_holds_a_bounded_number_of_links() {
    let (_d, _kv, ids) = store();
    let a = user(&ids, "Ann");
    for i in 0..MAX_LINKS_PER_USER {
        ids.link(&pi("p", &i.to_string()), &a, "m")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(matches!(
        ids.link(&pi("p", "last"), &a, "m"),
        Err(IdentityError::Full { .. })
    ));
    assert!(
        ids.resolve(&pi("p", "last"))
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none()
    );
    assert_eq!(
        ids.links(&a).unwrap_or_else(|e| panic!("{e}")).len(),
        MAX_LINKS_PER_USER
    );
}

#[test]
fn the_directory_survives_reopening_the_database() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("kv.redb");
    let a = {
        let kv = KvStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let ids = IdentityStore::open(&kv).unwrap_or_else(|e| panic!("{e}"));
        let a = ids.create_user(None).unwrap_or_else(|e| panic!("{e}"));
        ids.link(&pi("discord", "5"), &a, "code")
            .unwrap_or_else(|e| panic!("{e}"));
        a
    };
    let kv = KvStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let ids = IdentityStore::open(&kv).unwrap_or_else(|e| panic!("{e}"));
    let link = ids
        .resolve(&pi("discord", "5"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(link.map(|l| l.user), Some(a.clone()));
    assert_eq!(
        ids.user(&a)
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|u| u.display_name),
        Some(None)
    );
}

#[test]
fn invisible_characters_make_no_look_alike_ids_or_names() {
    let (_d, _kv, ids) = store();
    let a = user(&ids, "Ann");
    ids.link(&pi("discord", "42"), &a, "code")
        .unwrap_or_else(|e| panic!("{e}"));
    for hidden in [
        "4\u{00AD}2",
        "4\u{034F}2",
        "4\u{061C}2",
        "\u{115F}42",
        "4\u{180E}2",
        "4\u{2028}2",
        "4\u{2064}2",
        "\u{3164}42",
        "42\u{FE0F}",
        "42\u{FFA0}",
        "42\u{FFF9}",
        "4\u{1D173}2",
        "42\u{E0020}",
        "42\u{E0100}",
    ] {
        assert!(
            matches!(
                PlatformIdentity::new("discord", hidden),
                Err(IdentityError::InvalidInput(_))
            ),
            "{hidden:?}"
        );
        assert!(
            check_display_name(&format!("Ann{hidden}")).is_err(),
            "{hidden:?}"
        );
    }
    // Visible text outside ASCII stays allowed.
    assert!(PlatformIdentity::new("matrix", "@zoë:example.org").is_ok());
    assert!(check_display_name("Zoë 李").is_ok());
}

#[test]
fn racing_links_of_one_identity_leave_exactly_one_holder() {
    let (_d, _kv, ids) = store();
    let users: Vec<_> = (0..8).map(|i| user(&ids, &format!("u{i}"))).collect();
    let wins: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = users
            .iter()
            .map(|u| {
                let ids = ids.clone();
                s.spawn(move || match ids.link(&pi("discord", "race"), u, "code") {
                    Ok(()) => true,
                    Err(IdentityError::AlreadyLinked) => false,
                    Err(e) => panic!("{e}"),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| panic!("a linker panicked")))
            .collect()
    });
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");
    let holder = ids
        .resolve(&pi("discord", "race"))
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|l| l.user);
    for (u, won) in users.iter().zip(&wins) {
        assert_eq!(holder.as_ref() == Some(u), *won);
        let listed = ids.links(u).unwrap_or_else(|e| panic!("{e}")).len();
        assert_eq!(listed, usize::from(*won), "{u}");
    }
}

#[test]
fn each_capsule_fills_only_its_share_and_unlinking_gives_links_back() {
    let (_d, _kv, ids) = store();
    let ids = ids.with_limits(IdentityLimits::new(2, 3));
    let capsule = |n: &str| CapsuleName::parse(n).unwrap_or_else(|e| panic!("{e}"));
    let (filler, other) = (capsule("filler"), capsule("other"));
    let mut made = Vec::new();
    for _ in 0..2 {
        made.push(
            ids.create_user_for(&filler, None)
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    assert!(matches!(
        ids.create_user_for(&filler, None),
        Err(IdentityError::Full { limit: 2, .. })
    ));
    let theirs = ids
        .create_user_for(&other, None)
        .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..3 {
        ids.link_for(&filler, &pi("p", &i.to_string()), &made[0], "m")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(matches!(
        ids.link_for(&filler, &pi("p", "3"), &made[1], "m"),
        Err(IdentityError::Full { limit: 3, .. })
    ));
    assert!(
        ids.resolve(&pi("p", "3"))
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none(),
        "a refused link leaves nothing"
    );
    ids.link_for(&other, &pi("p", "3"), &theirs, "m")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ids.charged(&filler).unwrap_or_else(|e| panic!("{e}")),
        (2, 3)
    );
    // Whoever removes a link, its maker gets it back; an operator's link charges nobody.
    ids.unlink(&pi("p", "0"), None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ids.charged(&filler).unwrap_or_else(|e| panic!("{e}")),
        (2, 2)
    );
    ids.link_for(&filler, &pi("p", "4"), &made[1], "m")
        .unwrap_or_else(|e| panic!("{e}"));
    ids.link(&pi("p", "5"), &made[1], "m")
        .unwrap_or_else(|e| panic!("{e}"));
    ids.unlink(&pi("p", "5"), None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ids.charged(&filler).unwrap_or_else(|e| panic!("{e}")),
        (2, 3)
    );
    assert_eq!(
        ids.charged(&other).unwrap_or_else(|e| panic!("{e}")),
        (1, 1)
    );
    // The maker does not show in what a link reads as.
    let link = ids
        .resolve(&pi("p", "4"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("linked"));
    assert_eq!(link.method, "m");
}

#[test]
fn timestamps_are_rfc3339() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
}
