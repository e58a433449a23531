//! svcplane-dns: parses flags, starts [`svcplane_dns::app`], and implements lameduck on SIGTERM.

use anyhow::{Context, Result};
use clap::Parser;
use svcplane_dns::app::{self, Args};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let lameduck = args.lameduck;
        let running = app::start(args).await?;
        tracing::info!(dns = %running.dns_addr, health = %running.health_addr, metrics = %running.metrics_addr, "svcplane-dns serving");
        wait_for_signal().await;
        tracing::info!(?lameduck, "terminating: lameduck");
        running.terminate(lameduck).await;
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
