//! Service conversion: `spec` defaults and the API server's `ValidateService` rules that matter to
//! a data plane (type, cluster IPs, ports, affinity, traffic policies, external and LB addresses).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as api;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::validate::{self, NameRule};
use super::{ConvertError, label, meta_labels, meta_name, meta_namespace, non_empty};
use crate::model::{
    Family, IpMode, IpPrefix, LbIngress, ObjectKey, Protocol, Service, ServicePort, ServiceType,
    TargetPort, TrafficPolicy,
};

/// Label naming the proxy that should handle a Service (others must ignore it).
pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Label marking a Service as headless for proxies.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Annotation read for source ranges when `spec.loadBalancerSourceRanges` is empty.
const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";
const DEFAULT_AFFINITY_TIMEOUT: i32 = 10800;
const MAX_AFFINITY_TIMEOUT: u32 = 86400;

/// Converts a Service, applying the API's defaults and rejecting what the API server would.
pub fn service(obj: &api::Service) -> Result<Service, ConvertError> {
    let meta = &obj.metadata;
    let name = meta_name(meta, NameRule::Dns1035Label)?;
    let namespace = meta_namespace(meta)?;
    let labels = meta_labels(meta)?;
    let default_spec = api::ServiceSpec::default();
    let spec = obj.spec.as_ref().unwrap_or(&default_spec);
    let service_type = service_type(spec)?;
    let (headless, cluster_ips) = cluster_ips(spec, service_type)?;
    let ports = ports(spec, service_type, headless)?;
    let external_ips = external_ips(spec)?;
    let external = is_externally_accessible(service_type, &external_ips);
    let external_traffic_policy = external_traffic_policy(spec, external)?;
    Ok(Service {
        key: ObjectKey { namespace, name },
        service_type,
        headless,
        cluster_ips: cluster_ips.into(),
        ports: crate::intern::service_ports(&ports),
        external_ips: external_ips.into(),
        lb_ingress: lb_ingress(obj.status.as_ref(), service_type)?.into(),
        lb_source_ranges: source_ranges(spec, meta, service_type)?.into(),
        affinity_timeout: affinity(spec)?,
        external_traffic_policy,
        internal_traffic_policy: traffic_policy(
            "spec.internalTrafficPolicy",
            &spec.internal_traffic_policy,
        )?,
        health_check_node_port: health_check_node_port(
            spec,
            service_type,
            external_traffic_policy,
        )?,
        publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
        external_name: external_name(spec, service_type)?,
        traffic_distribution: traffic_distribution(spec)?,
        proxy_name: label(labels, PROXY_NAME_LABEL),
        headless_label: labels.contains_key(HEADLESS_LABEL),
    })
}

fn service_type(spec: &api::ServiceSpec) -> Result<ServiceType, ConvertError> {
    match non_empty(&spec.type_).unwrap_or("ClusterIP") {
        "ClusterIP" => Ok(ServiceType::ClusterIp),
        "NodePort" => Ok(ServiceType::NodePort),
        "LoadBalancer" => Ok(ServiceType::LoadBalancer),
        "ExternalName" => Ok(ServiceType::ExternalName),
        other => Err(ConvertError::NotSupported {
            field: "spec.type".into(),
            value: other.into(),
            allowed: "ClusterIP, NodePort, LoadBalancer, ExternalName",
        }),
    }
}

