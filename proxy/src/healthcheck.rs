//! Per-Service health-check servers for `externalTrafficPolicy: Local`, as kube-proxy runs them.
//!
//! A load balancer probes every node on the Service's `healthCheckNodePort` and sends traffic
//! only to nodes that answer 200, i.e. nodes with local endpoints. [`HealthServers`] keeps one
//! small HTTP server per such port on the node's addresses: any method on any path answers with
//! the Service's name and local-endpoint count as JSON (kube-proxy's exact body and headers), 200
//! when the count is positive and the proxy is healthy, 503 otherwise. [`HealthServers::sync`]
//! brings the set of servers to the desired one: new ports are bound, removed ports are closed
//! (their listener is gone when `sync` returns), and kept ports get their counts updated in
//! place, without a restart. A port that cannot be bound is reported and retried at the next
//! sync; the others are unaffected. The node's own `/healthz` and `/livez` are
//! `svcplane_common::health`'s.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How long a removed server may take to finish its in-flight requests before it is aborted.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Errors of the health-check servers.
#[derive(Debug, thiserror::Error)]
pub enum HealthCheckError {
    /// A server's address could not be bound; the port is retried at the next sync.
    #[error("health check for {service} on {addr}: {source}")]
    Bind {
        service: String,
        addr: SocketAddr,
        source: io::Error,
    },
    /// Port 0 was asked for (a Service without a healthCheckNodePort).
    #[error("health check for {service}: port 0")]
    ZeroPort { service: String },
}

/// What one health-check port reports: the Service and its ready endpoints on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealth {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

