//! The query pipeline shared by the UDP and TCP servers: packet → [`Step`].
//!
//! [`Handler::handle`] answers everything it can synchronously from the current [`View`] — the
//! cluster zone, protocol errors, refusals — writing the response into a caller-owned buffer.
//! Only names that must go upstream (and ExternalName chains that leave the zone) return
//! [`Step::Forward`], which the transport completes with [`Handler::forward`] on the async
//! runtime.

mod mmsg;
pub mod tcp;
pub mod udp;

use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as HQuery, ResponseCode};
use hickory_proto::rr::{DNSClass, Name as HName, RData as HRData, Record, RecordType};

use crate::answer::{self, Answer, Outcome, Question, Rcode, ResolveConfig};
use crate::forward::Forwarder;
use crate::view::View;
use crate::wire::{self, ParseError, Query, Scratch};

/// The transport a query came over (limits the response size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do after [`Handler::handle`].
#[derive(Debug)]
pub enum Step {
    /// Send the response now in the output buffer.
    Reply { rcode: Rcode, qtype: u16 },
    /// Send nothing.
    Drop,
    /// Resolve asynchronously with [`Handler::forward`].
    Forward(Box<Pending>),
}

/// A query waiting for the upstreams.
#[derive(Debug)]
pub struct Pending {
    pub query: Query,
    /// The authoritative part already known (a CNAME chain to chase), if any.
    pub partial: Option<Answer>,
}

/// Shared by every worker.
#[derive(Debug)]
pub struct Handler {
    pub view: Arc<ArcSwap<View>>,
    pub resolve: ResolveConfig,
    pub forwarder: Option<Arc<Forwarder>>,
}

impl Handler {
    /// Handles one packet; the response (if any) is left in `out`.
    pub fn handle(
        &self,
        packet: &[u8],
        transport: Transport,
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
    ) -> Step {
        let q = match wire::parse_query(packet) {
            Ok(q) => q,
            Err(ParseError::Drop) => return Step::Drop,
            Err(ParseError::FormErr { id, opcode }) => {
                wire::encode_error(id, opcode, Rcode::FormErr, out);
                return Step::Reply {
                    rcode: Rcode::FormErr,
                    qtype: 0,
                };
            }
            Err(ParseError::NotImp { id, opcode }) => {
                wire::encode_error(id, opcode, Rcode::NotImp, out);
                return Step::Reply {
                    rcode: Rcode::NotImp,
                    qtype: 0,
                };
            }
        };
        let answer = match self.classify(&q) {
            Ok(answer) => answer,
            Err(pending) => return Step::Forward(pending),
        };
        let rcode = answer.rcode;
        let limit = limit(&q, transport);
        wire::encode(&q, &answer, self.forwarder.is_some(), limit, scratch, out);
        Step::Reply {
            rcode,
            qtype: q.qtype,
        }
    }

    /// The answer for a well-formed query, or the query if it needs the upstreams.
    fn classify(&self, q: &Query) -> Result<Answer, Box<Pending>> {
        // RFC 6891 §6.1.3: "If a responder does not implement the VERSION level of the
        // request, then it MUST respond with RCODE=BADVERS."
        if q.edns.is_some_and(|e| e.version > 0) {
            return Ok(Answer::rcode(Rcode::BadVers));
        }
        // Zone transfers of the cluster zone are not offered (RFC 5936 §2.2.1 lets a server
        // refuse), and other classes are not served.
        if matches!(q.qtype, wire::TYPE_AXFR | wire::TYPE_IXFR) || q.qclass != wire::CLASS_IN {
            return Ok(Answer::rcode(Rcode::Refused));
        }
        let view = self.view.load();
        let question = Question {
            name: &q.qname,
            qtype: q.qtype,
        };
        match answer::resolve(&view, &self.resolve, question) {
            Outcome::Answer(a) if a.chase.is_some() && self.forwarder.is_some() => {
                Err(Box::new(Pending {
                    query: q.clone(),
                    partial: Some(a),
                }))
            }
            Outcome::Answer(a) => Ok(a),
            Outcome::Forward if self.forwarder.is_some() => Err(Box::new(Pending {
                query: q.clone(),
                partial: None,
            })),
            Outcome::Forward => Ok(Answer::rcode(Rcode::Refused)),
        }
    }

