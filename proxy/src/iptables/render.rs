//! The desired iptables rules as a pure function of the catalog: what one Service adds
//! ([`service`]) — its rules in the shared [`Section`]s' buckets and the chains of its own. The
//! fixed chains are [`super::base`]'s, the endpoint picks [`super::pick`]'s. Rules are
//! iptables-restore rule specs (what follows `-A CHAIN`), built only from addresses, numbers
//! and hashed chain names.
//!
//! The verdicts are the nftables backend's (`desired::service`), frontend by frontend: a
//! ClusterIP goes to the internal-policy chain (masquerade mark for sources outside
//! `--cluster-cidr`, or all with `--masquerade-all`); external IPs, VIP-mode load-balancer IPs
//! and NodePorts go through `EXT` (eTP Cluster: mark, then every endpoint; eTP Local: mark
//! node-origin traffic, short-circuit pod traffic to every endpoint, then the local ones); a
//! frontend without backends is REJECTed when the Service has no usable endpoint at all and
//! DROPped when a Local policy leaves this node without one; every live ClusterIP rejects
//! unknown ports and the rest of the service CIDRs is dropped. Endpoint selection is
//! [`crate::endpoints::select`], shared with the nftables backend.
//!
//! iptables has no sets, so what nftables looks up in one step is a walk here; the walks are
//! kept short (address buckets) and off the common paths: the filter chains only see new
//! connections that were not DNATed, and the ClusterIP rejects only destinations within the
//! service CIDRs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use svcplane_common::model::{
    Family, IpMode, MergedEndpoint, Protocol, Service, ServicePort, ServiceType, TrafficPolicy,
};

pub use super::base::Base;
use super::base::{host, prefixes};
use super::pick::Pick;
use super::{MARK_MASQ, Section, Table, address_bucket, bucket_of, port_chain_stem, service_order};
use crate::conntrack::StaleFlow;
use crate::desired::ProxyConfig;
use crate::desired::service::proxied;
use crate::endpoints::{self, Backend, PortEndpoints};

/// A chain: (table, name).
pub type ChainKey = (Table, String);

/// Everything one Service adds to one family's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Its rules in each (section, bucket) chain, in order.
    pub sections: BTreeMap<(Section, u8), Vec<String>>,
    /// Chains only this Service uses, with their rules.
    pub chains: BTreeMap<ChainKey, Vec<String>>,
    /// `healthCheckNodePort` and the number of ready node-local endpoints (eTP Local).
    pub health: Option<(u16, usize)>,
    /// UDP flows the rules create; what disappears between two renders is stale conntrack
    /// state (as in the nftables backend).
    pub udp: BTreeSet<StaleFlow>,
    /// The Service's [`service_order`].
    pub order: u64,
}

impl ServiceRules {
    /// Adds no rule at all (deleted, not proxied, or no ClusterIP of the family).
    pub fn is_empty(&self) -> bool {
        self.sections.is_empty() && self.chains.is_empty()
    }

    fn push(&mut self, section: Section, bucket: u8, rule: String) {
        self.sections
            .entry((section, bucket))
            .or_default()
            .push(rule);
    }
}

/// A comment naming the Service port; only `[a-z0-9-./:]` pass (object names are already
/// DNS labels; anything else would be replaced).
fn comment(service: &Service, port: Option<&ServicePort>) -> String {
    let text = match port {
        Some(p) => format!("{}/{}:{}", service.key.namespace, service.key.name, p.name),
        None => format!("{}/{}", service.key.namespace, service.key.name),
    };
    let safe: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || "-./:".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("-m comment --comment {safe}")
}

/// The rules of `service` with its merged endpoints in family `family`.
pub fn service(
    service: &Service,
    endpoints: &[MergedEndpoint],
    config: &ProxyConfig,
    base: &Base,
) -> ServiceRules {
    let family = base.family;
    let mut out = ServiceRules {
        order: service_order(&service.key),
        ..ServiceRules::default()
    };
    if !proxied(service, config) {
        return out;
    }
    let cluster_ips: Vec<IpAddr> = service
        .cluster_ips
        .iter()
        .filter(|ip| Family::of(ip) == family)
        .copied()
        .collect();
    if cluster_ips.is_empty() {
        return out;
    }
    for ip in &cluster_ips {
        let rule = format!(
            "-d {} {} {}",
            host(ip),
            comment(service, None),
            base.reject()
        );
        out.push(base.cluster_ip_section(ip), address_bucket(ip), rule);
    }
    for port in service.ports.iter() {
        let sel = endpoints::select(service, port, endpoints, family, &config.node);
        PortRules::new(&mut out, base, service, port, &sel).render(&cluster_ips);
    }
    out.health = health(service, endpoints, config, family);
    out
}

