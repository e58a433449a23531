//! The EndpointSlice controller as a pure function: a Service and the cluster's pods in, the
//! slices Kubernetes would write out.
//!
//! As the controller does: only Services with a non-empty selector (and not ExternalName) get
//! slices; pods of the Service's namespace whose labels match the selector become endpoints,
//! one slice family per entry of the Service's `ipFamilies`; conditions are `serving` = the pod
//! is ready, `terminating` = the pod is being deleted, `ready` = `publishNotReadyAddresses` or
//! (serving and not terminating); `hostname` is set when the pod has one and its `subdomain` is
//! the Service's name; `nodeName`, `zone` (the node's `topology.kubernetes.io/zone`) and a Pod
//! `targetRef` are filled in. Ports are resolved per pod (a numeric `targetPort` as is, a named
//! one to the pod's container port of that name and protocol, skipped when the pod has none), and
//! pods with different resolved ports land in different slices. At most 100 endpoints go in a
//! slice. A Service with nothing to list gets one empty placeholder slice per family. Slices
//! carry the Service's labels plus `kubernetes.io/service-name`,
//! `endpointslice.kubernetes.io/managed-by` and, for headless Services,
//! `service.kubernetes.io/headless`. Slice names are `<service>-<5>` with a suffix derived from
//! the slice's content key, so rewriting the same state yields the same names.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::alloc::{self, Family};
use super::workload::{self, PodSpec, Protocol};

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The EndpointSlice controller's name.
pub const CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// The label marking slices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Endpoints per slice, the controller's default `--max-endpoints-per-slice`.
pub const MAX_PER_SLICE: usize = 100;

/// What the controller reads of one pod.
#[derive(Clone, Copy, Debug)]
pub struct SlicePod<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub spec: &'a PodSpec,
    pub ips: &'a [IpAddr],
    pub node: &'a str,
    pub zone: Option<&'a str>,
    pub ready: bool,
    pub terminating: bool,
}

/// A slice's ports, as an orderable key (name, protocol, port).
type PortsKey = Vec<(String, Protocol, u16, Option<String>)>;

/// The EndpointSlices of `svc` given every pod of the cluster (see the module doc).
pub fn endpoint_slices(
    svc: &core::Service,
    pods: &[SlicePod<'_>],
) -> Vec<discovery::EndpointSlice> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty());
    let Some(selector) = selector.filter(|_| spec.type_.as_deref() != Some("ExternalName")) else {
        return Vec::new();
    };
    let namespace = svc.metadata.namespace.as_deref().unwrap_or("default");
    let mut selected: Vec<&SlicePod<'_>> = pods
        .iter()
        .filter(|p| p.namespace == namespace)
        .filter(|p| {
            selector
                .iter()
                .all(|(k, v)| p.spec.labels.get(k) == Some(v))
        })
        .collect();
    selected.sort_by_key(|p| p.name);
    let mut out = Vec::new();
    for fam in alloc::families(svc) {
        out.extend(family_slices(svc, &selected, fam));
    }
    out
}

/// The slices of one family.
fn family_slices(
    svc: &core::Service,
    pods: &[&SlicePod<'_>],
    fam: Family,
) -> Vec<discovery::EndpointSlice> {
    let mut groups: BTreeMap<PortsKey, Vec<discovery::Endpoint>> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod.ips.iter().find(|ip| matches_family(ip, fam)) else {
            continue;
        };
        groups
            .entry(resolve_ports(svc, pod.spec))
            .or_default()
            .push(endpoint(svc, pod, *ip));
    }
    if groups.is_empty() {
        return vec![slice(svc, fam, &Vec::new(), Vec::new(), 0)];
    }
    let mut out = Vec::new();
    for (ports, endpoints) in groups {
        for (i, chunk) in endpoints.chunks(MAX_PER_SLICE).enumerate() {
            out.push(slice(svc, fam, &ports, chunk.to_vec(), i));
        }
    }
    out
}

