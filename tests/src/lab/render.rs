//! What the lab publishes: the manifests directory the data plane reads (Namespaces, Nodes,
//! Services as assigned, EndpointSlices from [`super::slices`], Pods with their status), one
//! JSON file per object written through a hidden temporary file and a rename (the manifests
//! source skips hidden files, so it never reads half a file), unchanged files left alone and
//! files of objects that are gone removed; and each pod's `/etc/netns/<netns>/` files
//! (`resolv.conf` pointing at kube-dns with the pod's search path, `hosts` as the kubelet writes
//! it), which `ip netns exec` bind-mounts over `/etc`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde_json::Value;

use super::alloc::KUBE_DNS_IP;
use super::slices::{self, SlicePod};
use super::state::{NodeState, PodState, State, write_atomic};
use super::{CLUSTER_DOMAIN, Error, Result, net};

/// The Node objects' zone label.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Every object of the manifests directory, by relative path.
pub fn objects(state: &State) -> Result<BTreeMap<PathBuf, Value>> {
    let mut out = BTreeMap::new();
    let mut put =
        |dir: &str, name: String, value: Result<Value, serde_json::Error>| -> Result<()> {
            let value =
                value.map_err(|e| Error::Invalid(format!("serialising {dir}/{name}: {e}")))?;
            out.insert(Path::new(dir).join(format!("{name}.json")), value);
            Ok(())
        };
    for ns in &state.namespaces {
        put(
            "namespaces",
            ns.clone(),
            serde_json::to_value(namespace(ns)),
        )?;
    }
    for node in &state.nodes {
        put(
            "nodes",
            node.name.clone(),
            serde_json::to_value(node_object(node)),
        )?;
    }
    for (key, svc) in &state.services {
        put("services", key.replace('/', "."), serde_json::to_value(svc))?;
    }
    for slice in endpoint_slices(state) {
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        let name = slice.metadata.name.clone().unwrap_or_default();
        put(
            "endpointslices",
            format!("{ns}.{name}"),
            serde_json::to_value(slice),
        )?;
    }
    for (key, pod) in &state.pods {
        put(
            "pods",
            key.replace('/', "."),
            serde_json::to_value(pod_object(state, pod)),
        )?;
    }
    Ok(out)
}

/// The EndpointSlices of every Service in `state`.
pub fn endpoint_slices(state: &State) -> Vec<discovery::EndpointSlice> {
    let ips: Vec<[std::net::IpAddr; 2]> = state.pods.values().map(PodState::ips).collect();
    let pods: Vec<SlicePod<'_>> = state
        .pods
        .values()
        .zip(&ips)
        .map(|(p, ips)| {
            let node = state.nodes.get(p.node);
            SlicePod {
                namespace: &p.namespace,
                name: &p.name,
                spec: &p.spec,
                ips,
                node: node.map_or("", |n| n.name.as_str()),
                zone: node.map(|n| n.zone.as_str()),
                ready: p.ready,
                terminating: p.terminating,
            }
        })
        .collect();
    state
        .services
        .values()
        .flat_map(|svc| slices::endpoint_slices(svc, &pods))
        .collect()
}

fn namespace(name: &str) -> core::Namespace {
    core::Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("kubernetes.io/metadata.name".to_owned(), name.to_owned())].into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A Node object: addresses, zone label, pod CIDRs.
pub fn node_object(node: &NodeState) -> core::Node {
    let (cidr4, cidr6) = net::pod_cidrs(node.index);
    let labels = [
        ("kubernetes.io/hostname", node.name.as_str()),
        ("kubernetes.io/os", "linux"),
        (ZONE_LABEL, node.zone.as_str()),
    ];
    let address = |type_: &str, address: String| core::NodeAddress {
        type_: type_.into(),
        address,
    };
    core::Node {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(core::NodeSpec {
            pod_cidr: Some(cidr4.to_string()),
            pod_cidrs: Some(vec![cidr4.to_string(), cidr6.to_string()]),
            ..Default::default()
        }),
        status: Some(core::NodeStatus {
            addresses: Some(vec![
                address("InternalIP", node.ipv4.to_string()),
                address("InternalIP", node.ipv6.to_string()),
                address("Hostname", node.name.clone()),
            ]),
            ..Default::default()
        }),
    }
}

