//! Tests of the network-namespace harness itself, with real packets: pod to
//! pod on one node and across nodes (TCP and UDP, IPv4 and IPv6), the echo
//! server's view of its clients (plain, UDP and HTTP), the external client
//! reaching a node, cleanup on drop, on panic and of stale namespaces, and
//! that the host namespace never changes.
//!
//! Every test needs root and skips (with a message) without it. All traffic
//! stays between namespaces the test made.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use svcplane_tests::netns::{
    Cluster, ClusterConfig, EXTERNAL_IPV4, EXTERNAL_IPV6, EchoServer, Error, Identity, Netns, Pod,
    SERVICE_CIDR_V4, cleanup_stale, connect_latency, http_get, list_ours, skip_unless_root,
    tcp_exchange, tcp_request, udp_exchange, wait_for,
};

const ECHO: &str = env!("CARGO_BIN_EXE_svcplane-echo");
const TCP: u16 = 8080;
const UDP: u16 = 5353;
const T: Duration = Duration::from_secs(5);

fn echo(ns: &Netns, name: &str) -> EchoServer {
    EchoServer::spawn(ns, Path::new(ECHO), name, &[TCP], &[UDP]).unwrap()
}

fn both_families(ipv4: impl Into<IpAddr>, ipv6: impl Into<IpAddr>) -> [IpAddr; 2] {
    [ipv4.into(), ipv6.into()]
}

/// TCP and UDP from `from` to `ip` reach `server`, which saw the client's
/// own address and port (no NAT anywhere).
fn assert_reaches(from: &Netns, ip: IpAddr, server: &str) {
    let tcp = tcp_exchange(from, SocketAddr::new(ip, TCP), T).unwrap();
    let udp = udp_exchange(from, SocketAddr::new(ip, UDP), T).unwrap();
    for (proto, exchange) in [("tcp", tcp), ("udp", udp)] {
        let id: Identity = exchange.reply.parse().unwrap();
        assert_eq!(id.name, server, "{proto} to {ip}");
        assert_eq!(id.client, exchange.local, "{proto} to {ip}");
    }
}

/// The host namespace's links, addresses and routes, without the parts
/// that change by themselves (address lifetimes, route expiry).
fn host_network() -> String {
    let show = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let routes = show(&["route"]) + &show(&["-6", "route"]);
    let routes = routes.lines().map(|line| {
        let mut words = line.split_whitespace();
        let mut kept = Vec::new();
        while let Some(w) = words.next() {
            match w {
                "expires" => drop(words.next()),
                _ => kept.push(w),
            }
        }
        kept.join(" ") + "\n"
    });
    show(&["-br", "link"]) + &show(&["-br", "addr"]) + &routes.collect::<String>()
}

/// The two-node, four-pod cluster most tests use; prints how long it took.
fn cluster_with_pods() -> (Cluster, Vec<Pod>) {
    let start = Instant::now();
    let mut cluster = Cluster::new(2).unwrap();
    let built = start.elapsed();
    let pods = ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(i, name)| cluster.add_pod(i / 2, name).unwrap())
        .collect();
    println!(
        "cluster {}: 2 nodes + switch + external in {built:?}, with 4 pods in {:?}",
        cluster.tag(),
        start.elapsed()
    );
    (cluster, pods)
}

#[test]
fn pods_reach_pods_on_the_same_node_and_across_nodes() {
    if skip_unless_root("pods_reach_pods") {
        return;
    }
    let (cluster, pods) = cluster_with_pods();
    let [a, b, c, _] = &pods[..] else { panic!() };
    assert_eq!((a.node, b.node, c.node), (0, 0, 1));
    let _servers = [echo(&b.ns, "b"), echo(&c.ns, "c")];
    for target in [b, c] {
        for ip in both_families(target.ipv4, target.ipv6) {
            assert_reaches(&a.ns, ip, &target.name);
        }
    }
    // And back the other way across nodes, from a pod on node 1.
    let _server_a = echo(&a.ns, "a");
    for ip in both_families(a.ipv4, a.ipv6) {
        assert_reaches(&pods[3].ns, ip, "a");
    }
    drop(cluster);
}

