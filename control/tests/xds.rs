//! The delta ADS client against an in-process ADS server over real loopback gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use prost_types::value::Kind;
use tokio::sync::oneshot;
use tokio::task::LocalSet;

use support::ca_server::TestRoot;
use support::xds_server::{response, Seen, TestXdsServer, WAIT};
use zpath_control::proto::envoy::service::discovery::v3::Resource;
use zpath_control::proto::istio::security::{Action, Authorization, Scope};
use zpath_control::proto::istio::workload::{address, Address, NetworkAddress, Service, Workload};
use zpath_control::xds::resource::to_any;
use zpath_control::xds::{
    decode_resource, BackoffConfig, DecodedResource, NodeInfo, RejectedResource, XdsClient,
    XdsClientConfig, XdsError, XdsHandler, XdsResource, ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL,
};

#[derive(Default, Debug)]
struct Model {
    addresses: BTreeMap<String, (String, Address)>,
    policies: BTreeMap<String, (String, Authorization)>,
}

/// A handler that does what the domain conversion will do: decode, validate,
/// apply the valid resources and reject the rest.
struct Handler(Rc<RefCell<Model>>);

fn check_address(a: &Address) -> Result<(), String> {
    if let Some(address::Type::Workload(w)) = &a.r#type {
        for ip in &w.addresses {
            if ip.len() != 4 && ip.len() != 16 {
                return Err(format!("invalid address length {}", ip.len()));
            }
        }
    }
    Ok(())
}

impl XdsHandler for Handler {
    fn apply(
        &mut self,
        _type_url: &str,
        added: Vec<XdsResource>,
        removed: Vec<String>,
    ) -> Result<(), Vec<RejectedResource>> {
        let mut m = self.0.borrow_mut();
        let mut rejected = Vec::new();
        for r in added {
            match decode_resource(&r.resource) {
                Ok(DecodedResource::Address(a)) => match check_address(&a) {
                    Ok(()) => {
                        m.addresses.insert(r.name, (r.version, a));
                    }
                    Err(e) => rejected.push(RejectedResource::new(r.name, e)),
                },
                Ok(DecodedResource::Authorization(p)) => {
                    m.policies.insert(r.name, (r.version, p));
                }
                Err(e) => rejected.push(RejectedResource::new(r.name, e.to_string())),
            }
        }
        for name in removed {
            m.addresses.remove(&name);
            m.policies.remove(&name);
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(rejected)
        }
    }
}

fn workload(uid: &str, version: &str, ip: &[u8]) -> Resource {
    let a = Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "default".into(),
            addresses: vec![ip.to_vec()],
            service_account: "default".into(),
            ..Default::default()
        })),
    };
    Resource {
        name: uid.into(),
        version: version.into(),
        resource: Some(to_any(ADDRESS_TYPE_URL, &a)),
        ..Default::default()
    }
}

fn service(name: &str, version: &str) -> Resource {
    let a = Address {
        r#type: Some(address::Type::Service(Service {
            name: "echo".into(),
            namespace: "default".into(),
            hostname: "echo.default.svc.cluster.local".into(),
            addresses: vec![NetworkAddress {
                network: String::new(),
                address: vec![10, 96, 0, 10],
            }],
            ..Default::default()
        })),
    };
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(to_any(ADDRESS_TYPE_URL, &a)),
        ..Default::default()
    }
}

fn policy(name: &str, version: &str, action: Action) -> Resource {
    let p = Authorization {
        name: name.split('/').nth(1).unwrap().into(),
        namespace: "default".into(),
        scope: Scope::Namespace as i32,
        action: action as i32,
        ..Default::default()
    };
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(to_any(AUTHORIZATION_TYPE_URL, &p)),
        ..Default::default()
    }
}

fn node() -> NodeInfo {
    NodeInfo {
        instance_ip: "10.1.1.1".into(),
        pod_name: "zpath-x".into(),
        pod_namespace: "istio-system".into(),
        node_name: "worker-1".into(),
        metadata: [("CLUSTER_ID".to_string(), "Kubernetes".to_string())].into(),
        ..Default::default()
    }
}

struct Harness {
    server: TestXdsServer,
    model: Rc<RefCell<Model>>,
    ready: tokio::sync::watch::Receiver<bool>,
    stop: oneshot::Sender<()>,
    client: tokio::task::JoinHandle<XdsClient>,
    _dir: tempfile::TempDir,
}

