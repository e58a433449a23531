//! Network-namespace test harness: real packets between throwaway network
//! namespaces, for the proxy's and the lab's tests.
//!
//! This module owns the error type, the naming scheme and the root check;
//! its children own the pieces: [`Netns`] (one namespace, deleted on drop),
//! [`Cluster`] (nodes, pods, a switch and an external client wired like a
//! small Kubernetes cluster), [`EchoServer`] (runs `svcplane-echo` inside a
//! namespace), the client helpers ([`tcp_request`], [`udp_request`],
//! [`http_get`], [`connect_latency`], [`wait_for`]) and [`cleanup_stale`].
//!
//! Rules kept throughout: every namespace is named
//! `svp-<tag>-<pid>-<label>` and every link `svp-<tag><role><n>` (at most 15
//! characters; the node bridge keeps the Kubernetes name `cbr0`), where `tag`
//! is unique within the process and random across processes; links are
//! created inside our namespaces (a veth's peer is created directly in its
//! target namespace), so the host namespace never gains a link, an address,
//! a route, a rule or a sysctl change; everything is removed on drop,
//! including while a test panics.

mod client;
mod cluster;
mod cmd;
mod echo;
mod ns;
mod stale;

use std::io;
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use client::{
    Exchange, Identity, connect_latency, http_get, tcp_exchange, tcp_request, udp_exchange,
    udp_request, wait_for, wait_for_ok,
};
pub use cluster::{
    Cluster, ClusterConfig, EXTERNAL_IPV4, EXTERNAL_IPV6, LB_CIDR_V4, LB_CIDR_V6, MAX_NODES, Node,
    Pod, SERVICE_CIDR_V4, SERVICE_CIDR_V6,
};
pub use echo::EchoServer;
pub use ns::Netns;
pub use stale::{DEFAULT_STALE_AGE, cleanup_stale, list_ours};

/// Every namespace and link name the harness creates starts with this.
pub const PREFIX: &str = "svp-";

/// Everything that can go wrong building topologies or sending test traffic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command could not be started at all (missing binary, fork failure).
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: io::Error,
    },
    /// A command ran and exited unsuccessfully; `stderr` is what it printed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: ExitStatus,
        stderr: String,
    },
    /// Opening `/run/netns/NAME` or `setns()` into it failed.
    #[error("cannot enter network namespace {ns}: {source}")]
    Enter {
        ns: String,
        #[source]
        source: io::Error,
    },
    /// A socket, file or sysctl operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A peer answered something its protocol does not allow.
    #[error("unexpected answer from {peer}: {detail}")]
    Reply { peer: String, detail: String },
    /// A wait ran out of time; `last` is the last failure seen.
    #[error("timed out after {after:?} waiting for {what}; last: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },
    /// The caller asked for something the topology cannot do.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Shorthand for results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// Whether this process runs as root (namespaces need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// For tests: prints why and returns true when `test` must be skipped
/// because the process is not root.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipping {test}: network namespaces need root");
    true
}

/// A tag of 5 base-36 characters, unique within this process (a counter)
/// and random across processes (a random start).
pub(crate) fn fresh_tag() -> String {
    const SPACE: u32 = 36u32.pow(5);
    static START: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = *START.get_or_init(rand::random::<u32>);
    let n = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % SPACE;
    base36(n, 5)
}

/// `n` in base 36, left-padded with zeros to `width` digits.
fn base36(mut n: u32, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The name of a new namespace: `svp-<tag>-<pid>-<label>`, the label cut
/// down to lowercase letters, digits and dashes.
pub(crate) fn namespace_name(tag: &str, label: &str) -> String {
    let label: String = label
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(24)
        .collect();
    format!("{PREFIX}{tag}-{}-{label}", std::process::id())
}

/// The name of a link: `svp-<tag><role><n>`; errors past 15 characters.
pub(crate) fn link_name(tag: &str, role: &str, n: usize) -> Result<String> {
    let name = format!("{PREFIX}{tag}{role}{n}");
    if name.len() > 15 {
        return Err(Error::Invalid(format!("link name {name} is over 15 chars")));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn tags_are_short_and_distinct() {
        let a = fresh_tag();
        let b = fresh_tag();
        assert_eq!(a.len(), 5);
        assert_ne!(a, b);
        assert_eq!(base36(35, 2), "0z");
    }

    #[test]
    fn names_follow_the_scheme() {
        let ns = namespace_name("abcde", "Pod_A");
        assert!(ns.starts_with("svp-abcde-"));
        assert!(ns.ends_with("-pod-a"));
        assert_eq!(link_name("abcde", "v", 12345).unwrap().len(), 15);
        assert!(link_name("abcde", "v", 123456).is_err());
    }
}
