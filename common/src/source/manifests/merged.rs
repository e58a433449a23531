//! The merged view across manifest files, kept up to date one file at a time.
//!
//! When several files define the same object, the last file in path order wins (within a file,
//! the last definition in file order). The view is updated incrementally: when file F changes,
//! only the keys F defined before or defines now are resolved again, so a poll costs what the
//! change touches, not what the catalog holds.
//!
//! Data structure, chosen so that the common case (every object defined by exactly one file)
//! costs no more than one map entry per object:
//!
//! - `kinds`: one [`Winners`] table per kind, where a [`Winner`] is the winning object and the
//!   [`FileId`] of the file it comes from, found by the object's own namespace/name. An entry is
//!   24 bytes (a 16-byte object, a 4-byte file id) in a hash table, with no per-node overhead
//!   and no second copy of the key; the object itself is shared (`Arc`) with the file that
//!   defines it.
//! - `shared`: for the rare keys that two or more files define, every defining file. Keys
//!   defined by one file are absent, so this is empty in the common case.
//!
//! With the winner's file at hand, a new definition is resolved by comparing two paths; and when
//! the winning file stops defining a key, the next winner is the last of `shared`'s files, whose
//! object is found in that file alone. Both are O(1) map operations plus, in the rare second
//! case, one scan of one file.
//!
//! [`Changes`] collects, over one poll, each key's winner as it was before the poll, for the keys
//! whose winner changed, so that the events are the net difference — exactly what a diff of the
//! whole view before and after would give, without building or comparing whole views. Entries
//! always take the defining file's copy of the object (also when equal), so a reloaded file's
//! old objects are freed with it rather than kept alive by the view.

use std::collections::HashMap;

use super::parse::Slot;
use super::winners::{Winner, Winners};
use crate::model::{Kind, Object, ObjectKey, ObjectRef};
use crate::source::SourceEvent;

/// A loaded file's identity in the merged view (a slot of the state's file table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct FileId(pub u32);

/// What the merged view needs to know about the files besides its own entries.
pub(super) trait FileTable {
    /// Whether file `a` comes after file `b` in path order.
    fn is_after(&self, a: FileId, b: FileId) -> bool;
    /// The object file `id` defines for `kind`/`key` (its last definition in file order).
    fn definition(&self, id: FileId, kind: Kind, key: &ObjectKey) -> Option<Object>;
}

/// The merged view: for every key some file defines, the winning object.
#[derive(Default)]
pub(super) struct Merged {
    /// By [`kind_index`].
    kinds: [Winners; 5],
    /// Every file defining the key, for keys that more than one file defines.
    shared: HashMap<(Kind, ObjectKey), Vec<FileId>>,
}

