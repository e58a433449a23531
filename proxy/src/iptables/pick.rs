//! Picking an endpoint: the rules at the end of a Service port's `SVC`/`SVL` chain, one group
//! per endpoint, each DNATing directly — no chain per endpoint.
//!
//! kube-proxy sends each pick to an endpoint chain (`KUBE-SEP-…`) because an endpoint needs two
//! actions: mark hairpin traffic (source = the endpoint) for masquerade, then DNAT. Here the
//! group of endpoint `e` chosen under condition `C` (a `statistic` draw, or a `recent` check for
//! ClientIP affinity) is
//!
//! ```text
//! -s e C -j MARK --or-mark 0x6000              hairpin: masquerade mark + HAIRPIN_MARK
//! -s e -m mark --mark 0x2000/0x2000 -j DNAT e  …and the DNAT it promised
//! ! -s e C -j DNAT e                           everyone else
//! ```
//!
//! The source match is decided before `C`, so each packet draws once per group and the
//! probabilities are kube-proxy's; [`HAIRPIN_MARK`] is set only by the first rule and only
//! the next rule tests it, so it means "the draw just picked this endpoint" (it is cleared in
//! `SVCPLANE-POSTROUTING` with the masquerade mark). The last endpoint needs no draw: a
//! masquerade mark for its own traffic, then an unconditional DNAT. With affinity the DNAT also
//! records the client (`-m recent --set`) in the endpoint's list, and a hit refreshes it, as
//! kube-proxy's endpoint chain does.

use std::net::IpAddr;

use super::HAIRPIN_MARK;
use super::base::host;
use super::chain_hash;
use crate::desired::MASQ_MARK;
use crate::endpoints::Backend;

/// How one Service port picks among its backends.
#[derive(Debug, Clone, Copy)]
pub struct Pick<'a> {
    /// The layer-4 protocol (`tcp`, `udp`, `sctp`): a DNAT to a port needs it.
    pub proto: &'a str,
    /// ClientIP affinity timeout in seconds.
    pub affinity: Option<u32>,
    /// The Service port's own text, which the affinity list names hash after.
    pub key: &'a str,
}

impl Pick<'_> {
    /// The rules that pick one of `backends` (remembered clients first under affinity).
    pub fn rules(&self, backends: &[Backend]) -> Vec<String> {
        let mut rules = Vec::new();
        if let Some(timeout) = self.affinity {
            for b in backends {
                let list = self.list(b);
                let check = format!("-m recent --name {list} --rcheck --seconds {timeout} --reap");
                rules.extend(self.group(b, &check));
            }
        }
        let n = backends.len();
        for (i, b) in backends.iter().enumerate() {
            let draw = if i + 1 < n {
                let p = 1.0 / (n - i) as f64;
                format!("-m statistic --mode random --probability {p:.10}")
            } else {
                String::new()
            };
            rules.extend(self.group(b, &draw));
        }
        rules
    }

    /// The `-m recent` list remembering the clients of endpoint `b`.
    pub fn list(&self, b: &Backend) -> String {
        let h = chain_hash(&format!("{}/{}", self.key, socket(b)));
        format!("SVCPLANE-AFF-{h}")
    }

    /// The rules sending what matches `condition` (always, if empty) to `b`.
    fn group(&self, b: &Backend, condition: &str) -> Vec<String> {
        let (src, p) = (host(&b.ip), self.proto);
        let dnat = self.dnat(b);
        if condition.is_empty() {
            return vec![
                format!("-s {src} -j MARK --or-mark {MASQ_MARK:#x}"),
                format!("-p {p} {dnat}"),
            ];
        }
        let (both, h) = (MASQ_MARK | HAIRPIN_MARK, HAIRPIN_MARK);
        vec![
            format!("-s {src} {condition} -j MARK --or-mark {both:#x}"),
            format!("-s {src} -p {p} -m mark --mark {h:#x}/{h:#x} {dnat}"),
            format!("! -s {src} -p {p} {condition} {dnat}"),
        ]
    }

    /// The DNAT to `b` (recording the client under affinity).
    fn dnat(&self, b: &Backend) -> String {
        let to = format!("-j DNAT --to-destination {}", socket(b));
        match self.affinity {
            Some(_) => format!("-m recent --name {} --set {to}", self.list(b)),
            None => to,
        }
    }
}

/// The DNAT destination of a backend.
pub fn socket(b: &Backend) -> String {
    match b.ip {
        IpAddr::V4(v4) => format!("{v4}:{}", b.port),
        IpAddr::V6(v6) => format!("[{v6}]:{}", b.port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(ip: &str) -> Backend {
        Backend {
            ip: ip.parse().expect("ip"),
            port: 8080,
            local: true,
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    #[test]
    fn one_draw_per_endpoint_and_a_dnat_for_the_last() {
        let pick = Pick {
            proto: "tcp",
            affinity: None,
            key: "ns/s/tcp/http",
        };
        let rules = pick.rules(&[backend("10.0.0.1"), backend("10.0.0.2")]);
        assert_eq!(
            rules,
            [
                "-s 10.0.0.1/32 -m statistic --mode random --probability 0.5000000000 -j MARK --or-mark 0x6000",
                "-s 10.0.0.1/32 -p tcp -m mark --mark 0x2000/0x2000 -j DNAT --to-destination 10.0.0.1:8080",
                "! -s 10.0.0.1/32 -p tcp -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 10.0.0.1:8080",
                "-s 10.0.0.2/32 -j MARK --or-mark 0x4000",
                "-p tcp -j DNAT --to-destination 10.0.0.2:8080",
            ]
        );
    }

    #[test]
    fn affinity_checks_every_list_first_and_records_each_pick() {
        let pick = Pick {
            proto: "udp",
            affinity: Some(60),
            key: "ns/s/udp/dns",
        };
        let b = backend("fd00::1");
        let list = pick.list(&b);
        let rules = pick.rules(std::slice::from_ref(&b));
        assert_eq!(rules.len(), 5);
        assert!(rules[0].contains(&format!("--name {list} --rcheck --seconds 60 --reap")));
        assert!(rules.iter().skip(1).all(|r| !r.contains("DNAT")
            || r.contains(&format!(
                "--name {list} --set -j DNAT --to-destination [fd00::1]:8080"
            ))));
        assert_eq!(rules[3], "-s fd00::1/128 -j MARK --or-mark 0x4000");
    }
}
