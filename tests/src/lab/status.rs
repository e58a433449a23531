//! What the lab prints: `status` tables (nodes, pods, Services, endpoints as the EndpointSlices
//! list them) in kubectl's column style, and `up`'s summary with how to reach the cluster.

use std::fmt::Write;
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;

use super::dataplane::DNS_NAME;
use super::ops::Options;
use super::state::{Layout, State};
use super::{DEFAULT_NAME, DEFAULT_STATE_ROOT, net, procs, render};

/// Left-aligned columns separated by three spaces.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("   ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

fn nodes(state: &State) -> String {
    let rows = state
        .nodes
        .iter()
        .map(|n| {
            let (c4, c6) = net::pod_cidrs(n.index);
            let proxy = match &n.proxy {
                Some(p) if procs::alive(p) => format!("running (pid {})", p.pid),
                Some(_) => "exited".into(),
                None => "-".into(),
            };
            vec![
                n.name.clone(),
                n.zone.clone(),
                format!("{},{}", n.ipv4, n.ipv6),
                format!("{c4},{c6}"),
                proxy,
            ]
        })
        .collect();
    table(
        &["NODE", "ZONE", "INTERNAL-IP", "POD-CIDR", "SVCPLANE-PROXY"],
        rows,
    )
}

fn pods(state: &State) -> String {
    let rows = state
        .pods
        .values()
        .map(|p| {
            let status = match (&p.process, p.terminating) {
                (_, true) => "Terminating",
                (Some(proc), _) if !procs::alive(proc) => "Error",
                _ => "Running",
            };
            let node = state.nodes.get(p.node).map_or("?", |n| n.name.as_str());
            let ready = if p.ready && !p.terminating {
                "1/1"
            } else {
                "0/1"
            };
            vec![
                p.namespace.clone(),
                p.name.clone(),
                ready.into(),
                status.into(),
                node.into(),
                p.ipv4.to_string(),
                p.ipv6.to_string(),
            ]
        })
        .collect();
    table(
        &["NAMESPACE", "POD", "READY", "STATUS", "NODE", "IP", "IPV6"],
        rows,
    )
}

/// `80:30080/TCP,443/TCP` as kubectl shows ports.
fn ports(spec: &core::ServiceSpec) -> String {
    let list: Vec<String> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            match p.node_port {
                Some(np) => format!("{}:{np}/{proto}", p.port),
                None => format!("{}/{proto}", p.port),
            }
        })
        .collect();
    if list.is_empty() {
        "<none>".into()
    } else {
        list.join(",")
    }
}

/// The load-balancer ingress IPs, or what kubectl shows instead.
fn external_ips(svc: &core::Service) -> String {
    let lb = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref());
    let ips: Vec<String> = lb
        .iter()
        .flat_map(|i| i.iter())
        .filter_map(|i| i.ip.clone())
        .collect();
    let spec_ips = svc
        .spec
        .as_ref()
        .and_then(|s| s.external_ips.clone())
        .unwrap_or_default();
    let all: Vec<String> = ips.into_iter().chain(spec_ips).collect();
    if all.is_empty() {
        "<none>".into()
    } else {
        all.join(",")
    }
}

fn services(state: &State) -> String {
    let rows = state
        .services
        .values()
        .map(|s| {
            let spec = s.spec.clone().unwrap_or_default();
            let ips = spec.cluster_ips.clone().unwrap_or_default().join(",");
            vec![
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
                spec.type_.clone().unwrap_or_else(|| "ClusterIP".into()),
                if ips.is_empty() { "<none>".into() } else { ips },
                external_ips(s),
                ports(&spec),
            ]
        })
        .collect();
    table(
        &[
            "NAMESPACE",
            "SERVICE",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
        ],
        rows,
    )
}

