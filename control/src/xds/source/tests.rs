//! The snapshot handler fed directly with resources (no network).

use super::*;
use crate::proto::istio::security as xsec;
use crate::proto::istio::workload as xwl;
use crate::xds::resource::to_any;

fn workload(uid: &str, ip: [u8; 4], node: &str, services: &[&str]) -> XdsResource {
    let w = xwl::Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: "default".into(),
        addresses: vec![ip.to_vec()],
        node: node.into(),
        tunnel_protocol: xwl::TunnelProtocol::Hbone as i32,
        services: services
            .iter()
            .map(|s| {
                (
                    s.to_string(),
                    xwl::PortList {
                        ports: vec![xwl::Port {
                            service_port: 80,
                            target_port: 8080,
                        }],
                    },
                )
            })
            .collect(),
        ..Default::default()
    };
    address(uid, xwl::address::Type::Workload(w))
}

fn address(name: &str, t: xwl::address::Type) -> XdsResource {
    XdsResource {
        name: name.into(),
        version: "1".into(),
        resource: to_any(ADDRESS_TYPE_URL, &xwl::Address { r#type: Some(t) }),
    }
}

fn service(host: &str, vip: [u8; 4]) -> XdsResource {
    let s = xwl::Service {
        name: host.into(),
        namespace: "default".into(),
        hostname: host.into(),
        addresses: vec![xwl::NetworkAddress {
            network: String::new(),
            address: vip.to_vec(),
        }],
        ports: vec![xwl::Port {
            service_port: 80,
            target_port: 0,
        }],
        ..Default::default()
    };
    address(&format!("default/{host}"), xwl::address::Type::Service(s))
}

fn deny(name: &str) -> XdsResource {
    let p = xsec::Authorization {
        name: name.into(),
        namespace: "default".into(),
        scope: xsec::Scope::Namespace as i32,
        action: xsec::Action::Deny as i32,
        rules: vec![xsec::Rule { clauses: vec![] }],
        dry_run: false,
    };
    XdsResource {
        name: format!("default/{name}"),
        version: "1".into(),
        resource: to_any(AUTHORIZATION_TYPE_URL, &p),
    }
}

/// A handler that has had istiod's (empty) first Authorization answer: its next
/// Address answer completes the first configuration.
fn handler() -> (SnapshotHandler, Arc<SnapshotCell>) {
    let cell = Arc::new(SnapshotCell::new(Snapshot::default()));
    let mut h = SnapshotHandler::new(cell.clone(), "n1");
    h.apply(AUTHORIZATION_TYPE_URL, vec![], vec![]).unwrap();
    assert_eq!(
        cell.generation(),
        0,
        "nothing published before both types answered"
    );
    (h, cell)
}

fn allowed(s: &Snapshot, dst: &str) -> bool {
    let conn = zpath_policy::Conn {
        src_ip: "10.9.9.9".parse().unwrap(),
        dst_ip: dst.parse().unwrap(),
        dst_port: 80,
        peer: None,
    };
    s.authorize(&conn).is_ok_and(|o| o.decision.is_allow())
}

#[test]
fn the_first_configuration_is_published_once_both_types_answered_even_empty() {
    let cell = Arc::new(SnapshotCell::new(Snapshot::default()));
    let mut h = SnapshotHandler::new(cell.clone(), "n1");
    // Workloads without their policies would fail open: held back.
    h.apply(
        ADDRESS_TYPE_URL,
        vec![workload("w1", [10, 0, 0, 1], "n1", &[])],
        vec![],
    )
    .unwrap();
    assert_eq!(cell.generation(), 0);
    h.apply(AUTHORIZATION_TYPE_URL, vec![deny("d")], vec![])
        .unwrap();
    assert_eq!(cell.generation(), 1);
    assert!(
        !allowed(&cell.load(), "10.0.0.1"),
        "published with its policy"
    );
    h.apply(AUTHORIZATION_TYPE_URL, vec![], vec![]).unwrap();
    assert_eq!(cell.generation(), 1, "an empty delta publishes nothing new");

    let (mut h, cell) = handler();
    h.apply(ADDRESS_TYPE_URL, vec![], vec![]).unwrap();
    assert_eq!(
        cell.generation(),
        1,
        "an empty cluster is a configuration too"
    );
}

#[test]
fn workloads_services_and_policies_reach_the_published_snapshot() {
    let (mut h, cell) = handler();
    h.apply(
        ADDRESS_TYPE_URL,
        vec![
            workload("w1", [10, 0, 0, 1], "n1", &["default/echo"]),
            service("echo", [10, 96, 0, 1]),
        ],
        vec![],
    )
    .unwrap();
    let s = cell.load();
    match s.route("10.96.0.1:80".parse().unwrap(), 0) {
        crate::Route::Workload { workload, addr } => {
            assert_eq!(&*workload.uid, "w1");
            assert_eq!(addr, "10.0.0.1:8080".parse().unwrap());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(allowed(&s, "10.0.0.1"));

    h.apply(AUTHORIZATION_TYPE_URL, vec![deny("d")], vec![])
        .unwrap();
    assert!(!allowed(&cell.load(), "10.0.0.1"));
    h.apply(AUTHORIZATION_TYPE_URL, vec![], vec!["default/d".into()])
        .unwrap();
    assert!(allowed(&cell.load(), "10.0.0.1"));

    h.apply(
        ADDRESS_TYPE_URL,
        vec![],
        vec!["w1".into(), "default/echo".into()],
    )
    .unwrap();
    let s = cell.load();
    assert!(s.workloads.is_empty());
    assert!(s.services.is_empty());
    let stats = h.stats();
    // Five answers: the first (empty) Authorization one and the four above.
    assert_eq!(stats.updates_accepted.load(Ordering::Relaxed), 5);
    assert_eq!(stats.resources_applied.load(Ordering::Relaxed), 6);
}

#[test]
fn invalid_resource_is_rejected_and_its_previous_value_kept() {
    let (mut h, cell) = handler();
    h.apply(
        ADDRESS_TYPE_URL,
        vec![workload("w1", [10, 0, 0, 1], "n1", &[])],
        vec![],
    )
    .unwrap();
    let mut bad = workload("w1", [10, 0, 0, 2], "n1", &[]);
    let mut wire = crate::xds::decode_address(&bad.resource.value).unwrap();
    if let Some(xwl::address::Type::Workload(w)) = &mut wire.r#type {
        w.addresses = vec![vec![10, 0, 0]];
    }
    bad.resource = to_any(ADDRESS_TYPE_URL, &wire);
    let garbage = XdsResource {
        name: "w9".into(),
        version: "1".into(),
        resource: prost_types::Any {
            type_url: ADDRESS_TYPE_URL.into(),
            value: vec![0xff, 0xff],
        },
    };
    let err = h
        .apply(
            ADDRESS_TYPE_URL,
            vec![bad, garbage, workload("w2", [10, 0, 0, 3], "n1", &[])],
            vec![],
        )
        .unwrap_err();
    let names: Vec<&str> = err.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["w1", "w9"]);
    assert!(err[0].reason.contains("addresses"), "{}", err[0].reason);
    let s = cell.load();
    assert!(
        s.workload_by_ip("10.0.0.1".parse().unwrap()).is_some(),
        "old w1 kept"
    );
    assert!(s.workload_by_ip("10.0.0.2".parse().unwrap()).is_none());
    assert!(s.workload("w2").is_some(), "valid resources still apply");
    let stats = h.stats();
    assert_eq!(stats.updates_rejected.load(Ordering::Relaxed), 1);
    assert_eq!(stats.resources_rejected.load(Ordering::Relaxed), 2);
}

#[test]
fn a_name_that_changes_kind_replaces_what_it_stood_for() {
    let (mut h, cell) = handler();
    h.apply(
        ADDRESS_TYPE_URL,
        vec![workload("x", [10, 0, 0, 1], "n1", &[])],
        vec![],
    )
    .unwrap();
    // Same resource name, now a workload with another uid.
    let mut other = workload("y", [10, 0, 0, 2], "n1", &[]);
    other.name = "x".into();
    h.apply(ADDRESS_TYPE_URL, vec![other], vec![]).unwrap();
    let s = cell.load();
    assert!(s.workload("x").is_none());
    assert!(s.workload("y").is_some());
    h.apply(ADDRESS_TYPE_URL, vec![], vec!["x".into()]).unwrap();
    assert!(
        cell.load().workloads.is_empty(),
        "removal by the alias name"
    );
}

#[test]
fn repeated_strings_are_shared_between_workloads() {
    let (mut h, cell) = handler();
    h.apply(
        ADDRESS_TYPE_URL,
        vec![
            workload("w1", [10, 0, 0, 1], "n1", &["default/echo"]),
            workload("w2", [10, 0, 0, 2], "n1", &["default/echo"]),
        ],
        vec![],
    )
    .unwrap();
    let s = cell.load();
    let (a, b) = (s.workload("w1").unwrap(), s.workload("w2").unwrap());
    assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
    assert!(Arc::ptr_eq(&a.node, &b.node));
    assert!(Arc::ptr_eq(
        &a.services[0].hostname,
        &b.services[0].hostname
    ));
    // Replicas of one deployment share one profile (with its port maps).
    assert!(Arc::ptr_eq(&a.profile, &b.profile));
}

#[test]
fn a_workload_of_another_deployment_gets_its_own_profile_sharing_strings() {
    let (mut h, cell) = handler();
    h.apply(
        ADDRESS_TYPE_URL,
        vec![
            workload("w1", [10, 0, 0, 1], "n1", &["default/echo"]),
            workload("w2", [10, 0, 0, 2], "n2", &["default/other"]),
        ],
        vec![],
    )
    .unwrap();
    let s = cell.load();
    let (a, b) = (s.workload("w1").unwrap(), s.workload("w2").unwrap());
    assert!(!Arc::ptr_eq(&a.profile, &b.profile));
    assert_eq!(&*b.services[0].hostname, "other");
    assert_eq!(&*b.node, "n2");
    assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
}

#[test]
fn unknown_type_is_rejected_without_publishing() {
    let (mut h, cell) = handler();
    let err = h
        .apply("type.googleapis.com/other", vec![], vec!["a".into()])
        .unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(cell.generation(), 0);
}

#[test]
fn prometheus_text_names_every_counter() {
    let (mut h, _cell) = handler();
    h.apply(ADDRESS_TYPE_URL, vec![], vec![]).unwrap();
    h.apply(AUTHORIZATION_TYPE_URL, vec![deny("d")], vec![])
        .unwrap();
    let text = h.stats().prometheus();
    // The first (empty) Authorization answer, an empty Address one, then the policy;
    // published: the first configuration, then the policy.
    assert!(
        text.contains("zpath_xds_updates_total{result=\"accepted\"} 3"),
        "{text}"
    );
    assert!(text.contains("zpath_xds_updates_total{result=\"rejected\"} 0"));
    assert!(text.contains("zpath_xds_resources_total{result=\"applied\"} 1"));
    assert!(text.contains("zpath_xds_snapshots_published_total 2"));
}

#[test]
fn corrupted_payloads_never_panic_and_never_publish_garbage() {
    let (mut h, cell) = handler();
    h.apply(
        ADDRESS_TYPE_URL,
        vec![
            workload("w1", [10, 0, 0, 1], "n1", &["default/echo"]),
            service("echo", [10, 96, 0, 1]),
        ],
        vec![],
    )
    .unwrap();
    let seeds = [
        workload("w1", [10, 0, 0, 1], "n1", &["default/echo"]),
        service("echo", [10, 96, 0, 1]),
    ];
    for seed in seeds {
        let bytes = seed.resource.value.clone();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut r = seed.clone();
                r.resource.value[i] ^= 1 << bit;
                let _ = h.apply(ADDRESS_TYPE_URL, vec![r], vec![]);
            }
            let mut r = seed.clone();
            r.resource.value.truncate(i);
            let _ = h.apply(ADDRESS_TYPE_URL, vec![r], vec![]);
        }
    }
    // Whatever was accepted, the published snapshot stays internally consistent.
    let s = cell.load();
    for (ip, w) in s
        .workloads
        .values()
        .flat_map(|w| w.workload_ips.iter().map(move |ip| (ip, w)))
    {
        if let Some(owner) = s.workload_by_ip(*ip) {
            assert!(s.workload(&owner.uid).is_some(), "{ip} -> {}", w.uid);
        }
    }
    for route in s.services.values() {
        for w in route.healthy.iter() {
            assert!(
                Arc::ptr_eq(w, s.workload(&w.uid).unwrap()),
                "stale endpoint {}",
                w.uid
            );
        }
    }
}

