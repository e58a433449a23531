//! The iptables sync engine: the nftables engine's state machine ([`Phase`]) with iptables
//! underneath, driven by [`crate::sync::run`] through [`Engine`].
//!
//! The first sync (once the catalog has listed everything) is a full restore per family: it
//! reads what svcplane left in the kernel (`iptables-save`), rewrites every chain it wants,
//! deletes the `SVCPLANE-` chains it no longer wants and repairs the built-in jumps; conntrack
//! keeps existing flows. Later syncs restore only what the Services changed since the last
//! programmed generation touch. A failed restore makes the next sync a full one; so does a
//! missing canary or jump found by [`Engine::verify`]. UDP conntrack entries made stale by a
//! change are deleted after the restore, as in the nftables engine.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use svcplane_common::catalog::{Changes, Snapshot};
use svcplane_common::model::{Family, ObjectKey};

use super::exec::{ExecError, Iptables};
use super::plan::Programmed;
use super::render::{Base, ServiceRules, service};
use crate::conntrack::ConntrackCleaner;
use crate::desired::ProxyConfig;
use crate::sync::{Engine, Phase, SyncMetrics};

/// The iptables engine's state.
#[derive(Debug)]
pub struct IptablesSyncer {
    pub config: ProxyConfig,
    /// One runner per family programmed.
    pub runners: Vec<Iptables>,
    pub conntrack: ConntrackCleaner,
    pub metrics: SyncMetrics,
    programmed: HashMap<Family, Programmed>,
    /// The resolved settings the programmed rules were rendered with.
    resolved: Option<ProxyConfig>,
    phase: Phase,
}

impl IptablesSyncer {
    pub fn new(config: ProxyConfig, runners: Vec<Iptables>, metrics: SyncMetrics) -> Self {
        IptablesSyncer {
            config,
            runners,
            conntrack: ConntrackCleaner::new(),
            metrics,
            programmed: HashMap::new(),
            resolved: None,
            phase: Phase::WaitingForSync,
        }
    }

    async fn full(&mut self, snapshot: &Snapshot) -> Result<(), ExecError> {
        let config = self.config.resolve(snapshot);
        // Whatever fails below, the old state no longer describes the kernel.
        self.programmed.clear();
        for runner in &self.runners {
            let programmed = render_all(&config, snapshot, runner.family);
            let kernel = runner.kernel_state().await?;
            runner.restore(&programmed.full_input(&kernel)).await?;
            self.programmed.insert(runner.family, programmed);
        }
        self.metrics.full_syncs.inc();
        self.resolved = Some(config);
        Ok(())
    }

    async fn incremental(&mut self, snapshot: &Snapshot, since: u64) -> Result<(), ExecError> {
        let config = self.config.resolve(snapshot);
        let services = match snapshot.changes_since(since) {
            Changes::Some { services, .. } if self.resolved.as_ref() == Some(&config) => services,
            _ => return self.full(snapshot).await,
        };
        let mut stale = Vec::new();
        for runner in &self.runners {
            let Some(programmed) = self.programmed.get_mut(&runner.family) else {
                return self.full(snapshot).await;
            };
            let changes = services
                .iter()
                .map(|key| {
                    let rules = rules_of(&config, snapshot, key, &programmed.base);
                    (key.clone(), rules)
                })
                .collect();
            // Updated in place; if the restore fails, `step` makes the next sync a full one.
            let update = programmed.update(changes);
            if let Some(input) = update.input {
                runner.restore(&input).await?;
            }
            stale.extend(update.stale);
        }
        if !stale.is_empty() {
            // Only after the rules no longer lead to the old backends.
            let cleaner = self.conntrack.clone();
            tokio::spawn(async move {
                for e in cleaner.cleanup(&stale).await {
                    tracing::warn!(error = %e, "conntrack cleanup");
                }
            });
        }
        Ok(())
    }
}

impl Engine for IptablesSyncer {
    type Error = ExecError;

    fn phase(&self) -> Phase {
        self.phase
    }

    async fn step(&mut self, snapshot: &Snapshot) -> Result<bool, ExecError> {
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
                let health = self.health_checks();
                self.metrics.record(snapshot, started, &health);
                Ok(true)
            }
            Err(e) => {
                self.metrics.failures.inc();
                self.phase = Phase::Full;
                Err(e)
            }
        }
    }

    fn invalidate(&mut self) {
        if self.phase != Phase::WaitingForSync {
            self.phase = Phase::Full;
        }
    }

    async fn verify(&self) -> Result<bool, ExecError> {
        for runner in &self.runners {
            if self.programmed.contains_key(&runner.family) && !runner.intact().await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn health_checks(&self) -> HashMap<u16, (ObjectKey, usize)> {
        let mut out: HashMap<u16, (ObjectKey, usize)> = HashMap::new();
        for programmed in self.programmed.values() {
            for (key, rules) in &programmed.services {
                if let Some((port, n)) = rules.health {
                    let entry = out.entry(port).or_insert((key.clone(), 0));
                    entry.1 += n;
                }
            }
        }
        out
    }
}

/// The programmed state of `family` for the whole catalog.
pub fn render_all(config: &ProxyConfig, snapshot: &Snapshot, family: Family) -> Programmed {
    let base = Base::new(config, family);
    let services = snapshot
        .services
        .keys()
        .filter_map(|key| rules_of(config, snapshot, key, &base).map(|r| (key.clone(), r)))
        .collect();
    Programmed::new(base, services)
}

/// The rules of one Service (None if it adds nothing: deleted or not proxied).
fn rules_of(
    config: &ProxyConfig,
    snapshot: &Snapshot,
    key: &ObjectKey,
    base: &Base,
) -> Option<Arc<ServiceRules>> {
    let svc = snapshot.services.get(key)?;
    let endpoints = snapshot.endpoints.get(key).map(|e| &e[..]).unwrap_or(&[]);
    let rules = service(svc, endpoints, config, base);
    (!rules.is_empty()).then(|| Arc::new(rules))
}
