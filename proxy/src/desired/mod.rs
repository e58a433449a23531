//! The desired state: catalog → nftables ruleset, as a pure function.
//!
//! The layout keeps the packet path O(1) and the load cost proportional to map elements, not to
//! chains (kube-proxy's chain-per-Service layout is what makes its syncs take minutes at 30k
//! Services):
//!
//! - `services` (nat, reached from prerouting and output at dstnat) sets masquerade marks and
//!   dispatches with one verdict-map lookup on `daddr . l4proto . dport` (`fe`);
//!   `nodeports` does the same on `l4proto . dport` (`np`) for local node addresses.
//! - A frontend whose backends number N jumps to the shared chain `ep-nN`, whose single rule
//!   DNATs through the map `eps-nN` keyed by `daddr . l4proto . dport . numgen random mod N`:
//!   the random pick and the lookup are one rule whatever the number of Services. Pod-origin
//!   traffic to `externalTrafficPolicy: Local` frontends takes the `fe-pod`/`epx-nN` twins with
//!   the cluster-wide backends (kube-proxy's short-circuit). Only ClientIP-affinity frontends get
//!   chains of their own.
//! - Filter chains before DNAT drop traffic outside `loadBalancerSourceRanges`; filter chains at
//!   input/forward/output reject (ICMP port unreachable) Services without endpoints, reject
//!   unknown ports of live ClusterIPs and drop unallocated addresses of the service CIDRs.
//! - postrouting masquerades marked traffic and hairpin traffic (`saddr . daddr` in `hairpin`).
//!
//! [`base_table`] builds the fixed part for one family; [`service::contribution`] the elements,
//! chains and sets one Service adds. Both are pure and golden-tested.

pub mod service;

use std::net::IpAddr;

use svcplane_common::model::{Family, IpPrefix};

use crate::endpoints::NodeInfo;
use crate::ruleset::{BaseChain, Chain, NftFamily, Set, Table};

/// The mark bit that asks postrouting to masquerade (kube-proxy's 0x4000).
pub const MASQ_MARK: u32 = 0x4000;

/// Which local addresses accept NodePort traffic (`--nodeport-addresses`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// The node's own addresses from its Node object (`primary`, the default); every local
    /// address while the Node object is unknown.
    Primary,
    /// Every local address (`all`).
    All,
    /// These addresses or prefixes (the node's primary IPs by default).
    Prefixes(Vec<IpPrefix>),
}

/// Node-wide settings of the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub node: NodeInfo,
    pub cluster_cidrs: Vec<IpPrefix>,
    pub service_cidrs: Vec<IpPrefix>,
    pub nodeport_addresses: NodePortAddresses,
    pub masquerade_all: bool,
    /// `--service-proxy-name`: handle only Services labelled
    /// `service.kubernetes.io/service-proxy-name` with this value (None: only unlabelled ones,
    /// as kube-proxy).
    pub proxy_name: Option<String>,
}

impl ProxyConfig {
    /// The settings for one catalog state: the node's zone and primary addresses come from its
    /// Node object when the catalog has it.
    pub fn resolve(&self, snapshot: &svcplane_common::catalog::Snapshot) -> ProxyConfig {
        let mut config = self.clone();
        if let Some(node) = snapshot.nodes.get(&self.node.name) {
            config.node.zone = node.zone.clone();
            if config.nodeport_addresses == NodePortAddresses::Primary && !node.addresses.is_empty()
            {
                let prefixes = node
                    .addresses
                    .iter()
                    .map(|ip| IpPrefix {
                        addr: *ip,
                        len: if ip.is_ipv4() { 32 } else { 128 },
                    })
                    .collect();
                config.nodeport_addresses = NodePortAddresses::Prefixes(prefixes);
            }
        }
        config
    }

    fn prefixes(list: &[IpPrefix], family: Family) -> Vec<String> {
        list.iter()
            .filter(|p| Family::of(&p.addr) == family)
            .map(|p| format!("{}/{}", p.addr, p.len))
            .collect()
    }
}

/// The model family of an nft family.
pub fn model_family(f: NftFamily) -> Family {
    match f {
        NftFamily::Ip => Family::V4,
        NftFamily::Ip6 => Family::V6,
    }
}

fn base(kind: &'static str, hook: &'static str, priority: i32, rules: &[String]) -> Chain {
    Chain {
        base: Some(BaseChain {
            kind,
            hook,
            priority,
        }),
        rules: rules.to_vec(),
    }
}

fn chain(rules: Vec<String>) -> Chain {
    Chain { base: None, rules }
}