async fn start() -> Harness {
    let server = TestXdsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token\n").unwrap();
    let mut config = XdsClientConfig::new(server.url(), node());
    config.token_file = Some(token);
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(200),
    };
    let mut client = XdsClient::new(config).unwrap();
    let ready = client.readiness();
    let model = Rc::new(RefCell::new(Model::default()));
    let mut handler = Handler(model.clone());
    let (stop, stop_rx) = oneshot::channel::<()>();
    let client = tokio::task::spawn_local(async move {
        client
            .run(&mut handler, async {
                let _ = stop_rx.await;
            })
            .await;
        client
    });
    Harness {
        server,
        model,
        ready,
        stop,
        client,
        _dir: dir,
    }
}

impl Harness {
    async fn finish(self) -> XdsClient {
        self.stop.send(()).unwrap();
        self.client.await.unwrap()
    }
}

/// Expects an ACK of `nonce` for `type_url`.
fn assert_ack(seen: &Seen, type_url: &str, nonce: &str) {
    assert_eq!(seen.request.type_url, type_url);
    assert_eq!(seen.request.response_nonce, nonce);
    assert!(
        seen.request.error_detail.is_none(),
        "unexpected NACK: {:?}",
        seen.request
    );
}

/// Reads the two first requests and answers them with the initial state.
async fn initial_sync(h: &mut Harness) -> (Seen, Seen) {
    let first = h.server.next_request().await;
    let second = h.server.next_request().await;
    h.server
        .push(response(
            ADDRESS_TYPE_URL,
            "a1",
            vec![
                workload("w1", "1", &[10, 0, 0, 1]),
                workload("w2", "1", &[10, 0, 0, 2]),
                service("default/echo.default.svc.cluster.local", "1"),
            ],
            &[],
        ))
        .await;
    assert_ack(&h.server.next_request().await, ADDRESS_TYPE_URL, "a1");
    assert!(!*h.ready.borrow(), "ready before every type was answered");
    h.server
        .push(response(
            AUTHORIZATION_TYPE_URL,
            "p1",
            vec![policy("default/allow", "1", Action::Allow)],
            &[],
        ))
        .await;
    assert_ack(&h.server.next_request().await, AUTHORIZATION_TYPE_URL, "p1");
    tokio::time::timeout(WAIT, h.ready.wait_for(|r| *r))
        .await
        .expect("never ready")
        .unwrap();
    (first, second)
}

#[tokio::test]
async fn initial_sync_sends_node_and_token_and_becomes_ready() {
    LocalSet::new()
        .run_until(async {
            let mut h = start().await;
            let (first, second) = initial_sync(&mut h).await;
            let types = [
                first.request.type_url.as_str(),
                second.request.type_url.as_str(),
            ];
            assert_eq!(types, [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL]);
            for s in [&first, &second] {
                let node = s
                    .request
                    .node
                    .as_ref()
                    .expect("first request carries the node");
                assert_eq!(
                    node.id,
                    "ztunnel~10.1.1.1~zpath-x.istio-system~istio-system.svc.cluster.local"
                );
                let md = node.metadata.as_ref().unwrap();
                let get = |k: &str| md.fields.get(k).and_then(|v| v.kind.clone());
                assert_eq!(get("NODE_NAME"), Some(Kind::StringValue("worker-1".into())));
                assert_eq!(
                    get("INSTANCE_IPS"),
                    Some(Kind::StringValue("10.1.1.1".into()))
                );
                assert_eq!(
                    get("CLUSTER_ID"),
                    Some(Kind::StringValue("Kubernetes".into()))
                );
                assert!(s.request.initial_resource_versions.is_empty());
                assert!(s.request.response_nonce.is_empty());
                assert_eq!(s.authorization.as_deref(), Some("Bearer test-token"));
            }
            {
                let m = h.model.borrow();
                assert_eq!(
                    m.addresses.keys().collect::<Vec<_>>(),
                    ["default/echo.default.svc.cluster.local", "w1", "w2"]
                );
                assert_eq!(m.policies.len(), 1);
            }
            let client = h.finish().await;
            assert_eq!(client.streams_started(), 1);
        })
        .await;
}

