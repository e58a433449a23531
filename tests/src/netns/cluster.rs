//! A small Kubernetes-shaped network made of namespaces: a "switch"
//! namespace whose bridge is the node network (192.168.50.0/24 and
//! fd00:50::/64), one namespace per node, one per pod and one external
//! client.
//!
//! Node `i` has a bridge `cbr0` holding its pod gateways (10.244.i.1/24,
//! fd00:244:i::1/64), an uplink on the node network at 192.168.50.(10+i) and
//! fd00:50::(10+i) (IPv6 host parts mirror the IPv4 digits), routes to every
//! other node's pod CIDRs via that node, and forwarding on. A pod is a
//! namespace with a veth into its node's `cbr0`, the next free address of
//! the node's pod CIDRs in both families and default routes via the bridge.
//! The external client sits on the node network at 192.168.50.200 and
//! fd00:50::200 with routes for service and load-balancer CIDRs via a chosen
//! node. Only nodes forward. Pods are owned by the caller: dropping a
//! [`Pod`] deletes it, dropping the [`Cluster`] deletes the rest.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::{Error, Result, fresh_tag, link_name, ns::Netns};

/// Nodes are numbered 0..MAX_NODES (node IPs 192.168.50.10 to .199).
pub const MAX_NODES: usize = 190;
/// The external client's node-network address.
pub const EXTERNAL_IPV4: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 200);
/// The external client's node-network IPv6 address.
pub const EXTERNAL_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x200);
/// Default IPv4 service CIDR, routed from the external client.
pub const SERVICE_CIDR_V4: Ipv4Network = v4net(Ipv4Addr::new(10, 96, 0, 0), 12);
/// Default IPv6 service CIDR, routed from the external client.
pub const SERVICE_CIDR_V6: Ipv6Network = v6net(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0), 108);
/// Default IPv4 load-balancer CIDR, routed from the external client.
pub const LB_CIDR_V4: Ipv4Network = v4net(Ipv4Addr::new(10, 250, 0, 0), 24);
/// Default IPv6 load-balancer CIDR, routed from the external client.
pub const LB_CIDR_V6: Ipv6Network = v6net(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 0), 112);

const NODE_NET_V4: u8 = 24;
const NODE_NET_V6: u8 = 64;
/// The node bridge's name, as kubenet calls it.
const BRIDGE: &str = "cbr0";
/// Bridge options: no STP delay, and no multicast snooping (NDP must never
/// depend on MLD state).
const BRIDGE_OPTS: &str = "type bridge forward_delay 0 mcast_snooping 0";

const fn v4net(addr: Ipv4Addr, prefix: u8) -> Ipv4Network {
    match Ipv4Network::new_checked(addr, prefix) {
        Some(net) => net,
        None => panic!("bad IPv4 constant"),
    }
}

const fn v6net(addr: Ipv6Addr, prefix: u8) -> Ipv6Network {
    match Ipv6Network::new_checked(addr, prefix) {
        Some(net) => net,
        None => panic!("bad IPv6 constant"),
    }
}

/// What [`Cluster::with_config`] builds.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Nodes created up front (more with [`Cluster::add_node`]).
    pub nodes: usize,
    /// The node the external client routes `external_routes` through.
    pub external_via: usize,
    /// CIDRs the external client sends via `external_via`.
    pub external_routes: Vec<IpNetwork>,
}

impl Default for ClusterConfig {
    /// Two nodes; the external client routes the default service and
    /// load-balancer CIDRs via node 0.
    fn default() -> Self {
        let routes = [SERVICE_CIDR_V4, LB_CIDR_V4].map(IpNetwork::V4);
        let routes6 = [SERVICE_CIDR_V6, LB_CIDR_V6].map(IpNetwork::V6);
        ClusterConfig {
            nodes: 2,
            external_via: 0,
            external_routes: routes.into_iter().chain(routes6).collect(),
        }
    }
}

