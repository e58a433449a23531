//! The iptables backend (`--backend iptables`): kube-proxy's iptables layout, with the same
//! behaviour as the nftables backend, programmed through `iptables-restore --noflush`.
//!
//! Every chain svcplane owns is named `SVCPLANE-…` and lives in the `nat` or `filter` table of
//! `iptables` (IPv4) or `ip6tables` (IPv6); the only rules outside them are one jump from each
//! built-in chain it needs ([`JUMPS`]), inserted first and never duplicated. Built-in chains and
//! chains of others are never flushed.
//!
//! Per Service port ([`render`]): `SVCPLANE-SVC-<hash>` (cluster-wide endpoints) and
//! `SVCPLANE-SVL-<hash>` (node-local ones) pick an endpoint with `-m statistic` rules (ClientIP
//! affinity first checks `-m recent` lists named after the endpoint chains);
//! `SVCPLANE-SEP-<hash>` DNATs to one endpoint, marking hairpin traffic; `SVCPLANE-EXT-<hash>`
//! takes external traffic (masquerade mark, the pod short-circuit of
//! `externalTrafficPolicy: Local`); `SVCPLANE-FW-<hash>` (nat and filter) enforces
//! `loadBalancerSourceRanges`. Hashes cover namespace, name, protocol and port name (and the
//! endpoint), so no object name reaches iptables unescaped.
//!
//! The rules that dispatch to those chains, one per frontend, sit in shared chains. kube-proxy
//! rewrites those in full on every sync; here each [`Section`] of them is split into up to
//! [`BUCKETS`] bucket chains by a hash of the Service's key, so a sync rewrites only the buckets
//! of the Services that changed ([`plan`]): work proportional to the change, a fixed order, and
//! the same kernel state whether reached incrementally or by a full restore.
//!
//! [`exec`] runs `iptables-restore`/`ip6tables-restore` (`-w`, the xtables lock) and
//! `iptables-save`; [`engine`] is the sync engine (full restore first and after failures,
//! incremental restores after, a canary chain checked every verify period).

pub mod engine;
pub mod exec;
pub mod plan;
pub mod render;

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

/// How many bucket chains each [`Section`] is split into.
pub const BUCKETS: u8 = 64;

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

/// The bucket of a Service (the same in every section).
pub fn bucket_of(key: &ObjectKey) -> u8 {
    let h = fnv128(&format!("{}/{}", key.namespace, key.name));
    ((h >> 120) as u8) % BUCKETS
}

/// 15 base32 characters (75 bits) of a hash of `text`: with the 13-character prefixes, chain
/// names stay within iptables' 28 characters.
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
        assert!(format!("SVCPLANE-SEP-{h}").len() <= 28);
        for s in Section::ALL {
            assert!(s.bucket(BUCKETS - 1).len() <= 28);
        }
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
