//! The syntax rules on their own.

use std::net::IpAddr;

use crate::convert::ConvertError;
use crate::convert::validate::{self, NameRule};
use crate::model::{Family, IpPrefix};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

#[test]
fn dns1123_label() {
    let rule = NameRule::Dns1123Label;
    for good in ["a", "a-b", "0abc", "abc9", &"a".repeat(63)] {
        assert!(rule.matches(good), "{good}");
    }
    for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
        assert!(!rule.matches(bad), "{bad}");
    }
}

#[test]
fn dns1123_subdomain() {
    let rule = NameRule::Dns1123Subdomain;
    for good in [
        "a",
        "a.b",
        "web-1.x-2",
        &"a".repeat(70),
        "a.".repeat(126).trim_end_matches('.'),
    ] {
        assert!(rule.matches(good), "{good}");
    }
    for bad in ["", "a..b", ".a", "a.", "A.b", "a_b", &"a".repeat(254)] {
        assert!(!rule.matches(bad), "{bad}");
    }
}

#[test]
fn dns1035_label() {
    let rule = NameRule::Dns1035Label;
    assert!(rule.matches("web-app"));
    assert!(!rule.matches("1web"));
    assert!(!rule.matches("Web_App"));
    assert!(!rule.matches(&"a".repeat(64)));
}

#[test]
fn iana_svc_name() {
    let rule = NameRule::IanaSvcName;
    for good in ["http", "h2c", "web-1", "a234567890abcde"] {
        assert!(rule.matches(good), "{good}");
    }
    for bad in [
        "",
        "8080",
        "-http",
        "http-",
        "ht--tp",
        "HTTP",
        "a234567890abcdef",
        "h_p",
    ] {
        assert!(!rule.matches(bad), "{bad}");
    }
}

#[test]
fn labels() {
    assert!(validate::label("app", "web").is_ok());
    assert!(validate::label("app.kubernetes.io/name", "My_App.v1").is_ok());
    assert!(validate::label("k", "").is_ok());
    assert!(validate::label("bad key", "v").is_err());
    assert!(validate::label("Bad_Prefix/name", "v").is_err());
    assert!(validate::label("k", "-v").is_err());
    assert!(validate::label("k", &"v".repeat(64)).is_err());
}

#[test]
fn ports() {
    assert_eq!(validate::port("f", 1), Ok(1));
    assert_eq!(validate::port("f", 65535), Ok(65535));
    for bad in [0, -1, 65536, i32::MAX, i32::MIN] {
        let e = validate::port("f", bad).map_err(|e| e.to_string());
        assert_eq!(e, Err(format!("f: {bad} is not in 1..=65535")));
    }
}

#[test]
fn ips_are_strict() {
    assert_eq!(validate::ip("f", "10.0.0.1"), Ok(ip("10.0.0.1")));
    assert_eq!(validate::ip("f", "fd00::1"), Ok(ip("fd00::1")));
    assert_eq!(validate::ip("f", "0.0.0.0"), Ok(ip("0.0.0.0")));
    for lz in ["010.0.0.1", "10.0.0.01", "10.00.0.1", "::ffff:10.0.0.010"] {
        assert!(
            matches!(validate::ip("f", lz), Err(ConvertError::LeadingZero { .. })),
            "{lz}"
        );
    }
    for bad in [
        "",
        " 10.0.0.1",
        "10.0.0.256",
        "10.0.0",
        "fe80::1%eth0",
        "host",
        "1.2.3.4/32",
    ] {
        assert!(
            matches!(validate::ip("f", bad), Err(ConvertError::InvalidIp { .. })),
            "{bad}"
        );
    }
}

#[test]
fn ip_families() {
    assert!(validate::ip_of("f", "10.0.0.1", Family::V4).is_ok());
    let e = validate::ip_of("f", "fd00::1", Family::V4).map_err(|e| e.to_string());
    assert_eq!(e, Err("f: \"fd00::1\" is not an IPv4 address".into()));
    let e = validate::ip_of("f", "10.0.0.1", Family::V6).map_err(|e| e.to_string());
    assert_eq!(e, Err("f: \"10.0.0.1\" is not an IPv6 address".into()));
}

#[test]
fn special_ips() {
    for bad in [
        "0.0.0.0",
        "127.0.0.1",
        "169.254.1.1",
        "224.0.0.5",
        "::",
        "::1",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
    ] {
        assert!(validate::non_special("f", bad, ip(bad)).is_err(), "{bad}");
    }
    for good in [
        "10.0.0.1",
        "192.0.2.1",
        "224.0.1.1",
        "fd00::1",
        "2001:db8::1",
    ] {
        assert!(validate::non_special("f", good, ip(good)).is_ok(), "{good}");
    }
}

#[test]
fn cidrs() {
    let p = |a: &str, len| Ok(IpPrefix { addr: ip(a), len });
    assert_eq!(validate::cidr("f", "10.0.0.0/8"), p("10.0.0.0", 8));
    assert_eq!(validate::cidr("f", "192.168.1.7/24"), p("192.168.1.0", 24));
    assert_eq!(validate::cidr("f", "0.0.0.0/0"), p("0.0.0.0", 0));
    assert_eq!(validate::cidr("f", "10.1.2.3/32"), p("10.1.2.3", 32));
    assert_eq!(validate::cidr("f", "fd00::1/64"), p("fd00::", 64));
    assert_eq!(validate::cidr("f", "::/0"), p("::", 0));
    for bad in [
        "10.0.0.0",
        "10.0.0.0/33",
        "fd00::/129",
        "10.0.0.0/",
        "10.0.0.0/08",
        "10.0.0.0/+8",
        "x/8",
        "/8",
    ] {
        assert!(
            matches!(
                validate::cidr("f", bad),
                Err(ConvertError::InvalidCidr { .. })
            ),
            "{bad}"
        );
    }
    let e = validate::cidr("f", "010.0.0.0/8").map_err(|e| e.to_string());
    assert_eq!(
        e,
        Err("f: \"010.0.0.0/8\" has a leading zero (CVE-2021-29923)".into())
    );
}

#[test]
fn dual_stack_lists() {
    assert!(validate::dual_stack("f", &[Family::V4, Family::V6]).is_ok());
    assert!(validate::dual_stack("f", &[Family::V6]).is_ok());
    let e = validate::dual_stack("f", &[Family::V4, Family::V4]).map_err(|e| e.to_string());
    assert_eq!(
        e,
        Err("f[1]: must be of a different IP family than the first entry".into())
    );
    assert!(validate::dual_stack("f", &[Family::V4, Family::V6, Family::V4]).is_err());
}
