//! The answer cache for forwarded names. This module owns how long an upstream
//! answer may be reused: positive answers live for the smallest TTL of their
//! answer records (capped at [`CacheConfig::max_ttl`]), negative answers
//! (NXDOMAIN and NODATA) for the SOA-derived negative TTL of RFC 2308 (capped
//! at [`CacheConfig::max_negative_ttl`]), and everything else (SERVFAIL,
//! REFUSED, truncated replies, negative answers without an SOA) is not cached.
//! Entries are keyed by the lower-cased question name, type, class and the
//! client's DO and CD bits; TTLs in returned messages count down with the time spent
//! in the cache. Time is read from [`tokio::time::Instant`] so tests can pause
//! it. The map is split into shards behind plain mutexes; when a shard is
//! full, expired entries are purged and then a random entry is evicted.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::time::Instant;

/// Upper bound on the number of shards the entries are spread over.
const MAX_SHARDS: usize = 16;

/// How big the cache is and how long it keeps answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Maximum number of entries, positive and negative together; 0 disables
    /// caching. Default 10 000.
    pub capacity: usize,
    /// Longest time a positive answer is kept. Default 3600 s (CoreDNS).
    pub max_ttl: Duration,
    /// Longest time a negative answer is kept. Default 1800 s (CoreDNS).
    pub max_negative_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            max_ttl: Duration::from_secs(3600),
            max_negative_ttl: Duration::from_secs(1800),
        }
    }
}

/// What a cache entry is keyed by: the question (name lower-cased), the DO
/// bit, since a DO answer carries DNSSEC records that a plain one lacks, and
/// the CD bit, so that data an upstream did not validate (asked with CD) is
/// never served to a client that wants validated data (as CoreDNS does).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    name: Name,
    query_type: RecordType,
    query_class: DNSClass,
    dnssec_ok: bool,
    checking_disabled: bool,
}

impl CacheKey {
    /// The key for `query` asked with the DO bit `dnssec_ok` and the CD bit
    /// `checking_disabled`.
    pub fn new(query: &Query, dnssec_ok: bool, checking_disabled: bool) -> Self {
        Self {
            name: query.name().to_lowercase(),
            query_type: query.query_type(),
            query_class: query.query_class(),
            dnssec_ok,
            checking_disabled,
        }
    }
}

/// The two kinds of cached answer, as CoreDNS labels them in its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// An answer with records in the answer section.
    Success,
    /// NXDOMAIN or NODATA.
    Denial,
}

impl EntryKind {
    /// The metric label value: `success` or `denial`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denial => "denial",
        }
    }
}

/// An answer found in the cache, its TTLs already decremented.
#[derive(Debug, Clone)]
pub struct CacheHit {
    /// The cached upstream response (no OPT record, question as first asked).
    pub message: Message,
    /// Whether it is a positive or a negative answer.
    pub kind: EntryKind,
}

struct Entry {
    message: Message,
    kind: EntryKind,
    stored: Instant,
    expires: Instant,
}

type Shard = Mutex<HashMap<CacheKey, Entry>>;

/// The sharded answer cache; see the module documentation.
pub struct Cache {
    config: CacheConfig,
    shards: Box<[Shard]>,
    per_shard: usize,
    hasher: RandomState,
    success: AtomicUsize,
    denial: AtomicUsize,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new(CacheConfig::default())
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("config", &self.config)
            .field("success", &self.entries(EntryKind::Success))
            .field("denial", &self.entries(EntryKind::Denial))
            .finish()
    }
}

impl Cache {
    /// An empty cache. The capacity is split evenly over the shards, rounding
    /// down, so the cache never holds more than `capacity` entries.
    pub fn new(config: CacheConfig) -> Self {
        let shard_count = config.capacity.clamp(1, MAX_SHARDS);
        let per_shard = config.capacity / shard_count;
        let shards = (0..shard_count).map(|_| Shard::default()).collect();
        Self {
            config,
            shards,
            per_shard,
            hasher: RandomState::new(),
            success: AtomicUsize::new(0),
            denial: AtomicUsize::new(0),
        }
    }

