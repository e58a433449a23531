//! Conversion of Kubernetes API objects into the slim [`crate::model`], validated as the API
//! server would validate them.
//!
//! This module owns the boundary between API types (`k8s_openapi`) and the model: every object a
//! source delivers, whether listed from the live API (already validated there) or read from a
//! manifest on disk (validated only here), goes through [`service`], [`endpoint_slice`], [`pod`],
//! [`node`] or [`namespace`], which apply the API's defaults and reject what the API server would
//! reject. Manifests enter through [`from_json`], which dispatches on `apiVersion`/`kind` and
//! ignores kinds the data plane does not consume. Every error names the offending field by its
//! path (`spec.ports[1].port: 70000 is not in 1..=65535`). No input may panic.

mod endpoint_slice;
mod service;
mod validate;
mod workload;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::model::{Kind, Object};

pub use endpoint_slice::endpoint_slice;
pub use service::service;
pub use validate::NameRule;
pub use workload::{namespace, node, pod};

/// Why an API object was rejected. `field` is always the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// A required field is absent or empty.
    #[error("{field}: required value")]
    Required { field: String },
    /// A name does not follow the naming rule of its field.
    #[error("{field}: {value:?} is not a {rule} ({})", rule.hint())]
    InvalidName {
        field: String,
        value: String,
        rule: NameRule,
    },
    /// A number is outside the range the field allows.
    #[error("{field}: {value} is not in {min}..={max}")]
    OutOfRange {
        field: String,
        value: i64,
        min: i64,
        max: i64,
    },
    /// A dotted-quad IPv4 octet has a leading zero, which some parsers read as octal.
    #[error("{field}: {value:?} has a leading zero (CVE-2021-29923)")]
    LeadingZero { field: String, value: String },
    /// Not an IP address, or not one of the family the field requires.
    #[error("{field}: {value:?} is not {expected}")]
    InvalidIp {
        field: String,
        value: String,
        expected: &'static str,
    },
    /// An IP address of a kind the field does not accept (loopback, link-local...).
    #[error("{field}: {value:?} may not be {what}")]
    SpecialIp {
        field: String,
        value: String,
        what: &'static str,
    },
    /// Not a CIDR (`address/prefix-length`).
    #[error("{field}: {value:?} is not a valid CIDR: {reason}")]
    InvalidCidr {
        field: String,
        value: String,
        reason: &'static str,
    },
    /// An enumerated field holds a value outside its set.
    #[error("{field}: {value:?} is not one of {allowed}")]
    NotSupported {
        field: String,
        value: String,
        allowed: &'static str,
    },
    /// A value repeats an earlier entry that must be unique.
    #[error("{field}: {value:?} duplicates {first}")]
    Duplicate {
        field: String,
        value: String,
        first: String,
    },
    /// A field is set, or set to a value, that the other fields forbid.
    #[error("{field}: {reason}")]
    Forbidden { field: String, reason: String },
    /// The document does not decode into its API type (wrong JSON type, missing required key).
    #[error("{field}: {message}")]
    Decode { field: String, message: String },
}

impl ConvertError {
    /// The path of the offending field (`spec.ports[1].port`).
    pub fn field(&self) -> &str {
        match self {
            ConvertError::Required { field }
            | ConvertError::InvalidName { field, .. }
            | ConvertError::OutOfRange { field, .. }
            | ConvertError::LeadingZero { field, .. }
            | ConvertError::InvalidIp { field, .. }
            | ConvertError::SpecialIp { field, .. }
            | ConvertError::InvalidCidr { field, .. }
            | ConvertError::NotSupported { field, .. }
            | ConvertError::Duplicate { field, .. }
            | ConvertError::Forbidden { field, .. }
            | ConvertError::Decode { field, .. } => field,
        }
    }