/// The health-check answer, counted once in the family of the primary ClusterIP.
fn health(
    service: &Service,
    endpoints: &[MergedEndpoint],
    config: &ProxyConfig,
    family: Family,
) -> Option<(u16, usize)> {
    let primary = service
        .cluster_ips
        .first()
        .is_some_and(|ip| Family::of(ip) == family);
    let port = service
        .health_check_node_port
        .filter(|_| primary && external_local(service))?;
    let local = endpoints::local_ready_endpoints(endpoints, family, &config.node);
    Some((port, local))
}

fn has_node_ports(s: &Service) -> bool {
    matches!(
        s.service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    )
}

/// externalTrafficPolicy only applies to Services with external frontends.
fn external_local(s: &Service) -> bool {
    s.external_traffic_policy == TrafficPolicy::Local
        && (has_node_ports(s) || !s.external_ips.is_empty())
}

/// External IPs and VIP-mode load-balancer IPs of the family, with whether they are LB
/// addresses (source ranges apply only to those).
fn external_addresses(s: &Service, family: Family) -> Vec<(IpAddr, bool)> {
    let external = s.external_ips.iter().map(|ip| (*ip, false));
    let lb = s
        .lb_ingress
        .iter()
        .filter(|i| i.ip_mode == IpMode::Vip && s.service_type == ServiceType::LoadBalancer)
        .map(|i| (i.ip, true));
    external
        .chain(lb)
        .filter(|(ip, _)| Family::of(ip) == family)
        .collect()
}

/// The chains of one Service port.
struct Names {
    svc: String,
    svl: String,
    ext: String,
    fw: String,
    /// The port's own text (what the names hash).
    key: String,
}

impl Names {
    fn new(service: &Service, port: &ServicePort) -> Names {
        let key = format!(
            "{}/{}/{}/{}",
            service.key.namespace,
            service.key.name,
            port.protocol.as_lower(),
            port.name
        );
        let stem = port_chain_stem(&service.key, &key);
        Names {
            svc: format!("{stem}-SVC"),
            svl: format!("{stem}-SVL"),
            ext: format!("{stem}-EXT"),
            fw: format!("{stem}-FW"),
            key,
        }
    }
}

/// Renders one Service port.
struct PortRules<'a> {
    out: &'a mut ServiceRules,
    base: &'a Base,
    service: &'a Service,
    port: &'a ServicePort,
    sel: &'a PortEndpoints,
    names: Names,
    proto: &'static str,
    comment: String,
    /// Policy chains something jumps to.
    used: BTreeSet<String>,
}

