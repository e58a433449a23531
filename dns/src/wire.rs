//! The DNS wire format on the hot path: parsing queries and encoding answers without allocation.
//!
//! hickory-proto's `Message` is general and allocates per name and record; a cluster DNS server
//! sees a few query shapes millions of times. This module parses exactly what a query is
//! (RFC 1035 §4.1: header, one question, and an EDNS OPT record in the additional section) and
//! encodes an [`Answer`](crate::answer::Answer) straight into a reused buffer, with name
//! compression against the question (so owner names keep the query's letter case). Anything it
//! cannot classify is answered FORMERR; the forwarding path uses hickory-proto instead.

use std::net::IpAddr;

use crate::answer::{Answer, Owner, RData, Rcode, Rr};
use crate::name::QName;

/// RFC 1035 §2.3.4: "UDP messages 512 octets or less".
pub const MIN_UDP: usize = 512;
/// The EDNS UDP payload size svcplane-dns advertises and never exceeds (DNS flag day 2020).
pub const EDNS_UDP: u16 = 1232;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

/// EDNS(0) parameters of a query (RFC 6891 §6.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A parsed query.
#[derive(Debug, Clone)]
pub struct Query {
    pub id: u16,
    pub opcode: u8,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    pub qname: QName,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section exactly as received (letter case preserved).
    pub question: Vec<u8>,
    pub edns: Option<Edns>,
}

/// Why a packet is not a query we can answer normally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Too short to carry an id, or a response (QR set): dropped without an answer.
    #[error("not a query")]
    Drop,
    /// RFC 1035 §4.1.1 "Format error": answered FORMERR with the query's id.
    #[error("malformed query")]
    FormErr { id: u16, opcode: u8 },
    /// An opcode other than QUERY: answered NOTIMP.
    #[error("opcode {opcode} not implemented")]
    NotImp { id: u16, opcode: u8 },
}

fn u16_at(p: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?]))
}

/// Parses a query packet.
pub fn parse_query(p: &[u8]) -> Result<Query, ParseError> {
    if p.len() < 12 || p[2] & 0x80 != 0 {
        return Err(ParseError::Drop);
    }
    let id = u16::from_be_bytes([p[0], p[1]]);
    let opcode = (p[2] >> 3) & 0x0f;
    let formerr = ParseError::FormErr { id, opcode };
    if opcode != 0 {
        return Err(ParseError::NotImp { id, opcode });
    }
    let count = |i| u16_at(p, i).unwrap_or(0);
    if count(4) != 1 {
        return Err(formerr);
    }
    let qname = QName::parse(&p[12..]).ok_or(formerr.clone())?;
    let qend = 12 + qname.wire().len();
    let qtype = u16_at(p, qend).ok_or(formerr.clone())?;
    let qclass = u16_at(p, qend + 2).ok_or(formerr.clone())?;
    let rest = count(6) as usize + count(8) as usize;
    let edns = parse_records(p, qend + 4, rest, count(10) as usize).ok_or(formerr)?;
    Ok(Query {
        id,
        opcode,
        recursion_desired: p[2] & 0x01 != 0,
        checking_disabled: p[3] & 0x10 != 0,
        qname,
        qtype,
        qclass,
        question: p[12..qend + 4].to_vec(),
        edns,
    })
}

/// Skips `skip` records, then reads `additional` records looking for one OPT.
/// None if a record is malformed or there is more than one OPT (RFC 6891 §6.1.1).
fn parse_records(p: &[u8], mut i: usize, skip: usize, additional: usize) -> Option<Option<Edns>> {
    let mut edns = None;
    for n in 0..skip + additional {
        let (next, rtype, class, ttl) = skip_record(p, i)?;
        if n >= skip && rtype == TYPE_OPT {
            if edns.is_some() || p.get(i) != Some(&0) {
                return None;
            }
            edns = Some(Edns {
                udp_size: class,
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl & 0x8000 != 0,
            });
        }
        i = next;
    }
    Some(edns)
}

