//! A Kubernetes API test server speaking the real list/watch protocol, so that
//! svcplane's binaries and kube-rs' `watcher` can be tested without a cluster.
//!
//! It owns an in-memory store of core/v1 services, pods, nodes, namespaces and
//! discovery.k8s.io/v1 endpointslices with one global resourceVersion counter
//! and a bounded event history, and serves them over plain HTTP/1.1 (no TLS,
//! no auth): paginated lists (`limit`/`continue`), GET of one object, and
//! watches (`watch=true`, resume from `resourceVersion`, bookmarks,
//! `timeoutSeconds`, `sendInitialEvents`, 410 Expired). Tests drive it through
//! [`ServerState`]: write objects, drop every open watch, compact the
//! history, simulate an outage and read per-resource request counters.

mod http;
mod query;
mod resources;
mod selector;
mod server;
mod store;
mod watch;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch as signal;

pub use resources::{RESOURCES, ResourceType};
pub use selector::{FieldSelector, LabelSelector, ObjectFilter};
pub use server::{ApiServer, client, kubeconfig_yaml, serve};

use store::{Store, key_of};

/// Everything that can go wrong driving or serving the test API server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the listen socket or writing the kubeconfig failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// An object is not a JSON object with a non-empty `metadata.name`.
    #[error("invalid object: {0}")]
    InvalidObject(String),
    /// The `apiVersion`/`kind` pair is not one the server serves.
    #[error("kind {kind:?} of apiVersion {api_version:?} is not served")]
    UnknownKind {
        /// The object's `apiVersion`.
        api_version: String,
        /// The object's `kind`.
        kind: String,
    },
    /// A YAML document could not be parsed.
    #[error("yaml: {0}")]
    Yaml(String),
    /// A label or field selector could not be parsed.
    #[error("unable to parse selector {0:?}")]
    BadSelector(String),
    /// A query parameter has an invalid value.
    #[error("invalid query parameter {name}: {value:?}")]
    BadParameter {
        /// Parameter name.
        name: &'static str,
        /// The value that was sent.
        value: String,
    },
    /// A resourceVersion (or continue token) older than the kept history.
    #[error("too old resource version: {requested} ({oldest})")]
    Expired {
        /// The requested resourceVersion.
        requested: u64,
        /// The oldest resourceVersion still served.
        oldest: u64,
    },
    /// A resourceVersion newer than the newest one.
    #[error("Too large resource version: {requested}, current: {current}")]
    TooLarge {
        /// The requested resourceVersion.
        requested: u64,
        /// The newest resourceVersion.
        current: u64,
    },
    /// The server is simulating an outage (`set_available(false)`).
    #[error("the API server is unavailable (simulated outage)")]
    Unavailable,
    /// The generated kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// A kube client could not be built.
    #[error("kube client: {0}")]
    Kube(#[from] kube::Error),
    /// An object could not be converted to or from JSON.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Tunables of a test API server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// How many change events are kept for watches to resume from.
    pub history_limit: usize,
    /// How long a watch without `timeoutSeconds` stays open.
    pub default_watch_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(1),
            history_limit: 1000,
            default_watch_timeout: Duration::from_secs(1800),
        }
    }
}

/// Request counters of one resource (by plural, e.g. `services`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestCounts {
    /// List requests, one per page.
    pub lists: u64,
    /// List requests that started a listing (no `continue` token).
    pub initial_lists: u64,
    /// Watch requests.
    pub watches: u64,
    /// GETs of a single object.
    pub gets: u64,
    /// Watch streams open right now.
    pub open_watches: u64,
}

/// A cheap, cloneable handle on the server's state: the store and the test
/// controls. [`ApiServer`] dereferences to it.
#[derive(Clone)]
pub struct ServerState {
    shared: Arc<Shared>,
}

struct Shared {
    config: ServerConfig,
    store: Mutex<Store>,
    /// Carries the newest resourceVersion; open watches wake on it.
    changed: signal::Sender<u64>,
    /// Bumped to abort every open watch.
    dropped: signal::Sender<u64>,
    available: AtomicBool,
    counts: Mutex<BTreeMap<String, RequestCounts>>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, plural: &str, bump: impl FnOnce(&mut RequestCounts)) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        bump(counts.entry(plural.to_string()).or_default());
    }

    fn is_available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    fn notify(&self, rv: u64) {
        self.changed.send_replace(rv);
    }
}

