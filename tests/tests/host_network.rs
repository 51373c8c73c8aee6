//! Host-network workloads (`networkMode: HOST_NETWORK`) share their node's address, so
//! zpath never finds one by address: traffic to or from the node's address is not
//! that workload's. Over loopback through SOCKS5.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};

use zpath_tests::echo::EchoServer;
use zpath_tests::{socks5, Node, NodeOptions};

#[test]
fn an_address_held_only_by_a_host_network_workload_is_not_a_mesh_destination() {
    let echo = EchoServer::start("127.0.0.5:0");
    // An HBONE workload found at 127.0.0.5 would be dialled over HBONE (to port 15008,
    // where nothing listens); a host-network one is not found, so the connection
    // passes through to the application.
    let config = "workloads:\n- {name: agent, namespace: kube-system, workloadIps: [\"127.0.0.5\"], protocol: HBONE, node: node-a, networkMode: HOST_NETWORK}\n";
    let n = Node::start(NodeOptions {
        config: config.into(),
        ..NodeOptions::default()
    });
    let mut s = socks5::connect(n.socks5, echo.addr).unwrap().unwrap();
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    drop(s);
    let dump = n.config_dump();
    let agent = dump["snapshot"]["workloads"]
        .as_object()
        .unwrap()
        .values()
        .find(|w| w["name"] == "agent")
        .expect("the workload is kept by uid");
    assert_eq!(agent["networkMode"], "HOST_NETWORK");
    n.assert_no_open_connections();
}
