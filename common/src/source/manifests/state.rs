//! What the manifests source knows: every file's last good objects, the merged view across files
//! (last file in path order wins; see [`super::merged`]), and how a poll turns settled file
//! changes into events.
//!
//! A file's objects are kept as `(Slot, Object)` pairs in file order (24 bytes each; the objects
//! are shared with the merged view). A settled change reloads the file and hands its old and new
//! objects to [`Merged::update`], which resolves only those keys again; the poll's events are
//! the net change of the keys it touched.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::merged::{Changes, FileId, FileTable, Merged};
use super::parse::{self, Slot};
use super::scan::{self, Stamp};
use super::{ManifestStats, Problem, ProblemError};
use crate::model::{Kind, Object, ObjectKey, ObjectRef};
use crate::source::SourceEvent;

// A file's objects cost 24 bytes each besides the objects themselves.
const _: () = assert!(size_of::<(Slot, Object)>() == 24);

/// One loaded file.
struct FileState {
    id: FileId,
    stamp: Stamp,
    /// Hash of the content last parsed (an unchanged content is not parsed again).
    content: Option<u64>,
    /// The objects the file defines, in file order; rejected documents keep their last good
    /// version here.
    objects: Vec<(Slot, Object)>,
    problems: Vec<Problem>,
}

/// The loaded files by path, and the path of each [`FileId`].
#[derive(Default)]
struct Files {
    by_path: BTreeMap<PathBuf, FileState>,
    /// By id; `None` for a free id.
    paths: Vec<Option<PathBuf>>,
    free: Vec<FileId>,
}

impl Files {
    /// An id for a file that appeared.
    fn allocate(&mut self, path: &Path) -> FileId {
        if let Some(id) = self.free.pop() {
            self.paths[id.0 as usize] = Some(path.into());
            return id;
        }
        self.paths.push(Some(path.into()));
        FileId(u32::try_from(self.paths.len() - 1).unwrap_or(u32::MAX))
    }

    /// Frees the id of a file that is gone.
    fn release(&mut self, id: FileId) {
        if let Some(path) = self.paths.get_mut(id.0 as usize) {
            *path = None;
            self.free.push(id);
        }
    }

    fn path(&self, id: FileId) -> Option<&PathBuf> {
        self.paths.get(id.0 as usize)?.as_ref()
    }
}

impl FileTable for Files {
    fn is_after(&self, a: FileId, b: FileId) -> bool {
        self.path(a) > self.path(b)
    }

    fn definition(&self, id: FileId, kind: Kind, key: &ObjectKey) -> Option<Object> {
        let file = self.by_path.get(self.path(id)?)?;
        let (_, object) = file
            .objects
            .iter()
            .rev()
            .find(|(_, o)| o.kind() == kind && o.key() == *key)?;
        Some(object.clone())
    }
}

/// The manifests source's state between polls.
pub(super) struct State {
    roots: Vec<PathBuf>,
    files: Files,
    /// Files whose stamp differs from the loaded one, with the stamp seen at the last poll
    /// (`None`: absent). A change is applied once two polls in a row see the same stamp.
    pending: HashMap<PathBuf, Option<Stamp>>,
    merged: Merged,
    stats: Arc<ManifestStats>,
}

impl State {
    /// Loads every file under `roots` at once (no settling).
    pub(super) fn load(roots: Vec<PathBuf>, stats: Arc<ManifestStats>) -> State {
        let mut state = State {
            roots,
            files: Files::default(),
            pending: HashMap::new(),
            merged: Merged::default(),
            stats,
        };
        for (path, stamp) in scan::scan(&state.roots) {
            state.reload(&path, Some(stamp), None);
        }
        state.update_gauge();
        state
    }

    /// The merged objects of one kind, by namespace/name.
    pub(super) fn objects_of(&self, kind: Kind) -> Vec<Object> {
        self.merged.objects_of(kind)
    }

    /// Every merged object, by kind then namespace/name.
    pub(super) fn objects(&self) -> Vec<Object> {
        let mut kinds = Kind::ALL;
        kinds.sort_unstable();
        kinds.iter().flat_map(|k| self.objects_of(*k)).collect()
    }

    /// The merged view (for tests).
    #[cfg(test)]
    pub(super) fn merged(&self) -> &Merged {
        &self.merged
    }

    /// Every current problem, by file in path order.
    pub(super) fn problems(&self) -> Vec<Problem> {
        self.files
            .by_path
            .values()
            .flat_map(|f| f.problems.iter().cloned())
            .collect()
    }

    /// Checks every file once; applies the changes that have settled and returns the events for
    /// the objects that changed.
    pub(super) fn poll(&mut self) -> Vec<SourceEvent> {
        let seen = scan::scan(&self.roots);
        let differing = differing(&seen, &self.files.by_path);
        // A path whose stamp went back to the known one, or that is gone from both, is no longer
        // pending.
        self.pending.retain(|p, _| differing.contains_key(p));
        let mut changes = Changes::default();
        let mut changed = false;
        for (path, now) in differing {
            if self.pending.get(&path) == Some(&now) {
                self.pending.remove(&path);
                changed |= self.reload(&path, now, Some(&mut changes));
            } else {
                self.pending.insert(path, now);
            }
        }
        if !changed {
            return Vec::new();
        }
        self.update_gauge();
        changes.events(&self.merged)
    }

