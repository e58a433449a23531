//! The incremental merged view, driven through [`State`] poll by poll (no sleeps): overrides by
//! later files, removals revealing earlier definitions, file deletion, rejected documents in
//! shared keys, and a randomized comparison with a merge from scratch and a whole-view diff.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::ManifestStats;
use super::state::State;
use super::tests::service_yaml;
use super::{parse, scan};
use crate::model::{Kind, Object, ObjectKey};
use crate::source::SourceEvent;

/// Writes `text` with a trailing comment whose length changes on every call, so that the file's
/// stamp changes even within one tick of the file system clock.
fn edit(dir: &Path, name: &str, text: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static REVISION: AtomicUsize = AtomicUsize::new(0);
    let revision = REVISION.fetch_add(1, Ordering::Relaxed) % 64;
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(&path, format!("{text}#{}\n", "r".repeat(revision))).expect("write");
}

fn load(dir: &Path) -> State {
    State::load(vec![dir.into()], Arc::new(ManifestStats::default()))
}

/// The events of a change, polled until settled (it takes two polls).
fn settle(state: &mut State) -> Vec<String> {
    assert!(state.poll().is_empty(), "a change settles over two polls");
    state.poll().iter().map(describe).collect()
}

fn describe(event: &SourceEvent) -> String {
    match event {
        SourceEvent::Apply(Object::Service(s)) => format!("apply {} {}", s.key, s.ports[0].port),
        SourceEvent::Apply(o) => format!("apply {}", o.object_ref()),
        SourceEvent::Delete(r) => format!("delete {r}"),
        other => format!("{other:?}"),
    }
}

fn services(names: &[(&str, u32)]) -> String {
    let docs: Vec<String> = names.iter().map(|(n, p)| service_yaml(n, *p)).collect();
    docs.join("---\n")
}

const BAD_WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: 70000}]}\n";

#[test]
fn later_file_overrides_and_its_removal_reveals_the_earlier_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    edit(dir.path(), "a.yaml", &services(&[("web", 80)]));
    let mut state = load(dir.path());
    edit(
        dir.path(),
        "b.yaml",
        &services(&[("web", 81), ("db", 5432)]),
    );
    assert_eq!(
        settle(&mut state),
        ["apply shop/db 5432", "apply shop/web 81"]
    );
    edit(dir.path(), "a.yaml", &services(&[("web", 82)]));
    assert!(settle(&mut state).is_empty(), "a.yaml is overridden");
    edit(dir.path(), "b.yaml", &services(&[("db", 5432)]));
    assert_eq!(settle(&mut state), ["apply shop/web 82"]);
    edit(dir.path(), "a.yaml", &services(&[("cache", 6379)]));
    assert_eq!(
        settle(&mut state),
        ["apply shop/cache 6379", "delete Service shop/web"]
    );
    assert_eq!(state.merged().shared_len(), 0);
}

#[test]
fn deleting_files_reveals_then_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    edit(dir.path(), "a.yaml", &services(&[("web", 80)]));
    edit(
        dir.path(),
        "b/b.yaml",
        &services(&[("web", 81), ("web", 82)]),
    );
    edit(dir.path(), "c.yaml", &services(&[("web", 83)]));
    let mut state = load(dir.path());
    assert_eq!(state.merged().shared_len(), 1);
    fs::remove_file(dir.path().join("a.yaml")).expect("rm");
    assert!(settle(&mut state).is_empty(), "a.yaml did not win");
    fs::remove_file(dir.path().join("c.yaml")).expect("rm");
    assert_eq!(
        settle(&mut state),
        ["apply shop/web 82"],
        "the last definition of the next file"
    );
    assert_eq!(state.merged().shared_len(), 0);
    fs::remove_file(dir.path().join("b/b.yaml")).expect("rm");
    assert_eq!(settle(&mut state), ["delete Service shop/web"]);
    assert!(state.objects().is_empty());
}

#[test]
fn rejected_document_in_a_shared_key_keeps_its_last_good_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    edit(dir.path(), "a.yaml", &services(&[("web", 80)]));
    edit(
        dir.path(),
        "b.yaml",
        &services(&[("web", 81), ("db", 5432)]),
    );
    let mut state = load(dir.path());
    // b.yaml's web is rejected: b.yaml keeps web 81, which still wins.
    edit(
        dir.path(),
        "b.yaml",
        &format!("{BAD_WEB}---\n{}", service_yaml("db", 5433)),
    );
    assert_eq!(settle(&mut state), ["apply shop/db 5433"]);
    assert_eq!(state.problems().len(), 1);
    // a.yaml's web is rejected too: nothing changes, a.yaml keeps web 80.
    edit(dir.path(), "a.yaml", BAD_WEB);
    assert!(settle(&mut state).is_empty());
    assert_eq!(state.problems().len(), 2);
    // b.yaml drops web: a.yaml's last good version is revealed.
    edit(dir.path(), "b.yaml", &services(&[("db", 5433)]));
    assert_eq!(settle(&mut state), ["apply shop/web 80"]);
    assert_eq!(state.problems().len(), 1);
    // a.yaml's whole file breaks: it keeps everything.
    edit(dir.path(), "a.yaml", "kind: [Service\n");
    assert!(settle(&mut state).is_empty());
    edit(dir.path(), "a.yaml", &services(&[("web", 84)]));
    assert_eq!(settle(&mut state), ["apply shop/web 84"]);
    assert!(state.problems().is_empty());
}

