//! The daemon on a control plane: workloads and policies from an xDS server, workload
//! certificates from an Istio CA, both test servers speaking the real gRPC protocols
//! over real sockets (the same test servers as `control/tests`). Root only: the node
//! runs in its own network namespace so that it can own port 15008.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../control/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use support::ca_server::{TestCa, TestRoot};
use support::xds_server::{response, TestXdsServer};
use zpath_control::proto::envoy::service::discovery::v3::Resource;
use zpath_control::proto::istio::security::{Action, Authorization, Clause, Match, Rule, Scope};
use zpath_control::proto::istio::workload::{address, Address, TunnelProtocol, Workload};
use zpath_control::xds::resource::to_any;
use zpath_control::xds::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use zpath_tests::echo::EchoServer;
use zpath_tests::netns::Netns;
use zpath_tests::{is_root, roundtrip, wait_for, Node, NodeOptions};

fn workload() -> Resource {
    let a = Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: "Kubernetes//Pod/default/local".into(),
            name: "local".into(),
            namespace: "default".into(),
            addresses: vec![vec![127, 0, 0, 1]],
            service_account: "default".into(),
            trust_domain: "cluster.local".into(),
            node: "node-a".into(),
            tunnel_protocol: TunnelProtocol::Hbone as i32,
            ..Default::default()
        })),
    };
    Resource {
        name: "Kubernetes//Pod/default/local".into(),
        version: "1".into(),
        resource: Some(to_any(ADDRESS_TYPE_URL, &a)),
        ..Default::default()
    }
}

