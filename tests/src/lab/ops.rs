//! The lab's commands: `up`, `apply`, `delete`, `set-ready`, `exec`, `status` and `down`, each
//! a short-lived process that takes the cluster's lock, reads `state.json`, acts, and writes
//! the state and the manifests directory back ([`publish`]).
//!
//! `up` builds everything and tears it down again if any step fails; `down` works from the
//! state *and* a sweep of `svp-lab-<name>.*` namespaces and `/etc/netns` entries, killing only
//! processes that run inside those namespaces or whose recorded pid and start time still match,
//! so it also cleans up after a crash.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1 as core;

use super::alloc::{self, Used};
use super::dataplane::{self, DNS_NAME, DNS_NAMESPACE};
use super::manifest::{self, Objects};
use super::pods::{self, Changes, Kind};
use super::state::{Layout, State, VERSION, key};
use super::status as show;
use super::workload::{self, Existing, NewPod};
use super::{Error, Result, net, netns_prefix, procs, render, validate_name};

/// What every command needs to know.
#[derive(Clone, Debug)]
pub struct Options {
    /// The root of the state directories (`/run/svcplane-lab`).
    pub root: PathBuf,
    /// The cluster's name.
    pub name: String,
    /// The svcplane-lab binary (runs svcplane-proxy and svcplane-dns by `argv[0]`).
    pub lab_exe: PathBuf,
    /// The pod agent, `svcplane-echo`.
    pub echo_exe: PathBuf,
    /// How long removed pods stay terminating.
    pub grace: Duration,
}

impl Options {
    /// Options for cluster `name` under `root`, with the binaries next to this executable.
    pub fn new(root: &Path, name: &str) -> Result<Options> {
        let lab_exe = std::env::current_exe().map_err(Error::io("locating svcplane-lab"))?;
        let echo_exe = procs::sibling_binary("svcplane-echo")
            .unwrap_or_else(|_| lab_exe.with_file_name("svcplane-echo"));
        Ok(Options {
            root: root.to_owned(),
            name: name.to_owned(),
            lab_exe,
            echo_exe,
            grace: super::DEFAULT_GRACE,
        })
    }

    /// Fails, naming what to build, when a binary the lab runs is missing.
    fn require_binaries(&self) -> Result<()> {
        for exe in [&self.lab_exe, &self.echo_exe] {
            if !exe.is_file() {
                return Err(Error::MissingBinary {
                    path: exe.clone(),
                    build: "cargo build -p svcplane-tests --bins".into(),
                });
            }
        }
        Ok(())
    }

    fn layout(&self) -> Result<Layout> {
        validate_name(&self.name)?;
        Ok(Layout::new(&self.root, &self.name))
    }
}

/// The command's context, passed down to the pieces.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub layout: &'a Layout,
    pub opts: &'a Options,
}

/// Saves the state and rewrites the manifests directory from it.
pub fn publish(state: &State, ctx: &Ctx<'_>) -> Result<()> {
    ctx.layout.save(state)?;
    render::write_manifests(&ctx.layout.manifests(), &render::objects(state)?).map(drop)
}

/// `up`: builds cluster `opts.name` from `paths` with `nodes` nodes; returns the summary.
pub fn up(opts: &Options, paths: &[PathBuf], nodes: usize) -> Result<String> {
    let layout = opts.layout()?;
    let leftovers = net::list_netns(&netns_prefix(&opts.name));
    if layout.exists() || !leftovers.is_empty() {
        return Err(Error::Exists {
            name: opts.name.clone(),
            path: layout.dir.clone(),
        });
    }
    let objects = manifest::classify(&manifest::read_paths(paths)?)?;
    check_reserved(&objects)?;
    let ignored = objects.ignored.clone();
    opts.require_binaries()?;
    let start = Instant::now();
    layout.create()?;
    let lock = match layout.lock() {
        Ok(lock) => lock,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&layout.dir);
            return Err(e);
        }
    };
    let ctx = Ctx {
        layout: &layout,
        opts,
    };
    match build(&ctx, objects, nodes) {
        Ok(state) => {
            drop(lock);
            Ok(show::up_summary(&state, opts, &ignored, start.elapsed()))
        }
        Err(e) => {
            let cleanup = teardown(&layout, &opts.name);
            drop(lock);
            let _ = std::fs::remove_dir_all(&layout.dir);
            match cleanup {
                Ok(_) => Err(e),
                Err(c) => Err(Error::Invalid(format!(
                    "{e}\n(and cleaning up failed: {c})"
                ))),
            }
        }
    }
}