#[tokio::test]
async fn add_update_remove_reach_the_handler() {
    LocalSet::new()
        .run_until(async {
            let mut h = start().await;
            initial_sync(&mut h).await;

            h.server
                .push(response(
                    ADDRESS_TYPE_URL,
                    "a2",
                    vec![
                        workload("w1", "2", &[10, 0, 0, 11]),
                        workload("w3", "1", &[10, 0, 0, 3]),
                    ],
                    &["w2"],
                ))
                .await;
            assert_ack(&h.server.next_request().await, ADDRESS_TYPE_URL, "a2");
            {
                let m = h.model.borrow();
                let (v, a) = &m.addresses["w1"];
                assert_eq!(v, "2");
                let Some(address::Type::Workload(w)) = &a.r#type else {
                    panic!("w1 is not a workload")
                };
                assert_eq!(w.addresses, vec![vec![10, 0, 0, 11]]);
                assert!(m.addresses.contains_key("w3"));
                assert!(!m.addresses.contains_key("w2"));
            }

            h.server
                .push(response(
                    AUTHORIZATION_TYPE_URL,
                    "p2",
                    vec![policy("default/allow", "2", Action::Deny)],
                    &[],
                ))
                .await;
            assert_ack(&h.server.next_request().await, AUTHORIZATION_TYPE_URL, "p2");
            assert_eq!(
                h.model.borrow().policies["default/allow"].1.action,
                Action::Deny as i32
            );

            h.server
                .push(response(
                    AUTHORIZATION_TYPE_URL,
                    "p3",
                    vec![],
                    &["default/allow"],
                ))
                .await;
            assert_ack(&h.server.next_request().await, AUTHORIZATION_TYPE_URL, "p3");
            assert!(h.model.borrow().policies.is_empty());

            let client = h.finish().await;
            let v = client.state().versions(ADDRESS_TYPE_URL).unwrap();
            assert_eq!(v.get("w1").map(String::as_str), Some("2"));
            assert!(!v.contains_key("w2"));
            assert!(client
                .state()
                .versions(AUTHORIZATION_TYPE_URL)
                .unwrap()
                .is_empty());
        })
        .await;
}

#[tokio::test]
async fn invalid_resource_is_nacked_with_nonce_and_detail_and_old_state_kept() {
    LocalSet::new()
        .run_until(async {
            let mut h = start().await;
            initial_sync(&mut h).await;

            h.server
                .push(response(
                    ADDRESS_TYPE_URL,
                    "a3",
                    vec![
                        workload("w1", "3", &[10, 0, 0]),
                        workload("w4", "1", &[10, 0, 0, 4]),
                    ],
                    &[],
                ))
                .await;
            let nack = h.server.next_request().await;
            assert_eq!(nack.request.type_url, ADDRESS_TYPE_URL);
            assert_eq!(nack.request.response_nonce, "a3");
            let detail = nack.request.error_detail.clone().expect("expected a NACK");
            assert!(detail.message.contains("w1"), "{}", detail.message);
            assert!(
                detail.message.contains("invalid address length 3"),
                "{}",
                detail.message
            );
            assert!(!detail.message.contains("w4"), "{}", detail.message);
            {
                let m = h.model.borrow();
                assert_eq!(m.addresses["w1"].0, "1", "the previous w1 keeps serving");
                assert!(
                    m.addresses.contains_key("w4"),
                    "valid resources still apply"
                );
            }

            h.server
                .push(response(
                    ADDRESS_TYPE_URL,
                    "a4",
                    vec![workload("w1", "4", &[10, 0, 0, 41])],
                    &[],
                ))
                .await;
            assert_ack(&h.server.next_request().await, ADDRESS_TYPE_URL, "a4");
            assert_eq!(h.model.borrow().addresses["w1"].0, "4");
            h.finish().await;
        })
        .await;
}

