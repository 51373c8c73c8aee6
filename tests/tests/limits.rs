//! Resource limits of a node under cheap attacks: the per-shard connection cap, the
//! memory of many idle connections, the admin endpoints' timeouts and caps, the
//! descriptors kept for the data path and xDS, and TCP keepalive on data-path sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../control/tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::xds_server::{response, TestXdsServer};
use zpath_control::proto::envoy::service::discovery::v3::Resource;
use zpath_control::proto::istio::workload::{address, Address, Workload};
use zpath_control::xds::resource::to_any;
use zpath_control::xds::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use zpath_tests::echo::{EchoServer, HoldServer};
use zpath_tests::node::sum_metric;
use zpath_tests::{roundtrip, wait_for, Node, NodeOptions};

/// Raises this process's open-file limit to at least `n` (as root, the hard limit too).
fn raise_own_fd_limit(n: u64) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur >= n {
            return true;
        }
        lim.rlim_cur = n;
        lim.rlim_max = lim.rlim_max.max(n);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
    }
}

/// A SOCKS5 connection through `node` to `target`, or `None` if refused or closed.
fn socks5(node: &Node, target: SocketAddr) -> Option<TcpStream> {
    match zpath_tests::socks5::connect(node.socks5, target) {
        Ok(Ok(s)) => Some(s),
        _ => None,
    }
}

/// A SOCKS5 connection that completed its greeting and sends no request: idle in the
/// node, which holds it until its handshake timeout. `None` if refused.
fn idle_socks5(node: &Node) -> Option<TcpStream> {
    let mut s = TcpStream::connect(node.socks5).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(&[5, 1, 0]).ok()?;
    let mut answer = [0u8; 2];
    s.read_exact(&mut answer).ok()?;
    (answer == [5, 0]).then_some(s)
}

/// Opens `n` idle SOCKS5 connections from a few threads; returns those that were
/// accepted and how many were refused.
fn open_many(node: &Node, n: usize) -> (Vec<TcpStream>, usize) {
    let held = Mutex::new(Vec::with_capacity(n));
    let refused = AtomicUsize::new(0);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    match idle_socks5(node) {
                        Some(c) => held.lock().unwrap().push(c),
                        None => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    (held.into_inner().unwrap(), refused.into_inner())
}

#[test]
fn ten_thousand_idle_connections_hold_bounded_memory_and_the_shard_cap_refuses_more() {
    const HELD: usize = 10_000;
    // Connections land on a shard by hash: of 10,000, a shard gets 5,000 ± 50, so the
    // cap sits six deviations above that and no connection below it is refused.
    const CAP: usize = 5_300;
    // One descriptor per connection here and in the node (which inherits the limit).
    if !raise_own_fd_limit(2 * CAP as u64 + 1024) {
        eprintln!("skipped: cannot raise the open-file limit to hold {HELD} connections");
        return;
    }
    let node = Node::start(NodeOptions {
        args: vec![
            "--max-connections-per-shard".into(),
            CAP.to_string(),
            "--socks5-handshake-timeout".into(),
            "120s".into(),
        ],
        ..NodeOptions::default()
    });
    // Warm the buffer pools and allocator, then measure from there.
    let (warm, _) = open_many(&node, 200);
    drop(warm);
    node.assert_no_open_connections();
    let before = node.rss();

    let (mut held, refused) = open_many(&node, HELD);
    assert_eq!(refused, 0, "refused below the cap");
    wait_for(
        "every connection in the table",
        Duration::from_secs(60),
        || node.metric("zpath_open_connections") == HELD as u64,
    );
    let after = node.rss();
    let per_connection = after.saturating_sub(before) / HELD as u64;
    eprintln!(
        "RSS {} KiB before, {} KiB with {HELD} idle connections: {per_connection} bytes each",
        before >> 10,
        after >> 10
    );
    assert!(
        per_connection < 16 << 10,
        "{per_connection} bytes of RSS per idle connection"
    );

    // Fill both shards to the cap (connections land on a shard by hash); then every
    // connection is refused, and each refusal is counted.
    let mut refused = 0;
    let mut attempts = 0;
    while held.len() < 2 * CAP {
        attempts += 1;
        assert!(attempts < 4 * CAP, "the shards never filled");
        match idle_socks5(&node) {
            Some(c) => held.push(c),
            None => refused += 1,
        }
    }
    for _ in 0..20 {
        assert!(idle_socks5(&node).is_none(), "accepted beyond the cap");
        refused += 1;
    }
    let text = node.metrics_text();
    for shard in 0..2 {
        let open = sum_metric(
            &text,
            &format!("zpath_open_connections{{shard=\"{shard}\"}}"),
        );
        assert_eq!(open, CAP as u64, "shard {shard}");
    }
    wait_for("every refusal counted", Duration::from_secs(10), || {
        node.metric("zpath_connections_failed_total{direction=\"outbound\",reason=\"overload\"}")
            == refused as u64
    });
    drop(held);
    node.assert_no_open_connections();
    // Places are given back: a new connection is served again.
    let echo = EchoServer::start("127.0.0.1:0");
    let s = socks5(&node, echo.addr).expect("served after the flood");
    assert_eq!(roundtrip(s, b"after"), b"after");
}

fn address(name: &str, ip: [u8; 4]) -> Resource {
    let a = Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: format!("Kubernetes//Pod/default/{name}"),
            name: name.into(),
            namespace: "default".into(),
            addresses: vec![ip.to_vec()],
            service_account: "default".into(),
            trust_domain: "cluster.local".into(),
            node: "node-elsewhere".into(),
            ..Default::default()
        })),
    };
    Resource {
        name: format!("Kubernetes//Pod/default/{name}"),
        version: "1".into(),
        resource: Some(to_any(ADDRESS_TYPE_URL, &a)),
        ..Default::default()
    }
}

