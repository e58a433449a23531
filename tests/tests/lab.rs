//! svcplane-lab's tests: the pure parts on the seed's manifests (what `up` would ignore, how
//! workloads expand, what Services are assigned, which EndpointSlices the controller would
//! write), then end to end as root with the real binary: the seed's full-stack example plus its
//! NodePort/LoadBalancer Services brought up on three nodes and used through svcplane-proxy and
//! svcplane-dns (load spread over replicas, DNS short names, headless pod names, NodePorts and
//! the LB IP from the external client, readiness, scaling), and `down` leaving nothing behind,
//! also after a crash or a failed `up`.
//!
//! Every end-to-end test uses its own cluster name and a state directory in a tempdir, and
//! runs `down` from a drop guard.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use rand::SeedableRng;
use rand::rngs::StdRng;
use svcplane_tests::lab::alloc::{self, Used};
use svcplane_tests::lab::manifest::{self, Objects};
use svcplane_tests::lab::slices::{self, SlicePod};
use svcplane_tests::lab::state::{Layout, State};
use svcplane_tests::lab::workload::{self, NewPod, Probe, WorkloadKind};
use svcplane_tests::lab::{net, procs, render};
use svcplane_tests::netns::skip_unless_root;

const LAB: &str = env!("CARGO_BIN_EXE_svcplane-lab");
const SEED: &str = "seed-full-stack.yaml";
const SEED_SERVICES: &str = "seed-services.yaml";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn seed_objects() -> Objects {
    let docs = manifest::read_paths(&[fixture(SEED), fixture(SEED_SERVICES)]).unwrap();
    manifest::classify(&docs).unwrap()
}

/// Every pod the seed's workloads expand to.
fn seed_pods(objects: &Objects) -> Vec<NewPod> {
    let nodes: Vec<String> = (0..3).map(|i| format!("node-{i}")).collect();
    let mut rng = StdRng::seed_from_u64(7);
    objects
        .workloads
        .iter()
        .flat_map(|w| workload::reconcile(w, &[], &BTreeSet::new(), &nodes, &mut rng).create)
        .collect()
}

#[test]
fn the_seed_parses_and_ignores_what_the_data_plane_does_not_use() {
    let objects = seed_objects();
    assert_eq!(objects.namespaces, ["myapp-prod"]);
    assert_eq!(
        objects.ignored,
        [
            "ConfigMap myapp-prod/postgres-config",
            "Secret myapp-prod/postgres-secret",
            "Ingress myapp-prod/web-app-ingress"
        ]
    );
    let services: Vec<_> = objects
        .services
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        services,
        [
            "postgres-headless",
            "redis-service",
            "web-app-service",
            "my-app-lb",
            "my-app-nodeport"
        ]
    );
    let workloads: Vec<_> = objects
        .workloads
        .iter()
        .map(|w| (w.kind, w.name.as_str(), w.replicas))
        .collect();
    assert_eq!(
        workloads,
        [
            (WorkloadKind::StatefulSet, "postgres", 1),
            (WorkloadKind::Deployment, "redis", 1),
            (WorkloadKind::Deployment, "web-app", 3)
        ]
    );
    let web = &objects.workloads[2].template;
    assert_eq!(
        web.probes,
        [Probe::Http {
            port: 8080,
            path: "/ready".into()
        }]
    );
    assert_eq!(
        objects.workloads[0].template.probes,
        [Probe::Running],
        "exec probe"
    );
}

