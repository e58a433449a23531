//! The forwarder against fake upstreams on 127.0.0.1.

mod fake;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use self::fake::{ANSWER, Behavior, FakeUpstream, TCP_ANSWER, Transport, dead_addr};
use super::{ForwardConfig, ForwardError, Forwarder};
use crate::cache::{Cache, CacheConfig, EntryKind};

/// Fails a test that would otherwise hang.
async fn within<F: Future>(work: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("test timed out")
}

fn config(upstreams: Vec<SocketAddr>) -> ForwardConfig {
    ForwardConfig {
        timeout: Duration::from_millis(300),
        ..ForwardConfig::new(upstreams)
    }
}

fn forwarder(upstreams: &[&FakeUpstream]) -> Forwarder {
    let addrs = upstreams.iter().map(|u| u.addr).collect();
    Forwarder::new(config(addrs), Arc::default())
}

fn client_query(id: u16, name: &str) -> Message {
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    query
}

fn with_edns(mut query: Message, dnssec_ok: bool) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    edns.set_dnssec_ok(dnssec_ok);
    query.set_edns(edns);
    query
}

fn addresses(message: &Message) -> Vec<Ipv4Addr> {
    let a = |data: &RData| match data {
        RData::A(a) => Some(a.0),
        _ => None,
    };
    message.answers.iter().filter_map(|r| a(&r.data)).collect()
}

fn ttls(message: &Message) -> Vec<u32> {
    message
        .answers
        .iter()
        .chain(&message.authorities)
        .map(|r| r.ttl)
        .collect()
}

#[tokio::test]
async fn keeps_client_id_and_question_case() {
    let upstream = FakeUpstream::start(Behavior::answer(300)).await;
    let forwarder = forwarder(&[&upstream]);
    let query = client_query(4242, "WwW.ExAmPle.COM.");
    let response = within(forwarder.resolve(&query)).await.unwrap();

    assert_eq!(response.metadata.id, 4242);
    assert_eq!(response.metadata.message_type, MessageType::Response);
    assert!(response.metadata.recursion_available);
    assert!(response.metadata.recursion_desired);
    assert!(!response.metadata.authoritative);
    assert_eq!(response.queries.len(), 1);
    assert!(response.queries[0].name().eq_case(query.queries[0].name()));
    assert_eq!(
        addresses(&response),
        vec![ANSWER, Ipv4Addr::new(192, 0, 2, 2)]
    );
    // The upstream got the question as the client wrote it.
    let seen = upstream.seen();
    assert!(
        seen[0].query.queries[0]
            .name()
            .eq_case(query.queries[0].name())
    );
}

#[tokio::test]
async fn second_query_is_answered_from_the_cache() {
    let upstream = FakeUpstream::start(Behavior::answer(300)).await;
    let forwarder = forwarder(&[&upstream]);
    within(forwarder.resolve(&client_query(1, "cached.example.")))
        .await
        .unwrap();
    let query = client_query(2, "CACHED.example.");
    let response = within(forwarder.resolve(&query)).await.unwrap();

    assert_eq!(upstream.count(Transport::Udp), 1);
    assert_eq!(response.metadata.id, 2);
    assert!(response.queries[0].name().eq_case(query.queries[0].name()));
    assert_eq!(addresses(&response).len(), 2);
    let metrics = forwarder.metrics();
    assert_eq!(metrics.cache_hits(EntryKind::Success), 1);
    assert_eq!(metrics.cache_misses(), 1);
}

#[tokio::test]
async fn cached_ttls_count_down_and_are_capped() {
    let upstream = FakeUpstream::start(Behavior::answer(86_400)).await;
    let forwarder = forwarder(&[&upstream]);
    let first = within(forwarder.resolve(&client_query(1, "ttl.example.")))
        .await
        .unwrap();
    assert_eq!(ttls(&first), vec![3600, 3600], "capped from the start");

    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(10)).await;
    let hit = forwarder
        .resolve(&client_query(2, "ttl.example."))
        .await
        .unwrap();
    assert_eq!(
        ttls(&hit),
        vec![3590, 3590],
        "capped at 3600 s, then 10 s elapsed"
    );
    tokio::time::advance(Duration::from_secs(3590)).await;
    tokio::time::resume();

    within(forwarder.resolve(&client_query(3, "ttl.example.")))
        .await
        .unwrap();
    assert_eq!(
        upstream.count(Transport::Udp),
        2,
        "expired entry is asked again"
    );
}

