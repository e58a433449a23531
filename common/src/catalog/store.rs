//! The catalog's mutable state and how source events change it.
//!
//! [`Store::apply`] is a pure state transition (no I/O, no clock but the disconnect timestamp):
//! it upserts or deletes one object, remembers which Services changed, and re-merges endpoints
//! lazily, once per Service per batch, in [`Store::snapshot`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use super::{CHANGE_LOG_LEN, Snapshot, merge};
use crate::cowmap::CowMap;
use crate::model::{
    EndpointSlice, Kind, Namespace, Node, Object, ObjectKey, ObjectRef, Pod, Service,
};
use crate::source::SourceEvent;

/// The working state behind the published snapshots.
#[derive(Debug, Default)]
pub struct Store {
    snap: Snapshot,
    /// Every known slice, by its key; the Service it belongs to is its
    /// `kubernetes.io/service-name` in its namespace ([`owner`]).
    /// `CowMap`s here for their compactness, not their clones.
    slices: CowMap<ObjectKey, Arc<EndpointSlice>>,
    /// The slices of each Service that has some, by the Service's key.
    by_service: CowMap<ObjectKey, Slices>,
    /// Services changed since the last snapshot (emptied and shrunk by each snapshot: a bulk
    /// load fills it with every Service).
    changed: HashSet<ObjectKey>,
    /// Services whose slices changed since the last snapshot.
    remerge: HashSet<ObjectKey>,
    nodes_changed: bool,
    /// Something other than Services changed (pods, namespaces, sync state).
    dirty: bool,
    /// When the first event since the last snapshot arrived.
    first_event: Option<Instant>,
}

impl Store {
    /// Applies one source event.
    pub fn apply(&mut self, event: SourceEvent) {
        self.first_event.get_or_insert_with(Instant::now);
        match event {
            SourceEvent::Replace { kind, objects } => self.replace(kind, objects),
            SourceEvent::Apply(object) => self.upsert(object),
            SourceEvent::Delete(object_ref) => self.delete(&object_ref),
            SourceEvent::Synced => {
                self.snap.synced = true;
                self.dirty = true;
            }
            SourceEvent::Connected(connected) => {
                let since = &mut self.snap.disconnected_since;
                match (connected, since.is_some()) {
                    (true, true) => *since = None,
                    (false, false) => *since = Some(Instant::now()),
                    _ => return,
                }
                self.dirty = true;
            }
        }
    }

    /// The next snapshot, if anything changed since the previous one.
    pub fn snapshot(&mut self) -> Option<Arc<Snapshot>> {
        if !self.dirty && self.changed.is_empty() && self.remerge.is_empty() && !self.nodes_changed
        {
            self.first_event = None;
            return None;
        }
        for service in std::mem::take(&mut self.remerge) {
            self.remerge_endpoints(&service);
        }
        let changed = std::mem::take(&mut self.changed);
        let snap = &mut self.snap;
        snap.generation += 1;
        snap.changed_at = self.first_event.take();
        if is_bulk(changed.len(), snap.services.len()) {
            snap.change_log.clear();
            snap.change_log_floor = snap.generation;
        } else if !changed.is_empty() {
            let keys: Arc<[ObjectKey]> = changed.into_iter().collect();
            snap.change_log.push_back((snap.generation, keys));
            while snap.change_log.len() > CHANGE_LOG_LEN {
                if let Some((g, _)) = snap.change_log.pop_front() {
                    snap.change_log_floor = snap.change_log_floor.max(g);
                }
            }
        }
        if std::mem::take(&mut self.nodes_changed) {
            snap.node_changes.push_back(snap.generation);
            while snap.node_changes.len() > CHANGE_LOG_LEN {
                if let Some(g) = snap.node_changes.pop_front() {
                    snap.change_log_floor = snap.change_log_floor.max(g);
                }
            }
        }
        self.dirty = false;
        Some(Arc::new(snap.clone()))
    }