#[test]
fn the_seed_workloads_expand_like_the_controllers() {
    let objects = seed_objects();
    let pods = seed_pods(&objects);
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names.len(), 5);
    assert_eq!(names[0], "postgres-0");
    let pg = &pods[0].spec;
    assert_eq!(pg.hostname.as_deref(), Some("postgres-0"));
    assert_eq!(pg.subdomain.as_deref(), Some("postgres-headless"));
    let web_hash = &objects.workloads[2].hash;
    for web in &pods[2..] {
        let prefix = format!("web-app-{web_hash}-");
        assert!(web.name.starts_with(&prefix), "{}", web.name);
        assert_eq!(web.name.len(), prefix.len() + 5);
        assert_eq!(web.spec.labels["pod-template-hash"], *web_hash);
    }
    // A DaemonSet puts one pod on every node.
    let ds = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: agent}\nspec:\n  \
              selector: {matchLabels: {app: agent}}\n  template:\n    metadata: {labels: {app: agent}}\n    \
              spec: {containers: [{name: a, image: x}]}\n";
    let objects = manifest::classify(&manifest::parse_documents("ds.yaml", ds).unwrap()).unwrap();
    let nodes: Vec<String> = seed_pods(&objects)
        .iter()
        .map(|p| p.node.clone().unwrap())
        .collect();
    assert_eq!(nodes, ["node-0", "node-1", "node-2"]);
}

/// The seed's Services after assignment, by name.
fn assigned_services(objects: &Objects) -> BTreeMap<String, core::Service> {
    let mut used = Used::default();
    let mut out = BTreeMap::new();
    for svc in &objects.services {
        let mut svc = svc.clone();
        alloc::assign(&mut svc, None, &mut used).unwrap();
        out.insert(svc.metadata.name.clone().unwrap(), svc);
    }
    out
}

#[test]
fn the_seed_services_get_addresses_like_the_api_server_gives_them() {
    let services = assigned_services(&seed_objects());
    let spec = |name: &str| services[name].spec.clone().unwrap();
    assert_eq!(spec("postgres-headless").cluster_ips.unwrap(), ["None"]);
    let ips: BTreeSet<IpAddr> = services
        .values()
        .flat_map(|s| s.spec.clone().unwrap().cluster_ips.unwrap())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    assert_eq!(ips.len(), 4, "unique ClusterIPs: {ips:?}");
    for ip in &ips {
        assert!(
            ip.to_string().starts_with("10.96.") && ip.to_string() != "10.96.0.10",
            "{ip}"
        );
    }
    let np = spec("my-app-nodeport").ports.unwrap();
    assert_eq!(np[0].node_port, Some(30080));
    let lb = &services["my-app-lb"];
    let lb_port = lb.spec.clone().unwrap().ports.unwrap()[0]
        .node_port
        .unwrap();
    assert!((30000..=32767).contains(&lb_port) && lb_port != 30080);
    let ingress = lb
        .status
        .clone()
        .unwrap()
        .load_balancer
        .unwrap()
        .ingress
        .unwrap();
    assert_eq!(ingress[0].ip.as_deref(), Some("10.250.0.1"));
    // Every assigned Service passes svcplane's API validation.
    for svc in services.values() {
        let value = serde_json::to_value(svc).unwrap();
        svcplane_common::convert::from_json(value).unwrap().unwrap();
    }
}

