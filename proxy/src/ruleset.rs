//! The nftables ruleset as data, and its rendering to `nft -f` input.
//!
//! A [`Table`] is what svcplane wants the kernel to hold for one family: chains (base chains
//! with their hook and priority, and regular chains) holding rules, and sets/maps holding
//! elements. Rules and elements are kept as nft syntax strings built only from addresses,
//! numbers and svcplane's own (hashed) names — nothing read from the API reaches nft unescaped.
//! [`Table::replace_script`] renders an atomic full replacement; incremental changes are rendered
//! by the planner from per-Service contributions (see `plan`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// The table name svcplane owns in each family.
pub const TABLE: &str = "svcplane";

/// An address family svcplane programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NftFamily {
    Ip,
    Ip6,
}

impl NftFamily {
    /// The nft family keyword (`ip`, `ip6`).
    pub fn keyword(self) -> &'static str {
        match self {
            NftFamily::Ip => "ip",
            NftFamily::Ip6 => "ip6",
        }
    }

    /// The address-type keyword for set declarations (`ipv4_addr`, `ipv6_addr`).
    pub fn addr_type(self) -> &'static str {
        match self {
            NftFamily::Ip => "ipv4_addr",
            NftFamily::Ip6 => "ipv6_addr",
        }
    }

    /// `ip saddr`/`ip6 saddr` and friends.
    pub fn l3(self) -> &'static str {
        self.keyword()
    }

    /// The ICMP type used for rejects.
    pub fn reject(self) -> &'static str {
        match self {
            NftFamily::Ip => "reject with icmp type port-unreachable",
            NftFamily::Ip6 => "reject with icmpv6 type port-unreachable",
        }
    }
}

/// Hook and priority of a base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    /// `nat` or `filter`.
    pub kind: &'static str,
    pub hook: &'static str,
    pub priority: i32,
}

/// One chain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    pub base: Option<BaseChain>,
    pub rules: Vec<String>,
}

/// One set or map: its declaration body (type, flags…) and elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// `set` or `map`.
    pub keyword: &'static str,
    /// Declaration lines, e.g. `typeof ip daddr . meta l4proto . th dport : verdict`.
    pub declaration: Vec<String>,
    pub elements: BTreeSet<String>,
}

impl Set {
    pub fn plain(declaration: &[&str]) -> Set {
        Set {
            keyword: "set",
            declaration: declaration.iter().map(|s| s.to_string()).collect(),
            elements: BTreeSet::new(),
        }
    }

    pub fn map(declaration: &[&str]) -> Set {
        Set {
            keyword: "map",
            ..Set::plain(declaration)
        }
    }
}

/// The whole table of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: NftFamily,
    pub chains: BTreeMap<String, Chain>,
    pub sets: BTreeMap<String, Set>,
}

impl Table {
    pub fn new(family: NftFamily) -> Table {
        Table {
            family,
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
        }
    }

    /// `ip svcplane`.
    pub fn qualified(&self) -> String {
        format!("{} {TABLE}", self.family.keyword())
    }

    /// A script that atomically replaces whatever table of that name exists with this one
    /// (`nft -f` runs a file as one transaction: there is no window without rules).
    pub fn replace_script(&self) -> String {
        self.replace_script_with(&BTreeMap::new())
    }

    /// [`Table::replace_script`] with `extra` elements (by set name) added to the table's sets;
    /// elements of sets the table lacks are ignored. Lets the planner render hundreds of
    /// thousands of Service elements without copying them into the table.
    pub fn replace_script_with(&self, extra: &BTreeMap<&str, Vec<&str>>) -> String {
        let q = self.qualified();
        let mut out = format!("add table {q}\ndelete table {q}\n");
        self.write_definition_with(&mut out, extra);
        out
    }

    /// The table as a `table … { … }` block followed by its elements.
    pub fn write_definition(&self, out: &mut String) {
        self.write_definition_with(out, &BTreeMap::new());
    }

