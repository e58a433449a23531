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
        };
        while let Some(flag) = args.next() {
            if flag == "-h" || flag == "--help" {
                println!("{USAGE}");
                std::process::exit(0);
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
                "--server-cpu" => {
                    options.server_cpu = value.parse().context("--server-cpu")?;
                    ensure!(options.server_cpu <= 1, "--server-cpu is 0 or 1");
                }
                _ => bail!("unknown flag {flag}\n{USAGE}"),
            }
        }
        ensure!(options.duration > 0, "--duration must be at least 1 second");
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

/// The load runs: dnsperf at its maximum rate on both query files, then the latency client at
/// half the mix's rate.
#[derive(Debug)]
struct Load {
    mix: Dnsperf,
    a_only: Dnsperf,
    latency: Latency,
}

fn load_runs(options: &Options, server: &Server, input: &Input) -> Result<Load> {
    let secs = options.duration;
    wait_for_idle(options.wait_idle)?;
    let mix = run_dnsperf(server, &input.mix_file, secs, "mix")?;
    wait_for_idle(options.wait_idle)?;
    let a_only = run_dnsperf(server, &input.a_file, secs, "A only")?;
    wait_for_idle(options.wait_idle)?;
    let half = (mix.qps / 2.0).max(1000.0);
    let latency = latency_run(server, &input.mix, half, Duration::from_secs(secs))?;
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

// ---------------------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Query {
    name: String,
    qtype: u16,
}

/// What pods with `ndots:5` and the usual search path send: ~40% A of ClusterIP Services, ~10%
/// SRV of named ports, ~10% A of headless Services, ~40% NXDOMAIN search-path expansions.
fn mix_queries(catalog: &Catalog, rng: &mut Rng, count: usize) -> Vec<Query> {
    let all: Vec<&Service> = catalog.services().collect();
    let cluster_ip: Vec<&Service> = all.iter().copied().filter(|s| !s.headless()).collect();
    let headless: Vec<&Service> = all.iter().copied().filter(|s| s.headless()).collect();
    let namespaces: Vec<&str> = catalog.namespaces.iter().map(|n| n.name.as_str()).collect();
    (0..count)
        .map(|_| match rng.below(100) {
            0..40 => a_query(pick(rng, &cluster_ip, &all)),
            40..50 => {
                let service = all[rng.index(all.len())];
                let port = rng.index(service.ports.len());
                Query {
                    name: srv_name(service, port),
                    qtype: TYPE_SRV,
                }
            }
            50..60 => a_query(pick(rng, &headless, &all)),
            _ => search_expansion(
                pick(rng, &cluster_ip, &all),
                namespaces[rng.index(namespaces.len())],
                rng,
            ),
        })
        .collect()
}

/// A of existing ClusterIP Services only.
fn cluster_ip_queries(catalog: &Catalog, rng: &mut Rng, count: usize) -> Vec<Query> {
    let all: Vec<&Service> = catalog.services().collect();
    let cluster_ip: Vec<&Service> = all.iter().copied().filter(|s| !s.headless()).collect();
    (0..count)
        .map(|_| a_query(pick(rng, &cluster_ip, &all)))
        .collect()
}

