//! Reload and change latency: rewriting every manifest file, and moving single Services to new
//! addresses, timed from the file write to the changed answer.

#[allow(clippy::wildcard_imports)]
use crate::*;

#[derive(Debug, Clone)]
pub(crate) struct Reload {
    /// From the first write to the sentinel change (in the last file) answering.
    pub(crate) took: Duration,
    pub(crate) before: Memory,
    /// VmHWM reset to VmRSS just before the rewrite, so this is the reload's own peak.
    pub(crate) peak_kb: Option<u64>,
    pub(crate) after: Memory,
}

/// Rewrites every manifest file with a new revision annotation (new content, same objects, so the
/// manifests source re-reads and re-parses all of them, as after a relist) plus one real change
/// in the last file, whose answer marks the end of the reload.
pub(crate) fn full_reload(catalog: &mut Catalog, dir: &Path, server: &Server) -> Result<Reload> {
    let last = catalog.namespaces.len() - 1;
    let Some(sentinel) = catalog.namespaces[last]
        .services
        .iter_mut()
        .rev()
        .find(|s| !s.headless())
    else {
        bail!("no ClusterIP Service in the last namespace");
    };
    let ip = spare_cluster_ip(10_000);
    sentinel.cluster_ip = Some(ip);
    let name = sentinel.fqdn(ZONE);
    let before = server.memory()?;
    let peak_reset = server.reset_peak();
    if let Err(e) = &peak_reset {
        eprintln!("cannot reset VmHWM ({e:#}); the reload peak is not reported");
    }
    eprintln!("full reload: rewriting every manifest file");
    let started = Instant::now();
    catalog.write_manifests(dir, Some(1))?;
    let took = Client::new(server.dns)?.wait_for_a(&name, ip, started, Duration::from_secs(300))?;
    // Let the poll that applied the sentinel finish and the allocator settle.
    std::thread::sleep(Duration::from_secs(1));
    let after = server.memory()?;
    Ok(Reload {
        took,
        before,
        peak_kb: peak_reset.ok().map(|()| after.hwm_kb),
        after,
    })
}

#[derive(Debug, Clone)]
pub(crate) struct Changes {
    /// Write of the file → first UDP answer with the new address, per change.
    pub(crate) from_file: Vec<Duration>,
    /// Mean of the server's programming histogram over the changes (catalog change → view
    /// published); None if it recorded nothing.
    pub(crate) server_mean: Option<Duration>,
}

/// Moves `count` ClusterIP Services (in different namespaces) to new addresses, one at a time.
pub(crate) fn change_latency(
    catalog: &mut Catalog,
    dir: &Path,
    server: &Server,
    count: usize,
) -> Result<Changes> {
    eprintln!("{count} single-Service changes");
    let client = Client::new(server.dns)?;
    let (sum_before, count_before) = server.histogram(PROGRAMMING_METRIC)?;
    let mut from_file = Vec::with_capacity(count);
    for k in 0..count {
        let namespace = (k * 7919 + 13) % catalog.namespaces.len();
        let services = &mut catalog.namespaces[namespace].services;
        let len = services.len();
        let Some(service) = (0..len)
            .map(|i| (k + i) % len)
            .find(|&i| !services[i].headless())
        else {
            continue;
        };
        let ip = spare_cluster_ip(k as u32);
        services[service].cluster_ip = Some(ip);
        let name = services[service].fqdn(ZONE);
        let started = Instant::now();
        catalog.write_namespace(dir, namespace, Some(1))?;
        from_file.push(client.wait_for_a(&name, ip, started, Duration::from_secs(30))?);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (sum_after, count_after) = server.histogram(PROGRAMMING_METRIC)?;
    let observed = count_after - count_before;
    let server_mean =
        (observed > 0.0).then(|| Duration::from_secs_f64((sum_after - sum_before) / observed));
    Ok(Changes {
        from_file,
        server_mean,
    })
}
