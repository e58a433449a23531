//! Shared harness of the socket-level tests: an in-process svcplane-dns started from manifests
//! in a temporary directory, a scripted fake upstream resolver, DNS clients over UDP and TCP,
//! a minimal HTTP client for /ready and /metrics, and assertion helpers.
//!
//! Every socket is bound to, and every packet sent to, 127.0.0.1. Every wait has a timeout.

#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a subset; tests may unwrap

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use svcplane_dns::app::{self, Args, Running};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// How long one DNS exchange may take before the test fails.
pub const EXCHANGE: Duration = Duration::from_secs(5);
/// How long a manifest edit may take to show in the answers (the source polls every 250 ms
/// and applies a change once two polls agree).
pub const UPDATE: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------------------------------
// Fixtures
// ------------------------------------------------------------------------------------------

/// The cluster most spec tests query (zone cluster.local):
///
/// - namespaces `myapp-prod` (with Services) and `quiet` (without);
/// - `kube-system/kube-dns` ClusterIP 10.96.0.10 (the NS address);
/// - `web-app-service` ClusterIP 10.96.1.200, ports `http` 80/TCP and `metrics` 9090/TCP,
///   endpoints 10.244.1.31 (hostname `web-0`), 10.244.2.32, 10.244.3.33 (not ready);
/// - `dual` dual-stack ClusterIP 10.96.2.10 + fd00:96::10;
/// - `postgres-headless` headless, port `pg` 5432/TCP (endpoint port 15432), endpoints 10.244.1.10 (`postgres-0`),
///   10.244.1.11 (`postgres-1`, not ready), 10.244.1.5 (no hostname);
/// - `pnr` headless with publishNotReadyAddresses, endpoints 10.244.4.1, 10.244.4.2 (not ready);
/// - `no-ready` headless whose only endpoint is not ready;
/// - `v6-headless` IPv6 headless, endpoints fd00:244::5 (`db-0`) and fd00:244::6;
/// - `ext-in` ExternalName → web-app-service.myapp-prod.svc.cluster.local,
///   `ext-out` ExternalName → www.example.com, `ext-missing` → a missing in-zone name,
///   `ext-nx` → nx.example.com (NXDOMAIN upstream), `ext-chain` → ext-in, and the loop
///   `loop-a` ⇄ `loop-b`;
/// - Pod `postgres-0` with IP 10.244.1.10.
pub const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: myapp-prod
---
apiVersion: v1
kind: Namespace
metadata:
  name: quiet
---
apiVersion: v1
kind: Namespace
metadata:
  name: kube-system
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports:
  - name: dns
    port: 53
    protocol: UDP
  - name: dns-tcp
    port: 53
    protocol: TCP
---
apiVersion: v1
kind: Service
metadata:
  name: web-app-service
  namespace: myapp-prod
spec:
  clusterIP: 10.96.1.200
  clusterIPs: [10.96.1.200]
  ports:
  - name: http
    port: 80
    targetPort: 8080
  - name: metrics
    port: 9090
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-app-service-b8q5n
  namespace: myapp-prod
  labels:
    kubernetes.io/service-name: web-app-service
addressType: IPv4
ports:
- name: http
  protocol: TCP
  port: 8080
- name: metrics
  protocol: TCP
  port: 9090
endpoints:
- addresses: [10.244.1.31]
  hostname: web-0
  conditions: {ready: true}
- addresses: [10.244.2.32]
  conditions: {ready: true}
- addresses: [10.244.3.33]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata:
  name: dual
  namespace: myapp-prod
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.2.10
  clusterIPs: [10.96.2.10, "fd00:96::10"]
  ports:
  - name: http
    port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: postgres-headless
  namespace: myapp-prod
spec:
  clusterIP: None
  clusterIPs: ["None"]
  ports:
  - name: pg
    port: 5432
    targetPort: 15432
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: postgres-headless-7xk2p
  namespace: myapp-prod
  labels:
    kubernetes.io/service-name: postgres-headless
addressType: IPv4
ports:
- name: pg
  protocol: TCP
  port: 15432
endpoints:
- addresses: [10.244.1.10]
  hostname: postgres-0
  conditions: {ready: true}
  targetRef: {kind: Pod, namespace: myapp-prod, name: postgres-0}
- addresses: [10.244.1.11]
  hostname: postgres-1
  conditions: {ready: false}
- addresses: [10.244.1.5]
  conditions: {ready: true}
