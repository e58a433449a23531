//! Pod, Node and Namespace rules.

use std::net::IpAddr;
use std::sync::Arc;

use super::{convert, error};
use crate::model::{IpPrefix, Node, Object, Pod};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn pod(yaml: &str) -> Arc<Pod> {
    match convert(yaml) {
        Ok(Some(Object::Pod(p))) => p,
        other => panic!("expected a Pod, got {other:?}"),
    }
}

fn node(yaml: &str) -> Arc<Node> {
    match convert(yaml) {
        Ok(Some(Object::Node(n))) => n,
        other => panic!("expected a Node, got {other:?}"),
    }
}

fn pod_doc(body: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-0\n  namespace: shop\n  labels: {{app: web, tier: front}}\n{body}"
    )
}

#[test]
fn pods() {
    let p = pod(&pod_doc(
        "spec:\n  nodeName: node-1\n  hostNetwork: true\nstatus:\n  podIP: 10.244.1.5\n  podIPs: [{ip: 10.244.1.5}, {ip: 'fd00::5'}]\n",
    ));
    assert_eq!(p.key.to_string(), "shop/web-0");
    assert_eq!(p.ips, [ip("10.244.1.5"), ip("fd00::5")]);
    assert_eq!(p.node_name.as_deref(), Some("node-1"));
    assert!(p.host_network);
    let labels: Vec<(&str, &str)> = p.labels.iter().map(|(k, v)| (&**k, &**v)).collect();
    assert_eq!(labels, [("app", "web"), ("tier", "front")]);
    let single = pod(&pod_doc("status: {podIP: 10.244.1.6}\n"));
    assert_eq!(single.ips, [ip("10.244.1.6")]);
    let pending = pod(&pod_doc("spec: {containers: []}\n"));
    assert!(pending.ips.is_empty() && pending.node_name.is_none() && !pending.host_network);
}

#[test]
fn bad_pods() {
    assert_eq!(
        error(&pod_doc(
            "status: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.2}]}\n"
        )),
        "status.podIPs[0].ip: \"10.0.0.2\" must equal status.podIP \"10.0.0.1\""
    );
    assert_eq!(
        error(&pod_doc("status: {podIP: 10.0.0.01}\n")),
        "status.podIP: \"10.0.0.01\" has a leading zero (CVE-2021-29923)"
    );
    assert_eq!(
        error(&pod_doc(
            "status: {podIPs: [{ip: 10.0.0.1}, {ip: 10.0.0.2}]}\n"
        )),
        "status.podIPs[1]: must be of a different IP family than the first entry"
    );
    assert!(
        error(&pod_doc("spec: {nodeName: Node_1}\n"))
            .starts_with("spec.nodeName: \"Node_1\" is not a DNS-1123 subdomain")
    );
    let bad_name = "apiVersion: v1\nkind: Pod\nmetadata: {name: Web_0}\n";
    assert!(error(bad_name).starts_with("metadata.name: \"Web_0\" is not a DNS-1123 subdomain"));
}

fn node_doc(body: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n  labels:\n    topology.kubernetes.io/zone: zone-a\n{body}"
    )
}

#[test]
fn nodes() {
    let n = node(&node_doc(
        "spec:\n  podCIDR: 10.244.1.0/24\n  podCIDRs: [10.244.1.0/24, 'fd00:1::/64']\nstatus:\n  addresses:\n  - {type: ExternalIP, address: 203.0.113.7}\n  - {type: Hostname, address: node-1}\n  - {type: InternalIP, address: 192.168.0.7}\n  - {type: InternalIP, address: 'fd00::7'}\n  - {type: ExternalIP, address: 192.168.0.7}\n",
    ));
    assert_eq!(&*n.name, "node-1");
    assert_eq!(n.zone.as_deref(), Some("zone-a"));
    assert_eq!(
        n.addresses,
        [ip("192.168.0.7"), ip("fd00::7"), ip("203.0.113.7")]
    );
    let p = |a: &str, len| IpPrefix { addr: ip(a), len };
    assert_eq!(n.pod_cidrs, [p("10.244.1.0", 24), p("fd00:1::", 64)]);
    let single = node(&node_doc("spec: {podCIDR: 10.244.2.0/24}\n"));
    assert_eq!(single.pod_cidrs, [p("10.244.2.0", 24)]);
    let bare =
        node("apiVersion: v1\nkind: Node\nmetadata: {name: n.example.com, namespace: ignored}\n");
    assert!(bare.addresses.is_empty() && bare.zone.is_none() && bare.pod_cidrs.is_empty());
}

#[test]
fn bad_nodes() {
    assert_eq!(
        error(&node_doc(
            "status:\n  addresses: [{type: InternalIP, address: 192.168.0.300}]\n"
        )),
        "status.addresses[0].address: \"192.168.0.300\" is not a valid IP address"
    );
    assert_eq!(
        error(&node_doc(
            "spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.2.0/24]}\n"
        )),
        "spec.podCIDRs[0]: \"10.244.2.0/24\" must equal spec.podCIDR \"10.244.1.0/24\""
    );
    assert!(
        error(&node_doc(
            "spec: {podCIDRs: [10.244.1.0/24, 10.245.0.0/16]}\n"
        ))
        .starts_with("spec.podCIDRs[1]: must be of a different IP family")
    );
    assert!(
        error(&node_doc("spec: {podCIDR: 10.244.1.0/40}\n"))
            .starts_with("spec.podCIDR: \"10.244.1.0/40\" is not a valid CIDR")
    );
    let bad = "apiVersion: v1\nkind: Node\nmetadata: {name: Node_1}\n";
    assert!(error(bad).starts_with("metadata.name: \"Node_1\" is not a DNS-1123 subdomain"));
}

#[test]
fn namespaces() {
    match convert("apiVersion: v1\nkind: Namespace\nmetadata: {name: myapp-prod}\n") {
        Ok(Some(Object::Namespace(ns))) => assert_eq!(&*ns.name, "myapp-prod"),
        other => panic!("expected a Namespace, got {other:?}"),
    }
    assert!(
        error("apiVersion: v1\nkind: Namespace\nmetadata: {name: my.app}\n")
            .starts_with("metadata.name: \"my.app\" is not a DNS-1123 label")
    );
}
