//! `svcplane-echo`: a tiny identity server for the network-namespace tests
//! (std only). It tells each client who answered and which address it came
//! from, which is what proxy tests check: which backend was picked and
//! whether the source was NATed.
//!
//! `svcplane-echo --name ID [--tcp PORT...] [--udp PORT...]` binds every
//! port on `[::]` (dual-stack; `0.0.0.0` if the namespace has no IPv6),
//! prints `ready` on stdout once all are bound, then serves until killed:
//! - TCP: waits up to 100 ms for the client's first bytes. If they start an
//!   HTTP request, it answers `200 OK` with body `ID <client-ip>:<port>\n`;
//!   otherwise (other bytes, or none) it sends that line alone. Then it
//!   closes. Clients that send a byte first get the line at once.
//! - UDP: each datagram gets one datagram `ID <client-ip>:<port>` back.
//!
//! Client addresses are printed as `SocketAddr` does (IPv6 in brackets),
//! with IPv4-mapped IPv6 addresses shown as IPv4. SCTP is not offered: std
//! has no SCTP sockets, and this kernel lacks SCTP anyway; `--sctp` is
//! refused with an error.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const USAGE: &str = "usage: svcplane-echo --name ID [--tcp PORT...] [--udp PORT...]";
/// How long a TCP connection may stay silent before it gets the plain line.
const GRACE: Duration = Duration::from_millis(100);
/// How long an HTTP client may take to send its request head.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to drain a client after answering, so closing sends FIN not RST.
const LINGER: Duration = Duration::from_secs(1);
/// Request methods that make a connection HTTP.
const METHODS: &[&str] = &[
    "GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ",
];

/// The command line.
#[derive(Debug, Default)]
struct Args {
    name: String,
    tcp: Vec<u16>,
    udp: Vec<u16>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svcplane-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args = parse_args(std::env::args().skip(1))?;
    let tcp = bind_all(&args.tcp, bind_tcp, "tcp")?;
    let udp = bind_all(&args.udp, bind_udp, "udp")?;
    let mut out = io::stdout();
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .map_err(|e| format!("stdout: {e}"))?;
    let name: Arc<str> = args.name.into();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for listener in tcp {
        let name = name.clone();
        threads.push(std::thread::spawn(move || serve_tcp(listener, name)));
    }
    for sock in udp {
        let name = name.clone();
        threads.push(std::thread::spawn(move || serve_udp(sock, name)));
    }
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

/// Which list the next bare value belongs to.
#[derive(Clone, Copy)]
enum Slot {
    None,
    Name,
    Tcp,
    Udp,
}

fn parse_args(argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args::default();
    let mut slot = Slot::None;
    for arg in argv {
        slot = match arg.as_str() {
            "--name" => Slot::Name,
            "--tcp" => Slot::Tcp,
            "--udp" => Slot::Udp,
            "--sctp" => return Err("SCTP is not supported (std has no SCTP sockets)".into()),
            "-h" | "--help" => return Err(USAGE.into()),
            flag if flag.starts_with('-') => return Err(format!("unknown flag {flag}\n{USAGE}")),
            value => take_value(&mut args, slot, value)?,
        };
    }
    if args.name.is_empty() || (args.tcp.is_empty() && args.udp.is_empty()) {
        return Err(format!("need --name and at least one port\n{USAGE}"));
    }
    Ok(args)
}

/// Stores a bare `value` per `slot`; returns the slot for the next value.
fn take_value(args: &mut Args, slot: Slot, value: &str) -> Result<Slot, String> {
    let port = || {
        value
            .parse::<u16>()
            .map_err(|_| format!("bad port {value}"))
    };
    match slot {
        Slot::None => Err(format!("unexpected argument {value}\n{USAGE}")),
        Slot::Name => {
            args.name = value.to_owned();
            Ok(Slot::None)
        }
        Slot::Tcp => {
            args.tcp.push(port()?);
            Ok(slot)
        }
        Slot::Udp => {
            args.udp.push(port()?);
            Ok(slot)
        }
    }
}

/// Binds every port with `bind`, naming the first failure.
fn bind_all<T>(
    ports: &[u16],
    bind: fn(u16) -> io::Result<T>,
    proto: &str,
) -> Result<Vec<T>, String> {
    ports
        .iter()
        .map(|&p| bind(p).map_err(|e| format!("binding {proto} port {p}: {e}")))
        .collect()
}

/// `[::]:port` (dual-stack), else `0.0.0.0:port`.
fn bind_tcp(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
}

/// `[::]:port` (dual-stack), else `0.0.0.0:port`.
fn bind_udp(port: u16) -> io::Result<UdpSocket> {
    UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
}

/// Accepts forever, one thread per connection.
fn serve_tcp(listener: TcpListener, name: Arc<str>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let name = name.clone();
                std::thread::spawn(move || {
                    // The client going away early is its business.
                    let _ = answer_tcp(stream, &name);
                });
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

/// Answers one connection (plain line or HTTP) and closes it cleanly.
fn answer_tcp(mut stream: TcpStream, name: &str) -> io::Result<()> {
    let line = format!("{name} {}\n", unmapped(stream.peer_addr()?));
    stream.set_read_timeout(Some(GRACE))?;
    let mut head = Vec::new();
    read_some(&mut stream, &mut head)?;
    if METHODS.iter().any(|m| head.starts_with(m.as_bytes())) {
        read_head(&mut stream, &mut head)?;
        stream.write_all(&http_response(&head, &line))?;
    } else {
        stream.write_all(line.as_bytes())?;
    }
    stream.shutdown(Shutdown::Write)?;
    drain(&mut stream);
    Ok(())
}

/// Appends what one read returns to `buf`; a timeout reads nothing.
fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }
        Err(e) if timed_out(&e) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Reads until the blank line ending an HTTP request head (at most 16 KiB).
fn read_head(stream: &mut TcpStream, head: &mut Vec<u8>) -> io::Result<()> {
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        if read_some(stream, head)? == 0 {
            break;
        }
    }
    Ok(())
}

