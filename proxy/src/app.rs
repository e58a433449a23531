//! Wiring of svcplane-proxy: flags, the catalog source, the sync engine of the chosen backend
//! (nftables or iptables; the other backend's rules are removed after the first sync), the
//! health-check servers and the health/metrics server; plus the `render` and `cleanup`
//! subcommands.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use prometheus_client::registry::Registry;
use svcplane_common::catalog::{self, Catalog};
use svcplane_common::config::{parse_duration, parse_prefix};
use svcplane_common::health::Health;
use svcplane_common::model::{Family, IpPrefix, Kind, ObjectKey};
use svcplane_common::source;
use tokio_util::sync::CancellationToken;

use crate::desired::{NodePortAddresses, ProxyConfig};
use crate::endpoints::NodeInfo;
use crate::executor::Nft;
use crate::healthcheck::{HealthServers, ServiceHealth};
use crate::iptables::engine::IptablesSyncer;
use crate::iptables::exec::Iptables;
use crate::plan::Programmed;
use crate::ruleset::NftFamily;
use crate::sync::{self, Engine, SyncMetrics, Syncer};

/// A Kubernetes service proxy programming nftables with kube-proxy's semantics.
#[derive(Debug, Parser)]
#[command(name = "svcplane-proxy", version)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Serve objects from Kubernetes YAML/JSON files or directories instead of the API.
    #[arg(long, value_name = "PATH", global = true)]
    pub manifests: Vec<PathBuf>,
    /// kubeconfig for the API source (default: $KUBECONFIG, else in-cluster).
    #[arg(long, value_name = "PATH", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (endpoint locality, topology); default: the hostname.
    #[arg(long, global = true)]
    pub node_name: Option<String>,
    /// Pod CIDRs: traffic from them to a ClusterIP is not masqueraded.
    #[arg(long, value_parser = parse_prefix, value_delimiter = ',', global = true)]
    pub cluster_cidr: Vec<IpPrefix>,
    /// Service CIDRs: unallocated addresses in them are dropped.
    #[arg(long, value_parser = parse_prefix, value_delimiter = ',', global = true)]
    pub service_cidr: Vec<IpPrefix>,
    /// Addresses accepting NodePorts: `primary` (the node's IPs), `all`, or CIDRs separated by
    /// commas.
    #[arg(long, default_value = "primary", global = true)]
    pub nodeport_addresses: String,
    /// Masquerade all traffic sent to ClusterIPs.
    #[arg(long, global = true)]
    pub masquerade_all: bool,
    /// At most one sync per period.
    #[arg(long, default_value = "1s", value_parser = parse_duration, global = true)]
    pub min_sync_period: Duration,
    /// How often the kernel's tables are checked against what was programmed.
    #[arg(long, default_value = "60s", value_parser = parse_duration, global = true)]
    pub verify_period: Duration,
    /// GET /healthz, /livez (200 once the first sync is programmed).
    #[arg(long, default_value = "0.0.0.0:10256", global = true)]
    pub health_addr: SocketAddr,
    /// GET /metrics.
    #[arg(long, default_value = "127.0.0.1:10249", global = true)]
    pub metrics_addr: SocketAddr,
    /// Handle only Services labelled `service.kubernetes.io/service-proxy-name=<NAME>` (to run
    /// beside another proxy that handles the unlabelled ones).
    #[arg(long, global = true)]
    pub service_proxy_name: Option<String>,
    /// The packet-filter backend: `nftables` (table `svcplane`) or `iptables` (`SVCPLANE-`
    /// chains, via iptables-restore).
    #[arg(long, value_enum, default_value = "nftables", global = true)]
    pub backend: Backend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Nftables,
    Iptables,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the ruleset that would be programmed for the catalog (no root needed): the nft
    /// script, or with `--backend iptables` the iptables-restore input of each family.
    Render,
    /// Remove everything svcplane-proxy programmed (with either backend).
    Cleanup,
}

