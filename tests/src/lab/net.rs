//! The lab's namespaces and links, with the harness's address plan (see
//! [`crate::netns::Cluster`]): a switch namespace whose bridge is the node network
//! (192.168.50.0/24, fd00:50::/64), node `i` at 192.168.50.(10+i) and fd00:50::(10+i) with a
//! bridge holding the gateways of its pod CIDRs 10.244.i.0/24 and fd00:244:i::/64, routes to the
//! other nodes' pod CIDRs and forwarding on, one namespace per pod on its node's bridge, and an
//! external client at 192.168.50.200 / fd00:50::200 routing the service and load-balancer CIDRs
//! via node 0.
//!
//! One difference from the harness: a pod's addresses carry no prefix route, so everything a pod
//! sends goes through its node's IP stack, also to pods on the same node. The reply of a
//! same-node backend reached through a ClusterIP thus passes the node's conntrack and gets
//! un-NATed, whether or not `br_netfilter` is loaded (kube-proxy needs it on a plain bridge).
//! Nodes send no ICMP redirects and pods accept none. Pod ports on the node bridge are in
//! hairpin mode, as the kubelet sets them (`--hairpin-mode=hairpin-veth`): with `br_netfilter`
//! loaded, a pod reaching itself through a ClusterIP is DNATed on the bridge and must be sent
//! back out the port it came in on. Nodes have no default route (nothing may
//! leave the lab), so they route the service and load-balancer CIDRs onto the node network
//! instead: the route lookup of a node's own connection to a ClusterIP then succeeds, and the
//! proxy's output DNAT takes it from there, as on a real node.
//!
//! Commands run in the host namespace are `ip netns add|del` only; every link is created inside
//! a lab namespace (veth peers directly in their target namespace). Code that must run inside a
//! namespace (sysctls, probes, spawning) runs on a thread that `setns()`es into it
//! ([`run_in`]).

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnetwork::{Ipv4Network, Ipv6Network};
use rustix::process::{Pid, Signal};
use rustix::thread::LinkNameSpaceType;

use super::state::{NodeState, PodState};
use super::{Error, Result, netns_name};
use crate::netns::{
    EXTERNAL_IPV4, EXTERNAL_IPV6, LB_CIDR_V4, LB_CIDR_V6, SERVICE_CIDR_V4, SERVICE_CIDR_V6,
};

/// Most nodes the address plan allows.
pub const MAX_NODES: usize = 190;
/// The node bridge.
pub const NODE_BRIDGE: &str = "svp-lab-cbr0";
/// A node's uplink to the switch.
const NODE_UPLINK: &str = "svp-lab-up";
/// The switch's bridge.
const SWITCH_BRIDGE: &str = "svp-lab-br";
/// The external client's uplink.
const EXTERNAL_UPLINK: &str = "svp-lab-x";
/// A pod's interface.
pub const POD_IFACE: &str = "svp-lab-eth0";
const BRIDGE_OPTS: &str = "type bridge forward_delay 0 mcast_snooping 0";

/// Sysctls every lab namespace starts with (nothing inherited by accident).
const BASE_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv4.ip_forward", "0"),
    ("net.ipv6.conf.all.forwarding", "0"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
];
/// A node forwards and sends no redirects.
const NODE_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv4.conf.all.send_redirects", "0"),
    ("net.ipv4.conf.default.send_redirects", "0"),
];
/// A pod accepts no redirects (its node is its only next hop).
const POD_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.conf.all.accept_redirects", "0"),
    ("net.ipv4.conf.default.accept_redirects", "0"),
    ("net.ipv6.conf.all.accept_redirects", "0"),
    ("net.ipv6.conf.default.accept_redirects", "0"),
];

/// The decimal digits of `n` read as hex, so IPv6 host parts mirror IPv4 ones.
fn mirror(n: u32) -> u16 {
    u16::from_str_radix(&n.to_string(), 16).unwrap_or(0)
}

fn index_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// Node `i`'s node-network addresses.
pub fn node_ips(i: usize) -> (Ipv4Addr, Ipv6Addr) {
    let host = 10 + index_u32(i);
    let v4 = Ipv4Addr::new(192, 168, 50, u8::try_from(host).unwrap_or(u8::MAX));
    (v4, Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, mirror(host)))
}

