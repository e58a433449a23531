//! The input of a full restore, written in the order that keeps `iptables-restore --noflush`
//! linear in the number of chains.
//!
//! iptables-nft 1.8.9 records every chain a `--noflush` restore names — each declaration, each
//! rule's chain and jump target — in one list kept sorted by insertion from its head
//! (`cache_chain_list_insert`), so naming a chain costs one comparison per recorded name that
//! sorts before it. In name order (what kube-proxy writes) that is quadratic: 10k Services with
//! 5 endpoints took over a minute. Here every name costs a few comparisons:
//!
//! - the fixed, bucket and stale chains are declared first, in descending order (each new
//!   name sorts first); they all sort before the Services' chains (uppercase against
//!   lowercase letters, [`super::port_chain_stem`]);
//! - then Service by Service in descending [`super::service_order`], which is descending chain
//!   name: its chains are declared and filled and its bucket rules appended at once, so every
//!   name it uses sorts before all but the fixed ones and its own;
//! - bucket rules therefore run in that order too, which [`super::plan`] keeps for updates.
//!
//! Deleting stale chains still costs their number squared (their `-X` comes last, when all of
//! them are recorded): a one-time cost after an upgrade from another chain layout.

use std::fmt::Write;

use super::Table;
use super::plan::Programmed;

/// One table's part of a full restore.
pub(super) struct Full<'a> {
    pub table: Table,
    pub programmed: &'a Programmed,
    /// `SVCPLANE-` chains in the kernel that are no longer wanted.
    pub stale: Vec<&'a String>,
    /// Built-in jump rules to delete (as saved) and to insert.
    pub unjump: Vec<String>,
    pub jump: Vec<String>,
}

impl Full<'_> {
    /// Appends the table's block (`*table` … `COMMIT`) to `out`.
    pub fn write(&self, out: &mut String) {
        let table = self.table;
        let p = self.programmed;
        let _ = writeln!(out, "*{}", table.name());
        let fixed: Vec<(String, Vec<String>)> = p
            .base
            .chains(&p.bucket_sets())
            .into_iter()
            .filter(|((t, _), _)| *t == table)
            .map(|((_, name), rules)| (name, rules))
            .collect();
        let buckets: Vec<String> = p
            .bucket_sets()
            .into_iter()
            .filter(|(section, _)| section.table() == table)
            .flat_map(|(section, set)| set.into_iter().map(move |b| section.bucket(b)))
            .collect();
        let mut declared: Vec<&String> = fixed.iter().map(|(name, _)| name).collect();
        declared.extend(&buckets);
        declared.extend(self.stale.iter().copied());
        declared.sort_unstable_by(|a, b| b.cmp(a));
        for name in declared {
            let _ = writeln!(out, ":{name} - [0:0]");
        }
        for (name, rules) in &fixed {
            append(out, name, rules);
        }
        self.services(out);
        for line in &self.unjump {
            if let Some(spec) = line.strip_prefix("-A ") {
                let _ = writeln!(out, "-D {spec}");
            }
        }
        let mut stale = self.stale.clone();
        stale.sort_unstable_by(|a, b| b.cmp(a));
        for name in stale {
            let _ = writeln!(out, "-X {name}");
        }
        for line in &self.jump {
            let _ = writeln!(out, "{line}");
        }
        out.push_str("COMMIT\n");
    }

    /// Every Service's chains of the table and its bucket rules, Service by Service.
    fn services(&self, out: &mut String) {
        for rules in self.programmed.in_order() {
            let chains: Vec<(&String, &Vec<String>)> = rules
                .chains
                .iter()
                .filter(|((t, _), _)| *t == self.table)
                .map(|((_, name), rules)| (name, rules))
                .rev()
                .collect();
            for (name, _) in &chains {
                let _ = writeln!(out, ":{name} - [0:0]");
            }
            for (name, chain_rules) in chains {
                append(out, name, chain_rules);
            }
            for ((section, b), section_rules) in &rules.sections {
                if section.table() == self.table {
                    append(out, &section.bucket(*b), section_rules);
                }
            }
        }
    }
}

fn append(out: &mut String, chain: &str, rules: &[String]) {
    for rule in rules {
        let _ = writeln!(out, "-A {chain} {rule}");
    }
}
