//! Tests of the conversion rules: each rule with good and bad input, through [`from_json`] as a
//! manifest would reach it.

mod endpoint_slice;
mod fuzz;
mod service;
mod validate;
mod workload;

use std::sync::Arc;

use super::{ConvertError, from_json};
use crate::model::Object;

/// Converts one YAML document.
fn convert(yaml: &str) -> Result<Option<Object>, ConvertError> {
    let value: serde_json::Value = serde_saphyr::from_str(yaml).expect("test YAML parses");
    from_json(value)
}

/// The error message for a document that must be rejected.
fn error(yaml: &str) -> String {
    match convert(yaml) {
        Err(e) => e.to_string(),
        Ok(o) => panic!("expected an error, got {o:?}"),
    }
}

fn service(yaml: &str) -> Arc<crate::model::Service> {
    match convert(yaml) {
        Ok(Some(Object::Service(s))) => s,
        other => panic!("expected a Service, got {other:?}"),
    }
}

#[test]
fn ignored_kinds_are_none() {
    for (api, kind) in [
        ("apps/v1", "Deployment"),
        ("apps/v1", "StatefulSet"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("networking.k8s.io/v1", "Ingress"),
        ("v1beta1", "Service"),
    ] {
        let doc = format!("apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: x\nspec: {{}}\n");
        assert_eq!(convert(&doc), Ok(None), "{api} {kind}");
    }
}

#[test]
fn type_meta_is_required() {
    assert_eq!(
        error("kind: Service\nmetadata: {name: a}\n"),
        "apiVersion: required value"
    );
    assert_eq!(
        error("apiVersion: v1\nmetadata: {name: a}\n"),
        "kind: required value"
    );
    assert!(error("apiVersion: 1\nkind: Service\n").starts_with("apiVersion: expected a string"));
    assert!(error("- a\n- b\n").contains("expected a mapping"));
}

#[test]
fn decode_errors_name_the_field() {
    let e = error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports:\n  - port: 80\n  - port: abc\n",
    );
    assert!(e.starts_with("spec.ports[1].port: invalid type"), "{e}");
    let e =
        error("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports:\n  - name: x\n");
    // k8s-openapi defaults a missing `port` to 0, which the range check rejects (as the API does).
    assert_eq!(e, "spec.ports[0].port: 0 is not in 1..=65535");
    let e = error("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {type: [1]}\n");
    assert!(e.starts_with("spec.type: invalid type: sequence"), "{e}");
}

#[test]
fn namespace_defaults_for_manifests() {
    let s = service(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n",
    );
    assert_eq!(&*s.key.namespace, "default");
    let s = service(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ''}\nspec: {ports: [{port: 80}]}\n",
    );
    assert_eq!(&*s.key.namespace, "default");
}

#[test]
fn typed_functions_require_a_namespace() {
    let obj = k8s_openapi::api::core::v1::Service {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("a".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let e = super::service(&obj).map(|_| ()).map_err(|e| e.to_string());
    assert_eq!(e, Err("metadata.namespace: required value".into()));
}

#[test]
fn identity_describes_raw_documents() {
    let v: serde_json::Value =
        serde_saphyr::from_str("apiVersion: v1\nkind: Service\nmetadata: {name: web}\n")
            .expect("parses");
    assert_eq!(super::Identity::of(&v).describe(), "Service default/web");
    let v: serde_json::Value =
        serde_saphyr::from_str("apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n")
            .expect("parses");
    assert_eq!(super::Identity::of(&v).describe(), "Node n1");
    let v: serde_json::Value = serde_saphyr::from_str("kind: Service\n").expect("parses");
    assert_eq!(super::Identity::of(&v).describe(), "Service (unnamed)");
}