    /// Completes a [`Step::Forward`]: the response bytes, and its rcode.
    pub async fn forward(
        &self,
        packet: &[u8],
        pending: &Pending,
        transport: Transport,
    ) -> (Vec<u8>, Rcode) {
        let q = &pending.query;
        let mut out = Vec::new();
        let Some(forwarder) = &self.forwarder else {
            self.fail(q, Rcode::Refused, &mut out);
            return (out, Rcode::Refused);
        };
        let response = match &pending.partial {
            None => match Message::from_vec(packet) {
                Ok(msg) => forwarder.resolve(&msg).await.ok(),
                Err(_) => None,
            },
            Some(partial) => chase(forwarder, q, partial).await,
        };
        let Some(response) = response else {
            self.fail(q, Rcode::ServFail, &mut out);
            return (out, Rcode::ServFail);
        };
        let rcode = rcode_of(response.metadata.response_code);
        match response.to_vec() {
            Ok(bytes) if bytes.len() <= limit(q, transport) => (bytes, rcode),
            Ok(_) => {
                // RFC 2181 §9: too large for the client's UDP size → TC, retry over TCP.
                self.fail(q, rcode, &mut out);
                out[2] |= 0x02;
                (out, rcode)
            }
            Err(_) => {
                self.fail(q, Rcode::ServFail, &mut out);
                (out, Rcode::ServFail)
            }
        }
    }

    fn fail(&self, q: &Query, rcode: Rcode, out: &mut Vec<u8>) {
        let mut scratch = Scratch::default();
        let limit = limit(q, Transport::Tcp);
        wire::encode(q, &Answer::rcode(rcode), true, limit, &mut scratch, out);
    }
}

fn limit(q: &Query, transport: Transport) -> usize {
    match transport {
        Transport::Udp => wire::udp_limit(q),
        Transport::Tcp => u16::MAX as usize,
    }
}

fn rcode_of(code: ResponseCode) -> Rcode {
    match code {
        ResponseCode::NoError => Rcode::NoError,
        ResponseCode::FormErr => Rcode::FormErr,
        ResponseCode::NXDomain => Rcode::NxDomain,
        ResponseCode::NotImp => Rcode::NotImp,
        ResponseCode::Refused => Rcode::Refused,
        _ => Rcode::ServFail,
    }
}

/// An ExternalName chain left the zone: ask the upstreams for the target and answer with the
/// chain followed by what they returned (CoreDNS resolves external targets the same way).
async fn chase(forwarder: &Forwarder, q: &Query, partial: &Answer) -> Option<Message> {
    let target = partial.chase.as_ref()?;
    let target = HName::from_ascii(target.to_dotted()).ok()?;
    let mut upstream_query = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    upstream_query.metadata.recursion_desired = true;
    upstream_query.add_query(HQuery::query(target.clone(), RecordType::from(q.qtype)));
    let upstream = forwarder.resolve(&upstream_query).await.ok()?;
    let asked =
        HName::from_labels((0..q.qname.label_count()).map(|i| q.qname.label(i).to_vec())).ok()?;
    let mut response = Message::new(q.id, MessageType::Response, OpCode::Query);
    response.metadata.recursion_desired = q.recursion_desired;
    response.metadata.recursion_available = true;
    // RFC 6604 §3.1: AA follows the first owner name (the question), which is ours.
    response.metadata.authoritative = true;
    response.metadata.response_code = upstream.metadata.response_code;
    response.add_query(HQuery::query(
        original_case(q).unwrap_or(asked),
        RecordType::from(q.qtype),
    ));
    for rr in &partial.answer {
        if let Some(record) = to_hickory(q, rr) {
            response.add_answer(record);
        }
    }
    for record in &upstream.answers {
        response.add_answer(record.clone());
    }
    // RFC 6891 §6.1.1: a query with an OPT gets one back.
    if let Some(e) = q.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(wire::EDNS_UDP);
        edns.set_dnssec_ok(e.dnssec_ok);
        response.set_edns(edns);
    }
    Some(response)
}

fn original_case(q: &Query) -> Option<HName> {
    let wire_len = q.question.len().checked_sub(4)?;
    let mut labels = Vec::new();
    let raw = &q.question[..wire_len];
    let mut i = 0;
    while let Some(&len) = raw.get(i) {
        if len == 0 {
            break;
        }
        labels.push(raw.get(i + 1..i + 1 + len as usize)?.to_vec());
        i += 1 + len as usize;
    }
    HName::from_labels(labels).ok()
}

fn to_hickory(q: &Query, rr: &answer::Rr) -> Option<Record> {
    let owner = match &rr.owner {
        answer::Owner::Question => original_case(q)?,
        answer::Owner::Name(n) => HName::from_ascii(n.to_dotted()).ok()?,
    };
    let data = match &rr.data {
        answer::RData::Cname(n) => HRData::CNAME(hickory_proto::rr::rdata::CNAME(
            HName::from_ascii(n.to_dotted()).ok()?,
        )),
        answer::RData::A(ip) => HRData::A((*ip).into()),
        answer::RData::Aaaa(ip) => HRData::AAAA((*ip).into()),
        _ => return None,
    };
    let mut record = Record::from_rdata(owner, rr.ttl, data);
    record.dns_class = DNSClass::IN;
    Some(record)
}