/// Node `i`'s pod CIDRs.
pub fn pod_cidrs(i: usize) -> (Ipv4Network, Ipv6Network) {
    let v4 = Ipv4Addr::new(10, 244, u8::try_from(i).unwrap_or(u8::MAX), 0);
    let v6 = Ipv6Addr::new(0xfd00, 0x244, mirror(index_u32(i)), 0, 0, 0, 0, 0);
    // Prefix lengths 24 and 64 are always valid.
    let v4 = Ipv4Network::new_checked(v4, 24).unwrap_or_else(|| v4.into());
    let v6 = Ipv6Network::new_checked(v6, 64).unwrap_or_else(|| v6.into());
    (v4, v6)
}

/// Host `h` of node `i`'s pod CIDRs (1 is the gateway).
pub fn pod_ips(i: usize, h: u32) -> (Ipv4Addr, Ipv6Addr) {
    let (v4, v6) = pod_cidrs(i);
    let a = Ipv4Addr::from(u32::from(v4.network()) + h);
    let b = Ipv6Addr::from(u128::from(v6.network()) + u128::from(mirror(h)));
    (a, b)
}

/// The cluster CIDRs, covering every node's pod CIDRs (10.244.i.0/24, fd00:244:i::/64).
pub const CLUSTER_CIDRS: [&str; 2] = ["10.244.0.0/16", "fd00:244::/32"];

/// The service CIDRs.
pub fn service_cidrs() -> [String; 2] {
    [SERVICE_CIDR_V4.to_string(), SERVICE_CIDR_V6.to_string()]
}

/// Runs `f` on a thread inside namespace `ns` and returns its result.
pub fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = netns_path(ns);
    let enter = |e: std::io::Error| Error::io(format!("entering network namespace {ns}"))(e);
    let file = File::open(&path).map_err(enter)?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(LinkNameSpaceType::Network),
            )
            .map_err(|e| enter(e.into()))?;
            Ok(f())
        });
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `/run/netns/NAME`.
pub fn netns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

/// The inode identifying namespace `ns` (as `/proc/PID/ns/net` shows it).
pub fn netns_inode(ns: &str) -> Option<u64> {
    std::fs::metadata(netns_path(ns)).ok().map(|m| m.ino())
}

/// Runs `cmd`, checking its exit status; `input` goes to its stdin.
fn run(cmd: &mut Command, input: Option<&str>) -> Result<()> {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let spawn_err = |e: std::io::Error| Error::Command {
        cmd: desc.clone(),
        message: e.to_string(),
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(mut stdin), Some(text)) = (child.stdin.take(), input) {
        stdin.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let script = input.map(|s| format!(" <<EOF\n{s}EOF")).unwrap_or_default();
    Err(Error::Command {
        cmd: format!("{desc}{script}"),
        message: format!("{}: {stderr}", out.status),
    })
}

/// `ip netns add NAME` (the only host-namespace command besides `del`).
pub fn add_netns(ns: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "add", ns]), None)
}

/// Runs iproute2 lines inside `ns` with one `ip -n NS -batch -`.
pub fn ip_batch<S: AsRef<str>>(ns: &str, lines: &[S]) -> Result<()> {
    let script: String = lines.iter().map(|l| format!("{}\n", l.as_ref())).collect();
    run(
        Command::new("ip").args(["-n", ns, "-batch", "-"]),
        Some(&script),
    )
}

/// Writes sysctls inside `ns`.
pub fn sysctls(ns: &str, pairs: &[(&str, &str)]) -> Result<()> {
    run_in(ns, || {
        pairs.iter().try_for_each(|(k, v)| {
            let path = Path::new("/proc/sys").join(k.replace('.', "/"));
            std::fs::write(&path, v).map_err(Error::io(format!("setting {k}={v} in {ns}")))
        })
    })?
}

/// A namespace with loopback up and `extra` sysctls on top of the base ones.
fn new_netns(ns: &str, extra: &[(&str, &str)]) -> Result<()> {
    add_netns(ns)?;
    sysctls(ns, BASE_SYSCTLS)?;
    sysctls(ns, extra)?;
    ip_batch(ns, &["link set lo up"])
}

/// What [`build_fabric`] made.
#[derive(Debug)]
pub struct Fabric {
    pub switch: String,
    pub external: String,
    pub nodes: Vec<NodeState>,
}

