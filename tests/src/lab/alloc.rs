//! What the API server and a load-balancer controller assign to a Service, as a pure function:
//! ClusterIPs (per `ipFamilies`/`ipFamilyPolicy`) from the service CIDRs, NodePorts and
//! `healthCheckNodePort` from 30000–32767, and `status.loadBalancer.ingress` IPs from the
//! harness's load-balancer CIDRs (which the external client routes to node 0).
//!
//! Addresses are handed out in order (first free), not randomly as the API server does, so a
//! lab built twice from the same files gets the same addresses. Values written in the manifest
//! are honoured and checked (in range, not taken); on update, values already assigned are kept
//! and a changed ClusterIP is refused (the field is immutable). 10.96.0.1 (the `kubernetes`
//! Service) and 10.96.0.10 (`kube-dns`) are never handed out dynamically.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1 as core;

use crate::netns::{LB_CIDR_V4, LB_CIDR_V6, SERVICE_CIDR_V4, SERVICE_CIDR_V6};

/// kube-dns's ClusterIP.
pub const KUBE_DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// ClusterIPs never allocated dynamically (`kubernetes`, `kube-dns`).
const RESERVED: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
    IpAddr::V4(KUBE_DNS_IP),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xa)),
];
/// The NodePort range.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// What other Services already hold.
#[derive(Clone, Debug, Default)]
pub struct Used {
    pub cluster_ips: BTreeSet<IpAddr>,
    pub node_ports: BTreeSet<u16>,
    pub lb_ips: BTreeSet<IpAddr>,
}

impl Used {
    /// Everything `services` hold.
    pub fn of<'a>(services: impl IntoIterator<Item = &'a core::Service>) -> Used {
        let mut used = Used::default();
        for svc in services {
            used.add(svc);
        }
        used
    }

    /// Marks what `svc` holds as used.
    pub fn add(&mut self, svc: &core::Service) {
        if let Some(spec) = &svc.spec {
            let ips = spec
                .cluster_ips
                .iter()
                .flatten()
                .filter_map(|ip| ip.parse::<IpAddr>().ok());
            self.cluster_ips.extend(ips);
            let ports = spec.ports.iter().flatten().filter_map(|p| p.node_port);
            self.node_ports
                .extend(ports.filter_map(|p| u16::try_from(p).ok()));
            if let Some(p) = spec
                .health_check_node_port
                .and_then(|p| u16::try_from(p).ok())
            {
                self.node_ports.insert(p);
            }
        }
        self.lb_ips.extend(lb_ips(svc));
    }
}

/// The LB ingress IPs a Service's status holds.
fn lb_ips(svc: &core::Service) -> Vec<IpAddr> {
    let status = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref());
    let ingress = status.and_then(|lb| lb.ingress.as_ref());
    ingress
        .iter()
        .flat_map(|i| i.iter())
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// The IP families a Service asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn api(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    fn service_cidr(self) -> IpNetwork {
        match self {
            Family::V4 => SERVICE_CIDR_V4.into(),
            Family::V6 => SERVICE_CIDR_V6.into(),
        }
    }

    fn lb_cidr(self) -> IpNetwork {
        match self {
            Family::V4 => LB_CIDR_V4.into(),
            Family::V6 => LB_CIDR_V6.into(),
        }
    }
}

/// The families of a Service after defaulting (`spec.ipFamilies` as the API server fills it).
pub fn families(svc: &core::Service) -> Vec<Family> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ip_families.as_ref())
        .map(|f| {
            f.iter()
                .map(|f| if f == "IPv6" { Family::V6 } else { Family::V4 })
                .collect()
        })
        .unwrap_or_else(|| vec![Family::V4])
}

/// Fills in what the API server (and a load-balancer controller) would assign to `svc`.
/// `previous` is the Service as stored before (an update), `used` what the other Services
/// hold; what `svc` gets is added to `used`.
pub fn assign(
    svc: &mut core::Service,
    previous: Option<&core::Service>,
    used: &mut Used,
) -> Result<(), String> {
    let spec = svc.spec.get_or_insert_with(Default::default);
    let ty = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    if ty == "ExternalName" {
        return Ok(());
    }
    let prev_spec = previous.and_then(|p| p.spec.as_ref());
    cluster_ips(spec, prev_spec, used)?;
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        node_ports(spec, prev_spec, used)?;
    }
    if ty == "LoadBalancer" {
        health_check_node_port(spec, prev_spec, used)?;
        let fams = families(svc);
        load_balancer(svc, previous, &fams, used)?;
    }
    Ok(())
}

