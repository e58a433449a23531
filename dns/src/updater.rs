//! The task that keeps the DNS view in step with the catalog.
//!
//! It waits for a new catalog generation, builds the next [`View`] incrementally and publishes
//! it for the query workers, recording how long the change took to reach the answers. Once a
//! second it also refreshes the staleness gauge (answers served while the source is down).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use svcplane_common::catalog::Catalog;
use tokio_util::sync::CancellationToken;

use crate::metrics::DnsMetrics;
use crate::view::{View, ViewBuilder, ViewConfig};

/// Runs until `shutdown`; `on_synced` is called once, when the first synced view is published.
pub async fn run(
    catalog: Catalog,
    config: ViewConfig,
    view: Arc<ArcSwap<View>>,
    metrics: DnsMetrics,
    shutdown: CancellationToken,
    on_synced: impl FnOnce() + Send,
) {
    let mut builder = ViewBuilder::new(config);
    let mut generations = catalog.subscribe();
    let mut on_synced = Some(on_synced);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let snapshot = catalog.load();
        if snapshot.generation != view.load().generation || view.load().generation == 0 {
            let next = builder.update(snapshot.clone());
            let synced = next.synced;
            view.store(next);
            metrics.generation.set(snapshot.generation as i64);
            if let Some(at) = snapshot.changed_at {
                metrics.programming.observe(at.elapsed().as_secs_f64());
            }
            if synced && let Some(f) = on_synced.take() {
                // The first full view follows the bulk load; its garbage is freed now.
                svcplane_common::process::trim_heap();
                f();
            }
        }
        let stale = snapshot.staleness().map_or(0, |d| d.as_secs() as i64);
        metrics.stale_seconds.set(stale);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = generations.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}
