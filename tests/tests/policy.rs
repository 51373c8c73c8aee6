//! Authorization on the captured inbound plaintext path (15006): a denied connection is
//! closed before zpath dials the application, and a policy change closes live
//! connections it now denies. Needs root for the network namespaces and iptables.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use zpath_tests::echo::EchoServer;
use zpath_tests::netns::HostPair;
use zpath_tests::{closed_by_peer, is_root, wait_for, Node, NodeOptions};

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

/// A namespace DENY-all for `default`: the policy a destination zpath does not serve
/// must not escape by being authorized against global policies only.
const DENY_NAMESPACE: &str =
    "policies:\n- name: deny-all\n  namespace: default\n  scope: Namespace\n  action: Deny\n  rules:\n  - []\n";

/// `app` at `ip` on node `node`, in namespace `default`.
fn app_on(ip: &str, node: &str) -> String {
    format!("workloads:\n- name: app\n  namespace: default\n  workloadIps: [\"{ip}\"]\n  node: {node}\n")
}

/// Rewrites the node's config and waits until it is applied.
fn reload(node: &Node, config: &str) {
    let applied = "zpath_config_loads_total{result=\"applied\"}";
    let before = node.metric(applied);
    std::fs::write(&node.config_path, config).unwrap();
    node.signal(libc::SIGHUP);
    wait_for("the new config", Duration::from_secs(10), || {
        node.metric(applied) > before
    });
}

/// Whether a new connection to `target` from `client` is closed without reaching the
/// application (which would echo).
fn refused(client: &zpath_tests::netns::Netns, target: SocketAddr) -> bool {
    let mut s = client.enter(move || TcpStream::connect(target).unwrap());
    let _ = s.write_all(b"ping");
    closed_by_peer(&mut s)
}

#[test]
fn inbound_to_a_destination_this_node_does_not_serve_is_refused_under_namespace_deny_all() {
    if !is_root() {
        eprintln!("skipped: iptables capture needs root");
        return;
    }
    let hosts = HostPair::new("unk", "10.78.9");
    let (client, server) = (&hosts.client, &hosts.server);
    let echo = EchoServer::serve(server.enter(|| TcpListener::bind("10.78.9.2:0").unwrap()));
    // The workload at the address runs on another node (a node-name mismatch).
    let node = Node::start(NodeOptions {
        netns: Some(server.name.clone()),
        bind_ip: "0.0.0.0".into(),
        config: format!("{}{DENY_NAMESPACE}", app_on("10.78.9.2", "node-b")),
        ..NodeOptions::default()
    });
    server.exec(&format!(
        "iptables -t nat -A PREROUTING -p tcp -d 10.78.9.2 --dport {} -j REDIRECT --to-ports {}",
        echo.addr.port(),
        node.inbound.port()
    ));
    let target: SocketAddr = echo.addr;
    let unknown = "zpath_connections_failed_total{direction=\"inbound\",reason=\"unknown_target\"}";
    assert!(refused(client, target), "node-name mismatch refused");
    wait_for("refusals counted", Duration::from_secs(10), || {
        node.metric(unknown) == 1
    });

    // No workload has the address yet (the control plane has not pushed the pod).
    reload(
        &node,
        &format!("{}{DENY_NAMESPACE}", app_on("10.78.9.7", "node-a")),
    );
    assert!(refused(client, target), "address of no workload refused");
    wait_for("refusals counted", Duration::from_secs(10), || {
        node.metric(unknown) == 2
    });

    // Served here without a policy: allowed, and the connection stays open...
    reload(&node, &app_on("10.78.9.2", "node-a"));
    let mut live = client.enter(move || TcpStream::connect(target).unwrap());
    live.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    live.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");

    // ...until the workload goes and releases the address: the live connection is
    // closed and a new one refused.
    reload(
        &node,
        &format!("{}{DENY_NAMESPACE}", app_on("10.78.9.7", "node-a")),
    );
    assert!(
        closed_by_peer(&mut live),
        "live connection to a released address closed"
    );
    assert!(refused(client, target), "released address refused");
    wait_for("refusals counted", Duration::from_secs(10), || {
        node.metric(unknown) == 4
    });
    assert_eq!(
        node.metric("zpath_connections_failed_total{direction=\"inbound\",reason=\"denied\"}"),
        0,
        "refused as unknown, never evaluated against the policies left"
    );
    node.assert_no_open_connections();
}