/// `spec.clusterIP` / `spec.clusterIPs`: whether the Service is headless, and its VIPs.
fn cluster_ips(
    spec: &api::ServiceSpec,
    ty: ServiceType,
) -> Result<(bool, Vec<IpAddr>), ConvertError> {
    let single = non_empty(&spec.cluster_ip);
    let list = spec.cluster_ips.as_deref().unwrap_or(&[]);
    if let (Some(ip), Some(first)) = (single, list.first())
        && ip != first
    {
        return Err(ConvertError::forbidden(
            "spec.clusterIPs[0]",
            format!("{first:?} must equal spec.clusterIP {ip:?}"),
        ));
    }
    let Some(primary) = single.or(list.first().map(String::as_str)) else {
        return Ok((false, Vec::new()));
    };
    if ty == ServiceType::ExternalName {
        return Err(ConvertError::forbidden(
            "spec.clusterIP",
            "may not be set when spec.type is ExternalName",
        ));
    }
    if primary == "None" {
        if ty != ServiceType::ClusterIp {
            return Err(ConvertError::forbidden(
                "spec.clusterIP",
                "may be \"None\" only when spec.type is ClusterIP",
            ));
        }
        if list.len() > 1 {
            return Err(ConvertError::forbidden(
                "spec.clusterIPs",
                "must hold the single value \"None\" for a headless Service",
            ));
        }
        return Ok((true, Vec::new()));
    }
    let primary_field = if single.is_some() {
        "spec.clusterIP".to_owned()
    } else {
        "spec.clusterIPs[0]".to_owned()
    };
    let mut ips = vec![validate::ip(&primary_field, primary)?];
    for (i, ip) in list.iter().enumerate().skip(1) {
        ips.push(validate::ip(&format!("spec.clusterIPs[{i}]"), ip)?);
    }
    let families: Vec<Family> = ips.iter().map(Family::of).collect();
    validate::dual_stack("spec.clusterIPs", &families)?;
    Ok((false, ips))
}

fn ports(
    spec: &api::ServiceSpec,
    ty: ServiceType,
    headless: bool,
) -> Result<Vec<ServicePort>, ConvertError> {
    let list = spec.ports.as_deref().unwrap_or(&[]);
    if list.is_empty() && !headless && ty != ServiceType::ExternalName {
        return Err(ConvertError::required("spec.ports"));
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut pairs: HashMap<(u16, Protocol), usize> = HashMap::new();
    let mut node_ports: HashMap<(u16, Protocol), usize> = HashMap::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let port = service_port(i, p, list.len() > 1, ty)?;
        unique(&mut names, p.name.as_deref().unwrap_or(""), i)?;
        let key = (port.port, port.protocol);
        let value = format!("{}/{}", port.port, port.protocol.as_lower().to_uppercase());
        if let Some(first) = pairs.insert(key, i) {
            return Err(duplicate(format!("spec.ports[{i}]"), value, first, ""));
        }
        if let Some(node_port) = port.node_port
            && let Some(first) = node_ports.insert((node_port, port.protocol), i)
        {
            let value = format!("{node_port}/{}", port.protocol.as_lower().to_uppercase());
            return Err(duplicate(
                format!("spec.ports[{i}].nodePort"),
                value,
                first,
                ".nodePort",
            ));
        }
        out.push(port);
    }
    Ok(out)
}

fn unique<'a>(
    seen: &mut HashMap<&'a str, usize>,
    name: &'a str,
    i: usize,
) -> Result<(), ConvertError> {
    if name.is_empty() {
        return Ok(());
    }
    match seen.insert(name, i) {
        Some(first) => Err(duplicate(
            format!("spec.ports[{i}].name"),
            name.into(),
            first,
            ".name",
        )),
        None => Ok(()),
    }
}

fn duplicate(field: String, value: String, first: usize, suffix: &str) -> ConvertError {
    ConvertError::Duplicate {
        field,
        value,
        first: format!("spec.ports[{first}]{suffix}"),
    }
}

fn service_port(
    i: usize,
    p: &api::ServicePort,
    require_name: bool,
    ty: ServiceType,
) -> Result<ServicePort, ConvertError> {
    let field = |f: &str| format!("spec.ports[{i}].{f}");
    let name = non_empty(&p.name).unwrap_or("");
    if name.is_empty() && require_name {
        return Err(ConvertError::forbidden(
            field("name"),
            "required when the Service has more than one port",
        ));
    }
    if !name.is_empty() {
        validate::name(&field("name"), name, NameRule::Dns1123Label)?;
    }
    let port = validate::port(&field("port"), p.port)?;
    let node_port = match p.node_port {
        None | Some(0) => None,
        Some(_) if ty == ServiceType::ClusterIp => {
            return Err(ConvertError::forbidden(
                field("nodePort"),
                "may not be set when spec.type is ClusterIP",
            ));
        }
        Some(n) => Some(validate::port(&field("nodePort"), n)?),
    };
    Ok(ServicePort {
        name: crate::intern::intern(name),
        protocol: protocol(&field("protocol"), &p.protocol)?,
        port,
        target_port: target_port(&field("targetPort"), p.target_port.as_ref(), port)?,
        node_port,
    })
}

