//! Protocol edges of svcplane-dns over real sockets: malformed messages, opcodes, classes and
//! zone transfers, EDNS, truncation, TCP framing and limits, forwarding and its cache, metrics,
//! and lameduck.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long to wait before concluding that no response is coming.
const SILENCE: Duration = Duration::from_millis(500);

const WEB: &str = "web-app-service.myapp-prod.svc.cluster.local.";

/// A raw query header: id 0x1234, RD, the given opcode, QDCOUNT `qd`, other counts 0.
fn header(opcode: u8, qd: u16) -> Vec<u8> {
    let mut h = vec![0x12, 0x34, (opcode << 3) | 0x01, 0x00];
    h.extend_from_slice(&qd.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    h
}

/// `web-app-service.myapp-prod.svc.cluster.local` A IN as a raw question.
fn question() -> Vec<u8> {
    let mut q = Vec::new();
    for label in ["web-app-service", "myapp-prod", "svc", "cluster", "local"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Sends `packet` over `via` and returns the raw response, or None if none came.
async fn raw(via: Via, s: &Server, packet: &[u8]) -> Option<Vec<u8>> {
    match via {
        Via::Udp => udp_raw(s.dns, packet, SILENCE).await,
        Via::Tcp => {
            let mut stream = TcpStream::connect(s.dns).await.unwrap();
            write_frame(&mut stream, packet).await.unwrap();
            timeout(SILENCE, read_frame(&mut stream)).await.ok()?.ok()
        }
    }
}

/// A header-only error response: the query's id and opcode, QR set, `rcode`, all counts zero
/// (RFC 1035 leaves out what could not be understood).
fn assert_error_response(via: Via, reply: &[u8], opcode: u8, rcode: u8) {
    assert!(reply.len() >= 12, "{via:?}: short response {reply:02x?}");
    assert_eq!(&reply[..2], &[0x12, 0x34], "{via:?}: id echoed");
    assert_eq!(reply[2] & 0x80, 0x80, "{via:?}: QR");
    assert_eq!((reply[2] >> 3) & 0x0f, opcode, "{via:?}: opcode echoed");
    assert_eq!(reply[3] & 0x0f, rcode, "{via:?}: rcode");
    let parsed = Message::from_vec(reply)
        .unwrap_or_else(|e| panic!("{via:?}: response does not parse: {e}"));
    assert_eq!(u16::from(parsed.response_code), u16::from(rcode));
}

/// The server still answers a normal query (after one it had to reject or drop).
async fn assert_still_serving(s: &Server) {
    for via in BOTH {
        assert_answers(
            &s.q(via, WEB, RecordType::A).await,
            &[&format!("{WEB} A 10.96.1.200")],
        );
    }
}

// ---- Malformed messages -------------------------------------------------------------------

// RFC 1035 §4.1.1 "Format error - The name server was unable to interpret the query": a label
// length of 0x50 (neither ≤63 nor a pointer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formerr_for_bad_label_length() {
    let s = cluster().await;
    let mut packet = header(0, 1);
    packet.extend_from_slice(&[0x50, b'a', b'b', b'c', 0, 0, 1, 0, 1]);
    for via in BOTH {
        let reply = raw(via, &s, &packet).await.expect("a FORMERR response");
        assert_error_response(via, &reply, 0, 1);
    }
    assert_still_serving(&s).await;
}

// RFC 9619: "a DNS message with OPCODE 0 (QUERY) MUST NOT contain more than one question":
// QDCOUNT=2 is FORMERR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formerr_for_two_questions() {
    let s = cluster().await;
    let mut packet = header(0, 2);
    packet.extend_from_slice(&question());
    packet.extend_from_slice(&question());
    for via in BOTH {
        let reply = raw(via, &s, &packet).await.expect("a FORMERR response");
        assert_error_response(via, &reply, 0, 1);
    }
    // QDCOUNT=0 cannot be answered either.
    let packet = header(0, 0);
    for via in BOTH {
        let reply = raw(via, &s, &packet).await.expect("a FORMERR response");
        assert_error_response(via, &reply, 0, 1);
    }
}

// RFC 1035 §4.1.1: a question cut short (name without QTYPE/QCLASS, or a name without its root
// label) is FORMERR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formerr_for_truncated_question() {
    let s = cluster().await;
    let full = [header(0, 1), question()].concat();
    for cut in [1, 3, 5, 20] {
        let packet = &full[..full.len() - cut];
        for via in BOTH {
            let reply = raw(via, &s, packet)
                .await
                .unwrap_or_else(|| panic!("{via:?} cut {cut}: no response"));
            assert_error_response(via, &reply, 0, 1);
        }
    }
}

