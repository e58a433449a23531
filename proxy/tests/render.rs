//! Golden tests of the rendered ruleset, and the planner's central promise: applying an
//! incremental transaction to the kernel gives exactly the table a full render would.
//!
//! Golden files live in `proxy/tests/golden/`; `SVCPLANE_UPDATE_GOLDEN=1 cargo test -p
//! svcplane-proxy --test render` rewrites them (review the diff). The kernel tests load rules
//! only into network namespaces they create and always delete.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;

use clap::Parser;
use svcplane_common::catalog::Store;
use svcplane_common::model::{
    Endpoint, EndpointPort, EndpointSlice, Family, Kind, Object, ObjectKey, Protocol, Service,
    ServicePort, TargetPort,
};
use svcplane_common::source::SourceEvent;
use svcplane_proxy::app::{self, Args};
use svcplane_proxy::desired::service::contribution;
use svcplane_proxy::desired::{NodePortAddresses, ProxyConfig, base_table};
use svcplane_proxy::endpoints::NodeInfo;
use svcplane_proxy::plan::{Change, Programmed};
use svcplane_proxy::ruleset::NftFamily;

fn root() -> bool {
    // SAFETY-free check: /proc/self/status Uid line.
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
        let name = format!("svp-rt-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip")
            .success();
        assert!(ok, "ip netns add {name}");
        Ns(name)
    }

    fn nft(&self, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0, "nft"]).args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("nft");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write");
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    fn apply(&self, script: &str) {
        self.nft(&["-f", "-"], Some(script));
    }
}

