//! Evaluation: a connection against a resolved destination, with no allocation and
//! no lock. The result is an [`Outcome`]: the enforced [`Decision`] and, when dry-run
//! policies apply, what they would have done ([`DryRun`]).

use std::fmt;
use std::net::SocketAddr;

use crate::compile::{CompiledPolicies, PolicyId, PolicyRef, ResolvedTarget};
use crate::conn::Conn;
use crate::program::View;

/// Proof that the policy evaluator allowed a connection. Only this crate can create
/// one, and it cannot be cloned: the engine needs one to dial the upstream of an
/// inbound connection, and it names the destination it was granted for.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a Permit is required to dial the upstream; dropping it means the connection was not dialled"]
pub struct Permit {
    destination: SocketAddr,
    allowed_by: Option<(PolicyId, u32)>,
}

impl Permit {
    /// The destination address and port the connection was allowed to.
    pub fn destination(&self) -> SocketAddr {
        self.destination
    }

    /// The ALLOW policy and rule index that matched; `None` when no ALLOW policy
    /// applies to the destination (allowed by default).
    pub fn allowed_by(&self) -> Option<(PolicyId, u32)> {
        self.allowed_by
    }
}

/// The enforced decision.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Allowed: carries the [`Permit`] the engine needs to dial.
    Allow(Permit),
    /// Denied, and why.
    Deny(DenyReason<'a>),
}

impl Decision<'_> {
    /// Whether the decision allows the connection.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// Why a connection was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason<'a> {
    /// The destination references a policy the snapshot does not have (yet): the
    /// workload fails closed until it arrives. The first missing key.
    MissingPolicy {
        /// The `namespace/name` key that is missing.
        key: &'a str,
    },
    /// A policy that applies could not be understood; it denies its whole scope.
    InvalidPolicy {
        /// The policy.
        policy: PolicyRef<'a>,
        /// Why it was rejected.
        reason: &'a str,
    },
    /// A DENY policy matched (the first in canonical order, its first matching rule).
    ExplicitDeny {
        /// The policy.
        policy: PolicyRef<'a>,
        /// Index of the rule that matched.
        rule: u32,
    },
    /// ALLOW policies apply and none matched.
    NotAllowed,
    /// The target was resolved against another compilation (a caller bug; denied
    /// rather than guessed).
    StaleTarget,
}

/// The closed set of deny kinds, for metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyKind {
    /// See [`DenyReason::MissingPolicy`].
    MissingPolicy,
    /// See [`DenyReason::InvalidPolicy`].
    InvalidPolicy,
    /// See [`DenyReason::ExplicitDeny`].
    ExplicitDeny,
    /// See [`DenyReason::NotAllowed`].
    NotAllowed,
    /// See [`DenyReason::StaleTarget`].
    StaleTarget,
}

impl DenyKind {
    /// A stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyKind::MissingPolicy => "missing_policy",
            DenyKind::InvalidPolicy => "invalid_policy",
            DenyKind::ExplicitDeny => "explicit_deny",
            DenyKind::NotAllowed => "not_allowed",
            DenyKind::StaleTarget => "stale_target",
        }
    }
}

impl DenyReason<'_> {
    /// The kind of denial.
    pub fn kind(&self) -> DenyKind {
        match self {
            DenyReason::MissingPolicy { .. } => DenyKind::MissingPolicy,
            DenyReason::InvalidPolicy { .. } => DenyKind::InvalidPolicy,
            DenyReason::ExplicitDeny { .. } => DenyKind::ExplicitDeny,
            DenyReason::NotAllowed => DenyKind::NotAllowed,
            DenyReason::StaleTarget => DenyKind::StaleTarget,
        }
    }

    /// The policy responsible, when there is one.
    pub fn policy(&self) -> Option<PolicyRef<'_>> {
        match self {
            DenyReason::InvalidPolicy { policy, .. } | DenyReason::ExplicitDeny { policy, .. } => {
                Some(*policy)
            }
            _ => None,
        }
    }
}

impl fmt::Display for DenyReason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::MissingPolicy { key } => {
                write!(
                    f,
                    "policy {key} is referenced but not known yet (failing closed)"
                )
            }
            DenyReason::InvalidPolicy { policy, reason } => {
                write!(
                    f,
                    "policy {policy} is invalid and denies its scope: {reason}"
                )
            }
            DenyReason::ExplicitDeny { policy, rule } => {
                write!(f, "denied by policy {policy} rule {rule}")
            }
            DenyReason::NotAllowed => f.write_str("no ALLOW policy matched"),
            DenyReason::StaleTarget => f.write_str("target resolved against another snapshot"),
        }
    }
}

/// A policy rule that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleRef<'a> {
    /// The policy.
    pub policy: PolicyRef<'a>,
    /// Index of the rule within the policy.
    pub rule: u32,
}

