//! Topology-aware routing: narrowing the cluster-scope list with EndpointSlice hints.
//!
//! The EndpointSlice controller writes `hints.forZones` (trafficDistribution PreferClose or
//! PreferSameZone, or the `topology-mode: Auto` annotation) and additionally `hints.forNodes`
//! (PreferSameNode). kube-proxy 1.34 (`topologyModeFromHints` and `availableForTopology`, with
//! the PreferSameTrafficDistribution gate on by default) follows the hints whenever they are
//! complete and useful, without looking at the Service; so does this module.

use svcplane_common::model::Endpoint;

use super::NodeInfo;
use super::resolve::Candidate;

/// Which ready endpoints the cluster-scope list may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Topology {
    /// No topology: every endpoint.
    All,
    /// Endpoints hinted for this node.
    SameNode,
    /// Endpoints hinted for this node's zone.
    SameZone,
}

impl Topology {
    /// Chooses the topology from the hints of the ready candidates; the fallback to less local
    /// modes happens here, never when filtering.
    ///
    /// - Same node, when every ready endpoint has node hints and one is hinted for this node.
    /// - Otherwise same zone, when every ready endpoint has zone hints and one is hinted for this
    ///   node's zone (so never on a node without a zone label).
    /// - Otherwise no topology: hints on only some endpoints mean the controller is mid-update
    ///   or gave up, and no endpoint for here would blackhole the traffic.
    ///
    /// Endpoints that are not ready are ignored: their hints cannot matter, and with no ready
    /// endpoint at all there is nothing to choose from.
    pub(super) fn from_hints(candidates: &[Candidate<'_>], node: &NodeInfo) -> Topology {
        let ready = || {
            candidates
                .iter()
                .filter(|c| c.backend.ready)
                .map(|c| c.endpoint)
        };
        if ready().next().is_none() {
            Topology::All
        } else if ready().all(|e| !e.hint_nodes().is_empty())
            && ready().any(|e| hinted_for_node(e, node))
        {
            Topology::SameNode
        } else if ready().all(|e| !e.hint_zones().is_empty())
            && ready().any(|e| hinted_for_zone(e, node))
        {
            Topology::SameZone
        } else {
            Topology::All
        }
    }

    /// The endpoint may be used on this node under this topology.
    pub(super) fn admits(self, endpoint: &Endpoint, node: &NodeInfo) -> bool {
        match self {
            Topology::All => true,
            Topology::SameNode => hinted_for_node(endpoint, node),
            Topology::SameZone => hinted_for_zone(endpoint, node),
        }
    }
}

fn hinted_for_node(endpoint: &Endpoint, node: &NodeInfo) -> bool {
    !node.name.is_empty() && endpoint.hint_nodes().iter().any(|n| **n == *node.name)
}

fn hinted_for_zone(endpoint: &Endpoint, node: &NodeInfo) -> bool {
    node.zone
        .as_deref()
        .is_some_and(|zone| endpoint.hint_zones().iter().any(|z| **z == *zone))
}