impl ServiceHealth {
    pub fn new(namespace: &str, name: &str, local_endpoints: usize) -> Self {
        ServiceHealth {
            namespace: namespace.to_string(),
            name: name.to_string(),
            local_endpoints,
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The running health-check servers, one per port, each on every bind address.
#[derive(Debug)]
pub struct HealthServers {
    /// Addresses each port is served on; empty means every address of both families.
    bind: Vec<IpAddr>,
    /// Bind port 0 instead of the asked port (tests learn the ports from `local_addrs`).
    ephemeral: bool,
    proxy_healthy: Arc<AtomicBool>,
    servers: HashMap<u16, Instance>,
}

/// One port's servers and the state they answer from.
#[derive(Debug)]
struct Instance {
    state: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    _stop: DropGuard,
}

/// What a port's handler reads on every request.
#[derive(Debug)]
struct Shared {
    health: ArcSwap<ServiceHealth>,
    proxy_healthy: Arc<AtomicBool>,
}

impl Default for HealthServers {
    fn default() -> Self {
        HealthServers::new(Vec::new())
    }
}

impl HealthServers {
    /// Servers bound on `bind` (kube-proxy's node-port addresses); empty for every address of
    /// both families (one dual-stack socket, or IPv4 only where IPv6 is unavailable).
    pub fn new(bind: Vec<IpAddr>) -> Self {
        HealthServers {
            bind,
            ephemeral: false,
            proxy_healthy: Arc::new(AtomicBool::new(true)),
            servers: HashMap::new(),
        }
    }

    /// For tests: every server binds port 0 instead of its port (still the key of `sync` and
    /// [`HealthServers::local_addrs`]), so tests never collide on ports.
    pub fn ephemeral_ports(mut self) -> Self {
        self.ephemeral = true;
        self
    }

    /// Sets the proxy's own health (`serviceProxyHealthy`); while unhealthy, every port answers
    /// 503 so load balancers avoid the node.
    pub fn set_proxy_healthy(&self, healthy: bool) {
        self.proxy_healthy.store(healthy, Ordering::Release);
    }

    /// The addresses the server for `port` listens on (empty if it is not running).
    pub fn local_addrs(&self, port: u16) -> Vec<SocketAddr> {
        self.servers
            .get(&port)
            .map(|i| i.addrs.clone())
            .unwrap_or_default()
    }

    /// The ports whose servers are running.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.servers.keys().copied()
    }

    /// Brings the servers to `desired` (health-check port → what it reports): closes removed
    /// ports (their listeners are closed on return), updates kept ones in place, binds new ones.
    /// Returns (and logs) the ports that could not be bound; the others are unaffected.
    pub async fn sync(&mut self, desired: HashMap<u16, ServiceHealth>) -> Vec<HealthCheckError> {
        self.stop_removed(&desired).await;
        let mut errors = Vec::new();
        for (port, health) in desired {
            match self.servers.get(&port) {
                Some(instance) => update(instance, health),
                None => match self.start(port, health) {
                    Ok(instance) => {
                        self.servers.insert(port, instance);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, port, "health check server not started");
                        errors.push(e);
                    }
                },
            }
        }
        errors
    }

    /// Stops the servers of ports absent from `desired` and waits for them to finish.
    async fn stop_removed(&mut self, desired: &HashMap<u16, ServiceHealth>) {
        let removed: Vec<u16> = self
            .ports()
            .filter(|port| !desired.contains_key(port))
            .collect();
        let stopping = removed
            .into_iter()
            .filter_map(|port| self.servers.remove(&port))
            .map(stop);
        futures::future::join_all(stopping).await;
    }

    /// Binds every address for `port`, then serves them; nothing runs if one bind fails.
    fn start(&self, port: u16, health: ServiceHealth) -> Result<Instance, HealthCheckError> {
        let service = health.key();
        if port == 0 && !self.ephemeral {
            return Err(HealthCheckError::ZeroPort { service });
        }
        let listeners = self.bind_all(if self.ephemeral { 0 } else { port }, &service)?;
        let addrs = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        tracing::info!(%service, port, ?addrs, "health check server started");
        let state = Arc::new(Shared {
            health: ArcSwap::from_pointee(health),
            proxy_healthy: self.proxy_healthy.clone(),
        });
        let stop = CancellationToken::new();
        let tasks = listeners
            .into_iter()
            .map(|l| tokio::spawn(serve(l, state.clone(), stop.clone())))
            .collect();
        Ok(Instance {
            state,
            addrs,
            tasks,
            _stop: stop.drop_guard(),
        })
    }

    /// One listener per bind address (one dual-stack one for the default).
    fn bind_all(&self, port: u16, service: &str) -> Result<Vec<TcpListener>, HealthCheckError> {
        let bind_err = |addr, source| HealthCheckError::Bind {
            service: service.to_string(),
            addr,
            source,
        };
        if self.bind.is_empty() {
            return bind_any(port)
                .map(|l| vec![l])
                .map_err(|(addr, e)| bind_err(addr, e));
        }
        self.bind
            .iter()
            .map(|ip| {
                let addr = SocketAddr::new(*ip, port);
                listen(addr, true).map_err(|e| bind_err(addr, e))
            })
            .collect()
    }
}

/// Replaces what a running port reports (the name too, should another Service take the port).
fn update(instance: &Instance, health: ServiceHealth) {
    if **instance.state.health.load() != health {
        tracing::debug!(service = %health.key(), count = health.local_endpoints, "health check updated");
        instance.state.health.store(Arc::new(health));
    }
}

/// Signals a port's servers to stop and waits (at most [`STOP_GRACE`]) for them to finish.
async fn stop(instance: Instance) {
    let Instance {
        state,
        tasks,
        _stop,
        ..
    } = instance;
    drop(_stop);
    tracing::info!(service = %state.health.load().key(), "health check server stopped");
    for mut task in tasks {
        if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// `[::]` (dual-stack), or `0.0.0.0` where IPv6 sockets cannot be had.
fn bind_any(port: u16) -> Result<TcpListener, (SocketAddr, io::Error)> {
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    match listen(v6, false) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err((v6, e)),
        Err(e) => {
            tracing::debug!(error = %e, "no dual-stack socket; health checks on IPv4 only");
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            listen(v4, false).map_err(|e| (v4, e))
        }
    }
}

/// A non-blocking listener on `addr` with `SO_REUSEADDR` (a closed port can be bound again at
/// once); IPv6 sockets are `IPV6_V6ONLY` when `v6_only`.
fn listen(addr: SocketAddr, v6_only: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(v6_only)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Serves one listener until `stop` is cancelled; the listener is closed at once on stop.
async fn serve(listener: TcpListener, state: Arc<Shared>, stop: CancellationToken) {
    let addr = listener.local_addr().ok();
    let app = Router::new().fallback(answer).with_state(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, ?addr, "health check server failed");
    }
}

/// kube-proxy's body: `{"service":{"namespace","name"},"localEndpoints","serviceProxyHealthy"}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    service: Name<'a>,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

#[derive(Serialize)]
struct Name<'a> {
    namespace: &'a str,
    name: &'a str,
}

/// Any method, any path: the Service's local endpoint count; 200 iff it is positive and the
/// proxy is healthy.
async fn answer(State(state): State<Arc<Shared>>) -> Response {
    let health = state.health.load();
    let healthy = state.proxy_healthy.load(Ordering::Acquire);
    let status = if health.local_endpoints > 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Body {
        service: Name {
            namespace: &health.namespace,
            name: &health.name,
        },
        local_endpoints: health.local_endpoints,
        service_proxy_healthy: healthy,
    };
    match render(&body) {
        Ok(json) => (
            status,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            json,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// JSON indented with tabs, no trailing newline: byte for byte what kube-proxy writes.
fn render(body: &Body<'_>) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(128);
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    body.serialize(&mut serializer)?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    use super::*;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A response as seen on the wire.
    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: HashMap<String, String>,
        body: String,
    }

    /// A keep-alive HTTP/1.1 connection.
    struct Client {
        stream: BufReader<TcpStream>,
    }

    impl Client {
        async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
            let stream = TcpStream::connect(addr).await?;
            Ok(Client {
                stream: BufReader::new(stream),
            })
        }

        async fn request(&mut self, method: &str, path: &str) -> Reply {
            let req =
                format!("{method} {path} HTTP/1.1\r\nHost: node\r\nContent-Length: 0\r\n\r\n");
            self.stream
                .get_mut()
                .write_all(req.as_bytes())
                .await
                .unwrap();
            let status_line = self.line().await;
            let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
            let mut headers = HashMap::new();
            loop {
                let line = self.line().await;
                if line.is_empty() {
                    break;
                }
                let (k, v) = line.split_once(':').unwrap();
                headers.insert(k.to_ascii_lowercase(), v.trim().to_string());
            }
            let len: usize = headers["content-length"].parse().unwrap();
            let mut body = vec![0; len];
            self.stream.read_exact(&mut body).await.unwrap();
            let body = String::from_utf8(body).unwrap();
            Reply {
                status,
                headers,
                body,
            }
        }

        async fn line(&mut self) -> String {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.unwrap();
            line.trim_end().to_string()
        }
    }

    async fn get(addr: SocketAddr) -> Reply {
        Client::connect(addr)
            .await
            .unwrap()
            .request("GET", "/")
            .await
    }

    fn desired(entries: &[(u16, &str, &str, usize)]) -> HashMap<u16, ServiceHealth> {
        entries
            .iter()
            .map(|&(port, ns, name, n)| (port, ServiceHealth::new(ns, name, n)))
            .collect()
    }

    /// Servers on 127.0.0.1, each on a port of the kernel's choosing.
    fn local() -> HealthServers {
        HealthServers::new(vec![LOCALHOST]).ephemeral_ports()
    }

    fn addr(servers: &HealthServers, port: u16) -> SocketAddr {
        let addrs = servers.local_addrs(port);
        assert_eq!(addrs.len(), 1, "{addrs:?}");
        addrs[0]
    }

    /// A port that was free a moment ago (for tests that need a real port number).
    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn answers_like_kube_proxy_with_local_endpoints() {
        let mut servers = local();
        let errors = servers.sync(desired(&[(30000, "ns", "svc", 2)])).await;
        assert!(errors.is_empty(), "{errors:?}");
        let mut client = Client::connect(addr(&servers, 30000)).await.unwrap();
        let reply = client.request("GET", "/any/path?x=1").await;
        assert_eq!(reply.status, 200);
        let want = "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"svc\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}";
        assert_eq!(reply.body, want);
        assert_eq!(reply.headers["content-type"], "application/json");
        assert_eq!(reply.headers["x-content-type-options"], "nosniff");
        let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(json["service"]["name"], "svc");
        let reply = client.request("POST", "/healthz").await;
        assert_eq!(reply.status, 200);
    }

    #[tokio::test]
    async fn no_local_endpoints_answers_503() {
        let mut servers = local();
        let errors = servers.sync(desired(&[(30000, "ns", "svc", 0)])).await;
        assert!(errors.is_empty(), "{errors:?}");
        let reply = get(addr(&servers, 30000)).await;
        assert_eq!(reply.status, 503);
        assert!(
            reply.body.contains("\"localEndpoints\": 0"),
            "{}",
            reply.body
        );
        assert_eq!(reply.headers["content-type"], "application/json");
    }

    #[tokio::test]
    async fn counts_update_in_place_without_restart() {
        let mut servers = local();
        let errors = servers.sync(desired(&[(30000, "ns", "svc", 1)])).await;
        assert!(errors.is_empty(), "{errors:?}");
        let before = addr(&servers, 30000);
        // One connection across the updates: the server was never restarted.
        let mut client = Client::connect(before).await.unwrap();
        assert_eq!(client.request("GET", "/").await.status, 200);

        let errors = servers.sync(desired(&[(30000, "ns", "svc", 0)])).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(addr(&servers, 30000), before);
        let reply = client.request("GET", "/").await;
        assert_eq!(reply.status, 503);
        assert!(
            reply.body.contains("\"localEndpoints\": 0"),
            "{}",
            reply.body
        );

        let errors = servers.sync(desired(&[(30000, "ns", "svc", 3)])).await;
        assert!(errors.is_empty(), "{errors:?}");
        let reply = client.request("GET", "/").await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.body.contains("\"localEndpoints\": 3"),
            "{}",
            reply.body
        );
    }