/// What the dry-run policies that apply would have done: to be logged, never
/// enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DryRun<'a> {
    /// The first dry-run DENY policy rule that matched.
    pub denied_by: Option<RuleRef<'a>>,
    /// The first dry-run ALLOW policy rule that matched.
    pub allowed_by: Option<RuleRef<'a>>,
    /// The first invalid dry-run policy (it would deny everything).
    pub invalid: Option<PolicyRef<'a>>,
    /// Whether the connection would be allowed if the dry-run policies were enforced
    /// together with the enforced ones.
    pub would_allow: bool,
}

/// The result of an evaluation.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome<'a> {
    /// The enforced decision.
    pub decision: Decision<'a>,
    /// Present when at least one dry-run policy applies.
    pub dry_run: Option<DryRun<'a>>,
}

impl CompiledPolicies {
    /// The first policy of `ids` (canonical order) with a matching rule.
    fn first_matching(&self, ids: &[PolicyId], v: &View<'_>) -> Option<RuleRef<'_>> {
        ids.iter().find_map(|&id| {
            let p = self.policies.get(id.index())?;
            p.program.first_match(v).map(|rule| RuleRef {
                policy: p.reference(id),
                rule,
            })
        })
    }

    fn reference(&self, id: PolicyId) -> Option<(PolicyRef<'_>, &str)> {
        self.policies
            .get(id.index())
            .map(|p| (p.reference(id), p.invalid.as_deref().unwrap_or("")))
    }

    /// Authorizes `conn` to the destination `target` (resolved from this
    /// compilation). Allocates nothing and takes no lock; cost depends only on the
    /// policies that apply to the destination.
    ///
    /// Order: a missing referenced policy denies; then an invalid applicable policy
    /// denies; then the first matching DENY policy denies; then, if no ALLOW policy
    /// applies, the connection is allowed; else the first matching ALLOW policy
    /// allows; else it is denied. Dry-run policies never change the decision.
    pub fn evaluate<'s>(&'s self, target: &'s ResolvedTarget, conn: &Conn<'_>) -> Outcome<'s> {
        if target.generation != self.generation {
            return Outcome {
                decision: Decision::Deny(DenyReason::StaleTarget),
                dry_run: None,
            };
        }
        let v = View::new(conn);
        let mut allow_matched = None;
        let decision = self.decide(target, conn, &v, &mut allow_matched);
        let dry_run = self.dry_run(target, &v, &decision, allow_matched);
        Outcome { decision, dry_run }
    }

    fn decide<'s>(
        &'s self,
        target: &'s ResolvedTarget,
        conn: &Conn<'_>,
        v: &View<'_>,
        allow_matched: &mut Option<RuleRef<'s>>,
    ) -> Decision<'s> {
        if let Some(key) = target.missing.first() {
            return Decision::Deny(DenyReason::MissingPolicy { key });
        }
        if let Some((policy, reason)) = target.invalid.and_then(|id| self.reference(id)) {
            return Decision::Deny(DenyReason::InvalidPolicy { policy, reason });
        }
        if let Some(r) = self.first_matching(&target.deny, v) {
            return Decision::Deny(DenyReason::ExplicitDeny {
                policy: r.policy,
                rule: r.rule,
            });
        }
        let destination = SocketAddr::new(conn.dst_ip, conn.dst_port);
        if target.allow.is_empty() {
            return Decision::Allow(Permit {
                destination,
                allowed_by: None,
            });
        }
        match self.first_matching(&target.allow, v) {
            Some(r) => {
                *allow_matched = Some(r);
                Decision::Allow(Permit {
                    destination,
                    allowed_by: Some((r.policy.id, r.rule)),
                })
            }
            None => Decision::Deny(DenyReason::NotAllowed),
        }
    }

    fn dry_run<'s>(
        &'s self,
        target: &'s ResolvedTarget,
        v: &View<'_>,
        decision: &Decision<'s>,
        allow_matched: Option<RuleRef<'s>>,
    ) -> Option<DryRun<'s>> {
        if target.dry_deny.is_empty() && target.dry_allow.is_empty() && target.dry_invalid.is_none()
        {
            return None;
        }
        let denied_by = self.first_matching(&target.dry_deny, v);
        let allowed_by = self.first_matching(&target.dry_allow, v);
        let invalid = target
            .dry_invalid
            .and_then(|id| self.reference(id))
            .map(|(p, _)| p);
        // With the dry-run policies enforced too: anything that denies now still
        // denies, except "no ALLOW matched", which a matching dry-run ALLOW rescues.
        let enforced_ok = match decision {
            Decision::Allow(_) => true,
            Decision::Deny(DenyReason::NotAllowed) => false,
            Decision::Deny(_) => {
                return Some(DryRun {
                    denied_by,
                    allowed_by,
                    invalid,
                    would_allow: false,
                })
            }
        };
        let no_allow_policies = target.allow.is_empty() && target.dry_allow.is_empty();
        let some_allow_matched = allow_matched.is_some() || allowed_by.is_some();
        let would_allow = invalid.is_none()
            && denied_by.is_none()
            && (no_allow_policies || some_allow_matched)
            && (enforced_ok || allowed_by.is_some());
        Some(DryRun {
            denied_by,
            allowed_by,
            invalid,
            would_allow,
        })
    }
}