    /// The configuration the cache was built with.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The live answer for `key`, with every TTL decremented by the whole
    /// seconds it has spent in the cache; an expired entry is removed.
    ///
    /// [RFC 2308 §5](https://tools.ietf.org/html/rfc2308#section-5), Caching Negative Answers
    ///
    /// ```text
    ///    This TTL decrements in a similar manner to a normal cached answer and
    ///    upon reaching zero (0) indicates the cached negative answer MUST NOT
    ///    be used again.
    /// ```
    pub fn get(&self, key: &CacheKey) -> Option<CacheHit> {
        let now = Instant::now();
        let mut shard = self.lock_shard(key);
        let entry = shard.get(key)?;
        if now >= entry.expires {
            if let Some(gone) = shard.remove(key) {
                self.counter(gone.kind).fetch_sub(1, Ordering::Relaxed);
            }
            return None;
        }
        let elapsed = u32::try_from(now.duration_since(entry.stored).as_secs()).unwrap_or(u32::MAX);
        let mut message = entry.message.clone();
        records_mut(&mut message).for_each(|record| {
            record.decrement_ttl(elapsed);
        });
        Some(CacheHit {
            message,
            kind: entry.kind,
        })
    }

    /// Stores `response` under `key` if it may be cached, and returns for how
    /// long; `None` when it is not cacheable (see [`cacheable`]).
    pub fn insert(&self, key: CacheKey, response: &Message) -> Option<Duration> {
        if self.per_shard == 0 {
            return None;
        }
        let (kind, ttl) = cacheable(response, &self.config)?;
        let stored = Instant::now();
        let entry = Entry {
            message: storable(response, ttl),
            kind,
            stored,
            expires: stored + Duration::from_secs(u64::from(ttl)),
        };
        let mut shard = self.lock_shard(&key);
        if !shard.contains_key(&key) && shard.len() >= self.per_shard {
            self.make_room(&mut shard, stored);
        }
        self.counter(kind).fetch_add(1, Ordering::Relaxed);
        if let Some(old) = shard.insert(key, entry) {
            self.counter(old.kind).fetch_sub(1, Ordering::Relaxed);
        }
        Some(Duration::from_secs(u64::from(ttl)))
    }

