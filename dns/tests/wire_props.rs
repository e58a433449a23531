//! Nothing read from the wire may panic the server: `wire::parse_query` and the whole
//! `server::Handler::handle` path under random bytes, mutated valid queries and hostile name
//! encodings; and every response produced is a well-formed DNS message (hickory-proto parses it).

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name as HName, RecordType};
use proptest::prelude::*;
use svcplane_common::catalog::Store;
use svcplane_common::model::Kind;
use svcplane_common::model::{
    Endpoint, EndpointPort, EndpointSlice, Family, Namespace, Object, ObjectKey, Protocol, Service,
    ServicePort, ServiceType, TargetPort,
};
use svcplane_common::source::SourceEvent;
use svcplane_dns::answer::{PodsMode, Rcode, ResolveConfig};
use svcplane_dns::name::Name;
use svcplane_dns::server::{Handler, Step, Transport};
use svcplane_dns::view::{View, ViewBuilder, ViewConfig};
use svcplane_dns::wire::{self, Scratch};

// ---- A small catalog --------------------------------------------------------------------------

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn service(ns: &str, name: &str, ips: &[&str]) -> Service {
    let mut s = Service::new(
        ObjectKey::new(ns, name),
        ips.iter().map(|s| ip(s)).collect(),
    );
    s.ports = vec![ServicePort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: TargetPort::Number(8080),
        node_port: None,
    }]
    .into();
    s
}

fn endpoint(addr: &str, hostname: Option<&str>) -> Endpoint {
    let mut e = Endpoint::new(ip(addr));
    e.hostname = hostname.map(Into::into);
    e
}

fn slice(ns: &str, svc: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
    EndpointSlice {
        key: ObjectKey::new(ns, &format!("{svc}-1")),
        service_name: Some(svc.into()),
        family: Family::of(&endpoints[0].ip),
        ports: Arc::new([EndpointPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        }]),
        endpoints,
    }
}

/// Services `web` (ClusterIP, dual-stack), `db` (headless, 40 endpoints so some answers exceed
/// 512 octets), `ext` (ExternalName in the zone) and `out` (ExternalName outside), in `prod`.
fn view() -> Arc<View> {
    let mut ext = service("prod", "ext", &[]);
    ext.service_type = ServiceType::ExternalName;
    ext.headless = false;
    ext.ports = Arc::new([]);
    ext.external_name = Some("web.prod.svc.cluster.local".into());
    let mut out = ext.clone();
    out.key = ObjectKey::new("prod", "out");
    out.external_name = Some("example.org".into());
    let services = vec![
        service("prod", "web", &["10.96.0.10", "fd00::10"]),
        service("prod", "db", &[]),
        ext,
        out,
    ];
    let mut db: Vec<Endpoint> = (1..=40)
        .map(|i| endpoint(&format!("10.1.0.{i}"), None))
        .collect();
    db[0].hostname = Some("db-0".into());
    let slices = vec![
        slice("prod", "web", vec![endpoint("10.1.1.1", Some("web-a"))]),
        slice("prod", "db", db),
    ];
    let mut store = Store::default();
    store.apply(SourceEvent::Replace {
        kind: Kind::Namespace,
        objects: vec![Object::Namespace(Arc::new(Namespace {
            name: "prod".into(),
        }))],
    });
    store.apply(SourceEvent::Replace {
        kind: Kind::Service,
        objects: services
            .into_iter()
            .map(|s| Object::Service(Arc::new(s)))
            .collect(),
    });
    store.apply(SourceEvent::Replace {
        kind: Kind::EndpointSlice,
        objects: slices
            .into_iter()
            .map(|s| Object::EndpointSlice(Arc::new(s)))
            .collect(),
    });
    store.apply(SourceEvent::Synced);
    let snapshot = store.snapshot().unwrap();
    let mut builder = ViewBuilder::new(ViewConfig {
        zone: Name::from_dotted("cluster.local").unwrap(),
    });
    let view = builder.update(snapshot);
    assert!(view.synced);
    view
}

fn handler() -> Handler {
    Handler {
        view: Arc::new(ArcSwap::new(view())),
        resolve: ResolveConfig {
            zone: Name::from_dotted("cluster.local").unwrap(),
            ttl: 5,
            pods: PodsMode::Insecure,
        },
        forwarder: None,
    }
}

thread_local! {
    static HANDLER: Handler = handler();
}

// ---- The property ---------------------------------------------------------------------------

