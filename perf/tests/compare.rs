//! Short `compare` runs whose JSON is checked for sanity: every sample present and
//! successful, ratios to `direct` in (0, 2]. Timing is never asserted.
//!
//! `direct` vs the built-in reference `relay` always runs (netns mode as root, loopback
//! otherwise); `direct` vs `zpath` passthrough runs when ZPATH_BIN names a zpath binary;
//! `direct` vs `ztunnel` (rr only) runs as root when a ztunnel binary is found
//! (ZTUNNEL_BIN or ../shared/ztunnel/ztunnel).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::path::PathBuf;
use std::time::Duration;

use zpath_perf::compare::{run_compare, CompareConfig, LoadSettings, Scenario};
use zpath_perf::report::{self, JsonReport};
use zpath_perf::target::TargetSpec;

const SCENARIOS: [Scenario; 4] = [Scenario::Bulk, Scenario::Rr, Scenario::Crr, Scenario::Idle];

fn config(targets: &[&str], loopback: bool, out: PathBuf) -> CompareConfig {
    CompareConfig {
        targets: targets
            .iter()
            .map(|t| TargetSpec::resolve(t).unwrap())
            .collect(),
        scenarios: SCENARIOS.to_vec(),
        duration: Duration::from_millis(1500),
        repeats: 2,
        out,
        loopback,
        perf_record: None,
        self_exe: PathBuf::from(env!("CARGO_BIN_EXE_zpath-perf")),
        zpath_bin: std::env::var_os("ZPATH_BIN").map(PathBuf::from),
        ztunnel_bin: zpath_perf::binaries::find_ztunnel_here().ok(),
        load: LoadSettings {
            bulk_flows: 2,
            rr_connections: 2,
            crr_concurrency: 2,
            idle_connections: 200,
            ..LoadSettings::default()
        },
        progress: true,
    }
}

/// Runs the comparison, writes the report and checks the JSON read back.
fn run_and_check(cfg: &CompareConfig) {
    let samples = run_compare(cfg).unwrap();
    let summaries = report::summarise(&samples);
    let rep = JsonReport {
        run: serde_json::json!({"test": true}),
        samples,
        summaries,
    };
    report::write_all(&cfg.out, &rep).unwrap();
    eprintln!("{}", report::table(&rep.summaries));
    let text = std::fs::read_to_string(cfg.out.join("results.json")).unwrap();
    let back: JsonReport = serde_json::from_str(&text).unwrap();

    for &sc in &cfg.scenarios {
        assert!(cfg.out.join(format!("{}.svg", sc.name())).exists());
        for t in &cfg.targets {
            for rep in 0..cfg.repeats {
                let s = back
                    .samples
                    .iter()
                    .find(|s| s.scenario == sc && s.target == t.name && s.repeat == rep)
                    .unwrap_or_else(|| panic!("missing sample {sc:?} {} #{rep}", t.name));
                assert!(s.error.is_none(), "{sc:?} {} #{rep}: {:?}", t.name, s.error);
                assert!(s.value > 0.0, "{sc:?} {}", t.name);
                let proxied = t.client.is_some() || t.server.is_some();
                // A proxied sample has /proc readings; direct has none.
                assert_eq!(!s.proxy.readings.is_empty(), proxied, "{sc:?} {}", t.name);
                if sc == Scenario::Idle {
                    assert_eq!(s.connections, 200);
                    assert_eq!(s.rss_kib_per_conn.is_some(), proxied);
                }
                if matches!(sc, Scenario::Rr | Scenario::Crr) {
                    let l = s.latency.unwrap();
                    assert_eq!(l.count, s.requests);
                    assert!(l.p50_us <= l.p99_us && l.p99_us <= l.max_us);
                    assert_eq!(s.cpu_ms_per_1k_req.is_some(), proxied);
                    if !proxied {
                        assert!(s.syscalls_per_req.is_none() && s.proxy_syscalls.is_none());
                    } else if zpath_perf::sys::is_root() {
                        // Root can always count the proxies' system calls.
                        let per_req = s.syscalls_per_req.unwrap_or_else(|| {
                            panic!("{sc:?} {}: {:?}", t.name, s.syscalls_unavailable)
                        });
                        assert!(per_req > 0.0, "{sc:?} {}", t.name);
                        let total = s.proxy_syscalls.unwrap().total;
                        assert!(total >= s.requests, "{sc:?} {}: {total}", t.name);
                    } else {
                        assert!(s.syscalls_per_req.is_some() || s.syscalls_unavailable.is_some());
                    }
                }
                if sc == Scenario::Bulk {
                    assert_eq!(s.bytes_sent, s.bytes_received);
                    assert_eq!(s.cpu_s_per_gb.is_some(), proxied);
                }
                if t.name == "ztunnel" {
                    // The client node's ztunnel carried it, and the server node's, which
                    // nothing reaches but HBONE on 15008, saw every connection too.
                    for node in ["client", "server"] {
                        let opened = s
                            .proxy_counters_by_node
                            .get(node)
                            .and_then(|c| c.get("istio_tcp_connections_opened_total"));
                        assert!(
                            opened.is_some_and(|n| *n > 0.0),
                            "{sc:?}: ztunnel on the {node} node: {:?}",
                            s.proxy_counters_by_node
                        );
                    }
                }
                if t.name == "zpath" {
                    // The traffic really went through zpath: its own counters saw it.
                    let opened = s.proxy_counters.get("istio_tcp_connections_opened_total");
                    assert!(
                        opened.is_some_and(|n| *n > 0.0),
                        "{sc:?}: zpath's istio_tcp_connections_opened_total: {:?}",
                        s.proxy_counters
                    );
                }
            }
            let sum = back
                .summaries
                .iter()
                .find(|x| x.scenario == sc && x.target == t.name)
                .unwrap();
            let ratio = sum.ratio_to_direct.unwrap();
            assert!(
                ratio > 0.0 && ratio <= 2.0,
                "{sc:?} {}: ratio {ratio}",
                t.name
            );
        }
    }
}