    #[tokio::test]
    async fn removed_server_refuses_connections_and_the_port_can_return() {
        let port = free_port();
        let mut servers = HealthServers::new(vec![LOCALHOST]);
        let errors = servers.sync(desired(&[(port, "ns", "svc", 1)])).await;
        assert!(errors.is_empty(), "{errors:?}");
        let at = SocketAddr::new(LOCALHOST, port);
        // An idle keep-alive connection must not hold the server open.
        let mut idle = Client::connect(at).await.unwrap();
        assert_eq!(idle.request("GET", "/").await.status, 200);

        let errors = servers.sync(HashMap::new()).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert!(servers.local_addrs(port).is_empty());
        let refused = TcpStream::connect(at).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

        let errors = servers.sync(desired(&[(port, "ns", "svc", 1)])).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(get(at).await.status, 200);
    }

    #[tokio::test]
    async fn two_services_are_independent() {
        let mut servers = local();
        let both = desired(&[(30001, "a", "one", 1), (30002, "b", "two", 0)]);
        let errors = servers.sync(both).await;
        assert!(errors.is_empty(), "{errors:?}");
        let (one, two) = (addr(&servers, 30001), addr(&servers, 30002));
        assert_ne!(one, two);
        let reply = get(one).await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.body.contains("\"namespace\": \"a\""),
            "{}",
            reply.body
        );
        let reply = get(two).await;
        assert_eq!(reply.status, 503);
        assert!(reply.body.contains("\"name\": \"two\""), "{}", reply.body);

