//! Forwarding names outside the cluster zones to upstream resolvers. This
//! module owns the path from a client's query to the answer it is sent for
//! such a name: the answer cache first ([`crate::cache`]), then, on a miss,
//! one upstream query per key however many clients ask at once, sent with a
//! fresh random ID from a fresh kernel-chosen port, with replies matched
//! against the query (RFC 5452) so spoofed ones are counted and ignored,
//! retried over TCP when truncated, and failing over to the next upstream on
//! timeout, network error, SERVFAIL or REFUSED. The answer handed back keeps
//! the client's ID and question exactly as written (letter case included),
//! sets RA, and carries an OPT only if the client sent one. Reading the
//! upstreams from resolv.conf lives here too.

mod metrics;
mod resolv_conf;
mod single_flight;
mod upstream;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use tokio::sync::Semaphore;
use tracing::debug;

pub use self::metrics::{DEFAULT_SERVER_LABEL, ForwardMetrics};
pub use self::resolv_conf::{ResolvConfError, parse_resolv_conf, upstreams_from_resolv_conf};
use self::single_flight::{Role, SingleFlight, follow};
use self::upstream::{Question, exchange};
use crate::cache::{Cache, CacheKey, cap_ttls};

/// The EDNS UDP payload size advertised upstream and to clients: the DNS
/// Flag Day 2020 value, which avoids IP fragmentation.
pub const EDNS_UDP_PAYLOAD: u16 = 1232;

/// Where and how to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardConfig {
    /// The upstream resolvers, tried in turn from a rotating start.
    pub upstreams: Vec<SocketAddr>,
    /// How long one attempt at one upstream may take (per transport, so a
    /// truncated UDP reply followed by TCP may take twice this). Default 2 s.
    pub timeout: Duration,
    /// Upstream attempts per client query, moving to the next upstream after
    /// each failure (wrapping around). Default 2, so that with the default
    /// timeout an answer or an error comes back before a glibc stub resolver
    /// gives up at 5 s.
    pub attempts: usize,
    /// Most client queries asking upstream at once; beyond it a query fails
    /// at once with [`ForwardError::Overloaded`] (CoreDNS answers REFUSED).
    /// Default 1000.
    pub max_concurrent: usize,
    /// The EDNS UDP payload size advertised upstream. Default 1232.
    pub udp_payload: u16,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            timeout: Duration::from_secs(2),
            attempts: 2,
            max_concurrent: 1000,
            udp_payload: EDNS_UDP_PAYLOAD,
        }
    }
}

impl ForwardConfig {
    /// The default configuration forwarding to `upstreams`.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self {
            upstreams,
            ..Self::default()
        }
    }
}

/// Why a query could not be answered by forwarding; the server answers
/// SERVFAIL (or FORMERR for [`ForwardError::BadQuery`], REFUSED for
/// [`ForwardError::Overloaded`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The client's message is not a single-question standard query.
    #[error("not forwardable: {0}")]
    BadQuery(&'static str),
    /// No upstream resolver is configured.
    #[error("no upstream resolver configured")]
    NoUpstreams,
    /// `max_concurrent` queries are already waiting on upstreams.
    #[error("too many concurrent upstream queries")]
    Overloaded,
    /// Every attempt failed: timeout, network error, SERVFAIL or REFUSED.
    #[error("all {attempts} upstream attempts failed, last: {last}")]
    Exhausted {
        /// How many attempts were made.
        attempts: usize,
        /// What the last one failed with.
        last: String,
    },
}

/// Forwards queries to upstream resolvers through the answer cache; share it
/// behind an `Arc`.
#[derive(Debug)]
pub struct Forwarder {
    config: ForwardConfig,
    cache: Arc<Cache>,
    metrics: Arc<ForwardMetrics>,
    next_upstream: AtomicUsize,
    in_flight: Semaphore,
    flights: SingleFlight,
}

impl Forwarder {
    /// A forwarder using `cache`, with its own [`ForwardMetrics`] labelled
    /// `server="dns://:53"`; see [`Forwarder::with_metrics`].
    pub fn new(config: ForwardConfig, cache: Arc<Cache>) -> Self {
        let in_flight = Semaphore::new(config.max_concurrent.min(Semaphore::MAX_PERMITS));
        Self {
            config,
            cache,
            metrics: Arc::default(),
            next_upstream: AtomicUsize::new(0),
            in_flight,
            flights: SingleFlight::default(),
        }
    }

    /// The same forwarder recording into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<ForwardMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The metrics this forwarder records into.
    pub fn metrics(&self) -> &Arc<ForwardMetrics> {
        &self.metrics
    }

