use std::net::IpAddr;
use std::sync::Arc;

use svcplane_common::model::{
    Endpoint, EndpointPort, Family, Hints, IpMode, LbIngress, MergedEndpoint, ObjectKey, Protocol,
    Service, ServicePort, ServiceType, TargetPort, TrafficPolicy,
};

use super::{Backend, NodeInfo, PortEndpoints, local_ready_endpoints, select};

const HERE: &str = "node-a";
const THERE: &str = "node-b";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn node() -> NodeInfo {
    NodeInfo::new(HERE, Some("zone-a"))
}

/// Service port `http` (TCP 80) with the named targetPort `web`.
fn http() -> ServicePort {
    ServicePort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: TargetPort::Name("web".into()),
        node_port: None,
    }
}

fn cluster_ip() -> Service {
    let mut service = Service::new(ObjectKey::new("ns", "svc"), vec![ip("10.96.0.10")]);
    service.ports = vec![http()].into();
    service
}

fn node_port(etp: TrafficPolicy) -> (Service, ServicePort) {
    let mut port = http();
    port.node_port = Some(30080);
    let mut service = cluster_ip();
    service.service_type = ServiceType::NodePort;
    service.external_traffic_policy = etp;
    service.ports = vec![port.clone()].into();
    (service, port)
}

/// A ready endpoint on `node`.
fn ep(addr: &str, node: &str) -> Endpoint {
    let mut e = Endpoint::new(ip(addr));
    let zone = e.zone().map(str::to_owned);
    e.set_locality(Some(node), zone.as_deref());
    e
}

fn terminating(mut e: Endpoint, serving: bool) -> Endpoint {
    e.ready = false;
    e.serving = serving;
    e.terminating = true;
    e
}

fn zones(mut e: Endpoint, zones: &[&str]) -> Endpoint {
    let nodes = e.hint_nodes().to_vec();
    let zones = zones.iter().map(|&z| z.into()).collect();
    e.set_hints(Hints { zones, nodes });
    e
}

fn nodes(mut e: Endpoint, nodes: &[&str]) -> Endpoint {
    let zones = e.hint_zones().to_vec();
    let nodes = nodes.iter().map(|&n| n.into()).collect();
    e.set_hints(Hints { zones, nodes });
    e
}

fn port(name: &str, protocol: Protocol, number: u16) -> EndpointPort {
    EndpointPort {
        name: name.into(),
        protocol,
        port: number,
    }
}

/// The endpoint in a slice whose only port is `http`/TCP at `number`.
fn at(e: Endpoint, number: u16) -> MergedEndpoint {
    with_ports(e, vec![port("http", Protocol::Tcp, number)])
}

fn with_ports(e: Endpoint, ports: Vec<EndpointPort>) -> MergedEndpoint {
    MergedEndpoint::standalone(e, Arc::from(ports))
}

fn run(service: &Service, endpoints: &[MergedEndpoint]) -> PortEndpoints {
    select(service, &service.ports[0], endpoints, Family::V4, &node())
}

fn addrs(backends: &[Backend]) -> Vec<String> {
    backends
        .iter()
        .map(|b| format!("{}:{}", b.ip, b.port))
        .collect()
}

// --- readiness ---

#[test]
fn ready_endpoints_are_preferred_to_terminating_ones() {
    let eps = [
        at(ep("10.0.0.1", THERE), 8080),
        at(terminating(ep("10.0.0.2", THERE), true), 8080),
    ];
    let out = run(&cluster_ip(), &eps);
    assert_eq!(addrs(&out.cluster), ["10.0.0.1:8080"]);
    assert!(out.has_any);
}

#[test]
fn cluster_falls_back_to_serving_terminating_endpoints() {
    let eps = [
        at(terminating(ep("10.0.0.1", THERE), true), 8080),
        at(terminating(ep("10.0.0.2", THERE), false), 8080),
        at(terminating(ep("10.0.0.3", HERE), true), 8080),
    ];
    let out = run(&cluster_ip(), &eps);
    assert_eq!(addrs(&out.cluster), ["10.0.0.1:8080", "10.0.0.3:8080"]);
    assert!(out.cluster.iter().all(|b| !b.ready && b.terminating));
    assert!(out.has_any);
}

#[test]
fn not_serving_endpoints_are_never_used() {
    let mut not_ready = ep("10.0.0.2", HERE);
    not_ready.ready = false;
    not_ready.serving = false;
    let eps = [
        at(terminating(ep("10.0.0.1", HERE), false), 8080),
        at(not_ready, 8080),
    ];
    let (service, _) = node_port(TrafficPolicy::Local);
    let out = run(&service, &eps);
    assert!(out.cluster.is_empty());
    assert!(out.local.is_empty());
    assert!(!out.has_any);
}

