//! Shared helpers of the packet-level svcplane-proxy suites: real packets through real rules in
//! network namespaces.
//!
//! A [`Lab`] is a netns [`Cluster`] whose node namespaces each run the proxy under test
//! (`proxy-under-test`, the svcplane-proxy CLI) reading Kubernetes YAML from a directory the test
//! writes with [`Lab::apply`]. [`Service`] and [`Slice`] build those objects. The probes
//! ([`tcp`], [`udp`], [`probe`]) send one request from inside a namespace and say what happened
//! to it — which backend answered and which client address it saw, refused (RST or ICMP port
//! unreachable), or dropped (nothing came back) — so tests assert kube-proxy's verdicts rather
//! than socket errors. Everything that depends on the packet-filter backend (its flag, and
//! looking at or damaging what it programmed) goes through [`Backend`], so that one suite can run
//! once per backend. Every wait is bounded.

#![allow(dead_code, clippy::unwrap_used)] // shared by suites that each use a part; tests unwrap

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use svcplane_tests::netns::{
    Cluster, ClusterConfig, EXTERNAL_IPV4, EXTERNAL_IPV6, EchoServer, Error, Exchange, Identity,
    Netns, Node, Pod, tcp_exchange, udp_exchange, wait_for_ok,
};
use tempfile::TempDir;

pub const ECHO: &str = env!("CARGO_BIN_EXE_svcplane-echo");
pub const PROXY: &str = env!("CARGO_BIN_EXE_proxy-under-test");
/// The Kubernetes namespace of every object the suites write.
pub const NAMESPACE: &str = "default";
/// The pod CIDRs of the harness's nodes (10.244.i.0/24, fd00:244:i::/64).
pub const CLUSTER_CIDRS: [&str; 2] = ["10.244.0.0/16", "fd00:244::/48"];
/// The service CIDRs the proxy is told about (the harness routes them from the external client).
pub const SERVICE_CIDRS: [&str; 2] = ["10.96.0.0/12", "fd00:96::/108"];
/// The proxy's `/healthz` port on the node address.
pub const HEALTH_PORT: u16 = 10256;
/// How long one request to a backend that should answer may take.
pub const EXCHANGE: Duration = Duration::from_secs(3);
/// How long a request must go unanswered to count as dropped.
pub const DROP_WAIT: Duration = Duration::from_millis(1500);
/// How long a manifest edit may take to reach the packet path (the source polls every 250 ms and
/// applies a change once two polls agree; then one sync).
pub const CONVERGE: Duration = Duration::from_secs(10);
/// How long a proxy may take to start and program its first sync.
pub const STARTUP: Duration = Duration::from_secs(20);

/// The packet-filter backend under test: its flag, and how to look at (or damage) what it
/// programmed in a node's kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Nftables,
    Iptables,
}

impl Backend {
    /// The value of `--backend`.
    pub fn flag(self) -> &'static str {
        match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
        }
    }

    /// Whether anything the proxy programs is in `ns`'s kernel.
    pub fn has_rules(self, ns: &Netns) -> bool {
        match self {
            Backend::Nftables => nft(ns, &["list", "tables"])
                .lines()
                .any(|l| l.split_whitespace().last() == Some("svcplane")),
            Backend::Iptables => ["iptables-save", "ip6tables-save"]
                .iter()
                .any(|save| run(ns, &[save]).contains("SVCPLANE-")),
        }
    }

    /// Removes every rule the proxy programmed in `ns` for IPv4 (what an admin's careless flush
    /// does), leaving its tables in place.
    pub fn flush_ipv4(self, ns: &Netns) {
        match self {
            Backend::Nftables => drop(nft(ns, &["flush", "table", "ip", "svcplane"])),
            Backend::Iptables => {
                for table in ["nat", "filter"] {
                    run(ns, &["iptables", "-w", "5", "-t", table, "-F"]);
                }
            }
        }
    }

    /// The client addresses ClientIP affinity currently remembers in `ns`, any Service.
    pub fn affinity_clients(self, ns: &Netns) -> Vec<IpAddr> {
        match self {
            Backend::Nftables => ["ip", "ip6"]
                .iter()
                .flat_map(|f| nft_affinity_elements(&nft(ns, &["list", "table", f, "svcplane"])))
                .collect(),
            Backend::Iptables => xt_recent_clients(ns),
        }
    }
}

