//! Reading Kubernetes YAML for the lab: files and directories (recursively, `*.yaml`, `*.yml`,
//! `*.json`, in path order) → documents (multi-document YAML, `kind: List` items) → typed
//! objects the lab acts on: Namespaces, Services, workloads ([`Workload`]) and bare Pods
//! ([`NewPod`]). Every other kind is listed in [`Objects::ignored`], not refused, so real
//! application manifests (ConfigMaps, Secrets, Ingresses, PVCs…) load as they are.
//!
//! Namespaced objects without `metadata.namespace` go to `default`, as kubectl does. Services
//! are validated by svcplane's own converter (the API server's rules); errors name the file,
//! the 1-based document, the object and the field.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1 as core;
use serde_json::Value;
use svcplane_common::convert::{self, DEFAULT_NAMESPACE};

use super::workload::{self, NewPod, Workload};
use super::{Error, Result};

/// One document of a manifest file.
#[derive(Clone, Debug)]
pub struct Document {
    pub file: String,
    /// 1-based, in file order (empty documents are not counted).
    pub index: usize,
    pub value: Value,
}

/// The objects the lab acts on, in file order.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub namespaces: Vec<String>,
    pub services: Vec<core::Service>,
    pub workloads: Vec<Workload>,
    pub pods: Vec<NewPod>,
    /// `Kind namespace/name` of every object of a kind the lab does not use.
    pub ignored: Vec<String>,
}

/// Reads every manifest under `paths`.
pub fn read_paths(paths: &[PathBuf]) -> Result<Vec<Document>> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, true, &mut files)?;
    }
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(Error::io(format!("reading {}", file.display())))?;
        docs.extend(parse_documents(&file.display().to_string(), &text)?);
    }
    Ok(docs)
}

/// Files under `path`: the path itself when it is a file (`root`), manifest files of
/// directories, recursively, sorted.
fn collect(path: &Path, root: bool, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(Error::io(format!("reading {}", path.display())))?;
    if meta.is_file() {
        if root || is_manifest(path) {
            out.push(path.to_owned());
        }
        return Ok(());
    }
    let list = std::fs::read_dir(path).map_err(Error::io(format!("listing {}", path.display())))?;
    let mut entries: Vec<PathBuf> = list.filter_map(|e| Some(e.ok()?.path())).collect();
    entries.sort();
    for entry in entries {
        let hidden = entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if !hidden {
            collect(&entry, false, out)?;
        }
    }
    Ok(())
}

fn is_manifest(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    matches!(ext.to_ascii_lowercase().as_str(), "yaml" | "yml" | "json")
}

/// Splits a file's text into documents (JSON is YAML too); `kind: List` items become documents
/// of their own (sharing the list's index).
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Document>> {
    let values: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| Error::Manifest {
        file: file.to_owned(),
        doc: 0,
        what: "file".into(),
        message: format!("not valid YAML: {e}"),
    })?;
    let mut docs = Vec::new();
    for (i, value) in values.into_iter().filter(|v| !v.is_null()).enumerate() {
        let index = i + 1;
        let doc = |value| Document {
            file: file.to_owned(),
            index,
            value,
        };
        match list_items(&value) {
            Some(items) => docs.extend(items.into_iter().map(doc)),
            None => docs.push(doc(value)),
        }
    }
    Ok(docs)
}

fn list_items(value: &Value) -> Option<Vec<Value>> {
    let kind = value.get("kind")?.as_str()?;
    if !kind.ends_with("List") {
        return None;
    }
    value.get("items")?.as_array().cloned()
}

/// Sorts documents into [`Objects`].
pub fn classify(docs: &[Document]) -> Result<Objects> {
    let mut objects = Objects::default();
    for doc in docs {
        classify_one(doc, &mut objects)?;
    }
    Ok(objects)
}

/// `Kind ns/name` (or as much as is known) of a raw document.
fn describe(value: &Value) -> String {
    convert::Identity::of(value).describe()
}

