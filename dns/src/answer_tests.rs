//! Unit tests of the resolver: every rule of `answer.rs` against a catalog built in memory.

use std::net::IpAddr;
use std::sync::Arc;

use svcplane_common::catalog::Store;
use svcplane_common::model::*;
use svcplane_common::source::SourceEvent;

use super::*;
use crate::view::{ViewBuilder, ViewConfig};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

fn port(name: &str, number: u16) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol: Protocol::Tcp,
        port: number,
        target_port: TargetPort::Number(number),
        node_port: None,
    }
}

fn service(ns: &str, name: &str, ips: &[&str], ports: Vec<ServicePort>) -> Service {
    let mut s = Service::new(
        ObjectKey::new(ns, name),
        ips.iter().map(|s| ip(s)).collect(),
    );
    s.ports = ports.into();
    s
}

fn endpoint(addr: &str, hostname: Option<&str>, ready: bool) -> Endpoint {
    let mut e = Endpoint::new(ip(addr));
    e.hostname = hostname.map(Into::into);
    e.ready = ready;
    e.serving = ready;
    e
}

fn slice(ns: &str, svc: &str, ports: &[(&str, u16)], endpoints: Vec<Endpoint>) -> EndpointSlice {
    EndpointSlice {
        key: ObjectKey::new(ns, &format!("{svc}-abc")),
        service_name: Some(svc.into()),
        family: Family::of(&endpoints[0].ip),
        ports: ports
            .iter()
            .map(|(n, p)| EndpointPort {
                name: (*n).into(),
                protocol: Protocol::Tcp,
                port: *p,
            })
            .collect(),
        endpoints,
    }
}

struct Fixture {
    view: View,
    cfg: ResolveConfig,
}

fn fixture(pods: PodsMode) -> Fixture {
    let mut store = Store::default();
    let mut ext = service("prod", "ext", &[], vec![]);
    ext.service_type = ServiceType::ExternalName;
    ext.headless = false;
    ext.external_name = Some("example.org".into());
    let mut alias = ext.clone();
    alias.key = ObjectKey::new("prod", "alias");
    alias.external_name = Some("web.prod.svc.cluster.local".into());
    let mut notready = service("prod", "notready", &[], vec![port("pg", 5432)]);
    notready.publish_not_ready_addresses = false;
    let services = vec![
        service(
            "prod",
            "web",
            &["10.96.0.10", "fd00::10"],
            vec![port("http", 80), port("", 81)],
        ),
        service("prod", "db", &[], vec![port("pg", 5432)]),
        notready,
        ext,
        alias,
        service(
            "kube-system",
            "kube-dns",
            &["10.96.0.53"],
            vec![port("dns", 53)],
        ),
    ];
    let slices = vec![
        slice(
            "prod",
            "web",
            &[("http", 8080)],
            vec![endpoint("10.1.0.1", Some("web-a"), true)],
        ),
        slice(
            "prod",
            "db",
            &[("pg", 15432)],
            vec![
                endpoint("10.1.0.2", Some("db-0"), true),
                endpoint("10.1.0.3", None, true),
                endpoint("10.1.0.4", Some("db-2"), false),
            ],
        ),
        slice(
            "prod",
            "notready",
            &[("pg", 5432)],
            vec![endpoint("10.1.0.9", None, false)],
        ),
    ];
    let pod = Pod {
        key: ObjectKey::new("prod", "p"),
        ips: vec![ip("10.1.0.2")],
        node_name: None,
        labels: vec![],
        host_network: false,
    };
    let events = [
        (
            Kind::Service,
            services
                .into_iter()
                .map(|s| Object::Service(Arc::new(s)))
                .collect::<Vec<_>>(),
        ),
        (
            Kind::EndpointSlice,
            slices
                .into_iter()
                .map(|s| Object::EndpointSlice(Arc::new(s)))
                .collect(),
        ),
        (Kind::Pod, vec![Object::Pod(Arc::new(pod))]),
    ];
    for (kind, objects) in events {
        store.apply(SourceEvent::Replace { kind, objects });
    }
    store.apply(SourceEvent::Synced);
    let snapshot = store.snapshot().expect("snapshot");
    let zone = Name::from_dotted("cluster.local").expect("zone");
    let mut builder = ViewBuilder::new(ViewConfig { zone: zone.clone() });
    let view = (*builder.update(snapshot)).clone();
    Fixture {
        view,
        cfg: ResolveConfig { zone, ttl: 5, pods },
    }
}

