//! What is programmed, and the `iptables-restore --noflush` input that moves it to what is
//! desired.
//!
//! [`Programmed`] remembers, per family, the fixed chains' settings ([`Base`]), every Service's
//! [`ServiceRules`] as last written, and which Services fill each bucket. A full restore
//! ([`Programmed::full_input`]) declares (and so flushes) every chain svcplane wants, deletes
//! `SVCPLANE-` chains the kernel holds that it no longer wants, and repairs the jumps from
//! built-in chains — the kernel's state ([`KernelState`], parsed from `iptables-save`) decides
//! what to delete and insert. An update ([`Programmed::update`]) rewrites only the chains of the
//! Services that changed, the buckets they sit in, and a section's parent when a bucket appears
//! or empties; chains that go are flushed first and deleted last, when nothing jumps to them.
//! All of it is pure.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write;
use std::sync::Arc;

use svcplane_common::model::ObjectKey;

use super::render::{Base, ChainKey, ServiceRules};
use super::{BUILTINS, JUMPS, PREFIX, Section, Table};
use crate::conntrack::StaleFlow;

/// svcplane's part of the kernel's tables, as `iptables-save` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    /// `SVCPLANE-` chains, per table.
    pub chains: BTreeMap<Table, BTreeSet<String>>,
    /// Rules of built-in chains that jump to `SVCPLANE-` chains, as saved (`-A INPUT …`).
    pub jumps: BTreeMap<Table, Vec<String>>,
}

impl KernelState {
    /// Adds what `save` (the `iptables-save -t TABLE` output) shows of `table`.
    pub fn parse(&mut self, table: Table, save: &str) {
        for line in save.lines() {
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if name.starts_with(PREFIX) {
                    self.chains
                        .entry(table)
                        .or_default()
                        .insert(name.to_string());
                }
            } else if let Some((chain, _)) = rule_parts(line)
                && BUILTINS.contains(&chain)
                && jump_target(line).is_some_and(|t| t.starts_with(PREFIX))
            {
                self.jumps.entry(table).or_default().push(line.to_string());
            }
        }
    }

    /// Whether svcplane left anything in the kernel.
    pub fn is_empty(&self) -> bool {
        self.chains.values().all(BTreeSet::is_empty) && self.jumps.values().all(Vec::is_empty)
    }
}

/// `-A CHAIN SPEC` → (CHAIN, SPEC).
fn rule_parts(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("-A ")?;
    Some(rest.split_once(' ').unwrap_or((rest, "")))
}

/// The chain a rule jumps to (`-j X` or `-g X`).
fn jump_target(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" {
            return words.next();
        }
    }
    None
}

/// An `iptables-restore --noflush` input under construction.
#[derive(Debug, Default)]
pub struct Input {
    tables: BTreeMap<Table, TableInput>,
}

#[derive(Debug, Default)]
struct TableInput {
    /// Chains to declare (creating or flushing them) and fill.
    chains: BTreeMap<String, Vec<String>>,
    /// Chains to flush and delete.
    deleted: BTreeSet<String>,
    /// Jump rules to delete (`-A …` lines as saved) and to insert (`-I CHAIN 1 …`).
    unjump: Vec<String>,
    jump: Vec<String>,
}

impl Input {
    fn table(&mut self, table: Table) -> &mut TableInput {
        self.tables.entry(table).or_default()
    }

    /// (Re)writes a chain.
    pub fn chain(&mut self, (table, name): ChainKey, rules: Vec<String>) {
        self.table(table).chains.insert(name, rules);
    }

    /// Deletes a chain (after every rewrite, so nothing jumps to it any more).
    pub fn delete(&mut self, (table, name): ChainKey) {
        self.table(table).deleted.insert(name);
    }

    /// The restore input; None when there is nothing to do.
    pub fn render(&self) -> Option<String> {
        let mut out = String::new();
        for (table, t) in &self.tables {
            t.write(&mut out, *table);
        }
        (!out.is_empty()).then_some(out)
    }
}