#[test]
fn idle_admin_connections_leave_descriptors_for_the_data_path_and_xds() {
    const LIMIT: u64 = 4096;
    raise_own_fd_limit(8192);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut xds = rt.block_on(TestXdsServer::start());
    let mut node = Node::spawn(NodeOptions {
        config_file: false,
        open_files: Some(LIMIT),
        args: vec![
            "--xds-address".into(),
            xds.url(),
            // Only the descriptor reserve stands between the flood and the limit here:
            // no cap, and clients that never time out.
            "--admin-max-connections".into(),
            "100000".into(),
            "--admin-header-timeout".into(),
            "10m".into(),
            "--admin-idle-timeout".into(),
            "10m".into(),
        ],
        ..NodeOptions::default()
    });
    rt.block_on(async {
        xds.next_request().await;
        xds.push(response(ADDRESS_TYPE_URL, "n1", vec![], &[]))
            .await;
        xds.push(response(AUTHORIZATION_TYPE_URL, "n2", vec![], &[]))
            .await;
    });
    node.wait_ready();
    let echo = EchoServer::start("127.0.0.1:0");

    // Idle connections to the metrics and readiness ports, a few more than the limit
    // (4,000 would still fit beside the node's own ~50 descriptors).
    let flood: Vec<TcpStream> = (0..LIMIT + 4)
        .filter_map(|i| {
            let port = if i % 2 == 0 {
                node.metrics
            } else {
                node.readiness
            };
            TcpStream::connect_timeout(&port, Duration::from_secs(1)).ok()
        })
        .collect();
    assert!(flood.len() > 3500, "only {} connected", flood.len());

    // The data path still accepts and relays.
    let s = socks5(&node, echo.addr).expect("a SOCKS5 flow during the flood");
    assert_eq!(roundtrip(s, b"still here"), b"still here");
    // xDS reconnects (a new descriptor on the control thread) and applies a push.
    rt.block_on(async {
        xds.restart().await;
        xds.next_request().await;
        xds.push(response(
            ADDRESS_TYPE_URL,
            "n3",
            vec![address("pushed-during-flood", [10, 99, 0, 1])],
            &[],
        ))
        .await;
    });
    // Acknowledged (the push was applied) on the new stream.
    let acked = rt.block_on(async {
        for _ in 0..10 {
            if xds.next_request().await.request.response_nonce == "n3" {
                return true;
            }
        }
        false
    });
    assert!(acked, "the push made during the flood was not acknowledged");

    drop(flood);
    wait_for("the flood to be closed", Duration::from_secs(10), || {
        node.get(node.admin, "/stats/prometheus").is_ok()
    });
    let (_, text) = node.get(node.admin, "/stats/prometheus").unwrap();
    let refused = sum_metric(
        &text,
        "zpath_admin_connections_closed_total{endpoint=\"metrics\",reason=\"fd_reserve\"}",
    ) + sum_metric(
        &text,
        "zpath_admin_connections_closed_total{endpoint=\"readiness\",reason=\"fd_reserve\"}",
    );
    assert!(
        refused > 0,
        "no admin connection refused for the reserve:\n{text}"
    );
    assert!(
        node.config_dump()
            .to_string()
            .contains("pushed-during-flood"),
        "the push made during the flood is not applied"
    );
    let log = node.stderr();
    assert!(log.contains("within --fd-reserve"), "{log}");
}

