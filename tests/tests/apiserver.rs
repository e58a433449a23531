//! End-to-end tests of the Kubernetes API test server with the real kube-rs
//! client and kube-runtime's `watcher`: list, get, discovery, pagination,
//! watch resume after a dropped connection, relist after 410 Expired,
//! outages, selectors, bookmarks and streaming lists.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, VersionMatch, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, Discovery, ResourceExt};
use serde_json::{Value, json};
use svcplane_tests::apiserver::{self, ApiServer, ServerConfig, ServerState};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const PATIENCE: Duration = Duration::from_secs(15);

fn service(ns: &str, name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"ports": [{"port": port, "protocol": "TCP"}], "clusterIP": "10.96.0.10"}
    })
}

fn headless(ns: &str, name: &str) -> Value {
    let mut svc = service(ns, name, 53);
    svc["metadata"]["labels"]["service.kubernetes.io/headless"] = json!("");
    svc
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A watcher event as a short string: `Init`, `InitApply(ns/a)`, `Apply(ns/a)`...
fn describe(event: &Event<Service>) -> String {
    let id = |s: &Service| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any());
    match event {
        Event::Init => "Init".into(),
        Event::InitApply(s) => format!("InitApply({})", id(s)),
        Event::InitDone => "InitDone".into(),
        Event::Apply(s) => format!("Apply({})", id(s)),
        Event::Delete(s) => format!("Delete({})", id(s)),
    }
}

/// A kube-runtime watcher on services, driven by its own task the way a
/// consumer runs it, plus the state it has built as a reflector would (Init
/// starts a fresh buffer that InitDone swaps in).
struct Watch {
    events: mpsc::UnboundedReceiver<watcher::Result<Event<Service>>>,
    task: JoinHandle<()>,
    state: BTreeMap<String, Service>,
    buffer: BTreeMap<String, Service>,
    errors: Vec<String>,
}