/// `200 OK` carrying `line` (no body for HEAD).
fn http_response(head: &[u8], line: &str) -> Vec<u8> {
    let body = if head.starts_with(b"HEAD ") { "" } else { line };
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        line.len()
    )
    .into_bytes()
}

/// Reads until the client closes (or [`LINGER`] passes).
fn drain(stream: &mut TcpStream) {
    if stream.set_read_timeout(Some(LINGER)).is_err() {
        return;
    }
    let mut chunk = [0u8; 4096];
    while matches!(stream.read(&mut chunk), Ok(n) if n > 0) {}
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Answers every datagram with the identity line.
fn serve_udp(sock: UdpSocket, name: Arc<str>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((_, peer)) => {
                let reply = format!("{name} {}", unmapped(peer));
                if let Err(e) = sock.send_to(reply.as_bytes(), peer) {
                    eprintln!("udp reply to {peer}: {e}");
                }
            }
            Err(e) => eprintln!("udp receive: {e}"),
        }
    }
}

/// `::ffff:a.b.c.d` shown as `a.b.c.d`.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => (v4, v6.port()).into(),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(line: &str) -> Result<Args, String> {
        parse_args(line.split_whitespace().map(String::from))
    }

    #[test]
    fn parses_several_ports_per_flag() {
        let args = parse("--name web --tcp 80 8080 --udp 53 --tcp 9").unwrap();
        assert_eq!(args.name, "web");
        assert_eq!(args.tcp, [80, 8080, 9]);
        assert_eq!(args.udp, [53]);
    }

    #[test]
    fn refuses_bad_command_lines() {
        assert!(parse("--name web").is_err());
        assert!(parse("--tcp 80").is_err());
        assert!(parse("--name web --tcp 99999").is_err());
        assert!(parse("--name web --sctp 80").is_err());
        assert!(parse("--name web --bogus").is_err());
    }

    #[test]
    fn shows_mapped_addresses_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:5".parse().unwrap();
        assert_eq!(unmapped(mapped).to_string(), "10.0.0.1:5");
        let v6: SocketAddr = "[fd00::1]:5".parse().unwrap();
        assert_eq!(unmapped(v6), v6);
    }
}
