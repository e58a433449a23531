//! The resource kinds the test API server serves, and the discovery documents
//! (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`) that
//! describe them to clients.

use serde_json::{Value, json};

/// One served resource kind: where it lives in the URL space and how it is named.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// Group version, e.g. `v1`.
    pub version: &'static str,
    /// `apiVersion` as written in objects: `v1` or `group/version`.
    pub api_version: &'static str,
    /// `kind` of a single object, e.g. `Service`.
    pub kind: &'static str,
    /// `kind` of a list response, e.g. `ServiceList`.
    pub list_kind: &'static str,
    /// Lower-case plural used in URLs, e.g. `services`.
    pub plural: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

/// Every kind the server serves.
pub const RESOURCES: &[ResourceType] = &[
    core("Service", "ServiceList", "services", true),
    core("Pod", "PodList", "pods", true),
    core("Node", "NodeList", "nodes", false),
    core("Namespace", "NamespaceList", "namespaces", false),
    ResourceType {
        group: "discovery.k8s.io",
        version: "v1",
        api_version: "discovery.k8s.io/v1",
        kind: "EndpointSlice",
        list_kind: "EndpointSliceList",
        plural: "endpointslices",
        namespaced: true,
    },
];

const fn core(
    kind: &'static str,
    list_kind: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> ResourceType {
    ResourceType {
        group: "",
        version: "v1",
        api_version: "v1",
        kind,
        list_kind,
        plural,
        namespaced,
    }
}

/// The served kind with this `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.api_version == api_version && r.kind == kind)
}

/// The served kind at this group (empty for core), version and plural.
pub fn by_path(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// `GET /version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "34",
        "gitVersion": "v1.34.0-svcplane-test",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// `GET /api`.
pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
    })
}

/// `GET /apis`.
pub fn group_list() -> Value {
    let groups: Vec<Value> = named_groups().into_iter().map(group).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}`, if the group is served.
pub fn group_document(name: &str) -> Option<Value> {
    let found = named_groups().into_iter().find(|g| *g == name)?;
    let mut doc = group(found);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`, if served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            json!({
                "name": r.plural,
                "singularName": r.kind.to_lowercase(),
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "list", "watch"]
            })
        })
        .collect();
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources
    }))
}

fn named_groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = RESOURCES
        .iter()
        .map(|r| r.group)
        .filter(|g| !g.is_empty())
        .collect();
    groups.dedup();
    groups
}

fn group(name: &str) -> Value {
    let versions: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == name)
        .map(|r| json!({"groupVersion": r.api_version, "version": r.version}))
        .take(1)
        .collect();
    json!({"name": name, "versions": versions.clone(), "preferredVersion": versions.first()})
}
