//! The syntax rules of the API server's validation (names, label keys and values, port numbers
//! and names, IP addresses and CIDRs), each turning a bad value into a [`ConvertError`] that
//! names its field.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::ConvertError;
use crate::model::{Family, IpPrefix};

/// A naming rule of the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 label: Namespace names, port names, endpoint hostnames.
    Dns1123Label,
    /// RFC 1123 subdomain: EndpointSlice, Pod and Node names, `externalName`.
    Dns1123Subdomain,
    /// RFC 1035 label: Service names.
    Dns1035Label,
    /// IANA service name: named `targetPort`s.
    IanaSvcName,
}

impl NameRule {
    /// What the rule allows, for error messages.
    pub fn hint(self) -> &'static str {
        match self {
            NameRule::Dns1123Label => {
                "at most 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
            }
            NameRule::Dns1123Subdomain => {
                "at most 253 characters: dot-separated parts of a-z, 0-9 and '-', each starting and ending with a letter or digit"
            }
            NameRule::Dns1035Label => {
                "at most 63 characters of a-z, 0-9 and '-', starting with a letter and ending with a letter or digit"
            }
            NameRule::IanaSvcName => {
                "at most 15 characters of a-z, 0-9 and '-', with at least one letter and no leading, trailing or doubled '-'"
            }
        }
    }

    /// Whether `s` follows the rule.
    pub fn matches(self, s: &str) -> bool {
        match self {
            NameRule::Dns1123Label => is_dns1123_label(s),
            NameRule::Dns1123Subdomain => is_dns1123_subdomain(s),
            NameRule::Dns1035Label => {
                is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
            }
            NameRule::IanaSvcName => is_iana_svc_name(s),
        }
    }
}

impl fmt::Display for NameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameRule::Dns1123Label => "DNS-1123 label",
            NameRule::Dns1123Subdomain => "DNS-1123 subdomain",
            NameRule::Dns1035Label => "DNS-1035 label",
            NameRule::IanaSvcName => "IANA service name",
        })
    }
}

fn is_label_part(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => ok(first) && ok(last) && b.iter().all(|c| ok(c) || *c == b'-'),
        _ => false,
    }
}

fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_label_part(s)
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label_part)
}

fn is_iana_svc_name(s: &str) -> bool {
    s.len() <= 15
        && is_label_part(s)
        && s.bytes().any(|c| c.is_ascii_lowercase())
        && !s.contains("--")
}

/// Checks `value` against `rule`.
pub(crate) fn name(field: &str, value: &str, rule: NameRule) -> Result<(), ConvertError> {
    if rule.matches(value) {
        Ok(())
    } else {
        Err(ConvertError::InvalidName {
            field: field.into(),
            value: value.into(),
            rule,
        })
    }
}

/// A qualified-name part or label value: alphanumerics, `-`, `_`, `.`; alphanumeric at both ends.
fn is_label_token(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_alphanumeric();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            s.len() <= 63
                && ok(first)
                && ok(last)
                && b.iter().all(|c| ok(c) || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Checks one `metadata.labels` entry: the key a qualified name, the value a label value.
pub(crate) fn label(key: &str, value: &str) -> Result<(), ConvertError> {
    let key_ok = match key.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_label_token(name),
        None => is_label_token(key),
    };
    if !key_ok {
        return Err(ConvertError::forbidden(
            "metadata.labels",
            format!(
                "{key:?} is not a valid label key (an optional DNS-1123 subdomain and '/', then at most 63 characters of A-Z, a-z, 0-9, '-', '_', '.', alphanumeric at both ends)"
            ),
        ));
    }
    if !value.is_empty() && !is_label_token(value) {
        return Err(ConvertError::forbidden(
            format!("metadata.labels[{key}]"),
            format!(
                "{value:?} is not a valid label value (at most 63 characters of A-Z, a-z, 0-9, '-', '_', '.', alphanumeric at both ends)"
            ),
        ));
    }
    Ok(())
}

/// A port number (or node port) in 1..=65535.
pub(crate) fn port(field: &str, value: i32) -> Result<u16, ConvertError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| out_of_range(field, value.into(), 1, 65535))
}

pub(crate) fn out_of_range(field: &str, value: i64, min: i64, max: i64) -> ConvertError {
    ConvertError::OutOfRange {
        field: field.into(),
        value,
        min,
        max,
    }
}