    /// [`Table::write_definition`] with `extra` elements, as in [`Table::replace_script_with`].
    pub fn write_definition_with(&self, out: &mut String, extra: &BTreeMap<&str, Vec<&str>>) {
        let _ = writeln!(out, "table {} {{", self.qualified());
        for (name, set) in &self.sets {
            let _ = writeln!(out, "\t{} {name} {{", set.keyword);
            for line in &set.declaration {
                let _ = writeln!(out, "\t\t{line}");
            }
            out.push_str("\t}\n");
        }
        // Regular chains first: base chains jump to them, and nft resolves jumps at load.
        let ordered = self
            .chains
            .iter()
            .filter(|(_, c)| c.base.is_none())
            .chain(self.chains.iter().filter(|(_, c)| c.base.is_some()));
        for (name, chain) in ordered {
            let _ = writeln!(out, "\tchain {name} {{");
            if let Some(b) = &chain.base {
                let _ = writeln!(
                    out,
                    "\t\ttype {} hook {} priority {}; policy accept;",
                    b.kind, b.hook, b.priority
                );
            }
            for rule in &chain.rules {
                let _ = writeln!(out, "\t\t{rule}");
            }
            out.push_str("\t}\n");
        }
        out.push_str("}\n");
        let q = self.qualified();
        for (name, set) in &self.sets {
            // Sorted and unique, as a set of the union would iterate.
            let mut all: Vec<&str> = set.elements.iter().map(String::as_str).collect();
            all.extend(extra.get(name.as_str()).into_iter().flatten());
            all.sort_unstable();
            all.dedup();
            write_elements(out, &q, name, all.into_iter(), "add");
        }
    }
}

/// Appends `add element`/`delete element` commands in batches (one command per 1000
/// elements keeps lines bounded while nft still parses them quickly).
pub fn write_elements<S: AsRef<str>>(
    out: &mut String,
    qualified: &str,
    set: &str,
    elements: impl Iterator<Item = S>,
    verb: &str,
) {
    let mut batch: Vec<S> = Vec::with_capacity(1000);
    let flush = |batch: &mut Vec<S>, out: &mut String| {
        if batch.is_empty() {
            return;
        }
        let _ = write!(out, "{verb} element {qualified} {set} {{ ");
        for (i, e) in batch.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(e.as_ref());
        }
        out.push_str(" }\n");
        batch.clear();
    };
    for e in elements {
        batch.push(e);
        if batch.len() == 1000 {
            flush(&mut batch, out);
        }
    }
    flush(&mut batch, out);
}

/// A short, stable hash of a name (FNV-1a, hex) for chain and set names: readable prefix plus
/// this suffix keeps names unique and bounded without ever passing object names through.
pub fn short_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:08x}", (h >> 32) as u32 ^ h as u32)
}

/// A name fragment made only of `[a-z0-9-]`, at most `max` characters.
pub fn safe_fragment(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_script_is_one_atomic_replacement() {
        let mut t = Table::new(NftFamily::Ip);
        t.chains.insert(
            "nat-output".into(),
            Chain {
                base: Some(BaseChain {
                    kind: "nat",
                    hook: "output",
                    priority: -100,
                }),
                rules: vec!["jump services".into()],
            },
        );
        t.chains.insert("services".into(), Chain::default());
        let mut s = Set::plain(&["typeof ip daddr"]);
        s.elements.insert("10.0.0.1".into());
        t.sets.insert("cluster-ips".into(), s);
        let script = t.replace_script();
        assert!(script.starts_with("add table ip svcplane\ndelete table ip svcplane\n"));
        let services = script.find("chain services").expect("services");
        let output = script.find("chain nat-output").expect("output");
        assert!(services < output, "regular chains before base chains");
        assert!(script.contains("add element ip svcplane cluster-ips { 10.0.0.1 }"));
    }

    #[test]
    fn element_batches_are_bounded() {
        let elements: Vec<String> = (0..2500).map(|i| i.to_string()).collect();
        let mut out = String::new();
        write_elements(&mut out, "ip svcplane", "s", elements.iter(), "add");
        assert_eq!(out.lines().count(), 3);
    }

    #[test]
    fn names_are_hashed_and_safe() {
        assert_eq!(short_hash("a"), short_hash("a"));
        assert_ne!(short_hash("ns/a:80"), short_hash("ns/b:80"));
        assert_eq!(safe_fragment("My_Svc;drop", 8), "my-svc-d");
    }
}
