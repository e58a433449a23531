//! svcplane-bench-proxy: measures svcplane-proxy's real code path at scale, in-process.
//!
//! For each size N the bench builds a catalog of N ClusterIP Services × `--endpoints` endpoints
//! through the catalog `Store` (Replace events, as a source delivers them), then re-executes
//! itself under `ip netns exec` in a fresh network namespace (`svp-bench-<pid>-<N>`, deleted by a
//! drop guard on every exit path of the parent, Ctrl-C and SIGTERM included). The child checks
//! that it really runs in that namespace before touching nft, and measures: the cold start
//! (contributions + `Programmed::full`, then `Nft::apply` of the full script and a heap trim —
//! the steps of `Syncer::full`), single-endpoint changes end to end (Store event → snapshot →
//! `changes_since` → contributions → `Programmed::update` → `Nft::apply`, the steps of
//! `Syncer::incremental`, the old contribution recomputed from the last programmed snapshot),
//! one change of a Service's endpoint count, its own VmRSS/VmHWM after
//! the cold start, and TCP connect latency to the first and the last Service through the nat
//! output hook (endpoint addresses on a local interface, listeners on them). It reports one JSON
//! line; the parent prints the markdown table. A 1-Service run is always added as the baseline.
//!
//! `--backends nftables,iptables` measures each size once per backend; for iptables the same
//! steps are those of `IptablesSyncer` (render, `iptables-save` of what is there and
//! `iptables-restore --noflush` per family for the cold start; `Programmed::update` and a
//! restore per family for a change).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde::{Deserialize, Serialize};
use svcplane_common::catalog::{Changes, Snapshot, Store};
use svcplane_common::model::{
    Endpoint, EndpointPort, EndpointSlice, Family, IpPrefix, Kind, Object, ObjectKey, Protocol,
    Service, ServicePort, TargetPort,
};
use svcplane_common::source::SourceEvent;
use svcplane_proxy::app::Backend;
use svcplane_proxy::desired::service::contribution_of;
use svcplane_proxy::desired::{NodePortAddresses, ProxyConfig, base_table};
use svcplane_proxy::endpoints::NodeInfo;
use svcplane_proxy::executor::Nft;
use svcplane_proxy::iptables;
use svcplane_proxy::iptables::exec::Iptables;
use svcplane_proxy::plan::{Change, Programmed};
use svcplane_proxy::ruleset::NftFamily;

/// The families svcplane-proxy programs (the IPv6 table stays empty here, as on a v4 cluster).
const FAMILIES: [NftFamily; 2] = [NftFamily::Ip, NftFamily::Ip6];
const SERVICE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
/// Source address of node-originated test traffic (outside the cluster CIDR).
const NODE_ADDR: &str = "192.168.255.1";
/// Connections per frontend before measuring (not counted).
const WARMUP: usize = 5;

#[derive(Parser, Debug)]
#[command(
    name = "svcplane-bench-proxy",
    about = "Benchmarks svcplane-proxy's nftables (and iptables) path"
)]
struct Cli {
    /// Numbers of Services to measure (a 1-Service baseline is always added).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    sizes: Vec<usize>,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 5)]
    endpoints: usize,
    /// Backends to measure, each at every size.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "nftables")]
    backends: Vec<Backend>,
    /// Internal: the backend measured `--inside`.
    #[arg(long, value_enum, hide = true, default_value = "nftables")]
    backend: Backend,
    /// Single-endpoint changes to time.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// TCP connects to time per frontend (first and last Service).
    #[arg(long, default_value_t = 200)]
    connects: usize,
    /// Internal: run the measurement for `--size` inside this network namespace.
    #[arg(long, hide = true)]
    inside: Option<String>,
    /// Internal: the number of Services measured `--inside`.
    #[arg(long, hide = true, default_value_t = 1)]
    size: usize,
}

/// One size's results (the child's JSON line).
#[derive(Debug, Serialize, Deserialize)]
struct Row {
    backend: String,
    services: usize,
    endpoints: usize,
    catalog_s: f64,
    /// VmRSS with only the catalog built (the rest of `rss_mib` is the proxy's own state).
    catalog_mib: f64,
    render_s: f64,
    load_s: f64,
    script_mib: f64,
    change_p50_ms: f64,
    change_p99_ms: f64,
    /// p50 of the change phases: Store + snapshot, planning (contributions, update), nft.
    change_phases_p50_ms: [f64; 3],
    count_change_ms: f64,
    rss_mib: f64,
    hwm_mib: f64,
    first_us: (f64, f64),
    last_us: (f64, f64),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match &cli.inside {
        Some(ns) => runtime.block_on(inside(&cli, ns)),
        None => runtime.block_on(outside(&cli)),
    }
}

