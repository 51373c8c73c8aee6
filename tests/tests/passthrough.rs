//! The plain TCP path through one node: SOCKS5 and captured outbound/inbound, relay
//! semantics, bad input, drain and reload. Every test ends with the node's open
//! connection gauge back at zero.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use zpath_tests::echo::{serve_with, EchoServer};
use zpath_tests::{pattern, roundtrip, socks5, Node, NodeOptions};

fn node() -> Node {
    Node::start(NodeOptions::default())
}

#[test]
fn socks5_bytes_in_equal_bytes_out_from_1_byte_to_64_mib() {
    let n = node();
    let echo = EchoServer::start("127.0.0.1:0");
    for (i, size) in [1usize, 1000, 65_543, 1 << 20, 64 << 20]
        .into_iter()
        .enumerate()
    {
        let s = socks5::connect(n.socks5, echo.addr).unwrap().unwrap();
        let data = pattern(size, i as u8);
        let got = roundtrip(s, &data);
        assert_eq!(got.len(), data.len(), "size {size}");
        assert!(got == data, "bytes differ for size {size}");
    }
    n.assert_no_open_connections();
    assert_eq!(
        n.metric("istio_tcp_connections_opened_total{reporter=\"source\""),
        5
    );
    assert_eq!(
        n.metric("istio_tcp_connections_closed_total{reporter=\"source\""),
        5
    );
    let expected: u64 = [1u64, 1000, 65_543, 1 << 20, 64 << 20].iter().sum();
    assert_eq!(
        n.metric("istio_tcp_received_bytes_total{reporter=\"source\""),
        expected
    );
    assert_eq!(
        n.metric("istio_tcp_sent_bytes_total{reporter=\"source\""),
        expected
    );
}

#[test]
fn half_close_from_client_keeps_server_to_client_open() {
    let n = node();
    // The server reads until the client's FIN, then answers and closes.
    let server = serve_with(TcpListener::bind("127.0.0.1:0").unwrap(), |mut c| {
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        c.write_all(format!("got {} bytes", got.len()).as_bytes())
            .unwrap();
    });
    let mut s = socks5::connect(n.socks5, server).unwrap().unwrap();
    s.write_all(&[7u8; 5000]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "got 5000 bytes");
    drop(s);
    n.assert_no_open_connections();
}

#[test]
fn half_close_from_server_keeps_client_to_server_open() {
    let n = node();
    // The server says hello and closes its write side at once, then keeps reading.
    let server = serve_with(TcpListener::bind("127.0.0.1:0").unwrap(), |mut c| {
        c.write_all(b"hello").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 100_000);
    });
    let mut s = socks5::connect(n.socks5, server).unwrap().unwrap();
    let mut hello = Vec::new();
    s.read_to_end(&mut hello).unwrap();
    assert_eq!(hello, b"hello");
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(&pattern(100_000, 1)).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    n.assert_no_open_connections();
    assert_eq!(
        n.metric("istio_tcp_received_bytes_total{reporter=\"source\""),
        100_000
    );
}

#[test]
fn thousand_concurrent_connections_spread_over_shards() {
    // Hashing spreads one client's connections; steering by CPU would keep a client
    // thread's connections on its CPU's shard.
    let n = Node::start(NodeOptions {
        args: vec!["--steering".into(), "hash".into()],
        ..NodeOptions::default()
    });
    let echo = EchoServer::start("127.0.0.1:0");
    let mut conns = Vec::new();
    for _ in 0..1000 {
        let mut s = socks5::connect(n.socks5, echo.addr).unwrap().unwrap();
        s.write_all(b"ping").unwrap();
        conns.push(s);
    }
    for s in &mut conns {
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
    }
    let text = n.metrics_text();
    let per_shard: Vec<u64> = (0..2)
        .map(|i| {
            zpath_tests::node::sum_metric(
                &text,
                &format!("zpath_open_connections{{shard=\"{i}\"}}"),
            )
        })
        .collect();
    assert_eq!(per_shard.iter().sum::<u64>(), 1000, "{text}");
    assert!(
        per_shard.iter().all(|&c| c > 0),
        "all connections on one shard: {per_shard:?}"
    );
    drop(conns);
    n.assert_no_open_connections();
}

