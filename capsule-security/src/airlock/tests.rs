//! Every address class and every IPv6 form that carries an IPv4 address, refused; public
//! addresses in every form let through; opened ranges open exactly what they name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Samples of every refused IPv4 class: the first and last address of each range and one
/// inside it.
const V4_REFUSED: &[(&str, AddressClass)] = &[
    ("0.0.0.0", AddressClass::Unspecified),
    ("0.0.0.1", AddressClass::ThisNetwork),
    ("0.255.255.255", AddressClass::ThisNetwork),
    ("127.0.0.1", AddressClass::Loopback),
    ("127.0.0.0", AddressClass::Loopback),
    ("127.255.255.254", AddressClass::Loopback),
    ("10.0.0.0", AddressClass::Private),
    ("10.20.30.40", AddressClass::Private),
    ("10.255.255.255", AddressClass::Private),
    ("172.16.0.0", AddressClass::Private),
    ("172.20.1.1", AddressClass::Private),
    ("172.31.255.255", AddressClass::Private),
    ("192.168.0.0", AddressClass::Private),
    ("192.168.1.1", AddressClass::Private),
    ("192.168.255.255", AddressClass::Private),
    ("100.64.0.0", AddressClass::SharedCgnat),
    ("100.100.100.100", AddressClass::SharedCgnat),
    ("100.127.255.255", AddressClass::SharedCgnat),
    ("169.254.0.0", AddressClass::LinkLocal),
    ("169.254.169.254", AddressClass::LinkLocal),
    ("169.254.255.255", AddressClass::LinkLocal),
    ("224.0.0.0", AddressClass::Multicast),
    ("224.0.0.251", AddressClass::Multicast),
    ("239.255.255.255", AddressClass::Multicast),
    ("255.255.255.255", AddressClass::Broadcast),
    ("192.0.2.0", AddressClass::Documentation),
    ("192.0.2.255", AddressClass::Documentation),
    ("198.51.100.7", AddressClass::Documentation),
    ("203.0.113.255", AddressClass::Documentation),
    ("198.18.0.0", AddressClass::Benchmarking),
    ("198.19.255.255", AddressClass::Benchmarking),
    ("192.0.0.0", AddressClass::Reserved),
    ("192.0.0.170", AddressClass::Reserved),
    ("192.88.99.1", AddressClass::Reserved),
    ("192.31.196.1", AddressClass::Reserved),
    ("192.175.48.1", AddressClass::Reserved),
    ("240.0.0.0", AddressClass::Reserved),
    ("250.1.2.3", AddressClass::Reserved),
    ("255.255.255.254", AddressClass::Reserved),
];

/// Public IPv4 addresses, including the neighbours of refused ranges.
const V4_PUBLIC: &[&str] = &[
    "1.1.1.1",
    "8.8.8.8",
    "1.0.0.0",
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "126.255.255.255",
    "128.0.0.0",
    "169.253.255.255",
    "169.255.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.0.1.255",
    "192.0.3.0",
    "192.167.255.255",
    "192.169.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "198.51.99.255",
    "203.0.112.255",
    "223.255.255.255",
];

const V6_REFUSED: &[(&str, AddressClass)] = &[
    ("::", AddressClass::Unspecified),
    ("::1", AddressClass::Loopback),
    ("fe80::1", AddressClass::LinkLocal),
    ("febf:ffff::1", AddressClass::LinkLocal),
    ("fc00::1", AddressClass::Private),
    ("fd12:3456::1", AddressClass::Private),
    ("fec0::1", AddressClass::Private),
    ("ff02::1", AddressClass::Multicast),
    ("ff0e::101", AddressClass::Multicast),
    ("2001:db8::1", AddressClass::Documentation),
    ("2001:db8:ffff::1", AddressClass::Documentation),
    ("3fff::1", AddressClass::Documentation),
    ("3fff:fff:ffff::1", AddressClass::Documentation),
    ("2001:2::1", AddressClass::Benchmarking),
    ("2001:10::1", AddressClass::Reserved),
    ("2001:1ff::1", AddressClass::Reserved),
    ("100::1", AddressClass::Reserved),
    ("64:ff9b:1::1", AddressClass::Reserved),
    ("64:ff9b:2::1", AddressClass::Reserved),
    ("5f00::1", AddressClass::Reserved),
    ("::ffff:0:1.2.3.4", AddressClass::Reserved),
    ("::1:0:0:1", AddressClass::Reserved),
    ("1000::1", AddressClass::Reserved),
    ("4000::1", AddressClass::Reserved),
    ("e000::1", AddressClass::Reserved),
];

