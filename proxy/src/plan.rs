//! What is programmed, and the nft transaction that moves it to what is desired.
//!
//! [`Programmed`] remembers, per family, the base table and every Service's contribution as last
//! written to the kernel. [`Programmed::full`] renders an atomic replacement of the whole table
//! (start, restart, after a failure or a verification mismatch); [`Programmed::update`] renders
//! only the difference for the Services that changed — element deletes and adds, and the
//! affinity chains of those Services — so a sync costs O(change). Both are pure; the executor
//! runs the scripts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;
use std::sync::Arc;

use svcplane_common::model::ObjectKey;

use crate::conntrack::StaleFlow;
use crate::desired::Shared;
use crate::desired::service::Contribution;
use crate::ruleset::{Chain, Set, Table, write_elements};

/// The programmed state of one family.
#[derive(Debug, Clone)]
pub struct Programmed {
    pub base: Table,
    pub contributions: HashMap<ObjectKey, Arc<Contribution>>,
    /// Shared per-backend-count objects that exist in the kernel, with how many Service
    /// contributions use each (deleted when none does).
    pub shared: BTreeMap<Shared, usize>,
    /// Elements of sets several Services may add the same element to (an endpoint in two
    /// Services' `hairpin` pairs), with how many contributions hold each: one Service letting
    /// go must not delete what another still needs.
    pub counted: HashMap<(u8, Box<str>), u32>,
    /// Map keys several Services claimed with different values at the last full render (two
    /// Services on one address and port: externalIPs allow it, manifests do not prevent it).
    /// The full render gives each to the first Service in key order; a change touching one is
    /// rendered in full again, so that the key passes on when its owner lets go.
    pub contested: HashSet<(String, Box<str>)>,
}

/// Sets whose elements are counted (see [`Programmed::counted`]).
const COUNTED_SETS: [&str; 2] = ["hairpin", "cluster-ips"];

fn counted(set: &str) -> bool {
    COUNTED_SETS.contains(&set)
}

/// The index of a counted set (a byte per key instead of a copy of its name).
fn counted_index(set: &str) -> u8 {
    COUNTED_SETS.iter().position(|s| *s == set).unwrap_or(0) as u8
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
        let script = table.replace_script_with(&elements);
        let contested = contested
            .into_iter()
            .map(|(set, key)| (set.to_string(), Box::from(key)))
            .collect();
        let mut refs: HashMap<(u8, Box<str>), u32> = HashMap::new();
        for c in contributions.values() {
            for (set, element) in c.elements.iter().filter(|(s, _)| counted(s.as_str())) {
                *refs
                    .entry((counted_index(set.as_str()), element.clone()))
                    .or_default() += 1;
            }
        }
        (
            Programmed {
                base,
                contributions,
                shared,
                counted: refs,
                contested,
            },
            script,
        )
    }

    /// The script that moves the kernel from `self` to `self` with `changes` applied (a None
    /// contribution removes the Service); `self` is updated to match. Returns None when nothing
    /// changes.
    pub fn update(&mut self, changes: Vec<(ObjectKey, Option<Arc<Contribution>>)>) -> Update {
        let q = self.base.qualified();
        let mut script = Script::default();
        // Shared objects are created or dropped once per transaction, from the net change in
        // how many Services use them.
        let mut delta: BTreeMap<Shared, i64> = BTreeMap::new();
        let mut stale = Vec::new();
        for (key, new) in changes {
            let empty = Arc::new(Contribution::default());
            let old = self
                .contributions
                .get(&key)
                .cloned()
                .unwrap_or_else(|| empty.clone());
            let new = new.unwrap_or(empty);
            if old == new {
                continue;
            }
            if self.touches_contested(&old, &new) {
                return Update {
                    full: true,
                    ..Update::default()
                };
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
            if new.elements.is_empty() && new.chains.is_empty() {
                self.contributions.remove(&key);
            } else {
                self.contributions.insert(key, new);
            }
        }
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
        Update {
            script: script.render(&q),
            stale,
            full: false,
        }
    }
}

impl Programmed {
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
            if counted(set.as_str()) && !self.release(set.as_str(), element) {
                continue;
            }
            script.deletes.push((set.to_string(), element.to_string()));
        }
        for (set, element) in new.elements.difference(&old.elements) {
            if counted(set.as_str()) && !self.hold(set.as_str(), element) {
                continue;
            }
            script.adds.push((set.to_string(), element.to_string()));
        }
    }

    /// Takes a reference; true if the element is new to the kernel.
    fn hold(&mut self, set: &str, element: &str) -> bool {
        let n = self
            .counted
            .entry((counted_index(set), element.into()))
            .or_default();
        *n += 1;
        *n == 1
    }

    /// Drops a reference; true if nothing holds the element any more.
    fn release(&mut self, set: &str, element: &str) -> bool {
        let key = (counted_index(set), Box::<str>::from(element));
        match self.counted.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.counted.remove(&key);
                true
            }
        }
    }
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
        for (set, element) in c.elements.iter() {
            by_set.entry(set.as_str()).or_default().push(element);
        }
    }
    let mut contested = HashSet::new();
    for (set, elements) in by_set.iter_mut() {
        elements.sort_unstable();
        elements.dedup();
        // Sorted, the claims of one key (`key : value`) are neighbours.
        for pair in elements.windows(2) {
            if let (Some(a), Some(b)) = (map_key(pair[0]), map_key(pair[1]))
                && a == b
            {
                contested.insert((*set, a));
            }
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
    element.split_once(" : ").map(|(key, _)| key)
}

/// The result of [`Programmed::update`].
#[derive(Debug, Default)]
pub struct Update {
    /// The nft transaction, None when the kernel needs no change.
    pub script: Option<String>,
    /// UDP conntrack state the change makes stale (deleted after the transaction succeeds).
    pub stale: Vec<StaleFlow>,
    /// The change touches a contested map key: render in full instead (`self` is then only
    /// partly updated).
    pub full: bool,
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

    fn render(mut self, q: &str) -> Option<String> {
        let mut out = std::mem::take(&mut self.create);
        // A map element is deleted by its key; the same key may be re-added with a new value.
        let deletes = group(
            self.deletes
                .into_iter()
                .map(|(s, e)| (s, key_of(&e).to_string())),
        );
        for (set, elements) in &deletes {
            write_elements(&mut out, q, set, elements.iter(), "delete");
        }
        for (set, elements) in &group(self.adds) {
            write_elements(&mut out, q, set, elements.iter(), "add");
        }
        // Dropped chains may refer to each other: empty them all before deleting any.
        for c in &self.drop_chains {
            let _ = writeln!(out, "flush chain {q} {c}");
        }
        for c in &self.drop_chains {
            let _ = writeln!(out, "delete chain {q} {c}");
        }
        for s in &self.drop_sets {
            let _ = writeln!(out, "delete set {q} {s}");
        }
        for m in &self.drop_maps {
            let _ = writeln!(out, "delete map {q} {m}");
        }
        (!out.is_empty()).then_some(out)
    }
}

/// `key : value` → `key`; a set element is its own key.
fn key_of(element: &str) -> &str {
    element.split_once(" : ").map_or(element, |(k, _)| k)
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
