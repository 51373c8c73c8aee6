//! Start-up: a configuration source is required, and an empty one is asked for by name.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zpath_tests::node::zpath_bin;
use zpath_tests::{Node, NodeOptions};

/// Started with neither a config file nor an xDS address (an environment with a typo,
/// say), zpath does not come up on an empty configuration: it exits with an error that
/// names the way out, before it listens anywhere.
#[test]
fn a_daemon_with_no_configuration_source_refuses_to_start() {
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(zpath_bin())
        .arg("--state-dir")
        .arg(state.path())
        .env_remove("ZPATH_CONFIG")
        .env_remove("ZPATH_XDS_ADDRESS")
        .env_remove("ZPATH_NO_CONTROL_PLANE")
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
            panic!("zpath kept running with no configuration source");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("no configuration source"), "{err}");
    assert!(err.contains("--no-control-plane"), "{err}");
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