#[test]
fn compare_direct_against_reference_relay() {
    let loopback = !zpath_perf::sys::is_root();
    if loopback {
        eprintln!("not root: comparing in loopback mode (SOCKS5 entry)");
    }
    let dir = tempfile::tempdir().unwrap();
    run_and_check(&config(
        &["direct", "relay"],
        loopback,
        dir.path().to_path_buf(),
    ));
}

#[test]
fn compare_direct_against_reference_relay_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    run_and_check(&config(
        &["direct", "relay"],
        true,
        dir.path().to_path_buf(),
    ));
}

#[test]
fn compare_direct_against_zpath_passthrough() {
    let Some(bin) = std::env::var_os("ZPATH_BIN") else {
        eprintln!(
            "skipping: set ZPATH_BIN to a zpath binary (cargo build --release -p zpath-engine; \
             ZPATH_BIN=target/release/zpath) to compare direct against zpath passthrough"
        );
        return;
    };
    assert!(
        PathBuf::from(&bin).exists(),
        "ZPATH_BIN={bin:?} does not exist"
    );
    let loopback = !zpath_perf::sys::is_root();
    let dir = tempfile::tempdir().unwrap();
    run_and_check(&config(
        &["direct", "zpath"],
        loopback,
        dir.path().to_path_buf(),
    ));
}

#[test]
fn compare_direct_against_zpath_hbone_between_two_nodes() {
    let Some(bin) = std::env::var_os("ZPATH_BIN") else {
        eprintln!(
            "skipping: set ZPATH_BIN to a zpath binary to compare direct against zpath-hbone"
        );
        return;
    };
    if !zpath_perf::sys::is_root() {
        eprintln!("skipping: zpath-hbone needs two network namespaces (root)");
        return;
    }
    assert!(
        PathBuf::from(&bin).exists(),
        "ZPATH_BIN={bin:?} does not exist"
    );
    let dir = tempfile::tempdir().unwrap();
    run_and_check(&config(
        &["direct", "zpath-hbone"],
        false,
        dir.path().to_path_buf(),
    ));
}

#[test]
fn compare_direct_against_ztunnel_rr_through_hbone() {
    if !zpath_perf::sys::is_root() {
        eprintln!("skipping: the ztunnel target needs two network namespaces (root)");
        return;
    }
    if let Err(e) = zpath_perf::binaries::find_ztunnel_here() {
        eprintln!("skipping: {e}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&["direct", "ztunnel"], false, dir.path().to_path_buf());
    cfg.scenarios = vec![Scenario::Rr];
    cfg.repeats = 1;
    run_and_check(&cfg);
}
