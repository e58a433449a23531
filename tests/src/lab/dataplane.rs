//! The data plane under test: svcplane-proxy in every node namespace and svcplane-dns as
//! `kube-system/kube-dns` (pod `kube-dns` on node 0, Service at 10.96.0.10 with ports 53/UDP,
//! 53/TCP and 9153/TCP), all reading the cluster's manifests directory; and the checks `up`
//! waits for: every proxy's `/healthz` (200 once its first sync is programmed) and, through the
//! data plane itself, a DNS answer from 10.96.0.10 for every ClusterIP Service.
//!
//! Both servers run from the svcplane-lab binary (it dispatches on `argv[0]`), so the lab always
//! runs the data plane it was built with.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1 as core;

use super::alloc::KUBE_DNS_IP;
use super::ops::Ctx;
use super::procs::{self, Spawn};
use super::state::{State, key};
use super::workload::{ContainerPort, NewPod, PodSpec, Probe, Protocol};
use super::{CLUSTER_DOMAIN, Error, Result, net};

/// kube-dns's namespace.
pub const DNS_NAMESPACE: &str = "kube-system";
/// kube-dns's pod and Service name.
pub const DNS_NAME: &str = "kube-dns";
/// `argv[0]` that makes the lab binary run svcplane-proxy.
pub const PROXY_ARG0: &str = "svcplane-proxy";
/// `argv[0]` that makes the lab binary run svcplane-dns.
pub const DNS_ARG0: &str = "svcplane-dns";
/// The proxies' health port.
pub const PROXY_HEALTH_PORT: u16 = 10256;
/// svcplane-dns's health port (in its pod).
const DNS_HEALTH_PORT: u16 = 8080;
/// How long the servers may take to become healthy and answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The kube-dns pod (a system pod on node 0).
pub fn dns_pod() -> NewPod {
    let port = |name: &str, port, protocol| ContainerPort {
        name: Some(name.into()),
        port,
        protocol,
    };
    NewPod {
        namespace: DNS_NAMESPACE.into(),
        name: DNS_NAME.into(),
        spec: PodSpec {
            labels: [("k8s-app".to_owned(), "kube-dns".to_owned())].into(),
            ports: vec![
                port("dns", 53, Protocol::Udp),
                port("dns-tcp", 53, Protocol::Tcp),
                port("metrics", 9153, Protocol::Tcp),
            ],
            probes: vec![Probe::Http {
                port: DNS_HEALTH_PORT,
                path: "/ready".into(),
            }],
            ..PodSpec::default()
        },
        owner: None,
        node: None,
    }
}

/// The kube-dns Service (before assignment).
pub fn dns_service() -> Result<core::Service> {
    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": DNS_NAME,
            "namespace": DNS_NAMESPACE,
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"},
        },
        "spec": {
            "clusterIP": KUBE_DNS_IP.to_string(),
            "selector": {"k8s-app": "kube-dns"},
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
            ],
        },
    });
    serde_json::from_value(value).map_err(|e| Error::Invalid(format!("the kube-dns Service: {e}")))
}

/// Starts svcplane-dns in the kube-dns pod.
pub fn start_dns(state: &mut State, ctx: &Ctx<'_>) -> Result<()> {
    let k = key(DNS_NAMESPACE, DNS_NAME);
    let netns = state
        .pods
        .get(&k)
        .map(|p| p.netns.clone())
        .ok_or_else(|| Error::Invalid("no kube-dns pod".into()))?;
    let manifests = ctx.layout.manifests().display().to_string();
    let args = [
        "--manifests",
        &manifests,
        "--listen",
        "[::]:53",
        "--health-addr",
        "0.0.0.0:8080",
        "--metrics-addr",
        "0.0.0.0:9153",
        "--upstream",
        "127.0.0.1:9",
        "--pods",
        "insecure",
        "--lameduck",
        "0s",
    ];
    let spawn = Spawn {
        netns: &netns,
        exe: &ctx.opts.lab_exe,
        arg0: Some(DNS_ARG0),
        args: args.iter().map(|s| s.to_string()).collect(),
        log: ctx.layout.logs().join("kube-dns.log"),
        what: "svcplane-dns kube-system/kube-dns".into(),
    };
    let process = procs::spawn(&spawn)?;
    if let Some(p) = state.pods.get_mut(&k) {
        p.process = Some(process);
    }
    Ok(())
}

