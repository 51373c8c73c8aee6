//! The admin endpoint's run-time controls, as ztunnel's: `/logging` reads and changes
//! the log filter, `/quitquitquit` drains and stops the daemon.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use zpath_tests::node::{http_get, http_post};
use zpath_tests::{Node, NodeOptions};

#[test]
fn logging_reads_and_changes_the_level_and_quitquitquit_stops_the_daemon() {
    let mut node = Node::start(NodeOptions::default());
    let admin = node.admin;
    let post = |path: &str| http_post(admin, path).unwrap();
    assert_eq!(
        post("/logging"),
        (200, "current log level is info\n".into())
    );
    assert_eq!(
        post("/logging?level=debug"),
        (200, "current log level is debug\n".into())
    );
    let (status, body) = post("/logging?level=info,zpath_engine=trace");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("zpath_engine=trace"), "{body}");
    let (status, body) = post("/logging?level=loud");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Invalid level provided: loud"), "{body}");
    assert_eq!(
        post("/logging?reset"),
        (200, "current log level is info\n".into())
    );
    // Both are POST only, as in ztunnel.
    assert_eq!(http_get(node.admin, "/logging").unwrap().0, 405);
    assert_eq!(http_get(node.admin, "/quitquitquit").unwrap().0, 405);
    // Each change is logged (at info, so it shows under the filter it leaves).
    assert!(node.stderr().contains("log level changed on /logging"));
    assert_eq!(post("/quitquitquit"), (200, "shutdown now\n".into()));
    let status = node.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert!(node
        .stderr()
        .contains("shutdown asked for on /quitquitquit"));
}
