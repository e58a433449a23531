//! The `svcplane-dns` under test (started pinned to the server CPU, killed on drop), its health
//! and metrics endpoints, its memory, and `dnsperf` runs against it.

#[allow(clippy::wildcard_imports)]
use crate::*;

/// The running `svcplane-dns`; killed when dropped, on success or error.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) dns: SocketAddr,
    pub(crate) health: SocketAddr,
    pub(crate) metrics: SocketAddr,
    pub(crate) log: PathBuf,
    pub(crate) spawned: Instant,
}

impl Server {
    pub(crate) fn start(bin: &Path, manifests: &Path, log: &Path) -> Result<Server> {
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
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `/ready`; the time from spawn to the first 200.
    pub(crate) fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
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

    pub(crate) fn check_alive(&mut self) -> Result<()> {
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

    pub(crate) fn memory(&self) -> Result<Memory> {
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
    pub(crate) fn reset_peak(&self) -> Result<()> {
        let path = format!("/proc/{}/clear_refs", self.pid());
        std::fs::write(&path, "5").with_context(|| format!("writing {path}"))
    }

    /// `NAME_sum` and `NAME_count` of a histogram in `/metrics`.
    pub(crate) fn histogram(&self, name: &str) -> Result<(f64, f64)> {
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
pub(crate) fn free_ports() -> Result<[SocketAddr; 3]> {
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
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
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
pub(crate) struct Memory {
    pub(crate) rss_kb: u64,
    pub(crate) hwm_kb: u64,
}

// ---------------------------------------------------------------------------------------------
// dnsperf
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
pub(crate) struct Dnsperf {
    pub(crate) qps: f64,
    pub(crate) avg_latency_s: f64,
    pub(crate) lost_percent: f64,
    pub(crate) rcodes: String,
    /// The server's use of its CPU during the run.
    pub(crate) server: CpuShare,
    pub(crate) drops: Drops,
}

/// `dnsperf` at its maximum rate, pinned to CPU 0.
pub(crate) fn run_dnsperf(server: &Server, file: &Path, secs: u64, label: &str) -> Result<Dnsperf> {
    eprintln!("dnsperf ({label}) for {secs} s");
    let (before, drops) = (CpuSample::of(server.pid())?, Drops::now(server.dns.port())?);
    let mut result = dnsperf(server.dns, file, secs)?;
    result.server = before.share_since(server.pid())?;
    result.drops = drops.since(server.dns.port())?;
    Ok(result)
}

pub(crate) fn dnsperf(dns: SocketAddr, file: &Path, secs: u64) -> Result<Dnsperf> {
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

pub(crate) fn parse_dnsperf(text: &str) -> Result<Dnsperf> {
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