/// One node: a namespace that forwards between its pods' bridge and the
/// node network.
#[derive(Debug)]
pub struct Node {
    /// The node's namespace (its "host network").
    pub ns: Netns,
    /// The node number `i`.
    pub index: usize,
    /// 192.168.50.(10+i).
    pub ipv4: Ipv4Addr,
    /// fd00:50::(10+i).
    pub ipv6: Ipv6Addr,
    /// 10.244.i.0/24; the gateway .1 sits on `cbr0`.
    pub pod_cidr_v4: Ipv4Network,
    /// fd00:244:i::/64; the gateway ::1 sits on `cbr0`.
    pub pod_cidr_v6: Ipv6Network,
    /// The node-network interface.
    pub uplink: String,
}

impl Node {
    /// The pods' IPv4 gateway (on `cbr0`).
    pub fn gateway_v4(&self) -> Ipv4Addr {
        host_v4(self.pod_cidr_v4, 1)
    }

    /// The pods' IPv6 gateway (on `cbr0`).
    pub fn gateway_v6(&self) -> Ipv6Addr {
        host_v6(self.pod_cidr_v6, 1)
    }

    /// The bridge the pods hang on.
    pub fn bridge(&self) -> &str {
        BRIDGE
    }

    /// The node address of `ip`'s family.
    pub fn ip_like(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => self.ipv4.into(),
            IpAddr::V6(_) => self.ipv6.into(),
        }
    }
}

/// A pod: a namespace with one veth into its node's `cbr0`. Dropping it
/// deletes the namespace (and so both ends of the veth).
#[derive(Debug)]
pub struct Pod {
    /// The pod's namespace.
    pub ns: Netns,
    /// The name the test gave it.
    pub name: String,
    /// The node it runs on.
    pub node: usize,
    /// Its address in the node's IPv4 pod CIDR.
    pub ipv4: Ipv4Addr,
    /// Its address in the node's IPv6 pod CIDR.
    pub ipv6: Ipv6Addr,
    /// Its interface (inside the pod).
    pub iface: String,
    /// The other end of its veth (inside the node, a port of `cbr0`).
    pub node_iface: String,
}

/// Nodes, a node-network switch and an external client; see the module doc.
#[derive(Debug)]
pub struct Cluster {
    tag: String,
    nodes: Vec<Node>,
    /// Per node: the next free host number in its pod CIDRs.
    next_host: Vec<u32>,
    /// Pods made so far (numbers their links and namespaces).
    pods_made: usize,
    external: Netns,
    switch: Netns,
    switch_bridge: String,
}

impl Cluster {
    /// A cluster of `nodes` nodes with the default external routes.
    pub fn new(nodes: usize) -> Result<Cluster> {
        Cluster::with_config(ClusterConfig {
            nodes,
            ..ClusterConfig::default()
        })
    }

    /// Builds the switch, `config.nodes` nodes and the external client.
    pub fn with_config(config: ClusterConfig) -> Result<Cluster> {
        if config.nodes == 0 || config.external_via >= config.nodes {
            return Err(Error::Invalid(format!(
                "external_via {} needs at least that many nodes + 1, got {}",
                config.external_via, config.nodes
            )));
        }
        let tag = fresh_tag();
        let switch = Netns::create(&tag, "sw")?;
        let switch_bridge = link_name(&tag, "br", 0)?;
        switch.ip(&[
            format!("link add {switch_bridge} {BRIDGE_OPTS}"),
            format!("link set {switch_bridge} up"),
        ])?;
        let external = Netns::create(&tag, "ext")?;
        let mut cluster = Cluster {
            tag,
            nodes: Vec::new(),
            next_host: Vec::new(),
            pods_made: 0,
            external,
            switch,
            switch_bridge,
        };
        cluster.attach_external()?;
        for _ in 0..config.nodes {
            cluster.add_node()?;
        }
        for cidr in config.external_routes {
            cluster.route_external(cidr, config.external_via)?;
        }
        Ok(cluster)
    }

