//! End-to-end tests of svcplane-dns fed through the Kubernetes API path: the project's API
//! test server holds Namespaces, Services and EndpointSlices (those of
//! `deploy/examples/myapp-prod.yaml` plus a few more), svcplane-dns watches it through a
//! kubeconfig with kube-rs watchers (`svcplane_common::source::kube`), and the tests query the
//! DNS server over UDP and TCP while changing objects, dropping watches, expiring the watch
//! history, taking the API server down and feeding it invalid objects: answers follow the API,
//! a dropped watch resumes without a relist, a 410 relist forgets objects deleted meanwhile,
//! an outage serves the last known state (reported by the staleness metric), invalid objects
//! are ignored and logged, and namespaces exist in DNS while something lives in them.
//!
//! The tests run on a current-thread runtime, so that test steps without an `.await` between
//! them (e.g. drop the watches, then delete) happen before any watcher can react.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use support::*;

const WEB: &str = "web-app-service.myapp-prod.svc.cluster.local.";
const REDIS: &str = "redis-service.myapp-prod.svc.cluster.local.";
const PG: &str = "postgres-headless.myapp-prod.svc.cluster.local.";
const FRESH: &str = "fresh.myapp-prod.svc.cluster.local.";
const STALE: &str = "svcplane_dns_catalog_stale_seconds";

/// A new ClusterIP Service `myapp-prod/fresh` at 10.96.7.7.
fn fresh_service() -> serde_json::Value {
    service("myapp-prod", "fresh", "10.96.7.7", &[("http", 80)])
}

fn fresh_answer(m: &Message) -> bool {
    answers_are(m, &[&format!("{FRESH} A 10.96.7.7")])
}

fn print_timing(what: &str, took: Duration) {
    println!(
        "dns_kube timing: {what}: {:.1} ms",
        took.as_secs_f64() * 1000.0
    );
}

#[tokio::test]
async fn serves_the_example_cluster_over_udp_and_tcp_once_ready() {
    let mut objects = example_objects();
    objects.push(namespace("kube-system"));
    let dns_ports = [("dns-tcp", 53)];
    objects.push(service("kube-system", "kube-dns", "10.96.0.10", &dns_ports));
    let s = Stack::start(objects).await;
    let srv = "_dns-tcp._tcp.kube-dns.kube-system.svc.cluster.local.";
    let web_ptr = reverse("10.96.1.200");
    let pg_ptr = reverse("10.244.1.10");
    let web_endpoint_ptr = reverse("10.244.2.32");
    let expected: [(&str, RecordType, Vec<String>); 9] = [
        (WEB, RecordType::A, vec![format!("{WEB} A 10.96.1.200")]),
        (REDIS, RecordType::A, vec![format!("{REDIS} A 10.96.1.100")]),
        (
            WEB,
            RecordType::SRV,
            vec![format!("{WEB} SRV 0 100 80 {WEB}")],
        ),
        (PG, RecordType::A, vec![format!("{PG} A 10.244.1.10")]),
        (
            &format!("postgres-0.{PG}"),
            RecordType::A,
            vec![format!("postgres-0.{PG} A 10.244.1.10")],
        ),
        (
            PG,
            RecordType::SRV,
            vec![format!("{PG} SRV 0 100 5432 postgres-0.{PG}")],
        ),
        (
            srv,
            RecordType::SRV,
            vec![format!(
                "{srv} SRV 0 100 53 kube-dns.kube-system.svc.cluster.local."
            )],
        ),
        (
            &web_ptr,
            RecordType::PTR,
            vec![format!("{web_ptr} PTR {WEB}")],
        ),
        (
            &pg_ptr,
            RecordType::PTR,
            vec![format!("{pg_ptr} PTR postgres-0.{PG}")],
        ),
    ];
    for via in BOTH {
        for (name, rtype, want) in &expected {
            let want: Vec<&str> = want.iter().map(String::as_str).collect();
            assert_answers(&s.q(via, name, *rtype).await, &want);
        }
        let m = s.q(via, &web_endpoint_ptr, RecordType::PTR).await;
        let want = format!("{web_endpoint_ptr} PTR 10-244-2-32.{WEB}");
        assert_answers(&m, &[&want]);
        assert_nxdomain(&s.q(via, FRESH, RecordType::A).await);
    }
}

