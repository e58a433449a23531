//! The fixed chains of one family ([`Base`]): the entries from the built-in chains, the
//! masquerade chains, the canaries and each [`Section`]'s parent, which jumps to the section's
//! non-empty buckets — by destination address for the address sections, unconditionally for the
//! NodePort ones — and then holds what must follow every Service's rules.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use svcplane_common::model::{Family, IpPrefix};

use super::render::ChainKey;
use super::{
    CANARY, FORWARD, HAIRPIN_MARK, INPUT, MARK_MASQ, MARK_NOT_POD, NODEPORTS, OUTPUT, POSTROUTING,
    Section, Table, address_bucket_match,
};
use crate::desired::{MASQ_MARK, NodePortAddresses, ProxyConfig};

/// The node-wide settings as the rules of one family use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub family: Family,
    pub(super) cluster_cidrs: Vec<String>,
    service_cidrs: Vec<String>,
    service_prefixes: Vec<IpPrefix>,
    /// `-d PREFIX` of each `--nodeport-addresses` prefix, or one empty match for every local
    /// address; empty: no NodePorts in this family.
    nodeport_matches: Vec<String>,
    pub(super) masquerade_all: bool,
}

impl Base {
    pub fn new(config: &ProxyConfig, family: Family) -> Base {
        let nodeport_matches = match &config.nodeport_addresses {
            NodePortAddresses::All | NodePortAddresses::Primary => vec![String::new()],
            NodePortAddresses::Prefixes(p) => prefixes(p, family)
                .into_iter()
                .map(|p| format!("-d {p} "))
                .collect(),
        };
        Base {
            family,
            cluster_cidrs: prefixes(&config.cluster_cidrs, family),
            service_cidrs: prefixes(&config.service_cidrs, family),
            service_prefixes: config
                .service_cidrs
                .iter()
                .filter(|p| Family::of(&p.addr) == family)
                .copied()
                .collect(),
            nodeport_matches,
            masquerade_all: config.masquerade_all,
        }
    }

    /// `-j REJECT` with the family's ICMP port unreachable.
    pub fn reject(&self) -> &'static str {
        match self.family {
            Family::V4 => "-j REJECT --reject-with icmp-port-unreachable",
            Family::V6 => "-j REJECT --reject-with icmp6-port-unreachable",
        }
    }

    /// The section of a ClusterIP's reject rule: within the service CIDRs or not.
    pub(super) fn cluster_ip_section(&self, ip: &IpAddr) -> Section {
        if self.service_prefixes.iter().any(|p| contains(p, ip)) {
            Section::ClusterIps
        } else {
            Section::OtherClusterIps
        }
    }

    /// The chain ClusterIP traffic jumps to for its masquerade mark, if any.
    pub(super) fn cluster_ip_mark(&self) -> Option<&'static str> {
        if self.masquerade_all {
            Some(MARK_MASQ)
        } else if !self.cluster_cidrs.is_empty() {
            Some(MARK_NOT_POD)
        } else {
            None
        }
    }

    /// Every fixed chain with its rules, given the non-empty buckets of each section.
    pub fn chains(
        &self,
        buckets: &BTreeMap<Section, BTreeSet<u8>>,
    ) -> Vec<(ChainKey, Vec<String>)> {
        let none = BTreeSet::new();
        let mut out: Vec<(ChainKey, Vec<String>)> = Section::ALL
            .iter()
            .map(|&s| {
                let rules = self.parent(s, buckets.get(&s).unwrap_or(&none));
                ((s.table(), s.parent().to_string()), rules)
            })
            .collect();
        let mark = format!("{MASQ_MARK:#x}");
        let both = MASQ_MARK | HAIRPIN_MARK;
        let mut fixed = vec![
            (
                (Table::Nat, POSTROUTING),
                vec![
                    format!("-m mark ! --mark {mark}/{mark} -j RETURN"),
                    format!("-j MARK --set-xmark 0x0/{both:#x}"),
                    "-j MASQUERADE --random-fully".to_string(),
                ],
            ),
            (
                (Table::Nat, MARK_MASQ),
                vec![format!("-j MARK --or-mark {mark}")],
            ),
            ((Table::Filter, INPUT), self.filter_entry(true)),
            ((Table::Filter, FORWARD), self.filter_entry(false)),
            ((Table::Filter, OUTPUT), self.filter_entry(false)),
            ((Table::Nat, CANARY), vec!["-j RETURN".to_string()]),
            ((Table::Filter, CANARY), vec!["-j RETURN".to_string()]),
        ];
        if !self.masquerade_all && !self.cluster_cidrs.is_empty() {
            let mut rules: Vec<String> = self
                .cluster_cidrs
                .iter()
                .map(|c| format!("-s {c} -j RETURN"))
                .collect();
            rules.push(format!("-j {MARK_MASQ}"));
            fixed.push(((Table::Nat, MARK_NOT_POD), rules));
        }
        out.extend(
            fixed
                .into_iter()
                .map(|((t, name), rules)| ((t, name.to_string()), rules)),
        );
        out
    }

    /// The rules of a section's parent chain: a jump to each non-empty bucket, then what must
    /// come after every Service's rules.
    pub fn parent(&self, section: Section, buckets: &BTreeSet<u8>) -> Vec<String> {
        let mut rules: Vec<String> = buckets
            .iter()
            .map(|&b| {
                let chain = section.bucket(b);
                if section.by_address() {
                    format!("{} -j {chain}", address_bucket_match(self.family, b))
                } else {
                    format!("-j {chain}")
                }
            })
            .collect();
        match section {
            Section::Services => rules.extend(self.nodeport_jumps(NODEPORTS)),
            Section::ClusterIps => {
                rules.extend(self.service_cidrs.iter().map(|c| format!("-d {c} -j DROP")))
            }
            _ => {}
        }
        rules
    }

    /// Jumps to `target` for traffic to local addresses within `--nodeport-addresses`.
    fn nodeport_jumps(&self, target: &str) -> Vec<String> {
        self.nodeport_matches
            .iter()
            .map(|m| format!("{m}-m addrtype --dst-type LOCAL -j {target}"))
            .collect()
    }

    /// SVCPLANE-INPUT (`input`) or SVCPLANE-FORWARD/OUTPUT: the order of the nftables
    /// backend's filter chains.
    fn filter_entry(&self, input: bool) -> Vec<String> {
        let mut rules = vec![format!("-j {}", Section::Firewall.parent())];
        if input {
            rules.extend(self.nodeport_jumps(Section::NodePortNoEndpoints.parent()));
        }
        rules.push(format!("-j {}", Section::NoEndpoints.parent()));
        if !input {
            let cluster_ips = Section::ClusterIps.parent();
            rules.extend(
                self.service_cidrs
                    .iter()
                    .map(|c| format!("-d {c} -j {cluster_ips}")),
            );
            rules.push(format!("-j {}", Section::OtherClusterIps.parent()));
        }
        rules
    }
}