#[test]
fn server_reset_reaches_the_client_as_reset() {
    let n = node();
    let server = serve_with(TcpListener::bind("127.0.0.1:0").unwrap(), |mut c| {
        let mut b = [0u8; 3];
        c.read_exact(&mut b).unwrap();
        socket_reset(&c);
    });
    let mut s = socks5::connect(n.socks5, server).unwrap().unwrap();
    s.write_all(b"abc").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 16];
    let err = loop {
        match s.read(&mut b) {
            Err(e) => break e,
            Ok(0) => panic!("got a FIN, expected a reset"),
            Ok(_) => {}
        }
    };
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    n.assert_no_open_connections();
    assert_eq!(
        n.metric("zpath_connections_failed_total{direction=\"outbound\",reason=\"reset\"}"),
        1
    );
}

#[test]
fn client_reset_reaches_the_server_as_reset() {
    let n = node();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = serve_with(TcpListener::bind("127.0.0.1:0").unwrap(), move |mut c| {
        let mut b = [0u8; 16];
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = loop {
            match c.read(&mut b) {
                Ok(0) => break Ok(()),
                Ok(_) => continue,
                Err(e) => break Err(e.kind()),
            }
        };
        let _ = tx.send(r);
    });
    let mut s = socks5::connect(n.socks5, server).unwrap().unwrap();
    s.write_all(b"abc").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    socket_reset(&s);
    drop(s);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Err(ErrorKind::ConnectionReset)
    );
    n.assert_no_open_connections();
}

fn socket_reset(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a correctly sized linger value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
    // The caller drops the socket: close() with a zero linger sends RST.
}

#[test]
fn unreachable_destination_is_refused_and_counted() {
    let n = node();
    // A port nobody listens on.
    let closed: SocketAddr = format!("127.0.0.1:{}", zpath_tests::free_port())
        .parse()
        .unwrap();
    let reply = socks5::connect(n.socks5, closed).unwrap().unwrap_err();
    assert_eq!(reply, 5, "connection refused");
    n.assert_no_open_connections();
    assert_eq!(
        n.metric(
            "zpath_connections_failed_total{direction=\"outbound\",reason=\"upstream_connect\"}"
        ),
        1
    );
}

#[test]
fn socks5_garbage_is_closed_and_counted() {
    let n = node();
    let mut s = TcpStream::connect(n.socks5).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "no SOCKS5 reply exists for a wrong version: {rest:?}"
    );
    n.assert_no_open_connections();
    assert_eq!(
        n.metric("zpath_connections_failed_total{direction=\"outbound\",reason=\"socks5\"}"),
        1
    );
}

#[test]
fn socks5_unsupported_command_gets_reply_7() {
    let n = node();
    let mut s = TcpStream::connect(n.socks5).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut g = [0u8; 2];
    s.read_exact(&mut g).unwrap();
    s.write_all(&[5, 2, 0, 1, 127, 0, 0, 1, 0, 80]).unwrap(); // BIND
    let mut r = [0u8; 10];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[1], 7);
    assert_eq!(
        s.read(&mut r).unwrap_or(0),
        0,
        "closed after the error reply"
    );
    n.assert_no_open_connections();
}

#[test]
fn socks5_without_no_auth_method_gets_ff() {
    let n = node();
    let mut s = TcpStream::connect(n.socks5).unwrap();
    s.write_all(&[5, 1, 2]).unwrap(); // username/password only
    let mut g = [0u8; 2];
    s.read_exact(&mut g).unwrap();
    assert_eq!(g, [5, 0xFF]);
    n.assert_no_open_connections();
}

#[test]
fn socks5_truncated_greeting_times_out_and_is_closed() {
    let n = Node::start(NodeOptions {
        args: vec!["--socks5-handshake-timeout".into(), "300ms".into()],
        ..NodeOptions::default()
    });
    let mut s = TcpStream::connect(n.socks5).unwrap();
    s.write_all(&[5, 2]).unwrap(); // promises two methods, sends none
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut b = [0u8; 4];
    let r = s.read(&mut b);
    assert!(matches!(r, Ok(0)) || r.is_err(), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "closed by the handshake timeout"
    );
    n.assert_no_open_connections();
    assert_eq!(
        n.metric("zpath_connections_failed_total{direction=\"outbound\",reason=\"socks5\"}"),
        1
    );
}

#[test]
fn socks5_domain_target_is_resolved() {
    let n = node();
    let echo = EchoServer::start("127.0.0.1:0");
    let mut s = TcpStream::connect(n.socks5).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut g = [0u8; 2];
    s.read_exact(&mut g).unwrap();
    let mut req = vec![5, 1, 0, 3, 9];
    req.extend_from_slice(b"localhost");
    req.extend_from_slice(&echo.addr.port().to_be_bytes());
    s.write_all(&req).unwrap();
    let mut r = [0u8; 10];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[1], 0, "localhost resolves and connects");
    assert_eq!(roundtrip(s, b"hi"), b"hi");
    n.assert_no_open_connections();
}

