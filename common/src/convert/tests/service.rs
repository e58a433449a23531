//! Service rules.

use std::net::IpAddr;

use super::{error, service};
use crate::model::{
    IpMode, IpPrefix, LbIngress, Protocol, ServicePort, ServiceType, TargetPort, TrafficPolicy,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

/// A Service document with `spec` given as YAML lines indented by 2.
fn doc(spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n{spec}"
    )
}

const PORT: &str = "  ports:\n  - port: 80\n";

#[test]
fn defaults() {
    let s = service(&doc(PORT));
    assert_eq!(s.key.to_string(), "shop/web");
    assert_eq!(s.service_type, ServiceType::ClusterIp);
    assert!(!s.headless && s.cluster_ips.is_empty());
    assert_eq!(
        s.ports.to_vec(),
        vec![ServicePort {
            name: "".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: TargetPort::Number(80),
            node_port: None,
        }]
    );
    assert_eq!(s.affinity_timeout, None);
    assert_eq!(s.external_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(s.internal_traffic_policy, TrafficPolicy::Cluster);
    assert!(!s.publish_not_ready_addresses && s.external_name.is_none());
    assert!(s.proxy_name.is_none() && !s.headless_label);
}

#[test]
fn names() {
    let bad =
        "apiVersion: v1\nkind: Service\nmetadata: {name: Web_App}\nspec: {ports: [{port: 80}]}\n";
    assert!(error(bad).starts_with("metadata.name: \"Web_App\" is not a DNS-1035 label ("));
    let digit =
        "apiVersion: v1\nkind: Service\nmetadata: {name: 1web}\nspec: {ports: [{port: 80}]}\n";
    assert!(error(digit).starts_with("metadata.name: \"1web\" is not a DNS-1035 label"));
    let long = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {}}}\nspec: {{ports: [{{port: 80}}]}}\n",
        "a".repeat(64)
    );
    assert!(error(&long).starts_with("metadata.name:"));
    let ns = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: My_NS}\nspec: {ports: [{port: 80}]}\n";
    assert!(error(ns).starts_with("metadata.namespace: \"My_NS\" is not a DNS-1123 label"));
    let none = "apiVersion: v1\nkind: Service\nmetadata: {generateName: a-}\nspec: {ports: [{port: 80}]}\n";
    assert_eq!(error(none), "metadata.name: required value");
}

#[test]
fn labels() {
    let s = service(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  labels:\n    service.kubernetes.io/service-proxy-name: other\n    service.kubernetes.io/headless: ''\nspec: {ports: [{port: 80}]}\n",
    );
    assert_eq!(s.proxy_name.as_deref(), Some("other"));
    assert!(s.headless_label);
    let bad = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  labels: {'bad key': x}\nspec: {ports: [{port: 80}]}\n";
    assert!(error(bad).starts_with("metadata.labels: \"bad key\" is not a valid label key"));
}

#[test]
fn port_range() {
    let e = error(&doc(
        "  ports:\n  - {name: a, port: 80}\n  - {name: b, port: 70000}\n",
    ));
    assert_eq!(e, "spec.ports[1].port: 70000 is not in 1..=65535");
    assert_eq!(
        error(&doc("  ports: [{port: 0}]\n")),
        "spec.ports[0].port: 0 is not in 1..=65535"
    );
    assert_eq!(error(&doc("  ports: []\n")), "spec.ports: required value");
    assert_eq!(
        error(&doc("  type: NodePort\n")),
        "spec.ports: required value"
    );
}

#[test]
fn protocols() {
    let s = service(&doc(
        "  ports:\n  - {name: d, port: 53, protocol: UDP}\n  - {name: s, port: 53, protocol: SCTP}\n  - {name: t, port: 53, protocol: ''}\n",
    ));
    let protocols: Vec<Protocol> = s.ports.iter().map(|p| p.protocol).collect();
    assert_eq!(protocols, [Protocol::Udp, Protocol::Sctp, Protocol::Tcp]);
    assert_eq!(
        error(&doc("  ports: [{port: 80, protocol: HTTP}]\n")),
        "spec.ports[0].protocol: \"HTTP\" is not one of TCP, UDP, SCTP"
    );
}

