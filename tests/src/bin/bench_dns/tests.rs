use super::*;

#[test]
fn parses_dnsperf_statistics() -> Result<()> {
    let text = "Statistics:\n\n  Queries sent:         1500000\n  Queries completed:    1499990 (100.00%)\n  Queries lost:         10 (0.25%)\n\n  Response codes:       NOERROR 900000 (60.00%), NXDOMAIN 599990 (40.00%)\n  Average packet size:  request 50, response 100\n  Run time (s):         10.000000\n  Queries per second:   149999.000000\n\n  Average Latency (s):  0.000500 (min 0.000010, max 0.010000)\n  Latency StdDev (s):   0.000100\n";
    let d = parse_dnsperf(text)?;
    assert_eq!(d.qps, 149999.0);
    assert_eq!(d.avg_latency_s, 0.0005);
    assert_eq!(d.lost_percent, 0.25);
    assert!(d.rcodes.starts_with("NOERROR 900000"));
    Ok(())
}

#[test]
fn decodes_a_answers_with_compression() -> Result<()> {
    let mut packet = encode_query("a.b", TYPE_A, 7);
    packet[2] |= 0x80;
    packet[7] = 2;
    for last in [9u8, 10] {
        packet.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 96, 0, last]);
    }
    let answer = decode_answer(&packet)?;
    assert_eq!(
        answer.a,
        [Ipv4Addr::new(10, 96, 0, 9), Ipv4Addr::new(10, 96, 0, 10)]
    );
    assert_eq!(answer.rcode, 0);
    Ok(())
}

#[test]
fn query_mix_has_the_intended_shares() {
    let catalog = Catalog::generate(&Spec::new(500, 2));
    let queries = mix_queries(&catalog, &mut Rng::new(1), 10_000);
    let srv = queries.iter().filter(|q| q.qtype == TYPE_SRV).count();
    // `<svc>.<ns>.svc.cluster.local` has 5 labels; every expansion has more.
    let expansions = queries
        .iter()
        .filter(|q| q.qtype == TYPE_A && q.name.split('.').count() > 5)
        .count();
    assert!((800..1200).contains(&srv), "{srv} SRV");
    assert!(
        (3000..4400).contains(&expansions),
        "{expansions} expansions"
    );
}

#[test]
fn parses_sizes() -> Result<()> {
    let sizes = parse_sizes("10000x5,50000x5")?;
    assert_eq!((sizes[1].services, sizes[1].endpoints), (50000, 5));
    assert!(parse_sizes("100").is_err());
    Ok(())
}

#[test]
fn loopback_datagrams_carry_kernel_receive_stamps() -> Result<()> {
    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    rxstamp::enable(&receiver)?;
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    let before = rxstamp::now_ns();
    sender.send_to(b"ping", receiver.local_addr()?)?;
    std::thread::sleep(Duration::from_millis(20));
    let mut buf = [0u8; 16];
    let (n, stamp) = rxstamp::recv(&receiver, &mut buf)?;
    let after = rxstamp::now_ns();
    assert_eq!(&buf[..n], b"ping");
    let stamp = stamp.context("no SCM_TIMESTAMPNS message")?;
    assert!(
        before <= stamp && stamp <= after,
        "{before} <= {stamp} <= {after}"
    );
    // Stamped on arrival, not when read 20 ms later.
    assert!(
        after - stamp >= 15_000_000,
        "stamped {} ns before the read",
        after - stamp
    );
    Ok(())
}
