//! Checks `deploy/` against the code it deploys.
//!
//! - Every YAML document under `deploy/kustomize` and `deploy/examples` decodes into its
//!   k8s-openapi type (v1_34) without losing a field in a round trip through it, so a
//!   misspelt field fails instead of being dropped; kustomizations are read on their own
//!   (their references exist, no file is left unused, every patch hits an object of the base).
//! - The base, and each overlay as rendered by `kustomize build` / `kubectl kustomize` when one
//!   is on PATH, runs the binaries with flags their real parsers accept (`$(VAR)` resolved as
//!   the kubelet does, from the ConfigMap, the downward API or literal values), with probes,
//!   ports and the grace period matching those flags, and ClusterRoles granting list + watch on
//!   exactly the kinds each binary watches (`common/src/source/kube.rs`), nothing beyond
//!   get/list/watch.
//! - `deploy/Dockerfile` installs the binaries where the manifests run them, the tools the proxy
//!   executes, and the user svcplane-dns runs as.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVarSource, Namespace, Node, Pod, PodSpec, PodTemplateSpec, Probe,
    Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// What the manifests must deploy
// ---------------------------------------------------------------------------------------------

const NAMESPACE: &str = "kube-system";
const PROXY: &str = "svcplane-proxy";
const DNS: &str = "svcplane-dns";
/// Where deploy/Dockerfile installs the binaries.
const BIN_DIR: &str = "/usr/local/bin";
/// What the downward API's `spec.nodeName` stands for when flags are resolved.
const NODE_NAME: &str = "node-from-downward-api";
/// Routes of `svcplane_common::health`: liveness and readiness.
const LIVE_PATHS: [&str; 3] = ["/health", "/healthz", "/livez"];
const READY_PATHS: [&str; 2] = ["/ready", "/readyz"];

/// An overlay and what its rendering must hold.
struct Overlay {
    name: &'static str,
    proxy: bool,
    dns: bool,
    /// The proxy must be given the API server's address (it replaces every other proxy).
    api_server: bool,
}

const OVERLAYS: [Overlay; 2] = [
    Overlay {
        name: "replace-kube-proxy",
        proxy: true,
        dns: true,
        api_server: true,
    },
    Overlay {
        name: "beside-kube-proxy",
        proxy: false,
        dns: true,
        api_server: false,
    },
];

/// The base: both workloads; the API server's address is left to the overlays.
const BASE: Overlay = Overlay {
    name: "base",
    proxy: true,
    dns: true,
    api_server: false,
};

/// The RBAC name (API group, resource) of a kind.
fn rbac<T: Resource>() -> (&'static str, &'static str) {
    (T::GROUP, T::URL_PATH_SEGMENT)
}

/// The kinds svcplane-proxy watches (`proxy/src/app.rs` KINDS via `common/src/source/kube.rs`).
fn proxy_kinds() -> Vec<(&'static str, &'static str)> {
    vec![rbac::<Service>(), rbac::<EndpointSlice>(), rbac::<Node>()]
}

/// The kinds svcplane-dns watches (`dns/src/app.rs` start_source): Pods only for `--pods verified`.
fn dns_kinds(args: &svcplane_dns::app::Args) -> Vec<(&'static str, &'static str)> {
    let mut kinds = vec![
        rbac::<Namespace>(),
        rbac::<Service>(),
        rbac::<EndpointSlice>(),
    ];
    if matches!(args.pods, svcplane_dns::app::Pods::Verified) {
        kinds.push(rbac::<Pod>());
    }
    kinds
}

// ---------------------------------------------------------------------------------------------
// Files and documents
// ---------------------------------------------------------------------------------------------

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn kustomize_dir() -> PathBuf {
    deploy_dir().join("kustomize")
}

/// One YAML document and where it came from (`file#n`, n 1-based).
struct Doc {
    origin: String,
    value: Value,
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// The YAML files under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if is_yaml(&path) {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn parse_yaml(text: &str, origin: &str) -> Vec<Doc> {
    let values: Vec<Value> =
        serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{origin}: bad YAML: {e}"));
    values
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_null())
        .map(|(i, value)| Doc {
            origin: format!("{origin}#{}", i + 1),
            value,
        })
        .collect()
}

fn read_docs(path: &Path) -> Vec<Doc> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let shown = path.strip_prefix(deploy_dir()).unwrap_or(path);
    parse_yaml(&text, &format!("deploy/{}", shown.display()))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// `kind namespace/name` of a document, for messages and patch targets.
fn identity(v: &Value) -> (String, String, Option<String>, String) {
    let get = |p| str_at(v, p).unwrap_or_default().to_string();
    let namespace = str_at(v, "/metadata/namespace").map(str::to_string);
    (
        get("/apiVersion"),
        get("/kind"),
        namespace,
        get("/metadata/name"),
    )
}

// ---------------------------------------------------------------------------------------------
// Typed decoding
// ---------------------------------------------------------------------------------------------

fn is<T: Resource>(api_version: &str, kind: &str) -> bool {
    T::API_VERSION == api_version && T::KIND == kind
}

