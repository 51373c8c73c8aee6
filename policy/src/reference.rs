//! The reference evaluator: a plain interpreter of the semantics over the model,
//! written for obviousness rather than speed. It is the oracle the compiled form is
//! tested against (property tests, fuzzing); do not use it on the data path.
//!
//! It shares nothing with the compiler but the model types: it reads the policy
//! list as given, builds the principal string itself, and walks every rule.

use std::net::SocketAddr;

use crate::compile::CompiledPolicies;
use crate::conn::{Conn, Target};
use crate::eval::{Decision, DenyReason, Outcome, RuleRef};
use crate::model::{Action, Authorization, Match, Scope, ServiceAccountMatch, StringMatch};

/// A decision in plain owned values, comparable across both evaluators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerdictDecision {
    /// Allowed to `destination`, by a policy key and rule index (or by default).
    Allow {
        /// Destination the permit names.
        destination: SocketAddr,
        /// `(namespace/name, rule)` of the matching ALLOW policy.
        by: Option<(String, u32)>,
    },
    /// Missing referenced policy (its key).
    MissingPolicy(String),
    /// Invalid policy (its key).
    InvalidPolicy(String),
    /// Explicit deny `(namespace/name, rule)`.
    ExplicitDeny(String, u32),
    /// No ALLOW policy matched.
    NotAllowed,
    /// Target from another compilation.
    StaleTarget,
}

/// Dry-run report in plain owned values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictDryRun {
    /// First matching dry-run DENY `(key, rule)`.
    pub denied_by: Option<(String, u32)>,
    /// First matching dry-run ALLOW `(key, rule)`.
    pub allowed_by: Option<(String, u32)>,
    /// First invalid dry-run policy key.
    pub invalid: Option<String>,
    /// Decision if dry-run policies were enforced too.
    pub would_allow: bool,
}

/// A full outcome in plain owned values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The enforced decision.
    pub decision: VerdictDecision,
    /// The dry-run report, when a dry-run policy applies.
    pub dry_run: Option<VerdictDryRun>,
}

fn key_of(r: &RuleRef<'_>) -> (String, u32) {
    (format!("{}", r.policy), r.rule)
}

impl Verdict {
    /// Converts a compiled [`Outcome`] (from `compiled`) for comparison.
    pub fn of(outcome: &Outcome<'_>, compiled: &CompiledPolicies) -> Verdict {
        let decision = match &outcome.decision {
            Decision::Allow(p) => VerdictDecision::Allow {
                destination: p.destination(),
                by: p
                    .allowed_by()
                    .and_then(|(id, rule)| compiled.policy(id).map(|r| (r.to_string(), rule))),
            },
            Decision::Deny(DenyReason::MissingPolicy { key }) => {
                VerdictDecision::MissingPolicy((*key).to_owned())
            }
            Decision::Deny(DenyReason::InvalidPolicy { policy, .. }) => {
                VerdictDecision::InvalidPolicy(policy.to_string())
            }
            Decision::Deny(DenyReason::ExplicitDeny { policy, rule }) => {
                VerdictDecision::ExplicitDeny(policy.to_string(), *rule)
            }
            Decision::Deny(DenyReason::NotAllowed) => VerdictDecision::NotAllowed,
            Decision::Deny(DenyReason::StaleTarget) => VerdictDecision::StaleTarget,
        };
        Verdict {
            decision,
            dry_run: outcome.dry_run.map(|d| VerdictDryRun {
                denied_by: d.denied_by.as_ref().map(key_of),
                allowed_by: d.allowed_by.as_ref().map(key_of),
                invalid: d.invalid.map(|p| p.to_string()),
                would_allow: d.would_allow,
            }),
        }
    }
}