/// Whether the peer closed `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn admin_endpoints_close_silent_and_idle_connections_and_refuse_beyond_their_cap() {
    let node = Node::start(NodeOptions {
        args: vec![
            "--admin-max-connections".into(),
            "4".into(),
            "--admin-header-timeout".into(),
            "3s".into(),
            "--admin-idle-timeout".into(),
            "3s".into(),
        ],
        ..NodeOptions::default()
    });
    let scrape = |what: &str| {
        let (_, text) = node.get(node.admin, "/stats/prometheus").unwrap();
        sum_metric(&text, what)
    };
    // Four silent connections fill the metrics endpoint; the fifth is closed at once.
    let mut silent: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(node.metrics).unwrap())
        .collect();
    wait_for("four open", Duration::from_secs(5), || {
        scrape("zpath_admin_connections{endpoint=\"metrics\"}") == 4
    });
    let mut fifth = TcpStream::connect(node.metrics).unwrap();
    assert!(closed_within(&mut fifth, Duration::from_secs(2)));
    assert_eq!(
        scrape(
            "zpath_admin_connections_closed_total{endpoint=\"metrics\",reason=\"max_connections\"}"
        ),
        1
    );
    // The silent ones are closed by the header timeout (3 s; generous bound 20 s).
    for s in &mut silent {
        assert!(
            closed_within(s, Duration::from_secs(20)),
            "silent connection kept"
        );
    }
    // A kept-alive connection waiting for its next request is closed too.
    let mut kept = TcpStream::connect(node.metrics).unwrap();
    kept.write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    kept.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 404");
    assert!(
        closed_within(&mut kept, Duration::from_secs(20)),
        "kept-alive connection kept"
    );
    // A client that sends requests but never reads the answers is closed once nothing
    // moves for the idle timeout.
    let stalled = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stalled.set_recv_buffer_size(4096).unwrap();
    stalled.connect(&node.metrics.into()).unwrap();
    let mut stalled: TcpStream = stalled.into();
    let requests = b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n".repeat(2000);
    stalled
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stalled.write_all(&requests);
    let start = Instant::now();
    wait_for(
        "the stalled connection to be closed",
        Duration::from_secs(20),
        || scrape("zpath_admin_connections{endpoint=\"metrics\"}") == 0,
    );
    assert!(start.elapsed() < Duration::from_secs(20));
    assert_eq!(
        scrape("zpath_admin_connections_closed_total{endpoint=\"metrics\",reason=\"timeout\"}"),
        6
    );
    // Scrapes work again.
    assert!(node.metric("zpath_admin_connections_closed_total") >= 7);
}

/// The keepalive timer of the socket `local` → `remote` in `/proc/net/tcp`, in
/// seconds left, or its `/proc` line if no keepalive timer runs.
fn keepalive_timer(local: SocketAddr, remote: SocketAddr) -> Result<u64, String> {
    let hex = |a: SocketAddr| {
        let SocketAddr::V4(a) = a else {
            panic!("IPv4 only")
        };
        format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(a.ip().octets()),
            a.port()
        )
    };
    let (l, r) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let line = table
        .lines()
        .find(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 5 && f[1] == l && f[2] == r
        })
        .unwrap_or_else(|| panic!("no socket {local} -> {remote}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    // "tr:tm->when": timer kind 2 is keepalive; the time left is in clock ticks.
    let (kind, when) = f[5].split_once(':').unwrap();
    if kind != "02" {
        return Err(line.to_string());
    }
    Ok(u64::from_str_radix(when, 16).unwrap() / 100)
}

#[test]
fn data_path_sockets_carry_tcp_keepalive_on_both_sides() {
    let upstream = HoldServer::start();
    let node = Node::start(NodeOptions {
        args: vec!["--keepalive-time".into(), "77s".into()],
        ..NodeOptions::default()
    });
    let client = socks5(&node, upstream.addr).expect("SOCKS5 flow");
    wait_for("the upstream connection", Duration::from_secs(5), || {
        upstream.accepted() == 1
    });
    // The node's accepted socket (SOCKS5 port → client) and its upstream socket
    // (its ephemeral port → the upstream). Once the last segments are acknowledged the
    // only timer left on an idle socket is keepalive's.
    let sockets = [
        ("accepted", node.socks5, client.local_addr().unwrap()),
        ("upstream", upstream.peers()[0], upstream.addr),
    ];
    for (side, local, remote) in sockets {
        let until = Instant::now() + Duration::from_secs(10);
        let left = loop {
            match keepalive_timer(local, remote) {
                Ok(left) => break left,
                Err(line) => assert!(
                    Instant::now() < until,
                    "no keepalive on the {side} socket: {line}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!((1..=77).contains(&left), "{side}: {left} s left");
    }
}
