//! Deterministic synthetic cluster catalogs for benchmarks: this module owns generating
//! Namespaces, Services and EndpointSlices shaped like a real cluster's (namespaces of about a
//! hundred Services, ~80% ClusterIP with one or two named ports, ~20% headless, some with
//! StatefulSet-style hostnames, slices of at most 100 endpoints with a ready/not-ready mix) and
//! writing them as manifests: one JSON `kind: List` file per namespace, which the manifests
//! source reads without YAML's parsing cost. The same [`Spec`] always yields the same catalog
//! (a fixed SplitMix64 stream, not `rand`, whose streams may change between versions), so runs
//! of a benchmark are comparable.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// First address of the Service CIDR (10.96.0.0/12).
const SERVICE_CIDR: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 0);
/// Addresses in the Service CIDR.
const SERVICE_CIDR_SIZE: u32 = 1 << 20;
/// First address of the Pod CIDR (10.128.0.0/9).
const POD_CIDR: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 0);
const POD_CIDR_SIZE: u32 = 1 << 23;
/// Pods per node, as the kubelet's default `maxPods`.
const PODS_PER_NODE: u32 = 110;
/// Endpoints per EndpointSlice, as the EndpointSlice controller's default.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// Annotation that [`Catalog::write_namespace`] sets to its `revision` argument: it changes the
/// files' content without changing the objects svcplane converts.
pub const REVISION_ANNOTATION: &str = "bench.svcplane.io/revision";

const WORDS: [&str; 16] = [
    "api",
    "web",
    "auth",
    "payments",
    "search",
    "cache",
    "frontend",
    "backend",
    "orders",
    "catalog",
    "inventory",
    "queue",
    "metrics",
    "gateway",
    "users",
    "billing",
];
/// Named ports a Service's first port is drawn from: (name, port, targetPort).
const FIRST_PORTS: [(&str, u16, u16); 4] = [
    ("http", 80, 8080),
    ("grpc", 9090, 9090),
    ("https", 443, 8443),
    ("redis", 6379, 6379),
];

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub services: usize,
    pub endpoints_per_service: usize,
    pub services_per_namespace: usize,
    /// Share of headless Services, in percent.
    pub headless_percent: u64,
    /// Share of ready endpoints, in percent.
    pub ready_percent: u64,
    pub seed: u64,
}

impl Spec {
    /// `services` Services of `endpoints_per_service` endpoints each, with the default shape.
    pub fn new(services: usize, endpoints_per_service: usize) -> Spec {
        Spec {
            services,
            endpoints_per_service,
            services_per_namespace: 100,
            headless_percent: 20,
            ready_percent: 90,
            seed: 0x5eed_cafe,
        }
    }
}

/// One named port of a Service and its slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
    /// `TCP` or `UDP`.
    pub protocol: &'static str,
}

/// One endpoint (one Pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// StatefulSet-style hostname (headless Services only).
    pub hostname: Option<String>,
    pub ready: bool,
    pub terminating: bool,
    pub node: String,
    pub pod: String,
}

/// One Service with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `None` for a headless Service.
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<Port>,
    pub endpoints: Vec<Endpoint>,
    /// Suffix of the EndpointSlices' names (`<name>-<suffix><n>`).
    pub slice_suffix: String,
}

impl Service {
    pub fn headless(&self) -> bool {
        self.cluster_ip.is_none()
    }

    /// `<name>.<namespace>.svc.<zone>`, without the trailing dot.
    pub fn fqdn(&self, zone: &str) -> String {
        format!("{}.{}.svc.{zone}", self.name, self.namespace)
    }

    /// Endpoints DNS publishes (ready ones).
    pub fn ready_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| e.ready)
    }
}

/// One namespace and its Services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub services: Vec<Service>,
}

/// A generated catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub namespaces: Vec<Namespace>,
}

impl Catalog {
    /// Generates the catalog `spec` describes. Panics only if the sizes do not fit the CIDRs
    /// (a million Services, eight million endpoints).
    pub fn generate(spec: &Spec) -> Catalog {
        assert!(
            (spec.services as u64) < u64::from(SERVICE_CIDR_SIZE / 2),
            "too many Services"
        );
        let endpoints = spec.services as u64 * spec.endpoints_per_service as u64;
        assert!(
            endpoints < u64::from(POD_CIDR_SIZE - 2),
            "too many endpoints"
        );
        let mut generator = Generator {
            spec: *spec,
            rng: Rng::new(spec.seed),
            services: 0,
            endpoints: 0,
        };
        let per_namespace = spec.services_per_namespace.max(1);
        let count = spec.services.div_ceil(per_namespace);
        let namespaces = (0..count)
            .map(|i| generator.namespace(i, per_namespace.min(spec.services - i * per_namespace)))
            .collect();
        Catalog { namespaces }
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.namespaces.iter().flat_map(|n| n.services.iter())
    }

    pub fn service_count(&self) -> usize {
        self.namespaces.iter().map(|n| n.services.len()).sum()
    }

