//! Start-up: a configuration source is required, and an empty one is asked for by name;
//! with no zpath flag, zpath takes ztunnel's environment and its defaults.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zpath_tests::node::zpath_bin;
use zpath_tests::{Node, NodeOptions};

#[path = "../../control/tests/support/mod.rs"]
mod support;

use std::sync::Arc;

use support::ca_server::{TestCa, TestRoot};
use support::xds_server::TestXdsServer;

/// Runs zpath with `env` (and nothing of this process's zpath or ztunnel environment)
/// until it exits; its exit code and standard error.
fn exit_of(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let state = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(zpath_bin());
    cmd.arg("--state-dir")
        .arg(state.path())
        .current_dir(state.path());
    for (k, _) in std::env::vars() {
        if k.starts_with("ZPATH_")
            || k.contains("XDS")
            || k.starts_with("CA_")
            || k == "KUBERNETES_SERVICE_HOST"
        {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start zpath");
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("zpath kept running with {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

/// Started with ztunnel's "no xDS" (an empty `XDS_ADDRESS`) and no local config, zpath
/// does not come up on an empty configuration: it exits with an error that names the
/// way out, before it listens anywhere.
#[test]
fn a_daemon_with_no_configuration_source_refuses_to_start() {
    let (code, err) = exit_of(&[("XDS_ADDRESS", "")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no configuration source"), "{err}");
    assert!(err.contains("--no-control-plane"), "{err}");
}

/// With nothing set, zpath takes ztunnel's default (istiod; outside a cluster, on
/// localhost) and, with no root certificate for it, refuses to start, naming ztunnel's
/// variable and the chart's mount.
#[test]
fn with_nothing_set_zpath_dials_ztunnels_default_and_needs_its_root() {
    let (code, err) = exit_of(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("https://localhost:15012"), "{err}");
    assert!(err.contains("XDS_ROOT_CA"), "{err}");
    let (code, err) = exit_of(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("https://istiod.istio-system.svc:15012"),
        "{err}"
    );
}

/// A value ztunnel would refuse stops zpath too, naming the variable.
#[test]
fn a_ztunnel_variable_that_does_not_parse_stops_the_start() {
    let (code, err) = exit_of(&[("XDS_ADDRESS", ""), ("KEEPALIVE_ENABLED", "yes")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("KEEPALIVE_ENABLED"), "{err}");
}

/// Run as the Istio chart runs ztunnel (its variables only, no zpath flag for the
/// source): zpath subscribes to the xDS address with the token and the node metadata
/// it was given, logs in JSON, and says which of ztunnel's settings it does not honour.
#[test]
fn ztunnels_environment_reaches_istiod() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut xds = rt.block_on(TestXdsServer::start());
    let root = Arc::new(TestRoot::new("mesh"));
    let ca = rt.block_on(TestCa::start(root.clone()));
    let dir = tempfile::tempdir().unwrap();
    let root_pem = root.write(dir.path(), "root.pem");
    let token = dir.path().join("istio-token");
    std::fs::write(&token, "token-7").unwrap();
    let env = |k: &str, v: &str| (k.to_string(), v.to_string());
    let mut node = Node::spawn(NodeOptions {
        config_file: false,
        env: vec![
            env("XDS_ADDRESS", &format!("http://{}", xds.addr)),
            env("CA_ADDRESS", &ca.url()),
            env("CA_ROOT_CA", &root_pem.display().to_string()),
            env("AUTH_TOKEN", &token.display().to_string()),
            env("ISTIO_META_MESH_ID", "mesh-7"),
            env("PROXY_MODE", "shared"),
            env("LOG_FORMAT", "json"),
        ],
        ..NodeOptions::default()
    });
    let first = rt.block_on(xds.next_request());
    assert_eq!(first.authorization.as_deref(), Some("Bearer token-7"));
    let metadata = first.request.node.and_then(|n| n.metadata).unwrap();
    let mesh = metadata.fields.get("MESH_ID").and_then(|v| v.kind.clone());
    assert!(
        matches!(&mesh, Some(prost_types::value::Kind::StringValue(s)) if s == "mesh-7"),
        "{mesh:?}"
    );
    let log = node.stderr();
    let notice = log
        .lines()
        .find(|l| l.contains("PROXY_MODE"))
        .unwrap_or_else(|| panic!("no notice for PROXY_MODE:\n{log}"));
    let line: serde_json::Value = serde_json::from_str(notice).expect("a JSON log line");
    assert_eq!(line["level"], "WARN", "{line}");
}

/// `--no-control-plane` runs on the empty configuration, and says so.
#[test]
fn no_control_plane_runs_on_an_empty_configuration_with_a_warning() {
    let mut node = Node::start(NodeOptions {
        config_file: false,
        args: vec!["--no-control-plane".into()],
        ..NodeOptions::default()
    });
    assert!(
        node.stderr().contains("running on an empty configuration"),
        "no warning:\n{}",
        node.stderr()
    );
}