#[test]
fn socks5_target_that_is_zpath_itself_is_refused() {
    let n = node();
    let reply = socks5::connect(n.socks5, n.socks5).unwrap().unwrap_err();
    assert_eq!(reply, 2, "not allowed");
    n.assert_no_open_connections();
    assert_eq!(
        n.metric("zpath_connections_failed_total{direction=\"outbound\",reason=\"loop\"}"),
        1
    );
}

#[test]
fn socks5_wildcard_targets_and_our_own_addresses_are_refused_as_a_loop() {
    let n = node();
    let port = n.socks5.port();
    let targets: [SocketAddr; 4] = [
        SocketAddr::from(([0, 0, 0, 0], port)),
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
        // The SOCKS5 listener itself is the test above; these are our other listeners.
        n.outbound,
        n.inbound,
    ];
    for target in targets {
        let reply = socks5::connect(n.socks5, target).unwrap().unwrap_err();
        assert_eq!(reply, 2, "{target}: not allowed");
    }
    // Our listeners are on 127.0.0.1 only: the same port on 127.0.0.2 is someone
    // else's (here nobody's), a destination like any other.
    let elsewhere = SocketAddr::from(([127, 0, 0, 2], port));
    let reply = socks5::connect(n.socks5, elsewhere).unwrap().unwrap_err();
    assert_ne!(reply, 2, "{elsewhere} is not zpath");
    n.assert_no_open_connections();
    assert_eq!(
        n.metric("zpath_connections_failed_total{direction=\"outbound\",reason=\"loop\"}"),
        4
    );
}

#[test]
fn direct_connection_to_outbound_port_is_refused_as_a_loop() {
    let n = node();
    let mut s = TcpStream::connect(n.outbound).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    let r = s.read(&mut b);
    assert!(matches!(r, Ok(0)) || r.is_err());
    n.assert_no_open_connections();
    let failed = n.metric("zpath_connections_failed_total{direction=\"outbound\",reason=\"loop\"}")
        + n.metric(
            "zpath_connections_failed_total{direction=\"outbound\",reason=\"no_original_dst\"}",
        );
    assert_eq!(failed, 1);
}

#[test]
fn drain_lets_an_in_flight_transfer_finish() {
    let mut n = node();
    let server = serve_with(TcpListener::bind("127.0.0.1:0").unwrap(), |mut c| {
        // Sends 8 MiB slowly: about one second.
        let data = pattern(8 << 20, 3);
        for chunk in data.chunks(256 * 1024) {
            c.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
    });
    let mut s = socks5::connect(n.socks5, server).unwrap().unwrap();
    let reading = std::thread::spawn(move || {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    std::thread::sleep(Duration::from_millis(200));
    n.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        TcpStream::connect(n.socks5).is_err(),
        "no new connections while draining"
    );
    let got = reading.join().unwrap();
    assert!(got == pattern(8 << 20, 3), "the transfer completed intact");
    let status = n.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

#[test]
fn drain_deadline_aborts_a_stuck_connection() {
    let mut n = Node::start(NodeOptions {
        args: vec!["--drain-deadline".into(), "500ms".into()],
        ..NodeOptions::default()
    });
    let echo = EchoServer::start("127.0.0.1:0");
    let mut s = socks5::connect(n.socks5, echo.addr).unwrap().unwrap();
    let started = Instant::now();
    n.signal(libc::SIGTERM);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    let r = s.read(&mut b);
    assert!(matches!(r, Ok(0)) || r.is_err(), "{r:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "not before the deadline"
    );
    let status = n.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

#[test]
fn invalid_config_at_start_exits_naming_the_field() {
    let mut n = Node::spawn(NodeOptions {
        config: "workloads:\n- name: a\n  namespace: default\n  workloadIps: [\"10.0.0.300\"]\n"
            .into(),
        ..NodeOptions::default()
    });
    let status = n.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2));
    let err = n.stderr();
    assert!(err.contains("workloads[0].workloadIps[0]"), "{err}");
    assert!(err.contains("line 4"), "{err}");
}

#[test]
fn config_reload_under_traffic_loses_nothing() {
    let n = node();
    let echo = EchoServer::start("127.0.0.1:0");
    let socks = n.socks5;
    let target = echo.addr;
    let traffic = std::thread::spawn(move || {
        let mut done = 0;
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            let s = socks5::connect(socks, target).unwrap().unwrap();
            let data = pattern(200_000, done as u8);
            assert!(roundtrip(s, &data) == data);
            done += 1;
        }
        done
    });
    // A long-lived connection that spans every reload.
    let mut long = socks5::connect(n.socks5, echo.addr).unwrap().unwrap();
    for i in 0..5 {
        let cfg = format!(
            "workloads:\n- name: w{i}\n  namespace: default\n  workloadIps: [\"10.1.0.{i}\"]\n"
        );
        std::fs::write(&n.config_path, cfg).unwrap();
        n.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(300));
        long.write_all(&[i as u8; 10]).unwrap();
        let mut b = [0u8; 10];
        long.read_exact(&mut b).unwrap();
        assert_eq!(b, [i as u8; 10]);
    }
    // A bad file keeps the last good snapshot.
    std::fs::write(&n.config_path, "workloads: [ {").unwrap();
    n.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(traffic.join().unwrap() > 0);
    drop(long);
    assert!(n.metric("zpath_config_loads_total{result=\"applied\"}") >= 6);
    assert!(n.metric("zpath_config_loads_total{result=\"rejected\"}") >= 1);
    let dump = n.config_dump();
    assert!(
        dump["snapshot"]["workloads"].to_string().contains("w4"),
        "{dump}"
    );
    n.assert_no_open_connections();
}