#[test]
fn port_names() {
    assert_eq!(
        error(&doc("  ports:\n  - {name: a, port: 80}\n  - {port: 81}\n")),
        "spec.ports[1].name: required when the Service has more than one port"
    );
    assert!(
        error(&doc("  ports: [{name: Http, port: 80}]\n"))
            .starts_with("spec.ports[0].name: \"Http\" is not a DNS-1123 label")
    );
    assert_eq!(
        error(&doc(
            "  ports:\n  - {name: a, port: 80}\n  - {name: a, port: 81}\n"
        )),
        "spec.ports[1].name: \"a\" duplicates spec.ports[0].name"
    );
    assert_eq!(
        error(&doc(
            "  ports:\n  - {name: a, port: 80}\n  - {name: b, port: 80}\n"
        )),
        "spec.ports[1]: \"80/TCP\" duplicates spec.ports[0]"
    );
    let s = service(&doc(
        "  ports:\n  - {name: a, port: 53}\n  - {name: b, port: 53, protocol: UDP}\n",
    ));
    assert_eq!(s.ports.len(), 2);
}

#[test]
fn target_ports() {
    let s = service(&doc(
        "  ports:\n  - {name: a, port: 80, targetPort: http}\n  - {name: b, port: 81, targetPort: 8081}\n  - {name: c, port: 82, targetPort: 0}\n  - {name: d, port: 83, targetPort: ''}\n",
    ));
    let targets: Vec<TargetPort> = s.ports.iter().map(|p| p.target_port.clone()).collect();
    assert_eq!(
        targets,
        [
            TargetPort::Name("http".into()),
            TargetPort::Number(8081),
            TargetPort::Number(82),
            TargetPort::Number(83)
        ]
    );
    assert!(
        error(&doc("  ports: [{port: 80, targetPort: web_port}]\n"))
            .starts_with("spec.ports[0].targetPort: \"web_port\" is not a IANA service name")
    );
    assert!(
        error(&doc(
            "  ports: [{port: 80, targetPort: a-very-long-name}]\n"
        ))
        .contains("IANA")
    );
    assert_eq!(
        error(&doc("  ports: [{port: 80, targetPort: 70000}]\n")),
        "spec.ports[0].targetPort: 70000 is not in 1..=65535"
    );
}

#[test]
fn node_ports() {
    let s = service(&doc(
        "  type: NodePort\n  ports: [{port: 80, nodePort: 30080}]\n",
    ));
    assert_eq!(s.service_type, ServiceType::NodePort);
    assert_eq!(s.ports[0].node_port, Some(30080));
    assert_eq!(
        error(&doc("  ports: [{port: 80, nodePort: 30080}]\n")),
        "spec.ports[0].nodePort: may not be set when spec.type is ClusterIP"
    );
    assert_eq!(
        error(&doc(
            "  type: NodePort\n  ports: [{port: 80, nodePort: 70000}]\n"
        )),
        "spec.ports[0].nodePort: 70000 is not in 1..=65535"
    );
    assert_eq!(
        error(&doc(
            "  type: NodePort\n  ports:\n  - {name: a, port: 80, nodePort: 30080}\n  - {name: b, port: 81, nodePort: 30080}\n"
        )),
        "spec.ports[1].nodePort: \"30080/TCP\" duplicates spec.ports[0].nodePort"
    );
    let zero = service(&doc("  ports: [{port: 80, nodePort: 0}]\n"));
    assert_eq!(zero.ports[0].node_port, None);
}

#[test]
fn types() {
    assert_eq!(
        error(&doc("  type: Internal\n")),
        "spec.type: \"Internal\" is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"
    );
    let s = service(&doc("  type: LoadBalancer\n  ports: [{port: 80}]\n"));
    assert_eq!(s.service_type, ServiceType::LoadBalancer);
}

#[test]
fn external_names() {
    let s = service(&doc(
        "  type: ExternalName\n  externalName: db.example.com.\n",
    ));
    assert_eq!(s.service_type, ServiceType::ExternalName);
    assert_eq!(s.external_name.as_deref(), Some("db.example.com"));
    assert!(s.ports.is_empty() && s.cluster_ips.is_empty());
    assert_eq!(
        error(&doc("  type: ExternalName\n")),
        "spec.externalName: required value"
    );
    assert!(
        error(&doc("  type: ExternalName\n  externalName: bad_name.com\n"))
            .starts_with("spec.externalName: \"bad_name.com\" is not a DNS-1123 subdomain")
    );
    assert_eq!(
        error(&doc(
            "  type: ExternalName\n  externalName: a.com\n  clusterIP: 10.0.0.1\n"
        )),
        "spec.clusterIP: may not be set when spec.type is ExternalName"
    );
    let other = service(&doc("  externalName: ignored.com\n  ports: [{port: 80}]\n"));
    assert_eq!(other.external_name, None);
}

