//! The slim internal model of the Kubernetes objects svcplane consumes.
//!
//! Sources (the Kubernetes API, manifests on disk) convert API objects into these types at their
//! boundary (see [`crate::convert`]); nothing downstream ever holds a whole API object. The types
//! keep exactly the fields a proxy or a DNS server needs, with the API's defaults already applied,
//! so consumers never re-interpret `None`.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// The kinds of objects a source delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Pod,
    Node,
    Namespace,
}

impl Kind {
    /// Every kind, in the order sources list them.
    pub const ALL: [Kind; 5] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
    ];

    /// The API `kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Namespace and name of a namespaced object (for cluster-scoped kinds the namespace is empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// A reference to one object of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub key: ObjectKey,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.key)
    }
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Lower-case name as used in DNS SRV labels (`_tcp`) and nft (`tcp`).
    pub fn as_lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

/// `spec.type` of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// `targetPort` of a Service port: a number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetPort {
    Number(u16),
    Name(Arc<str>),
}

/// One entry of `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// Empty when the Service has a single unnamed port.
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub port: u16,
    /// Defaulted to `port` when absent, as the API server does.
    pub target_port: TargetPort,
    pub node_port: Option<u16>,
}

/// `status.loadBalancer.ingress[].ipMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpMode {
    /// Traffic is delivered with the LB IP as destination: the proxy must handle it.
    Vip,
    /// The load balancer proxies; the node never sees the LB IP (kube-proxy skips it).
    Proxy,
}

/// One load-balancer ingress IP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LbIngress {
    pub ip: IpAddr,
    pub ip_mode: IpMode,
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// An IP prefix (for `loadBalancerSourceRanges`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

/// A Service, with API defaults applied.
///
/// Lists are boxed slices rather than `Vec`s (no spare capacity, 16 bytes instead of 24): this
/// struct exists once per Service, and most of its lists are empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub key: ObjectKey,
    pub service_type: ServiceType,
    /// `clusterIP: None`.
    pub headless: bool,
    /// `spec.clusterIPs` (or `clusterIP`), primary first; empty for headless and ExternalName.
    pub cluster_ips: Box<[IpAddr]>,
    /// Shared: Services repeat a few port lists, which conversion interns
    /// ([`crate::intern::service_ports`]).
    pub ports: Arc<[ServicePort]>,
    pub external_ips: Box<[IpAddr]>,
    pub lb_ingress: Box<[LbIngress]>,
    pub lb_source_ranges: Box<[IpPrefix]>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds (default 10800).
    pub affinity_timeout: Option<u32>,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub health_check_node_port: Option<u16>,
    pub publish_not_ready_addresses: bool,
    /// `spec.externalName` (lower-cased, without trailing dot) for type ExternalName.
    pub external_name: Option<Arc<str>>,
    /// `spec.trafficDistribution`, as written (PreferClose, PreferSameZone, PreferSameNode).
    pub traffic_distribution: Option<Arc<str>>,
    /// Label `service.kubernetes.io/service-proxy-name`.
    pub proxy_name: Option<Arc<str>>,
    /// Label `service.kubernetes.io/headless` is present.
    pub headless_label: bool,
}

impl Service {
    /// A ClusterIP Service with these ClusterIPs (none: headless), no ports, and every other
    /// field at the API's default.
    pub fn new(key: ObjectKey, cluster_ips: Vec<IpAddr>) -> Service {
        Service {
            key,
            service_type: ServiceType::ClusterIp,
            headless: cluster_ips.is_empty(),
            cluster_ips: cluster_ips.into(),
            ports: Arc::new([]),
            external_ips: Box::new([]),
            lb_ingress: Box::new([]),
            lb_source_ranges: Box::new([]),
            affinity_timeout: None,
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            publish_not_ready_addresses: false,
            external_name: None,
            traffic_distribution: None,
            proxy_name: None,
            headless_label: false,
        }
    }
}

/// One port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointPort {
    /// Empty for an unnamed port.
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint, with the API's nil semantics resolved:
/// `ready` nil → true; `serving` nil → the value of `ready`; `terminating` nil → false.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The first of `addresses` (the API makes the rest fungible).
    pub ip: IpAddr,
    pub hostname: Option<Arc<str>>,
    /// `nodeName`, `zone` and `hints`, as one shared value (see [`Endpoint::set_locality`]).
    pub locality: Option<Arc<Locality>>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

// This struct exists once per endpoint: 250k times in a large cluster.
const _: () = assert!(size_of::<Endpoint>() == 48);

/// Where an endpoint runs, and where it should serve (its topology hints). A cluster has few
/// distinct (node, zone, hints) triples — hints usually name the endpoint's own zone — so
/// endpoints share one interned copy of theirs (8 bytes per endpoint instead of 40).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Locality {
    pub node_name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// `hints`; boxed because most endpoints have none.
    pub hints: Option<Box<Hints>>,
}

/// Topology hints of an endpoint (`hints.forZones`, `hints.forNodes`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Hints {
    pub zones: Vec<Arc<str>>,
    pub nodes: Vec<Arc<str>>,
}

