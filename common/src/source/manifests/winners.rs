//! [`Winners`]: the winning objects of one kind in the merged view, found by namespace/name.
//!
//! The merged view holds one entry per object the manifests define (100k entries at 50k
//! Services with a slice each), so its entry size matters. A map from `ObjectKey` would store
//! every key twice — once as the map's key, once inside the object — at 32 bytes each. This
//! table stores only the [`Winner`] (24 bytes: the shared object and its file) and hashes and
//! compares the namespace/name the object itself holds ([`Object::ns_name`]).

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;

use super::merged::FileId;
use crate::model::{Object, ObjectKey};

/// The object that wins a key, and the file it comes from.
#[derive(Debug, Clone)]
pub(super) struct Winner {
    pub(super) object: Object,
    pub(super) file: FileId,
}

// An entry of the merged view: the winner alone, its key is the object's own.
const _: () = assert!(size_of::<Winner>() == 24);

/// Winners by the namespace/name of their object.
#[derive(Default)]
pub(super) struct Winners {
    hasher: DefaultHashBuilder,
    table: HashTable<Winner>,
}

/// The borrowed namespace/name of a key.
fn ns_name(key: &ObjectKey) -> (&str, &str) {
    (&key.namespace, &key.name)
}

impl Winners {
    fn hash(&self, key: (&str, &str)) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(super) fn get(&self, key: &ObjectKey) -> Option<&Winner> {
        let key = ns_name(key);
        self.table
            .find(self.hash(key), |w| w.object.ns_name() == key)
    }

    pub(super) fn get_mut(&mut self, key: &ObjectKey) -> Option<&mut Winner> {
        let key = ns_name(key);
        let hash = self.hash(key);
        self.table.find_mut(hash, |w| w.object.ns_name() == key)
    }

    /// Adds the winner of a key that has none yet.
    pub(super) fn insert_new(&mut self, winner: Winner) {
        let hash = self.hash(winner.object.ns_name());
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, winner, |w| hasher.hash_one(w.object.ns_name()));
    }

    pub(super) fn remove(&mut self, key: &ObjectKey) -> Option<Winner> {
        let key = ns_name(key);
        let hash = self.hash(key);
        let entry = self
            .table
            .find_entry(hash, |w| w.object.ns_name() == key)
            .ok()?;
        Some(entry.remove().0)
    }

    /// Every winner, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Winner> {
        self.table.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Namespace, Service};
    use std::sync::Arc;

    fn service(ns: &str, name: &str) -> Object {
        Object::Service(Arc::new(Service::new(ObjectKey::new(ns, name), vec![])))
    }

    #[test]
    fn finds_by_the_objects_own_key() {
        let mut winners = Winners::default();
        for i in 0..100 {
            let object = service("a", &format!("s{i}"));
            winners.insert_new(Winner {
                object,
                file: FileId(i),
            });
        }
        let ns = Object::Namespace(Arc::new(Namespace { name: "a".into() }));
        winners.insert_new(Winner {
            object: ns,
            file: FileId(7),
        });
        assert_eq!(
            winners.get(&ObjectKey::new("a", "s42")).map(|w| w.file),
            Some(FileId(42))
        );
        assert_eq!(
            winners.get(&ObjectKey::new("", "a")).map(|w| w.file),
            Some(FileId(7))
        );
        assert!(winners.get(&ObjectKey::new("b", "s42")).is_none());
        if let Some(w) = winners.get_mut(&ObjectKey::new("a", "s1")) {
            w.file = FileId(500);
        }
        assert_eq!(
            winners.remove(&ObjectKey::new("a", "s1")).map(|w| w.file),
            Some(FileId(500))
        );
        assert!(winners.remove(&ObjectKey::new("a", "s1")).is_none());
        assert_eq!(winners.iter().count(), 100);
    }
}