    /// The tag shared by this cluster's namespace and link names.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The nodes, by index.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> Result<&Node> {
        self.nodes
            .get(i)
            .ok_or_else(|| Error::Invalid(format!("no node {i} (have {})", self.nodes.len())))
    }

    /// The external client's namespace (192.168.50.200, fd00:50::200).
    pub fn external(&self) -> &Netns {
        &self.external
    }

    /// The namespace holding the node-network bridge.
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// Names of the namespaces the cluster itself owns (not its pods).
    pub fn namespace_names(&self) -> Vec<String> {
        let fixed = [&self.switch, &self.external].map(|n| n.name().to_owned());
        let nodes = self.nodes.iter().map(|n| n.ns.name().to_owned());
        fixed.into_iter().chain(nodes).collect()
    }

    /// Makes the external client send `cidr` via node `via` (replacing any
    /// earlier route for it).
    pub fn route_external(&self, cidr: IpNetwork, via: usize) -> Result<()> {
        let gw = self.node(via)?.ip_like(cidr.ip());
        self.external
            .ip(&[format!("route replace {cidr} via {gw}")])
    }

    /// Plugs the external client into the switch.
    fn attach_external(&self) -> Result<()> {
        let uplink = link_name(&self.tag, "x", 0)?;
        let port = link_name(&self.tag, "sx", 0)?;
        self.external.ip(&[
            veth(&uplink, &port, &self.switch),
            format!("link set {uplink} up"),
            format!("addr add {EXTERNAL_IPV4}/{NODE_NET_V4} dev {uplink}"),
            format!("addr add {EXTERNAL_IPV6}/{NODE_NET_V6} dev {uplink} nodad"),
        ])?;
        self.plug_into_switch(&port)
    }

    fn plug_into_switch(&self, port: &str) -> Result<()> {
        let bridge = &self.switch_bridge;
        self.switch
            .ip(&[format!("link set {port} master {bridge} up")])
    }

    /// Adds node `nodes().len()` and routes between it and the others;
    /// returns its index.
    pub fn add_node(&mut self) -> Result<usize> {
        let i = self.nodes.len();
        if i >= MAX_NODES {
            return Err(Error::Invalid(format!("at most {MAX_NODES} nodes")));
        }
        let node = self.make_node(i)?;
        let port = link_name(&self.tag, "s", i)?;
        self.plug_into_switch(&port)?;
        for other in &self.nodes {
            node.ns.ip(&routes_to(other))?;
            other.ns.ip(&routes_to(&node))?;
        }
        self.nodes.push(node);
        self.next_host.push(2);
        Ok(i)
    }

    /// Node `i`'s namespace with its bridge, gateways, uplink and
    /// forwarding; its switch port is left for the caller to plug.
    fn make_node(&self, i: usize) -> Result<Node> {
        let ns = Netns::create(&self.tag, &format!("n{i}"))?;
        ns.sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ])?;
        let digits = mirror(10 + i as u32);
        let node = Node {
            ns,
            index: i,
            ipv4: Ipv4Addr::new(192, 168, 50, 10 + i as u8),
            ipv6: Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, digits),
            pod_cidr_v4: v4net(Ipv4Addr::new(10, 244, i as u8, 0), 24),
            pod_cidr_v6: v6net(
                Ipv6Addr::new(0xfd00, 0x244, mirror(i as u32), 0, 0, 0, 0, 0),
                64,
            ),
            uplink: link_name(&self.tag, "n", i)?,
        };
        node.ns.ip(&self.node_setup(&node)?)?;
        Ok(node)
    }

    /// The batch that gives `node` its bridge, gateways and uplink.
    fn node_setup(&self, node: &Node) -> Result<Vec<String>> {
        let up = &node.uplink;
        let port = link_name(&self.tag, "s", node.index)?;
        Ok(vec![
            format!("link add {BRIDGE} {BRIDGE_OPTS}"),
            format!("link set {BRIDGE} up"),
            format!("addr add {}/24 dev {BRIDGE}", node.gateway_v4()),
            format!("addr add {}/64 dev {BRIDGE} nodad", node.gateway_v6()),
            veth(up, &port, &self.switch),
            format!("link set {up} up"),
            format!("addr add {}/{NODE_NET_V4} dev {up}", node.ipv4),
            format!("addr add {}/{NODE_NET_V6} dev {up} nodad", node.ipv6),
        ])
    }

    /// Adds a pod called `name` on node `node`, with the node's next free
    /// addresses.
    pub fn add_pod(&mut self, node: usize, name: &str) -> Result<Pod> {
        let host = self.take_host(node)?;
        let k = self.pods_made;
        self.pods_made += 1;
        let n = self.node(node)?;
        let pod = Pod {
            ns: Netns::create(&self.tag, &format!("p{k}-{name}"))?,
            name: name.to_owned(),
            node,
            ipv4: host_v4(n.pod_cidr_v4, host),
            ipv6: host_v6(n.pod_cidr_v6, mirror(host).into()),
            iface: link_name(&self.tag, "c", k)?,
            node_iface: link_name(&self.tag, "v", k)?,
        };
        n.ns.ip(&[
            veth(&pod.node_iface, &pod.iface, &pod.ns),
            format!("link set {} master {BRIDGE} up", pod.node_iface),
        ])?;
        pod.ns.ip(&pod_setup(&pod, n))?;
        Ok(pod)
    }

    /// Reserves the next host number in node `node`'s pod CIDRs.
    fn take_host(&mut self, node: usize) -> Result<u32> {
        let next = self
            .next_host
            .get_mut(node)
            .ok_or_else(|| Error::Invalid(format!("no node {node}")))?;
        if *next > 254 {
            return Err(Error::Invalid(format!("node {node} has no free pod IPs")));
        }
        *next += 1;
        Ok(*next - 1)
    }
}

