//! EndpointSlice rules.

use std::sync::Arc;

use super::{convert, error};
use crate::model::{EndpointPort, EndpointSlice, Family, Object, Protocol};

fn doc(address_type: &str, body: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-abc12\n  namespace: shop\n  labels:\n    kubernetes.io/service-name: web\naddressType: {address_type}\n{body}"
    )
}

fn slice(yaml: &str) -> Arc<EndpointSlice> {
    match convert(yaml) {
        Ok(Some(Object::EndpointSlice(s))) => s,
        other => panic!("expected an EndpointSlice, got {other:?}"),
    }
}

const FULL: &str = "ports:
- {name: http, port: 8080}
- {name: dns, port: 53, protocol: UDP}
endpoints:
- addresses: [10.244.1.5, 10.244.1.6]
  hostname: web-0
  nodeName: node-1
  zone: zone-a
  targetRef: {kind: Pod, name: web-0, namespace: shop}
  hints:
    forZones: [{name: zone-a}]
    forNodes: [{name: node-1}]
- addresses: [10.244.2.5]
  conditions: {ready: false}
  targetRef: {kind: Node, name: node-2}
- addresses: [10.244.3.5]
  conditions: {ready: false, serving: true, terminating: true}
";

#[test]
fn full_slice() {
    let s = slice(&doc("IPv4", FULL));
    assert_eq!(s.key.to_string(), "shop/web-abc12");
    assert_eq!(s.service_name.as_deref(), Some("web"));
    assert_eq!(s.family, Family::V4);
    assert_eq!(
        *s.ports,
        [
            EndpointPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080
            },
            EndpointPort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53
            },
        ]
    );
    let [a, b, c] = &s.endpoints[..] else {
        panic!("three endpoints expected: {:?}", s.endpoints);
    };
    assert_eq!(a.ip.to_string(), "10.244.1.5");
    assert_eq!(a.hostname.as_deref(), Some("web-0"));
    assert_eq!(a.node_name(), Some("node-1"));
    assert_eq!(a.zone(), Some("zone-a"));
    assert_eq!((a.ready, a.serving, a.terminating), (true, true, false));
    assert_eq!(a.hint_zones(), [Arc::from("zone-a")]);
    assert_eq!(a.hint_nodes(), [Arc::from("node-1")]);
    assert_eq!((b.ready, b.serving, b.terminating), (false, false, false));
    assert_eq!((c.ready, c.serving, c.terminating), (false, true, true));
}

#[test]
fn ipv6_and_fqdn() {
    let s = slice(&doc("IPv6", "endpoints:\n- addresses: ['fd00::5']\n"));
    assert_eq!(s.family, Family::V6);
    assert!(s.ports.is_empty());
    let fqdn = doc("FQDN", "endpoints:\n- addresses: [db.example.com]\n");
    assert_eq!(convert(&fqdn), Ok(None));
}

#[test]
fn address_type() {
    assert_eq!(
        error(&doc("IPv5", "endpoints: []\n")),
        "addressType: \"IPv5\" is not one of IPv4, IPv6, FQDN"
    );
    let missing = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a}\nendpoints: []\n";
    assert_eq!(error(missing), "addressType: required value");
}

#[test]
fn addresses() {
    assert_eq!(
        error(&doc("IPv4", "endpoints:\n- addresses: ['fd00::5']\n")),
        "endpoints[0].addresses[0]: \"fd00::5\" is not an IPv4 address"
    );
    assert_eq!(
        error(&doc(
            "IPv4",
            "endpoints:\n- addresses: [10.0.0.1]\n- addresses: [10.0.0.1, 10.0.0.010]\n"
        )),
        "endpoints[1].addresses[1]: \"10.0.0.010\" has a leading zero (CVE-2021-29923)"
    );
    assert_eq!(
        error(&doc("IPv4", "endpoints:\n- addresses: [127.0.0.1]\n")),
        "endpoints[0].addresses[0]: \"127.0.0.1\" may not be in the loopback range (127.0.0.0/8)"
    );
    assert_eq!(
        error(&doc("IPv4", "endpoints:\n- addresses: []\n")),
        "endpoints[0].addresses: required value"
    );
}

