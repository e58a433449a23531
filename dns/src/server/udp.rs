//! The UDP server: one blocking worker thread per socket, sockets sharing the port with
//! `SO_REUSEPORT` so the kernel spreads clients across workers.
//!
//! Blocking threads (not tokio tasks) with batched `recvmmsg`/`sendmmsg` ([`super::mmsg`]) keep
//! the cluster-zone path free of task wake-ups and amortise system calls over up to 32 queries;
//! forwarded queries are handed to the async runtime and answered from there through a clone of
//! the same socket.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

use super::mmsg::{Batch, SLOTS};
use super::{Handler, Step, Transport};
use crate::metrics::{DnsMetrics, WorkerMetrics};
use crate::wire::Scratch;

/// How often a blocked worker wakes up to check for shutdown.
const POLL: Duration = Duration::from_millis(100);

/// Binds `count` UDP sockets on `addr` (port 0 picks one port for all of them).
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<UdpSocket>> {
    let first = bind_one(addr)?;
    let addr = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count.max(1) {
        sockets.push(bind_one(addr)?);
    }
    Ok(sockets)
}

fn bind_one(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // Bursts of queries arrive faster than one worker drains them; a larger receive buffer
    // trades memory for fewer drops.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    socket.set_read_timeout(Some(POLL))?;
    Ok(socket.into())
}

/// Starts one worker thread per socket; they stop when `shutdown` is cancelled.
pub fn spawn(
    sockets: Vec<UdpSocket>,
    handler: Arc<Handler>,
    metrics: DnsMetrics,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
) -> io::Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let worker = Worker {
            socket: Arc::new(socket),
            handler: handler.clone(),
            metrics: WorkerMetrics::new(metrics.clone(), "udp"),
            runtime: runtime.clone(),
            shutdown: shutdown.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || worker.run())?;
        threads.push(thread);
    }
    Ok(threads)
}

struct Worker {
    socket: Arc<UdpSocket>,
    handler: Arc<Handler>,
    metrics: WorkerMetrics,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
}

impl Worker {
    fn run(mut self) {
        let fd = self.socket.as_raw_fd();
        let mut batch = Batch::default();
        let mut outs: Vec<Vec<u8>> = (0..SLOTS).map(|_| Vec::with_capacity(1232)).collect();
        let mut scratch = Scratch::default();
        let mut ready: Vec<usize> = Vec::with_capacity(SLOTS);
        while !self.shutdown.is_cancelled() {
            let count = match batch.recv(fd) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive failed");
                    continue;
                }
            };
            ready.clear();
            for (slot, out) in outs.iter_mut().enumerate().take(count) {
                if self.one(&batch, slot, &mut scratch, out) {
                    ready.push(slot);
                }
            }
            let replies: Vec<(usize, &[u8])> = ready.iter().map(|s| (*s, &outs[*s][..])).collect();
            batch.send(fd, &replies);
        }
    }

    /// Handles datagram `slot`; true if a reply is waiting in `out`.
    fn one(
        &mut self,
        batch: &Batch,
        slot: usize,
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
    ) -> bool {
        let started = Instant::now();
        let (Some(query), Some(peer)) = (batch.packet(slot), batch.peer(slot)) else {
            self.metrics.dropped();
            return false;
        };
        match self.handler.handle(query, Transport::Udp, scratch, out) {
            Step::Reply { rcode, qtype } => {
                self.metrics
                    .record(peer.is_ipv6(), qtype, rcode, started.elapsed());
                true
            }
            Step::Drop => {
                self.metrics.dropped();
                false
            }
            Step::Forward(pending) => {
                self.forward(query.to_vec(), pending, peer);
                false
            }
        }
    }

    fn forward(&self, packet: Vec<u8>, pending: Box<super::Pending>, peer: SocketAddr) {
        let (socket, handler) = (self.socket.clone(), self.handler.clone());
        let mut metrics = WorkerMetrics::new(self.metrics.shared().clone(), "udp");
        let started = Instant::now();
        self.runtime.spawn(async move {
            let (bytes, rcode) = handler.forward(&packet, &pending, Transport::Udp).await;
            let _ = socket.send_to(&bytes, peer);
            metrics.record(
                peer.is_ipv6(),
                pending.query.qtype,
                rcode,
                started.elapsed(),
            );
        });
    }
}
