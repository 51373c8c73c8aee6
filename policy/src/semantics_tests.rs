//! Tests, one per semantic rule. Every evaluation here runs through both the
//! compiled form and the reference evaluator and checks they agree, then checks
//! the expected verdict.

use std::net::{IpAddr, SocketAddr};

use crate::model::{
    Action, Authorization, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
};
use crate::reference::{self, Verdict, VerdictDecision as V, VerdictDryRun};
use crate::{compile, Conn, Decision, DenyKind, DenyReason, Peer, Target};

fn pol(name: &str, ns: &str, scope: Scope, action: Action, rules: Vec<Rule>) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope,
        action,
        rules,
        dry_run: false,
        invalid: None,
    }
}

/// A rule from clauses given as lists of matches.
fn rule(clauses: Vec<Vec<Match>>) -> Rule {
    Rule {
        clauses: clauses
            .into_iter()
            .map(|matches| Clause { matches })
            .collect(),
    }
}

/// One rule, one clause, one match.
fn only(m: Match) -> Vec<Rule> {
    vec![rule(vec![vec![m]])]
}

fn global(action: Action, rules: Vec<Rule>) -> Authorization {
    pol(
        &format!("g-{action:?}").to_lowercase(),
        "istio-system",
        Scope::Global,
        action,
        rules,
    )
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

fn net(s: &str) -> ipnet::IpNet {
    crate::model::parse_cidr(s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const ID_A: &str = "spiffe://td/ns/a/sa/x";
const ID_B: &str = "spiffe://td/ns/b/sa/y";

fn conn(id: Option<&'static str>) -> Conn<'static> {
    Conn {
        src_ip: ip("10.0.0.1"),
        dst_ip: ip("10.0.0.2"),
        dst_port: 8080,
        peer: id.map(|i| Peer::parse(i).unwrap()),
    }
}

/// Evaluates with both evaluators, asserts they agree, returns the verdict.
fn eval_at(policies: &[Authorization], ns: &str, keys: &[&str], c: &Conn<'_>) -> Verdict {
    let compiled = compile(policies);
    let target = Target {
        namespace: ns,
        policies: keys,
    };
    let resolved = compiled.resolve(&target);
    let fast = Verdict::of(&compiled.evaluate(&resolved, c), &compiled);
    let slow = reference::evaluate(policies, &target, c);
    assert_eq!(fast, slow, "compiled and reference disagree");
    fast
}

fn eval(policies: &[Authorization], c: &Conn<'_>) -> Verdict {
    eval_at(policies, "a", &[], c)
}

fn allowed(v: &Verdict) -> bool {
    matches!(v.decision, V::Allow { .. })
}

/// Whether a single ALLOW policy with this match allows the connection.
fn allow_matches(m: Match, c: &Conn<'_>) -> bool {
    allowed(&eval(&[global(Action::Allow, only(m))], c))
}

#[test]
fn match_fields_are_anded() {
    let m = Match {
        namespaces: vec![exact("a")],
        destination_ports: vec![80],
        ..Match::default()
    };
    assert!(
        !allow_matches(m.clone(), &conn(Some(ID_A))),
        "port 8080 is not 80"
    );
    let c = Conn {
        dst_port: 80,
        ..conn(Some(ID_A))
    };
    assert!(allow_matches(m.clone(), &c));
    assert!(!allow_matches(
        m,
        &Conn {
            dst_port: 80,
            ..conn(Some(ID_B))
        }
    ));
}

#[test]
fn values_within_a_field_are_ored() {
    let m = Match {
        destination_ports: vec![80, 8080],
        ..Match::default()
    };
    assert!(allow_matches(m.clone(), &conn(None)));
    assert!(!allow_matches(
        m,
        &Conn {
            dst_port: 81,
            ..conn(None)
        }
    ));
}

#[test]
fn not_field_holds_when_no_value_matches() {
    let m = Match {
        not_destination_ports: vec![80, 8080],
        ..Match::default()
    };
    assert!(!allow_matches(m.clone(), &conn(None)));
    assert!(allow_matches(
        m,
        &Conn {
            dst_port: 81,
            ..conn(None)
        }
    ));
}

#[test]
fn field_and_its_not_twin_must_both_hold() {
    let m = Match {
        source_ips: vec![net("10.0.0.0/8")],
        not_source_ips: vec![net("10.0.0.1/32")],
        ..Match::default()
    };
    assert!(!allow_matches(m.clone(), &conn(None)));
    assert!(allow_matches(
        m,
        &Conn {
            src_ip: ip("10.9.9.9"),
            ..conn(None)
        }
    ));
}

#[test]
fn clauses_are_anded() {
    let ports = Match {
        destination_ports: vec![8080],
        ..Match::default()
    };
    let ns = Match {
        namespaces: vec![exact("b")],
        ..Match::default()
    };
    let p = global(Action::Allow, vec![rule(vec![vec![ports], vec![ns]])]);
    assert!(!allowed(&eval(std::slice::from_ref(&p), &conn(Some(ID_A)))));
    assert!(allowed(&eval(&[p], &conn(Some(ID_B)))));
}

#[test]
fn matches_within_a_clause_are_ored() {
    let a = Match {
        namespaces: vec![exact("a")],
        ..Match::default()
    };
    let b = Match {
        namespaces: vec![exact("b")],
        ..Match::default()
    };
    let p = global(Action::Allow, vec![rule(vec![vec![a, b]])]);
    assert!(allowed(&eval(std::slice::from_ref(&p), &conn(Some(ID_A)))));
    assert!(allowed(&eval(std::slice::from_ref(&p), &conn(Some(ID_B)))));
    assert!(!allowed(&eval(&[p], &conn(None))));
}

#[test]
fn rules_are_ored_and_the_first_matching_rule_is_reported() {
    let port = |p| {
        rule(vec![vec![Match {
            destination_ports: vec![p],
            ..Match::default()
        }]])
    };
    let p = global(Action::Deny, vec![port(1), port(8080), rule(vec![])]);
    let v = eval(&[p], &conn(None));
    assert_eq!(v.decision, V::ExplicitDeny("istio-system/g-deny".into(), 1));
}

#[test]
fn policy_without_rules_never_matches() {
    // An ALLOW with no rules is "allow nothing": it applies, never matches, so
    // everything is denied.
    let v = eval(&[global(Action::Allow, vec![])], &conn(Some(ID_A)));
    assert_eq!(v.decision, V::NotAllowed);
    let v = eval(&[global(Action::Deny, vec![])], &conn(Some(ID_A)));
    assert!(allowed(&v));
}

#[test]
fn rule_without_clauses_matches_every_connection() {
    assert!(allowed(&eval(
        &[global(Action::Allow, vec![rule(vec![])])],
        &conn(None)
    )));
}

#[test]
fn clause_without_matches_holds() {
    let p = global(Action::Allow, vec![rule(vec![vec![]])]);
    assert!(allowed(&eval(&[p], &conn(None))));
}

#[test]
fn empty_match_is_ignored_and_never_satisfies_its_clause() {
    let p = global(Action::Allow, only(Match::default()));
    assert_eq!(eval(&[p], &conn(None)).decision, V::NotAllowed);
    // Next to a real match, the empty one changes nothing.
    let real = Match {
        destination_ports: vec![8080],
        ..Match::default()
    };
    let p = global(
        Action::Allow,
        vec![rule(vec![vec![Match::default(), real]])],
    );
    assert!(allowed(&eval(&[p], &conn(None))));
}

#[test]
fn any_matching_deny_denies_even_when_an_allow_matches() {
    let allow = global(Action::Allow, vec![rule(vec![])]);
    let deny = pol("d", "a", Scope::Namespace, Action::Deny, vec![rule(vec![])]);
    let v = eval(&[allow, deny], &conn(Some(ID_A)));
    assert_eq!(v.decision, V::ExplicitDeny("a/d".into(), 0));
}

#[test]
fn no_allow_policy_applies_so_the_connection_is_allowed() {
    let deny_other_port = global(
        Action::Deny,
        only(Match {
            destination_ports: vec![1],
            ..Match::default()
        }),
    );
    let v = eval(&[deny_other_port], &conn(None));
    assert!(matches!(v.decision, V::Allow { by: None, .. }));
    assert!(matches!(
        eval(&[], &conn(None)).decision,
        V::Allow { by: None, .. }
    ));
}

#[test]
fn a_matching_allow_allows_and_the_permit_names_it() {
    let miss = pol(
        "miss",
        "a",
        Scope::Namespace,
        Action::Allow,
        only(Match {
            destination_ports: vec![1],
            ..Match::default()
        }),
    );
    let hit = pol(
        "hit",
        "a",
        Scope::Namespace,
        Action::Allow,
        vec![rule(vec![])],
    );
    let policies = [miss, hit];
    let compiled = compile(&policies);
    let t = compiled.resolve(&Target {
        namespace: "a",
        policies: &[] as &[&str],
    });
    let out = compiled.evaluate(&t, &conn(None));
    let Decision::Allow(permit) = out.decision else {
        panic!("expected allow");
    };
    assert_eq!(permit.destination(), SocketAddr::new(ip("10.0.0.2"), 8080));
    let (id, rule) = permit.allowed_by().unwrap();
    assert_eq!(compiled.policy(id).unwrap().to_string(), "a/hit");
    assert_eq!(rule, 0);
}

#[test]
fn allow_policies_apply_and_none_matches_so_the_connection_is_denied() {
    let p = global(
        Action::Allow,
        only(Match {
            principals: vec![exact("td/ns/b/sa/y")],
            ..Match::default()
        }),
    );
    let v = eval(&[p], &conn(Some(ID_A)));
    assert_eq!(v.decision, V::NotAllowed);
}

#[test]
fn dry_run_deny_is_reported_and_never_enforced() {
    let mut deny = global(Action::Deny, vec![rule(vec![])]);
    deny.dry_run = true;
    let v = eval(&[deny], &conn(None));
    assert!(allowed(&v));
    assert_eq!(
        v.dry_run,
        Some(VerdictDryRun {
            denied_by: Some(("istio-system/g-deny".into(), 0)),
            allowed_by: None,
            invalid: None,
            would_allow: false,
        })
    );
}

#[test]
fn dry_run_allow_is_never_enforced_and_reports_what_it_would_deny() {
    // A dry-run ALLOW that does not match: enforced, nothing applies (allow); with
    // it enforced, the connection would be denied.
    let mut allow = global(
        Action::Allow,
        only(Match {
            destination_ports: vec![1],
            ..Match::default()
        }),
    );
    allow.dry_run = true;
    let v = eval(std::slice::from_ref(&allow), &conn(None));
    assert!(matches!(v.decision, V::Allow { by: None, .. }));
    assert_eq!(v.dry_run.as_ref().map(|d| d.would_allow), Some(false));
    // A matching dry-run ALLOW does not rescue a connection the enforced ALLOWs reject.
    allow.rules = vec![rule(vec![])];
    let strict = pol("strict", "a", Scope::Namespace, Action::Allow, vec![]);
    let v = eval(&[allow, strict], &conn(None));
    assert_eq!(v.decision, V::NotAllowed);
    let d = v.dry_run.unwrap();
    assert_eq!(d.allowed_by, Some(("istio-system/g-allow".into(), 0)));
    assert!(d.would_allow);
}

#[test]
fn dry_run_report_is_absent_without_dry_run_policies() {
    assert_eq!(
        eval(&[global(Action::Deny, vec![])], &conn(None)).dry_run,
        None
    );
}

#[test]
fn principals_are_compared_without_the_spiffe_prefix() {
    let with_prefix = Match {
        principals: vec![exact(ID_A)],
        ..Match::default()
    };
    let without = Match {
        principals: vec![exact("td/ns/a/sa/x")],
        ..Match::default()
    };
    let prefix = Match {
        principals: vec![StringMatch::Prefix("td/ns/a/".into())],
        ..Match::default()
    };
    let suffix = Match {
        principals: vec![StringMatch::Suffix("/sa/x".into())],
        ..Match::default()
    };
    assert!(!allow_matches(with_prefix, &conn(Some(ID_A))));
    assert!(allow_matches(without, &conn(Some(ID_A))));
    assert!(allow_matches(prefix, &conn(Some(ID_A))));
    assert!(allow_matches(suffix, &conn(Some(ID_A))));
}

#[test]
fn plaintext_matches_principal_fields_as_absent() {
    let presence = Match {
        principals: vec![StringMatch::Presence],
        ..Match::default()
    };
    assert!(!allow_matches(presence.clone(), &conn(None)));
    assert!(allow_matches(presence, &conn(Some(ID_A))));
    // Even a pattern that matches any string does not match a missing principal.
    let any = Match {
        principals: vec![StringMatch::Prefix(String::new())],
        ..Match::default()
    };
    assert!(!allow_matches(any, &conn(None)));
}

#[test]
fn strict_mtls_deny_on_not_principals_presence_refuses_plaintext_only() {
    // What istiod sends for PeerAuthentication STRICT.
    let strict = global(
        Action::Deny,
        only(Match {
            not_principals: vec![StringMatch::Presence],
            ..Match::default()
        }),
    );
    let v = eval(std::slice::from_ref(&strict), &conn(None));
    assert_eq!(v.decision, V::ExplicitDeny("istio-system/g-deny".into(), 0));
    assert!(allowed(&eval(&[strict], &conn(Some(ID_A)))));
}

#[test]
fn plaintext_namespace_is_the_empty_string() {
    let empty = Match {
        namespaces: vec![exact("")],
        ..Match::default()
    };
    let presence = Match {
        namespaces: vec![StringMatch::Presence],
        ..Match::default()
    };
    assert!(allow_matches(empty.clone(), &conn(None)));
    assert!(!allow_matches(empty, &conn(Some(ID_A))));
    assert!(!allow_matches(presence.clone(), &conn(None)));
    assert!(allow_matches(presence, &conn(Some(ID_A))));
}

#[test]
fn plaintext_never_matches_a_service_account() {
    let sa = ServiceAccountMatch {
        namespace: "a".into(),
        service_account: "x".into(),
    };
    let m = Match {
        service_accounts: vec![sa.clone()],
        ..Match::default()
    };
    let not = Match {
        not_service_accounts: vec![sa],
        ..Match::default()
    };
    assert!(!allow_matches(m.clone(), &conn(None)));
    assert!(allow_matches(not.clone(), &conn(None)));
    assert!(allow_matches(m, &conn(Some(ID_A))));
    assert!(!allow_matches(not, &conn(Some(ID_A))));
}

#[test]
fn service_account_needs_both_namespace_and_name() {
    let m = Match {
        service_accounts: vec![ServiceAccountMatch {
            namespace: "b".into(),
            service_account: "x".into(),
        }],
        ..Match::default()
    };
    assert!(!allow_matches(m, &conn(Some(ID_A))));
}

#[test]
fn string_match_kinds() {
    let ns = |s: StringMatch| Match {
        namespaces: vec![s],
        ..Match::default()
    };
    let c = conn(Some("spiffe://td/ns/shop-prod/sa/x"));
    assert!(allow_matches(ns(exact("shop-prod")), &c));
    assert!(!allow_matches(ns(exact("shop")), &c));
    assert!(allow_matches(ns(StringMatch::Prefix("shop-".into())), &c));
    assert!(!allow_matches(ns(StringMatch::Prefix("prod".into())), &c));
    assert!(allow_matches(ns(StringMatch::Suffix("-prod".into())), &c));
    assert!(!allow_matches(ns(StringMatch::Suffix("shop".into())), &c));
    assert!(allow_matches(ns(StringMatch::Presence), &c));
}

#[test]
fn addresses_match_by_cidr_containment_per_family() {
    let dst = |n: &str| Match {
        destination_ips: vec![net(n)],
        ..Match::default()
    };
    assert!(allow_matches(dst("10.0.0.0/24"), &conn(None)));
    assert!(!allow_matches(dst("10.0.1.0/24"), &conn(None)));
    assert!(allow_matches(dst("0.0.0.0/0"), &conn(None)));
    let v6 = Conn {
        dst_ip: ip("::ffff:10.0.0.2"),
        ..conn(None)
    };
    // An IPv4 range does not contain an IPv4-mapped IPv6 address (as ztunnel).
    assert!(!allow_matches(dst("10.0.0.0/24"), &v6));
    assert!(allow_matches(dst("::ffff:0:0/96"), &v6));
    let src = Match {
        source_ips: vec![net("10.0.0.1")],
        ..Match::default()
    };
    assert!(allow_matches(src, &conn(None)));
}

#[test]
fn global_policy_applies_to_every_namespace() {
    let deny = global(Action::Deny, vec![rule(vec![])]);
    for ns in ["a", "b", "istio-system"] {
        assert!(
            !allowed(&eval_at(std::slice::from_ref(&deny), ns, &[], &conn(None))),
            "{ns}"
        );
    }
}

#[test]
fn namespace_policy_applies_only_to_its_namespace() {
    let deny = pol("d", "a", Scope::Namespace, Action::Deny, vec![rule(vec![])]);
    assert!(!allowed(&eval_at(
        std::slice::from_ref(&deny),
        "a",
        &[],
        &conn(None)
    )));
    assert!(allowed(&eval_at(&[deny], "b", &[], &conn(None))));
}

#[test]
fn workload_selector_policy_applies_only_where_referenced() {
    let deny = pol(
        "d",
        "a",
        Scope::WorkloadSelector,
        Action::Deny,
        vec![rule(vec![])],
    );
    assert!(allowed(&eval_at(
        std::slice::from_ref(&deny),
        "a",
        &[],
        &conn(None)
    )));
    assert!(!allowed(&eval_at(
        std::slice::from_ref(&deny),
        "a",
        &["a/d"],
        &conn(None)
    )));
    // The reference is by key, whatever namespace the workload is in.
    assert!(!allowed(&eval_at(&[deny], "b", &["a/d"], &conn(None))));
}

#[test]
fn referenced_policy_applies_whatever_its_scope() {
    let deny = pol("d", "a", Scope::Namespace, Action::Deny, vec![rule(vec![])]);
    assert!(!allowed(&eval_at(&[deny], "b", &["a/d"], &conn(None))));
}

#[test]
fn missing_referenced_policy_denies_and_names_the_key() {
    let allow = global(Action::Allow, vec![rule(vec![])]);
    let v = eval_at(&[allow], "a", &["a/not-yet"], &conn(Some(ID_A)));
    assert_eq!(v.decision, V::MissingPolicy("a/not-yet".into()));
    let compiled = compile(&[]);
    let t = compiled.resolve(&Target {
        namespace: "a",
        policies: &["a/not-yet"],
    });
    assert_eq!(t.missing().collect::<Vec<_>>(), ["a/not-yet"]);
    let out = compiled.evaluate(&t, &conn(None));
    let Decision::Deny(reason) = out.decision else {
        panic!("expected deny");
    };
    assert_eq!(reason.kind(), DenyKind::MissingPolicy);
    assert!(reason.to_string().contains("a/not-yet"));
}

#[test]
fn invalid_policy_denies_its_scope_only() {
    let bad = Authorization::invalid("bad", "a", Scope::Namespace, "unknown action 7");
    let v = eval_at(std::slice::from_ref(&bad), "a", &[], &conn(Some(ID_A)));
    assert_eq!(v.decision, V::InvalidPolicy("a/bad".into()));
    assert!(allowed(&eval_at(
        std::slice::from_ref(&bad),
        "b",
        &[],
        &conn(Some(ID_A))
    )));
    let compiled = compile(&[bad]);
    let invalid: Vec<_> = compiled
        .invalid_policies()
        .map(|(p, r)| (p.to_string(), r.to_owned()))
        .collect();
    assert_eq!(
        invalid,
        [("a/bad".to_owned(), "unknown action 7".to_owned())]
    );
    let t = compiled.resolve(&Target {
        namespace: "a",
        policies: &[] as &[&str],
    });
    match compiled.evaluate(&t, &conn(None)).decision {
        Decision::Deny(r @ DenyReason::InvalidPolicy { reason, .. }) => {
            assert_eq!(reason, "unknown action 7");
            assert!(r.to_string().contains("a/bad"), "{r}");
        }
        other => panic!("expected invalid-policy deny, got {other:?}"),
    }
}

#[test]
fn invalid_allow_policy_denies_instead_of_allowing() {
    let mut bad = Authorization::invalid("bad", "a", Scope::Namespace, "bad cidr");
    bad.action = Action::Allow;
    bad.rules = vec![rule(vec![])];
    let v = eval_at(&[bad], "a", &[], &conn(None));
    assert_eq!(v.decision, V::InvalidPolicy("a/bad".into()));
}

#[test]
fn invalid_dry_run_policy_is_reported_not_enforced() {
    let mut bad = Authorization::invalid("bad", "a", Scope::Namespace, "bad cidr");
    bad.dry_run = true;
    let v = eval_at(&[bad], "a", &[], &conn(None));
    assert!(allowed(&v));
    let d = v.dry_run.unwrap();
    assert_eq!(d.invalid.as_deref(), Some("a/bad"));
    assert!(!d.would_allow);
}

#[test]
fn a_later_policy_with_the_same_key_replaces_the_earlier() {
    let deny = pol("p", "a", Scope::Namespace, Action::Deny, vec![rule(vec![])]);
    let allow = pol(
        "p",
        "a",
        Scope::Namespace,
        Action::Allow,
        vec![rule(vec![])],
    );
    assert!(allowed(&eval(&[deny.clone(), allow.clone()], &conn(None))));
    assert!(!allowed(&eval(&[allow, deny], &conn(None))));
}

#[test]
fn the_first_deny_in_canonical_order_is_reported() {
    let d1 = pol(
        "d1",
        "a",
        Scope::Namespace,
        Action::Deny,
        vec![rule(vec![])],
    );
    let d2 = global(Action::Deny, vec![rule(vec![])]);
    let v = eval(&[d1.clone(), d2.clone()], &conn(None));
    assert_eq!(v.decision, V::ExplicitDeny("a/d1".into(), 0));
    let v = eval(&[d2, d1], &conn(None));
    assert_eq!(v.decision, V::ExplicitDeny("istio-system/g-deny".into(), 0));
}

#[test]
fn target_resolved_against_another_snapshot_is_denied() {
    let old = compile(&[]);
    let new = compile(&[]);
    let t = old.resolve(&Target {
        namespace: "a",
        policies: &[] as &[&str],
    });
    let out = new.evaluate(&t, &conn(None));
    assert_eq!(out.decision, Decision::Deny(DenyReason::StaleTarget));
    assert!(old.evaluate(&t, &conn(None)).decision.is_allow());
}

#[test]
fn large_value_lists_use_indexes_with_the_same_answers() {
    let many = |f: fn(usize) -> StringMatch| (0..40).map(f).collect::<Vec<_>>();
    let m = Match {
        principals: many(|i| exact(&format!("td/ns/n{i}/sa/x"))),
        not_namespaces: many(|i| StringMatch::Prefix(format!("blocked{i}-"))),
        destination_ports: (8000..8100).collect(),
        source_ips: (0..40).map(|i| net(&format!("10.{i}.0.0/16"))).collect(),
        ..Match::default()
    };
    let c = Conn {
        src_ip: ip("10.39.1.1"),
        dst_port: 8099,
        ..conn(Some("spiffe://td/ns/n39/sa/x"))
    };
    assert!(allow_matches(m.clone(), &c));
    assert!(!allow_matches(
        m.clone(),
        &Conn {
            dst_port: 8100,
            ..c
        }
    ));
    assert!(!allow_matches(
        m.clone(),
        &Conn {
            src_ip: ip("10.40.0.1"),
            ..c
        }
    ));
    assert!(!allow_matches(
        m,
        &conn(Some("spiffe://td/ns/blocked3-x/sa/x"))
    ));
}

#[test]
fn peer_identity_must_be_a_spiffe_workload_identity() {
    let p = Peer::parse("spiffe://cluster.local/ns/a/sa/x").unwrap();
    assert_eq!(
        (
            p.principal(),
            p.trust_domain(),
            p.namespace(),
            p.service_account()
        ),
        ("cluster.local/ns/a/sa/x", "cluster.local", "a", "x")
    );
    assert_eq!(Peer::parse("td/ns/a/sa/x").unwrap().namespace(), "a");
    for bad in [
        "",
        "spiffe://td/ns/a/sa",
        "spiffe://td/ns/a/sa/x/extra",
        "spiffe://td/nx/a/sa/x",
        "spiffe:///ns/a/sa/x",
        "spiffe://td/ns//sa/x",
    ] {
        assert!(Peer::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_peer_from_parts_is_the_parsed_peer_and_its_parts_must_be_the_principal() {
    let principal = "cluster.local/ns/a/sa/x";
    let p = Peer::from_parts(principal, "cluster.local", "a", "x").unwrap();
    assert_eq!(p, Peer::parse(principal).unwrap());
    for (td, ns, sa) in [
        ("cluster.local", "b", "x"),
        ("cluster.local", "a", "y"),
        ("other", "a", "x"),
        ("cluster.local", "a/sa/x", ""),
        ("cluster.local/ns/a", "sa", "x"),
        ("", "a", "x"),
    ] {
        assert!(
            Peer::from_parts(principal, td, ns, sa).is_err(),
            "{td:?} {ns:?} {sa:?}"
        );
    }
    // Parts longer than the principal.
    assert!(Peer::from_parts("a/ns/b/sa/c", "a", "b", "a-very-long-service-account").is_err());
    assert!(Peer::from_parts("", "a", "b", "c").is_err());
    // Same length, parts in the wrong places.
    assert!(Peer::from_parts("ab/ns/c/sa/d", "ab", "d", "c").is_err());
    assert!(Peer::from_parts("ab/nx/c/sa/d", "ab", "c", "d").is_err());
}

#[test]
fn compiled_policies_are_shareable_across_shards() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<crate::CompiledPolicies>();
    shareable::<crate::ResolvedTarget>();
}

mod serde_form {
    use super::*;

    /// A local config `policies:` list in the shape ztunnel's local config accepts
    /// (serde_yaml 0.9: enum values as YAML tags).
    const ZTUNNEL_LOCAL: &str = r#"
- name: allow-web
  namespace: shop
  scope: Namespace
  action: Allow
  rules:
  - - - principals:
        - Prefix: td/ns/web/
        destinationPorts: [8080]
      - namespaces:
        - !Exact ops
    - - notSourceIps: ["10.1.0.0/16"]
  dryRun: false
- name: strict
  namespace: istio-system
  scope: Global
  action: Deny
  rules:
  - - - notPrincipals:
        - !Presence []
  dryRun: true
- name: by-sa
  namespace: shop
  scope: WorkloadSelector
  action: Allow
  rules:
  - - - serviceAccounts:
        - namespace: web
          serviceAccount: frontend
        destinationIps: ["10.0.0.0/8", "fd00::/8"]
        notDestinationPorts: [15020]
        suffix_less: null
"#;

    #[test]
    fn local_config_in_ztunnel_shape_parses() {
        let text = ZTUNNEL_LOCAL.replace("        suffix_less: null\n", "");
        let ps: Vec<Authorization> = serde_yaml::from_str(&text).unwrap();
        assert_eq!(ps.len(), 3);
        let a = &ps[0];
        assert_eq!(
            (a.scope, a.action, a.dry_run),
            (Scope::Namespace, Action::Allow, false)
        );
        assert_eq!(a.rules.len(), 1);
        assert_eq!(a.rules[0].clauses.len(), 2);
        assert_eq!(a.rules[0].clauses[0].matches.len(), 2);
        assert_eq!(
            a.rules[0].clauses[0].matches[0].principals,
            [StringMatch::Prefix("td/ns/web/".into())]
        );
        assert_eq!(
            a.rules[0].clauses[1].matches[0].not_source_ips,
            [net("10.1.0.0/16")]
        );
        assert_eq!(
            ps[1].rules[0].clauses[0].matches[0].not_principals,
            [StringMatch::Presence]
        );
        assert!(ps[1].dry_run);
        let sa = &ps[2].rules[0].clauses[0].matches[0];
        assert_eq!(sa.service_accounts[0].service_account, "frontend");
        assert_eq!(sa.not_destination_ports, [15020]);
        assert!(ps.iter().all(Authorization::is_valid));
    }

    #[test]
    fn unknown_field_in_a_match_is_rejected_not_ignored() {
        let err = serde_yaml::from_str::<Vec<Authorization>>(ZTUNNEL_LOCAL).unwrap_err();
        assert!(err.to_string().contains("suffix_less"), "{err}");
    }

    #[test]
    fn malformed_cidr_is_a_clear_error() {
        let text = "- {name: p, namespace: a, scope: Global, action: Allow, rules: [[[{sourceIps: [\"10.0.0.0/33\"]}]]]}";
        let err = serde_yaml::from_str::<Vec<Authorization>>(text).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("10.0.0.0/33") && msg.contains("invalid address range"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_scope_or_action_is_an_error() {
        let scope = "{name: p, namespace: a, scope: Cluster, action: Allow}";
        assert!(serde_yaml::from_str::<Authorization>(scope).is_err());
        let action = "{name: p, namespace: a, scope: Global, action: Audit}";
        assert!(serde_yaml::from_str::<Authorization>(action).is_err());
    }

    #[test]
    fn dry_run_and_rules_may_be_omitted() {
        let p: Authorization =
            serde_yaml::from_str("{name: p, namespace: a, scope: Global, action: Deny}").unwrap();
        assert!(!p.dry_run && p.rules.is_empty());
    }

    #[test]
    fn string_match_accepts_tag_and_map_forms() {
        for (form, want) in [
            ("!Exact a", exact("a")),
            ("{Exact: a}", exact("a")),
            ("!Prefix p", StringMatch::Prefix("p".into())),
            ("{Suffix: s}", StringMatch::Suffix("s".into())),
            ("Presence", StringMatch::Presence),
        ] {
            let m: StringMatch = serde_yaml::from_str(form).unwrap();
            assert_eq!(m, want, "{form}");
        }
        assert_eq!(
            serde_yaml::to_string(&StringMatch::Prefix("td/".into()))
                .unwrap()
                .trim(),
            "!Prefix td/"
        );
        let err = serde_yaml::from_str::<StringMatch>("{Exact: a, Prefix: b}").unwrap_err();
        assert!(err.to_string().contains("exactly one kind"), "{err}");
    }

    #[test]
    fn presence_accepts_empty_forms_only() {
        for form in [
            "!Presence []",
            "{Presence: []}",
            "{Presence: null}",
            "{Presence: {}}",
        ] {
            let m: StringMatch = serde_yaml::from_str(form).unwrap();
            assert_eq!(m, StringMatch::Presence, "{form}");
        }
        assert!(serde_yaml::from_str::<StringMatch>("{Presence: [x]}").is_err());
        assert!(serde_yaml::from_str::<StringMatch>("!Presence [x]").is_err());
        let err = serde_yaml::from_str::<StringMatch>("!Regex x").unwrap_err();
        assert!(err.to_string().contains("Regex"), "{err}");
        assert!(serde_yaml::from_str::<StringMatch>("{Regex: x}").is_err());
    }

    #[test]
    fn serializes_in_ztunnel_json_shape() {
        let p = pol(
            "p",
            "a",
            Scope::WorkloadSelector,
            Action::Deny,
            only(Match {
                not_principals: vec![StringMatch::Presence],
                source_ips: vec![net("10.0.0.0/8")],
                ..Match::default()
            }),
        );
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "p", "namespace": "a", "scope": "WorkloadSelector", "action": "Deny",
                "rules": [[[{"notPrincipals": [{"Presence": []}], "sourceIps": ["10.0.0.0/8"]}]]],
                "dryRun": false
            })
        );
        let back: Authorization = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);
    }
}

#[test]
fn fuzz_seed_corpus_runs_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/compile_eval");
    let mut files = 0;
    let mut evaluations = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        evaluations += crate::fuzzing::run(&data);
        files += 1;
    }
    assert!(files >= 3, "seed corpus missing in {}", dir.display());
    assert!(evaluations >= files);
}