#[test]
fn socks5_data_pipelined_with_the_request_is_relayed_and_counted() {
    let n = node();
    let echo = EchoServer::start("127.0.0.1:0");
    let mut s = TcpStream::connect(n.socks5).unwrap();
    // Greeting, request and the first payload bytes in one write, before any answer.
    let mut burst = vec![5, 1, 0];
    burst.extend_from_slice(&socks5::request(echo.addr));
    burst.extend_from_slice(b"early");
    s.write_all(&burst).unwrap();
    let mut answers = [0u8; 12];
    s.read_exact(&mut answers).unwrap();
    assert_eq!(&answers[..3], &[5, 0, 5], "greeting accepted, then a reply");
    assert_eq!(answers[3], 0, "request succeeded");
    assert_eq!(roundtrip(s, b"late"), b"earlylate");
    n.assert_no_open_connections();
    assert_eq!(
        n.metric("istio_tcp_received_bytes_total{reporter=\"source\""),
        9
    );
    assert_eq!(
        n.metric("istio_tcp_sent_bytes_total{reporter=\"source\""),
        9
    );
}

#[test]
fn cpu_steering_puts_each_connection_on_the_shard_of_the_clients_cpu() {
    let cpus = zpath_engine::sys::allowed_cpus();
    if cpus.len() < 2 {
        eprintln!("skipped: steering by CPU needs two CPUs, this process has {cpus:?}");
        return;
    }
    let n = Node::start(NodeOptions {
        args: vec!["--steering".into(), "cpu".into()],
        ..NodeOptions::default()
    });
    let echo = EchoServer::start("127.0.0.1:0");
    // `--shards 2` runs shard i on the i-th allowed CPU.
    for (shard, &cpu) in cpus[..2].iter().enumerate() {
        let target = echo.addr;
        let socks = n.socks5;
        let conns = std::thread::spawn(move || {
            zpath_tests::pin_thread_to(cpu);
            (0..20)
                .map(|_| {
                    let mut s = socks5::connect(socks, target).unwrap().unwrap();
                    s.write_all(b"ping").unwrap();
                    let mut b = [0u8; 4];
                    s.read_exact(&mut b).unwrap();
                    s
                })
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        let text = n.metrics_text();
        let on = |i: usize| {
            zpath_tests::node::sum_metric(
                &text,
                &format!("zpath_open_connections{{shard=\"{i}\"}}"),
            )
        };
        assert_eq!(
            (on(shard), on(1 - shard)),
            (20, 0),
            "20 connections from CPU {cpu} belong on shard {shard}"
        );
        drop(conns);
        n.assert_no_open_connections();
    }
}

/// CPU time (user + system) the process `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces; the fields after it do not.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_node_holding_connections_does_not_spin() {
    let n = node();
    let echo = EchoServer::start("127.0.0.1:0");
    let held: Vec<TcpStream> = (0..50)
        .map(|i| {
            let mut s = socks5::connect(n.socks5, echo.addr).unwrap().unwrap();
            s.write_all(&[i as u8]).unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(n.pid());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(n.pid()) - before;
    // A loop that polled instead of waiting would use the whole 3 s (300 ticks); the
    // shards' once-a-second housekeeping costs next to nothing.
    assert!(used <= 10, "an idle node used {used} ticks of CPU in 3 s");
    drop(held);
    n.assert_no_open_connections();
}
