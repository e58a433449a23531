//! Running iptables: `iptables-restore --noflush` (or `ip6tables-restore`) for every change,
//! `iptables-save` to read what svcplane left in the kernel before a full restore, and
//! `iptables -S` for the cheap verification probes.
//!
//! iptables-nft 1.8.9 lists a table in time quadratic in its chains (`iptables-save` takes a
//! minute at 10k Services × 5 endpoints, 60k chains); with the nf_tables variant the chain names
//! are therefore read with `nft -j list chains` and the built-in jumps with `iptables -S CHAIN`
//! (together well under a second), falling back to `iptables-save` when `nft` is missing.
//!
//! Restores and probes wait for the xtables lock (`-w`), as kube-proxy does, so they never race
//! another tool's `iptables` invocation. A restore is one transaction per table: a failed one
//! changes nothing of that table (and the engine's next sync is a full one).

use std::process::Stdio;
use std::time::Duration;

use svcplane_common::model::Family;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::plan::{KernelState, cleanup_input};
use super::{BUILTINS, CANARY, JUMPS, PREFIX, Table, tools};

/// How long to wait for the xtables lock, in seconds.
const LOCK_WAIT: &str = "5";

/// How long one tool invocation may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of the iptables executor.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The tool could not be started (or waited for).
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// The tool did not finish in time.
    #[error("{program} did not finish within {TIMEOUT:?}")]
    Timeout { program: String },
    /// The tool failed; a failed restore changed nothing of the table it failed in.
    #[error("{program} failed: {stderr}")]
    Failed { program: String, stderr: String },
    /// The tool printed something that is not UTF-8.
    #[error("reading {program} output: {detail}")]
    Output { program: String, detail: String },
}

