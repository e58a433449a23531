//! The Kubernetes DNS-Based Service Discovery specification (schema 1.1.0) and the CoreDNS
//! behaviours svcplane-dns chose, checked over real UDP and TCP sockets against an in-process
//! server fed by manifests.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use arc_swap::ArcSwap;
use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use svcplane_dns::answer::{PodsMode, ResolveConfig};
use svcplane_dns::name::Name;
use svcplane_dns::server::{Handler, tcp, udp};
use svcplane_dns::view::View;
use tokio_util::sync::CancellationToken;

const WEB: &str = "web-app-service.myapp-prod.svc.cluster.local.";
const PG: &str = "postgres-headless.myapp-prod.svc.cluster.local.";

// ---- §2.2 Schema version ------------------------------------------------------------------

// §2.2.1: "dns-version.<zone>. <ttl> IN TXT <schema-version>"
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_version_txt_is_1_1_0() {
    let s = cluster().await;
    for via in BOTH {
        let m = s
            .q(via, "dns-version.cluster.local.", RecordType::TXT)
            .await;
        assert_answers(&m, &[r#"dns-version.cluster.local. TXT "1.1.0""#]);
        assert!(m.authorities.is_empty());
        // Other types at an existing name: NODATA.
        let m = s.q(via, "dns-version.cluster.local.", RecordType::A).await;
        assert_nodata(&m);
    }
}

// ---- §2.3.1 ClusterIP Services --------------------------------------------------------------

// §2.3.1.1: "<service>.<ns>.svc.<zone>. <ttl> IN A <cluster-ip>"
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_a_record() {
    let s = cluster().await;
    for via in BOTH {
        let m = s.q(via, WEB, RecordType::A).await;
        assert_answers(&m, &[&format!("{WEB} A 10.96.1.200")]);
        assert!(m.authorities.is_empty(), "positive answers carry no SOA");
        assert_additional(&m, &[]);
    }
}

// §2.3.1.2: "<service>.<ns>.svc.<zone>. <ttl> IN AAAA <cluster-ip>" for IPv6 cluster IPs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_service_answers_a_and_aaaa() {
    let s = cluster().await;
    let name = "dual.myapp-prod.svc.cluster.local.";
    for via in BOTH {
        assert_answers(
            &s.q(via, name, RecordType::A).await,
            &[&format!("{name} A 10.96.2.10")],
        );
        assert_answers(
            &s.q(via, name, RecordType::AAAA).await,
            &[&format!("{name} AAAA fd00:96::10")],
        );
    }
}

// RFC 2308 §2.2 (NODATA): the name exists but has no AAAA: NOERROR, no answers, SOA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aaaa_on_ipv4_only_service_is_nodata() {
    let s = cluster().await;
    for via in BOTH {
        assert_nodata(&s.q(via, WEB, RecordType::AAAA).await);
    }
}

// §2.3.1.3: "_<port>._<proto>.<service>.<ns>.svc.<zone>. <ttl> IN SRV <weight> <priority>
// <port-number> <service>.<ns>.svc.<zone>." — with the A record as additional data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_srv_for_named_port() {
    let s = cluster().await;
    let name = format!("_http._tcp.{WEB}");
    for via in BOTH {
        let m = s.q(via, &name, RecordType::SRV).await;
        assert_answers(&m, &[&format!("{name} SRV 0 100 80 {WEB}")]);
        assert_additional(&m, &[&format!("{WEB} A 10.96.1.200")]);
        // Asking another type at the SRV name: NODATA.
        assert_nodata(&s.q(via, &name, RecordType::A).await);
    }
}

// CoreDNS: SRV at the bare Service name answers one record per port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_srv_at_bare_name_one_per_port() {
    let s = cluster().await;
    for via in BOTH {
        let m = s.q(via, WEB, RecordType::SRV).await;
        assert_answers(
            &m,
            &[
                &format!("{WEB} SRV 0 100 80 {WEB}"),
                &format!("{WEB} SRV 0 100 9090 {WEB}"),
            ],
        );
        assert_additional(&m, &[&format!("{WEB} A 10.96.1.200")]);
    }
}

// RFC 8020 §2: `_tcp.<svc>` is an empty non-terminal (a named TCP port lies below it): NODATA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_proto_label_is_empty_non_terminal() {
    let s = cluster().await;
    for via in BOTH {
        assert_nodata(&s.q(via, &format!("_tcp.{WEB}"), RecordType::SRV).await);
    }
}