/// `ARGV` inside `ns`; its stdout.
fn run(ns: &Netns, argv: &[&str]) -> String {
    let out = ns.exec(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    String::from_utf8(out.stdout).unwrap()
}

/// The clients the `-m recent` lists of `ns` remember now: entries seen within the timeout
/// that the lists' `--rcheck --seconds` rules give (xt_recent keeps older entries until a rule
/// reaps them, but no longer matches them).
fn xt_recent_clients(ns: &Netns) -> Vec<IpAddr> {
    let mut timeouts: BTreeMap<String, u64> = BTreeMap::new();
    for save in ["iptables-save", "ip6tables-save"] {
        for line in run(ns, &[save, "-t", "nat"]).lines() {
            if let (Some(name), Some(seconds)) =
                (word_after(line, "--name"), word_after(line, "--seconds"))
            {
                timeouts.insert(name.to_string(), seconds.parse().unwrap());
            }
        }
    }
    let script = "for f in /proc/net/xt_recent/*; do [ -e \"$f\" ] && echo \"list ${f##*/}\" && cat \"$f\"; done; true";
    let lists = run(ns, &["sh", "-c", script]);
    let (now, hz) = (jiffies(), jiffies_per_second());
    let mut out = Vec::new();
    let mut timeout = 0;
    for line in lists.lines() {
        if let Some(name) = line.strip_prefix("list ") {
            timeout = timeouts.get(name).copied().unwrap_or(0);
            continue;
        }
        let src = word_after(line, "").and_then(|w| w.strip_prefix("src="));
        let seen = word_after(line, "last_seen:").and_then(|w| w.parse::<u64>().ok());
        if let (Some(src), Some(seen)) = (src, seen)
            && now.saturating_sub(seen) <= timeout * hz
        {
            out.push(src.parse().unwrap());
        }
    }
    out
}

/// The word after `key` in `line` (the first word for an empty key).
fn word_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let mut words = line.split_whitespace();
    if key.is_empty() {
        return words.next();
    }
    words.by_ref().find(|w| *w == key)?;
    words.next()
}

/// The kernel's jiffies counter (global, not per namespace).
fn jiffies() -> u64 {
    let list = fs::read_to_string("/proc/timer_list").unwrap();
    list.lines()
        .find_map(|l| l.strip_prefix("jiffies: "))
        .and_then(|j| j.trim().parse().ok())
        .expect("jiffies in /proc/timer_list")
}

/// The kernel's HZ, measured once and rounded to a configurable value.
fn jiffies_per_second() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        let (j0, t0) = (jiffies(), Instant::now());
        std::thread::sleep(Duration::from_millis(300));
        let rate = (jiffies() - j0) as f64 / t0.elapsed().as_secs_f64();
        [100u64, 250, 300, 1000]
            .into_iter()
            .min_by_key(|hz| (rate - *hz as f64).abs() as u64)
            .unwrap()
    })
}

/// `nft ARGS` inside `ns`; its stdout.
fn nft(ns: &Netns, args: &[&str]) -> String {
    let mut argv = vec!["nft"];
    argv.extend(args);
    let out = ns
        .exec(&argv)
        .unwrap_or_else(|e| panic!("nft {args:?}: {e}"));
    String::from_utf8(out.stdout).unwrap()
}

/// The addresses in the elements of `set aff-…` blocks of `nft list table` output.
fn nft_affinity_elements(listing: &str) -> Vec<IpAddr> {
    let (mut in_affinity, mut in_elements) = (false, false);
    let mut out = Vec::new();
    for line in listing.lines().map(str::trim) {
        if line.starts_with("set ") || line.starts_with("map ") || line.starts_with("chain ") {
            in_affinity = line.starts_with("set aff-");
            continue;
        }
        if in_affinity && line.starts_with("elements = {") {
            in_elements = true;
        }
        if in_elements {
            let words = line.split(|c: char| c.is_whitespace() || matches!(c, ',' | '{' | '}'));
            out.extend(words.filter_map(|w| w.parse::<IpAddr>().ok()));
            in_elements = !line.ends_with('}');
        }
    }
    out
}