/// The batch that configures a pod's side of its veth.
fn pod_setup(pod: &Pod, node: &Node) -> Vec<String> {
    let dev = &pod.iface;
    vec![
        format!("link set {dev} up"),
        format!("addr add {}/24 dev {dev}", pod.ipv4),
        format!("addr add {}/64 dev {dev} nodad", pod.ipv6),
        format!("route add 0.0.0.0/0 via {}", node.gateway_v4()),
        format!("route add ::/0 via {}", node.gateway_v6()),
    ]
}

/// Routes to `node`'s pod CIDRs via its node IPs.
fn routes_to(node: &Node) -> Vec<String> {
    vec![
        format!("route add {} via {}", node.pod_cidr_v4, node.ipv4),
        format!("route add {} via {}", node.pod_cidr_v6, node.ipv6),
    ]
}

/// A batch line creating veth `local` here with its peer `peer` created
/// directly inside `peer_ns` (it never exists in the host namespace).
fn veth(local: &str, peer: &str, peer_ns: &Netns) -> String {
    let ns = peer_ns.name();
    format!("link add {local} type veth peer name {peer} netns {ns}")
}

/// Host number `n` of an IPv4 network.
fn host_v4(net: Ipv4Network, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

/// Host number `n` of an IPv6 network.
fn host_v6(net: Ipv6Network, n: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()) + n)
}

/// The decimal digits of `n` read as hex, so IPv6 host parts mirror IPv4
/// ones (node 10 → 192.168.50.20 and fd00:50::20). `n` < 10000.
fn mirror(n: u32) -> u16 {
    u16::from_str_radix(&n.to_string(), 16).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_digits_mirror_ipv4() {
        assert_eq!(mirror(10), 0x10);
        assert_eq!(mirror(200), 0x200);
        assert_eq!(EXTERNAL_IPV6.to_string(), "fd00:50::200");
        assert_eq!(
            host_v4(v4net(Ipv4Addr::new(10, 244, 3, 0), 24), 1).to_string(),
            "10.244.3.1"
        );
    }
}
