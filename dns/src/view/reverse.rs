//! The reverse (PTR) index: which Service or endpoint each ClusterIP and endpoint address names.
//!
//! At 50k Services / 250k endpoints this index has 300k entries, so its entry size decides a
//! good part of svcplane-dns's memory. IPv4 addresses are keyed as `u32` and IPv6 as `u128`
//! (an `IpAddr` key would pad every entry to 48 bytes), and the common case of one target per
//! address is held inline in 16 bytes: a 24-byte IPv4 entry.

use std::net::IpAddr;
use std::sync::Arc;

use svcplane_common::cowmap::CowMap;
use svcplane_common::model::ObjectKey;

use super::ServiceDns;
use crate::name::Name;

/// `endpoint` value of a target that is the Service's ClusterIP.
const CLUSTER_IP: u32 = u32::MAX;

/// What a PTR record names: a Service (its ClusterIP) or one of its endpoints. The name is
/// built when asked: storing 250k endpoint names would cost more than building the few that
/// PTR queries need.
#[derive(Debug, Clone)]
pub struct PtrTarget {
    pub service: Arc<ServiceDns>,
    endpoint: u32,
}

impl PtrTarget {
    /// The ClusterIP of `service`.
    pub fn cluster_ip(service: Arc<ServiceDns>) -> PtrTarget {
        PtrTarget {
            service,
            endpoint: CLUSTER_IP,
        }
    }

    /// Endpoint `index` (into `service.endpoints`) of `service`.
    pub fn endpoint(service: Arc<ServiceDns>, index: u32) -> PtrTarget {
        PtrTarget {
            service,
            endpoint: index.min(CLUSTER_IP - 1),
        }
    }

    /// `<svc>.<ns>.svc.<zone>` or `<hostname>.<svc>.<ns>.svc.<zone>`.
    pub fn name(&self) -> Option<Name> {
        if self.endpoint == CLUSTER_IP {
            return self.service.fqdn();
        }
        let e = self.service.endpoints.get(self.endpoint as usize)?;
        self.service.endpoint_name(e)
    }
}

/// The PTR targets of one address: almost always one, so that case is held inline.
#[derive(Debug, Clone)]
pub enum PtrTargets {
    One(PtrTarget),
    /// Several Services claim the address, sorted by Service name.
    Many(Arc<Vec<PtrTarget>>),
}

impl From<Vec<PtrTarget>> for PtrTargets {
    fn from(mut targets: Vec<PtrTarget>) -> Self {
        match targets.len() {
            1 => targets
                .pop()
                .map_or_else(|| Self::Many(Arc::default()), Self::One),
            _ => Self::Many(Arc::new(targets)),
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

/// PTR targets by address.
#[derive(Debug, Clone, Default)]
pub struct Reverse {
    v4: CowMap<u32, PtrTargets>,
    v6: CowMap<u128, PtrTargets>,
}

impl Reverse {
    pub fn get(&self, ip: &IpAddr) -> Option<&PtrTargets> {
        match ip {
            IpAddr::V4(a) => self.v4.get(&a.to_bits()),
            IpAddr::V6(a) => self.v6.get(&a.to_bits()),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn set(&mut self, ip: IpAddr, targets: Vec<PtrTarget>) {
        match (ip, targets.is_empty()) {
            (IpAddr::V4(a), true) => drop(self.v4.remove(&a.to_bits())),
            (IpAddr::V6(a), true) => drop(self.v6.remove(&a.to_bits())),
            (IpAddr::V4(a), false) => drop(self.v4.insert(a.to_bits(), targets.into())),
            (IpAddr::V6(a), false) => drop(self.v6.insert(a.to_bits(), targets.into())),
        }
    }

    /// Adds `target` for `ip`, keeping several targets sorted by Service name.
    pub fn publish(&mut self, ip: IpAddr, target: PtrTarget) {
        let mut targets: Vec<PtrTarget> = self.get(&ip).map(|t| t.to_vec()).unwrap_or_default();
        targets.push(target);
        targets.sort_by_cached_key(|t| t.service.fqdn().map(|n| n.wire().to_vec()));
        self.set(ip, targets);
    }

    /// Removes the PTR targets `service` contributed for `ip`.
    pub fn withdraw(&mut self, ip: IpAddr, service: &ObjectKey) {
        let Some(targets) = self.get(&ip) else {
            return;
        };
        let rest: Vec<PtrTarget> = targets
            .iter()
            .filter(|t| t.service.service.key != *service)
            .cloned()
            .collect();
        self.set(ip, rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_compact() {
        assert_eq!(std::mem::size_of::<PtrTarget>(), 16);
        assert!(std::mem::size_of::<PtrTargets>() <= 24);
        assert!(std::mem::size_of::<(u32, PtrTargets)>() <= 32);
    }
}
