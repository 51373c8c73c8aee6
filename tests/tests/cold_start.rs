//! Cold start with an Istio CA that is slow to answer: the first connection of a
//! workload waits for its certificate instead of failing, readiness waits for the
//! certificates of the workloads known at start, and a CA that never answers fails
//! the connection after --connect-timeout, counted. Root only: the node runs in its
//! own network namespace so that it can own port 15008.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../control/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use support::ca_server::{TestCa, TestRoot};
use zpath_tests::echo::EchoServer;
use zpath_tests::netns::Netns;
use zpath_tests::{roundtrip, skip_unless_root, wait_for, Node, NodeOptions};

/// The workload at 127.0.0.1, served here over HBONE: reaching 127.0.0.1 through
/// SOCKS5 from 127.0.0.1 needs its certificate on both ends of the tunnel.
const CONFIG: &str = "workloads:
- name: app
  namespace: default
  serviceAccount: app
  workloadIps: [\"127.0.0.1\"]
  protocol: HBONE
  node: node-a
";

/// Through SOCKS5 from 127.0.0.1 over HBONE to `target`; `Err` says how it was refused.
fn flow(socks5: SocketAddr, target: SocketAddr) -> Result<Vec<u8>, String> {
    match zpath_tests::socks5::connect(socks5, target) {
        Ok(Ok(s)) => Ok(roundtrip(s, b"first light")),
        Ok(Err(code)) => Err(format!("SOCKS5 reply {code}")),
        Err(e) => Err(format!("closed: {e}")),
    }
}

/// Runs `test` in a new namespace with a CA that holds each answer `delay`, and a
/// node (not waited for) using it with `args`.
fn with_slow_ca(tag: &str, delay: Duration, args: &[&str], test: fn(&mut Node, &TestCa)) {
    let ns = Netns::new(tag);
    let ns_name = ns.name.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    ns.enter(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let root = Arc::new(TestRoot::new("mesh"));
        let dir = tempfile::tempdir().unwrap();
        let root_pem = root.write(dir.path(), "root.pem");
        let ca = rt.block_on(TestCa::start(root));
        ca.state.lock().unwrap().delay = delay;
        let mut flags = vec![
            "--ca-address".to_string(),
            ca.url(),
            "--ca-root-cert".into(),
            root_pem.display().to_string(),
        ];
        flags.extend(args);
        let mut node = Node::spawn(NodeOptions {
            config: CONFIG.into(),
            netns: Some(ns_name),
            hbone_port: Some(15008),
            args: flags,
            ..NodeOptions::default()
        });
        // The control thread (and the CA client) run once the metrics answer.
        wait_for("the metrics endpoint", Duration::from_secs(30), || {
            node.get(node.metrics, "/stats/prometheus").is_ok()
        });
        test(&mut node, &ca);
        drop(node);
        rt.shutdown_background();
    });
}

fn ready(node: &Node) -> bool {
    matches!(node.get(node.readiness, "/healthz/ready"), Ok((200, _)))
}

#[test]
fn the_first_connection_waits_for_a_certificate_the_ca_is_slow_to_issue() {
    if skip_unless_root() {
        return;
    }
    with_slow_ca("zp-cold", Duration::from_secs(1), &[], |node, ca| {
        assert_eq!(
            node.metric("zpath_certificates "),
            0,
            "the CA holds its answer"
        );
        assert!(!ready(node), "ready before the workload's certificate");
        let echo = EchoServer::start("127.0.0.1:0");
        let (socks5, target) = (node.socks5, echo.addr);
        let first = std::thread::spawn(move || flow(socks5, target));
        // Readiness never precedes the certificate (checked in that order: a
        // certificate is never taken back here).
        while !first.is_finished() {
            let was_ready = ready(node);
            if was_ready {
                assert_eq!(node.metric("zpath_certificates "), 1, "ready without it");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(first.join().unwrap().unwrap(), b"first light");
        node.wait_ready();
        assert_eq!(
            node.metric(
                "zpath_connections_failed_total{direction=\"outbound\",reason=\"no_certificate\"}"
            ),
            0
        );
        let asked = ca.seen();
        assert!(
            asked
                .iter()
                .any(|c| c.san.iter().any(|s| s.ends_with("/ns/default/sa/app"))),
            "{asked:?}"
        );
        node.assert_no_open_connections();
    });
}

#[test]
fn a_connection_fails_counted_after_the_connect_timeout_when_the_ca_never_answers() {
    if skip_unless_root() {
        return;
    }
    let hold = Duration::from_secs(3600);
    with_slow_ca(
        "zp-nocert",
        hold,
        &["--connect-timeout", "1s"],
        |node, _| {
            let echo = EchoServer::start("127.0.0.1:0");
            let refused = flow(node.socks5, echo.addr);
            assert!(
                refused.is_err(),
                "relayed without a certificate: {refused:?}"
            );
            wait_for("the failure to be counted", Duration::from_secs(10), || {
                node.metric(
                "zpath_connections_failed_total{direction=\"outbound\",reason=\"no_certificate\"}",
            ) == 1
            });
            assert!(!ready(node), "ready without the workload's certificate");
            node.assert_no_open_connections();
            let log = node.stderr();
            assert!(log.contains("--connect-timeout"), "{log}");
        },
    );
}