// RFC 8020: nothing lives below `_udp.<svc>` (no UDP port) or `_nope._tcp.<svc>`: NXDOMAIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_unknown_proto_or_port_is_nxdomain() {
    let s = cluster().await;
    for via in BOTH {
        assert_nxdomain(&s.q(via, &format!("_udp.{WEB}"), RecordType::SRV).await);
        assert_nxdomain(
            &s.q(via, &format!("_http._udp.{WEB}"), RecordType::SRV)
                .await,
        );
        assert_nxdomain(
            &s.q(via, &format!("_nope._tcp.{WEB}"), RecordType::SRV)
                .await,
        );
    }
}

// ---- §2.4 Headless Services -----------------------------------------------------------------

// §2.4.1: "<service>.<ns>.svc.<zone>. <ttl> IN A <endpoint-ip>" for each ready endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_a_per_ready_endpoint() {
    let s = cluster().await;
    for via in BOTH {
        let m = s.q(via, PG, RecordType::A).await;
        assert_answers(
            &m,
            &[
                &format!("{PG} A 10.244.1.10"),
                &format!("{PG} A 10.244.1.5"),
            ],
        );
    }
}

// §2.4.1 with publishNotReadyAddresses: not-ready endpoints are published too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_publish_not_ready_addresses_includes_not_ready() {
    let s = cluster().await;
    let name = "pnr.myapp-prod.svc.cluster.local.";
    for via in BOTH {
        let m = s.q(via, name, RecordType::A).await;
        assert_answers(
            &m,
            &[
                &format!("{name} A 10.244.4.1"),
                &format!("{name} A 10.244.4.2"),
            ],
        );
    }
}

// §2.4.1: "If there are no ready endpoints for the Service, the answer is NXDOMAIN."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_without_ready_endpoint_is_nxdomain() {
    let s = cluster().await;
    for via in BOTH {
        assert_nxdomain(
            &s.q(via, "no-ready.myapp-prod.svc.cluster.local.", RecordType::A)
                .await,
        );
        assert_nxdomain(
            &s.q(
                via,
                "_pg._tcp.no-ready.myapp-prod.svc.cluster.local.",
                RecordType::SRV,
            )
            .await,
        );
    }
}

// §2.4.1: "<hostname>.<service>.<ns>.svc.<zone>. <ttl> IN A <endpoint-ip>" for endpoints with
// a hostname (a StatefulSet's pods).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_hostname_a_record() {
    let s = cluster().await;
    let name = format!("postgres-0.{PG}");
    for via in BOTH {
        assert_answers(
            &s.q(via, &name, RecordType::A).await,
            &[&format!("{name} A 10.244.1.10")],
        );
        // A not-ready endpoint's hostname is not published.
        assert_nxdomain(&s.q(via, &format!("postgres-1.{PG}"), RecordType::A).await);
        assert_nxdomain(&s.q(via, &format!("postgres-9.{PG}"), RecordType::A).await);
    }
}

// CoreDNS (system-assigned hostname): an endpoint without hostname is named by its dashed IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_dashed_ip_name_for_endpoint_without_hostname() {
    let s = cluster().await;
    let name = format!("10-244-1-5.{PG}");
    for via in BOTH {
        assert_answers(
            &s.q(via, &name, RecordType::A).await,
            &[&format!("{name} A 10.244.1.5")],
        );
        // An endpoint with a hostname is not also named by its address.
        assert_nxdomain(&s.q(via, &format!("10-244-1-10.{PG}"), RecordType::A).await);
    }
}

// §2.4.1: "_<port>._<proto>.<service>.<ns>.svc.<zone>. <ttl> IN SRV <weight> <priority>
// <port-number> <hostname>.<service>.<ns>.svc.<zone>." per ready endpoint, with the endpoint's
// port number and the targets' A records as additional data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_srv_per_endpoint() {
    let s = cluster().await;
    let name = format!("_pg._tcp.{PG}");
    for via in BOTH {
        let m = s.q(via, &name, RecordType::SRV).await;
        assert_answers(
            &m,
            &[
                &format!("{name} SRV 0 50 15432 postgres-0.{PG}"),
                &format!("{name} SRV 0 50 15432 10-244-1-5.{PG}"),
            ],
        );
        assert_additional(
            &m,
            &[
                &format!("postgres-0.{PG} A 10.244.1.10"),
                &format!("10-244-1-5.{PG} A 10.244.1.5"),
            ],
        );
    }
}