#[test]
fn serving_but_neither_ready_nor_terminating_is_no_fallback() {
    let mut odd = ep("10.0.0.1", THERE);
    odd.ready = false;
    let out = run(&cluster_ip(), &[at(odd, 8080)]);
    assert!(out.cluster.is_empty());
    assert!(!out.has_any);
}

#[test]
fn local_list_falls_back_independently_of_the_cluster_list() {
    // Remote ready, local only terminating: the cluster list stays ready-only while the local
    // list falls back to the local terminating endpoint.
    let eps = [
        at(ep("10.0.0.1", THERE), 8080),
        at(terminating(ep("10.0.0.2", HERE), true), 8080),
    ];
    let (service, _) = node_port(TrafficPolicy::Local);
    let out = run(&service, &eps);
    assert_eq!(addrs(&out.cluster), ["10.0.0.1:8080"]);
    assert_eq!(addrs(&out.local), ["10.0.0.2:8080"]);
    assert_eq!(out.local_ready, 0);
}

#[test]
fn local_list_uses_ready_endpoints_when_there_are_some() {
    let eps = [
        at(ep("10.0.0.1", HERE), 8080),
        at(terminating(ep("10.0.0.2", HERE), true), 8080),
        at(ep("10.0.0.3", THERE), 8080),
    ];
    let (service, _) = node_port(TrafficPolicy::Local);
    let out = run(&service, &eps);
    assert_eq!(addrs(&out.local), ["10.0.0.1:8080"]);
    assert_eq!(addrs(&out.cluster), ["10.0.0.1:8080", "10.0.0.3:8080"]);
}

// --- port resolution and family ---

#[test]
fn named_target_port_resolves_per_endpoint() {
    // targetPort `web` is 8080 in one Pod and 9090 in another: the slices carry the numbers
    // under the Service port's name.
    let eps = [
        at(ep("10.0.0.1", THERE), 8080),
        at(ep("10.0.0.2", THERE), 9090),
    ];
    let out = run(&cluster_ip(), &eps);
    assert_eq!(addrs(&out.cluster), ["10.0.0.1:8080", "10.0.0.2:9090"]);
}

#[test]
fn endpoints_without_the_port_name_and_protocol_are_no_backends() {
    let eps = [
        with_ports(
            ep("10.0.0.1", THERE),
            vec![port("metrics", Protocol::Tcp, 9100)],
        ),
        with_ports(
            ep("10.0.0.2", THERE),
            vec![port("http", Protocol::Udp, 8080)],
        ),
        with_ports(ep("10.0.0.3", THERE), vec![]),
        with_ports(
            ep("10.0.0.4", THERE),
            vec![
                port("metrics", Protocol::Tcp, 9100),
                port("http", Protocol::Tcp, 8080),
            ],
        ),
    ];
    let out = run(&cluster_ip(), &eps);
    assert_eq!(addrs(&out.cluster), ["10.0.0.4:8080"]);
}

#[test]
fn unnamed_service_port_matches_the_unnamed_slice_port() {
    let mut service = cluster_ip();
    let mut ports = service.ports.to_vec();
    ports[0].name = "".into();
    service.ports = ports.into();
    let eps = [with_ports(
        ep("10.0.0.1", THERE),
        vec![port("", Protocol::Tcp, 8080)],
    )];
    assert_eq!(addrs(&run(&service, &eps).cluster), ["10.0.0.1:8080"]);
}

#[test]
fn duplicate_address_and_port_is_one_backend_and_the_usable_copy_wins() {
    // The same address in two slices with different port sets.
    let both = vec![
        port("http", Protocol::Tcp, 8080),
        port("metrics", Protocol::Tcp, 9100),
    ];
    let eps = [
        at(terminating(ep("10.0.0.1", THERE), false), 8080),
        with_ports(ep("10.0.0.1", THERE), both),
    ];
    let out = run(&cluster_ip(), &eps);
    assert_eq!(addrs(&out.cluster), ["10.0.0.1:8080"]);
    assert!(out.cluster[0].ready);
}

#[test]
fn same_address_with_two_target_ports_is_two_backends() {
    let eps = [
        at(ep("10.0.0.1", HERE), 8080),
        at(ep("10.0.0.1", HERE), 8081),
    ];
    let out = run(&cluster_ip(), &eps);
    assert_eq!(addrs(&out.cluster), ["10.0.0.1:8080", "10.0.0.1:8081"]);
    assert_eq!(out.local_ready, 1, "one address, counted once");
}

