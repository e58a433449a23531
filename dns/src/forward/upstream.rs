//! One exchange with one upstream resolver: a query with a fresh random ID
//! from a fresh socket on a kernel-chosen port, replies checked against the
//! query before they are believed, and a retry over TCP when the UDP reply is
//! truncated.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::debug;

use super::metrics::ForwardMetrics;

/// Largest UDP datagram read; replies above the advertised EDNS size are
/// still read whole rather than cut.
const MAX_UDP_REPLY: usize = 65_535;

/// What is asked of an upstream, taken from the client's query.
#[derive(Debug, Clone, Copy)]
pub(super) struct Question<'a> {
    /// The single question, as the client wrote it.
    pub query: &'a Query,
    /// The client's DO bit (RFC 3225), forwarded as is.
    pub dnssec_ok: bool,
    /// The client's CD bit (RFC 4035 §3.2.2), forwarded as is.
    pub checking_disabled: bool,
    /// The EDNS UDP payload size advertised upstream.
    pub udp_payload: u16,
}

/// Why one attempt at one upstream failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum AttemptError {
    /// No matching reply arrived in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// A socket operation failed (e.g. ICMP port unreachable).
    #[error("network error: {0}")]
    Io(#[from] io::Error),
    /// The query could not be encoded.
    #[error("cannot encode the query: {0}")]
    Encode(String),
    /// The reply over TCP did not match the query.
    #[error("TCP reply did not match the query: {0}")]
    TcpMismatch(Mismatch),
    /// The upstream answered SERVFAIL or REFUSED.
    #[error("upstream answered {0}")]
    Rcode(ResponseCode),
}

/// Why a reply was not accepted as the answer to our query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Mismatch {
    /// It came from another address or port than the query went to.
    #[error("reply from another address")]
    Source,
    /// It is not a well-formed DNS message.
    #[error("malformed reply")]
    Malformed,
    /// Its QR bit is clear or its opcode is not QUERY.
    #[error("not a response")]
    NotResponse,
    /// Its ID is not the query's.
    #[error("wrong ID")]
    Id,
    /// Its question section is not the query's.
    #[error("wrong question")]
    Question,
}

/// Asks `upstream` one question within `timeout` (per transport): over UDP,
/// and over TCP again if the UDP reply is truncated. SERVFAIL and REFUSED
/// count as failures so the caller moves on to the next upstream.
///
/// [RFC 1035 §4.2.1](https://tools.ietf.org/html/rfc1035#section-4.2.1), UDP usage
///
/// ```text
///    Messages carried by UDP are restricted to 512 bytes (not counting the IP
///    or UDP headers).  Longer messages are truncated and the TC bit is set in
///    the header.
/// ```
///
/// With EDNS the limit is the advertised payload size instead, but a TC reply
/// is still incomplete: the question is asked again over TCP, with a new ID.
pub(super) async fn exchange(
    upstream: SocketAddr,
    question: Question<'_>,
    timeout: Duration,
    metrics: &ForwardMetrics,
) -> Result<Message, AttemptError> {
    let started = std::time::Instant::now();
    metrics.upstream_request(upstream);
    let mut reply = within(timeout, udp_exchange(upstream, question, metrics)).await?;
    if reply.metadata.truncation {
        debug!(%upstream, "truncated UDP reply, retrying over TCP");
        reply = within(timeout, tcp_exchange(upstream, question)).await?;
    }
    let rcode = reply.metadata.response_code;
    metrics.upstream_response(upstream, rcode, started.elapsed());
    match rcode {
        ResponseCode::ServFail | ResponseCode::Refused => Err(AttemptError::Rcode(rcode)),
        _ => Ok(reply),
    }
}

async fn within<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, AttemptError>>,
) -> Result<T, AttemptError> {
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| AttemptError::Timeout(timeout))?
}

/// [RFC 5452 §9.2](https://tools.ietf.org/html/rfc5452#section-9.2), Extending the Q-ID Space by Using Ports and Addresses
///
/// ```text
///    Resolver implementations MUST:
///
///    o  Use an unpredictable source port for outgoing queries from the
///       range of available ports (53, or 1024 and above) that is as large
///       as possible and practicable;
///
///    o  Use multiple different source ports simultaneously in case of
///       multiple outstanding queries;
///
///    o  Use an unpredictable query ID for outgoing queries, utilizing the
///       full range available (0-65535).
/// ```
///
/// Every query gets its own socket bound to port 0, so the kernel picks a
/// random ephemeral port, and its own ID from `rand`'s CSPRNG. Replies that
/// do not match are counted and ignored, and reading goes on until the real
/// one arrives or the attempt times out.
async fn udp_exchange(
    upstream: SocketAddr,
    question: Question<'_>,
    metrics: &ForwardMetrics,
) -> Result<Message, AttemptError> {
    let id = rand::random::<u16>();
    let wire = encode(&upstream_query(id, question))?;
    let socket = UdpSocket::bind(SocketAddr::new(unspecified(upstream.ip()), 0)).await?;
    socket.connect(upstream).await?;
    socket.send(&wire).await?;
    let mut buf = vec![0; MAX_UDP_REPLY];
    loop {
        let (len, from) = socket.recv_from(&mut buf).await?;
        let datagram = buf.get(..len).unwrap_or_default();
        match accept_reply(datagram, from, upstream, id, question.query) {
            Ok(reply) => return Ok(reply),
            Err(why) => {
                metrics.mismatched_reply();
                debug!(%upstream, %from, %why, "ignoring mismatched reply");
            }
        }
    }
}