/// `spec.clusterIP(s)`, `ipFamilies` and `ipFamilyPolicy`.
fn cluster_ips(
    spec: &mut core::ServiceSpec,
    prev: Option<&core::ServiceSpec>,
    used: &mut Used,
) -> Result<(), String> {
    let given = given_cluster_ips(spec);
    let prev_ips: Vec<String> = prev.and_then(|p| p.cluster_ips.clone()).unwrap_or_default();
    if let (Some(first), Some(prev_first)) = (given.first(), prev_ips.first())
        && first != prev_first
    {
        return Err(format!(
            "spec.clusterIPs[0]: Invalid value: {first:?}: may not change once set (was {prev_first:?})"
        ));
    }
    let fams = requested_families(spec, &given)?;
    spec.ip_families = Some(fams.iter().map(|f| f.api().to_owned()).collect());
    let policy = spec
        .ip_family_policy
        .get_or_insert_with(|| "SingleStack".into());
    if policy.is_empty() {
        *policy = "SingleStack".into();
    }
    if given.first().is_some_and(|ip| ip == "None") {
        spec.cluster_ip = Some("None".into());
        spec.cluster_ips = Some(vec!["None".into()]);
        return Ok(());
    }
    let mut ips = Vec::new();
    for (i, fam) in fams.iter().enumerate() {
        let kept = given.get(i).or(prev_ips.get(i));
        let ip = match kept {
            Some(text) => check_given(i, text, *fam, used, prev_ips.contains(text))?,
            None => next_free(fam.service_cidr(), &used.cluster_ips, &RESERVED)
                .ok_or_else(|| format!("spec.clusterIPs[{i}]: the service CIDR is full"))?,
        };
        used.cluster_ips.insert(ip);
        ips.push(ip.to_string());
    }
    spec.cluster_ip = ips.first().cloned();
    spec.cluster_ips = Some(ips);
    Ok(())
}

/// `spec.clusterIPs`, else `spec.clusterIP`, without empty strings.
fn given_cluster_ips(spec: &core::ServiceSpec) -> Vec<String> {
    let list: Vec<String> = spec
        .cluster_ips
        .iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect();
    if !list.is_empty() {
        return list;
    }
    spec.cluster_ip
        .iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect()
}