/// The fixed chains and sets of one family, with the node-wide sets filled in.
pub fn base_table(config: &ProxyConfig, f: NftFamily) -> Table {
    let mut t = Table::new(f);
    declare_sets(&mut t, config, f);
    let l3 = f.l3();
    let fe_key = format!("{l3} daddr . meta l4proto . th dport");
    let np_key = "meta l4proto . th dport";
    let mark = format!("meta mark set meta mark | {MASQ_MARK:#x}");
    let has_cluster_cidrs = !t.sets["cluster-cidrs"].elements.is_empty();

    let mut services = Vec::new();
    if config.masquerade_all {
        services.push(format!("{l3} daddr @cluster-ips {mark}"));
    } else if has_cluster_cidrs {
        services.push(format!(
            "{l3} daddr @cluster-ips {l3} saddr != @cluster-cidrs {mark}"
        ));
    }
    services.push(format!("{fe_key} @masq-fe {mark}"));
    services.push(format!("fib saddr type local {fe_key} @local-fe {mark}"));
    if has_cluster_cidrs {
        services.push(format!("{l3} saddr @cluster-cidrs {fe_key} vmap @fe-pod"));
    }
    services.push(format!("{fe_key} vmap @fe"));
    services.push(format!("{} jump nodeports", nodeport_match(config, f)));

    let mut nodeports = vec![
        format!("{np_key} @masq-np {mark}"),
        format!("fib saddr type local {np_key} @local-np {mark}"),
    ];
    if has_cluster_cidrs {
        nodeports.push(format!("{l3} saddr @cluster-cidrs {np_key} vmap @np-pod"));
    }
    nodeports.push(format!("{np_key} vmap @np"));

    let chains = [
        ("services", chain(services)),
        ("nodeports", chain(nodeports)),
        (
            "nat-prerouting",
            base("nat", "prerouting", -100, &["jump services".into()]),
        ),
        (
            "nat-output",
            base("nat", "output", -100, &["jump services".into()]),
        ),
        (
            "nat-postrouting",
            base("nat", "postrouting", 100, &["jump masquerading".into()]),
        ),
        ("masquerading", chain(masquerading(f))),
        (
            "filter-prerouting-pre-dnat",
            base(
                "filter",
                "prerouting",
                -110,
                &["jump firewall-check".into()],
            ),
        ),
        (
            "filter-output-pre-dnat",
            base("filter", "output", -110, &["jump firewall-check".into()]),
        ),
        (
            "firewall-check",
            chain(vec![format!(
                "{fe_key} @fw {fe_key} . {l3} saddr != @fw-allow drop"
            )]),
        ),
        (
            "filter-input",
            base(
                "filter",
                "input",
                -1,
                &checks(&["nodeport-endpoints-check", "service-endpoints-check"]),
            ),
        ),
        (
            "filter-forward",
            base(
                "filter",
                "forward",
                -1,
                &checks(&["service-endpoints-check", "cluster-ips-check"]),
            ),
        ),
        (
            "filter-output",
            base(
                "filter",
                "output",
                -1,
                &checks(&["service-endpoints-check", "cluster-ips-check"]),
            ),
        ),
        (
            "service-endpoints-check",
            chain(vec![format!("{fe_key} vmap @no-endpoints")]),
        ),
        (
            "nodeport-endpoints-check",
            chain(vec![format!(
                "{} {np_key} vmap @no-endpoints-np",
                nodeport_match(config, f)
            )]),
        ),
        (
            "cluster-ips-check",
            chain(vec![
                format!("{l3} daddr @cluster-ips {}", f.reject()),
                format!("{l3} daddr @service-cidrs drop"),
            ]),
        ),
        ("reject-chain", chain(vec![f.reject().to_string()])),
    ];
    for (name, c) in chains {
        t.chains.insert(name.to_string(), c);
    }
    t
}

fn checks(targets: &[&str]) -> Vec<String> {
    targets
        .iter()
        .map(|t| format!("ct state new jump {t}"))
        .collect()
}

/// kube-proxy's masquerading chain: hairpin traffic (an endpoint reaching itself through its
/// Service) and marked traffic leave with the node's address.
fn masquerading(f: NftFamily) -> Vec<String> {
    let l3 = f.l3();
    vec![
        format!("ct status dnat {l3} saddr . {l3} daddr @hairpin masquerade fully-random"),
        format!("meta mark & {MASQ_MARK:#x} == 0 return"),
        format!("meta mark set meta mark ^ {MASQ_MARK:#x}"),
        "masquerade fully-random".to_string(),
    ]
}

/// How NodePort traffic is recognised: local addresses within `--nodeport-addresses`.
fn nodeport_match(config: &ProxyConfig, f: NftFamily) -> String {
    match &config.nodeport_addresses {
        NodePortAddresses::All | NodePortAddresses::Primary => "fib daddr type local".to_string(),
        NodePortAddresses::Prefixes(_) => {
            format!("fib daddr type local {} daddr @nodeport-ips", f.l3())
        }
    }
}