/// Refuses user objects that would take the lab's own kube-dns.
fn check_reserved(objects: &Objects) -> Result<()> {
    let dns = key(DNS_NAMESPACE, DNS_NAME);
    let svc = objects.services.iter().any(|s| service_key(s) == dns);
    let pod = objects
        .pods
        .iter()
        .any(|p| key(&p.namespace, &p.name) == dns);
    if svc || pod {
        return Err(Error::Refused {
            what: dns,
            message: "kube-system/kube-dns is the lab's own svcplane-dns".into(),
        });
    }
    Ok(())
}

fn service_key(svc: &core::Service) -> String {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    key(ns, svc.metadata.name.as_deref().unwrap_or_default())
}

/// The body of `up`.
fn build(ctx: &Ctx<'_>, objects: Objects, nodes: usize) -> Result<State> {
    let fabric = net::build_fabric(&ctx.opts.name, nodes)?;
    let mut state = State {
        version: VERSION,
        name: ctx.opts.name.clone(),
        switch_netns: fabric.switch,
        external_netns: fabric.external,
        nodes: fabric.nodes,
        namespaces: ["default", DNS_NAMESPACE].map(String::from).into(),
        ..State::default()
    };
    ctx.layout.save(&state)?;
    add_service(&mut state, dataplane::dns_service()?)?;
    let dns = pods::create(&mut state, dataplane::dns_pod(), Kind::System, ctx)?;
    dataplane::start_dns(&mut state, ctx)?;
    ctx.layout.save(&state)?;
    let changes = plan(&mut state, objects)?;
    pods::execute(&mut state, changes, ctx)?;
    if let Some(w) = pods::probe(&mut state, &[dns]).first() {
        return Err(Error::Invalid(w.clone()));
    }
    publish(&state, ctx)?;
    dataplane::start_proxies(&mut state, ctx)?;
    ctx.layout.save(&state)?;
    dataplane::wait_proxies(&state)?;
    dataplane::wait_dns(&state)?;
    Ok(state)
}

/// Adds `objects` to the state (namespaces, Services as assigned, workloads) and returns the
/// pods to create and remove.
fn plan(state: &mut State, objects: Objects) -> Result<Changes> {
    state.namespaces.extend(objects.namespaces.iter().cloned());
    check_namespaces(state, &objects)?;
    for svc in objects.services {
        add_service(state, svc)?;
    }
    let mut changes = Changes::default();
    let mut rng = rand::rng();
    for w in objects.workloads {
        let plan = reconcile(state, &w, &mut rng);
        changes.create.extend(plan.create);
        changes
            .remove
            .extend(plan.remove.iter().map(|n| key(&w.namespace, n)));
        state.workloads.insert(w.key(), w);
    }
    for pod in objects.pods {
        bare_pod(state, pod, &mut changes);
    }
    Ok(changes)
}

/// Refuses objects in namespaces that neither exist nor are being created.
fn check_namespaces(state: &State, objects: &Objects) -> Result<()> {
    let svc = objects
        .services
        .iter()
        .map(|s| (s.metadata.namespace.clone().unwrap_or_default(), "Service"));
    let wl = objects
        .workloads
        .iter()
        .map(|w| (w.namespace.clone(), "workload"));
    let pods = objects.pods.iter().map(|p| (p.namespace.clone(), "Pod"));
    for (ns, what) in svc.chain(wl).chain(pods) {
        if !state.namespaces.contains(&ns) {
            return Err(Error::Refused {
                what: format!("{what} in namespace {ns}"),
                message: format!("namespaces {ns:?} not found"),
            });
        }
    }
    Ok(())
}

