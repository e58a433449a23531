//! Query → answer for the cluster zone: the Kubernetes DNS-Based Service Discovery spec as a
//! pure function of a [`View`].
//!
//! [`resolve`] decides, for one question, whether the name is the cluster's (an authoritative
//! [`Answer`]) or someone else's ([`Outcome::Forward`]); the rules below quote the
//! specification (kubernetes/dns docs/specification.md, schema 1.1.0) and the RFCs they follow.
//! It performs no I/O and reads no clock, so every rule is unit-tested without sockets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use svcplane_common::model::{MergedEndpoint, Protocol};

use crate::name::{Name, QName, dashed, is_reverse, parse_dashed, parse_reverse};
use crate::view::{ServiceDns, View};
use crate::wire::{
    TYPE_A, TYPE_AAAA, TYPE_ANY, TYPE_CNAME, TYPE_NS, TYPE_PTR, TYPE_SOA, TYPE_SRV, TYPE_TXT,
    address_rdata,
};

/// The schema version this server implements (spec §2.2, `dns-version.<zone>` TXT).
pub const SCHEMA_VERSION: &str = "1.1.0";

/// Response codes (RFC 1035 §4.1.1, RFC 6891 §9 for BADVERS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError,
    FormErr,
    ServFail,
    NxDomain,
    NotImp,
    Refused,
    /// Extended RCODE 16: the query's EDNS version is not supported.
    BadVers,
}

impl Rcode {
    /// The value as a 12-bit extended RCODE.
    pub fn value(self) -> u16 {
        match self {
            Rcode::NoError => 0,
            Rcode::FormErr => 1,
            Rcode::ServFail => 2,
            Rcode::NxDomain => 3,
            Rcode::NotImp => 4,
            Rcode::Refused => 5,
            Rcode::BadVers => 16,
        }
    }

    /// The low four bits, as carried in the header.
    pub fn header_bits(self) -> u8 {
        (self.value() & 0x0f) as u8
    }

    /// The upper eight bits, as carried in the OPT record.
    pub fn extended_bits(self) -> u8 {
        (self.value() >> 4) as u8
    }

    /// The name Prometheus labels use (CoreDNS's).
    pub fn as_str(self) -> &'static str {
        match self {
            Rcode::NoError => "NOERROR",
            Rcode::FormErr => "FORMERR",
            Rcode::ServFail => "SERVFAIL",
            Rcode::NxDomain => "NXDOMAIN",
            Rcode::NotImp => "NOTIMP",
            Rcode::Refused => "REFUSED",
            Rcode::BadVers => "BADVERS",
        }
    }
}

/// The owner name of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The question's name, written as a pointer to it (keeping the query's letter case).
    Question,
    Name(Name),
}

/// SOA data (RFC 1035 §3.3.13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Soa {
    pub mname: Name,
    pub rname: Name,
    pub serial: u32,
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    pub minimum: u32,
}

/// Record data of the types the cluster zone serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(Name),
    Ptr(Name),
    Ns(Name),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: Name,
    },
    Txt(String),
    Soa(Box<Soa>),
}

impl RData {
    pub fn rtype(&self) -> u16 {
        match self {
            RData::A(_) => TYPE_A,
            RData::Aaaa(_) => TYPE_AAAA,
            RData::Cname(_) => TYPE_CNAME,
            RData::Ptr(_) => TYPE_PTR,
            RData::Ns(_) => TYPE_NS,
            RData::Srv { .. } => TYPE_SRV,
            RData::Txt(_) => TYPE_TXT,
            RData::Soa(_) => TYPE_SOA,
        }
    }
}

/// One resource record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rr {
    pub owner: Owner,
    pub ttl: u32,
    pub data: RData,
}

/// An authoritative answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rcode: Rcode,
    pub authoritative: bool,
    pub answer: Vec<Rr>,
    pub authority: Vec<Rr>,
    pub additional: Vec<Rr>,
    /// A CNAME chain left the cluster zone at this name: the server resolves it upstream and
    /// appends what it finds (ExternalName Services).
    pub chase: Option<Name>,
}

impl Answer {
    /// An answer with only an rcode (REFUSED, SERVFAIL, NOTIMP…), not authoritative.
    pub fn rcode(rcode: Rcode) -> Answer {
        Answer {
            rcode,
            authoritative: false,
            answer: vec![],
            authority: vec![],
            additional: vec![],
            chase: None,
        }
    }
}

