//! Deleting stale conntrack entries of UDP (and SCTP) Services, with kube-proxy's filters.
//!
//! A UDP flow has no end the kernel can see, so its conntrack entry keeps steering a client's
//! packets to whatever the first packet was DNATed to, for as long as the client keeps sending.
//! When an endpoint goes away, the entries whose original destination is one of the Service's
//! frontends and whose reply source is that endpoint must go ([`StaleFlow::Endpoint`],
//! [`StaleFlow::NodePort`]); when a Service goes from no endpoints to some (or a frontend is
//! deleted), the entries created while its traffic was rejected or not DNATed must go
//! ([`StaleFlow::Frontend`], [`StaleFlow::NodePortFrontend`]). The caller derives the flows from
//! the change it is applying, so the work is one `conntrack -D` with kernel-side filters per
//! flow: bounded by the change, never a listing of the whole table. Deletions run concurrently,
//! at most [`MAX_CONCURRENT`] at a time, each with a deadline; a failed one is reported and the
//! others go on (cleanup is best effort, as in kube-proxy).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use svcplane_common::model::{Family, Protocol};
use tokio::process::Command;

/// How many `conntrack` processes run at once.
pub const MAX_CONCURRENT: usize = 4;

/// How long one `conntrack` invocation may take before it is killed and reported.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// What the tool prints when a filter matched nothing (with exit status 1): not an error.
const NOTHING_DELETED: &str = "0 flow entries have been deleted";

/// Errors of one conntrack deletion.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The flow names addresses of two different IP families.
    #[error("{flow}: addresses of different IP families")]
    MixedFamily { flow: StaleFlow },
    /// The `conntrack` tool could not be started (or waited for).
    #[error("running `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    /// The `conntrack` tool did not finish within [`COMMAND_TIMEOUT`].
    #[error("`{command}` did not finish within {COMMAND_TIMEOUT:?}")]
    Timeout { command: String },
    /// The `conntrack` tool failed (other than for finding nothing to delete).
    #[error("`{command}` exited with {status}: {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// One set of conntrack entries to delete. The port is the Service's (or NodePort's), not the
/// target port; `endpoint` is the endpoint's IP (the entry's reply source after DNAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StaleFlow {
    /// An endpoint went away: entries to `frontend:port` (ClusterIP, external IP or load-balancer
    /// IP) that were DNATed to `endpoint`.
    Endpoint {
        frontend: IpAddr,
        port: u16,
        protocol: Protocol,
        endpoint: IpAddr,
    },
    /// An endpoint went away: entries to NodePort `port` (any node address) that were DNATed to
    /// `endpoint`.
    NodePort {
        port: u16,
        protocol: Protocol,
        endpoint: IpAddr,
    },
    /// A Service went from no endpoints to some, or the frontend was deleted: every entry to
    /// `frontend:port`.
    Frontend {
        frontend: IpAddr,
        port: u16,
        protocol: Protocol,
    },
    /// A NodePort Service went from no endpoints to some, or the NodePort was deleted: every
    /// entry of `family` to NodePort `port`.
    NodePortFrontend {
        port: u16,
        protocol: Protocol,
        family: Family,
    },
}

impl std::fmt::Display for StaleFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StaleFlow::Endpoint {
                frontend,
                port,
                protocol,
                endpoint,
            } => write!(
                f,
                "{}/{} → {endpoint}",
                sock(frontend, *port),
                proto(*protocol)
            ),
            StaleFlow::NodePort {
                port,
                protocol,
                endpoint,
            } => write!(f, "nodeport {port}/{} → {endpoint}", proto(*protocol)),
            StaleFlow::Frontend {
                frontend,
                port,
                protocol,
            } => write!(f, "{}/{}", sock(frontend, *port), proto(*protocol)),
            StaleFlow::NodePortFrontend {
                port,
                protocol,
                family,
            } => write!(f, "nodeport {port}/{} ({family:?})", proto(*protocol)),
        }
    }
}

fn sock(ip: &IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(*ip, port).to_string()
}

fn proto(protocol: Protocol) -> &'static str {
    protocol.as_lower()
}