// §2.4.1: "<b>.<a>.in-addr.arpa. <ttl> IN PTR <hostname>.<service>.<ns>.svc.<zone>."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_endpoint_ptr() {
    let s = cluster().await;
    for via in BOTH {
        let name = reverse("10.244.1.10");
        assert_answers(
            &s.q(via, &name, RecordType::PTR).await,
            &[&format!("{name} PTR postgres-0.{PG}")],
        );
        let name = reverse("10.244.1.5");
        assert_answers(
            &s.q(via, &name, RecordType::PTR).await,
            &[&format!("{name} PTR 10-244-1-5.{PG}")],
        );
    }
}

// §2.4.1 for IPv6 endpoints: AAAA records and nibble-format PTR (RFC 3596 §2.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_ipv6_aaaa_and_nibble_ptr() {
    let s = cluster().await;
    let svc = "v6-headless.myapp-prod.svc.cluster.local.";
    for via in BOTH {
        let m = s.q(via, svc, RecordType::AAAA).await;
        assert_answers(
            &m,
            &[
                &format!("{svc} AAAA fd00:244::5"),
                &format!("{svc} AAAA fd00:244::6"),
            ],
        );
        assert_nodata(&s.q(via, svc, RecordType::A).await);
        let host = format!("db-0.{svc}");
        assert_answers(
            &s.q(via, &host, RecordType::AAAA).await,
            &[&format!("{host} AAAA fd00:244::5")],
        );
        let dashed = format!("fd00-244--6.{svc}");
        assert_answers(
            &s.q(via, &dashed, RecordType::AAAA).await,
            &[&format!("{dashed} AAAA fd00:244::6")],
        );
        let ptr = reverse("fd00:244::5");
        assert_answers(
            &s.q(via, &ptr, RecordType::PTR).await,
            &[&format!("{ptr} PTR {host}")],
        );
    }
}

// ---- CoreDNS behaviours for ClusterIP Services ----------------------------------------------

// CoreDNS: endpoints of ClusterIP Services have PTR records too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_service_endpoint_ptr() {
    let s = cluster().await;
    for via in BOTH {
        let name = reverse("10.244.1.31");
        assert_answers(
            &s.q(via, &name, RecordType::PTR).await,
            &[&format!("{name} PTR web-0.{WEB}")],
        );
        let name = reverse("10.244.2.32");
        assert_answers(
            &s.q(via, &name, RecordType::PTR).await,
            &[&format!("{name} PTR 10-244-2-32.{WEB}")],
        );
    }
}

// CoreDNS: `<hostname>.<svc>` answers for endpoints of ClusterIP Services too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_service_endpoint_hostname() {
    let s = cluster().await;
    for via in BOTH {
        let name = format!("web-0.{WEB}");
        assert_answers(
            &s.q(via, &name, RecordType::A).await,
            &[&format!("{name} A 10.244.1.31")],
        );
        let name = format!("10-244-2-32.{WEB}");
        assert_answers(
            &s.q(via, &name, RecordType::A).await,
            &[&format!("{name} A 10.244.2.32")],
        );
        // Not ready: not published.
        assert_nxdomain(&s.q(via, &format!("10-244-3-33.{WEB}"), RecordType::A).await);
    }
}

// §2.3.1.4: "<d>.<c>.<b>.<a>.in-addr.arpa. <ttl> IN PTR <service>.<ns>.svc.<zone>." and the
// nibble form for IPv6 cluster IPs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_ptr_ipv4_and_ipv6() {
    let s = cluster().await;
    for via in BOTH {
        let name = reverse("10.96.1.200");
        let m = s.q(via, &name, RecordType::PTR).await;
        assert_answers(&m, &[&format!("{name} PTR {WEB}")]);
        let name = reverse("fd00:96::10");
        let m = s.q(via, &name, RecordType::PTR).await;
        assert_answers(
            &m,
            &[&format!("{name} PTR dual.myapp-prod.svc.cluster.local.")],
        );
    }
}

// ---- §2.5 ExternalName ------------------------------------------------------------------------

// §2.5.1: "<service>.<ns>.svc.<zone>. <ttl> IN CNAME <extname>."; a target inside the zone is
// followed (RFC 1034 §4.3.2 step 3a): its records follow the CNAME in the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_name_in_zone_is_followed() {
    let s = cluster().await;
    let name = "ext-in.myapp-prod.svc.cluster.local.";
    for via in BOTH {
        let m = s.q(via, name, RecordType::A).await;
        assert_answers(
            &m,
            &[
                &format!("{name} CNAME {WEB}"),
                &format!("{WEB} A 10.96.1.200"),
            ],
        );
        assert_eq!(
            m.answers[0].record_type(),
            RecordType::CNAME,
            "the CNAME comes first"
        );
        let m = s.q(via, name, RecordType::CNAME).await;
        assert_answers(&m, &[&format!("{name} CNAME {WEB}")]);
    }
}