/// Assigns and validates `svc`, then stores it.
fn add_service(state: &mut State, mut svc: core::Service) -> Result<()> {
    let k = service_key(&svc);
    let previous = state.services.get(&k);
    let mut used = Used::of(
        state
            .services
            .iter()
            .filter(|(key, _)| **key != k)
            .map(|(_, s)| s),
    );
    let refused = |message: String| Error::Refused {
        what: format!("Service {k}"),
        message,
    };
    alloc::assign(&mut svc, previous, &mut used).map_err(refused)?;
    let value = serde_json::to_value(&svc).map_err(|e| refused(e.to_string()))?;
    svcplane_common::convert::from_json(value).map_err(|e| refused(e.to_string()))?;
    state.services.insert(k, svc);
    Ok(())
}

/// The workload's plan against the pods it owns.
fn reconcile(state: &State, w: &workload::Workload, rng: &mut impl rand::Rng) -> workload::Plan {
    let owned: Vec<Existing<'_>> = state
        .pods
        .values()
        .filter(|p| p.namespace == w.namespace && !p.terminating)
        .filter_map(|p| {
            let o = p
                .owner
                .as_ref()
                .filter(|o| o.kind == w.kind && o.name == w.name)?;
            Some(Existing {
                name: &p.name,
                hash: &o.hash,
                node: state.nodes.get(p.node).map_or("", |n| n.name.as_str()),
                ready: p.ready,
            })
        })
        .collect();
    let taken: BTreeSet<String> = state
        .pods
        .values()
        .filter(|p| p.namespace == w.namespace)
        .map(|p| p.name.clone())
        .collect();
    let nodes: Vec<String> = state.nodes.iter().map(|n| n.name.clone()).collect();
    workload::reconcile(w, &owned, &taken, &nodes, rng)
}

/// A bare pod: created when new; an existing one only takes new labels (the rest of a pod's
/// spec is immutable).
fn bare_pod(state: &mut State, pod: NewPod, changes: &mut Changes) {
    let k = key(&pod.namespace, &pod.name);
    match state.pods.get_mut(&k) {
        Some(existing) if !existing.terminating => existing.spec.labels = pod.spec.labels,
        _ => changes.create.push(pod),
    }
}

/// Loads the cluster for a command that changes it.
fn open(opts: &Options) -> Result<(Layout, State, super::state::Lock)> {
    let layout = opts.layout()?;
    if !layout.exists() {
        return Err(Error::NoCluster {
            name: opts.name.clone(),
            path: layout.dir.clone(),
        });
    }
    let lock = layout.lock()?;
    let state = layout.load()?;
    Ok((layout, state, lock))
}

/// `apply`: adds or changes what `paths` hold (nothing missing from them is deleted).
pub fn apply(opts: &Options, paths: &[PathBuf]) -> Result<String> {
    let objects = manifest::classify(&manifest::read_paths(paths)?)?;
    check_reserved(&objects)?;
    opts.require_binaries()?;
    let (layout, mut state, _lock) = open(opts)?;
    let ctx = Ctx {
        layout: &layout,
        opts,
    };
    let mut report = describe_objects(&objects);
    let changes = plan(&mut state, objects);
    let done = changes.and_then(|c| pods::execute(&mut state, c, &ctx));
    publish(&state, &ctx)?;
    let done = done?;
    report.extend(done.created.iter().map(|k| created_line(&state, k)));
    report.extend(done.removed.iter().map(|k| format!("pod {k} deleted")));
    Ok(report.join("\n"))
}

