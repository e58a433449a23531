//! The TCP server (RFC 7766): length-prefixed messages, several per connection, idle timeout,
//! and a cap on concurrent connections.
//!
//! RFC 7766 §6.2.3: "DNS servers SHOULD process pipelined queries"; this server answers a
//! connection's queries in order. RFC 7766 §6.2.2: servers "MAY impose limits on the number of
//! concurrent TCP connections"; past the cap new connections are closed at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{Handler, Step, Transport};
use crate::metrics::{DnsMetrics, WorkerMetrics};
use crate::wire::Scratch;

/// Limits of the TCP server.
#[derive(Debug, Clone, Copy)]
pub struct TcpConfig {
    /// A connection with no complete query for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            idle_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// Serves `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<Handler>,
    metrics: DnsMetrics,
    config: TcpConfig,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "tcp connection cap reached; closing");
            drop(stream);
            continue;
        };
        let (handler, metrics, shutdown) = (handler.clone(), metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut metrics = WorkerMetrics::new(metrics, "tcp");
            let v6 = peer.is_ipv6();
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = connection(stream, &handler, &mut metrics, v6, config.idle_timeout) => {}
            }
            drop(permit);
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    handler: &Handler,
    metrics: &mut WorkerMetrics,
    v6: bool,
    idle: Duration,
) {
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    let mut packet = Vec::new();
    loop {
        let read = tokio::time::timeout(idle, read_message(&mut stream, &mut packet)).await;
        if !matches!(read, Ok(Ok(()))) {
            return;
        }
        let started = Instant::now();
        let (rcode, qtype) = match handler.handle(&packet, Transport::Tcp, &mut scratch, &mut out) {
            Step::Reply { rcode, qtype } => (rcode, qtype),
            Step::Drop => {
                metrics.dropped();
                continue;
            }
            Step::Forward(pending) => {
                let (bytes, rcode) = handler.forward(&packet, &pending, Transport::Tcp).await;
                out = bytes;
                (rcode, pending.query.qtype)
            }
        };
        if write_message(&mut stream, &out).await.is_err() {
            return;
        }
        metrics.record(v6, qtype, rcode, started.elapsed());
    }
}

async fn read_message(stream: &mut TcpStream, packet: &mut Vec<u8>) -> std::io::Result<()> {
    let len = stream.read_u16().await? as usize;
    packet.resize(len, 0);
    stream.read_exact(packet).await?;
    Ok(())
}

async fn write_message(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).unwrap_or(u16::MAX);
    let mut frame = Vec::with_capacity(message.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&message[..len as usize]);
    stream.write_all(&frame).await
}