/// Runs `packet` through the parser and the handler over both transports: no panic, and any
/// response is a DNS response that hickory-proto parses, with the query's id, within the size
/// limit of its transport.
fn check(packet: &[u8]) -> Result<(), TestCaseError> {
    // The parser alone.
    if let Ok(q) = wire::parse_query(packet) {
        prop_assert!(q.qname.wire().len() <= 255);
        prop_assert!(q.qname.label_count() <= 127);
        prop_assert_eq!(q.question.len(), q.qname.wire().len() + 4);
    }
    HANDLER.with(|h| {
        for transport in [Transport::Udp, Transport::Tcp] {
            let mut scratch = Scratch::default();
            let mut out = Vec::new();
            match h.handle(packet, transport, &mut scratch, &mut out) {
                Step::Drop => {
                    prop_assert!(
                        packet.len() < 12 || packet[2] & 0x80 != 0,
                        "dropped a query: {packet:02x?}"
                    );
                }
                Step::Forward(_) => prop_assert!(false, "no forwarder, yet Forward"),
                Step::Reply { rcode, .. } => check_response(packet, &out, rcode, transport)?,
            }
        }
        Ok(())
    })
}

fn check_response(
    packet: &[u8],
    out: &[u8],
    rcode: Rcode,
    transport: Transport,
) -> Result<(), TestCaseError> {
    prop_assert!(out.len() >= 12, "short response {out:02x?}");
    if transport == Transport::Udp {
        let limit = wire::parse_query(packet)
            .map(|q| wire::udp_limit(&q))
            .unwrap_or(512);
        prop_assert!(
            out.len() <= limit,
            "{} octets over UDP (limit {limit})",
            out.len()
        );
    }
    let m = match Message::from_vec(out) {
        Ok(m) => m,
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "response does not parse ({e}): {out:02x?}\nquery: {packet:02x?}"
            )));
        }
    };
    prop_assert_eq!(m.id, u16::from_be_bytes([packet[0], packet[1]]));
    prop_assert_eq!(m.message_type, MessageType::Response);
    prop_assert_eq!(
        u16::from(m.response_code),
        rcode.value(),
        "rcode in header+OPT"
    );
    if let Ok(q) = wire::parse_query(packet) {
        // A parsed query's question is echoed byte for byte.
        prop_assert_eq!(&out[12..12 + q.question.len()], &q.question[..]);
        prop_assert_eq!(m.queries.len(), 1);
        prop_assert_eq!(
            m.edns.is_some(),
            q.edns.is_some(),
            "OPT iff the query had one"
        );
    }
    Ok(())
}

// ---- Inputs ---------------------------------------------------------------------------------

/// Valid queries of many shapes, as hickory-proto encodes them.
fn valid_queries() -> Vec<Vec<u8>> {
    let names = [
        "web.prod.svc.cluster.local.",
        "WEB.Prod.SVC.Cluster.Local.",
        "db.prod.svc.cluster.local.",
        "db-0.db.prod.svc.cluster.local.",
        "10-1-0-7.db.prod.svc.cluster.local.",
        "_http._tcp.db.prod.svc.cluster.local.",
        "_http._tcp.web.prod.svc.cluster.local.",
        "_tcp.web.prod.svc.cluster.local.",
        "ext.prod.svc.cluster.local.",
        "out.prod.svc.cluster.local.",
        "prod.svc.cluster.local.",
        "svc.cluster.local.",
        "cluster.local.",
        "dns-version.cluster.local.",
        "ns.dns.cluster.local.",
        "1-2-3-4.prod.pod.cluster.local.",
        "10.0.96.10.in-addr.arpa.",
        "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
        "www.example.com.",
        ".",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::PTR,
        RecordType::TXT,
        RecordType::SOA,
        RecordType::NS,
        RecordType::CNAME,
        RecordType::ANY,
        RecordType::AXFR,
        RecordType::Unknown(65000),
    ];
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        for (j, rtype) in types.iter().enumerate() {
            let mut msg = Message::new((i * 31 + j) as u16, MessageType::Query, OpCode::Query);
            msg.metadata.recursion_desired = true;
            msg.add_query(Query::query(HName::from_ascii(name).unwrap(), *rtype));
            if (i + j) % 2 == 0 {
                let mut edns = Edns::new();
                edns.set_max_payload(if j % 3 == 0 { 4096 } else { 1232 });
                edns.set_dnssec_ok(i % 3 == 0);
                msg.set_edns(edns);
            }
            out.push(msg.to_vec().unwrap());
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Overwrite(usize, u8),
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Overwrite(i, v)),
        any::<usize>().prop_map(Mutation::Remove),
    ]
}

fn apply(packet: &mut Vec<u8>, m: &Mutation) {
    let len = packet.len();
    match *m {
        Mutation::FlipBit(i, b) if len > 0 => packet[i % len] ^= 1 << b,
        Mutation::Truncate(n) => packet.truncate(n % (len + 1)),
        Mutation::Insert(i, v) => packet.insert(i % (len + 1), v),
        Mutation::Overwrite(i, v) if len > 0 => packet[i % len] = v,
        Mutation::Remove(i) if len > 0 => {
            packet.remove(i % len);
        }
        _ => {}
    }
}