/// `protocol` of a Service or EndpointSlice port: TCP (the default), UDP or SCTP.
pub(crate) fn protocol(field: &str, value: &Option<String>) -> Result<Protocol, ConvertError> {
    match non_empty(value).unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(ConvertError::NotSupported {
            field: field.into(),
            value: other.into(),
            allowed: "TCP, UDP, SCTP",
        }),
    }
}

fn target_port(
    field: &str,
    value: Option<&IntOrString>,
    port: u16,
) -> Result<TargetPort, ConvertError> {
    match value {
        None | Some(IntOrString::Int(0)) => Ok(TargetPort::Number(port)),
        Some(IntOrString::String(s)) if s.is_empty() => Ok(TargetPort::Number(port)),
        Some(IntOrString::Int(n)) => Ok(TargetPort::Number(validate::port(field, *n)?)),
        Some(IntOrString::String(s)) => {
            validate::name(field, s, NameRule::IanaSvcName)?;
            Ok(TargetPort::Name(s.as_str().into()))
        }
    }
}

fn external_ips(spec: &api::ServiceSpec) -> Result<Vec<IpAddr>, ConvertError> {
    let list = spec.external_ips.as_deref().unwrap_or(&[]);
    let mut out = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        let addr = validate::ip(&field, s)?;
        validate::non_special(&field, s, addr)?;
        out.push(addr);
    }
    Ok(out)
}

/// Whether traffic may reach the Service from outside the cluster network.
fn is_externally_accessible(ty: ServiceType, external_ips: &[IpAddr]) -> bool {
    match ty {
        ServiceType::NodePort | ServiceType::LoadBalancer => true,
        ServiceType::ClusterIp => !external_ips.is_empty(),
        ServiceType::ExternalName => false,
    }
}

fn traffic_policy(field: &str, value: &Option<String>) -> Result<TrafficPolicy, ConvertError> {
    match non_empty(value).unwrap_or("Cluster") {
        "Cluster" => Ok(TrafficPolicy::Cluster),
        "Local" => Ok(TrafficPolicy::Local),
        other => Err(ConvertError::NotSupported {
            field: field.into(),
            value: other.into(),
            allowed: "Cluster, Local",
        }),
    }
}

fn external_traffic_policy(
    spec: &api::ServiceSpec,
    external: bool,
) -> Result<TrafficPolicy, ConvertError> {
    let field = "spec.externalTrafficPolicy";
    if !external && non_empty(&spec.external_traffic_policy).is_some() {
        return Err(ConvertError::forbidden(
            field,
            "may only be set for externally-accessible Services (NodePort, LoadBalancer, or with externalIPs)",
        ));
    }
    traffic_policy(field, &spec.external_traffic_policy)
}

fn health_check_node_port(
    spec: &api::ServiceSpec,
    ty: ServiceType,
    etp: TrafficPolicy,
) -> Result<Option<u16>, ConvertError> {
    let field = "spec.healthCheckNodePort";
    match spec.health_check_node_port {
        None | Some(0) => Ok(None),
        Some(_) if ty != ServiceType::LoadBalancer || etp != TrafficPolicy::Local => {
            Err(ConvertError::forbidden(
                field,
                "may only be set when spec.type is LoadBalancer and spec.externalTrafficPolicy is Local",
            ))
        }
        Some(n) => Ok(Some(validate::port(field, n)?)),
    }
}

