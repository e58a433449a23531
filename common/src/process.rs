//! What both binaries' `main` share: logging, the async runtime, waiting for SIGTERM.

use std::io;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .init();
}

/// The runtime for the control plane (sources, syncs, HTTP): two workers are plenty, and the
/// DNS query path runs on threads of its own.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// How a [`background_runtime`]'s threads are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Background {
    /// At this niceness (0–19): they still get a bounded share of a busy CPU.
    Nice(i32),
    /// Under `SCHED_IDLE`: they give the CPU up the moment any normal thread wants it, and wait
    /// while normal threads keep every CPU busy.
    Idle,
}

/// [`runtime`] at a lower priority: for a process whose latency-critical work runs on threads
/// of its own (svcplane-dns's query workers), so that bookkeeping — polling manifests,
/// rebuilding the view, metrics — yields the core to them instead of holding it for a scheduler
/// slice. The runtime still gets the CPU the workers leave.
pub fn background_runtime(priority: Background) -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || lower_priority(priority))
        .build()
}

/// Lowers the calling thread's priority (Linux: per thread); failures leave it unchanged.
#[allow(
    unsafe_code,
    reason = "plain-integer syscalls and one sched_param we own; they change only this thread"
)]
fn lower_priority(priority: Background) {
    match priority {
        // SAFETY: no pointers; on Linux PRIO_PROCESS with a tid targets one thread.
        Background::Nice(nice) => unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice.clamp(0, 19));
        },
        Background::Idle => {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: `param` is initialised and outlives the call; pid 0 is this thread.
            unsafe {
                libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
            }
        }
    }
}

/// Hands memory the allocator holds but no longer uses back to the kernel.
///
/// glibc's malloc keeps freed memory for reuse, so after a large load (parsing a big catalog's
/// manifests, a relist) the garbage of the load stays in the process's RSS; trimming after such
/// a load returns it. It costs a few milliseconds and is a no-op elsewhere than glibc.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(
        unsafe_code,
        reason = "malloc_trim takes no pointers and only walks the allocator's own free lists"
    )]
    // SAFETY: malloc_trim has no preconditions; it is thread-safe and touches only free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns on SIGTERM or Ctrl-C (never, if signals cannot be installed).
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (scheduling policy, nice) of a thread of the runtime.
    #[allow(
        unsafe_code,
        reason = "syscalls reading this thread's scheduling, no pointers"
    )]
    fn runtime_thread_priority(priority: Background) -> (i32, i32) {
        let runtime = background_runtime(priority).expect("runtime");
        runtime.block_on(async {
            tokio::spawn(async {
                // SAFETY: no pointers; pid 0 / tid are this thread.
                unsafe {
                    let policy = libc::sched_getscheduler(0);
                    let nice = libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t);
                    (policy, nice)
                }
            })
            .await
            .expect("task")
        })
    }

    #[test]
    fn background_threads_run_at_the_asked_priority() {
        assert_eq!(
            runtime_thread_priority(Background::Nice(10)),
            (libc::SCHED_OTHER, 10)
        );
        assert_eq!(
            runtime_thread_priority(Background::Idle).0,
            libc::SCHED_IDLE
        );
    }
}
