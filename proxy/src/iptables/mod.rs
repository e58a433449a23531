//! The iptables backend (`--backend iptables`): the behaviour of the nftables backend with
//! kube-proxy's iptables building blocks, programmed through `iptables-restore --noflush`.
//!
//! Every chain svcplane owns is named `SVCPLANE-…` and lives in the `nat` or `filter` table of
//! `iptables` (IPv4) or `ip6tables` (IPv6); the only rules outside them are one jump from each
//! built-in chain it needs ([`JUMPS`]), inserted first and never duplicated. Built-in chains and
//! chains of others are never flushed.
//!
//! Per Service port ([`render`]): `SVCPLANE-<hash>-SVC` (cluster-wide endpoints) and
//! `SVCPLANE-<hash>-SVL` (node-local ones) pick an endpoint with `-m statistic` rules that DNAT
//! directly ([`pick`]; ClientIP affinity first checks `-m recent` lists named after the
//! endpoints); `SVCPLANE-<hash>-EXT` takes external traffic (masquerade mark, the pod
//! short-circuit of `externalTrafficPolicy: Local`); `SVCPLANE-<hash>-FW` (nat and filter)
//! enforces `loadBalancerSourceRanges`. Hashes ([`port_chain_stem`]) cover namespace, name,
//! protocol and port name, so no object name reaches iptables unescaped. Unlike kube-proxy there is no chain per endpoint:
//! iptables-nft looks chain names up linearly, so loading time grows with the square of the
//! number of chains, and an endpoint's two actions (hairpin masquerade mark, DNAT) are joined by
//! a private mark bit instead ([`HAIRPIN_MARK`]).
//!
//! The rules that dispatch to those chains, one per frontend, sit in shared chains. kube-proxy
//! keeps each in one long chain walked rule by rule and rewritten on every sync; here each
//! [`Section`] is split into [`BUCKETS`] bucket chains. Frontend addresses go to the bucket of
//! their low six bits and the parent chain jumps by destination address (`-d 0.0.0.5/0.0.0.63`),
//! so a new connection walks at most [`BUCKETS`] parent rules plus one bucket — not every
//! Service; NodePorts go to a bucket by a hash of the Service. A sync rewrites only the buckets
//! of the Services that changed ([`plan`]): work proportional to the change, a fixed order, and
//! the same kernel state whether reached incrementally or by a full restore.
//!
//! A full restore is written in the order that keeps iptables-nft's chain bookkeeping linear
//! (`full`).
//!
//! [`exec`] runs `iptables-restore`/`ip6tables-restore` (`-w`, the xtables lock) and
//! `iptables-save`; [`engine`] is the sync engine (full restore first and after failures,
//! incremental restores after, a canary chain checked every verify period).

pub mod base;
pub mod engine;
pub mod exec;
mod full;
pub mod pick;
pub mod plan;
pub mod render;

use std::net::IpAddr;

use svcplane_common::model::{Family, ObjectKey};

/// Every chain svcplane owns starts with this.
pub const PREFIX: &str = "SVCPLANE-";

/// nat: the entry from PREROUTING and OUTPUT.
pub const SERVICES: &str = "SVCPLANE-SERVICES";
/// nat: NodePorts, reached from [`SERVICES`] for local destinations.
pub const NODEPORTS: &str = "SVCPLANE-NODEPORTS";
/// nat: masquerades marked traffic (from POSTROUTING).
pub const POSTROUTING: &str = "SVCPLANE-POSTROUTING";
/// nat: sets the masquerade mark.
pub const MARK_MASQ: &str = "SVCPLANE-MARK-MASQ";
/// nat: sets the masquerade mark unless the source is in `--cluster-cidr`.
pub const MARK_NOT_POD: &str = "SVCPLANE-MARK-NOT-POD";
/// filter: from INPUT, FORWARD and OUTPUT (new connections).
pub const INPUT: &str = "SVCPLANE-INPUT";
pub const FORWARD: &str = "SVCPLANE-FORWARD";
pub const OUTPUT: &str = "SVCPLANE-OUTPUT";
/// nat and filter: an unreferenced chain with one rule; missing or empty means someone flushed
/// or deleted svcplane's rules.
pub const CANARY: &str = "SVCPLANE-CANARY";

/// How many bucket chains each [`Section`] is split into (a power of two: address sections
/// take the low bits of the address).
pub const BUCKETS: u8 = 64;

/// The mark bit that carries "this packet's source is the endpoint just picked" from the rule
/// that picks an endpoint to the rule that DNATs to it (see [`pick`]); always set together with
/// the masquerade mark and cleared with it in [`POSTROUTING`]. Bits 14 and 15 are kube-proxy's,
/// 16–31 Calico's, Cilium's are below 0x1000.
pub const HAIRPIN_MARK: u32 = 0x2000;