fn strip(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("handle");
            for (k, child) in map.iter_mut() {
                strip(child);
                if let (true, Some(a)) = (k == "elem", child.as_array_mut()) {
                    a.sort_by_key(|e| e.to_string());
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

const FLAGS: [&str; 10] = [
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

async fn render(manifests: &str) -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let path = format!("{dir}/{manifests}");
    let mut argv = vec!["svcplane-proxy", "render", "--manifests", &path];
    argv.extend(FLAGS);
    app::render(&Args::parse_from(argv)).await.expect("render")
}

fn golden(name: &str, actual: &str) {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("SVCPLANE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{name} differs from the golden file; rerun with SVCPLANE_UPDATE_GOLDEN=1 and review:\n{actual}"
    );
}

#[tokio::test]
async fn golden_features() {
    let script = render("tests/fixtures/features.yaml").await;
    golden("features.nft", &script);
    if root() {
        Ns::new("feat").apply(&script);
    }
}

#[tokio::test]
async fn golden_seed_example() {
    let script = render("../deploy/examples").await;
    golden("myapp-prod.nft", &script);
    if root() {
        Ns::new("seed").apply(&script);
    }
}

fn config() -> ProxyConfig {
    ProxyConfig {
        node: NodeInfo::new("node-a", None),
        cluster_cidrs: vec![svcplane_common::config::parse_prefix("10.244.0.0/16").expect("cidr")],
        service_cidrs: vec![],
        nodeport_addresses: NodePortAddresses::All,
        masquerade_all: false,
        proxy_name: None,
    }
}

fn service(name: &str, ip: &str, affinity: bool) -> Object {
    let mut s = Service::new(ObjectKey::new("ns", name), vec![ip.parse().expect("ip")]);
    s.ports = vec![ServicePort {
        name: "p".into(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: TargetPort::Number(8080),
        node_port: None,
    }]
    .into();
    s.affinity_timeout = affinity.then_some(30);
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
            .map(|ip| Endpoint::new(ip.parse().expect("ip")))
            .collect(),
    }))
}

fn contributions(
    store: &mut Store,
    config: &ProxyConfig,
) -> (
    u64,
    HashMap<ObjectKey, Arc<svcplane_proxy::desired::service::Contribution>>,
    Arc<svcplane_common::catalog::Snapshot>,
) {
    let snap = store.snapshot().expect("snapshot");
    let map = snap
        .services
        .iter()
        .map(|(k, s)| {
            let eps = snap.endpoints.get(k).map(|e| &e[..]).unwrap_or(&[]);
            (
                k.clone(),
                Arc::new(contribution(s, eps, config, NftFamily::Ip)),
            )
        })
        .collect();
    (snap.generation, map, snap)
}

/// Full(A) + update(A→B) in the kernel equals full(B) in the kernel.
#[tokio::test]
async fn incremental_update_equals_full_render() {
    if !root() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let config = config();
    let mut store = Store::default();
    let initial = vec![
        (
            Kind::Service,
            vec![
                service("a", "10.96.0.1", false),
                service("b", "10.96.0.2", true),
                service("c", "10.96.0.3", false),
            ],
        ),
        (
            Kind::EndpointSlice,
            vec![
                slice("a", &["10.244.0.1", "10.244.0.2"]),
                slice("b", &["10.244.0.3", "10.244.0.4"]),
                slice("c", &["10.244.0.5"]),
            ],
        ),
    ];
    for (kind, objects) in initial {
        store.apply(SourceEvent::Replace { kind, objects });
    }
    let (_, before, _) = contributions(&mut store, &config);
    let base = base_table(&config, NftFamily::Ip);
    let (mut programmed, full_a) = Programmed::full(base.clone(), before.clone());

    // Changes: a gains an endpoint (n2 → n3), b (affinity) loses one, c is deleted, d is new.
    store.apply(SourceEvent::Apply(slice(
        "a",
        &["10.244.0.1", "10.244.0.2", "10.244.0.9"],
    )));
    store.apply(SourceEvent::Apply(slice("b", &["10.244.0.3"])));
    store.apply(SourceEvent::Delete(svcplane_common::model::ObjectRef {
        kind: Kind::Service,
        key: ObjectKey::new("ns", "c"),
    }));
    store.apply(SourceEvent::Apply(service("d", "10.96.0.4", false)));
    store.apply(SourceEvent::Apply(slice("d", &["10.244.0.7"])));
    let (_, after, snap) = contributions(&mut store, &config);
    let changes = ["a", "b", "c", "d"]
        .iter()
        .map(|n| {
            let key = ObjectKey::new("ns", n);
            let new = snap
                .services
                .contains_key(&key)
                .then(|| after[&key].clone());
            let old = before.get(&key).cloned();
            Change { key, old, new }
        })
        .collect();
    let update = programmed.update(changes).script.expect("an update");
    assert!(
        !update.contains("delete table"),
        "incremental, not a replacement:\n{update}"
    );

    let incremental = Ns::new("inc");
    incremental.apply(&full_a);
    incremental.apply(&update);
    let full = Ns::new("full");
    full.apply(&Programmed::full(base, after).1);
    // Compare only the ip table (the ip6 one is absent in both namespaces here).
    let a = incremental.table_ip();
    let b = full.table_ip();
    let only_a: Vec<&String> = a.iter().filter(|x| !b.contains(x)).collect();
    let only_b: Vec<&String> = b.iter().filter(|x| !a.contains(x)).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "incremental transaction:\n{update}\nonly after the update: {only_a:#?}\nonly in the full render: {only_b:#?}"
    );
}

impl Ns {
    fn table_ip(&self) -> Vec<String> {
        let json = self.nft(&["-j", "list", "table", "ip", "svcplane"], None);
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        let mut out: Vec<String> = value["nftables"]
            .as_array()
            .expect("array")
            .iter()
            .map(|item| {
                let mut item = item.clone();
                strip(&mut item);
                item.to_string()
            })
            .collect();
        out.sort();
        out
    }
}