/// The switch, `n` nodes (routed to each other) and the external client of cluster `cluster`.
/// On failure, what was made is left for the caller's cleanup (every name is derived from
/// `cluster`).
pub fn build_fabric(cluster: &str, n: usize) -> Result<Fabric> {
    if n == 0 || n > MAX_NODES {
        return Err(Error::Invalid(format!(
            "--nodes must be 1..={MAX_NODES}, got {n}"
        )));
    }
    let switch = netns_name(cluster, "sw");
    new_netns(&switch, &[])?;
    ip_batch(
        &switch,
        &[
            format!("link add {SWITCH_BRIDGE} {BRIDGE_OPTS}"),
            format!("link set {SWITCH_BRIDGE} up"),
        ],
    )?;
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        nodes.push(make_node(cluster, &switch, i)?);
    }
    for node in &nodes {
        let routes: Vec<String> = nodes
            .iter()
            .filter(|o| o.index != node.index)
            .flat_map(routes_to)
            .collect();
        if !routes.is_empty() {
            ip_batch(&node.netns, &routes)?;
        }
    }
    let external = netns_name(cluster, "ext");
    make_external(&external, &switch, &nodes[0])?;
    Ok(Fabric {
        switch,
        external,
        nodes,
    })
}

/// Node `i` with its bridge, gateways and uplink, plugged into the switch.
fn make_node(cluster: &str, switch: &str, i: usize) -> Result<NodeState> {
    let netns = netns_name(cluster, &format!("n{i}"));
    new_netns(&netns, NODE_SYSCTLS)?;
    let (ipv4, ipv6) = node_ips(i);
    let (gw4, gw6) = pod_ips(i, 1);
    let port = format!("svp-lab-s{i}");
    ip_batch(
        &netns,
        &[
            format!("link add {NODE_BRIDGE} {BRIDGE_OPTS}"),
            format!("link set {NODE_BRIDGE} up"),
            format!("addr add {gw4}/24 dev {NODE_BRIDGE}"),
            format!("addr add {gw6}/64 dev {NODE_BRIDGE} nodad"),
            format!("link add {NODE_UPLINK} type veth peer name {port} netns {switch}"),
            format!("link set {NODE_UPLINK} up"),
            format!("addr add {ipv4}/24 dev {NODE_UPLINK}"),
            format!("addr add {ipv6}/64 dev {NODE_UPLINK} nodad"),
            format!("route add {SERVICE_CIDR_V4} dev {NODE_UPLINK}"),
            format!("route add {SERVICE_CIDR_V6} dev {NODE_UPLINK}"),
            format!("route add {LB_CIDR_V4} dev {NODE_UPLINK}"),
            format!("route add {LB_CIDR_V6} dev {NODE_UPLINK}"),
        ],
    )?;
    ip_batch(
        switch,
        &[format!("link set {port} master {SWITCH_BRIDGE} up")],
    )?;
    Ok(NodeState {
        name: format!("node-{i}"),
        index: i,
        netns,
        ipv4,
        ipv6,
        zone: if i.is_multiple_of(2) {
            "zone-a"
        } else {
            "zone-b"
        }
        .into(),
        proxy: None,
        next_host: 2,
    })
}

/// Routes to `node`'s pod CIDRs via its node IPs.
fn routes_to(node: &NodeState) -> Vec<String> {
    let (v4, v6) = pod_cidrs(node.index);
    vec![
        format!("route add {v4} via {}", node.ipv4),
        format!("route add {v6} via {}", node.ipv6),
    ]
}

/// The external client, routing service and load-balancer CIDRs via `via`.
fn make_external(ns: &str, switch: &str, via: &NodeState) -> Result<()> {
    new_netns(ns, &[])?;
    let port = "svp-lab-sx";
    let up = EXTERNAL_UPLINK;
    let mut lines = vec![
        format!("link add {up} type veth peer name {port} netns {switch}"),
        format!("link set {up} up"),
        format!("addr add {EXTERNAL_IPV4}/24 dev {up}"),
        format!("addr add {EXTERNAL_IPV6}/64 dev {up} nodad"),
    ];
    for cidr in [SERVICE_CIDR_V4.to_string(), LB_CIDR_V4.to_string()] {
        lines.push(format!("route add {cidr} via {}", via.ipv4));
    }
    for cidr in [SERVICE_CIDR_V6.to_string(), LB_CIDR_V6.to_string()] {
        lines.push(format!("route add {cidr} via {}", via.ipv6));
    }
    ip_batch(ns, &lines)?;
    ip_batch(
        switch,
        &[format!("link set {port} master {SWITCH_BRIDGE} up")],
    )
}

