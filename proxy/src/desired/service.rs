//! What one Service adds to a family's table: map elements for each of its frontends, and for
//! ClientIP affinity the chains and sets of its own.
//!
//! Frontends are kube-proxy's: each ClusterIP (`internalTrafficPolicy` decides the backends),
//! each external IP and load-balancer ingress IP (skipping `ipMode: Proxy`;
//! `externalTrafficPolicy` decides), and the NodePort. A frontend with backends dispatches to
//! them; one without gets an entry in `no-endpoints` — REJECT when the Service has no usable
//! endpoint at all, DROP when a Local policy leaves this node without one.

use std::collections::BTreeSet;
use std::sync::Arc;

use svcplane_common::catalog::Snapshot;
use svcplane_common::model::{
    Family, IpMode, MergedEndpoint, ObjectKey, Protocol, Service, ServicePort, ServiceType,
};

use super::{ProxyConfig, Shared, addr, model_family};
use crate::conntrack::StaleFlow;
use crate::endpoints::{self, Backend, PortEndpoints};
use crate::ruleset::{Chain, NftFamily, Set, safe_fragment, short_hash};

/// The name of a set or map an element belongs to; shared by the elements of one frontend.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetName(Arc<str>);

impl SetName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for SetName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SetName {
    fn from(name: &str) -> SetName {
        SetName(name.into())
    }
}

impl PartialEq<str> for SetName {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

/// One element: (set or map name, element in nft syntax).
pub type Element = (SetName, Box<str>);

/// A Service's elements, sorted by (set, element), without duplicates. A boxed slice rather
/// than a `BTreeSet`: the programmed state keeps every Service's elements (250k endpoints make
/// ~600k of them), and B-tree nodes would triple their memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Elements(Box<[Element]>);

impl Elements {
    pub fn iter(&self) -> std::slice::Iter<'_, Element> {
        self.0.iter()
    }

    pub fn as_slice(&self) -> &[Element] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The elements of `self` that `other` lacks, in order.
    pub fn difference<'a>(&'a self, other: &'a Elements) -> impl Iterator<Item = &'a Element> {
        self.0
            .iter()
            .filter(move |e| other.0.binary_search(e).is_err())
    }
}

impl FromIterator<Element> for Elements {
    fn from_iter<I: IntoIterator<Item = Element>>(iter: I) -> Elements {
        let mut all: Vec<Element> = iter.into_iter().collect();
        all.sort_unstable();
        all.dedup();
        Elements(all.into_boxed_slice())
    }
}

/// Everything one Service adds to one family's table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contribution {
    /// (set or map name, element).
    pub elements: Elements,
    /// Chains only this Service uses (ClientIP affinity).
    pub chains: Vec<(String, Chain)>,
    /// Sets only this Service uses (ClientIP affinity).
    pub sets: Vec<(String, Set)>,
    /// Shared per-backend-count objects its elements point at.
    pub needs: BTreeSet<Shared>,
    /// `healthCheckNodePort` and the number of ready node-local endpoints (eTP Local).
    pub health: Option<(u16, usize)>,
    /// UDP flows the rules create (frontend → backend), and UDP frontends without backends;
    /// what disappears between two contributions is stale conntrack state to delete.
    pub udp: BTreeSet<StaleFlow>,
}

/// The contribution of the Service `key` in `snapshot` to the table of family `f`; None if it
/// adds nothing (absent, not proxied, no address of that family).
pub fn contribution_of(
    config: &ProxyConfig,
    snapshot: &Snapshot,
    key: &ObjectKey,
    f: NftFamily,
) -> Option<Arc<Contribution>> {
    let service = snapshot.services.get(key)?;
    let endpoints = snapshot.endpoints.get(key).map(|e| &e[..]).unwrap_or(&[]);
    let c = contribution(service, endpoints, config, f);
    (!c.elements.is_empty() || !c.chains.is_empty()).then(|| Arc::new(c))
}

/// Whether svcplane-proxy handles this Service at all.
pub fn proxied(s: &Service, config: &ProxyConfig) -> bool {
    let ours = s.proxy_name.as_deref() == config.proxy_name.as_deref();
    ours && !(s.headless || s.headless_label || s.service_type == ServiceType::ExternalName)
}

