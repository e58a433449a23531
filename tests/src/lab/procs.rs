//! The lab's processes: starting them detached inside a namespace (own process group, stdin
//! closed, output to a log file, so `up` can exit and they live on), recognising them later by
//! pid *and* start time (a reused pid is never killed), stopping them, and probing them the way
//! a kubelet would (HTTP GET, TCP connect) from inside a namespace.
//!
//! A started process's network namespace is checked against the one asked for, and the
//! process is killed if they differ: nothing the lab starts may run in the host namespace.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::net::{self, run_in};
use super::state::Proc;
use super::{Error, Result};

/// Pause between polls.
const POLL: Duration = Duration::from_millis(20);

/// What to start.
#[derive(Clone, Debug)]
pub struct Spawn<'a> {
    /// The namespace to run in.
    pub netns: &'a str,
    pub exe: &'a Path,
    /// `argv[0]`, when not the executable's path (the lab binary dispatches on it).
    pub arg0: Option<&'a str>,
    pub args: Vec<String>,
    pub log: PathBuf,
    /// For `state.json` and messages.
    pub what: String,
}

/// Starts `spec` detached inside its namespace and returns its record.
pub fn spawn(spec: &Spawn<'_>) -> Result<Proc> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(Error::io(format!("opening {}", spec.log.display())))?;
    let err_log = log
        .try_clone()
        .map_err(Error::io("duplicating a log file"))?;
    let mut cmd = Command::new(spec.exe);
    if let Some(arg0) = spec.arg0 {
        cmd.arg0(arg0);
    }
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .env("NO_COLOR", "1")
        .process_group(0);
    let desc = format!(
        "{} {}",
        spec.arg0.unwrap_or(&spec.exe.display().to_string()),
        spec.args.join(" ")
    );
    let child = run_in(spec.netns, || cmd.spawn())?.map_err(|e| Error::Command {
        cmd: desc.clone(),
        message: e.to_string(),
    })?;
    let pid = child.id();
    drop(child);
    check_netns(pid, spec.netns, &desc)?;
    Ok(Proc {
        pid,
        start: start_ticks(pid).unwrap_or(0),
        what: spec.what.clone(),
        log: spec.log.clone(),
    })
}

/// Kills `pid` unless it runs in namespace `ns`.
fn check_netns(pid: u32, ns: &str, desc: &str) -> Result<()> {
    let want = net::netns_inode(ns);
    let got = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino());
    if want.is_some() && want == got {
        return Ok(());
    }
    net::kill(pid);
    Err(Error::Command {
        cmd: desc.to_owned(),
        message: format!("started outside namespace {ns}; killed"),
    })
}

/// The start time of `pid` in clock ticks after boot, and its state letter.
fn stat(pid: u32) -> Option<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state))
}

/// `pid`'s start time (ticks after boot).
pub fn start_ticks(pid: u32) -> Option<u64> {
    stat(pid).map(|(start, _)| start)
}

/// Whether the recorded process still runs (same start time, not a zombie).
pub fn alive(p: &Proc) -> bool {
    matches!(stat(p.pid), Some((start, state)) if start == p.start && state != 'Z' && state != 'X')
}

/// SIGKILLs the recorded process if it still runs.
pub fn stop(p: &Proc) {
    if alive(p) {
        net::kill(p.pid);
    }
}

/// Polls `attempt` every 20 ms until it succeeds or `timeout` passes.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match attempt() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                after: timeout,
                last: last.to_string(),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Fails with the log's tail when the recorded process has exited.
pub fn check_running(p: &Proc) -> Result<()> {
    if alive(p) {
        return Ok(());
    }
    Err(Error::Command {
        cmd: p.what.clone(),
        message: format!("exited; log {}:\n{}", p.log.display(), log_tail(&p.log, 15)),
    })
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether the log holds a line equal to `line`.
pub fn log_has_line(path: &Path, line: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.lines().any(|l| l.trim() == line))
}

/// `GET path` over HTTP/1.1 to `addr` from inside `ns`; returns the status code and body.
pub fn http_get(
    ns: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String)> {
    let raw = run_in(ns, || http_get_here(addr, path, timeout))??;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::Invalid(format!("not an HTTP answer from {addr}: {head:?}")))?;
    Ok((code, body.to_owned()))
}

fn http_get_here(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String> {
    let what = format!("GET http://{addr}{path}");
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(Error::io(what.clone()))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(Error::io(what.clone()))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(Error::io(what.clone()))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: svcplane-lab-probe\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(Error::io(what.clone()))?;
    let mut buf = Vec::new();
    stream
        .take(256 * 1024)
        .read_to_end(&mut buf)
        .map_err(Error::io(what))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A TCP connect to `addr` from inside `ns`.
pub fn tcp_connect(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<()> {
    run_in(ns, || TcpStream::connect_timeout(&addr, timeout).map(drop))?
        .map_err(Error::io(format!("connecting to {addr}")))
}

/// The path of a binary built next to this one (`target/debug/NAME`).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().map_err(Error::io("locating the svcplane-lab binary"))?;
    let dir = me.parent().unwrap_or(Path::new("."));
    // Integration tests run from target/debug/deps; the binaries sit one level up.
    let candidates = [dir.join(name), dir.join("..").join(name)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| Error::MissingBinary {
            path: dir.join(name),
            build: "cargo build -p svcplane-tests --bins".into(),
        })
}