#[test]
fn addresses_follow_the_documented_plan() {
    if skip_unless_root("addresses_follow_the_documented_plan") {
        return;
    }
    let (cluster, pods) = cluster_with_pods();
    let n1 = cluster.node(1).unwrap();
    assert_eq!(n1.ipv4.to_string(), "192.168.50.11");
    assert_eq!(n1.ipv6.to_string(), "fd00:50::11");
    assert_eq!(n1.pod_cidr_v4.to_string(), "10.244.1.0/24");
    assert_eq!(n1.pod_cidr_v6.to_string(), "fd00:244:1::/64");
    assert_eq!(n1.gateway_v4().to_string(), "10.244.1.1");
    let names: Vec<_> = pods
        .iter()
        .map(|p| (p.ipv4.to_string(), p.ipv6.to_string()))
        .collect();
    assert_eq!(names[0], ("10.244.0.2".into(), "fd00:244::2".into()));
    assert_eq!(names[3], ("10.244.1.3".into(), "fd00:244:1::3".into()));
    for pod in &pods {
        assert!(pod.iface.len() <= 15 && pod.iface.starts_with("svp-"));
        assert!(pod.node_iface.len() <= 15 && pod.node_iface.starts_with("svp-"));
        assert_eq!(pod.ns.sysctl("net.ipv4.ip_forward").unwrap(), "0");
    }
    assert_eq!(n1.ns.sysctl("net.ipv4.ip_forward").unwrap(), "1");
    assert_eq!(n1.ns.sysctl("net.ipv6.conf.all.forwarding").unwrap(), "1");
    assert_eq!(
        cluster.external().sysctl("net.ipv4.ip_forward").unwrap(),
        "0"
    );
    assert_eq!(cluster.switch().sysctl("net.ipv4.ip_forward").unwrap(), "0");
}

#[test]
fn the_echo_server_reports_the_client_it_saw() {
    if skip_unless_root("the_echo_server_reports_the_client_it_saw") {
        return;
    }
    let (_cluster, pods) = cluster_with_pods();
    let (client, server) = (&pods[0], &pods[2]);
    let _echo = echo(&server.ns, "web-0");
    // A plain TCP line, IPv4 client shown as IPv4 (not ::ffff:...).
    let line = tcp_request(&client.ns, SocketAddr::new(server.ipv4.into(), TCP), T).unwrap();
    let id: Identity = line.parse().unwrap();
    assert_eq!(id.client.ip(), IpAddr::from(client.ipv4), "{line}");
    assert!(
        line.starts_with(&format!("web-0 {}:", client.ipv4)),
        "{line}"
    );
    // IPv6 in brackets.
    let line = tcp_request(&client.ns, SocketAddr::new(server.ipv6.into(), TCP), T).unwrap();
    assert!(
        line.starts_with(&format!("web-0 [{}]:", client.ipv6)),
        "{line}"
    );
    // HTTP GET / gets the same line as its body.
    let body = http_get(&client.ns, SocketAddr::new(server.ipv4.into(), TCP), T).unwrap();
    let id: Identity = body.parse().unwrap();
    assert_eq!(
        (id.name.as_str(), id.client.ip()),
        ("web-0", client.ipv4.into())
    );
    // A silent client still gets its line after the grace period.
    let silent = client.ns.run_in(|| {
        use std::io::Read;
        let addr = SocketAddr::new(server.ipv4.into(), TCP);
        let mut s = std::net::TcpStream::connect_timeout(&addr, T).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    });
    assert!(silent.unwrap().starts_with("web-0 10.244.0.2:"));
}