/// Two Services selecting the same pods share `hairpin` elements: deleting one Service must keep
/// the pairs the other still needs, and deleting both must remove them (kernel-checked).
#[tokio::test]
async fn shared_hairpin_elements_survive_one_owner() {
    if !root() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let config = config();
    let mut store = Store::default();
    let mut slice_b = slice("b", &["10.244.0.1", "10.244.0.2"]);
    if let Object::EndpointSlice(s) = &mut slice_b {
        Arc::make_mut(s).key = ObjectKey::new("ns", "b-1");
    }
    store.apply(SourceEvent::Replace {
        kind: Kind::Service,
        objects: vec![
            service("a", "10.96.0.1", false),
            service("b", "10.96.0.2", false),
        ],
    });
    store.apply(SourceEvent::Replace {
        kind: Kind::EndpointSlice,
        objects: vec![slice("a", &["10.244.0.1", "10.244.0.2"]), slice_b],
    });
    let (_, before, _) = contributions(&mut store, &config);
    let base = base_table(&config, NftFamily::Ip);
    let (mut programmed, full) = Programmed::full(base.clone(), before.clone());
    let ns = Ns::new("hairpin");
    ns.apply(&full);
    let hairpin = |ns: &Ns| ns.nft(&["list", "set", "ip", "svcplane", "hairpin"], None);
    let a = ObjectKey::new("ns", "a");
    let b = ObjectKey::new("ns", "b");
    let gone = |key: ObjectKey| Change {
        old: before.get(&key).cloned(),
        key,
        new: None,
    };
    let update = programmed.update(vec![gone(a)]).script.expect("a goes");
    ns.apply(&update);
    assert!(
        hairpin(&ns).contains("10.244.0.1 . 10.244.0.1"),
        "b still needs it:\n{update}"
    );
    let update = programmed.update(vec![gone(b)]).script.expect("b goes");
    ns.apply(&update);
    assert!(
        !hairpin(&ns).contains("10.244.0.1"),
        "nobody needs it:\n{update}"
    );
}

/// The catalog of `n` Services `s0…`, each with two endpoints of its own.
fn many(n: usize, first: usize) -> Vec<(Kind, Vec<Object>)> {
    let ip = |base: u32, i: usize| std::net::Ipv4Addr::from(base + i as u32).to_string();
    let (services, slices) = (first..first + n)
        .map(|i| {
            let name = format!("s{i}");
            let cluster_ip = ip(0x0a60_0001, i);
            let eps = [ip(0x0af4_0001, 2 * i), ip(0x0af4_0001, 2 * i + 1)];
            let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
            (service(&name, &cluster_ip, false), slice(&name, &eps))
        })
        .unzip();
    vec![(Kind::Service, services), (Kind::EndpointSlice, slices)]
}

/// Large sets are declared with a size (twice their elements, a power of two), the kernel
/// accepts it, and an update that would outgrow it asks for a full render.
#[tokio::test]
async fn large_sets_are_sized_and_outgrowing_them_renders_in_full() {
    let config = config();
    let mut store = Store::default();
    for (kind, objects) in many(2100, 0) {
        store.apply(SourceEvent::Replace { kind, objects });
    }
    let (_, before, _) = contributions(&mut store, &config);
    let base = base_table(&config, NftFamily::Ip);
    let (mut programmed, full) = Programmed::full(base, before.clone());
    // 4200 hairpin pairs and eps-n2 elements: sized; 2100 fe elements: not.
    for set in ["set hairpin", "map eps-n2"] {
        let block = &full[full.find(set).expect(set)..];
        let block = &block[..block.find('}').expect("block end")];
        assert!(block.contains("\t\tsize 16384\n"), "{block}");
    }
    let fe = &full[full.find("map fe {").expect("fe")..];
    assert!(!fe[..fe.find('}').expect("end")].contains("size"));
    assert_eq!(programmed.fe_elements(), 2100);
    if root() {
        Ns::new("sized").apply(&full);
    }

    // 6100 more Services: 16400 hairpin pairs > 16384.
    for (_, objects) in many(6100, 2100) {
        for o in objects {
            store.apply(SourceEvent::Apply(o));
        }
    }
    let (_, after, _) = contributions(&mut store, &config);
    let changes = after
        .iter()
        .filter(|(k, _)| !before.contains_key(*k))
        .map(|(k, c)| Change {
            key: k.clone(),
            old: None,
            new: Some(c.clone()),
        })
        .collect();
    assert!(programmed.update(changes).full);
}
