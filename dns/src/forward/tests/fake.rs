//! A scriptable upstream resolver on 127.0.0.1 (UDP and TCP on one port) for
//! the forwarder's tests. It records every query it receives.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// The address every normal answer carries.
pub const ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The address only the TCP answer of [`Behavior::Truncate`] carries.
pub const TCP_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
/// The address spoofed replies carry.
pub const SPOOFED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);

/// How the fake upstream answers.
#[derive(Debug, Clone, Copy)]
pub enum Behavior {
    /// Two A records, TTLs `ttl` and `ttl + 100`, after `delay`.
    Answer { ttl: u32, delay: Duration },
    /// Over UDP an empty reply with TC set; over TCP the answer.
    Truncate { ttl: u32 },
    /// Spoofed replies first (wrong ID, wrong question, not a response, from
    /// another port), then the real answer.
    SpoofFirst { ttl: u32 },
    /// Never replies.
    Silent,
    /// NXDOMAIN with an SOA in the authority section.
    NxDomain { soa_ttl: u32, minimum: u32 },
    /// Only this rcode, no records.
    Rcode(ResponseCode),
}

impl Behavior {
    /// An immediate answer with TTL `ttl`.
    pub fn answer(ttl: u32) -> Self {
        Self::Answer {
            ttl,
            delay: Duration::ZERO,
        }
    }
}

/// Which transport a query came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One query the fake upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub transport: Transport,
    pub from: SocketAddr,
    pub query: Message,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A running fake upstream; stops when dropped.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    log: Log,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl FakeUpstream {
    /// Starts answering on 127.0.0.1, UDP and TCP on the same random port.
    pub async fn start(behavior: Behavior) -> Self {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().unwrap();
        let log = Log::default();
        let tasks = vec![
            tokio::spawn(serve_udp(Arc::new(udp), behavior, log.clone())),
            tokio::spawn(serve_tcp(tcp, behavior, log.clone())),
        ];
        Self { addr, log, tasks }
    }

    /// Every query received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// How many queries came over `transport`.
    pub fn count(&self, transport: Transport) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.transport == transport)
            .count()
    }
}

/// An address nothing listens on (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.local_addr().unwrap()
}

async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP");
}

fn record(log: &Log, transport: Transport, from: SocketAddr, query: &Message) {
    let seen = Seen {
        transport,
        from,
        query: query.clone(),
    };
    log.lock().unwrap().push(seen);
}

async fn serve_udp(socket: Arc<UdpSocket>, behavior: Behavior, log: Log) {
    let mut buf = vec![0; 65_535];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        record(&log, Transport::Udp, from, &query);
        tokio::spawn(answer_udp(socket.clone(), from, query, behavior));
    }
}

async fn answer_udp(socket: Arc<UdpSocket>, to: SocketAddr, query: Message, behavior: Behavior) {
    let send = |message: Message| {
        let socket = socket.clone();
        async move {
            socket
                .send_to(&message.to_vec().unwrap(), to)
                .await
                .unwrap();
        }
    };
    match behavior {
        Behavior::Silent => {}
        Behavior::Answer { ttl, delay } => {
            tokio::time::sleep(delay).await;
            send(answer(&query, ttl, ANSWER)).await;
        }
        Behavior::Truncate { .. } => {
            let mut reply = reply_to(&query, ResponseCode::NoError);
            reply.metadata.truncation = true;
            send(reply).await;
        }
        Behavior::SpoofFirst { ttl } => {
            for spoof in spoofs(&query, ttl) {
                send(spoof).await;
            }
            let elsewhere = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let forged = answer(&query, ttl, SPOOFED).to_vec().unwrap();
            elsewhere.send_to(&forged, to).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            send(answer(&query, ttl, ANSWER)).await;
        }
        Behavior::NxDomain { soa_ttl, minimum } => send(nxdomain(&query, soa_ttl, minimum)).await,
        Behavior::Rcode(code) => send(reply_to(&query, code)).await,
    }
}

/// Replies from the right address that must still be rejected.
fn spoofs(query: &Message, ttl: u32) -> Vec<Message> {
    let mut wrong_id = answer(query, ttl, SPOOFED);
    wrong_id.metadata.id = query.metadata.id.wrapping_add(1);
    let mut wrong_question = answer(query, ttl, SPOOFED);
    wrong_question.queries[0].set_name(Name::from_ascii("evil.example.").unwrap());
    let mut not_response = answer(query, ttl, SPOOFED);
    not_response.metadata.message_type = MessageType::Query;
    vec![wrong_id, wrong_question, not_response]
}

async fn serve_tcp(listener: TcpListener, behavior: Behavior, log: Log) {
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            return;
        };
        tokio::spawn(serve_tcp_stream(stream, from, behavior, log.clone()));
    }
}

async fn serve_tcp_stream(mut stream: TcpStream, from: SocketAddr, behavior: Behavior, log: Log) {
    loop {
        let mut len = [0; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut body = vec![0; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let query = Message::from_vec(&body).unwrap();
        record(&log, Transport::Tcp, from, &query);
        let reply = match behavior {
            Behavior::Silent => continue,
            Behavior::Truncate { ttl } => answer(&query, ttl, TCP_ANSWER),
            Behavior::NxDomain { soa_ttl, minimum } => nxdomain(&query, soa_ttl, minimum),
            Behavior::Rcode(code) => reply_to(&query, code),
            Behavior::Answer { ttl, .. } | Behavior::SpoofFirst { ttl } => {
                answer(&query, ttl, ANSWER)
            }
        };
        let wire = reply.to_vec().unwrap();
        let mut framed = u16::try_from(wire.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&wire);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// A bare reply: the query's ID and question, RA set, OPT echoed.
fn reply_to(query: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = code;
    reply.queries = query.queries.clone();
    if let Some(edns) = &query.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(1232);
        ours.set_dnssec_ok(edns.flags().dnssec_ok);
        reply.set_edns(ours);
    }
    reply
}

/// Two A records for the question's name (as the query wrote it).
fn answer(query: &Message, ttl: u32, address: Ipv4Addr) -> Message {
    let mut reply = reply_to(query, ResponseCode::NoError);
    let name = query.queries[0].name().clone();
    let second = Ipv4Addr::from(u32::from(address) + 1);
    reply.add_answer(Record::from_rdata(name.clone(), ttl, RData::A(A(address))));
    reply.add_answer(Record::from_rdata(name, ttl + 100, RData::A(A(second))));
    reply
}

fn nxdomain(query: &Message, soa_ttl: u32, minimum: u32) -> Message {
    let mut reply = reply_to(query, ResponseCode::NXDomain);
    let zone = Name::from_ascii("example.").unwrap();
    let mname = Name::from_ascii("ns.example.").unwrap();
    let rname = Name::from_ascii("admin.example.").unwrap();
    let soa = SOA::new(mname, rname, 1, 7200, 900, 1_209_600, minimum);
    reply.add_authority(Record::from_rdata(zone, soa_ttl, RData::SOA(soa)));
    reply
}