    pub fn endpoint_count(&self) -> usize {
        self.services().map(|s| s.endpoints.len()).sum()
    }

    /// The file [`Catalog::write_namespace`] writes for namespace `index`.
    pub fn namespace_file(&self, dir: &Path, index: usize) -> PathBuf {
        dir.join(format!("{}.json", self.namespaces[index].name))
    }

    /// Writes one file per namespace into `dir`; returns their paths.
    pub fn write_manifests(&self, dir: &Path, revision: Option<u64>) -> io::Result<Vec<PathBuf>> {
        (0..self.namespaces.len())
            .map(|i| self.write_namespace(dir, i, revision))
            .collect()
    }

    /// Writes (or rewrites in place) the file of namespace `index`; `revision`, when set, goes
    /// into every object's [`REVISION_ANNOTATION`].
    pub fn write_namespace(
        &self,
        dir: &Path,
        index: usize,
        revision: Option<u64>,
    ) -> io::Result<PathBuf> {
        let path = self.namespace_file(dir, index);
        let list = namespace_list(&self.namespaces[index], revision);
        std::fs::write(&path, serde_json::to_vec(&list)?)?;
        Ok(path)
    }
}

/// An address of the Service CIDR that [`Catalog::generate`] never allocates (`n` counts from
/// the top of the CIDR down), for tests that move a Service to a new ClusterIP.
pub fn spare_cluster_ip(n: u32) -> Ipv4Addr {
    let n = n % (SERVICE_CIDR_SIZE / 4);
    Ipv4Addr::from(u32::from(SERVICE_CIDR) + SERVICE_CIDR_SIZE - 2 - n)
}

/// The `kind: List` of a namespace: the Namespace, its Services, then its EndpointSlices.
pub fn namespace_list(namespace: &Namespace, revision: Option<u64>) -> Value {
    let mut items = vec![json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": metadata(&namespace.name, None, revision),
    })];
    items.extend(namespace.services.iter().map(|s| service_json(s, revision)));
    for service in &namespace.services {
        items.extend(endpoint_slices_json(service, revision));
    }
    json!({ "apiVersion": "v1", "kind": "List", "items": items })
}

/// The Service as the API server returns it (ClusterIPs allocated).
pub fn service_json(service: &Service, revision: Option<u64>) -> Value {
    let ports: Vec<Value> = service
        .ports
        .iter()
        .map(|p| json!({ "name": p.name, "protocol": p.protocol, "port": p.port, "targetPort": p.target_port }))
        .collect();
    let cluster_ip = service
        .cluster_ip
        .map_or_else(|| "None".to_string(), |ip| ip.to_string());
    let mut meta = metadata(&service.name, Some(&service.namespace), revision);
    meta["labels"] = json!({ "app": service.name });
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "selector": { "app": service.name },
            "ports": ports,
        },
    })
}

/// The Service's EndpointSlices as the EndpointSlice controller writes them.
pub fn endpoint_slices_json(service: &Service, revision: Option<u64>) -> Vec<Value> {
    let ports: Vec<Value> = service
        .ports
        .iter()
        .map(|p| json!({ "name": p.name, "protocol": p.protocol, "port": p.target_port }))
        .collect();
    service
        .endpoints
        .chunks(MAX_ENDPOINTS_PER_SLICE)
        .enumerate()
        .map(|(n, chunk)| {
            let name = format!("{}-{}{n}", service.name, service.slice_suffix);
            let mut meta = metadata(&name, Some(&service.namespace), revision);
            meta["generateName"] = json!(format!("{}-", service.name));
            meta["labels"] = slice_labels(service);
            let endpoints: Vec<Value> = chunk.iter().map(|e| endpoint_json(service, e)).collect();
            json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": meta,
                "addressType": "IPv4",
                "ports": ports,
                "endpoints": endpoints,
            })
        })
        .collect()
}

fn slice_labels(service: &Service) -> Value {
    let mut labels = json!({
        "kubernetes.io/service-name": service.name,
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
    });
    if service.headless() {
        labels["service.kubernetes.io/headless"] = json!("");
    }
    labels
}

fn endpoint_json(service: &Service, e: &Endpoint) -> Value {
    let mut value = json!({
        "addresses": [e.ip.to_string()],
        "conditions": { "ready": e.ready, "serving": e.ready, "terminating": e.terminating },
        "nodeName": e.node,
        "targetRef": { "kind": "Pod", "namespace": service.namespace, "name": e.pod },
    });
    if let Some(hostname) = &e.hostname {
        value["hostname"] = json!(hostname);
    }
    value
}

fn metadata(name: &str, namespace: Option<&str>, revision: Option<u64>) -> Value {
    let mut meta = json!({ "name": name });
    if let Some(namespace) = namespace {
        meta["namespace"] = json!(namespace);
    }
    if let Some(revision) = revision {
        meta["annotations"] = json!({ REVISION_ANNOTATION: revision.to_string() });
    }
    meta
}