impl StaleFlow {
    /// The IP family of the entries the flow names, or an error if its addresses disagree.
    fn family(&self) -> Result<Family, ConntrackError> {
        let (a, b) = match self {
            StaleFlow::Endpoint {
                frontend, endpoint, ..
            } => (Family::of(frontend), Family::of(endpoint)),
            StaleFlow::NodePort { endpoint, .. } => (Family::of(endpoint), Family::of(endpoint)),
            StaleFlow::Frontend { frontend, .. } => (Family::of(frontend), Family::of(frontend)),
            StaleFlow::NodePortFrontend { family, .. } => (*family, *family),
        };
        if a == b {
            Ok(a)
        } else {
            Err(ConntrackError::MixedFamily { flow: *self })
        }
    }

    /// The `conntrack` arguments deleting the flow's entries. Every variant filters on at least
    /// the protocol and the original destination port: a bare `conntrack -D` would flush the
    /// whole table.
    pub fn delete_args(&self) -> Result<Vec<String>, ConntrackError> {
        let family = match self.family()? {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        };
        let (protocol, port, orig_dst, reply_src) = match *self {
            StaleFlow::Endpoint {
                frontend,
                port,
                protocol,
                endpoint,
            } => (protocol, port, Some(frontend), Some(endpoint)),
            StaleFlow::NodePort {
                port,
                protocol,
                endpoint,
            } => (protocol, port, None, Some(endpoint)),
            StaleFlow::Frontend {
                frontend,
                port,
                protocol,
            } => (protocol, port, Some(frontend), None),
            StaleFlow::NodePortFrontend { port, protocol, .. } => (protocol, port, None, None),
        };
        let mut args = vec!["-D", "-f", family, "-p", protocol.as_lower()]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        if let Some(ip) = orig_dst {
            args.extend(["--orig-dst".into(), ip.to_string()]);
        }
        args.extend(["--orig-port-dst".into(), port.to_string()]);
        if let Some(ip) = reply_src {
            args.extend(["--reply-src".into(), ip.to_string()]);
        }
        Ok(args)
    }
}

/// Runs `conntrack -D` for stale flows, on the host or (for tests) in a network namespace.
#[derive(Debug, Clone, Default)]
pub struct ConntrackCleaner {
    /// A named network namespace to run the tool in (via `ip netns exec`); `None` for the
    /// current one.
    pub netns: Option<String>,
}

impl ConntrackCleaner {
    /// A cleaner for the current network namespace.
    pub fn new() -> Self {
        ConntrackCleaner::default()
    }

    /// A cleaner for the named network namespace.
    pub fn in_netns(name: impl Into<String>) -> Self {
        ConntrackCleaner {
            netns: Some(name.into()),
        }
    }

    /// Deletes the entries of every flow in `stale` (duplicates once), at most
    /// [`MAX_CONCURRENT`] deletions at a time; returns the failures.
    pub async fn cleanup(&self, stale: &[StaleFlow]) -> Vec<ConntrackError> {
        let flows: BTreeSet<StaleFlow> = stale.iter().copied().collect();
        let results: Vec<Result<u64, ConntrackError>> = futures::stream::iter(flows)
            .map(|flow| self.delete(flow))
            .buffer_unordered(MAX_CONCURRENT)
            .collect()
            .await;
        let mut deleted = 0;
        let mut errors = Vec::new();
        for result in results {
            match result {
                Ok(n) => deleted += n,
                Err(e) => {
                    tracing::warn!(error = %e, "deleting stale conntrack entries");
                    errors.push(e);
                }
            }
        }
        tracing::debug!(
            flows = stale.len(),
            deleted,
            "deleted stale conntrack entries"
        );
        errors
    }

    /// Deletes one flow's entries; returns how many the tool says it deleted.
    async fn delete(&self, flow: StaleFlow) -> Result<u64, ConntrackError> {
        let args = flow.delete_args()?;
        let mut command = self.command(&args);
        let line = format!("{command:?}");
        let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output()).await;
        let output = match output {
            Err(_) => return Err(ConntrackError::Timeout { command: line }),
            Ok(Err(source)) => {
                return Err(ConntrackError::Spawn {
                    command: line,
                    source,
                });
            }
            Ok(Ok(output)) => output,
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() || nothing_deleted(output.status.code(), &stderr) {
            let n = deleted_count(&stderr);
            tracing::debug!(%flow, deleted = n, "conntrack -D");
            return Ok(n);
        }
        Err(ConntrackError::Failed {
            command: line,
            status: output.status,
            stderr: stderr.trim().to_string(),
        })
    }

    /// `conntrack ARGS`, or `ip netns exec NAME conntrack ARGS`; killed if dropped.
    fn command(&self, args: &[String]) -> Command {
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "conntrack"]);
                c
            }
            None => Command::new("conntrack"),
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}

