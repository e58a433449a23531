//! Workloads as the Kubernetes controllers expand them, as pure functions: Pods, Deployments,
//! ReplicaSets, StatefulSets and DaemonSets become [`PodSpec`]s (labels, hostname, subdomain,
//! container ports, readiness probes), and [`reconcile`] turns a workload and the pods it owns
//! into the pods to create and remove.
//!
//! Names follow the controllers: a Deployment's pods are `<name>-<pod-template-hash>-<5>` (the
//! hash computed as Kubernetes does: FNV-32a of the template, its decimal digits mapped onto
//! `bcdfghjklmnpqrstvwxz2456789`), a ReplicaSet's and a DaemonSet's `<name>-<5>`, a
//! StatefulSet's `<name>-<ordinal>` with `hostname` = the pod name and `subdomain` =
//! `spec.serviceName`. Pods get the labels their controller adds (`pod-template-hash`,
//! `statefulset.kubernetes.io/pod-name`, `controller-revision-hash`…).
//!
//! Reconciliation is simplified but keeps each controller's meaning: a Deployment replaces pods
//! of an older template and scales the rest; a ReplicaSet only counts pods (it never replaces
//! them); a StatefulSet keeps ordinals `0..replicas` and replaces pods of an older template; a
//! DaemonSet keeps one pod per node.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The alphabet Kubernetes uses for generated name suffixes and encoded hashes.
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A container port's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// Parses the API's protocol field (default TCP).
    pub fn parse(field: &str, value: Option<&str>) -> Result<Protocol, String> {
        match value.unwrap_or("TCP") {
            "TCP" | "" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(format!("{field}: {other:?} is not one of TCP, UDP, SCTP")),
        }
    }

    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// One `containerPort` of any container of the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A readiness probe, reduced to what the lab can check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Probe {
    /// `httpGet`: a GET of `path` on the pod IP must answer 2xx/3xx.
    Http { port: u16, path: String },
    /// `tcpSocket`: a connect must succeed.
    Tcp { port: u16 },
    /// `exec` and `grpc` probes: ready once the agent runs (nothing to execute).
    Running,
}

/// What the lab runs and publishes for one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    pub labels: BTreeMap<String, String>,
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
    /// `spec.nodeName` as written (the lab pins the pod there).
    pub node_name: Option<String>,
    pub ports: Vec<ContainerPort>,
    /// One per container that has a readiness probe.
    pub probes: Vec<Probe>,
}

impl PodSpec {
    /// The port of container port `name`.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.port)
    }

    /// TCP ports the agent must serve: container ports plus probe ports.
    pub fn tcp_ports(&self) -> Vec<u16> {
        let declared = self.ports.iter().filter(|p| p.protocol == Protocol::Tcp);
        let probed = self.probes.iter().filter_map(|p| match p {
            Probe::Http { port, .. } | Probe::Tcp { port } => Some(*port),
            Probe::Running => None,
        });
        let all: BTreeSet<u16> = declared.map(|p| p.port).chain(probed).collect();
        all.into_iter().collect()
    }

    /// UDP ports the agent must serve.
    pub fn udp_ports(&self) -> Vec<u16> {
        let all: BTreeSet<u16> = self
            .ports
            .iter()
            .filter(|p| p.protocol == Protocol::Udp)
            .map(|p| p.port)
            .collect();
        all.into_iter().collect()
    }
}

/// The workload kinds the lab expands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum WorkloadKind {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
}

/// A workload with its pod template reduced to a [`PodSpec`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
    /// `spec.replicas` (default 1); unused for DaemonSets.
    pub replicas: u32,
    pub template: PodSpec,
    /// The pod-template hash (see the module doc).
    pub hash: String,
    /// A StatefulSet's `spec.serviceName`.
    pub service_name: Option<String>,
}

impl Workload {
    /// `Kind/namespace/name`, the workload's key in the lab state.
    pub fn key(&self) -> String {
        format!("{:?}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// Which workload created a pod, and from which template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub kind: WorkloadKind,
    pub name: String,
    pub hash: String,
}

/// A pod to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPod {
    pub namespace: String,
    pub name: String,
    pub spec: PodSpec,
    pub owner: Option<Owner>,
    /// The node the pod must run on (DaemonSets, `spec.nodeName`).
    pub node: Option<String>,
}

/// An existing, not terminating pod of the workload being reconciled.
#[derive(Clone, Copy, Debug)]
pub struct Existing<'a> {
    pub name: &'a str,
    pub hash: &'a str,
    pub node: &'a str,
    pub ready: bool,
}

