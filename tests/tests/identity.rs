//! Identity in the daemon: the built-in CA keeps its root across restarts, and workload
//! certificates rotate at half their lifetime without dropping live connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use zpath_tests::echo::EchoServer;
use zpath_tests::mesh::{self, Mesh};
use zpath_tests::{connect_request, is_root, Node, NodeOptions};

#[test]
fn a_restart_keeps_the_root_in_the_state_directory() {
    let state = tempfile::tempdir().unwrap();
    let opts = NodeOptions {
        state_dir: Some(state.path().to_path_buf()),
        config: "workloads:\n- name: app\n  namespace: default\n  workloadIps: [\"127.0.0.1\"]\n  protocol: HBONE\n  node: node-a\n".into(),
        ..NodeOptions::default()
    };
    let root_file = state.path().join(zpath_crypto::ROOT_CERT_FILE);
    let node = Node::start(opts.clone());
    let first = std::fs::read_to_string(&root_file).expect("root kept in the state directory");
    assert_eq!(
        node.metric("zpath_certificates "),
        1,
        "one workload, one certificate"
    );
    drop(node);
    let node = Node::start(opts);
    let second = std::fs::read_to_string(&root_file).unwrap();
    assert_eq!(first, second, "the same root after a restart");
    assert_eq!(node.metric("zpath_certificates "), 1);
}

#[test]
fn certificates_rotate_without_dropping_live_connections() {
    if !is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let net = "10.80.4";
    let config = mesh::config(net, "");
    // 10 s certificates: renewed every 5 s; the first ones expire after 10 s.
    let m = Mesh::start(
        "idr",
        net,
        &config,
        None,
        &["--cert-lifetime", "10s"],
        &["--cert-lifetime", "10s"],
    );
    let echo = EchoServer::serve(m.server_listener());
    let mut live = m.connect(echo.addr).unwrap();
    let started = Instant::now();
    let mut b = [0u8; 4];
    // Keep talking until the certificates the tunnel started with have expired.
    while started.elapsed() < Duration::from_secs(12) {
        live.write_all(b"tick").unwrap();
        live.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"tick");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(m.a.metric("zpath_certificates_issued_total") >= 3);
    assert!(m.b.metric("zpath_certificates_issued_total") >= 3);
    // A new TLS connection succeeds: both sides present their renewed certificates
    // (the first ones have expired, and each side rejects an expired peer).
    let answers = m.hbone_requests("client", vec![connect_request(&echo.addr.to_string())]);
    assert_eq!(answers, vec![Ok(200)]);
    assert_eq!(
        m.b.metric("zpath_tls_handshakes_total{side=\"server\",outcome=\"failed\""),
        0
    );
    drop(live);
    m.a.assert_no_open_connections();
}
