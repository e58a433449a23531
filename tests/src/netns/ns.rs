//! One named network namespace (`ip netns add`), owned by a [`Netns`] value
//! that deletes it on drop after killing every process inside it.
//!
//! Code runs inside the namespace on a fresh thread that `setns()`s into
//! `/run/netns/NAME` ([`Netns::run_in`]); commands are spawned from such a
//! thread, so the child inherits the namespace without `ip netns exec`
//! (the mount namespace and `/sys` stay the host's, which none of our tools
//! mind). Sysctls are written the same way: `/proc/sys/net` shows the
//! namespace of the thread that opens it.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::sync::{Mutex, PoisonError};

use rustix::process::{Pid, Signal};
use rustix::thread::LinkNameSpaceType;

use super::{Error, Result, cmd, fresh_tag, namespace_name, stale};

/// Sysctls every namespace starts with: no IPv6 duplicate address detection
/// (addresses usable at once), no forwarding, no reverse-path filtering, so
/// nothing is inherited from the host by accident.
const BASE_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv4.ip_forward", "0"),
    ("net.ipv6.conf.all.forwarding", "0"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
];

/// A network namespace that exists as long as this value does.
#[derive(Debug)]
pub struct Netns {
    name: String,
    live: bool,
}

impl Netns {
    /// Creates `svp-<tag>-<pid>-<label>` with loopback up and the base
    /// sysctls. The first call in a process also sweeps stale namespaces
    /// of crashed runs (see [`super::cleanup_stale`]).
    pub fn new(label: &str) -> Result<Netns> {
        Netns::create(&fresh_tag(), label)
    }

