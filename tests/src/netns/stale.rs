//! Sweeping `svp-*` namespaces left behind by crashed runs.
//!
//! A namespace is stale when it is at least `min_age` old (the mtime of
//! `/run/netns/NAME`, set when it was created) and the process named in it
//! (`svp-<tag>-<pid>-<label>`) is gone, or that pid now belongs to a process
//! started after the namespace was made. Namespaces of live runs, this one
//! included, are never touched, so concurrent test binaries are safe. The
//! first namespace a process creates triggers one sweep with
//! [`DEFAULT_STALE_AGE`].

use std::path::Path;
use std::sync::Once;
use std::time::{Duration, SystemTime};

use super::{Error, PREFIX, Result, ns};

/// How old a dead run's namespace must be before the automatic sweep
/// deletes it.
pub const DEFAULT_STALE_AGE: Duration = Duration::from_secs(10 * 60);

/// Slack between a namespace's mtime and its creator's start time.
const CLOCK_SLACK: Duration = Duration::from_secs(2);

/// The names of all `svp-*` namespaces on this machine, sorted.
pub fn list_ours() -> Result<Vec<String>> {
    let dir = match std::fs::read_dir("/run/netns") {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing /run/netns")(e)),
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(PREFIX))
        .collect();
    names.sort();
    Ok(names)
}

/// Deletes stale `svp-*` namespaces at least `min_age` old (see the module
/// doc) and returns their names. Every deletion is tried; the first
/// failure is returned after the others.
pub fn cleanup_stale(min_age: Duration) -> Result<Vec<String>> {
    let stale: Vec<String> = list_ours()?
        .into_iter()
        .filter(|n| is_stale(n, min_age))
        .collect();
    let mut first_err = None;
    for name in &stale {
        if let Err(e) = ns::teardown(name) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(stale), Err)
}

/// Runs [`cleanup_stale`] with [`DEFAULT_STALE_AGE`] once per process.
pub(crate) fn sweep_once() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| match cleanup_stale(DEFAULT_STALE_AGE) {
        Ok(gone) if !gone.is_empty() => eprintln!("netns: removed stale {gone:?}"),
        Ok(_) => {}
        Err(e) => eprintln!("netns: sweeping stale namespaces: {e}"),
    });
}

/// Whether namespace `name` is old enough and its creator is gone.
fn is_stale(name: &str, min_age: Duration) -> bool {
    let Some(pid) = creator_pid(name) else {
        return false;
    };
    let path = Path::new("/run/netns").join(name);
    let Ok(created) = std::fs::metadata(path).and_then(|m| m.modified()) else {
        return false;
    };
    let age = SystemTime::now()
        .duration_since(created)
        .unwrap_or_default();
    age >= min_age && !creator_alive(pid, created)
}

/// The pid in `svp-<tag>-<pid>-<label>`.
fn creator_pid(name: &str) -> Option<u32> {
    let mut parts = name.strip_prefix(PREFIX)?.split('-');
    let _tag = parts.next()?;
    parts.next()?.parse().ok()
}

/// Whether `pid` runs and started before `created` (else the pid was reused).
fn creator_alive(pid: u32, created: SystemTime) -> bool {
    if pid == std::process::id() {
        return true;
    }
    match process_start(pid) {
        Some(started) => started <= created + CLOCK_SLACK,
        None => false,
    }
}

/// When process `pid` started, from `/proc/PID/stat` and the boot time.
fn process_start(pid: u32) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start at field 3; the
    // start time (clock ticks after boot) is field 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let since_boot = Duration::from_millis(ticks.saturating_mul(1000) / hz);
    Some(boot_time()? + since_boot)
}

/// The boot time (`btime` in `/proc/stat`).
fn boot_time() -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    let secs: u64 = line["btime ".len()..].trim().parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_the_creator_pid() {
        assert_eq!(creator_pid("svp-abcde-1234-n0"), Some(1234));
        assert_eq!(creator_pid("svp-abcde-x-n0"), None);
        assert_eq!(creator_pid("other"), None);
    }

    #[test]
    fn this_process_is_alive_and_started_in_the_past() {
        let started = process_start(std::process::id()).unwrap();
        assert!(started <= SystemTime::now() + CLOCK_SLACK);
        assert!(creator_alive(std::process::id(), SystemTime::now()));
    }
}