impl ServerState {
    /// A fresh, empty state.
    pub fn new(config: ServerConfig) -> Self {
        let store = Store::new(config.history_limit);
        let shared = Shared {
            changed: signal::Sender::new(store.resource_version()),
            dropped: signal::Sender::new(0),
            store: Mutex::new(store),
            available: AtomicBool::new(true),
            counts: Mutex::default(),
            config,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Creates or replaces an object, found by apiVersion/kind/namespace/name.
    /// Assigns uid and creationTimestamp on creation (kept on update) and a
    /// new resourceVersion on every real change; a namespaced object without
    /// a namespace goes to `default`. Returns the stored object.
    pub fn apply(&self, object: Value) -> Result<Value, Error> {
        let (resource, object) = normalize(object)?;
        let key = key_of(resource, &object);
        let mut store = self.shared.store();
        let (stored, _) = store.apply(resource, key, object);
        self.shared.notify(store.resource_version());
        Ok((*stored).clone())
    }

    /// [`apply`](Self::apply) for every document of a (multi-document) YAML text.
    pub fn apply_yaml(&self, yaml: &str) -> Result<Vec<Value>, Error> {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(yaml).map_err(|e| Error::Yaml(e.to_string()))?;
        docs.into_iter()
            .filter(|doc| !doc.is_null())
            .map(|doc| self.apply(doc))
            .collect()
    }

    /// [`apply`](Self::apply) for a typed k8s-openapi object.
    pub fn apply_typed<K: Serialize + DeserializeOwned>(&self, object: &K) -> Result<K, Error> {
        let stored = self.apply(serde_json::to_value(object)?)?;
        Ok(serde_json::from_value(stored)?)
    }

    /// Deletes an object; `namespace` is ignored for cluster-scoped kinds.
    /// Returns the deleted object, or `None` if there was none.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, Error> {
        let (resource, key) = lookup(api_version, kind, namespace, name)?;
        let mut store = self.shared.store();
        let event = store.delete(resource, &key);
        self.shared.notify(store.resource_version());
        Ok(event.map(|e| (*e.object).clone()))
    }

    /// The stored object, if any; `namespace` is ignored for cluster-scoped kinds.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, Error> {
        let (_, key) = lookup(api_version, kind, namespace, name)?;
        Ok(self.shared.store().get(&key).map(|o| (*o).clone()))
    }

    /// The newest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Aborts every open watch stream mid-response, as a dropped connection
    /// would; clients resume from their last resourceVersion.
    pub fn drop_watches(&self) {
        self.shared
            .dropped
            .send_modify(|generation| *generation += 1);
    }

    /// Forgets the event history: every resourceVersion handed out so far
    /// becomes too old, so the next watch resume gets 410 Expired and the
    /// client has to relist. Open watches that are up to date keep running;
    /// one that had not yet caught up with the history gets 410 Expired.
    pub fn compact(&self) {
        let mut store = self.shared.store();
        store.compact();
        self.shared.notify(store.resource_version());
    }

    /// Simulates an outage (`false`) or ends it (`true`). While unavailable,
    /// new connections are closed at once, requests on open connections get
    /// the connection closed without a response and open watches are aborted.
    pub fn set_available(&self, available: bool) {
        self.shared.available.store(available, Ordering::SeqCst);
        if !available {
            self.drop_watches();
        }
    }

    /// Request counters of one resource by plural (`services`, `endpointslices`...).
    pub fn counts(&self, plural: &str) -> RequestCounts {
        let counts = self.shared.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(plural).copied().unwrap_or_default()
    }

    /// Request counters of one resource by its k8s-openapi type.
    pub fn counts_for<K: k8s_openapi::Resource>(&self) -> RequestCounts {
        self.counts(K::URL_PATH_SEGMENT)
    }
}

/// Checks an object and fills in its default namespace.
fn normalize(mut object: Value) -> Result<(&'static ResourceType, Value), Error> {
    let text = |field: &str| object[field].as_str().unwrap_or_default().to_string();
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let resource =
        resources::by_kind(&api_version, &kind).ok_or(Error::UnknownKind { api_version, kind })?;
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if !object["metadata"].is_object() || name.is_empty() {
        return Err(Error::InvalidObject("metadata.name is required".into()));
    }
    let namespace = &mut object["metadata"]["namespace"];
    if resource.namespaced && namespace.as_str().is_none_or(str::is_empty) {
        *namespace = Value::from("default");
    }
    Ok((resource, object))
}

fn lookup(
    api_version: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<(&'static ResourceType, store::ObjectKey), Error> {
    let resource = resources::by_kind(api_version, kind).ok_or_else(|| Error::UnknownKind {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
    })?;
    let namespace = if resource.namespaced { namespace } else { "" };
    Ok((resource, (resource.plural, namespace.into(), name.into())))
}
