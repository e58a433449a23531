//! [`CowMap`]: a map whose clones share storage, for state that is published as an immutable
//! snapshot after every change.
//!
//! The catalog and the DNS view publish a new snapshot per batch of changes, so their maps must
//! clone in O(1) and update in O(change). A persistent HAMT (imbl) does that but costs about
//! 300 bytes of node overhead per entry, which at 50k Services / 250k endpoints was a third of
//! svcplane-dns's memory. This map instead splits its entries by hash over `2^k` shards, each a
//! small key-sorted `Vec` behind an `Arc`: a clone copies one pointer, and a write copies only
//! the shard it touches if a reader still holds it (copy on write). Shards hold between
//! [`PER_SHARD`]/2 and [`PER_SHARD`] entries on average, so a write copies a few kilobytes at
//! most, a lookup is one hash and a short binary search, and the overhead per entry is a few
//! bytes (a hash table's empty buckets would cost a third more).

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use hashbrown::DefaultHashBuilder;

/// Average entries per shard above which the shard count doubles.
pub const PER_SHARD: usize = 128;
const MAX_SHARDS: usize = 1 << 20;

/// Entries sorted by key.
type Shard<K, V> = Vec<(K, V)>;

/// A map with O(1) clones that share unchanged shards.
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
        CowMap {
            hasher: DefaultHashBuilder::default(),
            shards: Arc::new(vec![Arc::new(Vec::new())]),
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
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, v)| (k, v)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

/// Where `key` is (or would go) in a shard.
fn find<K, V, Q>(shard: &[(K, V)], key: &Q) -> Result<usize, usize>
where
    K: Borrow<Q>,
    Q: Ord + ?Sized,
{
    shard.binary_search_by(|(k, _)| k.borrow().cmp(key))
}

impl<K: Hash + Ord + Clone, V: Clone> CowMap<K, V> {
    fn shard_of<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        shard_index(&self.hasher, key, self.shards.len())
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Ord + ?Sized,
    {
        let shard = &self.shards[self.shard_of(key)];
        find(shard, key).ok().map(|i| &shard[i].1)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Ord + ?Sized,
    {
        self.get(key).is_some()
    }

    /// The value of `key`, for changing in place (its shard is copied first if shared).
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Ord + ?Sized,
    {
        let i = self.shard_of(key);
        let j = find(&self.shards[i], key).ok()?;
        Some(&mut self.shard_mut(i)[j].1)
    }

    /// Inserts or replaces; returns the previous value.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let i = self.shard_of(&key);
        let shard = self.shard_mut(i);
        match find(shard, &key) {
            Ok(j) => Some(std::mem::replace(&mut shard[j].1, value)),
            Err(j) => {
                if shard.len() == shard.capacity() {
                    // Grow by an eighth, not double: shards are small and copied whole, and what is
                    // reserved stays unused in every shard.
                    shard.reserve_exact(shard.len() / 8 + 1);
                }
                shard.insert(j, (key, value));
                self.len += 1;
                self.grow_if_crowded();
                None
            }
        }
    }

    /// Removes a key; a missing key copies nothing.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Ord + ?Sized,
    {
        let i = self.shard_of(key);
        let j = find(&self.shards[i], key).ok()?;
        self.len -= 1;
        Some(self.shard_mut(i).remove(j).1)
    }

    /// Shard `i`, copied first if a clone of this map still shares it.
    fn shard_mut(&mut self, i: usize) -> &mut Shard<K, V> {
        Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[i])
    }

    /// Doubles the shard count once shards average more than [`PER_SHARD`] entries.
    fn grow_if_crowded(&mut self) {
        let n = self.shards.len();
        if self.len <= n * PER_SHARD || n >= MAX_SHARDS {
            return;
        }
        let count = n * 2;
        let per = self.len / count;
        let mut shards: Vec<Shard<K, V>> = (0..count)
            .map(|_| Vec::with_capacity(per + per / 8))
            .collect();
        for (k, v) in self.iter() {
            shards[shard_index(&self.hasher, k, count)].push((k.clone(), v.clone()));
        }
        for shard in &mut shards {
            shard.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        self.shards = Arc::new(shards.into_iter().map(Arc::new).collect());
    }
}

/// The shard of a key among `count` (a power of two).
fn shard_index<Q: Hash + ?Sized>(hasher: &DefaultHashBuilder, key: &Q, count: usize) -> usize {
    (hasher.hash_one(key) >> 32) as usize & (count - 1)
}

impl<K: Hash + Ord + Clone, V: Clone> FromIterator<(K, V)> for CowMap<K, V> {
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