#[test]
fn changes_in_one_poll_give_the_net_events_in_kind_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";
    edit(
        dir.path(),
        "a.yaml",
        &services(&[("web", 80), ("db", 5432)]),
    );
    edit(
        dir.path(),
        "b.yaml",
        &format!("{namespace}---\n{}", service_yaml("web", 81)),
    );
    let mut state = load(dir.path());
    // b.yaml drops web (revealing a.yaml's) while a.yaml changes it: one Apply, of the end
    // state; deletes come after applies, in reverse kind order.
    edit(dir.path(), "b.yaml", &services(&[("cache", 6379)]));
    edit(dir.path(), "a.yaml", &services(&[("web", 81)]));
    assert_eq!(
        settle(&mut state),
        [
            "apply shop/cache 6379",
            "delete Service shop/db",
            "delete Namespace shop"
        ]
    );
}

/// The merged objects of `dir` computed from scratch, independently of the incremental view:
/// every file parsed in path order into one map, later definitions replacing earlier ones.
fn merged_from_scratch(dir: &Path) -> Vec<Object> {
    let mut merged = BTreeMap::new();
    for path in scan::scan(&[dir.into()]).keys() {
        let text = fs::read_to_string(path).expect("read");
        let parsed = parse::parse_file(path, &text).expect("valid");
        for (_, object) in parsed.objects {
            merged.insert((object.kind(), object.key()), object);
        }
    }
    merged.into_values().collect()
}

/// A whole-view diff, as the source computed events before the view became incremental.
fn diff(old: &[Object], new: &[Object]) -> Vec<String> {
    let by_key = |objects: &[Object]| -> BTreeMap<(Kind, ObjectKey), Object> {
        objects
            .iter()
            .map(|o| ((o.kind(), o.key()), o.clone()))
            .collect()
    };
    let (old, new) = (by_key(old), by_key(new));
    let mut events = Vec::new();
    for kind in Kind::ALL {
        for ((_, key), object) in new.range((kind, ObjectKey::new("", ""))..) {
            if object.kind() == kind && old.get(&(kind, key.clone())) != Some(object) {
                events.push(describe(&SourceEvent::Apply(object.clone())));
            }
        }
    }
    for kind in Kind::ALL.iter().rev() {
        for ((k, key), object) in &old {
            if k == kind && !new.contains_key(&(*k, key.clone())) {
                events.push(describe(&SourceEvent::Delete(object.object_ref())));
            }
        }
    }
    events
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Random content for one file: a few of a small set of Services and Namespaces, some defined
/// twice, so that files often share keys.
fn random_file(rng: &mut Rng) -> String {
    let docs: Vec<String> = (0..rng.below(5))
        .map(|_| {
            let name = ["web", "db", "cache", "api"][rng.below(4) as usize];
            match rng.below(5) {
                0 => format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n"),
                _ => service_yaml(name, 80 + rng.below(3) as u32),
            }
        })
        .collect();
    docs.join("---\n")
}

#[test]
fn random_changes_match_a_merge_from_scratch_and_a_whole_diff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let names = ["a.yaml", "b.yaml", "c/c.yaml", "d.yaml"];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut state = load(dir.path());
    for step in 0..150 {
        let before = state.objects();
        for _ in 0..=rng.below(2) {
            let name = names[rng.below(names.len() as u64) as usize];
            if rng.below(4) == 0 {
                let _ = fs::remove_file(dir.path().join(name));
            } else {
                edit(dir.path(), name, &random_file(&mut rng));
            }
        }
        state.poll();
        let events: Vec<String> = state.poll().iter().map(describe).collect();
        let expected = merged_from_scratch(dir.path());
        assert_eq!(state.objects(), expected, "step {step}: the view");
        assert_eq!(
            load(dir.path()).objects(),
            expected,
            "step {step}: a reload"
        );
        assert_eq!(events, diff(&before, &expected), "step {step}: the events");
    }
}

#[test]
fn rewritten_unchanged_objects_keep_their_shared_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    edit(
        dir.path(),
        "a.yaml",
        &services(&[("web", 80), ("db", 5432)]),
    );
    let mut state = load(dir.path());
    let before = state.objects_of(Kind::Service);
    // Same objects, new bytes: nothing changes, and the source keeps the copies the catalog has.
    edit(
        dir.path(),
        "a.yaml",
        &services(&[("web", 80), ("db", 5432)]),
    );
    assert!(settle(&mut state).is_empty());
    let after = state.objects_of(Kind::Service);
    assert_eq!(before.len(), after.len());
    for (old, new) in before.iter().zip(&after) {
        let (Object::Service(old), Object::Service(new)) = (old, new) else {
            panic!("services expected");
        };
        assert!(Arc::ptr_eq(old, new), "{} was copied", new.key);
    }
    // A changed object is the new copy.
    edit(
        dir.path(),
        "a.yaml",
        &services(&[("web", 81), ("db", 5432)]),
    );
    assert_eq!(settle(&mut state), ["apply shop/web 81"]);
}
