//! svcplane-lab: a whole cluster's data plane in network namespaces on one machine, built from
//! ordinary Kubernetes YAML ("as easy as kind", without a control plane).
//!
//! `up` reads manifests (Namespaces, Pods, Deployments, ReplicaSets, StatefulSets, DaemonSets,
//! Services; every other kind is listed as ignored), builds nodes, pods, a node-network switch
//! and an external client as namespaces with the harness's address plan (see
//! [`crate::netns::Cluster`]), runs the pod agent (`svcplane-echo`) on every declared container
//! port, writes what a control plane would (Services with allocated IPs, EndpointSlices, Nodes,
//! Pods) into a manifests directory, and starts svcplane-proxy on every node and svcplane-dns as
//! `kube-system/kube-dns` on node 0, all reading that directory. Later commands (`apply`,
//! `delete`, `set-ready`, `exec`, `status`, `down`) are short-lived processes that work from the
//! cluster's `state.json` under a lock: there is no daemon.
//!
//! The children split the work: the pure parts are [`workload`] (workloads → pods, names,
//! reconciliation), [`alloc`] (ClusterIPs, NodePorts, load-balancer IPs) and [`slices`] (the
//! EndpointSlice controller as a function); [`manifest`] reads YAML into typed objects;
//! [`state`] owns `state.json` and its lock; [`net`] creates and deletes namespaces and links;
//! [`procs`] starts detached processes and probes them; [`pods`] runs a pod's life;
//! [`dataplane`] starts and checks svcplane-proxy and svcplane-dns; [`render`] writes the
//! manifests directory and the pods' `/etc/netns` files; [`status`] prints; [`ops`] runs the
//! commands.
//!
//! Everything the lab creates on the host is named `svp-lab-<cluster>.<role>`: namespaces
//! (`/run/netns`) and `/etc/netns` directories. Links live only inside those namespaces and are
//! named `svp-lab-…` too; nothing is ever configured in the host namespace.

pub mod alloc;
pub mod dataplane;
pub mod manifest;
pub mod net;
pub mod ops;
pub mod pods;
pub mod procs;
pub mod render;
pub mod slices;
pub mod state;
pub mod status;
pub mod workload;

use std::path::PathBuf;
use std::time::Duration;

pub use ops::{Options, Target, apply, delete, down, exec, set_ready, status, up};
pub use state::State;

/// Default root of the lab's state directories (one subdirectory per cluster).
pub const DEFAULT_STATE_ROOT: &str = "/run/svcplane-lab";
/// Default cluster name.
pub const DEFAULT_NAME: &str = "lab";
/// Prefix of every namespace and `/etc/netns` entry the lab creates.
pub const PREFIX: &str = "svp-lab-";
/// Default time a removed pod spends terminating before its namespace goes.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);
/// The cluster domain svcplane-dns serves.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Everything that can go wrong running the lab.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A manifest document is not valid or not supported.
    #[error("{file}: document {doc} ({what}): {message}")]
    Manifest {
        file: String,
        doc: usize,
        what: String,
        message: String,
    },
    /// An object was refused as the API server would refuse it.
    #[error("{what}: {message}")]
    Refused { what: String, message: String },
    /// The cluster (state directory) does not exist.
    #[error("no cluster {name:?} (no {}); create one with `svcplane-lab up`", path.display())]
    NoCluster { name: String, path: PathBuf },
    /// `up` found a cluster of that name.
    #[error("cluster {name:?} already exists ({}); `svcplane-lab --name {name} down` first", path.display())]
    Exists { name: String, path: PathBuf },
    /// A binary the lab runs is missing.
    #[error("{} not found; build it with `{build}`", path.display())]
    MissingBinary { path: PathBuf, build: String },
    /// A command could not be started or failed.
    #[error("`{cmd}` failed: {message}")]
    Command { cmd: String, message: String },
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A wait ran out of time.
    #[error("timed out after {after:?} waiting for {what}; last: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },
    /// The request does not make sense for this cluster.
    #[error("{0}")]
    Invalid(String),
}

/// Shorthand for results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// Checks a cluster name: a lowercase letter, then up to 19 lowercase letters, digits or
/// dashes. (Starting with a letter also keeps the harness's stale-namespace sweep, which reads
/// a pid from the second dash-separated field, away from lab namespaces.)
pub fn validate_name(name: &str) -> Result<()> {
    let ok = name.len() <= 20
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "bad cluster name {name:?}: use a lowercase letter then up to 19 of [a-z0-9-]"
    )))
}

/// The namespace (and `/etc/netns` entry) name of `role` in cluster `cluster`.
pub fn netns_name(cluster: &str, role: &str) -> String {
    format!("{PREFIX}{cluster}.{role}")
}

/// The prefix shared by every namespace of cluster `cluster`.
pub fn netns_prefix(cluster: &str) -> String {
    format!("{PREFIX}{cluster}.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_prefixed() {
        assert!(validate_name("lab").is_ok());
        assert!(validate_name("my-lab-2").is_ok());
        assert!(validate_name("2lab").is_err());
        assert!(validate_name("Lab").is_err());
        assert!(validate_name("a.b").is_err());
        assert!(validate_name("").is_err());
        assert_eq!(netns_name("seed", "n0"), "svp-lab-seed.n0");
        assert!(netns_name("lab-2", "n0").starts_with(&netns_prefix("lab-2")));
        assert!(!netns_name("lab-2", "n0").starts_with(&netns_prefix("lab")));
    }
}
