//! Pod lifecycle: placing a pod (round-robin over nodes unless pinned, the lowest free host
//! number of the node's pod CIDRs), creating its namespace and `/etc/netns` files, starting its
//! agent (`svcplane-echo` on every TCP/UDP container port and probe port), probing readiness as
//! a kubelet would, and removing it; [`execute`] runs a set of creations and removals the way
//! the controllers do: new pods first, removed pods terminating (`ready=false`,
//! `serving` as before, `terminating=true`) for the grace period, then gone, then the pods
//! whose names were still taken by terminating ones.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::ops::{Ctx, publish};
use super::procs::{self, Spawn};
use super::state::{PodState, State, key};
use super::workload::{NewPod, Probe};
use super::{Error, Result, net, netns_name, render};

/// How long a new pod may take to pass its readiness probes.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-attempt timeout of a probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Creations and removals to carry out.
#[derive(Debug, Default)]
pub struct Changes {
    pub create: Vec<NewPod>,
    /// `namespace/name` of pods to terminate.
    pub remove: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.remove.is_empty()
    }
}

/// What [`execute`] did.
#[derive(Debug, Default)]
pub struct Done {
    pub created: Vec<String>,
    pub removed: Vec<String>,
}

/// Whether a created pod runs the echo agent (user pods) or something the caller starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    User,
    System,
}

/// Creates `new` (see the module doc) and returns its key. The pod is in `state` (not ready)
/// before anything is made, so a failure half-way is cleaned up by `down`.
pub fn create(state: &mut State, new: NewPod, kind: Kind, ctx: &Ctx<'_>) -> Result<String> {
    let k = key(&new.namespace, &new.name);
    if state.pods.contains_key(&k) {
        return Err(Error::Invalid(format!("pod {k} exists")));
    }
    let node = place(state, &new, kind)?;
    let host = free_host(state, node)?;
    let (ipv4, ipv6) = net::pod_ips(node, host);
    let link = state.next_link;
    state.next_link += 1;
    let role = match kind {
        Kind::System => new.name.clone(),
        Kind::User => format!("p{link}-{}", new.name.chars().take(100).collect::<String>()),
    };
    let pod = PodState {
        netns: netns_name(&state.name, &role),
        namespace: new.namespace,
        name: new.name,
        spec: new.spec,
        owner: new.owner,
        node,
        host,
        ipv4,
        ipv6,
        link,
        ready: false,
        terminating: false,
        system: kind == Kind::System,
        process: None,
    };
    state.pods.insert(k.clone(), pod.clone());
    let node_state = &state.nodes[node];
    net::add_pod(&pod, node_state)?;
    render::write_etc(&pod)?;
    if kind == Kind::User {
        let process = start_agent(&pod, ctx)?;
        if let Some(p) = state.pods.get_mut(&k) {
            p.process = process;
        }
    }
    Ok(k)
}

/// The node `new` runs on: its pinned node, else the next one round-robin (system pods go to
/// node 0 without moving the round-robin position).
fn place(state: &mut State, new: &NewPod, kind: Kind) -> Result<usize> {
    if let Some(name) = &new.node {
        return state
            .node_by_name(name)
            .map(|n| n.index)
            .ok_or_else(|| Error::Refused {
                what: format!("Pod {}/{}", new.namespace, new.name),
                message: format!("spec.nodeName: node {name:?} not found"),
            });
    }
    if kind == Kind::System {
        return Ok(0);
    }
    let n = state.nodes.len().max(1);
    let node = state.next_node % n;
    state.next_node = (state.next_node + 1) % n;
    Ok(node)
}

/// The next host number of node `node`'s pod CIDRs no pod uses, searching round-robin from
/// where the last search ended (as host-local IPAM does), so a deleted pod's address is not
/// reused while the node's neighbour cache may still hold its old MAC address.
fn free_host(state: &mut State, node: usize) -> Result<u32> {
    const HOSTS: std::ops::RangeInclusive<u32> = 2..=254;
    let used: BTreeSet<u32> = state
        .pods
        .values()
        .filter(|p| p.node == node)
        .map(|p| p.host)
        .collect();
    let n = state
        .nodes
        .get_mut(node)
        .ok_or_else(|| Error::Invalid(format!("no node {node}")))?;
    let start = n.next_host.clamp(*HOSTS.start(), *HOSTS.end());
    let order = (start..=*HOSTS.end()).chain(*HOSTS.start()..start);
    let host = order
        .into_iter()
        .find(|h| !used.contains(h))
        .ok_or_else(|| Error::Invalid(format!("node-{node} has no free pod IPs")))?;
    n.next_host = host + 1;
    Ok(host)
}

