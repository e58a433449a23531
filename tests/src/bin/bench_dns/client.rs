//! The open-loop latency client: queries at a fixed rate from one busy-polling thread, each
//! response's latency measured from its send time to the kernel's receive timestamp, and the
//! stretches of slow responses (stalls).

#[allow(clippy::wildcard_imports)]
use crate::*;

#[derive(Debug, Clone)]
pub(crate) struct Latency {
    /// Whether the server's CPU was isolated for this run (`--isolate`).
    pub(crate) isolated: bool,
    pub(crate) target_qps: f64,
    pub(crate) achieved_qps: f64,
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) p999: Duration,
    pub(crate) max: Duration,
    pub(crate) server: CpuShare,
    /// This process (the client) on CPU 0: its wait share says how much others disturbed it.
    pub(crate) client: CpuShare,
    pub(crate) send_errors: u64,
    pub(crate) drops: Drops,
    pub(crate) stalls: Vec<Stall>,
}

/// Client sockets of [`fixed_rate`]: each has its own receive buffer and ID space, so a client
/// descheduled for a few milliseconds does not overflow one small default buffer.
pub(crate) const CLIENT_SOCKETS: usize = 8;

/// Sends `queries` round-robin at `rate` per second for `duration` from one busy-polling thread
/// (no wake-up latency of its own) over [`CLIENT_SOCKETS`] sockets, and records each response's
/// latency from its actual send time to the kernel's receive stamp ([`rxstamp`]). A client that
/// falls behind catches up at twice the rate. Queries are matched by socket and ID; a response arriving
/// after its ID was reused (524,288 queries later) is not counted.
pub(crate) fn fixed_rate(
    dns: SocketAddr,
    queries: &[Query],
    rate: f64,
    duration: Duration,
) -> Result<Latency> {
    ensure!(!queries.is_empty(), "no queries");
    let sockets = (0..CLIENT_SOCKETS)
        .map(|_| {
            let socket = UdpSocket::bind("127.0.0.1:0")?;
            socket.connect(dns)?;
            socket.set_nonblocking(true)?;
            rxstamp::enable(&socket)?;
            Ok(socket)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut packets: Vec<Vec<u8>> = queries
        .iter()
        .map(|q| encode_query(&q.name, q.qtype, 0))
        .collect();
    let total = (rate * duration.as_secs_f64()) as u64;
    let interval_ns = 1e9 / rate;
    let drops = Drops::now(dns.port())?;
    let mut state = Flight::new(total as usize);
    let start = Instant::now();
    let base = rxstamp::now_ns();
    let give_up = duration + Duration::from_secs(2);
    // After the client itself was descheduled, the queries it owes are sent at twice the rate
    // rather than in one burst: a burst would queue at the server and show the client's own
    // stall as server latency.
    let catch_up_ns = (interval_ns / 2.0) as u128;
    let mut next_allowed = 0u128;
    trace_mark(&format!(
        "svcplane-bench-dns: latency run starts at {rate:.0} qps"
    ));
    while state.received < state.sent || state.sent < total {
        let now = start.elapsed();
        let now_ns = now.as_nanos();
        let due = (state.sent as f64 * interval_ns) as u128;
        if state.sent < total && due <= now_ns && next_allowed <= now_ns {
            let packet = &mut packets[(state.sent % queries.len() as u64) as usize];
            state.send(&sockets, packet, base)?;
            next_allowed = now_ns + catch_up_ns;
        }
        let mut received = 0;
        for (index, socket) in sockets.iter().enumerate() {
            received += state.receive(index, socket, base)?;
        }
        if received == 0 {
            // Busy-polling without starving what shares CPU 0: on loopback that includes
            // ksoftirqd, which delivers the packets when softirq work is deferred.
            std::thread::yield_now();
        }
        if now > give_up {
            break;
        }
    }
    // Before the sockets close: their drop counts go with them.
    state.drops = drops.since(dns.port())?;
    let elapsed = start
        .elapsed()
        .min(duration + Duration::from_millis(1))
        .as_secs_f64();
    Ok(state.summary(rate, elapsed))
}

/// Queries in flight and latencies seen by [`fixed_rate`].
pub(crate) struct Flight {
    /// Send time (ns since start, +1; 0 = none outstanding) per socket and query ID.
    pub(crate) sent_at: Vec<u64>,
    pub(crate) latencies: Vec<u64>,
    /// (send time, latency) in ns of the responses slower than [`SLOW`].
    pub(crate) slow: Vec<(u64, u64)>,
    pub(crate) sent: u64,
    pub(crate) received: u64,
    /// Sends refused with EAGAIN (the query is lost).
    pub(crate) send_errors: u64,
    pub(crate) drops: Drops,
    pub(crate) buf: [u8; 1500],
}

impl Flight {
    pub(crate) fn new(expected: usize) -> Flight {
        Flight {
            sent_at: vec![0; CLIENT_SOCKETS << 16],
            latencies: Vec::with_capacity(expected),
            slow: Vec::new(),
            sent: 0,
            received: 0,
            send_errors: 0,
            drops: Drops::default(),
            buf: [0; 1500],
        }
    }

    /// Sends `packet` on the next socket with the next ID, stamped in ns since `base`.
    pub(crate) fn send(
        &mut self,
        sockets: &[UdpSocket],
        packet: &mut [u8],
        base: u64,
    ) -> Result<()> {
        let index = (self.sent % sockets.len() as u64) as usize;
        let id = ((self.sent / sockets.len() as u64) & 0xffff) as u16;
        packet[..2].copy_from_slice(&id.to_be_bytes());
        self.sent_at[index << 16 | usize::from(id)] = rxstamp::now_ns().saturating_sub(base) + 1;
        self.sent += 1;
        match sockets[index].send(packet) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.send_errors += 1;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads every response waiting on socket `index`; how many there were.
    pub(crate) fn receive(&mut self, index: usize, socket: &UdpSocket, base: u64) -> Result<usize> {
        let mut count = 0;
        loop {
            let (n, stamp) = match rxstamp::recv(socket, &mut self.buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(count),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    bail!("the server is gone")
                }
                Err(e) => return Err(e.into()),
            };
            let now = stamp.unwrap_or_else(rxstamp::now_ns).saturating_sub(base);
            count += 1;
            if n < 2 {
                continue;
            }
            let id = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
            let sent = std::mem::take(&mut self.sent_at[index << 16 | id]);
            if sent > 0 {
                let latency = now.saturating_sub(sent - 1);
                self.latencies.push(latency);
                if latency > SLOW.as_nanos() as u64 {
                    self.slow.push((sent - 1, latency));
                }
                self.received += 1;
            }
        }
    }

    pub(crate) fn summary(mut self, rate: f64, elapsed_s: f64) -> Latency {
        self.latencies.sort_unstable();
        let at = |q: f64| -> Duration {
            let n = self.latencies.len();
            if n == 0 {
                return Duration::ZERO;
            }
            let index = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            Duration::from_nanos(self.latencies[index])
        };
        Latency {
            isolated: false,
            target_qps: rate,
            achieved_qps: self.sent as f64 / elapsed_s,
            sent: self.sent,
            received: self.received,
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
            server: CpuShare::default(),
            client: CpuShare::default(),
            send_errors: self.send_errors,
            drops: self.drops,
            stalls: stalls(&self.slow),
        }
    }
}

pub(crate) fn print_stalls(stalls: &[Stall]) {
    let list: Vec<String> = stalls
        .iter()
        .take(40)
        .map(|s| format!("{:.3}s:{}ms", s.at.as_secs_f64(), ms(s.worst)))
        .collect();
    eprintln!(
        "stalls (responses > {SLOW:?}; send time: worst latency): {} {}",
        stalls.len(),
        list.join(" ")
    );
}

/// A response slower than this is part of a stall.
pub(crate) const SLOW: Duration = Duration::from_millis(1);

/// A stretch of slow responses: queries sent within 50 ms of each other that all took more than
/// [`SLOW`] (a server descheduled, or busy with something else).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stall {
    /// Send time of the first slow query, since the start of the run.
    pub(crate) at: Duration,
    pub(crate) worst: Duration,
}

pub(crate) fn stalls(slow: &[(u64, u64)]) -> Vec<Stall> {
    const JOIN_NS: u64 = 50_000_000;
    let mut sorted = slow.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<Stall> = Vec::new();
    let mut last_ns = 0;
    for (sent, latency) in sorted {
        let latency = Duration::from_nanos(latency);
        match out.last_mut() {
            Some(stall) if sent - last_ns <= JOIN_NS => stall.worst = stall.worst.max(latency),
            _ => out.push(Stall {
                at: Duration::from_nanos(sent),
                worst: latency,
            }),
        }
        last_ns = sent;
    }
    out
}