/// [RFC 1035 §4.2.2](https://tools.ietf.org/html/rfc1035#section-4.2.2), TCP usage
///
/// ```text
///    The message is prefixed with a two byte length field which gives the message
///    length, excluding the two byte length field.
/// ```
async fn tcp_exchange(
    upstream: SocketAddr,
    question: Question<'_>,
) -> Result<Message, AttemptError> {
    let id = rand::random::<u16>();
    let wire = encode(&upstream_query(id, question))?;
    let len = u16::try_from(wire.len()).map_err(|_| AttemptError::Encode("too long".into()))?;
    let mut framed = Vec::with_capacity(wire.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(&wire);

    let mut stream = TcpStream::connect(upstream).await?;
    stream.write_all(&framed).await?;
    let mut len = [0; 2];
    stream.read_exact(&mut len).await?;
    let mut body = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut body).await?;
    accept_reply(&body, upstream, upstream, id, question.query).map_err(AttemptError::TcpMismatch)
}

/// The query sent upstream: our ID, RD set, the client's CD bit, the client's
/// question, and an OPT advertising `udp_payload` with the client's DO bit.
pub(super) fn upstream_query(id: u16, question: Question<'_>) -> Message {
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.metadata.checking_disabled = question.checking_disabled;
    query.add_query(question.query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(question.udp_payload);
    edns.set_dnssec_ok(question.dnssec_ok);
    query.set_edns(edns);
    query
}

fn encode(message: &Message) -> Result<Vec<u8>, AttemptError> {
    message
        .to_vec()
        .map_err(|err| AttemptError::Encode(err.to_string()))
}

/// [RFC 5452 §9.1](https://tools.ietf.org/html/rfc5452#section-9.1), Query Matching Rules
///
/// ```text
///    A resolver implementation MUST match responses to all of the
///    following attributes of the query:
///
///    o  Source address against query destination address
///
///    o  Destination address against query source address
///
///    o  Destination port against query source port
///
///    o  Query ID
///
///    o  Query name
///
///    o  Query class and type
///
///    before applying DNS trustworthiness rules (see Section 5.4.1 of
///    [RFC2181]).
///
///    A mismatch and the response MUST be considered invalid.
/// ```
///
/// The destination address and port are ours by construction: each query has
/// its own socket. The name is compared case-insensitively.
pub(super) fn accept_reply(
    datagram: &[u8],
    from: SocketAddr,
    upstream: SocketAddr,
    id: u16,
    query: &Query,
) -> Result<Message, Mismatch> {
    if from != upstream {
        return Err(Mismatch::Source);
    }
    let reply = Message::from_vec(datagram).map_err(|_| Mismatch::Malformed)?;
    let meta = &reply.metadata;
    if meta.message_type != MessageType::Response || meta.op_code != OpCode::Query {
        return Err(Mismatch::NotResponse);
    }
    if meta.id != id {
        return Err(Mismatch::Id);
    }
    match reply.queries.as_slice() {
        [answered] if same_question(answered, query) => Ok(reply),
        _ => Err(Mismatch::Question),
    }
}

fn same_question(a: &Query, b: &Query) -> bool {
    // `Name`'s equality ignores ASCII case.
    a.name() == b.name() && a.query_type() == b.query_type() && a.query_class() == b.query_class()
}

fn unspecified(upstream: IpAddr) -> IpAddr {
    match upstream {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn question(query: &Query) -> Question<'_> {
        Question {
            query,
            dnssec_ok: false,
            checking_disabled: false,
            udp_payload: 1232,
        }
    }

    fn reply_to(id: u16, query: &Query) -> Vec<u8> {
        let mut reply = Message::new(id, MessageType::Response, OpCode::Query);
        reply.add_query(query.clone());
        reply.to_vec().unwrap()
    }

    #[test]
    fn accepts_only_the_matching_reply() {
        let upstream: SocketAddr = "127.0.0.1:5300".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:5301".parse().unwrap();
        let ours = Query::query(Name::from_ascii("WwW.Example.com.").unwrap(), RecordType::A);
        let lower = Query::query(Name::from_ascii("www.example.com.").unwrap(), RecordType::A);
        let aaaa = Query::query(
            Name::from_ascii("www.example.com.").unwrap(),
            RecordType::AAAA,
        );
        let accept = |bytes: &[u8], from| accept_reply(bytes, from, upstream, 7, &ours);

        assert!(accept(&reply_to(7, &lower), upstream).is_ok());
        assert_eq!(
            accept(&reply_to(7, &lower), other).unwrap_err(),
            Mismatch::Source
        );
        assert_eq!(
            accept(&reply_to(8, &lower), upstream).unwrap_err(),
            Mismatch::Id
        );
        assert_eq!(
            accept(&reply_to(7, &aaaa), upstream).unwrap_err(),
            Mismatch::Question
        );
        assert_eq!(
            accept(b"\x00\x07", upstream).unwrap_err(),
            Mismatch::Malformed
        );
        let query_not_reply = upstream_query(7, question(&ours)).to_vec().unwrap();
        assert_eq!(
            accept(&query_not_reply, upstream).unwrap_err(),
            Mismatch::NotResponse
        );
    }

    #[test]
    fn upstream_query_carries_edns_and_client_bits() {
        let ours = Query::query(Name::from_ascii("a.example.").unwrap(), RecordType::A);
        let mut q = question(&ours);
        q.dnssec_ok = true;
        q.checking_disabled = true;
        let query = upstream_query(99, q);
        assert!(query.metadata.recursion_desired);
        assert!(query.metadata.checking_disabled);
        let edns = query.edns.as_ref().unwrap();
        assert_eq!(edns.max_payload(), 1232);
        assert!(edns.flags().dnssec_ok);
    }
}