/// The shortcut that reuses a known profile must convert exactly as the full
/// conversion does, whatever the message: every single-bit corruption of a workload
/// of a known deployment either converts to the same workload both ways or is
/// rejected both ways with the same error.
#[test]
fn known_profile_shortcut_agrees_with_full_conversion_on_corrupted_workloads() {
    use crate::convert::WorkloadEndpoints;
    use prost::Message;
    let base = xwl::Workload {
        uid: "Kubernetes//Pod/shop/web-0".into(),
        name: "web-0".into(),
        namespace: "shop".into(),
        addresses: vec![vec![10, 0, 0, 2]],
        service_account: "web".into(),
        node: "n1".into(),
        tunnel_protocol: xwl::TunnelProtocol::Hbone as i32,
        canonical_name: "web".into(),
        canonical_revision: "v1".into(),
        workload_name: "web".into(),
        cluster_id: "c1".into(),
        locality: Some(xwl::Locality {
            region: "eu".into(),
            zone: "eu-1".into(),
            subzone: "".into(),
        }),
        authorization_policies: vec!["shop/allow".into()],
        services: [(
            "shop/web.shop.svc.cluster.local".to_string(),
            xwl::PortList {
                ports: vec![
                    xwl::Port {
                        service_port: 80,
                        target_port: 8080,
                    },
                    xwl::Port {
                        service_port: 443,
                        target_port: 0,
                    },
                ],
            },
        )]
        .into(),
        ..Default::default()
    };
    let bytes = base.encode_to_vec();
    let mut interner = Interner::default();
    interner.workload(&base).unwrap();
    let (mut same, mut rejected) = (0, 0);
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut m = bytes.clone();
            m[i] ^= 1 << bit;
            let Ok(w) = xwl::Workload::decode(&m[..]) else {
                continue;
            };
            let fast = interner.workload(&w);
            let slow = WorkloadEndpoints::try_from(&w).map(|we| we.workload);
            match (fast, slow) {
                (Ok(f), Ok(s)) => {
                    assert_eq!(f, s, "byte {i} bit {bit}");
                    same += 1;
                }
                (Err(f), Err(s)) => {
                    assert_eq!(f, s, "byte {i} bit {bit}");
                    rejected += 1;
                }
                (f, s) => panic!("byte {i} bit {bit}: shortcut {f:?} but full {s:?}"),
            }
        }
    }
    assert!(
        same > 100 && rejected > 10,
        "{same} converted, {rejected} rejected"
    );
}