    pub(crate) fn forbidden(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConvertError::Forbidden {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn required(field: impl Into<String>) -> Self {
        ConvertError::Required {
            field: field.into(),
        }
    }
}

/// The kind/namespace/name of a raw document, as far as they can be read (for error reports).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    /// For namespaced kinds svcplane consumes, defaulted to `default` as kubectl does.
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Identity {
    /// Reads `apiVersion`, `kind` and `metadata` of a raw document without validating them.
    pub fn of(value: &Value) -> Identity {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let meta = value.get("metadata");
        let api_version = text(value.get("apiVersion"));
        let kind = text(value.get("kind"));
        let mut namespace = text(meta.and_then(|m| m.get("namespace"))).filter(|n| !n.is_empty());
        let model_kind = match (&api_version, &kind) {
            (Some(a), Some(k)) => kind_of(a, k),
            _ => None,
        };
        if namespace.is_none() && model_kind.is_some_and(is_namespaced) {
            namespace = Some(DEFAULT_NAMESPACE.to_owned());
        }
        Identity {
            api_version,
            kind,
            namespace,
            name: text(meta.and_then(|m| m.get("name"))),
        }
    }

    /// `Service myapp/web`, `Node n1`, or as much of it as is known.
    pub fn describe(&self) -> String {
        let kind = self.kind.as_deref().unwrap_or("object");
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
            (None, Some(name)) => format!("{kind} {name}"),
            _ => format!("{kind} (unnamed)"),
        }
    }
}

/// The namespace kubectl uses for a namespaced object that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The model kind for an API `apiVersion`/`kind` pair, or `None` for kinds svcplane ignores.
pub fn kind_of(api_version: &str, kind: &str) -> Option<Kind> {
    match (api_version, kind) {
        ("v1", "Service") => Some(Kind::Service),
        ("v1", "Pod") => Some(Kind::Pod),
        ("v1", "Node") => Some(Kind::Node),
        ("v1", "Namespace") => Some(Kind::Namespace),
        ("discovery.k8s.io/v1", "EndpointSlice") => Some(Kind::EndpointSlice),
        _ => None,
    }
}

/// Whether objects of `kind` live in a namespace.
pub fn is_namespaced(kind: Kind) -> bool {
    matches!(kind, Kind::Service | Kind::EndpointSlice | Kind::Pod)
}

/// Converts one raw manifest document. Dispatches on `apiVersion`/`kind`: returns `Ok(None)` for
/// kinds svcplane ignores (Deployment, ConfigMap, Ingress...) and for FQDN EndpointSlices.
/// A namespaced object without `metadata.namespace` is put in `default`, as kubectl would.
pub fn from_json(mut value: Value) -> Result<Option<Object>, ConvertError> {
    let Some(map) = value.as_object_mut() else {
        return Err(ConvertError::Decode {
            field: "(document)".into(),
            message: "expected a mapping (a Kubernetes object)".into(),
        });
    };
    let api_version = required_str(map, "apiVersion")?;
    let kind = required_str(map, "kind")?;
    let Some(kind) = kind_of(&api_version, &kind) else {
        return Ok(None);
    };
    if is_namespaced(kind) {
        default_namespace(map);
    }
    Ok(Some(match kind {
        Kind::Service => Object::Service(Arc::new(service(&decode(value)?)?)),
        Kind::EndpointSlice => match endpoint_slice(&decode(value)?)? {
            Some(slice) => Object::EndpointSlice(Arc::new(slice)),
            None => return Ok(None),
        },
        Kind::Pod => Object::Pod(Arc::new(pod(&decode(value)?)?)),
        Kind::Node => Object::Node(Arc::new(node(&decode(value)?)?)),
        Kind::Namespace => Object::Namespace(Arc::new(namespace(&decode(value)?)?)),
    }))
}

fn required_str(map: &serde_json::Map<String, Value>, key: &str) -> Result<String, ConvertError> {
    match map.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => Err(ConvertError::required(key)),
        Some(Value::String(_)) => Err(ConvertError::required(key)),
        Some(other) => Err(ConvertError::Decode {
            field: key.into(),
            message: format!("expected a string, found {other}"),
        }),
    }
}

fn default_namespace(map: &mut serde_json::Map<String, Value>) {
    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
        let absent = match meta.get("namespace") {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        if absent {
            meta.insert("namespace".into(), DEFAULT_NAMESPACE.into());
        }
    }
}

/// Decodes a raw document into its API type, naming the path of the first field that fails.
fn decode<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ConvertError> {
    serde_path_to_error::deserialize(value).map_err(|e| ConvertError::Decode {
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// `metadata.name`, checked against `rule`.
fn meta_name(meta: &ObjectMeta, rule: NameRule) -> Result<Arc<str>, ConvertError> {
    let name = non_empty(&meta.name).ok_or_else(|| ConvertError::required("metadata.name"))?;
    validate::name("metadata.name", name, rule)?;
    Ok(name.into())
}

/// `metadata.namespace` of a namespaced object: required, a DNS-1123 label.
fn meta_namespace(meta: &ObjectMeta) -> Result<Arc<str>, ConvertError> {
    let ns =
        non_empty(&meta.namespace).ok_or_else(|| ConvertError::required("metadata.namespace"))?;
    validate::name("metadata.namespace", ns, NameRule::Dns1123Label)?;
    Ok(crate::intern::intern(ns))
}

/// `metadata.labels`, with keys and values checked as the API server does.
fn meta_labels(meta: &ObjectMeta) -> Result<&BTreeMap<String, String>, ConvertError> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&EMPTY);
    for (key, value) in labels {
        validate::label(key, value)?;
    }
    Ok(labels)
}

/// A label's value as a model string, when present.
fn label(labels: &BTreeMap<String, String>, key: &str) -> Option<Arc<str>> {
    labels
        .get(key)
        .filter(|v| !v.is_empty())
        .map(|v| v.as_str().into())
}

/// An optional string field, with the empty string meaning unset (as API defaulting treats it).
fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|s| !s.is_empty())
}