/// Starts svcplane-proxy on every node.
pub fn start_proxies(state: &mut State, ctx: &Ctx<'_>) -> Result<()> {
    let manifests = ctx.layout.manifests().display().to_string();
    let [svc4, svc6] = net::service_cidrs();
    for node in &mut state.nodes {
        let mut args: Vec<String> = vec![
            "--manifests".into(),
            manifests.clone(),
            "--node-name".into(),
            node.name.clone(),
        ];
        for cidr in net::CLUSTER_CIDRS {
            args.extend(["--cluster-cidr".into(), cidr.into()]);
        }
        for cidr in [&svc4, &svc6] {
            args.extend(["--service-cidr".into(), cidr.clone()]);
        }
        args.extend([
            "--nodeport-addresses".into(),
            format!("{}/32,{}/128", node.ipv4, node.ipv6),
            "--health-addr".into(),
            format!("{}:{PROXY_HEALTH_PORT}", node.ipv4),
            "--metrics-addr".into(),
            "127.0.0.1:10249".into(),
            "--min-sync-period".into(),
            "100ms".into(),
        ]);
        let spawn = Spawn {
            netns: &node.netns,
            exe: &ctx.opts.lab_exe,
            arg0: Some(PROXY_ARG0),
            args,
            log: ctx.layout.logs().join(format!("proxy-{}.log", node.name)),
            what: format!("svcplane-proxy {}", node.name),
        };
        node.proxy = Some(procs::spawn(&spawn)?);
    }
    Ok(())
}

/// Waits for every proxy's `/healthz` to answer 200.
pub fn wait_proxies(state: &State) -> Result<()> {
    for node in &state.nodes {
        let addr = SocketAddr::new(node.ipv4.into(), PROXY_HEALTH_PORT);
        let what = format!("svcplane-proxy on {} to program its first sync", node.name);
        procs::wait_until(&what, START_TIMEOUT, || {
            if let Some(p) = &node.proxy {
                procs::check_running(p)?;
            }
            match procs::http_get(&node.netns, addr, "/healthz", Duration::from_millis(500))? {
                (200, _) => Ok(()),
                (code, body) => Err(Error::Invalid(format!("HTTP {code}: {body}"))),
            }
        })?;
    }
    Ok(())
}

/// Waits until kube-dns, asked at 10.96.0.10 from node 0 (through the proxy), answers every
/// ClusterIP Service's name with its address.
pub fn wait_dns(state: &State) -> Result<()> {
    let Some(node) = state.nodes.first() else {
        return Ok(());
    };
    let server = SocketAddr::new(KUBE_DNS_IP.into(), 53);
    let dns = state
        .pods
        .get(&key(DNS_NAMESPACE, DNS_NAME))
        .and_then(|p| p.process.clone());
    for svc in state.services.values() {
        let Some((name, ip)) = expected_a(svc) else {
            continue;
        };
        procs::wait_until(&format!("kube-dns to answer {name}"), START_TIMEOUT, || {
            if let Some(p) = &dns {
                procs::check_running(p)?;
            }
            let got = query_a(&node.netns, server, &name)?;
            if got.contains(&ip) {
                Ok(())
            } else {
                Err(Error::Invalid(format!("answered {got:?}, want {ip}")))
            }
        })?;
    }
    Ok(())
}

/// The FQDN and IPv4 ClusterIP a Service's A record must carry, if it has one.
fn expected_a(svc: &core::Service) -> Option<(String, IpAddr)> {
    let spec = svc.spec.as_ref()?;
    let ip: IpAddr = spec
        .cluster_ips
        .iter()
        .flatten()
        .filter_map(|s| s.parse().ok())
        .find(IpAddr::is_ipv4)?;
    let ns = svc.metadata.namespace.as_deref()?;
    let name = svc.metadata.name.as_deref()?;
    Some((format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}."), ip))
}

/// The A records for `name` from `server`, asked from inside namespace `ns`.
pub fn query_a(ns: &str, server: SocketAddr, name: &str) -> Result<Vec<IpAddr>> {
    let mut msg = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    let qname = Name::from_ascii(name).map_err(|e| Error::Invalid(format!("{name}: {e}")))?;
    msg.add_query(Query::query(qname, RecordType::A));
    let bytes = msg
        .to_vec()
        .map_err(|e| Error::Invalid(format!("encoding a query: {e}")))?;
    let reply = net::run_in(ns, || udp_exchange(server, &bytes))??;
    let answer =
        Message::from_vec(&reply).map_err(|e| Error::Invalid(format!("a bad DNS answer: {e}")))?;
    Ok(answer
        .answers
        .iter()
        .filter(|r| r.record_type() == RecordType::A)
        .filter_map(|r| r.data.to_string().parse().ok())
        .collect())
}

fn udp_exchange(server: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>> {
    let what = format!("asking {server}");
    let sock = UdpSocket::bind(("0.0.0.0", 0)).map_err(Error::io(what.clone()))?;
    sock.connect(server).map_err(Error::io(what.clone()))?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(Error::io(what.clone()))?;
    sock.send(bytes).map_err(Error::io(what.clone()))?;
    let mut buf = vec![0u8; 4096];
    let n = sock.recv(&mut buf).map_err(Error::io(what))?;
    buf.truncate(n);
    Ok(buf)
}