#[test]
fn profiles_and_strings_of_departed_workloads_are_pruned() {
    let (mut h, cell) = handler();
    // Many deployments (one workload each, distinct service accounts), then all gone.
    let n = INTERNER_PRUNE_FLOOR;
    let mk = |i: usize| {
        let ip = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let mut r = workload(&format!("w{i}"), ip, "n1", &[]);
        let mut a = crate::xds::decode_address(&r.resource.value).unwrap();
        if let Some(xwl::address::Type::Workload(w)) = &mut a.r#type {
            w.service_account = format!("sa-{i}");
        }
        r.resource = to_any(ADDRESS_TYPE_URL, &a);
        r
    };
    h.apply(ADDRESS_TYPE_URL, (0..n).map(mk).collect(), vec![])
        .unwrap();
    assert_eq!(cell.load().workloads.len(), n);
    assert_eq!(h.interner.profile_count, n);
    let gone: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    h.apply(ADDRESS_TYPE_URL, vec![], gone).unwrap();
    assert!(cell.load().workloads.is_empty());
    // Pruning is amortised: it runs once the tables have doubled since the last pass.
    // Twice as many new deployments later, only those remain.
    h.apply(ADDRESS_TYPE_URL, (n..3 * n).map(mk).collect(), vec![])
        .unwrap();
    assert_eq!(h.interner.profile_count, 2 * n);
    assert_eq!(
        h.interner.profile_count,
        h.interner.profiles.values().map(Vec::len).sum::<usize>()
    );
    assert!(!h.interner.strings.contains("sa-0"));
    assert!(h.interner.strings.contains(format!("sa-{n}").as_str()));
}