// RFC 6891 §6.1.1: "If a query message with more than one OPT RR is received, a FORMERR
// (RCODE=1) MUST be returned."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formerr_for_two_opt_records() {
    let s = cluster().await;
    let mut packet = header(0, 1);
    packet[11] = 2; // ARCOUNT
    packet.extend_from_slice(&question());
    let opt = [0u8, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0];
    packet.extend_from_slice(&opt);
    packet.extend_from_slice(&opt);
    for via in BOTH {
        let reply = raw(via, &s, &packet).await.expect("a FORMERR response");
        assert_error_response(via, &reply, 0, 1);
    }
}

// RFC 1035 §4.1.1 (QR: "whether this message is a query (0), or a response (1)"): responses are
// never answered (no reflection loops); neither are packets shorter than a header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_to_responses_or_runts() {
    let s = cluster().await;
    let mut response = [header(0, 1), question()].concat();
    response[2] |= 0x80;
    for via in BOTH {
        assert_eq!(
            raw(via, &s, &response).await,
            None,
            "{via:?}: a response is not answered"
        );
        assert_eq!(
            raw(via, &s, &[0x12, 0x34, 0x01]).await,
            None,
            "{via:?}: runt"
        );
        assert_eq!(
            raw(via, &s, &header(0, 1)[..11]).await,
            None,
            "{via:?}: 11 bytes"
        );
    }
    assert_still_serving(&s).await;
}

// ---- Opcodes, classes, transfers ----------------------------------------------------------

// RFC 1035 §4.1.1 "Not Implemented - The name server does not support the requested kind of
// query": STATUS (2) and UPDATE (5, RFC 2136 §3) are NOTIMP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notimp_for_status_and_update() {
    let s = cluster().await;
    for opcode in [2u8, 5] {
        let packet = [header(opcode, 1), question()].concat();
        for via in BOTH {
            let reply = raw(via, &s, &packet)
                .await
                .unwrap_or_else(|| panic!("{via:?} opcode {opcode}"));
            assert_error_response(via, &reply, opcode, 4);
        }
    }
    // The same through hickory's encoder (an UPDATE message with a zone section).
    let mut update = query("cluster.local.", RecordType::SOA);
    update.metadata.op_code = OpCode::Update;
    for via in BOTH {
        let m = s.ask(via, &update).await;
        assert_eq!(m.response_code, ResponseCode::NotImp, "{}", describe(&m));
        assert_eq!(m.op_code, OpCode::Update);
    }
}

// RFC 5936 §2.2.1: a server may refuse zone transfers: AXFR (over TCP, where it belongs) and IXFR
// (RFC 1995) are REFUSED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_for_axfr_and_ixfr() {
    let s = cluster().await;
    let m = s.q(Via::Tcp, "cluster.local.", RecordType::AXFR).await;
    assert_eq!(m.response_code, ResponseCode::Refused, "{}", describe(&m));
    assert!(m.answers.is_empty());
    for via in BOTH {
        let m = s.q(via, "cluster.local.", RecordType::IXFR).await;
        assert_eq!(m.response_code, ResponseCode::Refused, "{}", describe(&m));
        assert!(m.answers.is_empty());
    }
}

// RFC 1035 §3.2.4 classes: only IN is served; CHAOS (`version.bind CH TXT`) is REFUSED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_for_chaos_class() {
    let s = cluster().await;
    for name in ["version.bind.", WEB] {
        let mut msg = query(name, RecordType::TXT);
        msg.queries[0].set_query_class(DNSClass::CH);
        for via in BOTH {
            let m = s.ask(via, &msg).await;
            assert_eq!(
                m.response_code,
                ResponseCode::Refused,
                "{name}\n{}",
                describe(&m)
            );
            assert!(m.answers.is_empty());
            assert_eq!(m.queries[0].query_class(), DNSClass::CH, "question echoed");
        }
    }
}

// ---- EDNS -----------------------------------------------------------------------------------

