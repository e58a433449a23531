//! The iptables backend's rendered rules: golden files, agreement with the nftables backend on
//! everything that is not syntax, and the planner's promises checked in the kernel — an
//! incremental restore gives exactly what a full restore gives, a full restore adopts whatever
//! an earlier run left (stale chains, duplicated jumps) without touching anyone else's rules,
//! and cleanup removes all of svcplane and nothing else.
//!
//! Golden files live in `proxy/tests/golden/*.iptables`; `SVCPLANE_UPDATE_GOLDEN=1 cargo test
//! -p svcplane-proxy --test render_iptables` rewrites them (review the diff). The kernel tests
//! program rules only in network namespaces they create and always delete.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use clap::Parser;
use svcplane_common::catalog::{Snapshot, Store};
use svcplane_common::model::{
    Endpoint, EndpointPort, EndpointSlice, Family, IpMode, Kind, LbIngress, Object, ObjectKey,
    ObjectRef, Protocol, Service, ServicePort, ServiceType, TargetPort, TrafficPolicy,
};
use svcplane_common::source::SourceEvent;
use svcplane_proxy::app::{self, Args};
use svcplane_proxy::desired::service::contribution;
use svcplane_proxy::desired::{NodePortAddresses, ProxyConfig};
use svcplane_proxy::endpoints::NodeInfo;
use svcplane_proxy::iptables::engine::render_all;
use svcplane_proxy::iptables::plan::{KernelState, Programmed, cleanup_input};
use svcplane_proxy::iptables::render::{Base, service};
use svcplane_proxy::iptables::{Table, tools};
use svcplane_proxy::ruleset::NftFamily;

fn root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A network namespace removed on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("svp-ipt-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        Ns(name)
    }

    /// Runs `argv` in the namespace; its stdout (panics on failure).
    fn run(&self, argv: &[&str], stdin: Option<&str>) -> String {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(stdin.unwrap_or_default().as_bytes())
            .unwrap();
        drop(pipe);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{argv:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            stdin.unwrap_or_default()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn restore(&self, family: Family, input: &str) {
        let (_, restore, _) = tools(family);
        self.run(&[restore, "-w", "5", "--noflush"], Some(input));
    }

    fn save(&self, family: Family, table: Table) -> String {
        let (_, _, save) = tools(family);
        self.run(&[save, "-t", table.name()], None)
    }

    fn kernel(&self, family: Family) -> KernelState {
        let mut k = KernelState::default();
        for table in Table::ALL {
            k.parse(table, &self.save(family, table));
        }
        k
    }

    /// Every table's rules as `iptables-save` prints them, without comments lines and
    /// counters, chains sorted (rule order within a chain is kept: it matters).
    fn normalised(&self, family: Family) -> Vec<String> {
        let mut out = Vec::new();
        for table in Table::ALL {
            let save = self.save(family, table);
            let mut lines: Vec<String> = save
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| match l.strip_prefix(':') {
                    Some(decl) => format!(":{}", decl.split_whitespace().next().unwrap()),
                    None => l.to_string(),
                })
                .map(|l| format!("{} {l}", table.name()))
                .collect();
            // Stable sort by chain keeps each chain's rule order.
            lines.sort_by_key(|l| chain_of(l).to_string());
            out.extend(lines);
        }
        out
    }
}