/// A query header with the given counts (id 0xbeef, RD).
fn header(qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
    let mut h = vec![0xbe, 0xef, 0x01, 0x00];
    for c in [qd, an, ns, ar] {
        h.extend_from_slice(&c.to_be_bytes());
    }
    h
}

fn labels(n: usize, len: usize) -> Vec<u8> {
    let mut name = Vec::new();
    for _ in 0..n {
        name.push(len as u8);
        name.extend(std::iter::repeat_n(b'a', len));
    }
    name
}

/// Hostile name encodings in the question: compression pointers (to itself, forward, backward,
/// into the header), names over 255 octets, 128+ labels, huge section counts.
fn hostile_packets() -> Vec<Vec<u8>> {
    let tail = [0u8, 1, 0, 1];
    let names: Vec<Vec<u8>> = vec![
        // A pointer to itself (offset 12), and two loops through a label.
        vec![0xc0, 0x0c],
        vec![1, b'a', 0xc0, 0x0c],
        vec![1, b'a', 0xc0, 0x0e, 1, b'b', 0xc0, 0x0c],
        // Pointers into the header, past the end, and forward.
        vec![0xc0, 0x00],
        vec![0xff, 0xff],
        vec![3, b'w', b'e', b'b', 0xc0, 0x14, 0, 1, 0, 1, 0],
        // Reserved label types 0x40 and 0x80.
        vec![0x41, b'a', 0],
        vec![0x81, b'a', 0],
    ];
    let mut out: Vec<Vec<u8>> = names
        .into_iter()
        .map(|name| [header(1, 0, 0, 0), name, tail.to_vec()].concat())
        .collect();
    // Names of 255, 256 and far more octets.
    for (n, len) in [(4, 62), (4, 63), (5, 63), (8, 63), (20, 63)] {
        out.push([header(1, 0, 0, 0), labels(n, len), vec![0], tail.to_vec()].concat());
    }
    // 126, 127, 128, 200 one-letter labels.
    for n in [126, 127, 128, 200] {
        out.push([header(1, 0, 0, 0), labels(n, 1), vec![0], tail.to_vec()].concat());
    }
    // Huge counts with little behind them.
    let q = [
        3, b'w', b'e', b'b', 4, b'p', b'r', b'o', b'd', 3, b's', b'v', b'c', 7,
    ]
    .iter()
    .copied()
    .chain(*b"cluster")
    .chain([5])
    .chain(*b"local")
    .chain([0, 0, 1, 0, 1])
    .collect::<Vec<u8>>();
    for (qd, an, ns, ar) in [
        (65535, 0, 0, 0),
        (1, 65535, 0, 0),
        (1, 0, 65535, 0),
        (1, 0, 0, 65535),
        (1, 65535, 65535, 65535),
    ] {
        out.push([header(qd, an, ns, ar), q.clone()].concat());
    }
    // Additional records that are not OPT, an OPT with a name, an OPT with a huge RDLENGTH.
    out.push(
        [
            header(1, 0, 0, 1),
            q.clone(),
            vec![0, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 1, 2, 3, 4],
        ]
        .concat(),
    );
    out.push(
        [
            header(1, 0, 0, 1),
            q.clone(),
            vec![1, b'x', 0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0],
        ]
        .concat(),
    );
    out.push(
        [
            header(1, 0, 0, 1),
            q.clone(),
            vec![0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0xff, 0xff],
        ]
        .concat(),
    );
    // A compressed name in an additional record, pointing at the question.
    out.push(
        [
            header(1, 0, 0, 1),
            q.clone(),
            vec![0xc0, 0x0c, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0],
        ]
        .concat(),
    );
    // Every opcode, with QR clear and set.
    for opcode in 0..16u8 {
        for qr in [0u8, 0x80] {
            let mut p = [header(1, 0, 0, 0), q.clone()].concat();
            p[2] = qr | (opcode << 3) | 1;
            out.push(p);
        }
    }
    // Every class and some types.
    for class in [0u16, 1, 3, 4, 254, 255, 65535] {
        for rtype in [0u16, 1, 41, 251, 252, 255, 65535] {
            let mut p = [header(1, 0, 0, 0), q.clone()].concat();
            let n = p.len();
            p[n - 4..n - 2].copy_from_slice(&rtype.to_be_bytes());
            p[n - 2..].copy_from_slice(&class.to_be_bytes());
            out.push(p);
        }
    }
    out
}

// ---- Properties ---------------------------------------------------------------------------------

