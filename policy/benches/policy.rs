//! Policy evaluation and compilation at 10, 1,000 and 10,000 policies.
//!
//! The policy mix imitates a cluster: three global policies in the root namespace
//! (a STRICT-style deny of plaintext on one port, a source blocklist, a deny of
//! untrusted namespaces; a heavier variant adds seven principal-suffix revocation
//! denies, ten globals in all), about four namespace-scoped policies per namespace
//! (allow from the same namespace and from istio-system, a deny of admin ports), and
//! the rest workload-selector ALLOW policies (a few exact principals to two ports,
//! monitoring to 15020), each workload referencing two of them.
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall
//! time: the build machine is shared, and wall time there mostly measures waiting
//! for a core. CPU time still includes cache effects of other tenants.
//!
//! Run: `cargo bench -p zpath-policy --bench policy -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

mod cpu;
use cpu::ThreadCpu;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use zpath_policy::model::{
    Action, Authorization, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
};
use zpath_policy::{compile, Conn, Peer, Target};

fn rule(clauses: Vec<Match>) -> Rule {
    Rule {
        clauses: clauses
            .into_iter()
            .map(|m| Clause { matches: vec![m] })
            .collect(),
    }
}

fn policy(
    name: String,
    ns: String,
    scope: Scope,
    action: Action,
    rules: Vec<Rule>,
) -> Authorization {
    Authorization {
        name,
        namespace: ns,
        scope,
        action,
        rules,
        dry_run: false,
        invalid: None,
    }
}

fn principal(ns: usize, sa: &str) -> StringMatch {
    StringMatch::Exact(format!("cluster.local/ns/ns-{ns}/sa/{sa}"))
}

struct Mix {
    policies: Vec<Authorization>,
    namespaces: usize,
}

fn globals(n: usize) -> Vec<Authorization> {
    let g = |i: usize, action, rules| {
        policy(
            format!("global-{i}"),
            "istio-system".into(),
            Scope::Global,
            action,
            rules,
        )
    };
    let mut out = vec![
        g(
            0,
            Action::Deny,
            vec![rule(vec![Match {
                not_principals: vec![StringMatch::Presence],
                destination_ports: vec![8443],
                ..Match::default()
            }])],
        ),
        g(
            1,
            Action::Deny,
            vec![rule(vec![Match {
                source_ips: (0..20)
                    .map(|i| format!("172.{}.0.0/16", 16 + i).parse().unwrap_or_default())
                    .collect(),
                ..Match::default()
            }])],
        ),
        g(
            2,
            Action::Deny,
            vec![rule(vec![Match {
                namespaces: vec![StringMatch::Prefix("untrusted-".into())],
                ..Match::default()
            }])],
        ),
    ];
    for i in out.len()..n {
        out.push(g(
            i,
            Action::Deny,
            vec![rule(vec![Match {
                principals: vec![StringMatch::Suffix(format!("/sa/revoked-{i}"))],
                ..Match::default()
            }])],
        ));
    }
    out.truncate(n);
    out
}

fn namespace_policies(ns: usize) -> Vec<Authorization> {
    let name = format!("ns-{ns}");
    let p = |i: usize, action, rules| {
        policy(
            format!("ns-policy-{i}"),
            name.clone(),
            Scope::Namespace,
            action,
            rules,
        )
    };
    vec![
        p(
            0,
            Action::Allow,
            vec![rule(vec![Match {
                namespaces: vec![
                    StringMatch::Exact(name.clone()),
                    StringMatch::Exact("istio-system".into()),
                ],
                ..Match::default()
            }])],
        ),
        p(
            1,
            Action::Deny,
            vec![rule(vec![
                Match {
                    destination_ports: vec![9000, 9001, 9002],
                    ..Match::default()
                },
                Match {
                    not_namespaces: vec![StringMatch::Exact(name.clone())],
                    ..Match::default()
                },
            ])],
        ),
        p(
            2,
            Action::Allow,
            vec![rule(vec![Match {
                service_accounts: vec![ServiceAccountMatch {
                    namespace: "ingress".into(),
                    service_account: "gateway".into(),
                }],
                ..Match::default()
            }])],
        ),
        p(
            3,
            Action::Deny,
            vec![rule(vec![Match {
                not_destination_ips: vec!["10.0.0.0/8".parse().unwrap_or_default()],
                ..Match::default()
            }])],
        ),
    ]
}

