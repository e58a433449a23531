//! A measurement, not a check (ignored by default): the cost of one poll that applies a
//! one-object edit, and the memory peak of a full reload, on a copy of a generated catalog.
//!
//! `MANIFESTS_BENCH_DIR=/tmp/bench-dns/50000x5/manifests cargo test --release -p svcplane-common
//! manifests::tests_bench -- --ignored --nocapture`

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ManifestStats;
use super::state::State;
use crate::source::SourceEvent;

/// How many one-object edits are timed.
const EDITS: usize = 11;

#[test]
#[ignore = "a measurement; needs MANIFESTS_BENCH_DIR"]
fn one_object_edit_and_full_reload() {
    let Some(source) = std::env::var_os("MANIFESTS_BENCH_DIR") else {
        eprintln!("MANIFESTS_BENCH_DIR is not set; nothing measured");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let files = copy_dir(Path::new(&source), dir.path());
    let rss_start = status_kb("VmRSS:");
    let started = Instant::now();
    let mut state = State::load(vec![dir.path().into()], Arc::new(ManifestStats::default()));
    let objects = state.objects().len();
    eprintln!(
        "load: {} files, {objects} objects in {:?}; RSS {} → {} MB",
        files.len(),
        started.elapsed(),
        rss_start / 1024,
        status_kb("VmRSS:") / 1024
    );
    assert!(state.poll().is_empty(), "nothing changed yet");
    let target = &files[files.len() / 2];
    let mut times = Vec::new();
    for i in 0..EDITS {
        let text = fs::read_to_string(target).expect("read");
        let (from, to) = if i % 2 == 0 { (80, 81) } else { (81, 80) };
        let edited = text.replacen(&format!("\"port\":{from},"), &format!("\"port\":{to},"), 1);
        assert_ne!(text, edited, "the edit changes the file");
        fs::write(target, edited).expect("write");
        assert!(state.poll().is_empty(), "a change settles over two polls");
        let (took, events) = timed_poll(&mut state);
        assert_eq!(events.len(), 1, "one Apply: {events:?}");
        times.push(took);
    }
    times.sort();
    let text = fs::read_to_string(target).expect("read");
    let started = Instant::now();
    let parsed = super::parse::parse_file(target, &text).map_or(0, |p| p.objects.len());
    eprintln!(
        "parsing the edited file alone: {parsed} objects in {:?}",
        started.elapsed()
    );
    eprintln!(
        "one-object edit, settling poll: min {:?} median {:?} max {:?}",
        times[0],
        times[EDITS / 2],
        times[EDITS - 1]
    );
    full_reload(&mut state, &files);
}

fn full_reload(state: &mut State, files: &[PathBuf]) {
    let before = status_kb("VmRSS:");
    let reset = fs::write("/proc/self/clear_refs", "5").is_ok();
    for file in files {
        let text = fs::read_to_string(file).expect("read");
        let edited = text.replace(
            "\"bench.svcplane.io/revision\":\"1\"",
            "\"bench.svcplane.io/revision\":\"2\"",
        );
        fs::write(file, edited).expect("write");
    }
    assert!(state.poll().is_empty(), "a change settles over two polls");
    let (took, events) = timed_poll(state);
    let peak = status_kb("VmHWM:");
    eprintln!(
        "full reload: {} events in {took:?}; RSS before {} MB, after {} MB, peak {} (+{} MB){}",
        events.len(),
        before / 1024,
        status_kb("VmRSS:") / 1024,
        peak / 1024,
        peak.saturating_sub(before) / 1024,
        if reset { "" } else { " (VmHWM not reset)" }
    );
}

fn timed_poll(state: &mut State) -> (Duration, Vec<SourceEvent>) {
    let started = Instant::now();
    let events = state.poll();
    (started.elapsed(), events)
}

/// Copies the files of `from` into `to`, returning the copies in path order.
fn copy_dir(from: &Path, to: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(from)
        .expect("read the bench dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|file| {
            let copy = to.join(file.file_name().expect("file name"));
            fs::copy(file, &copy).expect("copy");
            copy
        })
        .collect()
}

/// A `/proc/self/status` field, in kB.
fn status_kb(field: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