// Hostile encodings, exhaustively (not random): each one, and each one with any single trailing
// cut.
#[test]
fn hostile_name_encodings_never_panic() {
    for packet in hostile_packets() {
        for cut in 0..=packet.len() {
            if let Err(e) = check(&packet[..cut]) {
                panic!("{e}\npacket: {:02x?}", &packet[..cut]);
            }
        }
    }
}

// Every valid query is answered (never dropped), and its response parses.
#[test]
fn valid_queries_are_answered_with_parseable_responses() {
    for packet in valid_queries() {
        let parsed = wire::parse_query(&packet);
        assert!(parsed.is_ok(), "hickory's query does not parse: {parsed:?}");
        if let Err(e) = check(&packet) {
            panic!("{e}\npacket: {packet:02x?}");
        }
    }
}

// RFC 1035 §2.3.4: names are at most 255 octets (so at most 127 labels); exactly at the limit is
// a name, one past it is FORMERR.
#[test]
fn name_length_limits_are_exact() {
    let rcode = |name: Vec<u8>| {
        let packet = [header(1, 0, 0, 0), name, vec![0, 0, 1, 0, 1]].concat();
        check(&packet).unwrap();
        let mut out = Vec::new();
        HANDLER.with(|h| {
            match h.handle(&packet, Transport::Udp, &mut Scratch::default(), &mut out) {
                Step::Reply { rcode, .. } => rcode,
                other => panic!("{other:?}"),
            }
        })
    };
    // 3 × 63-octet labels + one of 61: 3·64 + 62 + root = 255 octets.
    let max = [labels(3, 63), labels(1, 61), vec![0]].concat();
    assert_eq!(max.len(), 255);
    assert_eq!(
        rcode(max),
        Rcode::Refused,
        "a 255-octet name is a name (not ours: refused, no forwarder)"
    );
    let over = [labels(3, 63), labels(1, 62), vec![0]].concat();
    assert_eq!(rcode(over), Rcode::FormErr);
    let most_labels = [labels(127, 1), vec![0]].concat();
    assert_eq!(most_labels.len(), 255);
    assert_eq!(rcode(most_labels), Rcode::Refused);
    assert_eq!(rcode([labels(128, 1), vec![0]].concat()), Rcode::FormErr);
    // A 63-octet label is a label; 64 is not (0x40 is a reserved label type).
    assert_eq!(rcode([labels(1, 63), vec![0]].concat()), Rcode::Refused);
    assert_eq!(rcode([labels(1, 64), vec![0]].concat()), Rcode::FormErr);
}

// Oversize answers over UDP are truncated (TC) and complete over TCP.
#[test]
fn large_udp_answer_sets_tc() {
    let mut msg = Message::new(7, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(
        HName::from_ascii("db.prod.svc.cluster.local.").unwrap(),
        RecordType::A,
    ));
    let packet = msg.to_vec().unwrap();
    HANDLER.with(|h| {
        let mut scratch = Scratch::default();
        let mut out = Vec::new();
        h.handle(&packet, Transport::Udp, &mut scratch, &mut out);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.truncation && m.answers.is_empty());
        h.handle(&packet, Transport::Tcp, &mut scratch, &mut out);
        let m = Message::from_vec(&out).unwrap();
        assert!(!m.truncation);
        assert_eq!(m.answers.len(), 40);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    // (a) Random bytes.
    #[test]
    fn random_bytes_never_panic(packet in prop::collection::vec(any::<u8>(), 0..700)) {
        check(&packet)?;
    }

    // (a') Random bytes behind a plausible header (QDCOUNT 1, opcode QUERY), so that the
    // question and record parsers see the noise.
    #[test]
    fn random_questions_never_panic(
        counts in (0u16..3, 0u16..3, 0u16..3, 0u16..3),
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let packet = [header(counts.0.max(1), counts.1, counts.2, counts.3), body].concat();
        check(&packet)?;
    }

    // (a'') Random label structure: random label lengths (incl. pointers and reserved types)
    // with random contents.
    #[test]
    fn random_label_structures_never_panic(
        parts in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..70)), 0..12),
        tail in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut packet = header(1, 0, 0, 0);
        for (len, content) in parts {
            packet.push(len);
            packet.extend(content);
        }
        packet.extend(tail);
        check(&packet)?;
    }

    // (b) Valid queries with random mutations.
    #[test]
    fn mutated_queries_never_panic(
        index in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let queries = valid_queries();
        let mut packet = queries[index.index(queries.len())].clone();
        for m in &mutations {
            apply(&mut packet, m);
        }
        check(&packet)?;
    }

    // (c) Hostile encodings with random mutations.
    #[test]
    fn mutated_hostile_packets_never_panic(
        index in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 0..4),
    ) {
        let packets = hostile_packets();
        let mut packet = packets[index.index(packets.len())].clone();
        for m in &mutations {
            apply(&mut packet, m);
        }
        check(&packet)?;
    }
}