/// Creates `pod`'s namespace and plugs it into its node's bridge.
pub fn add_pod(pod: &PodState, node: &NodeState) -> Result<()> {
    new_netns(&pod.netns, POD_SYSCTLS)?;
    let veth = format!("svp-lab-v{}", pod.link);
    ip_batch(
        &node.netns,
        &[
            format!(
                "link add {veth} type veth peer name {POD_IFACE} netns {}",
                pod.netns
            ),
            format!("link set {veth} master {NODE_BRIDGE} up"),
            format!("link set {veth} type bridge_slave hairpin on"),
            format!("neigh flush to {}", pod.ipv4),
            format!("neigh flush to {}", pod.ipv6),
        ],
    )?;
    let (gw4, gw6) = pod_ips(node.index, 1);
    let dev = POD_IFACE;
    ip_batch(
        &pod.netns,
        &[
            format!("link set {dev} up"),
            format!("addr add {}/24 dev {dev} noprefixroute", pod.ipv4),
            format!("addr add {}/64 dev {dev} nodad noprefixroute", pod.ipv6),
            format!("route add {gw4}/32 dev {dev} scope link"),
            format!("route add 0.0.0.0/0 via {gw4} dev {dev}"),
            format!("route add {gw6}/128 dev {dev}"),
            format!("route add ::/0 via {gw6} dev {dev}"),
        ],
    )
}

/// The lab namespaces whose names start with `prefix`, sorted.
pub fn list_netns(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Kills every process inside the namespaces `names` and deletes them (one `ip -batch`).
/// Namespaces already gone are skipped.
pub fn delete_netns(names: &[String]) -> Result<()> {
    let live: Vec<&String> = names.iter().filter(|n| netns_path(n).exists()).collect();
    if live.is_empty() {
        return Ok(());
    }
    let inodes: Vec<u64> = live.iter().filter_map(|n| netns_inode(n)).collect();
    for pid in pids_in(&inodes) {
        kill(pid);
    }
    let script: String = live.iter().map(|n| format!("netns del {n}\n")).collect();
    run(
        Command::new("ip").args(["-force", "-batch", "-"]),
        Some(&script),
    )
}

/// Pids (other than ours) whose network namespace has one of `inodes`.
pub fn pids_in(inodes: &[u64]) -> Vec<u32> {
    let me = std::process::id();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let ns = std::fs::metadata(format!("/proc/{pid}/ns/net"));
            ns.is_ok_and(|m| inodes.contains(&m.ino()))
        })
        .collect()
}

/// SIGKILLs `pid`, ignoring processes already gone.
pub fn kill(pid: u32) {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    let _ = rustix::process::kill_process(pid, Signal::KILL);
}

/// Whether `ip` is one of the lab's pod addresses of node `i` (used by tests and status).
pub fn in_pod_cidr(i: usize, ip: IpAddr) -> bool {
    let (v4, v6) = pod_cidrs(i);
    match ip {
        IpAddr::V4(a) => v4.contains(a),
        IpAddr::V6(a) => v6.contains(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_plan_matches_the_harness() {
        assert_eq!(
            node_ips(0),
            (
                Ipv4Addr::new(192, 168, 50, 10),
                "fd00:50::10".parse().unwrap_or(Ipv6Addr::UNSPECIFIED)
            )
        );
        let (v4, v6) = pod_cidrs(2);
        assert_eq!(
            (v4.to_string(), v6.to_string()),
            ("10.244.2.0/24".into(), "fd00:244:2::/64".into())
        );
        let (a, b) = pod_ips(1, 12);
        assert_eq!(
            (a.to_string(), b.to_string()),
            ("10.244.1.12".into(), "fd00:244:1::12".into())
        );
        assert!(in_pod_cidr(1, a.into()) && !in_pod_cidr(0, b.into()));
    }

    #[test]
    fn the_cluster_cidrs_cover_every_pod_cidr() {
        let v4: Ipv4Network = CLUSTER_CIDRS[0]
            .parse()
            .unwrap_or_else(|_| panic!("bad CIDR"));
        let v6: Ipv6Network = CLUSTER_CIDRS[1]
            .parse()
            .unwrap_or_else(|_| panic!("bad CIDR"));
        for i in [0, 1, 9, 10, MAX_NODES - 1] {
            let (a, b) = pod_cidrs(i);
            assert!(
                v4.contains(a.network()) && v4.contains(a.broadcast()),
                "{a}"
            );
            let last = Ipv6Addr::from(u128::from(b.network()) | u128::from(u64::MAX));
            assert!(v6.contains(b.network()) && v6.contains(last), "{b}");
        }
    }
}
