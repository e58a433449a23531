//! The DNS view of the catalog: Services indexed by DNS name, and the reverse (PTR) index.
//!
//! [`ViewBuilder::update`] turns a catalog [`Snapshot`] into a [`View`] doing work in proportion
//! to the Services that changed since the previous update (the catalog's change log): each
//! changed Service's entry is rebuilt and its PTR contributions swapped. The `View` is immutable
//! and published through an `ArcSwap`, so query workers read it without locks; copy-on-write maps
//! make each publication O(changes).

use std::net::IpAddr;
use std::sync::Arc;

use svcplane_common::catalog::{Changes, Snapshot};
use svcplane_common::cowmap::CowMap;
use svcplane_common::model::{MergedEndpoint, ObjectKey, Service, ServiceType};

use crate::name::{Name, dashed};

/// Settings the view needs.
#[derive(Debug, Clone)]
pub struct ViewConfig {
    /// The cluster domain, e.g. `cluster.local`.
    pub zone: Name,
}

/// One Service as DNS serves it.
#[derive(Debug, Clone)]
pub struct ServiceDns {
    pub service: Arc<Service>,
    /// `<svc>.<ns>.svc.<zone>`.
    pub fqdn: Name,
    /// For ExternalName Services: the target.
    pub external: Option<Name>,
    /// All endpoints of the Service, as the catalog merged them.
    pub endpoints: Arc<[MergedEndpoint]>,
    /// Indexes into `endpoints` of those DNS publishes (ready, or every one with
    /// `publishNotReadyAddresses`), sorted by (hostname, address) for binary search.
    pub usable: Box<[u32]>,
}

impl ServiceDns {
    pub fn usable(&self) -> impl Iterator<Item = &MergedEndpoint> {
        self.usable.iter().map(|i| &self.endpoints[*i as usize])
    }

    /// Usable endpoints whose DNS label (hostname, or dashed address without one) is `label`.
    pub fn endpoints_labelled<'a>(&'a self, label: &str) -> Vec<&'a MergedEndpoint> {
        let key = |i: &u32| {
            let e = self.endpoints[*i as usize].endpoint();
            (e.hostname.as_deref(), e.ip)
        };
        let mut out = Vec::new();
        let start = self.usable.partition_point(|i| key(i).0 < Some(label));
        for i in self.usable[start..]
            .iter()
            .take_while(|i| key(i).0 == Some(label))
        {
            out.push(&self.endpoints[*i as usize]);
        }
        if let Some(ip) = crate::name::parse_dashed(label.as_bytes()) {
            let start = self.usable.partition_point(|i| key(i) < (None, ip));
            for i in self.usable[start..]
                .iter()
                .take_while(|i| key(i) == (None, ip))
            {
                out.push(&self.endpoints[*i as usize]);
            }
        }
        out
    }

    /// The DNS name of an endpoint of this Service.
    pub fn endpoint_name(&self, e: &MergedEndpoint) -> Option<Name> {
        let label = match &e.endpoint().hostname {
            Some(h) => h.to_string(),
            None => dashed(&e.endpoint().ip),
        };
        self.fqdn.child(label.as_bytes()).ok()
    }
}

/// What query workers read.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The catalog generation this view reflects.
    pub generation: u64,
    pub synced: bool,
    /// Keyed by `<svc>.<ns>`.
    pub services: CowMap<Arc<str>, Arc<ServiceDns>>,
    /// Number of Services per namespace (a namespace with Services exists in DNS).
    pub namespace_services: CowMap<Arc<str>, u32>,
    /// PTR targets per address: ClusterIPs and endpoint addresses.
    pub reverse: CowMap<IpAddr, PtrTargets>,
    pub snapshot: Arc<Snapshot>,
}