/// A workload with every field set, to check that nothing survives a reset.
fn full_workload(i: u8) -> xwl::Workload {
    xwl::Workload {
        uid: format!("Kubernetes//Pod/shop/web-{i}"),
        name: format!("web-{i}"),
        namespace: "shop".into(),
        addresses: vec![vec![10, 0, 0, i], vec![0xfd; 16]],
        hostname: "web.example".into(),
        network: "net-1".into(),
        tunnel_protocol: xwl::TunnelProtocol::Hbone as i32,
        trust_domain: "td".into(),
        service_account: "web".into(),
        waypoint: Some(xwl::GatewayAddress {
            hbone_mtls_port: 15008,
            destination: Some(xwl::gateway_address::Destination::Address(
                xwl::NetworkAddress {
                    network: "net-1".into(),
                    address: vec![10, 0, 9, 9],
                },
            )),
        }),
        network_gateway: Some(xwl::GatewayAddress::default()),
        node: "n1".into(),
        canonical_name: "web".into(),
        canonical_revision: "v1".into(),
        workload_type: 1,
        workload_name: "web".into(),
        native_tunnel: true,
        application_tunnel: Some(xwl::ApplicationTunnel {
            protocol: 1,
            port: 15088,
        }),
        services: [(
            "shop/web.shop.svc.cluster.local".to_string(),
            xwl::PortList {
                ports: vec![xwl::Port {
                    service_port: 80,
                    target_port: 8080,
                }],
            },
        )]
        .into(),
        authorization_policies: vec!["shop/allow".into()],
        status: xwl::WorkloadStatus::Unhealthy as i32,
        cluster_id: "c1".into(),
        locality: Some(xwl::Locality {
            region: "r".into(),
            zone: "z".into(),
            subzone: "s".into(),
        }),
        network_mode: 1,
        extensions: vec![xwl::Extension {
            name: "x".into(),
            config: None,
        }],
        capacity: Some(3),
    }
}