/// The jump rules from built-in chains: (table, built-in chain, rule spec after the chain).
/// The filter chains see only new connections that were not DNATed: a DNATed packet is
/// addressed to an endpoint, never to a frontend or a ClusterIP, so they could not match it.
pub const JUMPS: [(Table, &str, &str); 6] = [
    (
        Table::Nat,
        "PREROUTING",
        "-m comment --comment svcplane -j SVCPLANE-SERVICES",
    ),
    (
        Table::Nat,
        "OUTPUT",
        "-m comment --comment svcplane -j SVCPLANE-SERVICES",
    ),
    (
        Table::Nat,
        "POSTROUTING",
        "-m comment --comment svcplane -j SVCPLANE-POSTROUTING",
    ),
    (
        Table::Filter,
        "INPUT",
        "-m conntrack --ctstate NEW -m conntrack ! --ctstate DNAT -m comment --comment svcplane -j SVCPLANE-INPUT",
    ),
    (
        Table::Filter,
        "FORWARD",
        "-m conntrack --ctstate NEW -m conntrack ! --ctstate DNAT -m comment --comment svcplane -j SVCPLANE-FORWARD",
    ),
    (
        Table::Filter,
        "OUTPUT",
        "-m conntrack --ctstate NEW -m conntrack ! --ctstate DNAT -m comment --comment svcplane -j SVCPLANE-OUTPUT",
    ),
];

/// The built-in chains of the tables svcplane uses.
pub const BUILTINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// A table svcplane writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Nat,
    Filter,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Nat, Table::Filter];

    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }
}

/// A shared chain holding one or more rules per frontend, split into bucket chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Section {
    /// nat: ClusterIP, external IP and load-balancer frontends → their chains.
    Services,
    /// nat: NodePorts → their chains.
    NodePorts,
    /// filter: load-balancer frontends with source ranges → their firewall chains.
    Firewall,
    /// filter: address frontends without backends: REJECT, or DROP under a Local policy.
    NoEndpoints,
    /// filter: NodePorts without backends.
    NodePortNoEndpoints,
    /// filter: every live ClusterIP within `--service-cidr` (ports without a frontend are
    /// rejected); entered only for destinations in the service CIDRs.
    ClusterIps,
    /// filter: live ClusterIPs outside every `--service-cidr` (all of them without one).
    OtherClusterIps,
}

impl Section {
    pub const ALL: [Section; 7] = [
        Section::Services,
        Section::NodePorts,
        Section::Firewall,
        Section::NoEndpoints,
        Section::NodePortNoEndpoints,
        Section::ClusterIps,
        Section::OtherClusterIps,
    ];

    pub fn table(self) -> Table {
        match self {
            Section::Services | Section::NodePorts => Table::Nat,
            _ => Table::Filter,
        }
    }

    /// The fixed chain that jumps to the section's buckets.
    pub fn parent(self) -> &'static str {
        match self {
            Section::Services => SERVICES,
            Section::NodePorts => NODEPORTS,
            Section::Firewall => "SVCPLANE-FIREWALL",
            Section::NoEndpoints => "SVCPLANE-NO-ENDPOINTS",
            Section::NodePortNoEndpoints => "SVCPLANE-NP-NO-ENDPOINTS",
            Section::ClusterIps => "SVCPLANE-CLUSTER-IPS",
            Section::OtherClusterIps => "SVCPLANE-OTHER-CLUSTER-IPS",
        }
    }

    /// Whether the section dispatches by destination address ([`address_bucket`]) rather than
    /// by Service ([`bucket_of`]).
    pub fn by_address(self) -> bool {
        !matches!(self, Section::NodePorts | Section::NodePortNoEndpoints)
    }

    /// The name of bucket `b`.
    pub fn bucket(self, b: u8) -> String {
        let prefix = match self {
            Section::Services => "SVCPLANE-SVCS-",
            Section::NodePorts => "SVCPLANE-NPS-",
            Section::Firewall => "SVCPLANE-FWS-",
            Section::NoEndpoints => "SVCPLANE-NOEP-",
            Section::NodePortNoEndpoints => "SVCPLANE-NPNOEP-",
            Section::ClusterIps => "SVCPLANE-CIPS-",
            Section::OtherClusterIps => "SVCPLANE-OCIPS-",
        };
        format!("{prefix}{b:02X}")
    }
}

/// The bucket of a frontend address: its low bits.
pub fn address_bucket(ip: &IpAddr) -> u8 {
    let last = match ip {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(v6) => v6.octets()[15],
    };
    last % BUCKETS
}