/// A netns cluster with the proxy under test in every node and a manifests directory.
pub struct Lab {
    pub backend: Backend,
    pub cluster: Cluster,
    dir: TempDir,
    proxies: Vec<Option<Child>>,
    /// Extra flags for every proxy started from now on.
    pub extra_flags: Vec<String>,
}

impl Lab {
    /// `nodes` nodes (external client routed via node 0) and an empty manifests directory; no
    /// proxy runs yet (write the objects, then [`Lab::start_proxies`]).
    pub fn new(backend: Backend, nodes: usize) -> Lab {
        Lab::with_config(
            backend,
            ClusterConfig {
                nodes,
                ..ClusterConfig::default()
            },
        )
    }

    /// Like [`Lab::new`] with the harness's full configuration. Two things the kubelet and a
    /// real network provide are added: every node gets a default route via the external client
    /// (an upstream router that drops what is not its own: without any route, a Service address
    /// the rules do not claim would fail routing before the filter hooks ever see it), and every
    /// pod's bridge port is in hairpin mode ([`Lab::pod`]).
    pub fn with_config(backend: Backend, config: ClusterConfig) -> Lab {
        let nodes = config.nodes;
        let cluster = Cluster::with_config(config).unwrap();
        for node in cluster.nodes() {
            node.ns
                .ip(&[
                    format!("route add default via {EXTERNAL_IPV4}"),
                    format!("route add default via {EXTERNAL_IPV6}"),
                ])
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("manifests")).unwrap();
        Lab {
            backend,
            cluster,
            dir,
            proxies: (0..nodes).map(|_| None).collect(),
            extra_flags: Vec::new(),
        }
    }

    pub fn node(&self, i: usize) -> &Node {
        self.cluster.node(i).unwrap()
    }

    /// A pod named `name` on node `node`, its bridge port in hairpin mode as the kubelet sets it
    /// (`hairpin-veth`), so that a pod can reach itself through a Service.
    pub fn pod(&mut self, node: usize, name: &str) -> Pod {
        let pod = self.cluster.add_pod(node, name).unwrap();
        let port = &pod.node_iface;
        let ns = &self.node(node).ns;
        ns.ip(&[format!("link set dev {port} type bridge_slave hairpin on")])
            .unwrap();
        pod
    }

    /// Makes the nodes' upstream (the external client) own `ip`, with the pods' IPv4 CIDR
    /// routed back via node `via`: a request the rules let through to the upstream is then
    /// refused there instead of vanishing, so a test can tell the proxy's DROP from no rule.
    pub fn upstream_owns(&self, ip: Ipv4Addr, via: usize) {
        let external = self.cluster.external();
        external.ip(&[format!("addr add {ip}/32 dev lo")]).unwrap();
        let pods = "10.244.0.0/16".parse().unwrap();
        self.cluster.route_external(pods, via).unwrap();
    }

    /// `svcplane-echo --name <pod name>` in `pod` on these ports.
    pub fn echo(&self, pod: &Pod, tcp: &[u16], udp: &[u16]) -> EchoServer {
        EchoServer::spawn(&pod.ns, Path::new(ECHO), &pod.name, tcp, udp).unwrap()
    }

    fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// Writes `docs` as one multi-document YAML file (atomically: a hidden temporary file
    /// renamed into place, so the proxy never reads half of it).
    pub fn apply(&self, file: &str, docs: &[Value]) {
        let yaml = serde_saphyr::to_string_multiple(docs).unwrap();
        let tmp = self.manifests().join(format!(".{file}.tmp"));
        fs::write(&tmp, yaml).unwrap();
        fs::rename(&tmp, self.manifests().join(file)).unwrap();
    }

    /// Deletes a file written by [`Lab::apply`]: its objects are deleted.
    pub fn delete(&self, file: &str) {
        fs::remove_file(self.manifests().join(file)).unwrap();
    }