// §2.5.1 with a target outside the zone: the CNAME, then what the upstream answers for the
// target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_name_outside_zone_is_chased_upstream() {
    let s = cluster().await;
    let name = "ext-out.myapp-prod.svc.cluster.local.";
    for via in BOTH {
        let m = s.q(via, name, RecordType::A).await;
        let ctx = describe(&m);
        assert_eq!(m.response_code, ResponseCode::NoError, "{ctx}");
        assert_eq!(
            rrs(&m.answers),
            vec![
                format!("{name} CNAME www.example.com."),
                "www.example.com. A 93.184.216.34".to_string()
            ],
            "{ctx}"
        );
        assert_question(&m, name, RecordType::A);
        // RFC 1034 §4.1.1 / RFC 6604 §3.1: AA describes the first owner name (the question),
        // which is ours.
        assert!(m.authoritative, "AA on a chased answer\n{ctx}");
        assert!(m.recursion_available, "{ctx}");
    }
    assert!(s.upstream.as_ref().unwrap().queries() >= 1);
}

// RFC 2308 §2.2: a CNAME chain ending at a name without the wanted type is NODATA — the CNAME
// in the answer and the SOA in the authority section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_name_in_zone_without_data_is_nodata_after_cname() {
    let s = cluster().await;
    let name = "ext-in.myapp-prod.svc.cluster.local.";
    for via in BOTH {
        let m = s.q(via, name, RecordType::AAAA).await;
        let ctx = describe(&m);
        assert_eq!(m.response_code, ResponseCode::NoError, "{ctx}");
        assert!(m.authoritative, "{ctx}");
        assert_eq!(
            rrs(&m.answers),
            vec![format!("{name} CNAME {WEB}")],
            "{ctx}"
        );
        assert_soa_authority(&m);
    }
}

// RFC 6604 §3 / RFC 2308 §2.1: the rcode describes the last name of the chain: a CNAME to a
// missing in-zone name is NXDOMAIN, with the CNAME in the answer and the SOA in the authority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_name_to_missing_in_zone_name_is_nxdomain_with_cname() {
    let s = cluster().await;
    let name = "ext-missing.myapp-prod.svc.cluster.local.";
    for via in BOTH {
        let m = s.q(via, name, RecordType::A).await;
        let ctx = describe(&m);
        assert_eq!(m.response_code, ResponseCode::NXDomain, "{ctx}");
        assert!(m.authoritative, "{ctx}");
        assert_eq!(
            rrs(&m.answers),
            vec![format!(
                "{name} CNAME missing.myapp-prod.svc.cluster.local."
            )],
            "{ctx}"
        );
        assert_soa_authority(&m);
    }
}

// RFC 6604 §3 for a chain leaving the zone: the upstream's NXDOMAIN for the target comes back
// with the CNAME.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_name_to_nxdomain_target_is_nxdomain_with_cname() {
    let s = cluster().await;
    let name = "ext-nx.myapp-prod.svc.cluster.local.";
    for via in BOTH {
        let m = s.q(via, name, RecordType::A).await;
        let ctx = describe(&m);
        assert_eq!(m.response_code, ResponseCode::NXDomain, "{ctx}");
        assert_eq!(
            rrs(&m.answers),
            vec![format!("{name} CNAME nx.example.com.")],
            "{ctx}"
        );
    }
}

// RFC 1034 §4.3.2: a chain of CNAMEs inside the zone is followed to the end, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_name_chain_is_followed_in_order() {
    let s = cluster().await;
    let name = "ext-chain.myapp-prod.svc.cluster.local.";
    let ext_in = "ext-in.myapp-prod.svc.cluster.local.";
    for via in BOTH {
        let m = s.q(via, name, RecordType::A).await;
        assert_answers(
            &m,
            &[
                &format!("{name} CNAME {ext_in}"),
                &format!("{ext_in} CNAME {WEB}"),
                &format!("{WEB} A 10.96.1.200"),
            ],
        );
        assert_eq!(
            rrs(&m.answers),
            vec![
                format!("{name} CNAME {ext_in}"),
                format!("{ext_in} CNAME {WEB}"),
                format!("{WEB} A 10.96.1.200")
            ],
            "chain order"
        );
    }
}

