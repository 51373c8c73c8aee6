//! Unit tests of snapshots and the builder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const CONFIG: &str = r#"
workloads:
- name: a
  namespace: default
  workloadIps: ["10.0.0.1"]
  protocol: HBONE
  node: n1
  services:
    default/svc.default.svc.cluster.local: {80: 8080}
- name: b
  namespace: default
  workloadIps: ["10.0.0.2"]
  node: n2
  services:
    default/svc.default.svc.cluster.local: {80: 9090}
- name: c
  namespace: default
  workloadIps: ["10.0.0.3"]
  status: Unhealthy
  services:
    default/svc.default.svc.cluster.local: {}
services:
- name: svc
  namespace: default
  hostname: svc.default.svc.cluster.local
  vips: ["/10.96.0.1"]
  ports: {80: 8000, 81: 0}
"#;

fn snap() -> Snapshot {
    let cfg = LocalConfig::parse(CONFIG).unwrap();
    Snapshot::from_local(&cfg, "n1", 1)
}

#[test]
fn direct_workload_address_routes_to_that_workload() {
    let s = snap();
    let r = s.route("10.0.0.1:5000".parse().unwrap(), 0);
    assert!(r.is_hbone());
    match r {
        Route::Workload { workload, addr } => {
            assert_eq!(workload.name(), "a");
            assert_eq!(addr, "10.0.0.1:5000".parse().unwrap());
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn vip_chooses_only_healthy_endpoints_with_their_port_mapping() {
    let s = snap();
    let mut seen = std::collections::BTreeSet::new();
    for pick in 0..16 {
        match s.route("10.96.0.1:80".parse().unwrap(), pick) {
            Route::Workload { addr, .. } => {
                seen.insert(addr);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let want: std::collections::BTreeSet<SocketAddr> = ["10.0.0.1:8080", "10.0.0.2:9090"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(seen, want);
}

#[test]
fn vip_port_not_exposed_has_no_endpoint() {
    let s = snap();
    assert!(matches!(
        s.route("10.96.0.1:443".parse().unwrap(), 0),
        Route::NoEndpoint(_)
    ));
}

#[test]
fn unknown_address_is_passthrough() {
    let s = snap();
    let dst: SocketAddr = "192.0.2.1:80".parse().unwrap();
    assert_eq!(s.route(dst, 0), Route::Passthrough(dst));
}

#[test]
fn local_workloads_are_those_on_this_node() {
    let s = snap();
    assert!(s.local_workload("10.0.0.1".parse().unwrap()).is_some());
    assert!(s.local_workload("10.0.0.2".parse().unwrap()).is_none());
}

#[test]
fn publish_replaces_what_new_loads_see() {
    let cell = SnapshotCell::new(Snapshot::default());
    let old = cell.load();
    cell.publish(snap());
    assert_eq!(old.generation, 0);
    assert_eq!(cell.generation(), 1);
}

// ---- the builder ----

use std::collections::BTreeSet;

use crate::model::{HealthStatus, Service, WorkloadProfile};
use zpath_policy::model::{Action, Authorization, Scope};

fn wl(uid: &str, ip: &str, node: &str, services: &[&str]) -> Arc<Workload> {
    let profile = WorkloadProfile {
        namespace: "default".into(),
        trust_domain: "cluster.local".into(),
        service_account: "default".into(),
        protocol: TunnelProtocol::Hbone,
        services: services.iter().map(|s| s.parse().unwrap()).collect(),
        cluster_id: "Kubernetes".into(),
        ..Default::default()
    };
    let mut w = Workload::new(uid.into(), uid, Arc::new(profile));
    w.workload_ips = vec![ip.parse().unwrap()].into();
    w.node = node.into();
    Arc::new(w)
}

/// `w`, an endpoint of every service it lists with port 80 → `target`.
fn with_ports(w: &Workload, target: u16) -> Arc<Workload> {
    let mut w = w.clone();
    let port: PortMap = Arc::new([(80u16, target)].into());
    let p = w.profile_mut();
    p.service_ports = vec![Some(port); p.services.len()];
    Arc::new(w)
}

fn svc(host: &str, vip: &str) -> Arc<Service> {
    Arc::new(Service {
        name: host.into(),
        namespace: "default".into(),
        hostname: host.into(),
        vips: vec![vip.parse().unwrap()],
        ports: [(80, 0)].into(),
        subject_alt_names: vec![],
        endpoints: Default::default(),
        waypoint: None,
    })
}

fn key(host: &str) -> NamespacedHostname {
    format!("default/{host}").parse().unwrap()
}

/// A DENY-all for namespace `default`, where every test workload lives.
fn deny_all(name: &str) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "default".into(),
        scope: Scope::Namespace,
        action: Action::Deny,
        rules: vec![zpath_policy::model::Rule { clauses: vec![] }],
        dry_run: false,
        invalid: None,
    }
}

fn endpoint_uids(s: &Snapshot, host: &str) -> BTreeSet<String> {
    s.services[&key(host)]
        .healthy
        .iter()
        .map(|w| w.uid.to_string())
        .collect()
}

/// Whether `s` authorizes a connection to `dst` (a refused destination is not).
fn allows(s: &Snapshot, dst: &str) -> bool {
    s.authorize(&conn(dst)).is_ok_and(|o| o.decision.is_allow())
}

fn conn(dst: &str) -> zpath_policy::Conn<'static> {
    zpath_policy::Conn {
        src_ip: "10.9.9.9".parse().unwrap(),
        dst_ip: dst.parse().unwrap(),
        dst_port: 80,
        peer: None,
    }
}

#[test]
fn builder_leaves_the_base_snapshot_untouched() {
    let mut b = SnapshotBuilder::new("n1");
    b.upsert_workload(wl("a", "10.0.0.1", "n1", &[]));
    let base = b.finish();
    let mut b = base.builder();
    b.remove_workload("a");
    b.upsert_workload(wl("b", "10.0.0.2", "n1", &[]));
    let next = b.finish();
    assert_eq!(next.generation, base.generation + 1);
    assert!(base.workload_by_ip("10.0.0.1".parse().unwrap()).is_some());
    assert!(base.workload_by_ip("10.0.0.2".parse().unwrap()).is_none());
    assert!(next.workload_by_ip("10.0.0.1".parse().unwrap()).is_none());
    assert!(next.workload_by_ip("10.0.0.2".parse().unwrap()).is_some());
}

#[test]
fn workload_endpoints_follow_workload_changes() {
    let mut b = SnapshotBuilder::new("n1");
    b.upsert_service(svc("echo", "10.96.0.1"));
    for (uid, ip) in [("a", "10.0.0.1"), ("b", "10.0.0.2")] {
        let w = wl(uid, ip, "n2", &["default/echo"]);
        b.upsert_workload(with_ports(&w, 8080));
    }
    let s1 = b.finish();
    assert_eq!(
        endpoint_uids(&s1, "echo"),
        BTreeSet::from(["a".into(), "b".into()])
    );
    match s1.route("10.96.0.1:80".parse().unwrap(), 0) {
        Route::Workload { addr, .. } => assert_eq!(addr.port(), 8080),
        other => panic!("unexpected {other:?}"),
    }

    // b leaves the service, a becomes unhealthy, c joins.
    let mut b2 = s1.builder();
    b2.upsert_workload(wl("b", "10.0.0.2", "n2", &[]));
    let mut a = (*wl("a", "10.0.0.1", "n2", &["default/echo"])).clone();
    a.status = HealthStatus::Unhealthy;
    let a = Arc::new(a);
    b2.upsert_workload(with_ports(&a, 8080));
    let c = wl("c", "10.0.0.3", "n2", &["default/echo"]);
    b2.upsert_workload(with_ports(&c, 9090));
    let s2 = b2.finish();
    assert_eq!(endpoint_uids(&s2, "echo"), BTreeSet::from(["c".into()]));
    match s2.route("10.96.0.1:80".parse().unwrap(), 7) {
        Route::Workload { addr, .. } => assert_eq!(addr, "10.0.0.3:9090".parse().unwrap()),
        other => panic!("unexpected {other:?}"),
    }

    let mut b3 = s2.builder();
    b3.remove_workload("c");
    let s3 = b3.finish();
    assert!(matches!(
        s3.route("10.96.0.1:80".parse().unwrap(), 0),
        Route::NoEndpoint(_)
    ));
}

#[test]
fn endpoints_outlive_their_service_and_return_with_it() {
    let mut b = SnapshotBuilder::new("n1");
    let w = wl("a", "10.0.0.1", "n2", &["default/echo"]);
    b.upsert_workload(with_ports(&w, 0));
    let s = b.finish();
    let vip: SocketAddr = "10.96.0.1:80".parse().unwrap();
    assert_eq!(s.route(vip, 0), Route::Passthrough(vip), "no service yet");

    let mut b = s.builder();
    b.upsert_service(svc("echo", "10.96.0.1"));
    let s = b.finish();
    assert_eq!(endpoint_uids(&s, "echo"), BTreeSet::from(["a".into()]));

    let mut b = s.builder();
    assert!(b.remove_service(&key("echo")).is_some());
    let s = b.finish();
    assert_eq!(s.route(vip, 0), Route::Passthrough(vip));
    assert!(s.service_by_vip(vip.ip()).is_none());

    let mut b = s.builder();
    b.upsert_service(svc("echo", "10.96.0.2"));
    let s = b.finish();
    assert_eq!(endpoint_uids(&s, "echo"), BTreeSet::from(["a".into()]));
    assert!(s.service_by_vip(vip.ip()).is_none(), "old VIP unindexed");
    assert!(s.service_by_vip("10.96.0.2".parse().unwrap()).is_some());
}

#[test]
fn a_moved_address_is_not_lost_when_its_old_owner_goes() {
    let mut b = SnapshotBuilder::new("n1");
    b.upsert_workload(wl("old", "10.0.0.1", "n2", &[]));
    b.upsert_workload(wl("new", "10.0.0.1", "n2", &[]));
    b.remove_workload("old");
    let s = b.finish();
    assert_eq!(
        &*s.workload_by_ip("10.0.0.1".parse().unwrap()).unwrap().uid,
        "new"
    );
}

#[test]
fn policy_push_denies_then_removal_allows_again() {
    let mut b = SnapshotBuilder::new("n1");
    b.upsert_workload(wl("a", "10.0.0.1", "n1", &[]));
    let s = b.finish();
    assert!(allows(&s, "10.0.0.1"));

    let mut b = s.builder();
    b.upsert_policy(deny_all("deny"));
    let s = b.finish();
    assert!(!allows(&s, "10.0.0.1"));

    // A workload change after the push keeps the compiled policies.
    let mut b = s.builder();
    b.upsert_workload(wl("b", "10.0.0.2", "n1", &[]));
    let s = b.finish();
    assert!(!allows(&s, "10.0.0.2"));

    let mut b = s.builder();
    assert!(b.remove_policy("default/deny"));
    assert!(!b.remove_policy("default/deny"));
    let s = b.finish();
    assert!(allows(&s, "10.0.0.1"));
    assert!(allows(&s, "10.0.0.2"));
}

#[test]
fn local_workloads_track_node_moves() {
    let mut b = SnapshotBuilder::new("n1");
    b.upsert_workload(wl("a", "10.0.0.1", "n1", &[]));
    b.upsert_workload(wl("b", "10.0.0.2", "n2", &[]));
    let s = b.finish();
    let local: Vec<_> = s.local_workloads().map(|w| w.uid.to_string()).collect();
    assert_eq!(local, ["a"]);

    let mut b = s.builder();
    b.upsert_workload(wl("a", "10.0.0.1", "n2", &[]));
    b.upsert_workload(wl("b", "10.0.0.2", "n1", &[]));
    let s = b.finish();
    let local: Vec<_> = s.local_workloads().map(|w| w.uid.to_string()).collect();
    assert_eq!(local, ["b"]);
    assert!(s.local_workload("10.0.0.1".parse().unwrap()).is_none());
}

#[test]
fn default_snapshot_denies_until_a_configuration_arrives() {
    let s = Snapshot::default();
    assert!(!allows(&s, "10.0.0.1"));
    let mut b = s.builder();
    b.upsert_workload(wl("a", "10.0.0.1", "", &[]));
    let s = b.finish();
    assert!(!allows(&s, "10.0.0.1"), "no node name: nothing is local");
    let mut b = SnapshotBuilder::new("n1");
    b.upsert_workload(wl("a", "10.0.0.1", "n1", &[]));
    assert!(allows(&b.finish(), "10.0.0.1"));
}

/// The refusal of `s` for a connection to `dst`, as the data path logs it.
fn refusal(s: &Snapshot, dst: &str) -> String {
    match s.authorize(&conn(dst)) {
        Ok(o) => panic!("{dst} was authorized: {:?}", o.decision),
        Err(unknown) => unknown.to_string(),
    }
}

#[test]
fn inbound_to_a_workload_of_another_node_is_refused_not_authorized_by_global_policies() {
    let mut b = SnapshotBuilder::new("n1");
    b.upsert_workload(wl("here", "10.0.0.1", "n1", &[]));
    b.upsert_workload(wl("there", "10.0.0.2", "n2", &[]));
    b.upsert_policy(deny_all("deny-namespace")); // namespace `default`
    let s = b.finish();
    assert!(matches!(
        s.authorize(&conn("10.0.0.2")),
        Err(UnknownDestination::OtherNode { workload, .. }) if &*workload.uid == "there"
    ));
    let why = refusal(&s, "10.0.0.2");
    assert!(why.contains("there") && why.contains("\"n2\""), "{why}");
    // The local workload of the same namespace is denied by its policy, not refused.
    assert!(s.authorize(&conn("10.0.0.1")).is_ok());
    assert!(!allows(&s, "10.0.0.1"));
}

#[test]
fn inbound_to_an_address_no_workload_has_yet_is_refused() {
    let mut b = SnapshotBuilder::new("n1");
    b.upsert_workload(wl("here", "10.0.0.1", "n1", &[]));
    b.upsert_policy(deny_all("deny-namespace")); // namespace `default`
    let s = b.finish();
    assert!(matches!(
        s.authorize(&conn("10.0.0.3")),
        Err(UnknownDestination::NoWorkload { ip }) if ip.to_string() == "10.0.0.3"
    ));
    assert!(refusal(&s, "10.0.0.3").contains("not pushed"));
}

#[test]
fn inbound_to_an_address_released_by_a_removed_workload_is_refused() {
    let mut b = SnapshotBuilder::new("n1");
    b.upsert_workload(wl("gone", "10.0.0.1", "n1", &[]));
    b.upsert_policy(deny_all("deny-namespace")); // namespace `default`
    let s = b.finish();
    assert!(s.authorize(&conn("10.0.0.1")).is_ok());
    let mut b = s.builder();
    b.remove_workload("gone");
    let s = b.finish();
    assert!(matches!(
        s.authorize(&conn("10.0.0.1")),
        Err(UnknownDestination::NoWorkload { .. })
    ));
    // Released and taken by a workload of another node: refused too.
    let mut b = s.builder();
    b.upsert_workload(wl("taker", "10.0.0.1", "n2", &[]));
    let s = b.finish();
    assert!(matches!(
        s.authorize(&conn("10.0.0.1")),
        Err(UnknownDestination::OtherNode { .. })
    ));
}

#[test]
fn endpoints_listed_by_a_file_service_make_the_workload_a_member() {
    let cfg = LocalConfig::parse(
        r#"
workloads:
- {name: a, namespace: default, workloadIps: ["10.0.0.1"]}
- {name: b, namespace: default, workloadIps: ["10.0.0.2"]}
services:
- name: echo
  namespace: default
  hostname: echo
  vips: ["10.96.0.1"]
  ports: {80: 0}
  endpoints:
    local//default/a: {workloadUid: local//default/a, port: {80: 7070}}
    local//default/b: {workloadUid: local//default/b, port: {80: 7071}, status: Unhealthy}
"#,
    )
    .unwrap();
    let s = Snapshot::from_local(&cfg, "n1", 1);
    for pick in 0..4 {
        assert_eq!(
            s.route("10.96.0.1:80".parse().unwrap(), pick),
            Route::Workload {
                workload: s.workload("local//default/a").unwrap().clone(),
                addr: "10.0.0.1:7070".parse().unwrap()
            }
        );
    }
    // The membership is the workload's now: removing it empties the service.
    let mut b = s.builder();
    b.remove_workload("local//default/a");
    let s = b.finish();
    assert!(matches!(
        s.route("10.96.0.1:80".parse().unwrap(), 0),
        Route::NoEndpoint(_)
    ));
}

#[test]
fn healthy_vector_stays_consistent_through_swaps() {
    // Remove from the middle, turn unhealthy and back, in one delta and across deltas.
    let mut b = SnapshotBuilder::new("n1");
    b.upsert_service(svc("echo", "10.96.0.1"));
    for i in 0..8 {
        let w = wl(
            &format!("w{i}"),
            &format!("10.0.0.{}", i + 1),
            "n2",
            &["default/echo"],
        );
        b.upsert_workload(with_ports(&w, 8000 + i));
    }
    let s = b.finish();
    let mut b = s.builder();
    b.remove_workload("w2");
    let mut w5 = (*wl("w5", "10.0.0.6", "n2", &["default/echo"])).clone();
    w5.status = HealthStatus::Unhealthy;
    let w5 = Arc::new(w5);
    b.upsert_workload(with_ports(&w5, 8005));
    b.remove_workload("w0");
    let s = b.finish();
    let want: BTreeSet<String> = ["w1", "w3", "w4", "w6", "w7"].map(String::from).into();
    assert_eq!(endpoint_uids(&s, "echo"), want);
    let mut b = s.builder();
    let w5 = wl("w5", "10.0.0.6", "n2", &["default/echo"]);
    b.upsert_workload(with_ports(&w5, 8005));
    b.remove_workload("w7");
    let s = b.finish();
    let want: BTreeSet<String> = ["w1", "w3", "w4", "w5", "w6"].map(String::from).into();
    assert_eq!(endpoint_uids(&s, "echo"), want);
    // Each endpoint carries its own workload's port.
    for w in s.services[&key("echo")].healthy.iter() {
        let i: u16 = w.uid[1..].parse().unwrap();
        let p = w.endpoint_ports("default", "echo").unwrap();
        assert_eq!(p.get(&80), Some(&(8000 + i)));
    }
}

/// A tiny deterministic generator (no test depends on a seed being lucky).
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Everything a snapshot answers, in a comparable form.
fn observable(s: &Snapshot) -> String {
    let mut out = Vec::new();
    let mut wls: Vec<_> = s
        .workloads
        .iter()
        .map(|(k, w)| format!("{k}={w:?}"))
        .collect();
    wls.sort();
    out.extend(wls);
    let mut ips: Vec<_> = s
        .by_ip
        .v4
        .iter()
        .map(|(ip, w)| format!("ip {ip:?}->{}", w.uid))
        .chain(
            s.by_ip
                .v6
                .iter()
                .map(|(ip, w)| format!("ip6 {ip:?}->{}", w.uid)),
        )
        .collect();
    ips.sort();
    out.extend(ips);
    let mut vips: Vec<_> = s
        .by_vip
        .iter()
        .map(|(ip, r)| {
            let mut eps: Vec<_> = r
                .healthy
                .iter()
                .map(|w| format!("{}{:?}{:?}", w.uid, w.workload_ips, w.service_ports))
                .collect();
            eps.sort(); // duplicates stay visible
            format!("vip {ip:?}->{} {eps:?}", r.service.key())
        })
        .collect();
    vips.sort();
    out.extend(vips);
    let mut svcs: Vec<_> = s
        .services
        .iter()
        .map(|(k, r)| {
            let mut eps: Vec<_> = r.healthy.iter().map(|w| format!("{w:?}")).collect();
            eps.sort();
            format!("svc {k} {eps:?}")
        })
        .collect();
    svcs.sort();
    out.extend(svcs);
    let mut local: Vec<_> = s.local_workloads().map(|w| w.uid.to_string()).collect();
    local.sort();
    out.push(format!("local {local:?}"));
    out.push(format!(
        "policies {:?}",
        s.policies.keys().collect::<Vec<_>>()
    ));
    out.join("\n")
}

#[test]
fn incremental_deltas_equal_a_build_from_scratch() {
    let hosts = ["s0", "s1", "s2"];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut snap = SnapshotBuilder::new("n1").finish();
    // The model: what a from-scratch build should contain.
    let mut workloads: std::collections::BTreeMap<String, (Arc<Workload>, u16)> =
        Default::default();
    let mut services: std::collections::BTreeMap<String, Arc<Service>> = Default::default();
    let mut policies: BTreeSet<String> = BTreeSet::new();
    let (mut routed, mut denied) = (0, 0);
    for _round in 0..200 {
        let mut b = snap.builder();
        for _ in 0..rng.next(6) + 1 {
            match rng.next(8) {
                0..=3 => {
                    let uid = format!("w{}", rng.next(20));
                    let ip = format!("10.0.0.{}", rng.next(24) + 1);
                    let node = if rng.next(3) == 0 { "n1" } else { "n2" };
                    let member: Vec<&str> = hosts
                        .iter()
                        .filter(|_| rng.next(2) == 0)
                        .map(|h| match *h {
                            "s0" => "default/s0",
                            "s1" => "default/s1",
                            _ => "default/s2",
                        })
                        .collect();
                    let mut w = (*wl(&uid, &ip, node, &member)).clone();
                    if rng.next(4) == 0 {
                        w.status = HealthStatus::Unhealthy;
                    }
                    let w = Arc::new(w);
                    let port = 8000 + rng.next(3) as u16;
                    b.upsert_workload(with_ports(&w, port));
                    // Keep the model free of address conflicts: drop older owners.
                    workloads.retain(|k, (o, _)| *k == uid || o.workload_ips != w.workload_ips);
                    let stale: Vec<String> = b
                        .current()
                        .workloads
                        .values()
                        .filter(|o| o.uid != w.uid && o.workload_ips == w.workload_ips)
                        .map(|o| o.uid.to_string())
                        .collect();
                    for s in stale {
                        b.remove_workload(&s);
                    }
                    workloads.insert(uid, (w, port));
                }
                4 => {
                    let uid = format!("w{}", rng.next(20));
                    b.remove_workload(&uid);
                    workloads.remove(&uid);
                }
                5 => {
                    let h = hosts[rng.next(3) as usize];
                    let vip = format!(
                        "10.96.0.{}",
                        rng.next(2) + 1 + 2 * u64::from(h.as_bytes()[1] - b'0')
                    );
                    let s = svc(h, &vip);
                    b.upsert_service(s.clone());
                    services.insert(h.to_string(), s);
                }
                6 => {
                    let h = hosts[rng.next(3) as usize];
                    b.remove_service(&key(h));
                    services.remove(h);
                }
                _ => {
                    let name = format!("p{}", rng.next(3));
                    if rng.next(2) == 0 {
                        b.upsert_policy(deny_all(&name));
                        policies.insert(name);
                    } else {
                        b.remove_policy(&format!("default/{name}"));
                        policies.remove(&name);
                    }
                }
            }
        }
        snap = b.finish();

        let mut fresh = SnapshotBuilder::new("n1");
        for (w, port) in workloads.values() {
            fresh.upsert_workload(with_ports(w, *port));
        }
        for s in services.values() {
            fresh.upsert_service(s.clone());
        }
        for p in &policies {
            fresh.upsert_policy(deny_all(p));
        }
        let fresh = fresh.finish();
        assert_eq!(observable(&snap), observable(&fresh));
        routed += snap
            .services
            .values()
            .filter(|r| r.healthy.len() > 1)
            .count();
        denied += usize::from(!snap.policies.is_empty() && snap.local_workloads().next().is_some());
        for w in snap.local_workloads() {
            let ip = w.workload_ips[0].to_string();
            assert_eq!(allows(&snap, &ip), allows(&fresh, &ip));
        }
    }
    // The walk must have exercised multi-endpoint services and policies.
    assert!(
        routed > 50,
        "only {routed} rounds had a service with several endpoints"
    );
    assert!(
        denied > 20,
        "only {denied} rounds had policies over local workloads"
    );
}

// ---- host-network workloads and waypoints ----

fn host_network(w: &Workload) -> Arc<Workload> {
    let mut w = w.clone();
    w.network_mode = crate::model::NetworkMode::HostNetwork;
    Arc::new(w)
}

fn with_waypoint(w: &Workload) -> Arc<Workload> {
    let mut w = w.clone();
    w.profile_mut().waypoint = Some(crate::model::Waypoint::Service(key("waypoint")));
    Arc::new(w)
}

#[test]
fn host_network_workloads_are_never_found_by_address() {
    let mut b = SnapshotBuilder::new("n1");
    // Two host-network pods on the node: both have the node's address.
    b.upsert_workload(host_network(&wl("agent", "10.0.0.1", "n1", &[])));
    b.upsert_workload(host_network(&wl("exporter", "10.0.0.1", "n1", &[])));
    let s = b.finish();
    let node_ip = "10.0.0.1".parse().unwrap();
    assert!(s.workload_by_ip(node_ip).is_none());
    assert!(
        s.local_workload(node_ip).is_none(),
        "no identity for the node's traffic"
    );
    assert!(s.workload("agent").is_some(), "kept by uid");
    let dst: SocketAddr = "10.0.0.1:80".parse().unwrap();
    assert_eq!(s.route(dst, 0), Route::Passthrough(dst));
    assert!(matches!(
        s.authorize(&conn("10.0.0.1")),
        Err(UnknownDestination::NoWorkload { .. })
    ));

    // A workload that becomes host-network leaves the address index; back, it returns.
    let mut b = s.builder();
    b.upsert_workload(wl("pod", "10.0.0.2", "n1", &[]));
    let s = b.finish();
    assert!(s.local_workload("10.0.0.2".parse().unwrap()).is_some());
    let mut b = s.builder();
    b.upsert_workload(host_network(&wl("pod", "10.0.0.2", "n1", &[])));
    let s = b.finish();
    assert!(s.workload_by_ip("10.0.0.2".parse().unwrap()).is_none());
    let mut b = s.builder();
    b.upsert_workload(wl("pod", "10.0.0.2", "n1", &[]));
    let s = b.finish();
    assert!(s.workload_by_ip("10.0.0.2".parse().unwrap()).is_some());

    // Removing a host-network workload leaves the pod that owns its address alone.
    let mut b = s.builder();
    b.upsert_workload(host_network(&wl("shadow", "10.0.0.2", "n1", &[])));
    b.remove_workload("shadow");
    let s = b.finish();
    assert_eq!(
        &*s.workload_by_ip("10.0.0.2".parse().unwrap()).unwrap().uid,
        "pod"
    );
}

#[test]
fn a_workload_with_a_waypoint_routes_to_a_refusal() {
    let mut b = SnapshotBuilder::new("n1");
    b.upsert_workload(with_waypoint(&wl("a", "10.0.0.1", "n2", &[])));
    let s = b.finish();
    match s.route("10.0.0.1:80".parse().unwrap(), 0) {
        Route::Waypoint {
            destination: Addressed::Workload(w),
            waypoint,
        } => {
            assert_eq!(&*w.uid, "a");
            assert_eq!(waypoint.to_string(), "default/waypoint");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_service_with_a_waypoint_routes_to_a_refusal_and_one_without_uses_its_endpoints() {
    let mut b = SnapshotBuilder::new("n1");
    // The endpoint's own waypoint is for workload-addressed traffic only (as Istio).
    b.upsert_workload(with_ports(
        &with_waypoint(&wl("a", "10.0.0.1", "n2", &["default/echo"])),
        8080,
    ));
    b.upsert_service(svc("echo", "10.96.0.1"));
    let mut guarded = (*svc("guarded", "10.96.0.2")).clone();
    guarded.waypoint = Some(crate::model::Waypoint::Service(key("waypoint")));
    b.upsert_service(Arc::new(guarded));
    let s = b.finish();
    assert!(matches!(
        s.route("10.96.0.1:80".parse().unwrap(), 0),
        Route::Workload { addr, .. } if addr == "10.0.0.1:8080".parse().unwrap()
    ));
    match s.route("10.96.0.2:80".parse().unwrap(), 0) {
        Route::Waypoint {
            destination: Addressed::Service(svc),
            ..
        } => assert_eq!(&*svc.hostname, "guarded"),
        other => panic!("unexpected {other:?}"),
    }
}
