//! Endpoint selection: which backends each Service port may use on this node.
//!
//! This is kube-proxy's `CategorizeEndpoints` (`pkg/proxy/topology.go`) together with the part of
//! its EndpointSlice cache that turns slices into per-port endpoint lists
//! (`pkg/proxy/endpointslicecache.go`), as a pure function. For one Service port in one IP
//! family, [`select`] resolves every endpoint's target port from its slice's ports
//! (`resolve`), keeps the usable endpoints (ready ones, else serving-and-terminating ones,
//! decided separately for each scope), narrows the cluster-wide list with topology hints
//! (`topology`) and splits off the node-local list. The ruleset builder turns the resulting
//! [`PortEndpoints`] into chains and verdicts; nothing here knows about nftables.
//!
//! What is deliberately not here: headless and ExternalName Services (kube-proxy's service
//! tracker skips them, so callers never ask), `publishNotReadyAddresses` (the EndpointSlice
//! controller already reports such endpoints as ready) and the Service's `trafficDistribution`
//! field or `service.kubernetes.io/topology-mode` annotation: kube-proxy 1.34 reads neither and
//! acts on the hints alone, which the controller only writes when one of them asks for it.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use svcplane_common::model::{
    Family, IpMode, MergedEndpoint, Node, Service, ServicePort, ServiceType, TrafficPolicy,
};

mod resolve;
#[cfg(test)]
mod tests;
mod topology;

use resolve::Candidate;
use topology::Topology;

/// The node this proxy runs on, as endpoint selection sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// Compared with endpoints' `nodeName` (locality) and `hints.forNodes`. Empty: no endpoint
    /// is local, as in kube-proxy when it has no hostname.
    pub name: Arc<str>,
    /// Label `topology.kubernetes.io/zone`; without it zone hints are never used.
    pub zone: Option<Arc<str>>,
}

impl NodeInfo {
    pub fn new(name: &str, zone: Option<&str>) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            zone: zone.map(Into::into),
        }
    }
}

impl From<&Node> for NodeInfo {
    fn from(node: &Node) -> NodeInfo {
        NodeInfo {
            name: node.name.clone(),
            zone: node.zone.clone(),
        }
    }
}

/// One backend for one Service port: address and the resolved target port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
    /// The endpoint's `nodeName` is this node.
    pub local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Backend {
    /// Still serving while it shuts down: the fallback when no ready endpoint is in scope.
    pub fn is_serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }

    /// Ready, or serving while terminating: the only endpoints kube-proxy ever sends traffic to.
    pub fn is_usable(&self) -> bool {
        self.ready || self.is_serving_terminating()
    }
}

/// What the proxy must program for one Service port in one IP family.
///
/// How the nftables proxier reads it: with no usable endpoint anywhere (`!has_any`) every
/// frontend of the port REJECTs; otherwise ClusterIP traffic goes to [`Self::internal`] and
/// DROPs when that is empty ([`Self::has_internal`]), external traffic goes to
/// [`Self::external`] and DROPs when that is empty, and external traffic from this node or its
/// pods short-circuits to `cluster` when `external_policy_local`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortEndpoints {
    /// Backends for traffic with cluster scope: ClusterIP traffic when iTP=Cluster, external
    /// traffic when eTP=Cluster, and pod- or node-originated external traffic short-circuited
    /// under eTP=Local. Topology hints apply here. Empty when no traffic of the port has cluster
    /// scope (iTP=Local without external frontends).
    pub cluster: Vec<Backend>,
    /// Backends for traffic with node-local scope: this node's endpoints only, for external
    /// traffic under eTP=Local and ClusterIP traffic under iTP=Local. Never topology-filtered.
    /// Empty when neither policy is Local.
    pub local: Vec<Backend>,
    /// ClusterIP traffic uses `local` (iTP=Local) rather than `cluster`.
    pub internal_policy_local: bool,
    /// External traffic uses `local` (eTP=Local on a Service that has external frontends).
    pub external_policy_local: bool,
    /// The port has a NodePort, or an externalIP or VIP-mode load-balancer IP of this family.
    pub externally_accessible: bool,
    /// Some endpoint anywhere in the cluster is usable (ready, or serving and terminating); when
    /// false every frontend REJECTs.
    pub has_any: bool,
    /// Distinct addresses of this node's ready endpoints for this port. The healthCheckNodePort
    /// answer is per Service: see [`local_ready_endpoints`].
    pub local_ready: usize,
}