    /// The proxy's command line on node `i`.
    pub fn proxy_flags(&self, i: usize) -> Vec<String> {
        let node = self.node(i);
        let mut flags: Vec<String> = vec![
            "--backend".into(),
            self.backend.flag().into(),
            "--manifests".into(),
            self.manifests().display().to_string(),
            "--node-name".into(),
            node_name(i),
            "--nodeport-addresses".into(),
            format!("{}/32", node.ipv4),
            "--min-sync-period".into(),
            "0s".into(),
            "--health-addr".into(),
            SocketAddr::new(node.ipv4.into(), HEALTH_PORT).to_string(),
            "--metrics-addr".into(),
            "127.0.0.1:10249".into(),
        ];
        for cidr in CLUSTER_CIDRS {
            flags.extend(["--cluster-cidr".into(), cidr.into()]);
        }
        for cidr in SERVICE_CIDRS {
            flags.extend(["--service-cidr".into(), cidr.into()]);
        }
        flags.extend(self.extra_flags.iter().cloned());
        flags
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("proxy-{}.log", node_name(i)))
    }

    /// Starts the proxy in every node and waits until each answers `/healthz` (its first sync
    /// is programmed).
    pub fn start_proxies(&mut self) {
        for i in 0..self.proxies.len() {
            self.spawn_proxy(i);
        }
        for i in 0..self.proxies.len() {
            self.await_healthy(i);
        }
    }

    /// Starts the proxy on node `i` and waits until it is healthy.
    pub fn start_proxy(&mut self, i: usize) {
        self.spawn_proxy(i);
        self.await_healthy(i);
    }

    fn spawn_proxy(&mut self, i: usize) {
        assert!(
            self.proxies[i].is_none(),
            "a proxy already runs on node {i}"
        );
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let mut cmd = Command::new(PROXY);
        cmd.args(self.proxy_flags(i))
            .env("RUST_LOG", "info,svcplane_proxy=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.proxies[i] = Some(self.node(i).ns.spawn_command(&mut cmd).unwrap());
    }

    fn await_healthy(&mut self, i: usize) {
        let started = Instant::now();
        let node = self.cluster.node(i).unwrap();
        let addr = SocketAddr::new(node.ipv4.into(), HEALTH_PORT);
        let proxy = &mut self.proxies[i];
        let result = wait_for_ok(&format!("the proxy on {}", node_name(i)), STARTUP, || {
            if let Some(status) = proxy.as_mut().and_then(|c| c.try_wait().ok()?) {
                return Ok(Err(format!("exited with {status}")));
            }
            match http(&node.ns, addr, "/healthz")? {
                (200, _) => Ok(Ok(())),
                (status, body) => Err(Error::Invalid(format!("/healthz: {status} {body}"))),
            }
        });
        match result {
            Ok(Ok(())) => println!(
                "proxy on {} healthy in {:?}",
                node_name(i),
                started.elapsed()
            ),
            Ok(Err(e)) => panic!("the proxy on {} {e}:\n{}", node_name(i), self.log(i)),
            Err(e) => panic!("{e}:\n{}", self.log(i)),
        }
    }

    /// Writes `docs` like [`Lab::apply`] and waits until every running proxy has programmed a
    /// sync since (kube-proxy's `kubeproxy_sync_proxy_rules_last_timestamp_seconds`): for edits
    /// whose effect is not a change in who answers.
    pub fn apply_and_sync(&self, file: &str, docs: &[Value]) {
        let written = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        self.apply(file, docs);
        for (i, _) in self.proxies.iter().enumerate().filter(|(_, p)| p.is_some()) {
            let metrics = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 10249);
            let ns = &self.node(i).ns;
            wait_for_ok(
                &format!("a sync on {} after the edit", node_name(i)),
                CONVERGE,
                || {
                    let (_, body) = http(ns, metrics, "/metrics")?;
                    let last = last_sync(&body).unwrap_or(0.0);
                    if last >= written.as_secs_f64() {
                        Ok(())
                    } else {
                        Err(Error::Invalid(format!("last sync at {last}")))
                    }
                },
            )
            .unwrap();
        }
    }

    /// SIGKILLs the proxy on node `i` (its rules stay in the kernel).
    pub fn kill_proxy(&mut self, i: usize) {
        if let Some(mut child) = self.proxies[i].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Runs `proxy-under-test ARGS` to completion inside node `i`.
    pub fn run_proxy_command(&self, i: usize, args: &[&str]) -> std::process::Output {
        let mut argv = vec![PROXY];
        argv.extend(args);
        self.node(i).ns.exec(&argv).unwrap()
    }

    /// What the proxy on node `i` logged so far.
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.proxies.len() {
            self.kill_proxy(i);
        }
        if std::thread::panicking() {
            for i in 0..self.proxies.len() {
                eprintln!("---- proxy log of {} ----\n{}", node_name(i), self.log(i));
            }
        }
    }
}