impl View {
    /// The Service `<name>.<namespace>`; the key is built on the stack (this runs per query).
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<ServiceDns>> {
        let mut buf = [0u8; 256];
        let len = name.len() + 1 + namespace.len();
        let key = buf.get_mut(..len)?;
        key[..name.len()].copy_from_slice(name.as_bytes());
        key[name.len()] = b'.';
        key[name.len() + 1..].copy_from_slice(namespace.as_bytes());
        self.services.get(std::str::from_utf8(key).ok()?)
    }

    pub fn namespace_exists(&self, namespace: &str) -> bool {
        self.namespace_services.contains_key(namespace) || self.snapshot.namespace_exists(namespace)
    }
}

/// Builds successive views. What a Service contributed to the PTR index is recomputed from its
/// previous entry when it changes, so no bookkeeping beyond the view itself is kept.
#[derive(Debug)]
pub struct ViewBuilder {
    config: ViewConfig,
    view: View,
}

impl ViewBuilder {
    pub fn new(config: ViewConfig) -> Self {
        ViewBuilder {
            config,
            view: View::default(),
        }
    }

    /// The view for `snapshot`, rebuilt only where Services changed.
    pub fn update(&mut self, snapshot: Arc<Snapshot>) -> Arc<View> {
        let keys: Vec<ObjectKey> = match snapshot.changes_since(self.view.generation) {
            Changes::Full => {
                let mut all: Vec<ObjectKey> = snapshot.services.keys().cloned().collect();
                all.extend(self.view.services.values().map(|e| e.service.key.clone()));
                all
            }
            Changes::Some { services, .. } => services.into_iter().collect(),
        };
        for key in keys {
            self.rebuild(&snapshot, &key);
        }
        self.view.generation = snapshot.generation;
        self.view.synced = snapshot.synced;
        self.view.snapshot = snapshot;
        Arc::new(self.view.clone())
    }

    fn rebuild(&mut self, snapshot: &Snapshot, key: &ObjectKey) {
        let map_key: Arc<str> = format!("{}.{}", key.name, key.namespace).into();
        if let Some(old) = self.view.services.remove(&map_key) {
            self.count_namespace(&key.namespace, false);
            for (ip, _) in ptr_entries(&old) {
                self.withdraw(ip, key);
            }
        }
        let Some(service) = snapshot.services.get(key) else {
            return;
        };
        let endpoints = snapshot
            .endpoints
            .get(key)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()));
        let Some(entry) = build(&self.config, service.clone(), endpoints) else {
            tracing::warn!(service = %key, "service name does not fit in DNS; not served");
            return;
        };
        let entry = Arc::new(entry);
        for (ip, target) in ptr_entries(&entry) {
            self.publish(ip, target);
        }
        self.view.services.insert(map_key, entry);
        self.count_namespace(&key.namespace, true);
    }

    fn count_namespace(&mut self, ns: &Arc<str>, add: bool) {
        let n = self.view.namespace_services.get(ns).copied().unwrap_or(0);
        let n = if add { n + 1 } else { n.saturating_sub(1) };
        if n == 0 {
            self.view.namespace_services.remove(ns);
        } else {
            self.view.namespace_services.insert(ns.clone(), n);
        }
    }

    fn publish(&mut self, ip: IpAddr, target: PtrTarget) {
        let mut targets: Vec<PtrTarget> = self
            .view
            .reverse
            .get(&ip)
            .map(|t| t.to_vec())
            .unwrap_or_default();
        targets.push(target);
        targets.sort_by(|a, b| a.service.fqdn.wire().cmp(b.service.fqdn.wire()));
        self.view.reverse.insert(ip, PtrTargets::from(targets));
    }

    /// Removes the PTR targets `service` contributed for `ip`.
    fn withdraw(&mut self, ip: IpAddr, service: &ObjectKey) {
        let Some(targets) = self.view.reverse.get(&ip) else {
            return;
        };
        let rest: Vec<PtrTarget> = targets
            .iter()
            .filter(|t| t.service.service.key != *service)
            .cloned()
            .collect();
        if rest.is_empty() {
            self.view.reverse.remove(&ip);
        } else {
            self.view.reverse.insert(ip, PtrTargets::from(rest));
        }
    }
}