#[test]
fn the_external_client_reaches_a_node_ip() {
    if skip_unless_root("the_external_client_reaches_a_node_ip") {
        return;
    }
    let config = ClusterConfig {
        external_via: 1,
        ..ClusterConfig::default()
    };
    let cluster = Cluster::with_config(config).unwrap();
    let node = cluster.node(1).unwrap();
    let _echo = echo(&node.ns, "node-1");
    for ip in both_families(node.ipv4, node.ipv6) {
        assert_reaches(cluster.external(), ip, "node-1");
    }
    let tcp = tcp_request(
        cluster.external(),
        SocketAddr::new(node.ipv4.into(), TCP),
        T,
    );
    assert!(
        tcp.unwrap()
            .starts_with(&format!("node-1 {EXTERNAL_IPV4}:"))
    );
    let udp = udp_exchange(
        cluster.external(),
        SocketAddr::new(node.ipv6.into(), UDP),
        T,
    );
    assert!(
        udp.unwrap()
            .reply
            .starts_with(&format!("node-1 [{EXTERNAL_IPV6}]:"))
    );
    // Service CIDRs are routed via the configured node, and can be moved.
    let routes = |ns: &Netns| String::from_utf8(ns.exec(&["ip", "route"]).unwrap().stdout).unwrap();
    let via1 = format!("{SERVICE_CIDR_V4} via 192.168.50.11");
    assert!(routes(cluster.external()).contains(&via1));
    cluster.route_external(SERVICE_CIDR_V4.into(), 0).unwrap();
    let via0 = format!("{SERVICE_CIDR_V4} via 192.168.50.10");
    assert!(routes(cluster.external()).contains(&via0));
}

#[test]
fn the_host_namespace_never_changes() {
    if skip_unless_root("the_host_namespace_never_changes") {
        return;
    }
    let before = host_network();
    let (cluster, pods) = cluster_with_pods();
    assert_eq!(host_network(), before, "while the cluster exists");
    drop((pods, cluster));
    assert_eq!(host_network(), before, "after it is gone");
    assert!(
        !before.contains("svp-"),
        "an svp- link in the host:\n{before}"
    );
}

#[test]
fn dropping_a_cluster_removes_all_its_namespaces() {
    if skip_unless_root("dropping_a_cluster_removes_all_its_namespaces") {
        return;
    }
    let (cluster, pods) = cluster_with_pods();
    let mut names = cluster.namespace_names();
    names.extend(pods.iter().map(|p| p.ns.name().to_owned()));
    assert_eq!(names.len(), 2 + 2 + 4);
    let ours = list_ours().unwrap();
    assert!(
        names.iter().all(|n| ours.contains(n)),
        "{names:?} vs {ours:?}"
    );
    let tag = format!("svp-{}-", cluster.tag());
    let start = Instant::now();
    drop(pods);
    drop(cluster);
    println!("8 namespaces deleted in {:?}", start.elapsed());
    let left: Vec<_> = list_ours()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&tag))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_panicking_test_still_cleans_up_namespaces_and_processes() {
    if skip_unless_root("a_panicking_test_still_cleans_up") {
        return;
    }
    let names = Mutex::new(Vec::new());
    let orphan: Mutex<Option<Child>> = Mutex::new(None);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let (cluster, pods) = cluster_with_pods();
        let _echo = echo(&pods[0].ns, "doomed");
        // A process nobody will kill but the namespace's drop.
        *orphan.lock().unwrap() = Some(pods[1].ns.spawn(&["sleep", "600"]).unwrap());
        let mut all = cluster.namespace_names();
        all.extend(pods.iter().map(|p| p.ns.name().to_owned()));
        *names.lock().unwrap() = all;
        panic!("the test failed half-way");
    }));
    assert!(result.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 8);
    let ours = list_ours().unwrap();
    let left: Vec<_> = names.iter().filter(|n| ours.contains(n)).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let mut orphan = orphan.into_inner().unwrap().unwrap();
    let status = orphan.wait().unwrap();
    assert!(
        !status.success(),
        "sleep was killed, not finished: {status}"
    );
}

/// A pid that no process has.
fn dead_pid() -> u32 {
    (1000..30000)
        .rev()
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap()
}

fn ip_netns(args: &[&str]) {
    let status = Command::new("ip").arg("netns").args(args).status().unwrap();
    assert!(status.success(), "ip netns {args:?}");
}

