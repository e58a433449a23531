//! The machine around the bench: CPU accounting from `schedstat`, kernel socket drops, pinning,
//! waiting for idle CPUs and finding tools and the server binary.

#[allow(clippy::wildcard_imports)]
use crate::*;

/// A process's CPU use over an interval, as fractions of wall time: `run` on a CPU, `wait`
/// runnable but queued behind other work (other people's builds on the same 2 cores show here).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuShare {
    pub(crate) run: f64,
    pub(crate) wait: f64,
}

/// Summed `/proc/PID/task/*/schedstat` (on-CPU ns, run-queue wait ns) at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSample {
    pub(crate) at: Instant,
    pub(crate) run_ns: u64,
    pub(crate) wait_ns: u64,
}

impl CpuSample {
    pub(crate) fn of(pid: u32) -> Result<CpuSample> {
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

    pub(crate) fn share_since(&self, pid: u32) -> Result<CpuShare> {
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
pub(crate) struct Drops {
    pub(crate) server: u64,
    pub(crate) clients: u64,
}

impl Drops {
    pub(crate) fn now(server_port: u16) -> Result<Drops> {
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
    pub(crate) fn since(&self, server_port: u16) -> Result<Drops> {
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
pub(crate) fn server_binary() -> Result<PathBuf> {
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

pub(crate) fn require_tool(name: &str) -> Result<()> {
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
pub(crate) fn pin_self(cpu: u32) -> Result<()> {
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
pub(crate) fn wait_for_idle(max: Duration) -> Result<()> {
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
pub(crate) fn cpu_times() -> Result<Vec<(u64, u64)>> {
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

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "unknown".to_string(), |l| l.trim().to_string())
}

/// Writes `text` into the kernel trace (`trace_marker`) when tracing is available, so that an
/// ftrace recording of a run (`sched_switch` on the server's CPU) can be lined up with the load
/// phases. Without tracefs this does nothing.
pub(crate) fn trace_mark(text: &str) {
    if let Ok(mut marker) = std::fs::OpenOptions::new()
        .write(true)
        .open("/sys/kernel/tracing/trace_marker")
    {
        let _ = marker.write_all(text.as_bytes());
    }
}