/// A random item of `list`, or of `fallback` when `list` is empty.
fn pick<'a>(rng: &mut Rng, list: &[&'a Service], fallback: &[&'a Service]) -> &'a Service {
    let list = if list.is_empty() { fallback } else { list };
    list[rng.index(list.len())]
}

fn a_query(service: &Service) -> Query {
    Query {
        name: service.fqdn(ZONE),
        qtype: TYPE_A,
    }
}

fn srv_name(service: &Service, port: usize) -> String {
    let port = &service.ports[port];
    let protocol = port.protocol.to_ascii_lowercase();
    format!("_{}._{protocol}.{}", port.name, service.fqdn(ZONE))
}

/// One of the names a resolver tries before the right one, from a pod in `client_ns`: the
/// Service's FQDN or `<svc>.<ns>` with a search domain appended. All are NXDOMAIN.
fn search_expansion(service: &Service, client_ns: &str, rng: &mut Rng) -> Query {
    let fqdn = service.fqdn(ZONE);
    let name = match rng.below(4) {
        0 => format!("{fqdn}.{client_ns}.svc.{ZONE}"),
        1 => format!("{fqdn}.svc.{ZONE}"),
        2 => format!("{fqdn}.{ZONE}"),
        _ => format!(
            "{}.{}.{client_ns}.svc.{ZONE}",
            service.name, service.namespace
        ),
    };
    Query {
        name,
        qtype: TYPE_A,
    }
}

fn write_dnsperf_file(path: &Path, queries: &[Query]) -> Result<PathBuf> {
    let mut text = String::with_capacity(queries.len() * 64);
    for q in queries {
        let ty = if q.qtype == TYPE_SRV { "SRV" } else { "A" };
        let _ = writeln!(text, "{} {ty}", q.name);
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_path_buf())
}

// ---------------------------------------------------------------------------------------------
// DNS wire: just enough to send queries and read A answers
// ---------------------------------------------------------------------------------------------

/// A query with RD set, no EDNS (as glibc's stub resolver sends by default).
fn encode_query(name: &str, qtype: u16, id: u16) -> Vec<u8> {
    let mut packet = Vec::with_capacity(name.len() + 18);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    packet
}

/// What a response says, as far as the bench cares.
#[derive(Debug, Default, PartialEq, Eq)]
struct Answer {
    rcode: u8,
    answers: u16,
    a: Vec<Ipv4Addr>,
}

fn decode_answer(packet: &[u8]) -> Result<Answer> {
    ensure!(packet.len() >= 12, "short response");
    let be16 = |at: usize| -> Result<u16> {
        let bytes = packet.get(at..at + 2).context("truncated response")?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    };
    let mut answer = Answer {
        rcode: packet[3] & 0x0f,
        answers: be16(6)?,
        a: Vec::new(),
    };
    let mut at = skip_name(packet, 12)? + 4;
    for _ in 0..answer.answers {
        at = skip_name(packet, at)?;
        let (rtype, len) = (be16(at)?, usize::from(be16(at + 8)?));
        let data = packet
            .get(at + 10..at + 10 + len)
            .context("truncated record")?;
        if rtype == TYPE_A && len == 4 {
            answer
                .a
                .push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    Ok(answer)
}

fn skip_name(packet: &[u8], mut at: usize) -> Result<usize> {
    loop {
        let len = *packet.get(at).context("truncated name")?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => return Ok(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

/// A blocking UDP client for single queries.
struct Client {
    socket: UdpSocket,
    id: std::cell::Cell<u16>,
}

impl Client {
    fn new(server: SocketAddr) -> Result<Client> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.connect(server)?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(Client {
            socket,
            id: std::cell::Cell::new(1),
        })
    }

    /// Sends one query and waits for its response (three tries).
    fn query(&self, name: &str, qtype: u16) -> Result<Answer> {
        let id = self.id.get().wrapping_add(1);
        self.id.set(id);
        let packet = encode_query(name, qtype, id);
        let mut buf = [0u8; 4096];
        for _ in 0..3 {
            self.socket.send(&packet)?;
            loop {
                match self.socket.recv(&mut buf) {
                    Ok(n) if n >= 2 && buf[..2] == id.to_be_bytes() => {
                        return decode_answer(&buf[..n]);
                    }
                    Ok(_) => continue,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        bail!(
            "no answer for {name} from {:?}",
            self.socket.peer_addr().ok()
        )
    }

    /// Queries `name` until its A records include `ip`; how long that took from `since`.
    fn wait_for_a(
        &self,
        name: &str,
        ip: Ipv4Addr,
        since: Instant,
        timeout: Duration,
    ) -> Result<Duration> {
        loop {
            if self.query(name, TYPE_A)?.a.contains(&ip) {
                return Ok(since.elapsed());
            }
            ensure!(
                since.elapsed() < timeout,
                "{name} did not resolve to {ip} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/// The running `svcplane-dns`; killed when dropped, on success or error.
struct Server {
    child: Child,
    dns: SocketAddr,
    health: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
    spawned: Instant,
}

impl Server {
    fn start(bin: &Path, manifests: &Path, log: &Path) -> Result<Server> {
        let [dns, health, metrics] = free_ports()?;
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("taskset")
            .args(["-c", &server_cpu().to_string()])
            .arg(bin)
            .arg("--manifests")
            .arg(manifests)
            .args(["--listen", &dns.to_string()])
            .args(["--health-addr", &health.to_string()])
            .args(["--metrics-addr", &metrics.to_string()])
            .args([
                "--upstream",
                "127.0.0.1:9",
                "--udp-workers",
                "1",
                "--lameduck",
                "0s",
            ])
            .args(SERVER_FLAGS.get().map_or(&[][..], |f| &f[..]))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting taskset -c 1 {}", bin.display()))?;
        Ok(Server {
            child,
            dns,
            health,
            metrics,
            log: log.to_path_buf(),
            spawned: Instant::now(),
        })
    }

    /// `taskset` execs the server, so the child's pid is the server's.
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `/ready`; the time from spawn to the first 200.
    fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        loop {
            self.check_alive()?;
            if let Ok((200, _)) = http_get(self.health, "/ready") {
                return Ok(self.spawned.elapsed());
            }
            ensure!(
                self.spawned.elapsed() < timeout,
                "not ready after {timeout:?}; log: {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "svcplane-dns exited ({status}); last log lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    fn memory(&self) -> Result<Memory> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let kb = |key: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(key))
                .with_context(|| format!("{key} in {path}"))?;
            let value = line[key.len()..].trim().trim_end_matches("kB").trim();
            value.parse().with_context(|| format!("{key} {value:?}"))
        };
        Ok(Memory {
            rss_kb: kb("VmRSS:")?,
            hwm_kb: kb("VmHWM:")?,
        })
    }

    /// Resets VmHWM to the current RSS (`echo 5 > /proc/PID/clear_refs`, Linux ≥ 4.0).
    fn reset_peak(&self) -> Result<()> {
        let path = format!("/proc/{}/clear_refs", self.pid());
        std::fs::write(&path, "5").with_context(|| format!("writing {path}"))
    }

    /// `NAME_sum` and `NAME_count` of a histogram in `/metrics`.
    fn histogram(&self, name: &str) -> Result<(f64, f64)> {
        let (status, body) = http_get(self.metrics, "/metrics")?;
        ensure!(status == 200, "/metrics: HTTP {status}");
        let value = |suffix: &str| -> Result<f64> {
            let key = format!("{name}_{suffix} ");
            let line = body
                .lines()
                .find(|l| l.starts_with(&key))
                .with_context(|| format!("{key}in /metrics"))?;
            line[key.len()..]
                .trim()
                .parse()
                .with_context(|| format!("{line:?}"))
        };
        Ok((value("sum")?, value("count")?))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three distinct free 127.0.0.1 ports: the first free for both UDP and TCP (DNS), then two TCP.
fn free_ports() -> Result<[SocketAddr; 3]> {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let dns = udp.local_addr()?;
        let Ok(tcp) = TcpListener::bind(dns) else {
            continue;
        };
        let health = TcpListener::bind("127.0.0.1:0")?;
        let metrics = TcpListener::bind("127.0.0.1:0")?;
        let ports = [dns, health.local_addr()?, metrics.local_addr()?];
        drop((udp, tcp, health, metrics));
        return Ok(ports);
    }
    bail!("no free UDP+TCP port on 127.0.0.1")
}

/// A minimal HTTP/1.1 GET (the health server answers with Content-Length bodies).
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no end of HTTP headers")?;
    ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "chunked response"
    );
    let status = head.split(' ').nth(1).context("no HTTP status")?.parse()?;
    Ok((status, body.to_string()))
}

/// VmRSS and VmHWM, in kB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_kb: u64,
    hwm_kb: u64,
}

// ---------------------------------------------------------------------------------------------
// dnsperf
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct Dnsperf {
    qps: f64,
    avg_latency_s: f64,
    lost_percent: f64,
    rcodes: String,
    /// The server's use of its CPU during the run.
    server: CpuShare,
    drops: Drops,
}

/// `dnsperf` at its maximum rate, pinned to CPU 0.
fn run_dnsperf(server: &Server, file: &Path, secs: u64, label: &str) -> Result<Dnsperf> {
    eprintln!("dnsperf ({label}) for {secs} s");
    let (before, drops) = (CpuSample::of(server.pid())?, Drops::now(server.dns.port())?);
    let mut result = dnsperf(server.dns, file, secs)?;
    result.server = before.share_since(server.pid())?;
    result.drops = drops.since(server.dns.port())?;
    Ok(result)
}

fn dnsperf(dns: SocketAddr, file: &Path, secs: u64) -> Result<Dnsperf> {
    let output = Command::new("taskset")
        .args(["-c", &client_cpu().to_string()])
        .args(["dnsperf", "-s", "127.0.0.1"])
        .args(["-p", &dns.port().to_string()])
        .arg("-d")
        .arg(file)
        .args(["-l", &secs.to_string(), "-c", "8", "-q", "500"])
        .stdin(Stdio::null())
        .output()
        .context("running dnsperf")?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "dnsperf failed ({}): {text}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    parse_dnsperf(&text).with_context(|| format!("parsing dnsperf output:\n{text}"))
}

fn parse_dnsperf(text: &str) -> Result<Dnsperf> {
    let field = |key: &str| -> Result<&str> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(key))
            .with_context(|| format!("no {key:?}"))?;
        Ok(line[key.len()..].trim())
    };
    let first = |key: &str| -> Result<f64> {
        let value = field(key)?.split_whitespace().next().unwrap_or_default();
        value.parse().with_context(|| format!("{key} {value:?}"))
    };
    let lost = field("Queries lost:")?;
    let percent = lost
        .split_once('(')
        .and_then(|(_, p)| p.split_once('%'))
        .map(|(p, _)| p.trim());
    Ok(Dnsperf {
        qps: first("Queries per second:")?,
        avg_latency_s: first("Average Latency (s):")?,
        lost_percent: percent.context("lost %")?.parse()?,
        rcodes: field("Response codes:")?.to_string(),
        server: CpuShare::default(),
        drops: Drops::default(),
    })
}

// ---------------------------------------------------------------------------------------------
// The open-loop latency client
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Latency {
    target_qps: f64,
    achieved_qps: f64,
    sent: u64,
    received: u64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    server: CpuShare,
    /// This process (the client) on CPU 0: its wait share says how much others disturbed it.
    client: CpuShare,
    send_errors: u64,
    drops: Drops,
    stalls: Vec<Stall>,
}

/// Client sockets of [`fixed_rate`]: each has its own receive buffer and ID space, so a client
/// descheduled for a few milliseconds does not overflow one small default buffer.
const CLIENT_SOCKETS: usize = 8;

/// Sends `queries` round-robin at `rate` per second for `duration` from one busy-polling thread
/// (no wake-up latency of its own) over [`CLIENT_SOCKETS`] sockets, and records each response's
/// latency from its actual send time. Queries are matched by socket and ID; a response arriving
/// after its ID was reused (524,288 queries later) is not counted.
fn fixed_rate(
    dns: SocketAddr,
    queries: &[Query],
    rate: f64,
    duration: Duration,
) -> Result<Latency> {
    ensure!(!queries.is_empty(), "no queries");
    let sockets = (0..CLIENT_SOCKETS)
        .map(|_| {
            let socket = UdpSocket::bind("127.0.0.1:0")?;
            socket.connect(dns)?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut packets: Vec<Vec<u8>> = queries
        .iter()
        .map(|q| encode_query(&q.name, q.qtype, 0))
        .collect();
    let total = (rate * duration.as_secs_f64()) as u64;
    let interval_ns = 1e9 / rate;
    let drops = Drops::now(dns.port())?;
    let mut state = Flight::new(total as usize);
    let start = Instant::now();
    let give_up = duration + Duration::from_secs(2);
    while state.received < state.sent || state.sent < total {
        let now = start.elapsed();
        while state.sent < total && (state.sent as f64 * interval_ns) as u128 <= now.as_nanos() {
            let packet = &mut packets[(state.sent % queries.len() as u64) as usize];
            state.send(&sockets, packet, start)?;
        }
        let mut received = 0;
        for (index, socket) in sockets.iter().enumerate() {
            received += state.receive(index, socket, start)?;
        }
        if received == 0 {
            // Busy-polling without starving what shares CPU 0: on loopback that includes
            // ksoftirqd, which delivers the packets when softirq work is deferred.
            std::thread::yield_now();
        }
        if now > give_up {
            break;
        }
    }
    // Before the sockets close: their drop counts go with them.
    state.drops = drops.since(dns.port())?;
    let elapsed = start
        .elapsed()
        .min(duration + Duration::from_millis(1))
        .as_secs_f64();
    Ok(state.summary(rate, elapsed))
}

/// Queries in flight and latencies seen by [`fixed_rate`].
struct Flight {
    /// Send time (ns since start, +1; 0 = none outstanding) per socket and query ID.
    sent_at: Vec<u64>,
    latencies: Vec<u64>,
    /// (send time, latency) in ns of the responses slower than [`SLOW`].
    slow: Vec<(u64, u64)>,
    sent: u64,
    received: u64,
    /// Sends refused with EAGAIN (the query is lost).
    send_errors: u64,
    drops: Drops,
    buf: [u8; 1500],
}

impl Flight {
    fn new(expected: usize) -> Flight {
        Flight {
            sent_at: vec![0; CLIENT_SOCKETS << 16],
            latencies: Vec::with_capacity(expected),
            slow: Vec::new(),
            sent: 0,
            received: 0,
            send_errors: 0,
            drops: Drops::default(),
            buf: [0; 1500],
        }
    }

    fn send(&mut self, sockets: &[UdpSocket], packet: &mut [u8], start: Instant) -> Result<()> {
        let index = (self.sent % sockets.len() as u64) as usize;
        let id = ((self.sent / sockets.len() as u64) & 0xffff) as u16;
        packet[..2].copy_from_slice(&id.to_be_bytes());
        self.sent_at[index << 16 | usize::from(id)] = start.elapsed().as_nanos() as u64 + 1;
        self.sent += 1;
        match sockets[index].send(packet) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.send_errors += 1;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads every response waiting on socket `index`; how many there were.
    fn receive(&mut self, index: usize, socket: &UdpSocket, start: Instant) -> Result<usize> {
        let mut count = 0;
        loop {
            let n = match socket.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(count),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    bail!("the server is gone")
                }
                Err(e) => return Err(e.into()),
            };
            let now = start.elapsed().as_nanos() as u64;
            count += 1;
            if n < 2 {
                continue;
            }
            let id = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
            let sent = std::mem::take(&mut self.sent_at[index << 16 | id]);
            if sent > 0 {
                let latency = now - (sent - 1);
                self.latencies.push(latency);
                if latency > SLOW.as_nanos() as u64 {
                    self.slow.push((sent - 1, latency));
                }
                self.received += 1;
            }
        }
    }

    fn summary(mut self, rate: f64, elapsed_s: f64) -> Latency {
        self.latencies.sort_unstable();
        let at = |q: f64| -> Duration {
            let n = self.latencies.len();
            if n == 0 {
                return Duration::ZERO;
            }
            let index = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            Duration::from_nanos(self.latencies[index])
        };
        Latency {
            target_qps: rate,
            achieved_qps: self.sent as f64 / elapsed_s,
            sent: self.sent,
            received: self.received,
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
            server: CpuShare::default(),
            client: CpuShare::default(),
            send_errors: self.send_errors,
            drops: self.drops,
            stalls: stalls(&self.slow),
        }
    }
}

fn print_stalls(stalls: &[Stall]) {
    let list: Vec<String> = stalls
        .iter()
        .take(40)
        .map(|s| format!("{:.3}s:{}ms", s.at.as_secs_f64(), ms(s.worst)))
        .collect();
    eprintln!(
        "stalls (responses > {SLOW:?}; send time: worst latency): {} {}",
        stalls.len(),
        list.join(" ")
    );
}

/// A response slower than this is part of a stall.
const SLOW: Duration = Duration::from_millis(1);

/// A stretch of slow responses: queries sent within 50 ms of each other that all took more than
/// [`SLOW`] (a server descheduled, or busy with something else).
#[derive(Debug, Clone, Copy)]
struct Stall {
    /// Send time of the first slow query, since the start of the run.
    at: Duration,
    worst: Duration,
}

fn stalls(slow: &[(u64, u64)]) -> Vec<Stall> {
    const JOIN_NS: u64 = 50_000_000;
    let mut sorted = slow.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<Stall> = Vec::new();
    let mut last_ns = 0;
    for (sent, latency) in sorted {
        let latency = Duration::from_nanos(latency);
        match out.last_mut() {
            Some(stall) if sent - last_ns <= JOIN_NS => stall.worst = stall.worst.max(latency),
            _ => out.push(Stall {
                at: Duration::from_nanos(sent),
                worst: latency,
            }),
        }
        last_ns = sent;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Reload and change latency
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Reload {
    /// From the first write to the sentinel change (in the last file) answering.
    took: Duration,
    before: Memory,
    /// VmHWM reset to VmRSS just before the rewrite, so this is the reload's own peak.
    peak_kb: Option<u64>,
    after: Memory,
}

/// Rewrites every manifest file with a new revision annotation (new content, same objects, so the
/// manifests source re-reads and re-parses all of them, as after a relist) plus one real change
/// in the last file, whose answer marks the end of the reload.
fn full_reload(catalog: &mut Catalog, dir: &Path, server: &Server) -> Result<Reload> {
    let last = catalog.namespaces.len() - 1;
    let Some(sentinel) = catalog.namespaces[last]
        .services
        .iter_mut()
        .rev()
        .find(|s| !s.headless())
    else {
        bail!("no ClusterIP Service in the last namespace");
    };
    let ip = spare_cluster_ip(10_000);
    sentinel.cluster_ip = Some(ip);
    let name = sentinel.fqdn(ZONE);
    let before = server.memory()?;
    let peak_reset = server.reset_peak();
    if let Err(e) = &peak_reset {
        eprintln!("cannot reset VmHWM ({e:#}); the reload peak is not reported");
    }
    eprintln!("full reload: rewriting every manifest file");
    let started = Instant::now();
    catalog.write_manifests(dir, Some(1))?;
    let took = Client::new(server.dns)?.wait_for_a(&name, ip, started, Duration::from_secs(300))?;
    // Let the poll that applied the sentinel finish and the allocator settle.
    std::thread::sleep(Duration::from_secs(1));
    let after = server.memory()?;
    Ok(Reload {
        took,
        before,
        peak_kb: peak_reset.ok().map(|()| after.hwm_kb),
        after,
    })
}

#[derive(Debug, Clone)]
struct Changes {
    /// Write of the file → first UDP answer with the new address, per change.
    from_file: Vec<Duration>,
    /// Mean of the server's programming histogram over the changes (catalog change → view
    /// published); None if it recorded nothing.
    server_mean: Option<Duration>,
}

/// Moves `count` ClusterIP Services (in different namespaces) to new addresses, one at a time.
fn change_latency(
    catalog: &mut Catalog,
    dir: &Path,
    server: &Server,
    count: usize,
) -> Result<Changes> {
    eprintln!("{count} single-Service changes");
    let client = Client::new(server.dns)?;
    let (sum_before, count_before) = server.histogram(PROGRAMMING_METRIC)?;
    let mut from_file = Vec::with_capacity(count);
    for k in 0..count {
        let namespace = (k * 7919 + 13) % catalog.namespaces.len();
        let services = &mut catalog.namespaces[namespace].services;
        let len = services.len();
        let Some(service) = (0..len)
            .map(|i| (k + i) % len)
            .find(|&i| !services[i].headless())
        else {
            continue;
        };
        let ip = spare_cluster_ip(k as u32);
        services[service].cluster_ip = Some(ip);
        let name = services[service].fqdn(ZONE);
        let started = Instant::now();
        catalog.write_namespace(dir, namespace, Some(1))?;
        from_file.push(client.wait_for_a(&name, ip, started, Duration::from_secs(30))?);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (sum_after, count_after) = server.histogram(PROGRAMMING_METRIC)?;
    let observed = count_after - count_before;
    let server_mean =
        (observed > 0.0).then(|| Duration::from_secs_f64((sum_after - sum_before) / observed));
    Ok(Changes {
        from_file,
        server_mean,
    })
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

fn report(options: &Options, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n## svcplane-dns benchmark\n");
    let _ = writeln!(
        out,
        "dnsperf and the latency client on CPU {}; svcplane-dns on CPU {} with --udp-workers 1; \
{} s per run; query mix: 40% A ClusterIP, 10% SRV, 10% A headless, 40% NXDOMAIN search-path expansions.\n",
        client_cpu(),
        server_cpu(),
        options.duration
    );
    let _ = writeln!(
        out,
        "| Services | endpoints | startup (s) | max qps (1 core) | avg lat at max | p50 / p99 at half load | RSS MB | peak RSS MB | reload peak MB | change→answer (file) p50/p99 ms | change→answer (server) ms |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows {
        let _ = writeln!(out, "{}", main_row(row));
    }
    let _ = writeln!(out, "\n{TARGETS}\n");
    let wait = rows.iter().map(worst_wait).fold(0.0, f64::max);
    if wait > 0.05 {
        let _ = writeln!(
            out,
            "**CPU contention**: a measured process waited up to {:.0}% of the time for its core \
(other work on the machine); treat rates as lower bounds and tails as upper bounds.\n",
            wait * 100.0
        );
    }
    let _ = writeln!(
        out,
        "| Services | queries (dnsperf, max rate) | qps | avg lat | lost % | server CPU run / wait % | qps per server CPU-s | socket drops server / client | response codes |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---|");
    for row in rows {
        for (label, d) in [
            ("mix", &row.load.mix),
            ("A of ClusterIP only", &row.load.a_only),
        ] {
            let per_cpu = d.qps / d.server.run.max(1e-9);
            let _ = writeln!(
                out,
                "| {} | {label} | {:.0} | {:.3} ms | {:.2} | {} | {per_cpu:.0} | {} / {} | {} |",
                row.size.services,
                d.qps,
                d.avg_latency_s * 1e3,
                d.lost_percent,
                share(d.server),
                d.drops.server,
                d.drops.clients,
                d.rcodes
            );
        }
    }
    let _ = writeln!(
        out,
        "\n| Services | latency client: target / achieved qps | sent | lost % | p50 | p99 | p99.9 | max | server CPU run / wait % | client CPU run / wait % | socket drops server / client, EAGAIN | stalls > 1 ms: count, worst |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows {
        let l = &row.load.latency;
        let lost = 100.0 * (l.sent - l.received.min(l.sent)) as f64 / l.sent.max(1) as f64;
        let _ = writeln!(
            out,
            "| {} | {:.0} / {:.0} | {} | {lost:.3} | {} | {} | {} | {} | {} | {} | {} / {}, {} | {}, {} ms |",
            row.size.services,
            l.target_qps,
            l.achieved_qps,
            l.sent,
            ms(l.p50),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            share(l.server),
            share(l.client),
            l.drops.server,
            l.drops.clients,
            l.send_errors,
            l.stalls.len(),
            ms(l.stalls.iter().map(|s| s.worst).max().unwrap_or_default())
        );
    }
    let _ = writeln!(
        out,
        "\n| Services | manifests | generated in | startup: server CPU / run-queue wait | RSS idle / HWM after startup MB | full reload (file → answer) | RSS before / after reload MB |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let r = &row.reload;
        let (run, wait) = row.startup_cpu;
        let _ = writeln!(
            out,
            "| {} | {:.1} MB | {:.2} s | {:.2} s / {:.2} s | {} / {} | {:.2} s | {} / {} |",
            row.size.services,
            row.manifest_bytes as f64 / 1e6,
            row.generate.as_secs_f64(),
            run.as_secs_f64(),
            wait.as_secs_f64(),
            mb(row.idle.rss_kb),
            mb(row.idle.hwm_kb),
            r.took.as_secs_f64(),
            mb(r.before.rss_kb),
            mb(r.after.rss_kb)
        );
    }
    let _ = writeln!(
        out,
        "\nchange→answer (file) includes the manifests source's polling (250 ms interval, a change applied once two polls agree); \
(server) is the mean of {PROGRAMMING_METRIC} over those changes: catalog change → view published."
    );
    out
}

fn main_row(row: &Row) -> String {
    let l = &row.load.latency;
    let reload_peak = row.reload.peak_kb.map_or_else(
        || "n/a".to_string(),
        |peak| {
            format!(
                "{} (+{})",
                mb(peak),
                mb(peak.saturating_sub(row.reload.before.rss_kb))
            )
        },
    );
    let mut file = row.changes.from_file.clone();
    file.sort();
    let server = row.changes.server_mean.map_or_else(
        || "n/a".to_string(),
        |d| format!("{:.3}", d.as_secs_f64() * 1e3),
    );
    format!(
        "| {} | {} | {:.2} | {:.0} | {:.3} ms | {} / {} ms | {} | {} | {} | {} / {} | {} |",
        row.size.services,
        row.endpoints,
        row.startup.as_secs_f64(),
        row.load.mix.qps,
        row.load.mix.avg_latency_s * 1e3,
        ms(l.p50),
        ms(l.p99),
        mb(row.loaded.rss_kb),
        mb(row.loaded.hwm_kb),
        reload_peak,
        percentile_ms(&file, 0.5),
        percentile_ms(&file, 0.99),
        server,
    )
}

/// The largest run-queue wait share of the server or the latency client during the load runs.
fn worst_wait(row: &Row) -> f64 {
    [
        row.load.mix.server.wait,
        row.load.a_only.server.wait,
        row.load.latency.server.wait,
        row.load.latency.client.wait,
    ]
    .into_iter()
    .fold(0.0, f64::max)
}

fn share(s: CpuShare) -> String {
    format!("{:.0} / {:.0}", s.run * 100.0, s.wait * 100.0)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

/// Nearest-rank percentile of sorted durations, in ms.
fn percentile_ms(sorted: &[Duration], q: f64) -> String {
    if sorted.is_empty() {
        return "n/a".to_string();
    }
    let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    format!("{:.0}", sorted[index].as_secs_f64() * 1e3)
}

// ---------------------------------------------------------------------------------------------
// CPU accounting
// ---------------------------------------------------------------------------------------------

/// A process's CPU use over an interval, as fractions of wall time: `run` on a CPU, `wait`
/// runnable but queued behind other work (other people's builds on the same 2 cores show here).
#[derive(Debug, Clone, Copy, Default)]
struct CpuShare {
    run: f64,
    wait: f64,
}

/// Summed `/proc/PID/task/*/schedstat` (on-CPU ns, run-queue wait ns) at one moment.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    run_ns: u64,
    wait_ns: u64,
}

impl CpuSample {
    fn of(pid: u32) -> Result<CpuSample> {
        let dir = format!("/proc/{pid}/task");
        let (mut run_ns, mut wait_ns) = (0u64, 0u64);
        for task in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
            // Threads may exit between listing and reading.
            let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else {
                continue;
            };
            let mut fields = text
                .split_whitespace()
                .map(|f| f.parse::<u64>().unwrap_or(0));
            run_ns += fields.next().unwrap_or(0);
            wait_ns += fields.next().unwrap_or(0);
        }
        Ok(CpuSample {
            at: Instant::now(),
            run_ns,
            wait_ns,
        })
    }

    fn share_since(&self, pid: u32) -> Result<CpuShare> {
        let now = CpuSample::of(pid)?;
        let wall = now.at.duration_since(self.at).as_nanos().max(1) as f64;
        Ok(CpuShare {
            run: now.run_ns.saturating_sub(self.run_ns) as f64 / wall,
            wait: now.wait_ns.saturating_sub(self.wait_ns) as f64 / wall,
        })
    }
}

/// Datagrams the kernel dropped for full receive buffers (`/proc/net/udp`'s last column): at the
/// server's socket, and at every other 127.0.0.1 socket (the clients').
#[derive(Debug, Clone, Copy, Default)]
struct Drops {
    server: u64,
    clients: u64,
}

impl Drops {
    fn now(server_port: u16) -> Result<Drops> {
        let table = std::fs::read_to_string("/proc/net/udp").context("reading /proc/net/udp")?;
        let server = format!("0100007F:{server_port:04X}");
        let mut drops = Drops::default();
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(count)) = (fields.get(1), fields.last()) else {
                continue;
            };
            let count: u64 = count.parse().unwrap_or(0);
            if *local == server {
                drops.server += count;
            } else if local.starts_with("0100007F:") {
                drops.clients += count;
            }
        }
        Ok(drops)
    }

    /// Drops since `self` (sockets closed in between take their counts with them).
    fn since(&self, server_port: u16) -> Result<Drops> {
        let now = Drops::now(server_port)?;
        Ok(Drops {
            server: now.server.saturating_sub(self.server),
            clients: now.clients.saturating_sub(self.clients),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

/// `svcplane-dns` beside this executable (both are in target/release).
fn server_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench's executable")?;
    let dir = exe
        .parent()
        .context("the bench's executable has no directory")?;
    let bin = dir.join("svcplane-dns");
    ensure!(
        bin.is_file(),
        "{} not found: build it with `cargo build --release -p svcplane-dns -p svcplane-tests`",
        bin.display()
    );
    Ok(bin)
}

fn require_tool(name: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()));
    ensure!(
        found,
        "{name} not found on PATH (Debian: apt-get install {})",
        if name == "taskset" {
            "util-linux"
        } else {
            name
        }
    );
    Ok(())
}

/// Pins this process (its only thread, so far) to `cpu` with `taskset -p`.
fn pin_self(cpu: u32) -> Result<()> {
    let status = Command::new("taskset")
        .args([
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .context("running taskset -p")?;
    ensure!(status.success(), "taskset -p -c {cpu} failed: {status}");
    Ok(())
}

/// Waits until both CPUs were less than 10% busy over one second, or `max` has passed.
fn wait_for_idle(max: Duration) -> Result<()> {
    let started = Instant::now();
    while started.elapsed() < max {
        let before = cpu_times()?;
        std::thread::sleep(Duration::from_secs(1));
        let after = cpu_times()?;
        let busiest = before
            .iter()
            .zip(&after)
            .map(|((busy0, total0), (busy1, total1))| {
                busy1.saturating_sub(*busy0) as f64 / total1.saturating_sub(*total0).max(1) as f64
            })
            .fold(0.0, f64::max);
        if busiest < 0.10 {
            return Ok(());
        }
    }
    if !max.is_zero() {
        eprintln!("the CPUs were not idle within {max:?}; measuring anyway");
    }
    Ok(())
}

/// (busy, total) jiffies of each CPU, from /proc/stat.
fn cpu_times() -> Result<Vec<(u64, u64)>> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|line| {
            let fields: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            let total: u64 = fields.iter().sum();
            // idle and iowait.
            let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
            (total - idle.min(total), total)
        })
        .collect();
    Ok(cpus)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "unknown".to_string(), |l| l.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dnsperf_statistics() -> Result<()> {
        let text = "Statistics:\n\n  Queries sent:         1500000\n  Queries completed:    1499990 (100.00%)\n  Queries lost:         10 (0.25%)\n\n  Response codes:       NOERROR 900000 (60.00%), NXDOMAIN 599990 (40.00%)\n  Average packet size:  request 50, response 100\n  Run time (s):         10.000000\n  Queries per second:   149999.000000\n\n  Average Latency (s):  0.000500 (min 0.000010, max 0.010000)\n  Latency StdDev (s):   0.000100\n";
        let d = parse_dnsperf(text)?;
        assert_eq!(d.qps, 149999.0);
        assert_eq!(d.avg_latency_s, 0.0005);
        assert_eq!(d.lost_percent, 0.25);
        assert!(d.rcodes.starts_with("NOERROR 900000"));
        Ok(())
    }

    #[test]
    fn decodes_a_answers_with_compression() -> Result<()> {
        let mut packet = encode_query("a.b", TYPE_A, 7);
        packet[2] |= 0x80;
        packet[7] = 2;
        for last in [9u8, 10] {
            packet.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 96, 0, last]);
        }
        let answer = decode_answer(&packet)?;
        assert_eq!(
            answer.a,
            [Ipv4Addr::new(10, 96, 0, 9), Ipv4Addr::new(10, 96, 0, 10)]
        );
        assert_eq!(answer.rcode, 0);
        Ok(())
    }

    #[test]
    fn query_mix_has_the_intended_shares() {
        let catalog = Catalog::generate(&Spec::new(500, 2));
        let queries = mix_queries(&catalog, &mut Rng::new(1), 10_000);
        let srv = queries.iter().filter(|q| q.qtype == TYPE_SRV).count();
        // `<svc>.<ns>.svc.cluster.local` has 5 labels; every expansion has more.
        let expansions = queries
            .iter()
            .filter(|q| q.qtype == TYPE_A && q.name.split('.').count() > 5)
            .count();
        assert!((800..1200).contains(&srv), "{srv} SRV");
        assert!(
            (3000..4400).contains(&expansions),
            "{expansions} expansions"
        );
    }

    #[test]
    fn parses_sizes() -> Result<()> {
        let sizes = parse_sizes("10000x5,50000x5")?;
        assert_eq!((sizes[1].services, sizes[1].endpoints), (50000, 5));
        assert!(parse_sizes("100").is_err());
        Ok(())
    }
}
