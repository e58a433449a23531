//! `svcplane-bench-dns`: the DNS benchmark. It owns, for each catalog size: generating the
//! manifests ([`svcplane_tests::r#gen`]), starting the release `svcplane-dns` pinned to CPU 1
//! (`--server-cpu`) with one UDP worker, timing its startup to `/ready`, measuring the maximum
//! query rate with `dnsperf` pinned to the other CPU, latency percentiles at half that rate with
//! its own open-loop UDP client (also on the other CPU), memory (VmRSS/VmHWM) after load and across a full reload of every
//! manifest file, and change→answer latency (from a file write, and the server's own histogram).
//! Each load run also reports the server's and the client's CPU use and run-queue wait (from
//! `schedstat`), kernel socket drops and latency stalls, so that contention from other work on
//! the machine is visible next to the figures. It prints markdown tables; it asserts none of the
//! project's targets. It only ever sends traffic to 127.0.0.1.
//!
//! `svcplane-bench-dns [--sizes 10000x5,50000x5] [--duration 10] [--changes 20] [--wait-idle 120]
//! [--out-dir DIR]`

mod changes;
mod client;
mod isolate;
mod queries;
mod report;
mod rxstamp;
mod server;
mod system;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use svcplane_tests::r#gen::{Catalog, Rng, Service, Spec, spare_cluster_ip};

use changes::*;
use client::*;
use queries::*;
use report::*;
use server::*;
use system::*;

const ZONE: &str = "cluster.local";
/// Queries per dnsperf input file (dnsperf loops over it).
const QUERIES_PER_FILE: usize = 200_000;
const TYPE_A: u16 = 1;
const TYPE_SRV: u16 = 33;
const RCODE_NXDOMAIN: u8 = 3;
const PROGRAMMING_METRIC: &str = "svcplane_dns_programming_duration_seconds";
const TARGETS: &str = "Targets (printed, not asserted): ≥150k qps on one core for cluster names; \
p99 < 1 ms at half that load; RSS < 100 MB at 50k Services/250k endpoints; change → answer < 10 ms.";

/// The CPU the server runs on (`--server-cpu`); the bench's clients use the other one.
static SERVER_CPU: AtomicU32 = AtomicU32::new(1);

/// Extra flags for the server (`--server-flag`).
static SERVER_FLAGS: OnceLock<Vec<String>> = OnceLock::new();

fn server_cpu() -> u32 {
    SERVER_CPU.load(Ordering::Relaxed)
}

fn client_cpu() -> u32 {
    1 - server_cpu()
}

fn main() -> Result<()> {
    let options = Options::parse(std::env::args().skip(1))?;
    let server_bin = server_binary()?;
    require_tool("taskset")?;
    require_tool("dnsperf")?;
    // Pinned before any thread starts: every thread of the bench (the latency client) inherits
    // the client CPU, and the server is pinned to the other one.
    SERVER_CPU.store(options.server_cpu, Ordering::Relaxed);
    let _ = SERVER_FLAGS.set(options.server_flags.clone());
    pin_self(client_cpu())?;
    eprintln!("load before the run: {}", load_average());
    let mut rows = Vec::new();
    for size in &options.sizes {
        let row =
            bench_size(&options, *size, &server_bin).with_context(|| format!("size {size}"))?;
        rows.push(row);
    }
    println!("{}", report(&options, &rows));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

const USAGE: &str = "usage: svcplane-bench-dns [--sizes 10000x5,50000x5] [--duration SECONDS] \
[--changes N] [--wait-idle SECONDS] [--out-dir DIR] [--server-cpu 1] [--server-flag FLAG]...
[--latency-runs 3] [--latency-rate QPS] [--isolate]

The latency client runs --latency-runs times at half the mix's dnsperf rate, or at --latency-rate
queries/s without the dnsperf runs (a quicker loop for latency experiments). With --isolate each
latency run is repeated with the server's CPU isolated: every other movable thread and the unbound
workqueues moved to the client's CPU for the run, and moved back after it.

Before each load run the bench waits up to --wait-idle seconds (default 120, 0: not at all) for
both CPUs to be idle, since other work on the machine skews rates and tails.";

#[derive(Debug)]
struct Options {
    sizes: Vec<Size>,
    /// The CPU the server is pinned to (0 or 1); the clients get the other.
    server_cpu: u32,
    /// Extra flags for svcplane-dns (`--server-flag`, repeatable).
    server_flags: Vec<String>,
    duration: u64,
    changes: usize,
    wait_idle: Duration,
    out_dir: Option<PathBuf>,
    /// How many times the latency client runs (p99 moves from run to run).
    latency_runs: usize,
    /// A fixed latency-client rate instead of half the mix's dnsperf rate (skips dnsperf).
    latency_rate: Option<f64>,
    /// Repeat each latency run with the server's CPU isolated ([`isolate`]).
    isolate: bool,
}

/// Services × endpoints per Service.
#[derive(Debug, Clone, Copy)]
struct Size {
    services: usize,
    endpoints: usize,
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.services, self.endpoints)
    }
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Options> {
        let mut options = Options {
            sizes: parse_sizes("10000x5,50000x5")?,
            server_cpu: 1,
            server_flags: Vec::new(),
            duration: 10,
            changes: 20,
            wait_idle: Duration::from_secs(120),
            out_dir: None,
            latency_runs: 3,
            latency_rate: None,
            isolate: false,
        };
        while let Some(flag) = args.next() {
            if flag == "-h" || flag == "--help" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            if flag == "--isolate" {
                options.isolate = true;
                continue;
            }
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
            match flag.as_str() {
                "--sizes" => options.sizes = parse_sizes(&value)?,
                "--duration" => options.duration = value.parse().context("--duration")?,
                "--changes" => options.changes = value.parse().context("--changes")?,
                "--wait-idle" => {
                    options.wait_idle = Duration::from_secs(value.parse().context("--wait-idle")?)
                }
                "--out-dir" => options.out_dir = Some(value.into()),
                "--server-flag" => options.server_flags.push(value),
                "--latency-runs" => {
                    options.latency_runs = value.parse().context("--latency-runs")?
                }
                "--latency-rate" => {
                    options.latency_rate = Some(value.parse().context("--latency-rate")?)
                }
                "--server-cpu" => {
                    options.server_cpu = value.parse().context("--server-cpu")?;
                    ensure!(options.server_cpu <= 1, "--server-cpu is 0 or 1");
                }
                _ => bail!("unknown flag {flag}\n{USAGE}"),
            }
        }
        ensure!(options.duration > 0, "--duration must be at least 1 second");
        ensure!(
            options.latency_runs > 0,
            "--latency-runs must be at least 1"
        );
        Ok(options)
    }
}

