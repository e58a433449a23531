//! The markdown tables printed at the end.

#[allow(clippy::wildcard_imports)]
use crate::*;

pub(crate) fn report(options: &Options, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n## svcplane-dns benchmark\n");
    let _ = writeln!(
        out,
        "dnsperf and the latency client on CPU {}; svcplane-dns on CPU {} with --udp-workers 1; \
{} s per run; query mix: 40% A ClusterIP, 10% SRV, 10% A headless, 40% NXDOMAIN search-path expansions.\n",
        client_cpu(),
        server_cpu(),
        options.duration
    );
    let _ = writeln!(
        out,
        "| Services | endpoints | startup (s) | max qps (1 core) | avg lat at max | p50 / p99 at half load | same, server CPU isolated | RSS MB | peak RSS MB | reload peak MB | change→answer (file) p50/p99 ms | change→answer (server) ms |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows {
        let _ = writeln!(out, "{}", main_row(row));
    }
    let _ = writeln!(out, "\n{TARGETS}\n");
    let wait = rows.iter().map(worst_wait).fold(0.0, f64::max);
    if wait > 0.05 {
        let _ = writeln!(
            out,
            "**CPU contention**: a measured process waited up to {:.0}% of the time for its core \
(other work on the machine); treat rates as lower bounds and tails as upper bounds.\n",
            wait * 100.0
        );
    }
    let _ = writeln!(
        out,
        "| Services | queries (dnsperf, max rate) | qps | avg lat | lost % | server CPU run / wait % | qps per server CPU-s | socket drops server / client | response codes |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---|");
    for row in rows {
        for (label, d) in [
            ("mix", &row.load.mix),
            ("A of ClusterIP only", &row.load.a_only),
        ] {
            let per_cpu = d.qps / d.server.run.max(1e-9);
            let _ = writeln!(
                out,
                "| {} | {label} | {:.0} | {:.3} ms | {:.2} | {} | {per_cpu:.0} | {} / {} | {} |",
                row.size.services,
                d.qps,
                d.avg_latency_s * 1e3,
                d.lost_percent,
                share(d.server),
                d.drops.server,
                d.drops.clients,
                d.rcodes
            );
        }
    }
    let _ = writeln!(
        out,
        "\n| Services | server CPU | latency client: target / achieved qps | sent | lost % | p50 | p99 | p99.9 | max | server CPU run / wait % | client CPU run / wait % | socket drops server / client, EAGAIN | stalls > 1 ms: count, worst |"
    );
    let _ = writeln!(
        out,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (row, l) in rows
        .iter()
        .flat_map(|row| row.load.latency.iter().map(move |l| (row, l)))
    {
        let lost = 100.0 * (l.sent - l.received.min(l.sent)) as f64 / l.sent.max(1) as f64;
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} / {:.0} | {} | {lost:.3} | {} | {} | {} | {} | {} | {} | {} / {}, {} | {}, {} ms |",
            row.size.services,
            if l.isolated { "isolated" } else { "shared" },
            l.target_qps,
            l.achieved_qps,
            l.sent,
            ms(l.p50),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            share(l.server),
            share(l.client),
            l.drops.server,
            l.drops.clients,
            l.send_errors,
            l.stalls.len(),
            ms(l.stalls.iter().map(|s| s.worst).max().unwrap_or_default())
        );
    }
    let _ = writeln!(
        out,
        "\n| Services | manifests | generated in | startup: server CPU / run-queue wait | RSS idle / HWM after startup MB | full reload (file → answer) | RSS before / after reload MB |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let r = &row.reload;
        let (run, wait) = row.startup_cpu;
        let _ = writeln!(
            out,
            "| {} | {:.1} MB | {:.2} s | {:.2} s / {:.2} s | {} / {} | {:.2} s | {} / {} |",
            row.size.services,
            row.manifest_bytes as f64 / 1e6,
            row.generate.as_secs_f64(),
            run.as_secs_f64(),
            wait.as_secs_f64(),
            mb(row.idle.rss_kb),
            mb(row.idle.hwm_kb),
            r.took.as_secs_f64(),
            mb(r.before.rss_kb),
            mb(r.after.rss_kb)
        );
    }
    let _ = writeln!(
        out,
        "\nchange→answer (file) includes the manifests source's polling (250 ms interval, a change applied once two polls agree); \
(server) is the mean of {PROGRAMMING_METRIC} over those changes: catalog change → view published."
    );
    out
}

pub(crate) fn main_row(row: &Row) -> String {
    let reload_peak = row.reload.peak_kb.map_or_else(
        || "n/a".to_string(),
        |peak| {
            format!(
                "{} (+{})",
                mb(peak),
                mb(peak.saturating_sub(row.reload.before.rss_kb))
            )
        },
    );
    let mut file = row.changes.from_file.clone();
    file.sort();
    let server = row.changes.server_mean.map_or_else(
        || "n/a".to_string(),
        |d| format!("{:.3}", d.as_secs_f64() * 1e3),
    );
    format!(
        "| {} | {} | {:.2} | {:.0} | {:.3} ms | {} | {} | {} | {} | {} | {} / {} | {} |",
        row.size.services,
        row.endpoints,
        row.startup.as_secs_f64(),
        row.load.mix.qps,
        row.load.mix.avg_latency_s * 1e3,
        latency_range(&row.load.latency, false),
        latency_range(&row.load.latency, true),
        mb(row.loaded.rss_kb),
        mb(row.loaded.hwm_kb),
        reload_peak,
        percentile_ms(&file, 0.5),
        percentile_ms(&file, 0.99),
        server,
    )
}

/// The largest run-queue wait share of the server or the latency client during the load runs.
pub(crate) fn worst_wait(row: &Row) -> f64 {
    [row.load.mix.server.wait, row.load.a_only.server.wait]
        .into_iter()
        .chain(
            row.load
                .latency
                .iter()
                .flat_map(|l| [l.server.wait, l.client.wait]),
        )
        .fold(0.0, f64::max)
}

/// p50 / p99 over the latency runs with the server's CPU shared or `isolated`: one value, or the
/// lowest and highest when they differ.
fn latency_range(runs: &[Latency], isolated: bool) -> String {
    let runs: Vec<&Latency> = runs.iter().filter(|l| l.isolated == isolated).collect();
    if runs.is_empty() {
        return "–".to_string();
    }
    let range = |pick: fn(&Latency) -> Duration| {
        let lo = runs.iter().map(|l| pick(l)).min().unwrap_or_default();
        let hi = runs.iter().map(|l| pick(l)).max().unwrap_or_default();
        if ms(lo) == ms(hi) {
            ms(lo)
        } else {
            format!("{}–{}", ms(lo), ms(hi))
        }
    };
    format!("{} / {} ms", range(|l| l.p50), range(|l| l.p99))
}

pub(crate) fn share(s: CpuShare) -> String {
    format!("{:.0} / {:.0}", s.run * 100.0, s.wait * 100.0)
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

pub(crate) fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

/// Nearest-rank percentile of sorted durations, in ms.
pub(crate) fn percentile_ms(sorted: &[Duration], q: f64) -> String {
    if sorted.is_empty() {
        return "n/a".to_string();
    }
    let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    format!("{:.0}", sorted[index].as_secs_f64() * 1e3)
}
