//! A process-wide interner for the short strings that repeat across hundreds of thousands of
//! endpoints and objects — node names, zones, namespaces — so that each is allocated once.
//!
//! The table only grows (a cluster has few nodes, zones and namespaces); past [`MAX`] entries new strings
//! are no longer interned, so hostile input cannot make it unbounded.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_allocation() {
        let a = intern("node-a");
        let b = intern(&String::from("node-a"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &intern("node-b")));
    }
}