#[test]
fn headless() {
    let s = service(&doc("  clusterIP: None\n"));
    assert!(s.headless && s.cluster_ips.is_empty() && s.ports.is_empty());
    let s = service(&doc("  clusterIPs: [None]\n"));
    assert!(s.headless);
    assert_eq!(
        error(&doc(
            "  type: NodePort\n  clusterIP: None\n  ports: [{port: 80}]\n"
        )),
        "spec.clusterIP: may be \"None\" only when spec.type is ClusterIP"
    );
    assert_eq!(
        error(&doc("  clusterIP: None\n  clusterIPs: [None, 10.0.0.1]\n")),
        "spec.clusterIPs: must hold the single value \"None\" for a headless Service"
    );
}

#[test]
fn cluster_ips() {
    let s = service(&doc(&format!(
        "  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, fd00::10]\n{PORT}"
    )));
    assert_eq!(*s.cluster_ips, [ip("10.96.0.10"), ip("fd00::10")]);
    let s = service(&doc(&format!("  clusterIPs: [fd00::10]\n{PORT}")));
    assert_eq!(*s.cluster_ips, [ip("fd00::10")]);
    assert_eq!(
        error(&doc(&format!("  clusterIP: 010.0.0.1\n{PORT}"))),
        "spec.clusterIP: \"010.0.0.1\" has a leading zero (CVE-2021-29923)"
    );
    assert_eq!(
        error(&doc(&format!("  clusterIP: 10.0.0.256\n{PORT}"))),
        "spec.clusterIP: \"10.0.0.256\" is not a valid IP address"
    );
    assert_eq!(
        error(&doc(&format!(
            "  clusterIP: 10.0.0.1\n  clusterIPs: [10.0.0.2]\n{PORT}"
        ))),
        "spec.clusterIPs[0]: \"10.0.0.2\" must equal spec.clusterIP \"10.0.0.1\""
    );
    assert_eq!(
        error(&doc(&format!("  clusterIPs: [10.0.0.1, 10.0.0.2]\n{PORT}"))),
        "spec.clusterIPs[1]: must be of a different IP family than the first entry"
    );
    assert_eq!(
        error(&doc(&format!(
            "  clusterIPs: [10.0.0.1, fd00::1, 10.0.0.2]\n{PORT}"
        ))),
        "spec.clusterIPs: at most two entries, one per IP family"
    );
    assert_eq!(
        error(&doc(&format!(
            "  clusterIPs: [10.0.0.1, 'fd00::01:x']\n{PORT}"
        ))),
        "spec.clusterIPs[1]: \"fd00::01:x\" is not a valid IP address"
    );
}

#[test]
fn session_affinity() {
    let s = service(&doc(&format!("  sessionAffinity: ClientIP\n{PORT}")));
    assert_eq!(s.affinity_timeout, Some(10800));
    let s = service(&doc(&format!(
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 60}}}}\n{PORT}"
    )));
    assert_eq!(s.affinity_timeout, Some(60));
    for bad in [0, 86401, -5] {
        assert_eq!(
            error(&doc(&format!(
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {bad}}}}}\n{PORT}"
            ))),
            format!(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {bad} is not in 1..=86400"
            )
        );
    }
    assert_eq!(
        error(&doc(&format!("  sessionAffinity: Sticky\n{PORT}"))),
        "spec.sessionAffinity: \"Sticky\" is not one of None, ClientIP"
    );
    assert_eq!(
        error(&doc(&format!(
            "  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 60}}}}\n{PORT}"
        ))),
        "spec.sessionAffinityConfig: must not be set when spec.sessionAffinity is None"
    );
}