/// The families the Service gets: `ipFamilies`, else those of given ClusterIPs, else IPv4;
/// a dual-stack policy adds the other family.
fn requested_families(spec: &core::ServiceSpec, given: &[String]) -> Result<Vec<Family>, String> {
    let mut fams: Vec<Family> = match &spec.ip_families {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, f)| match f.as_str() {
                "IPv4" => Ok(Family::V4),
                "IPv6" => Ok(Family::V6),
                other => Err(format!(
                    "spec.ipFamilies[{i}]: {other:?} is not IPv4 or IPv6"
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => given
            .iter()
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .map(|ip| Family::of(&ip))
            .collect(),
    };
    if fams.is_empty() {
        fams.push(Family::V4);
    }
    let dual = matches!(
        spec.ip_family_policy.as_deref(),
        Some("PreferDualStack" | "RequireDualStack")
    );
    if dual && fams.len() == 1 {
        fams.push(if fams[0] == Family::V4 {
            Family::V6
        } else {
            Family::V4
        });
    }
    Ok(fams)
}

/// Checks a ClusterIP written in the manifest (or kept from before: `ours`).
fn check_given(
    i: usize,
    text: &str,
    fam: Family,
    used: &Used,
    ours: bool,
) -> Result<IpAddr, String> {
    let field = format!("spec.clusterIPs[{i}]");
    let ip: IpAddr = text
        .parse()
        .map_err(|_| format!("{field}: Invalid value: {text:?}: must be a valid IP address"))?;
    let cidr = fam.service_cidr();
    if Family::of(&ip) != fam || !cidr.contains(ip) {
        return Err(format!(
            "{field}: Invalid value: {text:?}: the provided IP is not in the valid range. \
             The range of valid IPs is {cidr}"
        ));
    }
    if !ours && used.cluster_ips.contains(&ip) {
        return Err(format!(
            "{field}: Invalid value: {text:?}: provided IP is already allocated"
        ));
    }
    Ok(ip)
}

/// The first address of `net` after the network address that is neither used nor reserved.
fn next_free(net: IpNetwork, used: &BTreeSet<IpAddr>, reserved: &[IpAddr]) -> Option<IpAddr> {
    let taken = |ip: &IpAddr| used.contains(ip) || reserved.contains(ip);
    match net {
        IpNetwork::V4(n) => {
            let base = u32::from(n.network());
            let last = u32::from(n.broadcast());
            (base + 1..last)
                .map(|h| IpAddr::V4(h.into()))
                .find(|ip| !taken(ip))
        }
        IpNetwork::V6(n) => {
            let base = u128::from(n.network());
            let size = 1u128 << (128 - u32::from(n.prefix())).min(127);
            (base + 1..base + size)
                .map(|h| IpAddr::V6(h.into()))
                .find(|ip| !taken(ip))
        }
    }
}

/// `nodePort` of every port: written values checked, earlier ones kept, the rest allocated.
fn node_ports(
    spec: &mut core::ServiceSpec,
    prev: Option<&core::ServiceSpec>,
    used: &mut Used,
) -> Result<(), String> {
    let prev_ports = prev.and_then(|p| p.ports.as_deref()).unwrap_or(&[]);
    let mut mine: Vec<(u16, String)> = Vec::new();
    for (i, port) in spec.ports.iter_mut().flatten().enumerate() {
        let proto = port.protocol.clone().unwrap_or_else(|| "TCP".into());
        let earlier = prev_ports
            .iter()
            .find(|p| p.port == port.port && p.protocol.as_deref().unwrap_or("TCP") == proto)
            .and_then(|p| p.node_port);
        let np = match port.node_port.or(earlier) {
            Some(n) => {
                let field = format!("spec.ports[{i}].nodePort");
                let n = u16::try_from(n)
                    .ok()
                    .filter(|n| NODE_PORTS.contains(n))
                    .ok_or_else(|| format!("{field}: Invalid value: {n}: provided port is not in the valid range. The range of valid ports is 30000-32767"))?;
                let shared_here = mine.iter().any(|(p, pr)| *p == n && *pr != proto);
                let ours = earlier == Some(i32::from(n));
                if used.node_ports.contains(&n) && !shared_here && !ours {
                    return Err(format!(
                        "{field}: Invalid value: {n}: provided port is already allocated"
                    ));
                }
                n
            }
            None => next_port(&used.node_ports).ok_or("spec.ports: no free NodePort")?,
        };
        used.node_ports.insert(np);
        mine.push((np, proto));
        port.node_port = Some(i32::from(np));
    }
    Ok(())
}

fn next_port(used: &BTreeSet<u16>) -> Option<u16> {
    NODE_PORTS.clone().find(|p| !used.contains(p))
}

/// `healthCheckNodePort` for LoadBalancers with `externalTrafficPolicy: Local`.
fn health_check_node_port(
    spec: &mut core::ServiceSpec,
    prev: Option<&core::ServiceSpec>,
    used: &mut Used,
) -> Result<(), String> {
    if spec.external_traffic_policy.as_deref() != Some("Local") {
        return Ok(());
    }
    if spec.health_check_node_port.is_some() {
        return Ok(());
    }
    let earlier = prev.and_then(|p| p.health_check_node_port);
    let port = match earlier.and_then(|p| u16::try_from(p).ok()) {
        Some(p) => p,
        None => next_port(&used.node_ports).ok_or("spec.healthCheckNodePort: no free port")?,
    };
    used.node_ports.insert(port);
    spec.health_check_node_port = Some(i32::from(port));
    Ok(())
}

/// `status.loadBalancer.ingress`: one VIP per family of the Service.
fn load_balancer(
    svc: &mut core::Service,
    previous: Option<&core::Service>,
    fams: &[Family],
    used: &mut Used,
) -> Result<(), String> {
    let earlier = previous.map(lb_ips).unwrap_or_default();
    let wanted = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_ip.as_deref())
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    let mut ingress = Vec::new();
    for fam in fams {
        let ip = wanted
            .filter(|ip| Family::of(ip) == *fam)
            .or_else(|| earlier.iter().copied().find(|ip| Family::of(ip) == *fam))
            .or_else(|| next_free(fam.lb_cidr(), &used.lb_ips, &[]))
            .ok_or("status.loadBalancer.ingress: the load-balancer CIDR is full")?;
        used.lb_ips.insert(ip);
        ingress.push(core::LoadBalancerIngress {
            ip: Some(ip.to_string()),
            ip_mode: Some("VIP".into()),
            ..Default::default()
        });
    }
    svc.status = Some(core::ServiceStatus {
        load_balancer: Some(core::LoadBalancerStatus {
            ingress: Some(ingress),
        }),
        ..Default::default()
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn svc(spec: serde_json::Value) -> core::Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "namespace": "default"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn ips(s: &core::Service) -> Vec<String> {
        s.spec.as_ref().unwrap().cluster_ips.clone().unwrap()
    }

    #[test]
    fn cluster_ips_are_handed_out_in_order_skipping_reserved_ones() {
        let mut used = Used::default();
        let mut got = Vec::new();
        for _ in 0..10 {
            let mut s = svc(serde_json::json!({"ports": [{"port": 80}]}));
            assign(&mut s, None, &mut used).unwrap();
            got.extend(ips(&s));
        }
        assert_eq!(got[0], "10.96.0.2");
        assert_eq!(got[7], "10.96.0.9");
        assert_eq!(got[8], "10.96.0.11", "10.96.0.10 is kube-dns's");
        let mut dns = svc(serde_json::json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}));
        assign(&mut dns, None, &mut used).unwrap();
        assert_eq!(ips(&dns), ["10.96.0.10"]);
    }

    #[test]
    fn given_cluster_ips_are_checked() {
        let mut used = Used::default();
        let mut a = svc(serde_json::json!({"clusterIP": "10.96.1.100", "ports": [{"port": 80}]}));
        assign(&mut a, None, &mut used).unwrap();
        let mut b = a.clone();
        let err = assign(&mut b, None, &mut used).unwrap_err();
        assert!(err.contains("already allocated"), "{err}");
        // The same Service updated keeps its address; changing it is refused.
        let mut again = a.clone();
        assign(&mut again, Some(&a), &mut used).unwrap();
        let mut moved =
            svc(serde_json::json!({"clusterIP": "10.96.1.101", "ports": [{"port": 80}]}));
        assert!(
            assign(&mut moved, Some(&a), &mut used)
                .unwrap_err()
                .contains("may not change")
        );
        let mut outside =
            svc(serde_json::json!({"clusterIP": "10.0.0.1", "ports": [{"port": 80}]}));
        let err = assign(&mut outside, None, &mut used).unwrap_err();
        assert!(
            err.contains("not in the valid range") && err.contains("10.96.0.0/12"),
            "{err}"
        );
        // An update without a clusterIP keeps the old one.
        let mut bare = svc(serde_json::json!({"ports": [{"port": 81}]}));
        assign(&mut bare, Some(&a), &mut used).unwrap();
        assert_eq!(ips(&bare), ["10.96.1.100"]);
    }

    #[test]
    fn headless_and_dual_stack_services() {
        let mut used = Used::default();
        let mut h = svc(serde_json::json!({"clusterIP": "None", "ports": [{"port": 5432}]}));
        assign(&mut h, None, &mut used).unwrap();
        assert_eq!(ips(&h), ["None"]);
        assert_eq!(families(&h), [Family::V4]);
        let mut d =
            svc(serde_json::json!({"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}));
        assign(&mut d, None, &mut used).unwrap();
        assert_eq!(ips(&d), ["10.96.0.2", "fd00:96::2"]);
        assert_eq!(families(&d), [Family::V4, Family::V6]);
    }

    #[test]
    fn node_ports_and_load_balancer_ips() {
        let mut used = Used::default();
        let mut np = svc(serde_json::json!({"type": "NodePort",
            "ports": [{"port": 80, "nodePort": 30080}, {"name": "b", "port": 81}]}));
        // Two ports need names for the API server, but allocation does not care.
        assign(&mut np, None, &mut used).unwrap();
        let got: Vec<_> = np
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.node_port)
            .collect();
        assert_eq!(got, [Some(30080), Some(30000)]);
        let mut clash = svc(
            serde_json::json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
        );
        assert!(
            assign(&mut clash, None, &mut used)
                .unwrap_err()
                .contains("already allocated")
        );
        let mut range =
            svc(serde_json::json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}));
        assert!(
            assign(&mut range, None, &mut used)
                .unwrap_err()
                .contains("30000-32767")
        );
        let mut lb = svc(
            serde_json::json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80}]}),
        );
        assign(&mut lb, None, &mut used).unwrap();
        let spec = lb.spec.as_ref().unwrap();
        assert_eq!(spec.ports.as_ref().unwrap()[0].node_port, Some(30001));
        assert_eq!(spec.health_check_node_port, Some(30002));
        assert_eq!(lb_ips(&lb), [IpAddr::from([10, 250, 0, 1])]);
        // Re-applying keeps the NodePort and the LB IP.
        let mut again = svc(
            serde_json::json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80}]}),
        );
        let mut used2 = Used::of([&np]);
        assign(&mut again, Some(&lb), &mut used2).unwrap();
        assert_eq!(
            again.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port,
            Some(30001)
        );
        assert_eq!(lb_ips(&again), lb_ips(&lb));
    }
}
