//! HBONE between two zpath nodes over real sockets and real TLS (root only: network
//! namespaces). Node A opens mTLS HTTP/2 tunnels to node B's port 15008; node B checks
//! each CONNECT and relays to the server workload.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;

use zpath_tests::echo::EchoServer;
use zpath_tests::mesh::{self, Mesh};
use zpath_tests::{connect_request, pattern, roundtrip, skip_unless_root, wait_for};

#[test]
fn bytes_cross_two_nodes_intact_from_1_byte_to_256_mib() {
    if skip_unless_root() {
        return;
    }
    let net = "10.79.0";
    let config = mesh::config(net, "");
    let m = Mesh::start("hbi", net, &config, None, &[], &[]);
    let echo = EchoServer::serve(m.server_listener());
    for (len, seed) in [
        (1usize, 1u8),
        (1000, 2),
        (64 << 10, 3),
        (16 << 20, 4),
        (256 << 20, 5),
    ] {
        let data = pattern(len, seed);
        let s = m.connect(echo.addr).expect("CONNECT accepted");
        let got = roundtrip(s, &data);
        assert!(
            got == data,
            "{len} bytes came back different ({} bytes)",
            got.len()
        );
    }
    // One tunnel per shard of node A (2 shards) carried every flow; both sides counted.
    assert!(m.a.metric("zpath_hbone_client_handshakes_total") <= 2);
    assert_eq!(
        m.a.metric("zpath_hbone_connect_responses_total{side=\"client\",status=\"200\"}"),
        5
    );
    assert_eq!(
        m.b.metric("zpath_hbone_connect_responses_total{side=\"server\",status=\"200\"}"),
        5
    );
    assert_eq!(
        m.b.metric("zpath_tls_handshakes_total{side=\"server\",outcome=\"ok\""),
        m.a.metric("zpath_hbone_client_handshakes_total")
    );
    let bytes = (1 + 1000 + (64 << 10) + (16 << 20) + (256 << 20)) as u64;
    assert_eq!(
        m.a.metric("istio_tcp_received_bytes_total{reporter=\"source\""),
        bytes
    );
    assert_eq!(
        m.b.metric("istio_tcp_received_bytes_total{reporter=\"destination\""),
        bytes
    );
    m.a.assert_no_open_connections();
    m.b.assert_no_open_connections();
    assert_eq!(m.a.metric("zpath_hbone_client_streams"), 0);
    assert_eq!(m.b.metric("zpath_hbone_server_streams"), 0);
}

#[test]
fn flows_cross_two_nodes_over_ipv6() {
    if skip_unless_root() {
        return;
    }
    let net6 = "fd00:79:30";
    let config = mesh::config_at(&format!("{net6}::1"), &format!("{net6}::2"), "server", "");
    let m = Mesh::start_ipv6("hb6", "10.79.30", net6, &config);
    let bind = format!("[{net6}::2]:0");
    let echo = EchoServer::serve(
        m.hosts
            .server
            .enter(move || std::net::TcpListener::bind(bind).expect("bind the server workload")),
    );
    for (len, seed) in [(1usize, 1u8), (1 << 20, 2)] {
        let data = pattern(len, seed);
        let s = m.connect(echo.addr).expect("CONNECT accepted");
        let got = roundtrip(s, &data);
        assert!(got == data, "{len} bytes over IPv6 came back different");
    }
    // Nothing listens on port 1: the 503 path, over IPv6 too.
    let closed: SocketAddr = format!("[{net6}::2]:1").parse().unwrap();
    assert!(m.connect(closed).is_err());
    assert_eq!(
        m.b.metric("zpath_hbone_connect_responses_total{side=\"server\",status=\"200\"}"),
        2,
        "{}",
        m.b.metrics_text()
    );
    assert_eq!(
        m.a.metric("zpath_hbone_connect_responses_total{side=\"client\",status=\"503\"}"),
        1
    );
    m.a.assert_no_open_connections();
    m.b.assert_no_open_connections();
}