// RFC 6891 §6.1.3: "If a responder does not implement the VERSION level of the request, then it
// MUST respond with RCODE=BADVERS" (extended RCODE 16: upper bits in the OPT, header bits 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn badvers_for_edns_version_1() {
    let s = cluster().await;
    let mut msg = query(WEB, RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.set_version(1);
    msg.set_edns(edns);
    for via in BOTH {
        let m = s.ask(via, &msg).await;
        // 16 is BADVERS in an OPT context (hickory names the shared value BADSIG).
        assert_eq!(u16::from(m.response_code), 16, "{}", describe(&m));
        let edns = m.edns.as_ref().expect("BADVERS travels in an OPT");
        assert_eq!(edns.rcode_high(), 1);
        assert_eq!(edns.version(), 0, "we answer with the version we implement");
        assert!(m.answers.is_empty());
    }
}

// RFC 6891 §6.1.1: "If an OPT record is present in a received request, compliant responders
// MUST include an OPT record in their respective responses"; it advertises our 1232 (DNS flag
// day 2020) whatever the client offered. Without one in the query, none in the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_echoed_only_when_query_had_edns() {
    let s = cluster().await;
    for via in BOTH {
        for offered in [512u16, 1232, 4096] {
            let m = s
                .ask(via, &with_edns(query(WEB, RecordType::A), offered))
                .await;
            assert_answers(&m, &[&format!("{WEB} A 10.96.1.200")]);
            let edns = m
                .edns
                .as_ref()
                .unwrap_or_else(|| panic!("{via:?}: OPT echoed\n{}", describe(&m)));
            assert_eq!(edns.max_payload(), 1232);
            assert_eq!(edns.version(), 0);
        }
        let m = s.q(via, WEB, RecordType::A).await;
        assert!(
            m.edns.is_none(),
            "{via:?}: no OPT without EDNS in the query"
        );
        // Negative answers too.
        let m = s
            .ask(
                via,
                &with_edns(query("nope.svc.cluster.local.", RecordType::A), 1232),
            )
            .await;
        assert_nxdomain(&m);
        assert!(m.edns.is_some());
    }
}

// ---- Truncation -----------------------------------------------------------------------------

async fn bulk_server() -> Server {
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bulk\n";
    Start::new()
        .file("cluster.yaml", CLUSTER)
        .file("ns.yaml", ns)
        .file("big.yaml", &big_headless("big", 245, 60))
        .file("huge.yaml", &big_headless("huge", 246, 100))
        .start()
        .await
}

// RFC 1035 §4.2.1 ("Messages carried by UDP are restricted to 512 bytes") and RFC 2181 §9: a
// larger answer sets TC over UDP without EDNS; the full answer comes over TCP (RFC 7766 §5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_answer_over_512_is_truncated_and_complete_over_tcp() {
    let s = bulk_server().await;
    let name = "big.bulk.svc.cluster.local.";
    let msg = query(name, RecordType::A);
    let bytes = msg.to_vec().unwrap();
    let reply = udp_raw(s.dns, &bytes, EXCHANGE)
        .await
        .expect("UDP response");
    assert!(reply.len() <= 512, "UDP response of {} bytes", reply.len());
    let m = Message::from_vec(&reply).unwrap();
    assert!(m.truncation, "TC\n{}", describe(&m));
    assert_eq!(m.response_code, ResponseCode::NoError);
    assert_question(&m, name, RecordType::A);
    let m = s.ask(Via::Tcp, &msg).await;
    assert!(!m.truncation);
    assert_eq!(m.answers.len(), 60, "{}", describe(&m));
    assert!(
        m.answers
            .iter()
            .all(|r| r.record_type() == RecordType::A && r.name.to_string() == name)
    );
}

// RFC 6891 §6.2.5: with EDNS the requestor's payload size (capped at our 1232) bounds the UDP
// response: 60 addresses fit in 1232, 100 do not (TC, still within 1232, OPT kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edns_payload_bounds_udp_response() {
    let s = bulk_server().await;
    let big = "big.bulk.svc.cluster.local.";
    let m = s
        .ask(Via::Udp, &with_edns(query(big, RecordType::A), 1232))
        .await;
    assert!(!m.truncation, "{}", describe(&m));
    assert_eq!(m.answers.len(), 60);
    // A client offering less than 512 still gets 512 (RFC 6891 §6.2.5): TC.
    let m = s
        .ask(Via::Udp, &with_edns(query(big, RecordType::A), 100))
        .await;
    assert!(m.truncation, "{}", describe(&m));
    let huge = "huge.bulk.svc.cluster.local.";
    let msg = with_edns(query(huge, RecordType::A), 4096);
    let reply = udp_raw(s.dns, &msg.to_vec().unwrap(), EXCHANGE)
        .await
        .unwrap();
    assert!(
        reply.len() <= 1232,
        "never more than we advertise: {} bytes",
        reply.len()
    );
    let m = Message::from_vec(&reply).unwrap();
    assert!(m.truncation, "{}", describe(&m));
    assert!(m.edns.is_some(), "OPT kept in the truncated response");
    let m = s.ask(Via::Tcp, &msg).await;
    assert_eq!(m.answers.len(), 100);
}