const V6_PUBLIC: &[&str] = &[
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "2a00:1450::1",
    "2001:200::1",
    "3ffe::1",
    "2001:db9::1",
    "3fff:1000::1",
];

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Every IPv6 form of `addr`, with the form.
fn forms(addr: Ipv4Addr) -> Vec<(Embedding, Ipv6Addr)> {
    let [a, b, c, d] = addr.octets();
    let hi = u16::from_be_bytes([a, b]);
    let lo = u16::from_be_bytes([c, d]);
    let public = v4("8.8.4.4").octets();
    let phi = u16::from_be_bytes([public[0], public[1]]);
    let plo = u16::from_be_bytes([public[2], public[3]]);
    let mut out = vec![
        (Embedding::V4Mapped, addr.to_ipv6_mapped()),
        (
            Embedding::Nat64,
            Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo),
        ),
        (
            Embedding::SixToFour,
            Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1),
        ),
        // Teredo with the address as its server, and as its (inverted) client.
        (
            Embedding::Teredo,
            Ipv6Addr::new(0x2001, 0, hi, lo, 0, 0, !phi, !plo),
        ),
        (
            Embedding::Teredo,
            Ipv6Addr::new(0x2001, 0, phi, plo, 0, 0, !hi, !lo),
        ),
    ];
    // `::` and `::1` are IPv6's own addresses, not compatible forms of 0.0.0.0 and 0.0.0.1.
    if u32::from(addr) > 1 {
        out.push((Embedding::V4Compatible, addr.to_ipv6_compatible()));
    }
    out
}

#[test]
fn every_refused_ipv4_class_is_refused() {
    for &(s, class) in V4_REFUSED {
        let got = classify(ip(s));
        assert_eq!(
            got,
            Some(Refusal {
                addr: ip(s),
                class,
                via: None
            }),
            "{s}"
        );
        assert_eq!(
            Airlock::closed().check(ip(s)).err().map(|r| r.class),
            Some(class),
            "{s}"
        );
    }
}

#[test]
fn public_ipv4_addresses_pass() {
    for &s in V4_PUBLIC {
        assert_eq!(classify(ip(s)), None, "{s}");
        assert_eq!(Airlock::closed().check(ip(s)), Ok(ip(s)), "{s}");
    }
}

#[test]
fn every_refused_ipv6_class_is_refused() {
    for &(s, class) in V6_REFUSED {
        let got = classify(ip(s)).unwrap_or_else(|| panic!("{s} passed"));
        assert_eq!((got.class, got.via), (class, None), "{s}");
    }
}

#[test]
fn public_ipv6_addresses_pass() {
    for &s in V6_PUBLIC {
        assert_eq!(classify(ip(s)), None, "{s}");
        assert_eq!(Airlock::closed().check(ip(s)), Ok(ip(s)), "{s}");
    }
}

#[test]
fn every_form_carrying_a_refused_ipv4_address_is_refused() {
    for &(s, class) in V4_REFUSED {
        for (via, six) in forms(v4(s)) {
            let got = classify(IpAddr::V6(six)).unwrap_or_else(|| panic!("{six} ({s}) passed"));
            assert_eq!(got.class, class, "{six} carrying {s}");
            assert_eq!(got.via, Some(via), "{six} carrying {s}");
            assert!(Airlock::closed().check(IpAddr::V6(six)).is_err(), "{six}");
        }
    }
}

#[test]
fn forms_carrying_public_ipv4_addresses_pass_and_mapped_ones_connect_to_ipv4() {
    for &s in V4_PUBLIC {
        for (via, six) in forms(v4(s)) {
            assert_eq!(classify(IpAddr::V6(six)), None, "{six} carrying {s}");
            let expected = if matches!(via, Embedding::V4Mapped | Embedding::V4Compatible) {
                ip(s)
            } else {
                IpAddr::V6(six)
            };
            assert_eq!(
                Airlock::closed().check(IpAddr::V6(six)),
                Ok(expected),
                "{six}"
            );
        }
    }
}