fn ask(f: &Fixture, name: &str, qtype: u16) -> Answer {
    let n = Name::from_dotted(name).expect("name");
    let q = QName::parse(n.wire()).expect("qname");
    match resolve(&f.view, &f.cfg, Question { name: &q, qtype }) {
        Outcome::Answer(a) => a,
        Outcome::Forward => panic!("{name} was forwarded"),
    }
}

fn data(a: &Answer) -> Vec<RData> {
    a.answer.iter().map(|r| r.data.clone()).collect()
}

fn nodata(a: &Answer) -> bool {
    a.rcode == Rcode::NoError && a.answer.is_empty() && a.authority.len() == 1
}

fn nxdomain(a: &Answer) -> bool {
    a.rcode == Rcode::NxDomain && a.answer.is_empty() && a.authority.len() == 1
}

fn n(text: &str) -> Name {
    Name::from_dotted(text).expect("name")
}

#[test]
fn dns_version_txt() {
    let f = fixture(PodsMode::Disabled);
    let a = ask(&f, "dns-version.cluster.local", TYPE_TXT);
    assert_eq!(data(&a), vec![RData::Txt("1.1.0".into())]);
    assert!(a.authoritative);
}

#[test]
fn cluster_ip_a_and_aaaa() {
    let f = fixture(PodsMode::Disabled);
    let a = ask(&f, "web.prod.svc.cluster.local", TYPE_A);
    assert_eq!(data(&a), vec![RData::A("10.96.0.10".parse().expect("ip"))]);
    let aaaa = ask(&f, "web.prod.svc.cluster.local", TYPE_AAAA);
    assert_eq!(
        data(&aaaa),
        vec![RData::Aaaa("fd00::10".parse().expect("ip"))]
    );
    assert!(nodata(&ask(
        &f,
        "kube-dns.kube-system.svc.cluster.local",
        TYPE_AAAA
    )));
}

#[test]
fn cluster_ip_srv_for_named_port() {
    let f = fixture(PodsMode::Disabled);
    let a = ask(&f, "_http._tcp.web.prod.svc.cluster.local", TYPE_SRV);
    let target = n("web.prod.svc.cluster.local");
    assert_eq!(
        data(&a),
        vec![RData::Srv {
            priority: 0,
            weight: 100,
            port: 80,
            target: target.clone()
        }]
    );
    assert_eq!(a.additional.len(), 2, "A and AAAA of the target");
    assert!(nodata(&ask(&f, "_tcp.web.prod.svc.cluster.local", TYPE_A)));
    assert!(nxdomain(&ask(
        &f,
        "_udp.web.prod.svc.cluster.local",
        TYPE_A
    )));
    assert!(nxdomain(&ask(
        &f,
        "_nope._tcp.web.prod.svc.cluster.local",
        TYPE_SRV
    )));
}

#[test]
fn bare_service_srv_lists_every_port() {
    let f = fixture(PodsMode::Disabled);
    let a = ask(&f, "web.prod.svc.cluster.local", TYPE_SRV);
    let ports: Vec<u16> = a
        .answer
        .iter()
        .filter_map(|r| match r.data {
            RData::Srv { port, .. } => Some(port),
            _ => None,
        })
        .collect();
    assert_eq!(ports, vec![80, 81]);
}

#[test]
fn headless_answers_ready_endpoints_only() {
    let f = fixture(PodsMode::Disabled);
    let a = ask(&f, "db.prod.svc.cluster.local", TYPE_A);
    let mut ips: Vec<String> = a.answer.iter().map(|r| format!("{:?}", r.data)).collect();
    ips.sort();
    assert_eq!(ips, vec!["A(10.1.0.2)", "A(10.1.0.3)"]);
    assert!(nxdomain(&ask(
        &f,
        "notready.prod.svc.cluster.local",
        TYPE_A
    )));
}