/// Drops what a round trip legitimately loses: nulls and kustomize's `$patch` directives.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, v)| !v.is_null() && k.as_str() != "$patch")
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

/// The first field of `written` that `decoded` lost or changed (fields the type adds, such as
/// defaults of required fields, do not count).
fn difference(written: &Value, decoded: &Value, path: &str) -> Option<String> {
    match (written, decoded) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            None => Some(format!("{path}.{k}: not a field of the API type")),
            Some(w) => difference(v, w, &format!("{path}.{k}")),
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| difference(v, w, &format!("{path}[{i}]"))),
        _ if written == decoded => None,
        _ => Some(format!("{path}: {written} decodes as {decoded}")),
    }
}

/// Decodes a document into `T`, naming the field on error, and rejects fields `T` lacks.
fn decode<T: Resource + DeserializeOwned + Serialize>(doc: &Value) -> Result<T, String> {
    let typed: T = serde_path_to_error::deserialize(doc.clone())
        .map_err(|e| format!("{} {}: {}", T::KIND, e.path(), e.inner()))?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match difference(&normalized(doc), &back, "") {
        Some(d) => Err(format!("{} {d}", T::KIND)),
        None => Ok(typed),
    }
}

/// The decoded objects the checks look at.
#[derive(Default)]
struct Bundle {
    daemon_sets: Vec<DaemonSet>,
    deployments: Vec<Deployment>,
    config_maps: Vec<ConfigMap>,
    services: Vec<Service>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    pdbs: Vec<PodDisruptionBudget>,
}

impl Bundle {
    /// Decodes one API object into its type; kinds the checks ignore are decoded and dropped.
    fn add(&mut self, doc: &Value) -> Result<(), String> {
        let api_version = str_at(doc, "/apiVersion").ok_or("no apiVersion")?;
        let kind = str_at(doc, "/kind").ok_or("no kind")?;
        macro_rules! dispatch {
            ($($ty:ty => $field:ident),*; $($ignored:ty),*) => {
                $(if is::<$ty>(api_version, kind) {
                    self.$field.push(decode::<$ty>(doc)?);
                    return Ok(());
                })*
                $(if is::<$ignored>(api_version, kind) {
                    decode::<$ignored>(doc)?;
                    return Ok(());
                })*
            };
        }
        dispatch!(
            DaemonSet => daemon_sets,
            Deployment => deployments,
            ConfigMap => config_maps,
            Service => services,
            ServiceAccount => service_accounts,
            ClusterRole => cluster_roles,
            ClusterRoleBinding => bindings,
            PodDisruptionBudget => pdbs;
            Namespace, Secret, Pod, StatefulSet, EndpointSlice, Ingress
        );
        Err(format!(
            "apiVersion {api_version:?} kind {kind:?}: no API type for it in this test"
        ))
    }

    fn from_docs(docs: &[Doc]) -> Bundle {
        let mut bundle = Bundle::default();
        for doc in docs {
            if let Err(e) = bundle.add(&doc.value) {
                panic!("{}: {e}", doc.origin);
            }
        }
        bundle
    }

    fn config_map(&self, namespace: &str, name: &str) -> Option<&ConfigMap> {
        self.config_maps
            .iter()
            .find(|c| named(&c.metadata, namespace, name))
    }
}

fn named(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    namespace: &str,
    name: &str,
) -> bool {
    meta.name.as_deref() == Some(name) && meta.namespace.as_deref() == Some(namespace)
}

// ---------------------------------------------------------------------------------------------
// Kustomizations
// ---------------------------------------------------------------------------------------------