impl TableInput {
    fn is_empty(&self) -> bool {
        self.chains.is_empty()
            && self.deleted.is_empty()
            && self.unjump.is_empty()
            && self.jump.is_empty()
    }

    fn write(&self, out: &mut String, table: Table) {
        if self.is_empty() {
            return;
        }
        let _ = writeln!(out, "*{}", table.name());
        // Declaring every chain first lets rules jump to chains declared after them; with
        // --noflush a declaration flushes an existing chain.
        for name in self.chains.keys().chain(&self.deleted) {
            let _ = writeln!(out, ":{name} - [0:0]");
        }
        for (name, rules) in &self.chains {
            for rule in rules {
                let _ = writeln!(out, "-A {name} {rule}");
            }
        }
        for line in &self.unjump {
            if let Some(spec) = line.strip_prefix("-A ") {
                let _ = writeln!(out, "-D {spec}");
            }
        }
        for name in &self.deleted {
            let _ = writeln!(out, "-X {name}");
        }
        for line in &self.jump {
            let _ = writeln!(out, "{line}");
        }
        out.push_str("COMMIT\n");
    }
}

/// The programmed state of one family.
#[derive(Debug, Clone)]
pub struct Programmed {
    pub base: Base,
    pub services: HashMap<ObjectKey, Arc<ServiceRules>>,
    /// The Services with rules in each (section, bucket), in [`Member`] order.
    buckets: BTreeMap<(Section, u8), BTreeSet<Member>>,
}

/// The order of Services within a bucket and in a full restore: descending
/// [`super::service_order`] (so descending chain names, see [`super::full`]), then descending
/// key.
type Member = (Reverse<u64>, Reverse<ObjectKey>);

fn member(key: &ObjectKey, rules: &ServiceRules) -> Member {
    (Reverse(rules.order), Reverse(key.clone()))
}

/// The result of [`Programmed::update`].
#[derive(Debug, Default)]
pub struct Update {
    /// The restore input, None when the kernel needs no change.
    pub input: Option<String>,
    /// UDP conntrack state the change makes stale (deleted after the restore succeeds).
    pub stale: Vec<StaleFlow>,
}

impl Programmed {
    /// The state for `base` plus `services` (empty renders are left out).
    pub fn new(base: Base, services: HashMap<ObjectKey, Arc<ServiceRules>>) -> Programmed {
        let mut p = Programmed {
            base,
            services: HashMap::new(),
            buckets: BTreeMap::new(),
        };
        for (key, rules) in services {
            if !rules.is_empty() {
                p.join(&key, &rules);
                p.services.insert(key, rules);
            }
        }
        p
    }

    fn join(&mut self, key: &ObjectKey, rules: &ServiceRules) {
        for slot in rules.sections.keys() {
            let members = self.buckets.entry(*slot).or_default();
            members.insert(member(key, rules));
        }
    }

    fn leave(&mut self, key: &ObjectKey, rules: &ServiceRules) {
        for slot in rules.sections.keys() {
            if let Some(members) = self.buckets.get_mut(slot) {
                members.remove(&member(key, rules));
                if members.is_empty() {
                    self.buckets.remove(slot);
                }
            }
        }
    }

    /// The non-empty buckets of each section.
    pub(super) fn bucket_sets(&self) -> BTreeMap<Section, BTreeSet<u8>> {
        let mut sets: BTreeMap<Section, BTreeSet<u8>> = BTreeMap::new();
        for (section, b) in self.buckets.keys() {
            sets.entry(*section).or_default().insert(*b);
        }
        sets
    }