#[test]
fn headless_hostnames_and_dashed_names() {
    let f = fixture(PodsMode::Disabled);
    let a = ask(&f, "db-0.db.prod.svc.cluster.local", TYPE_A);
    assert_eq!(data(&a), vec![RData::A("10.1.0.2".parse().expect("ip"))]);
    let a = ask(&f, "10-1-0-3.db.prod.svc.cluster.local", TYPE_A);
    assert_eq!(data(&a), vec![RData::A("10.1.0.3".parse().expect("ip"))]);
    assert!(
        nxdomain(&ask(&f, "db-2.db.prod.svc.cluster.local", TYPE_A)),
        "not ready"
    );
    assert!(
        nxdomain(&ask(&f, "10-1-0-2.db.prod.svc.cluster.local", TYPE_A)),
        "has a hostname"
    );
}

#[test]
fn headless_srv_per_endpoint() {
    let f = fixture(PodsMode::Disabled);
    let a = ask(&f, "_pg._tcp.db.prod.svc.cluster.local", TYPE_SRV);
    let mut got: Vec<(u16, String)> = a
        .answer
        .iter()
        .filter_map(|r| match &r.data {
            RData::Srv { port, target, .. } => Some((*port, target.to_dotted())),
            _ => None,
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (15432, "10-1-0-3.db.prod.svc.cluster.local.".to_string()),
            (15432, "db-0.db.prod.svc.cluster.local.".to_string()),
        ]
    );
    assert_eq!(a.additional.len(), 2);
}

#[test]
fn endpoint_hostname_under_cluster_ip_service_as_coredns() {
    let f = fixture(PodsMode::Disabled);
    let a = ask(&f, "web-a.web.prod.svc.cluster.local", TYPE_A);
    assert_eq!(data(&a), vec![RData::A("10.1.0.1".parse().expect("ip"))]);
}

fn ptr(f: &Fixture, addr: &str) -> Outcome {
    let ip: IpAddr = addr.parse().expect("ip");
    let text = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let hex: String = v6.octets().iter().map(|b| format!("{b:02x}")).collect();
            let nibbles: Vec<String> = hex.chars().rev().map(String::from).collect();
            format!("{}.ip6.arpa", nibbles.join("."))
        }
    };
    let name = n(&text);
    let q = QName::parse(name.wire()).expect("qname");
    resolve(
        &f.view,
        &f.cfg,
        Question {
            name: &q,
            qtype: TYPE_PTR,
        },
    )
}

#[test]
fn ptr_for_cluster_ips_and_endpoints() {
    let f = fixture(PodsMode::Disabled);
    let expect = |addr: &str, target: &str| match ptr(&f, addr) {
        Outcome::Answer(a) => assert_eq!(data(&a), vec![RData::Ptr(n(target))], "{addr}"),
        Outcome::Forward => panic!("{addr} forwarded"),
    };
    expect("10.96.0.10", "web.prod.svc.cluster.local");
    expect("fd00::10", "web.prod.svc.cluster.local");
    expect("10.1.0.2", "db-0.db.prod.svc.cluster.local");
    expect("10.1.0.3", "10-1-0-3.db.prod.svc.cluster.local");
    expect("10.1.0.1", "web-a.web.prod.svc.cluster.local");
    assert_eq!(
        ptr(&f, "192.0.2.1"),
        Outcome::Forward,
        "unknown addresses fall through"
    );
}

#[test]
fn external_name_cname_and_chase() {
    let f = fixture(PodsMode::Disabled);
    let a = ask(&f, "ext.prod.svc.cluster.local", TYPE_A);
    assert_eq!(data(&a), vec![RData::Cname(n("example.org"))]);
    assert_eq!(a.chase, Some(n("example.org")));
    let a = ask(&f, "alias.prod.svc.cluster.local", TYPE_A);
    assert_eq!(
        data(&a),
        vec![
            RData::Cname(n("web.prod.svc.cluster.local")),
            RData::A("10.96.0.10".parse().expect("ip"))
        ]
    );
    assert_eq!(
        a.answer[1].owner,
        Owner::Name(n("web.prod.svc.cluster.local"))
    );
    assert_eq!(a.chase, None);
}