fn deny_port(port: u16) -> Resource {
    let p = Authorization {
        name: "deny-port".into(),
        namespace: "default".into(),
        scope: Scope::Namespace as i32,
        action: Action::Deny as i32,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    destination_ports: vec![u32::from(port)],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    Resource {
        name: "default/deny-port".into(),
        version: "1".into(),
        resource: Some(to_any(AUTHORIZATION_TYPE_URL, &p)),
        ..Default::default()
    }
}

/// Through the node's SOCKS5 entry from 127.0.0.1 (the workload), over HBONE to its
/// own 15008, to `target`; `Err` says how it was refused.
fn flow(node: &Node, target: SocketAddr) -> Result<Vec<u8>, String> {
    match zpath_tests::socks5::connect(node.socks5, target) {
        Ok(Ok(s)) => Ok(roundtrip(s, b"over the mesh")),
        Ok(Err(code)) => Err(format!("SOCKS5 reply {code}")),
        Err(e) => Err(format!("closed: {e}")),
    }
}

#[test]
fn workloads_policies_and_certificates_come_from_the_control_plane() {
    if !is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let ns = Netns::new("zp-cp");
    let ns_name = ns.name.clone();
    ns.enter(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let root = Arc::new(TestRoot::new("mesh"));
        let dir = tempfile::tempdir().unwrap();
        let root_pem = root.write(dir.path(), "root.pem");
        let mut xds = rt.block_on(TestXdsServer::start());
        let ca = rt.block_on(TestCa::start(root.clone()));
        let mut node = Node::spawn(NodeOptions {
            netns: Some(ns_name),
            config_file: false,
            hbone_port: Some(15008),
            args: vec![
                "--xds-address".into(),
                xds.url(),
                "--ca-address".into(),
                ca.url(),
                "--ca-root-cert".into(),
                root_pem.display().to_string(),
            ],
            ..NodeOptions::default()
        });
        // Subscribed, but nothing received yet: not ready.
        let first = rt.block_on(xds.next_request());
        assert!(!first.request.type_url.is_empty());
        assert!(
            !matches!(node.get(node.readiness, "/healthz/ready"), Ok((200, _))),
            "ready before the first xDS response"
        );
        // And failing closed: nothing is relayed without a configuration.
        let early = EchoServer::start("127.0.0.1:0");
        assert!(
            flow(&node, early.addr).is_err(),
            "relayed before any configuration"
        );
        // Counted once the shard has closed the connection: the client may see the
        // close first.
        wait_for("the refusal to be counted", Duration::from_secs(5), || {
            node.metric(
                "zpath_connections_failed_total{direction=\"outbound\",reason=\"no_config\"}",
            ) == 1
        });
        drop(early);
        rt.block_on(async {
            xds.push(response(ADDRESS_TYPE_URL, "n1", vec![workload()], &[]))
                .await;
            xds.push(response(AUTHORIZATION_TYPE_URL, "n2", vec![], &[]))
                .await;
        });
        node.wait_ready();
        let dump = node.config_dump().to_string();
        assert!(dump.contains("Kubernetes//Pod/default/local"), "{dump}");

        // The workload's certificate came from the CA, for its identity.
        wait_for("a certificate from the CA", Duration::from_secs(20), || {
            node.metric("zpath_certificates ") == 1
        });
        // The config dump shows it as ztunnel's does: by identity, with its chain and
        // roots, serials and validity.
        let dump = node.config_dump();
        let cert = &dump["certificates"][0];
        assert_eq!(
            cert["identity"], "spiffe://cluster.local/ns/default/sa/default",
            "{dump}"
        );
        assert_eq!(cert["state"], "Available", "{dump}");
        let leaf = &cert["certChain"][0];
        for key in ["pem", "serialNumber", "validFrom", "expirationTime"] {
            assert!(
                leaf[key].as_str().is_some_and(|v| !v.is_empty()),
                "{key}: {dump}"
            );
        }
        assert!(
            leaf["expirationTime"].as_str().unwrap().ends_with('Z'),
            "{dump}"
        );
        assert!(!cert["rootCerts"].as_array().unwrap().is_empty(), "{dump}");
        let csrs = ca.seen();
        assert!(
            csrs.iter()
                .any(|c| format!("{c:?}").contains("spiffe://cluster.local/ns/default/sa/default")),
            "{csrs:?}"
        );

        let echo = EchoServer::start("127.0.0.1:0");
        assert_eq!(flow(&node, echo.addr).unwrap(), b"over the mesh");
        assert_eq!(
            node.metric("zpath_tls_handshakes_total{side=\"server\",outcome=\"ok\""),
            1
        );

        // A DENY pushed over xDS refuses the next flow; removing it allows again.
        rt.block_on(xds.push(response(
            AUTHORIZATION_TYPE_URL,
            "n3",
            vec![deny_port(echo.addr.port())],
            &[],
        )));
        wait_for("the policy to apply", Duration::from_secs(20), || {
            flow(&node, echo.addr).is_err()
        });
        assert!(
            node.metric("zpath_hbone_connect_responses_total{side=\"server\",status=\"401\"}") >= 1
        );
        rt.block_on(xds.push(response(
            AUTHORIZATION_TYPE_URL,
            "n4",
            vec![],
            &["default/deny-port"],
        )));
        wait_for("the policy removal", Duration::from_secs(20), || {
            flow(&node, echo.addr).is_ok()
        });
        assert!(node.metric("zpath_xds_updates_total{result=\"accepted\"}") >= 4);
        // ztunnel's own xDS counters: the responses by type, none of the stream ending.
        let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
            let samples = node.samples(name);
            let found: Vec<_> = samples.iter().filter(|s| s.has(labels)).collect();
            assert_eq!(found.len(), 1, "{name} {labels:?}: {samples:?}");
            found[0].value
        };
        let url = |t: &'static str| [("url", t)];
        let auth = url("type.googleapis.com/istio.security.Authorization");
        assert!(
            value("istio_xds_message_total", &auth) >= 3.0,
            "{}",
            node.metrics_text()
        );
        let address = url("type.googleapis.com/istio.workload.Address");
        assert!(value("istio_xds_message_bytes_total", &address) > 0.0);
        assert_eq!(node.metric("istio_xds_connection_terminations_total"), 0);
        let build = [("component", "ztunnel"), ("tag", "unknown")];
        assert_eq!(value("istio_build", &build), 1.0);
        node.assert_no_open_connections();
    });
}
