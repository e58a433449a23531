//! Sources of Kubernetes objects: the API server ([`kube`]) and manifests on disk ([`manifests`]).
//!
//! A source owns the conversion of what it reads into the slim [`crate::model`] and sends
//! [`SourceEvent`]s into a channel; the [`crate::catalog`] store is the only consumer. Both sources
//! follow the same protocol: a [`SourceEvent::Replace`] per kind for the initial list (and for each
//! relist), then [`SourceEvent::Apply`] / [`SourceEvent::Delete`] for changes, and a single
//! [`SourceEvent::Synced`] once every kind has been listed.

pub mod kube;
pub mod manifests;

use crate::model::{Kind, Object, ObjectRef};

/// What a source tells the catalog store.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// The complete set of objects of `kind` (initial list or relist): whatever the store held
    /// for that kind and is not in `objects` is gone.
    Replace { kind: Kind, objects: Vec<Object> },
    /// An object was created or changed.
    Apply(Object),
    /// An object was deleted.
    Delete(ObjectRef),
    /// Every watched kind has delivered its initial `Replace`.
    Synced,
    /// The source lost (`false`) or regained (`true`) its connection to what it reads; the store
    /// keeps serving the last known state meanwhile.
    Connected(bool),
}

/// The sending half consumers give to a source.
pub type EventSender = tokio::sync::mpsc::Sender<SourceEvent>;

/// Errors starting a source.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A `--manifests` path does not exist.
    #[error("--manifests {0}: no such file or directory")]
    MissingPath(std::path::PathBuf),
    /// The Kubernetes client could not be configured.
    #[error(transparent)]
    Kube(#[from] kube::KubeSourceError),
}

/// Starts the source the flags ask for: manifests when `manifests` is not empty, else the
/// Kubernetes API (watching `kinds`). Events go to `tx` until `shutdown`.
pub async fn start(
    manifests: &[std::path::PathBuf],
    kubeconfig: Option<&std::path::Path>,
    kinds: Vec<Kind>,
    tx: EventSender,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), StartError> {
    if !manifests.is_empty() {
        if let Some(missing) = manifests.iter().find(|p| !p.exists()) {
            return Err(StartError::MissingPath(missing.clone()));
        }
        let paths = manifests.to_vec();
        tokio::spawn(async move {
            if let Err(e) = manifests::run(paths, tx, shutdown).await {
                tracing::error!(error = %e, "manifests source stopped");
            }
        });
        return Ok(());
    }
    let client = kube::client(kubeconfig).await?;
    tokio::spawn(kube::run(client, kinds, tx, shutdown));
    Ok(())
}