fn watch_services(client: Client, config: watcher::Config) -> Watch {
    let (tx, events) = mpsc::unbounded_channel();
    let mut stream = watcher(Api::<Service>::all(client), config)
        .default_backoff()
        .boxed();
    let task = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    Watch {
        events,
        task,
        state: BTreeMap::new(),
        buffer: BTreeMap::new(),
        errors: Vec::new(),
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watch {
    /// The next event (skipping and recording errors), described.
    async fn next(&mut self) -> String {
        loop {
            let item = within("a watcher event", self.events.recv()).await;
            match item.expect("watcher stream ended") {
                Ok(event) => return self.absorb(event),
                Err(e) => self.errors.push(e.to_string()),
            }
        }
    }

    async fn expect(&mut self, expected: &[&str]) {
        for want in expected {
            assert_eq!(self.next().await, *want, "errors so far: {:?}", self.errors);
        }
    }

    fn absorb(&mut self, event: Event<Service>) -> String {
        let text = describe(&event);
        let key = |s: &Service| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any());
        match event {
            Event::Init => self.buffer.clear(),
            Event::InitApply(s) => drop(self.buffer.insert(key(&s), s)),
            Event::InitDone => self.state = std::mem::take(&mut self.buffer),
            Event::Apply(s) => drop(self.state.insert(key(&s), s)),
            Event::Delete(s) => drop(self.state.remove(&key(&s))),
        }
        text
    }

    fn names(&self) -> Vec<&str> {
        self.state.keys().map(String::as_str).collect()
    }
}

/// A watcher that has listed `ns/a` and has its watch open.
async fn watching_a(server: &ApiServer) -> Watch {
    server.apply(service("ns", "a", 80)).unwrap();
    let mut watch = watch_services(server.client().await.unwrap(), watcher::Config::default());
    watch.expect(&["Init", "InitApply(ns/a)", "InitDone"]).await;
    let opened = || server.counts("services").open_watches == 1;
    eventually("the watch to open", opened).await;
    watch
}

#[tokio::test]
async fn lists_and_gets_through_a_kubeconfig_file() {
    let server = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = server.write_kubeconfig(dir.path()).unwrap();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let options = KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    assert_eq!(config.cluster_url.to_string(), format!("{}/", server.url()));
    let client = Client::try_from(config).unwrap();

    server.apply(service("ns", "a", 80)).unwrap();
    server.apply(service("other", "b", 81)).unwrap();
    let mut node = Node::default();
    node.metadata.name = Some("n1".into());
    let stored = server.apply_typed(&node).unwrap();
    assert_eq!(
        stored.metadata.resource_version,
        Some(server.resource_version().to_string())
    );

    let all = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(all.items.len(), 2);
    let rv: u64 = all.metadata.resource_version.unwrap().parse().unwrap();
    assert_eq!(rv, server.resource_version());
    let ns: Api<Service> = Api::namespaced(client.clone(), "ns");
    let listed = ns.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    let a = ns.get("a").await.unwrap();
    assert_eq!(a.metadata.uid, listed.items[0].metadata.uid);
    assert!(a.metadata.creation_timestamp.is_some());
    let missing = ns.get("nope").await.unwrap_err();
    assert!(
        matches!(missing, kube::Error::Api(ref s) if s.code == 404),
        "{missing:?}"
    );
    let n1 = Api::<Node>::all(client.clone()).get("n1").await.unwrap();
    assert_eq!(n1.name_any(), "n1");
    assert_eq!(server.counts_for::<Service>().lists, 2);
    assert_eq!(server.counts_for::<Service>().gets, 2);
}

#[tokio::test]
async fn paginates_with_limit_and_continue() {
    let server = ApiServer::start().await.unwrap();
    for name in ["a", "b", "c"] {
        server.apply(service("ns", name, 80)).unwrap();
    }
    let api = Api::<Service>::all(server.client().await.unwrap());
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().unwrap();
    // A change after the first page does not show in the second: same snapshot.
    server.apply(service("ns", "d", 80)).unwrap();
    server.delete("v1", "Service", "ns", "c").unwrap();
    let second = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    let names: Vec<String> = second.items.iter().map(ResourceExt::name_any).collect();
    assert_eq!(names, ["c"]);
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );
    assert!(second.metadata.continue_.is_none());
    let counts = server.counts("services");
    assert_eq!((counts.lists, counts.initial_lists), (2, 1));

    // Once the snapshot is compacted away, the token is expired.
    server.compact();
    let expired = api
        .list(&ListParams::default().continue_token(&token))
        .await
        .unwrap_err();
    assert!(
        matches!(expired, kube::Error::Api(ref s) if s.code == 410),
        "{expired:?}"
    );
}

#[tokio::test]
async fn serves_discovery_and_version() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "34")
    );
    let discovery = Discovery::new(client).run().await.unwrap();
    assert!(discovery.has_group("discovery.k8s.io"));
    let core = discovery.get("").unwrap();
    let kinds: Vec<String> = core
        .recommended_resources()
        .into_iter()
        .map(|(r, _)| r.kind)
        .collect();
    for kind in ["Service", "Pod", "Node", "Namespace"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
}