fn describe_objects(objects: &Objects) -> Vec<String> {
    let mut lines: Vec<String> = objects
        .namespaces
        .iter()
        .map(|n| format!("namespace {n} applied"))
        .collect();
    lines.extend(
        objects
            .services
            .iter()
            .map(|s| format!("service {} applied", service_key(s))),
    );
    lines.extend(
        objects
            .workloads
            .iter()
            .map(|w| format!("{:?} {}/{} applied", w.kind, w.namespace, w.name).to_lowercase()),
    );
    if !objects.ignored.is_empty() {
        lines.push(format!("ignored: {}", objects.ignored.join(", ")));
    }
    lines
}

fn created_line(state: &State, k: &str) -> String {
    match state.pods.get(k) {
        Some(p) => format!(
            "pod {k} created on node-{} ({}, {}){}",
            p.node,
            p.ipv4,
            p.ipv6,
            if p.ready { "" } else { " not ready" }
        ),
        None => format!("pod {k} created"),
    }
}

/// `delete`: deletes what `paths` name (Namespaces with everything in them).
pub fn delete(opts: &Options, paths: &[PathBuf]) -> Result<String> {
    let objects = manifest::classify(&manifest::read_paths(paths)?)?;
    check_reserved(&objects)?;
    let (layout, mut state, _lock) = open(opts)?;
    let ctx = Ctx {
        layout: &layout,
        opts,
    };
    let mut report = Vec::new();
    let mut remove = BTreeSet::new();
    for ns in &objects.namespaces {
        if ns == "default" || ns == DNS_NAMESPACE {
            return Err(Error::Refused {
                what: format!("namespace {ns}"),
                message: "this namespace may not be deleted".into(),
            });
        }
        remove.extend(delete_namespace(&mut state, ns));
        report.push(format!("namespace {ns} deleted"));
    }
    for svc in &objects.services {
        if state.services.remove(&service_key(svc)).is_some() {
            report.push(format!("service {} deleted", service_key(svc)));
        }
    }
    for w in &objects.workloads {
        if state.workloads.remove(&w.key()).is_some() {
            report.push(format!("{:?} {}/{} deleted", w.kind, w.namespace, w.name).to_lowercase());
        }
        remove.extend(owned_by(&state, &w.namespace, |o| {
            o.kind == w.kind && o.name == w.name
        }));
    }
    remove.extend(objects.pods.iter().map(|p| key(&p.namespace, &p.name)));
    remove.retain(|k| state.pods.get(k).is_some_and(|p| !p.system));
    let changes = Changes {
        create: Vec::new(),
        remove: remove.into_iter().collect(),
    };
    let done = pods::execute(&mut state, changes, &ctx);
    publish(&state, &ctx)?;
    report.extend(done?.removed.iter().map(|k| format!("pod {k} deleted")));
    Ok(report.join("\n"))
}

/// Forgets namespace `ns`'s Services and workloads; returns its pods.
fn delete_namespace(state: &mut State, ns: &str) -> Vec<String> {
    state.namespaces.remove(ns);
    state
        .services
        .retain(|_, s| s.metadata.namespace.as_deref() != Some(ns));
    state.workloads.retain(|_, w| w.namespace != ns);
    state
        .pods
        .values()
        .filter(|p| p.namespace == ns)
        .map(|p| p.key())
        .collect()
}

/// Pods of namespace `ns` whose owner satisfies `f`.
fn owned_by(state: &State, ns: &str, f: impl Fn(&workload::Owner) -> bool) -> Vec<String> {
    state
        .pods
        .values()
        .filter(|p| p.namespace == ns && p.owner.as_ref().is_some_and(&f))
        .map(|p| p.key())
        .collect()
}

/// `set-ready`: flips a pod's readiness (as a failing or passing probe would).
pub fn set_ready(opts: &Options, pod: &str, ready: bool) -> Result<String> {
    let (layout, mut state, _lock) = open(opts)?;
    let ctx = Ctx {
        layout: &layout,
        opts,
    };
    let k = state.find_pod(pod)?.key();
    if let Some(p) = state.pods.get_mut(&k) {
        p.ready = ready;
    }
    publish(&state, &ctx)?;
    Ok(format!("pod {k} ready={ready}"))
}

