//! `--isolate`: the server's CPU to itself for a latency run, as `isolcpus` or a cpuset shield
//! would give it on a production node. On this development VM the server's CPU is otherwise
//! shared with the VM agent's threads (nice −10), DAMON's reclaim thread (`kdamond`, which runs
//! 4–8 ms without yielding on a `PREEMPT_NONE` kernel) and unbound kernel workqueues; each shows
//! up as a stall of the pinned server (see the README's p99 notes).
//!
//! [`Isolation::apply`] moves every thread that may run on both CPUs — except the server's and
//! the bench's own — to the client CPU, and points the unbound workqueues there; dropping the
//! [`Isolation`] puts every affinity back. Per-CPU kernel threads cannot be moved and stay.

use std::fs;

use anyhow::{Context, Result};
use rustix::process::Pid;
use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// Where the unbound workqueues may run.
const WORKQUEUE_CPUMASK: &str = "/sys/devices/virtual/workqueue/cpumask";

/// Threads moved off the server's CPU, and the workqueue mask, until dropped.
pub(crate) struct Isolation {
    /// (thread id, its affinity before the move).
    moved: Vec<(Pid, CpuSet)>,
    /// The workqueue mask before the move, if it could be changed.
    workqueue_mask: Option<String>,
}

impl Isolation {
    /// Moves what can be moved from `server_cpu` to `client_cpu`, sparing the processes in
    /// `spare` (the server and the bench).
    pub(crate) fn apply(server_cpu: u32, client_cpu: u32, spare: &[u32]) -> Result<Isolation> {
        let mut isolation = Isolation {
            moved: Vec::new(),
            workqueue_mask: None,
        };
        let mut target = CpuSet::new();
        target.set(client_cpu as usize);
        for tid in threads(spare)? {
            let Some(pid) = Pid::from_raw(tid) else {
                continue;
            };
            let Ok(before) = sched_getaffinity(Some(pid)) else {
                continue;
            };
            let movable = before.is_set(server_cpu as usize) && before.is_set(client_cpu as usize);
            // Per-CPU kernel threads refuse (EINVAL); threads that exited meanwhile are gone.
            if movable && sched_setaffinity(Some(pid), &target).is_ok() {
                isolation.moved.push((pid, before));
            }
        }
        if let Ok(before) = fs::read_to_string(WORKQUEUE_CPUMASK)
            && fs::write(WORKQUEUE_CPUMASK, format!("{:x}", 1u64 << client_cpu)).is_ok()
        {
            isolation.workqueue_mask = Some(before.trim().to_string());
        }
        eprintln!(
            "isolated CPU {server_cpu}: moved {} threads{}",
            isolation.moved.len(),
            if isolation.workqueue_mask.is_some() {
                " and the unbound workqueues"
            } else {
                ""
            }
        );
        Ok(isolation)
    }
}

impl Drop for Isolation {
    fn drop(&mut self) {
        for (pid, before) in &self.moved {
            let _ = sched_setaffinity(Some(*pid), before);
        }
        if let Some(mask) = &self.workqueue_mask {
            let _ = fs::write(WORKQUEUE_CPUMASK, mask);
        }
    }
}

/// Every thread id on the machine outside the processes in `spare`.
fn threads(spare: &[u32]) -> Result<Vec<i32>> {
    let mut found = Vec::new();
    for process in fs::read_dir("/proc").context("reading /proc")? {
        let Ok(process) = process else { continue };
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if spare.contains(&pid) {
            continue;
        }
        let Ok(tasks) = fs::read_dir(process.path().join("task")) else {
            continue;
        };
        found.extend(
            tasks
                .flatten()
                .filter_map(|t| t.file_name().to_str().and_then(|s| s.parse::<i32>().ok())),
        );
    }
    Ok(found)
}