/// What [`reconcile`] decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: Vec<NewPod>,
    /// Names (in the workload's namespace) of pods to terminate.
    pub remove: Vec<String>,
}

/// FNV-32a, as Kubernetes' `ComputeHash` uses.
fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Kubernetes' `SafeEncodeString`: each byte mapped onto [`ALPHANUMS`].
fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

/// The pod-template hash of a serialised template (up to 10 characters).
pub fn template_hash(template_json: &str) -> String {
    safe_encode(&fnv32a(template_json.as_bytes()).to_string())
}

/// A random 5-character suffix as `generateName` makes.
pub fn random_suffix(rng: &mut impl Rng) -> String {
    (0..5)
        .map(|_| char::from(ALPHANUMS[rng.random_range(0..ALPHANUMS.len())]))
        .collect()
}

/// Reduces a pod spec: container ports (validated, deduplicated) and readiness probes.
pub fn pod_spec(
    labels: Option<&BTreeMap<String, String>>,
    spec: Option<&core::PodSpec>,
) -> Result<PodSpec, String> {
    let mut out = PodSpec {
        labels: labels.cloned().unwrap_or_default(),
        ..PodSpec::default()
    };
    let Some(spec) = spec else {
        return Err("spec: required value".into());
    };
    if spec.containers.is_empty() {
        return Err("spec.containers: required value".into());
    }
    out.hostname = spec.hostname.clone().filter(|h| !h.is_empty());
    out.subdomain = spec.subdomain.clone().filter(|s| !s.is_empty());
    out.node_name = spec.node_name.clone().filter(|n| !n.is_empty());
    for (i, c) in spec.containers.iter().enumerate() {
        container_ports(i, c, &mut out.ports)?;
    }
    for (i, c) in spec.containers.iter().enumerate() {
        if let Some(probe) = &c.readiness_probe {
            let field = format!("spec.containers[{i}].readinessProbe");
            out.probes.push(probe_of(&field, probe, &out.ports)?);
        }
    }
    Ok(out)
}

fn container_ports(
    i: usize,
    c: &core::Container,
    out: &mut Vec<ContainerPort>,
) -> Result<(), String> {
    for (j, p) in c.ports.iter().flatten().enumerate() {
        let field = format!("spec.containers[{i}].ports[{j}]");
        let port = u16::try_from(p.container_port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                format!(
                    "{field}.containerPort: {} is not in 1..=65535",
                    p.container_port
                )
            })?;
        let protocol = Protocol::parse(&format!("{field}.protocol"), p.protocol.as_deref())?;
        let name = p.name.clone().filter(|n| !n.is_empty());
        if let Some(n) = &name
            && out.iter().any(|q| q.name.as_ref() == Some(n))
        {
            return Err(format!("{field}.name: duplicate port name {n:?}"));
        }
        if out.iter().any(|q| q.port == port && q.protocol == protocol) {
            continue;
        }
        out.push(ContainerPort {
            name,
            port,
            protocol,
        });
    }
    Ok(())
}

fn probe_of(field: &str, probe: &core::Probe, ports: &[ContainerPort]) -> Result<Probe, String> {
    let resolve = |sub: &str, port: &IntOrString| -> Result<u16, String> {
        match port {
            IntOrString::Int(n) => u16::try_from(*n)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{field}.{sub}.port: {n} is not in 1..=65535")),
            IntOrString::String(name) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.port)
                .ok_or_else(|| format!("{field}.{sub}.port: no container port named {name:?}")),
        }
    };
    if let Some(http) = &probe.http_get {
        let path = http
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        return Ok(Probe::Http {
            port: resolve("httpGet", &http.port)?,
            path,
        });
    }
    if let Some(tcp) = &probe.tcp_socket {
        return Ok(Probe::Tcp {
            port: resolve("tcpSocket", &tcp.port)?,
        });
    }
    Ok(Probe::Running)
}

