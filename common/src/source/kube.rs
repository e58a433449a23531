//! The Kubernetes API source: one kube-rs `watcher` per kind, converted into [`SourceEvent`]s.
//!
//! kube-runtime's watcher already implements the list/watch protocol (initial list, watch from
//! the list's resourceVersion, bookmarks, a relist on `410 Gone`); with `default_backoff` it
//! retries with exponential backoff after errors. This module maps its events onto the source
//! protocol: `Init … InitDone` becomes one [`SourceEvent::Replace`] (so a relist also removes
//! objects deleted while disconnected), `Apply`/`Delete` pass through, and the first `InitDone`
//! of the last kind sends [`SourceEvent::Synced`]. Watch errors flip the source to disconnected
//! until the next event arrives; the catalog keeps serving what it has.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::{EventSender, SourceEvent};
use crate::convert::{self, ConvertError};
use crate::model::{Kind, Object, ObjectKey, ObjectRef};

/// Errors of the Kubernetes API source.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// The kubeconfig file could not be read or parsed.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig was given and the in-cluster configuration is not available.
    #[error("no --kubeconfig, no KUBECONFIG and not in a cluster: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    /// The client could not be built from the configuration.
    #[error("building the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Builds a client from `--kubeconfig PATH`, else `$KUBECONFIG`, else the in-cluster config.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeSourceError> {
    let path = kubeconfig
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from));
    let config = match path {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(&path).map_err(|source| {
                KubeSourceError::Kubeconfig {
                    path: path.clone(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|source| KubeSourceError::Kubeconfig { path, source })?
        }
        None => kube::Config::incluster()?,
    };
    Ok(Client::try_from(config)?)
}

/// Watches `kinds` until `shutdown` is cancelled or the receiver is gone.
pub async fn run(client: Client, kinds: Vec<Kind>, tx: EventSender, shutdown: CancellationToken) {
    let shared = Arc::new(Shared {
        unlisted: AtomicUsize::new(kinds.len()),
        failing: AtomicUsize::new(0),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for kind in kinds {
        let (client, tx, shared) = (client.clone(), tx.clone(), shared.clone());
        tasks.spawn(async move {
            match kind {
                Kind::Service => {
                    watch::<core::Service>(client, kind, tx, shared, |s| {
                        convert::service(s).map(|s| Some(Object::Service(Arc::new(s))))
                    })
                    .await
                }
                Kind::EndpointSlice => {
                    watch::<discovery::EndpointSlice>(client, kind, tx, shared, |s| {
                        convert::endpoint_slice(s)
                            .map(|s| s.map(|s| Object::EndpointSlice(Arc::new(s))))
                    })
                    .await
                }
                Kind::Pod => {
                    watch::<core::Pod>(client, kind, tx, shared, |p| {
                        convert::pod(p).map(|p| Some(Object::Pod(Arc::new(p))))
                    })
                    .await
                }
                Kind::Node => {
                    watch::<core::Node>(client, kind, tx, shared, |n| {
                        convert::node(n).map(|n| Some(Object::Node(Arc::new(n))))
                    })
                    .await
                }
                Kind::Namespace => {
                    watch::<core::Namespace>(client, kind, tx, shared, |n| {
                        convert::namespace(n).map(|n| Some(Object::Namespace(Arc::new(n))))
                    })
                    .await
                }
            }
        });
    }
    tokio::select! {
        _ = shutdown.cancelled() => tasks.abort_all(),
        _ = async { while tasks.join_next().await.is_some() {} } => {}
    }
}

/// State shared by the per-kind watchers.
#[derive(Debug)]
struct Shared {
    /// Kinds that have not finished their first list.
    unlisted: AtomicUsize,
    /// Kinds whose watch is currently failing.
    failing: AtomicUsize,
}

/// The reference of an API object as the catalog keys it.
fn object_ref<K: Resource>(kind: Kind, obj: &K) -> ObjectRef {
    let namespace = obj.meta().namespace.as_deref().unwrap_or("");
    let name = obj.meta().name.as_deref().unwrap_or("");
    ObjectRef {
        kind,
        key: ObjectKey::new(namespace, name),
    }
}

fn log_invalid<K: Resource>(kind: Kind, obj: &K, err: &ConvertError) {
    tracing::warn!(%kind, object = %object_ref(kind, obj).key, error = %err, "ignoring invalid object");
}

async fn watch<K>(
    client: Client,
    kind: Kind,
    tx: EventSender,
    shared: Arc<Shared>,
    convert: impl Fn(&K) -> Result<Option<Object>, ConvertError>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    run_stream(Api::all(client), kind, tx, shared, convert).await
}

async fn run_stream<K>(
    api: Api<K>,
    kind: Kind,
    tx: EventSender,
    shared: Arc<Shared>,
    convert: impl Fn(&K) -> Result<Option<Object>, ConvertError>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let stream = watcher::watcher(api.clone(), watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut buffer: Vec<Object> = Vec::new();
    let mut listed = false;
    let mut failing = false;
    // kube-runtime's watcher resumes a watch without yielding anything until the next change,
    // so a quiet kind would stay "failing" forever: while failing, probe the API instead.
    let mut probe = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let item = tokio::select! {
            item = stream.next() => match item {
                Some(item) => item,
                None => return,
            },
            _ = probe.tick(), if failing => {
                let params = kube::api::ListParams::default().limit(1);
                if api.list_metadata(&params).await.is_ok() {
                    failing = false;
                    if shared.failing.fetch_sub(1, Ordering::AcqRel) == 1
                        && tx.send(SourceEvent::Connected(true)).await.is_err()
                    {
                        return;
                    }
                }
                continue;
            }
        };
        let event = match item {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(%kind, error = %err, "watch failed; serving the last known state");
                if !failing {
                    failing = true;
                    if shared.failing.fetch_add(1, Ordering::AcqRel) == 0
                        && tx.send(SourceEvent::Connected(false)).await.is_err()
                    {
                        return;
                    }
                }
                continue;
            }
        };
        if failing {
            failing = false;
            if shared.failing.fetch_sub(1, Ordering::AcqRel) == 1
                && tx.send(SourceEvent::Connected(true)).await.is_err()
            {
                return;
            }
        }
        let out = match event {
            Event::Init => {
                buffer.clear();
                continue;
            }
            Event::InitApply(obj) => {
                match convert(&obj) {
                    Ok(Some(o)) => buffer.push(o),
                    Ok(None) => {}
                    Err(e) => log_invalid(kind, &obj, &e),
                }
                continue;
            }
            Event::InitDone => SourceEvent::Replace {
                kind,
                objects: std::mem::take(&mut buffer),
            },
            Event::Apply(obj) => match convert(&obj) {
                Ok(Some(o)) => SourceEvent::Apply(o),
                Ok(None) => SourceEvent::Delete(object_ref(kind, &obj)),
                Err(e) => {
                    log_invalid(kind, &obj, &e);
                    continue;
                }
            },
            Event::Delete(obj) => SourceEvent::Delete(object_ref(kind, &obj)),
        };
        let initial_done = matches!(out, SourceEvent::Replace { .. }) && !listed;
        if tx.send(out).await.is_err() {
            return;
        }
        if initial_done {
            listed = true;
            if shared.unlisted.fetch_sub(1, Ordering::AcqRel) == 1
                && tx.send(SourceEvent::Synced).await.is_err()
            {
                return;
            }
        }
    }
}