/// The contribution of `service` with its merged endpoints to the table of family `f`.
pub fn contribution(
    service: &Service,
    endpoints: &[MergedEndpoint],
    config: &ProxyConfig,
    f: NftFamily,
) -> Contribution {
    let mut c = Contribution::default();
    let family = model_family(f);
    if !proxied(service, config) {
        return c;
    }
    let cluster_ips: Vec<_> = service
        .cluster_ips
        .iter()
        .filter(|ip| Family::of(ip) == family)
        .collect();
    if cluster_ips.is_empty() {
        return c;
    }
    let mut elements: Vec<Element> = cluster_ips
        .iter()
        .map(|ip| ("cluster-ips".into(), addr(ip).into()))
        .collect();
    for port in service.ports.iter() {
        let sel = endpoints::select(service, port, endpoints, family, &config.node);
        let mut b = Builder {
            c: &mut c,
            elements: &mut elements,
            service,
            port,
            sel: &sel,
            f,
        };
        for ip in &cluster_ips {
            b.cluster_ip(&addr(ip));
        }
        for ip in external_addresses(service, family) {
            b.external(&ip);
        }
        if let Some(node_port) = port.node_port.filter(|_| has_node_ports(service)) {
            b.node_port(node_port);
        }
        b.hairpin();
    }
    c.elements = elements.into_iter().collect();
    // The health-check answer counts the Service's node-local ready endpoints once, in the
    // family of its primary ClusterIP (kube-proxy counts distinct addresses).
    let primary = service
        .cluster_ips
        .first()
        .is_some_and(|ip| Family::of(ip) == family);
    if let Some(hc) = service
        .health_check_node_port
        .filter(|_| primary && external_local(service))
    {
        let local = endpoints::local_ready_endpoints(endpoints, family, &config.node);
        c.health = Some((hc, local));
    }
    c
}

fn has_node_ports(s: &Service) -> bool {
    matches!(
        s.service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    )
}

/// externalTrafficPolicy only applies to Services with external frontends.
fn external_local(s: &Service) -> bool {
    s.external_traffic_policy == svcplane_common::model::TrafficPolicy::Local
        && (has_node_ports(s) || !s.external_ips.is_empty())
}

/// External IPs and VIP-mode load-balancer ingress IPs of one family, with whether they are LB
/// addresses (source ranges apply only to those).
fn external_addresses(s: &Service, family: Family) -> Vec<(String, bool)> {
    let external = s.external_ips.iter().map(|ip| (ip, false));
    let lb = s
        .lb_ingress
        .iter()
        .filter(|i| i.ip_mode == IpMode::Vip && s.service_type == ServiceType::LoadBalancer)
        .map(|i| (&i.ip, true));
    external
        .chain(lb)
        .filter(|(ip, _)| Family::of(ip) == family)
        .map(|(ip, is_lb)| (addr(ip), is_lb))
        .collect()
}

fn proto(p: Protocol) -> &'static str {
    p.as_lower()
}

/// Builds the elements of one Service port.
struct Builder<'a> {
    c: &'a mut Contribution,
    /// Collected unsorted; sorted once into `c.elements`.
    elements: &'a mut Vec<Element>,
    service: &'a Service,
    port: &'a ServicePort,
    sel: &'a PortEndpoints,
    f: NftFamily,
}

impl<'a> Builder<'a> {
    fn key(&self, ip: &str) -> String {
        format!("{ip} . {} . {}", proto(self.port.protocol), self.port.port)
    }

    fn add(&mut self, set: &str, element: String) {
        self.elements.push((set.into(), element.into()));
    }