/// The kustomization fields deploy/ uses; anything else fails (extend this test with it).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // read to validate
struct Kustomization {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<PatchRef>,
    #[serde(default)]
    images: Vec<Value>,
    #[serde(default)]
    labels: Vec<Value>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchRef {
    path: String,
}

fn kustomization(dir: &Path) -> Kustomization {
    let path = dir.join("kustomization.yaml");
    let docs = read_docs(&path);
    assert_eq!(docs.len(), 1, "{}: one document expected", path.display());
    let k: Kustomization = serde_json::from_value(docs[0].value.clone())
        .unwrap_or_else(|e| panic!("{}: {e}", docs[0].origin));
    let type_meta = (k.api_version.as_str(), k.kind.as_str());
    let expected = ("kustomize.config.k8s.io/v1beta1", "Kustomization");
    assert_eq!(type_meta, expected, "{}", docs[0].origin);
    k
}

/// The documents of a kustomization's resources, patches not applied (so, for the base, what
/// kustomize renders apart from labels and images).
fn resources(dir: &Path) -> Vec<Doc> {
    let mut docs = Vec::new();
    for r in kustomization(dir).resources {
        let path = dir.join(&r);
        if path.is_dir() {
            docs.extend(resources(&path));
        } else {
            docs.extend(read_docs(&path));
        }
    }
    docs
}

/// Every file a kustomization under `dir` uses: itself, its resources and patches.
fn used_files(dir: &Path, used: &mut BTreeSet<PathBuf>) {
    let canonical = |p: &Path| {
        p.canonicalize()
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    used.insert(canonical(&dir.join("kustomization.yaml")));
    let k = kustomization(dir);
    let paths = k.resources.iter().chain(k.patches.iter().map(|p| &p.path));
    for r in paths {
        let path = dir.join(r);
        assert!(
            path.exists(),
            "{}/kustomization.yaml names {r}, which does not exist",
            dir.display()
        );
        if path.is_dir() {
            used_files(&path, used);
        } else {
            used.insert(canonical(&path));
        }
    }
}

/// `kustomize build` or `kubectl kustomize`, whichever is on PATH.
fn kustomize_command() -> Option<Vec<&'static str>> {
    let works = |argv: &[&str]| {
        Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&["kustomize", "version"]) {
        Some(vec!["kustomize", "build"])
    } else if works(&["kubectl", "kustomize", "--help"]) {
        Some(vec!["kubectl", "kustomize"])
    } else {
        None
    }
}

fn render(command: &[&str], dir: &Path) -> Vec<Doc> {
    let out = Command::new(command[0])
        .args(&command[1..])
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", command.join(" ")));
    let shown = format!("{} {}", command.join(" "), dir.display());
    assert!(
        out.status.success(),
        "{shown} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_yaml(&String::from_utf8_lossy(&out.stdout), &shown)
}

// ---------------------------------------------------------------------------------------------
// Containers: environment, flags, ports, probes
// ---------------------------------------------------------------------------------------------

/// Kubernetes' `$(VAR)` expansion; an undefined variable is an error here (the kubelet would
/// pass it on literally).
fn expand(text: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(tail) = rest.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = rest.strip_prefix('(').and_then(|t| t.split_once(')')) {
            let value = env
                .get(name)
                .ok_or_else(|| format!("{text:?}: $({name}) is not a variable of the container"))?;
            out.push_str(value);
            rest = tail;
        } else {
            out.push('$');
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of `valueFrom`; `None` for a missing optional ConfigMap key.
fn value_from(from: &EnvVarSource, ns: &str, b: &Bundle) -> Result<Option<String>, String> {
    if let Some(field) = &from.field_ref {
        return match field.field_path.as_str() {
            "spec.nodeName" => Ok(Some(NODE_NAME.to_string())),
            "status.podIP" | "status.hostIP" => Ok(Some("192.0.2.1".to_string())),
            "metadata.name" => Ok(Some("pod-0".to_string())),
            "metadata.namespace" => Ok(Some(ns.to_string())),
            other => Err(format!("fieldRef {other}: unknown to this test")),
        };
    }
    let Some(key_ref) = &from.config_map_key_ref else {
        return Err("valueFrom other than fieldRef/configMapKeyRef: unknown to this test".into());
    };
    let optional = key_ref.optional == Some(true);
    let value = b
        .config_map(ns, &key_ref.name)
        .and_then(|cm| cm.data.as_ref()?.get(&key_ref.key));
    match value {
        Some(v) => Ok(Some(v.clone())),
        None if optional => Ok(None),
        None => Err(format!(
            "ConfigMap {ns}/{} has no key {:?}",
            key_ref.name, key_ref.key
        )),
    }
}

/// The container's environment as the kubelet builds it (envFrom, then env in order).
fn environment(c: &Container, ns: &str, b: &Bundle) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for from in c.env_from.iter().flatten() {
        let cm_ref = from
            .config_map_ref
            .as_ref()
            .ok_or("envFrom: only configMapRef known")?;
        match b.config_map(ns, &cm_ref.name) {
            Some(cm) => {
                let prefix = from.prefix.as_deref().unwrap_or_default();
                for (k, v) in cm.data.iter().flatten() {
                    env.insert(format!("{prefix}{k}"), v.clone());
                }
            }
            None if cm_ref.optional == Some(true) => {}
            None => return Err(format!("envFrom: no ConfigMap {ns}/{}", cm_ref.name)),
        }
    }
    for var in c.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => Some(expand(v, &env)?),
            (None, Some(from)) => {
                value_from(from, ns, b).map_err(|e| format!("{}: {e}", var.name))?
            }
            (None, None) => Some(String::new()),
        };
        if let Some(v) = value {
            env.insert(var.name.clone(), v);
        }
    }
    Ok(env)
}

/// command + args with variables resolved: what the binary's parser sees.
fn argv(c: &Container, ns: &str, b: &Bundle) -> Result<Vec<String>, String> {
    let env = environment(c, ns, b)?;
    let words = c.command.iter().flatten().chain(c.args.iter().flatten());
    words.map(|w| expand(w, &env)).collect()
}

fn container_port(c: &Container, port: &IntOrString) -> Option<u16> {
    let number = match port {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port),
    };
    number.and_then(|n| u16::try_from(n).ok())
}

/// (path, port) of an httpGet probe.
fn http_probe(c: &Container, probe: Option<&Probe>) -> Option<(String, Option<u16>)> {
    let get = probe?.http_get.as_ref()?;
    let path = get.path.clone().unwrap_or_default();
    Some((path, container_port(c, &get.port)))
}

