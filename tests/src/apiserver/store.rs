//! The object store behind the test API server: every object of every served
//! kind, one global resourceVersion counter (like etcd's revision) and a
//! bounded history of change events that watches resume from.
//!
//! Two numbers describe how far back the history reaches:
//! - `floor`: the oldest resourceVersion a new watch (or an exact list) may
//!   start from; anything older is answered with 410 Expired.
//! - `lost_upto`: the newest resourceVersion of an event that was discarded;
//!   an open watch whose position is older has missed events and is ended
//!   with 410 Expired.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::Error;
use super::resources::ResourceType;

/// Where an object lives: (plural, namespace or "", name).
pub type ObjectKey = (&'static str, String, String);

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object was replaced.
    Modified,
    /// The object was deleted.
    Deleted,
}

/// One entry of the change history.
#[derive(Debug, Clone)]
pub struct Event {
    /// resourceVersion the change was committed at.
    pub rv: u64,
    /// Kind of change.
    pub kind: EventType,
    /// The kind of the changed object.
    pub resource: &'static ResourceType,
    /// The object after the change (for a deletion: its last state, carrying `rv`).
    pub object: Arc<Value>,
    /// The object before the change; `None` for a creation.
    pub old: Option<Arc<Value>>,
}

/// Objects, the resourceVersion counter and the change history.
#[derive(Debug)]
pub struct Store {
    rv: u64,
    floor: u64,
    lost_upto: u64,
    next_uid: u64,
    history_limit: usize,
    objects: BTreeMap<ObjectKey, Arc<Value>>,
    history: VecDeque<Event>,
}

impl Store {
    /// An empty store keeping at most `history_limit` events.
    pub fn new(history_limit: usize) -> Self {
        Self {
            rv: 1,
            floor: 1,
            lost_upto: 0,
            next_uid: 1,
            history_limit: history_limit.max(1),
            objects: BTreeMap::new(),
            history: VecDeque::new(),
        }
    }

    /// The newest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Creates or replaces an object; returns the stored object and, if
    /// anything changed, the event recorded for it.
    pub fn apply(
        &mut self,
        resource: &'static ResourceType,
        key: ObjectKey,
        mut object: Value,
    ) -> (Arc<Value>, Option<Event>) {
        let old = self.objects.get(&key).cloned();
        self.inherit_metadata(&mut object, &key, old.as_deref());
        if let Some(old) = old.as_ref().filter(|old| ***old == object) {
            return (old.clone(), None);
        }
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let object = Arc::new(object);
        self.objects.insert(key, object.clone());
        let kind = match old {
            Some(_) => EventType::Modified,
            None => EventType::Added,
        };
        let event = self.record(kind, resource, object.clone(), old);
        (object, Some(event))
    }

    /// Deletes an object; returns the recorded event, or `None` if absent.
    pub fn delete(&mut self, resource: &'static ResourceType, key: &ObjectKey) -> Option<Event> {
        let old = self.objects.remove(key)?;
        self.rv += 1;
        let mut last = (*old).clone();
        last["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        Some(self.record(EventType::Deleted, resource, Arc::new(last), Some(old)))
    }

    /// One object by key.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<Value>> {
        self.objects.get(key).cloned()
    }

    /// Forgets the whole history and moves the resourceVersion on, so that
    /// every resourceVersion handed out so far is too old to resume from.
    pub fn compact(&mut self) {
        self.lost_upto = self.rv;
        self.rv += 1;
        self.floor = self.rv;
        self.history.clear();
    }

    /// Objects of one kind as they were at resourceVersion `at` (now if `None`),
    /// in key order, with the resourceVersion they were read at.
    pub fn snapshot(&self, plural: &str, at: Option<u64>) -> Result<(u64, Vec<Arc<Value>>), Error> {
        let at = at.unwrap_or(self.rv);
        self.check_readable(at)?;
        let mut objects: BTreeMap<ObjectKey, Arc<Value>> = self
            .objects
            .iter()
            .filter(|(key, _)| key.0 == plural)
            .map(|(key, object)| (key.clone(), object.clone()))
            .collect();
        for event in self.history.iter().rev().take_while(|e| e.rv > at) {
            if event.resource.plural == plural {
                undo(&mut objects, event);
            }
        }
        Ok((at, objects.into_values().collect()))
    }

    /// Fails unless a watch or exact list may start at `rv`.
    pub fn check_readable(&self, rv: u64) -> Result<(), Error> {
        if rv < self.floor {
            return Err(Error::Expired {
                requested: rv,
                oldest: self.floor,
            });
        }
        if rv > self.rv {
            return Err(Error::TooLarge {
                requested: rv,
                current: self.rv,
            });
        }
        Ok(())
    }