    fn replace(&mut self, kind: Kind, objects: Vec<Object>) {
        let keep: HashSet<ObjectKey> = objects
            .iter()
            .filter(|o| o.kind() == kind)
            .map(Object::key)
            .collect();
        let gone: Vec<ObjectKey> = self
            .keys_of(kind)
            .into_iter()
            .filter(|k| !keep.contains(k))
            .collect();
        for key in gone {
            self.delete(&ObjectRef { kind, key });
        }
        for object in objects.into_iter().filter(|o| o.kind() == kind) {
            self.upsert(object);
        }
    }

    fn keys_of(&self, kind: Kind) -> Vec<ObjectKey> {
        let cluster = |name: &Arc<str>| ObjectKey {
            namespace: "".into(),
            name: name.clone(),
        };
        match kind {
            Kind::Service => self.snap.services.keys().cloned().collect(),
            Kind::EndpointSlice => self.slices.keys().cloned().collect(),
            Kind::Pod => self.snap.pods.keys().cloned().collect(),
            Kind::Node => self.snap.nodes.keys().map(cluster).collect(),
            Kind::Namespace => self.snap.namespaces.iter().map(cluster).collect(),
        }
    }

    fn upsert(&mut self, object: Object) {
        match object {
            Object::Service(s) => self.upsert_service(s),
            Object::EndpointSlice(s) => self.upsert_slice(s),
            Object::Pod(p) => self.upsert_pod(p),
            Object::Node(n) => self.upsert_node(n),
            Object::Namespace(n) => self.upsert_namespace(n),
        }
    }

    fn delete(&mut self, object: &ObjectRef) {
        let key = &object.key;
        match object.kind {
            Kind::Service => {
                if self.snap.services.remove(key).is_some() {
                    self.changed.insert(key.clone());
                }
            }
            Kind::EndpointSlice => self.delete_slice(key),
            Kind::Pod => {
                if let Some(old) = self.snap.pods.remove(key) {
                    self.count_pod_ips(&old, false);
                    self.dirty = true;
                }
            }
            Kind::Node => {
                if self.snap.nodes.remove(&key.name).is_some() {
                    self.nodes_changed = true;
                }
            }
            Kind::Namespace => {
                if self.snap.namespaces.remove(&key.name).is_some() {
                    self.dirty = true;
                }
            }
        }
    }

    fn upsert_service(&mut self, service: Arc<Service>) {
        if self.snap.services.get(&service.key) == Some(&service) {
            return;
        }
        self.changed.insert(service.key.clone());
        self.snap.services.insert(service.key.clone(), service);
    }

    fn upsert_slice(&mut self, slice: Arc<EndpointSlice>) {
        if self.slices.get(&slice.key) == Some(&slice) {
            return;
        }
        self.delete_slice(&slice.key);
        self.slices.insert(slice.key.clone(), slice.clone());
        let Some(owner) = owner(&slice) else { return };
        let mut list = self
            .by_service
            .get(&owner)
            .map_or_else(Vec::new, |s| s.as_slice().to_vec());
        match find(&list, &slice.key.name) {
            Ok(i) => list[i] = slice,
            Err(i) => list.insert(i, slice),
        }
        self.set_slices(&owner, list);
        self.remerge.insert(owner);
    }

    fn delete_slice(&mut self, key: &ObjectKey) {
        let Some(old) = self.slices.remove(key) else {
            return;
        };
        let Some(owner) = owner(&old) else { return };
        let mut list = self
            .by_service
            .get(&owner)
            .map_or_else(Vec::new, |s| s.as_slice().to_vec());
        if let Ok(i) = find(&list, &key.name) {
            list.remove(i);
        }
        self.set_slices(&owner, list);
        self.remerge.insert(owner);
    }

    /// Sets the slices of Service `owner` (none: forgets it).
    fn set_slices(&mut self, owner: &ObjectKey, list: Vec<Arc<EndpointSlice>>) {
        match Slices::new(list) {
            Some(slices) => drop(self.by_service.insert(owner.clone(), slices)),
            None => drop(self.by_service.remove(owner)),
        }
    }