/// What to do with a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Answer(Answer),
    /// Not ours: forward upstream.
    Forward,
}

/// How pod names (`a-b-c-d.<ns>.pod.<zone>`) are answered, as CoreDNS's `pods` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodsMode {
    /// No pod records: NXDOMAIN.
    #[default]
    Disabled,
    /// Any well-formed name answers with the address it spells.
    Insecure,
    /// Only addresses of Pods that exist in that namespace.
    Verified,
}

/// Settings of the resolver.
#[derive(Debug, Clone)]
pub struct ResolveConfig {
    pub zone: Name,
    pub ttl: u32,
    pub pods: PodsMode,
}

/// The question as the resolver sees it.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    pub name: &'a QName,
    pub qtype: u16,
}

/// Resolves one question against the view.
pub fn resolve(view: &View, cfg: &ResolveConfig, q: Question<'_>) -> Outcome {
    let Some(depth) = q.name.under(&cfg.zone) else {
        return reverse(view, cfg, q);
    };
    // Before the first complete list, "no such name" would be a lie that resolvers cache:
    // answer SERVFAIL so clients retry.
    if !view.synced {
        return Outcome::Answer(Answer::rcode(Rcode::ServFail));
    }
    let mut b = Builder::new(view, cfg, q.qtype);
    b.zone(q.name, depth, 0);
    Outcome::Answer(b.finish())
}

/// RFC 1035 §3.5 / spec §2.4.3: PTR records for ClusterIPs and endpoint addresses. Names the
/// cluster does not know fall through to the upstreams (CoreDNS's `fallthrough in-addr.arpa`).
fn reverse(view: &View, cfg: &ResolveConfig, q: Question<'_>) -> Outcome {
    if !is_reverse(q.name) {
        return Outcome::Forward;
    }
    let Some(targets) = parse_reverse(q.name).and_then(|ip| view.reverse.get(&ip)) else {
        return Outcome::Forward;
    };
    let mut b = Builder::new(view, cfg, q.qtype);
    if matches!(q.qtype, TYPE_PTR | TYPE_ANY) {
        for name in targets.iter().filter_map(|t| t.name()) {
            b.add(Owner::Question, RData::Ptr(name));
        }
    }
    // RFC 2308 §3: the SOA of a negative answer is that of the zone holding the name (CoreDNS
    // serves `in-addr.arpa`/`ip6.arpa` as zones of their own), not the cluster zone's apex.
    let mut answer = b.finish();
    let apex = Name::from_wire_lower(q.name.suffix(q.name.label_count() - 2));
    for rr in &mut answer.authority {
        rr.owner = Owner::Name(apex.clone());
    }
    Outcome::Answer(answer)
}

/// Accumulates an authoritative answer.
struct Builder<'a> {
    view: &'a View,
    cfg: &'a ResolveConfig,
    qtype: u16,
    answer: Answer,
    /// The queried name exists (NODATA rather than NXDOMAIN when there is no record).
    exists: bool,
    /// A CNAME chain ended at a name without the wanted data (RFC 2308 §2.1/§2.2: the
    /// negative answer still carries the SOA).
    negative_tail: bool,
}

impl<'a> Builder<'a> {
    fn new(view: &'a View, cfg: &'a ResolveConfig, qtype: u16) -> Self {
        let mut answer = Answer::rcode(Rcode::NoError);
        answer.authoritative = true;
        Builder {
            view,
            cfg,
            qtype,
            answer,
            exists: true,
            negative_tail: false,
        }
    }

    fn wants(&self, rtype: u16) -> bool {
        self.qtype == rtype || self.qtype == TYPE_ANY
    }

    fn add(&mut self, owner: Owner, data: RData) {
        let ttl = self.cfg.ttl;
        self.answer.answer.push(Rr { owner, ttl, data });
    }

    fn add_additional(&mut self, owner: Name, data: RData) {
        let ttl = self.cfg.ttl;
        let rr = Rr {
            owner: Owner::Name(owner),
            ttl,
            data,
        };
        if !self.answer.additional.contains(&rr) {
            self.answer.additional.push(rr);
        }
    }