// ---------------------------------------------------------------------------------------------
// Parent: one namespace and one child process per size.

/// A network namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn create(name: String) -> Result<Netns> {
        run("ip", &["netns", "add", &name])?;
        Ok(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

async fn outside(cli: &Cli) -> Result<()> {
    ensure!(is_root(), "run as root (network namespaces and nft)");
    let mut sizes = cli.sizes.clone();
    if !sizes.contains(&1) {
        sizes.insert(0, 1);
    }
    let mut rows = Vec::new();
    for backend in &cli.backends {
        for &n in &sizes {
            eprintln!(
                "measuring {backend:?}: {n} Services × {} endpoints…",
                cli.endpoints
            );
            rows.push(measure_in_namespace(cli, *backend, n).await?);
        }
    }
    print_table(&rows);
    Ok(())
}

async fn measure_in_namespace(cli: &Cli, backend: Backend, n: usize) -> Result<Row> {
    let ns = Netns::create(format!("svp-bench-{}-{n}", std::process::id()))?;
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let args = [
        "--inside".to_string(),
        ns.0.clone(),
        "--size".into(),
        n.to_string(),
        "--endpoints".into(),
        cli.endpoints.to_string(),
        "--changes".into(),
        cli.changes.to_string(),
        "--connects".into(),
        cli.connects.to_string(),
        "--backend".into(),
        format!("{backend:?}").to_lowercase(),
    ];
    let child = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(&exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the measurement in the namespace")?;
    let out = tokio::select! {
        out = child.wait_with_output() => out?,
        () = interrupted() => bail!("interrupted"),
    };
    ensure!(out.status.success(), "measurement of {n} Services failed");
    parse_row(&String::from_utf8_lossy(&out.stdout))
}

/// Resolves on Ctrl-C or SIGTERM (the child is killed and the namespace deleted on the way out).
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn parse_row(stdout: &str) -> Result<Row> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .context("the measurement printed no result")?;
    Ok(serde_json::from_str(line)?)
}

fn print_table(rows: &[Row]) {
    println!(
        "| backend | Services | endpoints | render (s) | load (s) | cold start (s) | script MB | change p50/p99 (ms) | count change (ms) | RSS MB | peak RSS MB | connect first p50/p99 (µs) | connect last p50/p99 (µs) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.1} | {:.1} / {:.1} | {:.1} | {:.1} | {:.1} | {:.0} / {:.0} | {:.0} / {:.0} |",
            r.backend,
            r.services,
            r.services * r.endpoints,
            r.render_s,
            r.load_s,
            r.render_s + r.load_s,
            r.script_mib,
            r.change_p50_ms,
            r.change_p99_ms,
            r.count_change_ms,
            r.rss_mib,
            r.hwm_mib,
            r.first_us.0,
            r.first_us.1,
            r.last_us.0,
            r.last_us.1,
        );
    }
    println!();
    println!(
        "MB are MiB. Targets (not asserted): cold start of 50k Services / 250k endpoints < 5 s;"
    );
    println!("one change < 50 ms p99 at 50k; first-packet latency at 50k within 10% of 1 Service;");
    println!(
        "RSS < 150 MB at 50k. kube-proxy nftables (chain per Service) on this machine: 1k/10k/30k"
    );
    println!("Services load in 0.17/10.7/272 s.");
    println!();
    println!(
        "| backend | Services | catalog build (s) | RSS with the catalog only MB | change phases p50: store+snapshot / plan / load (ms) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for r in rows {
        let [s, p, n] = r.change_phases_p50_ms;
        println!(
            "| {} | {} | {:.3} | {:.1} | {s:.2} / {p:.2} / {n:.2} |",
            r.backend, r.services, r.catalog_s, r.catalog_mib
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Child: everything below runs inside the namespace.

async fn inside(cli: &Cli, ns: &str) -> Result<()> {
    ensure_in_namespace(ns)?;
    let (n, e) = (cli.size, cli.endpoints);
    ensure!(
        n >= 1 && e >= 1,
        "--size and --endpoints must be at least 1"
    );
    let started = Instant::now();
    let mut bench = Bench::new(n, e, cli.backend)?;
    let catalog_s = started.elapsed().as_secs_f64();
    let catalog_mib = memory()?.0;
    let cold = bench.cold_start().await?;
    let (rss_mib, hwm_mib) = memory()?;
    let (first, last) = connect_latency(&bench, cli.connects)?;
    let changes = bench.endpoint_changes(cli.changes).await?;
    let count_change = bench.count_change().await?;
    let totals: Vec<Duration> = changes.iter().map(|c| c.iter().sum()).collect();
    let phase = |i: usize| ms(percentile(changes.iter().map(|c| c[i]).collect(), 50.0));
    let row = Row {
        backend: format!("{:?}", cli.backend).to_lowercase(),
        services: n,
        endpoints: e,
        catalog_s,
        catalog_mib,
        render_s: cold.render.as_secs_f64(),
        load_s: cold.load.as_secs_f64(),
        script_mib: cold.script_bytes as f64 / (1024.0 * 1024.0),
        change_p50_ms: ms(percentile(totals.clone(), 50.0)),
        change_p99_ms: ms(percentile(totals, 99.0)),
        change_phases_p50_ms: [phase(0), phase(1), phase(2)],
        count_change_ms: ms(count_change),
        rss_mib,
        hwm_mib,
        first_us: latency_us(first),
        last_us: latency_us(last),
    };
    println!("RESULT {}", serde_json::to_string(&row)?);
    Ok(())
}

/// Refuses to run unless this process is in the namespace `ns` (never program the host).
fn ensure_in_namespace(ns: &str) -> Result<()> {
    let mine = std::fs::metadata("/proc/self/ns/net")?;
    let theirs = std::fs::metadata(format!("/run/netns/{ns}"))
        .with_context(|| format!("network namespace {ns}"))?;
    ensure!(
        (mine.dev(), mine.ino()) == (theirs.dev(), theirs.ino()),
        "not inside network namespace {ns}; refusing to program rules"
    );
    Ok(())
}

/// The proxy's state as the sync engine holds it: catalog, programmed tables, last generation.
struct Bench {
    n: usize,
    e: usize,
    store: Store,
    snapshot: Arc<Snapshot>,
    config: ProxyConfig,
    resolved: ProxyConfig,
    engine: BenchEngine,
    /// Next unused pod address (index past the initial ones).
    next_pod: u32,
    rng: u64,
}

/// The programmed state of the backend measured.
enum BenchEngine {
    Nft {
        nft: Nft,
        programmed: HashMap<NftFamily, Programmed>,
    },
    Iptables {
        programmed: HashMap<Family, iptables::plan::Programmed>,
    },
}

/// What one change writes: an nft script, or restore inputs per family.
enum Work {
    Nft(String),
    Iptables(Vec<(Family, String)>),
}

struct ColdStart {
    render: Duration,
    load: Duration,
    script_bytes: usize,
}

impl Bench {
    /// The catalog after a source's initial lists.
    fn new(n: usize, e: usize, backend: Backend) -> Result<Bench> {
        let mut store = Store::default();
        let services: Vec<Object> = (0..n).map(|i| service(i as u32)).collect();
        let slices: Vec<Object> = (0..n)
            .map(|i| slice(i as u32, &initial_ips(i, e)))
            .collect();
        store.apply(SourceEvent::Replace {
            kind: Kind::Service,
            objects: services,
        });
        store.apply(SourceEvent::Replace {
            kind: Kind::EndpointSlice,
            objects: slices,
        });
        store.apply(SourceEvent::Synced);
        let snapshot = store.snapshot().context("no snapshot")?;
        let config = proxy_config()?;
        Ok(Bench {
            n,
            e,
            store,
            snapshot,
            resolved: config.clone(),
            config,
            engine: match backend {
                Backend::Nftables => BenchEngine::Nft {
                    nft: Nft::default(),
                    programmed: HashMap::new(),
                },
                Backend::Iptables => BenchEngine::Iptables {
                    programmed: HashMap::new(),
                },
            },
            next_pod: (n * e) as u32,
            rng: u64::from(std::process::id()) | 1,
        })
    }

    /// `Syncer::full` (render every family, then one `nft -f` transaction) or
    /// `IptablesSyncer::full` (per family: render, read what is there, restore).
    async fn cold_start(&mut self) -> Result<ColdStart> {
        let config = self.config.resolve(&self.snapshot);
        let cold = match &mut self.engine {
            BenchEngine::Nft { nft, programmed } => {
                nft_cold_start(&config, &self.snapshot, nft, programmed).await?
            }
            BenchEngine::Iptables { programmed } => {
                iptables_cold_start(&config, &self.snapshot, programmed).await?
            }
        };
        self.resolved = config;
        Ok(cold)
    }

    /// `--changes` single-endpoint changes of random Services (never the first or the last,
    /// whose endpoints the connect test uses); the phases of each.
    async fn endpoint_changes(&mut self, count: usize) -> Result<Vec<[Duration; 3]>> {
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let i = self.random_middle();
            let mut ips = self.current_ips(i)?;
            let j = (self.random() % ips.len() as u64) as usize;
            ips[j] = self.fresh_pod_ip();
            out.push(self.apply_slice(i, &ips).await?);
        }
        Ok(out)
    }

    /// One Service goes from `e` to `e + 1` endpoints (a new shared chain and map).
    async fn count_change(&mut self) -> Result<Duration> {
        let i = if self.n > 2 { self.n / 2 } else { 0 };
        let mut ips = self.current_ips(i)?;
        ips.push(self.fresh_pod_ip());
        let phases = self.apply_slice(i, &ips).await?;
        Ok(phases.iter().sum())
    }

    /// A new version of Service `i`'s slice, end to end, as `Syncer::incremental` handles it.
    async fn apply_slice(&mut self, i: usize, ips: &[Ipv4Addr]) -> Result<[Duration; 3]> {
        let event = SourceEvent::Apply(slice(i as u32, ips));
        let started = Instant::now();
        self.store.apply(event);
        let snapshot = self
            .store
            .snapshot()
            .context("the change made no snapshot")?;
        let catalog = started.elapsed();
        let started = Instant::now();
        let work = self.plan(&snapshot)?;
        let plan = started.elapsed();
        let started = Instant::now();
        self.execute(work).await?;
        let nft = started.elapsed();
        self.snapshot = snapshot;
        Ok([catalog, plan, nft])
    }

    /// The incremental work from the programmed state to `snapshot` (the state is committed
    /// here; the bench stops on a failed load anyway).
    fn plan(&mut self, snapshot: &Snapshot) -> Result<Work> {
        let config = self.config.resolve(snapshot);
        let services = match snapshot.changes_since(self.snapshot.generation) {
            Changes::Some { services, .. } if config == self.resolved => services,
            _ => bail!("the change would need a full sync"),
        };
        // As the sync engines: the programmed state is updated in place (a failed load makes
        // their next sync a full one).
        match &mut self.engine {
            BenchEngine::Nft { programmed, .. } => {
                let mut script = String::new();
                for f in FAMILIES {
                    let programmed = programmed.get_mut(&f).context("family not programmed")?;
                    let changes = services
                        .iter()
                        .map(|k| Change {
                            key: k.clone(),
                            old: contribution_of(&config, &self.snapshot, k, f),
                            new: contribution_of(&config, snapshot, k, f),
                        })
                        .collect();
                    if let Some(s) = programmed.update(changes).script {
                        script.push_str(&s);
                    }
                }
                Ok(Work::Nft(script))
            }
            BenchEngine::Iptables { programmed } => {
                let mut inputs = Vec::new();
                for (family, programmed) in programmed.iter_mut() {
                    let changes = services
                        .iter()
                        .map(|k| {
                            (
                                k.clone(),
                                iptables_rules_of(&config, snapshot, k, programmed),
                            )
                        })
                        .collect();
                    if let Some(input) = programmed.update(changes).input {
                        inputs.push((*family, input));
                    }
                }
                Ok(Work::Iptables(inputs))
            }
        }
    }

    async fn execute(&self, work: Work) -> Result<()> {
        match (&self.engine, work) {
            (BenchEngine::Nft { nft, .. }, Work::Nft(script)) => {
                if !script.is_empty() {
                    nft.apply(&script).await?;
                }
            }
            (BenchEngine::Iptables { .. }, Work::Iptables(inputs)) => {
                for (family, input) in inputs {
                    Iptables::new(family).restore(&input).await?;
                }
            }
            _ => bail!("work for another backend"),
        }
        Ok(())
    }

    fn current_ips(&self, i: usize) -> Result<Vec<Ipv4Addr>> {
        let key = service_key(i as u32);
        let merged = self.snapshot.endpoints.get(&key).context("no endpoints")?;
        merged
            .iter()
            .map(|m| match m.endpoint().ip {
                IpAddr::V4(v4) => Ok(v4),
                IpAddr::V6(_) => bail!("unexpected IPv6 endpoint"),
            })
            .collect()
    }

    fn fresh_pod_ip(&mut self) -> Ipv4Addr {
        self.next_pod += 1;
        pod_ip(self.next_pod)
    }

    fn random_middle(&mut self) -> usize {
        if self.n <= 2 {
            return 0;
        }
        1 + (self.random() % (self.n as u64 - 2)) as usize
    }

    /// xorshift64: enough to spread changes over the Services.
    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

async fn nft_cold_start(
    config: &ProxyConfig,
    snapshot: &Snapshot,
    nft: &Nft,
    out: &mut HashMap<NftFamily, Programmed>,
) -> Result<ColdStart> {
    let started = Instant::now();
    let mut script = String::new();
    for f in FAMILIES {
        let contributions = snapshot
            .services
            .keys()
            .filter_map(|k| contribution_of(config, snapshot, k, f).map(|c| (k.clone(), c)))
            .collect();
        let (programmed, s) = Programmed::full(base_table(config, f), contributions);
        script.push_str(&s);
        out.insert(f, programmed);
    }
    let render = started.elapsed();
    let started = Instant::now();
    nft.apply(&script).await?;
    let load = started.elapsed();
    // As `Syncer::full`: the render's garbage goes back to the kernel.
    let script_bytes = script.len();
    drop(script);
    svcplane_common::process::trim_heap();
    Ok(ColdStart {
        render,
        load,
        script_bytes,
    })
}

async fn iptables_cold_start(
    config: &ProxyConfig,
    snapshot: &Snapshot,
    out: &mut HashMap<Family, iptables::plan::Programmed>,
) -> Result<ColdStart> {
    let (mut render, mut load, mut bytes) = (Duration::ZERO, Duration::ZERO, 0);
    for family in [Family::V4, Family::V6] {
        let started = Instant::now();
        let programmed = iptables::engine::render_all(config, snapshot, family);
        render += started.elapsed();
        let started = Instant::now();
        let runner = Iptables::new(family);
        let kernel = runner.kernel_state().await?;
        load += started.elapsed();
        let started = Instant::now();
        let input = programmed.full_input(&kernel);
        render += started.elapsed();
        let started = Instant::now();
        runner.restore(&input).await?;
        load += started.elapsed();
        bytes += input.len();
        out.insert(family, programmed);
    }
    Ok(ColdStart {
        render,
        load,
        script_bytes: bytes,
    })
}

/// `IptablesSyncer`'s `rules_of`: None when the Service adds nothing.
fn iptables_rules_of(
    config: &ProxyConfig,
    snapshot: &Snapshot,
    key: &ObjectKey,
    programmed: &iptables::plan::Programmed,
) -> Option<Arc<iptables::render::ServiceRules>> {
    let service = snapshot.services.get(key)?;
    let endpoints = snapshot.endpoints.get(key).map(|e| &e[..]).unwrap_or(&[]);
    let rules = iptables::render::service(service, endpoints, config, &programmed.base);
    (!rules.is_empty()).then(|| Arc::new(rules))
}

fn proxy_config() -> Result<ProxyConfig> {
    let prefix = |s: &str| -> Result<IpPrefix> {
        svcplane_common::config::parse_prefix(s).map_err(anyhow::Error::msg)
    };
    Ok(ProxyConfig {
        node: NodeInfo::new("bench-node", None),
        cluster_cidrs: vec![prefix("10.128.0.0/9")?],
        service_cidrs: vec![prefix("10.96.0.0/12")?],
        nodeport_addresses: NodePortAddresses::Primary,
        masquerade_all: false,
        proxy_name: None,
    })
}

// ---------------------------------------------------------------------------------------------
// The synthetic cluster.

/// ClusterIP of Service `i`: 10.96.0.0/12, sequential.
fn cluster_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i + 1)
}

/// Pod address number `k`: 10.128.0.0/9, sequential.
fn pod_ip(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + k + 1)
}