/// What a PTR record names: a Service (its ClusterIP) or one of its endpoints. The name is
/// built when asked: storing 250k endpoint names would cost more than building the few that
/// PTR queries need.
#[derive(Debug, Clone)]
pub struct PtrTarget {
    pub service: Arc<ServiceDns>,
    /// Index into `service.endpoints`; None for a ClusterIP.
    pub endpoint: Option<u32>,
}

impl PtrTarget {
    /// `<svc>.<ns>.svc.<zone>` or `<hostname>.<svc>.<ns>.svc.<zone>`.
    pub fn name(&self) -> Option<Name> {
        match self.endpoint {
            None => Some(self.service.fqdn.clone()),
            Some(i) => {
                let e = self.service.endpoints.get(i as usize)?;
                self.service.endpoint_name(e)
            }
        }
    }
}

/// The PTR targets of one address: almost always one, so that case is held inline.
#[derive(Debug, Clone)]
pub enum PtrTargets {
    One(PtrTarget),
    /// Several Services claim the address, sorted by Service name.
    Many(Arc<[PtrTarget]>),
}

impl From<Vec<PtrTarget>> for PtrTargets {
    fn from(mut targets: Vec<PtrTarget>) -> Self {
        match targets.len() {
            1 => targets
                .pop()
                .map_or_else(|| Self::Many(Arc::new([])), Self::One),
            _ => Self::Many(targets.into()),
        }
    }
}

impl std::ops::Deref for PtrTargets {
    type Target = [PtrTarget];

    fn deref(&self) -> &[PtrTarget] {
        match self {
            Self::One(t) => std::slice::from_ref(t),
            Self::Many(ts) => ts,
        }
    }
}

/// The DNS entry of one Service; None if its name does not fit in DNS.
fn build(
    config: &ViewConfig,
    service: Arc<Service>,
    endpoints: Arc<[MergedEndpoint]>,
) -> Option<ServiceDns> {
    let fqdn = config
        .zone
        .child(b"svc")
        .and_then(|n| n.child(service.key.namespace.as_bytes()))
        .and_then(|n| n.child(service.key.name.as_bytes()))
        .ok()?;
    let external = match (&service.service_type, &service.external_name) {
        (ServiceType::ExternalName, Some(target)) => Some(Name::from_dotted(target).ok()?),
        _ => None,
    };
    let publish_all = service.publish_not_ready_addresses;
    let mut usable: Vec<u32> = (0..endpoints.len() as u32)
        .filter(|i| publish_all || endpoints[*i as usize].endpoint().ready)
        .collect();
    usable.sort_by(|a, b| {
        let (a, b) = (
            endpoints[*a as usize].endpoint(),
            endpoints[*b as usize].endpoint(),
        );
        (a.hostname.as_deref(), a.ip).cmp(&(b.hostname.as_deref(), b.ip))
    });
    Some(ServiceDns {
        service,
        fqdn,
        external,
        endpoints,
        usable: usable.into(),
    })
}

/// PTR records a Service contributes: its ClusterIPs → the Service name, and (as CoreDNS does,
/// for every Service type) each usable endpoint address → `<hostname>.<svc>.<ns>.svc.<zone>`;
/// one target per address.
fn ptr_entries(entry: &Arc<ServiceDns>) -> Vec<(IpAddr, PtrTarget)> {
    let target = |endpoint| PtrTarget {
        service: entry.clone(),
        endpoint,
    };
    let mut out: Vec<(IpAddr, PtrTarget)> = entry
        .service
        .cluster_ips
        .iter()
        .map(|ip| (*ip, target(None)))
        .collect();
    for &i in entry.usable.iter() {
        out.push((entry.endpoints[i as usize].endpoint().ip, target(Some(i))));
    }
    out.sort_by_key(|(ip, _)| *ip);
    out.dedup_by_key(|(ip, _)| *ip);
    out
}
