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

/// [`runtime`] with every thread at niceness `nice` (0–19): for a process whose latency-critical
/// work runs on threads of its own (svcplane-dns's query workers), so that bookkeeping — polling
/// manifests, rebuilding the view, metrics — yields the core to them at once instead of holding
/// it for a scheduler slice. The runtime still gets the CPU the workers leave.
pub fn background_runtime(nice: i32) -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || lower_priority(nice))
        .build()
}

/// Sets the calling thread's niceness (Linux: per thread); failures leave it unchanged.
fn lower_priority(nice: i32) {
    #[allow(
        unsafe_code,
        reason = "gettid and setpriority take plain integers and change only this thread's nice"
    )]
    // SAFETY: both calls take no pointers; on Linux PRIO_PROCESS with a tid targets one thread.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice.clamp(0, 19));
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

/// Limits glibc's malloc to two arenas (call first thing in `main`, before other threads).
///
/// glibc gives threads that contend for the heap arenas of their own, up to eight per CPU. The
/// catalog's long-lived objects are then spread over several arenas, each interleaving them with
/// the garbage of the thread that parsed or built them, and the free holes of one arena cannot
/// serve another: at 50k Services that is about 4 MB of RSS. The allocation-heavy work (parsing,
/// catalog, view) runs on a few background threads, and the query path does not allocate, so two
/// arenas cost nothing measurable. A no-op elsewhere than glibc.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(
        unsafe_code,
        reason = "mallopt takes two integers and only changes the allocator's tuning"
    )]
    // SAFETY: mallopt has no memory-safety preconditions; M_ARENA_MAX only bounds future arenas.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
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