---
apiVersion: v1
kind: Service
metadata:
  name: pnr
  namespace: myapp-prod
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  ports:
  - name: pg
    port: 5432
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: pnr-1
  namespace: myapp-prod
  labels:
    kubernetes.io/service-name: pnr
addressType: IPv4
ports:
- name: pg
  protocol: TCP
  port: 5432
endpoints:
- addresses: [10.244.4.1]
  conditions: {ready: true}
- addresses: [10.244.4.2]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata:
  name: no-ready
  namespace: myapp-prod
spec:
  clusterIP: None
  ports:
  - name: pg
    port: 5432
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: no-ready-1
  namespace: myapp-prod
  labels:
    kubernetes.io/service-name: no-ready
addressType: IPv4
ports:
- name: pg
  protocol: TCP
  port: 5432
endpoints:
- addresses: [10.244.5.1]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata:
  name: v6-headless
  namespace: myapp-prod
spec:
  clusterIP: None
  ipFamilies: [IPv6]
  ports:
  - name: pg
    port: 5432
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: v6-headless-1
  namespace: myapp-prod
  labels:
    kubernetes.io/service-name: v6-headless
addressType: IPv6
ports:
- name: pg
  protocol: TCP
  port: 5432
endpoints:
- addresses: ["fd00:244::5"]
  hostname: db-0
  conditions: {ready: true}
- addresses: ["fd00:244::6"]
  conditions: {ready: true}
---
apiVersion: v1
kind: Service
metadata:
  name: ext-in
  namespace: myapp-prod
spec:
  type: ExternalName
  externalName: web-app-service.myapp-prod.svc.cluster.local
---
apiVersion: v1
kind: Service
metadata:
  name: ext-out
  namespace: myapp-prod
spec:
  type: ExternalName
  externalName: www.example.com
---
apiVersion: v1
kind: Service
metadata:
  name: ext-missing
  namespace: myapp-prod
spec:
  type: ExternalName
  externalName: missing.myapp-prod.svc.cluster.local
---
apiVersion: v1
kind: Service
metadata:
  name: ext-nx
  namespace: myapp-prod
spec:
  type: ExternalName
  externalName: nx.example.com
---
apiVersion: v1
kind: Service
metadata:
  name: ext-chain
  namespace: myapp-prod
spec:
  type: ExternalName
  externalName: ext-in.myapp-prod.svc.cluster.local
---
apiVersion: v1
kind: Service
metadata:
  name: loop-a
  namespace: myapp-prod
spec:
  type: ExternalName
  externalName: loop-b.myapp-prod.svc.cluster.local
---
apiVersion: v1
kind: Service
metadata:
  name: loop-b
  namespace: myapp-prod
spec:
  type: ExternalName
  externalName: loop-a.myapp-prod.svc.cluster.local
---
apiVersion: v1
kind: Pod
metadata:
  name: postgres-0
  namespace: myapp-prod
spec:
  hostname: postgres-0
  subdomain: postgres-headless
  nodeName: worker-1
  containers:
  - name: postgres
    image: postgres:13
status:
  phase: Running
  podIP: 10.244.1.10
  podIPs:
  - ip: 10.244.1.10
"#;

/// A headless Service `<name>` in namespace `bulk` with `n` ready IPv4 endpoints
/// 10.<second>.0.1… (no hostnames), port `http` 80/TCP.
pub fn big_headless(name: &str, second: u8, n: usize) -> String {
    let mut yaml = format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: bulk
spec:
  clusterIP: None
  ports:
  - name: http
    port: 80
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: bulk
  labels:
    kubernetes.io/service-name: {name}
addressType: IPv4
ports:
- name: http
  protocol: TCP
  port: 80
endpoints:
"#
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "- addresses: [10.{second}.{}.{}]\n  conditions: {{ready: true}}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    yaml
}

/// A ClusterIP Service manifest.
pub fn cluster_ip_service(namespace: &str, name: &str, ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  clusterIP: {ip}
  ports:
  - name: http
    port: 80
"#
    )
}

// ------------------------------------------------------------------------------------------
// Fake upstream
// ------------------------------------------------------------------------------------------

/// A scripted upstream resolver on 127.0.0.1 (UDP): answers names from its table (NXDOMAIN
/// otherwise), echoing the query's id and question, and counts the queries it received.
#[derive(Debug)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// The default upstream table: www.example.com A 93.184.216.34, AAAA 2606:2800:220:1::1.
pub fn default_upstream_records() -> Vec<Record> {
    let name = Name::from_ascii("www.example.com.").unwrap();
    vec![
        Record::from_rdata(
            name.clone(),
            300,
            RData::A("93.184.216.34".parse().unwrap()),
        ),
        Record::from_rdata(
            name,
            300,
            RData::AAAA("2606:2800:220:1::1".parse().unwrap()),
        ),
    ]
}

