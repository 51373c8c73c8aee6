//! The source address of an HBONE tunnel is the source workload's, never silently the
//! node's: a destination's `sourceIps` rules must see the workload. An address this
//! host has is bound as is; another needs IP_TRANSPARENT, and without it the
//! connection fails, counted `source_address`. Root only (namespaces, port 15008).
//!
//! Every test here denies the node's own address at the destination: a tunnel that
//! fell back to it would be refused there, not pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use zpath_tests::echo::EchoServer;
use zpath_tests::netns::{HostPair, Netns};
use zpath_tests::{roundtrip, skip_unless_root, socks5, wait_for, Node, NodeOptions};

/// Two workloads served by this node, reached over HBONE, and a DENY of `fallback`
/// (the address a tunnel would leave from if the workload's were dropped).
fn config(client_ip: &str, server_ip: &str, fallback: &str) -> String {
    format!(
        "workloads:
- name: client
  namespace: default
  serviceAccount: client
  workloadIps: [\"{client_ip}\"]
  protocol: HBONE
  node: node-a
- name: server
  namespace: default
  serviceAccount: server
  workloadIps: [\"{server_ip}\"]
  protocol: HBONE
  node: node-a
policies:
- name: deny-the-node-address
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - sourceIps: [\"{fallback}/32\"]
"
    )
}

/// A SOCKS5 CONNECT to `target` through `proxy` from the local address `from`.
fn socks5_from(from: &str, proxy: SocketAddr, target: SocketAddr) -> Result<TcpStream, u8> {
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&local.into()).unwrap();
    sock.connect(&proxy.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut greet = [0u8; 2];
    s.read_exact(&mut greet).unwrap();
    s.write_all(&socks5::request(target)).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).unwrap();
    if reply[1] != 0 {
        return Err(reply[1]);
    }
    s.set_read_timeout(None).unwrap();
    Ok(s)
}

fn source_address_failures(node: &Node) -> u64 {
    node.metric("zpath_connections_failed_total{direction=\"outbound\",reason=\"source_address\"}")
}

/// Client host `.1`, node host `.2` running zpath (SOCKS5 on `.2`), both workloads
/// served by it: the client workload's address is not one the node host has.
fn across_hosts(tag: &str, net: &str, wrapper: &[&str]) -> (HostPair, Node, EchoServer) {
    let hosts = HostPair::new(tag, net);
    let node_ip = format!("{net}.2");
    let echo_ip = node_ip.clone();
    let echo = EchoServer::serve(
        hosts
            .server
            .enter(move || std::net::TcpListener::bind(format!("{echo_ip}:0")).unwrap()),
    );
    let node = Node::start(NodeOptions {
        config: config(&format!("{net}.1"), &node_ip, &node_ip),
        netns: Some(hosts.server.name.clone()),
        bind_ip: node_ip,
        hbone_port: Some(15008),
        args: vec!["--packet-mark".into(), "0".into()],
        wrapper: wrapper.iter().map(|w| w.to_string()).collect(),
        ..NodeOptions::default()
    });
    (hosts, node, echo)
}

#[test]
fn a_workload_address_that_cannot_be_bound_fails_the_tunnel_counted() {
    if skip_unless_root() {
        return;
    }
    let net = "10.83.0";
    // Without CAP_NET_ADMIN and CAP_NET_RAW, IP_TRANSPARENT is not permitted.
    let drop_caps = ["setpriv", "--bounding-set", "-net_admin,-net_raw", "--"];
    let (hosts, mut node, echo) = across_hosts("sa1", net, &drop_caps);
    let (proxy, target) = (node.socks5, echo.addr);
    let from = format!("{net}.1");
    let refused = hosts
        .client
        .enter(move || socks5_from(&from, proxy, target).map(|_| ()));
    assert_eq!(
        refused,
        Err(1),
        "general failure, not a tunnel from another address"
    );
    wait_for("the failure to be counted", Duration::from_secs(10), || {
        source_address_failures(&node) == 1
    });
    assert_eq!(
        node.metric("zpath_hbone_connect_responses_total{side=\"server\""),
        0,
        "no CONNECT reached the destination"
    );
    node.assert_no_open_connections();
    let log = node.stderr();
    assert!(log.contains("IP_TRANSPARENT"), "{log}");
}

#[test]
fn with_ip_transparent_a_tunnel_leaves_from_a_workload_address_the_host_does_not_have() {
    if skip_unless_root() {
        return;
    }
    let net = "10.84.0";
    let (hosts, node, echo) = across_hosts("sa2", net, &[]);
    // Return traffic of the tunnel (from 15008 to the client workload) is delivered
    // on this host, as an in-pod or TPROXY setup routes it.
    hosts.server.exec(&format!(
        "ip route add local {net}.1/32 dev lo table 184 && \
         ip rule add pref 100 from {net}.2 to {net}.1 ipproto tcp sport 15008 lookup 184"
    ));
    let (proxy, target) = (node.socks5, echo.addr);
    let from = format!("{net}.1");
    let got = hosts.client.enter(move || {
        let s = socks5_from(&from, proxy, target).expect("the flow passes");
        roundtrip(s, b"from the workload")
    });
    assert_eq!(got, b"from the workload");
    assert_eq!(source_address_failures(&node), 0);
    node.assert_no_open_connections();
}

#[test]
fn a_local_workload_address_is_kept_for_the_tunnel() {
    if skip_unless_root() {
        return;
    }
    // Node-local: the workload's address is this host's (a loopback alias).
    let ns = Netns::new("zp-sa3");
    let echo = EchoServer::serve(ns.enter(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap()));
    let node = Node::start(NodeOptions {
        config: config("127.0.0.5", "127.0.0.1", "127.0.0.1"),
        netns: Some(ns.name.clone()),
        hbone_port: Some(15008),
        ..NodeOptions::default()
    });
    let (proxy, target) = (node.socks5, echo.addr);
    let got = ns.enter(move || {
        let s = socks5_from("127.0.0.5", proxy, target).expect("the flow passes");
        roundtrip(s, b"kept")
    });
    assert_eq!(got, b"kept");
    assert_eq!(
        node.metric("zpath_hbone_connect_responses_total{side=\"server\",status=\"200\"}"),
        1
    );
    node.assert_no_open_connections();
}