impl Endpoint {
    /// A ready endpoint at `ip` with nothing else set.
    pub fn new(ip: IpAddr) -> Endpoint {
        Endpoint {
            ip,
            hostname: None,
            locality: None,
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// `nodeName`.
    pub fn node_name(&self) -> Option<&str> {
        self.locality.as_ref()?.node_name.as_deref()
    }

    /// `zone`.
    pub fn zone(&self) -> Option<&str> {
        self.locality.as_ref()?.zone.as_deref()
    }

    /// Sets `nodeName` and `zone` (interned), keeping the hints.
    pub fn set_locality(&mut self, node_name: Option<&str>, zone: Option<&str>) {
        let hints = self.hints().cloned();
        self.locality = crate::intern::locality(node_name, zone, hints);
    }

    /// Sets `hints` (interned with the locality; no zones and no nodes: none), keeping
    /// `nodeName` and `zone`.
    pub fn set_hints(&mut self, hints: Hints) {
        let hints = (!hints.zones.is_empty() || !hints.nodes.is_empty()).then_some(hints);
        let (node, zone) = (self.node_name(), self.zone());
        self.locality = crate::intern::locality(node, zone, hints);
    }

    /// `hints`, if any.
    pub fn hints(&self) -> Option<&Hints> {
        self.locality.as_ref()?.hints.as_deref()
    }

    /// `hints.forZones` (empty without hints).
    pub fn hint_zones(&self) -> &[Arc<str>] {
        self.hints().map_or(&[], |h| &h.zones)
    }

    /// `hints.forNodes` (empty without hints).
    pub fn hint_nodes(&self) -> &[Arc<str>] {
        self.hints().map_or(&[], |h| &h.nodes)
    }
}

/// An EndpointSlice of address type IPv4 or IPv6 (FQDN slices are dropped at conversion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    pub key: ObjectKey,
    /// Label `kubernetes.io/service-name`; slices without it belong to no Service.
    pub service_name: Option<Arc<str>>,
    pub family: Family,
    pub ports: Arc<[EndpointPort]>,
    /// Held inline: merged lists refer to them by (slice, index), so each endpoint is stored
    /// once, in its slice, with no allocation of its own.
    pub endpoints: Vec<Endpoint>,
}

/// One endpoint of a Service merged across its slices: a reference into the slice it came
/// from (16 bytes, sharing the slice the source and the catalog already hold).
#[derive(Clone)]
pub struct MergedEndpoint {
    slice: Arc<EndpointSlice>,
    index: u32,
}

impl MergedEndpoint {
    /// Endpoint `index` of `slice`; None if there is no such endpoint.
    pub fn new(slice: Arc<EndpointSlice>, index: usize) -> Option<MergedEndpoint> {
        let index = u32::try_from(index).ok()?;
        slice.endpoints.get(index as usize)?;
        Some(MergedEndpoint { slice, index })
    }

    /// An endpoint with these ports, in a slice of its own (for tests and generated catalogs).
    pub fn standalone(endpoint: Endpoint, ports: Arc<[EndpointPort]>) -> MergedEndpoint {
        let slice = EndpointSlice {
            key: ObjectKey::new("", ""),
            service_name: None,
            family: Family::of(&endpoint.ip),
            ports,
            endpoints: vec![endpoint],
        };
        MergedEndpoint {
            slice: Arc::new(slice),
            index: 0,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.slice.endpoints[self.index as usize]
    }

    /// The ports of the endpoint's slice.
    pub fn ports(&self) -> &Arc<[EndpointPort]> {
        &self.slice.ports
    }
}

impl PartialEq for MergedEndpoint {
    fn eq(&self, other: &Self) -> bool {
        self.endpoint() == other.endpoint() && self.ports() == other.ports()
    }
}

impl Eq for MergedEndpoint {}

impl fmt::Debug for MergedEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MergedEndpoint")
            .field("endpoint", self.endpoint())
            .field("ports", self.ports())
            .finish()
    }
}

/// A Pod, reduced to what DNS (`--pods verified`) and the proxy need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub key: ObjectKey,
    pub ips: Vec<IpAddr>,
    pub node_name: Option<Arc<str>>,
    pub labels: Vec<(Arc<str>, Arc<str>)>,
    pub host_network: bool,
}

/// A Node: its addresses and topology labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: Arc<str>,
    /// `status.addresses` of type InternalIP, then ExternalIP.
    pub addresses: Vec<IpAddr>,
    /// Label `topology.kubernetes.io/zone`.
    pub zone: Option<Arc<str>>,
    pub pod_cidrs: Vec<IpPrefix>,
}

/// A Namespace (only its existence matters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: Arc<str>,
}

/// Any object a source delivers, already converted and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Pod(Arc<Pod>),
    Node(Arc<Node>),
    Namespace(Arc<Namespace>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Pod(_) => Kind::Pod,
            Object::Node(_) => Kind::Node,
            Object::Namespace(_) => Kind::Namespace,
        }
    }

    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Service(s) => s.key.clone(),
            Object::EndpointSlice(s) => s.key.clone(),
            Object::Pod(p) => p.key.clone(),
            Object::Node(n) => ObjectKey {
                namespace: "".into(),
                name: n.name.clone(),
            },
            Object::Namespace(n) => ObjectKey {
                namespace: "".into(),
                name: n.name.clone(),
            },
        }
    }

    /// Namespace and name, borrowed ([`Object::key`] builds an owned key); the namespace is
    /// empty for cluster-scoped kinds.
    pub fn ns_name(&self) -> (&str, &str) {
        match self {
            Object::Service(s) => (&s.key.namespace, &s.key.name),
            Object::EndpointSlice(s) => (&s.key.namespace, &s.key.name),
            Object::Pod(p) => (&p.key.namespace, &p.key.name),
            Object::Node(n) => ("", &n.name),
            Object::Namespace(n) => ("", &n.name),
        }
    }

    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            kind: self.kind(),
            key: self.key(),
        }
    }
}