fn matches_family(ip: &IpAddr, fam: Family) -> bool {
    match fam {
        Family::V4 => ip.is_ipv4(),
        Family::V6 => ip.is_ipv6(),
    }
}

/// The Service's ports as this pod serves them; named target ports the pod lacks are left out.
fn resolve_ports(svc: &core::Service, pod: &PodSpec) -> PortsKey {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[]);
    ports
        .iter()
        .filter_map(|p| {
            let proto = Protocol::parse("", p.protocol.as_deref()).unwrap_or(Protocol::Tcp);
            let target = match &p.target_port {
                None => u16::try_from(p.port).ok()?,
                Some(IntOrString::Int(n)) => u16::try_from(*n).ok()?,
                Some(IntOrString::String(name)) => pod.named_port(name, proto)?,
            };
            let name = p.name.clone().unwrap_or_default();
            Some((name, proto, target, p.app_protocol.clone()))
        })
        .collect()
}

/// One endpoint for `pod` at `ip`.
fn endpoint(svc: &core::Service, pod: &SlicePod<'_>, ip: IpAddr) -> discovery::Endpoint {
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let serving = pod.ready;
    let ready = publish || (serving && !pod.terminating);
    let svc_name = svc.metadata.name.as_deref().unwrap_or_default();
    let hostname = pod
        .spec
        .hostname
        .clone()
        .filter(|_| pod.spec.subdomain.as_deref() == Some(svc_name));
    discovery::Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(discovery::EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(pod.terminating),
        }),
        hostname,
        node_name: Some(pod.node.to_owned()),
        zone: pod.zone.map(str::to_owned),
        target_ref: Some(core::ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(pod.namespace.to_owned()),
            name: Some(pod.name.to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A slice of `svc` holding `endpoints` with `ports`; `chunk` numbers slices of the same key.
fn slice(
    svc: &core::Service,
    fam: Family,
    ports: &PortsKey,
    endpoints: Vec<discovery::Endpoint>,
    chunk: usize,
) -> discovery::EndpointSlice {
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    let address_type = match fam {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    };
    let key = format!("{svc_name}/{address_type}/{ports:?}/{chunk}");
    let mut base: String = svc_name.chars().take(57).collect();
    base.push('-');
    discovery::EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{base}{}", suffix(&key))),
            generate_name: Some(base),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(labels(svc)),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: svc_name,
                uid: svc.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints,
        ports: Some(
            ports
                .iter()
                .map(|(name, proto, port, app)| discovery::EndpointPort {
                    name: Some(name.clone()),
                    protocol: Some(proto.as_str().into()),
                    port: Some(i32::from(*port)),
                    app_protocol: app.clone(),
                })
                .collect(),
        ),
    }
}

/// The Service's labels plus the controller's.
fn labels(svc: &core::Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), name);
    labels.insert(MANAGED_BY_LABEL.into(), CONTROLLER.into());
    let headless = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None");
    if headless {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels
}