/// Allocation state while generating.
struct Generator {
    spec: Spec,
    rng: Rng,
    /// Services generated so far (the next ClusterIP's offset).
    services: u32,
    /// Endpoints generated so far (the next Pod IP's offset).
    endpoints: u32,
}

impl Generator {
    fn namespace(&mut self, index: usize, services: usize) -> Namespace {
        let name = format!("team-{index:04}");
        let services = (0..services).map(|i| self.service(&name, i)).collect();
        Namespace { name, services }
    }

    fn service(&mut self, namespace: &str, index: usize) -> Service {
        let word = WORDS[self.rng.index(WORDS.len())];
        let name = format!("{word}-{index}");
        let headless = self.rng.percent(self.spec.headless_percent);
        let cluster_ip = (!headless).then(|| self.next_cluster_ip());
        let ports = self.ports();
        // Half the headless Services are StatefulSets' governing Services: hostnames.
        let stateful = headless && self.rng.percent(50);
        let slice_suffix = self.rng.suffix(5);
        let endpoints = (0..self.spec.endpoints_per_service)
            .map(|i| self.endpoint(&name, &slice_suffix, i, stateful))
            .collect();
        Service {
            namespace: namespace.to_string(),
            name,
            cluster_ip,
            ports,
            endpoints,
            slice_suffix,
        }
    }

    fn next_cluster_ip(&mut self) -> Ipv4Addr {
        // Skip the network address and the first few (kubernetes, kube-dns live there).
        let ip = Ipv4Addr::from(u32::from(SERVICE_CIDR) + 16 + self.services);
        self.services += 1;
        ip
    }

    fn ports(&mut self) -> Vec<Port> {
        let (name, port, target_port) = FIRST_PORTS[self.rng.index(FIRST_PORTS.len())];
        let mut ports = vec![Port {
            name: name.to_string(),
            port,
            target_port,
            protocol: "TCP",
        }];
        if self.rng.percent(50) {
            ports.push(Port {
                name: "metrics".to_string(),
                port: 9100,
                target_port: 9100,
                protocol: "TCP",
            });
        }
        ports
    }

    fn endpoint(&mut self, service: &str, suffix: &str, index: usize, stateful: bool) -> Endpoint {
        let offset = 1 + self.endpoints;
        self.endpoints += 1;
        let ready = self.rng.percent(self.spec.ready_percent);
        let terminating = !ready && self.rng.percent(33);
        let (hostname, pod) = if stateful {
            let pod = format!("{service}-{index}");
            (Some(pod.clone()), pod)
        } else {
            (None, format!("{service}-{suffix}-{}", self.rng.suffix(5)))
        };
        Endpoint {
            ip: Ipv4Addr::from(u32::from(POD_CIDR) + offset),
            hostname,
            ready,
            terminating,
            node: format!("node-{:04}", offset / PODS_PER_NODE),
            pod,
        }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny generator whose stream is fixed forever, for
/// benchmarks that must draw the same names run after run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for picking names (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// An index into a slice of `len` items.
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// True with probability `p`%.
    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    /// `len` characters of the alphabet the API server's generateName uses.
    pub fn suffix(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..len)
            .map(|_| ALPHABET[self.index(ALPHABET.len())] as char)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_sized() {
        let spec = Spec::new(250, 5);
        let a = Catalog::generate(&spec);
        assert_eq!(a, Catalog::generate(&spec));
        assert_eq!(a.namespaces.len(), 3);
        assert_eq!(a.service_count(), 250);
        assert_eq!(a.endpoint_count(), 1250);
        let headless = a.services().filter(|s| s.headless()).count();
        assert!((25..=75).contains(&headless), "{headless} headless");
    }

    #[test]
    fn slices_hold_at_most_100_endpoints() {
        let catalog = Catalog::generate(&Spec::new(3, 250));
        for service in catalog.services() {
            let slices = endpoint_slices_json(service, None);
            assert_eq!(slices.len(), 3);
            let sizes: Vec<usize> = slices
                .iter()
                .map(|s| s["endpoints"].as_array().map_or(0, Vec::len))
                .collect();
            assert_eq!(sizes, [100, 100, 50]);
        }
    }

    #[test]
    fn manifests_load_through_the_manifests_source() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let catalog = Catalog::generate(&Spec::new(150, 3));
        let files = catalog.write_manifests(dir.path(), Some(1))?;
        assert_eq!(files.len(), 2);
        let loaded = svcplane_common::source::manifests::load(&[dir.path().to_path_buf()])?;
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        // 2 Namespaces, 150 Services, 150 EndpointSlices.
        assert_eq!(loaded.objects.len(), 302);
        Ok(())
    }

    #[test]
    fn spare_cluster_ips_are_never_allocated() {
        let catalog = Catalog::generate(&Spec::new(1000, 1));
        let spare = spare_cluster_ip(0);
        assert!(catalog.services().all(|s| s.cluster_ip != Some(spare)));
        assert_eq!(spare, Ipv4Addr::new(10, 111, 255, 254));
    }
}