#[test]
fn half_close_and_reset_cross_the_tunnel() {
    if skip_unless_root() {
        return;
    }
    let net = "10.79.1";
    let config = mesh::config(net, "");
    let m = Mesh::start("hbh", net, &config, None, &[], &[]);
    // The server answers only after the client's FIN, then keeps sending.
    let listener = m.server_listener();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(b"after-fin:").unwrap();
        s.write_all(&got).unwrap();
        drop(s);
        // Then a reset (linger 0 and close), once the client's first byte arrived so
        // the stream is established end to end.
        let (mut r, _) = listener.accept().unwrap();
        let mut first = [0u8; 1];
        r.read_exact(&mut first).unwrap();
        let sock = socket2::SockRef::from(&r);
        sock.set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(r);
    });
    let mut s = m.connect(addr).unwrap();
    s.write_all(b"hello").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"after-fin:hello");

    let mut r = m.connect(addr).unwrap();
    r.write_all(b"x").unwrap();
    let mut b = [0u8; 8];
    let err = r
        .read(&mut b)
        .expect_err("the server's reset reaches the client as a reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    m.a.assert_no_open_connections();
    m.b.assert_no_open_connections();
}

#[test]
fn an_unreachable_port_is_a_503_and_a_refused_socks5_connect() {
    if skip_unless_root() {
        return;
    }
    let net = "10.79.2";
    let config = mesh::config(net, "");
    let m = Mesh::start("hb5", net, &config, None, &[], &[]);
    // Nothing listens on port 1 of the server workload.
    let target: SocketAddr = format!("{net}.2:1").parse().unwrap();
    assert!(m.connect(target).is_err());
    assert_eq!(
        m.a.metric("zpath_hbone_connect_responses_total{side=\"client\",status=\"503\"}"),
        1
    );
    assert_eq!(
        m.b.metric(
            "zpath_connections_failed_total{direction=\"inbound\",reason=\"upstream_connect\"}"
        ),
        1
    );
    m.a.assert_no_open_connections();
    m.b.assert_no_open_connections();
}

