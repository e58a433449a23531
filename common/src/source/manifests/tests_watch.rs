//! The running source: the initial events, then changes on disk turned into Apply/Delete.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::tests::{service_yaml, write};
use super::{ManifestError, run};
use crate::model::{Kind, Object};
use crate::source::SourceEvent;

/// The time within which a change must be seen.
const WITHIN: Duration = Duration::from_secs(1);
/// How long to watch for events that must not come (a few poll intervals).
const QUIET: Duration = Duration::from_millis(1200);

struct Running {
    rx: mpsc::Receiver<SourceEvent>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ManifestError>>,
}

impl Running {
    fn start(paths: Vec<PathBuf>) -> Running {
        let (tx, rx) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(paths, tx, shutdown.clone()));
        Running { rx, shutdown, task }
    }

    /// Starts and consumes the initial Replace events and Synced, returning the Replaces.
    async fn synced(paths: Vec<PathBuf>) -> (Running, Vec<(Kind, Vec<Object>)>) {
        let mut running = Running::start(paths);
        let mut replaced = Vec::new();
        loop {
            match running.next(Duration::from_secs(5)).await {
                Some(SourceEvent::Replace { kind, objects }) => replaced.push((kind, objects)),
                Some(SourceEvent::Synced) => return (running, replaced),
                other => panic!("unexpected initial event {other:?}"),
            }
        }
    }

    async fn next(&mut self, within: Duration) -> Option<SourceEvent> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next event, which must come within [`WITHIN`] of `since`.
    async fn change(&mut self, since: Instant) -> SourceEvent {
        let left = WITHIN.saturating_sub(since.elapsed());
        match self.next(left).await {
            Some(event) => event,
            None => panic!("no event within {WITHIN:?}"),
        }
    }

    async fn quiet(&mut self) {
        if let Some(event) = self.next(QUIET).await {
            panic!("unexpected event {event:?}");
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = self.task.await.expect("task joins");
        assert!(result.is_ok(), "{result:?}");
    }
}

fn applied_port(event: &SourceEvent) -> (String, u16) {
    match event {
        SourceEvent::Apply(Object::Service(s)) => (s.key.name.to_string(), s.ports[0].port),
        other => panic!("expected a Service Apply, got {other:?}"),
    }
}

fn deleted(event: &SourceEvent) -> String {
    match event {
        SourceEvent::Delete(r) => r.to_string(),
        other => panic!("expected a Delete, got {other:?}"),
    }
}

/// Replaces a file the way editors save: write a temporary file, then rename it over.
fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_file_name(".save.tmp");
    fs::write(&tmp, text).expect("write tmp");
    fs::rename(&tmp, path).expect("rename");
}

#[tokio::test]
async fn initial_replace_for_every_kind_then_synced() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "a.yaml", &service_yaml("web", 80));
    let (running, replaced) = Running::synced(vec![dir.path().into()]).await;
    let kinds: Vec<Kind> = replaced.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, Kind::ALL);
    for (kind, objects) in &replaced {
        let expected = usize::from(*kind == Kind::Service);
        assert_eq!(objects.len(), expected, "{kind}");
    }
    running.stop().await;
}

#[tokio::test]
async fn missing_path_fails_before_sending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut running = Running::start(vec![dir.path().join("absent.yaml")]);
    let result = (&mut running.task).await.expect("task joins");
    assert!(
        matches!(result, Err(ManifestError::Path { .. })),
        "{result:?}"
    );
    assert!(running.rx.recv().await.is_none(), "nothing was sent");
}

#[tokio::test]
async fn edit_applies_only_what_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "a.yaml",
        &format!(
            "{}---\n{}",
            service_yaml("web", 80),
            service_yaml("db", 5432)
        ),
    );
    let (mut running, _) = Running::synced(vec![dir.path().into()]).await;
    let since = Instant::now();
    fs::write(
        &file,
        format!(
            "{}---\n{}",
            service_yaml("web", 8080),
            service_yaml("db", 5432)
        ),
    )
    .expect("edit");
    assert_eq!(
        applied_port(&running.change(since).await),
        ("web".into(), 8080)
    );
    running.quiet().await;
    let since = Instant::now();
    save_by_rename(
        &file,
        &format!(
            "{}---\n{}",
            service_yaml("web", 8080),
            service_yaml("db", 5433)
        ),
    );
    assert_eq!(
        applied_port(&running.change(since).await),
        ("db".into(), 5433)
    );
    running.stop().await;
}

#[tokio::test]
async fn removed_document_and_file_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write(
        dir.path(),
        "a.yaml",
        &format!(
            "{}---\n{}",
            service_yaml("web", 80),
            service_yaml("db", 5432)
        ),
    );
    let b = write(dir.path(), "b.yaml", &service_yaml("cache", 6379));
    let (mut running, _) = Running::synced(vec![dir.path().into()]).await;
    let since = Instant::now();
    fs::write(&a, service_yaml("web", 80)).expect("edit");
    assert_eq!(deleted(&running.change(since).await), "Service shop/db");
    let since = Instant::now();
    fs::remove_file(&b).expect("rm");
    assert_eq!(deleted(&running.change(since).await), "Service shop/cache");
    running.quiet().await;
    running.stop().await;
}

#[tokio::test]
async fn invalid_edit_keeps_the_last_good_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "a.yaml",
        &format!(
            "{}---\n{}",
            service_yaml("web", 80),
            service_yaml("db", 5432)
        ),
    );
    let (mut running, _) = Running::synced(vec![dir.path().into()]).await;
    // One bad document: the other still applies, the bad one's object stays as it was.
    fs::write(
        &file,
        format!(
            "{}---\n{}",
            service_yaml("web", 70000),
            service_yaml("db", 5433)
        ),
    )
    .expect("edit");
    let since = Instant::now();
    assert_eq!(
        applied_port(&running.change(since).await),
        ("db".into(), 5433)
    );
    running.quiet().await;
    // A file that is not YAML at all keeps everything.
    fs::write(&file, "apiVersion: v1\nkind: [Service\n").expect("break");
    running.quiet().await;
    let since = Instant::now();
    fs::write(
        &file,
        format!(
            "{}---\n{}",
            service_yaml("web", 81),
            service_yaml("db", 5433)
        ),
    )
    .expect("fix");
    assert_eq!(
        applied_port(&running.change(since).await),
        ("web".into(), 81)
    );
    running.quiet().await;
    running.stop().await;
}

#[tokio::test]
async fn new_files_and_directories_are_picked_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut running, replaced) = Running::synced(vec![dir.path().into()]).await;
    assert!(replaced.iter().all(|(_, objects)| objects.is_empty()));
    let since = Instant::now();
    write(
        dir.path(),
        "later/deeper/new.yaml",
        &service_yaml("new", 80),
    );
    assert_eq!(
        applied_port(&running.change(since).await),
        ("new".into(), 80)
    );
    running.stop().await;
}

#[tokio::test]
async fn deleting_the_winning_file_exposes_the_other_definition() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "a.yaml", &service_yaml("web", 80));
    let b = write(dir.path(), "b.yaml", &service_yaml("web", 81));
    let (mut running, replaced) = Running::synced(vec![dir.path().into()]).await;
    let services = &replaced[2];
    assert_eq!(services.0, Kind::Service);
    assert!(matches!(&services.1[..], [Object::Service(s)] if s.ports[0].port == 81));
    let since = Instant::now();
    fs::remove_file(&b).expect("rm");
    assert_eq!(
        applied_port(&running.change(since).await),
        ("web".into(), 80)
    );
    running.stop().await;
}