    /// Number of entries, live or expired-but-not-yet-purged.
    pub fn len(&self) -> usize {
        self.entries(EntryKind::Success) + self.entries(EntryKind::Denial)
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of entries of one kind.
    pub fn entries(&self, kind: EntryKind) -> usize {
        self.counter(kind).load(Ordering::Relaxed)
    }

    fn counter(&self, kind: EntryKind) -> &AtomicUsize {
        match kind {
            EntryKind::Success => &self.success,
            EntryKind::Denial => &self.denial,
        }
    }

    fn lock_shard(&self, key: &CacheKey) -> MutexGuard<'_, HashMap<CacheKey, Entry>> {
        let hash = self.hasher.hash_one(key);
        // There are 1..=16 shards, so the index is in range and fits a usize.
        let index = (hash % self.shards.len() as u64) as usize;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Purges expired entries; if the shard is still full, evicts one entry
    /// chosen at random.
    fn make_room(&self, shard: &mut HashMap<CacheKey, Entry>, now: Instant) {
        shard.retain(|_, entry| {
            let live = entry.expires > now;
            if !live {
                self.counter(entry.kind).fetch_sub(1, Ordering::Relaxed);
            }
            live
        });
        if shard.len() < self.per_shard {
            return;
        }
        let victim = rand::random_range(0..shard.len());
        let Some(key) = shard.keys().nth(victim).cloned() else {
            return;
        };
        if let Some(gone) = shard.remove(&key) {
            self.counter(gone.kind).fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Whether `response` may be cached, as what kind, and for how many seconds.
///
/// Positive answers live for the smallest TTL in the answer section, capped
/// at `max_ttl`. Negative answers follow RFC 2308, capped at
/// `max_negative_ttl`.
///
/// [RFC 2308 §3](https://tools.ietf.org/html/rfc2308#section-3), Negative Answers from Authoritative Servers
///
/// ```text
///    The TTL of this
///    record is set from the minimum of the MINIMUM field of the SOA record
///    and the TTL of the SOA itself, and indicates how long a resolver may
///    cache the negative answer.
/// ```
///
/// [RFC 2308 §5](https://tools.ietf.org/html/rfc2308#section-5), Caching Negative Answers
///
/// ```text
///    Negative responses without SOA records SHOULD NOT be cached as there
///    is no way to prevent the negative responses looping forever between a
///    pair of servers even with a short TTL.
/// ```
///
/// SERVFAIL, REFUSED and every other error, truncated replies, and answers
/// whose TTL works out to zero are not cached.
pub fn cacheable(response: &Message, config: &CacheConfig) -> Option<(EntryKind, u32)> {
    if response.metadata.truncation {
        return None;
    }
    let (kind, ttl, cap) = match response.metadata.response_code {
        ResponseCode::NoError if !response.answers.is_empty() => {
            let ttl = response.answers.iter().map(|r| r.ttl).min()?;
            (EntryKind::Success, ttl, config.max_ttl)
        }
        ResponseCode::NoError | ResponseCode::NXDomain => (
            EntryKind::Denial,
            negative_ttl(response)?,
            config.max_negative_ttl,
        ),
        _ => return None,
    };
    let cap = u32::try_from(cap.as_secs()).unwrap_or(u32::MAX);
    let ttl = ttl.min(cap);
    (ttl > 0).then_some((kind, ttl))
}

/// The RFC 2308 negative TTL: the smaller of the SOA's own TTL and its
/// MINIMUM field, from the first SOA in the authority section.
fn negative_ttl(response: &Message) -> Option<u32> {
    response
        .authorities
        .iter()
        .find_map(|record| match &record.data {
            RData::SOA(soa) => Some(record.ttl.min(soa.minimum)),
            _ => None,
        })
}

/// The copy of `response` that goes into the cache: no OPT (RFC 6891 §6.1.1:
/// "OPT RRs MUST NOT be cached"), no signature, and no record TTL above the
/// entry's own, so the TTLs a client sees never outlive the entry.
fn storable(response: &Message, ttl: u32) -> Message {
    let mut message = response.clone();
    message.edns = None;
    message.signature = None;
    cap_ttls(&mut message, ttl);
    message
}

/// Lowers every record TTL in `message` (all sections) to at most `ttl`
/// seconds; the forwarder applies it to a fresh answer with the TTL
/// [`Cache::insert`] chose, so the first client sees what later ones will.
pub fn cap_ttls(message: &mut Message, ttl: u32) {
    records_mut(message).for_each(|record| record.ttl = record.ttl.min(ttl));
}

fn records_mut(message: &mut Message) -> impl Iterator<Item = &mut Record> {
    message
        .answers
        .iter_mut()
        .chain(message.authorities.iter_mut())
        .chain(message.additionals.iter_mut())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::{Edns, MessageType, OpCode};
    use hickory_proto::rr::rdata::{A, SOA};

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn query(text: &str) -> Query {
        Query::query(name(text), RecordType::A)
    }

    fn response(text: &str, code: ResponseCode) -> Message {
        let mut message = Message::new(7, MessageType::Response, OpCode::Query);
        message.metadata.response_code = code;
        message.add_query(query(text));
        message
    }

    fn a_record(text: &str, ttl: u32) -> Record {
        Record::from_rdata(name(text), ttl, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))))
    }

    fn soa_record(ttl: u32, minimum: u32) -> Record {
        let soa = SOA::new(
            name("ns.example."),
            name("admin.example."),
            1,
            60,
            60,
            60,
            minimum,
        );
        Record::from_rdata(name("example."), ttl, RData::SOA(soa))
    }

    fn positive(text: &str, ttls: &[u32]) -> Message {
        let mut message = response(text, ResponseCode::NoError);
        for ttl in ttls {
            message.add_answer(a_record(text, *ttl));
        }
        message
    }

    fn negative(code: ResponseCode, soa_ttl: u32, minimum: u32) -> Message {
        let mut message = response("missing.example.", code);
        message.add_authority(soa_record(soa_ttl, minimum));
        message
    }

    fn key(text: &str) -> CacheKey {
        CacheKey::new(&query(text), false, false)
    }

    fn ttls(message: &Message) -> Vec<u32> {
        message
            .answers
            .iter()
            .chain(&message.authorities)
            .map(|r| r.ttl)
            .collect()
    }

    #[test]
    fn positive_ttl_is_the_smallest_answer_ttl() {
        let config = CacheConfig::default();
        let got = cacheable(&positive("a.example.", &[300, 30, 600]), &config);
        assert_eq!(got, Some((EntryKind::Success, 30)));
    }

    #[test]
    fn positive_ttl_is_capped_at_max_ttl() {
        let config = CacheConfig::default();
        let got = cacheable(&positive("a.example.", &[86_400]), &config);
        assert_eq!(got, Some((EntryKind::Success, 3600)));
    }

    #[test]
    fn negative_ttl_is_min_of_soa_ttl_and_minimum() {
        let config = CacheConfig::default();
        let nx = negative(ResponseCode::NXDomain, 3600, 60);
        assert_eq!(cacheable(&nx, &config), Some((EntryKind::Denial, 60)));
        let nodata = negative(ResponseCode::NoError, 30, 900);
        assert_eq!(cacheable(&nodata, &config), Some((EntryKind::Denial, 30)));
    }

    #[test]
    fn negative_ttl_is_capped_at_max_negative_ttl() {
        let config = CacheConfig::default();
        let nx = negative(ResponseCode::NXDomain, 86_400, 86_400);
        assert_eq!(cacheable(&nx, &config), Some((EntryKind::Denial, 1800)));
    }

    #[test]
    fn uncacheable_answers_are_refused() {
        let config = CacheConfig::default();
        let servfail = response("a.example.", ResponseCode::ServFail);
        assert_eq!(cacheable(&servfail, &config), None);
        let refused = negative(ResponseCode::Refused, 60, 60);
        assert_eq!(cacheable(&refused, &config), None);
        let nx_without_soa = response("a.example.", ResponseCode::NXDomain);
        assert_eq!(cacheable(&nx_without_soa, &config), None);
        let zero_ttl = positive("a.example.", &[0, 300]);
        assert_eq!(cacheable(&zero_ttl, &config), None);
        let mut truncated = positive("a.example.", &[300]);
        truncated.metadata.truncation = true;
        assert_eq!(cacheable(&truncated, &config), None);
    }

    #[tokio::test(start_paused = true)]
    async fn ttls_count_down_and_entries_expire() {
        let cache = Cache::default();
        let stored = cache.insert(key("a.example."), &positive("a.example.", &[30, 300]));
        assert_eq!(stored, Some(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_millis(10_500)).await;
        let hit = cache.get(&key("a.example.")).unwrap();
        assert_eq!(hit.kind, EntryKind::Success);
        // Both records were clamped to the entry's 30 s, then 10 s went by.
        assert_eq!(ttls(&hit.message), vec![20, 20]);
        tokio::time::advance(Duration::from_millis(19_500)).await;
        assert!(cache.get(&key("a.example.")).is_none());
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn negative_entries_expire_at_the_soa_ttl() {
        let cache = Cache::default();
        let nx = negative(ResponseCode::NXDomain, 3600, 60);
        assert_eq!(
            cache.insert(key("missing.example."), &nx),
            Some(Duration::from_secs(60))
        );
        assert_eq!(cache.entries(EntryKind::Denial), 1);
        tokio::time::advance(Duration::from_secs(59)).await;
        let hit = cache.get(&key("missing.example.")).unwrap();
        assert_eq!(hit.kind, EntryKind::Denial);
        assert_eq!(hit.message.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(ttls(&hit.message), vec![1]);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(cache.get(&key("missing.example.")).is_none());
        assert_eq!(cache.entries(EntryKind::Denial), 0);
    }

    #[test]
    fn key_ignores_case_but_not_do_cd_or_type() {
        let cache = Cache::default();
        cache.insert(key("MiXeD.example."), &positive("MiXeD.example.", &[60]));
        assert!(cache.get(&key("mixed.EXAMPLE.")).is_some());
        let mixed = query("mixed.example.");
        assert!(cache.get(&CacheKey::new(&mixed, true, false)).is_none());
        assert!(cache.get(&CacheKey::new(&mixed, false, true)).is_none());
        let aaaa = Query::query(name("mixed.example."), RecordType::AAAA);
        assert!(cache.get(&CacheKey::new(&aaaa, false, false)).is_none());
    }

    #[test]
    fn opt_is_not_stored() {
        let cache = Cache::default();
        let mut message = positive("a.example.", &[60]);
        message.set_edns(Edns::new());
        cache.insert(key("a.example."), &message);
        assert!(
            cache
                .get(&key("a.example."))
                .unwrap()
                .message
                .edns
                .is_none()
        );
    }

    #[test]
    fn eviction_keeps_the_cache_within_capacity() {
        let cache = Cache::new(CacheConfig {
            capacity: 20,
            ..CacheConfig::default()
        });
        for i in 0..500 {
            let text = format!("host{i}.example.");
            cache.insert(key(&text), &positive(&text, &[60]));
            assert!(cache.len() <= 20, "{} entries after {i}", cache.len());
        }
        let live = (0..500)
            .filter(|i| cache.get(&key(&format!("host{i}.example."))).is_some())
            .count();
        assert_eq!(live, cache.len());
        assert!(live > 0);
    }

    #[test]
    fn replacing_an_entry_keeps_counts_right() {
        let cache = Cache::default();
        cache.insert(key("a.example."), &positive("a.example.", &[60]));
        let mut nx = negative(ResponseCode::NXDomain, 60, 60);
        nx.queries = vec![query("a.example.")];
        cache.insert(key("a.example."), &nx);
        assert_eq!(cache.entries(EntryKind::Success), 0);
        assert_eq!(cache.entries(EntryKind::Denial), 1);
    }

    #[test]
    fn zero_capacity_disables_caching() {
        let cache = Cache::new(CacheConfig {
            capacity: 0,
            ..CacheConfig::default()
        });
        assert_eq!(
            cache.insert(key("a.example."), &positive("a.example.", &[60])),
            None
        );
        assert!(cache.get(&key("a.example.")).is_none());
    }
}
