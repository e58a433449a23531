//! The queries the bench sends: the pod-like query mix, A-only files for dnsperf, and just enough
//! DNS wire format to encode queries and read A answers, plus a blocking client for single queries.

#[allow(clippy::wildcard_imports)]
use crate::*;

#[derive(Debug, Clone)]
pub(crate) struct Query {
    pub(crate) name: String,
    pub(crate) qtype: u16,
}

/// What pods with `ndots:5` and the usual search path send: ~40% A of ClusterIP Services, ~10%
/// SRV of named ports, ~10% A of headless Services, ~40% NXDOMAIN search-path expansions.
pub(crate) fn mix_queries(catalog: &Catalog, rng: &mut Rng, count: usize) -> Vec<Query> {
    let all: Vec<&Service> = catalog.services().collect();
    let cluster_ip: Vec<&Service> = all.iter().copied().filter(|s| !s.headless()).collect();
    let headless: Vec<&Service> = all.iter().copied().filter(|s| s.headless()).collect();
    let namespaces: Vec<&str> = catalog.namespaces.iter().map(|n| n.name.as_str()).collect();
    (0..count)
        .map(|_| match rng.below(100) {
            0..40 => a_query(pick(rng, &cluster_ip, &all)),
            40..50 => {
                let service = all[rng.index(all.len())];
                let port = rng.index(service.ports.len());
                Query {
                    name: srv_name(service, port),
                    qtype: TYPE_SRV,
                }
            }
            50..60 => a_query(pick(rng, &headless, &all)),
            _ => search_expansion(
                pick(rng, &cluster_ip, &all),
                namespaces[rng.index(namespaces.len())],
                rng,
            ),
        })
        .collect()
}

/// A of existing ClusterIP Services only.
pub(crate) fn cluster_ip_queries(catalog: &Catalog, rng: &mut Rng, count: usize) -> Vec<Query> {
    let all: Vec<&Service> = catalog.services().collect();
    let cluster_ip: Vec<&Service> = all.iter().copied().filter(|s| !s.headless()).collect();
    (0..count)
        .map(|_| a_query(pick(rng, &cluster_ip, &all)))
        .collect()
}

/// A random item of `list`, or of `fallback` when `list` is empty.
pub(crate) fn pick<'a>(
    rng: &mut Rng,
    list: &[&'a Service],
    fallback: &[&'a Service],
) -> &'a Service {
    let list = if list.is_empty() { fallback } else { list };
    list[rng.index(list.len())]
}

pub(crate) fn a_query(service: &Service) -> Query {
    Query {
        name: service.fqdn(ZONE),
        qtype: TYPE_A,
    }
}

pub(crate) fn srv_name(service: &Service, port: usize) -> String {
    let port = &service.ports[port];
    let protocol = port.protocol.to_ascii_lowercase();
    format!("_{}._{protocol}.{}", port.name, service.fqdn(ZONE))
}

/// One of the names a resolver tries before the right one, from a pod in `client_ns`: the
/// Service's FQDN or `<svc>.<ns>` with a search domain appended. All are NXDOMAIN.
pub(crate) fn search_expansion(service: &Service, client_ns: &str, rng: &mut Rng) -> Query {
    let fqdn = service.fqdn(ZONE);
    let name = match rng.below(4) {
        0 => format!("{fqdn}.{client_ns}.svc.{ZONE}"),
        1 => format!("{fqdn}.svc.{ZONE}"),
        2 => format!("{fqdn}.{ZONE}"),
        _ => format!(
            "{}.{}.{client_ns}.svc.{ZONE}",
            service.name, service.namespace
        ),
    };
    Query {
        name,
        qtype: TYPE_A,
    }
}

pub(crate) fn write_dnsperf_file(path: &Path, queries: &[Query]) -> Result<PathBuf> {
    let mut text = String::with_capacity(queries.len() * 64);
    for q in queries {
        let ty = if q.qtype == TYPE_SRV { "SRV" } else { "A" };
        let _ = writeln!(text, "{} {ty}", q.name);
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_path_buf())
}

// ---------------------------------------------------------------------------------------------
// DNS wire: just enough to send queries and read A answers
// ---------------------------------------------------------------------------------------------

/// A query with RD set, no EDNS (as glibc's stub resolver sends by default).
pub(crate) fn encode_query(name: &str, qtype: u16, id: u16) -> Vec<u8> {
    let mut packet = Vec::with_capacity(name.len() + 18);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    packet
}

/// What a response says, as far as the bench cares.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) rcode: u8,
    pub(crate) answers: u16,
    pub(crate) a: Vec<Ipv4Addr>,
}

pub(crate) fn decode_answer(packet: &[u8]) -> Result<Answer> {
    ensure!(packet.len() >= 12, "short response");
    let be16 = |at: usize| -> Result<u16> {
        let bytes = packet.get(at..at + 2).context("truncated response")?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    };
    let mut answer = Answer {
        rcode: packet[3] & 0x0f,
        answers: be16(6)?,
        a: Vec::new(),
    };
    let mut at = skip_name(packet, 12)? + 4;
    for _ in 0..answer.answers {
        at = skip_name(packet, at)?;
        let (rtype, len) = (be16(at)?, usize::from(be16(at + 8)?));
        let data = packet
            .get(at + 10..at + 10 + len)
            .context("truncated record")?;
        if rtype == TYPE_A && len == 4 {
            answer
                .a
                .push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    Ok(answer)
}

pub(crate) fn skip_name(packet: &[u8], mut at: usize) -> Result<usize> {
    loop {
        let len = *packet.get(at).context("truncated name")?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => return Ok(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

/// A blocking UDP client for single queries.
pub(crate) struct Client {
    pub(crate) socket: UdpSocket,
    pub(crate) id: std::cell::Cell<u16>,
}

impl Client {
    pub(crate) fn new(server: SocketAddr) -> Result<Client> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.connect(server)?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(Client {
            socket,
            id: std::cell::Cell::new(1),
        })
    }

    /// Sends one query and waits for its response (three tries).
    pub(crate) fn query(&self, name: &str, qtype: u16) -> Result<Answer> {
        let id = self.id.get().wrapping_add(1);
        self.id.set(id);
        let packet = encode_query(name, qtype, id);
        let mut buf = [0u8; 4096];
        for _ in 0..3 {
            self.socket.send(&packet)?;
            loop {
                match self.socket.recv(&mut buf) {
                    Ok(n) if n >= 2 && buf[..2] == id.to_be_bytes() => {
                        return decode_answer(&buf[..n]);
                    }
                    Ok(_) => continue,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        bail!(
            "no answer for {name} from {:?}",
            self.socket.peer_addr().ok()
        )
    }

    /// Queries `name` until its A records include `ip`; how long that took from `since`.
    pub(crate) fn wait_for_a(
        &self,
        name: &str,
        ip: Ipv4Addr,
        since: Instant,
        timeout: Duration,
    ) -> Result<Duration> {
        loop {
            if self.query(name, TYPE_A)?.a.contains(&ip) {
                return Ok(since.elapsed());
            }
            ensure!(
                since.elapsed() < timeout,
                "{name} did not resolve to {ip} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}