#[test]
fn empty_non_terminals_are_nodata() {
    let f = fixture(PodsMode::Disabled);
    assert!(nodata(&ask(&f, "svc.cluster.local", TYPE_A)));
    assert!(nodata(&ask(&f, "prod.svc.cluster.local", TYPE_A)));
    assert!(nxdomain(&ask(&f, "nope.svc.cluster.local", TYPE_A)));
    assert!(nxdomain(&ask(&f, "nope.prod.svc.cluster.local", TYPE_A)));
    assert!(
        nxdomain(&ask(&f, "*.prod.svc.cluster.local", TYPE_A)),
        "no wildcards"
    );
    assert!(nxdomain(&ask(&f, "a.b.web.prod.svc.cluster.local", TYPE_A)));
    assert!(nxdomain(&ask(&f, "other.cluster.local", TYPE_A)));
}

#[test]
fn apex_has_soa_and_ns() {
    let f = fixture(PodsMode::Disabled);
    let soa = ask(&f, "cluster.local", TYPE_SOA);
    assert!(matches!(soa.answer[0].data, RData::Soa(_)));
    let ns = ask(&f, "cluster.local", TYPE_NS);
    assert_eq!(data(&ns), vec![RData::Ns(n("ns.dns.cluster.local"))]);
    assert_eq!(ns.additional.len(), 1, "address of kube-dns");
    let a = ask(&f, "ns.dns.cluster.local", TYPE_A);
    assert_eq!(data(&a), vec![RData::A("10.96.0.53".parse().expect("ip"))]);
}

#[test]
fn negative_answers_carry_the_soa_with_minimum_ttl() {
    let f = fixture(PodsMode::Disabled);
    let a = ask(&f, "nope.prod.svc.cluster.local", TYPE_A);
    let RData::Soa(soa) = &a.authority[0].data else {
        panic!("no SOA");
    };
    assert_eq!(soa.minimum, 5);
    assert_eq!(a.authority[0].owner, Owner::Name(n("cluster.local")));
}

#[test]
fn pods_modes() {
    let name = "10-1-0-2.prod.pod.cluster.local";
    assert!(nxdomain(&ask(&fixture(PodsMode::Disabled), name, TYPE_A)));
    let insecure = fixture(PodsMode::Insecure);
    assert_eq!(
        data(&ask(&insecure, "1-2-3-4.any.pod.cluster.local", TYPE_A)),
        vec![RData::A("1.2.3.4".parse().expect("ip"))]
    );
    let verified = fixture(PodsMode::Verified);
    assert_eq!(
        data(&ask(&verified, name, TYPE_A)),
        vec![RData::A("10.1.0.2".parse().expect("ip"))]
    );
    assert!(nxdomain(&ask(
        &verified,
        "1-2-3-4.prod.pod.cluster.local",
        TYPE_A
    )));
    assert!(nxdomain(&ask(
        &verified,
        "10-1-0-2.other.pod.cluster.local",
        TYPE_A
    )));
}

#[test]
fn names_outside_the_zone_are_forwarded() {
    let f = fixture(PodsMode::Disabled);
    let name = n("example.org");
    let q = QName::parse(name.wire()).expect("qname");
    assert_eq!(
        resolve(
            &f.view,
            &f.cfg,
            Question {
                name: &q,
                qtype: TYPE_A
            }
        ),
        Outcome::Forward
    );
}

#[test]
fn unsynced_view_is_servfail() {
    let mut f = fixture(PodsMode::Disabled);
    f.view.synced = false;
    assert_eq!(
        ask(&f, "web.prod.svc.cluster.local", TYPE_A).rcode,
        Rcode::ServFail
    );
}
