use prost::Message;

use super::*;
use crate::proto::istio::security::string_match::MatchType;
use crate::xds::{decode_address, decode_authorization};
use crate::LocalConfig;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ip_bytes(s: &str) -> Vec<u8> {
    match ip(s) {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn wl() -> xwl::Workload {
    xwl::Workload {
        uid: "Kubernetes//Pod/shop/web-0".into(),
        name: "web-0".into(),
        namespace: "shop".into(),
        addresses: vec![ip_bytes("10.0.0.2")],
        ..Default::default()
    }
}

fn svc() -> xwl::Service {
    xwl::Service {
        name: "web".into(),
        namespace: "shop".into(),
        hostname: "web.shop.svc.cluster.local".into(),
        addresses: vec![xwl::NetworkAddress {
            network: String::new(),
            address: ip_bytes("10.96.0.10"),
        }],
        ports: vec![xwl::Port {
            service_port: 80,
            target_port: 8080,
        }],
        ..Default::default()
    }
}

fn port_list(pairs: &[(u32, u32)]) -> xwl::PortList {
    xwl::PortList {
        ports: pairs
            .iter()
            .map(|&(s, t)| xwl::Port {
                service_port: s,
                target_port: t,
            })
            .collect(),
    }
}

fn exact(v: &str) -> xsec::StringMatch {
    xsec::StringMatch {
        match_type: Some(MatchType::Exact(v.into())),
    }
}

fn cidr_of(a: &str, length: u32) -> xsec::Address {
    xsec::Address {
        address: ip_bytes(a),
        length,
    }
}

/// An ALLOW policy in namespace `shop` with one rule, one clause and match `m`.
fn policy(scope: xsec::Scope, m: xsec::Match) -> xsec::Authorization {
    xsec::Authorization {
        name: "allow-web".into(),
        namespace: "shop".into(),
        scope: scope as i32,
        action: xsec::Action::Allow as i32,
        rules: vec![xsec::Rule {
            clauses: vec![xsec::Clause { matches: vec![m] }],
        }],
        dry_run: false,
    }
}

fn workload_err(w: &xwl::Workload) -> ConvertError {
    WorkloadEndpoints::try_from(w).unwrap_err()
}

/// Asserts the policy became deny-all in `scope` with a reason naming `field`.
fn assert_invalid(p: &Authorization, scope: Scope, field: &str) {
    let reason = p
        .invalid
        .as_deref()
        .unwrap_or_else(|| panic!("valid: {p:?}"));
    assert!(reason.contains(field), "{reason}");
    assert_eq!(p.scope, scope);
    assert_eq!(p.action, Action::Deny);
    assert!(p.rules.is_empty());
    assert!(!p.dry_run);
    assert_eq!(
        (p.name.as_str(), p.namespace.as_str()),
        ("allow-web", "shop")
    );
}

// ---- workloads ----

#[test]
fn workload_empty_identity_fields_get_ztunnel_defaults() {
    let w = Workload::try_from(wl()).unwrap();
    assert_eq!(&*w.trust_domain, "cluster.local");
    assert_eq!(&*w.service_account, "default");
    assert_eq!(&*w.cluster_id, "Kubernetes");
    assert_eq!(w.spiffe_id(), "spiffe://cluster.local/ns/shop/sa/default");
    let set = Workload::try_from(xwl::Workload {
        trust_domain: "td".into(),
        service_account: "sa".into(),
        cluster_id: "east".into(),
        ..wl()
    })
    .unwrap();
    assert_eq!(set.spiffe_id(), "spiffe://td/ns/shop/sa/sa");
    assert_eq!(&*set.cluster_id, "east");
}

#[test]
fn workload_type_names_the_owner_kind_and_defaults_to_deployment() {
    let kind = |t: i32| {
        let w = Workload::try_from(xwl::Workload {
            workload_type: t,
            ..wl()
        })
        .unwrap();
        w.workload_type.to_string()
    };
    assert_eq!(kind(xwl::WorkloadType::Deployment as i32), "deployment");
    assert_eq!(kind(xwl::WorkloadType::Cronjob as i32), "cronjob");
    assert_eq!(kind(xwl::WorkloadType::Pod as i32), "pod");
    assert_eq!(kind(xwl::WorkloadType::Job as i32), "job");
    // A kind newer than this build only labels telemetry: it does not reject the workload.
    assert_eq!(kind(99), "deployment");
}

#[test]
fn workload_address_not_4_or_16_bytes_is_rejected_naming_the_field() {
    for bad in [
        vec![],
        vec![10, 0, 0],
        vec![10, 0, 0, 1, 0],
        vec![0; 15],
        vec![0; 17],
    ] {
        let e = workload_err(&xwl::Workload {
            addresses: vec![ip_bytes("10.0.0.2"), bad.clone()],
            ..wl()
        });
        assert_eq!(e.field, "addresses[1]", "{bad:?}");
        assert_eq!(e.resource, "Kubernetes//Pod/shop/web-0");
        assert!(e.to_string().contains(&format!("got {}", bad.len())), "{e}");
    }
    let v6 = Workload::try_from(xwl::Workload {
        addresses: vec![ip_bytes("fd00::2"), ip_bytes("10.0.0.2")],
        ..wl()
    })
    .unwrap();
    assert_eq!(v6.workload_ips, vec![ip("fd00::2"), ip("10.0.0.2")]);
    // An IPv4-mapped address is kept as the IPv4 address the data path looks up.
    let mapped = Workload::try_from(xwl::Workload {
        addresses: vec![ip_bytes("::ffff:10.0.0.3")],
        ..wl()
    })
    .unwrap();
    assert_eq!(mapped.workload_ips, vec![ip("10.0.0.3")]);
}

#[test]
fn workload_unknown_tunnel_protocol_is_rejected() {
    let e = workload_err(&xwl::Workload {
        tunnel_protocol: 7,
        ..wl()
    });
    assert_eq!(e.field, "tunnel_protocol");
    let hbone = Workload::try_from(xwl::Workload {
        tunnel_protocol: xwl::TunnelProtocol::Hbone as i32,
        ..wl()
    })
    .unwrap();
    assert_eq!(hbone.protocol, TunnelProtocol::Hbone);
    assert_eq!(
        Workload::try_from(wl()).unwrap().protocol,
        TunnelProtocol::Tcp
    );
}

#[test]
fn workload_unknown_status_is_rejected() {
    let e = workload_err(&xwl::Workload { status: -1, ..wl() });
    assert_eq!(e.field, "status");
    let w = WorkloadEndpoints::try_from(xwl::Workload {
        status: xwl::WorkloadStatus::Unhealthy as i32,
        services: [(
            "shop/web.shop.svc.cluster.local".into(),
            port_list(&[(80, 8080)]),
        )]
        .into(),
        ..wl()
    })
    .unwrap();
    assert_eq!(w.workload.status, HealthStatus::Unhealthy);
    assert_eq!(w.endpoints[0].1.status, HealthStatus::Unhealthy);
}

#[test]
fn workload_service_key_must_be_namespace_slash_hostname() {
    for bad in ["web.shop.svc", "/web.shop.svc", "shop/", "shop/a/b", ""] {
        let e = workload_err(&xwl::Workload {
            services: [(bad.to_string(), port_list(&[(80, 80)]))].into(),
            ..wl()
        });
        assert_eq!(e.field, format!("services[{bad:?}]"));
    }
}

#[test]
fn workload_service_port_out_of_range_or_repeated_is_rejected() {
    for bad in [
        port_list(&[(65536, 80)]),
        port_list(&[(0, 80)]),
        port_list(&[(80, 65536)]),
        port_list(&[(80, 8080), (80, 9090)]),
    ] {
        let e = workload_err(&xwl::Workload {
            services: [("shop/web.shop.svc.cluster.local".into(), bad.clone())].into(),
            ..wl()
        });
        assert_eq!(
            e.field, "services[\"shop/web.shop.svc.cluster.local\"]",
            "{bad:?}"
        );
    }
}

#[test]
fn workload_identity_segments_cannot_smuggle_a_path() {
    // These become segments of the SPIFFE id checked on every HBONE connection.
    let cases = [
        (
            xwl::Workload {
                namespace: String::new(),
                ..wl()
            },
            "namespace",
        ),
        (
            xwl::Workload {
                namespace: "shop/sa/admin".into(),
                ..wl()
            },
            "namespace",
        ),
        (
            xwl::Workload {
                trust_domain: "td/ns/x".into(),
                ..wl()
            },
            "trust_domain",
        ),
        (
            xwl::Workload {
                service_account: "a b".into(),
                ..wl()
            },
            "service_account",
        ),
    ];
    for (w, field) in cases {
        assert_eq!(workload_err(&w).field, field);
    }
}

#[test]
fn workload_without_uid_is_rejected() {
    let e = workload_err(&xwl::Workload {
        uid: String::new(),
        ..wl()
    });
    assert_eq!(e.field, "uid");
}

#[test]
fn workload_policy_reference_must_be_namespace_slash_name() {
    let e = workload_err(&xwl::Workload {
        authorization_policies: vec!["shop/allow-web".into(), "allow-web".into()],
        ..wl()
    });
    assert_eq!(e.field, "authorization_policies[1]");
}

#[test]
fn address_without_workload_or_service_is_rejected() {
    let e = AddressResource::try_from(xwl::Address { r#type: None }).unwrap_err();
    assert_eq!((e.kind, e.field.as_str()), ("address", "type"));
}

// ---- services ----

#[test]
fn service_vip_not_4_or_16_bytes_is_rejected_naming_the_field() {
    let mut s = svc();
    s.addresses.push(xwl::NetworkAddress {
        network: "net".into(),
        address: vec![1, 2, 3, 4, 5, 6],
    });
    let e = Service::try_from(&s).unwrap_err();
    assert_eq!(e.field, "addresses[1].address");
    assert_eq!(e.resource, "shop/web.shop.svc.cluster.local");
    assert_eq!(e.kind, "service");
}

#[test]
fn service_port_out_of_range_is_rejected() {
    for (s, t) in [(0, 80), (70000, 80), (80, 70000)] {
        let e = Service::try_from(xwl::Service {
            ports: port_list(&[(s, t)]).ports,
            ..svc()
        })
        .unwrap_err();
        assert_eq!(e.field, "ports", "{s}->{t}");
    }
}

#[test]
fn service_without_host_name_or_namespace_is_rejected() {
    let e = Service::try_from(xwl::Service {
        hostname: String::new(),
        ..svc()
    })
    .unwrap_err();
    assert_eq!(e.field, "hostname");
    let e = Service::try_from(xwl::Service {
        namespace: String::new(),
        ..svc()
    })
    .unwrap_err();
    assert_eq!(e.field, "namespace");
}

// ---- authorization ----

#[test]
fn policy_address_not_4_or_16_bytes_denies_in_its_scope() {
    for field in [
        "source_ips",
        "not_source_ips",
        "destination_ips",
        "not_destination_ips",
    ] {
        let bad = vec![xsec::Address {
            address: vec![10, 0, 0],
            length: 8,
        }];
        let mut m = xsec::Match::default();
        match field {
            "source_ips" => m.source_ips = bad,
            "not_source_ips" => m.not_source_ips = bad,
            "destination_ips" => m.destination_ips = bad,
            _ => m.not_destination_ips = bad,
        }
        let p = Authorization::from(policy(xsec::Scope::Namespace, m));
        assert_invalid(
            &p,
            Scope::Namespace,
            &format!("rules[0].clauses[0].matches[0].{field}[0]"),
        );
    }
}

#[test]
fn policy_prefix_length_past_address_width_denies_in_its_scope() {
    for (addr, len) in [("10.0.0.0", 33), ("fd00::", 129), ("10.0.0.0", 256 + 8)] {
        let m = xsec::Match {
            not_source_ips: vec![cidr_of(addr, len)],
            ..Default::default()
        };
        let p = Authorization::from(policy(xsec::Scope::WorkloadSelector, m));
        assert_invalid(&p, Scope::WorkloadSelector, "not_source_ips[0]");
        assert!(p.invalid.as_deref().unwrap().contains("prefix length"));
    }
    // The widest valid prefixes are kept as is.
    let m = xsec::Match {
        source_ips: vec![cidr_of("10.0.0.1", 32), cidr_of("fd00::1", 128)],
        ..Default::default()
    };
    let p = Authorization::from(policy(xsec::Scope::Namespace, m));
    assert!(p.is_valid(), "{:?}", p.invalid);
    assert_eq!(
        p.rules[0].clauses[0].matches[0].source_ips,
        vec![
            "10.0.0.1/32".parse::<IpNet>().unwrap(),
            "fd00::1/128".parse().unwrap()
        ]
    );
}

#[test]
fn policy_port_above_65535_denies_in_its_scope() {
    // 65616 would wrap to 80 with a plain cast: a DENY on 80 must not become one
    // on some other port, and a `not_` entry must not vanish.
    for field in ["destination_ports", "not_destination_ports"] {
        let mut m = xsec::Match::default();
        match field {
            "destination_ports" => m.destination_ports = vec![443, 65_616],
            _ => m.not_destination_ports = vec![443, 65_616],
        }
        let p = Authorization::from(policy(xsec::Scope::Namespace, m));
        assert_invalid(&p, Scope::Namespace, &format!("{field}[1]"));
    }
}

#[test]
fn policy_string_match_without_kind_denies_in_its_scope() {
    // Dropping the empty entry (as a filter would) could leave the field empty,
    // which matches everyone.
    let none = xsec::StringMatch { match_type: None };
    for field in [
        "namespaces",
        "not_namespaces",
        "principals",
        "not_principals",
    ] {
        let mut m = xsec::Match::default();
        let v = vec![exact("x"), none.clone()];
        match field {
            "namespaces" => m.namespaces = v,
            "not_namespaces" => m.not_namespaces = v,
            "principals" => m.principals = v,
            _ => m.not_principals = v,
        }
        let p = Authorization::from(policy(xsec::Scope::Namespace, m));
        assert_invalid(&p, Scope::Namespace, &format!("{field}[1]"));
    }
}

#[test]
fn policy_unknown_action_denies_in_its_scope() {
    let mut p = policy(xsec::Scope::Namespace, xsec::Match::default());
    p.action = 2;
    assert_invalid(&Authorization::from(&p), Scope::Namespace, "action");
}

#[test]
fn policy_unknown_scope_denies_everything_on_the_node() {
    let mut p = policy(xsec::Scope::Namespace, xsec::Match::default());
    p.scope = 3;
    assert_invalid(&Authorization::from(&p), Scope::Global, "scope");
    // Usable where a `TryFrom` conversion is expected (infallible).
    fn through_try_from<T: TryFrom<xsec::Authorization>>(p: xsec::Authorization) -> Option<T> {
        T::try_from(p).ok()
    }
    let via_try: Option<Authorization> = through_try_from(p);
    assert_eq!(via_try.map(|a| a.scope), Some(Scope::Global));
}

#[test]
fn policy_invalid_even_when_dry_run_is_enforced() {
    // A malformed dry-run policy still fails closed: the deny-all is enforced.
    let mut p = policy(xsec::Scope::Namespace, xsec::Match::default());
    p.dry_run = true;
    p.action = 9;
    let a = Authorization::from(p);
    assert!(!a.is_valid());
    assert!(!a.dry_run);
}

#[test]
fn policy_fields_map_one_to_one() {
    let m = xsec::Match {
        namespaces: vec![exact("web")],
        not_namespaces: vec![xsec::StringMatch {
            match_type: Some(MatchType::Prefix("kube-".into())),
        }],
        service_accounts: vec![xsec::ServiceAccountMatch {
            namespace: "web".into(),
            service_account: "frontend".into(),
        }],
        not_service_accounts: vec![xsec::ServiceAccountMatch {
            namespace: "web".into(),
            service_account: "legacy".into(),
        }],
        principals: vec![xsec::StringMatch {
            match_type: Some(MatchType::Suffix("/sa/frontend".into())),
        }],
        not_principals: vec![xsec::StringMatch {
            match_type: Some(MatchType::Presence(())),
        }],
        source_ips: vec![cidr_of("10.1.0.0", 16)],
        not_source_ips: vec![cidr_of("10.1.2.0", 24)],
        destination_ips: vec![cidr_of("fd00::", 8)],
        not_destination_ips: vec![cidr_of("10.0.0.9", 32)],
        destination_ports: vec![8080],
        not_destination_ports: vec![15020],
    };
    let mut p = policy(xsec::Scope::Global, m);
    p.action = xsec::Action::Deny as i32;
    p.dry_run = true;
    let a = Authorization::from(p);
    let expected = Authorization {
        name: "allow-web".into(),
        namespace: "shop".into(),
        scope: Scope::Global,
        action: Action::Deny,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    namespaces: vec![StringMatch::Exact("web".into())],
                    not_namespaces: vec![StringMatch::Prefix("kube-".into())],
                    service_accounts: vec![ServiceAccountMatch {
                        namespace: "web".into(),
                        service_account: "frontend".into(),
                    }],
                    not_service_accounts: vec![ServiceAccountMatch {
                        namespace: "web".into(),
                        service_account: "legacy".into(),
                    }],
                    principals: vec![StringMatch::Suffix("/sa/frontend".into())],
                    not_principals: vec![StringMatch::Presence],
                    source_ips: vec!["10.1.0.0/16".parse().unwrap()],
                    not_source_ips: vec!["10.1.2.0/24".parse().unwrap()],
                    destination_ips: vec!["fd00::/8".parse().unwrap()],
                    not_destination_ips: vec!["10.0.0.9/32".parse().unwrap()],
                    destination_ports: vec![8080],
                    not_destination_ports: vec![15020],
                }],
            }],
        }],
        dry_run: true,
        invalid: None,
    };
    assert_eq!(a, expected);
}