#[tokio::test]
async fn creates_updates_and_deletes_through_the_api_change_the_answers() {
    let s = Stack::start(example_objects()).await;
    let api = "api.myapp-prod.svc.cluster.local.";
    let service_at = |ip: &str| service("myapp-prod", "api", ip, &[("http", 80)]);

    s.api.apply(service_at("10.96.5.5")).unwrap();
    let want = format!("{api} A 10.96.5.5");
    let (_, took) = s
        .until(UPDATE, api, RecordType::A, |m| answers_are(m, &[&want]))
        .await;
    print_timing("Service created", took);

    s.api.apply(service_at("10.96.5.6")).unwrap();
    let want = format!("{api} A 10.96.5.6");
    let (_, took) = s
        .until(UPDATE, api, RecordType::A, |m| answers_are(m, &[&want]))
        .await;
    print_timing("Service clusterIP changed", took);
    let (old_ptr, new_ptr) = (reverse("10.96.5.5"), reverse("10.96.5.6"));
    for via in BOTH {
        assert_forwarded(&s.q(via, &old_ptr, RecordType::PTR).await);
        let m = s.q(via, &new_ptr, RecordType::PTR).await;
        assert_answers(&m, &[&format!("{new_ptr} PTR {api}")]);
    }

    let pg_slice = |endpoints: &[(&str, Option<&str>)]| {
        let name = "postgres-headless-7xk2p";
        slice("myapp-prod", name, "postgres-headless", 5432, endpoints)
    };
    let (pg0, pg1) = (
        ("10.244.1.10", Some("postgres-0")),
        ("10.244.2.11", Some("postgres-1")),
    );
    s.api.apply(pg_slice(&[pg0, pg1])).unwrap();
    let want = [format!("{PG} A 10.244.1.10"), format!("{PG} A 10.244.2.11")];
    let (_, took) = s
        .until(UPDATE, PG, RecordType::A, |m| {
            answers_are(m, &[&want[0], &want[1]])
        })
        .await;
    print_timing("endpoint added", took);
    let pg1_name = format!("postgres-1.{PG}");
    let m = s.q(Via::Tcp, &pg1_name, RecordType::A).await;
    assert_answers(&m, &[&format!("{pg1_name} A 10.244.2.11")]);

    s.api.apply(pg_slice(&[pg1])).unwrap();
    let want = format!("{PG} A 10.244.2.11");
    let (_, took) = s
        .until(UPDATE, PG, RecordType::A, |m| answers_are(m, &[&want]))
        .await;
    print_timing("endpoint removed", took);
    let pg0_name = format!("postgres-0.{PG}");
    assert_nxdomain(&s.q(Via::Tcp, &pg0_name, RecordType::A).await);

    let slice_name = "postgres-headless-7xk2p";
    let deleted = s.api.delete(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "myapp-prod",
        slice_name,
    );
    assert!(deleted.unwrap().is_some());
    let (_, took) = s.until(UPDATE, PG, RecordType::A, is_nxdomain).await;
    print_timing("EndpointSlice deleted (headless without endpoints)", took);

    let deleted = s.api.delete("v1", "Service", "myapp-prod", "api").unwrap();
    assert!(deleted.is_some());
    let (m, took) = s.until(UPDATE, api, RecordType::A, is_nxdomain).await;
    print_timing("Service deleted", took);
    assert_nxdomain(&m);
    assert_forwarded(&s.q(Via::Tcp, &new_ptr, RecordType::PTR).await);
    let m = s.q(Via::Udp, WEB, RecordType::A).await;
    assert_answers(&m, &[&format!("{WEB} A 10.96.1.200")]);
}

#[tokio::test]
async fn a_dropped_watch_resumes_without_relisting() {
    let s = Stack::start(example_objects()).await;
    s.wait_watching().await;
    let plurals = ["namespaces", "services", "endpointslices"];
    let before = plurals.map(|p| s.api.counts(p));

    s.api.drop_watches();
    s.api.apply(fresh_service()).unwrap();
    let (_, took) = s.until(UPDATE, FRESH, RecordType::A, fresh_answer).await;
    print_timing("change after a dropped watch", took);

    let after = plurals.map(|p| s.api.counts(p));
    for ((plural, before), after) in plurals.iter().zip(before).zip(after) {
        assert_eq!(
            after.initial_lists, before.initial_lists,
            "{plural}: relisted"
        );
    }
    let (services_before, services_after) = (before[1], after[1]);
    assert!(
        services_after.watches > services_before.watches,
        "the services watch was not reopened: {services_before:?} → {services_after:?}"
    );
}

#[tokio::test]
async fn a_service_deleted_while_disconnected_is_gone_after_the_410_relist() {
    let s = Stack::start(example_objects()).await;
    s.wait_watching().await;
    let lists_before = s.api.counts("services").initial_lists;

    // No `.await` in between: no watcher sees the deletion before the history is compacted.
    s.api.drop_watches();
    let deleted = s.api.delete("v1", "Service", "myapp-prod", "redis-service");
    assert!(deleted.unwrap().is_some());
    s.api.compact();

    let (m, took) = s.until(PATIENCE, REDIS, RecordType::A, is_nxdomain).await;
    print_timing("deletion seen through a relist after 410", took);
    assert_nxdomain(&m);
    let lists_after = s.api.counts("services").initial_lists;
    assert!(
        lists_after > lists_before,
        "services were not relisted ({lists_before} → {lists_after})"
    );
    for via in BOTH {
        let m = s.q(via, WEB, RecordType::A).await;
        assert_answers(&m, &[&format!("{WEB} A 10.96.1.200")]);
        assert_answers(
            &s.q(via, PG, RecordType::A).await,
            &[&format!("{PG} A 10.244.1.10")],
        );
    }
}