/// Exit status 1 with "0 flow entries have been deleted" means the filter matched nothing.
fn nothing_deleted(code: Option<i32>, stderr: &str) -> bool {
    code == Some(1) && stderr.contains(NOTHING_DELETED)
}

/// The N of "N flow entries have been deleted", 0 if absent.
fn deleted_count(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| {
            l.split_once(" flow entries have been deleted")?
                .0
                .rsplit(' ')
                .next()
        })
        .find_map(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;
    use std::hash::{BuildHasher, Hasher};
    use std::net::IpAddr;
    use std::process::Command;

    use svcplane_common::model::{Family, Protocol};

    use super::*;

    /// A named network namespace of the test's own (`svp-ct-<random>`), deleted on drop (also
    /// when the test panics). Nothing here touches the host namespace's table or rules.
    struct Netns {
        name: String,
    }

    impl Netns {
        fn new() -> Netns {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            let name = format!("svp-ct-{:012x}", h.finish() & 0xffff_ffff_ffff);
            run("ip", &["netns", "add", &name]);
            let ns = Netns { name };
            ns.ip(&["link", "set", "lo", "up"]);
            ns
        }

        /// `ip -n NAME ARGS`, which must succeed.
        fn ip(&self, args: &[&str]) {
            let mut all = vec!["-n", self.name.as_str()];
            all.extend(args);
            run("ip", &all);
        }

        /// `ip netns exec NAME PROGRAM ARGS`, which must succeed; its stdout.
        fn exec(&self, program: &str, args: &[&str]) -> String {
            let mut all = vec!["netns", "exec", self.name.as_str(), program];
            all.extend(args);
            run("ip", &all)
        }

        fn cleaner(&self) -> ConntrackCleaner {
            ConntrackCleaner::in_netns(&self.name)
        }

        /// Inserts a UDP (or TCP) entry `client:sport → orig_dst:dport`, DNATed to
        /// `reply_src:5353`. `sport` identifies the entry in [`Netns::sports`].
        fn insert(
            &self,
            protocol: Protocol,
            orig_dst: &str,
            dport: u16,
            reply_src: &str,
            sport: u16,
        ) {
            let client = if orig_dst.contains(':') {
                "fd00::1"
            } else {
                "10.0.0.1"
            };
            let (sport, dport) = (sport.to_string(), dport.to_string());
            let mut args = vec![
                "-I",
                "-p",
                protocol.as_lower(),
                "--timeout",
                "300",
                "--orig-src",
                client,
                "--orig-dst",
                orig_dst,
                "--orig-port-src",
                &sport,
                "--orig-port-dst",
                &dport,
                "--reply-src",
                reply_src,
                "--reply-dst",
                client,
                "--reply-port-src",
                "5353",
                "--reply-port-dst",
                &sport,
            ];
            if protocol == Protocol::Tcp {
                args.extend(["--state", "ESTABLISHED"]);
            }
            self.exec("conntrack", &args);
        }

        /// The original source ports of every entry of both families.
        fn sports(&self) -> BTreeSet<u16> {
            let mut out = self.exec("conntrack", &["-L", "-f", "ipv4"]);
            out += &self.exec("conntrack", &["-L", "-f", "ipv6"]);
            out.lines().filter_map(first_sport).collect()
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    fn first_sport(line: &str) -> Option<u16> {
        let word = line.split_whitespace().find(|w| w.starts_with("sport="))?;
        word.trim_start_matches("sport=").parse().ok()
    }

    /// Runs a command that must succeed; its stdout.
    fn run(program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(ports: &[u16]) -> BTreeSet<u16> {
        ports.iter().copied().collect()
    }

    const UDP: Protocol = Protocol::Udp;

    #[tokio::test]
    async fn endpoint_deletes_only_that_frontend_port_and_endpoint() {
        let ns = Netns::new();
        ns.insert(UDP, "10.96.0.10", 53, "10.244.1.5", 1001); // stale
        ns.insert(UDP, "10.96.0.10", 53, "10.244.2.6", 1002); // other endpoint
        ns.insert(UDP, "10.96.0.11", 53, "10.244.1.5", 1003); // other frontend
        ns.insert(UDP, "10.96.0.10", 5353, "10.244.1.5", 1004); // other port
        ns.insert(Protocol::Tcp, "10.96.0.10", 53, "10.244.1.5", 1005); // other protocol
        ns.insert(UDP, "192.0.2.7", 53, "10.244.1.5", 1006); // stale (external IP)
        let stale = [
            StaleFlow::Endpoint {
                frontend: ip("10.96.0.10"),
                port: 53,
                protocol: UDP,
                endpoint: ip("10.244.1.5"),
            },
            StaleFlow::Endpoint {
                frontend: ip("192.0.2.7"),
                port: 53,
                protocol: UDP,
                endpoint: ip("10.244.1.5"),
            },
        ];
        let errors = ns.cleaner().cleanup(&stale).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(ns.sports(), set(&[1002, 1003, 1004, 1005]));
    }

    #[tokio::test]
    async fn nodeport_deletes_that_endpoint_on_any_node_address() {
        let ns = Netns::new();
        ns.insert(UDP, "10.0.0.1", 30053, "10.244.1.5", 2001); // stale
        ns.insert(UDP, "10.0.0.2", 30053, "10.244.1.5", 2002); // stale
        ns.insert(UDP, "10.0.0.1", 30053, "10.244.2.6", 2003); // other endpoint
        ns.insert(UDP, "10.0.0.1", 30054, "10.244.1.5", 2004); // other port
        let stale = [StaleFlow::NodePort {
            port: 30053,
            protocol: UDP,
            endpoint: ip("10.244.1.5"),
        }];
        let errors = ns.cleaner().cleanup(&stale).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(ns.sports(), set(&[2003, 2004]));
    }

    #[tokio::test]
    async fn frontend_deletes_every_entry_to_that_frontend_port() {
        let ns = Netns::new();
        ns.insert(UDP, "10.96.0.10", 53, "10.96.0.10", 3001); // not DNATed: stale
        ns.insert(UDP, "10.96.0.10", 53, "10.244.1.5", 3002); // stale too
        ns.insert(UDP, "10.96.0.10", 54, "10.96.0.10", 3003); // other port
        ns.insert(UDP, "10.96.0.11", 53, "10.96.0.11", 3004); // other frontend
        ns.insert(UDP, "10.0.0.1", 30053, "10.0.0.1", 3005); // nodeport: stale
        ns.insert(UDP, "fd00::2", 30053, "fd00::2", 3006); // nodeport, other family
        let stale = [
            StaleFlow::Frontend {
                frontend: ip("10.96.0.10"),
                port: 53,
                protocol: UDP,
            },
            StaleFlow::NodePortFrontend {
                port: 30053,
                protocol: UDP,
                family: Family::V4,
            },
        ];
        let errors = ns.cleaner().cleanup(&stale).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(ns.sports(), set(&[3003, 3004, 3006]));
    }

    #[tokio::test]
    async fn ipv6_flows() {
        let ns = Netns::new();
        ns.insert(UDP, "fd00:96::10", 53, "fd00:244::5", 4001); // stale
        ns.insert(UDP, "fd00:96::10", 53, "fd00:244::6", 4002);
        ns.insert(UDP, "fd00::2", 30053, "fd00:244::5", 4003); // stale
        ns.insert(UDP, "10.96.0.10", 53, "10.244.1.5", 4004);
        let endpoint = ip("fd00:244::5");
        let stale = [
            StaleFlow::Endpoint {
                frontend: ip("fd00:96::10"),
                port: 53,
                protocol: UDP,
                endpoint,
            },
            StaleFlow::NodePort {
                port: 30053,
                protocol: UDP,
                endpoint,
            },
        ];
        let errors = ns.cleaner().cleanup(&stale).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(ns.sports(), set(&[4002, 4004]));
    }

    #[tokio::test]
    async fn many_flows_nothing_matching_and_duplicates_are_not_errors() {
        let ns = Netns::new();
        ns.insert(UDP, "10.96.0.10", 53, "10.244.1.5", 5001);
        let mut stale: Vec<StaleFlow> = (1..=20u8)
            .map(|i| StaleFlow::Endpoint {
                frontend: ip("10.96.0.10"),
                port: 53,
                protocol: UDP,
                endpoint: IpAddr::from([10, 244, 9, i]),
            })
            .collect();
        stale.extend(stale.clone());
        let errors = ns.cleaner().cleanup(&stale).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(ns.sports(), set(&[5001]));
        assert!(ns.cleaner().cleanup(&[]).await.is_empty());
    }

    #[tokio::test]
    async fn a_failing_flow_is_reported_and_the_others_go_on() {
        let ns = Netns::new();
        ns.insert(UDP, "10.96.0.10", 53, "10.244.1.5", 6001);
        let stale = [
            StaleFlow::Endpoint {
                frontend: ip("10.96.0.10"),
                port: 53,
                protocol: UDP,
                endpoint: ip("fd00::5"),
            },
            StaleFlow::Endpoint {
                frontend: ip("10.96.0.10"),
                port: 53,
                protocol: UDP,
                endpoint: ip("10.244.1.5"),
            },
        ];
        let errors = ns.cleaner().cleanup(&stale).await;
        assert!(
            matches!(errors.as_slice(), [ConntrackError::MixedFamily { .. }]),
            "{errors:?}"
        );
        assert_eq!(ns.sports(), set(&[]));
    }

    #[tokio::test]
    async fn a_failing_tool_is_reported() {
        let missing = ConntrackCleaner::in_netns("svp-ct-does-not-exist");
        let stale = [StaleFlow::Frontend {
            frontend: ip("10.96.0.10"),
            port: 53,
            protocol: UDP,
        }];
        let errors = missing.cleanup(&stale).await;
        assert!(
            matches!(errors.as_slice(), [ConntrackError::Failed { .. }]),
            "{errors:?}"
        );
    }

    /// Entries made by real traffic DNATed by an nft rule, as the proxy's rules would.
    #[tokio::test]
    async fn real_dnat_entries() {
        let ns = Netns::new();
        ns.ip(&["addr", "add", "10.0.0.1/24", "dev", "lo"]);
        ns.ip(&["addr", "add", "10.0.0.2/24", "dev", "lo"]);
        ns.ip(&["route", "add", "10.96.0.0/16", "dev", "lo"]);
        let rules = "add table ip svp\n\
            add chain ip svp out { type nat hook output priority -100; }\n\
            add rule ip svp out ip daddr 10.96.0.10 udp dport 53 dnat to 10.0.0.2:5353\n\
            add rule ip svp out ip daddr 10.96.0.11 udp dport 53 dnat to 10.0.0.2:5353\n";
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), rules).unwrap();
        ns.exec("nft", &["-f", &file.path().to_string_lossy()]);
        let send = "for d in 10.96.0.10 10.96.0.11; do echo x >/dev/udp/$d/53; done";
        ns.exec("bash", &["-c", send]);
        let listed = ns.exec("conntrack", &["-L", "-p", "udp", "--reply-src", "10.0.0.2"]);
        assert_eq!(listed.lines().count(), 2, "{listed}");

        let stale = [StaleFlow::Endpoint {
            frontend: ip("10.96.0.10"),
            port: 53,
            protocol: UDP,
            endpoint: ip("10.0.0.2"),
        }];
        let errors = ns.cleaner().cleanup(&stale).await;
        assert!(errors.is_empty(), "{errors:?}");
        let listed = ns.exec("conntrack", &["-L", "-p", "udp"]);
        assert_eq!(listed.lines().count(), 1, "{listed}");
        assert!(listed.contains("dst=10.96.0.11"), "{listed}");
    }

    #[test]
    fn delete_args_always_filter() {
        let flow = StaleFlow::NodePortFrontend {
            port: 30053,
            protocol: Protocol::Sctp,
            family: Family::V6,
        };
        let args = flow.delete_args().unwrap();
        assert_eq!(
            args,
            ["-D", "-f", "ipv6", "-p", "sctp", "--orig-port-dst", "30053"]
        );
        let flow = StaleFlow::Endpoint {
            frontend: ip("10.96.0.10"),
            port: 53,
            protocol: UDP,
            endpoint: ip("10.244.1.5"),
        };
        let args = flow.delete_args().unwrap().join(" ");
        let want =
            "-D -f ipv4 -p udp --orig-dst 10.96.0.10 --orig-port-dst 53 --reply-src 10.244.1.5";
        assert_eq!(args, want);
    }

    #[test]
    fn parses_the_tools_output() {
        let ok = "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n";
        assert!(nothing_deleted(Some(1), ok));
        assert!(!nothing_deleted(Some(2), ok));
        assert!(!nothing_deleted(Some(1), "mismatched address family"));
        let three = "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.\n";
        assert_eq!(deleted_count(three), 3);
        assert_eq!(deleted_count("garbage"), 0);
    }
}