#[test]
fn the_seed_endpoint_slices_are_what_the_controller_writes() {
    let objects = seed_objects();
    let services = assigned_services(&objects);
    let pods = seed_pods(&objects);
    let ips: Vec<[IpAddr; 2]> = (0..pods.len())
        .map(|i| {
            let (a, b) = net::pod_ips(i % 3, 10 + u32::try_from(i).unwrap());
            [a.into(), b.into()]
        })
        .collect();
    let mut views: Vec<SlicePod<'_>> = pods
        .iter()
        .zip(&ips)
        .enumerate()
        .map(|(i, (p, ips))| SlicePod {
            namespace: &p.namespace,
            name: &p.name,
            spec: &p.spec,
            ips,
            node: ["node-0", "node-1", "node-2"][i % 3],
            zone: Some(["zone-a", "zone-b", "zone-a"][i % 3]),
            ready: true,
            terminating: false,
        })
        .collect();
    let web = slices::endpoint_slices(&services["web-app-service"], &views);
    assert_eq!(web.len(), 1);
    assert_eq!(web[0].endpoints.len(), 3);
    assert_eq!(web[0].ports.clone().unwrap()[0].port, Some(8080));
    let pg = slices::endpoint_slices(&services["postgres-headless"], &views);
    assert_eq!(pg[0].endpoints[0].hostname.as_deref(), Some("postgres-0"));
    assert_eq!(
        pg[0].metadata.labels.clone().unwrap()[slices::HEADLESS_LABEL],
        ""
    );
    let redis = slices::endpoint_slices(&services["redis-service"], &views);
    assert_eq!(redis[0].endpoints[0].hostname, None);
    // A pod that is not ready stays listed, not ready; a terminating one is serving.
    views[2].ready = false;
    views[3].terminating = true;
    let web = slices::endpoint_slices(&services["web-app-service"], &views);
    let conds: BTreeSet<(bool, bool, bool)> = web[0]
        .endpoints
        .iter()
        .map(|e| {
            let c = e.conditions.clone().unwrap();
            (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
        })
        .collect();
    let want = [
        (true, true, false),
        (false, false, false),
        (false, true, true),
    ];
    assert_eq!(conds, want.into_iter().collect());
}

#[test]
fn up_refuses_a_bad_manifest_before_making_anything() {
    let root = tempfile::tempdir().unwrap();
    let bad = root.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata: {name: Web}\nspec: {ports: [{port: 80}]}\n",
    )
    .unwrap();
    let lab = Lab::with_root("badfile", root);
    let out = lab.run(&["up", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml: document 1 (Service default/Web)") && err.contains("metadata.name"),
        "{err}"
    );
    assert!(!lab.layout().exists());
    assert!(net::list_netns("svp-lab-badfile.").is_empty());
}

/// A lab cluster in a tempdir, taken down on drop.
struct Lab {
    name: String,
    root: tempfile::TempDir,
}

impl Lab {
    fn new(name: &str) -> Lab {
        Lab::with_root(name, tempfile::tempdir().unwrap())
    }

    fn with_root(name: &str, root: tempfile::TempDir) -> Lab {
        Lab {
            name: name.to_owned(),
            root,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(LAB)
            .arg("--state-dir")
            .arg(self.root.path())
            .args(["--name", &self.name])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "svcplane-lab {args:?}: {}\n{stdout}\n{stderr}",
            out.status
        );
        stdout
    }

    fn layout(&self) -> Layout {
        Layout::new(self.root.path(), &self.name)
    }

    fn state(&self) -> State {
        self.layout().load().unwrap()
    }

    /// Runs `sh -c script` in `pod`; returns stdout.
    fn sh(&self, pod: &str, script: &str) -> String {
        self.ok(&["exec", pod, "--", "sh", "-c", script])
    }

    /// Who answered `n` GETs of `url` from `pod` (first word of each body), counted.
    fn spread(&self, pod: &str, url: &str, n: usize) -> BTreeMap<String, usize> {
        let script = format!("for i in $(seq {n}); do curl -s -m 2 {url}; echo; done");
        let mut counts = BTreeMap::new();
        for line in self
            .sh(pod, &script)
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            let who = line.split_whitespace().next().unwrap_or("").to_owned();
            *counts.entry(who).or_insert(0) += 1;
        }
        counts
    }

    /// Runs `apply FILE` and returns its stdout, asserting that while it runs the slices of
    /// `service` list two endpoints as terminating (ready=false, serving=true).
    fn apply_watching_termination(&self, file: &Path, service: &str) -> String {
        let child = Command::new(LAB)
            .arg("--state-dir")
            .arg(self.root.path())
            .args(["--name", &self.name, "apply"])
            .arg(file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let dir = self.layout().manifests().join("endpointslices");
        let prefix = format!("myapp-prod.{service}-");
        let mut terminating = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while terminating < 2 && Instant::now() < deadline {
            terminating = terminating.max(count_terminating(&dir, &prefix));
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            terminating, 2,
            "terminating endpoints seen during apply\n{stdout}"
        );
        stdout
    }

    /// Polls `check` for up to 10 s.
    fn eventually(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.run(&["down"]);
        if !out.status.success() {
            eprintln!("down: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// Endpoints in the slices under `dir` named `prefix*` that are terminating but serving.
fn count_terminating(dir: &Path, prefix: &str) -> usize {
    let files = std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok());
    let slices = files
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| serde_json::from_str::<discovery::EndpointSlice>(&text).ok());
    slices
        .flat_map(|s| s.endpoints)
        .filter_map(|e| e.conditions)
        .filter(|c| {
            c.terminating == Some(true) && c.serving == Some(true) && c.ready == Some(false)
        })
        .count()
}

/// The host namespace: no lab links, no svcplane nftables tables.
fn assert_host_untouched() {
    let links = Command::new("ip").args(["-br", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains("svp-lab"),
        "a lab link in the host:\n{links}"
    );
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(
        !tables.contains("svcplane"),
        "svcplane tables in the host:\n{tables}"
    );
}

/// The pods of `state` whose name starts with `prefix`, by name.
fn pods_named(state: &State, prefix: &str) -> Vec<String> {
    state
        .pods
        .values()
        .filter(|p| p.name.starts_with(prefix))
        .map(|p| p.name.clone())
        .collect()
}

/// Everything `down` must remove, from the state and the host.
fn assert_gone(name: &str, state: &State) {
    let prefix = format!("svp-lab-{name}.");
    assert!(
        net::list_netns(&prefix).is_empty(),
        "namespaces left: {:?}",
        net::list_netns(&prefix)
    );
    assert!(
        render::list_etc(&prefix).is_empty(),
        "/etc/netns left: {:?}",
        render::list_etc(&prefix)
    );
    for p in state.procs() {
        assert!(!procs::alive(p), "process left: {p:?}");
    }
}

#[test]
fn the_seed_example_runs_end_to_end() {
    if skip_unless_root("the_seed_example_runs_end_to_end") {
        return;
    }
    let lab = Lab::new("seed");
    let (seed, services) = (fixture(SEED), fixture(SEED_SERVICES));
    let start = Instant::now();
    let summary = lab.ok(&[
        "up",
        seed.to_str().unwrap(),
        services.to_str().unwrap(),
        "--nodes",
        "3",
    ]);
    let up_took = start.elapsed();
    println!("{summary}");
    assert!(
        summary
            .contains("ignored (not used by the data plane): ConfigMap myapp-prod/postgres-config")
    );
    let state = lab.state();
    assert_eq!(state.nodes.len(), 3);
    let web = pods_named(&state, "web-app-");
    assert_eq!(web.len(), 3);
    assert!(
        state.pods.values().all(|p| p.ready),
        "all pods pass their probes"
    );
    let client = web[0].clone();
    assert_host_untouched();

    // The ClusterIP spreads over the three replicas, by short name through kube-dns.
    let spread = lab.spread(&client, "http://web-app-service/", 30);
    let names: BTreeSet<&String> = spread.keys().collect();
    assert_eq!(names, web.iter().collect(), "{spread:?}");
    assert_eq!(spread.values().sum::<usize>(), 30, "{spread:?}");
    // Pod-to-Service traffic keeps the pod's address (only the hairpin case is masqueraded).
    let client_ip = state.pods[&format!("myapp-prod/{client}")].ipv4;
    let body = lab.sh(
        &client,
        "for i in $(seq 10); do curl -s -m 2 http://web-app-service/; done",
    );
    for line in body.lines().filter(|l| !l.starts_with(&client)) {
        assert!(line.contains(&format!(" {client_ip}:")), "{line}");
    }

    // Other names of the same Service, the redis Service, and the postgres pod by its
    // hostname under the headless Service.
    for url in [
        "http://web-app-service.myapp-prod/",
        "http://web-app-service.myapp-prod.svc.cluster.local/",
    ] {
        let body = lab.ok(&["exec", &client, "--", "curl", "-s", "-m", "2", url]);
        assert!(body.starts_with("web-app-"), "{url}: {body}");
    }
    let redis = lab.ok(&[
        "exec",
        &client,
        "--",
        "curl",
        "-s",
        "-m",
        "2",
        "http://redis-service:6379/",
    ]);
    assert!(redis.starts_with("redis-"), "{redis}");
    let pg = lab.ok(&[
        "exec",
        &client,
        "--",
        "curl",
        "-s",
        "-m",
        "2",
        "http://postgres-0.postgres-headless:5432/",
    ]);
    assert!(pg.starts_with("postgres-0 "), "{pg}");
    let pg_ip = state.pods["myapp-prod/postgres-0"].ipv4.to_string();
    let hosts = lab.ok(&[
        "exec",
        &client,
        "--",
        "getent",
        "ahostsv4",
        "postgres-headless",
    ]);
    assert!(hosts.contains(&pg_ip), "{hosts}");

    // NodePort on every node and the LB IP, from the external client.
    for node in &state.nodes {
        let url = format!("http://{}:30080/", node.ipv4);
        let body = lab.ok(&["exec", "--external", "--", "curl", "-s", "-m", "2", &url]);
        assert!(body.starts_with("web-app-"), "{url}: {body}");
    }
    let lb = lab.ok(&[
        "exec",
        "--external",
        "--",
        "curl",
        "-s",
        "-m",
        "2",
        "http://10.250.0.1/",
    ]);
    assert!(lb.starts_with("web-app-"), "{lb}");

    // exec propagates exit codes.
    let out = lab.run(&["exec", &client, "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));

    // A pod set not ready leaves the rotation, and comes back.
    let out_of_rotation = web[1].clone();
    lab.ok(&["set-ready", &out_of_rotation, "false"]);
    lab.eventually("the not-ready pod to leave the rotation", || {
        let s = lab.spread(&client, "http://web-app-service/", 20);
        !s.contains_key(&out_of_rotation) && s.len() == 2
    });
    lab.ok(&["set-ready", &out_of_rotation, "true"]);
    lab.eventually("the pod to come back", || {
        lab.spread(&client, "http://web-app-service/", 20).len() == 3
    });

    // Scaling web-app to one replica: the two removed pods are terminating (not ready, still
    // serving) for the grace period, then gone, and the spread changes.
    let scaled = lab.root.path().join("scaled.yaml");
    let text = std::fs::read_to_string(&seed)
        .unwrap()
        .replace("replicas: 3", "replicas: 1");
    std::fs::write(&scaled, text).unwrap();
    let applied = lab.apply_watching_termination(&scaled, "web-app-service");
    println!("{applied}");
    let state = lab.state();
    let left = pods_named(&state, "web-app-");
    assert_eq!(left.len(), 1, "{applied}");
    let redis_pod = pods_named(&state, "redis-")[0].clone();
    lab.eventually("the spread to shrink to the remaining replica", || {
        let s = lab.spread(&redis_pod, "http://web-app-service/", 20);
        s.keys().collect::<Vec<_>>() == [&left[0]] && s[&left[0]] == 20
    });
    // And back to three: new pods (new addresses, not the deleted pods') pass their probes.
    lab.ok(&["apply", seed.to_str().unwrap()]);
    let state = lab.state();
    let web = pods_named(&state, "web-app-");
    assert_eq!(web.len(), 3);
    assert!(
        state.pods.values().all(|p| p.ready),
        "all pods ready after scaling up"
    );
    lab.eventually("the spread to cover three replicas again", || {
        lab.spread(&redis_pod, "http://web-app-service/", 30).len() == 3
    });
    let status = lab.ok(&["status"]);
    assert!(
        status.contains("web-app-service") && status.contains("10.250.0.1"),
        "{status}"
    );

    // down removes everything.
    let start = Instant::now();
    let down = lab.ok(&["down"]);
    let down_took = start.elapsed();
    println!("{down}\nseed on 3 nodes: up {up_took:.2?}, down {down_took:.2?}");
    assert_gone("seed", &state);
    assert_host_untouched();
    assert!(!lab.layout().exists());
    assert!(up_took < Duration::from_secs(30), "up took {up_took:?}");
}

#[test]
fn down_cleans_up_after_a_crash() {
    if skip_unless_root("down_cleans_up_after_a_crash") {
        return;
    }
    let lab = Lab::new("crash");
    let pod = lab.root.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: solo, labels: {app: solo}}\n\
         spec: {containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]}\n",
    )
    .unwrap();
    lab.ok(&["up", pod.to_str().unwrap(), "--nodes", "1"]);
    let state = lab.state();
    assert!(!state.procs().is_empty());
    // The state is lost, as if `up` had crashed before writing it.
    std::fs::remove_file(lab.layout().state_file()).unwrap();
    let down = lab.ok(&["down"]);
    assert!(down.contains("deleted 5 namespaces"), "{down}");
    assert_gone("crash", &state);
}

#[test]
fn a_failed_up_leaves_nothing_behind() {
    if skip_unless_root("a_failed_up_leaves_nothing_behind") {
        return;
    }
    let lab = Lab::new("failed");
    let pod = lab.root.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: lost}\n\
         spec: {nodeName: node-7, containers: [{name: c, image: x}]}\n",
    )
    .unwrap();
    let out = lab.run(&["up", pod.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("node \"node-7\" not found"),
        "{err}"
    );
    assert!(!lab.layout().exists());
    assert_gone("failed", &State::default());
}

#[test]
fn dual_stack_udp_and_daemon_sets_work_end_to_end() {
    if skip_unless_root("dual_stack_udp_and_daemon_sets_work_end_to_end") {
        return;
    }
    let lab = Lab::new("dual");
    let file = fixture("dual-stack.yaml");
    lab.ok(&["up", file.to_str().unwrap(), "--nodes", "2"]);
    let state = lab.state();
    let agents = pods_named(&state, "node-agent-");
    let nodes: BTreeSet<usize> = agents
        .iter()
        .map(|a| state.pods[&format!("default/{a}")].node)
        .collect();
    assert_eq!(
        nodes,
        [0, 1].into_iter().collect(),
        "one DaemonSet pod per node"
    );
    let svc = &state.services["default/echo"];
    let ips = svc.spec.clone().unwrap().cluster_ips.unwrap();
    assert_eq!(ips, ["10.96.0.2", "fd00:96::2"]);
    let client = &agents[0];
    let client_ip6 = state.pods[&format!("default/{client}")].ipv6;
    // TCP over IPv6 by name, unmasqueraded.
    let body = lab.ok(&[
        "exec",
        client,
        "--",
        "curl",
        "-6",
        "-s",
        "-m",
        "2",
        "http://echo/",
    ]);
    assert!(
        body.starts_with("echo-") && body.contains(&format!("[{client_ip6}]:")),
        "{body}"
    );
    // UDP to both ClusterIPs (the named target port resolves to 5353 in the pods).
    for ip in ["10.96.0.2", "fd00:96::2"] {
        let script = format!(
            "exec 3<>/dev/udp/{ip}/53; printf x >&3; timeout 2 dd bs=512 count=1 <&3 2>/dev/null"
        );
        let reply = lab.ok(&["exec", client, "--", "bash", "-c", &script]);
        assert!(reply.starts_with("echo-"), "udp {ip}: {reply:?}");
    }
    // SRV records name the named port.
    let srv = lab.ok(&[
        "exec",
        client,
        "--",
        "dig",
        "+short",
        "SRV",
        "_http._tcp.echo.default.svc.cluster.local",
    ]);
    assert!(srv.contains(" 80 echo.default.svc.cluster.local."), "{srv}");
}
