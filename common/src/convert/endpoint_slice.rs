//! EndpointSlice conversion: address type, ports, and endpoints with the API's nil semantics for
//! conditions, validated as the API server's `ValidateEndpointSlice` does.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1 as api;

use super::service::protocol;
use super::validate::{self, NameRule};
use super::{ConvertError, label, meta_labels, meta_name, meta_namespace, non_empty};
use crate::model::{Endpoint, EndpointPort, EndpointSlice, Family, Hints, ObjectKey};

/// Label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MAX_ENDPOINTS: usize = 1000;
const MAX_PORTS: usize = 20000;
const MAX_ADDRESSES: usize = 100;
const MAX_HINTS: usize = 8;

/// Converts an EndpointSlice; `Ok(None)` for address type FQDN, which svcplane does not serve.
///
/// Ports without a number (the API's "all ports") are dropped, as kube-proxy drops them.
pub fn endpoint_slice(obj: &api::EndpointSlice) -> Result<Option<EndpointSlice>, ConvertError> {
    let meta = &obj.metadata;
    let name = meta_name(meta, NameRule::Dns1123Subdomain)?;
    let namespace = meta_namespace(meta)?;
    let labels = meta_labels(meta)?;
    let family = match obj.address_type.as_str() {
        "IPv4" => Family::V4,
        "IPv6" => Family::V6,
        "FQDN" => return Ok(None),
        "" => return Err(ConvertError::required("addressType")),
        other => {
            return Err(ConvertError::NotSupported {
                field: "addressType".into(),
                value: other.into(),
                allowed: "IPv4, IPv6, FQDN",
            });
        }
    };
    let ports = ports(obj.ports.as_deref().unwrap_or(&[]))?;
    if obj.endpoints.len() > MAX_ENDPOINTS {
        return Err(ConvertError::forbidden(
            "endpoints",
            format!("at most {MAX_ENDPOINTS} entries"),
        ));
    }
    let mut endpoints = Vec::with_capacity(obj.endpoints.len());
    for (i, e) in obj.endpoints.iter().enumerate() {
        endpoints.push(endpoint(i, e, family)?);
    }
    Ok(Some(EndpointSlice {
        key: ObjectKey { namespace, name },
        service_name: label(labels, SERVICE_NAME_LABEL),
        family,
        ports: crate::intern::endpoint_ports(&ports),
        endpoints,
    }))
}

fn ports(list: &[api::EndpointPort]) -> Result<Vec<EndpointPort>, ConvertError> {
    if list.len() > MAX_PORTS {
        return Err(ConvertError::forbidden(
            "ports",
            format!("at most {MAX_PORTS} entries"),
        ));
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let field = |f: &str| format!("ports[{i}].{f}");
        let name = p.name.as_deref().unwrap_or("");
        if !name.is_empty() {
            validate::name(&field("name"), name, NameRule::Dns1123Label)?;
        }
        if let Some(first) = names.insert(name, i) {
            return Err(ConvertError::Duplicate {
                field: field("name"),
                value: name.into(),
                first: format!("ports[{first}].name"),
            });
        }
        let protocol = protocol(&field("protocol"), &p.protocol)?;
        let Some(port) = p.port else {
            continue;
        };
        out.push(EndpointPort {
            name: crate::intern::intern(name),
            protocol,
            port: validate::port(&field("port"), port)?,
        });
    }
    Ok(out)
}

fn endpoint(i: usize, e: &api::Endpoint, family: Family) -> Result<Endpoint, ConvertError> {
    let field = |f: &str| format!("endpoints[{i}].{f}");
    let ip = addresses(&field("addresses"), &e.addresses, family)?;
    let hostname = optional_name(&field("hostname"), &e.hostname, NameRule::Dns1123Label)?;
    let node_name = optional_name(&field("nodeName"), &e.node_name, NameRule::Dns1123Subdomain)?;
    let zone = non_empty(&e.zone);
    if let Some(zone) = zone
        && validate::label("topology.kubernetes.io/zone", zone).is_err()
    {
        return Err(ConvertError::forbidden(
            field("zone"),
            format!("{zone:?} is not a valid label value"),
        ));
    }
    let conditions = e.conditions.clone().unwrap_or_default();
    let ready = conditions.ready.unwrap_or(true);
    let hints = hints(&field("hints"), e.hints.as_ref())?;
    Ok(Endpoint {
        ip,
        hostname,
        locality: crate::intern::locality(node_name.as_deref(), zone, hints),
        ready,
        serving: conditions.serving.unwrap_or(ready),
        terminating: conditions.terminating.unwrap_or(false),
    })
}

/// The first of `addresses` (the rest are fungible), after checking every one.
fn addresses(
    field: &str,
    list: &[String],
    family: Family,
) -> Result<std::net::IpAddr, ConvertError> {
    if list.len() > MAX_ADDRESSES {
        return Err(ConvertError::forbidden(
            field,
            format!("at most {MAX_ADDRESSES} entries"),
        ));
    }
    let mut first = None;
    for (j, s) in list.iter().enumerate() {
        let f = format!("{field}[{j}]");
        let addr = validate::ip_of(&f, s, family)?;
        validate::non_special(&f, s, addr)?;
        first.get_or_insert(addr);
    }
    first.ok_or_else(|| ConvertError::required(field))
}

fn optional_name(
    field: &str,
    value: &Option<String>,
    rule: NameRule,
) -> Result<Option<Arc<str>>, ConvertError> {
    match non_empty(value) {
        None => Ok(None),
        Some(v) => {
            validate::name(field, v, rule)?;
            Ok(Some(v.into()))
        }
    }
}

fn hints(field: &str, hints: Option<&api::EndpointHints>) -> Result<Option<Hints>, ConvertError> {
    let Some(hints) = hints else {
        return Ok(None);
    };
    let zones = hints.for_zones.as_deref().unwrap_or(&[]);
    let nodes = hints.for_nodes.as_deref().unwrap_or(&[]);
    let zones = hint_names(&format!("{field}.forZones"), zones.iter().map(|z| &z.name))?;
    let nodes = hint_names(&format!("{field}.forNodes"), nodes.iter().map(|n| &n.name))?;
    if zones.is_empty() && nodes.is_empty() {
        return Ok(None);
    }
    Ok(Some(Hints { zones, nodes }))
}

fn hint_names<'a>(
    field: &str,
    names: impl ExactSizeIterator<Item = &'a String>,
) -> Result<Vec<Arc<str>>, ConvertError> {
    if names.len() > MAX_HINTS {
        return Err(ConvertError::forbidden(
            field,
            format!("at most {MAX_HINTS} entries"),
        ));
    }
    names
        .enumerate()
        .map(|(k, name)| {
            if name.is_empty() {
                Err(ConvertError::required(format!("{field}[{k}].name")))
            } else {
                Ok(crate::intern::intern(name))
            }
        })
        .collect()
}
