//! Domain names as svcplane-dns handles them: lower-cased, uncompressed wire format.
//!
//! Every name the server compares or stores is kept in wire format (`\x05redis\x04prod\x03svc…\x00`)
//! and lower-cased once, so that lookups are byte comparisons and encoding is a copy. [`QName`]
//! adds the label offsets of a query name so the resolver can walk it from the right, and the
//! helpers here build the names Kubernetes DNS defines (dashed IPs, reverse names).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// RFC 1035 §2.3.4: labels are 63 octets or less, names 255 octets or less.
pub const MAX_LABEL: usize = 63;
pub const MAX_NAME: usize = 255;

/// Errors building a name from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A label was empty or longer than 63 octets.
    #[error("bad label in {0:?}")]
    Label(String),
    /// The whole name is longer than 255 octets in wire format.
    #[error("name {0:?} is longer than 255 octets")]
    TooLong(String),
}

/// A lower-cased, uncompressed wire-format name, cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(Arc<[u8]>);

impl Name {
    /// The root name.
    pub fn root() -> Name {
        Name(Arc::from(&b"\0"[..]))
    }

    /// Parses dotted text (`redis.prod.svc.cluster.local`, trailing dot optional).
    pub fn from_dotted(text: &str) -> Result<Name, NameError> {
        let trimmed = text.strip_suffix('.').unwrap_or(text);
        let mut wire = Vec::with_capacity(trimmed.len() + 2);
        if !trimmed.is_empty() {
            for label in trimmed.split('.') {
                push_label(&mut wire, label.as_bytes())
                    .map_err(|_| NameError::Label(text.into()))?;
            }
        }
        wire.push(0);
        if wire.len() > MAX_NAME {
            return Err(NameError::TooLong(text.into()));
        }
        Ok(Name(wire.into()))
    }

    /// `label` + `.` + `parent` (label lower-cased).
    pub fn child(&self, label: &[u8]) -> Result<Name, NameError> {
        let mut wire = Vec::with_capacity(label.len() + 1 + self.0.len());
        push_label(&mut wire, label)
            .map_err(|_| NameError::Label(String::from_utf8_lossy(label).into()))?;
        wire.extend_from_slice(&self.0);
        if wire.len() > MAX_NAME {
            return Err(NameError::TooLong(String::from_utf8_lossy(label).into()));
        }
        Ok(Name(wire.into()))
    }

    /// Wraps wire bytes that are already lower-cased and well formed.
    pub fn from_wire_lower(wire: &[u8]) -> Name {
        Name(Arc::from(wire))
    }

    pub fn wire(&self) -> &[u8] {
        &self.0
    }

    /// Dotted text with a trailing dot.
    pub fn to_dotted(&self) -> String {
        to_dotted(&self.0)
    }
}

fn push_label(wire: &mut Vec<u8>, label: &[u8]) -> Result<(), ()> {
    if label.is_empty() || label.len() > MAX_LABEL {
        return Err(());
    }
    wire.push(label.len() as u8);
    wire.extend(label.iter().map(u8::to_ascii_lowercase));
    Ok(())
}

