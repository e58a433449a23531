//! Wiring of svcplane-dns: the catalog source, the view updater, the UDP/TCP servers and the
//! health/metrics server, started from [`Args`] and stopped through [`Running`].
//!
//! The binary's `main` only parses flags, calls [`start`] and handles signals; tests call
//! [`start`] directly with `--listen 127.0.0.1:0` and read the bound addresses back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use clap::{Parser, ValueEnum};
use prometheus_client::registry::Registry;
use svcplane_common::health::Health;
use svcplane_common::model::Kind;
use svcplane_common::{catalog, source};
use tokio_util::sync::CancellationToken;

use crate::answer::{PodsMode, ResolveConfig};
use crate::cache::{Cache, CacheConfig};
use crate::forward::{self, ForwardConfig, ForwardMetrics, Forwarder};
use crate::metrics::DnsMetrics;
use crate::name::Name;
use crate::server::{Handler, tcp, udp};
use crate::updater;
use crate::view::{View, ViewConfig};

/// Cluster DNS for Kubernetes Services (the DNS-Based Service Discovery spec, schema 1.1.0).
#[derive(Debug, Parser)]
#[command(name = "svcplane-dns", version)]
pub struct Args {
    /// Serve objects from Kubernetes YAML/JSON files or directories instead of the API
    /// (repeatable; watched for changes).
    #[arg(long, value_name = "PATH")]
    pub manifests: Vec<PathBuf>,
    /// kubeconfig for the API source (default: $KUBECONFIG, else in-cluster).
    #[arg(long, value_name = "PATH", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// Address for DNS over UDP and TCP.
    #[arg(long, default_value = "0.0.0.0:53")]
    pub listen: SocketAddr,
    /// Address for GET /health and /ready.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub health_addr: SocketAddr,
    /// Address for GET /metrics (Prometheus).
    #[arg(long, default_value = "0.0.0.0:9153")]
    pub metrics_addr: SocketAddr,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Upstream resolvers for other names (repeatable; default: nameservers of
    /// /etc/resolv.conf).
    #[arg(long, value_name = "ADDR:PORT")]
    pub upstream: Vec<SocketAddr>,
    /// Pod records `a-b-c-d.<ns>.pod.<zone>`.
    #[arg(long, value_enum, default_value = "disabled")]
    pub pods: Pods,
    /// TTL of cluster records, in seconds.
    #[arg(long, default_value_t = 5)]
    pub ttl: u32,
    /// After SIGTERM, keep answering this long while /ready fails.
    #[arg(long, default_value = "5s", value_parser = svcplane_common::config::parse_duration)]
    pub lameduck: Duration,
    /// UDP worker threads (default: one per CPU).
    #[arg(long)]
    pub udp_workers: Option<usize>,
    /// Close TCP connections idle this long.
    #[arg(long, default_value = "10s", value_parser = svcplane_common::config::parse_duration)]
    pub tcp_idle_timeout: Duration,
    /// Maximum concurrent TCP connections.
    #[arg(long, default_value_t = 1024)]
    pub tcp_max_connections: usize,
    /// Entries in the forwarding cache (0 disables it).
    #[arg(long, default_value_t = 10_000)]
    pub cache_size: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Pods {
    Disabled,
    Insecure,
    Verified,
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// The DNS address actually bound (UDP and TCP).
    pub dns_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub health: Health,
    /// Stops serving (queries, health) at once.
    pub serving: CancellationToken,
    /// Stops the source and the updater.
    pub shutdown: CancellationToken,
}

impl Running {
    /// Lameduck (RFC-less but CoreDNS's `health { lameduck }`): fail readiness, keep answering
    /// for `lameduck`, then stop everything.
    pub async fn terminate(self, lameduck: Duration) {
        self.health.set_ready(false);
        tokio::time::sleep(lameduck).await;
        self.stop();
    }

    pub fn stop(&self) {
        self.serving.cancel();
        self.shutdown.cancel();
    }
}

/// Starts svcplane-dns on the current tokio runtime.
pub async fn start(args: Args) -> Result<Running> {
    let zone = Name::from_dotted(&args.cluster_domain)
        .with_context(|| format!("--cluster-domain {:?}", args.cluster_domain))?;
    let shutdown = CancellationToken::new();
    let (catalog, publisher) = catalog::new();
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(catalog::run(rx, publisher));
    start_source(&args, tx, shutdown.clone()).await?;

    let mut registry = Registry::default();
    let metrics = DnsMetrics::default();
    metrics.register(&mut registry);
    let forwarder = build_forwarder(&args, &mut registry)?;
    let health = Health::new(registry);

    let view = Arc::new(ArcSwap::from_pointee(View::default()));
    let ready = health.clone();
    tokio::spawn(updater::run(
        catalog,
        ViewConfig { zone: zone.clone() },
        view.clone(),
        metrics.clone(),
        shutdown.clone(),
        move || ready.set_ready(true),
    ));
    let resolve = ResolveConfig {
        zone,
        ttl: args.ttl,
        pods: match args.pods {
            Pods::Disabled => PodsMode::Disabled,
            Pods::Insecure => PodsMode::Insecure,
            Pods::Verified => PodsMode::Verified,
        },
    };
    let handler = Arc::new(Handler {
        view,
        resolve,
        forwarder,
    });
    let serving = CancellationToken::new();
    let served = serve(&args, handler, metrics, &health, serving.clone()).await;
    let (dns_addr, health_addr, metrics_addr) = match served {
        Ok(addrs) => addrs,
        Err(e) => {
            serving.cancel();
            shutdown.cancel();
            return Err(e);
        }
    };
    Ok(Running {
        dns_addr,
        health_addr,
        metrics_addr,
        health,
        serving,
        shutdown,
    })
}

async fn start_source(
    args: &Args,
    tx: source::EventSender,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut kinds = vec![Kind::Namespace, Kind::Service, Kind::EndpointSlice];
    if matches!(args.pods, Pods::Verified) {
        kinds.push(Kind::Pod);
    }
    source::start(
        &args.manifests,
        args.kubeconfig.as_deref(),
        kinds,
        tx,
        shutdown,
    )
    .await?;
    Ok(())
}

fn build_forwarder(args: &Args, registry: &mut Registry) -> Result<Option<Arc<Forwarder>>> {
    let upstreams = if args.upstream.is_empty() {
        forward::upstreams_from_resolv_conf("/etc/resolv.conf").unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no upstreams from /etc/resolv.conf; other names are refused");
            Vec::new()
        })
    } else {
        args.upstream.clone()
    };
    // Never forward to ourselves (a resolv.conf pointing at this server would loop).
    let upstreams: Vec<SocketAddr> = upstreams
        .into_iter()
        .filter(|u| *u != args.listen)
        .collect();
    if upstreams.is_empty() {
        return Ok(None);
    }
    let cache = Arc::new(Cache::new(CacheConfig {
        capacity: args.cache_size,
        ..CacheConfig::default()
    }));
    let metrics = Arc::new(ForwardMetrics::new(forward::DEFAULT_SERVER_LABEL));
    metrics.register(registry);
    let forwarder = Forwarder::new(ForwardConfig::new(upstreams), cache).with_metrics(metrics);
    Ok(Some(Arc::new(forwarder)))
}