/// Whether `labels` match a workload's label selector (matchLabels and matchExpressions).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let exact = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    exact
        && sel.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or(&[]);
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// The parts every apps/v1 workload shares: selector, template, replicas.
struct Parts<'a> {
    selector: &'a LabelSelector,
    template: &'a core::PodTemplateSpec,
    replicas: Option<i32>,
}

/// Builds a [`Workload`] from its API object's parts, checking what the API server checks.
fn workload(
    kind: WorkloadKind,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    parts: Parts<'_>,
    service_name: Option<String>,
) -> Result<Workload, String> {
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name: required value")?;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let tmeta = parts.template.metadata.as_ref();
    let labels = tmeta.and_then(|m| m.labels.as_ref());
    let template =
        pod_spec(labels, parts.template.spec.as_ref()).map_err(|e| format!("spec.template.{e}"))?;
    let selector = parts.selector;
    if selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
    {
        return Err("spec.selector: required value (an empty selector matches nothing)".into());
    }
    if !selector_matches(selector, &template.labels) {
        return Err(
            "spec.template.metadata.labels: `selector` does not match template `labels`".into(),
        );
    }
    let replicas = parts.replicas.unwrap_or(1);
    let replicas =
        u32::try_from(replicas).map_err(|_| format!("spec.replicas: {replicas} is negative"))?;
    let hash_input = serde_json::to_string(parts.template).map_err(|e| e.to_string())?;
    Ok(Workload {
        kind,
        namespace,
        name,
        replicas,
        template,
        hash: template_hash(&hash_input),
        service_name,
    })
}

/// A Deployment.
pub fn deployment(obj: &apps::Deployment) -> Result<Workload, String> {
    let spec = obj.spec.as_ref().ok_or("spec: required value")?;
    let parts = Parts {
        selector: &spec.selector,
        template: &spec.template,
        replicas: spec.replicas,
    };
    workload(WorkloadKind::Deployment, &obj.metadata, parts, None)
}

/// A ReplicaSet.
pub fn replica_set(obj: &apps::ReplicaSet) -> Result<Workload, String> {
    let spec = obj.spec.as_ref().ok_or("spec: required value")?;
    let template = spec
        .template
        .as_ref()
        .ok_or("spec.template: required value")?;
    let parts = Parts {
        selector: &spec.selector,
        template,
        replicas: spec.replicas,
    };
    workload(WorkloadKind::ReplicaSet, &obj.metadata, parts, None)
}

/// A StatefulSet.
pub fn stateful_set(obj: &apps::StatefulSet) -> Result<Workload, String> {
    let spec = obj.spec.as_ref().ok_or("spec: required value")?;
    let parts = Parts {
        selector: &spec.selector,
        template: &spec.template,
        replicas: spec.replicas,
    };
    let service = spec.service_name.clone().filter(|s| !s.is_empty());
    workload(WorkloadKind::StatefulSet, &obj.metadata, parts, service)
}

/// A DaemonSet.
pub fn daemon_set(obj: &apps::DaemonSet) -> Result<Workload, String> {
    let spec = obj.spec.as_ref().ok_or("spec: required value")?;
    let parts = Parts {
        selector: &spec.selector,
        template: &spec.template,
        replicas: None,
    };
    workload(WorkloadKind::DaemonSet, &obj.metadata, parts, None)
}

/// A bare Pod.
pub fn pod(obj: &core::Pod) -> Result<NewPod, String> {
    let meta = &obj.metadata;
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name: required value")?;
    let spec = pod_spec(meta.labels.as_ref(), obj.spec.as_ref())?;
    Ok(NewPod {
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        name,
        node: spec.node_name.clone(),
        spec,
        owner: None,
    })
}