impl PortEndpoints {
    /// The backends ClusterIP traffic is sent to.
    pub fn internal(&self) -> &[Backend] {
        if self.internal_policy_local {
            &self.local
        } else {
            &self.cluster
        }
    }

    /// The backends external (NodePort, externalIP, load-balancer) traffic is sent to.
    pub fn external(&self) -> &[Backend] {
        if self.external_policy_local {
            &self.local
        } else {
            &self.cluster
        }
    }

    /// ClusterIP traffic has somewhere to go; when false but `has_any`, it is dropped.
    pub fn has_internal(&self) -> bool {
        !self.internal().is_empty()
    }

    /// External traffic has somewhere to go; when false but `has_any`, it is dropped (after the
    /// short-circuit for traffic from this node).
    pub fn has_external(&self) -> bool {
        !self.external().is_empty()
    }
}

/// Selects the backends of `port` of `service` among the Service's merged `endpoints`, for
/// traffic of `family` handled on `node`.
pub fn select(
    service: &Service,
    port: &ServicePort,
    endpoints: &[MergedEndpoint],
    family: Family,
    node: &NodeInfo,
) -> PortEndpoints {
    let policies = Policies::of(service, port, family);
    let candidates = resolve::candidates(port, endpoints, family, node);
    PortEndpoints {
        cluster: if policies.uses_cluster() {
            cluster_backends(&candidates, node)
        } else {
            Vec::new()
        },
        local: if policies.uses_local() {
            local_backends(&candidates)
        } else {
            Vec::new()
        },
        internal_policy_local: policies.internal_local,
        external_policy_local: policies.external_local,
        externally_accessible: policies.externally_accessible,
        has_any: candidates.iter().any(|c| c.backend.is_usable()),
        local_ready: count_ips(
            candidates
                .iter()
                .map(|c| &c.backend)
                .filter(|b| b.local && b.ready)
                .map(|b| b.ip),
        ),
    }
}

/// The healthCheckNodePort answer for a Service: how many distinct addresses of `family` are
/// ready endpoints on `node`.
///
/// kube-proxy counts per Service, not per port, squashing an address that serves several ports
/// into one, and only counts endpoints that carry some port (its cache holds nothing else).
/// Terminating endpoints never count, even while they still serve: the health check must fail
/// on a node that only has terminating endpoints, so that load balancers drain it.
pub fn local_ready_endpoints(
    endpoints: &[MergedEndpoint],
    family: Family,
    node: &NodeInfo,
) -> usize {
    count_ips(
        endpoints
            .iter()
            .filter(|m| !m.ports().is_empty())
            .map(|m| m.endpoint())
            .filter(|e| Family::of(&e.ip) == family && e.ready && resolve::is_local(e, node))
            .map(|e| e.ip),
    )
}

fn count_ips(ips: impl Iterator<Item = IpAddr>) -> usize {
    ips.collect::<BTreeSet<_>>().len()
}

/// Which traffic policies a Service port uses (kube-proxy's `ServicePort` policy accessors).
#[derive(Debug, Clone, Copy)]
struct Policies {
    internal_local: bool,
    external_local: bool,
    externally_accessible: bool,
}