// ---- TCP --------------------------------------------------------------------------------------

// RFC 7766 §6.2.1.1: "DNS servers SHOULD process pipelined queries"; this server answers a
// connection's queries in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_pipelined_queries_answered_in_order() {
    let s = cluster().await;
    let names = [
        WEB,
        "dual.myapp-prod.svc.cluster.local.",
        "nope.svc.cluster.local.",
        "dns-version.cluster.local.",
    ];
    let queries: Vec<Message> = names.iter().map(|n| query(n, RecordType::A)).collect();
    let mut all = Vec::new();
    for q in &queries {
        let b = q.to_vec().unwrap();
        all.extend_from_slice(&(b.len() as u16).to_be_bytes());
        all.extend_from_slice(&b);
    }
    let mut stream = TcpStream::connect(s.dns).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, &all)
        .await
        .unwrap();
    for q in &queries {
        let reply = timeout(EXCHANGE, read_frame(&mut stream))
            .await
            .unwrap()
            .unwrap();
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.id, q.id, "responses in query order");
        assert_eq!(
            m.queries[0].name().to_string(),
            q.queries[0].name().to_string()
        );
    }
    // A query split across writes (length prefix first) is reassembled.
    let b = queries[0].to_vec().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, &(b.len() as u16).to_be_bytes()[..1])
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::flush(&mut stream).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut rest = (b.len() as u16).to_be_bytes()[1..].to_vec();
    rest.extend_from_slice(&b);
    tokio::io::AsyncWriteExt::write_all(&mut stream, &rest)
        .await
        .unwrap();
    let reply = timeout(EXCHANGE, read_frame(&mut stream))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Message::from_vec(&reply).unwrap().id, queries[0].id);
}

/// Reads until EOF or error; how long it took (None if the connection stayed open past `max`).
async fn closed_within(stream: &mut TcpStream, max: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match timeout(max.saturating_sub(started.elapsed()), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

// RFC 7766 §6.2.3: "DNS servers SHOULD close the connection ... after a period of inactivity";
// `--tcp-idle-timeout 1s`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_idle_connection_is_closed() {
    let s = cluster_with(&["--tcp-idle-timeout", "1s"]).await;
    // Idle from the start.
    let mut stream = TcpStream::connect(s.dns).await.unwrap();
    let took = closed_within(&mut stream, Duration::from_secs(4))
        .await
        .expect("closed when idle");
    assert!(
        took >= Duration::from_millis(800),
        "closed too early: {took:?}"
    );
    // Activity keeps it open; idleness after the last answer closes it.
    let mut stream = TcpStream::connect(s.dns).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let q = query(WEB, RecordType::A);
        write_frame(&mut stream, &q.to_vec().unwrap())
            .await
            .unwrap();
        let reply = timeout(EXCHANGE, read_frame(&mut stream))
            .await
            .unwrap()
            .expect("still open");
        assert_eq!(Message::from_vec(&reply).unwrap().id, q.id);
    }
    let took = closed_within(&mut stream, Duration::from_secs(4))
        .await
        .expect("closed when idle");
    assert!(
        took >= Duration::from_millis(800),
        "closed too early: {took:?}"
    );
}