fn chain_of(line: &str) -> &str {
    let rest = line.split_once(' ').map_or(line, |(_, r)| r);
    match rest.strip_prefix("-A ") {
        Some(r) => r.split_whitespace().next().unwrap_or_default(),
        None => rest,
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

const FLAGS: [&str; 12] = [
    "--backend",
    "iptables",
    "--node-name",
    "node-a",
    "--cluster-cidr",
    "10.244.0.0/16",
    "--cluster-cidr",
    "fd00:244::/48",
    "--service-cidr",
    "10.96.0.0/16",
    "--service-cidr",
    "fd00:96::/112",
];

/// `render --backend iptables` of `manifests`: the input of each family.
async fn render(manifests: &str) -> Vec<(Family, String)> {
    let path = format!("{}/{manifests}", env!("CARGO_MANIFEST_DIR"));
    let mut argv = vec!["svcplane-proxy", "render", "--manifests", &path];
    argv.extend(FLAGS);
    let text = app::render(&Args::parse_from(argv)).await.unwrap();
    let (v4, v6) = text
        .strip_prefix("# iptables-restore\n")
        .and_then(|t| t.split_once("# ip6tables-restore\n"))
        .expect("both families");
    vec![(Family::V4, v4.to_string()), (Family::V6, v6.to_string())]
}

fn golden(name: &str, actual: &str) {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("SVCPLANE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{name} differs from the golden file; rerun with SVCPLANE_UPDATE_GOLDEN=1 and review:\n{actual}"
    );
}

/// Golden files, then `--test` and a real load in a fresh namespace.
async fn golden_family_files(manifests: &str, stem: &str) {
    let rendered = render(manifests).await;
    for (family, input) in &rendered {
        let tag = if *family == Family::V4 { "v4" } else { "v6" };
        golden(&format!("{stem}-{tag}.iptables"), input);
    }
    if !root() {
        eprintln!("skipped the kernel part: needs root for network namespaces");
        return;
    }
    let ns = Ns::new(stem);
    for (family, input) in &rendered {
        let (_, restore, _) = tools(*family);
        ns.run(&[restore, "-w", "5", "--noflush", "--test"], Some(input));
        ns.restore(*family, input);
        let saved = ns.save(*family, Table::Nat);
        assert!(saved.contains(":SVCPLANE-SERVICES"), "{saved}");
    }
}

#[tokio::test]
async fn golden_features() {
    golden_family_files("tests/fixtures/features.yaml", "features").await;
}

#[tokio::test]
async fn golden_seed_example() {
    golden_family_files("../deploy/examples", "myapp-prod").await;
}

async fn features_snapshot() -> (ProxyConfig, Arc<Snapshot>) {
    let path = format!(
        "{}/tests/fixtures/features.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut argv = vec!["svcplane-proxy", "--manifests", &path];
    argv.extend(FLAGS);
    let args = Args::parse_from(argv);
    let config = args.proxy_config().unwrap();
    let (catalog, publisher) = svcplane_common::catalog::new();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(svcplane_common::catalog::run(rx, publisher));
    let shutdown = tokio_util::sync::CancellationToken::new();
    svcplane_common::source::start(
        &args.manifests,
        None,
        vec![Kind::Service, Kind::EndpointSlice, Kind::Node],
        tx,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let mut generations = catalog.subscribe();
    let snapshot = loop {
        let s = catalog.load();
        if s.synced {
            break s;
        }
        generations.changed().await.unwrap();
    };
    shutdown.cancel();
    (config.resolve(&snapshot), snapshot)
}

/// The two backends agree on everything but syntax: the health-check answers and the UDP
/// flows whose conntrack entries a change makes stale.
#[tokio::test]
async fn agrees_with_the_nftables_backend() {
    let (config, snapshot) = features_snapshot().await;
    for (family, nft) in [(Family::V4, NftFamily::Ip), (Family::V6, NftFamily::Ip6)] {
        let base = Base::new(&config, family);
        for (key, svc) in snapshot.services.iter() {
            let eps = snapshot.endpoints.get(key).map(|e| &e[..]).unwrap_or(&[]);
            let ours = service(svc, eps, &config, &base);
            let theirs = contribution(svc, eps, &config, nft);
            assert_eq!(ours.health, theirs.health, "{key:?} {family:?}");
            assert_eq!(ours.udp, theirs.udp, "{key:?} {family:?}");
            assert_eq!(ours.is_empty(), theirs.elements.is_empty(), "{key:?}");
        }
    }
}

fn config() -> ProxyConfig {
    ProxyConfig {
        node: NodeInfo::new("node-a", None),
        cluster_cidrs: vec![svcplane_common::config::parse_prefix("10.244.0.0/16").unwrap()],
        service_cidrs: vec![svcplane_common::config::parse_prefix("10.96.0.0/16").unwrap()],
        nodeport_addresses: NodePortAddresses::All,
        masquerade_all: false,
        proxy_name: None,
    }
}

fn svc(name: &str, ip: &str, affinity: bool) -> Service {
    let mut s = Service::new(ObjectKey::new("ns", name), vec![ip.parse().unwrap()]);
    s.ports = vec![ServicePort {
        name: "p".into(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: TargetPort::Number(8080),
        node_port: None,
    }]
    .into();
    s.affinity_timeout = affinity.then_some(30);
    s
}

fn object(s: Service) -> Object {
    Object::Service(Arc::new(s))
}

fn slice(name: &str, ips: &[&str]) -> Object {
    Object::EndpointSlice(Arc::new(EndpointSlice {
        key: ObjectKey::new("ns", &format!("{name}-1")),
        service_name: Some(name.into()),
        family: Family::V4,
        ports: Arc::new([EndpointPort {
            name: "p".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        }]),
        endpoints: ips
            .iter()
            .map(|ip| {
                let mut e = Endpoint::new(ip.parse().unwrap());
                e.set_locality(Some("node-a"), None);
                e
            })
            .collect(),
    }))
}

/// A LoadBalancer with source ranges, eTP Local and a NodePort.
fn lb(name: &str, ip: &str, lb_ip: &str, node_port: u16) -> Service {
    let mut s = svc(name, ip, false);
    s.service_type = ServiceType::LoadBalancer;
    let mut ports = s.ports.to_vec();
    ports[0].node_port = Some(node_port);
    s.ports = ports.into();
    s.external_traffic_policy = TrafficPolicy::Local;
    s.lb_ingress = vec![LbIngress {
        ip: lb_ip.parse().unwrap(),
        ip_mode: IpMode::Vip,
    }]
    .into();
    s.lb_source_ranges =
        vec![svcplane_common::config::parse_prefix("203.0.113.0/24").unwrap()].into();
    s
}

fn store_with(objects: Vec<Object>) -> Store {
    let mut store = Store::default();
    let (services, slices): (Vec<Object>, Vec<Object>) = objects
        .into_iter()
        .partition(|o| matches!(o, Object::Service(_)));
    store.apply(SourceEvent::Replace {
        kind: Kind::Service,
        objects: services,
    });
    store.apply(SourceEvent::Replace {
        kind: Kind::EndpointSlice,
        objects: slices,
    });
    store
}

/// The catalog before the change (g never changes).
fn catalog_a() -> Store {
    store_with(vec![
        object(svc("a", "10.96.0.1", false)),
        object(svc("b", "10.96.0.2", true)),
        object(svc("c", "10.96.0.3", false)),
        object(lb("e", "10.96.0.5", "192.0.2.5", 30005)),
        object(svc("f", "10.96.0.6", false)),
        object(svc("g", "10.96.0.7", false)),
        slice("a", &["10.244.0.1", "10.244.0.2"]),
        slice("g", &["10.244.0.10"]),
        slice("b", &["10.244.0.3", "10.244.0.4"]),
        slice("c", &["10.244.0.5"]),
        slice("e", &["10.244.0.6"]),
    ])
}

/// A → B: a gains an endpoint, b (affinity) loses one, c is deleted, d is new, e loses its
/// endpoints (its LB frontend now drops), f gains its first.
fn change_to_b(store: &mut Store) -> Vec<ObjectKey> {
    store.apply(SourceEvent::Apply(slice(
        "a",
        &["10.244.0.1", "10.244.0.2", "10.244.0.9"],
    )));
    store.apply(SourceEvent::Apply(slice("b", &["10.244.0.3"])));
    store.apply(SourceEvent::Delete(ObjectRef {
        kind: Kind::Service,
        key: ObjectKey::new("ns", "c"),
    }));
    store.apply(SourceEvent::Apply(object(svc("d", "10.96.0.4", false))));
    store.apply(SourceEvent::Apply(slice("d", &["10.244.0.7"])));
    store.apply(SourceEvent::Apply(slice("e", &[])));
    store.apply(SourceEvent::Apply(slice("f", &["10.244.0.8"])));
    ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|n| ObjectKey::new("ns", n))
        .collect()
}

fn programmed(store: &mut Store) -> (Programmed, Arc<Snapshot>) {
    let snap = store.snapshot().unwrap();
    (render_all(&config(), &snap, Family::V4), snap)
}

/// Full(A) + update(A→B) in the kernel equals full(B) in the kernel.
#[tokio::test]
async fn incremental_restore_equals_full_restore() {
    if !root() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let mut store = catalog_a();
    let (mut state, _) = programmed(&mut store);
    let full_a = state.full_input(&KernelState::default());
    let keys = change_to_b(&mut store);
    let (b, snap) = programmed(&mut store);
    let base = Base::new(&config(), Family::V4);
    let changes = keys
        .into_iter()
        .map(|key| {
            let rules = snap.services.get(&key).map(|s| {
                let eps = snap.endpoints.get(&key).map(|e| &e[..]).unwrap_or(&[]);
                Arc::new(service(s, eps, &config(), &base))
            });
            (key, rules)
        })
        .collect();
    let update = state.update(changes).input.expect("an update");
    let untouched = &state.services[&ObjectKey::new("ns", "g")];
    for (_, chain) in untouched.chains.keys() {
        assert!(
            !update.contains(chain.as_str()),
            "{chain} is unchanged:\n{update}"
        );
    }

    let incremental = Ns::new("inc");
    incremental.restore(Family::V4, &full_a);
    incremental.restore(Family::V4, &update);
    let full = Ns::new("full");
    full.restore(Family::V4, &b.full_input(&KernelState::default()));
    let (x, y) = (
        incremental.normalised(Family::V4),
        full.normalised(Family::V4),
    );
    let only_x: Vec<&String> = x.iter().filter(|l| !y.contains(l)).collect();
    let only_y: Vec<&String> = y.iter().filter(|l| !x.contains(l)).collect();
    assert!(
        x == y,
        "update:\n{update}\nonly after the update: {only_x:#?}\nonly in the full restore: {only_y:#?}"
    );
    // Nothing left to do: the programmed state matches the kernel's.
    assert_eq!(state.desired(), b.desired());
}

/// A full restore over what another run left — stale chains, a duplicated jump — gives the
/// same kernel state as one into an empty kernel, keeps other tools' rules, and a second one
/// changes nothing about the jumps.
#[tokio::test]
async fn full_restore_adopts_leftovers_and_keeps_foreign_rules() {
    if !root() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let mut store = catalog_a();
    let (a, _) = programmed(&mut store);
    change_to_b(&mut store);
    let (b, _) = programmed(&mut store);
    let ns = Ns::new("adopt");
    let foreign = "*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n\
                   -A KUBE-SERVICES -d 10.0.0.1/32 -j RETURN\nCOMMIT\n";
    ns.restore(Family::V4, foreign);
    ns.restore(Family::V4, &a.full_input(&KernelState::default()));
    ns.restore(
        Family::V4,
        "*nat\n-A PREROUTING -m comment --comment svcplane -j SVCPLANE-SERVICES\nCOMMIT\n",
    );
    ns.restore(Family::V4, &b.full_input(&ns.kernel(Family::V4)));

    let reference = Ns::new("ref");
    reference.restore(Family::V4, foreign);
    reference.restore(Family::V4, &b.full_input(&KernelState::default()));
    assert_eq!(ns.normalised(Family::V4), reference.normalised(Family::V4));
    let nat = ns.save(Family::V4, Table::Nat);
    assert!(
        nat.contains("-A KUBE-SERVICES -d 10.0.0.1/32 -j RETURN"),
        "{nat}"
    );
    let again = b.full_input(&ns.kernel(Family::V4));
    assert!(
        !again.contains("\n-I ") && !again.contains("\n-D ") && !again.contains("\n-X "),
        "{again}"
    );
}

/// Cleanup removes every chain and jump of svcplane, in both families, and nothing else.
#[tokio::test]
async fn cleanup_leaves_only_foreign_rules() {
    if !root() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let mut store = catalog_a();
    let (a, snap) = programmed(&mut store);
    let ns = Ns::new("clean");
    ns.restore(
        Family::V4,
        "*filter\n:FOREIGN - [0:0]\n-A INPUT -j FOREIGN\nCOMMIT\n",
    );
    ns.restore(Family::V4, &a.full_input(&KernelState::default()));
    let v6 = render_all(&config(), &snap, Family::V6);
    ns.restore(Family::V6, &v6.full_input(&KernelState::default()));
    for family in [Family::V4, Family::V6] {
        let kernel = ns.kernel(family);
        assert!(!kernel.is_empty());
        ns.restore(family, &cleanup_input(&kernel).unwrap());
        assert!(ns.kernel(family).is_empty(), "{family:?}");
        for table in Table::ALL {
            let saved = ns.save(family, table);
            assert!(!saved.contains("SVCPLANE"), "{saved}");
        }
    }
    assert!(
        ns.save(Family::V4, Table::Filter)
            .contains("-A INPUT -j FOREIGN")
    );
}

/// Rendering is deterministic and per Service: the same catalog renders the same chains
/// whatever the order Services come in, and a Service's rules do not depend on the others'.
#[test]
fn chains_are_per_service_and_deterministic() {
    let config = config();
    let base = Base::new(&config, Family::V4);
    let a = service(&svc("a", "10.96.0.1", false), &[], &config, &base);
    let b = service(&svc("b", "10.96.0.1", false), &[], &config, &base);
    let names = |r: &svcplane_proxy::iptables::render::ServiceRules| {
        r.chains.keys().cloned().collect::<BTreeSet<_>>()
    };
    assert!(names(&a).is_disjoint(&names(&b)) || names(&a).is_empty());
    let mut services = HashMap::new();
    services.insert(ObjectKey::new("ns", "a"), Arc::new(a.clone()));
    services.insert(ObjectKey::new("ns", "b"), Arc::new(b));
    let one = Programmed::new(base.clone(), services.clone());
    let mut entries: Vec<_> = services.into_iter().collect();
    entries.reverse();
    let two = Programmed::new(base, entries.into_iter().collect());
    assert_eq!(
        one.full_input(&KernelState::default()),
        two.full_input(&KernelState::default())
    );
}