#[tokio::test]
async fn an_api_outage_serves_the_last_known_state_then_catches_up() {
    let s = Stack::start(example_objects()).await;
    s.wait_watching().await;
    assert_eq!(s.metric(STALE).await, 0.0);

    s.api.set_available(false);
    s.metric_until(STALE, UPDATE, |v| v > 0.0).await;
    assert_eq!(s.ready().await, 200, "/ready during the outage");
    s.api.apply(fresh_service()).unwrap();
    let deleted = s.api.delete("v1", "Service", "myapp-prod", "redis-service");
    assert!(deleted.unwrap().is_some());
    for via in BOTH {
        let m = s.q(via, WEB, RecordType::A).await;
        assert_answers(&m, &[&format!("{WEB} A 10.96.1.200")]);
        let m = s.q(via, REDIS, RecordType::A).await;
        assert_answers(&m, &[&format!("{REDIS} A 10.96.1.100")]);
        assert_nxdomain(&s.q(via, FRESH, RecordType::A).await);
    }

    s.api.set_available(true);
    let (_, took) = s.until(PATIENCE, FRESH, RecordType::A, fresh_answer).await;
    print_timing("creation made during the outage, after it ended", took);
    let (_, took) = s.until(PATIENCE, REDIS, RecordType::A, is_nxdomain).await;
    print_timing("deletion made during the outage, after it ended", took);
    // Every watched kind is live again, including those (Namespaces, EndpointSlices) that
    // have had no change since the outage.
    s.metric_until(STALE, UPDATE, |v| v == 0.0).await;
    assert_eq!(s.ready().await, 200);
}

#[tokio::test]
async fn an_invalid_endpoint_slice_is_ignored_and_logged() {
    // The whole slice is ignored, its valid endpoint included, as the API server would have
    // rejected it whole.
    let bad = |name: &str| {
        let endpoints = [("300.1.1.1", None), ("10.244.9.9", Some("valid-looking"))];
        slice("myapp-prod", name, "postgres-headless", 5432, &endpoints)
    };
    let mut objects = example_objects();
    objects.push(bad("pg-bad-listed"));
    let s = Stack::start(objects).await;
    let pg0 = format!("{PG} A 10.244.1.10");
    let warning = "ignoring invalid object";
    assert!(logged(&[warning, "myapp-prod/pg-bad-listed", "300.1.1.1"]));
    assert_answers(&s.q(Via::Udp, PG, RecordType::A).await, &[&pg0]);

    s.wait_watching().await;
    s.api.apply(bad("pg-bad-watched")).unwrap();
    wait_logged(&[warning, "myapp-prod/pg-bad-watched", "300.1.1.1"]).await;
    s.api.apply(fresh_service()).unwrap();
    s.until(UPDATE, FRESH, RecordType::A, fresh_answer).await;
    for via in BOTH {
        assert_answers(&s.q(via, PG, RecordType::A).await, &[&pg0]);
        let valid_looking = format!("valid-looking.{PG}");
        assert_nxdomain(&s.q(via, &valid_looking, RecordType::A).await);
        let m = s.q(via, WEB, RecordType::A).await;
        assert_answers(&m, &[&format!("{WEB} A 10.96.1.200")]);
    }
}

#[tokio::test]
async fn namespaces_exist_in_dns_while_they_hold_services_or_exist_in_the_api() {
    let s = Stack::start(example_objects()).await;
    for via in BOTH {
        let m = s
            .q(via, "myapp-prod.svc.cluster.local.", RecordType::A)
            .await;
        assert_nodata(&m);
        assert_nxdomain(&s.q(via, "nope.svc.cluster.local.", RecordType::A).await);
    }

    let lonely = "lonely.svc.cluster.local.";
    s.api
        .apply(service("lonely", "only", "10.96.8.8", &[("http", 80)]))
        .unwrap();
    let (m, _) = s.until(UPDATE, lonely, RecordType::A, is_nodata).await;
    assert_nodata(&m);
    assert!(
        s.api
            .delete("v1", "Service", "lonely", "only")
            .unwrap()
            .is_some()
    );
    let (m, _) = s.until(UPDATE, lonely, RecordType::A, is_nxdomain).await;
    assert_nxdomain(&m);

    let empty = "empty.svc.cluster.local.";
    s.api.apply(namespace("empty")).unwrap();
    let (m, _) = s.until(UPDATE, empty, RecordType::A, is_nodata).await;
    assert_nodata(&m);
    assert!(
        s.api
            .delete("v1", "Namespace", "", "empty")
            .unwrap()
            .is_some()
    );
    let (m, _) = s.until(UPDATE, empty, RecordType::A, is_nxdomain).await;
    assert_nxdomain(&m);
}
