//! Authorization across two nodes: node B authorizes every CONNECT with the peer
//! identity from mutual TLS (401 when denied), re-checks live tunnelled connections when
//! policies change, and STRICT-style policies refuse plaintext while HBONE passes.
//! Root only (network namespaces, iptables).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;

use zpath_tests::echo::EchoServer;
use zpath_tests::mesh::{self, Mesh};
use zpath_tests::{closed_by_peer, connect_request, skip_unless_root};

fn policy(name: &str, action: &str, dry_run: bool, matches: &str) -> String {
    format!(
        "- name: {name}\n  namespace: default\n  scope: Namespace\n  action: {action}\n  dryRun: {dry_run}\n  rules:\n  - - - {matches}\n"
    )
}

const CLIENT: &str = "cluster.local/ns/default/sa/client";

#[test]
fn principals_are_allowed_and_denied_across_nodes() {
    if skip_unless_root() {
        return;
    }
    let net = "10.80.1";
    let policies = format!(
        "policies:\n{}{}{}",
        policy(
            "allow-client",
            "Allow",
            false,
            &format!("principals: [{{Exact: \"{CLIENT}\"}}]")
        ),
        // A DENY beats the ALLOW for port 1234 of the same client.
        policy("deny-port", "Deny", false, "destinationPorts: [1234]"),
        // A dry-run DENY of everything is reported, never enforced.
        policy("dry-deny-all", "Deny", true, "namespaces: [{Presence: []}]"),
    );
    let config = mesh::config(net, &policies);
    let m = Mesh::start("hp1", net, &config, None, &[], &[]);
    let echo = EchoServer::serve(m.server_listener());
    let target = echo.addr.to_string();
    let denied_port = format!("{net}.2:1234");
    let answers = m.hbone_requests(
        "client",
        vec![connect_request(&target), connect_request(&denied_port)],
    );
    assert_eq!(answers, vec![Ok(200), Ok(401)]);
    // Another identity of the same trust domain is not allowed.
    let answers = m.hbone_requests("intruder", vec![connect_request(&target)]);
    assert_eq!(answers, vec![Ok(401)]);
    // Through node A, the client workload's flow passes.
    let mut s = m.connect(echo.addr).expect("allowed flow");
    s.write_all(b"ok?").unwrap();
    let mut b = [0u8; 3];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ok?");
    drop(s);
    assert_eq!(
        m.b.metric("zpath_hbone_connect_responses_total{side=\"server\",status=\"401\"}"),
        2
    );
    assert_eq!(
        m.b.metric("zpath_policy_decisions_total{outcome=\"deny\""),
        2
    );
    // Counted by the policy that decided: the DENY for port 1234 once; the ALLOW for
    // the client's two allowed connections; the dry-run policy never.
    let by = |policy: &str, outcome: &str| {
        m.b.metric(&format!(
            "zpath_policy_decisions_by_policy_total{{policy=\"{policy}\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(by("default/deny-port", "deny"), 1);
    assert_eq!(by("default/allow-client", "allow"), 2);
    assert_eq!(by("default/dry-deny-all", "deny"), 0);
    m.b.assert_no_open_connections();
}

#[test]
fn strict_refuses_plaintext_while_hbone_passes() {
    if skip_unless_root() {
        return;
    }
    let net = "10.80.2";
    // STRICT peer authentication as istiod expresses it: deny connections without a principal.
    let policies = format!(
        "policies:\n{}",
        policy("strict", "Deny", false, "notPrincipals: [{Presence: []}]")
    );
    let config = mesh::config(net, &policies);
    let m = Mesh::start("hp2", net, &config, None, &[], &[]);
    let echo = EchoServer::serve(m.server_listener());
    // Plaintext from the client host straight to the workload is captured into 15006.
    m.hosts.server.exec(&format!(
        "iptables -t nat -A PREROUTING -p tcp -d {net}.2 --dport {} -j REDIRECT --to-ports {}",
        echo.addr.port(),
        m.b.inbound.port()
    ));
    let target = echo.addr;
    let mut plain = m
        .hosts
        .client
        .enter(move || TcpStream::connect(target).unwrap());
    let _ = plain.write_all(b"plain");
    assert!(closed_by_peer(&mut plain), "plaintext refused");
    // HBONE carries the client's identity and passes.
    let mut s = m.connect(echo.addr).expect("HBONE flow allowed");
    s.write_all(b"mtls").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"mtls");
    drop(s);
    assert_eq!(
        m.b.metric("zpath_connections_failed_total{direction=\"inbound\",reason=\"denied\"}"),
        1
    );
    m.b.assert_no_open_connections();
}

#[test]
fn a_policy_push_closes_a_live_tunnelled_connection() {
    if skip_unless_root() {
        return;
    }
    let net = "10.80.3";
    let config = mesh::config(net, "");
    let m = Mesh::start("hp3", net, &config, None, &[], &[]);
    let echo = EchoServer::serve(m.server_listener());
    let mut live = m.connect(echo.addr).expect("allowed");
    live.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    live.read_exact(&mut b).unwrap();
    // Node B learns a DENY for the client's principal.
    let deny = mesh::config(
        net,
        &format!(
            "policies:\n{}",
            policy(
                "deny-client",
                "Deny",
                false,
                &format!("principals: [{{Exact: \"{CLIENT}\"}}]")
            )
        ),
    );
    std::fs::write(&m.b.config_path, deny).unwrap();
    m.b.signal(libc::SIGHUP);
    assert!(closed_by_peer(&mut live), "the live connection is closed");
    // A new one is refused with 401 (node A answers the SOCKS5 client with a failure).
    assert!(m.connect(echo.addr).is_err());
    assert_eq!(
        m.a.metric("zpath_hbone_connect_responses_total{side=\"client\",status=\"401\"}"),
        1
    );
    m.a.assert_no_open_connections();
    m.b.assert_no_open_connections();
}