/// The value of `kubeproxy_sync_proxy_rules_last_timestamp_seconds` in a metrics text.
fn last_sync(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("kubeproxy_sync_proxy_rules_last_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
}

/// Node `i`'s Kubernetes name.
pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// The address of `family`'s family that node `node` masquerades to when it forwards to `pod`:
/// its bridge address for its own pods, its node address for others.
pub fn masquerade_address(node: &Node, pod: &Pod, family: IpAddr) -> IpAddr {
    match (pod.node == node.index, family.is_ipv4()) {
        (true, true) => node.gateway_v4().into(),
        (true, false) => node.gateway_v6().into(),
        (false, true) => node.ipv4.into(),
        (false, false) => node.ipv6.into(),
    }
}

// ------------------------------------------------------------------------------------------
// Objects
// ------------------------------------------------------------------------------------------

/// An L4 protocol of Service ports and probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn api(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

/// A Service port; `target` is a number or a port name.
#[derive(Clone, Debug)]
pub struct Port {
    pub name: &'static str,
    pub proto: Proto,
    pub port: u16,
    pub target: Value,
    pub node_port: Option<u16>,
}

pub fn port(name: &'static str, proto: Proto, port: u16, target: impl Into<Value>) -> Port {
    Port {
        name,
        proto,
        port,
        target: target.into(),
        node_port: None,
    }
}

impl Port {
    pub fn node_port(self, node_port: u16) -> Port {
        Port {
            node_port: Some(node_port),
            ..self
        }
    }
}

/// A Service, written as the API server would store it.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    /// `ClusterIP`, `NodePort` or `LoadBalancer`.
    pub kind: &'static str,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<Port>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub lb_ips: Vec<IpAddr>,
    pub source_ranges: Vec<String>,
    pub external_local: bool,
    pub internal_local: bool,
    /// ClientIP affinity with this timeout (seconds).
    pub affinity: Option<u32>,
    pub health_check_node_port: Option<u16>,
}

impl Service {
    /// A ClusterIP Service.
    pub fn new(name: &str, cluster_ip: &str, ports: Vec<Port>) -> Service {
        Service {
            name: name.into(),
            kind: "ClusterIP",
            cluster_ips: vec![cluster_ip.parse().unwrap()],
            ports,
            external_ips: vec![],
            lb_ips: vec![],
            source_ranges: vec![],
            external_local: false,
            internal_local: false,
            affinity: None,
            health_check_node_port: None,
        }
    }