    fn nxdomain(&mut self) {
        self.exists = false;
    }

    fn address(&mut self, owner: Owner, ip: IpAddr) {
        let wanted = if ip.is_ipv4() { TYPE_A } else { TYPE_AAAA };
        if self.wants(wanted) {
            self.add(owner, address_rdata(ip));
        }
    }

    /// RFC 2308 §3: negative answers carry the zone's SOA in the authority section, with the
    /// TTL of the SOA's MINIMUM field. RFC 8020: NXDOMAIN means nothing exists below the name.
    fn finish(mut self) -> Answer {
        if self.answer.rcode == Rcode::ServFail {
            return Answer::rcode(Rcode::ServFail);
        }
        if !self.exists {
            self.answer.rcode = Rcode::NxDomain;
            self.answer.answer.clear();
            self.answer.additional.clear();
        }
        let negative = self.answer.answer.is_empty() || self.negative_tail;
        if negative && self.answer.chase.is_none() {
            let soa = soa(self.cfg, self.view);
            self.answer.authority.push(Rr {
                owner: Owner::Name(self.cfg.zone.clone()),
                ttl: self.cfg.ttl,
                data: soa,
            });
        }
        self.answer
    }

    /// A name `depth` labels below the zone apex. `hops` counts CNAMEs followed.
    fn zone(&mut self, q: &QName, depth: usize, hops: u8) {
        if depth == 0 {
            return self.apex();
        }
        let top = q.rlabel(depth_index(q, depth, 0));
        match top {
            b"dns-version" if depth == 1 => {
                if self.wants(TYPE_TXT) {
                    self.add(Owner::Question, RData::Txt(SCHEMA_VERSION.into()));
                }
            }
            b"svc" => self.svc(q, depth, hops),
            b"pod" => self.pod(q, depth),
            b"dns" => self.dns(q, depth),
            _ => self.nxdomain(),
        }
    }

    /// RFC 1035 §4.3.2: the apex holds the SOA and NS records.
    fn apex(&mut self) {
        if self.wants(TYPE_SOA) {
            self.add(Owner::Question, soa(self.cfg, self.view));
        }
        if self.wants(TYPE_NS) {
            let ns = ns_name(self.cfg);
            self.add(Owner::Question, RData::Ns(ns.clone()));
            for ip in dns_service_ips(self.view) {
                self.add_additional(ns.clone(), address_rdata(ip));
            }
        }
    }

    /// `dns.<zone>` is an empty non-terminal; `ns.dns.<zone>` is the name in the SOA and NS
    /// records, with the addresses of `kube-system/kube-dns`.
    fn dns(&mut self, q: &QName, depth: usize) {
        match depth {
            1 => {}
            2 if q.rlabel(depth_index(q, depth, 1)) == b"ns" => {
                for ip in dns_service_ips(self.view) {
                    self.address(Owner::Question, ip);
                }
            }
            _ => self.nxdomain(),
        }
    }

    /// Names under `svc.<zone>`.
    fn svc(&mut self, q: &QName, depth: usize, hops: u8) {
        let label =
            |i: usize| std::str::from_utf8(q.rlabel(depth_index(q, depth, i))).unwrap_or("");
        match depth {
            // `svc.<zone>`: an empty non-terminal (RFC 8020 makes it NODATA, not NXDOMAIN).
            1 => {}
            2 => {
                if !self.view.namespace_exists(label(1)) {
                    self.nxdomain();
                }
            }
            _ => {
                let Some(service) = self.view.service(label(1), label(2)) else {
                    return self.nxdomain();
                };
                let service = service.clone();
                match depth {
                    3 => self.service(&service, hops),
                    4 => self.below_service(&service, label(3)),
                    5 => self.srv_port(&service, label(4), label(3)),
                    _ => self.nxdomain(),
                }
            }
        }
    }

