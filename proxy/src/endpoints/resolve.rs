//! From a Service's merged endpoints to one Service port's candidate backends.
//!
//! kube-proxy never looks at a Service's `targetPort`: the EndpointSlice controller has already
//! resolved it, per endpoint (a named targetPort can map to a different number in each Pod), into
//! the slice's ports, which carry the Service port's name. So a Service port's backends are the
//! endpoints whose slice has a port of the same name and protocol, at that port's number; an
//! endpoint without one is no backend of that Service port.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::IpAddr;

use svcplane_common::model::{Endpoint, EndpointPort, Family, MergedEndpoint, ServicePort};

use super::{Backend, NodeInfo};

/// A backend with the endpoint it came from (topology needs the endpoint's hints).
#[derive(Debug, Clone, Copy)]
pub(super) struct Candidate<'a> {
    pub backend: Backend,
    pub endpoint: &'a Endpoint,
}

/// The candidate backends of `port` among `endpoints` in `family`, sorted by address and port,
/// one per address and port.
pub(super) fn candidates<'a>(
    port: &ServicePort,
    endpoints: &'a [MergedEndpoint],
    family: Family,
    node: &NodeInfo,
) -> Vec<Candidate<'a>> {
    let mut chosen: BTreeMap<(IpAddr, u16), Candidate<'a>> = BTreeMap::new();
    for merged in endpoints {
        // Only addresses of the family being programmed; a slice's address type already
        // guarantees this, but the address itself is what gets programmed.
        if Family::of(&merged.endpoint().ip) != family {
            continue;
        }
        let Some(target) = target_port(port, merged.ports()) else {
            continue;
        };
        let candidate = Candidate {
            backend: backend(merged.endpoint(), target, node),
            endpoint: merged.endpoint(),
        };
        keep_preferred(&mut chosen, candidate);
    }
    chosen.into_values().collect()
}

/// The number the endpoint's slice gives the Service port: matched by name and protocol.
fn target_port(port: &ServicePort, slice_ports: &[EndpointPort]) -> Option<u16> {
    slice_ports
        .iter()
        .find(|p| p.name == port.name && p.protocol == port.protocol)
        .map(|p| p.port)
}

fn backend(endpoint: &Endpoint, port: u16, node: &NodeInfo) -> Backend {
    Backend {
        ip: endpoint.ip,
        port,
        local: is_local(endpoint, node),
        ready: endpoint.ready,
        serving: endpoint.serving,
        terminating: endpoint.terminating,
    }
}

/// The endpoint runs on this node. A node without a name has no local endpoints.
pub(super) fn is_local(endpoint: &Endpoint, node: &NodeInfo) -> bool {
    !node.name.is_empty() && endpoint.node_name() == Some(&*node.name)
}

// The same address and port can reach one Service port twice (the address is in two slices with
// different port sets). kube-proxy keys endpoints by address and port and, should the copies
// disagree on locality, keeps the local one. Among copies that agree, it keeps whichever slice it
// read last, which is arbitrary; here the more usable copy wins, then the first.
fn keep_preferred<'a>(
    chosen: &mut BTreeMap<(IpAddr, u16), Candidate<'a>>,
    candidate: Candidate<'a>,
) {
    match chosen.entry((candidate.backend.ip, candidate.backend.port)) {
        Entry::Vacant(slot) => {
            slot.insert(candidate);
        }
        Entry::Occupied(mut slot) => {
            if preference(&candidate.backend) > preference(&slot.get().backend) {
                slot.insert(candidate);
            }
        }
    }
}

fn preference(backend: &Backend) -> (bool, u8) {
    let usability = if backend.ready {
        2
    } else if backend.is_serving_terminating() {
        1
    } else {
        0
    };
    (backend.local, usability)
}
