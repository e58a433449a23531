//! The DNS view of the catalog: Services indexed by DNS name, and the reverse (PTR) index.
//!
//! [`ViewBuilder::update`] turns a catalog [`Snapshot`] into a [`View`] doing work in proportion
//! to the Services that changed since the previous update (the catalog's change log): each
//! changed Service's entry is rebuilt and its PTR contributions swapped. The `View` is immutable
//! and published through an `ArcSwap`, so query workers read it without locks; copy-on-write maps
//! make each publication O(changes).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use svcplane_common::catalog::{Changes, Snapshot};
use svcplane_common::cowmap::CowMap;
use svcplane_common::model::{MergedEndpoint, ObjectKey, Service, ServiceType};

use crate::name::{Name, dashed};

mod reverse;
pub use reverse::{PtrTarget, PtrTargets, Reverse};

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
    /// `svc.<zone>`, shared by every entry: the Service's own name is built from it when asked
    /// ([`ServiceDns::fqdn`]; only SRV and PTR answers need it), which saves an allocation per
    /// Service.
    svc_zone: Name,
    /// For ExternalName Services: the target.
    pub external: Option<Name>,
    /// All endpoints of the Service, as the catalog merged them.
    pub endpoints: Arc<[MergedEndpoint]>,
    /// The endpoints DNS publishes (ready, or every one with `publishNotReadyAddresses`),
    /// sorted by (hostname, address) for binary search.
    pub usable: Usable,
}

/// Which endpoints a Service publishes, in (hostname, address) order.
#[derive(Debug, Clone)]
pub enum Usable {
    /// All of them, in the merged order (the usual case: no hostnames, all ready); nothing is
    /// allocated.
    All,
    /// These indexes into `endpoints`.
    Some(Box<[u32]>),
}

impl ServiceDns {
    /// How many endpoints are published.
    pub fn usable_len(&self) -> usize {
        match &self.usable {
            Usable::All => self.endpoints.len(),
            Usable::Some(indexes) => indexes.len(),
        }
    }

    /// Index into `endpoints` of the `k`-th published endpoint.
    fn usable_at(&self, k: usize) -> u32 {
        match &self.usable {
            Usable::All => k as u32,
            Usable::Some(indexes) => indexes[k],
        }
    }

    pub fn usable_indexes(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.usable_len()).map(|k| self.usable_at(k))
    }

    pub fn usable(&self) -> impl Iterator<Item = &MergedEndpoint> {
        self.usable_indexes().map(|i| &self.endpoints[i as usize])
    }

    /// Usable endpoints whose DNS label (hostname, or dashed address without one) is `label`.
    pub fn endpoints_labelled<'a>(&'a self, label: &str) -> Vec<&'a MergedEndpoint> {
        let key = |k: usize| {
            let e = self.endpoints[self.usable_at(k) as usize].endpoint();
            (e.hostname.as_deref(), e.ip)
        };
        let mut out = Vec::new();
        let len = self.usable_len();
        let start = partition_point(len, |k| key(k).0 < Some(label));
        for k in (start..len).take_while(|k| key(*k).0 == Some(label)) {
            out.push(&self.endpoints[self.usable_at(k) as usize]);
        }
        if let Some(ip) = crate::name::parse_dashed(label.as_bytes()) {
            let start = partition_point(len, |k| key(k) < (None, ip));
            for k in (start..len).take_while(|k| key(*k) == (None, ip)) {
                out.push(&self.endpoints[self.usable_at(k) as usize]);
            }
        }
        out
    }

    /// `<svc>.<ns>.svc.<zone>` (always Some for an entry of the view, whose name was checked
    /// to fit in DNS when it was built).
    pub fn fqdn(&self) -> Option<Name> {
        let key = &self.service.key;
        self.svc_zone
            .child(key.namespace.as_bytes())
            .and_then(|n| n.child(key.name.as_bytes()))
            .ok()
    }

    /// The DNS name of an endpoint of this Service.
    pub fn endpoint_name(&self, e: &MergedEndpoint) -> Option<Name> {
        self.endpoint_name_under(&self.fqdn()?, e)
    }

    /// The DNS name of an endpoint of this Service, given the Service's [`ServiceDns::fqdn`]
    /// (for answers that name several endpoints).
    pub fn endpoint_name_under(&self, fqdn: &Name, e: &MergedEndpoint) -> Option<Name> {
        let label = match &e.endpoint().hostname {
            Some(h) => h.to_string(),
            None => dashed(&e.endpoint().ip),
        };
        fqdn.child(label.as_bytes()).ok()
    }
}

/// A (namespace, name) pair, owned ([`ObjectKey`]) or borrowed (`(&str, &str)`), so that the
/// per-query Service lookup borrows the query's labels instead of allocating a key. Hashing and
/// ordering match `ObjectKey`'s derived ones (namespace, then name).
pub trait NsName {
    fn ns_name(&self) -> (&str, &str);
}

