//! svcplane-dns: wires the catalog source, the view updater, the UDP/TCP servers and the
//! health/metrics server together, and implements lameduck on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;
use clap::{Parser, ValueEnum};
use prometheus_client::registry::Registry;
use svcplane_common::health::Health;
use svcplane_common::model::Kind;
use svcplane_common::{catalog, source};
use svcplane_dns::answer::{PodsMode, ResolveConfig};
use svcplane_dns::cache::{Cache, CacheConfig};
use svcplane_dns::forward::{self, ForwardConfig, ForwardMetrics, Forwarder};
use svcplane_dns::metrics::DnsMetrics;
use svcplane_dns::name::Name;
use svcplane_dns::server::{Handler, tcp, udp};
use svcplane_dns::updater;
use svcplane_dns::view::{View, ViewConfig};
use tokio_util::sync::CancellationToken;

/// Cluster DNS for Kubernetes Services (the DNS-Based Service Discovery spec, schema 1.1.0).
#[derive(Debug, Parser)]
#[command(name = "svcplane-dns", version)]
struct Args {
    /// Serve objects from Kubernetes YAML/JSON files or directories instead of the API
    /// (repeatable; watched for changes).
    #[arg(long, value_name = "PATH")]
    manifests: Vec<PathBuf>,
    /// kubeconfig for the API source (default: $KUBECONFIG, else in-cluster).
    #[arg(long, value_name = "PATH", conflicts_with = "manifests")]
    kubeconfig: Option<PathBuf>,
    /// Address for DNS over UDP and TCP.
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// Address for GET /health and /ready.
    #[arg(long, default_value = "0.0.0.0:8080")]
    health_addr: SocketAddr,
    /// Address for GET /metrics (Prometheus).
    #[arg(long, default_value = "0.0.0.0:9153")]
    metrics_addr: SocketAddr,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Upstream resolvers for other names (repeatable; default: nameservers of
    /// /etc/resolv.conf).
    #[arg(long, value_name = "ADDR:PORT")]
    upstream: Vec<SocketAddr>,
    /// Pod records `a-b-c-d.<ns>.pod.<zone>`.
    #[arg(long, value_enum, default_value = "disabled")]
    pods: Pods,
    /// TTL of cluster records, in seconds.
    #[arg(long, default_value_t = 5)]
    ttl: u32,
    /// After SIGTERM, keep answering this long while /ready fails.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    lameduck: Duration,
    /// UDP worker threads (default: one per CPU).
    #[arg(long)]
    udp_workers: Option<usize>,
    /// Close TCP connections idle this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    tcp_idle_timeout: Duration,
    /// Maximum concurrent TCP connections.
    #[arg(long, default_value_t = 1024)]
    tcp_max_connections: usize,
    /// Entries in the forwarding cache (0 disables it).
    #[arg(long, default_value_t = 10_000)]
    cache_size: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Pods {
    Disabled,
    Insecure,
    Verified,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("bad duration {text:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration {text:?} (use ms, s or m)")),
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
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
    serve(&args, handler, metrics, &health, serving.clone()).await?;
    tracing::info!(listen = %args.listen, "svcplane-dns serving");

    wait_for_signal().await;
    // Lameduck: fail readiness so endpoints drop us, keep answering meanwhile.
    tracing::info!(lameduck = ?args.lameduck, "terminating: lameduck");
    health.set_ready(false);
    tokio::time::sleep(args.lameduck).await;
    serving.cancel();
    shutdown.cancel();
    Ok(())
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
    if !args.manifests.is_empty() {
        for path in &args.manifests {
            if !path.exists() {
                bail!("--manifests {}: no such file or directory", path.display());
            }
        }
        let paths = args.manifests.clone();
        tokio::spawn(async move {
            if let Err(e) = source::manifests::run(paths, tx, shutdown).await {
                tracing::error!(error = %e, "manifests source stopped");
            }
        });
        return Ok(());
    }
    let client = source::kube::client(args.kubeconfig.as_deref()).await?;
    tokio::spawn(source::kube::run(client, kinds, tx, shutdown));
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
    let upstreams: Vec<SocketAddr> = upstreams.into_iter().filter(|u| *u != args.listen).collect();
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

async fn serve(
    args: &Args,
    handler: Arc<Handler>,
    metrics: DnsMetrics,
    health: &Health,
    shutdown: CancellationToken,
) -> Result<()> {
    let workers = args.udp_workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    });
    let sockets = udp::bind(args.listen, workers)
        .with_context(|| format!("--listen {}: binding UDP", args.listen))?;
    udp::spawn(sockets, handler.clone(), metrics.clone(), tokio::runtime::Handle::current(), shutdown.clone())
        .context("starting UDP workers")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: binding TCP", args.listen))?;
    let config = tcp::TcpConfig {
        idle_timeout: args.tcp_idle_timeout,
        max_connections: args.tcp_max_connections,
    };
    tokio::spawn(tcp::serve(listener, handler, metrics, config, shutdown.clone()));
    for (flag, addr) in [("--health-addr", args.health_addr), ("--metrics-addr", args.metrics_addr)] {
        if flag == "--metrics-addr" && addr == args.health_addr {
            continue;
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("{flag} {addr}: binding"))?;
        let (health, shutdown) = (health.clone(), shutdown.clone());
        tokio::spawn(async move { health.serve(listener, shutdown).await });
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
