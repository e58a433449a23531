//! A process-wide interner for the values that repeat across hundreds of thousands of endpoints
//! and objects — node names, zones, namespaces, port names, (node, zone) pairs, slices' port
//! lists — so each is allocated once.
//!
//! The tables only grow (a cluster has few nodes, zones, namespaces and distinct port lists);
//! past [`MAX`] entries new values are no longer interned, so hostile input cannot make them
//! unbounded.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock};

use crate::model::{EndpointPort, Hints, Locality, ServicePort};

/// Interned values kept at most, per table.
const MAX: usize = 65_536;

type Table<T> = OnceLock<Mutex<HashSet<Arc<T>>>>;

/// The shared copy of `value` in `table`, made with `make` if there is none yet.
fn shared<T: Hash + Eq + ?Sized>(
    table: &'static Table<T>,
    value: &T,
    make: impl FnOnce() -> Arc<T>,
) -> Arc<T> {
    let mut table = table
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = table.get(value) {
        return existing.clone();
    }
    let value = make();
    if table.len() < MAX {
        table.insert(value.clone());
    }
    value
}

/// The shared copy of `s`.
pub fn intern(s: &str) -> Arc<str> {
    static TABLE: Table<str> = OnceLock::new();
    shared(&TABLE, s, || Arc::from(s))
}

/// The shared (node, zone, hints) triple; None when all are absent.
pub fn locality(
    node_name: Option<&str>,
    zone: Option<&str>,
    hints: Option<Hints>,
) -> Option<Arc<Locality>> {
    static TABLE: Table<Locality> = OnceLock::new();
    if node_name.is_none() && zone.is_none() && hints.is_none() {
        return None;
    }
    let value = Locality {
        node_name: node_name.map(intern),
        zone: zone.map(intern),
        hints: hints.map(Box::new),
    };
    Some(shared(&TABLE, &value, || Arc::new(value.clone())))
}

/// The shared copy of a Service's port list (Services repeat a few: `http`/80→8080 …).
pub fn service_ports(ports: &[ServicePort]) -> Arc<[ServicePort]> {
    static TABLE: Table<[ServicePort]> = OnceLock::new();
    shared(&TABLE, ports, || Arc::from(ports))
}

/// The shared copy of an EndpointSlice's port list. The slices of a cluster's Services repeat a
/// few port lists (`http`/8080, `grpc`/9090 …), and each slice would otherwise hold its own.
pub fn endpoint_ports(ports: &[EndpointPort]) -> Arc<[EndpointPort]> {
    static TABLE: Table<[EndpointPort]> = OnceLock::new();
    shared(&TABLE, ports, || Arc::from(ports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_allocation() {
        let a = intern("node-a");
        let b = intern(&String::from("node-a"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &intern("node-b")));
        let p = locality(Some("node-a"), Some("z"), None).expect("pair");
        let q = locality(Some("node-a"), Some("z"), None).expect("pair");
        assert!(Arc::ptr_eq(&p, &q));
        assert!(locality(None, None, None).is_none());
        let port = |port| EndpointPort {
            name: intern("http"),
            protocol: crate::model::Protocol::Tcp,
            port,
        };
        let a = endpoint_ports(&[port(80)]);
        assert!(Arc::ptr_eq(&a, &endpoint_ports(&[port(80)])));
        assert_eq!(*endpoint_ports(&[port(81)]), [port(81)]);
    }
}