    /// Every event after `position`, for an open watch; fails if some of
    /// them were discarded.
    pub fn events_after(&self, position: u64) -> Result<Vec<Event>, Error> {
        if position < self.lost_upto {
            return Err(Error::Expired {
                requested: position,
                oldest: self.floor,
            });
        }
        let start = self.history.partition_point(|e| e.rv <= position);
        Ok(self.history.range(start..).cloned().collect())
    }

    fn inherit_metadata(&mut self, object: &mut Value, key: &ObjectKey, old: Option<&Value>) {
        let meta = &mut object["metadata"];
        meta["name"] = json!(key.2);
        if key.1.is_empty() {
            if let Some(map) = meta.as_object_mut() {
                map.remove("namespace");
            }
        } else {
            meta["namespace"] = json!(key.1);
        }
        for field in ["uid", "creationTimestamp", "resourceVersion"] {
            meta[field] = match old {
                Some(old) => old["metadata"][field].clone(),
                None => Value::Null,
            };
        }
        if old.is_none() {
            meta["uid"] = json!(self.new_uid());
            meta["creationTimestamp"] = json!(now());
        }
        if let Some(map) = meta.as_object_mut() {
            map.retain(|_, v| !v.is_null());
        }
    }

    fn new_uid(&mut self) -> String {
        let n = self.next_uid;
        self.next_uid += 1;
        format!("00000000-0000-4000-8000-{n:012x}")
    }

    fn record(
        &mut self,
        kind: EventType,
        resource: &'static ResourceType,
        object: Arc<Value>,
        old: Option<Arc<Value>>,
    ) -> Event {
        let event = Event {
            rv: self.rv,
            kind,
            resource,
            object,
            old,
        };
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.lost_upto = self.lost_upto.max(dropped.rv);
                self.floor = self.floor.max(dropped.rv);
            }
        }
        event
    }
}

/// Reverts one event in a snapshot being rolled back.
fn undo(objects: &mut BTreeMap<ObjectKey, Arc<Value>>, event: &Event) {
    let key = key_of(event.resource, &event.object);
    match &event.old {
        Some(old) => objects.insert(key, old.clone()),
        None => objects.remove(&key),
    };
}

/// The key of a stored object of the given kind.
pub fn key_of(resource: &'static ResourceType, object: &Value) -> ObjectKey {
    let meta = &object["metadata"];
    let text = |field: &str| meta[field].as_str().unwrap_or_default().to_string();
    let namespace = if resource.namespaced {
        text("namespace")
    } else {
        String::new()
    };
    (resource.plural, namespace, text("name"))
}

/// The current time at second precision, RFC 3339.
fn now() -> String {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::resources::by_kind;
    use super::*;

    fn svc(name: &str, port: u16) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "ns"}, "spec": {"ports": [{"port": port}]}})
    }

    fn put(store: &mut Store, object: Value) -> Option<Event> {
        let resource = by_kind("v1", "Service").unwrap();
        store.apply(resource, key_of(resource, &object), object).1
    }

    #[test]
    fn apply_assigns_metadata_and_skips_no_ops() {
        let mut store = Store::new(10);
        let added = put(&mut store, svc("a", 80)).unwrap();
        assert_eq!(added.kind, EventType::Added);
        assert_eq!(added.object["metadata"]["resourceVersion"], "2");
        assert!(added.object["metadata"]["uid"].is_string());
        assert!(put(&mut store, svc("a", 80)).is_none());
        let modified = put(&mut store, svc("a", 81)).unwrap();
        assert_eq!(modified.kind, EventType::Modified);
        assert_eq!(
            modified.object["metadata"]["uid"],
            added.object["metadata"]["uid"]
        );
    }

    #[test]
    fn snapshot_rolls_back_history() {
        let mut store = Store::new(10);
        put(&mut store, svc("a", 80));
        let at = store.resource_version();
        put(&mut store, svc("a", 81));
        put(&mut store, svc("b", 80));
        let resource = by_kind("v1", "Service").unwrap();
        store.delete(resource, &key_of(resource, &svc("a", 0)));
        let (_, now) = store.snapshot("services", None).unwrap();
        assert_eq!(now.len(), 1);
        let (rv, then) = store.snapshot("services", Some(at)).unwrap();
        assert_eq!(rv, at);
        assert_eq!(then.len(), 1);
        assert_eq!(then[0]["spec"]["ports"][0]["port"], 80);
    }

    #[test]
    fn history_limit_and_compaction_expire_old_versions() {
        let mut store = Store::new(2);
        for port in 1..=4 {
            put(&mut store, svc("a", port));
        }
        assert!(matches!(store.events_after(1), Err(Error::Expired { .. })));
        assert_eq!(store.events_after(3).unwrap().len(), 2);
        let current = store.resource_version();
        store.compact();
        assert!(matches!(
            store.check_readable(current),
            Err(Error::Expired { .. })
        ));
        assert!(store.events_after(current).unwrap().is_empty());
        assert!(store.check_readable(store.resource_version()).is_ok());
    }
}
