//! svcplane-dns: parses flags, starts [`svcplane_dns::app`], and implements lameduck on SIGTERM.

use anyhow::{Context, Result};
use clap::Parser;
use svcplane_common::process;
use svcplane_dns::app::{self, Args};

fn main() -> Result<()> {
    process::limit_malloc_arenas();
    process::init_tracing();
    let args = Args::parse();
    // The query workers are threads of their own at normal priority; everything on the runtime
    // (sources, view updates, forwarding, HTTP) yields the core to them.
    let runtime = process::background_runtime(10).context("starting the async runtime")?;
    runtime.block_on(async {
        let lameduck = args.lameduck;
        let running = app::start(args).await?;
        tracing::info!(dns = %running.dns_addr, health = %running.health_addr, metrics = %running.metrics_addr, "svcplane-dns serving");
        process::wait_for_signal().await;
        tracing::info!(?lameduck, "terminating: lameduck");
        running.terminate(lameduck).await;
        Ok(())
    })
}