    /// The first ClusterIP and `port`.
    pub fn vip(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.cluster_ips[0], port)
    }

    pub fn doc(&self) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                let mut v = json!({"name": p.name, "protocol": p.proto.api(), "port": p.port,
                    "targetPort": p.target});
                if let Some(n) = p.node_port {
                    v["nodePort"] = n.into();
                }
                v
            })
            .collect();
        let ips: Vec<String> = self.cluster_ips.iter().map(ToString::to_string).collect();
        let families: Vec<&str> = self
            .cluster_ips
            .iter()
            .map(|ip| if ip.is_ipv4() { "IPv4" } else { "IPv6" })
            .collect();
        let policy = if ips.len() > 1 {
            "RequireDualStack"
        } else {
            "SingleStack"
        };
        let mut spec = json!({
            "type": self.kind,
            "clusterIP": ips[0],
            "clusterIPs": ips,
            "ipFamilies": families,
            "ipFamilyPolicy": policy,
            "ports": ports,
        });
        if !self.external_ips.is_empty() {
            spec["externalIPs"] = strings(&self.external_ips);
        }
        if !self.source_ranges.is_empty() {
            spec["loadBalancerSourceRanges"] = json!(self.source_ranges);
        }
        if self.external_local {
            spec["externalTrafficPolicy"] = "Local".into();
        }
        if self.internal_local {
            spec["internalTrafficPolicy"] = "Local".into();
        }
        if let Some(timeout) = self.affinity {
            spec["sessionAffinity"] = "ClientIP".into();
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": timeout}});
        }
        if let Some(port) = self.health_check_node_port {
            spec["healthCheckNodePort"] = port.into();
        }
        let mut doc = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.name, "namespace": NAMESPACE},
            "spec": spec,
        });
        if !self.lb_ips.is_empty() {
            let ingress: Vec<Value> = self.lb_ips.iter().map(|ip| json!({"ip": ip})).collect();
            doc["status"] = json!({"loadBalancer": {"ingress": ingress}});
        }
        doc
    }
}

fn strings(ips: &[IpAddr]) -> Value {
    ips.iter().map(|ip| Value::from(ip.to_string())).collect()
}

