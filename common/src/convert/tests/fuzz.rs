//! Nothing may panic on any input: random documents, and valid objects with one field replaced
//! by a random value, go through conversion (and, as text, through manifest parsing).

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::convert::from_json;

const KEYS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "port",
    "ports",
    "clusterIP",
    "clusterIPs",
    "type",
    "targetPort",
    "nodePort",
    "protocol",
    "addresses",
    "endpoints",
    "conditions",
    "ready",
    "hostname",
    "ip",
    "podIP",
    "podIPs",
    "metadata",
    "spec",
    "status",
    "loadBalancer",
    "ingress",
    "ipMode",
    "sessionAffinity",
    "externalName",
    "addressType",
    "podCIDRs",
    "items",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-2i64..70000).prop_map(Value::from),
        "[a-zA-Z0-9.:/ _%-]{0,16}".prop_map(Value::from),
        prop::sample::select(vec![
            "None",
            "10.0.0.1",
            "010.0.0.1",
            "fd00::1",
            "::",
            "TCP",
            "ClientIP",
            "LoadBalancer",
            "10.0.0.0/8"
        ])
        .prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..6).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

fn base_objects() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "b"},
               "spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"],
                        "ports": [{"name": "x", "port": 80, "targetPort": "http", "nodePort": 30000}],
                        "sessionAffinity": "ClientIP", "externalTrafficPolicy": "Local",
                        "loadBalancerSourceRanges": ["10.0.0.0/8"]},
               "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}]}}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "a", "labels": {"kubernetes.io/service-name": "a"}},
               "addressType": "IPv4", "ports": [{"name": "x", "port": 80}],
               "endpoints": [{"addresses": ["10.1.0.1"], "hostname": "h", "conditions": {"ready": true},
                              "hints": {"forZones": [{"name": "z"}]}, "targetRef": {"kind": "Pod", "name": "p"}}]}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
               "spec": {"nodeName": "n", "containers": []}, "status": {"podIP": "10.1.0.1", "podIPs": [{"ip": "10.1.0.1"}]}}),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"},
               "spec": {"podCIDRs": ["10.1.0.0/24"]}, "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.5"}]}}),
    ]
}

/// Replaces the value at a pseudo-random position of `doc` (chosen by `path`) with `new`.
fn replace_somewhere(doc: &mut Value, path: &[usize], new: Value) {
    let Some((step, rest)) = path.split_first() else {
        *doc = new;
        return;
    };
    match doc {
        Value::Object(map) if !map.is_empty() => {
            let len = map.len();
            if let Some((_, v)) = map.iter_mut().nth(step % len) {
                return replace_somewhere(v, rest, new);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let len = items.len();
            if let Some(v) = items.get_mut(step % len) {
                return replace_somewhere(v, rest, new);
            }
        }
        _ => {}
    }
    *doc = new;
}

proptest! {
    #[test]
    fn random_documents_do_not_panic(
        kind in prop::sample::select(vec![("v1", "Service"), ("v1", "Pod"), ("v1", "Node"), ("v1", "Namespace"), ("discovery.k8s.io/v1", "EndpointSlice")]),
        body in prop::collection::btree_map(prop::sample::select(KEYS), value(), 0..5),
    ) {
        let mut doc: serde_json::Map<String, Value> = body.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        doc.insert("apiVersion".into(), kind.0.into());
        doc.insert("kind".into(), kind.1.into());
        let _ = from_json(Value::Object(doc));
    }

    #[test]
    fn mutated_objects_do_not_panic(
        which in 0usize..4,
        path in prop::collection::vec(any::<usize>(), 1..7),
        new in value(),
    ) {
        let mut doc = base_objects().swap_remove(which);
        replace_somewhere(&mut doc, &path, new);
        let _ = from_json(doc);
    }

    #[test]
    fn random_text_does_not_panic(text in "(apiVersion: v1\n|kind: Service\n|---\n|  - \\{|\\[|\\]|: |[a-z0-9 .:\"'&*!#-]{0,8}\n?){0,24}") {
        let _ = crate::source::manifests::parse_for_tests(std::path::Path::new("x.yaml"), &text);
        let _ = crate::source::manifests::parse_for_tests(std::path::Path::new("x.json"), &text);
    }
}

#[test]
fn base_objects_are_valid() {
    for doc in base_objects() {
        assert!(matches!(from_json(doc.clone()), Ok(Some(_))), "{doc}");
    }
}