/// Evaluates `conn` to `target` under `policies` by direct interpretation.
pub fn evaluate<K: AsRef<str>>(
    policies: &[Authorization],
    target: &Target<'_, K>,
    conn: &Conn<'_>,
) -> Verdict {
    // The store: the last policy with a given key wins, and keeps its position.
    let mut store: Vec<(usize, &Authorization)> = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        let replaced = policies.iter().skip(i + 1).any(|q| q.key() == p.key());
        if !replaced {
            store.push((i, p));
        }
    }
    let referenced = |p: &Authorization| target.policies.iter().any(|k| k.as_ref() == p.key());
    let applies = |p: &Authorization| match p.scope {
        Scope::Global => true,
        Scope::Namespace => p.namespace == target.namespace,
        Scope::WorkloadSelector => false,
    } || referenced(p);
    let applicable: Vec<&Authorization> = store
        .iter()
        .map(|&(_, p)| p)
        .filter(|p| applies(p))
        .collect();
    let missing = target
        .policies
        .iter()
        .map(|k| k.as_ref())
        .find(|k| !store.iter().any(|(_, p)| p.key() == *k));

    let enforced: Vec<&Authorization> = applicable.iter().copied().filter(|p| !p.dry_run).collect();
    let dry: Vec<&Authorization> = applicable.iter().copied().filter(|p| p.dry_run).collect();

    let decision = decide(&enforced, missing, conn);
    let dry_run = if dry.is_empty() {
        None
    } else {
        let all: Vec<&Authorization> = applicable.clone();
        let shadow = decide(&all, missing, conn);
        Some(VerdictDryRun {
            denied_by: first_match(&dry, Action::Deny, conn),
            allowed_by: first_match(&dry, Action::Allow, conn),
            invalid: dry.iter().find(|p| !p.is_valid()).map(|p| p.key()),
            would_allow: matches!(shadow, VerdictDecision::Allow { .. }),
        })
    };
    Verdict { decision, dry_run }
}

/// The decision procedure over a list of policies, all treated as enforced.
fn decide(policies: &[&Authorization], missing: Option<&str>, conn: &Conn<'_>) -> VerdictDecision {
    if let Some(key) = missing {
        return VerdictDecision::MissingPolicy(key.to_owned());
    }
    if let Some(p) = policies.iter().find(|p| !p.is_valid()) {
        return VerdictDecision::InvalidPolicy(p.key());
    }
    if let Some((key, rule)) = first_match(policies, Action::Deny, conn) {
        return VerdictDecision::ExplicitDeny(key, rule);
    }
    let destination = SocketAddr::new(conn.dst_ip, conn.dst_port);
    if !policies.iter().any(|p| p.action == Action::Allow) {
        return VerdictDecision::Allow {
            destination,
            by: None,
        };
    }
    match first_match(policies, Action::Allow, conn) {
        Some(by) => VerdictDecision::Allow {
            destination,
            by: Some(by),
        },
        None => VerdictDecision::NotAllowed,
    }
}

fn first_match(
    policies: &[&Authorization],
    action: Action,
    conn: &Conn<'_>,
) -> Option<(String, u32)> {
    policies
        .iter()
        .filter(|p| p.action == action && p.is_valid())
        .find_map(|p| matching_rule(p, conn).map(|r| (p.key(), r)))
}

/// The index of the first rule of `p` that matches.
pub fn matching_rule(p: &Authorization, conn: &Conn<'_>) -> Option<u32> {
    for (i, rule) in p.rules.iter().enumerate() {
        let mut rule_holds = true;
        for clause in &rule.clauses {
            let clause_holds = clause.matches.is_empty()
                || clause
                    .matches
                    .iter()
                    .any(|m| !m.is_empty() && match_holds(m, conn));
            rule_holds = rule_holds && clause_holds;
        }
        if rule_holds {
            return Some(i as u32);
        }
    }
    None
}

fn match_holds(m: &Match, conn: &Conn<'_>) -> bool {
    let namespace = conn.peer.map(|p| p.namespace()).unwrap_or("");
    let principal = conn.peer.map(|p| {
        format!(
            "{}/ns/{}/sa/{}",
            p.trust_domain(),
            p.namespace(),
            p.service_account()
        )
    });
    let str_hit = |s: &StringMatch| s.matches(namespace);
    let principal_hit = |s: &StringMatch| principal.as_deref().is_some_and(|pr| s.matches(pr));
    let sa_hit = |s: &ServiceAccountMatch| {
        conn.peer.is_some_and(|p| {
            p.namespace() == s.namespace && p.service_account() == s.service_account
        })
    };
    let src_hit = |n: &ipnet::IpNet| n.contains(&conn.src_ip);
    let dst_hit = |n: &ipnet::IpNet| n.contains(&conn.dst_ip);
    let port_hit = |p: &u16| *p == conn.dst_port;

    field(&m.namespaces, &m.not_namespaces, str_hit)
        && field(&m.principals, &m.not_principals, principal_hit)
        && field(&m.service_accounts, &m.not_service_accounts, sa_hit)
        && field(&m.source_ips, &m.not_source_ips, src_hit)
        && field(&m.destination_ips, &m.not_destination_ips, dst_hit)
        && field(&m.destination_ports, &m.not_destination_ports, port_hit)
}

/// A field holds when (no positive values, or one matches) and (no negative value
/// matches).
fn field<T>(positive: &[T], negative: &[T], hit: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&hit)) && !negative.iter().any(&hit)
}