fn declare_sets(t: &mut Table, config: &ProxyConfig, f: NftFamily) {
    let l3 = f.l3();
    let fe = format!("typeof {l3} daddr . meta l4proto . th dport");
    let np = "typeof meta l4proto . th dport".to_string();
    let interval = "flags interval";
    let family = model_family(f);
    let filled = |decl: &[&str], items: Vec<String>| {
        let mut s = Set::plain(decl);
        s.elements.extend(items);
        s
    };
    let nodeport_prefixes = match &config.nodeport_addresses {
        NodePortAddresses::All | NodePortAddresses::Primary => vec![],
        NodePortAddresses::Prefixes(p) => ProxyConfig::prefixes(p, family),
    };
    let sets = [
        ("cluster-ips", Set::plain(&[&format!("typeof {l3} daddr")])),
        (
            "service-cidrs",
            filled(
                &[&format!("typeof {l3} daddr"), interval],
                ProxyConfig::prefixes(&config.service_cidrs, family),
            ),
        ),
        (
            "cluster-cidrs",
            filled(
                &[&format!("typeof {l3} saddr"), interval],
                ProxyConfig::prefixes(&config.cluster_cidrs, family),
            ),
        ),
        (
            "nodeport-ips",
            filled(
                &[&format!("typeof {l3} daddr"), interval],
                nodeport_prefixes,
            ),
        ),
        ("fe", Set::map(&[&format!("{fe} : verdict")])),
        ("fe-pod", Set::map(&[&format!("{fe} : verdict")])),
        ("np", Set::map(&[&format!("{np} : verdict")])),
        ("np-pod", Set::map(&[&format!("{np} : verdict")])),
        ("masq-fe", Set::plain(&[&fe])),
        ("local-fe", Set::plain(&[&fe])),
        ("masq-np", Set::plain(&[&np])),
        ("local-np", Set::plain(&[&np])),
        (
            "hairpin",
            Set::plain(&[&format!("typeof {l3} saddr . {l3} daddr")]),
        ),
        ("no-endpoints", Set::map(&[&format!("{fe} : verdict")])),
        ("no-endpoints-np", Set::map(&[&format!("{np} : verdict")])),
        ("fw", Set::plain(&[&fe])),
        (
            "fw-allow",
            Set::plain(&[&format!("{fe} . {l3} saddr"), interval]),
        ),
    ];
    for (name, set) in sets {
        t.sets.insert(name.to_string(), set);
    }
}

/// Shared objects created on demand: the per-backend-count dispatch chains and maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shared {
    /// `ep-nN`/`eps-nN`: frontends keyed by address.
    Eps(usize),
    /// `epx-nN`/`epx-eps-nN`: pod-origin short-circuit of eTP-Local frontends.
    Epx(usize),
    /// `npep-nN`/`np-eps-nN`: NodePorts.
    NpEps(usize),
    /// `npepx-nN`/`npx-eps-nN`: pod-origin short-circuit of eTP-Local NodePorts.
    NpEpx(usize),
}

impl Shared {
    /// (chain name, map name).
    pub fn names(self) -> (String, String) {
        match self {
            Shared::Eps(n) => (format!("ep-n{n}"), format!("eps-n{n}")),
            Shared::Epx(n) => (format!("epx-n{n}"), format!("epx-eps-n{n}")),
            Shared::NpEps(n) => (format!("npep-n{n}"), format!("np-eps-n{n}")),
            Shared::NpEpx(n) => (format!("npepx-n{n}"), format!("npx-eps-n{n}")),
        }
    }

    fn by_address(self) -> bool {
        matches!(self, Shared::Eps(_) | Shared::Epx(_))
    }

    fn count(self) -> usize {
        match self {
            Shared::Eps(n) | Shared::Epx(n) | Shared::NpEps(n) | Shared::NpEpx(n) => n,
        }
    }

    /// The chain and map of this shared object in family `f`.
    pub fn objects(self, f: NftFamily) -> ((String, Chain), (String, Set)) {
        let (chain_name, map_name) = self.names();
        let l3 = f.l3();
        let n = self.count();
        let key = if self.by_address() {
            format!("{l3} daddr . meta l4proto . th dport . numgen random mod {n}")
        } else {
            format!("meta l4proto . th dport . numgen random mod {n}")
        };
        let rule = format!("dnat {l3} to {key} map @{map_name}");
        let map = Set::map(&[&format!("typeof {key} : {l3} daddr . th dport")]);
        ((chain_name, chain(vec![rule])), (map_name, map))
    }
}

/// An address as nft writes it in elements.
pub fn addr(ip: &IpAddr) -> String {
    ip.to_string()
}
