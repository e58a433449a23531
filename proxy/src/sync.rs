//! The sync engine: catalog changes → nft transactions, debounced, incremental, self-checking.
//!
//! An explicit state machine ([`Syncer::step`]): the first sync after the catalog is synced is a
//! full, atomic replacement of svcplane's tables (adopting whatever a previous run left); later
//! syncs render only the Services that changed since the last programmed generation. A failed
//! transaction changes nothing in the kernel and makes the next sync a full one. Every
//! `verify_period` the kernel is probed and a flushed or damaged table is rewritten. [`run`]
//! drives any backend's [`Engine`] (the iptables one is `crate::iptables::engine`).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use svcplane_common::catalog::{Catalog, Changes, Snapshot};
use svcplane_common::model::ObjectKey;
use tokio_util::sync::CancellationToken;

use crate::conntrack::ConntrackCleaner;
use crate::desired::service::contribution_of;
use crate::desired::{ProxyConfig, base_table};
use crate::executor::{ExecError, Nft};
use crate::plan::{Change, Programmed};
use crate::ruleset::NftFamily;

/// kube-proxy's metric names where they mean the same.
#[derive(Debug, Clone)]
pub struct SyncMetrics {
    pub sync_duration: Histogram,
    pub programming: Histogram,
    pub last_sync: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub failures: Counter,
    pub full_syncs: Counter,
    pub no_local_endpoints: MetricFamily<Vec<(String, String)>, Gauge>,
}

impl Default for SyncMetrics {
    fn default() -> Self {
        SyncMetrics {
            sync_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            programming: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            last_sync: Gauge::default(),
            failures: Counter::default(),
            full_syncs: Counter::default(),
            no_local_endpoints: MetricFamily::default(),
        }
    }
}

impl SyncMetrics {
    /// Records a successful sync of `snapshot` that started at `started`.
    pub fn record(
        &self,
        snapshot: &Snapshot,
        started: Instant,
        health_checks: &HashMap<u16, (ObjectKey, usize)>,
    ) {
        self.sync_duration.observe(started.elapsed().as_secs_f64());
        if let Some(at) = snapshot.changed_at {
            self.programming.observe(at.elapsed().as_secs_f64());
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_sync.set(now.as_secs_f64());
        let without = health_checks.values().filter(|(_, n)| *n == 0).count();
        let labels = vec![("traffic_policy".to_string(), "external".to_string())];
        self.no_local_endpoints
            .get_or_create(&labels)
            .set(without as i64);
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            self.sync_duration.clone(),
        );
        r.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            self.programming.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            self.last_sync.clone(),
        );
        r.register(
            "svcplane_proxy_sync_failures",
            "Syncs whose nft transaction failed",
            self.failures.clone(),
        );
        r.register(
            "svcplane_proxy_full_syncs",
            "Full (atomic replacement) syncs",
            self.full_syncs.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            self.no_local_endpoints.clone(),
        );
    }
}

/// A backend's sync engine as [`run`] drives it: the nftables [`Syncer`] or the iptables
/// [`crate::iptables::engine::IptablesSyncer`].
pub trait Engine: Send + Sync {
    type Error: std::fmt::Display + Send;

    fn phase(&self) -> Phase;

    /// Brings the kernel to `snapshot`; returns whether anything was (re)programmed.
    fn step(
        &mut self,
        snapshot: &Snapshot,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// Forces the next sync to be a full one.
    fn invalidate(&mut self);

    /// Whether the kernel still holds what was programmed.
    fn verify(&self) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// Health-check ports and their node-local endpoint counts, across families.
    fn health_checks(&self) -> HashMap<u16, (ObjectKey, usize)>;
}

impl Engine for Syncer {
    type Error = ExecError;

    fn phase(&self) -> Phase {
        Syncer::phase(self)
    }

    async fn step(&mut self, snapshot: &Snapshot) -> Result<bool, ExecError> {
        Syncer::step(self, snapshot).await
    }