    /// Spec §2.4.1 (ClusterIP: A/AAAA of the ClusterIPs), §2.4.2 (headless: A/AAAA per ready
    /// endpoint, NXDOMAIN without one), §2.5 (ExternalName: CNAME). CoreDNS also answers SRV at
    /// the bare Service name, one record per port.
    fn service(&mut self, s: &ServiceDns, hops: u8) {
        if let Some(target) = &s.external {
            return self.cname(target, hops);
        }
        if s.service.headless {
            if s.usable_len() == 0 {
                return self.nxdomain();
            }
            let mut seen = Vec::new();
            for e in s.usable() {
                if !seen.contains(&e.endpoint().ip) {
                    seen.push(e.endpoint().ip);
                    self.address(Owner::Question, e.endpoint().ip);
                }
            }
        } else {
            for ip in &s.service.cluster_ips {
                self.address(Owner::Question, *ip);
            }
        }
        if self.wants(TYPE_SRV) {
            self.srv_all_ports(s);
        }
    }

    fn srv_all_ports(&mut self, s: &ServiceDns) {
        for port in s.service.ports.iter() {
            self.srv_records(s, port.name.as_ref(), port.protocol, true);
        }
    }

    /// `_<proto>.<svc>…` is an empty non-terminal when a named port uses that protocol;
    /// `<hostname>.<svc>…` names an endpoint (headless per spec §2.4.2; CoreDNS also answers
    /// for ClusterIP Services).
    fn below_service(&mut self, s: &ServiceDns, label: &str) {
        if let Some(proto) = label.strip_prefix('_') {
            let used = s
                .service
                .ports
                .iter()
                .any(|p| !p.name.is_empty() && p.protocol.as_lower() == proto);
            if !used || s.external.is_some() {
                self.nxdomain();
            }
            return;
        }
        if s.external.is_some() {
            return self.nxdomain();
        }
        let endpoints = s.endpoints_labelled(label);
        if endpoints.is_empty() {
            return self.nxdomain();
        }
        for e in endpoints {
            self.address(Owner::Question, e.endpoint().ip);
        }
    }

    /// Spec §2.4.1/§2.4.2: `_<port>._<proto>.<svc>.<ns>.svc.<zone>` SRV for named ports.
    fn srv_port(&mut self, s: &ServiceDns, port: &str, proto: &str) {
        let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_')) else {
            return self.nxdomain();
        };
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => return self.nxdomain(),
        };
        let exists = s.external.is_none()
            && !port.is_empty()
            && s.service
                .ports
                .iter()
                .any(|p| *p.name == *port && p.protocol == protocol);
        if !exists || (s.service.headless && (s.usable_len() == 0)) {
            return self.nxdomain();
        }
        if self.wants(TYPE_SRV) {
            self.srv_records(s, port, protocol, false);
        }
    }

    /// SRV records for one Service port, with the targets' addresses as additional records.
    /// Priority 0 and an equal weight per record, as CoreDNS answers.
    fn srv_records(&mut self, s: &ServiceDns, port_name: &str, protocol: Protocol, bare: bool) {
        let Some(sp) = s
            .service
            .ports
            .iter()
            .find(|p| *p.name == *port_name && p.protocol == protocol)
        else {
            return;
        };
        let mut targets: Vec<(u16, Name, Vec<IpAddr>)> = Vec::new();
        if s.service.headless {
            let fqdn = s.fqdn();
            for e in s.usable() {
                let Some(number) = endpoint_port(e, port_name, protocol, bare) else {
                    continue;
                };
                if let Some(name) = fqdn.as_ref().and_then(|f| s.endpoint_name_under(f, e)) {
                    targets.push((number, name, vec![e.endpoint().ip]));
                }
            }
        } else if s.external.is_none()
            && let Some(fqdn) = s.fqdn()
        {
            targets.push((sp.port, fqdn, s.service.cluster_ips.to_vec()));
        }
        let weight = (100 / targets.len().max(1)) as u16;
        for (port, target, ips) in targets {
            for ip in ips {
                self.add_additional(target.clone(), address_rdata(ip));
            }
            let data = RData::Srv {
                priority: 0,
                weight,
                port,
                target,
            };
            self.add(Owner::Question, data);
        }
    }

    /// Spec §2.5: `<svc>.<ns>.svc.<zone> CNAME <extname>`, followed inside the zone (up to 8
    /// links); a target outside the zone is resolved upstream by the server.
    fn cname(&mut self, target: &Name, hops: u8) {
        self.add(Owner::Question, RData::Cname(target.clone()));
        if self.qtype == TYPE_CNAME {
            return;
        }
        let Some(tq) = QName::parse(target.wire()) else {
            return;
        };
        match tq.under(&self.cfg.zone) {
            Some(depth) if hops < 8 => self.follow(&tq, depth, hops + 1),
            // A chain this long inside the zone is a loop between ExternalName Services.
            Some(_) => self.answer.rcode = Rcode::ServFail,
            None => self.answer.chase = Some(target.clone()),
        }
    }

    /// Resolves a CNAME target inside the zone, appending its records with its own name.
    fn follow(&mut self, target: &QName, depth: usize, hops: u8) {
        let mut inner = Builder::new(self.view, self.cfg, self.qtype);
        inner.zone(target, depth, hops);
        if !inner.exists {
            self.answer.rcode = Rcode::NxDomain;
            self.negative_tail = true;
            return;
        }
        if inner.answer.rcode == Rcode::ServFail {
            self.answer.rcode = Rcode::ServFail;
            return;
        }
        self.negative_tail =
            inner.negative_tail || (inner.answer.answer.is_empty() && inner.answer.chase.is_none());
        let owner = Name::from_wire_lower(target.wire());
        for mut rr in inner.answer.answer {
            if rr.owner == Owner::Question {
                rr.owner = Owner::Name(owner.clone());
            }
            self.answer.answer.push(rr);
        }
        self.answer.chase = inner.answer.chase;
    }

    /// `a-b-c-d.<ns>.pod.<zone>` A/AAAA, per [`PodsMode`].
    fn pod(&mut self, q: &QName, depth: usize) {
        let label = |i: usize| q.rlabel(depth_index(q, depth, i));
        let mode = self.cfg.pods;
        match (mode, depth) {
            (PodsMode::Disabled, _) => self.nxdomain(),
            (_, 1) => {}
            (PodsMode::Insecure, 2) => {}
            (PodsMode::Verified, 2) => {
                let ns = std::str::from_utf8(label(1)).unwrap_or("");
                if !self.view.namespace_exists(ns) {
                    self.nxdomain();
                }
            }
            (_, 3) => {
                let ns = std::str::from_utf8(label(1)).unwrap_or("");
                let ip = parse_dashed(label(2)).filter(|ip| {
                    mode == PodsMode::Insecure
                        || self.view.snapshot.pod_ips.contains_key(&(ns.into(), *ip))
                });
                match ip {
                    Some(ip) => self.address(Owner::Question, ip),
                    None => self.nxdomain(),
                }
            }
            _ => self.nxdomain(),
        }
    }
}