    /// The verdict for a frontend whose traffic has no backend here.
    fn missing(&self) -> &'static str {
        if self.sel.has_any {
            "drop"
        } else {
            "goto reject-chain"
        }
    }

    /// The backends of traffic to ClusterIPs (internalTrafficPolicy).
    fn internal_backends(&self) -> &'a [Backend] {
        let sel: &'a PortEndpoints = self.sel;
        if sel.internal_policy_local {
            &sel.local
        } else {
            &sel.cluster
        }
    }

    /// The backends of external traffic (externalTrafficPolicy).
    fn external_backends(&self) -> &'a [Backend] {
        let sel: &'a PortEndpoints = self.sel;
        if sel.external_policy_local {
            &sel.local
        } else {
            &sel.cluster
        }
    }

    /// The backends UDP flows to an external frontend may reach: its external backends and,
    /// under eTP Local, the cluster-wide ones pods are short-circuited to (their stale
    /// conntrack entries must go too).
    fn external_flow_backends(&self) -> Vec<Backend> {
        let mut all = self.external_backends().to_vec();
        if self.sel.external_policy_local {
            all.extend_from_slice(&self.sel.cluster);
        }
        all
    }

    fn cluster_ip(&mut self, ip: &str) {
        let key = self.key(ip);
        let backends = self.internal_backends();
        self.track_udp(ip, backends);
        if backends.is_empty() {
            let verdict = self.missing();
            self.add("no-endpoints", format!("{key} : {verdict}"));
            return;
        }
        let verdict = self.dispatch(&key, backends, Shared::Eps(backends.len()));
        self.add("fe", format!("{key} : {verdict}"));
    }

    fn external(&mut self, (ip, is_lb): &(String, bool)) {
        let key = self.key(ip);
        if *is_lb && !self.service.lb_source_ranges.is_empty() {
            self.add("fw", key.clone());
            let family = model_family(self.f);
            for r in self
                .service
                .lb_source_ranges
                .iter()
                .filter(|r| Family::of(&r.addr) == family)
            {
                self.add("fw-allow", format!("{key} . {}/{}", r.addr, r.len));
            }
        }
        let flows = self.external_flow_backends();
        self.track_udp(ip, &flows);
        self.frontend(
            &key,
            ["fe", "fe-pod", "masq-fe", "local-fe", "no-endpoints"],
            Shared::Eps,
            Shared::Epx,
        );
    }

    fn node_port(&mut self, node_port: u16) {
        let key = format!("{} . {node_port}", proto(self.port.protocol));
        let flows = self.external_flow_backends();
        self.track_udp_node_port(node_port, &flows);
        self.frontend(
            &key,
            ["np", "np-pod", "masq-np", "local-np", "no-endpoints-np"],
            Shared::NpEps,
            Shared::NpEpx,
        );
    }

    /// An external frontend (external IP, LB IP or NodePort): sets named in `names` are
    /// (dispatch, pod dispatch, masquerade, local-masquerade, no-endpoints).
    fn frontend(
        &mut self,
        key: &str,
        names: [&str; 5],
        main: fn(usize) -> Shared,
        pod: fn(usize) -> Shared,
    ) {
        let [fe, fe_pod, masq, local_masq, none] = names;
        let local = self.sel.external_policy_local;
        let backends = if local {
            &self.sel.local
        } else {
            &self.sel.cluster
        };
        if backends.is_empty() {
            let verdict = self.missing();
            self.add(none, format!("{key} : {verdict}"));
        } else {
            let verdict = self.dispatch(key, backends, main(backends.len()));
            self.add(fe, format!("{key} : {verdict}"));
            let mark_set = if local { local_masq } else { masq };
            self.add(mark_set, key.to_string());
        }
        // Pods reaching an eTP-Local frontend use every endpoint (kube-proxy's short-circuit),
        // and are never dropped for lack of a local one.
        if local && !self.sel.cluster.is_empty() {
            let cluster = &self.sel.cluster;
            let verdict = self.dispatch(key, cluster, pod(cluster.len()));
            self.add(fe_pod, format!("{key} : {verdict}"));
        }
    }

    /// Elements for a frontend's backends; returns the verdict that reaches them.
    fn dispatch(&mut self, key: &str, backends: &[Backend], shared: Shared) -> String {
        if let Some(timeout) = self.service.affinity_timeout {
            return self.affinity(key, backends, timeout, shared);
        }
        let (chain, map) = shared.names();
        let map = SetName::from(map.as_str());
        for (i, b) in backends.iter().enumerate() {
            let element = format!("{key} . {i} : {} . {}", addr(&b.ip), b.port);
            self.elements.push((map.clone(), element.into()));
        }
        self.c.needs.insert(shared);
        format!("goto {chain}")
    }

    /// ClientIP affinity: a chain per frontend that first sends clients seen within the timeout
    /// to the backend they used, then picks at random and remembers the client in that backend's
    /// set (kube-proxy's layout; only affinity Services pay for chains).
    ///
    /// The pod short-circuit of an eTP-Local frontend (`shared` Epx/NpEpx) has chains of its
    /// own: it picks among other backends than the frontend's external traffic. Sets and
    /// endpoint chains are named by endpoint, not position, so endpoints joining or leaving do
    /// not hand remembered clients to another endpoint; set names carry the timeout, which an
    /// existing set cannot change.
    fn affinity(
        &mut self,
        key: &str,
        backends: &[Backend],
        timeout: u32,
        shared: Shared,
    ) -> String {
        let l3 = self.f.l3();
        let scope = match shared {
            Shared::Epx(_) | Shared::NpEpx(_) => format!("{key}/pod"),
            Shared::Eps(_) | Shared::NpEps(_) => key.to_string(),
        };
        let base = format!(
            "aff-{}-{}",
            safe_fragment(&self.service.key.name, 12),
            short_hash(&format!(
                "{}/{}/{scope}",
                self.service.key.namespace, self.service.key.name
            ))
        );
        let mut pick = Vec::new();
        let mut remembered = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let to = match b.ip {
                std::net::IpAddr::V4(v4) => format!("{v4}:{}", b.port),
                std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", b.port),
            };
            let endpoint = short_hash(&to);
            let set = format!("{base}-{endpoint}-t{timeout}");
            let target = format!("{base}-e{endpoint}");
            self.c.sets.push((
                set.clone(),
                Set::plain(&[
                    &format!("typeof {l3} saddr"),
                    "flags dynamic,timeout",
                    &format!("timeout {timeout}s"),
                ]),
            ));
            self.c.chains.push((
                target.clone(),
                Chain {
                    base: None,
                    rules: vec![
                        format!("update @{set} {{ {l3} saddr }}"),
                        format!(
                            "meta l4proto {} dnat {l3} to {to}",
                            proto(self.port.protocol)
                        ),
                    ],
                },
            ));
            remembered.push(format!("{l3} saddr @{set} goto {target}"));
            pick.push(format!("{i} : goto {target}"));
        }
        let mut rules = remembered;
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }}",
            backends.len(),
            pick.join(", ")
        ));
        self.c
            .chains
            .push((base.clone(), Chain { base: None, rules }));
        format!("goto {base}")
    }

    /// Records the UDP flows to an address frontend (or that it has none).
    fn track_udp(&mut self, frontend: &str, backends: &[Backend]) {
        let Ok(frontend) = frontend.parse() else {
            return;
        };
        if self.port.protocol != Protocol::Udp {
            return;
        }
        let (port, protocol) = (self.port.port, self.port.protocol);
        if backends.is_empty() {
            self.c.udp.insert(StaleFlow::Frontend {
                frontend,
                port,
                protocol,
            });
        }
        for b in backends {
            self.c.udp.insert(StaleFlow::Endpoint {
                frontend,
                port,
                protocol,
                endpoint: b.ip,
            });
        }
    }

    /// Records the UDP flows to a NodePort (or that it has no backend).
    fn track_udp_node_port(&mut self, port: u16, backends: &[Backend]) {
        let protocol = self.port.protocol;
        if protocol != Protocol::Udp {
            return;
        }
        if backends.is_empty() {
            let family = model_family(self.f);
            self.c.udp.insert(StaleFlow::NodePortFrontend {
                port,
                protocol,
                family,
            });
        }
        for b in backends {
            self.c.udp.insert(StaleFlow::NodePort {
                port,
                protocol,
                endpoint: b.ip,
            });
        }
    }

    /// Every backend may reach itself through the Service: masquerade that (hairpin).
    fn hairpin(&mut self) {
        let (set, sel) = (SetName::from("hairpin"), self.sel);
        let all = sel.cluster.iter().chain(sel.local.iter());
        let pairs = all.map(|b| (set.clone(), format!("{0} . {0}", addr(&b.ip)).into()));
        self.elements.extend(pairs);
    }
}