#[test]
fn locality_is_kept_and_replicas_in_other_zones_get_their_own_profile() {
    let mut interner = Interner::default();
    let a = interner.workload(&full_workload(1)).unwrap();
    let want = crate::model::Locality {
        region: "r".into(),
        zone: "z".into(),
        subzone: "s".into(),
    };
    assert_eq!(a.locality, want);
    let mut other = full_workload(2);
    other.locality = Some(xwl::Locality {
        region: "r".into(),
        zone: "y".into(),
        subzone: "".into(),
    });
    let b = interner.workload(&other).unwrap();
    assert_eq!(&*b.locality.zone, "y");
    assert!(!Arc::ptr_eq(&a.profile, &b.profile));
}

#[test]
fn a_reset_workload_equals_a_default_one() {
    let mut w = full_workload(1);
    reset_workload(&mut w);
    assert_eq!(w, xwl::Workload::default());
}

/// Decoding into the reused message must give what a fresh decode of the whole
/// Address gives, for istiod's shape and for every single-bit corruption of it.
#[test]
fn reused_decoding_equals_a_fresh_decode_of_the_address() {
    use prost::Message;
    let mut scratch = full_workload(7);
    let mut lone = 0;
    for i in 0..4u8 {
        let mut w = full_workload(i);
        if i % 2 == 1 {
            // Sparse messages after full ones: leftovers would show.
            w = xwl::Workload {
                uid: w.uid,
                ..Default::default()
            };
        }
        let bytes = xwl::Address {
            r#type: Some(xwl::address::Type::Workload(w)),
        }
        .encode_to_vec();
        for flip in std::iter::once(None).chain((0..bytes.len() * 8).map(Some)) {
            let mut m = bytes.clone();
            if let Some(bit) = flip {
                m[bit / 8] ^= 1 << (bit % 8);
            }
            let Some(payload) = lone_workload(&m) else {
                continue;
            };
            lone += 1;
            reset_workload(&mut scratch);
            let reused = scratch.merge(payload).map(|()| scratch.clone());
            let fresh = xwl::Address::decode(&m[..]);
            match (reused, fresh) {
                (Ok(r), Ok(f)) => {
                    assert_eq!(f.r#type, Some(xwl::address::Type::Workload(r)), "{flip:?}")
                }
                (Err(_), Err(_)) => {}
                (r, f) => panic!("{flip:?}: reused {r:?}, fresh {f:?}"),
            }
        }
    }
    assert!(lone > 1000, "{lone}");
    // Other shapes take the general path.
    assert!(lone_workload(&[]).is_none());
    assert!(lone_workload(&[0x12, 0x00]).is_none());
    assert!(lone_workload(&[0x0a, 0x02, 0x08]).is_none());
    assert!(lone_workload(&[0x0a, 0x00, 0x0a, 0x00]).is_none());
    assert_eq!(lone_workload(&[0x0a, 0x00]), Some(&[][..]));
}

// ---- policies with fields this build does not know ----

/// `uid` at `ip` on node n1 in namespace `ns`.
fn workload_in(ns: &str, uid: &str, ip: [u8; 4]) -> XdsResource {
    let w = xwl::Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: ns.into(),
        addresses: vec![ip.to_vec()],
        node: "n1".into(),
        ..Default::default()
    };
    address(uid, xwl::address::Type::Workload(w))
}