// RFC 1034 §3.6.2 ("CNAME chains should be followed", loops must end): a CNAME loop is answered
// SERVFAIL (as resolvers do for loops), promptly and boundedly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_name_loop_terminates() {
    let s = cluster().await;
    for via in BOTH {
        let m = s
            .q(via, "loop-a.myapp-prod.svc.cluster.local.", RecordType::A)
            .await;
        let ctx = describe(&m);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{ctx}");
        assert!(m.answers.len() <= 10, "{ctx}");
        assert!(
            m.answers
                .iter()
                .all(|r| r.record_type() == RecordType::CNAME),
            "{ctx}"
        );
    }
}

// CoreDNS: SRV at the bare name of a headless Service: one record per port per ready endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_srv_at_bare_name() {
    let s = cluster().await;
    for via in BOTH {
        let m = s.q(via, PG, RecordType::SRV).await;
        assert_answers(
            &m,
            &[
                &format!("{PG} SRV 0 50 15432 postgres-0.{PG}"),
                &format!("{PG} SRV 0 50 15432 10-244-1-5.{PG}"),
            ],
        );
        assert_additional(
            &m,
            &[
                &format!("postgres-0.{PG} A 10.244.1.10"),
                &format!("10-244-1-5.{PG} A 10.244.1.5"),
            ],
        );
    }
}

// The name server's own name (`ns.dns.<zone>`, the SOA MNAME) resolves to kube-dns's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_name_resolves_to_kube_dns() {
    let s = cluster().await;
    for via in BOTH {
        let name = "ns.dns.cluster.local.";
        assert_answers(
            &s.q(via, name, RecordType::A).await,
            &[&format!("{name} A 10.96.0.10")],
        );
        assert_nodata(&s.q(via, "dns.cluster.local.", RecordType::A).await);
    }
}

// RFC 2308 §2.2 for the reverse zones: a PTR name the cluster knows, asked for another type, is
// NODATA — with the SOA of the zone that holds the name (owner an ancestor of the question).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_name_other_type_is_nodata_with_reverse_zone_soa() {
    let s = cluster().await;
    for (ip, zone) in [
        ("10.96.1.200", "in-addr.arpa."),
        ("fd00:96::10", "ip6.arpa."),
    ] {
        for via in BOTH {
            let name = reverse(ip);
            let m = s.q(via, &name, RecordType::A).await;
            let ctx = describe(&m);
            assert_eq!(m.response_code, ResponseCode::NoError, "{ctx}");
            assert!(m.authoritative, "{ctx}");
            assert!(m.answers.is_empty(), "{ctx}");
            assert_eq!(m.authorities.len(), 1, "{ctx}");
            assert_eq!(m.authorities[0].record_type(), RecordType::SOA, "{ctx}");
            assert_eq!(m.authorities[0].name.to_string(), zone, "{ctx}");
        }
    }
}

// The deploy example (deploy/examples/myapp-prod.yaml) as served: the names its workloads use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_example_resolves() {
    let example = include_str!("../../deploy/examples/myapp-prod.yaml");
    let s = Start::new().file("myapp-prod.yaml", example).start().await;
    for via in BOTH {
        let web = "Web-App-Service.MyApp-Prod.SVC.cluster.local.";
        assert_answers(
            &s.q(via, web, RecordType::A).await,
            &[&format!("{web} A 10.96.1.200")],
        );
        let redis = "redis-service.myapp-prod.svc.cluster.local.";
        assert_answers(
            &s.q(via, redis, RecordType::A).await,
            &[&format!("{redis} A 10.96.1.100")],
        );
        let pg = "postgres-0.postgres-headless.myapp-prod.svc.cluster.local.";
        assert_answers(
            &s.q(via, pg, RecordType::A).await,
            &[&format!("{pg} A 10.244.1.10")],
        );
        let ptr = reverse("10.244.1.10");
        assert_answers(
            &s.q(via, &ptr, RecordType::PTR).await,
            &[&format!("{ptr} PTR {pg}")],
        );
    }
}

// ---- Pods (§ not in the spec; CoreDNS `pods` option) --------------------------------------

