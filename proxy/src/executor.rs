//! The executor: runs nft transactions and checks what the kernel holds.
//!
//! Scripts go to `nft -f -` on standard input; nft runs a file as one transaction, so a
//! failed script changes nothing. Measured here (see the README): the data-driven layout loads
//! 50k Services × 5 endpoints through `nft -f` in 3.5–4 s and a one-Service change in about
//! ten milliseconds, which is within the targets, so svcplane uses nft rather than a netlink
//! encoder of its own. Streaming the script while it is rendered would gain nothing: nft 1.0.6
//! starts parsing only once its input is complete (measured).

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::ruleset::{NftFamily, TABLE};

/// Errors of the executor.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// `nft` could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// `nft` rejected the script; nothing of it was applied.
    #[error("nft failed: {stderr}")]
    Nft { stderr: String },
    /// `nft` printed something we could not read.
    #[error("reading nft output: {0}")]
    Output(String),
}

/// Runs nft.
#[derive(Debug, Clone)]
pub struct Nft {
    pub program: String,
}

impl Default for Nft {
    fn default() -> Self {
        Nft {
            program: "nft".into(),
        }
    }
}

impl Nft {
    /// Applies `script` as one transaction.
    pub async fn apply(&self, script: &str) -> Result<(), ExecError> {
        let mut child = Command::new(&self.program)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ExecError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error means nft exited early; its status and stderr say why.
            let _ = stdin.write_all(script.as_bytes()).await;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| ExecError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(ExecError::Nft {
                stderr: truncate(&stderr, 4000),
            })
        }
    }

    /// Runs `nft ARGS…` and returns its standard output.
    async fn output(&self, args: &[&str]) -> Result<String, ExecError> {
        let out = Command::new(&self.program)
            .args(args)
            .output()
            .await
            .map_err(|source| ExecError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(ExecError::Nft {
                stderr: truncate(&String::from_utf8_lossy(&out.stderr), 4000),
            });
        }
        String::from_utf8(out.stdout).map_err(|e| ExecError::Output(e.to_string()))
    }

    /// Whether the kernel's table still matches what was programmed, by two cheap probes:
    /// the rule count of the `services` chain and the element count of the `fe` map (a
    /// flushed or deleted table, or lost elements, show in one of them).
    pub async fn verify(
        &self,
        family: NftFamily,
        rules: usize,
        fe_elements: usize,
    ) -> Result<bool, ExecError> {
        let fam = family.keyword();
        let chain = match self
            .output(&["-j", "list", "chain", fam, TABLE, "services"])
            .await
        {
            Ok(json) => json,
            Err(ExecError::Nft { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let map = match self.output(&["-j", "list", "map", fam, TABLE, "fe"]).await {
            Ok(json) => json,
            Err(ExecError::Nft { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(count_rules(&chain)? == rules && count_elements(&map)? == fe_elements)
    }

    /// Deletes svcplane's tables (the `cleanup` subcommand); a missing table is fine.
    pub async fn delete_tables(&self) -> Result<(), ExecError> {
        let script = format!(
            "add table ip {TABLE}\ndelete table ip {TABLE}\nadd table ip6 {TABLE}\ndelete table ip6 {TABLE}\n"
        );
        self.apply(&script).await
    }
}

fn parse(json: &str) -> Result<serde_json::Value, ExecError> {
    serde_json::from_str(json).map_err(|e| ExecError::Output(e.to_string()))
}

fn entries(json: &str) -> Result<Vec<serde_json::Value>, ExecError> {
    let value = parse(json)?;
    Ok(value
        .get("nftables")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default())
}

fn count_rules(json: &str) -> Result<usize, ExecError> {
    Ok(entries(json)?
        .iter()
        .filter(|e| e.get("rule").is_some())
        .count())
}

fn count_elements(json: &str) -> Result<usize, ExecError> {
    Ok(entries(json)?
        .iter()
        .filter_map(|e| e.get("map"))
        .filter_map(|m| m.get("elem"))
        .filter_map(|e| e.as_array())
        .map(|a| a.len())
        .sum())
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.trim().to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", text[..end].trim())
}
