//! What the manifests source knows: every file's last good objects, the merged view across files
//! (last file in path order wins), and how a poll turns settled file changes into events.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::parse::{self, Slot};
use super::scan::{self, Stamp};
use super::{ManifestStats, Problem, ProblemError};
use crate::model::{Kind, Object, ObjectKey, ObjectRef};
use crate::source::SourceEvent;

type Merged = BTreeMap<(Kind, ObjectKey), Object>;

/// One loaded file.
struct FileState {
    stamp: Stamp,
    /// Hash of the content last parsed (an unchanged content is not parsed again).
    content: Option<u64>,
    /// The objects the file defines, in file order; rejected documents keep their last good
    /// version here.
    objects: Vec<(Slot, Object)>,
    problems: Vec<Problem>,
}

/// The manifests source's state between polls.
pub(super) struct State {
    roots: Vec<PathBuf>,
    files: BTreeMap<PathBuf, FileState>,
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
            files: BTreeMap::new(),
            pending: HashMap::new(),
            merged: Merged::new(),
            stats,
        };
        for (path, stamp) in scan::scan(&state.roots) {
            state.reload(&path, Some(stamp));
        }
        state.merged = state.merge();
        state.update_gauge();
        state
    }

    /// The merged objects of one kind.
    pub(super) fn objects_of(&self, kind: Kind) -> Vec<Object> {
        self.merged
            .range((kind, ObjectKey::new("", ""))..)
            .take_while(|((k, _), _)| *k == kind)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Every merged object.
    pub(super) fn objects(&self) -> Vec<Object> {
        self.merged.values().cloned().collect()
    }

    /// Every current problem, by file in path order.
    pub(super) fn problems(&self) -> Vec<Problem> {
        self.files
            .values()
            .flat_map(|f| f.problems.iter().cloned())
            .collect()
    }

    /// Checks every file once; applies the changes that have settled and returns the events for
    /// the objects that changed.
    pub(super) fn poll(&mut self) -> Vec<SourceEvent> {
        let seen = scan::scan(&self.roots);
        let paths: HashSet<PathBuf> = seen.keys().chain(self.files.keys()).cloned().collect();
        let mut changed = false;
        for path in paths {
            let now = seen.get(&path).copied();
            if now == self.files.get(&path).map(|f| f.stamp) {
                self.pending.remove(&path);
                continue;
            }
            if self.pending.get(&path) == Some(&now) {
                self.pending.remove(&path);
                changed |= self.reload(&path, now);
            } else {
                self.pending.insert(path, now);
            }
        }
        self.pending
            .retain(|p, _| seen.contains_key(p) || self.files.contains_key(p));
        if !changed {
            return Vec::new();
        }
        self.update_gauge();
        let merged = self.merge();
        let events = diff(&self.merged, &merged);
        self.merged = merged;
        events
    }

    /// Reloads one file (`None`: it is gone). Returns whether its objects may have changed.
    fn reload(&mut self, path: &Path, stamp: Option<Stamp>) -> bool {
        self.stats.reloads_total.fetch_add(1, Ordering::Relaxed);
        let Some(stamp) = stamp else {
            tracing::info!(file = %path.display(), "manifest file removed");
            return self.files.remove(path).is_some();
        };
        let previous = self.files.remove(path);
        let text = std::fs::read(path).map_err(|e| ProblemError::Read(e.to_string()));
        let content = text.as_ref().ok().map(|t| hash(t));
        let mut previous_objects = Vec::new();
        if let Some(prev) = previous {
            if content.is_some() && prev.content == content {
                self.files.insert(path.into(), FileState { stamp, ..prev });
                return false;
            }
            previous_objects = prev.objects;
        }
        let (objects, problems) = self.parse(path, text, previous_objects);
        self.report(&problems);
        self.files.insert(
            path.into(),
            FileState {
                stamp,
                content,
                objects,
                problems,
            },
        );
        true
    }

    fn parse(
        &self,
        path: &Path,
        text: Result<Vec<u8>, ProblemError>,
        previous: Vec<(Slot, Object)>,
    ) -> (Vec<(Slot, Object)>, Vec<Problem>) {
        let parsed = text.and_then(|t| {
            let text = String::from_utf8(t).map_err(|_| ProblemError::NotUtf8)?;
            parse::parse_file(path, &text)
        });
        match parsed {
            Ok(parsed) => {
                let objects = keep_last_good(parsed.objects, &parsed.rejected, &previous);
                (objects, parsed.problems)
            }
            Err(error) => {
                let problem = Problem::whole_file(path, error);
                (previous, vec![problem])
            }
        }
    }

    fn report(&self, problems: &[Problem]) {
        for problem in problems {
            self.stats.problems_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(file = %problem.file.display(), "manifest rejected: {problem}");
        }
    }

    fn update_gauge(&self) {
        let current = self.files.values().map(|f| f.problems.len()).sum::<usize>();
        let current = u64::try_from(current).unwrap_or(u64::MAX);
        self.stats
            .problems_current
            .store(current, Ordering::Relaxed);
    }

    /// Merges every file's objects: later files (in path order) override earlier ones.
    fn merge(&self) -> Merged {
        let mut merged = Merged::new();
        for file in self.files.values() {
            for (_, object) in &file.objects {
                merged.insert((object.kind(), object.key()), object.clone());
            }
        }
        merged
    }
}

fn hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
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

/// The events that turn `old` into `new`: Apply for new or changed objects, then Delete.
fn diff(old: &Merged, new: &Merged) -> Vec<SourceEvent> {
    let mut events = Vec::new();
    for kind in Kind::ALL {
        for ((k, _), object) in new.iter().filter(|((k, _), _)| *k == kind) {
            let key = (*k, object.key());
            if old.get(&key) != Some(object) {
                events.push(SourceEvent::Apply(object.clone()));
            }
        }
    }
    for kind in Kind::ALL.iter().rev() {
        for ((k, key), object) in old.iter().filter(|((k, _), _)| k == kind) {
            if !new.contains_key(&(*k, key.clone())) {
                events.push(SourceEvent::Delete(object.object_ref()));
            }
        }
    }
    events
}