/// The position of `kind` in [`Kind::ALL`].
fn kind_index(kind: Kind) -> usize {
    Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

impl Merged {
    /// The winning object for a key.
    pub(super) fn get(&self, kind: Kind, key: &ObjectKey) -> Option<&Object> {
        self.kinds[kind_index(kind)].get(key).map(|w| &w.object)
    }

    /// The merged objects of one kind, by namespace/name.
    pub(super) fn objects_of(&self, kind: Kind) -> Vec<Object> {
        let mut objects: Vec<&Object> = self.kinds[kind_index(kind)]
            .iter()
            .map(|w| &w.object)
            .collect();
        objects.sort_unstable_by(|a, b| a.ns_name().cmp(&b.ns_name()));
        objects.into_iter().cloned().collect()
    }

    /// How many keys more than one file defines.
    #[cfg(test)]
    pub(super) fn shared_len(&self) -> usize {
        self.shared.len()
    }

    /// Replaces what file `file` defines: `old` (its objects until now) by `new`. Only the keys
    /// of `old` and `new` are resolved again; `changes` (if any) records what that changed.
    pub(super) fn update(
        &mut self,
        file: FileId,
        old: &[(Slot, Object)],
        new: &[(Slot, Object)],
        files: &impl FileTable,
        mut changes: Option<&mut Changes>,
    ) {
        let defined = last_definitions(new);
        for ((kind, key), object) in &defined {
            self.define(file, *kind, key, object, files, changes.as_deref_mut());
        }
        for ((kind, key), _) in last_definitions(old) {
            if !defined.contains_key(&(kind, key.clone())) {
                self.undefine(file, kind, &key, files, changes.as_deref_mut());
            }
        }
    }

    /// File `file` defines `object` for `kind`/`key` (perhaps as it already did).
    fn define(
        &mut self,
        file: FileId,
        kind: Kind,
        key: &ObjectKey,
        object: &Object,
        files: &impl FileTable,
        changes: Option<&mut Changes>,
    ) {
        let map = &mut self.kinds[kind_index(kind)];
        let Some(winner) = map.get_mut(key) else {
            touch(changes, kind, key, None);
            let winner = Winner {
                object: object.clone(),
                file,
            };
            map.insert_new(winner);
            return;
        };
        if winner.file != file {
            let definers = self
                .shared
                .entry((kind, key.clone()))
                .or_insert_with(|| vec![winner.file]);
            if !definers.contains(&file) {
                definers.push(file);
            }
            if !files.is_after(file, winner.file) {
                return;
            }
        }
        if winner.object != *object {
            touch(changes, kind, key, Some(&winner.object));
        }
        // Even when equal: share the file's copy, so that the replaced one is freed.
        winner.object = object.clone();
        winner.file = file;
    }

    /// File `file` no longer defines `kind`/`key` (it did until now).
    fn undefine(
        &mut self,
        file: FileId,
        kind: Kind,
        key: &ObjectKey,
        files: &impl FileTable,
        changes: Option<&mut Changes>,
    ) {
        let next = self.shared_without(file, kind, key, files);
        let map = &mut self.kinds[kind_index(kind)];
        let Some(winner) = map.get_mut(key) else {
            debug_assert!(false, "{kind} {key} was defined");
            return;
        };
        let Some(next) = next else {
            touch(changes, kind, key, Some(&winner.object));
            map.remove(key);
            return;
        };
        if winner.file != file {
            return;
        }
        let Some(object) = files.definition(next, kind, key) else {
            debug_assert!(false, "{kind} {key} is defined by its next winner");
            return;
        };
        if winner.object != object {
            touch(changes, kind, key, Some(&winner.object));
        }
        winner.object = object;
        winner.file = next;
    }

    /// Removes `file` from the files defining a shared key; returns the last remaining one in
    /// path order (`None`: the key was not shared, so no file defines it any more).
    fn shared_without(
        &mut self,
        file: FileId,
        kind: Kind,
        key: &ObjectKey,
        files: &impl FileTable,
    ) -> Option<FileId> {
        let shared_key = (kind, key.clone());
        let definers = self.shared.get_mut(&shared_key)?;
        definers.retain(|f| *f != file);
        let last = definers
            .iter()
            .copied()
            .reduce(|a, b| if files.is_after(b, a) { b } else { a });
        if definers.len() < 2 {
            self.shared.remove(&shared_key);
        }
        last
    }
}

/// The last definition of each key in `objects` (which are in file order).
fn last_definitions(objects: &[(Slot, Object)]) -> HashMap<(Kind, ObjectKey), &Object> {
    objects
        .iter()
        .map(|(_, object)| ((object.kind(), object.key()), object))
        .collect()
}

fn touch(changes: Option<&mut Changes>, kind: Kind, key: &ObjectKey, before: Option<&Object>) {
    if let Some(changes) = changes {
        changes.touch(kind, key, before);
    }
}

/// The winners of the keys a poll changed, as they were before the poll.
#[derive(Default)]
pub(super) struct Changes {
    before: HashMap<(Kind, ObjectKey), Option<Object>>,
}

impl Changes {
    /// Records `before` as the key's winner before the poll, unless an earlier change did.
    fn touch(&mut self, kind: Kind, key: &ObjectKey, before: Option<&Object>) {
        self.before
            .entry((kind, key.clone()))
            .or_insert_with(|| before.cloned());
    }

    /// The events that take the touched keys from their winners before the poll to those of
    /// `merged`: Apply for new or changed winners in [`Kind::ALL`] order, then Delete in the
    /// reverse order; by namespace/name within a kind.
    pub(super) fn events(self, merged: &Merged) -> Vec<SourceEvent> {
        let mut touched: Vec<((Kind, ObjectKey), Option<Object>)> =
            self.before.into_iter().collect();
        touched.sort_unstable_by(|((ka, a), _), ((kb, b), _)| {
            (kind_index(*ka), a).cmp(&(kind_index(*kb), b))
        });
        let mut events: Vec<SourceEvent> = touched
            .iter()
            .filter_map(|((kind, key), before)| {
                let now = merged.get(*kind, key)?;
                (before.as_ref() != Some(now)).then(|| SourceEvent::Apply(now.clone()))
            })
            .collect();
        for kind in Kind::ALL.iter().rev() {
            let deleted = touched.iter().filter(|((k, key), before)| {
                k == kind && before.is_some() && merged.get(*k, key).is_none()
            });
            events.extend(deleted.map(|((kind, key), _)| {
                SourceEvent::Delete(ObjectRef {
                    kind: *kind,
                    key: key.clone(),
                })
            }));
        }
        events
    }
}
