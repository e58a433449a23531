//! What is programmed, and the nft transaction that moves it to what is desired.
//!
//! [`Programmed`] remembers, per family, the base table and what the kernel holds beyond what
//! the catalog says: shared objects and how many Services use each, reference counts of
//! elements several Services may add, contested map keys, element counts and declared sizes
//! per set, and health-check ports. It does not keep the Services' contributions (at 50k
//! Services that was most of the proxy's memory): the caller recomputes a changed Service's
//! old contribution from the catalog snapshot it last programmed (contributions are a pure
//! function of it). [`Programmed::full`] renders an atomic replacement of the whole table
//! (start, restart, after a failure or a verification mismatch); [`Programmed::update`] renders
//! only the difference for the Services that changed — element deletes and adds, and the
//! affinity chains of those Services — so a sync costs O(change). Both are pure; the executor
//! runs the scripts.
//!
//! Sets with many elements at a full render are declared with a `size` (twice their elements,
//! rounded up to a power of two): the kernel then allocates the hash table once instead of
//! growing it while hundreds of thousands of elements arrive, which measured ~0.7 s less
//! kernel time loading 50k Services. The size is a hard limit, so an update that would exceed
//! it asks for a full render instead (which sizes the set anew).

mod counted;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;
use std::sync::Arc;

use svcplane_common::model::ObjectKey;

use crate::conntrack::StaleFlow;
use crate::desired::Shared;
use crate::desired::service::Contribution;
use crate::ruleset::{Chain, Set, Table, write_elements};
use counted::{Counted, counted};

/// Sets with at least this many elements at a full render get a declared `size`.
pub const SIZED_MIN: usize = 4096;

/// One Service's change: the contribution programmed for it and the one wanted now (None:
/// nothing, e.g. a new or deleted Service).
#[derive(Debug, Clone)]
pub struct Change {
    pub key: ObjectKey,
    pub old: Option<Arc<Contribution>>,
    pub new: Option<Arc<Contribution>>,
}

/// The programmed state of one family.
#[derive(Debug, Clone)]
pub struct Programmed {
    pub base: Table,
    /// Shared per-backend-count objects that exist in the kernel, with how many Service
    /// contributions use each (deleted when none does).
    pub shared: BTreeMap<Shared, usize>,
    /// Elements of sets several Services may add the same element to (an endpoint in two
    /// Services' `hairpin` pairs), with how many contributions hold each: one Service letting
    /// go must not delete what another still needs.
    counted: Counted,
    /// Map keys several Services claimed with different values at the last full render (two
    /// Services on one address and port: externalIPs allow it, manifests do not prevent it).
    /// The full render gives each to the first Service in key order; a change touching one is
    /// rendered in full again, so that the key passes on when its owner lets go.
    pub contested: HashSet<(String, Box<str>)>,
    /// How many elements each set holds in the kernel.
    counts: BTreeMap<String, usize>,
    /// The `size` each set was declared with at the last full render (a limit in the kernel).
    sizes: BTreeMap<String, usize>,
    /// `healthCheckNodePort` and node-local ready endpoints of the Services that have one.
    health: HashMap<ObjectKey, (u16, usize)>,
}

impl Programmed {
    /// The whole table for `base` plus `contributions`, and the script that installs it.
    pub fn full(
        base: Table,
        contributions: HashMap<ObjectKey, Arc<Contribution>>,
    ) -> (Programmed, String) {
        let mut table = base.clone();
        let mut shared: BTreeMap<Shared, usize> = BTreeMap::new();
        for c in contributions.values() {
            for s in &c.needs {
                *shared.entry(*s).or_default() += 1;
            }
            for (name, chain) in &c.chains {
                table.chains.insert(name.clone(), chain.clone());
            }
            for (name, set) in &c.sets {
                table.sets.insert(name.clone(), set.clone());
            }
        }
        for s in shared.keys() {
            let ((chain_name, chain), (map_name, map)) = s.objects(base.family);
            table.chains.insert(chain_name, chain);
            table.sets.insert(map_name, map);
        }
        let (elements, contested) = elements_by_set(&contributions);
        let counts = element_counts(&table, &elements);
        let sizes = declare_sizes(&mut table, &counts);
        let script = table.replace_script_with(&elements);
        let contested = contested
            .into_iter()
            .map(|(set, key)| (set.to_string(), Box::from(key)))
            .collect();
        let health = contributions
            .iter()
            .filter_map(|(key, c)| c.health.map(|h| (key.clone(), h)))
            .collect();
        let programmed = Programmed {
            base,
            shared,
            counted: Counted::of(contributions.values().map(|c| &**c)),
            contested,
            counts,
            sizes,
            health,
        };
        (programmed, script)
    }