fn parse_sizes(text: &str) -> Result<Vec<Size>> {
    text.split(',')
        .map(|s| {
            let (services, endpoints) = s
                .split_once('x')
                .with_context(|| format!("size {s:?}: want SERVICESxENDPOINTS"))?;
            let size = Size {
                services: services
                    .trim()
                    .parse()
                    .with_context(|| format!("size {s:?}"))?,
                endpoints: endpoints
                    .trim()
                    .parse()
                    .with_context(|| format!("size {s:?}"))?,
            };
            ensure!(size.services > 0, "size {s:?}: no Services");
            Ok(size)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// One size
// ---------------------------------------------------------------------------------------------

/// Everything measured for one size.
#[derive(Debug)]
struct Row {
    size: Size,
    endpoints: usize,
    generate: Duration,
    manifest_bytes: u64,
    startup: Duration,
    /// The server's CPU time (on CPU, waiting for it) until ready.
    startup_cpu: (Duration, Duration),
    load: Load,
    idle: Memory,
    loaded: Memory,
    reload: Reload,
    changes: Changes,
}

fn bench_size(options: &Options, size: Size, server_bin: &Path) -> Result<Row> {
    let work = WorkDir::new(options.out_dir.as_deref(), size)?;
    let mut input = Input::generate(size, &work)?;
    let mut server = Server::start(server_bin, &work.manifests, &work.root.join("server.log"))?;
    let startup = server.wait_ready(Duration::from_secs(600))?;
    let startup_cpu = CpuSample::of(server.pid())?;
    eprintln!("[{size}] ready after {:.2} s", startup.as_secs_f64());
    sanity_check(&server, &input.catalog)?;
    let idle = server.memory()?;
    let load = load_runs(options, &server, &input)?;
    let loaded = server.memory()?;
    server.check_alive()?;
    let reload = full_reload(&mut input.catalog, &work.manifests, &server)?;
    let changes = change_latency(
        &mut input.catalog,
        &work.manifests,
        &server,
        options.changes,
    )?;
    server.check_alive()?;
    drop(server);
    Ok(Row {
        size,
        endpoints: input.catalog.endpoint_count(),
        generate: input.generate,
        manifest_bytes: input.manifest_bytes,
        startup,
        startup_cpu: (
            Duration::from_nanos(startup_cpu.run_ns),
            Duration::from_nanos(startup_cpu.wait_ns),
        ),
        load,
        idle,
        loaded,
        reload,
        changes,
    })
}

/// The generated catalog, its manifests and the query files.
struct Input {
    catalog: Catalog,
    generate: Duration,
    manifest_bytes: u64,
    mix: Vec<Query>,
    mix_file: PathBuf,
    a_file: PathBuf,
}

impl Input {
    fn generate(size: Size, work: &WorkDir) -> Result<Input> {
        eprintln!(
            "[{size}] generating manifests into {}",
            work.manifests.display()
        );
        let started = Instant::now();
        let catalog = Catalog::generate(&Spec::new(size.services, size.endpoints));
        let files = catalog.write_manifests(&work.manifests, None)?;
        let generate = started.elapsed();
        let manifest_bytes = files
            .iter()
            .map(|f| f.metadata().map_or(0, |m| m.len()))
            .sum();
        let mut rng = Rng::new(42);
        let mix = mix_queries(&catalog, &mut rng, QUERIES_PER_FILE);
        let mix_file = write_dnsperf_file(&work.root.join("queries-mix.txt"), &mix)?;
        let a_only = cluster_ip_queries(&catalog, &mut rng, QUERIES_PER_FILE);
        let a_file = write_dnsperf_file(&work.root.join("queries-a.txt"), &a_only)?;
        Ok(Input {
            catalog,
            generate,
            manifest_bytes,
            mix,
            mix_file,
            a_file,
        })
    }
}

/// The load runs: dnsperf at its maximum rate on both query files (unless `--latency-rate` is
/// given), then the latency client at half the mix's rate, `--latency-runs` times.
#[derive(Debug)]
struct Load {
    mix: Dnsperf,
    a_only: Dnsperf,
    latency: Vec<Latency>,
}

fn load_runs(options: &Options, server: &Server, input: &Input) -> Result<Load> {
    let secs = options.duration;
    let (mix, a_only) = match options.latency_rate {
        Some(_) => (Dnsperf::default(), Dnsperf::default()),
        None => {
            wait_for_idle(options.wait_idle)?;
            let mix = run_dnsperf(server, &input.mix_file, secs, "mix")?;
            wait_for_idle(options.wait_idle)?;
            (mix, run_dnsperf(server, &input.a_file, secs, "A only")?)
        }
    };
    let rate = options.latency_rate.unwrap_or((mix.qps / 2.0).max(1000.0));
    let mut latency = Vec::new();
    let duration = Duration::from_secs(secs);
    for _ in 0..options.latency_runs {
        wait_for_idle(options.wait_idle)?;
        latency.push(latency_run(server, &input.mix, rate, duration)?);
        if options.isolate {
            wait_for_idle(options.wait_idle)?;
            let spare = [server.pid(), std::process::id()];
            let _isolation = isolate::Isolation::apply(server_cpu(), client_cpu(), &spare)?;
            let mut run = latency_run(server, &input.mix, rate, duration)?;
            run.isolated = true;
            latency.push(run);
        }
    }
    Ok(Load {
        mix,
        a_only,
        latency,
    })
}

/// [`fixed_rate`] with the server's and the client's CPU use.
fn latency_run(
    server: &Server,
    queries: &[Query],
    rate: f64,
    duration: Duration,
) -> Result<Latency> {
    eprintln!("latency client at {rate:.0} qps for {duration:?}");
    let me = std::process::id();
    let (server_before, client_before) = (CpuSample::of(server.pid())?, CpuSample::of(me)?);
    let mut latency = fixed_rate(server.dns, queries, rate, duration)?;
    latency.server = server_before.share_since(server.pid())?;
    latency.client = client_before.share_since(me)?;
    print_stalls(&latency.stalls);
    Ok(latency)
}

/// Where one size's manifests, query files and server log go: `--out-dir`/SIZE (kept), or a
/// temporary directory removed at the end.
struct WorkDir {
    root: PathBuf,
    manifests: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl WorkDir {
    fn new(out_dir: Option<&Path>, size: Size) -> Result<WorkDir> {
        let (root, temp) = match out_dir {
            Some(dir) => (dir.join(size.to_string()), None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("svcplane-bench-dns-")
                    .tempdir()?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let manifests = root.join("manifests");
        if manifests.exists() {
            // Our own directory from an earlier run: stale namespaces would change the catalog.
            std::fs::remove_dir_all(&manifests)
                .with_context(|| format!("clearing {}", manifests.display()))?;
        }
        std::fs::create_dir_all(&manifests)
            .with_context(|| format!("creating {}", manifests.display()))?;
        Ok(WorkDir {
            root,
            manifests,
            _temp: temp,
        })
    }
}

/// Fails unless the server answers as the catalog says: a ClusterIP, a headless Service's ready
/// endpoints, a named port's SRV and a search-path expansion's NXDOMAIN.
fn sanity_check(server: &Server, catalog: &Catalog) -> Result<()> {
    let client = Client::new(server.dns)?;
    let Some(cluster_ip) = catalog.services().find(|s| !s.headless()) else {
        bail!("the catalog has no ClusterIP Service");
    };
    let answer = client.query(&cluster_ip.fqdn(ZONE), TYPE_A)?;
    ensure!(
        answer.a == cluster_ip.cluster_ip.into_iter().collect::<Vec<_>>(),
        "A {}: {answer:?}",
        cluster_ip.fqdn(ZONE)
    );
    if let Some(headless) = catalog
        .services()
        .find(|s| s.headless() && s.ready_endpoints().count() > 1)
    {
        let answer = client.query(&headless.fqdn(ZONE), TYPE_A)?;
        ensure!(
            answer.a.len() == headless.ready_endpoints().count(),
            "A {}: {answer:?}",
            headless.fqdn(ZONE)
        );
    }
    let srv = srv_name(cluster_ip, 0);
    let answer = client.query(&srv, TYPE_SRV)?;
    ensure!(
        answer.rcode == 0 && answer.answers == 1,
        "SRV {srv}: {answer:?}"
    );
    let nx = format!("{}.{ZONE}", cluster_ip.fqdn(ZONE));
    let answer = client.query(&nx, TYPE_A)?;
    ensure!(answer.rcode == RCODE_NXDOMAIN, "A {nx}: {answer:?}");
    Ok(())
}