impl FakeUpstream {
    pub async fn start(records: Vec<Record>) -> FakeUpstream {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let mut table: HashMap<(String, RecordType), Vec<Record>> = HashMap::new();
        for r in records {
            let key = (r.name.to_ascii().to_ascii_lowercase(), r.record_type());
            table.entry(key).or_default().push(r);
        }
        let counter = queries.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut reply = Message::new(query.id, MessageType::Response, OpCode::Query);
                reply.metadata.recursion_desired = query.recursion_desired;
                reply.metadata.recursion_available = true;
                reply.add_queries(query.queries.iter().cloned());
                if let Some(edns) = &query.edns {
                    let mut e = Edns::new();
                    e.set_max_payload(1232);
                    e.set_dnssec_ok(edns.flags().dnssec_ok);
                    reply.set_edns(e);
                }
                let found = query.queries.first().and_then(|q| {
                    table.get(&(q.name().to_ascii().to_ascii_lowercase(), q.query_type()))
                });
                match found {
                    Some(records) => {
                        reply.add_answers(records.iter().cloned());
                    }
                    None => reply.metadata.response_code = ResponseCode::NXDomain,
                }
                let _ = socket.send_to(&reply.to_vec().unwrap(), peer).await;
            }
        });
        FakeUpstream {
            addr,
            queries,
            task,
        }
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address on 127.0.0.1 where nothing listens (a socket bound then closed).
pub async fn dead_upstream() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.local_addr().unwrap()
}

// ------------------------------------------------------------------------------------------
// The server
// ------------------------------------------------------------------------------------------

/// A running svcplane-dns with its manifests directory and fake upstream; stopped on drop.
pub struct Server {
    pub dir: TempDir,
    pub dns: SocketAddr,
    pub health: SocketAddr,
    pub metrics: SocketAddr,
    pub running: Option<Running>,
    pub upstream: Option<FakeUpstream>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.stop();
        }
    }
}

/// How to start a [`Server`].
#[derive(Debug, Default)]
pub struct Start {
    files: Vec<(String, String)>,
    args: Vec<String>,
    upstream: Option<SocketAddr>,
    records: Option<Vec<Record>>,
}

impl Start {
    pub fn new() -> Start {
        Start::default()
    }

    /// A manifest file in the watched directory.
    pub fn file(mut self, name: &str, yaml: &str) -> Start {
        self.files.push((name.into(), yaml.into()));
        self
    }

    /// Extra command-line flags (e.g. `["--pods", "insecure"]`).
    pub fn args(mut self, args: &[&str]) -> Start {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Forward to this address instead of a fresh [`FakeUpstream`].
    pub fn upstream(mut self, addr: SocketAddr) -> Start {
        self.upstream = Some(addr);
        self
    }

    /// The fake upstream's table (default: [`default_upstream_records`]).
    pub fn upstream_records(mut self, records: Vec<Record>) -> Start {
        self.records = Some(records);
        self
    }

    /// Starts the server and waits until /ready answers 200.
    pub async fn start(self) -> Server {
        let dir = tempfile::tempdir().unwrap();
        for (name, yaml) in &self.files {
            std::fs::write(dir.path().join(name), yaml).unwrap();
        }
        let (upstream_addr, upstream) = match self.upstream {
            Some(addr) => (addr, None),
            None => {
                let fake =
                    FakeUpstream::start(self.records.unwrap_or_else(default_upstream_records))
                        .await;
                (fake.addr, Some(fake))
            }
        };
        let mut argv: Vec<String> = [
            "svcplane-dns",
            "--manifests",
            &dir.path().display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--health-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--upstream",
            &upstream_addr.to_string(),
            "--udp-workers",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(self.args);
        // `--listen 127.0.0.1:0` binds UDP on a free port, then TCP on the same number, which a
        // TCP socket (one of the tests' own client connections) may already hold: retry.
        let mut attempt = 0;
        let running = loop {
            let args = Args::parse_from(&argv);
            let started = timeout(EXCHANGE, app::start(args))
                .await
                .expect("start timed out");
            match started {
                Ok(running) => break running,
                Err(e) if attempt < 8 && format!("{e:#}").contains("binding TCP") => attempt += 1,
                Err(e) => panic!("start: {e:#}"),
            }
        };
        let server = Server {
            dns: running.dns_addr,
            health: running.health_addr,
            metrics: running.metrics_addr,
            dir,
            running: Some(running),
            upstream,
        };
        server.wait_ready().await;
        server
    }
}

/// The [`CLUSTER`] fixture with default flags.
pub async fn cluster() -> Server {
    Start::new().file("cluster.yaml", CLUSTER).start().await
}

/// The [`CLUSTER`] fixture with extra flags.
pub async fn cluster_with(args: &[&str]) -> Server {
    Start::new()
        .file("cluster.yaml", CLUSTER)
        .args(args)
        .start()
        .await
}

impl Server {
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((200, _)) = http_get(self.health, "/ready").await {
                return;
            }
            assert!(Instant::now() < deadline, "/ready never returned 200");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes (or replaces) a manifest file.
    pub fn write(&self, name: &str, yaml: &str) {
        let path: PathBuf = self.dir.path().join(name);
        std::fs::write(path, yaml).unwrap();
    }

    /// Removes a manifest file.
    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.path().join(name)).unwrap();
    }

