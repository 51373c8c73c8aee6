//! Authorization on the captured inbound plaintext path (15006): a denied connection is
//! closed before zpath dials the application, and a policy change closes live
//! connections it now denies. Needs root for the network namespaces and iptables.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use zpath_tests::echo::EchoServer;
use zpath_tests::netns::HostPair;
use zpath_tests::{closed_by_peer, is_root, Node, NodeOptions};

const WORKLOAD: &str = "workloads:\n- name: app\n  namespace: default\n  workloadIps: [\"10.78.0.2\"]\n  node: node-a\n";

fn deny_client() -> String {
    format!(
        "{WORKLOAD}policies:\n- name: deny-client\n  namespace: default\n  scope: Namespace\n  action: Deny\n  rules:\n  - - - sourceIps: [\"10.78.0.1/32\"]\n"
    )
}

#[test]
fn policy_denies_plaintext_inbound_and_a_policy_change_closes_live_connections() {
    if !is_root() {
        eprintln!("skipped: iptables capture needs root");
        return;
    }
    let hosts = HostPair::new("pol", "10.78.0");
    let (client, server) = (&hosts.client, &hosts.server);
    let echo = EchoServer::serve(server.enter(|| TcpListener::bind("10.78.0.2:0").unwrap()));
    let node = Node::start(NodeOptions {
        netns: Some(server.name.clone()),
        bind_ip: "0.0.0.0".into(),
        config: WORKLOAD.into(),
        ..NodeOptions::default()
    });
    server.exec(&format!(
        "iptables -t nat -A PREROUTING -p tcp -d 10.78.0.2 --dport {} -j REDIRECT --to-ports {}",
        echo.addr.port(),
        node.inbound.port()
    ));
    let target: SocketAddr = echo.addr;

    // Allowed while no policy applies; the connection stays open.
    let mut live = client.enter(move || TcpStream::connect(target).unwrap());
    live.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    live.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");

    // A DENY for the client's address arrives: the live connection is closed...
    std::fs::write(&node.config_path, deny_client()).unwrap();
    node.signal(libc::SIGHUP);
    assert!(
        closed_by_peer(&mut live),
        "live connection closed after the policy change"
    );

    // ...and a new one is refused before the application is dialled.
    let mut fresh = client.enter(move || TcpStream::connect(target).unwrap());
    let _ = fresh.write_all(b"ping");
    assert!(closed_by_peer(&mut fresh), "new connection refused");
    node.assert_no_open_connections();
    assert_eq!(
        node.metric("zpath_connections_failed_total{direction=\"inbound\",reason=\"denied\"}"),
        2
    );
    assert!(node.metric("zpath_policy_decisions_total{outcome=\"deny\"") >= 2);
    assert_eq!(
        node.metric("zpath_policy_decisions_total{outcome=\"allow\""),
        1
    );
    // The application saw exactly one connection.
    drop(echo);
}
