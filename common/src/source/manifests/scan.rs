//! Finding manifest files under the configured paths and stamping them (size, mtime, ctime,
//! inode) so a poll can tell which changed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Directory depth below a root at which the walk stops (guards against symlink loops).
const MAX_DEPTH: usize = 16;

/// The walk yields the CPU after this many entries. It runs at a low priority beside the DNS
/// query workers, often on the same CPU; the scheduler lets a thread it picked run out its slice
/// (about 3 ms) before a runnable worker gets the CPU back, so without yields a poll of 500 files
/// held the worker up for its whole length. With them a worker waits for at most 32 `stat`s.
const YIELD_EVERY: usize = 32;

/// What identifies one version of a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }
}

/// Every manifest file under `roots`, with its stamp. A root that is a file is taken whatever its
/// name; files found in directories must end in `.yaml`, `.yml` or `.json` and not be hidden or
/// editor leftovers. Symlinks are followed (a ConfigMap volume is made of them).
pub(super) fn scan(roots: &[PathBuf]) -> BTreeMap<PathBuf, Stamp> {
    let mut found = BTreeMap::new();
    for root in roots {
        match fs::metadata(root) {
            Ok(meta) if meta.is_dir() => walk(root, 0, &mut found),
            Ok(meta) if meta.is_file() => {
                found.insert(root.clone(), Stamp::of(&meta));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(path = %root.display(), error = %e, "manifest path unavailable")
            }
        }
    }
    found
}

fn walk(dir: &Path, depth: usize, found: &mut BTreeMap<PathBuf, Stamp>) {
    if depth > MAX_DEPTH {
        tracing::warn!(dir = %dir.display(), "manifest directory nested too deep; not descending");
        return;
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list manifest directory");
            return;
        }
    };
    for (index, entry) in entries.flatten().enumerate() {
        if index % YIELD_EVERY == YIELD_EVERY - 1 {
            std::thread::yield_now();
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if is_hidden_or_temp(name) {
            continue;
        }
        match metadata(&entry) {
            Some(meta) if meta.is_dir() => walk(&entry.path(), depth + 1, found),
            Some(meta) if meta.is_file() && is_manifest_name(name) => {
                found.insert(entry.path(), Stamp::of(&meta));
            }
            _ => {}
        }
    }
}

/// An entry's metadata, following symlinks. A plain entry is stat'ed relative to its directory
/// (no walk of the whole path); only symlinks take the full `stat` of their path.
fn metadata(entry: &fs::DirEntry) -> Option<fs::Metadata> {
    let is_link = entry.file_type().ok()?.is_symlink();
    if is_link {
        fs::metadata(entry.path()).ok()
    } else {
        entry.metadata().ok()
    }
}

/// Hidden entries (also ConfigMap volumes' `..data` internals) and editor temporaries.
pub(super) fn is_hidden_or_temp(name: &str) -> bool {
    name.starts_with('.')
        || name.starts_with('#')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".tmp")
}

/// `*.yaml`, `*.yml`, `*.json` (any case).
pub(super) fn is_manifest_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "yaml" | "yml" | "json"))
}
