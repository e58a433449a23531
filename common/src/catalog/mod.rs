//! The service catalog: immutable snapshots of every Service with its merged endpoints.
//!
//! A single task ([`run`]) owns the mutable [`store::Store`], applies [`SourceEvent`]s to it and
//! publishes a new [`Snapshot`] through an [`ArcSwap`] after each batch of events. Readers on the
//! hot path (`Catalog::load`) never block the writer. Every snapshot carries a bounded log of
//! which Services changed in which generation, so a consumer that remembers the generation it
//! last handled can work in proportion to the change ([`Snapshot::changes_since`]).

pub mod merge;
pub mod store;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};

use crate::cowmap::CowMap;
use crate::model::{MergedEndpoint, Node, ObjectKey, Pod, Service};
use crate::source::SourceEvent;

pub use store::Store;

/// How many generations of change history a snapshot keeps.
pub const CHANGE_LOG_LEN: usize = 4096;

/// One immutable state of the catalog. Cloning is cheap (copy-on-write maps).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Increases by one with every published snapshot; 0 is the empty initial state.
    pub generation: u64,
    /// Every kind has been listed once.
    pub synced: bool,
    /// When the source lost its connection, if it has not regained it since.
    pub disconnected_since: Option<Instant>,
    pub services: CowMap<ObjectKey, Arc<Service>>,
    /// Endpoints merged across all slices of a Service, keyed by the Service's key.
    pub endpoints: CowMap<ObjectKey, Arc<[MergedEndpoint]>>,
    pub pods: CowMap<ObjectKey, Arc<Pod>>,
    /// How many Pods in a namespace have an IP (for `--pods verified`).
    pub pod_ips: CowMap<(Arc<str>, IpAddr), u32>,
    pub nodes: CowMap<Arc<str>, Arc<Node>>,
    pub namespaces: imbl::HashSet<Arc<str>>,
    /// Services (by key) changed in each recent generation, oldest first.
    pub change_log: imbl::Vector<(u64, Arc<[ObjectKey]>)>,
    /// Generations at which nodes changed (topology), oldest first, bounded like `change_log`.
    pub node_changes: imbl::Vector<u64>,
    /// When the first event folded into this snapshot arrived (for programming latency).
    pub changed_at: Option<Instant>,
    /// The newest generation whose changes were dropped from the logs, or were a bulk change
    /// logged as a whole rather than key by key (0: nothing dropped).
    pub change_log_floor: u64,
}

/// What changed between a consumer's last generation and a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// The history does not reach back far enough (or the consumer is new): redo everything.
    Full,
    /// These Services (present or deleted) changed; `nodes` if any Node changed.
    Some {
        services: HashSet<ObjectKey>,
        nodes: bool,
    },
}

impl Snapshot {
    /// The changes a consumer must apply to go from generation `since` to this snapshot.
    pub fn changes_since(&self, since: u64) -> Changes {
        if since == 0 || since > self.generation {
            return Changes::Full;
        }
        if since < self.change_log_floor {
            return Changes::Full;
        }
        let mut services = HashSet::new();
        for (generation, keys) in self.change_log.iter().rev() {
            if *generation <= since {
                break;
            }
            services.extend(keys.iter().cloned());
        }
        let nodes = self.node_changes.iter().any(|g| *g > since);
        Changes::Some { services, nodes }
    }

    /// How long the catalog has been served without a live source, if it is stale.
    pub fn staleness(&self) -> Option<Duration> {
        self.disconnected_since.map(|t| t.elapsed())
    }

    /// Whether a namespace exists (as an object, or because something lives in it).
    pub fn namespace_exists(&self, ns: &str) -> bool {
        self.namespaces.contains(ns)
    }
}

/// The shared handle consumers read from.
#[derive(Debug, Clone)]
pub struct Catalog {
    current: Arc<ArcSwap<Snapshot>>,
    generation: watch::Receiver<u64>,
}

impl Catalog {
    /// The latest snapshot; wait-free.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A receiver that changes whenever a new snapshot is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.clone()
    }
}

/// The writer half: owned by the task that runs [`run`].
#[derive(Debug)]
pub struct Publisher {
    current: Arc<ArcSwap<Snapshot>>,
    generation: watch::Sender<u64>,
}

/// A new, empty catalog and its publisher.
pub fn new() -> (Catalog, Publisher) {
    let current = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
    let (tx, rx) = watch::channel(0);
    (
        Catalog {
            current: current.clone(),
            generation: rx,
        },
        Publisher {
            current,
            generation: tx,
        },
    )
}

impl Publisher {
    /// Publishes `snapshot` as the current one.
    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        let generation = snapshot.generation;
        self.current.store(snapshot);
        self.generation.send_replace(generation);
    }
}

/// At most this many queued events are applied before a snapshot is published.
const MAX_BATCH: usize = 10_000;

/// A batch carrying at least this many objects is a bulk load: the heap is trimmed after it.
const BULK_OBJECTS: usize = 1_000;

/// How many objects an event carries.
fn weight(event: &SourceEvent) -> usize {
    match event {
        SourceEvent::Replace { objects, .. } => objects.len(),
        _ => 1,
    }
}

/// Applies events from `rx` until every sender is gone, publishing a snapshot after each batch
/// (all events that are already queued are applied before publishing).
pub async fn run(mut rx: mpsc::Receiver<SourceEvent>, publisher: Publisher) {
    let mut store = Store::default();
    while let Some(event) = rx.recv().await {
        let mut objects = weight(&event);
        store.apply(event);
        let mut batch = 1;
        while batch < MAX_BATCH {
            let Ok(event) = rx.try_recv() else { break };
            objects += weight(&event);
            store.apply(event);
            batch += 1;
        }
        if let Some(snapshot) = store.snapshot() {
            publisher.publish(snapshot);
        }
        if objects >= BULK_OBJECTS {
            crate::process::trim_heap();
        }
    }
}