// CoreDNS `pods insecure`: "a-b-c-d.<ns>.pod.<zone>" answers the address it spells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_insecure_answers_any_dashed_address() {
    let s = cluster_with(&["--pods", "insecure"]).await;
    for via in BOTH {
        let name = "1-2-3-4.myapp-prod.pod.cluster.local.";
        assert_answers(
            &s.q(via, name, RecordType::A).await,
            &[&format!("{name} A 1.2.3.4")],
        );
        assert_nxdomain(
            &s.q(
                via,
                "not-an-ip.myapp-prod.pod.cluster.local.",
                RecordType::A,
            )
            .await,
        );
    }
}

// CoreDNS `pods verified`: only the IP of a Pod that exists in that namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_verified_answers_only_existing_pods() {
    let s = cluster_with(&["--pods", "verified"]).await;
    for via in BOTH {
        let name = "10-244-1-10.myapp-prod.pod.cluster.local.";
        assert_answers(
            &s.q(via, name, RecordType::A).await,
            &[&format!("{name} A 10.244.1.10")],
        );
        assert_nxdomain(
            &s.q(via, "1-2-3-4.myapp-prod.pod.cluster.local.", RecordType::A)
                .await,
        );
        assert_nxdomain(
            &s.q(via, "10-244-1-10.quiet.pod.cluster.local.", RecordType::A)
                .await,
        );
    }
}

// CoreDNS `pods disabled` (the default): no pod records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_disabled_is_nxdomain() {
    let s = cluster_with(&["--pods", "disabled"]).await;
    for via in BOTH {
        assert_nxdomain(
            &s.q(via, "1-2-3-4.myapp-prod.pod.cluster.local.", RecordType::A)
                .await,
        );
        assert_nxdomain(
            &s.q(
                via,
                "10-244-1-10.myapp-prod.pod.cluster.local.",
                RecordType::A,
            )
            .await,
        );
    }
}

// ---- RFC 8020 / negative answers / zone apex --------------------------------------------------

// RFC 8020 §2: "svc.<zone>" and "<ns>.svc.<zone>" have names below them: NODATA, not NXDOMAIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_non_terminals_are_nodata() {
    let s = cluster().await;
    for via in BOTH {
        assert_nodata(&s.q(via, "svc.cluster.local.", RecordType::A).await);
        assert_nodata(
            &s.q(via, "myapp-prod.svc.cluster.local.", RecordType::A)
                .await,
        );
        assert_nodata(
            &s.q(via, "myapp-prod.svc.cluster.local.", RecordType::SRV)
                .await,
        );
    }
}

// RFC 8020 / RFC 2308 §2.1: unknown namespace and unknown service: NXDOMAIN with the SOA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_namespace_and_service_are_nxdomain() {
    let s = cluster().await;
    for via in BOTH {
        assert_nxdomain(&s.q(via, "nope.svc.cluster.local.", RecordType::A).await);
        assert_nxdomain(
            &s.q(
                via,
                "web-app-service.nope.svc.cluster.local.",
                RecordType::A,
            )
            .await,
        );
        assert_nxdomain(
            &s.q(via, "nope.myapp-prod.svc.cluster.local.", RecordType::A)
                .await,
        );
        assert_nxdomain(&s.q(via, "nope.cluster.local.", RecordType::A).await);
        assert_nxdomain(&s.q(via, &format!("a.b.c.d.{WEB}"), RecordType::A).await);
    }
}

// RFC 1035 §4.3.2 / §6.1: the zone apex holds the SOA and the NS (with the name server's address
// as additional data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apex_soa_and_ns() {
    let s = cluster().await;
    for via in BOTH {
        let m = s.q(via, "cluster.local.", RecordType::SOA).await;
        assert_eq!(m.response_code, ResponseCode::NoError, "{}", describe(&m));
        assert!(m.authoritative);
        assert_eq!(m.answers.len(), 1, "{}", describe(&m));
        let answer = rr(&m.answers[0]);
        assert!(
            answer
                .starts_with("cluster.local. SOA ns.dns.cluster.local. hostmaster.cluster.local. ")
                && answer.ends_with(" 7200 1800 86400 5"),
            "{answer}"
        );
        let m = s.q(via, "cluster.local.", RecordType::NS).await;
        assert_answers(&m, &["cluster.local. NS ns.dns.cluster.local."]);
        assert_additional(&m, &["ns.dns.cluster.local. A 10.96.0.10"]);
        // A type the apex does not hold: NODATA.
        assert_nodata(&s.q(via, "cluster.local.", RecordType::A).await);
    }
}