// RFC 7766 §6.2.2: servers "MAY impose limits on the number of concurrent TCP connections";
// `--tcp-max-connections 2`: a third is closed at once, and a slot frees when one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connection_cap_closes_extra_connections() {
    let s = cluster_with(&["--tcp-max-connections", "2"]).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(s.dns).await.unwrap();
        let q = query(WEB, RecordType::A);
        write_frame(&mut stream, &q.to_vec().unwrap())
            .await
            .unwrap();
        timeout(EXCHANGE, read_frame(&mut stream))
            .await
            .unwrap()
            .expect("answered");
        held.push(stream);
    }
    let mut third = TcpStream::connect(s.dns).await.unwrap();
    let took = closed_within(&mut third, Duration::from_secs(2))
        .await
        .expect("third connection closed at once");
    assert!(took < Duration::from_secs(1), "{took:?}");
    // The held connections still work.
    for stream in &mut held {
        let q = query(WEB, RecordType::A);
        write_frame(stream, &q.to_vec().unwrap()).await.unwrap();
        timeout(EXCHANGE, read_frame(stream))
            .await
            .unwrap()
            .expect("held connection answers");
    }
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(reply) = tcp_raw(s.dns, &query(WEB, RecordType::A).to_vec().unwrap()).await {
            assert!(Message::from_vec(&reply).is_ok());
            break;
        }
        assert!(Instant::now() < deadline, "a freed slot is reused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- Forwarding -------------------------------------------------------------------------------

// Names outside the cluster zone go to the upstreams; the answer carries the client's id and its
// question exactly as written (RFC 5452 §9.1 randomises the upstream id; the client never sees
// it), with RA set and AA clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_answer_keeps_client_id_and_question_case() {
    let s = cluster().await;
    let name = "WwW.ExAmPlE.CoM.";
    for via in BOTH {
        let msg = query(name, RecordType::A);
        let m = s.ask(via, &msg).await;
        let ctx = describe(&m);
        assert_eq!(m.id, msg.id);
        assert_eq!(m.response_code, ResponseCode::NoError, "{ctx}");
        assert_question(&m, name, RecordType::A);
        assert!(m.recursion_available, "{ctx}");
        assert!(!m.authoritative, "{ctx}");
        assert_eq!(
            rrs(&m.answers),
            vec!["www.example.com. A 93.184.216.34".to_string()],
            "{ctx}"
        );
    }
    // An NXDOMAIN upstream is passed on.
    let m = s.q(Via::Udp, "nx.example.com.", RecordType::A).await;
    assert_eq!(m.response_code, ResponseCode::NXDomain, "{}", describe(&m));
}

// RFC 2308 / RFC 1035 §7.4: answers are cached: the second identical query is served without
// asking the upstream again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_identical_query_is_served_from_cache() {
    let s = cluster().await;
    let upstream = s.upstream.as_ref().unwrap();
    let name = "www.example.com.";
    let first = s.q(Via::Udp, name, RecordType::AAAA).await;
    assert_eq!(
        rrs(&first.answers),
        vec!["www.example.com. AAAA 2606:2800:220:1::1".to_string()]
    );
    assert_eq!(upstream.queries(), 1);
    for via in BOTH {
        let again = s.q(via, name, RecordType::AAAA).await;
        assert_eq!(rrs(&again.answers), rrs(&first.answers));
        assert!(again.answers[0].ttl <= first.answers[0].ttl);
    }
    assert_eq!(upstream.queries(), 1, "served from the cache");
}

// RFC 1035 §4.1.1 "Server failure": no upstream answers → SERVFAIL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_servfail() {
    let dead = dead_upstream().await;
    let s = Start::new()
        .file("cluster.yaml", CLUSTER)
        .upstream(dead)
        .start()
        .await;
    for via in BOTH {
        let msg = query("www.example.com.", RecordType::A);
        let bytes = msg.to_vec().unwrap();
        let reply = match via {
            Via::Udp => udp_raw(s.dns, &bytes, Duration::from_secs(10)).await,
            Via::Tcp => {
                let mut stream = TcpStream::connect(s.dns).await.unwrap();
                write_frame(&mut stream, &bytes).await.unwrap();
                timeout(Duration::from_secs(10), read_frame(&mut stream))
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
        };
        let m = Message::from_vec(&reply.expect("a SERVFAIL response")).unwrap();
        assert_eq!(m.id, msg.id);
        assert_eq!(m.response_code, ResponseCode::ServFail, "{}", describe(&m));
        assert_question(&m, "www.example.com.", RecordType::A);
    }
    // The cluster zone does not depend on the upstream.
    assert_still_serving(&s).await;
}

// ---- Metrics ----------------------------------------------------------------------------------

