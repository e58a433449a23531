//! Clients that send test traffic from inside a namespace, with plain
//! `std::net` sockets opened on a thread in that namespace, and the polling
//! helpers tests wait with. Every call is bounded by a timeout.
//!
//! They speak `svcplane-echo`'s protocol: a TCP client sends one `\n` and
//! reads the line `ID <client-ip>:<client-port>` until the server closes; a
//! UDP client sends one datagram and reads one back. [`Identity`] parses
//! either answer.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::{Error, Result, ns::Netns};

/// Per-connect limit of [`connect_latency`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The most a reply may hold.
const MAX_REPLY: u64 = 64 * 1024;
/// Pause between polls of [`wait_for`] and [`wait_for_ok`].
const POLL: Duration = Duration::from_millis(20);

/// What an echo server said and which local address the client used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// The client socket's own address (before any NAT).
    pub local: SocketAddr,
    /// The reply, without a trailing newline.
    pub reply: String,
}

/// An echo server's answer: its `--name` and the client address it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The server's `--name`.
    pub name: String,
    /// The peer address of the connection or datagram, as the server saw it.
    pub client: SocketAddr,
}

impl FromStr for Identity {
    type Err = Error;

    /// Parses `ID <ip>:<port>` (IPv6 in brackets).
    fn from_str(line: &str) -> Result<Identity> {
        let bad = || Error::Reply {
            peer: "echo server".into(),
            detail: format!("not an identity line: {line:?}"),
        };
        let (name, client) = line.trim_end().rsplit_once(' ').ok_or_else(bad)?;
        let client = client.parse().map_err(|_| bad())?;
        Ok(Identity {
            name: name.to_owned(),
            client,
        })
    }
}

/// Connects to `addr` from inside `ns` and returns the echo line.
pub fn tcp_request(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<String> {
    tcp_exchange(ns, addr, timeout).map(|e| e.reply)
}

/// Like [`tcp_request`], also returning the client's local address.
pub fn tcp_exchange(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<Exchange> {
    ns.run_in(|| tcp_exchange_here(addr, timeout))?
}

fn tcp_exchange_here(addr: SocketAddr, timeout: Duration) -> Result<Exchange> {
    let what = |step: &str| format!("tcp {step} {addr}");
    let deadline = Instant::now() + timeout;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(Error::io(what("connect to")))?;
    set_timeouts(&stream, deadline).map_err(Error::io(what("timeouts for")))?;
    let local = stream
        .local_addr()
        .map_err(Error::io(what("local address for")))?;
    stream
        .write_all(b"\n")
        .map_err(Error::io(what("send to")))?;
    let reply = read_all(&mut stream).map_err(Error::io(what("read from")))?;
    Ok(Exchange {
        local,
        reply: reply.trim_end_matches('\n').to_owned(),
    })
}

/// Sets read and write timeouts to what is left until `deadline`.
fn set_timeouts(stream: &TcpStream, deadline: Instant) -> std::io::Result<()> {
    let left = remaining(deadline);
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))
}

/// Time left until `deadline`, at least 1 ms (a zero timeout is invalid).
fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// Reads until the peer closes (at most [`MAX_REPLY`] bytes).
fn read_all(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    stream.take(MAX_REPLY).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Sends one datagram to `addr` from inside `ns` and returns the reply.
pub fn udp_request(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<String> {
    udp_exchange(ns, addr, timeout).map(|e| e.reply)
}

/// Like [`udp_request`], also returning the client's local address.
pub fn udp_exchange(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<Exchange> {
    ns.run_in(|| udp_exchange_here(addr, timeout))?
}

fn udp_exchange_here(addr: SocketAddr, timeout: Duration) -> Result<Exchange> {
    let what = |step: &str| format!("udp {step} {addr}");
    let any: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(any).map_err(Error::io(what("bind for")))?;
    sock.connect(addr).map_err(Error::io(what("connect to")))?;
    sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
        .map_err(Error::io(what("timeout for")))?;
    let local = sock
        .local_addr()
        .map_err(Error::io(what("local address for")))?;
    sock.send(b"?").map_err(Error::io(what("send to")))?;
    let mut buf = [0u8; 2048];
    let n = sock
        .recv(&mut buf)
        .map_err(Error::io(what("receive from")))?;
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    Ok(Exchange { local, reply })
}

/// `GET /` over HTTP/1.1 from inside `ns`; returns the body of a 200.
pub fn http_get(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<String> {
    let raw = ns.run_in(|| http_get_here(addr, timeout))??;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or("");
        return Err(Error::Reply {
            peer: addr.to_string(),
            detail: format!("HTTP status {status:?}"),
        });
    }
    Ok(body.to_owned())
}

fn http_get_here(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let what = |step: &str| format!("http {step} {addr}");
    let deadline = Instant::now() + timeout;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(Error::io(what("connect to")))?;
    set_timeouts(&stream, deadline).map_err(Error::io(what("timeouts for")))?;
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(Error::io(what("send to")))?;
    read_all(&mut stream).map_err(Error::io(what("read from")))
}

/// Opens and closes `n` TCP connections to `addr` from inside `ns`, one at
/// a time, and returns how long each connect took (handshake only; each
/// may take at most 2 s).
pub fn connect_latency(ns: &Netns, addr: SocketAddr, n: usize) -> Result<Vec<Duration>> {
    ns.run_in(|| (0..n).map(|_| time_connect(addr)).collect())?
}

fn time_connect(addr: SocketAddr) -> Result<Duration> {
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(Error::io(format!("tcp connect to {addr}")))?;
    let took = start.elapsed();
    drop(stream);
    Ok(took)
}

/// Polls `check` until it returns true or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    wait_for_ok(what, timeout, || {
        check()
            .then_some(())
            .ok_or_else(|| Error::Invalid("not yet".into()))
    })
}

/// Polls `attempt` until it succeeds or `timeout` passes; the timeout error
/// carries the last failure.
pub fn wait_for_ok<T>(
    what: &str,
    timeout: Duration,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match attempt() {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                after: timeout,
                last: last.to_string(),
            });
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_identities() {
        let id: Identity = "web-1 [fd00:244::2]:4000\n".parse().unwrap();
        assert_eq!(id.name, "web-1");
        assert_eq!(id.client, "[fd00:244::2]:4000".parse().unwrap());
        let id: Identity = "a b 10.0.0.1:1".parse().unwrap();
        assert_eq!(id.name, "a b");
        assert!("nonsense".parse::<Identity>().is_err());
    }

    #[test]
    fn wait_for_times_out_with_the_last_error() {
        let err = wait_for("never", Duration::from_millis(30), || false).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        let mut n = 0;
        wait_for("third try", Duration::from_secs(5), || {
            n += 1;
            n == 3
        })
        .unwrap();
    }
}