/// Where `exec` runs.
#[derive(Clone, Debug)]
pub enum Target {
    Pod(String),
    Node(String),
    External,
}

/// `exec`: runs `cmd` inside the target's namespace (`ip netns exec`, so a pod's
/// `/etc/netns` files apply) with this process's stdio; returns its exit status.
pub fn exec(opts: &Options, target: &Target, cmd: &[String]) -> Result<ExitStatus> {
    let layout = opts.layout()?;
    let state = {
        let _lock = layout.lock_if_exists(&opts.name)?;
        layout.load()?
    };
    let netns = match target {
        Target::Pod(p) => state.find_pod(p)?.netns.clone(),
        Target::Node(n) => state
            .node_by_name(n)
            .map(|n| n.netns.clone())
            .ok_or_else(|| Error::Invalid(format!("no node {n:?}")))?,
        Target::External => state.external_netns.clone(),
    };
    Command::new("ip")
        .args(["netns", "exec", &netns])
        .args(cmd)
        .status()
        .map_err(|e| Error::Command {
            cmd: format!("ip netns exec {netns} {}", cmd.join(" ")),
            message: e.to_string(),
        })
}

/// `status`: the cluster as tables, or its `state.json`.
pub fn status(opts: &Options, json: bool) -> Result<String> {
    let layout = opts.layout()?;
    let state = {
        let _lock = layout.lock_if_exists(&opts.name)?;
        layout.load()?
    };
    if json {
        return serde_json::to_string_pretty(&state).map_err(|e| Error::Invalid(e.to_string()));
    }
    Ok(show::tables(&state, &layout))
}

/// `down`: removes everything cluster `opts.name` made (see the module doc).
pub fn down(opts: &Options) -> Result<String> {
    let layout = opts.layout()?;
    let start = Instant::now();
    let lock = if layout.exists() {
        Some(layout.lock()?)
    } else {
        None
    };
    let swept = teardown(&layout, &opts.name)?;
    drop(lock);
    if layout.exists() {
        std::fs::remove_dir_all(&layout.dir)
            .map_err(Error::io(format!("removing {}", layout.dir.display())))?;
    }
    Ok(format!(
        "cluster {}: deleted {} namespaces, {} /etc/netns entries, stopped {} processes in {:.2?}",
        opts.name,
        swept.namespaces,
        swept.etc,
        swept.procs,
        start.elapsed()
    ))
}

/// What [`teardown`] removed.
#[derive(Debug, Default)]
pub struct Swept {
    pub namespaces: usize,
    pub etc: usize,
    pub procs: usize,
}

/// Stops the recorded processes and deletes every namespace and `/etc/netns` entry of the
/// cluster (recorded or found by name).
fn teardown(layout: &Layout, name: &str) -> Result<Swept> {
    let state = layout.load().ok();
    let mut swept = Swept::default();
    let prefix = netns_prefix(name);
    let mut namespaces: BTreeSet<String> = net::list_netns(&prefix).into_iter().collect();
    let mut etc: BTreeSet<String> = render::list_etc(&prefix).into_iter().collect();
    if let Some(state) = &state {
        for p in state.procs() {
            if procs::alive(p) {
                swept.procs += 1;
            }
            procs::stop(p);
        }
        let recorded = state.netns_names();
        etc.extend(recorded.iter().cloned());
        namespaces.extend(recorded.into_iter().filter(|n| net::netns_path(n).exists()));
    }
    let names: Vec<String> = namespaces.into_iter().collect();
    net::delete_netns(&names)?;
    swept.namespaces = names.len();
    for e in &etc {
        if render::etc_dir(e).exists() {
            swept.etc += 1;
        }
        render::remove_etc(e)?;
    }
    Ok(swept)
}

impl Layout {
    /// The lock, when the cluster exists (else the "no cluster" error).
    fn lock_if_exists(&self, name: &str) -> Result<super::state::Lock> {
        if !self.exists() {
            return Err(Error::NoCluster {
                name: name.to_owned(),
                path: self.dir.clone(),
            });
        }
        self.lock()
    }
}