fn affinity(spec: &api::ServiceSpec) -> Result<Option<u32>, ConvertError> {
    match non_empty(&spec.session_affinity).unwrap_or("None") {
        "None" if spec.session_affinity_config.is_some() => Err(ConvertError::forbidden(
            "spec.sessionAffinityConfig",
            "must not be set when spec.sessionAffinity is None",
        )),
        "None" => Ok(None),
        "ClientIP" => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT);
            u32::try_from(timeout)
                .ok()
                .filter(|t| (1..=MAX_AFFINITY_TIMEOUT).contains(t))
                .map(Some)
                .ok_or_else(|| {
                    validate::out_of_range(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        timeout.into(),
                        1,
                        MAX_AFFINITY_TIMEOUT.into(),
                    )
                })
        }
        other => Err(ConvertError::NotSupported {
            field: "spec.sessionAffinity".into(),
            value: other.into(),
            allowed: "None, ClientIP",
        }),
    }
}

fn source_ranges(
    spec: &api::ServiceSpec,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ty: ServiceType,
) -> Result<Vec<IpPrefix>, ConvertError> {
    let from_spec = spec.load_balancer_source_ranges.as_deref().unwrap_or(&[]);
    let (field, ranges): (String, Vec<&str>) = if from_spec.is_empty() {
        let annotation = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION))
            .map(|v| v.split(',').filter(|r| !r.trim().is_empty()).collect())
            .unwrap_or_default();
        let field = format!("metadata.annotations[{SOURCE_RANGES_ANNOTATION}]");
        (field, annotation)
    } else {
        let ranges = from_spec.iter().map(String::as_str).collect();
        ("spec.loadBalancerSourceRanges".into(), ranges)
    };
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    if ty != ServiceType::LoadBalancer {
        return Err(ConvertError::forbidden(
            field,
            "may only be set when spec.type is LoadBalancer",
        ));
    }
    ranges
        .iter()
        .enumerate()
        .map(|(i, r)| validate::cidr(&format!("{field}[{i}]"), r.trim()))
        .collect()
}

fn external_name(
    spec: &api::ServiceSpec,
    ty: ServiceType,
) -> Result<Option<Arc<str>>, ConvertError> {
    if ty != ServiceType::ExternalName {
        return Ok(None);
    }
    let field = "spec.externalName";
    let raw = non_empty(&spec.external_name).unwrap_or("");
    let name = raw.strip_suffix('.').unwrap_or(raw);
    if name.is_empty() {
        return Err(ConvertError::required(field));
    }
    validate::name(field, name, NameRule::Dns1123Subdomain)?;
    Ok(Some(name.to_ascii_lowercase().into()))
}

fn traffic_distribution(spec: &api::ServiceSpec) -> Result<Option<Arc<str>>, ConvertError> {
    match non_empty(&spec.traffic_distribution) {
        None => Ok(None),
        Some(v @ ("PreferClose" | "PreferSameZone" | "PreferSameNode")) => Ok(Some(v.into())),
        Some(other) => Err(ConvertError::NotSupported {
            field: "spec.trafficDistribution".into(),
            value: other.into(),
            allowed: "PreferClose, PreferSameZone, PreferSameNode",
        }),
    }
}

/// `status.loadBalancer.ingress` IPs (hostname-only entries carry no IP and are skipped); kept
/// only for type LoadBalancer, the only type whose ingress IPs a proxy serves.
fn lb_ingress(
    status: Option<&api::ServiceStatus>,
    ty: ServiceType,
) -> Result<Vec<LbIngress>, ConvertError> {
    let list = status
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or(&[]);
    let mut out = Vec::new();
    for (i, ingress) in list.iter().enumerate() {
        let field = |f: &str| format!("status.loadBalancer.ingress[{i}].{f}");
        let Some(ip) = non_empty(&ingress.ip) else {
            continue;
        };
        let ip = validate::ip(&field("ip"), ip)?;
        let ip_mode = match non_empty(&ingress.ip_mode).unwrap_or("VIP") {
            "VIP" => IpMode::Vip,
            "Proxy" => IpMode::Proxy,
            other => {
                return Err(ConvertError::NotSupported {
                    field: field("ipMode"),
                    value: other.into(),
                    allowed: "VIP, Proxy",
                });
            }
        };
        if ty == ServiceType::LoadBalancer {
            out.push(LbIngress { ip, ip_mode });
        }
    }
    Ok(out)
}