/// A handler with `web` (namespace default, 10.0.0.1) and `db` (namespace other,
/// 10.0.0.2), both served here, and no policy.
fn two_namespaces() -> (SnapshotHandler, Arc<SnapshotCell>) {
    let (mut h, cell) = handler();
    h.apply(
        ADDRESS_TYPE_URL,
        vec![
            workload_in("default", "web", [10, 0, 0, 1]),
            workload_in("other", "db", [10, 0, 0, 2]),
        ],
        vec![],
    )
    .unwrap();
    assert!(allowed(&cell.load(), "10.0.0.1") && allowed(&cell.load(), "10.0.0.2"));
    (h, cell)
}

/// An encoded Namespace policy `default/name` with one rule, one clause, and one match
/// made of `known` plus field 990 (a field this build does not define).
fn with_field_990(name: &str, action: xsec::Action, known: xsec::Match) -> XdsResource {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let nested = |number: u32, payload: &[u8]| {
        let mut b = Vec::new();
        encode_key(number, WireType::LengthDelimited, &mut b);
        encode_varint(payload.len() as u64, &mut b);
        b.extend_from_slice(payload);
        b
    };
    let mut m = known.encode_to_vec();
    encode_key(990, WireType::LengthDelimited, &mut m);
    encode_varint(3, &mut m);
    m.extend_from_slice(b"new");
    let mut bytes = xsec::Authorization {
        name: name.into(),
        namespace: "default".into(),
        scope: xsec::Scope::Namespace as i32,
        action: action as i32,
        rules: vec![],
        dry_run: false,
    }
    .encode_to_vec();
    // rules (5) { clauses (1) { matches (2) { m } } }
    bytes.extend(nested(5, &nested(1, &nested(2, &m))));
    XdsResource {
        name: format!("default/{name}"),
        version: "1".into(),
        resource: prost_types::Any {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            value: bytes,
        },
    }
}