impl Policies {
    fn of(service: &Service, port: &ServicePort, family: Family) -> Policies {
        // eTP only means something for a Service that promises external frontends at all
        // (`ExternalPolicyLocal` in `pkg/api/v1/service`): type NodePort or LoadBalancer, or a
        // ClusterIP Service with externalIPs. iTP applies whatever the type.
        Policies {
            internal_local: service.internal_traffic_policy == TrafficPolicy::Local,
            external_local: service_has_external_frontends(service)
                && service.external_traffic_policy == TrafficPolicy::Local,
            externally_accessible: port_externally_accessible(service, port, family),
        }
    }

    // Cluster-scope endpoints are needed when ClusterIP traffic is Cluster-scoped, and also
    // whenever the port takes external traffic: even under eTP=Local, traffic from this node and
    // its pods to an external address is short-circuited to the cluster-wide endpoints.
    fn uses_cluster(self) -> bool {
        !self.internal_local || self.externally_accessible
    }

    // Node-local endpoints are needed for iTP=Local, and for eTP=Local when the port actually
    // takes external traffic.
    fn uses_local(self) -> bool {
        self.internal_local || (self.external_local && self.externally_accessible)
    }
}

/// The Service promises external frontends (`apiservice.ExternallyAccessible`).
fn service_has_external_frontends(service: &Service) -> bool {
    match service.service_type {
        ServiceType::NodePort | ServiceType::LoadBalancer => true,
        ServiceType::ClusterIp => !service.external_ips.is_empty(),
        ServiceType::ExternalName => false,
    }
}

/// The port has external frontends in this family (`ServicePort.ExternallyAccessible`): a
/// NodePort, an externalIP, or a load-balancer IP in VIP mode (Proxy-mode ones never reach the
/// node with their own address).
fn port_externally_accessible(service: &Service, port: &ServicePort, family: Family) -> bool {
    port.node_port.is_some()
        || service
            .external_ips
            .iter()
            .any(|ip| Family::of(ip) == family)
        || service
            .lb_ingress
            .iter()
            .any(|lb| lb.ip_mode == IpMode::Vip && Family::of(&lb.ip) == family)
}

/// The cluster-scope list.
///
/// Ready endpoints that the topology hints leave for this node; if that is empty, the
/// serving-and-terminating endpoints anywhere, without topology. The fallback can ignore topology
/// because topology is only chosen when some ready endpoint matches it: an empty ready list
/// means there is no ready endpoint anywhere.
fn cluster_backends(candidates: &[Candidate<'_>], node: &NodeInfo) -> Vec<Backend> {
    let topology = Topology::from_hints(candidates, node);
    ready_else_terminating(candidates, |c| topology.admits(c.endpoint, node), |_| true)
}

/// The node-local list: this node's ready endpoints, or if there are none its
/// serving-and-terminating ones. Decided independently of the cluster list, so local traffic can
/// fall back to terminating endpoints while remote ready endpoints exist.
fn local_backends(candidates: &[Candidate<'_>]) -> Vec<Backend> {
    ready_else_terminating(candidates, |c| c.backend.local, |c| c.backend.local)
}

/// Ready candidates accepted by `ready_filter`; if there are none, the serving-and-terminating
/// candidates accepted by `fallback_filter`. Candidate order is kept.
fn ready_else_terminating(
    candidates: &[Candidate<'_>],
    ready_filter: impl Fn(&Candidate<'_>) -> bool,
    fallback_filter: impl Fn(&Candidate<'_>) -> bool,
) -> Vec<Backend> {
    let ready = backends(candidates, |c| c.backend.ready && ready_filter(c));
    if !ready.is_empty() {
        return ready;
    }
    backends(candidates, |c| {
        c.backend.is_serving_terminating() && fallback_filter(c)
    })
}

fn backends(candidates: &[Candidate<'_>], keep: impl Fn(&Candidate<'_>) -> bool) -> Vec<Backend> {
    candidates
        .iter()
        .filter(|c| keep(c))
        .map(|c| c.backend)
        .collect()
}
