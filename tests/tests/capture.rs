//! Real capture: iptables REDIRECT in network namespaces sends traffic to zpath's
//! outbound (15001) and inbound (15006) listeners; zpath reads the original destination
//! and relays there, its own marked traffic excluded from capture. Needs root (CI runs
//! as root); without it each test says so and does nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};

use zpath_tests::echo::EchoServer;
use zpath_tests::netns::{HostPair, Netns};
use zpath_tests::{is_root, pattern, roundtrip, Node, NodeOptions};

#[test]
fn outbound_redirect_reaches_the_original_destination_intact() {
    if !is_root() {
        eprintln!("skipped: iptables capture needs root");
        return;
    }
    let ns = Netns::new("zp-out");
    let echo = EchoServer::serve(ns.enter(|| TcpListener::bind("127.0.0.1:0").unwrap()));
    // Dual-stack listeners, as zpath's defaults are: the redirected IPv4 connection
    // arrives v4-mapped and its original destination must still be read.
    let node = Node::start(NodeOptions {
        netns: Some(ns.name.clone()),
        bind_ip: "[::]".into(),
        ..NodeOptions::default()
    });
    ns.exec("iptables -t nat -A OUTPUT -p tcp -m mark --mark 1337 -j RETURN");
    ns.exec(&format!(
        "iptables -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport {} -j REDIRECT --to-ports {}",
        echo.addr.port(),
        node.outbound.port()
    ));
    let target = echo.addr;
    for (i, size) in [1usize, 100_000, 64 << 20].into_iter().enumerate() {
        let data = pattern(size, i as u8);
        let got = ns.enter(move || roundtrip(TcpStream::connect(target).unwrap(), &data));
        assert_eq!(got.len(), size);
        assert!(
            got == pattern(size, i as u8),
            "bytes differ for size {size}"
        );
    }
    node.assert_no_open_connections();
    assert_eq!(
        node.metric("istio_tcp_connections_opened_total{reporter=\"source\""),
        3
    );
}

#[test]
fn inbound_redirect_from_another_host_reaches_the_local_application() {
    if !is_root() {
        eprintln!("skipped: iptables capture needs root");
        return;
    }
    let hosts = HostPair::new("cap", "10.77.0");
    let (client, server) = (&hosts.client, &hosts.server);
    let echo = EchoServer::serve(server.enter(|| TcpListener::bind("10.77.0.2:0").unwrap()));
    // The inbound listener must be reachable on the veth address; dual-stack, as the
    // default is.
    let node = Node::start(NodeOptions {
        netns: Some(server.name.clone()),
        bind_ip: "[::]".into(),
        config: "workloads:\n- {name: app, namespace: default, workloadIps: [\"10.77.0.2\"], node: node-a}\n".into(),
        ..NodeOptions::default()
    });
    server.exec(&format!(
        "iptables -t nat -A PREROUTING -p tcp -d 10.77.0.2 --dport {} -j REDIRECT --to-ports {}",
        echo.addr.port(),
        node.inbound.port()
    ));
    let target: SocketAddr = echo.addr;
    let data = pattern(3 << 20, 9);
    let got = client.enter(move || roundtrip(TcpStream::connect(target).unwrap(), &data));
    assert!(got == pattern(3 << 20, 9));
    node.assert_no_open_connections();
    assert_eq!(
        node.metric("istio_tcp_connections_opened_total{reporter=\"destination\""),
        1
    );
    assert_eq!(
        node.metric("istio_tcp_received_bytes_total{reporter=\"destination\""),
        3 << 20
    );
}
