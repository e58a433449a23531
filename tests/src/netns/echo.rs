//! Running the `svcplane-echo` identity server inside a namespace: start it,
//! wait until it prints `ready` (every port bound), forward its stderr to
//! the test's, and kill it on drop.
//!
//! The binary's path comes from the caller: integration tests of this crate
//! pass `env!("CARGO_BIN_EXE_svcplane-echo")`.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::{Error, Result, cmd, ns::Netns};

/// How long the server may take to bind its ports.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `svcplane-echo`; killed when dropped.
#[derive(Debug)]
pub struct EchoServer {
    child: Child,
    name: String,
}

impl EchoServer {
    /// Starts `exe --name NAME --tcp PORT... --udp PORT...` inside `ns` and
    /// returns once it listens on every port.
    pub fn spawn(
        ns: &Netns,
        exe: &Path,
        name: &str,
        tcp: &[u16],
        udp: &[u16],
    ) -> Result<EchoServer> {
        let mut command = Command::new(exe);
        command.args(["--name", name]);
        for (flag, ports) in [("--tcp", tcp), ("--udp", udp)] {
            if !ports.is_empty() {
                command.arg(flag).args(ports.iter().map(u16::to_string));
            }
        }
        let desc = cmd::describe(&command);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = ns.spawn_command(&mut command)?;
        let mut server = EchoServer {
            child,
            name: name.to_owned(),
        };
        server.await_ready(&desc)?;
        Ok(server)
    }

    /// The server's `--name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the `ready` line; on failure the error has the exit
    /// status and stderr.
    fn await_ready(&mut self, desc: &str) -> Result<()> {
        let stdout = self.child.stdout.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            if let Some(out) = stdout {
                let _ = BufReader::new(out).read_line(&mut line);
            }
            let _ = tx.send(line);
        });
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line.trim() == "ready" => {
                self.forward_stderr();
                Ok(())
            }
            Ok(line) => {
                if !line.is_empty() {
                    // Not our server: stop it before waiting for its exit.
                    let _ = self.child.kill();
                }
                Err(self.exit_error(desc))
            }
            Err(_) => {
                let _ = self.child.kill();
                Err(Error::Timeout {
                    what: format!("`{desc}` to print ready"),
                    after: READY_TIMEOUT,
                    last: "no output".into(),
                })
            }
        }
    }

    /// The error for a server that quit before it was ready.
    fn exit_error(&mut self, desc: &str) -> Error {
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        match self.child.wait() {
            Ok(status) => Error::Command {
                cmd: desc.to_owned(),
                status,
                stderr: stderr.trim().to_owned(),
            },
            Err(e) => Error::io(format!("waiting for `{desc}`"))(e),
        }
    }

    /// Copies the server's stderr lines to ours until it exits.
    fn forward_stderr(&mut self) {
        let Some(err) = self.child.stderr.take() else {
            return;
        };
        let name = self.name.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                eprintln!("svcplane-echo {name}: {line}");
            }
        });
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
