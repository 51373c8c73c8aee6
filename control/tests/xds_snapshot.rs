//! xDS from an in-process ADS server over real loopback gRPC, all the way to the
//! published snapshot the data path reads: routes, authorization, NACKs, reconnects.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::LocalSet;

use support::xds_server::{response, Seen, TestXdsServer, WAIT};
use zpath_control::proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use zpath_control::proto::istio::security::{Action, Authorization, Rule, Scope};
use zpath_control::proto::istio::workload::{
    address, Address, NetworkAddress, Port, PortList, Service, TunnelProtocol, Workload,
};
use zpath_control::xds::resource::to_any;
use zpath_control::xds::{
    BackoffConfig, NodeInfo, XdsClientConfig, XdsSource, XdsStats, ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
};
use zpath_control::{Route, Snapshot, SnapshotCell};

const NODE: &str = "worker-1";
const VIP: &str = "10.96.0.10:80";

fn workload(uid: &str, version: &str, ip: [u8; 4]) -> Resource {
    let w = Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: "default".into(),
        addresses: vec![ip.to_vec()],
        service_account: "echo".into(),
        node: NODE.into(),
        tunnel_protocol: TunnelProtocol::Hbone as i32,
        services: [(
            "default/echo.default.svc.cluster.local".to_string(),
            PortList {
                ports: vec![Port {
                    service_port: 80,
                    target_port: 8080,
                }],
            },
        )]
        .into(),
        ..Default::default()
    };
    resource(uid, version, address::Type::Workload(w))
}

fn resource(name: &str, version: &str, t: address::Type) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(to_any(ADDRESS_TYPE_URL, &Address { r#type: Some(t) })),
        ..Default::default()
    }
}

fn service(version: &str, vip: [u8; 4]) -> Resource {
    let s = Service {
        name: "echo".into(),
        namespace: "default".into(),
        hostname: "echo.default.svc.cluster.local".into(),
        addresses: vec![NetworkAddress {
            network: String::new(),
            address: vip.to_vec(),
        }],
        ports: vec![Port {
            service_port: 80,
            target_port: 0,
        }],
        ..Default::default()
    };
    resource(
        "default/echo.default.svc.cluster.local",
        version,
        address::Type::Service(s),
    )
}

/// DENY everything in namespace `default`.
fn deny_all(version: &str) -> Resource {
    let p = Authorization {
        name: "deny-all".into(),
        namespace: "default".into(),
        scope: Scope::Namespace as i32,
        action: Action::Deny as i32,
        rules: vec![Rule { clauses: vec![] }],
        dry_run: false,
    };
    Resource {
        name: "default/deny-all".into(),
        version: version.into(),
        resource: Some(to_any(AUTHORIZATION_TYPE_URL, &p)),
        ..Default::default()
    }
}

struct Harness {
    server: TestXdsServer,
    cell: Arc<SnapshotCell>,
    ready: tokio::sync::watch::Receiver<bool>,
    stats: Arc<XdsStats>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<XdsSource>,
}

async fn start() -> Harness {
    let server = TestXdsServer::start().await;
    let node = NodeInfo {
        node_name: NODE.into(),
        pod_name: "zpath-x".into(),
        pod_namespace: "istio-system".into(),
        ..Default::default()
    };
    let mut config = XdsClientConfig::new(server.url(), node);
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(200),
    };
    let cell = Arc::new(SnapshotCell::new(Snapshot::default()));
    let source = XdsSource::new(config, cell.clone(), NODE).unwrap();
    let ready = source.readiness();
    let stats = source.stats();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let task = tokio::task::spawn_local(source.run(async {
        let _ = stop_rx.await;
    }));
    Harness {
        server,
        cell,
        ready,
        stats,
        stop,
        task,
    }
}

impl Harness {
    async fn finish(self) -> XdsSource {
        self.stop.send(()).unwrap();
        self.task.await.unwrap()
    }

    /// Pushes a response and waits for its ACK (or NACK), returned.
    async fn push(&mut self, response: DeltaDiscoveryResponse) -> Seen {
        let nonce = response.nonce.clone();
        self.server.push(response).await;
        let seen = self.server.next_request().await;
        assert_eq!(seen.request.response_nonce, nonce);
        seen
    }

    async fn push_acked(&mut self, response: DeltaDiscoveryResponse) {
        let seen = self.push(response).await;
        assert!(
            seen.request.error_detail.is_none(),
            "unexpected NACK: {:?}",
            seen.request.error_detail
        );
    }

    /// Answers the first requests with two workloads, the service and no policy.
    async fn initial_sync(&mut self) {
        self.server.next_request().await;
        self.server.next_request().await;
        self.push_acked(response(
            ADDRESS_TYPE_URL,
            "a1",
            vec![
                workload("w1", "1", [10, 0, 0, 1]),
                workload("w2", "1", [10, 0, 0, 2]),
                service("1", [10, 96, 0, 10]),
            ],
            &[],
        ))
        .await;
        assert!(
            !*self.ready.borrow(),
            "ready before every type was answered"
        );
        self.push_acked(response(AUTHORIZATION_TYPE_URL, "p1", vec![], &[]))
            .await;
        tokio::time::timeout(WAIT, self.ready.wait_for(|r| *r))
            .await
            .expect("never ready")
            .unwrap();
    }
}