#[test]
fn a_thousand_concurrent_flows_share_pooled_tunnels() {
    if skip_unless_root() {
        return;
    }
    let net = "10.79.3";
    let config = mesh::config(net, "");
    // One shard on node A: one pool, so the handshake count is exact.
    let m = Mesh::start(
        "hbp",
        net,
        &config,
        None,
        &["--shards", "1", "--pool-max-streams", "100"],
        &[],
    );
    let echo = EchoServer::serve(m.server_listener());
    raise_fd_limit();
    const FLOWS: usize = 1000;
    let streams: Vec<std::net::TcpStream> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..50)
            .map(|_| {
                scope.spawn(|| {
                    (0..FLOWS / 50)
                        .map(|_| {
                            let mut s = m.connect(echo.addr).expect("CONNECT accepted");
                            s.write_all(b"x").unwrap();
                            let mut b = [0u8; 1];
                            s.read_exact(&mut b).unwrap();
                            s
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(streams.len(), FLOWS);
    assert_eq!(m.a.metric("zpath_hbone_client_streams"), FLOWS as u64);
    assert_eq!(
        m.a.metric("zpath_hbone_tunnels"),
        10,
        "{}",
        m.a.metrics_text()
    );
    assert_eq!(m.a.metric("zpath_hbone_client_handshakes_total"), 10);
    assert_eq!(m.a.metric("zpath_hbone_pool_keys"), 1);
    assert_eq!(m.b.metric("zpath_hbone_server_connections"), 10);
    drop(streams);
    m.a.assert_no_open_connections();
    m.b.assert_no_open_connections();
    wait_for("the gauge", std::time::Duration::from_secs(10), || {
        m.a.metric("zpath_hbone_client_streams") == 0
    });
    wait_for("the gauge", std::time::Duration::from_secs(10), || {
        m.b.metric("zpath_hbone_server_streams") == 0
    });
}

#[test]
fn idle_tunnels_are_released() {
    if skip_unless_root() {
        return;
    }
    let net = "10.79.4";
    let config = mesh::config(net, "");
    let m = Mesh::start(
        "hbl",
        net,
        &config,
        None,
        &["--pool-idle-timeout", "1s"],
        &[],
    );
    let echo = EchoServer::serve(m.server_listener());
    let s = m.connect(echo.addr).unwrap();
    assert_eq!(roundtrip(s, b"idle"), b"idle");
    assert!(m.a.metric("zpath_hbone_tunnels") >= 1);
    wait_for("the gauge", std::time::Duration::from_secs(10), || {
        m.a.metric("zpath_hbone_tunnels") == 0
    });
    wait_for("the gauge", std::time::Duration::from_secs(10), || {
        m.a.metric("zpath_hbone_pool_keys") == 0
    });
    // The server sees the connection end too.
    wait_for("the gauge", std::time::Duration::from_secs(10), || {
        m.b.metric("zpath_hbone_server_connections") == 0
    });
}

#[test]
fn the_client_refuses_a_server_presenting_another_identity() {
    if skip_unless_root() {
        return;
    }
    let net = "10.79.5";
    // Node A expects sa/server at the server's address; node B serves sa/impostor there.
    let expected = mesh::config(net, "");
    let impostor = mesh::config_with(net, "impostor", "");
    let m = Mesh::start("hbs", net, &expected, Some(&impostor), &[], &[]);
    let echo = EchoServer::serve(m.server_listener());
    assert!(
        m.connect(echo.addr).is_err(),
        "the flow must not be relayed"
    );
    let diagnose = || {
        let text = m.a.metrics_text();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                (l.contains("tls_handshakes") || l.contains("failed")) && !l.ends_with(" 0")
            })
            .collect();
        format!(
            "{}\n{}",
            lines.join("\n"),
            std::fs::read_to_string(m.a.dir().join("zpath.log")).unwrap_or_default()
        )
    };
    assert_eq!(
        m.a.metric(
            "zpath_tls_handshakes_total{side=\"client\",outcome=\"failed\",reason=\"identity_not_expected\"}"
        ),
        1,
        "{}",
        diagnose()
    );
    assert_eq!(
        m.a.metric("zpath_connections_failed_total{direction=\"outbound\",reason=\"tls\"}"),
        1
    );
    m.a.assert_no_open_connections();
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

#[test]
fn malformed_or_misaddressed_requests_get_400() {
    if skip_unless_root() {
        return;
    }
    let net = "10.79.6";
    let config = mesh::config(net, "");
    let m = Mesh::start("hb4", net, &config, None, &[], &[]);
    let echo = EchoServer::serve(m.server_listener());
    let get = http::Request::get(format!("http://{}/", echo.addr))
        .body(())
        .unwrap();
    let answers = m.hbone_requests(
        "client",
        vec![
            get,
            connect_request("example.com:80"),
            // An address node B serves no workload at.
            connect_request(&format!("{net}.9:80")),
            // Node A's workload: not on this node.
            connect_request(&format!("{net}.1:80")),
            // zpath's own HBONE port at the workload's address: a loop.
            connect_request(&format!("{net}.2:15008")),
            // Well formed: relayed.
            connect_request(&echo.addr.to_string()),
        ],
    );
    assert_eq!(
        answers,
        vec![Ok(400), Ok(400), Ok(400), Ok(400), Ok(400), Ok(200)],
        "{}",
        m.b.metrics_text()
    );
    assert_eq!(
        m.b.metric("zpath_hbone_connect_responses_total{side=\"server\",status=\"400\"}"),
        5
    );
    m.b.assert_no_open_connections();
    wait_for("the gauge", std::time::Duration::from_secs(10), || {
        m.b.metric("zpath_hbone_server_connections") == 0
    });
}

#[test]
fn a_service_vip_reaches_an_hbone_endpoint_with_its_port_mapping() {
    if skip_unless_root() {
        return;
    }
    let net = "10.79.7";
    let m0 = mesh::config(net, "");
    // The service maps VIP port 80 to the server's port 18080 (a port of the server
    // namespace, free since the namespace is new).
    let echo_port = 18080;
    let config = m0.replace(
        "  node: node-b\n",
        &format!("  node: node-b\n  services:\n    default/echo.default.svc.cluster.local: {{80: {echo_port}}}\n"),
    ) + &format!(
        "services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  vips: [\"/{net}.100\"]
  ports: {{80: {echo_port}}}
"
    );
    let m = Mesh::start("hbv", net, &config, None, &[], &[]);
    let listener = m
        .hosts
        .server
        .enter(move || std::net::TcpListener::bind(format!("{net}.2:{echo_port}")).unwrap());
    let _echo = EchoServer::serve(listener);
    let vip: SocketAddr = format!("{net}.100:80").parse().unwrap();
    let s = m
        .connect(vip)
        .expect("the VIP resolves to the HBONE endpoint");
    assert_eq!(roundtrip(s, b"via the service"), b"via the service");
    assert_eq!(
        m.b.metric("zpath_hbone_connect_responses_total{side=\"server\",status=\"200\"}"),
        1
    );
}

#[test]
fn garbage_and_stalled_handshakes_on_15008_are_closed_and_counted() {
    if skip_unless_root() {
        return;
    }
    let net = "10.79.8";
    let config = mesh::config(net, "");
    let m = Mesh::start(
        "hbg",
        net,
        &config,
        None,
        &[],
        &["--handshake-timeout", "1s"],
    );
    let addr: SocketAddr = format!("{net}.2:15008").parse().unwrap();
    let (garbage_closed, stall_closed) = m.hosts.client.enter(move || {
        use std::time::Duration;
        let mut g = std::net::TcpStream::connect(addr).unwrap();
        g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        g.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 64];
        // An alert or nothing, then the close.
        let mut garbage_closed = false;
        for _ in 0..4 {
            match g.read(&mut b) {
                Ok(0) | Err(_) => {
                    garbage_closed = true;
                    break;
                }
                Ok(_) => {}
            }
        }
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = std::time::Instant::now();
        let stall_closed =
            matches!(s.read(&mut b), Ok(0) | Err(_)) && started.elapsed() < Duration::from_secs(4);
        (garbage_closed, stall_closed)
    });
    assert!(
        garbage_closed,
        "garbage before a ClientHello closes the connection"
    );
    assert!(
        stall_closed,
        "a stalled handshake is closed after --handshake-timeout"
    );
    assert_eq!(
        m.b.metric(
            "zpath_tls_handshakes_total{side=\"server\",outcome=\"failed\",reason=\"timeout\"}"
        ),
        1
    );
    assert_eq!(
        m.b.metric("zpath_tls_handshakes_total{side=\"server\",outcome=\"failed\""),
        2
    );
    // Still serving.
    let echo = EchoServer::serve(m.server_listener());
    let s = m.connect(echo.addr).unwrap();
    assert_eq!(roundtrip(s, b"fine"), b"fine");
}

#[test]
fn a_broken_tunnel_resets_its_flows_and_leaves_the_pool() {
    if skip_unless_root() {
        return;
    }
    let net = "10.79.9";
    let config = mesh::config(net, "");
    let mut m = Mesh::start("hbk", net, &config, None, &[], &[]);
    let echo = EchoServer::serve(m.server_listener());
    let mut live = m.connect(echo.addr).unwrap();
    live.write_all(b"up").unwrap();
    let mut b = [0u8; 2];
    live.read_exact(&mut b).unwrap();
    assert!(m.a.metric("zpath_hbone_tunnels") >= 1);
    // The destination node dies.
    m.b.signal(libc::SIGKILL);
    let _ = m.b.wait_exit(std::time::Duration::from_secs(5));
    live.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let got = live.read(&mut b);
    let ended = match got {
        Ok(0) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        Ok(_) => false,
    };
    assert!(ended, "the flow ends when its tunnel breaks");
    // The pool stops counting the broken tunnel as soon as its connection ends (well
    // before the idle sweep, every 5 s by default).
    wait_for(
        "the broken tunnel to leave the pool",
        std::time::Duration::from_secs(2),
        || m.a.metric("zpath_hbone_tunnels") == 0,
    );
    m.a.assert_no_open_connections();
    // A new flow finds no tunnel and no listener: refused, not hung.
    assert!(m.connect(echo.addr).is_err());
}

#[test]
fn a_tunnel_whose_server_stops_answering_pings_is_closed() {
    if skip_unless_root() {
        return;
    }
    let net = "10.79.10";
    let config = mesh::config(net, "");
    let keepalive = [
        "--hbone-keepalive-interval",
        "200ms",
        "--hbone-keepalive-timeout",
        "500ms",
    ];
    let m = Mesh::start("hbp", net, &config, None, &keepalive, &[]);
    let echo = EchoServer::serve(m.server_listener());
    let mut live = m.connect(echo.addr).unwrap();
    live.write_all(b"up").unwrap();
    let mut b = [0u8; 2];
    live.read_exact(&mut b).unwrap();
    // Node B freezes: its kernel still takes the bytes, nothing answers the PINGs.
    m.b.signal(libc::SIGSTOP);
    let closed = zpath_tests::closed_by_peer(&mut live);
    let unanswered = m.a.metric(
        "zpath_hbone_connections_closed_total{side=\"client\",reason=\"keepalive_timeout\"}",
    );
    let tunnels = m.a.metric("zpath_hbone_tunnels");
    m.b.signal(libc::SIGCONT);
    assert!(
        closed,
        "the flow ends when its tunnel's peer stops answering"
    );
    assert_eq!(unanswered, 1);
    assert_eq!(tunnels, 0, "the silent tunnel left the pool");
    m.a.assert_no_open_connections();
    // Node B, awake again, serves a new tunnel.
    let s = m.connect(echo.addr).unwrap();
    assert_eq!(roundtrip(s, b"awake"), b"awake");
    m.b.assert_no_open_connections();
}

#[test]
fn a_draining_node_finishes_open_flows_and_its_tunnel_takes_no_new_stream() {
    if skip_unless_root() {
        return;
    }
    let net = "10.79.11";
    let config = mesh::config(net, "");
    let mut m = Mesh::start("hbd", net, &config, None, &[], &["--drain-deadline", "10s"]);
    let echo = EchoServer::serve(m.server_listener());
    let mut live = m.connect(echo.addr).unwrap();
    let mut b = [0u8; 6];
    live.write_all(b"before").unwrap();
    live.read_exact(&mut b).unwrap();
    m.b.signal(libc::SIGTERM);
    wait_for(
        "node B's GOAWAY on node A's tunnel",
        std::time::Duration::from_secs(5),
        || {
            m.b.metric("zpath_hbone_connections_closed_total{side=\"server\",reason=\"drain\"}")
                == 1
        },
    );
    // Node A opens no stream on the tunnel that said GOAWAY: it tries a new one,
    // which node B, no longer listening, refuses.
    assert!(m.connect(echo.addr).is_err(), "a new flow while B drains");
    // The open flow runs on to its end.
    live.write_all(b"during").unwrap();
    live.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"during");
    // Read while the open flow still holds node B up: once it ends, B exits.
    assert_eq!(
        m.b.metric("zpath_hbone_connect_responses_total{side=\"server\",status=\"200\"}"),
        1,
        "node B answered one CONNECT"
    );
    assert_eq!(roundtrip(live, b"last"), b"last");
    let status = m.b.wait_exit(std::time::Duration::from_secs(10));
    assert!(status.success(), "node B exited with {status}");
    m.a.assert_no_open_connections();
}

/// The access log, in JSON: after one HBONE flow each node writes one
/// "connection complete" line under the target `access` with ztunnel's fields, the
/// workloads and identities of both ends and the bytes each way.
#[test]
fn the_access_log_reads_as_ztunnels_on_both_nodes() {
    if skip_unless_root() {
        return;
    }
    let net = "10.79.31";
    let config = mesh::config(net, "");
    let json = ["--log-format", "json"];
    let mut m = Mesh::start("hba", net, &config, None, &json, &json);
    let echo = EchoServer::serve(m.server_listener());
    let s = m.connect(echo.addr).expect("CONNECT accepted");
    assert_eq!(roundtrip(s, &[7u8; 1000]).len(), 1000);
    let client_id = "spiffe://cluster.local/ns/default/sa/client";
    let server_id = "spiffe://cluster.local/ns/default/sa/server";
    let a = access_complete(&mut m.a);
    assert_eq!(a["target"], "access", "{a}");
    assert_eq!(a["level"], "INFO", "{a}");
    let f = &a["fields"];
    assert_eq!(f["direction"], "outbound", "{a}");
    assert_eq!(f["src.workload"], "client", "{a}");
    assert_eq!(f["src.namespace"], "default", "{a}");
    assert_eq!(f["src.identity"], client_id, "{a}");
    assert_eq!(f["dst.workload"], "server", "{a}");
    assert_eq!(f["dst.identity"], server_id, "{a}");
    assert_eq!(f["dst.addr"], format!("{net}.2:15008"), "{a}");
    assert_eq!(f["dst.hbone_addr"], echo.addr.to_string(), "{a}");
    assert_eq!(
        (f["bytes_sent"].as_u64(), f["bytes_recv"].as_u64()),
        (Some(1000), Some(1000)),
        "{a}"
    );
    let b = access_complete(&mut m.b);
    let f = &b["fields"];
    assert_eq!(f["direction"], "inbound", "{b}");
    assert_eq!(f["src.identity"], client_id, "{b}");
    assert_eq!(f["dst.workload"], "server", "{b}");
    assert_eq!(f["dst.identity"], server_id, "{b}");
    assert_eq!(
        (f["bytes_sent"].as_u64(), f["bytes_recv"].as_u64()),
        (Some(1000), Some(1000)),
        "{b}"
    );
    assert!(f["duration"].as_str().unwrap().ends_with("ms"), "{b}");
}

/// The first "connection complete" access line of `node`, parsed (waits up to 10 s).
fn access_complete(node: &mut zpath_tests::Node) -> serde_json::Value {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = node.stderr();
        if let Some(line) = log.lines().find(|l| l.contains("connection complete")) {
            return serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        }
        assert!(std::time::Instant::now() < until, "no access line:\n{log}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Istio's labelled `istio_tcp_*` metrics on both nodes, parsed, as ztunnel reports
/// them: the workloads, identities and service of a flow to a service VIP over HBONE
/// (`mutual_tls`); a flow node B's policy denies is closed and failed with `DENY`
/// there and `CONNECT` on node A; plaintext captured on node B's 15006 has no principal
/// and `connection_security_policy="unknown"` (ztunnel's value; Istio's sidecars say
/// `none`).
#[test]
fn istio_metrics_carry_workloads_identities_service_and_flags_on_both_nodes() {
    if skip_unless_root() {
        return;
    }
    let net = "10.79.32";
    let config = format!(
        "workloads:
- {{name: client-7d4, namespace: web, serviceAccount: client, workloadIps: [\"{net}.1\"],
   protocol: HBONE, node: node-a, canonicalName: client, canonicalRevision: v1,
   workloadName: client, clusterId: east, locality: {{region: eu, zone: eu-1}}}}
- {{name: server-5f9, namespace: prod, serviceAccount: server, workloadIps: [\"{net}.2\"],
   protocol: HBONE, node: node-b, canonicalName: server, canonicalRevision: v2,
   workloadName: server, services: {{prod/echo.prod.svc.cluster.local: {{80: 8080}}}}}}
services:
- {{name: echo, namespace: prod, hostname: echo.prod.svc.cluster.local,
   vips: [\"/10.96.32.9\"], ports: {{80: 8080}}}}
policies:
- {{name: deny-8081, namespace: prod, scope: Namespace, action: Deny,
   rules: [[[{{destinationPorts: [8081]}}]]]}}
"
    );
    let m = Mesh::start("hbm", net, &config, None, &[], &[]);
    let listen = format!("{net}.2:8080");
    let echo = EchoServer::serve(
        m.hosts
            .server
            .enter(move || std::net::TcpListener::bind(listen).expect("bind the server workload")),
    );
    let vip: SocketAddr = "10.96.32.9:80".parse().unwrap();
    let s = m.connect(vip).expect("CONNECT accepted");
    assert_eq!(roundtrip(s, &[7u8; 1000]).len(), 1000);
    let denied: SocketAddr = format!("{net}.2:8081").parse().unwrap();
    assert!(m.connect(denied).is_err(), "port 8081 is denied");
    // Plaintext from the client host, captured into node B's 15006.
    m.hosts.server.exec(&format!(
        "iptables -t nat -A PREROUTING -p tcp -d {net}.2 --dport 8080 -j REDIRECT --to-ports {}",
        m.b.inbound.port()
    ));
    let plain = m
        .hosts
        .client
        .enter(move || std::net::TcpStream::connect(echo.addr).unwrap());
    assert_eq!(roundtrip(plain, &[9u8; 300]).len(), 300);
    m.a.assert_no_open_connections();
    m.b.assert_no_open_connections();

    let source = [
        ("source_workload", "client"),
        ("source_canonical_service", "client"),
        ("source_canonical_revision", "v1"),
        ("source_workload_namespace", "web"),
        ("source_app", "client"),
        ("source_version", "v1"),
        ("source_cluster", "east"),
        ("source_region", "eu"),
        ("source_zone", "eu-1"),
        ("destination_region", "unknown"),
        ("request_protocol", "tcp"),
    ];
    let destination = [
        ("destination_workload", "server"),
        ("destination_canonical_service", "server"),
        ("destination_canonical_revision", "v2"),
        ("destination_workload_namespace", "prod"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/prod/sa/server",
        ),
        ("destination_app", "server"),
        ("destination_version", "v2"),
        ("destination_cluster", "Kubernetes"),
    ];
    let mtls = [
        (
            "source_principal",
            "spiffe://cluster.local/ns/web/sa/client",
        ),
        ("connection_security_policy", "mutual_tls"),
    ];
    let service = [
        ("destination_service", "echo.prod.svc.cluster.local"),
        ("destination_service_namespace", "prod"),
        ("destination_service_name", "echo"),
    ];
    let no_service = [
        ("destination_service", "unknown"),
        ("destination_service_namespace", "unknown"),
        ("destination_service_name", "unknown"),
    ];
    let plaintext = [
        ("source_principal", "unknown"),
        ("connection_security_policy", "unknown"),
    ];
    // The value of the one sample of `family` on `node` with all of `labels`.
    let value = |node: &zpath_tests::Node, family: &str, labels: &[&[(&str, &str)]]| {
        let want: Vec<(&str, &str)> = labels.iter().flat_map(|l| l.iter().copied()).collect();
        let found: Vec<_> = node
            .samples(&format!("istio_tcp_{family}_total"))
            .into_iter()
            .filter(|s| s.has(&want))
            .collect();
        assert!(found.len() <= 1, "{family}: several samples {found:?}");
        found.first().map_or(0, |s| s.value as u64)
    };
    for (node, reporter) in [(&m.a, "source"), (&m.b, "destination")] {
        let r = [("reporter", reporter), ("response_flags", "-")];
        let set: &[&[(&str, &str)]] = &[&r, &source, &destination, &mtls, &service];
        let ctx = || format!("{reporter}:\n{}", node.metrics_text());
        assert_eq!(value(node, "connections_opened", set), 1, "{}", ctx());
        assert_eq!(value(node, "connections_closed", set), 1, "{}", ctx());
        assert_eq!(value(node, "received_bytes", set), 1000, "{}", ctx());
        assert_eq!(value(node, "sent_bytes", set), 1000, "{}", ctx());
        // No failed sample of the completed flow's label set, whatever its flag.
        let any_flag: &[&[(&str, &str)]] = &[
            &[("reporter", reporter)],
            &source,
            &destination,
            &mtls,
            &service,
        ];
        assert_eq!(value(node, "connections_failed", any_flag), 0, "{}", ctx());
        // Every labelled connection that opened has closed.
        assert_eq!(
            node.metric("istio_tcp_connections_opened_total"),
            node.metric("istio_tcp_connections_closed_total"),
            "{}",
            ctx()
        );
        // The denied flow was addressed to the workload, so it has no service.
        let flag = if reporter == "source" {
            "CONNECT"
        } else {
            "DENY"
        };
        let r = [("reporter", reporter), ("response_flags", flag)];
        let set: &[&[(&str, &str)]] = &[&r, &source, &destination, &mtls, &no_service];
        assert_eq!(value(node, "connections_closed", set), 1, "{}", ctx());
        assert_eq!(value(node, "connections_failed", set), 1, "{}", ctx());
        let r = [("reporter", reporter), ("response_flags", "-")];
        assert_eq!(
            value(
                node,
                "connections_opened",
                &[&r, &source, &destination, &mtls, &no_service]
            ),
            1,
            "{}",
            ctx()
        );
    }
    let r = [("reporter", "destination"), ("response_flags", "-")];
    let set: &[&[(&str, &str)]] = &[&r, &source, &destination, &plaintext, &service];
    let ctx = || m.b.metrics_text();
    assert_eq!(value(&m.b, "connections_opened", set), 1, "{}", ctx());
    assert_eq!(value(&m.b, "connections_closed", set), 1, "{}", ctx());
    assert_eq!(value(&m.b, "received_bytes", set), 300, "{}", ctx());
    assert_eq!(value(&m.b, "sent_bytes", set), 300, "{}", ctx());
}

/// A source node B does not know by address (a workload of another cluster, say) is
/// labelled from the `baggage` node A sends with its CONNECT, as ztunnel's derived
/// source; its principal is still the identity mTLS proved.
#[test]
fn a_source_unknown_to_the_destination_node_is_labelled_from_its_baggage() {
    if skip_unless_root() {
        return;
    }
    let net = "10.79.33";
    let client = format!(
        "- {{name: client-7d4, namespace: web, serviceAccount: client, workloadIps: [\"{net}.1\"],
   protocol: HBONE, node: node-a, canonicalName: client, canonicalRevision: v1,
   workloadName: client-deploy, clusterId: east}}\n"
    );
    let server = format!(
        "- {{name: server-5f9, namespace: prod, serviceAccount: server, workloadIps: [\"{net}.2\"],
   protocol: HBONE, node: node-b}}\n"
    );
    let config_a = format!("workloads:\n{client}{server}");
    let config_b = format!("workloads:\n{server}");
    let m = Mesh::start("hbg", net, &config_a, Some(&config_b), &[], &[]);
    let echo = EchoServer::serve(m.server_listener());
    let s = m.connect(echo.addr).expect("CONNECT accepted");
    assert_eq!(roundtrip(s, &[5u8; 100]).len(), 100);
    m.b.assert_no_open_connections();
    let want = [
        ("reporter", "destination"),
        ("source_workload", "client-deploy"),
        ("source_canonical_service", "client"),
        ("source_canonical_revision", "v1"),
        ("source_workload_namespace", "web"),
        ("source_app", "client-deploy"),
        ("source_version", "v1"),
        ("source_cluster", "east"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/web/sa/client",
        ),
        ("destination_workload_namespace", "prod"),
    ];
    let opened = m.b.samples("istio_tcp_connections_opened_total");
    let found: Vec<_> = opened.iter().filter(|s| s.has(&want)).collect();
    assert_eq!(found.len(), 1, "{opened:?}");
    assert_eq!(found[0].value, 1.0);
}