fn has_port(c: &Container, name: &str, port: u16, protocol: &str) -> bool {
    c.ports.iter().flatten().any(|p| {
        p.name.as_deref() == Some(name)
            && p.container_port == i32::from(port)
            && p.protocol.as_deref().unwrap_or("TCP") == protocol
    })
}

fn selects(
    selector: Option<&BTreeMap<String, String>>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    match (selector, labels) {
        (Some(s), Some(l)) => !s.is_empty() && s.iter().all(|(k, v)| l.get(k) == Some(v)),
        _ => false,
    }
}

fn label_selects(selector: Option<&LabelSelector>, template: &PodTemplateSpec) -> bool {
    let labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    selector.is_some_and(|s| {
        s.match_expressions.as_ref().is_none_or(Vec::is_empty)
            && selects(s.match_labels.as_ref(), labels)
    })
}

fn capabilities_added(c: &Container) -> Vec<String> {
    c.security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref()?.add.clone())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// Problems found, reported together.
#[derive(Default)]
struct Report(Vec<String>);

/// Records a problem (`format!` arguments) unless `ok`.
macro_rules! check {
    ($r:expr, $ok:expr, $($msg:tt)+) => {
        if !$ok {
            $r.0.push(format!($($msg)+));
        }
    };
}

impl Report {
    fn finish(self, what: &str) {
        assert!(self.0.is_empty(), "{what}:\n  - {}", self.0.join("\n  - "));
    }
}

/// A workload's pod spec and its container named like the workload.
fn workload<'a>(
    t: &'a PodTemplateSpec,
    name: &str,
    r: &mut Report,
) -> Option<(&'a PodSpec, &'a Container)> {
    let pod = t.spec.as_ref()?;
    let container = pod.containers.iter().find(|c| c.name == name);
    check!(r, container.is_some(), "{name}: no container named {name}");
    Some((pod, container?))
}

/// Runs the container's argv through the binary's parser; checks the binary's path.
fn parse_flags<A: Parser>(c: &Container, b: &Bundle, binary: &str, r: &mut Report) -> Option<A> {
    let argv = argv(c, NAMESPACE, b)
        .map_err(|e| check!(r, false, "{binary}: {e}"))
        .ok()?;
    let path = format!("{BIN_DIR}/{binary}");
    check!(
        r,
        argv.first() == Some(&path),
        "{binary}: argv {argv:?} must start with {path}"
    );
    A::try_parse_from(&argv)
        .map_err(|e| check!(r, false, "{binary} rejects {argv:?}:\n{}", e.render()))
        .ok()
}

/// httpGet probes on the health port with one of `paths`; `required` ones must exist.
fn check_probes(
    c: &Container,
    port: u16,
    probes: &[(&str, Option<&Probe>, bool, &[&str])],
    r: &mut Report,
) {
    for (what, probe, required, paths) in probes {
        let Some((path, p)) = http_probe(c, *probe) else {
            check!(r, !required, "{}: {what} httpGet expected", c.name);
            continue;
        };
        check!(
            r,
            p == Some(port),
            "{}: {what} port {p:?}, --health-addr has {port}",
            c.name
        );
        check!(
            r,
            paths.contains(&path.as_str()),
            "{}: {what} {path}, not in {paths:?}",
            c.name
        );
    }
}

fn check_proxy(b: &Bundle, overlay: &Overlay, r: &mut Report) {
    let ds = b
        .daemon_sets
        .iter()
        .find(|d| named(&d.metadata, NAMESPACE, PROXY));
    let Some(spec) = ds.and_then(|d| d.spec.as_ref()) else {
        return check!(r, false, "no DaemonSet {NAMESPACE}/{PROXY} with a spec");
    };
    check!(
        r,
        label_selects(Some(&spec.selector), &spec.template),
        "{PROXY}: selector misses the pods"
    );
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let max_unavailable = rolling.and_then(|u| u.max_unavailable.clone());
    check!(
        r,
        max_unavailable == Some(IntOrString::Int(1)),
        "{PROXY}: maxUnavailable 1 expected"
    );
    let Some((pod, c)) = workload(&spec.template, PROXY, r) else {
        return;
    };
    check_proxy_pod(pod, c, r);
    check_service_account(b, pod, PROXY, &proxy_kinds(), r);
    if overlay.api_server {
        let env = environment(c, NAMESPACE, b).unwrap_or_default();
        let port = env
            .get("KUBERNETES_SERVICE_PORT")
            .and_then(|p| p.parse::<u16>().ok());
        let host = env.contains_key("KUBERNETES_SERVICE_HOST");
        check!(
            r,
            host && port.is_some(),
            "{PROXY}: KUBERNETES_SERVICE_HOST/PORT must be set"
        );
    }
    let Some(args) = parse_flags::<svcplane_proxy::app::Args>(c, b, PROXY, r) else {
        return;
    };
    check!(
        r,
        args.command.is_none(),
        "{PROXY}: runs a subcommand, not the proxy"
    );
    let in_cluster = args.manifests.is_empty() && args.kubeconfig.is_none();
    check!(
        r,
        in_cluster,
        "{PROXY}: must watch the API (no --manifests/--kubeconfig)"
    );
    let node = args.node_name.as_deref() == Some(NODE_NAME);
    check!(
        r,
        node,
        "{PROXY}: --node-name must be the downward API's spec.nodeName"
    );
    let cidrs = !args.cluster_cidr.is_empty() && !args.service_cidr.is_empty();
    check!(
        r,
        cidrs,
        "{PROXY}: --cluster-cidr and --service-cidr expected"
    );
    let probes: [(&str, Option<&Probe>, bool, &[&str]); 3] = [
        ("startupProbe", c.startup_probe.as_ref(), false, &LIVE_PATHS),
        (
            "livenessProbe",
            c.liveness_probe.as_ref(),
            true,
            &LIVE_PATHS,
        ),
        (
            "readinessProbe",
            c.readiness_probe.as_ref(),
            true,
            &LIVE_PATHS,
        ),
    ];
    check_probes(c, args.health_addr.port(), &probes, r);
    let metrics = args.metrics_addr.port();
    check!(
        r,
        has_port(c, "metrics", metrics, "TCP"),
        "{PROXY}: port metrics must be {metrics}"
    );
    if let Some(ip) = kube_dns_ip(b) {
        let cidrs = args.service_cidr.iter();
        let inside = cidrs
            .filter_map(|p| ipnetwork::IpNetwork::new(p.addr, p.len).ok())
            .any(|n| n.contains(ip));
        check!(
            r,
            inside,
            "{PROXY}: kube-dns clusterIP {ip} is outside --service-cidr"
        );
    }
}

