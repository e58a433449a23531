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