#[test]
fn traffic_policies() {
    let s = service(&doc(&format!(
        "  type: NodePort\n  externalTrafficPolicy: Local\n  internalTrafficPolicy: Local\n{PORT}"
    )));
    assert_eq!(s.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(s.internal_traffic_policy, TrafficPolicy::Local);
    assert!(
        error(&doc(&format!("  externalTrafficPolicy: Local\n{PORT}")))
            .starts_with("spec.externalTrafficPolicy: may only be set for externally-accessible")
    );
    let s = service(&doc(&format!(
        "  externalTrafficPolicy: Local\n  externalIPs: [192.0.2.10]\n{PORT}"
    )));
    assert_eq!(s.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(*s.external_ips, [ip("192.0.2.10")]);
    assert_eq!(
        error(&doc(&format!(
            "  type: NodePort\n  externalTrafficPolicy: Global\n{PORT}"
        ))),
        "spec.externalTrafficPolicy: \"Global\" is not one of Cluster, Local"
    );
    assert_eq!(
        error(&doc(&format!("  internalTrafficPolicy: Node\n{PORT}"))),
        "spec.internalTrafficPolicy: \"Node\" is not one of Cluster, Local"
    );
}

#[test]
fn health_check_node_port() {
    let s = service(&doc(&format!(
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n{PORT}"
    )));
    assert_eq!(s.health_check_node_port, Some(32000));
    assert!(
        error(&doc(&format!(
            "  type: LoadBalancer\n  healthCheckNodePort: 32000\n{PORT}"
        )))
        .starts_with("spec.healthCheckNodePort: may only be set when")
    );
    assert_eq!(
        error(&doc(&format!(
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 70000\n{PORT}"
        ))),
        "spec.healthCheckNodePort: 70000 is not in 1..=65535"
    );
}

#[test]
fn external_ips() {
    assert_eq!(
        error(&doc(&format!("  externalIPs: [127.0.0.1]\n{PORT}"))),
        "spec.externalIPs[0]: \"127.0.0.1\" may not be in the loopback range (127.0.0.0/8)"
    );
    assert_eq!(
        error(&doc(&format!("  externalIPs: [1.2.3.4, 01.2.3.4]\n{PORT}"))),
        "spec.externalIPs[1]: \"01.2.3.4\" has a leading zero (CVE-2021-29923)"
    );
}

#[test]
fn source_ranges() {
    let s = service(&doc(&format!(
        "  type: LoadBalancer\n  loadBalancerSourceRanges: [10.0.0.0/8, ' 192.168.1.7/24 ']\n{PORT}"
    )));
    let p = |a: &str, len| IpPrefix { addr: ip(a), len };
    assert_eq!(
        *s.lb_source_ranges,
        [p("10.0.0.0", 8), p("192.168.1.0", 24)]
    );
    assert_eq!(
        error(&doc(&format!(
            "  loadBalancerSourceRanges: [10.0.0.0/8]\n{PORT}"
        ))),
        "spec.loadBalancerSourceRanges: may only be set when spec.type is LoadBalancer"
    );
    assert!(
        error(&doc(&format!(
            "  type: LoadBalancer\n  loadBalancerSourceRanges: [10.0.0.0/8, 10.0.0.0/33]\n{PORT}"
        )))
        .starts_with("spec.loadBalancerSourceRanges[1]: \"10.0.0.0/33\" is not a valid CIDR")
    );
    let annotated = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  annotations:\n    service.beta.kubernetes.io/load-balancer-source-ranges: '10.1.0.0/16, fd00::/8'\nspec: {type: LoadBalancer, ports: [{port: 80}]}\n";
    assert_eq!(
        *service(annotated).lb_source_ranges,
        [p("10.1.0.0", 16), p("fd00::", 8)]
    );
}

#[test]
fn load_balancer_ingress() {
    let status = "status:\n  loadBalancer:\n    ingress:\n    - ip: 203.0.113.1\n    - {ip: 203.0.113.2, ipMode: Proxy}\n    - hostname: lb.example.com\n";
    let lb = format!("{}{status}", doc(&format!("  type: LoadBalancer\n{PORT}")));
    assert_eq!(
        *service(&lb).lb_ingress,
        [
            LbIngress {
                ip: ip("203.0.113.1"),
                ip_mode: IpMode::Vip
            },
            LbIngress {
                ip: ip("203.0.113.2"),
                ip_mode: IpMode::Proxy
            },
        ]
    );
    let cluster_ip = format!("{}{status}", doc(PORT));
    assert!(service(&cluster_ip).lb_ingress.is_empty());
    let bad = format!(
        "{}status:\n  loadBalancer:\n    ingress: [{{ip: 203.0.113.1, ipMode: Direct}}]\n",
        doc(&format!("  type: LoadBalancer\n{PORT}"))
    );
    assert_eq!(
        error(&bad),
        "status.loadBalancer.ingress[0].ipMode: \"Direct\" is not one of VIP, Proxy"
    );
}

#[test]
fn misc_fields() {
    let s = service(&doc(&format!(
        "  publishNotReadyAddresses: true\n  trafficDistribution: PreferClose\n{PORT}"
    )));
    assert!(s.publish_not_ready_addresses);
    assert_eq!(s.traffic_distribution.as_deref(), Some("PreferClose"));
    assert_eq!(
        error(&doc(&format!("  trafficDistribution: Nearest\n{PORT}"))),
        "spec.trafficDistribution: \"Nearest\" is not one of PreferClose, PreferSameZone, PreferSameNode"
    );
}