/// Skips one resource record at `i`; returns where the next starts, its type, class and TTL.
fn skip_record(p: &[u8], mut i: usize) -> Option<(usize, u16, u16, u32)> {
    let mut hops = 0;
    loop {
        let len = *p.get(i)?;
        match len {
            0 => {
                i += 1;
                break;
            }
            0xc0..=0xff => {
                i += 2;
                break;
            }
            1..=63 => i += 1 + len as usize,
            _ => return None,
        }
        hops += 1;
        if hops > 128 {
            return None;
        }
    }
    let rtype = u16_at(p, i)?;
    let class = u16_at(p, i + 2)?;
    let ttl = u32::from(u16_at(p, i + 4)?) << 16 | u32::from(u16_at(p, i + 6)?);
    let rdlen = u16_at(p, i + 8)? as usize;
    let end = i + 10 + rdlen;
    (end <= p.len()).then_some((end, rtype, class, ttl))
}

/// The largest response the client accepts over UDP (RFC 6891 §6.2.5: values below 512 are
/// treated as 512), never more than we advertise.
pub fn udp_limit(q: &Query) -> usize {
    match q.edns {
        Some(e) => (e.udp_size as usize).clamp(MIN_UDP, EDNS_UDP as usize),
        None => MIN_UDP,
    }
}

/// Encodes an error response (FORMERR/NOTIMP) carrying only the header and, when it parsed,
/// nothing else: RFC 1035 leaves the question out when it could not be understood.
pub fn encode_error(id: u16, opcode: u8, rcode: Rcode, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&id.to_be_bytes());
    out.push(0x80 | (opcode << 3));
    out.push(rcode.header_bits());
    out.extend_from_slice(&[0; 8]);
}

/// Reusable scratch space for name compression, one per worker.
#[derive(Debug, Default)]
pub struct Scratch {
    /// (offset in the message, start, end in `arena`) of every name suffix written so far.
    known: Vec<(u16, u32, u32)>,
    /// The lower-cased, uncompressed suffixes themselves.
    arena: Vec<u8>,
}

/// Encodes `answer` as the response to `q` into `out`, truncating (TC, no records) if it would
/// exceed `limit` octets.
pub fn encode(
    q: &Query,
    answer: &Answer,
    recursion_available: bool,
    limit: usize,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) {
    let mut w = Writer::new(q, scratch, out);
    w.header(q, answer, recursion_available);
    let counts = [
        w.section(&answer.answer),
        w.section(&answer.authority),
        w.section(&answer.additional),
    ];
    let with_opt = q.edns.is_some();
    if with_opt {
        w.opt(q, answer.rcode);
    }
    let ar = counts[2] + u16::from(with_opt);
    if w.out.len() > limit {
        w.out.truncate(12 + q.question.len());
        w.out[2] |= 0x02;
        w.set_counts(0, 0, 0);
        if with_opt {
            w.opt(q, answer.rcode);
            w.set_counts(0, 0, 1);
        }
        return;
    }
    w.set_counts(counts[0], counts[1], ar);
}

/// Name compression (RFC 1035 §4.1.4) against the names already in the message.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    s: &'a mut Scratch,
}

impl<'a> Writer<'a> {
    fn new(q: &Query, s: &'a mut Scratch, out: &'a mut Vec<u8>) -> Self {
        s.known.clear();
        s.arena.clear();
        let mut w = Writer { out, s };
        w.remember(12, q.qname.wire(), &[]);
        w
    }

    /// Records the suffixes of a name written at `offset` as `prefix` followed by a pointer to
    /// a name whose uncompressed form is `rest` (empty when the name was written in full).
    fn remember(&mut self, offset: usize, prefix: &[u8], rest: &[u8]) {
        let start = self.s.arena.len();
        self.s.arena.extend_from_slice(prefix);
        self.s.arena.extend_from_slice(rest);
        let end = self.s.arena.len() as u32;
        let mut i = 0;
        while i < prefix.len() && prefix[i] != 0 && offset + i < 0x3fff {
            self.s
                .known
                .push(((offset + i) as u16, (start + i) as u32, end));
            i += 1 + prefix[i] as usize;
        }
    }

    fn find(&self, suffix: &[u8]) -> Option<u16> {
        let arena = &self.s.arena;
        self.s
            .known
            .iter()
            .find(|(_, a, b)| arena[*a as usize..*b as usize] == *suffix)
            .map(|(offset, _, _)| *offset)
    }