    /// The script that moves the kernel from `self` to `self` with `changes` applied; `self`
    /// is updated to match. The script is None when nothing changes.
    pub fn update(&mut self, changes: Vec<Change>) -> Update {
        let q = self.base.qualified();
        let mut script = Script::default();
        // Shared objects are created or dropped once per transaction, from the net change in
        // how many Services use them.
        let mut delta: BTreeMap<Shared, i64> = BTreeMap::new();
        let mut stale = Vec::new();
        let empty = Arc::new(Contribution::default());
        for Change { key, old, new } in changes {
            let old = old.unwrap_or_else(|| empty.clone());
            let new = new.unwrap_or_else(|| empty.clone());
            if old == new {
                continue;
            }
            if self.touches_contested(&old, &new) {
                return Update::full();
            }
            for s in new.needs.difference(&old.needs) {
                *delta.entry(*s).or_default() += 1;
            }
            for s in old.needs.difference(&new.needs) {
                *delta.entry(*s).or_default() -= 1;
            }
            stale.extend(old.udp.difference(&new.udp).copied());
            script.swap_own(&q, &old, &new);
            self.swap_elements(&mut script, &old, &new);
            match new.health {
                Some(h) => self.health.insert(key, h),
                None => self.health.remove(&key),
            };
        }
        self.swap_shared(&mut script, delta);
        let script = script.render(&q, &mut self.counts, &mut self.sizes);
        if self.over_size() {
            return Update::full();
        }
        Update {
            script,
            stale,
            full: false,
        }
    }

    /// How many elements the `fe` map holds (what verification compares with the kernel).
    pub fn fe_elements(&self) -> usize {
        self.counts.get("fe").copied().unwrap_or(0)
    }

    /// Health-check ports and node-local ready endpoints, by Service.
    pub fn health(&self) -> impl Iterator<Item = (&ObjectKey, (u16, usize))> {
        self.health.iter().map(|(k, h)| (k, *h))
    }

    /// The element counts by set, as the kernel holds them.
    pub fn counts(&self) -> &BTreeMap<String, usize> {
        &self.counts
    }
}

impl Programmed {
    /// Creates the shared objects the first Service needs and drops those the last lets go.
    fn swap_shared(&mut self, script: &mut Script, delta: BTreeMap<Shared, i64>) {
        let q = self.base.qualified();
        for (s, d) in delta {
            let before = self.shared.get(&s).copied().unwrap_or(0);
            let after = (before as i64 + d).max(0) as usize;
            match (before, after) {
                (0, 0) => {}
                (0, _) => script.create_shared(&q, s, self.base.family),
                (_, 0) => {
                    let (chain, map) = s.names();
                    script.drop_chains.push(chain);
                    script.drop_maps.push(map);
                }
                _ => {}
            }
            if after == 0 {
                self.shared.remove(&s);
            } else {
                self.shared.insert(s, after);
            }
        }
    }

    /// Whether a set would hold more elements than its declared size allows.
    fn over_size(&self) -> bool {
        self.sizes
            .iter()
            .any(|(set, size)| self.counts.get(set).is_some_and(|n| n > size))
    }

    /// Whether going from `old` to `new` adds or drops a claim on a contested map key.
    fn touches_contested(&self, old: &Contribution, new: &Contribution) -> bool {
        if self.contested.is_empty() {
            return false;
        }
        let changed = old.elements.difference(&new.elements);
        changed
            .chain(new.elements.difference(&old.elements))
            .any(|(set, element)| {
                map_key(element).is_some_and(|key| {
                    self.contested
                        .contains(&(set.as_str().to_string(), Box::from(key)))
                })
            })
    }

    /// Element deletes and adds from `old` to `new`; counted sets change only when the first
    /// contribution adds an element or the last one drops it.
    fn swap_elements(&mut self, script: &mut Script, old: &Contribution, new: &Contribution) {
        for (set, element) in old.elements.difference(&new.elements) {
            if counted(set.as_str()) && !self.counted.release(set.as_str(), element) {
                continue;
            }
            script.deletes.push((set.to_string(), element.to_string()));
        }
        for (set, element) in new.elements.difference(&old.elements) {
            if counted(set.as_str()) && !self.counted.hold(set.as_str(), element) {
                continue;
            }
            script.adds.push((set.to_string(), element.to_string()));
        }
    }
}

/// How many elements each set of `table` holds once `extra` is added (as the render writes
/// them: the union, without duplicates).
fn element_counts(table: &Table, extra: &BySet<'_>) -> BTreeMap<String, usize> {
    table
        .sets
        .iter()
        .map(|(name, set)| {
            let more = extra.get(name.as_str()).map_or(&[][..], |v| &v[..]);
            let own = set
                .elements
                .iter()
                .filter(|e| more.binary_search(&e.as_str()).is_err())
                .count();
            (name.clone(), more.len() + own)
        })
        .collect()
}