fn selector_policy(ns: usize, i: usize) -> Authorization {
    let callers = [(ns + 1) % 7, (ns + 3) % 7, 3];
    policy(
        format!("allow-{i}"),
        format!("ns-{ns}"),
        Scope::WorkloadSelector,
        Action::Allow,
        vec![
            rule(vec![
                Match {
                    principals: callers.iter().map(|&c| principal(c, "backend")).collect(),
                    ..Match::default()
                },
                Match {
                    destination_ports: vec![8080, 9090],
                    ..Match::default()
                },
            ]),
            rule(vec![
                Match {
                    namespaces: vec![StringMatch::Exact("monitoring".into())],
                    ..Match::default()
                },
                Match {
                    destination_ports: vec![15020],
                    ..Match::default()
                },
            ]),
            rule(vec![
                Match {
                    principals: callers.iter().map(|&c| principal(c, "frontend")).collect(),
                    ..Match::default()
                },
                Match {
                    destination_ports: vec![8080],
                    ..Match::default()
                },
            ]),
        ],
    )
}

fn mix(total: usize, n_global: usize) -> Mix {
    let namespaces = (total / 20).max(1);
    let mut policies = globals(n_global);
    let mut ns = 0;
    while ns == 0 || (policies.len() + 4 <= total * 2 / 10 + n_global && ns < namespaces) {
        policies.extend(namespace_policies(ns));
        ns += 1;
    }
    let mut i = 0;
    while policies.len() < total {
        policies.push(selector_policy(i % namespaces, i));
        i += 1;
    }
    policies.truncate(total);
    Mix {
        policies,
        namespaces,
    }
}

fn bench_evaluate(c: &mut Criterion<ThreadCpu>) {
    let mut group = c.benchmark_group("evaluate");
    // (policies in total, global policies among them, label)
    let cases = [
        (10usize, 1usize, "allowed_hbone"),
        (1_000, 3, "allowed_hbone"),
        (10_000, 3, "allowed_hbone"),
        (10_000, 10, "allowed_hbone_10_globals"),
    ];
    for (total, n_global, label) in cases {
        let m = mix(total, n_global);
        let compiled = compile(&m.policies);
        // A workload in the last namespace, referencing two of its selector policies.
        let ns_index = m.namespaces - 1;
        let ns = format!("ns-{ns_index}");
        let keys: Vec<String> = m
            .policies
            .iter()
            .filter(|p| p.scope == Scope::WorkloadSelector && p.namespace == ns)
            .take(2)
            .map(Authorization::key)
            .collect();
        let target = compiled.resolve(&Target {
            namespace: &ns,
            policies: &keys,
        });
        let id = "spiffe://cluster.local/ns/ns-3/sa/frontend";
        let peer = Peer::parse(id).ok();
        let hbone = Conn {
            src_ip: [10, 1, 2, 3].into(),
            dst_ip: [10, 4, 5, 6].into(),
            dst_port: 8080,
            peer,
        };
        let plaintext = Conn {
            peer: None,
            dst_port: 8443,
            ..hbone
        };
        assert!(
            compiled.evaluate(&target, &hbone).decision.is_allow(),
            "bench connection must be allowed ({total} policies, {} applicable)",
            target.applicable()
        );
        assert!(!compiled.evaluate(&target, &plaintext).decision.is_allow());
        eprintln!(
            "{label}/{total}: {} policies apply to the bench destination",
            target.applicable()
        );
        group.bench_with_input(BenchmarkId::new(label, total), &total, |b, _| {
            b.iter(|| {
                black_box(compiled.evaluate(black_box(&target), black_box(&hbone)))
                    .decision
                    .is_allow()
            })
        });
        if n_global <= 3 {
            group.bench_with_input(
                BenchmarkId::new("denied_plaintext", total),
                &total,
                |b, _| {
                    b.iter(|| {
                        black_box(compiled.evaluate(black_box(&target), black_box(&plaintext)))
                            .decision
                            .is_allow()
                    })
                },
            );
        }
    }
    group.finish();
}

fn bench_compile(c: &mut Criterion<ThreadCpu>) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(20);
    for total in [1_000usize, 10_000] {
        let m = mix(total, 3);
        group.bench_with_input(BenchmarkId::from_parameter(total), &m.policies, |b, p| {
            b.iter(|| compile(black_box(p)))
        });
    }
    let m = mix(10_000, 3);
    let compiled = compile(&m.policies);
    let keys = ["ns-499/allow-499", "ns-499/allow-999"];
    group.bench_function("resolve_target/10000", |b| {
        b.iter(|| {
            compiled.resolve(black_box(&Target {
                namespace: "ns-499",
                policies: &keys,
            }))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench_evaluate, bench_compile
}
criterion_main!(benches);