/// Index (from the right) of label `i` counted from the zone downwards.
fn depth_index(q: &QName, depth: usize, i: usize) -> usize {
    q.label_count() - depth + i
}

/// The endpoint's port number for a Service port (by name and protocol). For the bare-name SRV
/// an unnamed single port matches the slice's unnamed port.
fn endpoint_port(e: &MergedEndpoint, name: &str, protocol: Protocol, bare: bool) -> Option<u16> {
    let found = e
        .ports()
        .iter()
        .find(|p| *p.name == *name && p.protocol == protocol)
        .map(|p| p.port);
    found.filter(|_| bare || !name.is_empty())
}

fn ns_name(cfg: &ResolveConfig) -> Name {
    Name::from_dotted(&format!("ns.dns.{}", cfg.zone.to_dotted()))
        .unwrap_or_else(|_| cfg.zone.clone())
}

fn dns_service_ips(view: &View) -> Vec<IpAddr> {
    view.service("kube-system", "kube-dns")
        .map(|s| s.service.cluster_ips.to_vec())
        .unwrap_or_default()
}

/// The zone's SOA, as CoreDNS builds it: `ns.dns.<zone> hostmaster.<zone>`, the view's
/// generation as serial, MINIMUM equal to the record TTL.
fn soa(cfg: &ResolveConfig, view: &View) -> RData {
    let rname = cfg
        .zone
        .child(b"hostmaster")
        .unwrap_or_else(|_| cfg.zone.clone());
    RData::Soa(Box::new(Soa {
        mname: ns_name(cfg),
        rname,
        serial: view.generation as u32,
        refresh: 7200,
        retry: 1800,
        expire: 86400,
        minimum: cfg.ttl,
    }))
}

/// The dashed label of an address (re-exported for tests and the bench generator).
pub fn dashed_label(ip: &IpAddr) -> String {
    dashed(ip)
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