/// Dotted text of a wire name (with a trailing dot; `.` for the root).
pub fn to_dotted(wire: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while let Some(&len) = wire.get(i) {
        if len == 0 {
            break;
        }
        let end = (i + 1 + len as usize).min(wire.len());
        out.push_str(&String::from_utf8_lossy(&wire[i + 1..end]));
        out.push('.');
        i = end;
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// A query name (lower-cased wire format) with the offsets of its labels.
#[derive(Debug, Clone)]
pub struct QName {
    wire: [u8; MAX_NAME],
    len: usize,
    starts: [u8; 128],
    count: usize,
}

impl QName {
    /// Builds from uncompressed wire bytes (must end with the root label and be ≤ 255 octets);
    /// returns None for anything malformed.
    pub fn parse(raw: &[u8]) -> Option<QName> {
        let mut q = QName {
            wire: [0; MAX_NAME],
            len: 0,
            starts: [0; 128],
            count: 0,
        };
        let mut i = 0;
        loop {
            let len = *raw.get(i)? as usize;
            if len == 0 {
                break;
            }
            if len > MAX_LABEL || i + 1 + len >= raw.len().min(MAX_NAME) || q.count >= 127 {
                return None;
            }
            q.starts[q.count] = i as u8;
            q.count += 1;
            q.wire[i] = len as u8;
            for k in 0..len {
                q.wire[i + 1 + k] = raw[i + 1 + k].to_ascii_lowercase();
            }
            i += 1 + len;
        }
        q.wire[i] = 0;
        q.len = i + 1;
        Some(q)
    }

    /// The whole lower-cased name in wire format.
    pub fn wire(&self) -> &[u8] {
        &self.wire[..self.len]
    }

    /// Number of labels (the root counts none).
    pub fn label_count(&self) -> usize {
        self.count
    }

    /// The `i`-th label from the left.
    pub fn label(&self, i: usize) -> &[u8] {
        let start = self.starts[i] as usize;
        let len = self.wire[start] as usize;
        &self.wire[start + 1..start + 1 + len]
    }

    /// The `i`-th label from the right (0 is the last label before the root).
    pub fn rlabel(&self, i: usize) -> &[u8] {
        self.label(self.count - 1 - i)
    }

    /// Whether the name equals `zone` or lies below it; returns the number of labels above it.
    pub fn under(&self, zone: &Name) -> Option<usize> {
        let z = zone.wire();
        if z.len() > self.len {
            return None;
        }
        let offset = self.len - z.len();
        let aligned = offset == 0 || self.starts[..self.count].contains(&(offset as u8));
        (aligned && &self.wire[offset..self.len] == z).then(|| {
            self.starts[..self.count]
                .iter()
                .filter(|s| (**s as usize) < offset)
                .count()
        })
    }

    /// The name made of labels `i..` (from the left), as wire bytes.
    pub fn suffix(&self, i: usize) -> &[u8] {
        if i >= self.count {
            return &self.wire[self.len - 1..self.len];
        }
        &self.wire[self.starts[i] as usize..self.len]
    }
}

/// The system-assigned endpoint label CoreDNS uses: the address with `.`/`:` replaced by `-`.
pub fn dashed(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// Parses a dashed label (`10-1-2-3`, `2001-db8--1`) back into an address.
pub fn parse_dashed(label: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(label).ok()?;
    let dots = text.replace('-', ".");
    if let Ok(v4) = dots.parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    text.replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// Parses a full reverse name (`4.3.2.1.in-addr.arpa`, 32 nibbles `.ip6.arpa`).
pub fn parse_reverse(q: &QName) -> Option<IpAddr> {
    let n = q.label_count();
    if n == 6 && q.rlabel(0) == b"arpa" && q.rlabel(1) == b"in-addr" {
        let mut octets = [0u8; 4];
        for (i, octet) in octets.iter_mut().enumerate() {
            let text = std::str::from_utf8(q.rlabel(2 + i)).ok()?;
            if text.len() > 1 && text.starts_with('0') {
                return None;
            }
            *octet = text.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    if n == 34 && q.rlabel(0) == b"arpa" && q.rlabel(1) == b"ip6" {
        let mut bits: u128 = 0;
        for i in 0..32 {
            let label = q.rlabel(2 + i);
            let [c] = label else { return None };
            let nibble = (*c as char).to_digit(16)?;
            bits = (bits << 4) | u128::from(nibble);
        }
        return Some(IpAddr::V6(Ipv6Addr::from(bits)));
    }
    None
}

/// Whether a name is inside the reverse trees (`in-addr.arpa`, `ip6.arpa`).
pub fn is_reverse(q: &QName) -> bool {
    let n = q.label_count();
    n >= 2 && q.rlabel(0) == b"arpa" && (q.rlabel(1) == b"in-addr" || q.rlabel(1) == b"ip6")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> QName {
        let name = Name::from_dotted(text).expect("name");
        QName::parse(name.wire()).expect("qname")
    }

    #[test]
    fn qname_lowercases_and_walks_from_the_right() {
        let raw = b"\x05Redis\x04PROD\x03svc\x07cluster\x05local\x00";
        let name = QName::parse(raw).expect("parse");
        assert_eq!(name.label_count(), 5);
        assert_eq!(name.rlabel(0), b"local");
        assert_eq!(name.rlabel(4), b"redis");
        let zone = Name::from_dotted("cluster.local").expect("zone");
        assert_eq!(name.under(&zone), Some(3));
        assert_eq!(q("cluster.local").under(&zone), Some(0));
        assert_eq!(q("xcluster.local").under(&zone), None);
        assert_eq!(q("local").under(&zone), None);
    }

    #[test]
    fn qname_rejects_malformed_names() {
        assert!(QName::parse(b"\x05abc").is_none());
        assert!(QName::parse(b"\x40aaaa").is_none());
        assert!(QName::parse(b"\xc0\x0c").is_none());
        assert!(QName::parse(&[]).is_none());
        let long: Vec<u8> = std::iter::repeat_n(b"\x01a".to_vec(), 130)
            .flatten()
            .chain([0])
            .collect();
        assert!(QName::parse(&long).is_none());
    }

    #[test]
    fn dashed_round_trips() {
        for ip in ["10.1.2.3", "2001:db8::1", "::1"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(parse_dashed(dashed(&ip).as_bytes()), Some(ip));
        }
        assert_eq!(parse_dashed(b"010-1-2-3"), None);
        assert_eq!(parse_dashed(b"web"), None);
    }

    #[test]
    fn reverse_names_parse() {
        assert_eq!(
            parse_reverse(&q("4.3.2.10.in-addr.arpa")),
            Some("10.2.3.4".parse().expect("ip"))
        );
        assert_eq!(parse_reverse(&q("3.2.10.in-addr.arpa")), None);
        assert_eq!(parse_reverse(&q("04.3.2.10.in-addr.arpa")), None);
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa";
        assert_eq!(
            parse_reverse(&q(v6)),
            Some("2001:db8::1".parse().expect("ip"))
        );
        assert!(is_reverse(&q("10.in-addr.arpa")));
    }
}
