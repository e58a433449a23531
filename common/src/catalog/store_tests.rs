//! Tests of the catalog store: replace/apply/delete semantics, merging, and the change log.

use std::net::IpAddr;
use std::sync::Arc;

use super::*;
use crate::catalog::Changes;
use crate::model::*;

fn service(ns: &str, name: &str, ip: &str) -> Object {
    let ip = ip.parse().expect("ip");
    Object::Service(Arc::new(Service::new(ObjectKey::new(ns, name), vec![ip])))
}

fn slice(ns: &str, name: &str, svc: &str, ips: &[&str]) -> Object {
    Object::EndpointSlice(Arc::new(EndpointSlice {
        key: ObjectKey::new(ns, name),
        service_name: Some(svc.into()),
        family: Family::V4,
        ports: Arc::new([]),
        endpoints: ips
            .iter()
            .map(|ip| Endpoint::new(ip.parse::<IpAddr>().expect("ip")))
            .collect(),
    }))
}

fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(ns, name)
}

fn changed(snap: &Snapshot, since: u64) -> Vec<ObjectKey> {
    match snap.changes_since(since) {
        Changes::Full => panic!("full"),
        Changes::Some { services, .. } => {
            let mut v: Vec<ObjectKey> = services.into_iter().collect();
            v.sort();
            v
        }
    }
}

#[test]
fn replace_then_apply_reports_only_what_changed() {
    let mut store = Store::default();
    store.apply(SourceEvent::Replace {
        kind: Kind::Service,
        objects: vec![service("a", "x", "10.0.0.1"), service("a", "y", "10.0.0.2")],
    });
    let first = store.snapshot().expect("first");
    assert_eq!(first.services.len(), 2);
    assert_eq!(first.changes_since(0), Changes::Full);

    store.apply(SourceEvent::Apply(service("a", "x", "10.0.0.1")));
    assert!(
        store.snapshot().is_none(),
        "an unchanged object changes nothing"
    );

    store.apply(SourceEvent::Apply(service("a", "x", "10.0.0.9")));
    let second = store.snapshot().expect("second");
    assert_eq!(changed(&second, first.generation), vec![key("a", "x")]);
}

#[test]
fn relist_deletes_what_disappeared() {
    let mut store = Store::default();
    store.apply(SourceEvent::Replace {
        kind: Kind::Service,
        objects: vec![service("a", "x", "10.0.0.1"), service("a", "y", "10.0.0.2")],
    });
    let first = store.snapshot().expect("first");
    store.apply(SourceEvent::Replace {
        kind: Kind::Service,
        objects: vec![service("a", "x", "10.0.0.1")],
    });
    let second = store.snapshot().expect("second");
    assert!(!second.services.contains_key(&key("a", "y")));
    assert_eq!(changed(&second, first.generation), vec![key("a", "y")]);
}

#[test]
fn slices_merge_per_service_and_follow_moves() {
    let mut store = Store::default();
    store.apply(SourceEvent::Apply(service("a", "x", "10.0.0.1")));
    store.apply(SourceEvent::Apply(slice("a", "x-1", "x", &["10.1.0.1"])));
    store.apply(SourceEvent::Apply(slice(
        "a",
        "x-2",
        "x",
        &["10.1.0.2", "10.1.0.1"],
    )));
    let snap = store.snapshot().expect("snap");
    assert_eq!(snap.endpoints.get(&key("a", "x")).map(|e| e.len()), Some(2));

    // The slice is relabelled to another Service: both change.
    store.apply(SourceEvent::Apply(slice("a", "x-2", "y", &["10.1.0.2"])));
    let next = store.snapshot().expect("next");
    assert_eq!(
        changed(&next, snap.generation),
        vec![key("a", "x"), key("a", "y")]
    );
    assert_eq!(next.endpoints.get(&key("a", "y")).map(|e| e.len()), Some(1));

    store.apply(SourceEvent::Delete(ObjectRef {
        kind: Kind::EndpointSlice,
        key: key("a", "x-1"),
    }));
    let last = store.snapshot().expect("last");
    assert!(last.endpoints.get(&key("a", "x")).is_none());
}

#[test]
fn change_log_accumulates_and_falls_back_to_full() {
    let mut store = Store::default();
    store.apply(SourceEvent::Apply(service("a", "x", "10.0.0.1")));
    let base = store.snapshot().expect("base").generation;
    for i in 0..3 {
        store.apply(SourceEvent::Apply(service(
            "a",
            &format!("s{i}"),
            "10.0.0.2",
        )));
        store.snapshot();
    }
    let snap = store.snapshot();
    assert!(snap.is_none());
    store.apply(SourceEvent::Synced);
    let snap = store.snapshot().expect("synced");
    assert!(snap.synced);
    assert_eq!(changed(&snap, base).len(), 3);
    for i in 0..super::CHANGE_LOG_LEN + 5 {
        store.apply(SourceEvent::Apply(service(
            "b",
            &format!("s{i}"),
            "10.0.0.3",
        )));
        store.snapshot();
    }
    store.apply(SourceEvent::Apply(service("c", "z", "10.0.0.3")));
    let late = store.snapshot().expect("late");
    assert_eq!(late.changes_since(base), Changes::Full);
    assert_eq!(changed(&late, late.generation - 1), vec![key("c", "z")]);
}

#[test]
fn pod_ips_are_counted_per_namespace() {
    let mut store = Store::default();
    let pod = |name: &str, ip: &str| {
        Object::Pod(Arc::new(Pod {
            key: ObjectKey::new("a", name),
            ips: vec![ip.parse().expect("ip")],
            node_name: None,
            labels: vec![],
            host_network: true,
        }))
    };
    store.apply(SourceEvent::Apply(pod("p1", "10.0.0.1")));
    store.apply(SourceEvent::Apply(pod("p2", "10.0.0.1")));
    store.apply(SourceEvent::Delete(ObjectRef {
        kind: Kind::Pod,
        key: key("a", "p1"),
    }));
    let snap = store.snapshot().expect("snap");
    let ip: IpAddr = "10.0.0.1".parse().expect("ip");
    assert_eq!(snap.pod_ips.get(&(Arc::from("a"), ip)), Some(&1));
}

#[test]
fn disconnect_is_remembered_until_reconnect() {
    let mut store = Store::default();
    store.apply(SourceEvent::Connected(false));
    let snap = store.snapshot().expect("snap");
    assert!(snap.staleness().is_some());
    store.apply(SourceEvent::Connected(true));
    assert!(store.snapshot().expect("snap").staleness().is_none());
}