#[test]
fn endpoint_names() {
    assert!(
        error(&doc(
            "IPv4",
            "endpoints:\n- {addresses: [10.0.0.1], hostname: Postgres_0}\n"
        ))
        .starts_with("endpoints[0].hostname: \"Postgres_0\" is not a DNS-1123 label")
    );
    assert!(
        error(&doc(
            "IPv4",
            "endpoints:\n- {addresses: [10.0.0.1], hostname: pg.0}\n"
        ))
        .starts_with("endpoints[0].hostname: \"pg.0\" is not a DNS-1123 label")
    );
    assert!(
        error(&doc(
            "IPv4",
            "endpoints:\n- {addresses: [10.0.0.1], nodeName: Node_1}\n"
        ))
        .starts_with("endpoints[0].nodeName: \"Node_1\" is not a DNS-1123 subdomain")
    );
    assert!(
        error(&doc(
            "IPv4",
            "endpoints:\n- {addresses: [10.0.0.1], zone: 'bad zone'}\n"
        ))
        .starts_with("endpoints[0].zone:")
    );
}

#[test]
fn ports() {
    assert_eq!(
        error(&doc(
            "IPv4",
            "ports: [{name: a, port: 1}, {name: a, port: 2}]\nendpoints: []\n"
        )),
        "ports[1].name: \"a\" duplicates ports[0].name"
    );
    assert_eq!(
        error(&doc(
            "IPv4",
            "ports: [{port: 1}, {port: 2}]\nendpoints: []\n"
        )),
        "ports[1].name: \"\" duplicates ports[0].name"
    );
    assert_eq!(
        error(&doc("IPv4", "ports: [{name: a, port: 0}]\nendpoints: []\n")),
        "ports[0].port: 0 is not in 1..=65535"
    );
    assert_eq!(
        error(&doc(
            "IPv4",
            "ports: [{name: a, port: 1, protocol: tcp}]\nendpoints: []\n"
        )),
        "ports[0].protocol: \"tcp\" is not one of TCP, UDP, SCTP"
    );
    assert!(
        error(&doc("IPv4", "ports: [{name: A, port: 1}]\nendpoints: []\n"))
            .starts_with("ports[0].name: \"A\" is not a DNS-1123 label")
    );
    let s = slice(&doc(
        "IPv4",
        "ports: [{name: all}, {name: b, port: 2}]\nendpoints: []\n",
    ));
    assert_eq!(s.ports.len(), 1, "a port without a number is dropped");
}

#[test]
fn hints() {
    let zones: Vec<String> = (0..9).map(|i| format!("{{name: z{i}}}")).collect();
    let body = format!(
        "endpoints:\n- addresses: [10.0.0.1]\n  hints: {{forZones: [{}]}}\n",
        zones.join(", ")
    );
    assert_eq!(
        error(&doc("IPv4", &body)),
        "endpoints[0].hints.forZones: at most 8 entries"
    );
    assert_eq!(
        error(&doc(
            "IPv4",
            "endpoints:\n- addresses: [10.0.0.1]\n  hints: {forNodes: [{name: ''}]}\n"
        )),
        "endpoints[0].hints.forNodes[0].name: required value"
    );
}

#[test]
fn slice_names() {
    let bad = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: Web}\naddressType: IPv4\nendpoints: []\n";
    assert!(error(bad).starts_with("metadata.name: \"Web\" is not a DNS-1123 subdomain"));
    let dotted = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web.abc}\naddressType: IPv4\nendpoints: []\n";
    let s = slice(dotted);
    assert_eq!(s.service_name, None);
    assert_eq!(s.key.to_string(), "default/web.abc");
}