#[tokio::test]
async fn negative_answer_is_cached_for_the_soa_minimum() {
    let behavior = Behavior::NxDomain {
        soa_ttl: 3600,
        minimum: 60,
    };
    let upstream = FakeUpstream::start(behavior).await;
    let forwarder = forwarder(&[&upstream]);
    let first = within(forwarder.resolve(&client_query(1, "gone.example.")))
        .await
        .unwrap();
    assert_eq!(first.metadata.response_code, ResponseCode::NXDomain);

    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(59)).await;
    let hit = forwarder
        .resolve(&client_query(2, "gone.example."))
        .await
        .unwrap();
    assert_eq!(hit.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(ttls(&hit), vec![1], "SOA TTL is min(3600, 60) less 59 s");
    assert_eq!(forwarder.metrics().cache_hits(EntryKind::Denial), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    tokio::time::resume();

    within(forwarder.resolve(&client_query(3, "gone.example.")))
        .await
        .unwrap();
    assert_eq!(upstream.count(Transport::Udp), 2);
}

#[tokio::test]
async fn negative_ttl_is_capped() {
    let behavior = Behavior::NxDomain {
        soa_ttl: 86_400,
        minimum: 86_400,
    };
    let upstream = FakeUpstream::start(behavior).await;
    let cache = Arc::new(Cache::new(CacheConfig {
        max_negative_ttl: Duration::from_secs(30),
        ..CacheConfig::default()
    }));
    let forwarder = Forwarder::new(config(vec![upstream.addr]), cache);
    within(forwarder.resolve(&client_query(1, "gone.example.")))
        .await
        .unwrap();
    let hit = within(forwarder.resolve(&client_query(2, "gone.example.")))
        .await
        .unwrap();
    assert_eq!(ttls(&hit), vec![30]);
    assert_eq!(upstream.count(Transport::Udp), 1);
}

#[tokio::test]
async fn truncated_reply_is_retried_over_tcp() {
    let upstream = FakeUpstream::start(Behavior::Truncate { ttl: 60 }).await;
    let forwarder = forwarder(&[&upstream]);
    let response = within(forwarder.resolve(&client_query(9, "big.example.")))
        .await
        .unwrap();

    assert_eq!(addresses(&response)[0], TCP_ANSWER);
    assert!(!response.metadata.truncation);
    assert_eq!(response.metadata.id, 9);
    assert_eq!(upstream.count(Transport::Udp), 1);
    assert_eq!(upstream.count(Transport::Tcp), 1);
}

#[tokio::test]
async fn spoofed_replies_are_ignored_and_counted() {
    let upstream = FakeUpstream::start(Behavior::SpoofFirst { ttl: 60 }).await;
    let forwarder = forwarder(&[&upstream]);
    let response = within(forwarder.resolve(&client_query(5, "bank.example.")))
        .await
        .unwrap();

    assert_eq!(
        addresses(&response),
        vec![ANSWER, Ipv4Addr::new(192, 0, 2, 2)]
    );
    // Wrong ID, wrong question, not a response; the reply from another port
    // never reaches the connected socket.
    assert_eq!(forwarder.metrics().mismatched_replies(), 3);
}

#[tokio::test]
async fn silent_upstream_fails_over_to_the_next() {
    let silent = FakeUpstream::start(Behavior::Silent).await;
    let good = FakeUpstream::start(Behavior::answer(60)).await;
    let forwarder = forwarder(&[&silent, &good]);
    // The rotation starts at the first upstream, the silent one.
    let response = within(forwarder.resolve(&client_query(1, "a.example.")))
        .await
        .unwrap();
    assert_eq!(addresses(&response)[0], ANSWER);
    assert_eq!(silent.count(Transport::Udp), 1);
    assert_eq!(good.count(Transport::Udp), 1);
}

#[tokio::test]
async fn servfail_refused_and_unreachable_fail_over() {
    let servfail = FakeUpstream::start(Behavior::Rcode(ResponseCode::ServFail)).await;
    let refused = FakeUpstream::start(Behavior::Rcode(ResponseCode::Refused)).await;
    let good = FakeUpstream::start(Behavior::answer(60)).await;
    for bad in [servfail.addr, refused.addr, dead_addr().await] {
        let forwarder = Forwarder::new(config(vec![bad, good.addr]), Arc::default());
        let response = within(forwarder.resolve(&client_query(1, "a.example."))).await;
        assert_eq!(addresses(&response.unwrap())[0], ANSWER, "after {bad}");
    }
    assert_eq!(good.count(Transport::Udp), 3);
}

#[tokio::test]
async fn every_upstream_failing_is_an_error() {
    let first = FakeUpstream::start(Behavior::Silent).await;
    let second = FakeUpstream::start(Behavior::Rcode(ResponseCode::ServFail)).await;
    let forwarder = forwarder(&[&first, &second]);
    let result = within(forwarder.resolve(&client_query(1, "a.example."))).await;
    assert!(
        matches!(result, Err(ForwardError::Exhausted { attempts: 2, .. })),
        "{result:?}"
    );
    assert!(forwarder.cache().is_empty(), "failures are not cached");

    let none = Forwarder::new(ForwardConfig::default(), Arc::default());
    let result = within(none.resolve(&client_query(1, "a.example."))).await;
    assert_eq!(result.unwrap_err(), ForwardError::NoUpstreams);
}

#[tokio::test]
async fn every_upstream_query_has_a_fresh_id_and_port() {
    let upstream = FakeUpstream::start(Behavior::answer(60)).await;
    let forwarder = forwarder(&[&upstream]);
    for i in 0..16 {
        let name = format!("host{i}.example.");
        within(forwarder.resolve(&client_query(7, &name)))
            .await
            .unwrap();
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 16);
    let ids: HashSet<u16> = seen.iter().map(|s| s.query.metadata.id).collect();
    let ports: HashSet<u16> = seen.iter().map(|s| s.from.port()).collect();
    assert!(ids.len() > 8, "ids {ids:?}");
    assert!(ports.len() > 8, "ports {ports:?}");
}

#[tokio::test]
async fn edns_is_forwarded_and_returned_only_when_asked() {
    let upstream = FakeUpstream::start(Behavior::answer(60)).await;
    let forwarder = forwarder(&[&upstream]);

    let plain = within(forwarder.resolve(&client_query(1, "plain.example.")))
        .await
        .unwrap();
    assert!(plain.edns.is_none(), "client sent no OPT");
    let sent = &upstream.seen()[0].query;
    let edns = sent.edns.as_ref().expect("upstream query carries OPT");
    assert_eq!(edns.max_payload(), 1232);
    assert!(!edns.flags().dnssec_ok);

    let query = with_edns(client_query(2, "secure.example."), true);
    let secure = within(forwarder.resolve(&query)).await.unwrap();
    let edns = secure.edns.as_ref().expect("client sent OPT");
    assert!(edns.flags().dnssec_ok);
    assert_eq!(edns.max_payload(), 1232);
    assert!(
        upstream.seen()[1]
            .query
            .edns
            .as_ref()
            .unwrap()
            .flags()
            .dnssec_ok
    );
}

#[test]
fn resolve_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let forwarder = Forwarder::new(ForwardConfig::default(), Arc::default());
    let query = client_query(1, "a.example.");
    assert_send(&forwarder.resolve(&query));
}