/// Whether a dotted-quad part (an IPv4 address, or the tail of an IPv4-embedding IPv6 address)
/// has an octet with a leading zero.
fn has_leading_zero(s: &str) -> bool {
    let tail = s.rsplit(':').next().unwrap_or(s);
    tail.contains('.')
        && tail
            .split('.')
            .any(|o| o.len() > 1 && o.starts_with('0') && o.bytes().all(|c| c.is_ascii_digit()))
}

/// Parses an IP address strictly: no leading zeros, no zones, no surrounding spaces.
pub(crate) fn ip(field: &str, value: &str) -> Result<IpAddr, ConvertError> {
    if has_leading_zero(value) {
        return Err(ConvertError::LeadingZero {
            field: field.into(),
            value: value.into(),
        });
    }
    value.parse().map_err(|_| ConvertError::InvalidIp {
        field: field.into(),
        value: value.into(),
        expected: "a valid IP address",
    })
}

/// Parses an IP address of one family strictly.
pub(crate) fn ip_of(field: &str, value: &str, family: Family) -> Result<IpAddr, ConvertError> {
    let parsed = ip(field, value)?;
    if Family::of(&parsed) == family {
        Ok(parsed)
    } else {
        Err(ConvertError::InvalidIp {
            field: field.into(),
            value: value.into(),
            expected: match family {
                Family::V4 => "an IPv4 address",
                Family::V6 => "an IPv6 address",
            },
        })
    }
}

/// Rejects the addresses the API server refuses for endpoints and external IPs.
pub(crate) fn non_special(field: &str, value: &str, addr: IpAddr) -> Result<(), ConvertError> {
    let canonical = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    let what = match canonical {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    };
    match what {
        None => Ok(()),
        Some(what) => Err(ConvertError::SpecialIp {
            field: field.into(),
            value: value.into(),
            what,
        }),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_unspecified() {
        Some("unspecified (0.0.0.0)")
    } else if ip.is_loopback() {
        Some("in the loopback range (127.0.0.0/8)")
    } else if ip.is_link_local() {
        Some("in the link-local range (169.254.0.0/16)")
    } else if o[0] == 224 && o[1] == 0 && o[2] == 0 {
        Some("in the link-local multicast range (224.0.0.0/24)")
    } else {
        None
    }
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_unspecified() {
        Some("unspecified (::)")
    } else if ip.is_loopback() {
        Some("the loopback address (::1)")
    } else if first & 0xffc0 == 0xfe80 {
        Some("in the link-local range (fe80::/10)")
    } else if first & 0xff0f == 0xff02 {
        Some("in the link-local multicast range (ff02::/16)")
    } else {
        None
    }
}

/// Parses a CIDR strictly (`10.0.0.0/8`); host bits are cleared, as Go's `ParseCIDR` does.
pub(crate) fn cidr(field: &str, value: &str) -> Result<IpPrefix, ConvertError> {
    let bad = |reason| ConvertError::InvalidCidr {
        field: field.into(),
        value: value.into(),
        reason,
    };
    let (addr, len) = value.split_once('/').ok_or_else(|| bad("no '/'"))?;
    let addr = ip(field, addr).map_err(|e| match e {
        ConvertError::LeadingZero { .. } => ConvertError::LeadingZero {
            field: field.into(),
            value: value.into(),
        },
        _ => bad("the address is not a valid IP address"),
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let canonical = !len.is_empty()
        && len.len() <= 3
        && len.bytes().all(|c| c.is_ascii_digit())
        && (len == "0" || !len.starts_with('0'));
    let len: u8 = match len.parse() {
        Ok(n) if canonical && n <= max => n,
        _ => return Err(bad("the prefix length is not a number in range")),
    };
    Ok(IpPrefix {
        addr: mask(addr, len),
        len,
    })
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & bits))
        }
        IpAddr::V6(v6) => {
            let bits = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & bits))
        }
    }
}

/// Checks a dual-stack list (cluster IPs, pod IPs, pod CIDRs): at most two, of different families.
pub(crate) fn dual_stack(field: &str, families: &[Family]) -> Result<(), ConvertError> {
    if families.len() > 2 {
        return Err(ConvertError::forbidden(
            field,
            "at most two entries, one per IP family",
        ));
    }
    if let [a, b] = families
        && a == b
    {
        return Err(ConvertError::forbidden(
            format!("{field}[1]"),
            "must be of a different IP family than the first entry",
        ));
    }
    Ok(())
}