/// The uids a VIP connection can reach in the published snapshot.
fn vip_endpoints(s: &Snapshot) -> Vec<String> {
    let mut uids: Vec<String> = (0..64)
        .filter_map(|pick| match s.route(VIP.parse().unwrap(), pick) {
            Route::Workload { workload, .. } => Some(workload.uid.to_string()),
            _ => None,
        })
        .collect();
    uids.sort();
    uids.dedup();
    uids
}

/// The snapshot as /config_dump shows it, without the generation.
fn content(s: &Snapshot) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap();
    v.as_object_mut().unwrap().remove("generation");
    v
}

fn allowed(s: &Snapshot, dst: &str) -> bool {
    let conn = zpath_policy_conn(dst);
    s.authorize(&conn).is_ok_and(|o| o.decision.is_allow())
}

fn zpath_policy_conn(dst: &str) -> zpath_policy::Conn<'static> {
    zpath_policy::Conn {
        src_ip: "10.1.2.3".parse().unwrap(),
        dst_ip: dst.parse().unwrap(),
        dst_port: 8080,
        peer: None,
    }
}

#[tokio::test]
async fn initial_sync_publishes_a_snapshot_that_routes_to_the_new_workloads() {
    LocalSet::new()
        .run_until(async {
            let mut h = start().await;
            assert_eq!(h.cell.generation(), 0);
            h.initial_sync().await;
            let s = h.cell.load();
            assert!(s.generation >= 1);
            assert_eq!(vip_endpoints(&s), ["w1", "w2"]);
            match s.route(VIP.parse().unwrap(), 0) {
                Route::Workload { addr, workload } => {
                    assert_eq!(addr.port(), 8080);
                    assert!(Route::Workload { addr, workload }.is_hbone());
                }
                other => panic!("unexpected {other:?}"),
            }
            let direct: SocketAddr = "10.0.0.2:5000".parse().unwrap();
            assert!(matches!(s.route(direct, 0), Route::Workload { addr, .. } if addr == direct));
            assert_eq!(s.local_workloads().count(), 2);
            assert!(allowed(&s, "10.0.0.1"));
            assert_eq!(h.stats.updates_accepted.load(Ordering::Relaxed), 2);
            h.finish().await;
        })
        .await;
}

#[tokio::test]
async fn add_update_remove_and_a_policy_push_reach_the_data_path() {
    LocalSet::new()
        .run_until(async {
            let mut h = start().await;
            h.initial_sync().await;

            // w1 moves, w3 arrives, w2 leaves.
            h.push_acked(response(
                ADDRESS_TYPE_URL,
                "a2",
                vec![
                    workload("w1", "2", [10, 0, 0, 11]),
                    workload("w3", "1", [10, 0, 0, 3]),
                ],
                &["w2"],
            ))
            .await;
            let s = h.cell.load();
            assert_eq!(vip_endpoints(&s), ["w1", "w3"]);
            assert!(s.workload_by_ip("10.0.0.1".parse().unwrap()).is_none());
            assert_eq!(
                &*s.workload_by_ip("10.0.0.11".parse().unwrap()).unwrap().uid,
                "w1"
            );
            assert!(s.workload_by_ip("10.0.0.2".parse().unwrap()).is_none());

            // A flow allowed, then denied after a policy push, then allowed again.
            assert!(allowed(&h.cell.load(), "10.0.0.3"));
            h.push_acked(response(
                AUTHORIZATION_TYPE_URL,
                "p2",
                vec![deny_all("1")],
                &[],
            ))
            .await;
            assert!(!allowed(&h.cell.load(), "10.0.0.3"));
            h.push_acked(response(
                AUTHORIZATION_TYPE_URL,
                "p3",
                vec![],
                &["default/deny-all"],
            ))
            .await;
            assert!(allowed(&h.cell.load(), "10.0.0.3"));

            // The service changes VIP, then goes away; its endpoints stay with the workloads.
            h.push_acked(response(
                ADDRESS_TYPE_URL,
                "a3",
                vec![service("2", [10, 96, 0, 11])],
                &[],
            ))
            .await;
            let s = h.cell.load();
            assert!(vip_endpoints(&s).is_empty(), "old VIP no longer routed");
            assert!(matches!(
                s.route("10.96.0.11:80".parse().unwrap(), 0),
                Route::Workload { .. }
            ));
            h.push_acked(response(
                ADDRESS_TYPE_URL,
                "a4",
                vec![],
                &["default/echo.default.svc.cluster.local"],
            ))
            .await;
            let s = h.cell.load();
            let dst: SocketAddr = "10.96.0.11:80".parse().unwrap();
            assert_eq!(s.route(dst, 0), Route::Passthrough(dst));
            assert!(s.services.is_empty());
            assert_eq!(s.workloads.len(), 2);
            h.finish().await;
        })
        .await;
}