/// The destination match of an address bucket's jump: the low bits equal `b`.
pub fn address_bucket_match(family: Family, b: u8) -> String {
    let mask = BUCKETS - 1;
    match family {
        Family::V4 => format!("-d 0.0.0.{b}/0.0.0.{mask}"),
        Family::V6 => format!("-d ::{b:x}/::{mask:x}"),
    }
}

/// The bucket of a Service in the sections that do not dispatch by address.
pub fn bucket_of(key: &ObjectKey) -> u8 {
    let h = fnv128(&format!("{}/{}", key.namespace, key.name));
    ((h >> 120) as u8) % BUCKETS
}

/// Where a Service goes in a full restore and in its buckets ([`plan`]): 44 bits of a hash of
/// its key, also the first 11 letters of its chains' names ([`port_chain_stem`]).
pub fn service_order(key: &ObjectKey) -> u64 {
    (fnv128(&format!("{}/{}", key.namespace, key.name)) >> 84) as u64
}

/// The stem of a Service port's chain names (`SVCPLANE-` and 15 letters `a`–`p`: the Service's
/// [`service_order`], then 16 bits of a hash of `port_text`); a suffix (`-SVC`, `-EXT`…) names
/// each chain within 28 characters. The letters sort after every fixed and bucket chain name and
/// in the order of the Service, so the chains of one Service sort together: what keeps
/// iptables-nft's sorted chain list cheap ([`plan`]).
pub fn port_chain_stem(key: &ObjectKey, port_text: &str) -> String {
    let port = (fnv128(port_text) >> 112) as u64;
    format!(
        "{PREFIX}{}{}",
        letters(service_order(key), 11),
        letters(port, 4)
    )
}

/// The low `n` nibbles of `value` as letters `a`–`p`, most significant first.
fn letters(value: u64, n: u32) -> String {
    (0..n)
        .rev()
        .map(|i| char::from(b'a' + ((value >> (4 * i)) & 15) as u8))
        .collect()
}

/// 15 base32 characters (75 bits) of a hash of `text` (the names of `-m recent` lists).
pub fn chain_hash(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let h = fnv128(text);
    (0..15)
        .map(|i| char::from(ALPHABET[((h >> (123 - 5 * i)) & 31) as usize]))
        .collect()
}

/// FNV-1a, 128 bits, with a bijective finalizer: FNV alone leaves the last bytes' differences
/// out of the top bits, which names and buckets are taken from.
fn fnv128(text: &str) -> u128 {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in text.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    let (mut hi, mut lo) = ((h >> 64) as u64, h as u64);
    lo = fmix64(lo);
    hi = fmix64(hi ^ lo);
    lo = fmix64(lo ^ hi);
    (u128::from(hi) << 64) | u128::from(lo)
}

/// MurmurHash3's 64-bit finalizer (a bijection that spreads every input bit).
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The tools of one family.
pub fn tools(family: Family) -> (&'static str, &'static str, &'static str) {
    match family {
        Family::V4 => ("iptables", "iptables-restore", "iptables-save"),
        Family::V6 => ("ip6tables", "ip6tables-restore", "ip6tables-save"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_fit_iptables() {
        let h = chain_hash("ns/name/tcp/http");
        assert_eq!(h.len(), 15);
        assert!(
            h.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        );
        assert_ne!(h, chain_hash("ns/name/udp/http"));
        assert!(format!("SVCPLANE-AFF-{h}").len() <= 28);
        let key = ObjectKey::new("ns", "name");
        let stem = port_chain_stem(&key, "ns/name/tcp/http");
        assert_eq!(format!("{stem}-SVC").len(), 28);
        assert!(stem[PREFIX.len()..].chars().all(|c| c.is_ascii_lowercase()));
        assert!(stem > format!("{PREFIX}SERVICES"));
        assert_eq!(
            stem[..20],
            port_chain_stem(&key, "ns/name/udp/dns")[..20],
            "one Service's chains sort together"
        );
        for s in Section::ALL {
            assert!(s.bucket(BUCKETS - 1).len() <= 28);
        }
    }

    #[test]
    fn address_buckets_take_the_low_bits() {
        let ip = |t: &str| t.parse::<IpAddr>().expect("ip");
        assert_eq!(address_bucket(&ip("10.96.1.69")), 5);
        assert_eq!(address_bucket(&ip("fd00::1:ff45")), 5);
        assert_eq!(address_bucket_match(Family::V4, 5), "-d 0.0.0.5/0.0.0.63");
        assert_eq!(address_bucket_match(Family::V6, 45), "-d ::2d/::3f");
    }

    #[test]
    fn buckets_spread() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..1000 {
            seen.insert(bucket_of(&ObjectKey::new("ns", &format!("svc-{i}"))));
        }
        assert_eq!(seen.len(), usize::from(BUCKETS));
    }
}
