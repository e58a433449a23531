//! Merging a Service's EndpointSlices into one de-duplicated endpoint list.
//!
//! The EndpointSlice API allows the same address to appear in more than one slice of a Service
//! (while the controller moves endpoints between slices, or when two controllers manage slices
//! for one Service). Consumers want each address once: this module picks one entry per
//! `(address, port set)` — the most usable one (ready, then serving, then the rest), the slice
//! whose name sorts first on ties — and returns them in address order, so that the result does
//! not depend on the order slices arrived in.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{Endpoint, EndpointPort, EndpointSlice, MergedEndpoint};

/// How usable an endpoint is; higher wins when the same address appears twice.
fn rank(e: &Endpoint) -> u8 {
    match (e.ready, e.serving) {
        (true, _) => 2,
        (false, true) => 1,
        (false, false) => 0,
    }
}

/// Merges slices (given in slice-name order) into the endpoints of their Service. The result
/// shares the slices' endpoints and port lists (a large cluster's endpoints are held once).
pub fn merge<'a>(
    slices: impl IntoIterator<Item = &'a Arc<EndpointSlice>>,
) -> Arc<[MergedEndpoint]> {
    let mut chosen: BTreeMap<(IpAddr, &[EndpointPort]), MergedEndpoint> = BTreeMap::new();
    for slice in slices {
        for (i, endpoint) in slice.endpoints.iter().enumerate() {
            let key = (endpoint.ip, &*slice.ports);
            match chosen.get(&key) {
                Some(existing) if rank(existing.endpoint()) >= rank(endpoint) => {}
                _ => {
                    if let Some(merged) = MergedEndpoint::new(slice.clone(), i) {
                        chosen.insert(key, merged);
                    }
                }
            }
        }
    }
    chosen.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Family, ObjectKey, Protocol};

    fn ep(ip: &str, ready: bool, serving: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().expect("test ip"),
            hostname: None,
            locality: None,
            ready,
            serving,
            terminating: !ready,
        }
    }

    fn slice(name: &str, port: u16, endpoints: Vec<Endpoint>) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            key: ObjectKey::new("ns", name),
            service_name: Some("svc".into()),
            family: Family::V4,
            ports: Arc::new([EndpointPort {
                name: "".into(),
                protocol: Protocol::Tcp,
                port,
            }]),
            endpoints,
        })
    }

    #[test]
    fn duplicate_address_keeps_the_ready_copy() {
        let a = slice("a", 80, vec![ep("10.0.0.2", false, true)]);
        let b = slice(
            "b",
            80,
            vec![ep("10.0.0.2", true, true), ep("10.0.0.1", true, true)],
        );
        let merged = merge([&a, &b]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].endpoint().ip.to_string(), "10.0.0.1");
        assert!(merged[1].endpoint().ready);
    }

    #[test]
    fn same_address_with_other_ports_is_kept_apart() {
        let a = slice("a", 80, vec![ep("10.0.0.2", true, true)]);
        let b = slice("b", 8080, vec![ep("10.0.0.2", true, true)]);
        assert_eq!(merge([&a, &b]).len(), 2);
    }

    #[test]
    fn ties_keep_the_first_slice() {
        let mut first = ep("10.0.0.2", true, true);
        first.hostname = Some("first".into());
        let a = slice("a", 80, vec![first]);
        let b = slice("b", 80, vec![ep("10.0.0.2", true, true)]);
        let merged = merge([&a, &b]);
        assert_eq!(merged[0].endpoint().hostname.as_deref(), Some("first"));
    }
}