#[test]
fn stale_namespaces_of_dead_runs_are_swept_and_live_ones_kept() {
    if skip_unless_root("stale_namespaces_of_dead_runs_are_swept") {
        return;
    }
    let live = Netns::new("live").unwrap();
    let stale = format!("svp-zzzzz-{}-stale", dead_pid());
    ip_netns(&["add", &stale]);
    let young = cleanup_stale(Duration::from_secs(3600)).unwrap();
    assert!(
        !young.contains(&stale),
        "swept a namespace younger than an hour"
    );
    assert!(list_ours().unwrap().contains(&stale));
    let swept = cleanup_stale(Duration::ZERO).unwrap();
    assert!(swept.contains(&stale), "{swept:?}");
    let ours = list_ours().unwrap();
    assert!(!ours.contains(&stale));
    assert!(
        ours.contains(&live.name().to_owned()),
        "swept a live run's namespace"
    );
}

#[test]
fn commands_report_failures_with_their_stderr() {
    if skip_unless_root("commands_report_failures_with_their_stderr") {
        return;
    }
    let ns = Netns::new("cmd").unwrap();
    let links = ns.exec(&["ip", "-o", "link"]).unwrap();
    let links = String::from_utf8(links.stdout).unwrap();
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    let err = ns
        .exec(&["ip", "link", "set", "nosuchdev", "up"])
        .unwrap_err();
    match &err {
        Error::Command { cmd, stderr, .. } => {
            assert!(cmd.contains("nosuchdev"), "{err}");
            assert!(stderr.contains("nosuchdev"), "{err}");
        }
        other => panic!("wrong error: {other}"),
    }
    let err = ns.ip(&["link add x type nosuchtype"]).unwrap_err();
    assert!(err.to_string().contains("nosuchtype"), "{err}");
    assert!(matches!(
        ns.exec(&["/no/such/binary"]),
        Err(Error::Spawn { .. })
    ));
    let name = ns.name().to_owned();
    ns.delete().unwrap();
    assert!(!list_ours().unwrap().contains(&name));
}

#[test]
fn run_in_runs_inside_and_resumes_panics() {
    if skip_unless_root("run_in_runs_inside_and_resumes_panics") {
        return;
    }
    let ns = Netns::new("runin").unwrap();
    let inside = ns.run_in(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap());
    let host = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    assert_ne!(inside.unwrap(), host);
    let panicked = catch_unwind(AssertUnwindSafe(|| ns.run_in(|| panic!("inside"))));
    assert!(panicked.is_err());
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        host
    );
}

#[test]
fn connect_latency_measures_each_connect() {
    if skip_unless_root("connect_latency_measures_each_connect") {
        return;
    }
    let (_cluster, pods) = cluster_with_pods();
    let _echo = echo(&pods[2].ns, "lat");
    let addr = SocketAddr::new(pods[2].ipv4.into(), TCP);
    let mut took = connect_latency(&pods[0].ns, addr, 50).unwrap();
    assert_eq!(took.len(), 50);
    took.sort();
    println!(
        "pod→pod across nodes: median connect {:?}, max {:?}",
        took[25], took[49]
    );
    assert!(took[49] < Duration::from_secs(1));
    let refused = connect_latency(&pods[0].ns, SocketAddr::new(pods[2].ipv4.into(), 1), 1);
    assert!(refused.is_err());
}

#[test]
fn echo_servers_start_and_stop_with_their_guard() {
    if skip_unless_root("echo_servers_start_and_stop_with_their_guard") {
        return;
    }
    let ns = Netns::new("echo").unwrap();
    let server = echo(&ns, "e");
    let pid = server.pid();
    assert!(ns.pids().unwrap().contains(&pid));
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    assert!(
        tcp_request(&ns, addr, T)
            .unwrap()
            .starts_with("e 127.0.0.1:")
    );
    drop(server);
    wait_for("the echo server to go", T, || {
        !ns.pids().unwrap().contains(&pid)
    })
    .unwrap();
    // A second server on a taken port fails with the binary's own message.
    let _first = echo(&ns, "first");
    let err = EchoServer::spawn(&ns, Path::new(ECHO), "second", &[TCP], &[]).unwrap_err();
    assert!(err.to_string().contains("binding tcp port 8080"), "{err}");
}
