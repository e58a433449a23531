//! svcplane-proxy: parses flags, runs the proxy (or `render` / `cleanup`), stops on SIGTERM.

use anyhow::{Context, Result};
use clap::Parser;
use svcplane_proxy::app::{self, Args, Command};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        match args.command {
            Some(Command::Render) => {
                print!("{}", app::render(&args).await?);
                Ok(())
            }
            Some(Command::Cleanup) => app::cleanup().await,
            None => {
                let running = app::start(args).await?;
                tracing::info!(health = %running.health_addr, metrics = %running.metrics_addr, "svcplane-proxy running");
                wait_for_signal().await;
                running.shutdown.cancel();
                Ok(())
            }
        }
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
