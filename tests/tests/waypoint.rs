//! Waypoints are not supported yet: a destination (workload or service) with one is
//! refused, counted under `waypoint_unsupported`, rather than reached directly, which
//! would bypass the L7 policy at its waypoint. Over loopback through SOCKS5.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::Duration;

use zpath_tests::echo::EchoServer;
use zpath_tests::{socks5, wait_for, Node, NodeOptions};

/// SOCKS5 reply: connection not allowed by ruleset.
const NOT_ALLOWED: u8 = 2;

#[test]
fn socks5_to_a_workload_or_service_with_a_waypoint_is_refused_and_counted() {
    let guarded = EchoServer::start("127.0.0.7:0");
    let open = EchoServer::start("127.0.0.9:0");
    let port = guarded.addr.port();
    let config = format!(
        r#"workloads:
- name: guarded
  namespace: default
  workloadIps: ["127.0.0.7"]
  waypoint: {{destination: "/127.0.0.250", hboneMtlsPort: 15008}}
  services:
    default/guarded.default.svc.cluster.local: {{80: {port}}}
- name: open
  namespace: default
  workloadIps: ["127.0.0.9"]
services:
- name: guarded
  namespace: default
  hostname: guarded.default.svc.cluster.local
  vips: ["/127.0.0.8"]
  ports: {{80: {port}}}
  waypoint:
    destination: {{namespace: default, hostname: waypoint.default.svc.cluster.local}}
    hboneMtlsPort: 15008
"#
    );
    let n = Node::start(NodeOptions {
        config,
        ..NodeOptions::default()
    });
    // Addressed to the workload, then to its service's VIP: both refused.
    assert_eq!(
        socks5::connect(n.socks5, guarded.addr).unwrap().err(),
        Some(NOT_ALLOWED)
    );
    assert_eq!(
        socks5::connect(n.socks5, "127.0.0.8:80".parse().unwrap())
            .unwrap()
            .err(),
        Some(NOT_ALLOWED)
    );
    // Counted once the flow ends, just after its reply.
    let refused =
        "zpath_connections_failed_total{direction=\"outbound\",reason=\"waypoint_unsupported\"}";
    wait_for("both refusals counted", Duration::from_secs(10), || {
        n.metric(refused) == 2
    });
    // A workload without a waypoint is reached as before.
    let mut s = socks5::connect(n.socks5, open.addr).unwrap().unwrap();
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    drop(s);
    n.assert_no_open_connections();
}
