//! Reference counts of the elements several Services may add to one set (an endpoint's
//! `hairpin` pair when it backs two Services, a ClusterIP two Services claim), kept compact.
//!
//! At 50k Services × 5 endpoints these are ~300k elements, so the count is keyed by the
//! address itself (4 or 16 bytes and a tag) rather than a copy of the element's text. The key
//! is exact, not a hash: element texts are written from `IpAddr`'s `Display` (one text per
//! address), so parsing them back is one-to-one; any other text is kept as text.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

use crate::desired::service::Contribution;

/// The sets whose elements are counted.
const COUNTED_SETS: [&str; 2] = ["hairpin", "cluster-ips"];

/// Whether elements of `set` are counted.
pub fn counted(set: &str) -> bool {
    COUNTED_SETS.contains(&set)
}

/// How many contributions hold each counted element.
#[derive(Debug, Clone, Default)]
pub struct Counted {
    /// (tag, IPv4 address): the tag is the set's index × 2, plus 1 for a pair `a . a`.
    v4: HashMap<(u8, u32), u32>,
    /// (tag, IPv6 address), tagged as `v4`.
    v6: HashMap<(u8, u128), u32>,
    /// Anything else, as `index:text` (not written by svcplane today).
    other: HashMap<Box<str>, u32>,
}

/// The compact key of one counted element.
enum Key {
    V4(u8, u32),
    V6(u8, u128),
    Other(Box<str>),
}

fn key(set: &str, element: &str) -> Key {
    let index = COUNTED_SETS.iter().position(|s| *s == set).unwrap_or(0) as u8;
    let other = || Key::Other(format!("{index}:{element}").into());
    let (text, tag) = match super::split_at(element, " . ") {
        Some((a, b)) if a == b => (a, index * 2 + 1),
        Some(_) => return other(),
        None => (element, index * 2),
    };
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => Key::V4(tag, u32::from(v4)),
        Ok(IpAddr::V6(v6)) => Key::V6(tag, u128::from(v6)),
        Err(_) => other(),
    }
}

impl Counted {
    /// The counts of every counted element of `contributions`.
    pub fn of<'a>(contributions: impl Iterator<Item = &'a Contribution>) -> Counted {
        let mut refs = Counted::default();
        for c in contributions {
            for (set, element) in c.elements.iter().filter(|(s, _)| counted(s.as_str())) {
                refs.hold(set.as_str(), element);
            }
        }
        refs
    }

    /// Takes a reference; true if the element is new to the kernel.
    pub fn hold(&mut self, set: &str, element: &str) -> bool {
        match key(set, element) {
            Key::V4(t, a) => take(&mut self.v4, (t, a)),
            Key::V6(t, a) => take(&mut self.v6, (t, a)),
            Key::Other(text) => take(&mut self.other, text),
        }
    }

    /// Drops a reference; true if nothing holds the element any more.
    pub fn release(&mut self, set: &str, element: &str) -> bool {
        match key(set, element) {
            Key::V4(t, a) => give_back(&mut self.v4, (t, a)),
            Key::V6(t, a) => give_back(&mut self.v6, (t, a)),
            Key::Other(text) => give_back(&mut self.other, text),
        }
    }

    /// How many distinct elements are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.v4.len() + self.v6.len() + self.other.len()
    }
}

fn take<K: Hash + Eq>(map: &mut HashMap<K, u32>, key: K) -> bool {
    let n = map.entry(key).or_default();
    *n += 1;
    *n == 1
}

fn give_back<K: Hash + Eq>(map: &mut HashMap<K, u32>, key: K) -> bool {
    match map.get_mut(&key) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        _ => {
            map.remove(&key);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_exact_per_set_and_shape() {
        let mut c = Counted::default();
        assert!(c.hold("hairpin", "10.0.0.1 . 10.0.0.1"));
        assert!(!c.hold("hairpin", "10.0.0.1 . 10.0.0.1"));
        assert!(c.hold("cluster-ips", "10.0.0.1"), "another set");
        assert!(
            c.hold("hairpin", "10.0.0.1 . 10.0.0.2"),
            "not a pair of one address"
        );
        assert!(c.hold("hairpin", "fd00::1 . fd00::1"));
        assert!(
            c.hold("cluster-ips", "010.0.0.1"),
            "non-canonical text stays text"
        );
        assert_eq!(c.len(), 5);
        assert!(
            !c.release("hairpin", "10.0.0.1 . 10.0.0.1"),
            "still held once"
        );
        assert!(c.release("hairpin", "10.0.0.1 . 10.0.0.1"));
        assert!(c.release("hairpin", "fd00::1 . fd00::1"));
        assert_eq!(c.len(), 3);
    }
}