fn check_proxy_pod(pod: &PodSpec, c: &Container, r: &mut Report) {
    check!(
        r,
        pod.host_network == Some(true),
        "{PROXY}: hostNetwork expected"
    );
    // Cluster DNS answers through the proxy's own rules, so the proxy resolves via the node.
    check!(
        r,
        pod.dns_policy.as_deref() == Some("Default"),
        "{PROXY}: dnsPolicy Default expected"
    );
    let priority = pod.priority_class_name.as_deref();
    check!(
        r,
        priority == Some("system-node-critical"),
        "{PROXY}: system-node-critical expected"
    );
    let tolerations = pod.tolerations.iter().flatten();
    let all = tolerations
        .clone()
        .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none());
    check!(r, all, "{PROXY}: must tolerate every taint");
    let sc = c.security_context.as_ref();
    let caps = capabilities_added(c);
    check!(
        r,
        caps.iter().any(|c| c == "NET_ADMIN"),
        "{PROXY}: NET_ADMIN expected (nft, conntrack)"
    );
    check!(
        r,
        sc.and_then(|s| s.privileged) != Some(true),
        "{PROXY}: must not be privileged"
    );
    // The image's default user is svcplane-dns's unprivileged one; nft needs root.
    check!(
        r,
        sc.and_then(|s| s.run_as_user) == Some(0),
        "{PROXY}: runAsUser 0 expected"
    );
}

fn kube_dns_ip(b: &Bundle) -> Option<IpAddr> {
    let svc = b
        .services
        .iter()
        .find(|s| named(&s.metadata, NAMESPACE, "kube-dns"))?;
    svc.spec.as_ref()?.cluster_ip.as_ref()?.parse().ok()
}

fn check_dns(b: &Bundle, r: &mut Report) {
    let deploy = b
        .deployments
        .iter()
        .find(|d| named(&d.metadata, NAMESPACE, DNS));
    let Some(spec) = deploy.and_then(|d| d.spec.as_ref()) else {
        return check!(r, false, "no Deployment {NAMESPACE}/{DNS} with a spec");
    };
    check!(
        r,
        label_selects(Some(&spec.selector), &spec.template),
        "{DNS}: selector misses the pods"
    );
    check!(
        r,
        spec.replicas.unwrap_or(1) >= 2,
        "{DNS}: 2 replicas or more expected"
    );
    let Some((pod, c)) = workload(&spec.template, DNS, r) else {
        return;
    };
    check_dns_pod(pod, c, r);
    check_pdb(b, &spec.template, r);
    check_kube_dns_service(b, &spec.template, c, r);
    let Some(args) = parse_flags::<svcplane_dns::app::Args>(c, b, DNS, r) else {
        return;
    };
    check_service_account(b, pod, DNS, &dns_kinds(&args), r);
    let in_cluster = args.manifests.is_empty() && args.kubeconfig.is_none();
    check!(
        r,
        in_cluster,
        "{DNS}: must watch the API (no --manifests/--kubeconfig)"
    );
    let domain = &args.cluster_domain;
    let valid = svcplane_dns::name::Name::from_dotted(domain).is_ok();
    check!(
        r,
        valid,
        "{DNS}: --cluster-domain {domain:?} is not a domain"
    );
    // With ClusterFirst, /etc/resolv.conf names the kube-dns Service: forwarding would loop.
    let default_dns = pod.dns_policy.as_deref() == Some("Default");
    check!(
        r,
        !args.upstream.is_empty() || default_dns,
        "{DNS}: dnsPolicy Default expected"
    );
    let port = args.listen.port();
    for (name, protocol) in [("dns", "UDP"), ("dns-tcp", "TCP")] {
        let ok = has_port(c, name, port, protocol);
        check!(
            r,
            ok,
            "{DNS}: port {name} must be {protocol} {port} (--listen)"
        );
    }
    let metrics = args.metrics_addr.port();
    check!(
        r,
        has_port(c, "metrics", metrics, "TCP"),
        "{DNS}: port metrics must be {metrics}"
    );
    let probes: [(&str, Option<&Probe>, bool, &[&str]); 2] = [
        (
            "livenessProbe",
            c.liveness_probe.as_ref(),
            true,
            &LIVE_PATHS,
        ),
        (
            "readinessProbe",
            c.readiness_probe.as_ref(),
            true,
            &READY_PATHS,
        ),
    ];
    check_probes(c, args.health_addr.port(), &probes, r);
    let grace = pod.termination_grace_period_seconds.unwrap_or(30);
    let lameduck = args.lameduck;
    let longer = u64::try_from(grace).is_ok_and(|g| g > lameduck.as_secs());
    check!(
        r,
        longer,
        "{DNS}: terminationGracePeriodSeconds {grace} <= --lameduck {lameduck:?}"
    );
    let bind = capabilities_added(c)
        .iter()
        .any(|c| c == "NET_BIND_SERVICE");
    check!(
        r,
        port >= 1024 || bind,
        "{DNS}: port {port} as non-root needs NET_BIND_SERVICE"
    );
}