fn initial_ips(i: usize, e: usize) -> Vec<Ipv4Addr> {
    (0..e).map(|j| pod_ip((i * e + j) as u32)).collect()
}

fn service_key(i: u32) -> ObjectKey {
    ObjectKey::new("bench", &format!("svc-{i:05}"))
}

fn service(i: u32) -> Object {
    let mut s = Service::new(service_key(i), vec![IpAddr::V4(cluster_ip(i))]);
    s.ports = vec![ServicePort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: SERVICE_PORT,
        target_port: TargetPort::Number(TARGET_PORT),
        node_port: None,
    }]
    .into();
    Object::Service(Arc::new(s))
}

/// The single EndpointSlice of Service `i` with these endpoints.
fn slice(i: u32, ips: &[Ipv4Addr]) -> Object {
    let key = service_key(i);
    Object::EndpointSlice(Arc::new(EndpointSlice {
        key: ObjectKey::new("bench", &format!("{}-abcde", key.name)),
        service_name: Some(key.name.clone()),
        family: Family::V4,
        ports: Arc::new([EndpointPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: TARGET_PORT,
        }]),
        endpoints: ips
            .iter()
            .map(|ip| Endpoint::new(IpAddr::V4(*ip)))
            .collect(),
    }))
}

// ---------------------------------------------------------------------------------------------
// First-packet latency.