#[tokio::test]
async fn do_and_cd_bits_are_part_of_the_cache_key() {
    let upstream = FakeUpstream::start(Behavior::answer(60)).await;
    let forwarder = forwarder(&[&upstream]);
    within(forwarder.resolve(&client_query(1, "k.example.")))
        .await
        .unwrap();
    let dnssec = with_edns(client_query(2, "k.example."), true);
    within(forwarder.resolve(&dnssec)).await.unwrap();
    let edns_no_do = with_edns(client_query(3, "k.example."), false);
    within(forwarder.resolve(&edns_no_do)).await.unwrap();
    assert_eq!(upstream.count(Transport::Udp), 2);
    let mut checking_disabled = client_query(4, "k.example.");
    checking_disabled.metadata.checking_disabled = true;
    let response = within(forwarder.resolve(&checking_disabled)).await.unwrap();
    assert!(response.metadata.checking_disabled);
    assert_eq!(upstream.count(Transport::Udp), 3);
    assert!(upstream.seen()[2].query.metadata.checking_disabled);
}

#[tokio::test]
async fn concurrent_identical_misses_share_one_upstream_query() {
    let behavior = Behavior::Answer {
        ttl: 60,
        delay: Duration::from_millis(100),
    };
    let upstream = FakeUpstream::start(behavior).await;
    let forwarder = forwarder(&[&upstream]);
    let queries = [
        client_query(1, "same.example."),
        client_query(2, "SAME.example."),
        client_query(3, "same.EXAMPLE."),
    ];
    let (a, b, c) = within(async {
        tokio::join!(
            forwarder.resolve(&queries[0]),
            forwarder.resolve(&queries[1]),
            forwarder.resolve(&queries[2]),
        )
    })
    .await;
    assert_eq!(upstream.count(Transport::Udp), 1);
    for (response, id) in [(a, 1), (b, 2), (c, 3)] {
        let response = response.unwrap();
        assert_eq!(response.metadata.id, id);
        assert_eq!(addresses(&response)[0], ANSWER);
    }
    assert_eq!(forwarder.flights.len(), 0);
}

#[tokio::test]
async fn max_concurrent_refuses_the_excess() {
    let behavior = Behavior::Answer {
        ttl: 60,
        delay: Duration::from_millis(100),
    };
    let upstream = FakeUpstream::start(behavior).await;
    let config = ForwardConfig {
        max_concurrent: 1,
        ..config(vec![upstream.addr])
    };
    let forwarder = Forwarder::new(config, Arc::default());
    let (one, two) = (
        client_query(1, "one.example."),
        client_query(2, "two.example."),
    );
    let (first, second) =
        within(async { tokio::join!(forwarder.resolve(&one), forwarder.resolve(&two)) }).await;
    assert!(first.is_ok());
    assert_eq!(second.unwrap_err(), ForwardError::Overloaded);
}

#[tokio::test]
async fn malformed_client_queries_are_rejected() {
    let forwarder = Forwarder::new(ForwardConfig::default(), Arc::default());
    let mut two = client_query(1, "a.example.");
    two.add_query(Query::query(
        Name::from_ascii("b.example.").unwrap(),
        RecordType::A,
    ));
    let none = Message::new(1, MessageType::Query, OpCode::Query);
    let mut update = client_query(1, "a.example.");
    update.metadata.op_code = OpCode::Update;
    for query in [two, none, update] {
        let result = forwarder.resolve(&query).await;
        assert!(
            matches!(result, Err(ForwardError::BadQuery(_))),
            "{result:?}"
        );
    }
}