#[test]
fn embedded_addresses_are_found_where_each_form_keeps_them() {
    let e = |s: &str| embedded_v4(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")));
    assert_eq!(
        e("::ffff:10.1.2.3"),
        Some((Embedding::V4Mapped, vec![v4("10.1.2.3")]))
    );
    assert_eq!(
        e("::10.1.2.3"),
        Some((Embedding::V4Compatible, vec![v4("10.1.2.3")]))
    );
    assert_eq!(
        e("64:ff9b::a01:203"),
        Some((Embedding::Nat64, vec![v4("10.1.2.3")]))
    );
    assert_eq!(
        e("2002:a01:203::"),
        Some((Embedding::SixToFour, vec![v4("10.1.2.3")]))
    );
    assert_eq!(
        e("2001:0:4136:e378:8000:63bf:f5fe:fdfc"),
        Some((Embedding::Teredo, vec![v4("65.54.227.120"), v4("10.1.2.3")]))
    );
    assert_eq!(e("::"), None);
    assert_eq!(e("::1"), None);
    assert_eq!(e("2606:4700::1"), None);
}

#[test]
fn an_opened_range_opens_exactly_itself_and_the_same_address_in_mapped_form() {
    let open: Vec<IpRange> = ["127.0.0.0/8", "::1"]
        .iter()
        .map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect();
    let airlock = Airlock::with_open(open);
    assert_eq!(airlock.check(ip("127.0.0.1")), Ok(ip("127.0.0.1")));
    assert_eq!(airlock.check(ip("127.9.9.9")), Ok(ip("127.9.9.9")));
    assert_eq!(airlock.check(ip("::1")), Ok(ip("::1")));
    // The mapped form is the same destination, and it is connected to as IPv4.
    assert_eq!(airlock.check(ip("::ffff:127.0.0.1")), Ok(ip("127.0.0.1")));
    // Tunnelled and translated forms go elsewhere first: opening loopback does not open them.
    for s in ["2002:7f00:1::1", "64:ff9b::7f00:1"] {
        assert!(airlock.check(ip(s)).is_err(), "{s}");
    }
    // Every other class stays shut.
    for &(s, class) in V4_REFUSED.iter().chain(V6_REFUSED) {
        if class != AddressClass::Loopback {
            assert!(airlock.check(ip(s)).is_err(), "{s}");
        }
    }
}

#[test]
fn ranges_parse_and_contain_by_prefix() {
    let r = |s: &str| s.parse::<IpRange>().unwrap_or_else(|e| panic!("{s}: {e}"));
    assert!(r("10.0.0.0/8").contains(ip("10.255.0.1")));
    assert!(!r("10.0.0.0/8").contains(ip("11.0.0.1")));
    assert!(r("172.16.0.0/12").contains(ip("172.31.0.1")));
    assert!(!r("172.16.0.0/12").contains(ip("172.32.0.1")));
    assert!(r("0.0.0.0/0").contains(ip("1.2.3.4")));
    assert!(!r("0.0.0.0/0").contains(ip("::1")));
    assert!(r("fd00::/8").contains(ip("fd12::1")));
    assert!(!r("fd00::/8").contains(ip("fe00::1")));
    assert!(r("::1").contains(ip("::1")));
    assert!(!r("::1").contains(ip("::2")));
    assert_eq!(r("10.0.0.0/8").to_string(), "10.0.0.0/8");
    for bad in [
        "10.0.0.0/33",
        "::/129",
        "10.0.0/8",
        "localhost",
        "10.0.0.0/x",
        "",
    ] {
        assert!(bad.parse::<IpRange>().is_err(), "{bad}");
    }
    assert!(IpRange::new(ip("10.0.0.0"), 33).is_none());
}

#[test]
fn names_are_resolved_once_and_every_answer_is_checked() {
    let resolver = StaticResolver::new()
        .with("public.test", &[ip("1.1.1.1"), ip("2606:4700::1")])
        .with("rebind.test", &[ip("1.1.1.1"), ip("127.0.0.1")])
        .with("metadata.test", &[ip("169.254.169.254")])
        .with("mapped.test", &[ip("::ffff:10.0.0.1")])
        .with("empty.test", &[]);
    let airlock = Airlock::closed();
    assert_eq!(
        airlock.admit("public.test", 443, &resolver),
        Ok(vec![
            "1.1.1.1:443".parse().unwrap_or_else(|e| panic!("{e}")),
            "[2606:4700::1]:443"
                .parse()
                .unwrap_or_else(|e| panic!("{e}"))
        ])
    );
    for (host, class) in [
        ("rebind.test", AddressClass::Loopback),
        ("metadata.test", AddressClass::LinkLocal),
        ("mapped.test", AddressClass::Private),
    ] {
        match airlock.admit(host, 80, &resolver) {
            Err(AirlockError::Refused { host: h, refusal }) => {
                assert_eq!((h.as_str(), refusal.class), (host, class));
            }
            other => panic!("{host}: {other:?}"),
        }
    }
    assert!(matches!(
        airlock.admit("empty.test", 80, &resolver),
        Err(AirlockError::Resolve(ResolveError::NotFound(_)))
    ));
    assert!(matches!(
        airlock.admit("nowhere.test", 80, &resolver),
        Err(AirlockError::Resolve(ResolveError::NotFound(_)))
    ));
    // Literals are never looked up; brackets are accepted for IPv6.
    assert!(airlock.admit("[::1]", 80, &resolver).is_err());
    assert!(airlock.admit("10.0.0.1", 80, &resolver).is_err());
    assert_eq!(
        airlock.admit("[2606:4700::1]", 80, &resolver),
        Ok(vec![
            "[2606:4700::1]:80"
                .parse()
                .unwrap_or_else(|e| panic!("{e}"))
        ])
    );
    let opened = Airlock::with_open(vec![
        "127.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}")),
    ]);
    assert_eq!(
        opened.admit("rebind.test", 80, &resolver),
        Ok(vec![
            "1.1.1.1:80".parse().unwrap_or_else(|e| panic!("{e}")),
            "127.0.0.1:80".parse().unwrap_or_else(|e| panic!("{e}"))
        ])
    );
}

#[test]
fn refusals_name_the_address_class_and_form() {
    let r = classify(ip("::ffff:169.254.169.254")).unwrap_or_else(|| panic!("passed"));
    assert_eq!(
        r.to_string(),
        "::ffff:169.254.169.254 carries a link-local IPv4 address (ipv4-mapped form)"
    );
    let r = classify(ip("10.0.0.1")).unwrap_or_else(|| panic!("passed"));
    assert_eq!(r.to_string(), "10.0.0.1 is a private address");
}