    fn header(&mut self, q: &Query, a: &Answer, ra: bool) {
        self.out.clear();
        self.out.extend_from_slice(&q.id.to_be_bytes());
        let aa = if a.authoritative { 0x04 } else { 0 };
        self.out
            .push(0x80 | (q.opcode << 3) | aa | u8::from(q.recursion_desired));
        let cd = if q.checking_disabled { 0x10 } else { 0 };
        self.out
            .push(if ra { 0x80 } else { 0 } | cd | a.rcode.header_bits());
        self.out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        self.out.extend_from_slice(&q.question);
    }

    fn set_counts(&mut self, an: u16, ns: u16, ar: u16) {
        self.out[6..8].copy_from_slice(&an.to_be_bytes());
        self.out[8..10].copy_from_slice(&ns.to_be_bytes());
        self.out[10..12].copy_from_slice(&ar.to_be_bytes());
    }

    fn section(&mut self, rrs: &[Rr]) -> u16 {
        for rr in rrs {
            self.record(rr);
        }
        rrs.len() as u16
    }

    fn name(&mut self, wire: &[u8]) {
        let mut i = 0;
        while i < wire.len() && wire[i] != 0 {
            if let Some(offset) = self.find(&wire[i..]) {
                let start = self.out.len();
                self.out.extend_from_slice(&wire[..i]);
                self.out.extend_from_slice(&(0xc000 | offset).to_be_bytes());
                self.remember(start, &wire[..i], &wire[i..]);
                return;
            }
            i += 1 + wire[i] as usize;
        }
        let start = self.out.len();
        self.out.extend_from_slice(wire);
        self.remember(start, wire, &[]);
    }

    fn record(&mut self, rr: &Rr) {
        match &rr.owner {
            Owner::Question => self.out.extend_from_slice(&[0xc0, 0x0c]),
            Owner::Name(n) => self.name(n.wire()),
        }
        self.out.extend_from_slice(&rr.data.rtype().to_be_bytes());
        self.out.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.out.extend_from_slice(&rr.ttl.to_be_bytes());
        let len_at = self.out.len();
        self.out.extend_from_slice(&[0, 0]);
        self.rdata(&rr.data);
        let rdlen = (self.out.len() - len_at - 2) as u16;
        self.out[len_at..len_at + 2].copy_from_slice(&rdlen.to_be_bytes());
    }

    fn rdata(&mut self, data: &RData) {
        match data {
            RData::A(ip) => self.out.extend_from_slice(&ip.octets()),
            RData::Aaaa(ip) => self.out.extend_from_slice(&ip.octets()),
            RData::Cname(n) | RData::Ptr(n) | RData::Ns(n) => self.name(n.wire()),
            RData::Srv {
                priority,
                weight,
                port,
                target,
            } => {
                for v in [priority, weight, port] {
                    self.out.extend_from_slice(&v.to_be_bytes());
                }
                // RFC 2782: "name compression is not to be used for this field" — but RFC 3597
                // §4 allows it to be decoded; we follow RFC 2782 and write it in full.
                self.out.extend_from_slice(target.wire());
            }
            RData::Txt(text) => {
                for chunk in text.as_bytes().chunks(255) {
                    self.out.push(chunk.len() as u8);
                    self.out.extend_from_slice(chunk);
                }
            }
            RData::Soa(soa) => {
                self.name(soa.mname.wire());
                self.name(soa.rname.wire());
                for v in [soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum] {
                    self.out.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
    }

    /// RFC 6891 §6.1.2/§6.1.3: the OPT pseudo-record; an extended RCODE (BADVERS) puts its
    /// upper eight bits here.
    fn opt(&mut self, q: &Query, rcode: Rcode) {
        let do_bit = q.edns.is_some_and(|e| e.dnssec_ok);
        self.out.push(0);
        self.out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        self.out.extend_from_slice(&EDNS_UDP.to_be_bytes());
        self.out.push(rcode.extended_bits());
        self.out.push(0);
        self.out.push(if do_bit { 0x80 } else { 0 });
        self.out.extend_from_slice(&[0, 0, 0]);
    }
}

/// A dotted-quad or IPv6 address as an A/AAAA record's data.
pub fn address_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(v4),
        IpAddr::V6(v6) => RData::Aaaa(v6),
    }
}