impl Args {
    /// The node-wide settings the flags describe.
    pub fn proxy_config(&self) -> Result<ProxyConfig> {
        let name = match &self.node_name {
            Some(n) => n.clone(),
            None => hostname(),
        };
        let nodeport_addresses = match self.nodeport_addresses.as_str() {
            "primary" => NodePortAddresses::Primary,
            "all" => NodePortAddresses::All,
            list => NodePortAddresses::Prefixes(
                list.split(',')
                    .map(|p| parse_prefix(p.trim()))
                    .collect::<Result<_, _>>()
                    .map_err(anyhow::Error::msg)
                    .context("--nodeport-addresses")?,
            ),
        };
        Ok(ProxyConfig {
            node: NodeInfo::new(&name, None),
            cluster_cidrs: self.cluster_cidr.clone(),
            service_cidrs: self.service_cidr.clone(),
            nodeport_addresses,
            masquerade_all: self.masquerade_all,
            proxy_name: self.service_proxy_name.clone(),
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The kinds the proxy watches.
const KINDS: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

async fn start_catalog(args: &Args, shutdown: &CancellationToken) -> Result<Catalog> {
    let (catalog, publisher) = catalog::new();
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(catalog::run(rx, publisher));
    source::start(
        &args.manifests,
        args.kubeconfig.as_deref(),
        KINDS.to_vec(),
        tx,
        shutdown.clone(),
    )
    .await?;
    Ok(catalog)
}

/// `render`: the full scripts for the catalog once it is synced.
pub async fn render(args: &Args) -> Result<String> {
    let (config, snapshot) = synced_catalog(args).await?;
    Ok(match args.backend {
        Backend::Nftables => render_nft(&config, &snapshot),
        Backend::Iptables => render_iptables(&config, &snapshot),
    })
}

/// The resolved settings and the first complete catalog.
async fn synced_catalog(args: &Args) -> Result<(ProxyConfig, std::sync::Arc<catalog::Snapshot>)> {
    let config = args.proxy_config()?;
    let shutdown = CancellationToken::new();
    let catalog = start_catalog(args, &shutdown).await?;
    let mut generations = catalog.subscribe();
    let snapshot = loop {
        let s = catalog.load();
        if s.synced {
            break s;
        }
        tokio::time::timeout(Duration::from_secs(30), generations.changed())
            .await
            .context("waiting for the catalog to sync")??;
    };
    shutdown.cancel();
    Ok((config.resolve(&snapshot), snapshot))
}

fn render_nft(config: &ProxyConfig, snapshot: &catalog::Snapshot) -> String {
    let mut out = String::new();
    for f in [NftFamily::Ip, NftFamily::Ip6] {
        let base = crate::desired::base_table(config, f);
        let contributions = snapshot
            .services
            .iter()
            .map(|(key, service)| {
                let eps = snapshot.endpoints.get(key).map(|e| &e[..]).unwrap_or(&[]);
                let c = crate::desired::service::contribution(service, eps, config, f);
                (key.clone(), std::sync::Arc::new(c))
            })
            .collect();
        out.push_str(&Programmed::full(base, contributions).1);
    }
    out
}

/// Each family's iptables-restore input for a kernel without svcplane's rules, after a
/// `# iptables-restore` or `# ip6tables-restore` line.
fn render_iptables(config: &ProxyConfig, snapshot: &catalog::Snapshot) -> String {
    let mut out = String::new();
    for family in [Family::V4, Family::V6] {
        let programmed = crate::iptables::engine::render_all(config, snapshot, family);
        let (_, restore, _) = crate::iptables::tools(family);
        out.push_str(&format!("# {restore}\n"));
        out.push_str(&programmed.full_input(&Default::default()));
    }
    out
}

/// `cleanup`: delete svcplane's nftables tables and iptables chains. A backend whose tool is
/// not installed has nothing to delete.
pub async fn cleanup() -> Result<()> {
    delete_nft_tables().await?;
    crate::iptables::exec::cleanup_all()
        .await
        .context("deleting svcplane's iptables chains")
}

/// Deletes the nftables backend's tables; without `nft` there are none.
async fn delete_nft_tables() -> Result<()> {
    match Nft::default().delete_tables().await {
        Err(crate::executor::ExecError::Spawn { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        other => other.context("deleting svcplane's nftables tables"),
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    pub health_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub health: Health,
    pub shutdown: CancellationToken,
}

/// Starts the proxy on the current runtime.
pub async fn start(args: Args) -> Result<Running> {
    let config = args.proxy_config()?;
    let shutdown = CancellationToken::new();
    let catalog = start_catalog(&args, &shutdown).await?;
    let mut registry = Registry::default();
    let metrics = SyncMetrics::default();
    metrics.register(&mut registry);
    let health = Health::new(registry);
    health.set_live(false);
    let programmed = health.clone();
    let mut hc = HealthServers::new(vec![]);
    let (hc_tx, mut hc_rx) = tokio::sync::watch::channel(HashMap::new());
    tokio::spawn(async move {
        while hc_rx.changed().await.is_ok() {
            let desired = hc_rx.borrow_and_update().clone();
            for e in hc.sync(desired).await {
                tracing::warn!(error = %e, "health-check server");
            }
        }
    });
    let on_programmed = move |checks: HashMap<u16, (ObjectKey, usize)>| {
        programmed.set_live(true);
        programmed.set_ready(true);
        let desired: HashMap<u16, ServiceHealth> = checks
            .into_iter()
            .map(|(port, (key, n))| (port, ServiceHealth::new(&key.namespace, &key.name, n)))
            .collect();
        let _ = hc_tx.send(desired);
    };
    let periods = (args.min_sync_period, args.verify_period);
    match args.backend {
        Backend::Nftables => {
            let families = vec![NftFamily::Ip, NftFamily::Ip6];
            let engine = Syncer::new(config, families, Nft::default(), metrics);
            let other = Box::pin(async {
                crate::iptables::exec::cleanup_all()
                    .await
                    .context("removing the iptables backend's rules")
            });
            spawn_engine(catalog, engine, periods, &shutdown, other, on_programmed);
        }
        Backend::Iptables => {
            let runners = vec![Iptables::new(Family::V4), Iptables::new(Family::V6)];
            let engine = IptablesSyncer::new(config, runners, metrics);
            let other = Box::pin(delete_nft_tables());
            spawn_engine(catalog, engine, periods, &shutdown, other, on_programmed);
        }
    }
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
    Ok(Running {
        health_addr,
        metrics_addr,
        health,
        shutdown,
    })
}

/// A cleanup to run once, after the first successful sync.
type OtherBackend = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

/// Runs `engine` until `shutdown`, calling `on_programmed` with its health checks after every
/// sync; after the first, removes the other backend's rules (`other`): switching backends never
/// leaves a node without rules, nor with two sets for long.
fn spawn_engine<E: Engine + 'static>(
    catalog: Catalog,
    engine: E,
    (min_period, verify_period): (Duration, Duration),
    shutdown: &CancellationToken,
    other: OtherBackend,
    mut on_programmed: impl FnMut(HashMap<u16, (ObjectKey, usize)>) + Send + 'static,
) {
    let mut other = Some(other);
    let callback = move |e: &E| {
        on_programmed(e.health_checks());
        if let Some(cleanup) = other.take() {
            tokio::spawn(async move {
                match cleanup.await {
                    Ok(()) => {}
                    Err(e) => tracing::warn!(
                        error = format!("{e:#}"),
                        "removing the other backend's rules"
                    ),
                }
            });
        }
    };
    let shutdown = shutdown.clone();
    tokio::spawn(sync::run(
        catalog,
        engine,
        min_period,
        verify_period,
        shutdown,
        callback,
    ));
}

/// The whole program: flags from the command line, logs to stderr, runs until SIGTERM.
pub fn main() -> Result<()> {
    svcplane_common::process::init_tracing();
    let args = Args::parse();
    let runtime = svcplane_common::process::runtime().context("starting the async runtime")?;
    runtime.block_on(async {
        match args.command {
            Some(Command::Render) => {
                print!("{}", render(&args).await?);
                Ok(())
            }
            Some(Command::Cleanup) => cleanup().await,
            None => {
                let running = start(args).await?;
                tracing::info!(health = %running.health_addr, metrics = %running.metrics_addr, "svcplane-proxy running");
                svcplane_common::process::wait_for_signal().await;
                running.shutdown.cancel();
                Ok(())
            }
        }
    })
}
