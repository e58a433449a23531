//! Harness of the svcplane-dns tests driven through the Kubernetes API: the project's API test
//! server with svcplane-dns watching it through a kubeconfig, DNS clients over UDP and TCP
//! (hickory-proto), a minimal HTTP client for /ready and /metrics, object builders, answer
//! assertions and a capture of the warnings the server logs.
//!
//! The DNS and HTTP helpers are copied (trimmed) from `dns/tests/common/mod.rs`: integration
//! test modules cannot be shared across crates. Every socket is bound to, and every packet
//! sent to, 127.0.0.1; every wait has a timeout.

#![allow(dead_code, clippy::unwrap_used)] // tests may unwrap

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Mutex, Once};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, Record, RecordType};
use serde_json::{Value, json};
use svcplane_dns::app::{self, Args, Pods, Running};
use svcplane_tests::apiserver::ApiServer;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout};

/// How long one DNS or HTTP exchange may take.
pub const EXCHANGE: Duration = Duration::from_secs(5);
/// How long a change made through the API may take to show in the answers.
pub const UPDATE: Duration = Duration::from_secs(5);
/// How long starting (first sync, /ready) or recovering from an outage may take: the
/// watchers' backoff after errors starts at 0.8 s and doubles.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// The example deployment's manifests.
const EXAMPLE: &str = include_str!("../../../deploy/examples/myapp-prod.yaml");

/// The Namespaces, Services and EndpointSlices of `deploy/examples/myapp-prod.yaml` (its
/// ConfigMap, Secret, Deployments, StatefulSet, Ingress and Pods left out):
///
/// - namespace `myapp-prod`;
/// - `web-app-service` ClusterIP 10.96.1.200, unnamed port 80/TCP, ready endpoints
///   10.244.1.31, 10.244.2.32, 10.244.3.33;
/// - `redis-service` ClusterIP 10.96.1.100, unnamed port 6379, endpoint 10.244.2.20;
/// - `postgres-headless` headless, unnamed port 5432, endpoint 10.244.1.10 (`postgres-0`).
pub fn example_objects() -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(EXAMPLE).unwrap();
    let served = ["Namespace", "Service", "EndpointSlice"];
    docs.into_iter()
        .filter(|doc| served.contains(&doc["kind"].as_str().unwrap_or_default()))
        .collect()
}

// ------------------------------------------------------------------------------------------
// Object builders
// ------------------------------------------------------------------------------------------

pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// A ClusterIP Service with one TCP port per `(name, port)`.
pub fn service(ns: &str, name: &str, cluster_ip: &str, ports: &[(&str, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port_name, port)| json!({"name": port_name, "port": port, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": ports}
    })
}

/// An IPv4 EndpointSlice of Service `service` with TCP port `port` and one ready endpoint per
/// `(address, hostname)`. Addresses are not checked: the API test server stores anything.
pub fn slice(
    ns: &str,
    name: &str,
    service: &str,
    port: u16,
    endpoints: &[(&str, Option<&str>)],
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, hostname)| {
            let mut e = json!({"addresses": [ip], "conditions": {"ready": true}});
            if let Some(hostname) = hostname {
                e["hostname"] = json!(hostname);
            }
            e
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service}
        },
        "addressType": "IPv4",
        "ports": [{"name": "", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

// ------------------------------------------------------------------------------------------
// The stack: API test server + svcplane-dns
// ------------------------------------------------------------------------------------------

/// The API test server and an in-process svcplane-dns watching it; stopped on drop.
pub struct Stack {
    pub api: ApiServer,
    pub dns: SocketAddr,
    pub health: SocketAddr,
    pub metrics: SocketAddr,
    running: Running,
    _dir: TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.running.stop();
    }
}

impl Stack {
    /// Starts an API test server holding `objects`, then svcplane-dns with a kubeconfig for
    /// it, and waits until /ready answers 200.
    pub async fn start(objects: Vec<Value>) -> Stack {
        capture_logs();
        let api = ApiServer::start().await.unwrap();
        for object in objects {
            api.apply(object).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = api.write_kubeconfig(dir.path()).unwrap();
        let running = start_dns(&kubeconfig).await;
        let stack = Stack {
            api,
            dns: running.dns_addr,
            health: running.health_addr,
            metrics: running.metrics_addr,
            running,
            _dir: dir,
        };
        stack.wait_ready().await;
        stack
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + PATIENCE;
        while self.ready().await != 200 {
            assert!(Instant::now() < deadline, "/ready never returned 200");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The status of GET /ready (0 if the request failed).
    pub async fn ready(&self) -> u16 {
        http_get(self.health, "/ready").await.map_or(0, |(s, _)| s)
    }

    /// The value of an unlabelled series on /metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        let (status, body) = http_get(self.metrics, "/metrics").await.unwrap();
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
    }

    /// Polls /metrics until the series satisfies `check`, for at most `wait`.
    pub async fn metric_until(&self, name: &str, wait: Duration, check: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + wait;
        loop {
            let value = self.metric(name).await;
            if check(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} stayed at {value} for {wait:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until svcplane-dns has a watch open on every kind it follows (after the first
    /// sync the watchers still have to start their watches).
    pub async fn wait_watching(&self) {
        let deadline = Instant::now() + PATIENCE;
        for plural in ["namespaces", "services", "endpointslices"] {
            while self.api.counts(plural).open_watches == 0 {
                assert!(Instant::now() < deadline, "no watch on {plural}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// One question (RD set, no EDNS) over `via`.
    pub async fn q(&self, via: Via, name: &str, rtype: RecordType) -> Message {
        ask(via, self.dns, &query(name, rtype)).await
    }

    /// Polls over UDP until `check` accepts the response to `name`/`rtype`, for at most
    /// `wait`; returns the response and how long it took to appear.
    pub async fn until(
        &self,
        wait: Duration,
        name: &str,
        rtype: RecordType,
        check: impl Fn(&Message) -> bool,
    ) -> (Message, Duration) {
        let started = Instant::now();
        loop {
            let response = self.q(Via::Udp, name, rtype).await;
            if check(&response) {
                return (response, started.elapsed());
            }
            assert!(
                started.elapsed() < wait,
                "{name} {rtype} never reached the expected answer; last:\n{}",
                describe(&response)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Starts svcplane-dns on the current runtime with the API source, retrying when the TCP
/// port matching the free UDP port is taken.
async fn start_dns(kubeconfig: &Path) -> Running {
    for _ in 0..8 {
        let started = timeout(EXCHANGE, app::start(args(kubeconfig))).await;
        match started.expect("svcplane-dns start timed out") {
            Ok(running) => return running,
            Err(e) if format!("{e:#}").contains("binding TCP") => continue,
            Err(e) => panic!("svcplane-dns start: {e:#}"),
        }
    }
    panic!("svcplane-dns never got a port free for both UDP and TCP");
}

/// The flags `--kubeconfig PATH --listen 127.0.0.1:0 --health-addr 127.0.0.1:0
/// --metrics-addr 127.0.0.1:0 --upstream 127.0.0.1:9 --udp-workers 1`, other flags at their
/// defaults (built directly: this crate does not depend on clap).
fn args(kubeconfig: &Path) -> Args {
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    Args {
        manifests: Vec::new(),
        kubeconfig: Some(kubeconfig.to_path_buf()),
        listen: local,
        health_addr: local,
        metrics_addr: local,
        cluster_domain: "cluster.local".into(),
        upstream: vec![SocketAddr::from(([127, 0, 0, 1], 9))],
        pods: Pods::Disabled,
        ttl: 5,
        lameduck: Duration::from_secs(5),
        udp_workers: Some(1),
        tcp_idle_timeout: Duration::from_secs(10),
        tcp_max_connections: 1024,
        cache_size: 10_000,
    }
}

// ------------------------------------------------------------------------------------------
// DNS clients
// ------------------------------------------------------------------------------------------

/// The transport of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Udp,
    Tcp,
}

pub const BOTH: [Via; 2] = [Via::Udp, Via::Tcp];

/// A standard query (RD set, class IN, random id, no EDNS).
pub fn query(name: &str, rtype: RecordType) -> Message {
    let mut msg = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    msg
}

pub async fn ask(via: Via, addr: SocketAddr, msg: &Message) -> Message {
    let bytes = msg.to_vec().unwrap();
    let reply = match via {
        Via::Udp => udp_exchange(addr, &bytes).await,
        Via::Tcp => tcp_exchange(addr, &bytes).await,
    };
    let reply = reply.unwrap_or_else(|| panic!("no {via:?} response to\n{msg}"));
    let response = Message::from_vec(&reply).unwrap();
    assert_eq!(response.id, msg.id, "response id");
    response
}

/// One datagram from a fresh socket; the first reply with the query's id.
async fn udp_exchange(addr: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(packet, addr).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let deadline = Instant::now() + EXCHANGE;
    loop {
        let received = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await;
        let (len, from) = received.ok()?.ok()?;
        if from == addr && buf[..2] == packet[..2] {
            return Some(buf[..len].to_vec());
        }
    }
}

/// One length-prefixed exchange on a fresh TCP connection.
async fn tcp_exchange(addr: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut frame = u16::try_from(packet.len()).unwrap().to_be_bytes().to_vec();
        frame.extend_from_slice(packet);
        stream.write_all(&frame).await?;
        let mut reply = vec![0u8; usize::from(stream.read_u16().await?)];
        stream.read_exact(&mut reply).await?;
        std::io::Result::Ok(reply)
    };
    timeout(EXCHANGE, exchange).await.ok()?.ok()
}

/// The reverse (in-addr.arpa) name of an IPv4 address.
pub fn reverse(ip: &str) -> String {
    let IpAddr::V4(v4) = ip.parse().unwrap() else {
        panic!("{ip} is not IPv4")
    };
    let [a, b, c, d] = v4.octets();
    format!("{d}.{c}.{b}.{a}.in-addr.arpa.")
}

// ------------------------------------------------------------------------------------------
// HTTP
// ------------------------------------------------------------------------------------------

/// GET `path` on `addr`: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        let status =
            status.ok_or_else(|| std::io::Error::other(format!("bad HTTP response {text:?}")))?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        Ok((status, body.unwrap_or_default()))
    };
    timeout(EXCHANGE, exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("HTTP timed out")))
}

// ------------------------------------------------------------------------------------------
// Assertions
// ------------------------------------------------------------------------------------------

/// A record as `owner TYPE rdata` (TTL left out).
pub fn rr(r: &Record) -> String {
    format!("{} {} {}", r.name, r.record_type(), r.data)
}

/// The answer section, sorted.
pub fn answers(m: &Message) -> Vec<String> {
    let mut records: Vec<String> = m.answers.iter().map(rr).collect();
    records.sort();
    records
}

/// The whole response, for failure messages.
pub fn describe(m: &Message) -> String {
    let records = |rs: &[Record]| rs.iter().map(rr).collect::<Vec<_>>();
    format!(
        "rcode={:?} aa={}\nanswer: {:#?}\nauthority: {:#?}\nadditional: {:#?}",
        m.response_code,
        m.authoritative,
        records(&m.answers),
        records(&m.authorities),
        records(&m.additionals),
    )
}

/// NOERROR, AA, and exactly these answer records (in any order).
pub fn assert_answers(m: &Message, expected: &[&str]) {
    let ctx = describe(m);
    assert_eq!(m.response_code, ResponseCode::NoError, "{ctx}");
    assert!(m.authoritative, "{ctx}");
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(answers(m), want, "{ctx}");
}

/// Whether `m` is NOERROR with exactly these answer records.
pub fn answers_are(m: &Message, expected: &[&str]) -> bool {
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    m.response_code == ResponseCode::NoError && answers(m) == want
}

pub fn is_nxdomain(m: &Message) -> bool {
    m.response_code == ResponseCode::NXDomain && m.answers.is_empty()
}

pub fn is_nodata(m: &Message) -> bool {
    m.response_code == ResponseCode::NoError && m.answers.is_empty()
}

/// A negative answer: `rcode` (NXDOMAIN, or NOERROR for NODATA), AA, no answers, the zone's
/// SOA in the authority section.
pub fn assert_negative(m: &Message, rcode: ResponseCode) {
    let ctx = describe(m);
    assert_eq!(m.response_code, rcode, "{ctx}");
    assert!(m.authoritative, "{ctx}");
    assert!(m.answers.is_empty(), "{ctx}");
    let soa: Vec<String> = m.authorities.iter().map(|r| r.name.to_string()).collect();
    assert_eq!(soa, ["cluster.local."], "{ctx}");
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA, "{ctx}");
}

pub fn assert_nxdomain(m: &Message) {
    assert_negative(m, ResponseCode::NXDomain);
}

pub fn assert_nodata(m: &Message) {
    assert_negative(m, ResponseCode::NoError);
}

/// A name the cluster does not claim (e.g. the PTR name of an address no Service uses) goes
/// to the upstream, which for [`Stack`] is 127.0.0.1:9 where nothing answers: SERVFAIL,
/// without answers or AA.
pub fn assert_forwarded(m: &Message) {
    let ctx = describe(m);
    assert_eq!(m.response_code, ResponseCode::ServFail, "{ctx}");
    assert!(!m.authoritative, "{ctx}");
    assert!(m.answers.is_empty(), "{ctx}");
}

// ------------------------------------------------------------------------------------------
// Logs
// ------------------------------------------------------------------------------------------

/// Warnings and errors logged so far, by every test of this binary (one line per event:
/// `field=value` pairs); also echoed to stderr.
static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Installs (once per test binary) the global subscriber that fills [`LOGS`].
fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = tracing::subscriber::set_global_default(Capture);
    });
}

/// Whether a logged warning or error contains every one of `needles`.
pub fn logged(needles: &[&str]) -> bool {
    let logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    logs.iter().any(|l| needles.iter().all(|n| l.contains(n)))
}

/// Waits until [`logged`] holds, for at most [`UPDATE`].
pub async fn wait_logged(needles: &[&str]) {
    let deadline = Instant::now() + UPDATE;
    while !logged(needles) {
        assert!(Instant::now() < deadline, "never logged: {needles:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `tracing` subscriber that keeps WARN and ERROR events in [`LOGS`].
struct Capture;

impl tracing::Subscriber for Capture {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = format!(
            "{} {}:",
            event.metadata().level(),
            event.metadata().target()
        );
        event.record(&mut Fields(&mut line));
        eprintln!("{line}");
        LOGS.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}