#[tokio::test]
async fn server_restart_mid_stream_resumes_with_held_versions() {
    LocalSet::new()
        .run_until(async {
            let mut h = start().await;
            initial_sync(&mut h).await;
            h.server
                .push(response(
                    ADDRESS_TYPE_URL,
                    "a2",
                    vec![workload("w1", "2", &[10, 0, 0, 12])],
                    &["w2"],
                ))
                .await;
            assert_ack(&h.server.next_request().await, ADDRESS_TYPE_URL, "a2");

            let port = h.server.addr;
            h.server.restart().await;
            assert_eq!(h.server.addr, port);

            let first = h.server.next_request().await;
            let second = h.server.next_request().await;
            assert_eq!(first.stream, 1);
            assert_eq!(first.request.type_url, ADDRESS_TYPE_URL);
            assert!(first.request.node.is_some());
            assert!(first.request.response_nonce.is_empty());
            let held: BTreeMap<_, _> = first
                .request
                .initial_resource_versions
                .clone()
                .into_iter()
                .collect();
            assert_eq!(
                held,
                BTreeMap::from([
                    (
                        "default/echo.default.svc.cluster.local".to_string(),
                        "1".to_string()
                    ),
                    ("w1".to_string(), "2".to_string()),
                ])
            );
            assert_eq!(second.request.type_url, AUTHORIZATION_TYPE_URL);
            assert_eq!(
                second
                    .request
                    .initial_resource_versions
                    .get("default/allow")
                    .map(String::as_str),
                Some("1")
            );
            assert_eq!(second.authorization.as_deref(), Some("Bearer test-token"));

            // While istiod was away, the handler state was untouched.
            assert_eq!(h.model.borrow().addresses["w1"].0, "2");
            assert!(
                *h.ready.borrow(),
                "a reconnect does not make the proxy unready"
            );

            h.server
                .push(response(
                    ADDRESS_TYPE_URL,
                    "b1",
                    vec![workload("w5", "1", &[10, 0, 0, 5])],
                    &["w1"],
                ))
                .await;
            assert_ack(&h.server.next_request().await, ADDRESS_TYPE_URL, "b1");
            assert!(!h.model.borrow().addresses.contains_key("w1"));
            let client = h.finish().await;
            assert!(client.streams_started() >= 2);
        })
        .await;
}

const ISTIOD_NAME: &str = "istiod.istio-system.svc";

fn tls_config(server: &TestXdsServer, root: &TestRoot, dir: &std::path::Path) -> XdsClientConfig {
    let mut config = XdsClientConfig::new(format!("https://{}", server.addr), node());
    config.target.root_cert = Some(root.write(dir, "root.pem"));
    config.target.server_name = Some(ISTIOD_NAME.into());
    config
}

#[tokio::test]
async fn connects_over_tls_with_the_root_from_a_pem_file() {
    LocalSet::new()
        .run_until(async {
            let root = TestRoot::new("istiod root");
            let (cert, key) = root.server_cert(ISTIOD_NAME);
            let mut server = TestXdsServer::start_tls(&cert, &key).await;
            let dir = tempfile::tempdir().unwrap();
            let mut client = XdsClient::new(tls_config(&server, &root, dir.path())).unwrap();
            let model = Rc::new(RefCell::new(Model::default()));
            let mut handler = Handler(model.clone());
            let (stop, stop_rx) = oneshot::channel::<()>();
            let task = tokio::task::spawn_local(async move {
                client
                    .run(&mut handler, async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
            let first = server.next_request().await;
            assert!(first.request.node.is_some());
            server.next_request().await;
            server
                .push(response(
                    ADDRESS_TYPE_URL,
                    "t1",
                    vec![workload("w1", "1", &[10, 0, 0, 1])],
                    &[],
                ))
                .await;
            assert_ack(&server.next_request().await, ADDRESS_TYPE_URL, "t1");
            assert!(model.borrow().addresses.contains_key("w1"));
            stop.send(()).unwrap();
            task.await.unwrap();
        })
        .await;
}

#[tokio::test]
async fn tls_with_an_untrusted_server_certificate_is_refused() {
    LocalSet::new()
        .run_until(async {
            let root = TestRoot::new("istiod root");
            let (cert, key) = root.server_cert(ISTIOD_NAME);
            let server = TestXdsServer::start_tls(&cert, &key).await;
            let dir = tempfile::tempdir().unwrap();
            let other = TestRoot::new("some other root");
            let mut client = XdsClient::new(tls_config(&server, &other, dir.path())).unwrap();
            let mut handler = Handler(Rc::default());
            let mut responses = 0;
            let err = client
                .run_stream(&mut handler, &mut responses)
                .await
                .unwrap_err();
            assert!(
                matches!(err, XdsError::Connect { .. } | XdsError::Stream { .. }),
                "{err}"
            );
            assert_eq!(responses, 0);
            assert_eq!(server.streams(), 0, "no RPC reached the server");
        })
        .await;
}
