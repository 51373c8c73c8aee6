//! Bodies of the control crate's fuzz targets (`control/fuzz`) that are not xDS, shared
//! with the unit test that runs them over the seed corpus, so `cargo test` replays
//! every committed seed. (The xDS decoder's body is
//! [`crate::xds::resource::fuzz_decode`].)
//!
//! [`local_config`] never panics on any input unless the local config's conversion
//! into a snapshot breaks a property it checks, which is a bug in this crate; nor does
//! [`zds`] unless the ZDS session ([`crate::zds::Pods`]) breaks one of its own.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::config::LocalConfig;
use crate::model::NetworkMode;
use crate::snapshot::{Addressed, Route, Snapshot};

/// Largest input the body parses: local config files are small, and a larger input
/// only makes the fuzzer slower.
const MAX_INPUT: usize = 64 << 10;
/// Node names a snapshot is built for, at most, per input.
const MAX_NODES: usize = 3;

/// Checks the snapshot built from `config` for `node`: every workload and address
/// is found, every VIP routes into the mesh, policy answers for every local address,
/// and the admin dump serializes.
fn check_snapshot(config: &LocalConfig, node: &str) {
    let snapshot = Snapshot::from_local(config, node, 1);
    for wl in &config.workloads {
        let found = snapshot.workload(&wl.uid);
        assert!(found.is_some(), "workload {} missing", wl.uid);
        if wl.network_mode == NetworkMode::HostNetwork {
            // Never found by address: the node's address is not its identity.
            for &ip in &wl.workload_ips {
                let owner = snapshot.workload_by_ip(ip);
                assert!(owner.is_none_or(|o| o.uid != wl.uid), "host-network {ip}");
            }
            continue;
        }
        for &ip in &wl.workload_ips {
            let owner = snapshot.workload_by_ip(ip).map(|w| w.uid.clone());
            assert_eq!(owner.as_deref(), Some(&*wl.uid), "address {ip}");
            match snapshot.route(SocketAddr::new(ip, 80), 0) {
                Route::Workload { workload, addr } => {
                    assert_eq!(workload.uid, wl.uid, "route to {ip}");
                    assert_eq!(addr, SocketAddr::new(ip, 80), "route to {ip}");
                }
                // Refused until waypoints are supported, never reached directly.
                Route::Waypoint {
                    destination: Addressed::Workload(workload),
                    ..
                } if workload.waypoint.is_some() => {
                    assert_eq!(workload.uid, wl.uid, "route to {ip}");
                }
                other => panic!("{ip} of workload {} routes to {other:?}", wl.uid),
            }
            let local = snapshot.local_workload(ip).is_some();
            assert_eq!(local, !node.is_empty() && *wl.node == *node, "{ip} local");
            authorize_all(&snapshot, ip);
        }
    }
    for svc in &config.services {
        for &vip in &svc.vips {
            let ports = svc.ports.keys().copied().chain([0, 1, u16::MAX]);
            for (pick, port) in ports.take(8).enumerate() {
                let route = snapshot.route(SocketAddr::new(vip, port), pick as u32);
                assert!(
                    !matches!(route, Route::Passthrough(_)),
                    "VIP {vip}:{port} of {} passes through",
                    svc.hostname
                );
            }
        }
    }
    let next = snapshot.builder().finish();
    assert_eq!(next.generation, snapshot.generation + 1);
    assert!(serde_json::to_string(&snapshot).is_ok(), "admin dump fails");
}

/// Authorizes a plaintext and a mesh connection to `dst`: any decision, no panic.
fn authorize_all(snapshot: &Snapshot, dst: IpAddr) {
    let identity = "spiffe://cluster.local/ns/default/sa/default";
    for peer in [None, zpath_policy::Peer::parse(identity).ok()] {
        let conn = zpath_policy::Conn {
            src_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dst_ip: dst,
            dst_port: 80,
            peer,
        };
        let _ = snapshot.authorize(&conn);
    }
}

/// The fuzz entry point: the bytes (as UTF-8, invalid sequences replaced) are a local
/// config file; a file that parses is built into snapshots for no node and for its
/// workloads' nodes, each checked. Returns whether the file parsed (for the seed test).
pub fn local_config(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&data[..data.len().min(MAX_INPUT)]);
    let config = match LocalConfig::parse(&text) {
        Ok(config) => config,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return false;
        }
    };
    let mut nodes: Vec<&str> = vec![""];
    for wl in &config.workloads {
        if nodes.len() < MAX_NODES && !nodes.contains(&&*wl.node) {
            nodes.push(&wl.node);
        }
    }
    for node in nodes {
        check_snapshot(&config, node);
    }
    true
}

/// The ZDS fuzz entry point: `data` is a sequence of received packets, each as one
/// byte (its low two bits: descriptors carried, 0 to 3; bit 2: truncated; bit 3: a
/// reconnection before it), one byte of length, then that many bytes. Each packet is
/// decoded and handled as the CNI's next request. Checks: a start is only asked for a
/// pod not served, a stop only for served pods, and every request carried out or
/// refused without a change. Returns how many requests were carried out.
pub fn zds(data: &[u8]) -> usize {
    use crate::zds::{decode, Change, Pods};
    let mut pods = Pods::default();
    pods.connected();
    let (mut rest, mut done, mut slot) = (data, 0, 0u64);
    while let [head, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (packet, next) = tail.split_at(len);
        rest = next;
        if head & 8 != 0 {
            pods.connected();
        }
        let fds = vec![(); usize::from(head & 3)];
        let Ok(request) = decode(packet, fds, head & 4 != 0) else {
            continue;
        };
        let before = pods.len();
        match pods.handle(request) {
            Ok(Change::Start { uid, .. }) => {
                assert!(!pods.serves(&uid), "start of {uid}, already served");
                slot += 1;
                pods.started(uid, slot);
                assert_eq!(pods.len(), before + 1);
            }
            Ok(Change::Stop(gone)) => {
                for (uid, _) in &gone {
                    assert!(!pods.serves(uid), "{uid} stopped but still served");
                }
                assert_eq!(pods.len() + gone.len(), before);
            }
            Ok(Change::None) => assert_eq!(pods.len(), before),
            Err(_) => {
                assert_eq!(pods.len(), before, "a refused request changed the pods");
                continue;
            }
        }
        done += 1;
    }
    done
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn local_config_fuzz_seed_corpus_runs_clean() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/local_config");
        let (mut files, mut parsed) = (0, 0);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            parsed += usize::from(local_config(&data));
            files += 1;
        }
        assert!(files >= 8, "seed corpus missing in {}", dir.display());
        assert!(
            parsed > 0 && parsed < files,
            "{parsed} of {files} seeds parse"
        );
    }

    #[test]
    fn zds_fuzz_seed_corpus_runs_clean() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/zds");
        let (mut files, mut done) = (0, 0);
        for entry in std::fs::read_dir(&dir).unwrap() {
            done += zds(&std::fs::read(entry.unwrap().path()).unwrap());
            files += 1;
        }
        assert!(files >= 3, "seed corpus missing in {}", dir.display());
        assert!(done > 5, "the seeds carry out {done} requests");
    }

    #[test]
    fn the_shipped_example_is_a_seed_that_parses() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/local.yaml");
        assert!(local_config(&std::fs::read(example).unwrap()));
    }
}
