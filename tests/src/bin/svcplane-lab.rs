//! `svcplane-lab`: a whole cluster's data plane in network namespaces on one machine, from
//! ordinary Kubernetes YAML (see [`svcplane_tests::lab`]).
//!
//! ```text
//! svcplane-lab [--name NAME] [--state-dir DIR] up FILE|DIR… [--nodes N]
//! svcplane-lab apply FILE… [--grace-period 2s]      svcplane-lab delete FILE…
//! svcplane-lab exec [--node NODE | --external | POD] -- CMD…
//! svcplane-lab status [--json]    svcplane-lab set-ready POD true|false    svcplane-lab down
//! ```
//!
//! The binary is also the lab's data plane: started with `argv[0]` `svcplane-proxy` it runs
//! svcplane-proxy, with `svcplane-dns` svcplane-dns (as their own binaries do), so the lab
//! always runs the servers it was built with and needs no other binary but `svcplane-echo`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use svcplane_tests::lab::dataplane::{DNS_ARG0, PROXY_ARG0};
use svcplane_tests::lab::{self, DEFAULT_NAME, DEFAULT_STATE_ROOT, Options, Target};

/// A Kubernetes data plane (svcplane-proxy, svcplane-dns) in network namespaces, from YAML.
#[derive(Debug, Parser)]
#[command(name = "svcplane-lab", version)]
struct Cli {
    /// The cluster's name.
    #[arg(long, global = true, default_value = DEFAULT_NAME, env = "SVCPLANE_LAB_NAME")]
    name: String,
    /// Where clusters keep their state (one directory per cluster).
    #[arg(long, global = true, default_value = DEFAULT_STATE_ROOT, env = "SVCPLANE_LAB_STATE_DIR")]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build a cluster from manifests (files or directories).
    Up {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
    },
    /// Add or change objects (objects missing from the files are kept).
    Apply {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// How long removed pods stay terminating.
        #[arg(long, default_value = "2s", value_parser = svcplane_common::config::parse_duration)]
        grace_period: Duration,
    },
    /// Delete the objects the files name.
    Delete {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// How long removed pods stay terminating.
        #[arg(long, default_value = "2s", value_parser = svcplane_common::config::parse_duration)]
        grace_period: Duration,
    },
    /// Run a command in a pod (`name` or `namespace/name`), a node or the external client.
    Exec {
        /// Run on this node (`node-0`…) instead of in a pod.
        #[arg(long, conflicts_with_all = ["external", "pod"])]
        node: Option<String>,
        /// Run on the external client (192.168.50.200 on the node network).
        #[arg(long, conflicts_with = "pod")]
        external: bool,
        /// The pod.
        #[arg(required_unless_present_any = ["node", "external"])]
        pod: Option<String>,
        /// The command, after `--`.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Show nodes, pods, Services and endpoints.
    Status {
        /// Print state.json instead.
        #[arg(long)]
        json: bool,
    },
    /// Mark a pod ready or not ready (as its readiness probe would).
    SetReady {
        pod: String,
        #[arg(action = clap::ArgAction::Set)]
        ready: bool,
    },
    /// Remove everything the cluster made.
    Down,
}

fn main() -> ExitCode {
    let arg0 = std::env::args_os().next().unwrap_or_default();
    let program = std::path::Path::new(&arg0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let result = match program {
        PROXY_ARG0 => svcplane_proxy::app::main().map(|()| ExitCode::SUCCESS),
        DNS_ARG0 => dns_main().map(|()| ExitCode::SUCCESS),
        _ => run(Cli::parse()),
    };
    result.unwrap_or_else(|e| {
        eprintln!("svcplane-lab: {e:#}");
        ExitCode::FAILURE
    })
}

fn run(cli: Cli) -> Result<ExitCode> {
    let opts = || Options::new(&cli.state_dir, &cli.name);
    match cli.command {
        Cmd::Up { paths, nodes } => println!("{}", lab::up(&opts()?, &paths, nodes)?),
        Cmd::Apply {
            paths,
            grace_period,
        } => {
            let opts = Options {
                grace: grace_period,
                ..opts()?
            };
            println!("{}", lab::apply(&opts, &paths)?);
        }
        Cmd::Delete {
            paths,
            grace_period,
        } => {
            let opts = Options {
                grace: grace_period,
                ..opts()?
            };
            println!("{}", lab::delete(&opts, &paths)?);
        }
        Cmd::Exec {
            node,
            external,
            pod,
            cmd,
        } => {
            let target = match (node, external, pod) {
                (Some(n), _, _) => Target::Node(n),
                (None, true, _) => Target::External,
                (None, false, p) => Target::Pod(p.unwrap_or_default()),
            };
            let status = lab::exec(&opts()?, &target, &cmd)?;
            return Ok(exit_code(status));
        }
        Cmd::Status { json } => print!("{}", lab::status(&opts()?, json)?),
        Cmd::SetReady { pod, ready } => println!("{}", lab::set_ready(&opts()?, &pod, ready)?),
        Cmd::Down => println!("{}", lab::down(&opts()?)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// The child's exit code (128 + signal when it was killed).
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// svcplane-dns's `main` (dns/src/main.rs): serve until SIGTERM, then lameduck.
fn dns_main() -> Result<()> {
    use svcplane_dns::app::{self, Args};
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let lameduck = args.lameduck;
        let running = app::start(args).await?;
        tracing::info!(dns = %running.dns_addr, health = %running.health_addr, "svcplane-dns serving");
        wait_for_signal().await;
        running.terminate(lameduck).await;
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