/// Declares a `size` for the hash sets of `table` with at least [`SIZED_MIN`] elements: twice
/// their count, rounded up to a power of two. Interval and dynamic sets are left alone.
fn declare_sizes(table: &mut Table, counts: &BTreeMap<String, usize>) -> BTreeMap<String, usize> {
    let mut sizes = BTreeMap::new();
    for (name, set) in table.sets.iter_mut() {
        let n = counts.get(name).copied().unwrap_or(0);
        if n < SIZED_MIN || set.declaration.iter().any(|d| d.starts_with("flags")) {
            continue;
        }
        let size = (2 * n).next_power_of_two();
        set.declaration.push(format!("size {size}"));
        sizes.insert(name.clone(), size);
    }
    sizes
}

/// Elements by set, borrowed.
type BySet<'a> = BTreeMap<&'a str, Vec<&'a str>>;

/// Every contribution's elements by set, borrowed (the full render does not copy ~600k element
/// strings of a large cluster into the table), and the map keys claimed with different values
/// (see [`Programmed::contested`]), each left with the elements of the first Service in key
/// order that claims it.
fn elements_by_set(
    contributions: &HashMap<ObjectKey, Arc<Contribution>>,
) -> (BySet<'_>, HashSet<(&str, &str)>) {
    let mut by_set: BySet<'_> = BTreeMap::new();
    for c in contributions.values() {
        // A contribution's elements are sorted by set: one lookup per set, not per element.
        for run in c.elements.as_slice().chunk_by(|a, b| a.0 == b.0) {
            let elements = by_set.entry(run[0].0.as_str()).or_default();
            elements.extend(run.iter().map(|(_, e)| &**e));
        }
    }
    let mut contested = HashSet::new();
    for (set, elements) in by_set.iter_mut() {
        elements.sort_unstable();
        elements.dedup();
        // Sorted, the claims of one key (`key : value`) are neighbours.
        let mut previous = None;
        for element in elements.iter() {
            let key = map_key(element);
            if key.is_some() && key == previous {
                contested.extend(key.map(|k| (*set, k)));
            }
            previous = key;
        }
    }
    if !contested.is_empty() {
        let mut keys: Vec<&ObjectKey> = contributions.keys().collect();
        keys.sort();
        let mut owner: HashMap<(&str, &str), &str> = HashMap::new();
        for (set, element) in keys.iter().flat_map(|k| contributions[*k].elements.iter()) {
            if let Some(key) = map_key(element)
                && contested.contains(&(set.as_str(), key))
            {
                owner.entry((set.as_str(), key)).or_insert(element);
            }
        }
        for (set, elements) in by_set.iter_mut() {
            elements.retain(|e| {
                map_key(e).is_none_or(|key| owner.get(&(*set, key)).is_none_or(|o| o == e))
            });
        }
    }
    (by_set, contested)
}

/// The key of a map element (`key : value`); None for a set element.
fn map_key(element: &str) -> Option<&str> {
    split_at(element, " : ").map(|(key, _)| key)
}

/// `text` split around the first `separator` (` : `, ` . `), found by its leading space: a
/// byte search, where a `&str` pattern sets up a substring searcher per call (the full render
/// splits ~900k elements).
pub(crate) fn split_at<'a>(text: &'a str, separator: &str) -> Option<(&'a str, &'a str)> {
    let mut from = 0;
    while let Some(i) = text[from..].find(' ') {
        let at = from + i;
        if text[at..].starts_with(separator) {
            return Some((&text[..at], &text[at + separator.len()..]));
        }
        from = at + 1;
    }
    None
}

/// The result of [`Programmed::update`].
#[derive(Debug, Default)]
pub struct Update {
    /// The nft transaction, None when the kernel needs no change.
    pub script: Option<String>,
    /// UDP conntrack state the change makes stale (deleted after the transaction succeeds).
    pub stale: Vec<StaleFlow>,
    /// The change touches a contested map key or outgrows a declared set size: render in full
    /// instead (`self` is then only partly updated).
    pub full: bool,
}

impl Update {
    fn full() -> Update {
        Update {
            full: true,
            ..Update::default()
        }
    }
}

/// An incremental transaction, collected in the order nft must run it.
#[derive(Debug, Default)]
struct Script {
    /// Objects to create and chains to (re)fill, first.
    create: String,
    /// Elements to delete and add, by set.
    deletes: Vec<(String, String)>,
    adds: Vec<(String, String)>,
    /// Chains and sets to delete, last (after nothing refers to them).
    drop_chains: Vec<String>,
    drop_sets: Vec<String>,
    drop_maps: Vec<String>,
}