    /// Like [`Netns::new`] with a caller-chosen tag (a [`super::Cluster`]
    /// shares one tag between its namespaces).
    pub(crate) fn create(tag: &str, label: &str) -> Result<Netns> {
        stale::sweep_once();
        let name = namespace_name(tag, label);
        add_namespace(&name)?;
        let ns = Netns { name, live: true };
        ns.sysctls(BASE_SYSCTLS)?;
        ns.ip(&["link set lo up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `f` on a new thread that has entered this namespace and returns
    /// its result; a panic in `f` is resumed on the caller's thread. Sockets
    /// opened by `f` stay in this namespace wherever they are used later.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = File::open(self.path()).map_err(|source| self.enter_error(source))?;
        std::thread::scope(|s| {
            let thread = std::thread::Builder::new().name(format!("in-{}", self.name));
            let handle = thread
                .spawn_scoped(s, move || {
                    let ns = LinkNameSpaceType::Network;
                    rustix::thread::move_into_link_name_space(file.as_fd(), Some(ns))
                        .map_err(|e| self.enter_error(e.into()))?;
                    Ok(f())
                })
                .map_err(Error::io("spawning a thread"))?;
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn enter_error(&self, source: std::io::Error) -> Error {
        Error::Enter {
            ns: self.name.clone(),
            source,
        }
    }

    /// Runs iproute2 commands (one per line, without the leading `ip`) in
    /// this namespace with a single `ip -batch` process.
    pub fn ip<S: AsRef<str>>(&self, lines: &[S]) -> Result<()> {
        let lines: Vec<String> = lines.iter().map(|l| l.as_ref().to_owned()).collect();
        cmd::ip_batch(&self.name, &lines)
    }

    /// Writes sysctls (`net.ipv4.ip_forward` style keys) in this namespace.
    pub fn sysctls(&self, pairs: &[(&str, &str)]) -> Result<()> {
        self.run_in(|| pairs.iter().try_for_each(|(k, v)| write_sysctl(k, v)))?
    }

    /// Reads one sysctl of this namespace, trimmed.
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key);
        let read = || std::fs::read_to_string(&path);
        let value = self
            .run_in(read)?
            .map_err(Error::io(format!("reading {key}")))?;
        Ok(value.trim().to_owned())
    }

    /// Runs `argv` inside the namespace; a non-zero exit is an error that
    /// carries stderr.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        self.run_in(|| cmd::run(&mut command(argv)))?
    }

    /// Runs `argv` inside the namespace and returns its output whatever its
    /// exit status.
    pub fn exec_unchecked(&self, argv: &[&str]) -> Result<Output> {
        self.run_in(|| cmd::unchecked(&mut command(argv)))?
    }

    /// Runs `argv` inside the namespace with `input` on stdin (e.g.
    /// `nft -f -`); a non-zero exit is an error that carries stderr.
    pub fn exec_with_input(&self, argv: &[&str], input: &[u8]) -> Result<Output> {
        self.run_in(|| cmd::run_with_input(&mut command(argv), input))?
    }

    /// Starts `argv` inside the namespace. The caller owns the child; it is
    /// killed at the latest when this namespace is dropped.
    pub fn spawn(&self, argv: &[&str]) -> Result<Child> {
        self.spawn_command(&mut command(argv))
    }

    /// Starts a prepared command inside the namespace.
    pub fn spawn_command(&self, cmd: &mut Command) -> Result<Child> {
        let desc = cmd::describe(cmd);
        let child = self.run_in(|| cmd.spawn())?;
        child.map_err(|source| Error::Spawn { cmd: desc, source })
    }

    /// Pids of the processes inside this namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<u32>> {
        pids_in(&self.name)
    }

    /// SIGKILLs every process inside this namespace except this one.
    pub fn kill_all(&self) -> Result<()> {
        kill_all_in(&self.name)
    }

    /// Deletes the namespace now, reporting failures ([`Drop`] only prints
    /// them).
    pub fn delete(mut self) -> Result<()> {
        self.live = false;
        teardown(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        if let Err(e) = teardown(&self.name) {
            eprintln!("netns: cleaning up {}: {e}", self.name);
        }
    }
}

/// `ip netns add name`. The first add of the process runs alone: on a
/// fresh machine it turns `/run/netns` into a shared mount, and concurrent
/// first adds would stack several mounts there.
fn add_namespace(name: &str) -> Result<()> {
    static MOUNTED: Mutex<bool> = Mutex::new(false);
    let mut mounted = MOUNTED.lock().unwrap_or_else(PoisonError::into_inner);
    if *mounted {
        drop(mounted);
        return cmd::ip_netns(&["add", name]).map(drop);
    }
    cmd::ip_netns(&["add", name])?;
    *mounted = true;
    Ok(())
}

/// Kills what runs inside `name`, then deletes it; the deletion is tried
/// even when listing or killing failed.
pub(crate) fn teardown(name: &str) -> Result<()> {
    let killed = kill_all_in(name);
    cmd::ip_netns(&["del", name])?;
    killed
}

/// Pids of the processes inside namespace `name`.
fn pids_in(name: &str) -> Result<Vec<u32>> {
    let out = cmd::ip_netns(&["pids", name])?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// SIGKILLs every process inside namespace `name` except this one.
fn kill_all_in(name: &str) -> Result<()> {
    let me = std::process::id();
    for pid in pids_in(name)?.into_iter().filter(|&p| p != me) {
        kill(pid);
    }
    Ok(())
}

/// SIGKILLs `pid`, ignoring processes that are already gone.
fn kill(pid: u32) {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    match rustix::process::kill_process(pid, Signal::KILL) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(e) => eprintln!("netns: kill {pid:?}: {e}"),
    }
}

/// A [`Command`] for `argv` (an empty `argv` fails when run).
fn command(argv: &[&str]) -> Command {
    let mut cmd = Command::new(argv.first().copied().unwrap_or(""));
    cmd.args(argv.iter().skip(1));
    cmd
}

/// `/proc/sys/...` for a dotted (or slashed) sysctl key.
fn sysctl_path(key: &str) -> PathBuf {
    let rel = if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    };
    PathBuf::from("/proc/sys").join(rel)
}

/// Writes one sysctl from the calling thread's namespace.
fn write_sysctl(key: &str, value: &str) -> Result<()> {
    std::fs::write(sysctl_path(key), value).map_err(Error::io(format!("setting {key}={value}")))
}
