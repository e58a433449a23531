//! A lab cluster's state: `<root>/<name>/state.json` (nodes, pods with their addresses,
//! placement and readiness, Services as assigned, workloads, namespaces, and the pid of every
//! process started) with the directory layout around it (`manifests/`, `logs/`) and the lock
//! (`lock`, an exclusive `flock`) every command holds while it reads and writes the state.
//! `state.json` is written to a temporary file and renamed over, so a crash never leaves half a
//! state.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1 as core;
use serde::{Deserialize, Serialize};

use super::workload::{Owner, PodSpec, Workload};
use super::{Error, Result};

/// The current layout of `state.json`.
pub const VERSION: u32 = 1;

/// A process the lab started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    pub pid: u32,
    /// Its start time in clock ticks after boot (`/proc/PID/stat` field 22): a pid reused by
    /// another process never matches.
    pub start: u64,
    /// What it is (`proxy node-0`, `agent shop/web-0`…).
    pub what: String,
    pub log: PathBuf,
}

/// One node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// `node-<index>`.
    pub name: String,
    pub index: usize,
    pub netns: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub zone: String,
    pub proxy: Option<Proc>,
    /// Where the search for the next free pod host number starts (host-local IPAM style: a
    /// freed address is not handed out again at once).
    #[serde(default)]
    pub next_host: u32,
}

/// One pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub spec: PodSpec,
    pub owner: Option<Owner>,
    /// The node's index.
    pub node: usize,
    pub netns: String,
    /// Host number in the node's pod CIDRs (2..=254).
    pub host: u32,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// Numbers the pod's veth on the node (`svp-lab-v<link>`).
    pub link: u32,
    pub ready: bool,
    pub terminating: bool,
    /// The lab's own pods (kube-dns): `apply` and `delete` leave them alone.
    pub system: bool,
    /// The agent (or, for kube-dns, svcplane-dns).
    pub process: Option<Proc>,
}

impl PodState {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        key(&self.namespace, &self.name)
    }

    /// Both addresses, IPv4 first.
    pub fn ips(&self) -> [IpAddr; 2] {
        [self.ipv4.into(), self.ipv6.into()]
    }
}

/// `namespace/name`.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Everything the lab knows about one cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub name: String,
    pub switch_netns: String,
    pub external_netns: String,
    pub nodes: Vec<NodeState>,
    /// By `namespace/name`.
    pub pods: BTreeMap<String, PodState>,
    /// By `namespace/name`, as assigned (ClusterIPs, NodePorts, LB status).
    pub services: BTreeMap<String, core::Service>,
    /// By [`Workload::key`].
    pub workloads: BTreeMap<String, Workload>,
    pub namespaces: BTreeSet<String>,
    /// The next pod's link number.
    pub next_link: u32,
    /// The round-robin scheduler's position.
    pub next_node: usize,
}

impl State {
    /// The node called `name`.
    pub fn node_by_name(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every namespace the cluster owns (fixed ones, nodes, pods).
    pub fn netns_names(&self) -> Vec<String> {
        let fixed = [&self.switch_netns, &self.external_netns];
        let fixed = fixed.into_iter().filter(|n| !n.is_empty()).cloned();
        let nodes = self.nodes.iter().map(|n| n.netns.clone());
        let pods = self.pods.values().map(|p| p.netns.clone());
        fixed.chain(nodes).chain(pods).collect()
    }

    /// Every process the cluster started.
    pub fn procs(&self) -> Vec<&Proc> {
        let nodes = self.nodes.iter().filter_map(|n| n.proxy.as_ref());
        let pods = self.pods.values().filter_map(|p| p.process.as_ref());
        nodes.chain(pods).collect()
    }

    /// Finds a pod by `name` (unique across namespaces) or `namespace/name`.
    pub fn find_pod(&self, which: &str) -> Result<&PodState> {
        if let Some(pod) = self.pods.get(which) {
            return Ok(pod);
        }
        let matches: Vec<&PodState> = self.pods.values().filter(|p| p.name == which).collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(Error::Invalid(format!(
                "no pod {which:?}; pods: {}",
                self.pods.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
            many => Err(Error::Invalid(format!(
                "pod name {which:?} is ambiguous: {}",
                many.iter().map(|p| p.key()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

/// Where a cluster's files live.
#[derive(Clone, Debug)]
pub struct Layout {
    pub name: String,
    pub dir: PathBuf,
}

impl Layout {
    /// `<root>/<name>`.
    pub fn new(root: &Path, name: &str) -> Layout {
        Layout {
            name: name.to_owned(),
            dir: root.join(name),
        }
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    fn lock_file(&self) -> PathBuf {
        self.dir.join("lock")
    }

    /// Whether the cluster's directory exists.
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Creates the directory tree (for `up`). Creating the cluster's directory is what claims
    /// the name: of two `up`s racing for it, one gets [`Error::Exists`].
    pub fn create(&self) -> Result<()> {
        let creating = |dir: &Path| Error::io(format!("creating {}", dir.display()));
        if let Some(root) = self.dir.parent() {
            std::fs::create_dir_all(root).map_err(creating(root))?;
        }
        match std::fs::create_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists {
                    name: self.name.clone(),
                    path: self.dir.clone(),
                });
            }
            Err(e) => return Err(creating(&self.dir)(e)),
        }
        for dir in [self.manifests(), self.logs()] {
            std::fs::create_dir(&dir).map_err(creating(&dir))?;
        }
        Ok(())
    }

    /// Takes the cluster's lock (blocking while another command holds it).
    pub fn lock(&self) -> Result<Lock> {
        let path = self.lock_file();
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io(format!("opening {}", path.display())))?;
        file.lock()
            .map_err(Error::io(format!("locking {}", path.display())))?;
        Ok(Lock { _file: file })
    }

    /// Reads `state.json`.
    pub fn load(&self) -> Result<State> {
        let path = self.state_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoCluster {
                    name: self.name.clone(),
                    path,
                });
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
        };
        let state: State = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: not a lab state: {e}", path.display())))?;
        if state.version != VERSION {
            return Err(Error::Invalid(format!(
                "{}: state version {} (this svcplane-lab reads {VERSION})",
                path.display(),
                state.version
            )));
        }
        Ok(state)
    }

    /// Writes `state.json` atomically.
    pub fn save(&self, state: &State) -> Result<()> {
        let text = serde_json::to_string_pretty(state)
            .map_err(|e| Error::Invalid(format!("serialising the state: {e}")))?;
        write_atomic(&self.state_file(), text.as_bytes())
    }
}

/// The cluster lock; released when dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Writes `path` through a hidden temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(Error::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(Error::io(format!("renaming to {}", path.display())))
}