    /// Every Service with rules, in [`Member`] order.
    pub(super) fn in_order(&self) -> Vec<&ServiceRules> {
        let mut all: Vec<(Member, &ServiceRules)> = self
            .services
            .iter()
            .map(|(key, rules)| (member(key, rules), rules.as_ref()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.into_iter().map(|(_, rules)| rules).collect()
    }

    /// The rules of one bucket chain: its Services' rules in [`Member`] order.
    fn bucket_rules(&self, section: Section, b: u8) -> Vec<String> {
        let Some(members) = self.buckets.get(&(section, b)) else {
            return Vec::new();
        };
        members
            .iter()
            .filter_map(|(_, Reverse(key))| self.services.get(key))
            .filter_map(|rules| rules.sections.get(&(section, b)))
            .flatten()
            .cloned()
            .collect()
    }

    /// Every chain svcplane wants, with its rules.
    pub fn desired(&self) -> BTreeMap<ChainKey, Vec<String>> {
        let mut chains: BTreeMap<ChainKey, Vec<String>> =
            self.base.chains(&self.bucket_sets()).into_iter().collect();
        for (section, b) in self.buckets.keys() {
            let key = (section.table(), section.bucket(*b));
            chains.insert(key, self.bucket_rules(*section, *b));
        }
        for rules in self.services.values() {
            for (key, r) in &rules.chains {
                chains.insert(key.clone(), r.clone());
            }
        }
        chains
    }

    /// The names of every chain svcplane wants.
    fn desired_names(&self) -> HashSet<ChainKey> {
        let fixed = self.base.chains(&self.bucket_sets()).into_iter();
        let buckets = self.buckets.keys();
        let services = self
            .services
            .values()
            .flat_map(|r| r.chains.keys().cloned());
        fixed
            .map(|(key, _)| key)
            .chain(buckets.map(|(s, b)| (s.table(), s.bucket(*b))))
            .chain(services)
            .collect()
    }

    /// The restore input that makes the kernel, whatever svcplane left there (`kernel`), hold
    /// exactly the desired chains and jumps ([`super::full`]).
    pub fn full_input(&self, kernel: &KernelState) -> String {
        let desired = self.desired_names();
        let mut out = String::new();
        for table in Table::ALL {
            let stale: Vec<&String> = kernel
                .chains
                .get(&table)
                .into_iter()
                .flatten()
                .filter(|name| !desired.contains(&(table, (*name).clone())))
                .collect();
            let existing = kernel.jumps.get(&table).map(Vec::as_slice).unwrap_or(&[]);
            let (unjump, jump) = repair_jumps(table, existing);
            let full = super::full::Full {
                table,
                programmed: self,
                stale,
                unjump,
                jump,
            };
            full.write(&mut out);
        }
        out
    }

    /// The restore input that moves the kernel from `self` to `self` with `changes` applied (a
    /// None or empty render removes the Service); `self` is updated to match.
    pub fn update(&mut self, changes: Vec<(ObjectKey, Option<Arc<ServiceRules>>)>) -> Update {
        let mut input = Input::default();
        let mut stale = Vec::new();
        let before = self.bucket_sets();
        let mut touched: BTreeSet<(Section, u8)> = BTreeSet::new();
        for (key, new) in changes {
            let empty = Arc::new(ServiceRules::default());
            let old = self
                .services
                .get(&key)
                .cloned()
                .unwrap_or_else(|| empty.clone());
            let new = new.filter(|n| !n.is_empty()).unwrap_or(empty);
            if old == new {
                continue;
            }
            stale.extend(old.udp.difference(&new.udp).copied());
            swap_chains(&mut input, &old, &new);
            for slot in old.sections.keys().chain(new.sections.keys()) {
                if old.sections.get(slot) != new.sections.get(slot) {
                    touched.insert(*slot);
                }
            }
            self.leave(&key, &old);
            if new.is_empty() {
                self.services.remove(&key);
            } else {
                self.join(&key, &new);
                self.services.insert(key, new);
            }
        }
        for (section, b) in touched {
            let key = (section.table(), section.bucket(b));
            if self.buckets.contains_key(&(section, b)) {
                input.chain(key, self.bucket_rules(section, b));
            } else {
                input.delete(key);
            }
        }
        let after = self.bucket_sets();
        for section in Section::ALL {
            let none = BTreeSet::new();
            let now = after.get(&section).unwrap_or(&none);
            if before.get(&section).unwrap_or(&none) != now {
                let key = (section.table(), section.parent().to_string());
                input.chain(key, self.base.parent(section, now));
            }
        }
        Update {
            input: input.render(),
            stale,
        }
    }
}

/// A Service's own chains: write new and changed ones, delete the ones it no longer has.
fn swap_chains(input: &mut Input, old: &ServiceRules, new: &ServiceRules) {
    for (key, rules) in &new.chains {
        if old.chains.get(key) != Some(rules) {
            input.chain(key.clone(), rules.clone());
        }
    }
    for key in old.chains.keys() {
        if !new.chains.contains_key(key) {
            input.delete(key.clone());
        }
    }
}

/// The jump rules of `table` to delete (as saved) and to insert, given the ones that exist:
/// exactly one of each desired jump. A missing or duplicated jump is (re)inserted first in its
/// built-in chain after every copy is deleted (rules are deleted by their spec, never by
/// position, which another tool may have shifted meanwhile).
fn repair_jumps(table: Table, existing: &[String]) -> (Vec<String>, Vec<String>) {
    let wanted: Vec<String> = JUMPS
        .iter()
        .filter(|(t, _, _)| *t == table)
        .map(|(_, chain, spec)| format!("-A {chain} {spec}"))
        .collect();
    let count = |line: &String| existing.iter().filter(|l| *l == line).count();
    let mut unjump: Vec<String> = existing
        .iter()
        .filter(|l| !wanted.contains(l))
        .cloned()
        .collect();
    let mut jump = Vec::new();
    for line in &wanted {
        let n = count(line);
        if n == 1 {
            continue;
        }
        unjump.extend(std::iter::repeat_n(line.clone(), n));
        if let Some((chain, spec)) = rule_parts(line) {
            jump.push(format!("-I {chain} 1 {spec}"));
        }
    }
    (unjump, jump)
}

/// The restore input that removes everything svcplane left in `kernel`; None if nothing.
pub fn cleanup_input(kernel: &KernelState) -> Option<String> {
    let mut input = Input::default();
    for (table, names) in &kernel.chains {
        for name in names {
            input.delete((*table, name.clone()));
        }
    }
    for (table, lines) in &kernel.jumps {
        input.table(*table).unjump = lines.clone();
    }
    input.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:SVCPLANE-SERVICES - [0:0]
:SVCPLANE-OLD - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment svcplane -j SVCPLANE-SERVICES
-A PREROUTING -m comment --comment svcplane -j SVCPLANE-SERVICES
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j SVCPLANE-OLD
COMMIT
";

    #[test]
    fn kernel_state_sees_only_svcplane() {
        let mut k = KernelState::default();
        k.parse(Table::Nat, SAVED);
        assert_eq!(
            k.chains[&Table::Nat].iter().collect::<Vec<_>>(),
            ["SVCPLANE-OLD", "SVCPLANE-SERVICES"]
        );
        assert_eq!(k.jumps[&Table::Nat].len(), 3);
    }

    #[test]
    fn jumps_are_deduplicated_and_completed() {
        let mut k = KernelState::default();
        k.parse(Table::Nat, SAVED);
        let (unjump, jump) = repair_jumps(Table::Nat, &k.jumps[&Table::Nat]);
        let ours = "-A PREROUTING -m comment --comment svcplane -j SVCPLANE-SERVICES";
        assert_eq!(unjump, ["-A OUTPUT -j SVCPLANE-OLD", ours, ours]);
        assert_eq!(
            jump,
            [
                "-I PREROUTING 1 -m comment --comment svcplane -j SVCPLANE-SERVICES",
                "-I OUTPUT 1 -m comment --comment svcplane -j SVCPLANE-SERVICES",
                "-I POSTROUTING 1 -m comment --comment svcplane -j SVCPLANE-POSTROUTING"
            ]
        );
    }

    #[test]
    fn cleanup_deletes_chains_and_jumps_only() {
        let mut k = KernelState::default();
        k.parse(Table::Nat, SAVED);
        let input = cleanup_input(&k).expect("something to clean");
        assert!(input.contains("-X SVCPLANE-OLD\n"));
        assert!(input.contains("-D OUTPUT -j SVCPLANE-OLD\n"));
        assert!(!input.contains("KUBE"));
        assert_eq!(cleanup_input(&KernelState::default()), None);
    }
}
