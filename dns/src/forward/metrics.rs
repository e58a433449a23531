//! Prometheus metrics of the forwarder and its cache, under the names CoreDNS's
//! `cache` and `forward` plugins use, so existing dashboards keep working.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cache::{Cache, EntryKind};

/// The `server` label CoreDNS gives a server block listening on port 53.
pub const DEFAULT_SERVER_LABEL: &str = "dns://:53";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerTypeLabels {
    server: String,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToLabels {
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToRcodeLabels {
    to: String,
    rcode: String,
}

type HistogramFamily = Family<ToRcodeLabels, Histogram, fn() -> Histogram>;

/// CoreDNS's `plugin.TimeBuckets`: 0.25 ms doubling 16 times (to about 8 s).
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The forwarder's and the cache's metrics; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct ForwardMetrics {
    server: String,
    cache_hits: Family<ServerTypeLabels, Counter>,
    cache_misses: Family<ServerLabels, Counter>,
    cache_entries: Family<ServerTypeLabels, Gauge>,
    requests: Family<ToLabels, Counter>,
    responses: Family<ToRcodeLabels, Counter>,
    durations: HistogramFamily,
    mismatched: Counter,
}

impl Default for ForwardMetrics {
    fn default() -> Self {
        Self::new(DEFAULT_SERVER_LABEL)
    }
}

impl ForwardMetrics {
    /// Metrics whose cache series carry `server` (e.g. `dns://:53`).
    pub fn new(server: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            cache_entries: Family::default(),
            requests: Family::default(),
            responses: Family::default(),
            durations: HistogramFamily::new_with_constructor(duration_histogram),
            mismatched: Counter::default(),
        }
    }

    /// Registers every metric under its full name. Counters are registered
    /// without `_total`, which the registry appends.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "coredns_cache_hits",
            "The count of cache hits.",
            self.cache_hits.clone(),
        );
        registry.register(
            "coredns_cache_misses",
            "The count of cache misses.",
            self.cache_misses.clone(),
        );
        registry.register(
            "coredns_cache_entries",
            "The number of elements in the cache.",
            self.cache_entries.clone(),
        );
        registry.register(
            "coredns_forward_requests",
            "Counter of requests made per upstream.",
            self.requests.clone(),
        );
        registry.register(
            "coredns_forward_responses",
            "Counter of responses received per upstream.",
            self.responses.clone(),
        );
        registry.register(
            "coredns_forward_request_duration_seconds",
            "Histogram of the time each request took.",
            self.durations.clone(),
        );
        registry.register(
            "svcplane_forward_mismatched_replies",
            "Upstream replies ignored because source, ID or question did not match the query.",
            self.mismatched.clone(),
        );
    }

    /// Total replies ignored as not matching their query.
    pub fn mismatched_replies(&self) -> u64 {
        self.mismatched.get()
    }

    /// Total cache hits of one kind.
    pub fn cache_hits(&self, kind: EntryKind) -> u64 {
        self.cache_hits.get_or_create(&self.server_type(kind)).get()
    }

    /// Total cache misses.
    pub fn cache_misses(&self) -> u64 {
        self.cache_misses.get_or_create(&self.server_labels()).get()
    }

    pub(crate) fn cache_hit(&self, kind: EntryKind) {
        self.cache_hits.get_or_create(&self.server_type(kind)).inc();
    }

    pub(crate) fn cache_miss(&self) {
        self.cache_misses.get_or_create(&self.server_labels()).inc();
    }

    /// Copies the cache's entry counts into `coredns_cache_entries`.
    pub(crate) fn observe_cache(&self, cache: &Cache) {
        for kind in [EntryKind::Success, EntryKind::Denial] {
            let count = i64::try_from(cache.entries(kind)).unwrap_or(i64::MAX);
            self.cache_entries
                .get_or_create(&self.server_type(kind))
                .set(count);
        }
    }

    pub(crate) fn upstream_request(&self, to: SocketAddr) {
        let labels = ToLabels { to: to.to_string() };
        self.requests.get_or_create(&labels).inc();
    }

    pub(crate) fn upstream_response(&self, to: SocketAddr, rcode: ResponseCode, took: Duration) {
        let labels = ToRcodeLabels {
            to: to.to_string(),
            rcode: rcode_label(rcode),
        };
        self.responses.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub(crate) fn mismatched_reply(&self) {
        self.mismatched.inc();
    }

    fn server_labels(&self) -> ServerLabels {
        ServerLabels {
            server: self.server.clone(),
        }
    }

    fn server_type(&self, kind: EntryKind) -> ServerTypeLabels {
        ServerTypeLabels {
            server: self.server.clone(),
            r#type: kind.as_str(),
        }
    }
}

/// The rcode as CoreDNS (miekg/dns `RcodeToString`) spells it.
fn rcode_label(rcode: ResponseCode) -> String {
    let known = match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        ResponseCode::BADVERS => "BADVERS",
        ResponseCode::BADCOOKIE => "BADCOOKIE",
        other => return u16::from(other).to_string(),
    };
    known.to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_match_coredns() {
        let metrics = ForwardMetrics::default();
        let to: SocketAddr = "127.0.0.1:53".parse().unwrap();
        metrics.cache_hit(EntryKind::Success);
        metrics.cache_hit(EntryKind::Denial);
        metrics.cache_miss();
        metrics.observe_cache(&Cache::default());
        metrics.upstream_request(to);
        metrics.upstream_response(to, ResponseCode::NXDomain, Duration::from_millis(3));
        metrics.mismatched_reply();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "coredns_cache_hits_total{server=\"dns://:53\",type=\"success\"} 1",
            "coredns_cache_hits_total{server=\"dns://:53\",type=\"denial\"} 1",
            "coredns_cache_misses_total{server=\"dns://:53\"} 1",
            "coredns_cache_entries{server=\"dns://:53\",type=\"success\"} 0",
            "coredns_forward_requests_total{to=\"127.0.0.1:53\"} 1",
            "coredns_forward_responses_total{to=\"127.0.0.1:53\",rcode=\"NXDOMAIN\"} 1",
            "coredns_forward_request_duration_seconds_count{to=\"127.0.0.1:53\",rcode=\"NXDOMAIN\"} 1",
            "svcplane_forward_mismatched_replies_total 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn unknown_rcodes_are_numbers() {
        assert_eq!(rcode_label(ResponseCode::Unknown(3841)), "3841");
        assert_eq!(rcode_label(ResponseCode::ServFail), "SERVFAIL");
    }
}