/// The pods to create and remove so that `existing` (the workload's live pods) matches `w`.
/// `taken` holds every pod name of the namespace (terminating ones too), so new random names
/// never collide; `nodes` are the cluster's node names (for DaemonSets).
pub fn reconcile(
    w: &Workload,
    existing: &[Existing<'_>],
    taken: &BTreeSet<String>,
    nodes: &[String],
    rng: &mut impl Rng,
) -> Plan {
    let mut taken = taken.clone();
    match w.kind {
        WorkloadKind::Deployment => scale(w, existing, true, &mut taken, rng),
        WorkloadKind::ReplicaSet => scale(w, existing, false, &mut taken, rng),
        WorkloadKind::StatefulSet => ordinals(w, existing),
        WorkloadKind::DaemonSet => per_node(w, existing, nodes, &mut taken, rng),
    }
}

/// Deployments (`replace_old`) and ReplicaSets: keep `replicas` pods, preferring ready ones.
fn scale(
    w: &Workload,
    existing: &[Existing<'_>],
    replace_old: bool,
    taken: &mut BTreeSet<String>,
    rng: &mut impl Rng,
) -> Plan {
    let mut plan = Plan::default();
    let (mut current, old): (Vec<&Existing<'_>>, Vec<&Existing<'_>>) = existing
        .iter()
        .partition(|e| !replace_old || e.hash == w.hash);
    plan.remove.extend(old.iter().map(|e| e.name.to_owned()));
    // Keep ready pods first, then by name; remove the rest.
    current.sort_by_key(|e| (!e.ready, e.name));
    let keep = usize::try_from(w.replicas).unwrap_or(usize::MAX);
    plan.remove
        .extend(current.iter().skip(keep).map(|e| e.name.to_owned()));
    for _ in current.len()..keep {
        let name = fresh_name(w, taken, rng);
        plan.create.push(new_pod(w, name, None, None));
    }
    plan
}

/// A pod name for a Deployment/ReplicaSet/DaemonSet not in `taken` (and then taken).
fn fresh_name(w: &Workload, taken: &mut BTreeSet<String>, rng: &mut impl Rng) -> String {
    loop {
        let name = match w.kind {
            WorkloadKind::Deployment => format!("{}-{}-{}", w.name, w.hash, random_suffix(rng)),
            _ => format!("{}-{}", w.name, random_suffix(rng)),
        };
        if taken.insert(name.clone()) {
            return name;
        }
    }
}

/// StatefulSets: ordinals `0..replicas`, pods of another template replaced.
fn ordinals(w: &Workload, existing: &[Existing<'_>]) -> Plan {
    let mut plan = Plan::default();
    let wanted: Vec<String> = (0..w.replicas).map(|i| format!("{}-{i}", w.name)).collect();
    for e in existing {
        let in_range = wanted.iter().any(|n| n == e.name);
        if !in_range || e.hash != w.hash {
            plan.remove.push(e.name.to_owned());
        }
    }
    for (i, name) in wanted.iter().enumerate() {
        let current = existing.iter().any(|e| e.name == name && e.hash == w.hash);
        if !current {
            plan.create.push(new_pod(w, name.clone(), Some(i), None));
        }
    }
    plan
}

/// DaemonSets: one current pod per node.
fn per_node(
    w: &Workload,
    existing: &[Existing<'_>],
    nodes: &[String],
    taken: &mut BTreeSet<String>,
    rng: &mut impl Rng,
) -> Plan {
    let mut plan = Plan::default();
    let mut covered = BTreeSet::new();
    for e in existing {
        let keep = e.hash == w.hash && nodes.iter().any(|n| n == e.node) && covered.insert(e.node);
        if !keep {
            plan.remove.push(e.name.to_owned());
        }
    }
    for node in nodes.iter().filter(|n| !covered.contains(n.as_str())) {
        let name = fresh_name(w, taken, rng);
        plan.create.push(new_pod(w, name, None, Some(node.clone())));
    }
    plan
}

/// A pod of `w` named `name` with the labels (and for StatefulSets the identity) its
/// controller gives it.
fn new_pod(w: &Workload, name: String, ordinal: Option<usize>, node: Option<String>) -> NewPod {
    let mut spec = w.template.clone();
    let labels = &mut spec.labels;
    match w.kind {
        WorkloadKind::Deployment => {
            labels.insert("pod-template-hash".into(), w.hash.clone());
        }
        WorkloadKind::ReplicaSet => {}
        WorkloadKind::StatefulSet => {
            labels.insert(
                "controller-revision-hash".into(),
                format!("{}-{}", w.name, w.hash),
            );
            labels.insert("statefulset.kubernetes.io/pod-name".into(), name.clone());
            let index = ordinal.unwrap_or(0).to_string();
            labels.insert("apps.kubernetes.io/pod-index".into(), index);
            spec.hostname = Some(name.clone());
            spec.subdomain = w.service_name.clone();
        }
        WorkloadKind::DaemonSet => {
            labels.insert("controller-revision-hash".into(), w.hash.clone());
            labels.insert("pod-template-generation".into(), "1".into());
        }
    }
    let node = node.or_else(|| spec.node_name.clone());
    NewPod {
        namespace: w.namespace.clone(),
        name,
        spec,
        owner: Some(Owner {
            kind: w.kind,
            name: w.name.clone(),
            hash: w.hash.clone(),
        }),
        node,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn decode<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        let value: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        serde_json::from_value(value).unwrap()
    }

    const DEPLOY: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: x
        ports: [{containerPort: 8080, name: http}, {containerPort: 53, protocol: UDP}]
        readinessProbe: {httpGet: {path: /ready, port: http}}
";

    fn existing<'a>(pods: &'a [(&'a str, &'a str)]) -> Vec<Existing<'a>> {
        pods.iter()
            .map(|(name, hash)| Existing {
                name,
                hash,
                node: "node-0",
                ready: true,
            })
            .collect()
    }

    #[test]
    fn deployments_expand_to_hashed_names_with_probes() {
        let w = deployment(&decode(DEPLOY)).unwrap();
        assert_eq!((w.namespace.as_str(), w.replicas), ("shop", 3));
        assert_eq!(
            w.template.probes,
            [Probe::Http {
                port: 8080,
                path: "/ready".into()
            }]
        );
        assert_eq!(w.template.tcp_ports(), [8080]);
        assert_eq!(w.template.udp_ports(), [53]);
        assert!(!w.hash.is_empty() && w.hash.len() <= 10);
        assert!(w.hash.bytes().all(|b| ALPHANUMS.contains(&b)));
        let plan = reconcile(
            &w,
            &[],
            &BTreeSet::new(),
            &[],
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(plan.create.len(), 3);
        for p in &plan.create {
            let prefix = format!("web-{}-", w.hash);
            assert!(
                p.name.starts_with(&prefix) && p.name.len() == prefix.len() + 5,
                "{}",
                p.name
            );
            assert_eq!(p.spec.labels["pod-template-hash"], w.hash);
            assert_eq!(p.spec.labels["app"], "web");
        }
        let names: BTreeSet<_> = plan.create.iter().map(|p| &p.name).collect();
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn the_template_hash_is_kubernetes_style() {
        // FNV-32a of "" is 2166136261; its digits map onto the safe alphabet.
        assert_eq!(fnv32a(b""), 2_166_136_261);
        assert_eq!(template_hash(""), safe_encode("2166136261"));
        // Digits map onto 4-9 and b-d, as in real hashes like `5d8f7b6b9c`.
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
    }

    #[test]
    fn deployments_scale_and_replace_old_templates() {
        let w = deployment(&decode(DEPLOY)).unwrap();
        let h = w.hash.as_str();
        let pods = [
            ("web-a", h),
            ("web-b", h),
            ("web-c", h),
            ("web-old", "other"),
        ];
        let mut one = w.clone();
        one.replicas = 1;
        let plan = reconcile(
            &one,
            &existing(&pods),
            &BTreeSet::new(),
            &[],
            &mut StdRng::seed_from_u64(2),
        );
        assert!(plan.create.is_empty());
        assert_eq!(plan.remove, ["web-old", "web-b", "web-c"]);
        let mut five = w.clone();
        five.replicas = 5;
        let plan = reconcile(
            &five,
            &existing(&pods),
            &BTreeSet::new(),
            &[],
            &mut StdRng::seed_from_u64(3),
        );
        assert_eq!(
            (plan.create.len(), plan.remove.as_slice()),
            (2, &["web-old".to_owned()][..])
        );
    }

    #[test]
    fn replica_sets_count_pods_whatever_their_template() {
        let yaml = DEPLOY.replace("kind: Deployment", "kind: ReplicaSet");
        let w = replica_set(&decode(&yaml)).unwrap();
        let pods = [("web-a", "other"), ("web-b", "other")];
        let plan = reconcile(
            &w,
            &existing(&pods),
            &BTreeSet::new(),
            &[],
            &mut StdRng::seed_from_u64(4),
        );
        assert!(plan.remove.is_empty());
        assert_eq!(plan.create.len(), 1);
        assert!(plan.create[0].name.starts_with("web-") && plan.create[0].name.len() == 9);
    }

    #[test]
    fn stateful_sets_have_ordinals_hostnames_and_subdomains() {
        let yaml = DEPLOY
            .replace("kind: Deployment", "kind: StatefulSet")
            .replace("replicas: 3", "replicas: 2\n  serviceName: web-h");
        let w = stateful_set(&decode(&yaml)).unwrap();
        let plan = reconcile(
            &w,
            &[],
            &BTreeSet::new(),
            &[],
            &mut StdRng::seed_from_u64(5),
        );
        let names: Vec<_> = plan.create.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["web-0", "web-1"]);
        let p1 = &plan.create[1].spec;
        assert_eq!(p1.hostname.as_deref(), Some("web-1"));
        assert_eq!(p1.subdomain.as_deref(), Some("web-h"));
        assert_eq!(p1.labels["statefulset.kubernetes.io/pod-name"], "web-1");
        assert_eq!(p1.labels["apps.kubernetes.io/pod-index"], "1");
        // Scaling down removes the highest ordinals; another template replaces in place.
        let h = w.hash.as_str();
        let mut one = w.clone();
        one.replicas = 1;
        let pods = [("web-0", h), ("web-1", h)];
        let plan = reconcile(
            &one,
            &existing(&pods),
            &BTreeSet::new(),
            &[],
            &mut StdRng::seed_from_u64(6),
        );
        assert_eq!(
            (plan.create.len(), plan.remove.as_slice()),
            (0, &["web-1".to_owned()][..])
        );
        let pods = [("web-0", "old")];
        let plan = reconcile(
            &one,
            &existing(&pods),
            &BTreeSet::new(),
            &[],
            &mut StdRng::seed_from_u64(7),
        );
        assert_eq!(plan.remove, ["web-0"]);
        assert_eq!(plan.create[0].name, "web-0");
    }

    #[test]
    fn daemon_sets_run_one_pod_per_node() {
        let yaml = DEPLOY.replace("kind: Deployment", "kind: DaemonSet");
        let w = daemon_set(&decode(&yaml)).unwrap();
        let nodes: Vec<String> = (0..3).map(|i| format!("node-{i}")).collect();
        let plan = reconcile(
            &w,
            &[],
            &BTreeSet::new(),
            &nodes,
            &mut StdRng::seed_from_u64(8),
        );
        let pinned: Vec<_> = plan
            .create
            .iter()
            .map(|p| p.node.clone().unwrap())
            .collect();
        assert_eq!(pinned, nodes);
        assert!(
            plan.create
                .iter()
                .all(|p| p.name.starts_with("web-") && p.name.len() == 9)
        );
        let pods = [("web-x", w.hash.as_str())];
        let mut e = existing(&pods);
        e[0].node = "node-1";
        let plan = reconcile(
            &w,
            &e,
            &BTreeSet::new(),
            &nodes,
            &mut StdRng::seed_from_u64(9),
        );
        assert_eq!(plan.create.len(), 2);
        assert!(plan.remove.is_empty());
    }

    #[test]
    fn bad_workloads_are_refused_with_the_field() {
        let mismatch = DEPLOY.replace("matchLabels: {app: web}", "matchLabels: {app: db}");
        let err = deployment(&decode(&mismatch)).unwrap_err();
        assert!(err.starts_with("spec.template.metadata.labels"), "{err}");
        let bad_probe = DEPLOY.replace("port: http}", "port: nope}");
        let err = deployment(&decode(&bad_probe)).unwrap_err();
        assert!(
            err.contains("readinessProbe.httpGet.port") && err.contains("nope"),
            "{err}"
        );
        let exec = DEPLOY.replace(
            "{httpGet: {path: /ready, port: http}}",
            "{exec: {command: [pg_isready]}}",
        );
        assert_eq!(
            deployment(&decode(&exec)).unwrap().template.probes,
            [Probe::Running]
        );
    }

    #[test]
    fn selectors_support_expressions() {
        let sel: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "a")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "c")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "a"), ("canary", "")])
        ));
    }
}