impl<'a> PortRules<'a> {
    fn new(
        out: &'a mut ServiceRules,
        base: &'a Base,
        service: &'a Service,
        port: &'a ServicePort,
        sel: &'a PortEndpoints,
    ) -> PortRules<'a> {
        PortRules {
            out,
            base,
            service,
            port,
            sel,
            names: Names::new(service, port),
            proto: port.protocol.as_lower(),
            comment: comment(service, Some(port)),
            used: BTreeSet::new(),
        }
    }

    fn render(mut self, cluster_ips: &[IpAddr]) {
        let marks: Vec<String> = cluster_ips
            .iter()
            .filter_map(|ip| self.cluster_ip(ip))
            .collect();
        let externals = external_addresses(self.service, self.base.family);
        let node_port = self.port.node_port.filter(|_| has_node_ports(self.service));
        let ext = if externals.is_empty() && node_port.is_none() {
            None
        } else {
            self.ext_chain()
        };
        for (ip, is_lb) in &externals {
            self.external(ip, *is_lb, ext.as_deref());
        }
        if let Some(node_port) = node_port {
            self.node_port(node_port, ext.as_deref());
        }
        let internal_local = self.sel.internal_policy_local;
        let (svc_marks, svl_marks) = if internal_local {
            (vec![], marks)
        } else {
            (marks, vec![])
        };
        let (svc, svl) = (self.names.svc.clone(), self.names.svl.clone());
        let sel: &'a PortEndpoints = self.sel;
        if self.used.contains(&svc) {
            self.policy_chain(&svc, &sel.cluster, svc_marks);
        }
        if self.used.contains(&svl) {
            self.policy_chain(&svl, &sel.local, svl_marks);
        }
    }

    /// `-d ip -p proto --dport port` of a frontend.
    fn dest(&self, ip: &IpAddr) -> String {
        let p = self.proto;
        format!("-d {} -p {p} -m {p} --dport {}", host(ip), self.port.port)
    }

    /// The verdict for a frontend whose traffic has no backend here.
    fn missing(&self) -> String {
        if self.sel.has_any {
            "-j DROP".to_string()
        } else {
            self.base.reject().to_string()
        }
    }

    /// A rule for the frontend address `ip` in `section`.
    fn push(&mut self, section: Section, ip: &IpAddr, matches: &str, target: &str) {
        let rule = format!("{matches} {} {target}", self.comment);
        self.out.push(section, address_bucket(ip), rule);
    }

    /// A rule for the Service's NodePort in `section`.
    fn push_node_port(&mut self, section: Section, matches: &str, target: &str) {
        let rule = format!("{matches} {} {target}", self.comment);
        self.out.push(section, bucket_of(&self.service.key), rule);
    }

    /// Dispatches one ClusterIP; returns its masquerade rule for the internal chain.
    fn cluster_ip(&mut self, ip: &IpAddr) -> Option<String> {
        let sel: &'a PortEndpoints = self.sel;
        let backends = sel.internal();
        self.track_udp(*ip, backends);
        let dest = self.dest(ip);
        if backends.is_empty() {
            let verdict = self.missing();
            self.push(Section::NoEndpoints, ip, &dest, &verdict);
            return None;
        }
        let chain = if sel.internal_policy_local {
            self.names.svl.clone()
        } else {
            self.names.svc.clone()
        };
        self.push(Section::Services, ip, &dest, &format!("-j {chain}"));
        self.used.insert(chain);
        let mark = self.base.cluster_ip_mark()?;
        Some(format!("{dest} -j {mark}"))
    }

    /// The EXT chain of external traffic, if it has any rule.
    fn ext_chain(&mut self) -> Option<String> {
        let (svc, svl) = (self.names.svc.clone(), self.names.svl.clone());
        let sel = self.sel;
        let mut rules = Vec::new();
        if !sel.external_policy_local {
            if !sel.cluster.is_empty() {
                rules.push(format!("-j {MARK_MASQ}"));
                rules.push(format!("-j {svc}"));
                self.used.insert(svc);
            }
        } else {
            if !sel.local.is_empty() {
                rules.push(format!("-m addrtype --src-type LOCAL -j {MARK_MASQ}"));
            }
            // Pods reach every endpoint (kube-proxy's short-circuit), never dropped for lack
            // of a local one.
            if !sel.cluster.is_empty() && !self.base.cluster_cidrs.is_empty() {
                for cidr in &self.base.cluster_cidrs {
                    rules.push(format!("-s {cidr} -j {svc}"));
                }
                self.used.insert(svc);
            }
            if !sel.local.is_empty() {
                rules.push(format!("-j {svl}"));
                self.used.insert(svl);
            }
        }
        if rules.is_empty() {
            return None;
        }
        let ext = self.names.ext.clone();
        self.out.chains.insert((Table::Nat, ext.clone()), rules);
        Some(ext)
    }

    /// An external IP or load-balancer IP.
    fn external(&mut self, ip: &IpAddr, is_lb: bool, ext: Option<&str>) {
        let flows = self.external_flow_backends();
        self.track_udp(*ip, &flows);
        let dest = self.dest(ip);
        let firewalled = is_lb && !self.service.lb_source_ranges.is_empty();
        if firewalled {
            let fw = self.names.fw.clone();
            self.firewall_chains(ext);
            self.push(Section::Firewall, ip, &dest, &format!("-j {fw}"));
        }
        if let Some(ext) = ext {
            let target = if firewalled { &self.names.fw } else { ext };
            let target = format!("-j {target}");
            self.push(Section::Services, ip, &dest, &target);
        }
        if self.sel.external().is_empty() {
            let verdict = self.missing();
            self.push(Section::NoEndpoints, ip, &dest, &verdict);
        }
    }

    /// `loadBalancerSourceRanges`: nat dispatches listed sources only; filter drops the rest
    /// (traffic not DNATed still has the load-balancer address).
    fn firewall_chains(&mut self, ext: Option<&str>) {
        let family = self.base.family;
        let ranges: Vec<String> = prefixes(&self.service.lb_source_ranges, family);
        let mut filter: Vec<String> = ranges.iter().map(|r| format!("-s {r} -j RETURN")).collect();
        filter.push("-j DROP".to_string());
        let fw = self.names.fw.clone();
        self.out.chains.insert((Table::Filter, fw.clone()), filter);
        if let Some(ext) = ext {
            let nat = ranges.iter().map(|r| format!("-s {r} -j {ext}")).collect();
            self.out.chains.insert((Table::Nat, fw), nat);
        }
    }

    fn node_port(&mut self, node_port: u16, ext: Option<&str>) {
        let flows = self.external_flow_backends();
        self.track_udp_node_port(node_port, &flows);
        let p = self.proto;
        let matches = format!("-p {p} -m {p} --dport {node_port}");
        if let Some(ext) = ext {
            self.push_node_port(Section::NodePorts, &matches, &format!("-j {ext}"));
        }
        if self.sel.external().is_empty() {
            let verdict = self.missing();
            self.push_node_port(Section::NodePortNoEndpoints, &matches, &verdict);
        }
    }

    /// SVC or SVL: the masquerade rules of ClusterIP traffic, then the pick ([`Pick`]).
    fn policy_chain(&mut self, name: &str, backends: &[Backend], marks: Vec<String>) {
        let pick = Pick {
            proto: self.proto,
            affinity: self.service.affinity_timeout,
            key: &self.names.key,
        };
        let mut rules = marks;
        rules.extend(pick.rules(backends));
        self.out
            .chains
            .insert((Table::Nat, name.to_string()), rules);
    }

    /// The backends UDP flows to an external frontend may reach (with the pod short-circuit's
    /// under eTP Local).
    fn external_flow_backends(&self) -> Vec<Backend> {
        let mut all = self.sel.external().to_vec();
        if self.sel.external_policy_local {
            all.extend_from_slice(&self.sel.cluster);
        }
        all
    }

    fn track_udp(&mut self, frontend: IpAddr, backends: &[Backend]) {
        let (port, protocol) = (self.port.port, self.port.protocol);
        if protocol != Protocol::Udp {
            return;
        }
        if backends.is_empty() {
            self.out.udp.insert(StaleFlow::Frontend {
                frontend,
                port,
                protocol,
            });
        }
        for b in backends {
            self.out.udp.insert(StaleFlow::Endpoint {
                frontend,
                port,
                protocol,
                endpoint: b.ip,
            });
        }
    }

    fn track_udp_node_port(&mut self, port: u16, backends: &[Backend]) {
        let protocol = self.port.protocol;
        if protocol != Protocol::Udp {
            return;
        }
        if backends.is_empty() {
            let family = self.base.family;
            self.out.udp.insert(StaleFlow::NodePortFrontend {
                port,
                protocol,
                family,
            });
        }
        for b in backends {
            self.out.udp.insert(StaleFlow::NodePort {
                port,
                protocol,
                endpoint: b.ip,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::NodePortAddresses;

    #[test]
    fn cluster_ips_outside_the_service_cidrs_are_rejected_unconditionally() {
        let config = ProxyConfig {
            node: crate::endpoints::NodeInfo::new("node-a", None),
            cluster_cidrs: vec![],
            service_cidrs: vec![
                svcplane_common::config::parse_prefix("10.96.0.0/16").expect("cidr"),
            ],
            nodeport_addresses: NodePortAddresses::All,
            masquerade_all: false,
            proxy_name: None,
        };
        let base = Base::new(&config, Family::V4);
        let key = svcplane_common::model::ObjectKey::new("ns", "s");
        for (ip, section, bucket) in [
            ("10.96.0.1", Section::ClusterIps, 1),
            ("10.200.0.66", Section::OtherClusterIps, 2),
        ] {
            let svc = Service::new(key.clone(), vec![ip.parse().expect("ip")]);
            let rules = service(&svc, &[], &config, &base);
            assert_eq!(
                rules.sections.keys().collect::<Vec<_>>(),
                [&(section, bucket)],
                "{ip}"
            );
        }
    }
}