impl NsName for ObjectKey {
    fn ns_name(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }
}

impl NsName for (&str, &str) {
    fn ns_name(&self) -> (&str, &str) {
        *self
    }
}

impl<'a> Borrow<dyn NsName + 'a> for ObjectKey {
    fn borrow(&self) -> &(dyn NsName + 'a) {
        self
    }
}

impl Hash for dyn NsName + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (namespace, name) = self.ns_name();
        namespace.hash(state);
        name.hash(state);
    }
}

impl PartialEq for dyn NsName + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.ns_name() == other.ns_name()
    }
}

impl Eq for dyn NsName + '_ {}

impl PartialOrd for dyn NsName + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn NsName + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.ns_name().cmp(&other.ns_name())
    }
}

/// What query workers read.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The catalog generation this view reflects.
    pub generation: u64,
    pub synced: bool,
    /// Keyed by the Service's key, looked up with borrowed names (see [`NsName`]).
    pub services: CowMap<ObjectKey, Arc<ServiceDns>>,
    /// Number of Services per namespace (a namespace with Services exists in DNS).
    pub namespace_services: CowMap<Arc<str>, u32>,
    /// PTR targets per address: ClusterIPs and endpoint addresses.
    pub reverse: Reverse,
    pub snapshot: Arc<Snapshot>,
}

impl View {
    /// The Service `<name>.<namespace>`, found without building a key (this runs per query).
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<ServiceDns>> {
        self.services.get(&(namespace, name) as &dyn NsName)
    }

    pub fn namespace_exists(&self, namespace: &str) -> bool {
        self.namespace_services.contains_key(namespace) || self.snapshot.namespace_exists(namespace)
    }
}

/// Builds successive views. What a Service contributed to the PTR index is recomputed from its
/// previous entry when it changes, so no bookkeeping beyond the view itself is kept.
#[derive(Debug)]
pub struct ViewBuilder {
    /// `svc.<zone>` (None if the zone is too long to have Services under it).
    svc_zone: Option<Name>,
    view: View,
}

impl ViewBuilder {
    pub fn new(config: ViewConfig) -> Self {
        let svc_zone = config.zone.child(b"svc").ok();
        ViewBuilder {
            svc_zone,
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
        if let Some(old) = self.view.services.remove(key) {
            self.count_namespace(&key.namespace, false);
            for (ip, _) in ptr_entries(&old) {
                self.view.reverse.withdraw(ip, key);
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
        let entry = self
            .svc_zone
            .as_ref()
            .and_then(|zone| build(zone, service.clone(), endpoints));
        let Some(entry) = entry else {
            tracing::warn!(service = %key, "service name does not fit in DNS; not served");
            return;
        };
        let entry = Arc::new(entry);
        for (ip, target) in ptr_entries(&entry) {
            self.view.reverse.publish(ip, target);
        }
        self.view.services.insert(key.clone(), entry);
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
}

/// The first `k` in `0..len` for which `pred` is false (`pred` true on a prefix).
fn partition_point(len: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The DNS entry of one Service; None if its name does not fit in DNS.
fn build(
    svc_zone: &Name,
    service: Arc<Service>,
    endpoints: Arc<[MergedEndpoint]>,
) -> Option<ServiceDns> {
    // Checks that the name fits; it is built again when an answer needs it.
    svc_zone
        .child(service.key.namespace.as_bytes())
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
    let identity = usable.iter().enumerate().all(|(k, i)| k == *i as usize);
    let usable = if identity && usable.len() == endpoints.len() {
        Usable::All
    } else {
        Usable::Some(usable.into())
    };
    Some(ServiceDns {
        service,
        svc_zone: svc_zone.clone(),
        external,
        endpoints,
        usable,
    })
}

/// PTR records a Service contributes: its ClusterIPs → the Service name, and (as CoreDNS does,
/// for every Service type) each usable endpoint address → `<hostname>.<svc>.<ns>.svc.<zone>`;
/// one target per address.
fn ptr_entries(entry: &Arc<ServiceDns>) -> Vec<(IpAddr, PtrTarget)> {
    let mut out: Vec<(IpAddr, PtrTarget)> = entry
        .service
        .cluster_ips
        .iter()
        .map(|ip| (*ip, PtrTarget::cluster_ip(entry.clone())))
        .collect();
    for i in entry.usable_indexes() {
        let target = PtrTarget::endpoint(entry.clone(), i);
        out.push((entry.endpoints[i as usize].endpoint().ip, target));
    }
    out.sort_by_key(|(ip, _)| *ip);
    out.dedup_by_key(|(ip, _)| *ip);
    out
}