#[tokio::test]
async fn invalid_resource_is_nacked_while_the_previous_snapshot_keeps_serving() {
    LocalSet::new()
        .run_until(async {
            let mut h = start().await;
            h.initial_sync().await;
            let before = h.cell.load();

            // w1 with a 3-byte address: the whole response carries nothing else.
            let mut bad = workload("w1", "3", [10, 0, 0, 1]);
            let mut wire =
                zpath_control::xds::decode_address(&bad.resource.as_ref().unwrap().value).unwrap();
            if let Some(address::Type::Workload(w)) = &mut wire.r#type {
                w.addresses = vec![vec![10, 0, 0]];
            }
            bad.resource = Some(to_any(ADDRESS_TYPE_URL, &wire));
            let nack = h
                .push(response(ADDRESS_TYPE_URL, "a3", vec![bad], &[]))
                .await;
            let detail = nack.request.error_detail.expect("expected a NACK");
            assert!(detail.message.contains("w1"), "{}", detail.message);
            assert!(detail.message.contains("addresses"), "{}", detail.message);
            let after = h.cell.load();
            assert!(
                Arc::ptr_eq(&before, &after),
                "nothing valid changed: the previous snapshot is still the one published"
            );
            assert_eq!(vip_endpoints(&after), ["w1", "w2"]);
            assert_eq!(h.stats.updates_rejected.load(Ordering::Relaxed), 1);

            // A bad resource next to good ones: the good ones apply, the bad one keeps
            // its old value.
            let mut bad = workload("w2", "3", [10, 0, 0, 2]);
            bad.resource.as_mut().unwrap().value = vec![0xff, 0xff, 0xff];
            let nack = h
                .push(response(
                    ADDRESS_TYPE_URL,
                    "a4",
                    vec![bad, workload("w4", "1", [10, 0, 0, 4])],
                    &[],
                ))
                .await;
            assert!(nack.request.error_detail.is_some());
            let s = h.cell.load();
            assert_eq!(vip_endpoints(&s), ["w1", "w2", "w4"]);

            // The server fixes it: ACK.
            h.push_acked(response(
                ADDRESS_TYPE_URL,
                "a5",
                vec![workload("w1", "4", [10, 0, 0, 21])],
                &[],
            ))
            .await;
            assert!(h
                .cell
                .load()
                .workload_by_ip("10.0.0.21".parse().unwrap())
                .is_some());
            h.finish().await;
        })
        .await;
}

#[tokio::test]
async fn reconnect_resumes_versions_and_reaches_the_same_snapshot() {
    LocalSet::new()
        .run_until(async {
            let mut h = start().await;
            h.initial_sync().await;
            h.push_acked(response(
                AUTHORIZATION_TYPE_URL,
                "p2",
                vec![deny_all("1")],
                &[],
            ))
            .await;
            let before = h.cell.load();
            let generation = before.generation;

            h.server.restart().await;
            let first = h.server.next_request().await;
            let second = h.server.next_request().await;
            let mut held: Vec<(String, String)> = first
                .request
                .initial_resource_versions
                .clone()
                .into_iter()
                .collect();
            held.sort();
            assert_eq!(
                held,
                [
                    ("default/echo.default.svc.cluster.local".into(), "1".into()),
                    ("w1".into(), "1".into()),
                    ("w2".into(), "1".into()),
                ]
            );
            assert_eq!(
                second
                    .request
                    .initial_resource_versions
                    .get("default/deny-all")
                    .map(String::as_str),
                Some("1")
            );
            // While istiod was away the data path kept the same snapshot.
            assert!(Arc::ptr_eq(&before, &h.cell.load()));
            assert!(*h.ready.borrow());

            // A resuming server sends only what changed: here, nothing for policies
            // and one new workload.
            h.push_acked(response(AUTHORIZATION_TYPE_URL, "r1", vec![], &[]))
                .await;
            h.push_acked(response(
                ADDRESS_TYPE_URL,
                "r2",
                vec![workload("w5", "1", [10, 0, 0, 5])],
                &[],
            ))
            .await;
            let s = h.cell.load();
            assert!(s.generation > generation);
            assert_eq!(vip_endpoints(&s), ["w1", "w2", "w5"]);
            assert!(
                !allowed(&s, "10.0.0.5"),
                "the policy held across the reconnect"
            );

            // A server that ignores the held versions and sends its whole state again
            // leaves the configuration exactly as it was.
            let resumed = content(&s);
            h.push_acked(response(
                ADDRESS_TYPE_URL,
                "r3",
                vec![
                    workload("w1", "1", [10, 0, 0, 1]),
                    workload("w2", "1", [10, 0, 0, 2]),
                    workload("w5", "1", [10, 0, 0, 5]),
                    service("1", [10, 96, 0, 10]),
                ],
                &[],
            ))
            .await;
            h.push_acked(response(
                AUTHORIZATION_TYPE_URL,
                "r4",
                vec![deny_all("1")],
                &[],
            ))
            .await;
            let s = h.cell.load();
            assert_eq!(content(&s), resumed);
            let source = h.finish().await;
            assert!(source.client().streams_started() >= 2);
            assert!(Arc::ptr_eq(source.snapshot(), &s));
        })
        .await;
}