    fn invalidate(&mut self) {
        Syncer::invalidate(self)
    }

    async fn verify(&self) -> Result<bool, ExecError> {
        Syncer::verify(self).await
    }

    fn health_checks(&self) -> HashMap<u16, (ObjectKey, usize)> {
        Syncer::health_checks(self)
    }
}

/// What the engine does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The catalog has not listed everything yet: program nothing.
    WaitingForSync,
    /// Replace the tables atomically.
    Full,
    /// Apply the changes since `generation`.
    Incremental { generation: u64 },
}

/// The sync engine's state.
#[derive(Debug)]
pub struct Syncer {
    pub config: ProxyConfig,
    pub families: Vec<NftFamily>,
    pub nft: Nft,
    pub conntrack: ConntrackCleaner,
    pub metrics: SyncMetrics,
    programmed: HashMap<NftFamily, Programmed>,
    /// The catalog state last programmed: a changed Service's old contribution is recomputed
    /// from it rather than kept (a clone shares the catalog's storage).
    last: Option<Snapshot>,
    /// The resolved settings the programmed tables were rendered with.
    resolved: Option<ProxyConfig>,
    phase: Phase,
}

impl Syncer {
    pub fn new(
        config: ProxyConfig,
        families: Vec<NftFamily>,
        nft: Nft,
        metrics: SyncMetrics,
    ) -> Self {
        Syncer {
            config,
            families,
            nft,
            conntrack: ConntrackCleaner::new(),
            metrics,
            programmed: HashMap::new(),
            last: None,
            resolved: None,
            phase: Phase::WaitingForSync,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Brings the kernel to `snapshot`; returns whether anything was (re)programmed.
    pub async fn step(&mut self, snapshot: &Snapshot) -> Result<bool, ExecError> {
        let started = Instant::now();
        let phase = match self.phase {
            Phase::WaitingForSync if !snapshot.synced => return Ok(false),
            Phase::WaitingForSync => Phase::Full,
            Phase::Incremental { generation } if generation == snapshot.generation => {
                return Ok(false);
            }
            p => p,
        };
        let result = match phase {
            Phase::Incremental { generation } => self.incremental(snapshot, generation).await,
            _ => self.full(snapshot).await,
        };
        match result {
            Ok(()) => {
                self.phase = Phase::Incremental {
                    generation: snapshot.generation,
                };
                self.record(snapshot, started);
                Ok(true)
            }
            Err(e) => {
                self.metrics.failures.inc();
                self.phase = Phase::Full;
                Err(e)
            }
        }
    }

    /// Forces the next sync to be a full one (after a failed verification).
    pub fn invalidate(&mut self) {
        if self.phase != Phase::WaitingForSync {
            self.phase = Phase::Full;
        }
    }

    async fn full(&mut self, snapshot: &Snapshot) -> Result<(), ExecError> {
        let config = self.config.resolve(snapshot);
        let mut script = String::new();
        let mut next = HashMap::new();
        for &f in &self.families {
            let base = base_table(&config, f);
            let contributions = snapshot
                .services
                .keys()
                .filter_map(|key| {
                    contribution_of(&config, snapshot, key, f).map(|c| (key.clone(), c))
                })
                .collect();
            let (programmed, s) = Programmed::full(base, contributions);
            script.push_str(&s);
            next.insert(f, programmed);
        }
        // Whatever the outcome, the garbage of the render (the script, every contribution)
        // goes back to the kernel rather than staying in the RSS.
        let applied = self.nft.apply(&script).await;
        drop(script);
        svcplane_common::process::trim_heap();
        applied?;
        self.metrics.full_syncs.inc();
        self.programmed = next;
        self.last = Some(snapshot.clone());
        self.resolved = Some(config);
        Ok(())
    }

    async fn incremental(&mut self, snapshot: &Snapshot, since: u64) -> Result<(), ExecError> {
        let config = self.config.resolve(snapshot);
        let services = match snapshot.changes_since(since) {
            Changes::Some { services, .. } if self.resolved.as_ref() == Some(&config) => services,
            _ => return self.full(snapshot).await,
        };
        let Some(last) = self.last.clone() else {
            return self.full(snapshot).await;
        };
        let mut script = String::new();
        let mut stale = Vec::new();
        // The programmed state is updated in place (copying it costs milliseconds at 50k
        // Services); if the transaction fails, `step` makes the next sync a full one, which
        // rebuilds it from scratch.
        for &f in &self.families {
            let Some(programmed) = self.programmed.get_mut(&f) else {
                return self.full(snapshot).await;
            };
            let changes = services
                .iter()
                .map(|key| Change {
                    key: key.clone(),
                    old: contribution_of(&config, &last, key, f),
                    new: contribution_of(&config, snapshot, key, f),
                })
                .collect();
            let update = programmed.update(changes);
            if update.full {
                return self.full(snapshot).await;
            }
            if let Some(s) = update.script {
                script.push_str(&s);
            }
            stale.extend(update.stale);
        }
        if !script.is_empty() {
            self.nft.apply(&script).await?;
        }
        self.last = Some(snapshot.clone());
        if !stale.is_empty() {
            // Only after the rules no longer lead to the old backends: else new entries would
            // be created right after the old ones are gone.
            let cleaner = self.conntrack.clone();
            tokio::spawn(async move {
                for e in cleaner.cleanup(&stale).await {
                    tracing::warn!(error = %e, "conntrack cleanup");
                }
            });
        }
        Ok(())
    }

    fn record(&self, snapshot: &Snapshot, started: Instant) {
        self.metrics
            .record(snapshot, started, &self.health_checks());
    }

    /// Health-check ports and their node-local endpoint counts, across families.
    pub fn health_checks(&self) -> HashMap<u16, (ObjectKey, usize)> {
        let mut out: HashMap<u16, (ObjectKey, usize)> = HashMap::new();
        for programmed in self.programmed.values() {
            for (key, (port, n)) in programmed.health() {
                let entry = out.entry(port).or_insert((key.clone(), 0));
                entry.1 += n;
            }
        }
        out
    }

    /// Whether the kernel still holds what was programmed.
    pub async fn verify(&self) -> Result<bool, ExecError> {
        for (f, programmed) in &self.programmed {
            let rules = programmed
                .base
                .chains
                .get("services")
                .map_or(0, |c| c.rules.len());
            let fe = programmed.fe_elements();
            if !self.nft.verify(*f, rules, fe).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Runs the engine until `shutdown`: syncs at most once per `min_period`, verifies every
/// `verify_period`, and calls `on_programmed` after each successful sync.
pub async fn run<E: Engine>(
    catalog: Catalog,
    mut syncer: E,
    min_period: Duration,
    verify_period: Duration,
    shutdown: CancellationToken,
    mut on_programmed: impl FnMut(&E) + Send,
) {
    let mut generations = catalog.subscribe();
    let mut verify = tokio::time::interval(verify_period);
    verify.tick().await;
    let mut last = Instant::now();
    loop {
        let snapshot = catalog.load();
        match syncer.step(&snapshot).await {
            Ok(true) => {
                last = Instant::now();
                on_programmed(&syncer);
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "sync failed; the next sync rewrites the tables"),
        }
        // After a failure (phase Full) try again in a second even without news.
        let retry = syncer.phase() == Phase::Full;
        let wait = if retry {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = generations.changed() => {
                if changed.is_err() { return }
                // --min-sync-period: at most one sync per period; changes meanwhile batch up.
                tokio::time::sleep_until((last + min_period).into()).await;
            }
            _ = verify.tick() => {
                match syncer.verify().await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!("kernel tables differ from what was programmed; rewriting");
                        syncer.invalidate();
                    }
                    Err(e) => tracing::warn!(error = %e, "verification failed"),
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