impl Script {
    fn create_shared(&mut self, q: &str, s: Shared, family: crate::ruleset::NftFamily) {
        let ((chain_name, chain), (map_name, map)) = s.objects(family);
        add_set(&mut self.create, q, &map_name, &map);
        fill_chain(&mut self.create, q, &chain_name, &chain, false);
    }

    /// A Service's own chains and sets (affinity): create new ones, refill changed ones, drop
    /// the ones it no longer has. Sets that stay keep their entries (remembered clients).
    fn swap_own(&mut self, q: &str, old: &Contribution, new: &Contribution) {
        for (name, set) in &new.sets {
            if !old.sets.iter().any(|(n, _)| n == name) {
                add_set(&mut self.create, q, name, set);
            }
        }
        // Chains may jump to each other: declare every new one before filling any.
        for (name, _) in &new.chains {
            if !old.chains.iter().any(|(n, _)| n == name) {
                let _ = writeln!(self.create, "add chain {q} {name}");
            }
        }
        for (name, chain) in &new.chains {
            match old.chains.iter().find(|(n, _)| n == name) {
                Some((_, c)) if c == chain => {}
                Some(_) => fill_chain(&mut self.create, q, name, chain, true),
                None => fill_chain(&mut self.create, q, name, chain, false),
            }
        }
        for (name, _) in &old.chains {
            if !new.chains.iter().any(|(n, _)| n == name) {
                self.drop_chains.push(name.clone());
            }
        }
        for (name, _) in &old.sets {
            if !new.sets.iter().any(|(n, _)| n == name) {
                self.drop_sets.push(name.clone());
            }
        }
    }

    /// The transaction; `counts` and `sizes` follow the elements it adds and deletes and the
    /// sets it drops.
    fn render(
        mut self,
        q: &str,
        counts: &mut BTreeMap<String, usize>,
        sizes: &mut BTreeMap<String, usize>,
    ) -> Option<String> {
        let mut out = std::mem::take(&mut self.create);
        // A map element is deleted by its key; the same key may be re-added with a new value.
        let deletes = group(
            self.deletes
                .into_iter()
                .map(|(s, e)| (s, key_of(&e).to_string())),
        );
        for (set, elements) in &deletes {
            write_elements(&mut out, q, set, elements.iter(), "delete");
            let n = counts.entry(set.clone()).or_default();
            *n = n.saturating_sub(elements.len());
        }
        for (set, elements) in &group(self.adds) {
            write_elements(&mut out, q, set, elements.iter(), "add");
            *counts.entry(set.clone()).or_default() += elements.len();
        }
        // Dropped chains may refer to each other: empty them all before deleting any.
        for c in &self.drop_chains {
            let _ = writeln!(out, "flush chain {q} {c}");
        }
        for c in &self.drop_chains {
            let _ = writeln!(out, "delete chain {q} {c}");
        }
        for (keyword, names) in [("set", &self.drop_sets), ("map", &self.drop_maps)] {
            for name in names {
                let _ = writeln!(out, "delete {keyword} {q} {name}");
                counts.remove(name);
                sizes.remove(name);
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

/// `key : value` → `key`; a set element is its own key.
fn key_of(element: &str) -> &str {
    split_at(element, " : ").map_or(element, |(k, _)| k)
}

fn group(items: impl IntoIterator<Item = (String, String)>) -> Vec<(String, Vec<String>)> {
    let mut map: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (set, element) in items {
        map.entry(set).or_default().push(element);
    }
    for elements in map.values_mut() {
        elements.sort_unstable();
        elements.dedup();
    }
    map.into_iter().collect()
}

fn add_set(out: &mut String, q: &str, name: &str, set: &Set) {
    let _ = writeln!(
        out,
        "add {} {q} {name} {{ {}; }}",
        set.keyword,
        set.declaration.join("; ")
    );
}

fn fill_chain(out: &mut String, q: &str, name: &str, chain: &Chain, existed: bool) {
    let _ = writeln!(out, "add chain {q} {name}");
    if existed {
        let _ = writeln!(out, "flush chain {q} {name}");
    }
    for rule in &chain.rules {
        let _ = writeln!(out, "add rule {q} {name} {rule}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_at_finds_the_separator_not_its_parts() {
        let map = "fd00::1 . tcp . 80 : goto ep-n1";
        assert_eq!(
            split_at(map, " : "),
            Some(("fd00::1 . tcp . 80", "goto ep-n1"))
        );
        assert_eq!(
            split_at("10.0.0.1 . 10.0.0.1", " . "),
            Some(("10.0.0.1", "10.0.0.1"))
        );
        assert_eq!(split_at("10.0.0.1 . 10.0.0.1", " : "), None);
        assert_eq!(map_key("10.0.0.1"), None);
        assert_eq!(key_of("a . b : c"), "a . b");
    }
}
