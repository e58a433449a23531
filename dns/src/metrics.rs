//! svcplane-dns metrics, named as CoreDNS names them where they mean the same.
//!
//! The query path must not pay for label hashing per query: each worker keeps [`WorkerMetrics`],
//! a small cache of counter and histogram handles (prometheus-client's metrics are shared
//! atomics, so a cloned handle updates the registered series).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::answer::Rcode;
use crate::wire;

/// The `server` label CoreDNS puts on every series.
const SERVER: &str = "dns://:53";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub server: &'static str,
    pub zone: &'static str,
    pub proto: &'static str,
    pub family: &'static str,
    pub r#type: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResponseLabels {
    pub server: &'static str,
    pub zone: &'static str,
    pub rcode: &'static str,
    pub plugin: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DurationLabels {
    pub server: &'static str,
    pub zone: &'static str,
    pub r#type: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_025, 2.0, 16))
}

/// Every metric svcplane-dns exports besides the forwarder's.
#[derive(Debug, Clone)]
pub struct DnsMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub responses: Family<ResponseLabels, Counter>,
    pub duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
    /// Catalog change → answers changed (svcplane's own).
    pub programming: Histogram,
    /// Seconds the catalog has been served without a live source (0 when live).
    pub stale_seconds: Gauge,
    /// Catalog generation the answers reflect.
    pub generation: Gauge,
    /// Queries dropped because they could not be answered (not even FORMERR).
    pub dropped: Counter,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        DnsMetrics {
            requests: Family::default(),
            responses: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            programming: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            stale_seconds: Gauge::default(),
            generation: Gauge::default(),
            dropped: Counter::default(),
        }
    }
}

impl DnsMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "coredns_dns_requests",
            "Counter of DNS requests made per zone, protocol and family",
            self.requests.clone(),
        );
        r.register(
            "coredns_dns_responses",
            "Counter of response status codes",
            self.responses.clone(),
        );
        r.register(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took",
            self.duration.clone(),
        );
        r.register(
            "svcplane_dns_programming_duration_seconds",
            "Time from a catalog change to the answers reflecting it",
            self.programming.clone(),
        );
        r.register(
            "svcplane_dns_catalog_stale_seconds",
            "Seconds answers have come from the last known state while the source is disconnected",
            self.stale_seconds.clone(),
        );
        r.register(
            "svcplane_dns_catalog_generation",
            "Catalog generation the answers reflect",
            self.generation.clone(),
        );
        r.register(
            "svcplane_dns_dropped_queries",
            "Packets dropped without an answer (responses, runts)",
            self.dropped.clone(),
        );
    }
}

/// CoreDNS's type label: the name for common types, `other` for the rest.
pub fn type_label(qtype: u16) -> &'static str {
    match qtype {
        wire::TYPE_A => "A",
        wire::TYPE_AAAA => "AAAA",
        wire::TYPE_SRV => "SRV",
        wire::TYPE_PTR => "PTR",
        wire::TYPE_TXT => "TXT",
        wire::TYPE_SOA => "SOA",
        wire::TYPE_NS => "NS",
        wire::TYPE_CNAME => "CNAME",
        wire::TYPE_ANY => "ANY",
        wire::TYPE_AXFR => "AXFR",
        wire::TYPE_IXFR => "IXFR",
        _ => "other",
    }
}

/// Per-worker handles, so that counting a query is a few atomic adds.
#[derive(Debug)]
pub struct WorkerMetrics {
    shared: DnsMetrics,
    proto: &'static str,
    requests: Vec<((&'static str, &'static str), Counter)>,
    responses: Vec<(&'static str, Counter)>,
    durations: Vec<(&'static str, Histogram)>,
}

impl WorkerMetrics {
    pub fn new(shared: DnsMetrics, proto: &'static str) -> Self {
        WorkerMetrics {
            shared,
            proto,
            requests: Vec::new(),
            responses: Vec::new(),
            durations: Vec::new(),
        }
    }

    /// Counts one request and its response.
    pub fn record(&mut self, v6: bool, qtype: u16, rcode: Rcode, took: Duration) {
        let family = if v6 { "2" } else { "1" };
        let ty = type_label(qtype);
        let (shared, proto) = (&self.shared, self.proto);
        cached(&mut self.requests, (family, ty), || {
            shared
                .requests
                .get_or_create(&RequestLabels {
                    server: SERVER,
                    zone: ".",
                    proto,
                    family,
                    r#type: ty,
                })
                .clone()
        })
        .inc();
        let rc = rcode.as_str();
        cached(&mut self.responses, rc, || {
            shared
                .responses
                .get_or_create(&ResponseLabels {
                    server: SERVER,
                    zone: ".",
                    rcode: rc,
                    plugin: "",
                })
                .clone()
        })
        .inc();
        cached(&mut self.durations, ty, || {
            shared
                .duration
                .get_or_create(&DurationLabels {
                    server: SERVER,
                    zone: ".",
                    r#type: ty,
                })
                .clone()
        })
        .observe(took.as_secs_f64());
    }

    pub fn shared(&self) -> &DnsMetrics {
        &self.shared
    }

    pub fn dropped(&self) {
        self.shared.dropped.inc();
    }
}

fn cached<K: PartialEq + Copy, V>(list: &mut Vec<(K, V)>, key: K, make: impl FnOnce() -> V) -> &V {
    let index = match list.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => {
            list.push((key, make()));
            list.len() - 1
        }
    };
    &list[index].1
}