fn classify_one(doc: &Document, objects: &mut Objects) -> Result<()> {
    let mut value = doc.value.clone();
    let api = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let fail = |message: String| Error::Manifest {
        file: doc.file.clone(),
        doc: doc.index,
        what: describe(&doc.value),
        message,
    };
    if api.is_empty() || kind.is_empty() {
        return Err(fail("apiVersion and kind are required".into()));
    }
    let namespaced = !matches!(
        kind.as_str(),
        "Namespace"
            | "Node"
            | "PersistentVolume"
            | "ClusterRole"
            | "ClusterRoleBinding"
            | "StorageClass"
            | "CustomResourceDefinition"
            | "PriorityClass"
            | "IngressClass"
    );
    if namespaced {
        default_namespace(&mut value);
    }
    match (api.as_str(), kind.as_str()) {
        ("v1", "Namespace") => objects.namespaces.push(namespace(&value).map_err(fail)?),
        ("v1", "Service") => objects.services.push(service(value).map_err(fail)?),
        ("v1", "Pod") => objects.pods.push(
            decode(value)
                .and_then(|p| workload::pod(&p))
                .map_err(fail)?,
        ),
        ("apps/v1", "Deployment") => objects.workloads.push(
            decode(value)
                .and_then(|d| workload::deployment(&d))
                .map_err(fail)?,
        ),
        ("apps/v1", "ReplicaSet") => objects.workloads.push(
            decode(value)
                .and_then(|d| workload::replica_set(&d))
                .map_err(fail)?,
        ),
        ("apps/v1", "StatefulSet") => objects.workloads.push(
            decode(value)
                .and_then(|d| workload::stateful_set(&d))
                .map_err(fail)?,
        ),
        ("apps/v1", "DaemonSet") => objects.workloads.push(
            decode(value)
                .and_then(|d| workload::daemon_set(&d))
                .map_err(fail)?,
        ),
        _ => objects.ignored.push(describe(&value)),
    }
    Ok(())
}

/// Sets `metadata.namespace` to `default` when absent.
fn default_namespace(value: &mut Value) {
    if let Some(Value::Object(meta)) = value.get_mut("metadata") {
        let absent = meta
            .get("namespace")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if absent {
            meta.insert("namespace".into(), DEFAULT_NAMESPACE.into());
        }
    }
}

/// Decodes a document into its API type, naming the failing field.
fn decode<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

fn namespace(value: &Value) -> Result<String, String> {
    match convert::from_json(value.clone()) {
        Ok(Some(svcplane_common::model::Object::Namespace(ns))) => Ok(ns.name.to_string()),
        Ok(_) => Err("not a Namespace".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A Service, validated as the API server would (before addresses are assigned).
fn service(value: Value) -> Result<core::Service, String> {
    convert::from_json(value.clone()).map_err(|e| e.to_string())?;
    decode(value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MIXED: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: shop}
---
# only a comment
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web}
  spec: {selector: {app: web}, ports: [{port: 80}]}
- apiVersion: networking.k8s.io/v1
  kind: Ingress
  metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: solo, namespace: shop, labels: {app: web}}
spec:
  containers: [{name: c, image: x, ports: [{containerPort: 80}]}]
";

    #[test]
    fn documents_are_sorted_into_kinds_and_the_rest_ignored() {
        let docs = parse_documents("mixed.yaml", MIXED).unwrap();
        assert_eq!(docs.len(), 5);
        let objects = classify(&docs).unwrap();
        assert_eq!(objects.namespaces, ["shop"]);
        assert_eq!(objects.services.len(), 1);
        let svc_ns = objects.services[0].metadata.namespace.as_deref();
        assert_eq!(svc_ns, Some("default"), "namespace defaulted");
        assert_eq!(objects.pods[0].name, "solo");
        assert_eq!(objects.ignored, ["ConfigMap shop/cfg", "Ingress shop/web"]);
    }

    #[test]
    fn errors_name_the_file_document_object_and_field() {
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n---\n\
                   apiVersion: v1\nkind: Service\nmetadata: {name: Bad_Name}\nspec: {ports: [{port: 80}]}\n";
        let err = classify(&parse_documents("bad.yaml", bad).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("bad.yaml: document 1 (Service default/web)"),
            "{err}"
        );
        let bad = bad.replace(
            "metadata: {name: web}\n",
            "metadata: {name: web}\nspec: {ports: [{port: 80}]}\n",
        );
        let err = classify(&parse_documents("bad.yaml", &bad).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("document 2") && err.contains("metadata.name"),
            "{err}"
        );
        let typo =
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: many}\n";
        let err = classify(&parse_documents("d.yaml", typo).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("spec.replicas"), "{err}");
    }
}
