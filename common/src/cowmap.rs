//! [`CowMap`]: a hash map whose clones share storage, for state that is published as an
//! immutable snapshot after every change.
//!
//! The catalog and the DNS view publish a new snapshot per batch of changes, so their maps must
//! clone in O(1) and update in O(change). A persistent HAMT (imbl) does that but costs about
//! 300 bytes of node overhead per entry, which at 50k Services / 250k endpoints was a third of
//! svcplane-dns's memory. This map instead splits its entries over `2^k` shards, each an
//! ordinary hash map behind an `Arc`: a clone copies one pointer, and a write copies only the
//! shard it touches if a reader still holds it (copy on write). Shards are kept at about
//! [`PER_SHARD`] entries, so a write copies a few kilobytes at most, and the overhead per entry
//! is that of a plain hash map.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashMap};

/// Entries per shard above which the shard count grows (by [`GROWTH`]×).
pub const PER_SHARD: usize = 64;
const GROWTH: usize = 8;
const MAX_SHARDS: usize = 1 << 16;

type Shard<K, V> = HashMap<K, V, DefaultHashBuilder>;

/// A hash map with O(1) clones that share unchanged shards.
pub struct CowMap<K, V> {
    hasher: DefaultHashBuilder,
    shards: Arc<Vec<Arc<Shard<K, V>>>>,
    len: usize,
}

impl<K, V> Clone for CowMap<K, V> {
    fn clone(&self) -> Self {
        CowMap {
            hasher: self.hasher.clone(),
            shards: self.shards.clone(),
            len: self.len,
        }
    }
}

impl<K, V> Default for CowMap<K, V> {
    fn default() -> Self {
        let hasher = DefaultHashBuilder::default();
        CowMap {
            shards: Arc::new(vec![Arc::new(HashMap::with_hasher(hasher.clone()))]),
            hasher,
            len: 0,
        }
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for CowMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K, V> CowMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Hash + Eq + Clone, V: Clone> CowMap<K, V> {
    /// The shard of a key: the hash's bits 32 and up, so that within a shard the bits the
    /// shard's own table uses (the low bits, and the top 7 as tags) still vary.
    fn shard_of<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        let hash = self.hasher.hash_one(key);
        (hash >> 32) as usize & (self.shards.len() - 1)
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard_of(key)].get(key)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Inserts or replaces; returns the previous value.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let i = self.shard_of(&key);
        let old = self.shard_mut(i).insert(key, value);
        if old.is_none() {
            self.len += 1;
            self.grow_if_crowded();
        }
        old
    }

    /// Removes a key; a missing key copies nothing.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.shard_of(key);
        if !self.shards[i].contains_key(key) {
            return None;
        }
        let old = self.shard_mut(i).remove(key);
        self.len -= usize::from(old.is_some());
        old
    }

    /// Shard `i`, copied first if a clone of this map still shares it.
    fn shard_mut(&mut self, i: usize) -> &mut Shard<K, V> {
        Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[i])
    }

    /// Re-distributes the entries over more shards once they average more than [`PER_SHARD`].
    fn grow_if_crowded(&mut self) {
        let n = self.shards.len();
        if self.len <= n * PER_SHARD || n >= MAX_SHARDS {
            return;
        }
        let count = (n * GROWTH).min(MAX_SHARDS);
        let per = self.len / count + 1;
        let mut shards: Vec<Shard<K, V>> = (0..count)
            .map(|_| HashMap::with_capacity_and_hasher(per, self.hasher.clone()))
            .collect();
        for (k, v) in self.iter() {
            let hash = self.hasher.hash_one(k);
            shards[(hash >> 32) as usize & (count - 1)].insert(k.clone(), v.clone());
        }
        self.shards = Arc::new(shards.into_iter().map(Arc::new).collect());
    }
}

impl<K: Hash + Eq + Clone, V: Clone> FromIterator<(K, V)> for CowMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = CowMap::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn behaves_like_a_map_across_growth_and_clones() {
        let mut map: CowMap<u32, u32> = CowMap::new();
        let mut model = BTreeMap::new();
        let mut snapshots = Vec::new();
        for i in 0..20_000u32 {
            let k = i.wrapping_mul(2_654_435_761) % 7_000;
            if i % 3 == 0 {
                assert_eq!(map.remove(&k), model.remove(&k));
            } else {
                assert_eq!(map.insert(k, i), model.insert(k, i));
            }
            if i % 2_500 == 0 {
                snapshots.push((map.clone(), model.clone()));
            }
        }
        assert_eq!(map.len(), model.len());
        assert!(map.shards.len() > 1, "grew beyond one shard");
        let sorted: BTreeMap<u32, u32> = map.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(sorted, model);
        for (snap, expected) in snapshots {
            let sorted: BTreeMap<u32, u32> = snap.iter().map(|(k, v)| (*k, *v)).collect();
            assert_eq!(sorted, expected, "a clone is unaffected by later writes");
            assert_eq!(snap.len(), expected.len());
        }
    }

    #[test]
    fn writes_copy_only_the_touched_shard() {
        let map: CowMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let mut next = map.clone();
        next.insert(5, 0);
        let shared = map
            .shards
            .iter()
            .zip(next.shards.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared, map.shards.len() - 1);
        assert_eq!(map.get(&5), Some(&5));
        assert_eq!(next.get(&5), Some(&0));
        assert!(next.remove(&20_000).is_none());
    }
}