    /// Reloads one file (`None`: it is gone) and updates the merged view, recording in `changes`
    /// what that changed. Returns whether the file's objects or problems may have changed.
    fn reload(&mut self, path: &Path, stamp: Option<Stamp>, changes: Option<&mut Changes>) -> bool {
        self.stats.reloads_total.fetch_add(1, Ordering::Relaxed);
        let previous = self.files.by_path.remove(path);
        let Some(stamp) = stamp else {
            tracing::info!(file = %path.display(), "manifest file removed");
            let Some(gone) = previous else {
                return false;
            };
            self.merged
                .update(gone.id, &gone.objects, &[], &self.files, changes);
            self.files.release(gone.id);
            return true;
        };
        let text = std::fs::read(path).map_err(|e| ProblemError::Read(e.to_string()));
        let content = text.as_ref().ok().map(|t| hash(t));
        let (id, old) = match previous {
            Some(prev) if content.is_some() && prev.content == content => {
                let unchanged = FileState { stamp, ..prev };
                self.files.by_path.insert(path.into(), unchanged);
                return false;
            }
            Some(prev) => (prev.id, prev.objects),
            None => (self.files.allocate(path), Vec::new()),
        };
        let (objects, problems) = self.parse(path, text, &old);
        self.report(&problems);
        let objects = match objects {
            Some(new) => {
                self.merged.update(id, &old, &new, &self.files, changes);
                new
            }
            None => old,
        };
        let state = FileState {
            id,
            stamp,
            content,
            objects,
            problems,
        };
        self.files.by_path.insert(path.into(), state);
        true
    }

    /// A file's new objects (`None`: it does not parse, so it keeps its `old` ones) and problems.
    fn parse(
        &self,
        path: &Path,
        text: Result<Vec<u8>, ProblemError>,
        old: &[(Slot, Object)],
    ) -> (Option<Vec<(Slot, Object)>>, Vec<Problem>) {
        let parsed = text.and_then(|t| {
            let text = String::from_utf8(t).map_err(|_| ProblemError::NotUtf8)?;
            parse::parse_file(path, &text)
        });
        match parsed {
            Ok(parsed) => {
                let mut objects = keep_last_good(parsed.objects, &parsed.rejected, old);
                reuse_unchanged(&mut objects, old);
                objects.shrink_to_fit();
                (Some(objects), parsed.problems)
            }
            Err(error) => (None, vec![Problem::whole_file(path, error)]),
        }
    }

    fn report(&self, problems: &[Problem]) {
        for problem in problems {
            self.stats.problems_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(file = %problem.file.display(), "manifest rejected: {problem}");
        }
    }

    fn update_gauge(&self) {
        let current = self
            .files
            .by_path
            .values()
            .map(|f| f.problems.len())
            .sum::<usize>();
        let current = u64::try_from(current).unwrap_or(u64::MAX);
        self.stats
            .problems_current
            .store(current, Ordering::Relaxed);
    }
}

fn hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Replaces each new object that equals the file's previous version of it by that previous
/// `Arc`. The catalog keeps the copy it already has when an object comes back unchanged, so
/// without this a rewrite of every file (a ConfigMap update, a `kubectl apply` of everything)
/// would leave the source holding a second copy of every object.
fn reuse_unchanged(objects: &mut [(Slot, Object)], previous: &[(Slot, Object)]) {
    if previous.is_empty() {
        return;
    }
    let by_ref: HashMap<ObjectRef, &Object> =
        previous.iter().map(|(_, o)| (o.object_ref(), o)).collect();
    for (_, object) in objects.iter_mut() {
        if let Some(old) = by_ref.get(&object.object_ref())
            && **old == *object
        {
            *object = (*old).clone();
        }
    }
}

/// The file's new objects, plus, for each rejected document, the last good version of the
/// object it defined (found by name, or by position when the name cannot be read).
fn keep_last_good(
    mut objects: Vec<(Slot, Object)>,
    rejected: &[(Slot, Option<ObjectRef>)],
    previous: &[(Slot, Object)],
) -> Vec<(Slot, Object)> {
    let defined: HashSet<ObjectRef> = objects.iter().map(|(_, o)| o.object_ref()).collect();
    for (slot, wanted) in rejected {
        let old = previous.iter().rev().find(|(old_slot, o)| match wanted {
            Some(r) => o.object_ref() == *r,
            None => old_slot == slot,
        });
        if let Some((_, o)) = old
            && !defined.contains(&o.object_ref())
        {
            objects.push((*slot, o.clone()));
        }
    }
    objects.sort_by_key(|(slot, _)| *slot);
    objects
}

/// The paths whose stamp in `seen` differs from the known file's (`None`: the file is gone), by
/// one pass over both maps in path order: a poll of an unchanged tree costs one comparison per
/// file instead of several map lookups.
fn differing(
    seen: &BTreeMap<PathBuf, Stamp>,
    known: &BTreeMap<PathBuf, FileState>,
) -> BTreeMap<PathBuf, Option<Stamp>> {
    let mut out = BTreeMap::new();
    let mut known = known.iter().peekable();
    for (path, stamp) in seen {
        while let Some((gone, _)) = known.next_if(|(k, _)| *k < path) {
            out.insert(gone.clone(), None);
        }
        match known.next_if(|(k, _)| *k == path) {
            Some((_, file)) if file.stamp == *stamp => {}
            _ => {
                out.insert(path.clone(), Some(*stamp));
            }
        }
    }
    out.extend(known.map(|(gone, _)| (gone.clone(), None)));
    out
}
