//! Pod, Node and Namespace conversion: the addresses, placement and topology DNS and the proxy
//! read from them.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as api;

use super::validate::{self, NameRule};
use super::{ConvertError, label, meta_labels, meta_name, meta_namespace, non_empty};
use crate::model::{Family, IpPrefix, Namespace, Node, ObjectKey, Pod};

/// Node label carrying the node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Converts a Pod: `status.podIPs` (or `status.podIP`), `spec.nodeName`, labels, host network.
pub fn pod(obj: &api::Pod) -> Result<Pod, ConvertError> {
    let meta = &obj.metadata;
    let name = meta_name(meta, NameRule::Dns1123Subdomain)?;
    let namespace = meta_namespace(meta)?;
    let labels = meta_labels(meta)?;
    let spec = obj.spec.as_ref();
    let node_name = match spec.and_then(|s| non_empty(&s.node_name)) {
        Some(n) => {
            validate::name("spec.nodeName", n, NameRule::Dns1123Subdomain)?;
            Some(n.into())
        }
        None => None,
    };
    Ok(Pod {
        key: ObjectKey { namespace, name },
        ips: pod_ips(obj.status.as_ref())?,
        node_name,
        labels: labels
            .iter()
            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
            .collect(),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
    })
}

fn pod_ips(status: Option<&api::PodStatus>) -> Result<Vec<IpAddr>, ConvertError> {
    let Some(status) = status else {
        return Ok(Vec::new());
    };
    let single = non_empty(&status.pod_ip);
    let list = status.pod_ips.as_deref().unwrap_or(&[]);
    if let (Some(ip), Some(first)) = (single, list.first())
        && ip != first.ip
    {
        return Err(ConvertError::forbidden(
            "status.podIPs[0].ip",
            format!("{:?} must equal status.podIP {ip:?}", first.ip),
        ));
    }
    if list.is_empty() {
        return match single {
            Some(ip) => Ok(vec![validate::ip("status.podIP", ip)?]),
            None => Ok(Vec::new()),
        };
    }
    let ips = list
        .iter()
        .enumerate()
        .map(|(i, p)| validate::ip(&format!("status.podIPs[{i}].ip"), &p.ip))
        .collect::<Result<Vec<_>, _>>()?;
    let families: Vec<Family> = ips.iter().map(Family::of).collect();
    validate::dual_stack("status.podIPs", &families)?;
    Ok(ips)
}

/// Converts a Node: InternalIP then ExternalIP addresses, zone label, pod CIDRs.
pub fn node(obj: &api::Node) -> Result<Node, ConvertError> {
    let meta = &obj.metadata;
    let name = meta_name(meta, NameRule::Dns1123Subdomain)?;
    let labels = meta_labels(meta)?;
    Ok(Node {
        name,
        addresses: node_addresses(obj.status.as_ref())?,
        zone: label(labels, ZONE_LABEL),
        pod_cidrs: pod_cidrs(obj.spec.as_ref())?,
    })
}

fn node_addresses(status: Option<&api::NodeStatus>) -> Result<Vec<IpAddr>, ConvertError> {
    let list = status.and_then(|s| s.addresses.as_deref()).unwrap_or(&[]);
    let mut out: Vec<IpAddr> = Vec::new();
    for wanted in ["InternalIP", "ExternalIP"] {
        for (i, a) in list.iter().enumerate() {
            if a.type_ != wanted {
                continue;
            }
            let ip = validate::ip(&format!("status.addresses[{i}].address"), &a.address)?;
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    Ok(out)
}

fn pod_cidrs(spec: Option<&api::NodeSpec>) -> Result<Vec<IpPrefix>, ConvertError> {
    let Some(spec) = spec else {
        return Ok(Vec::new());
    };
    let single = non_empty(&spec.pod_cidr);
    let list = spec.pod_cidrs.as_deref().unwrap_or(&[]);
    if let (Some(cidr), Some(first)) = (single, list.first())
        && cidr != first
    {
        return Err(ConvertError::forbidden(
            "spec.podCIDRs[0]",
            format!("{first:?} must equal spec.podCIDR {cidr:?}"),
        ));
    }
    if list.is_empty() {
        return match single {
            Some(c) => Ok(vec![validate::cidr("spec.podCIDR", c)?]),
            None => Ok(Vec::new()),
        };
    }
    let cidrs = list
        .iter()
        .enumerate()
        .map(|(i, c)| validate::cidr(&format!("spec.podCIDRs[{i}]"), c))
        .collect::<Result<Vec<_>, _>>()?;
    let families: Vec<Family> = cidrs.iter().map(|c| Family::of(&c.addr)).collect();
    validate::dual_stack("spec.podCIDRs", &families)?;
    Ok(cidrs)
}

/// Converts a Namespace; its name must be a DNS-1123 label.
pub fn namespace(obj: &api::Namespace) -> Result<Namespace, ConvertError> {
    let name: Arc<str> = meta_name(&obj.metadata, NameRule::Dns1123Label)?;
    meta_labels(&obj.metadata)?;
    Ok(Namespace { name })
}
