//! zpath-policy: the L4 authorization model (Istio's `istio.security.Authorization`),
//! its compiler, the compiled lookup and a plain reference evaluator used as a test oracle.
//!
//! No async, no I/O, no clock: inputs in, decisions out. A [`CompiledPolicies`] is
//! immutable and `Send + Sync`: the control thread builds one per snapshot and every
//! shard reads it through the snapshot's `Arc`. Evaluation allocates nothing and
//! takes no lock. This crate never widens access: whatever it cannot understand
//! denies.
//!
//! # Using it
//!
//! 1. Per snapshot: [`compile`] the policies ([`model::Authorization`], converted from
//!    xDS or read from a local config file). Log [`CompiledPolicies::invalid_policies`].
//! 2. Per local destination workload and snapshot: [`CompiledPolicies::resolve`] its
//!    namespace and its `authorization_policies` keys into a [`ResolvedTarget`]
//!    (allocates; do it when the snapshot is built, not per connection).
//! 3. Per inbound connection: [`CompiledPolicies::evaluate`] returns an [`Outcome`]:
//!    [`Decision::Allow`] with a [`Permit`] (needed to dial the upstream) or
//!    [`Decision::Deny`] with a [`DenyReason`], plus a [`DryRun`] report to log when
//!    dry-run policies apply.
//!
//! ```
//! use zpath_policy::{compile, Conn, Decision, Peer, Target};
//! use zpath_policy::model::{Action, Authorization, Clause, Match, Rule, Scope, StringMatch};
//!
//! // ALLOW, in namespace "shop", from principals of namespace "web".
//! let allow_web = Authorization {
//!     name: "allow-web".into(),
//!     namespace: "shop".into(),
//!     scope: Scope::Namespace,
//!     action: Action::Allow,
//!     rules: vec![Rule { clauses: vec![Clause { matches: vec![Match {
//!         principals: vec![StringMatch::Prefix("cluster.local/ns/web/".into())],
//!         ..Match::default()
//!     }]}]}],
//!     dry_run: false,
//!     invalid: None,
//! };
//! let compiled = compile(&[allow_web]);
//! let target = compiled.resolve(&Target { namespace: "shop", policies: &[] as &[&str] });
//!
//! let web = Peer::parse("spiffe://cluster.local/ns/web/sa/frontend").unwrap();
//! let conn = Conn {
//!     src_ip: "10.0.0.1".parse().unwrap(),
//!     dst_ip: "10.0.0.2".parse().unwrap(),
//!     dst_port: 8080,
//!     peer: Some(web),
//! };
//! assert!(compiled.evaluate(&target, &conn).decision.is_allow());
//!
//! // Plaintext (no identity): principal fields never match, so the ALLOW does not
//! // apply and the connection is denied.
//! let plaintext = Conn { peer: None, ..conn };
//! assert!(matches!(compiled.evaluate(&target, &plaintext).decision, Decision::Deny(_)));
//! ```
//!
//! # Semantics (those of ztunnel)
//!
//! **Which policies apply** to a destination workload: every `Global` policy; every
//! `Namespace` policy whose namespace is the workload's namespace; and every policy
//! whose `namespace/name` key the workload lists in its `authorization_policies`
//! (istiod lists the `WorkloadSelector` policies that select it there). A listed key
//! that the snapshot lacks is *not* skipped (ztunnel skips it with a warning): the
//! workload fails closed with [`DenyReason::MissingPolicy`] until the policy arrives.
//!
//! **When a policy matches**: a policy matches when any of its rules matches (rules
//! are ORed); a policy with no rules never matches. A rule matches when all of its
//! clauses hold (ANDed); a rule with no clauses always matches. A clause holds when
//! any of its matches holds (ORed); a clause with no matches always holds, but a
//! match with no field set is ignored, so a clause made only of empty matches never
//! holds. A match holds when every field that is set holds (ANDed); a field holds
//! when one of its values matches (ORed) and its `not_` twin holds when none of its
//! values matches.
//!
//! ```
//! # use zpath_policy::model::*;
//! // "from namespace a OR b" AND "to port 80": one rule, two clauses.
//! let rule = Rule { clauses: vec![
//!     Clause { matches: vec![
//!         Match { namespaces: vec![StringMatch::Exact("a".into())], ..Match::default() },
//!         Match { namespaces: vec![StringMatch::Exact("b".into())], ..Match::default() },
//!     ]},
//!     Clause { matches: vec![Match { destination_ports: vec![80], ..Match::default() }] },
//! ]};
//! # let _ = rule;
//! ```
//!
//! **Fields**: `principals` compare against `TD/ns/NS/sa/SA` (no `spiffe://` prefix);
//! `namespaces` against the peer's namespace; `service_accounts` against the peer's
//! (namespace, name) exactly; `source_ips` / `destination_ips` are CIDR containment;
//! `destination_ports` equality. String matches are exact, prefix, suffix or presence
//! (non-empty). **Without a peer identity** (plaintext), principal and service-account
//! values never match (so `notPrincipals: [Presence]` holds and `principals: [Presence]`
//! does not), and the namespace is the empty string (so only `Presence` and non-empty
//! patterns fail on it), exactly as ztunnel.
//!
//! **Decision**, over the enforced (non-dry-run) policies that apply:
//! 1. a missing referenced policy denies ([`DenyReason::MissingPolicy`]);
//! 2. an invalid policy denies its whole scope ([`DenyReason::InvalidPolicy`]);
//! 3. any matching DENY policy denies ([`DenyReason::ExplicitDeny`], the first in
//!    canonical order with its first matching rule);
//! 4. if no ALLOW policy applies, the connection is allowed;
//! 5. if an ALLOW policy matches, it is allowed ([`Permit::allowed_by`]);
//! 6. otherwise it is denied ([`DenyReason::NotAllowed`]).
//!
//! ```
//! # use zpath_policy::{compile, Conn, Decision, DenyReason, Target};
//! # use zpath_policy::model::*;
//! let deny_all = Authorization {
//!     name: "deny-all".into(), namespace: "istio-system".into(), scope: Scope::Global,
//!     action: Action::Deny, rules: vec![Rule::default()], dry_run: false, invalid: None,
//! };
//! let allow_all = Authorization {
//!     name: "allow-all".into(), action: Action::Allow, ..deny_all.clone()
//! };
//! let compiled = compile(&[allow_all, deny_all]);
//! let t = compiled.resolve(&Target { namespace: "x", policies: &[] as &[&str] });
//! let conn = Conn { src_ip: [10, 0, 0, 1].into(), dst_ip: [10, 0, 0, 2].into(),
//!                   dst_port: 80, peer: None };
//! // DENY beats ALLOW.
//! assert!(matches!(compiled.evaluate(&t, &conn).decision,
//!                  Decision::Deny(DenyReason::ExplicitDeny { rule: 0, .. })));
//! ```
//!
//! **Dry-run** policies are evaluated and reported in [`Outcome::dry_run`] (the first
//! matching dry-run DENY and ALLOW rules, and whether the connection would be allowed
//! if they were enforced), never enforced.
//!
//! **Canonical order**: policies are numbered in input order; when a `namespace/name`
//! key appears twice the later entry replaces the earlier one and takes its position.
//! The order only decides which policy a reason names, never the decision.
//!
//! **Fail closed**: a policy the converter could not understand (unknown enum value,
//! malformed address, out-of-range port) is built with
//! [`model::Authorization::invalid`] and denies every connection in its scope. In a
//! local config file such a field is a parse error that names the field.
//!
//! # Compiled form
//!
//! [`compile`] indexes policies by key, by scope (global list, per-namespace lists)
//! and turns each policy's rules into a flat decision program: one op per field
//! test, each with a forward jump for "holds" and one for "fails", so evaluation
//! walks exactly the short-circuit order of the semantics above with no nested
//! loops. Field tests use structures fit to the field: a port compare, a sorted
//! port list or an 8 KiB bitset; merged, sorted address ranges (binary search once
//! there are more than a few); one or a few exact strings compared directly, hashed
//! sets beyond that; prefix and suffix sets probed once per distinct length in a
//! hashed set; service accounts keyed by name. A policy whose every rule requires
//! one of a few destination ports carries that port set as a gate and is skipped
//! for other ports. [`CompiledPolicies::resolve`] leaves a destination with the
//! lists of policy ids that apply to it, so evaluation cost depends only on those
//! policies, never on the total.
//!
//! The [`reference`](mod@reference) module interprets the same semantics directly over the model;
//! property tests and the fuzz target check the compiled form against it.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod compile;
mod conn;
mod error;
mod eval;
pub mod fuzzing;
mod index;
pub mod model;
mod program;
pub mod reference;

#[cfg(test)]
mod semantics_tests;

pub use compile::{compile, CompiledPolicies, PolicyId, PolicyRef, ResolvedTarget};
pub use conn::{Conn, Peer, Target};
pub use error::PolicyError;
pub use eval::{Decision, DenyKind, DenyReason, DryRun, Outcome, Permit, RuleRef};