fn check_dns_pod(pod: &PodSpec, c: &Container, r: &mut Report) {
    let pod_sc = pod.security_context.as_ref();
    let sc = c.security_context.as_ref();
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root));
    check!(r, non_root == Some(true), "{DNS}: runAsNonRoot expected");
    let read_only = sc.and_then(|s| s.read_only_root_filesystem);
    check!(
        r,
        read_only == Some(true),
        "{DNS}: readOnlyRootFilesystem expected"
    );
    let escalation = sc.and_then(|s| s.allow_privilege_escalation);
    check!(
        r,
        escalation == Some(false),
        "{DNS}: allowPrivilegeEscalation false expected"
    );
    let priority = pod.priority_class_name.as_deref();
    check!(
        r,
        priority == Some("system-cluster-critical"),
        "{DNS}: system-cluster-critical expected"
    );
    let anti = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref());
    let terms = anti.and_then(|a| {
        a.preferred_during_scheduling_ignored_during_execution
            .as_ref()
    });
    let spread = terms.is_some_and(|t| {
        t.iter()
            .any(|t| t.pod_affinity_term.topology_key == "kubernetes.io/hostname")
    });
    check!(
        r,
        spread,
        "{DNS}: preferred podAntiAffinity per hostname expected"
    );
}

fn check_pdb(b: &Bundle, template: &PodTemplateSpec, r: &mut Report) {
    let specs = b.pdbs.iter().filter_map(|p| p.spec.as_ref());
    let pdb = specs
        .clone()
        .find(|s| label_selects(s.selector.as_ref(), template));
    let min_one = pdb.is_some_and(|s| s.min_available == Some(IntOrString::Int(1)));
    check!(
        r,
        min_one,
        "{DNS}: a PodDisruptionBudget minAvailable 1 on its pods expected"
    );
}

fn check_kube_dns_service(b: &Bundle, template: &PodTemplateSpec, c: &Container, r: &mut Report) {
    let Some(svc) = b
        .services
        .iter()
        .find(|s| named(&s.metadata, NAMESPACE, "kube-dns"))
    else {
        return check!(r, false, "no Service {NAMESPACE}/kube-dns");
    };
    let app = svc.metadata.labels.as_ref().and_then(|l| l.get("k8s-app"));
    check!(
        r,
        app.is_some_and(|a| a == "kube-dns"),
        "kube-dns: label k8s-app: kube-dns expected"
    );
    let spec = svc.spec.clone().unwrap_or_default();
    let pod_labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    check!(
        r,
        selects(spec.selector.as_ref(), pod_labels),
        "kube-dns: selector misses {DNS}'s pods"
    );
    check!(
        r,
        kube_dns_ip(b).is_some(),
        "kube-dns: a fixed clusterIP (kubelet's clusterDNS) expected"
    );
    for (name, protocol, number) in [
        ("dns", "UDP", 53),
        ("dns-tcp", "TCP", 53),
        ("metrics", "TCP", 9153),
    ] {
        let port = spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name));
        let Some(port) = port else {
            check!(r, false, "kube-dns: no port {name}");
            continue;
        };
        let proto = port.protocol.as_deref().unwrap_or("TCP");
        check!(
            r,
            (proto, port.port) == (protocol, number),
            "kube-dns: {name} must be {protocol} {number}"
        );
        let target = port
            .target_port
            .clone()
            .unwrap_or(IntOrString::Int(port.port));
        let target = container_port(c, &target).map(i32::from);
        let served = c.ports.iter().flatten().any(|p| {
            Some(p.container_port) == target && p.protocol.as_deref().unwrap_or("TCP") == proto
        });
        check!(
            r,
            served,
            "kube-dns: port {name} targets no {proto} port of {DNS}"
        );
    }
}