        let errors = servers.sync(desired(&[(30002, "b", "two", 4)])).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert!(TcpStream::connect(one).await.is_err());
        assert_eq!(addr(&servers, 30002), two);
        assert_eq!(get(two).await.status, 200);
    }

    /// A listener on a port below the ephemeral range (and below the fixed 30000s other tests
    /// use), so that once it is dropped no parallel test's `bind(0)` can take the port before
    /// the health server binds it again.
    fn listener_outside_ephemeral_range() -> std::net::TcpListener {
        let start = 20_000 + (std::process::id() % 5_000) as u16;
        (start..30_000)
            .find_map(|port| std::net::TcpListener::bind((LOCALHOST, port)).ok())
            .expect("a free port in 20000-29999")
    }

    #[tokio::test]
    async fn bind_failure_is_reported_and_others_start() {
        let taken = listener_outside_ephemeral_range();
        let busy = taken.local_addr().unwrap().port();
        let free = free_port();
        let mut servers = HealthServers::new(vec![LOCALHOST]);
        let want = desired(&[(busy, "ns", "busy", 1), (free, "ns", "free", 1)]);
        let errors = servers.sync(want.clone()).await;
        match errors.as_slice() {
            [HealthCheckError::Bind { service, addr, .. }] => {
                assert_eq!(service, "ns/busy");
                assert_eq!(addr.port(), busy);
            }
            other => panic!("{other:?}"),
        }
        assert!(servers.local_addrs(busy).is_empty());
        assert_eq!(get(SocketAddr::new(LOCALHOST, free)).await.status, 200);

        // Retried at the next sync once the port is free.
        drop(taken);
        let errors = servers.sync(want).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(get(SocketAddr::new(LOCALHOST, busy)).await.status, 200);
    }

    #[tokio::test]
    async fn port_zero_is_refused() {
        let mut servers = HealthServers::new(vec![LOCALHOST]);
        let errors = servers.sync(desired(&[(0, "ns", "svc", 1)])).await;
        assert!(
            matches!(errors.as_slice(), [HealthCheckError::ZeroPort { .. }]),
            "{errors:?}"
        );
    }

    #[tokio::test]
    async fn unhealthy_proxy_answers_503() {
        let mut servers = local();
        let errors = servers.sync(desired(&[(30000, "ns", "svc", 5)])).await;
        assert!(errors.is_empty(), "{errors:?}");
        servers.set_proxy_healthy(false);
        let reply = get(addr(&servers, 30000)).await;
        assert_eq!(reply.status, 503);
        assert!(
            reply.body.contains("\"serviceProxyHealthy\": false"),
            "{}",
            reply.body
        );
        servers.set_proxy_healthy(true);
        assert_eq!(get(addr(&servers, 30000)).await.status, 200);
    }

    #[tokio::test]
    async fn default_bind_serves_both_families() {
        let mut servers = HealthServers::default().ephemeral_ports();
        let errors = servers.sync(desired(&[(30000, "ns", "svc", 1)])).await;
        assert!(errors.is_empty(), "{errors:?}");
        let port = addr(&servers, 30000).port();
        assert_eq!(get(SocketAddr::new(LOCALHOST, port)).await.status, 200);
        let v6 = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), port);
        assert_eq!(get(v6).await.status, 200);
    }

    #[tokio::test]
    async fn dropping_the_servers_closes_the_ports() {
        let mut servers = local();
        let errors = servers.sync(desired(&[(30000, "ns", "svc", 1)])).await;
        assert!(errors.is_empty(), "{errors:?}");
        let at = addr(&servers, 30000);
        drop(servers);
        let closed = async {
            while TcpStream::connect(at).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .unwrap();
    }
}