impl ExecError {
    /// The tool is not installed.
    pub fn is_missing_tool(&self) -> bool {
        matches!(self, ExecError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Runs the iptables tools of one family.
#[derive(Debug, Clone)]
pub struct Iptables {
    pub family: Family,
    pub iptables: String,
    pub restore: String,
    pub save: String,
}

impl Iptables {
    /// The standard tools of `family` (`iptables*` or `ip6tables*`).
    pub fn new(family: Family) -> Iptables {
        let (iptables, restore, save) = tools(family);
        Iptables {
            family,
            iptables: iptables.into(),
            restore: restore.into(),
            save: save.into(),
        }
    }

    /// Applies `input` with `iptables-restore --noflush`.
    pub async fn restore(&self, input: &str) -> Result<(), ExecError> {
        let args = ["-w", LOCK_WAIT, "--noflush"];
        self.run(&self.restore, &args, Some(input)).await.map(drop)
    }

    /// Checks `input` with `iptables-restore --test` (nothing is applied).
    pub async fn test(&self, input: &str) -> Result<(), ExecError> {
        let args = ["-w", LOCK_WAIT, "--noflush", "--test"];
        self.run(&self.restore, &args, Some(input)).await.map(drop)
    }

    /// `iptables-save -t TABLE`.
    pub async fn save(&self, table: Table) -> Result<String, ExecError> {
        self.run(&self.save, &["-t", table.name()], None).await
    }

    /// What svcplane left in the kernel (chains and jumps of the nat and filter tables).
    pub async fn kernel_state(&self) -> Result<KernelState, ExecError> {
        if self.is_nf_tables().await? {
            match self.kernel_state_nft().await {
                Ok(state) => return Ok(state),
                Err(e) => {
                    tracing::debug!(error = %e, "listing chains with nft; using iptables-save")
                }
            }
        }
        let mut state = KernelState::default();
        for table in Table::ALL {
            state.parse(table, &self.save(table).await?);
        }
        Ok(state)
    }

    /// Whether the tools are the nf_tables variant (`iptables -V`).
    async fn is_nf_tables(&self) -> Result<bool, ExecError> {
        let version = self.run(&self.iptables, &["-V"], None).await?;
        Ok(version.contains("nf_tables"))
    }

    /// [`Iptables::kernel_state`] from `nft -j list chains` and `iptables -S` of the built-in
    /// chains, in the form `iptables-save` would give.
    async fn kernel_state_nft(&self) -> Result<KernelState, ExecError> {
        let family = match self.family {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        };
        let json = self
            .run("nft", &["-j", "list", "chains", family], None)
            .await?;
        let chains = nft_chains(&json).map_err(|detail| ExecError::Output {
            program: "nft".into(),
            detail,
        })?;
        let mut state = KernelState::default();
        for table in Table::ALL {
            let mut text = String::new();
            for (t, name) in &chains {
                if t == table.name() && name.starts_with(PREFIX) {
                    text.push_str(&format!(":{name} - [0:0]\n"));
                }
            }
            for builtin in BUILTINS {
                if chains
                    .iter()
                    .any(|(t, n)| t == table.name() && n == builtin)
                {
                    text.push_str(&self.list(table, builtin).await?.unwrap_or_default());
                }
            }
            state.parse(table, &text);
        }
        Ok(state)
    }

    /// `iptables -S CHAIN` of `table`; None if the chain does not exist.
    async fn list(&self, table: Table, chain: &str) -> Result<Option<String>, ExecError> {
        let args = ["-w", LOCK_WAIT, "-t", table.name(), "-S", chain];
        match self.run(&self.iptables, &args, None).await {
            Ok(out) => Ok(Some(out)),
            Err(ExecError::Failed { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the kernel still holds svcplane's rules: the canary chain of each table with its
    /// rule, and every jump from the built-in chains (a flushed table loses all of them).
    pub async fn intact(&self) -> Result<bool, ExecError> {
        for table in Table::ALL {
            let canary = self.list(table, CANARY).await?;
            if !canary.is_some_and(|c| c.contains(&format!("-A {CANARY} "))) {
                return Ok(false);
            }
        }
        for (table, chain, spec) in JUMPS {
            let rules = self.list(table, chain).await?.unwrap_or_default();
            let wanted = format!("-A {chain} {spec}");
            if !rules.lines().any(|l| l == wanted) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Removes every chain and jump svcplane left; returns whether there was any.
    pub async fn cleanup(&self) -> Result<bool, ExecError> {
        let state = self.kernel_state().await?;
        match cleanup_input(&state) {
            Some(input) => self.restore(&input).await.map(|()| true),
            None => Ok(false),
        }
    }

    async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, ExecError> {
        let spawn_error = |source| ExecError::Spawn {
            program: program.to_string(),
            source,
        };
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error means the tool exited early; its status and stderr say why.
            let _ = pipe.write_all(text.as_bytes()).await;
        }
        let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| ExecError::Timeout {
                program: program.to_string(),
            })?
            .map_err(spawn_error)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(ExecError::Failed {
                program: program.to_string(),
                stderr: truncate(stderr.trim(), 4000),
            });
        }
        String::from_utf8(out.stdout).map_err(|e| ExecError::Output {
            program: program.to_string(),
            detail: e.to_string(),
        })
    }
}

/// Removes svcplane's iptables rules of both families (`cleanup`, and switching to the
/// nftables backend). A family whose tools are not installed has nothing to remove.
pub async fn cleanup_all() -> Result<(), ExecError> {
    for family in [Family::V4, Family::V6] {
        match Iptables::new(family).cleanup().await {
            Ok(removed) => {
                if removed {
                    tracing::info!(?family, "removed svcplane's iptables rules");
                }
            }
            Err(e) if e.is_missing_tool() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// (table, chain) of every chain in an `nft -j list chains` listing.
fn nft_chains(json: &str) -> Result<Vec<(String, String)>, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let items = value
        .get("nftables")
        .and_then(|v| v.as_array())
        .ok_or("no nftables array")?;
    Ok(items
        .iter()
        .filter_map(|item| item.get("chain"))
        .filter_map(|c| {
            let table = c.get("table")?.as_str()?;
            let name = c.get("name")?.as_str()?;
            Some((table.to_string(), name.to_string()))
        })
        .collect())
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_chain_listing() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "ip", "table": "nat", "name": "SVCPLANE-CANARY", "handle": 1}},
            {"chain": {"family": "ip", "table": "nat", "name": "PREROUTING", "handle": 2,
             "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}]}"#;
        let chains = nft_chains(json).expect("parses");
        assert_eq!(
            chains,
            [
                ("nat".to_string(), "SVCPLANE-CANARY".to_string()),
                ("nat".to_string(), "PREROUTING".to_string())
            ]
        );
        assert!(nft_chains("{}").is_err());
    }
}