/// A Pod object as the API would hold it once the kubelet reported its status.
pub fn pod_object(state: &State, pod: &PodState) -> core::Pod {
    let node = state.nodes.get(pod.node);
    let ports = pod
        .spec
        .ports
        .iter()
        .map(|p| core::ContainerPort {
            container_port: i32::from(p.port),
            name: p.name.clone(),
            protocol: Some(p.protocol.as_str().into()),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    let owner = pod.owner.as_ref().map(|o| OwnerReference {
        api_version: "apps/v1".into(),
        kind: format!("{:?}", o.kind),
        name: o.name.clone(),
        controller: Some(true),
        ..Default::default()
    });
    let ip = |ip: String| core::PodIP { ip };
    let host_ip = |ip: String| core::HostIP { ip };
    let condition = |ready: bool| core::PodCondition {
        type_: "Ready".into(),
        status: if ready { "True" } else { "False" }.into(),
        ..Default::default()
    };
    core::Pod {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            labels: Some(pod.spec.labels.clone()),
            owner_references: owner.map(|o| vec![o]),
            deletion_timestamp: pod
                .terminating
                .then(|| Time(k8s_openapi::jiff::Timestamp::now())),
            ..Default::default()
        },
        spec: Some(core::PodSpec {
            node_name: node.map(|n| n.name.clone()),
            hostname: pod.spec.hostname.clone(),
            subdomain: pod.spec.subdomain.clone(),
            containers: vec![core::Container {
                name: "agent".into(),
                image: Some("svcplane-echo".into()),
                ports: Some(ports).filter(|p| !p.is_empty()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(core::PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(pod.ipv4.to_string()),
            pod_ips: Some(vec![ip(pod.ipv4.to_string()), ip(pod.ipv6.to_string())]),
            host_ip: node.map(|n| n.ipv4.to_string()),
            host_ips: node.map(|n| vec![host_ip(n.ipv4.to_string()), host_ip(n.ipv6.to_string())]),
            conditions: Some(vec![condition(pod.ready && !pod.terminating)]),
            ..Default::default()
        }),
    }
}

/// Brings directory `dir` to exactly `objects`; returns how many files changed.
pub fn write_manifests(dir: &Path, objects: &BTreeMap<PathBuf, Value>) -> Result<usize> {
    let mut changed = 0;
    for (rel, value) in objects {
        let path = dir.join(rel);
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| Error::Invalid(format!("serialising {}: {e}", rel.display())))?
            + "\n";
        if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(Error::io(format!("creating {}", parent.display())))?;
        }
        write_atomic(&path, text.as_bytes())?;
        changed += 1;
    }
    let wanted: BTreeSet<PathBuf> = objects.keys().map(|rel| dir.join(rel)).collect();
    for path in files_under(dir) {
        if !wanted.contains(&path) {
            std::fs::remove_file(&path)
                .map_err(Error::io(format!("removing {}", path.display())))?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// The `*.json` files one level of subdirectories below `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let entries = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|r| r.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default()
    };
    entries(dir)
        .into_iter()
        .filter(|p| p.is_dir())
        .flat_map(|sub| entries(&sub))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect()
}

/// `/etc/netns/<netns>`.
pub fn etc_dir(netns: &str) -> PathBuf {
    Path::new("/etc/netns").join(netns)
}

/// The pod's `resolv.conf`: kube-dns, the pod's search path, `ndots:5`.
pub fn resolv_conf(namespace: &str) -> String {
    let d = CLUSTER_DOMAIN;
    format!(
        "# svcplane-lab: cluster DNS (kube-system/kube-dns)\n\
         search {namespace}.svc.{d} svc.{d} {d}\n\
         nameserver {KUBE_DNS_IP}\n\
         options ndots:5\n"
    )
}

/// The pod's `hosts`, as the kubelet writes it.
pub fn hosts(pod: &PodState) -> String {
    let hostname = pod
        .spec
        .hostname
        .clone()
        .unwrap_or_else(|| pod.name.clone());
    let names = match &pod.spec.subdomain {
        Some(sub) => format!(
            "{hostname}.{sub}.{}.svc.{CLUSTER_DOMAIN}\t{hostname}",
            pod.namespace
        ),
        None => hostname,
    };
    format!(
        "# Kubernetes-managed hosts file (svcplane-lab).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         {}\t{names}\n\
         {}\t{names}\n",
        pod.ipv4, pod.ipv6
    )
}

/// Writes the pod's `/etc/netns` files.
pub fn write_etc(pod: &PodState) -> Result<()> {
    let dir = etc_dir(&pod.netns);
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    write_atomic(
        &dir.join("resolv.conf"),
        resolv_conf(&pod.namespace).as_bytes(),
    )?;
    write_atomic(&dir.join("hosts"), hosts(pod).as_bytes())
}

/// Removes `/etc/netns/<netns>` (absent is fine).
pub fn remove_etc(netns: &str) -> Result<()> {
    match std::fs::remove_dir_all(etc_dir(netns)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", etc_dir(netns).display()))(
            e,
        )),
    }
}

/// The `/etc/netns` entries whose names start with `prefix`.
pub fn list_etc(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/etc/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn resolv_conf_searches_the_pod_namespace_first() {
        let text = resolv_conf("myapp-prod");
        assert!(
            text.contains("search myapp-prod.svc.cluster.local svc.cluster.local cluster.local\n")
        );
        assert!(text.contains("nameserver 10.96.0.10\n") && text.contains("options ndots:5\n"));
    }

    #[test]
    fn node_objects_convert_with_zone_and_addresses() {
        let node = NodeState {
            name: "node-1".into(),
            index: 1,
            netns: "x".into(),
            ipv4: [192, 168, 50, 11].into(),
            ipv6: "fd00:50::11".parse().unwrap(),
            zone: "zone-b".into(),
            proxy: None,
            next_host: 2,
        };
        let value = serde_json::to_value(node_object(&node)).unwrap();
        let obj = svcplane_common::convert::from_json(value).unwrap().unwrap();
        let svcplane_common::model::Object::Node(n) = obj else {
            panic!()
        };
        assert_eq!(n.zone.as_deref(), Some("zone-b"));
        assert_eq!(n.addresses.len(), 2);
    }
}
