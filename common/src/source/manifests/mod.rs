//! The manifests source: Kubernetes objects read from YAML/JSON files on disk instead of the API
//! server, for clusters without one, tests and demos.
//!
//! This module owns reading the configured paths (files, or directories walked recursively for
//! `*.yaml`, `*.yml`, `*.json`, skipping hidden entries and editor temporaries), splitting files
//! into documents (YAML multi-document streams, JSON streams, `kind: List`), converting each
//! document with [`crate::convert::from_json`] (kinds svcplane does not consume are ignored), and
//! turning file changes into [`SourceEvent`]s: one `Replace` per kind and `Synced` at start, then
//! `Apply`/`Delete` for exactly the objects that changed. A bad document is reported as a
//! [`Problem`] (file, 1-based document index, line, kind/namespace/name, field) and skipped; the
//! object it defined keeps its last good version, and a file that does not parse at all keeps all
//! of its objects. When two files define the same object, the later file in path order wins; the
//! merged view is updated per changed file, at a cost proportional to that file (`merged`).
//!
//! Changes are found by polling every [`DEFAULT_POLL_INTERVAL`] (250 ms) rather than with inotify
//! (`notify`): polling sees through what inotify misses or reports awkwardly — editors that save
//! by rename, directories created after start, ConfigMap volumes whose files are symlinks swapped
//! via `..data`, network and overlay file systems — and costs one `stat` per file. A file's change
//! (size, mtime, ctime, inode) is applied once two polls in a row agree, so a half-written file is
//! not read: changes take effect within about 3 intervals (750 ms).

mod merged;
mod parse;
mod scan;
mod state;
mod winners;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bench;
#[cfg(test)]
mod tests_merge;
#[cfg(test)]
mod tests_watch;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{EventSender, SourceEvent};
use crate::convert::ConvertError;
use crate::model::{Kind, Object};
use state::State;

/// How often files are checked for changes.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Why the manifests source could not run.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A configured path does not exist (or cannot be inspected) at start.
    #[error("manifest path {}: {source}", path.display())]
    Path {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The blocking file-reading task failed.
    #[error("manifest reader task failed: {0}")]
    Task(String),
}

/// Why a file or document was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProblemError {
    /// The file could not be read; its previous objects are kept.
    #[error("cannot read the file: {0}")]
    Read(String),
    /// The file is not UTF-8; its previous objects are kept.
    #[error("the file is not UTF-8")]
    NotUtf8,
    /// The file is not valid YAML/JSON; its previous objects are kept.
    #[error("not valid YAML/JSON: {0}")]
    Syntax(String),
    /// One document was rejected; the object it defined keeps its last good version.
    #[error(transparent)]
    Convert(#[from] ConvertError),
}

/// A rejected file or document, with where it is and what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based document index in the file (empty documents count); `None` for the whole file.
    pub document: Option<usize>,
    /// 0-based index in the `items` of a `kind: List` document.
    pub item: Option<usize>,
    /// 1-based line where the document starts.
    pub line: Option<u64>,
    /// `Service myapp/web`, when the document's kind is readable.
    pub object: Option<String>,
    pub error: ProblemError,
}

impl Problem {
    fn whole_file(path: &Path, error: ProblemError) -> Problem {
        Problem {
            file: path.to_path_buf(),
            document: None,
            item: None,
            line: None,
            object: None,
            error,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(document) = self.document {
            write!(f, ": document {document}")?;
        }
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        write!(f, ": {}", self.error)
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct ManifestStats {
    /// Problems reported since start (each rejected parse of a file or document counts once).
    pub problems_total: AtomicU64,
    /// Problems in the files as they are now.
    pub problems_current: AtomicU64,
    /// File loads, reloads and removals processed.
    pub reloads_total: AtomicU64,
}

/// Tuning of [`run_with`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub poll_interval: Duration,
    pub stats: Arc<ManifestStats>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            poll_interval: DEFAULT_POLL_INTERVAL,
            stats: Arc::default(),
        }
    }
}

/// Everything loaded from the paths at one moment.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The merged objects, by kind then namespace/name.
    pub objects: Vec<Object>,
    pub problems: Vec<Problem>,
}

/// Loads the paths once, without watching. Fails if a path does not exist.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, ManifestError> {
    check_paths(paths)?;
    let state = State::load(paths.to_vec(), Arc::default());
    Ok(Loaded {
        objects: state.objects(),
        problems: state.problems(),
    })
}

/// Runs the source with the default options until `shutdown` is cancelled or `tx` is closed.
pub async fn run(
    paths: Vec<PathBuf>,
    tx: EventSender,
    shutdown: CancellationToken,
) -> Result<(), ManifestError> {
    run_with(paths, tx, shutdown, RunOptions::default()).await
}

/// Runs the source: fails before sending anything if a path does not exist; otherwise sends one
/// `Replace` per kind of [`Kind::ALL`] and `Synced`, then the changes found by each poll.
pub async fn run_with(
    paths: Vec<PathBuf>,
    tx: EventSender,
    shutdown: CancellationToken,
    options: RunOptions,
) -> Result<(), ManifestError> {
    check_paths(&paths)?;
    let stats = options.stats.clone();
    let mut state = blocking(move || State::load(paths, stats)).await?;
    let mut initial: Vec<SourceEvent> = Kind::ALL
        .iter()
        .map(|&kind| SourceEvent::Replace {
            kind,
            objects: state.objects_of(kind),
        })
        .collect();
    initial.push(SourceEvent::Synced);
    if !send_all(&tx, &shutdown, initial).await {
        return Ok(());
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(options.poll_interval) => {}
        }
        let events;
        (state, events) = blocking(move || {
            let events = state.poll();
            (state, events)
        })
        .await?;
        if !send_all(&tx, &shutdown, events).await {
            return Ok(());
        }
    }
}

fn check_paths(paths: &[PathBuf]) -> Result<(), ManifestError> {
    for path in paths {
        std::fs::metadata(path).map_err(|source| ManifestError::Path {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ManifestError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ManifestError::Task(e.to_string()))
}

/// Sends `events` in order; `false` once the receiver is gone or shutdown is requested.
async fn send_all(
    tx: &EventSender,
    shutdown: &CancellationToken,
    events: Vec<SourceEvent>,
) -> bool {
    for event in events {
        tokio::select! {
            sent = tx.send(event) => if sent.is_err() { return false },
            () = shutdown.cancelled() => return false,
        }
    }
    true
}

/// Parses `text` as if read from `path` (for tests elsewhere in the crate).
#[cfg(test)]
pub(crate) fn parse_for_tests(path: &Path, text: &str) -> usize {
    parse::parse_file(path, text).map_or(0, |p| p.objects.len())
}