#[test]
fn an_allow_with_an_unknown_restricting_field_is_not_widened_it_denies_its_scope() {
    let (mut h, cell) = two_namespaces();
    // ALLOW from 10.9.9.0/24 (the test client's range) AND a new field: prost alone
    // would read "from 10.9.9.0/24", wider than what was written.
    let known = xsec::Match {
        source_ips: vec![xsec::Address {
            address: vec![10, 9, 9, 0],
            length: 24,
        }],
        ..Default::default()
    };
    h.apply(
        AUTHORIZATION_TYPE_URL,
        vec![with_field_990("allow-client", xsec::Action::Allow, known)],
        vec![],
    )
    .unwrap();
    let s = cell.load();
    assert!(!allowed(&s, "10.0.0.1"), "the policy's namespace is denied");
    assert!(allowed(&s, "10.0.0.2"), "another namespace is not");
    let reason = s.policies["default/allow-client"].invalid.clone().unwrap();
    assert!(reason.contains("990"), "{reason}");
}

#[test]
fn a_deny_made_only_of_an_unknown_field_denies_its_scope() {
    let (mut h, cell) = two_namespaces();
    // prost reads the match as empty, and an empty match never holds: the DENY would
    // never fire.
    h.apply(
        AUTHORIZATION_TYPE_URL,
        vec![with_field_990(
            "deny-new",
            xsec::Action::Deny,
            xsec::Match::default(),
        )],
        vec![],
    )
    .unwrap();
    let s = cell.load();
    assert!(!allowed(&s, "10.0.0.1"));
    assert!(allowed(&s, "10.0.0.2"));
}

#[test]
fn an_undecodable_policy_denies_globally_until_a_decodable_version_replaces_it() {
    let (mut h, cell) = two_namespaces();
    let broken = XdsResource {
        name: "default/broken".into(),
        version: "1".into(),
        resource: prost_types::Any {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            value: vec![0x2a, 0x7f, 0x0a],
        },
    };
    let rejected = h
        .apply(AUTHORIZATION_TYPE_URL, vec![broken], vec![])
        .unwrap_err();
    assert_eq!(rejected.len(), 1, "NACKed");
    let s = cell.load();
    assert!(!allowed(&s, "10.0.0.1"));
    assert!(!allowed(&s, "10.0.0.2"), "every namespace is denied");
    // A decodable version of the same resource takes its place (a policy without
    // rules, which matches nothing).
    let fixed = XdsResource {
        name: "default/broken".into(),
        version: "2".into(),
        resource: to_any(
            AUTHORIZATION_TYPE_URL,
            &xsec::Authorization {
                name: "broken".into(),
                namespace: "default".into(),
                scope: xsec::Scope::Namespace as i32,
                action: xsec::Action::Deny as i32,
                rules: vec![],
                dry_run: false,
            },
        ),
    };
    h.apply(AUTHORIZATION_TYPE_URL, vec![fixed], vec![])
        .unwrap();
    let s = cell.load();
    assert_eq!(s.policies.len(), 1);
    assert!(allowed(&s, "10.0.0.1") && allowed(&s, "10.0.0.2"));
}