    /// The answer cache.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &ForwardConfig {
        &self.config
    }

    /// The response to send the client for `query`: from the cache, or else
    /// from an upstream. It has the client's ID, the client's question as
    /// written, RD copied, RA set, and an OPT only if the client sent one.
    /// An `Err` means no upstream gave a usable answer; answer SERVFAIL.
    pub async fn resolve(&self, query: &Message) -> Result<Message, ForwardError> {
        let question = client_question(query, self.config.udp_payload)?;
        let key = CacheKey::new(
            question.query,
            question.dnssec_ok,
            question.checking_disabled,
        );
        if let Some(hit) = self.cache.get(&key) {
            self.metrics.cache_hit(hit.kind);
            return Ok(client_response(query, hit.message, self.config.udp_payload));
        }
        self.metrics.cache_miss();
        let reply = self.fetch(&key, question).await?;
        Ok(client_response(query, reply, self.config.udp_payload))
    }

    /// The upstream answer for a cache miss, shared with concurrent identical
    /// misses.
    async fn fetch(&self, key: &CacheKey, question: Question<'_>) -> Result<Message, ForwardError> {
        match self.flights.join(key) {
            Role::Leader(flight) => {
                let outcome = self.fetch_and_store(key, question).await;
                flight.land(&outcome);
                outcome
            }
            Role::Follower(outcome) => match follow(outcome).await {
                Some(outcome) => outcome,
                None => self.fetch_and_store(key, question).await,
            },
        }
    }

    async fn fetch_and_store(
        &self,
        key: &CacheKey,
        question: Question<'_>,
    ) -> Result<Message, ForwardError> {
        let mut outcome = self.ask_upstreams(question).await;
        if let Ok(reply) = &mut outcome
            && let Some(ttl) = self.cache.insert(key.clone(), reply)
        {
            cap_ttls(reply, u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX));
        }
        self.metrics.observe_cache(&self.cache);
        outcome
    }

    /// Tries up to `attempts` upstreams in turn, starting one further along
    /// the list at each call, until one answers.
    async fn ask_upstreams(&self, question: Question<'_>) -> Result<Message, ForwardError> {
        let upstreams = &self.config.upstreams;
        if upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        let _permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| ForwardError::Overloaded)?;
        let start = self.next_upstream.fetch_add(1, Ordering::Relaxed) % upstreams.len();
        let attempts = self.config.attempts.max(1);
        let mut last = String::new();
        for upstream in upstreams.iter().cycle().skip(start).take(attempts) {
            match exchange(*upstream, question, self.config.timeout, &self.metrics).await {
                Ok(reply) => return Ok(reply),
                Err(err) => {
                    debug!(%upstream, %err, "upstream attempt failed");
                    last = format!("{upstream}: {err}");
                }
            }
        }
        Err(ForwardError::Exhausted { attempts, last })
    }
}

/// The client's single question and the header bits forwarded with it.
///
/// RFC 9619 limits QDCOUNT to one for OPCODE QUERY; anything else is not
/// forwarded.
fn client_question(query: &Message, udp_payload: u16) -> Result<Question<'_>, ForwardError> {
    if query.metadata.op_code != OpCode::Query {
        return Err(ForwardError::BadQuery("opcode is not QUERY"));
    }
    if query.metadata.message_type != MessageType::Query {
        return Err(ForwardError::BadQuery("message is a response"));
    }
    let [single] = query.queries.as_slice() else {
        return Err(ForwardError::BadQuery("question count is not one"));
    };
    Ok(Question {
        query: single,
        dnssec_ok: client_dnssec_ok(query),
        checking_disabled: query.metadata.checking_disabled,
        udp_payload,
    })
}

fn client_dnssec_ok(query: &Message) -> bool {
    query
        .edns
        .as_ref()
        .is_some_and(|edns| edns.flags().dnssec_ok)
}

/// Turns an upstream (or cached) reply into the client's response.
///
/// [RFC 6891 §6.1.1](https://tools.ietf.org/html/rfc6891#section-6.1.1), Basic Elements
///
/// ```text
///  If an OPT record is present in a received request, compliant
///  responders MUST include an OPT record in their respective responses.
///
///  An OPT record does not carry any DNS data.  It is used only to
///  contain control information pertaining to the question-and-answer
///  sequence of a specific transaction.  OPT RRs MUST NOT be cached,
///  forwarded, or stored in or loaded from Zone Files.
/// ```
///
/// So the upstream's OPT is dropped and, if the client sent one, a fresh one
/// with our payload size and the client's DO bit takes its place. The AD bit
/// is passed on only to clients that set AD or DO (RFC 6840 §5.8).
fn client_response(query: &Message, mut reply: Message, udp_payload: u16) -> Message {
    let client = &query.metadata;
    let upstream = reply.metadata;
    let dnssec_ok = client_dnssec_ok(query);
    reply.metadata.id = client.id;
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.op_code = client.op_code;
    reply.metadata.authoritative = false;
    reply.metadata.recursion_desired = client.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.checking_disabled = client.checking_disabled;
    reply.metadata.authentic_data = upstream.authentic_data && (client.authentic_data || dnssec_ok);
    reply.queries = query.queries.clone();
    reply.signature = None;
    reply.edns = query.edns.as_ref().map(|_| {
        let mut edns = Edns::new();
        edns.set_max_payload(udp_payload);
        edns.set_dnssec_ok(dnssec_ok);
        edns
    });
    if reply.edns.is_none() && upstream.response_code.high() > 0 {
        // An extended rcode cannot be expressed without an OPT record.
        reply.metadata.response_code = ResponseCode::ServFail;
    }
    reply
}