/// Connect times to the first and the last Service, interleaved so drift hits both alike.
fn connect_latency(bench: &Bench, connects: usize) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let last = bench.n - 1;
    let mut endpoints = initial_ips(0, bench.e);
    if last > 0 {
        endpoints.extend(initial_ips(last, bench.e));
    }
    setup_network(&endpoints)?;
    for ip in &endpoints {
        listen(SocketAddr::from((*ip, TARGET_PORT)))?;
    }
    let first = SocketAddr::from((cluster_ip(0), SERVICE_PORT));
    let last = SocketAddr::from((cluster_ip(last as u32), SERVICE_PORT));
    for _ in 0..WARMUP {
        connect(first)?;
        connect(last)?;
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..connects {
        a.push(connect(first)?);
        b.push(connect(last)?);
    }
    Ok((a, b))
}

/// lo up; a veth pair (this kernel has no dummy links) whose end `svp0` holds the node address
/// and the endpoint addresses, and the route to the service CIDR (locally originated packets
/// need a route before nat output rewrites their destination).
fn setup_network(endpoints: &[Ipv4Addr]) -> Result<()> {
    run("ip", &["link", "set", "lo", "up"])?;
    run(
        "ip",
        &[
            "link", "add", "svp0", "type", "veth", "peer", "name", "svp1",
        ],
    )?;
    run("ip", &["link", "set", "svp0", "up"])?;
    run("ip", &["link", "set", "svp1", "up"])?;
    run(
        "ip",
        &["addr", "add", &format!("{NODE_ADDR}/32"), "dev", "svp0"],
    )?;
    for ip in endpoints {
        run("ip", &["addr", "add", &format!("{ip}/32"), "dev", "svp0"])?;
    }
    run(
        "ip",
        &[
            "route",
            "add",
            "10.96.0.0/12",
            "dev",
            "svp0",
            "src",
            NODE_ADDR,
        ],
    )
}

/// A listener that accepts and closes, on its own thread (ends with the process).
fn listen(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    Ok(())
}

fn connect(addr: SocketAddr) -> Result<Duration> {
    let started = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    let took = started.elapsed();
    drop(stream);
    Ok(took)
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

/// VmRSS and VmHWM of this process, in MiB.
fn memory() -> Result<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} missing"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .context("malformed status line")?
            .parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Nearest-rank percentile.
fn percentile(mut samples: Vec<Duration>, p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

fn latency_us(samples: Vec<Duration>) -> (f64, f64) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (
        us(percentile(samples.clone(), 50.0)),
        us(percentile(samples, 99.0)),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