/// The (group, resource) → verbs that ClusterRoleBindings grant a ServiceAccount of kube-system;
/// problems for anything beyond read-only resource rules.
fn grants(b: &Bundle, sa: &str, r: &mut Report) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut granted: BTreeMap<_, BTreeSet<String>> = BTreeMap::new();
    let binds_sa = |crb: &&ClusterRoleBinding| {
        let mut subjects = crb.subjects.iter().flatten();
        subjects.any(|s| {
            s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(NAMESPACE)
        })
    };
    for crb in b.bindings.iter().filter(binds_sa) {
        let name = &crb.role_ref.name;
        let role = b
            .cluster_roles
            .iter()
            .find(|cr| cr.metadata.name.as_ref() == Some(name));
        check!(
            r,
            crb.role_ref.kind == "ClusterRole" && role.is_some(),
            "{sa}: no ClusterRole {name}"
        );
        for rule in role.iter().flat_map(|cr| cr.rules.iter().flatten()) {
            let plain = rule.non_resource_urls.is_none() && rule.resource_names.is_none();
            check!(
                r,
                plain,
                "ClusterRole {name}: nonResourceURLs/resourceNames not expected"
            );
            for verb in &rule.verbs {
                let read = ["get", "list", "watch"].contains(&verb.as_str());
                check!(
                    r,
                    read,
                    "ClusterRole {name} grants {verb:?}, beyond get/list/watch"
                );
            }
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    let verbs = granted
                        .entry((group.clone(), resource.clone()))
                        .or_default();
                    verbs.extend(rule.verbs.iter().cloned());
                }
            }
        }
    }
    granted
}

/// The workload's ServiceAccount exists and may list and watch exactly `kinds`.
fn check_service_account(
    b: &Bundle,
    pod: &PodSpec,
    who: &str,
    kinds: &[(&str, &str)],
    r: &mut Report,
) {
    let sa = pod.service_account_name.as_deref().unwrap_or("default");
    let exists = b
        .service_accounts
        .iter()
        .any(|s| named(&s.metadata, NAMESPACE, sa));
    check!(r, exists, "{who}: no ServiceAccount {NAMESPACE}/{sa}");
    let granted = grants(b, sa, r);
    for (group, resource) in kinds {
        let verbs = granted.get(&(group.to_string(), resource.to_string()));
        let ok = verbs.is_some_and(|v| v.contains("list") && v.contains("watch"));
        check!(
            r,
            ok,
            "{who}: needs list+watch on {resource} (group {group:?}), has {verbs:?}"
        );
    }
    for (group, resource) in granted.keys() {
        let needed = kinds.contains(&(group.as_str(), resource.as_str()));
        check!(
            r,
            needed,
            "{who}: granted {resource} (group {group:?}), which it does not watch"
        );
    }
}

/// Every ServiceAccount is used by a workload, every ClusterRole is bound.
fn check_no_orphans(b: &Bundle, r: &mut Report) {
    let ds = b
        .daemon_sets
        .iter()
        .filter_map(|d| d.spec.as_ref()?.template.spec.as_ref());
    let deploys = b
        .deployments
        .iter()
        .filter_map(|d| d.spec.as_ref()?.template.spec.as_ref());
    let used: BTreeSet<&str> = ds
        .chain(deploys)
        .filter_map(|p| p.service_account_name.as_deref())
        .collect();
    for sa in b
        .service_accounts
        .iter()
        .filter_map(|s| s.metadata.name.as_deref())
    {
        check!(
            r,
            used.contains(sa),
            "ServiceAccount {sa} is used by no workload"
        );
    }
    for role in b
        .cluster_roles
        .iter()
        .filter_map(|c| c.metadata.name.as_deref())
    {
        let bound = b.bindings.iter().any(|crb| crb.role_ref.name == role);
        check!(r, bound, "ClusterRole {role} is bound to nothing");
    }
}

