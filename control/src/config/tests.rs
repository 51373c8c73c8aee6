use super::*;
use crate::model::{NetworkMode, Waypoint};

#[test]
fn ztunnel_localhost_example_is_accepted() {
    // The older bare-list form with `workloadIp`.
    let cfg = LocalConfig::parse(
        r#"
- name: local
  namespace: default
  serviceAccount: default
  workloadIp: "127.0.0.1"
  protocol: HBONE
  node: local
- name: local-tcp
  namespace: default
  serviceAccount: default
  workloadIp: "127.0.0.2"
  protocol: TCP
  node: local
"#,
    )
    .unwrap();
    assert_eq!(cfg.workloads.len(), 2);
    assert_eq!(cfg.workloads[0].protocol, TunnelProtocol::Hbone);
    assert_eq!(
        cfg.workloads[1].workload_ips,
        vec!["127.0.0.2".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(&*cfg.workloads[0].trust_domain, "cluster.local");
}

#[test]
fn empty_file_is_an_empty_config() {
    assert_eq!(LocalConfig::parse("").unwrap(), LocalConfig::default());
    assert_eq!(
        LocalConfig::parse("# nothing\n").unwrap(),
        LocalConfig::default()
    );
}

#[test]
fn bad_ip_names_the_field_and_line() {
    let err = LocalConfig::parse(
        "workloads:\n- name: a\n  namespace: default\n  workloadIps: [\"10.0.0.1\", \"10.0.0.x\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("workloads[0].workloadIps[1]"), "{err}");
    assert!(err.contains("line 4"), "{err}");
}

#[test]
fn workload_type_is_lower_cased_defaulted_and_checked() {
    let kind = |line: &str| {
        LocalConfig::parse(&format!(
            "workloads:\n- name: a\n  namespace: default\n  workloadIps: [\"10.0.0.1\"]\n{line}"
        ))
        .map(|c| c.workloads[0].workload_type.to_string())
        .map_err(|e| e.to_string())
    };
    assert_eq!(kind("").unwrap(), "deployment");
    assert_eq!(kind("  workloadType: CRONJOB\n").unwrap(), "cronjob");
    assert_eq!(kind("  workloadType: pod\n").unwrap(), "pod");
    let err = kind("  workloadType: \"pod,x=y\"\n").unwrap_err();
    assert!(err.contains("workloads[0].workloadType"), "{err}");
}

#[test]
fn unknown_field_is_rejected_by_name() {
    let err = LocalConfig::parse("workloads:\n- name: a\n  namespace: default\n  colour: blue\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("colour"), "{err}");
    assert!(err.contains("workloads[0]"), "{err}");
}

#[test]
fn missing_namespace_is_rejected() {
    let err = LocalConfig::parse("workloads:\n- name: a\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("namespace"), "{err}");
}

#[test]
fn namespace_with_slash_is_rejected() {
    let err = LocalConfig::parse("workloads:\n- name: a\n  namespace: a/b\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("workloads[0].namespace"), "{err}");
}

#[test]
fn duplicate_workload_address_is_rejected() {
    let err = LocalConfig::parse(
        "workloads:\n- {name: a, namespace: d, workloadIps: [\"10.0.0.1\"]}\n- {name: b, namespace: d, workloadIps: [\"10.0.0.1\"]}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("workloads[1].workloadIps"), "{err}");
}

#[test]
fn workload_service_must_be_defined() {
    let err = LocalConfig::parse(
        "workloads:\n- name: a\n  namespace: d\n  services: {d/x.d.svc: {80: 8080}}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("d/x.d.svc"), "{err}");
}

#[test]
fn service_endpoints_come_from_workloads_and_service_entries() {
    let cfg = LocalConfig::parse(
        r#"
workloads:
- {uid: u1, name: a, namespace: d, workloadIps: ["10.0.0.1"], services: {d/s.d.svc: {80: 8080}}}
- {uid: u2, name: b, namespace: d, workloadIps: ["10.0.0.2"]}
services:
- name: s
  namespace: d
  hostname: s.d.svc
  vips: ["net1/10.96.0.1", "10.96.0.2"]
  ports: {80: 8080}
  endpoints:
    u2: {workloadUid: u2, port: {80: 9090}, status: Healthy}
"#,
    )
    .unwrap();
    let svc = &cfg.services[0];
    assert_eq!(svc.vips.len(), 2);
    assert_eq!(svc.endpoints.len(), 2);
    assert_eq!(svc.endpoints[&Strng::from("u1")].port[&80], 8080);
}

#[test]
fn syntax_error_reports_line() {
    let err = LocalConfig::parse("workloads:\n  - name: [\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line"), "{err}");
}

#[test]
fn host_network_workloads_may_share_the_node_address() {
    let cfg = LocalConfig::parse(
        r#"
workloads:
- {name: a, namespace: kube-system, workloadIps: ["10.0.0.1"], networkMode: HOST_NETWORK}
- {name: b, namespace: kube-system, workloadIps: ["10.0.0.1"], networkMode: HostNetwork}
- {name: c, namespace: default, workloadIps: ["10.0.0.2"], networkMode: STANDARD}
"#,
    )
    .unwrap();
    let modes: Vec<NetworkMode> = cfg.workloads.iter().map(|w| w.network_mode).collect();
    assert_eq!(
        modes,
        [
            NetworkMode::HostNetwork,
            NetworkMode::HostNetwork,
            NetworkMode::Standard
        ]
    );
    let e = LocalConfig::parse(
        "workloads:\n- {name: a, namespace: d, workloadIps: [\"10.0.0.1\"], networkMode: BRIDGE}\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("networkMode"), "{e}");
}

#[test]
fn waypoints_of_workloads_and_services_are_read_in_ztunnel_form() {
    let cfg = LocalConfig::parse(
        r#"
workloads:
- name: a
  namespace: default
  workloadIps: ["10.0.0.1"]
  waypoint: {destination: "/10.0.0.9", hboneMtlsPort: 15008}
- name: b
  namespace: default
  workloadIps: ["10.0.0.2"]
services:
- name: s
  namespace: default
  hostname: s.default.svc.cluster.local
  waypoint:
    destination: {namespace: default, hostname: waypoint.default.svc.cluster.local}
    hboneMtlsPort: 15008
"#,
    )
    .unwrap();
    assert_eq!(
        cfg.workloads[0].waypoint,
        Some(Waypoint::Address {
            network: "".into(),
            ip: "10.0.0.9".parse().unwrap()
        })
    );
    assert_eq!(cfg.workloads[1].waypoint, None);
    assert_eq!(
        cfg.services[0]
            .waypoint
            .as_ref()
            .map(|w| w.to_string())
            .as_deref(),
        Some("default/waypoint.default.svc.cluster.local")
    );
    let e = LocalConfig::parse(
        "workloads:\n- {name: a, namespace: d, waypoint: {destination: \"net/not-an-ip\"}}\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("workloads[0].waypoint"), "{e}");
}