fn endpoints(state: &State) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for slice in render::endpoint_slices(state) {
        let ports: Vec<i32> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port)
            .collect();
        let mut ready = Vec::new();
        let mut other = 0;
        for e in &slice.endpoints {
            let ok = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ok {
                other += 1;
                continue;
            }
            let addr = &e.addresses[0];
            let addr = if addr.contains(':') {
                format!("[{addr}]")
            } else {
                addr.clone()
            };
            match ports.first() {
                Some(p) => ready.push(format!("{addr}:{p}")),
                None => ready.push(addr),
            }
        }
        let mut text = if ready.is_empty() {
            "<none>".into()
        } else {
            ready.join(",")
        };
        if other > 0 {
            let _ = write!(text, " (+{other} not ready)");
        }
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        let svc = labels
            .get(super::slices::SERVICE_NAME_LABEL)
            .cloned()
            .unwrap_or_default();
        rows.push(vec![
            slice.metadata.namespace.clone().unwrap_or_default(),
            svc,
            slice.address_type.clone(),
            text,
        ]);
    }
    table(&["NAMESPACE", "SERVICE", "FAMILY", "READY ENDPOINTS"], rows)
}

/// The `status` output.
pub fn tables(state: &State, layout: &Layout) -> String {
    format!(
        "cluster {} (state {})\n\n{}\n{}\n{}\n{}",
        state.name,
        layout.dir.display(),
        nodes(state),
        pods(state),
        services(state),
        endpoints(state)
    )
}

/// `svcplane-lab` with the flags that select this cluster.
fn command(opts: &Options) -> String {
    let mut cmd = "svcplane-lab".to_owned();
    if opts.root.as_os_str() != DEFAULT_STATE_ROOT {
        let _ = write!(cmd, " --state-dir {}", opts.root.display());
    }
    if opts.name != DEFAULT_NAME {
        let _ = write!(cmd, " --name {}", opts.name);
    }
    cmd
}

/// `up`'s report: timing, ignored objects, the tables and how to reach the cluster.
pub fn up_summary(state: &State, opts: &Options, ignored: &[String], took: Duration) -> String {
    let user_pods = state.pods.values().filter(|p| !p.system).count();
    let mut out = format!(
        "cluster {} up in {took:.2?}: {} nodes, {user_pods} pods, {} services\n",
        state.name,
        state.nodes.len(),
        state.services.len()
    );
    if !ignored.is_empty() {
        let _ = writeln!(
            out,
            "ignored (not used by the data plane): {}",
            ignored.join(", ")
        );
    }
    let layout = Layout::new(&opts.root, &opts.name);
    let _ = write!(out, "\n{}\n", tables(state, &layout));
    out.push_str(&hints(state, opts));
    out
}

/// Commands that reach the cluster's Services.
fn hints(state: &State, opts: &Options) -> String {
    let cmd = command(opts);
    let mut out = String::from("Reach it:\n");
    let client = state.pods.values().find(|p| !p.system);
    for svc in state
        .services
        .values()
        .filter(|s| s.metadata.name.as_deref() != Some(DNS_NAME))
    {
        let spec = svc.spec.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let Some(port) = spec.ports.as_ref().and_then(|p| p.first()) else {
            continue;
        };
        if let Some(c) = client {
            let host = if c.namespace == ns {
                name.clone()
            } else {
                format!("{name}.{ns}")
            };
            let _ = writeln!(
                out,
                "  {cmd} exec {} -- curl -s http://{host}:{}/",
                c.key(),
                port.port
            );
        }
        if let Some(np) = port.node_port {
            let node = &state.nodes[0];
            let _ = writeln!(
                out,
                "  {cmd} exec --external -- curl -s http://{}:{np}/",
                node.ipv4
            );
        }
        let lb = external_ips(svc);
        if spec.type_.as_deref() == Some("LoadBalancer") && lb != "<none>" {
            let ip = lb.split(',').next().unwrap_or_default();
            let _ = writeln!(
                out,
                "  {cmd} exec --external -- curl -s http://{ip}:{}/",
                port.port
            );
        }
    }
    let _ = writeln!(
        out,
        "  {cmd} status | set-ready POD false | apply FILE | down"
    );
    out
}