    pub async fn ask(&self, via: Via, msg: &Message) -> Message {
        ask(via, self.dns, msg).await
    }

    /// One question (RD set, no EDNS) over `via`.
    pub async fn q(&self, via: Via, name: &str, rtype: RecordType) -> Message {
        ask(via, self.dns, &query(name, rtype)).await
    }

    /// Polls (over `via`) until `check` accepts the response to `name`/`rtype`; returns it.
    pub async fn poll_until(
        &self,
        via: Via,
        name: &str,
        rtype: RecordType,
        check: impl Fn(&Message) -> bool,
    ) -> Message {
        let deadline = Instant::now() + UPDATE;
        loop {
            let response = self.q(via, name, rtype).await;
            if check(&response) {
                return response;
            }
            assert!(
                Instant::now() < deadline,
                "{name} {rtype} never reached the expected answer; last:\n{}",
                describe(&response)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn take_running(&mut self) -> Running {
        self.running.take().expect("running")
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

/// Every transport, for tests that check a rule over both.
pub const BOTH: [Via; 2] = [Via::Udp, Via::Tcp];

/// A standard query (RD set, class IN, random id, no EDNS).
pub fn query(name: &str, rtype: RecordType) -> Message {
    let mut msg = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    msg
}

/// `msg` with an EDNS(0) OPT advertising `payload`.
pub fn with_edns(mut msg: Message, payload: u16) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    msg.set_edns(edns);
    msg
}

pub async fn ask(via: Via, addr: SocketAddr, msg: &Message) -> Message {
    let bytes = msg.to_vec().unwrap();
    let reply = match via {
        Via::Udp => udp_raw(addr, &bytes, EXCHANGE).await,
        Via::Tcp => tcp_raw(addr, &bytes).await,
    };
    let reply = reply.unwrap_or_else(|| panic!("no {via:?} response to\n{msg}"));
    let response = Message::from_vec(&reply)
        .unwrap_or_else(|e| panic!("{via:?} response does not parse ({e}): {reply:02x?}"));
    assert_eq!(response.id, msg.id, "response id");
    assert_eq!(response.message_type, MessageType::Response, "QR");
    response
}

/// Sends one datagram from a fresh socket; the first reply with the query's id (or any reply,
/// for packets shorter than an id), or None after `wait`.
pub async fn udp_raw(addr: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(packet, addr).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (len, from) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        if from != addr {
            continue;
        }
        if packet.len() < 2 || buf[..2] == packet[..2] {
            return Some(buf[..len].to_vec());
        }
    }
}

/// One length-prefixed exchange on a fresh TCP connection; None if the server closed it or did
/// not answer in time.
pub async fn tcp_raw(addr: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let mut stream = timeout(EXCHANGE, TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    write_frame(&mut stream, packet).await.ok()?;
    timeout(EXCHANGE, read_frame(&mut stream)).await.ok()?.ok()
}

pub async fn write_frame(stream: &mut TcpStream, packet: &[u8]) -> std::io::Result<()> {
    let mut frame = (packet.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(packet);
    stream.write_all(&frame).await
}

pub async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
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
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad HTTP response {text:?}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    };
    timeout(EXCHANGE, exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("HTTP timed out")))
}

// ------------------------------------------------------------------------------------------
// Assertions
// ------------------------------------------------------------------------------------------

/// A record as `owner TYPE rdata` (owner as written on the wire, letter case included; TTL
/// left out).
pub fn rr(r: &Record) -> String {
    let data = match &r.data {
        RData::TXT(txt) => txt
            .txt_data
            .iter()
            .map(|s| format!("{:?}", String::from_utf8_lossy(s)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    format!("{} {} {}", r.name, r.record_type(), data)
}

pub fn rrs(records: &[Record]) -> Vec<String> {
    records.iter().map(rr).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The whole response, for failure messages.
pub fn describe(m: &Message) -> String {
    format!(
        "rcode={:?} aa={} tc={} ra={}\nquestion: {:?}\nanswer: {:#?}\nauthority: {:#?}\nadditional: {:#?}\nedns: {:?}",
        m.response_code,
        m.authoritative,
        m.truncation,
        m.recursion_available,
        m.queries
            .iter()
            .map(|q| format!("{} {}", q.name(), q.query_type()))
            .collect::<Vec<_>>(),
        rrs(&m.answers),
        rrs(&m.authorities),
        rrs(&m.additionals),
        m.edns
    )
}

/// NOERROR, AA, and exactly these answer records (in any order).
pub fn assert_answers(m: &Message, expected: &[&str]) {
    let ctx = describe(m);
    assert_eq!(m.response_code, ResponseCode::NoError, "{ctx}");
    assert!(m.authoritative, "AA must be set on cluster answers\n{ctx}");
    assert!(!m.truncation, "{ctx}");
    let want = sorted(expected.iter().map(|s| s.to_string()).collect());
    assert_eq!(sorted(rrs(&m.answers)), want, "answer section\n{ctx}");
    for r in &m.answers {
        assert_eq!(r.dns_class, DNSClass::IN, "{ctx}");
        assert_eq!(r.ttl, 5, "cluster records carry --ttl (5)\n{ctx}");
    }
}

/// Exactly these additional records (in any order; the OPT is not a record here).
pub fn assert_additional(m: &Message, expected: &[&str]) {
    let want = sorted(expected.iter().map(|s| s.to_string()).collect());
    assert_eq!(
        sorted(rrs(&m.additionals)),
        want,
        "additional section\n{}",
        describe(m)
    );
}

/// RFC 2308 §3: a negative answer (`rcode` NXDOMAIN, or NOERROR for NODATA) is authoritative,
/// has no answer records, and carries the zone's SOA in the authority section.
pub fn assert_negative(m: &Message, rcode: ResponseCode) {
    let ctx = describe(m);
    assert_eq!(m.response_code, rcode, "{ctx}");
    assert!(m.authoritative, "AA must be set on cluster answers\n{ctx}");
    assert!(
        m.answers.is_empty(),
        "no answers in a negative response\n{ctx}"
    );
    assert_soa_authority(m);
}

pub fn assert_nxdomain(m: &Message) {
    assert_negative(m, ResponseCode::NXDomain);
}

pub fn assert_nodata(m: &Message) {
    assert_negative(m, ResponseCode::NoError);
}

/// The authority section is exactly the SOA of cluster.local.
pub fn assert_soa_authority(m: &Message) {
    let ctx = describe(m);
    assert_eq!(
        m.authorities.len(),
        1,
        "one SOA in the authority section\n{ctx}"
    );
    let soa = &m.authorities[0];
    assert_eq!(soa.record_type(), RecordType::SOA, "{ctx}");
    assert_eq!(soa.name.to_string(), "cluster.local.", "{ctx}");
    let RData::SOA(data) = &soa.data else {
        panic!("not SOA data\n{ctx}")
    };
    assert_eq!(data.mname.to_string(), "ns.dns.cluster.local.", "{ctx}");
    assert_eq!(data.rname.to_string(), "hostmaster.cluster.local.", "{ctx}");
    assert_eq!(data.minimum, 5, "{ctx}");
}

/// The question in the response is the query's, letter case included.
pub fn assert_question(m: &Message, name: &str, rtype: RecordType) {
    assert_eq!(m.queries.len(), 1, "{}", describe(m));
    assert_eq!(
        m.queries[0].name().to_string(),
        name,
        "question name (case preserved)"
    );
    assert_eq!(m.queries[0].query_type(), rtype);
}

/// The reverse name (in-addr.arpa / nibble ip6.arpa) of an address.
pub fn reverse(ip: &str) -> String {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        std::net::IpAddr::V6(v6) => {
            let mut out = String::new();
            for byte in v6.octets().iter().rev() {
                out.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
            out.push_str("ip6.arpa.");
            out
        }
    }
}