/// Starts `pod`'s agent on its ports; `None` for a pod with no ports to serve.
fn start_agent(pod: &PodState, ctx: &Ctx<'_>) -> Result<Option<super::state::Proc>> {
    let (tcp, udp) = (pod.spec.tcp_ports(), pod.spec.udp_ports());
    if tcp.is_empty() && udp.is_empty() {
        return Ok(None);
    }
    let mut args = vec!["--name".to_owned(), pod.name.clone()];
    for (flag, ports) in [("--tcp", tcp), ("--udp", udp)] {
        if !ports.is_empty() {
            args.push(flag.into());
            args.extend(ports.iter().map(u16::to_string));
        }
    }
    let spawn = Spawn {
        netns: &pod.netns,
        exe: &ctx.opts.echo_exe,
        arg0: None,
        args,
        log: ctx
            .layout
            .logs()
            .join(format!("pod-{}.{}.log", pod.namespace, pod.name)),
        what: format!("agent {}", pod.key()),
    };
    procs::spawn(&spawn).map(Some)
}

/// Probes the pods `keys` as a kubelet would and marks those that pass ready; returns
/// warnings for the others.
pub fn probe(state: &mut State, keys: &[String]) -> Vec<String> {
    let mut warnings = Vec::new();
    for k in keys {
        let Some(pod) = state.pods.get(k) else {
            continue;
        };
        let node_ns = state
            .nodes
            .get(pod.node)
            .map(|n| n.netns.clone())
            .unwrap_or_default();
        let what = format!("pod {k} to be ready");
        let result = procs::wait_until(&what, READY_TIMEOUT, || check_ready(pod, &node_ns));
        match result {
            Ok(()) => {
                if let Some(p) = state.pods.get_mut(k) {
                    p.ready = true;
                }
            }
            Err(e) => warnings.push(format!("pod {k} is not ready: {e}")),
        }
    }
    warnings
}

/// One round of readiness checks of `pod`, from its node's namespace.
fn check_ready(pod: &PodState, node_ns: &str) -> Result<()> {
    if let Some(p) = &pod.process {
        procs::check_running(p)?;
        if !pod.system && !procs::log_has_line(&p.log, "ready") {
            return Err(Error::Invalid(
                "the agent has not bound its ports yet".into(),
            ));
        }
    }
    for probe in &pod.spec.probes {
        match probe {
            Probe::Http { port, path } => {
                let addr = SocketAddr::new(pod.ipv4.into(), *port);
                let (code, _) = procs::http_get(node_ns, addr, path, PROBE_TIMEOUT)?;
                if !(200..400).contains(&code) {
                    return Err(Error::Invalid(format!("GET {path} on {addr}: HTTP {code}")));
                }
            }
            Probe::Tcp { port } => {
                procs::tcp_connect(
                    node_ns,
                    SocketAddr::new(pod.ipv4.into(), *port),
                    PROBE_TIMEOUT,
                )?;
            }
            Probe::Running => {}
        }
    }
    Ok(())
}

/// Stops `key`'s process, deletes its namespace and files, and forgets it.
pub fn remove(state: &mut State, key: &str) -> Result<()> {
    let Some(pod) = state.pods.remove(key) else {
        return Ok(());
    };
    if let Some(p) = &pod.process {
        procs::stop(p);
    }
    net::delete_netns(std::slice::from_ref(&pod.netns))?;
    render::remove_etc(&pod.netns)
}

/// Carries out `changes` (see the module doc), publishing the state after each step.
pub fn execute(state: &mut State, changes: Changes, ctx: &Ctx<'_>) -> Result<Done> {
    let mut done = Done::default();
    let (deferred, now): (Vec<NewPod>, Vec<NewPod>) = changes
        .create
        .into_iter()
        .partition(|p| state.pods.contains_key(&key(&p.namespace, &p.name)));
    create_all(state, now, ctx, &mut done)?;
    let removing: Vec<String> = changes
        .remove
        .into_iter()
        .filter(|k| state.pods.contains_key(k))
        .collect();
    for k in &removing {
        if let Some(p) = state.pods.get_mut(k) {
            p.terminating = true;
        }
    }
    publish(state, ctx)?;
    if removing.is_empty() && deferred.is_empty() {
        return Ok(done);
    }
    std::thread::sleep(ctx.opts.grace);
    for k in &removing {
        remove(state, k)?;
        done.removed.push(k.clone());
    }
    create_all(state, deferred, ctx, &mut done)?;
    publish(state, ctx)?;
    Ok(done)
}

/// Creates `pods`, then probes them.
fn create_all(state: &mut State, pods: Vec<NewPod>, ctx: &Ctx<'_>, done: &mut Done) -> Result<()> {
    let mut keys = Vec::new();
    for new in pods {
        keys.push(create(state, new, Kind::User, ctx)?);
    }
    for w in probe(state, &keys) {
        eprintln!("svcplane-lab: warning: {w}");
    }
    done.created.extend(keys);
    Ok(())
}