/// Whether `prefix` contains `ip`.
fn contains(prefix: &IpPrefix, ip: &IpAddr) -> bool {
    match (prefix.addr, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.len))
                .unwrap_or(0);
            u32::from(net) & mask == u32::from(*ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.len))
                .unwrap_or(0);
            u128::from(net) & mask == u128::from(*ip) & mask
        }
        _ => false,
    }
}

pub(super) fn prefixes(list: &[IpPrefix], family: Family) -> Vec<String> {
    list.iter()
        .filter(|p| Family::of(&p.addr) == family)
        .map(|p| format!("{}/{}", p.addr, p.len))
        .collect()
}

/// `ip/32` or `ip/128`.
pub(super) fn host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(text: &str) -> IpPrefix {
        svcplane_common::config::parse_prefix(text).expect("prefix")
    }

    #[test]
    fn prefix_containment() {
        let ip = |t: &str| t.parse::<IpAddr>().expect("ip");
        assert!(contains(&prefix("10.96.0.0/12"), &ip("10.111.255.1")));
        assert!(!contains(&prefix("10.96.0.0/12"), &ip("10.112.0.1")));
        assert!(contains(&prefix("0.0.0.0/0"), &ip("192.0.2.1")));
        assert!(contains(&prefix("fd00:96::/108"), &ip("fd00:96::1")));
        assert!(!contains(&prefix("fd00:96::/108"), &ip("10.96.0.1")));
    }

    #[test]
    fn parents_dispatch_address_sections_by_destination() {
        let config = ProxyConfig {
            node: crate::endpoints::NodeInfo::new("node-a", None),
            cluster_cidrs: vec![],
            service_cidrs: vec![prefix("10.96.0.0/16")],
            nodeport_addresses: NodePortAddresses::All,
            masquerade_all: false,
            proxy_name: None,
        };
        let base = Base::new(&config, Family::V4);
        let buckets: BTreeSet<u8> = [1, 63].into();
        assert_eq!(
            base.parent(Section::ClusterIps, &buckets),
            [
                "-d 0.0.0.1/0.0.0.63 -j SVCPLANE-CIPS-01",
                "-d 0.0.0.63/0.0.0.63 -j SVCPLANE-CIPS-3F",
                "-d 10.96.0.0/16 -j DROP"
            ]
        );
        assert_eq!(
            base.parent(Section::NodePorts, &buckets),
            ["-j SVCPLANE-NPS-01", "-j SVCPLANE-NPS-3F"]
        );
    }
}
