//! A process-wide interner for the short strings that repeat across hundreds of thousands of
//! endpoints and objects — node names, zones, namespaces, port names, (node, zone) pairs — so each
//! is allocated once.
//!
//! The tables only grow (a cluster has few nodes, zones and namespaces); past [`MAX`] entries
//! new values are no longer interned, so hostile input cannot make them unbounded.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use crate::model::Locality;

/// Interned strings kept at most.
const MAX: usize = 65_536;

fn table() -> &'static Mutex<HashSet<Arc<str>>> {
    static TABLE: OnceLock<Mutex<HashSet<Arc<str>>>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashSet::new()))
}

/// The shared copy of `s`.
pub fn intern(s: &str) -> Arc<str> {
    let mut table = table().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = table.get(s) {
        return existing.clone();
    }
    let value: Arc<str> = Arc::from(s);
    if table.len() < MAX {
        table.insert(value.clone());
    }
    value
}

/// The shared (node, zone) pair; None when both are absent.
pub fn locality(node_name: Option<&str>, zone: Option<&str>) -> Option<Arc<Locality>> {
    static TABLE: OnceLock<Mutex<HashSet<Arc<Locality>>>> = OnceLock::new();
    if node_name.is_none() && zone.is_none() {
        return None;
    }
    let value = Locality {
        node_name: node_name.map(intern),
        zone: zone.map(intern),
    };
    let mut table = TABLE
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = table.get(&value) {
        return Some(existing.clone());
    }
    let value = Arc::new(value);
    if table.len() < MAX {
        table.insert(value.clone());
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_allocation() {
        let a = intern("node-a");
        let b = intern(&String::from("node-a"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &intern("node-b")));
        let p = locality(Some("node-a"), Some("z")).expect("pair");
        let q = locality(Some("node-a"), Some("z")).expect("pair");
        assert!(Arc::ptr_eq(&p, &q));
        assert!(locality(None, None).is_none());
    }
}