/// One endpoint of a [`Slice`].
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub node: usize,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Endpoint {
    /// `pod`'s IPv4 address, ready.
    pub fn ready(pod: &Pod) -> Endpoint {
        Endpoint {
            ip: pod.ipv4.into(),
            node: pod.node,
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// `pod`'s IPv6 address, ready.
    pub fn ready_v6(pod: &Pod) -> Endpoint {
        Endpoint {
            ip: pod.ipv6.into(),
            ..Endpoint::ready(pod)
        }
    }

    /// `pod`'s IPv4 address, terminating (not ready), still `serving` or not.
    pub fn terminating(pod: &Pod, serving: bool) -> Endpoint {
        Endpoint {
            ready: false,
            serving,
            terminating: true,
            ..Endpoint::ready(pod)
        }
    }
}

/// An EndpointSlice of a Service: its ports (name, protocol, number) and endpoints, all of one
/// family (IPv6 when the first endpoint is).
#[derive(Clone, Debug)]
pub struct Slice {
    pub name: String,
    pub service: String,
    pub ports: Vec<(&'static str, Proto, u16)>,
    pub endpoints: Vec<Endpoint>,
}

impl Slice {
    pub fn new(
        service: &str,
        name: &str,
        ports: &[(&'static str, Proto, u16)],
        endpoints: Vec<Endpoint>,
    ) -> Slice {
        Slice {
            name: name.into(),
            service: service.into(),
            ports: ports.to_vec(),
            endpoints,
        }
    }

    pub fn doc(&self) -> Value {
        let v6 = self.endpoints.first().is_some_and(|e| e.ip.is_ipv6());
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|(name, proto, port)| json!({"name": name, "protocol": proto.api(), "port": port}))
            .collect();
        let endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .map(|e| {
                json!({
                    "addresses": [e.ip.to_string()],
                    "nodeName": node_name(e.node),
                    "conditions": {"ready": e.ready, "serving": e.serving,
                        "terminating": e.terminating},
                })
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": self.name, "namespace": NAMESPACE,
                "labels": {"kubernetes.io/service-name": self.service}},
            "addressType": if v6 { "IPv6" } else { "IPv4" },
            "ports": ports,
            "endpoints": endpoints,
        })
    }
}

// ------------------------------------------------------------------------------------------
// Traffic
// ------------------------------------------------------------------------------------------

/// What happened to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A backend answered: its name and the client address it saw.
    Answered(Identity),
    /// Refused (TCP RST, or ICMP port unreachable), after this long.
    Refused(Duration),
    /// Nothing came back within the wait.
    Dropped,
    /// Anything else (unreachable, reset mid-way, a garbled answer).
    Failed(String),
}

impl Outcome {
    /// The identity of an answer; panics with the outcome otherwise.
    pub fn identity(self, what: &str) -> Identity {
        match self {
            Outcome::Answered(id) => id,
            other => panic!("{what}: expected an answer, got {other:?}"),
        }
    }
}

/// One TCP request to `addr` from inside `ns`, waiting at most `wait`.
pub fn tcp_probe(ns: &Netns, addr: SocketAddr, wait: Duration) -> Outcome {
    let started = Instant::now();
    classify(tcp_exchange(ns, addr, wait), started)
}

/// One UDP request (a fresh source port) to `addr` from inside `ns`, waiting at most `wait`.
pub fn udp_probe(ns: &Netns, addr: SocketAddr, wait: Duration) -> Outcome {
    let started = Instant::now();
    classify(udp_exchange(ns, addr, wait), started)
}

/// One request of `proto`, waiting at most `wait`.
pub fn probe(proto: Proto, ns: &Netns, addr: SocketAddr, wait: Duration) -> Outcome {
    match proto {
        Proto::Tcp => tcp_probe(ns, addr, wait),
        Proto::Udp => udp_probe(ns, addr, wait),
    }
}

/// One TCP request that should be answered.
pub fn tcp(ns: &Netns, addr: SocketAddr) -> Outcome {
    tcp_probe(ns, addr, EXCHANGE)
}

/// One UDP request that should be answered.
pub fn udp(ns: &Netns, addr: SocketAddr) -> Outcome {
    udp_probe(ns, addr, EXCHANGE)
}

fn classify(result: Result<Exchange, Error>, started: Instant) -> Outcome {
    use std::io::ErrorKind;
    match result {
        Ok(exchange) => match exchange.reply.parse() {
            Ok(id) => Outcome::Answered(id),
            Err(e) => Outcome::Failed(e.to_string()),
        },
        Err(Error::Io { what, source }) => match source.kind() {
            ErrorKind::ConnectionRefused => Outcome::Refused(started.elapsed()),
            ErrorKind::TimedOut | ErrorKind::WouldBlock
                if what.starts_with("tcp connect") || what.starts_with("udp receive") =>
            {
                Outcome::Dropped
            }
            _ => Outcome::Failed(format!("{what}: {source}")),
        },
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// `n` requests of `proto` that must all be answered; their identities.
pub fn answers(proto: Proto, ns: &Netns, addr: SocketAddr, n: usize) -> Vec<Identity> {
    (0..n)
        .map(|i| probe(proto, ns, addr, EXCHANGE).identity(&format!("request {i} to {addr}")))
        .collect()
}

/// How many of `ids` each backend answered.
pub fn tally(ids: &[Identity]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id.name.clone()).or_default() += 1;
    }
    counts
}

/// Polls until a request of `proto` has outcome `want` (compared by [`same_kind`]); returns how
/// long it took.
pub fn await_outcome(
    proto: Proto,
    ns: &Netns,
    addr: SocketAddr,
    want: &Outcome,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    let wait = if *want == Outcome::Dropped {
        DROP_WAIT
    } else {
        EXCHANGE
    };
    wait_for_ok(&format!("{addr} to give {want:?}"), within, || {
        let got = probe(proto, ns, addr, wait);
        if same_kind(&got, want) {
            Ok(())
        } else {
            Err(Error::Invalid(format!("got {got:?}")))
        }
    })
    .unwrap();
    started.elapsed()
}

/// Same variant, and for answers the same backend.
pub fn same_kind(a: &Outcome, b: &Outcome) -> bool {
    match (a, b) {
        (Outcome::Answered(x), Outcome::Answered(y)) => x.name == y.name,
        _ => std::mem::discriminant(a) == std::mem::discriminant(b),
    }
}

/// An answer from backend `name` (the client address is not compared by [`same_kind`]).
pub fn answer_from(name: &str) -> Outcome {
    Outcome::Answered(Identity {
        name: name.into(),
        client: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
    })
}

/// `GET path` over HTTP/1.1 from inside `ns`: the status code and body.
pub fn http(ns: &Netns, addr: SocketAddr, path: &str) -> Result<(u16, String), Error> {
    ns.run_in(|| http_here(addr, path))?
}

fn http_here(addr: SocketAddr, path: &str) -> Result<(u16, String), Error> {
    let io = |what: &str| {
        let what = format!("http {what} {addr}{path}");
        move |source| Error::Io { what, source }
    };
    let mut stream = TcpStream::connect_timeout(&addr, EXCHANGE).map_err(io("connect to"))?;
    stream
        .set_read_timeout(Some(EXCHANGE))
        .map_err(io("timeout for"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(io("send to"))?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).map_err(io("read from"))?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Reply {
            peer: addr.to_string(),
            detail: format!("no HTTP status in {head:?}"),
        })?;
    Ok((status, body.to_owned()))
}

/// A TCP server inside a namespace that echoes every line back on the same connection, for
/// connections that must stay open across events (svcplane-echo closes after one line).
pub struct LineEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LineEcho {
    pub fn spawn(ns: &Netns, port: u16) -> LineEcho {
        let listener = ns
            .run_in(|| TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => drop(std::thread::spawn(move || echo_lines(conn))),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        LineEcho {
            stop,
            thread: Some(thread),
        }
    }
}

fn echo_lines(conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    for line in BufReader::new(conn).lines().map_while(Result::ok) {
        if writeln!(writer, "{line}").is_err() {
            return;
        }
    }
}

impl Drop for LineEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A client connection to a [`LineEcho`], opened inside a namespace.
pub struct LineClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineClient {
    pub fn connect(ns: &Netns, addr: SocketAddr) -> LineClient {
        let stream = ns
            .run_in(|| TcpStream::connect_timeout(&addr, EXCHANGE))
            .unwrap()
            .unwrap();
        stream.set_read_timeout(Some(EXCHANGE)).unwrap();
        LineClient {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    /// Sends `line` and returns what came back (an error if the connection broke).
    pub fn roundtrip(&mut self, line: &str) -> std::io::Result<String> {
        writeln!(self.writer, "{line}")?;
        let mut back = String::new();
        self.reader.read_line(&mut back)?;
        Ok(back.trim_end().to_owned())
    }
}

/// From inside `ns`, one TCP request to `addr` every `pause` until `stop` is set; each result is
/// the echo line or the error.
pub fn request_stream(
    ns: &Netns,
    addr: SocketAddr,
    pause: Duration,
    stop: &AtomicBool,
) -> Vec<Result<String, String>> {
    ns.run_in(|| {
        let mut results = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            results.push(request_here(addr).map_err(|e| e.to_string()));
            std::thread::sleep(pause);
        }
        results
    })
    .unwrap()
}

fn request_here(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, EXCHANGE)?;
    stream.set_read_timeout(Some(EXCHANGE))?;
    stream.write_all(b"\n")?;
    let mut line = String::new();
    stream.read_to_string(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// Polls `GET path` on `addr` from inside `ns` until it answers `status` (servers may still be
/// starting); the status and body.
pub fn wait_http(ns: &Netns, addr: SocketAddr, path: &str, status: u16) -> (u16, String) {
    wait_for_ok(
        &format!("GET {addr}{path} to answer {status}"),
        CONVERGE,
        || match http(ns, addr, path)? {
            (got, body) if got == status => Ok((got, body)),
            (got, body) => Err(Error::Invalid(format!("{got} {body}"))),
        },
    )
    .unwrap()
}

/// A UDP socket opened inside a namespace and connected to one address: every request leaves
/// from the same source port, as a long-lived UDP client's would.
#[derive(Debug)]
pub struct UdpFlow {
    sock: UdpSocket,
}

impl UdpFlow {
    pub fn open(ns: &Netns, addr: SocketAddr) -> UdpFlow {
        let any: SocketAddr = match addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = ns.run_in(|| UdpSocket::bind(any)).unwrap().unwrap();
        sock.connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        UdpFlow { sock }
    }

    /// One request; the name of the backend that answered, if one did.
    pub fn ask(&self) -> Option<String> {
        self.sock.send(b"?").ok()?;
        let mut buf = [0u8; 512];
        let n = self.sock.recv(&mut buf).ok()?;
        let id: Identity = String::from_utf8_lossy(&buf[..n]).parse().ok()?;
        Some(id.name)
    }
}
