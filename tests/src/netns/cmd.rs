//! Running external commands for the harness: every exit status is checked
//! and a failure carries the command line and its stderr. Also owns the two
//! ways the harness talks to iproute2: `ip netns ...` (the only commands run
//! in the host namespace, and they only add, list and delete namespaces) and
//! `ip -n NS -batch -` (everything else, always inside a namespace).

use std::io::Write;
use std::process::{Command, Output, Stdio};

use super::{Error, Result};

/// The command line of `cmd`, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Turns an unsuccessful `out` into [`Error::Command`].
pub(crate) fn check(cmd: String, out: Output) -> Result<Output> {
    if out.status.success() {
        return Ok(out);
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    Err(Error::Command {
        cmd,
        status: out.status,
        stderr,
    })
}

/// Runs `cmd` to completion (stdin closed) and checks its exit status.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let out = unchecked(cmd)?;
    check(describe(cmd), out)
}

/// Runs `cmd` to completion (stdin closed) without checking its status.
pub(crate) fn unchecked(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            cmd: describe(cmd),
            source,
        })
}

/// Runs `cmd` with `input` on its stdin and checks its exit status.
pub(crate) fn run_with_input(cmd: &mut Command, input: &[u8]) -> Result<Output> {
    let desc = describe(cmd);
    let spawn_err = |source| Error::Spawn {
        cmd: desc.clone(),
        source,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let stdin = child.stdin.take();
    // Feed stdin from another thread so a chatty child cannot deadlock us.
    let out = std::thread::scope(|s| {
        s.spawn(move || stdin.map(|mut w| w.write_all(input)));
        child.wait_with_output()
    })
    .map_err(spawn_err)?;
    check(desc, out)
}

/// `ip netns <args>` in the host namespace: namespace management only.
pub(crate) fn ip_netns(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").arg("netns").args(args))
}

/// Runs iproute2 batch `lines` inside namespace `ns` (`ip -n ns -batch -`).
pub(crate) fn ip_batch(ns: &str, lines: &[String]) -> Result<()> {
    let script = lines.join("\n") + "\n";
    let mut cmd = Command::new("ip");
    cmd.args(["-n", ns, "-batch", "-"]);
    run_with_input(&mut cmd, script.as_bytes())
        .map(drop)
        .map_err(|e| with_script(e, &script))
}

/// Appends the batch script to a command error so failures are readable.
fn with_script(err: Error, script: &str) -> Error {
    match err {
        Error::Command {
            cmd,
            status,
            stderr,
        } => Error::Command {
            cmd: format!("{cmd} <<EOF\n{script}EOF"),
            status,
            stderr,
        },
        other => other,
    }
}