// ---- round trip: wire bytes -> decode -> convert, against the local config ----

#[test]
fn realistic_workload_and_service_round_trip_like_the_local_config() {
    let wire_wl = xwl::Workload {
        uid: "Kubernetes//Pod/shop/web-0".into(),
        name: "web-0".into(),
        namespace: "shop".into(),
        addresses: vec![ip_bytes("10.0.0.2"), ip_bytes("fd00::2")],
        network: "net-a".into(),
        tunnel_protocol: xwl::TunnelProtocol::Hbone as i32,
        service_account: "web".into(),
        node: "node-a".into(),
        canonical_name: "web".into(),
        canonical_revision: "v1".into(),
        workload_name: "web".into(),
        services: [
            (
                "shop/web.shop.svc.cluster.local".into(),
                port_list(&[(80, 8080), (443, 0)]),
            ),
            (
                "shop/api.shop.svc.cluster.local".into(),
                port_list(&[(9090, 9090)]),
            ),
        ]
        .into(),
        authorization_policies: vec!["shop/allow-web".into()],
        ..Default::default()
    };
    let wire_svc = xwl::Service {
        addresses: vec![
            xwl::NetworkAddress {
                network: "net-a".into(),
                address: ip_bytes("10.96.0.10"),
            },
            xwl::NetworkAddress {
                network: "net-a".into(),
                address: ip_bytes("fd00:96::10"),
            },
        ],
        ports: port_list(&[(80, 8080), (443, 0)]).ports,
        subject_alt_names: vec!["spiffe://cluster.local/ns/shop/sa/web".into()],
        ..svc()
    };
    let encode = |t| xwl::Address { r#type: Some(t) }.encode_to_vec();
    let wl_bytes = encode(xwl::address::Type::Workload(wire_wl));
    let svc_bytes = encode(xwl::address::Type::Service(wire_svc));
    let AddressResource::Workload(got_wl) =
        AddressResource::try_from(decode_address(&wl_bytes).unwrap()).unwrap()
    else {
        panic!("not a workload")
    };
    let AddressResource::Service(got_svc) =
        AddressResource::try_from(decode_address(&svc_bytes).unwrap()).unwrap()
    else {
        panic!("not a service")
    };

    // The same objects written as a local config file convert identically.
    let local = LocalConfig::parse(
        r#"
workloads:
- uid: Kubernetes//Pod/shop/web-0
  name: web-0
  namespace: shop
  serviceAccount: web
  workloadIps: ["10.0.0.2", "fd00::2"]
  network: net-a
  protocol: HBONE
  node: node-a
  canonicalName: web
  canonicalRevision: v1
  workloadName: web
  authorizationPolicies: [shop/allow-web]
  services:
    shop/web.shop.svc.cluster.local: {80: 8080, 443: 0}
    shop/api.shop.svc.cluster.local: {9090: 9090}
services:
- name: web
  namespace: shop
  hostname: web.shop.svc.cluster.local
  vips: ["net-a/10.96.0.10", "net-a/fd00:96::10"]
  ports: {80: 8080, 443: 0}
  subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/web"]
- name: api
  namespace: shop
  hostname: api.shop.svc.cluster.local
"#,
    )
    .unwrap();
    assert_eq!(got_wl.workload, *local.workloads[0]);
    assert_eq!(
        got_wl.workload.spiffe_id(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    let mut local_svc = (*local.services[0]).clone();
    let local_endpoint = local_svc
        .endpoints
        .remove("Kubernetes//Pod/shop/web-0")
        .unwrap();
    assert_eq!(got_svc, local_svc);
    let keys: Vec<String> = got_wl
        .endpoints
        .iter()
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "shop/api.shop.svc.cluster.local",
            "shop/web.shop.svc.cluster.local"
        ]
    );
    assert_eq!(got_wl.endpoints[1].1, local_endpoint);
    assert_eq!(got_wl.endpoints[1].0, got_svc.key());
}

#[test]
fn realistic_policy_round_trip_like_the_local_config() {
    let wire = xsec::Authorization {
        name: "allow-web".into(),
        namespace: "shop".into(),
        scope: xsec::Scope::Namespace as i32,
        action: xsec::Action::Allow as i32,
        rules: vec![
            xsec::Rule {
                clauses: vec![
                    xsec::Clause {
                        matches: vec![
                            xsec::Match {
                                principals: vec![xsec::StringMatch {
                                    match_type: Some(MatchType::Prefix(
                                        "cluster.local/ns/web/".into(),
                                    )),
                                }],
                                ..Default::default()
                            },
                            xsec::Match {
                                namespaces: vec![exact("ops")],
                                ..Default::default()
                            },
                        ],
                    },
                    xsec::Clause {
                        matches: vec![xsec::Match {
                            destination_ports: vec![8080],
                            ..Default::default()
                        }],
                    },
                ],
            },
            xsec::Rule {
                clauses: vec![xsec::Clause {
                    matches: vec![xsec::Match {
                        not_source_ips: vec![cidr_of("10.1.0.0", 16)],
                        ..Default::default()
                    }],
                }],
            },
        ],
        dry_run: false,
    };
    let got = Authorization::from(decode_authorization(&wire.encode_to_vec()).unwrap());
    let local = LocalConfig::parse(
        r#"
policies:
- name: allow-web
  namespace: shop
  scope: Namespace
  action: Allow
  rules:
  - - - principals: [{Prefix: cluster.local/ns/web/}]
      - namespaces: [{Exact: ops}]
    - - destinationPorts: [8080]
  - - - notSourceIps: ["10.1.0.0/16"]
  dryRun: false
"#,
    )
    .unwrap();
    assert!(got.is_valid(), "{:?}", got.invalid);
    assert_eq!(got, local.policies[0]);
}

// ---- shared profiles matched on the wire ----

fn rich_wl() -> xwl::Workload {
    xwl::Workload {
        service_account: "web".into(),
        node: "node-1".into(),
        tunnel_protocol: xwl::TunnelProtocol::Hbone as i32,
        canonical_name: "web".into(),
        canonical_revision: "v1".into(),
        workload_name: "web".into(),
        authorization_policies: vec!["shop/allow-web".into()],
        services: [
            (
                "shop/web.shop.svc.cluster.local".to_string(),
                port_list(&[(80, 8080), (443, 0)]),
            ),
            (
                "shop/api.shop.svc.cluster.local".to_string(),
                port_list(&[(81, 0)]),
            ),
        ]
        .into(),
        ..wl()
    }
}

#[test]
fn a_replica_matches_the_profile_of_its_deployment_and_converts_the_same() {
    let s = std::collections::hash_map::RandomState::new();
    let first = rich_wl();
    let profile = Arc::new(
        WorkloadEndpoints::try_from(&first)
            .unwrap()
            .workload
            .profile
            .as_ref()
            .clone(),
    );
    assert!(profile_matches(&profile, &first));
    // Another pod of the same deployment: only its own fields differ.
    let replica = xwl::Workload {
        uid: "Kubernetes//Pod/shop/web-1".into(),
        name: "web-1".into(),
        node: "node-2".into(),
        addresses: vec![ip_bytes("10.0.0.3")],
        status: xwl::WorkloadStatus::Unhealthy as i32,
        ..first.clone()
    };
    assert!(profile_matches(&profile, &replica));
    assert_eq!(
        profile_wire_hash(&first, &s),
        profile_wire_hash(&replica, &s)
    );
    let fast = workload_on_profile(&replica, profile.clone(), &mut |v| Strng::from(v)).unwrap();
    let slow = WorkloadEndpoints::try_from(&replica).unwrap().workload;
    assert_eq!(fast, slow);
    assert!(Arc::ptr_eq(&fast.profile, &profile));
    // Empty identity fields match the defaults they convert to.
    let defaults = xwl::Workload {
        trust_domain: String::new(),
        cluster_id: String::new(),
        ..wl()
    };
    let p = WorkloadEndpoints::try_from(&defaults)
        .unwrap()
        .workload
        .profile;
    let explicit = xwl::Workload {
        trust_domain: DEFAULT_TRUST_DOMAIN.into(),
        cluster_id: DEFAULT_CLUSTER_ID.into(),
        service_account: DEFAULT_SERVICE_ACCOUNT.into(),
        ..wl()
    };
    assert!(profile_matches(&p, &explicit));
    assert_eq!(
        profile_wire_hash(&defaults, &s),
        profile_wire_hash(&explicit, &s)
    );
}

#[test]
fn any_shared_field_that_differs_breaks_the_match() {
    let base = rich_wl();
    let profile = WorkloadEndpoints::try_from(&base).unwrap().workload.profile;
    let changes: Vec<(&str, xwl::Workload)> = vec![
        (
            "namespace",
            xwl::Workload {
                namespace: "other".into(),
                ..base.clone()
            },
        ),
        (
            "trust_domain",
            xwl::Workload {
                trust_domain: "td".into(),
                ..base.clone()
            },
        ),
        (
            "service_account",
            xwl::Workload {
                service_account: "sa".into(),
                ..base.clone()
            },
        ),
        (
            "protocol",
            xwl::Workload {
                tunnel_protocol: 0,
                ..base.clone()
            },
        ),
        (
            "bad protocol",
            xwl::Workload {
                tunnel_protocol: 7,
                ..base.clone()
            },
        ),
        (
            "network",
            xwl::Workload {
                network: "n".into(),
                ..base.clone()
            },
        ),
        (
            "canonical_name",
            xwl::Workload {
                canonical_name: "x".into(),
                ..base.clone()
            },
        ),
        (
            "canonical_revision",
            xwl::Workload {
                canonical_revision: "x".into(),
                ..base.clone()
            },
        ),
        (
            "workload_name",
            xwl::Workload {
                workload_name: "x".into(),
                ..base.clone()
            },
        ),
        (
            "cluster_id",
            xwl::Workload {
                cluster_id: "c2".into(),
                ..base.clone()
            },
        ),
        (
            "policies",
            xwl::Workload {
                authorization_policies: vec![],
                ..base.clone()
            },
        ),
        (
            "bad policy",
            xwl::Workload {
                authorization_policies: vec!["nope".into()],
                ..base.clone()
            },
        ),
        (
            "waypoint",
            xwl::Workload {
                waypoint: Some(waypoint_at("10.0.0.9")),
                ..base.clone()
            },
        ),
        (
            "empty waypoint",
            xwl::Workload {
                waypoint: Some(xwl::GatewayAddress::default()),
                ..base.clone()
            },
        ),
    ];
    for (what, w) in changes {
        assert!(!profile_matches(&profile, &w), "{what} still matches");
    }
    let mut services = base.clone();
    services.services.remove("shop/api.shop.svc.cluster.local");
    assert!(!profile_matches(&profile, &services), "a service fewer");
    let mut ports = base.clone();
    ports.services.insert(
        "shop/api.shop.svc.cluster.local".into(),
        port_list(&[(81, 1)]),
    );
    assert!(!profile_matches(&profile, &ports), "another target port");
    let mut key = base.clone();
    let l = key
        .services
        .remove("shop/api.shop.svc.cluster.local")
        .unwrap();
    key.services
        .insert("shop/api2.shop.svc.cluster.local".into(), l);
    assert!(!profile_matches(&profile, &key), "another service key");
    let mut bad_key = base.clone();
    let l = bad_key
        .services
        .remove("shop/api.shop.svc.cluster.local")
        .unwrap();
    bad_key
        .services
        .insert("api.shop.svc.cluster.local".into(), l);
    assert!(
        !profile_matches(&profile, &bad_key),
        "a malformed service key"
    );
}

#[test]
fn port_lists_match_only_what_converts_without_error() {
    let map: BTreeMap<u16, u16> = [(80, 8080), (81, 0)].into();
    assert!(same_ports(&map, &port_list(&[(81, 0), (80, 8080)]).ports));
    // Listed twice: the conversion rejects it, so it must not match.
    let dup: BTreeMap<u16, u16> = [(80, 8080), (81, 0)].into();
    assert!(!same_ports(
        &dup,
        &port_list(&[(80, 8080), (80, 8080)]).ports
    ));
    assert!(!same_ports(&map, &port_list(&[(80, 8080)]).ports));
    assert!(!same_ports(
        &map,
        &port_list(&[(80, 8080), (65617, 0)]).ports
    ));
    assert!(!same_ports(
        &map,
        &port_list(&[(80, 8080), (81, 65536)]).ports
    ));
}

#[test]
fn per_workload_fields_are_still_checked_on_a_known_profile() {
    let profile = WorkloadEndpoints::try_from(&rich_wl())
        .unwrap()
        .workload
        .profile;
    let bad_ip = xwl::Workload {
        addresses: vec![vec![1, 2, 3]],
        ..rich_wl()
    };
    let e = workload_on_profile(&bad_ip, profile.clone(), &mut |v| Strng::from(v)).unwrap_err();
    assert_eq!(e, WorkloadEndpoints::try_from(&bad_ip).unwrap_err());
    let bad_status = xwl::Workload {
        status: 9,
        ..rich_wl()
    };
    let e = workload_on_profile(&bad_status, profile.clone(), &mut |v| Strng::from(v)).unwrap_err();
    assert_eq!(e.field, "status");
    let no_uid = xwl::Workload {
        uid: String::new(),
        ..rich_wl()
    };
    let e = workload_on_profile(&no_uid, profile, &mut |v| Strng::from(v)).unwrap_err();
    assert_eq!(e.field, "uid");
}

fn waypoint_at(ip: &str) -> xwl::GatewayAddress {
    xwl::GatewayAddress {
        destination: Some(xwl::gateway_address::Destination::Address(
            xwl::NetworkAddress {
                network: "net1".into(),
                address: ip_bytes(ip),
            },
        )),
        hbone_mtls_port: 15008,
    }
}

fn waypoint_service(ns: &str, host: &str) -> xwl::GatewayAddress {
    xwl::GatewayAddress {
        destination: Some(xwl::gateway_address::Destination::Hostname(
            xwl::NamespacedHostname {
                namespace: ns.into(),
                hostname: host.into(),
            },
        )),
        hbone_mtls_port: 15008,
    }
}

#[test]
fn workload_and_service_waypoints_are_kept_in_the_model() {
    let w = xwl::Workload {
        waypoint: Some(waypoint_service("shop", "waypoint.shop.svc.cluster.local")),
        ..rich_wl()
    };
    let got = WorkloadEndpoints::try_from(&w).unwrap().workload;
    assert_eq!(
        got.waypoint.as_ref().map(|w| w.to_string()).as_deref(),
        Some("shop/waypoint.shop.svc.cluster.local")
    );
    let profile = got.profile.clone();
    assert!(profile_matches(&profile, &w));
    let fast = workload_on_profile(&w, profile, &mut |v| Strng::from(v)).unwrap();
    assert_eq!(fast, got);
    let s = xwl::Service {
        waypoint: Some(waypoint_at("10.0.0.9")),
        ..svc()
    };
    let got = Service::try_from(&s).unwrap();
    assert_eq!(
        got.waypoint,
        Some(Waypoint::Address {
            network: "net1".into(),
            ip: ip("10.0.0.9")
        })
    );
    assert_eq!(Service::try_from(&svc()).unwrap().waypoint, None);
}

#[test]
fn a_waypoint_naming_no_destination_is_rejected_not_ignored() {
    let w = xwl::Workload {
        waypoint: Some(xwl::GatewayAddress::default()),
        ..wl()
    };
    assert_eq!(workload_err(&w).field, "waypoint");
    let bad = xwl::Workload {
        waypoint: Some(waypoint_service("", "w")),
        ..wl()
    };
    assert_eq!(workload_err(&bad).field, "waypoint");
    let s = xwl::Service {
        waypoint: Some(xwl::GatewayAddress {
            destination: Some(xwl::gateway_address::Destination::Address(
                xwl::NetworkAddress {
                    network: String::new(),
                    address: vec![1, 2, 3],
                },
            )),
            hbone_mtls_port: 0,
        }),
        ..svc()
    };
    assert_eq!(Service::try_from(&s).unwrap_err().field, "waypoint");
}

#[test]
fn host_network_mode_is_kept_and_an_unknown_mode_rejected() {
    let w = xwl::Workload {
        network_mode: xwl::NetworkMode::HostNetwork as i32,
        ..rich_wl()
    };
    let got = WorkloadEndpoints::try_from(&w).unwrap().workload;
    assert_eq!(got.network_mode, NetworkMode::HostNetwork);
    // Per workload: a known profile converts it too.
    let profile = WorkloadEndpoints::try_from(&rich_wl())
        .unwrap()
        .workload
        .profile;
    assert!(profile_matches(&profile, &w));
    let fast = workload_on_profile(&w, profile.clone(), &mut |v| Strng::from(v)).unwrap();
    assert_eq!(fast.network_mode, NetworkMode::HostNetwork);
    let bad = xwl::Workload {
        network_mode: 7,
        ..rich_wl()
    };
    assert_eq!(workload_err(&bad).field, "network_mode");
    let e = workload_on_profile(&bad, profile, &mut |v| Strng::from(v)).unwrap_err();
    assert_eq!(e.field, "network_mode");
}