#[test]
fn only_endpoints_of_the_requested_family() {
    let eps = [
        at(ep("10.0.0.1", THERE), 8080),
        at(ep("fd00::1", THERE), 8080),
    ];
    let service = cluster_ip();
    let v6 = select(&service, &service.ports[0], &eps, Family::V6, &node());
    assert_eq!(addrs(&v6.cluster), ["fd00::1:8080"]);
    assert_eq!(addrs(&run(&service, &eps).cluster), ["10.0.0.1:8080"]);
}

#[test]
fn output_is_sorted_by_address_then_port() {
    let eps = [
        at(ep("10.0.0.10", THERE), 8080),
        at(ep("10.0.0.9", THERE), 8081),
        at(ep("10.0.0.9", THERE), 8080),
    ];
    let out = run(&cluster_ip(), &eps);
    assert_eq!(
        addrs(&out.cluster),
        ["10.0.0.9:8080", "10.0.0.9:8081", "10.0.0.10:8080"]
    );
}

// --- traffic policies ---

#[test]
fn external_policy_local_sends_external_traffic_to_local_endpoints() {
    let eps = [
        at(ep("10.0.0.1", HERE), 8080),
        at(ep("10.0.0.2", THERE), 8080),
    ];
    let (service, _) = node_port(TrafficPolicy::Local);
    let out = run(&service, &eps);
    assert!(out.external_policy_local && !out.internal_policy_local);
    assert!(out.externally_accessible);
    assert_eq!(addrs(out.external()), ["10.0.0.1:8080"]);
    assert_eq!(addrs(out.internal()), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    assert!(out.local.iter().all(|b| b.local));
}

#[test]
fn external_policy_cluster_uses_the_cluster_list_and_no_local_list() {
    let eps = [
        at(ep("10.0.0.1", HERE), 8080),
        at(ep("10.0.0.2", THERE), 8080),
    ];
    let (service, _) = node_port(TrafficPolicy::Cluster);
    let out = run(&service, &eps);
    assert!(!out.external_policy_local);
    assert!(out.local.is_empty());
    assert_eq!(addrs(out.external()), ["10.0.0.1:8080", "10.0.0.2:8080"]);
}

#[test]
fn external_policy_local_needs_external_frontends() {
    // eTP on a plain ClusterIP Service means nothing.
    let mut service = cluster_ip();
    service.external_traffic_policy = TrafficPolicy::Local;
    let eps = [
        at(ep("10.0.0.1", HERE), 8080),
        at(ep("10.0.0.2", THERE), 8080),
    ];
    let out = run(&service, &eps);
    assert!(!out.external_policy_local && !out.externally_accessible);
    assert!(out.local.is_empty());

    // With an externalIP it does.
    service.external_ips = vec![ip("192.0.2.1")].into();
    let out = run(&service, &eps);
    assert!(out.external_policy_local && out.externally_accessible);
    assert_eq!(addrs(out.external()), ["10.0.0.1:8080"]);
}

#[test]
fn external_frontends_are_per_family() {
    // A LoadBalancer without node ports whose only VIP is IPv4: no IPv6 external frontend.
    let mut service = cluster_ip();
    service.service_type = ServiceType::LoadBalancer;
    service.external_traffic_policy = TrafficPolicy::Local;
    service.lb_ingress = vec![
        LbIngress {
            ip: ip("192.0.2.1"),
            ip_mode: IpMode::Vip,
        },
        LbIngress {
            ip: ip("2001:db8::1"),
            ip_mode: IpMode::Proxy,
        },
    ]
    .into();
    let eps = [at(ep("fd00::1", HERE), 8080)];
    let v6 = select(&service, &service.ports[0], &eps, Family::V6, &node());
    assert!(v6.external_policy_local && !v6.externally_accessible);
    assert!(v6.local.is_empty(), "no Local traffic in this family");
    let eps = [at(ep("10.0.0.1", HERE), 8080)];
    let v4 = run(&service, &eps);
    assert!(v4.externally_accessible);
    assert_eq!(addrs(&v4.local), ["10.0.0.1:8080"]);
}

#[test]
fn internal_policy_local_sends_cluster_ip_traffic_to_local_endpoints() {
    let mut service = cluster_ip();
    service.internal_traffic_policy = TrafficPolicy::Local;
    let eps = [
        at(ep("10.0.0.1", HERE), 8080),
        at(ep("10.0.0.2", THERE), 8080),
    ];
    let out = run(&service, &eps);
    assert!(out.internal_policy_local);
    assert_eq!(addrs(out.internal()), ["10.0.0.1:8080"]);
    assert!(out.cluster.is_empty(), "no traffic has cluster scope");
}

#[test]
fn internal_policy_local_keeps_the_cluster_list_for_external_traffic() {
    let (mut service, _) = node_port(TrafficPolicy::Cluster);
    service.internal_traffic_policy = TrafficPolicy::Local;
    let eps = [
        at(ep("10.0.0.1", HERE), 8080),
        at(ep("10.0.0.2", THERE), 8080),
    ];
    let out = run(&service, &eps);
    assert_eq!(addrs(out.internal()), ["10.0.0.1:8080"]);
    assert_eq!(addrs(out.external()), ["10.0.0.1:8080", "10.0.0.2:8080"]);
}

// --- topology ---

fn zoned(addr: &str, node: &str, zone: &str) -> MergedEndpoint {
    at(zones(ep(addr, node), &[zone]), 8080)
}

#[test]
fn zone_hints_narrow_the_cluster_list() {
    let eps = [
        zoned("10.0.0.1", THERE, "zone-a"),
        zoned("10.0.0.2", THERE, "zone-b"),
        zoned("10.0.0.3", HERE, "zone-b"),
    ];
    let (service, _) = node_port(TrafficPolicy::Local);
    let out = run(&service, &eps);
    assert_eq!(addrs(&out.cluster), ["10.0.0.1:8080"]);
    // The local list ignores topology.
    assert_eq!(addrs(&out.local), ["10.0.0.3:8080"]);
}

#[test]
fn zone_hints_are_ignored_unless_every_ready_endpoint_has_them() {
    let eps = [
        zoned("10.0.0.1", THERE, "zone-a"),
        at(ep("10.0.0.2", THERE), 8080),
    ];
    let out = run(&cluster_ip(), &eps);
    assert_eq!(addrs(&out.cluster), ["10.0.0.1:8080", "10.0.0.2:8080"]);
}

#[test]
fn endpoints_that_are_not_ready_do_not_block_hints() {
    let eps = [
        zoned("10.0.0.1", THERE, "zone-a"),
        zoned("10.0.0.2", THERE, "zone-b"),
        at(terminating(ep("10.0.0.3", THERE), true), 8080),
    ];
    let out = run(&cluster_ip(), &eps);
    assert_eq!(addrs(&out.cluster), ["10.0.0.1:8080"]);
}

#[test]
fn zone_hints_are_ignored_on_a_node_without_zone() {
    let eps = [
        zoned("10.0.0.1", THERE, "zone-a"),
        zoned("10.0.0.2", THERE, "zone-b"),
    ];
    let service = cluster_ip();
    let zoneless = NodeInfo::new(HERE, None);
    let out = select(&service, &service.ports[0], &eps, Family::V4, &zoneless);
    assert_eq!(addrs(&out.cluster), ["10.0.0.1:8080", "10.0.0.2:8080"]);
}

#[test]
fn zone_hints_are_ignored_when_none_is_for_this_zone() {
    let eps = [
        zoned("10.0.0.1", THERE, "zone-b"),
        zoned("10.0.0.2", THERE, "zone-c"),
    ];
    let out = run(&cluster_ip(), &eps);
    assert_eq!(addrs(&out.cluster), ["10.0.0.1:8080", "10.0.0.2:8080"]);
}

#[test]
fn terminating_fallback_ignores_hints() {
    let eps = [
        at(
            terminating(zones(ep("10.0.0.1", THERE), &["zone-a"]), true),
            8080,
        ),
        at(
            terminating(zones(ep("10.0.0.2", THERE), &["zone-b"]), true),
            8080,
        ),
    ];
    let out = run(&cluster_ip(), &eps);
    assert_eq!(addrs(&out.cluster), ["10.0.0.1:8080", "10.0.0.2:8080"]);
}

#[test]
fn node_hints_prefer_this_node() {
    let eps = [
        at(
            nodes(zones(ep("10.0.0.1", HERE), &["zone-a"]), &[HERE]),
            8080,
        ),
        at(
            nodes(zones(ep("10.0.0.2", THERE), &["zone-a"]), &[THERE]),
            8080,
        ),
        at(
            nodes(zones(ep("10.0.0.3", "node-c"), &["zone-b"]), &["node-c"]),
            8080,
        ),
    ];
    let out = run(&cluster_ip(), &eps);
    assert_eq!(addrs(&out.cluster), ["10.0.0.1:8080"]);
}

#[test]
fn node_hints_fall_back_to_zone_hints_then_to_all() {
    // Every endpoint has node hints but none is for this node: same zone.
    let eps = [
        at(
            nodes(zones(ep("10.0.0.2", THERE), &["zone-a"]), &[THERE]),
            8080,
        ),
        at(
            nodes(zones(ep("10.0.0.3", "node-c"), &["zone-b"]), &["node-c"]),
            8080,
        ),
    ];
    let out = run(&cluster_ip(), &eps);
    assert_eq!(addrs(&out.cluster), ["10.0.0.2:8080"]);

    // One endpoint lacks node hints, though one is hinted for this node: same zone.
    let eps = [
        at(
            nodes(zones(ep("10.0.0.1", HERE), &["zone-b"]), &[HERE]),
            8080,
        ),
        at(zones(ep("10.0.0.2", THERE), &["zone-a"]), 8080),
    ];
    let out = run(&cluster_ip(), &eps);
    assert_eq!(addrs(&out.cluster), ["10.0.0.2:8080"]);

    // Node hints only, none for this node, no zone hints: everything.
    let eps = [
        at(nodes(ep("10.0.0.2", THERE), &[THERE]), 8080),
        at(nodes(ep("10.0.0.3", "node-c"), &["node-c"]), 8080),
    ];
    let out = run(&cluster_ip(), &eps);
    assert_eq!(addrs(&out.cluster), ["10.0.0.2:8080", "10.0.0.3:8080"]);
}

// --- has_any (REJECT vs DROP) ---

#[test]
fn no_endpoints_means_reject() {
    let out = run(&cluster_ip(), &[]);
    assert!(!out.has_any && !out.has_internal());
    assert_eq!(out, PortEndpoints::default());
}

#[test]
fn endpoints_for_other_ports_only_means_reject() {
    let eps = [with_ports(
        ep("10.0.0.1", HERE),
        vec![port("metrics", Protocol::Tcp, 9100)],
    )];
    assert!(!run(&cluster_ip(), &eps).has_any);
}

#[test]
fn remote_endpoints_under_internal_policy_local_mean_drop_not_reject() {
    let mut service = cluster_ip();
    service.internal_traffic_policy = TrafficPolicy::Local;
    let out = run(&service, &[at(ep("10.0.0.1", THERE), 8080)]);
    assert!(out.has_any, "usable somewhere: not REJECT");
    assert!(!out.has_internal(), "none here: DROP");
}

#[test]
fn remote_endpoints_under_external_policy_local_mean_drop_not_reject() {
    let (service, _) = node_port(TrafficPolicy::Local);
    let out = run(
        &service,
        &[at(terminating(ep("10.0.0.1", THERE), true), 8080)],
    );
    assert!(out.has_any && out.has_internal());
    assert!(!out.has_external());
}

// --- health check counts ---

#[test]
fn local_ready_counts_this_nodes_ready_endpoints() {
    let eps = [
        at(ep("10.0.0.1", HERE), 8080),
        at(ep("10.0.0.2", HERE), 8080),
        at(terminating(ep("10.0.0.3", HERE), true), 8080),
        at(ep("10.0.0.4", THERE), 8080),
    ];
    let (service, _) = node_port(TrafficPolicy::Local);
    assert_eq!(run(&service, &eps).local_ready, 2);
    let nameless = NodeInfo::new("", Some("zone-a"));
    let out = select(&service, &service.ports[0], &eps, Family::V4, &nameless);
    assert_eq!(out.local_ready, 0);
    assert!(out.local.is_empty());
}

#[test]
fn local_ready_endpoints_counts_addresses_per_service() {
    let eps = [
        at(ep("10.0.0.1", HERE), 8080),
        with_ports(
            ep("10.0.0.1", HERE),
            vec![port("metrics", Protocol::Tcp, 9100)],
        ),
        with_ports(
            ep("10.0.0.2", HERE),
            vec![port("metrics", Protocol::Tcp, 9100)],
        ),
        with_ports(ep("10.0.0.3", HERE), vec![]),
        at(terminating(ep("10.0.0.4", HERE), true), 8080),
        at(ep("10.0.0.5", THERE), 8080),
        at(ep("fd00::1", HERE), 8080),
    ];
    assert_eq!(local_ready_endpoints(&eps, Family::V4, &node()), 2);
    assert_eq!(local_ready_endpoints(&eps, Family::V6, &node()), 1);
}