/// All checks of one rendering (or of the base's raw resources).
fn check_bundle(b: &Bundle, overlay: &Overlay) {
    let mut r = Report::default();
    let proxy = b
        .daemon_sets
        .iter()
        .any(|d| d.metadata.name.as_deref() == Some(PROXY));
    check!(
        r,
        proxy == overlay.proxy,
        "{PROXY} present: {proxy}, expected {}",
        overlay.proxy
    );
    if overlay.proxy {
        check_proxy(b, overlay, &mut r);
    }
    let dns = b
        .deployments
        .iter()
        .any(|d| d.metadata.name.as_deref() == Some(DNS));
    check!(
        r,
        dns == overlay.dns,
        "{DNS} present: {dns}, expected {}",
        overlay.dns
    );
    if overlay.dns {
        check_dns(b, &mut r);
    }
    check_no_orphans(b, &mut r);
    r.finish(&format!("deploy/kustomize {}", overlay.name));
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn every_manifest_decodes_into_its_api_type() {
    let mut files = yaml_files(&kustomize_dir());
    files.extend(yaml_files(&deploy_dir().join("examples")));
    let mut problems = Vec::new();
    let mut decoded = 0;
    for doc in files.iter().flat_map(|f| read_docs(f)) {
        if str_at(&doc.value, "/kind") == Some("Kustomization") {
            continue; // read by kustomizations_are_complete_and_patches_hit_the_base
        }
        match Bundle::default().add(&doc.value) {
            Ok(()) => decoded += 1,
            Err(e) => problems.push(format!("{}: {e}", doc.origin)),
        }
    }
    let list = problems.join("\n  - ");
    assert!(
        problems.is_empty(),
        "manifests that do not decode:\n  - {list}"
    );
    println!(
        "{decoded} documents in {} files decode into their API types",
        files.len()
    );
}

/// Whether a patch document (apiVersion, kind, namespace, name) names a resource.
fn hits(
    patch: &(String, String, Option<String>, String),
    resource: &(String, String, Option<String>, String),
) -> bool {
    let same_namespace = patch.2.is_none() || resource.2.is_none() || patch.2 == resource.2;
    (&patch.0, &patch.1, &patch.3) == (&resource.0, &resource.1, &resource.3) && same_namespace
}

#[test]
fn kustomizations_are_complete_and_patches_hit_the_base() {
    let root = kustomize_dir();
    let mut used = BTreeSet::new();
    used_files(&root.join("base"), &mut used);
    let namespace = kustomization(&root.join("base")).namespace;
    assert_eq!(
        namespace.as_deref(),
        Some(NAMESPACE),
        "base kustomization namespace"
    );
    let entries = std::fs::read_dir(root.join("overlays")).expect("deploy/kustomize/overlays");
    let mut found: Vec<String> = entries
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut known: Vec<&str> = OVERLAYS.iter().map(|o| o.name).collect();
    known.sort();
    assert_eq!(found, known, "overlays on disk vs OVERLAYS in this test");
    for overlay in &OVERLAYS {
        let dir = root.join("overlays").join(overlay.name);
        used_files(&dir, &mut used);
        let targets: Vec<_> = resources(&dir).iter().map(|d| identity(&d.value)).collect();
        for patch in kustomization(&dir).patches {
            for doc in read_docs(&dir.join(&patch.path)) {
                let id = identity(&doc.value);
                let hit = targets.iter().any(|t| hits(&id, t));
                assert!(
                    hit,
                    "{}: patches {} {}, not in the resources",
                    doc.origin, id.1, id.3
                );
            }
        }
    }
    let unused: Vec<_> = yaml_files(&root)
        .into_iter()
        .filter(|f| !used.contains(&f.canonicalize().expect("canonical path")))
        .collect();
    assert!(unused.is_empty(), "files no kustomization uses: {unused:?}");
}

#[test]
fn base_runs_the_binaries_with_flags_probes_and_rbac_they_accept() {
    let bundle = Bundle::from_docs(&resources(&kustomize_dir().join("base")));
    check_bundle(&bundle, &BASE);
}

#[test]
fn overlays_render_with_kustomize_and_match_the_binaries() {
    let Some(command) = kustomize_command() else {
        println!("skipped: neither kustomize nor kubectl is on PATH, overlays not rendered");
        return;
    };
    let root = kustomize_dir();
    check_bundle(
        &Bundle::from_docs(&render(&command, &root.join("base"))),
        &BASE,
    );
    for overlay in &OVERLAYS {
        let dir = root.join("overlays").join(overlay.name);
        check_bundle(&Bundle::from_docs(&render(&command, &dir)), overlay);
        println!(
            "{}: rendered with `{}` and checked",
            overlay.name,
            command.join(" ")
        );
    }
}

#[test]
fn dockerfile_builds_what_the_manifests_run() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("deploy/Dockerfile");
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        stages,
        ["FROM rust:1-bookworm AS build", "FROM debian:bookworm-slim"]
    );
    assert!(text.contains("cargo build --release --locked -p svcplane-proxy -p svcplane-dns"));
    let runtime = text
        .split("FROM debian:bookworm-slim")
        .nth(1)
        .unwrap_or_default();
    let wanted = [
        "nftables",
        "iptables",
        "conntrack",
        "--no-install-recommends",
        "rm -rf /var/lib/apt/lists/*",
    ];
    for word in wanted {
        assert!(runtime.contains(word), "the runtime stage lacks {word:?}");
    }
    for binary in [PROXY, DNS] {
        let copied = runtime.lines().any(|l| {
            l.starts_with("COPY --from=build") && l.contains(binary) && l.contains(BIN_DIR)
        });
        assert!(copied, "the runtime stage must COPY {binary} to {BIN_DIR}");
    }
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    let uid: i64 = user
        .split(':')
        .next()
        .unwrap_or_default()
        .parse()
        .expect("numeric USER");
    let bundle = Bundle::from_docs(&resources(&kustomize_dir().join("base")));
    let dns = bundle
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(DNS));
    let pod = dns.and_then(|d| d.spec.as_ref()?.template.spec.as_ref());
    let run_as = pod.and_then(|p| p.security_context.as_ref()?.run_as_user);
    assert_eq!(run_as, Some(uid), "{DNS}'s runAsUser vs the image's USER");
}