/// A stable 5-character suffix for `key`.
fn suffix(key: &str) -> String {
    let hash = workload::template_hash(key);
    let mut s: String = hash.chars().rev().take(5).collect();
    while s.len() < 5 {
        s.push('x');
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use svcplane_common::model::Object;

    use super::*;
    use crate::lab::workload::ContainerPort;

    fn svc(spec: serde_json::Value) -> core::Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"team": "a"}},
            "spec": spec,
        }))
        .unwrap()
    }

    fn spec(app: &str, http: u16) -> PodSpec {
        PodSpec {
            labels: [("app".to_owned(), app.to_owned())].into(),
            ports: vec![ContainerPort {
                name: Some("http".into()),
                port: http,
                protocol: Protocol::Tcp,
            }],
            ..PodSpec::default()
        }
    }

    struct Fixture {
        specs: Vec<(String, String, PodSpec)>,
        ips: Vec<Vec<IpAddr>>,
    }

    impl Fixture {
        fn new(pods: &[(&str, &str, PodSpec)]) -> Fixture {
            let ips = (0..pods.len())
                .map(|i| {
                    let i = u8::try_from(i).unwrap() + 2;
                    vec![
                        IpAddr::from([10, 244, 0, i]),
                        format!("fd00:244::{i}").parse().unwrap(),
                    ]
                })
                .collect();
            Fixture {
                specs: pods
                    .iter()
                    .map(|(ns, n, s)| (ns.to_string(), n.to_string(), s.clone()))
                    .collect(),
                ips,
            }
        }

        fn pods(&self) -> Vec<SlicePod<'_>> {
            self.specs
                .iter()
                .zip(&self.ips)
                .map(|((ns, name, spec), ips)| SlicePod {
                    namespace: ns,
                    name,
                    spec,
                    ips,
                    node: "node-0",
                    zone: Some("zone-a"),
                    ready: true,
                    terminating: false,
                })
                .collect()
        }
    }

    /// Every slice must pass svcplane's own API validation.
    fn check(slices: &[discovery::EndpointSlice]) {
        for s in slices {
            let mut v = serde_json::to_value(s).unwrap();
            v["apiVersion"] = "discovery.k8s.io/v1".into();
            v["kind"] = "EndpointSlice".into();
            let obj = svcplane_common::convert::from_json(v).unwrap().unwrap();
            assert!(matches!(obj, Object::EndpointSlice(_)));
        }
    }

    fn addrs(s: &discovery::EndpointSlice) -> Vec<&str> {
        s.endpoints
            .iter()
            .map(|e| e.addresses[0].as_str())
            .collect()
    }

    #[test]
    fn the_selector_picks_pods_of_the_namespace() {
        let f = Fixture::new(&[
            ("shop", "web-b", spec("web", 8080)),
            ("shop", "web-a", spec("web", 8080)),
            ("shop", "db-0", spec("db", 8080)),
            ("other", "web-x", spec("web", 8080)),
        ]);
        let s = svc(
            serde_json::json!({"clusterIP": "10.96.0.2", "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080}]}),
        );
        let slices = endpoint_slices(&s, &f.pods());
        check(&slices);
        assert_eq!(slices.len(), 1, "single-stack IPv4: one slice");
        let sl = &slices[0];
        assert_eq!(sl.address_type, "IPv4");
        assert_eq!(
            addrs(sl),
            ["10.244.0.3", "10.244.0.2"],
            "sorted by pod name"
        );
        let labels = sl.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], CONTROLLER);
        assert_eq!(labels["team"], "a");
        assert!(sl.metadata.name.as_ref().unwrap().starts_with("web-"));
        let ep = &sl.endpoints[0];
        assert_eq!(ep.node_name.as_deref(), Some("node-0"));
        assert_eq!(ep.zone.as_deref(), Some("zone-a"));
        assert_eq!(
            ep.target_ref.as_ref().unwrap().name.as_deref(),
            Some("web-a")
        );
        assert_eq!(sl.ports.as_ref().unwrap()[0].port, Some(8080));
        // The same input gives the same names.
        assert_eq!(endpoint_slices(&s, &f.pods()), slices);
    }

    #[test]
    fn named_ports_resolve_per_pod_into_separate_slices() {
        let f = Fixture::new(&[
            ("shop", "web-a", spec("web", 8080)),
            ("shop", "web-b", spec("web", 9090)),
            (
                "shop",
                "web-c",
                PodSpec {
                    ports: vec![],
                    ..spec("web", 1)
                },
            ),
        ]);
        let s = svc(
            serde_json::json!({"clusterIP": "10.96.0.2", "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                      {"name": "admin", "port": 81, "targetPort": 7000}]}),
        );
        let slices = endpoint_slices(&s, &f.pods());
        check(&slices);
        let mut by_ports: Vec<(Vec<i32>, Vec<&str>)> = slices
            .iter()
            .map(|sl| {
                (
                    sl.ports
                        .as_ref()
                        .unwrap()
                        .iter()
                        .map(|p| p.port.unwrap())
                        .collect(),
                    addrs(sl),
                )
            })
            .collect();
        by_ports.sort();
        assert_eq!(
            by_ports,
            [
                (vec![7000], vec!["10.244.0.4"]),
                (vec![8080, 7000], vec!["10.244.0.2"]),
                (vec![9090, 7000], vec!["10.244.0.3"]),
            ]
        );
    }

    #[test]
    fn hostnames_need_the_matching_subdomain() {
        let mut pg = spec("pg", 5432);
        pg.hostname = Some("pg-0".into());
        pg.subdomain = Some("pg-headless".into());
        let f = Fixture::new(&[("shop", "pg-0", pg)]);
        let headless = |name: &str| {
            let mut s = svc(
                serde_json::json!({"clusterIP": "None", "selector": {"app": "pg"},
                "ports": [{"port": 5432}]}),
            );
            s.metadata.name = Some(name.into());
            s
        };
        let slices = endpoint_slices(&headless("pg-headless"), &f.pods());
        check(&slices);
        assert_eq!(slices[0].endpoints[0].hostname.as_deref(), Some("pg-0"));
        assert_eq!(
            slices[0].metadata.labels.as_ref().unwrap()[HEADLESS_LABEL],
            ""
        );
        let other = endpoint_slices(&headless("pg-other"), &f.pods());
        assert_eq!(other[0].endpoints[0].hostname, None);
    }

    #[test]
    fn conditions_follow_readiness_and_termination() {
        let f = Fixture::new(&[
            ("shop", "a", spec("web", 80)),
            ("shop", "b", spec("web", 80)),
            ("shop", "c", spec("web", 80)),
        ]);
        let mut pods = f.pods();
        pods[1].ready = false;
        pods[2].terminating = true;
        let s = svc(
            serde_json::json!({"clusterIP": "10.96.0.2", "selector": {"app": "web"},
            "ports": [{"port": 80}]}),
        );
        let conds = |s: &core::Service| -> Vec<(bool, bool, bool)> {
            endpoint_slices(s, &pods)[0]
                .endpoints
                .iter()
                .map(|e| {
                    let c = e.conditions.as_ref().unwrap();
                    (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
                })
                .collect()
        };
        assert_eq!(
            conds(&s),
            [
                (true, true, false),
                (false, false, false),
                (false, true, true)
            ]
        );
        let mut publish = s.clone();
        publish.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        assert!(conds(&publish).iter().all(|c| c.0));
    }

    #[test]
    fn dual_stack_services_get_a_slice_per_family_and_empty_ones_a_placeholder() {
        let f = Fixture::new(&[("shop", "a", spec("web", 80))]);
        let s = svc(
            serde_json::json!({"clusterIPs": ["10.96.0.2", "fd00:96::2"],
            "ipFamilies": ["IPv4", "IPv6"], "selector": {"app": "web"}, "ports": [{"port": 80}]}),
        );
        let slices = endpoint_slices(&s, &f.pods());
        check(&slices);
        let got: Vec<_> = slices
            .iter()
            .map(|s| (s.address_type.as_str(), addrs(s)))
            .collect();
        assert_eq!(
            got,
            [("IPv4", vec!["10.244.0.2"]), ("IPv6", vec!["fd00:244::2"])]
        );
        let none = svc(
            serde_json::json!({"clusterIP": "10.96.0.3", "selector": {"app": "nothing"},
            "ports": [{"port": 80}]}),
        );
        let placeholder = endpoint_slices(&none, &f.pods());
        check(&placeholder);
        assert_eq!(placeholder.len(), 1);
        assert!(placeholder[0].endpoints.is_empty());
        let no_selector =
            svc(serde_json::json!({"clusterIP": "10.96.0.4", "ports": [{"port": 80}]}));
        assert!(endpoint_slices(&no_selector, &f.pods()).is_empty());
    }
}