// RFC 1034 §3.1/RFC 4343: names compare case-insensitively, and the response question (and the
// owner names that point to it) keep the letter case the client used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn question_case_is_preserved() {
    let s = cluster().await;
    let name = "Web-App-Service.MyApp-Prod.SVC.cluster.local.";
    for via in BOTH {
        let m = s.q(via, name, RecordType::A).await;
        assert_question(&m, name, RecordType::A);
        assert_answers(&m, &[&format!("{name} A 10.96.1.200")]);
        let nx = "NoPe.MyApp-Prod.SVC.cluster.local.";
        let m = s.q(via, nx, RecordType::A).await;
        assert_question(&m, nx, RecordType::A);
        assert_nxdomain(&m);
    }
}

// Spec §2 (no wildcard records): `*` is an ordinary label that names nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wildcards() {
    let s = cluster().await;
    for via in BOTH {
        assert_nxdomain(
            &s.q(via, "*.myapp-prod.svc.cluster.local.", RecordType::A)
                .await,
        );
        assert_nxdomain(&s.q(via, "*.svc.cluster.local.", RecordType::A).await);
        assert_nxdomain(&s.q(via, &format!("*.{PG}"), RecordType::A).await);
    }
}

// RFC 1035 §4.1.1 AA: every answer from the cluster zone is authoritative, positive or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authoritative_flag_on_every_cluster_answer() {
    let s = cluster().await;
    let names = [
        ("cluster.local.", RecordType::SOA),
        ("dns-version.cluster.local.", RecordType::TXT),
        (WEB, RecordType::A),
        (WEB, RecordType::AAAA),
        (PG, RecordType::SRV),
        ("nope.svc.cluster.local.", RecordType::A),
        ("ext-in.myapp-prod.svc.cluster.local.", RecordType::A),
        ("200.1.96.10.in-addr.arpa.", RecordType::PTR),
    ];
    for via in BOTH {
        for (name, rtype) in names {
            let m = s.q(via, name, rtype).await;
            assert!(m.authoritative, "{name} {rtype}: AA\n{}", describe(&m));
        }
    }
}

// ---- Updates ----------------------------------------------------------------------------------

const MUTABLE: &str = "mutable.upd.svc.cluster.local.";

fn upd_ns() -> String {
    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: upd\n".to_string()
}

// The view follows the catalog: a changed clusterIP is served within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changed_cluster_ip_is_served() {
    let s = Start::new()
        .file("ns.yaml", &upd_ns())
        .file(
            "svc.yaml",
            &cluster_ip_service("upd", "mutable", "10.96.9.1"),
        )
        .start()
        .await;
    assert_answers(
        &s.q(Via::Udp, MUTABLE, RecordType::A).await,
        &[&format!("{MUTABLE} A 10.96.9.1")],
    );
    s.write(
        "svc.yaml",
        &cluster_ip_service("upd", "mutable", "10.96.9.2"),
    );
    let want = format!("{MUTABLE} A 10.96.9.2");
    s.poll_until(Via::Udp, MUTABLE, RecordType::A, |m| {
        rrs(&m.answers) == [want.clone()]
    })
    .await;
    assert_answers(&s.q(Via::Tcp, MUTABLE, RecordType::A).await, &[&want]);
    // And the PTR moved with it.
    assert_nxdomain_or_forwarded(&s.q(Via::Udp, &reverse("10.96.9.1"), RecordType::PTR).await);
    let ptr = reverse("10.96.9.2");
    assert_answers(
        &s.q(Via::Udp, &ptr, RecordType::PTR).await,
        &[&format!("{ptr} PTR {MUTABLE}")],
    );
}

/// A reverse name the cluster does not know goes upstream (CoreDNS `fallthrough`): the fake
/// upstream answers NXDOMAIN, not authoritatively.
fn assert_nxdomain_or_forwarded(m: &hickory_proto::op::Message) {
    assert_eq!(m.response_code, ResponseCode::NXDomain, "{}", describe(m));
    assert!(m.answers.is_empty());
}

// A deleted Service stops resolving: NXDOMAIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_deleted_service_becomes_nxdomain() {
    let s = Start::new()
        .file("ns.yaml", &upd_ns())
        .file("keep.yaml", &cluster_ip_service("upd", "keep", "10.96.9.3"))
        .file(
            "svc.yaml",
            &cluster_ip_service("upd", "mutable", "10.96.9.1"),
        )
        .start()
        .await;
    assert_answers(
        &s.q(Via::Tcp, MUTABLE, RecordType::A).await,
        &[&format!("{MUTABLE} A 10.96.9.1")],
    );
    s.remove("svc.yaml");
    s.poll_until(Via::Udp, MUTABLE, RecordType::A, |m| {
        m.response_code == ResponseCode::NXDomain
    })
    .await;
    for via in BOTH {
        assert_nxdomain(&s.q(via, MUTABLE, RecordType::A).await);
        // The namespace still has a Service: NODATA.
        assert_nodata(&s.q(via, "upd.svc.cluster.local.", RecordType::A).await);
    }
}