    fn remerge_endpoints(&mut self, service: &ObjectKey) {
        let merged = match self.by_service.get(service) {
            Some(slices) => merge::merge(slices.as_slice()),
            None => Arc::from(Vec::new()),
        };
        let old = self.snap.endpoints.get(service);
        if old.map(|o| &**o) == Some(&*merged) || (old.is_none() && merged.is_empty()) {
            return;
        }
        if merged.is_empty() {
            self.snap.endpoints.remove(service);
        } else {
            self.snap.endpoints.insert(service.clone(), merged);
        }
        self.changed.insert(service.clone());
    }

    fn upsert_pod(&mut self, pod: Arc<Pod>) {
        if let Some(old) = self.snap.pods.get(&pod.key).cloned() {
            if old == pod {
                return;
            }
            self.count_pod_ips(&old, false);
        }
        self.count_pod_ips(&pod, true);
        self.snap.pods.insert(pod.key.clone(), pod);
        self.dirty = true;
    }

    fn count_pod_ips(&mut self, pod: &Pod, add: bool) {
        for ip in &pod.ips {
            let key = (pod.key.namespace.clone(), *ip);
            let count = self.snap.pod_ips.get(&key).copied().unwrap_or(0);
            let count = if add {
                count + 1
            } else {
                count.saturating_sub(1)
            };
            if count == 0 {
                self.snap.pod_ips.remove(&key);
            } else {
                self.snap.pod_ips.insert(key, count);
            }
        }
    }

    fn upsert_node(&mut self, node: Arc<Node>) {
        if self.snap.nodes.get(&node.name) == Some(&node) {
            return;
        }
        self.snap.nodes.insert(node.name.clone(), node);
        self.nodes_changed = true;
    }

    fn upsert_namespace(&mut self, namespace: Arc<Namespace>) {
        if self
            .snap
            .namespaces
            .insert(namespace.name.clone())
            .is_none()
        {
            self.dirty = true;
        }
    }
}

/// A generation changing at least this many Services, and more than half of those known, is
/// not logged key by key (see [`is_bulk`]).
const BULK_CHANGE: usize = 1024;

/// Whether a generation that changed `changed` of `services` Services is a bulk change (the
/// first load, a relist, a mass update). Such a change is logged as the new change-log floor
/// instead of as keys: a consumer that has not seen it redoes everything, which costs it about
/// what applying that many changes one by one would, and the log does not hold a copy of every
/// key (1.6 MB at 50k Services) for as long as the generation stays in it.
fn is_bulk(changed: usize, services: usize) -> bool {
    changed >= BULK_CHANGE && changed * 2 > services
}

/// The key of the Service a slice belongs to (None: no `kubernetes.io/service-name`).
fn owner(slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice.service_name.as_ref()?;
    Some(ObjectKey {
        namespace: slice.key.namespace.clone(),
        name: name.clone(),
    })
}

/// The slices of one Service, in slice-name order (a Service has few slices, and a map per
/// Service would cost more than its slices). Almost every Service has exactly one, which is
/// then held without an allocation of its own.
#[derive(Debug, Clone)]
enum Slices {
    One(Arc<EndpointSlice>),
    Many(Box<[Arc<EndpointSlice>]>),
}

// The enum packs into the size of the boxed slice's pointer and length.
const _: () = assert!(size_of::<Slices>() == 16);

impl Slices {
    /// None for an empty list.
    fn new(mut list: Vec<Arc<EndpointSlice>>) -> Option<Slices> {
        match list.len() {
            0 => None,
            1 => list.pop().map(Slices::One),
            _ => Some(Slices::Many(list.into())),
        }
    }

    fn as_slice(&self) -> &[Arc<EndpointSlice>] {
        match self {
            Slices::One(slice) => std::slice::from_ref(slice),
            Slices::Many(list) => list,
        }
    }
}

/// Where the slice named `name` is (or would go) in a Service's name-sorted slice list.
fn find(list: &[Arc<EndpointSlice>], name: &str) -> Result<usize, usize> {
    list.binary_search_by(|s| (*s.key.name).cmp(name))
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