/// Binds UDP and TCP on one port. With port 0 the kernel picks the UDP port, which TCP may
/// find taken: then both are bound again, a few times.
async fn bind_dns(
    listen: SocketAddr,
    workers: usize,
) -> Result<(Vec<std::net::UdpSocket>, tokio::net::TcpListener)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sockets = udp::bind(listen, workers)
            .with_context(|| format!("--listen {listen}: binding UDP"))?;
        let addr = sockets[0].local_addr()?;
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok((sockets, listener)),
            Err(e) if listen.port() == 0 && attempt < 16 => {
                tracing::debug!(%addr, error = %e, "TCP port taken; binding again");
            }
            Err(e) => return Err(e).with_context(|| format!("--listen {addr}: binding TCP")),
        }
    }
}

/// Binds and starts every server; returns the DNS, health and metrics addresses.
async fn serve(
    args: &Args,
    handler: Arc<Handler>,
    metrics: DnsMetrics,
    health: &Health,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, SocketAddr, SocketAddr)> {
    let workers = args
        .udp_workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let (sockets, listener) = bind_dns(args.listen, workers).await?;
    let dns_addr = sockets[0].local_addr()?;
    udp::spawn(
        sockets,
        handler.clone(),
        metrics.clone(),
        tokio::runtime::Handle::current(),
        shutdown.clone(),
    )
    .context("starting UDP workers")?;
    let config = tcp::TcpConfig {
        idle_timeout: args.tcp_idle_timeout,
        max_connections: args.tcp_max_connections,
    };
    tokio::spawn(tcp::serve(
        listener,
        handler,
        metrics,
        config,
        shutdown.clone(),
    ));
    let health_addr = health
        .bind(args.health_addr, &shutdown)
        .await
        .with_context(|| format!("--health-addr {}: binding", args.health_addr))?;
    let metrics_addr = if args.metrics_addr == args.health_addr {
        health_addr
    } else {
        health
            .bind(args.metrics_addr, &shutdown)
            .await
            .with_context(|| format!("--metrics-addr {}: binding", args.metrics_addr))?
    };
    Ok((dns_addr, health_addr, metrics_addr))
}