// CoreDNS's metric names: `coredns_dns_requests_total` and `coredns_dns_responses_total` by rcode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_responses() {
    let s = cluster().await;
    for via in BOTH {
        s.q(via, WEB, RecordType::A).await;
        s.q(via, "nope.svc.cluster.local.", RecordType::A).await;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, body) = http_get(s.metrics, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        let requests = body.lines().any(|l| {
            l.starts_with("coredns_dns_requests_total{")
                && l.contains("proto=\"udp\"")
                && l.contains("type=\"A\"")
        }) && body
            .lines()
            .any(|l| l.starts_with("coredns_dns_requests_total{") && l.contains("proto=\"tcp\""));
        let nxdomain = body.lines().find(|l| {
            l.starts_with("coredns_dns_responses_total{") && l.contains("rcode=\"NXDOMAIN\"")
        });
        let count = nxdomain
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        if requests && count == Some(2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the queries:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- Lameduck ---------------------------------------------------------------------------------

// CoreDNS `health { lameduck }`: on termination /ready fails at once while queries are still
// answered for the lameduck window; afterwards the server stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lameduck_fails_ready_but_keeps_answering() {
    let mut s = cluster().await;
    let running = s.take_running();
    let started = Instant::now();
    let terminating = tokio::spawn(running.terminate(Duration::from_millis(800)));
    // The terminating task runs concurrently: poll (briefly) for /ready to fail.
    loop {
        let (status, _) = http_get(s.health, "/ready").await.unwrap();
        if status == 503 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "/ready still 200 during lameduck"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for via in BOTH {
        assert_answers(
            &s.q(via, WEB, RecordType::A).await,
            &[&format!("{WEB} A 10.96.1.200")],
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "checked inside the window"
    );
    timeout(Duration::from_secs(5), terminating)
        .await
        .unwrap()
        .unwrap();
    // After the window: no more answers (the UDP worker notices within its poll interval).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let bytes = query(WEB, RecordType::A).to_vec().unwrap();
        if udp_raw(s.dns, &bytes, Duration::from_millis(300))
            .await
            .is_none()
        {
            break;
        }
        assert!(Instant::now() < deadline, "still answering after lameduck");
    }
    let closed = tcp_raw(s.dns, &query(WEB, RecordType::A).to_vec().unwrap()).await;
    assert!(closed.is_none(), "TCP stopped too");
}

// RFC 6891 §6.1.1 also for answers completed upstream: an ExternalName chased outside the zone
// answers an EDNS query with an OPT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_echoed_on_external_name_chased_upstream() {
    let s = cluster().await;
    let name = "ext-out.myapp-prod.svc.cluster.local.";
    for via in BOTH {
        let m = s
            .ask(via, &with_edns(query(name, RecordType::A), 4096))
            .await;
        assert_eq!(m.answers.len(), 2, "{}", describe(&m));
        let edns = m
            .edns
            .as_ref()
            .unwrap_or_else(|| panic!("{via:?}: OPT echoed\n{}", describe(&m)));
        assert_eq!(edns.max_payload(), 1232);
        let m = s.q(via, name, RecordType::A).await;
        assert!(
            m.edns.is_none(),
            "{via:?}: no OPT without EDNS in the query"
        );
    }
}

// RFC 2181 §9 for forwarded answers: an upstream answer larger than the client's UDP limit is
// sent with TC (question kept) and complete over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_answer_over_512_is_truncated_over_udp() {
    let big = Name::from_ascii("big.example.com.").unwrap();
    let records = (1..=60)
        .map(|i| {
            Record::from_rdata(
                big.clone(),
                300,
                RData::A(format!("192.0.2.{i}").parse().unwrap()),
            )
        })
        .collect();
    let s = Start::new()
        .file("cluster.yaml", CLUSTER)
        .upstream_records(records)
        .start()
        .await;
    let msg = query("big.example.com.", RecordType::A);
    let reply = udp_raw(s.dns, &msg.to_vec().unwrap(), EXCHANGE)
        .await
        .expect("UDP response");
    assert!(reply.len() <= 512, "{} octets", reply.len());
    let m = Message::from_vec(&reply).unwrap();
    assert!(m.truncation, "TC\n{}", describe(&m));
    assert_eq!(m.id, msg.id);
    assert_question(&m, "big.example.com.", RecordType::A);
    let m = s.ask(Via::Tcp, &msg).await;
    assert!(!m.truncation);
    assert_eq!(m.answers.len(), 60, "{}", describe(&m));
    // With EDNS 1232 it fits over UDP.
    let m = s
        .ask(
            Via::Udp,
            &with_edns(query("big.example.com.", RecordType::A), 1232),
        )
        .await;
    assert!(!m.truncation, "{}", describe(&m));
    assert_eq!(m.answers.len(), 60);
}