#[tokio::test]
async fn serves_every_kind() {
    let server = ApiServer::start().await.unwrap();
    let yaml = "
apiVersion: v1
kind: Namespace
metadata: {name: ns}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: ns}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-1, namespace: ns, labels: {kubernetes.io/service-name: a}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.1]}]
";
    assert_eq!(server.apply_yaml(yaml).unwrap().len(), 3);
    let client = server.client().await.unwrap();
    let lp = ListParams::default();
    assert_eq!(
        Api::<Namespace>::all(client.clone())
            .list(&lp)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        Api::<Pod>::namespaced(client.clone(), "ns")
            .list(&lp)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let slices: Api<EndpointSlice> = Api::namespaced(client, "ns");
    let by_service = lp.clone().labels("kubernetes.io/service-name=a");
    let listed = slices.list(&by_service).await.unwrap();
    assert_eq!(listed.items[0].endpoints[0].addresses, ["10.0.0.1"]);
    assert!(
        slices
            .list(&lp.labels("kubernetes.io/service-name=b"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn watcher_sees_creates_updates_and_deletes() {
    let server = ApiServer::start().await.unwrap();
    let mut watch = watching_a(&server).await;
    server.apply(service("ns", "b", 80)).unwrap();
    watch.expect(&["Apply(ns/b)"]).await;
    // An unchanged apply is a no-op: no event, same resourceVersion.
    let rv = server.resource_version();
    server.apply(service("ns", "b", 80)).unwrap();
    assert_eq!(server.resource_version(), rv);
    server.apply(service("ns", "a", 8080)).unwrap();
    watch.expect(&["Apply(ns/a)"]).await;
    assert_eq!(
        watch.state["ns/a"]
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()[0]
            .port,
        8080
    );
    server.delete("v1", "Service", "ns", "b").unwrap();
    watch.expect(&["Delete(ns/b)"]).await;
    assert_eq!(watch.names(), ["ns/a"]);
    assert!(watch.errors.is_empty(), "{:?}", watch.errors);
}

#[tokio::test]
async fn watcher_resumes_after_a_dropped_watch_without_relisting() {
    let server = ApiServer::start().await.unwrap();
    let mut watch = watching_a(&server).await;
    server.drop_watches();
    server.apply(service("ns", "b", 80)).unwrap();
    watch.expect(&["Apply(ns/b)"]).await;
    server.drop_watches();
    server.delete("v1", "Service", "ns", "a").unwrap();
    watch.expect(&["Delete(ns/a)"]).await;
    assert_eq!(watch.names(), ["ns/b"]);
    let counts = server.counts("services");
    assert_eq!(counts.initial_lists, 1, "{counts:?}");
    assert!(counts.watches >= 2, "{counts:?}");
}

#[tokio::test]
async fn watcher_relists_after_compaction() {
    let server = ApiServer::start().await.unwrap();
    let mut watch = watching_a(&server).await;
    server.compact();
    server.drop_watches();
    watch.expect(&["Init", "InitApply(ns/a)", "InitDone"]).await;
    assert!(
        watch.errors.iter().any(|e| e.contains("Expired")),
        "{:?}",
        watch.errors
    );
    assert_eq!(server.counts("services").initial_lists, 2);
    server.apply(service("ns", "b", 80)).unwrap();
    watch.expect(&["Apply(ns/b)"]).await;
}

#[tokio::test]
async fn watcher_recovers_from_an_outage_with_changes_missed() {
    let server = ApiServer::start().await.unwrap();
    server.apply(service("ns", "a", 80)).unwrap();
    server.apply(service("ns", "gone", 80)).unwrap();
    let mut watch = watch_services(server.client().await.unwrap(), watcher::Config::default());
    watch
        .expect(&["Init", "InitApply(ns/a)", "InitApply(ns/gone)", "InitDone"])
        .await;
    eventually("the watch to open", || {
        server.counts("services").open_watches == 1
    })
    .await;

    server.set_available(false);
    server.delete("v1", "Service", "ns", "gone").unwrap();
    server.apply(service("ns", "new", 80)).unwrap();
    server.compact();
    let lp = ListParams::default();
    let refused = Api::<Service>::all(server.client().await.unwrap())
        .list(&lp)
        .await;
    assert!(refused.is_err(), "{refused:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.set_available(true);

    watch.expect(&["Init"]).await;
    while watch.next().await != "InitDone" {}
    assert_eq!(watch.names(), ["ns/a", "ns/new"]);
    assert_eq!(server.counts("services").initial_lists, 2);
}

#[tokio::test]
async fn watcher_follows_a_label_selector() {
    let server = ApiServer::start().await.unwrap();
    server.apply(headless("ns", "h")).unwrap();
    let selector = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";
    let config = watcher::Config::default().labels(selector);
    let mut watch = watch_services(server.client().await.unwrap(), config);
    watch.expect(&["Init", "InitDone"]).await;
    server.apply(service("ns", "h", 53)).unwrap();
    watch.expect(&["Apply(ns/h)"]).await;
    server.apply(headless("ns", "h")).unwrap();
    watch.expect(&["Delete(ns/h)"]).await;
    server.apply(service("ns", "x", 80)).unwrap();
    watch.expect(&["Apply(ns/x)"]).await;
    assert_eq!(watch.names(), ["ns/x"]);
}

#[tokio::test]
async fn watcher_supports_streaming_lists() {
    let server = ApiServer::start().await.unwrap();
    server.apply(service("ns", "a", 80)).unwrap();
    let config = watcher::Config::default().streaming_lists();
    let mut watch = watch_services(server.client().await.unwrap(), config);
    watch.expect(&["Init", "InitApply(ns/a)", "InitDone"]).await;
    server.apply(service("ns", "b", 80)).unwrap();
    watch.expect(&["Apply(ns/b)"]).await;
    let counts = server.counts("services");
    assert_eq!((counts.lists, counts.watches), (0, 1));
}

#[tokio::test]
async fn raw_watch_bookmarks_times_out_and_expires() {
    let config = ServerConfig {
        bookmark_interval: Duration::from_millis(100),
        ..ServerConfig::default()
    };
    let server = ApiServer::start_with(config).await.unwrap();
    server.apply(service("ns", "a", 80)).unwrap();
    let api = Api::<Service>::all(server.client().await.unwrap());
    let rv = server.resource_version().to_string();

    let wp = WatchParams::default().timeout(1);
    let started = tokio::time::Instant::now();
    let events: Vec<_> = within(
        "a 1 s watch",
        api.watch(&wp, &rv).await.unwrap().try_collect(),
    )
    .await
    .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(
        events
            .iter()
            .all(|e| matches!(e, WatchEvent::Bookmark(b) if b.metadata.resource_version == rv))
    );
    assert!(events.len() >= 3, "{} bookmarks", events.len());

    server.compact();
    let mut stream = api.watch(&wp, &rv).await.unwrap().boxed();
    let first = within("an error event", stream.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(first, WatchEvent::Error(ref s) if s.code == 410 && s.reason == "Expired"),
        "{first:?}"
    );
    assert!(within("the stream end", stream.next()).await.is_none());

    let exact = ListParams::default().at(&rv).matching(VersionMatch::Exact);
    let gone = api.list(&exact).await.unwrap_err();
    assert!(
        matches!(gone, kube::Error::Api(ref s) if s.code == 410),
        "{gone:?}"
    );
}

#[tokio::test]
async fn bad_requests_get_status_objects() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    for (path, code) in [
        ("/api/v1/services?labelSelector=a%20b", 400),
        ("/api/v1/services?limit=x", 400),
        ("/api/v1/services?continue=zz", 400),
        ("/api/v1/widgets", 404),
        ("/api/v1/services/a", 404),
        ("/api/v1/namespaces/ns/nodes", 404),
        ("/nope", 404),
    ] {
        let request = hyper::Request::get(path).body(Vec::new()).unwrap();
        let err = client.request_text(request).await.unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == code),
            "{path}: {err:?}"
        );
    }
    // A timeout too long to add to a clock does not panic the server.
    server.apply(service("ns", "a", 80)).unwrap();
    let forever = "/api/v1/services?watch=1&timeoutSeconds=18446744073709551615";
    let request = hyper::Request::get(forever).body(Vec::new()).unwrap();
    let mut events = client
        .request_events::<Service>(request)
        .await
        .unwrap()
        .boxed();
    let added = within("the initial event", events.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(added, WatchEvent::Added(_)), "{added:?}");
    let delete = hyper::Request::delete("/api/v1/namespaces/ns/services/a")
        .body(Vec::new())
        .unwrap();
    let err = client.request_text(delete).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 405),
        "{err:?}"
    );
}

#[tokio::test]
async fn serve_runs_until_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = ServerState::new(ServerConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(apiserver::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    state.apply(service("ns", "a", 80)).unwrap();
    let api = Api::<Service>::all(apiserver::client(addr).await.unwrap());
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    let mut watch = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    let added = within("the initial event", watch.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(added, WatchEvent::Added(ref s) if s.name_any() == "a"),
        "{added:?}"
    );

    stop.send(()).unwrap();
    within("serve to return", server).await.unwrap();
    // The open watch ends and new connections are refused.
    while let Some(Ok(_)) = within("the watch to end", watch.next()).await {}
    assert!(api.list(&ListParams::default()).await.is_err());
}