fn headless_with(endpoints: &[&str]) -> String {
    let mut yaml = String::from(
        r#"apiVersion: v1
kind: Service
metadata:
  name: grow
  namespace: upd
spec:
  clusterIP: None
  ports:
  - name: http
    port: 80
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: grow-1
  namespace: upd
  labels:
    kubernetes.io/service-name: grow
addressType: IPv4
ports:
- name: http
  protocol: TCP
  port: 80
endpoints:
"#,
    );
    for ip in endpoints {
        yaml.push_str(&format!(
            "- addresses: [{ip}]\n  conditions: {{ready: true}}\n"
        ));
    }
    yaml
}

// An added endpoint is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_added_endpoint_is_served() {
    let name = "grow.upd.svc.cluster.local.";
    let s = Start::new()
        .file("ns.yaml", &upd_ns())
        .file("grow.yaml", &headless_with(&["10.244.7.1"]))
        .start()
        .await;
    assert_answers(
        &s.q(Via::Udp, name, RecordType::A).await,
        &[&format!("{name} A 10.244.7.1")],
    );
    s.write("grow.yaml", &headless_with(&["10.244.7.1", "10.244.7.2"]));
    s.poll_until(Via::Udp, name, RecordType::A, |m| m.answers.len() == 2)
        .await;
    for via in BOTH {
        assert_answers(
            &s.q(via, name, RecordType::A).await,
            &[
                &format!("{name} A 10.244.7.1"),
                &format!("{name} A 10.244.7.2"),
            ],
        );
    }
}

// A document made invalid is skipped: its object keeps its last good version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_invalid_document_keeps_last_good_answer() {
    let s = Start::new()
        .file("ns.yaml", &upd_ns())
        .file(
            "svc.yaml",
            &cluster_ip_service("upd", "mutable", "10.96.9.1"),
        )
        .start()
        .await;
    let good = format!("{MUTABLE} A 10.96.9.1");
    assert_answers(&s.q(Via::Udp, MUTABLE, RecordType::A).await, &[&good]);
    // Same file: the Service becomes invalid, and a marker Service appears (so we can tell when
    // the edit has been processed).
    let edited = format!(
        "{}---\n{}",
        cluster_ip_service("upd", "mutable", "10.96.9.999"),
        cluster_ip_service("upd", "marker", "10.96.9.50")
    );
    s.write("svc.yaml", &edited);
    let marker = "marker.upd.svc.cluster.local.";
    s.poll_until(Via::Udp, marker, RecordType::A, |m| m.answers.len() == 1)
        .await;
    for via in BOTH {
        assert_answers(&s.q(via, MUTABLE, RecordType::A).await, &[&good]);
    }
}

// ---- Before the first sync --------------------------------------------------------------------

// Spec-less but essential (CoreDNS answers SERVFAIL until its caches sync): before the first
// complete list, "no such name" would be cached by clients as a lie, so the zone is SERVFAIL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_before_first_sync() {
    let view = Arc::new(ArcSwap::from_pointee(View::default()));
    assert!(!view.load().synced);
    let handler = Arc::new(Handler {
        view,
        resolve: ResolveConfig {
            zone: Name::from_dotted("cluster.local").unwrap(),
            ttl: 5,
            pods: PodsMode::Disabled,
        },
        forwarder: None,
    });
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let sockets = udp::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let addr = sockets[0].local_addr().unwrap();
    let metrics = svcplane_dns::metrics::DnsMetrics::default();
    udp::spawn(
        sockets,
        handler.clone(),
        metrics.clone(),
        tokio::runtime::Handle::current(),
        shutdown.clone(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(tcp::serve(
        listener,
        handler,
        metrics,
        tcp::TcpConfig::default(),
        shutdown.clone(),
    ));
    for via in BOTH {
        for name in [WEB, "cluster.local.", "nope.svc.cluster.local."] {
            let m = ask(via, addr, &query(name, RecordType::A)).await;
            assert_eq!(
                m.response_code,
                ResponseCode::ServFail,
                "{name}\n{}",
                describe(&m)
            );
            assert!(m.answers.is_empty());
        }
    }
}
