//! The compiler: a snapshot's policies become an immutable [`CompiledPolicies`]
//! (indexed by scope, each match's fields turned into lookup sets), and each
//! destination workload's policy references become a [`ResolvedTarget`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::conn::Target;
use crate::index::{hasher, Hasher};
use crate::model::{Action, Authorization, Scope};
use crate::program::Program;

/// Index of a policy in a [`CompiledPolicies`] (its canonical order: policies are
/// numbered in input order, after duplicates are removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId(pub(crate) u32);

impl PolicyId {
    /// The position in canonical order.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Distinguishes compilations, so a target resolved against one snapshot is never
/// evaluated against another.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A snapshot's policies, compiled. Immutable, `Send + Sync`, meant to be shared in
/// an `Arc` by every shard. Build it with [`compile`].
#[derive(Debug)]
pub struct CompiledPolicies {
    pub(crate) generation: u64,
    pub(crate) policies: Box<[CompiledPolicy]>,
    by_key: HashMap<Box<str>, PolicyId, Hasher>,
    global: Box<[PolicyId]>,
    by_namespace: HashMap<Box<str>, Box<[PolicyId]>, Hasher>,
}

impl Default for CompiledPolicies {
    fn default() -> Self {
        compile(&[])
    }
}

/// A reference to a compiled policy, for logs and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRef<'a> {
    /// The policy's id in its [`CompiledPolicies`].
    pub id: PolicyId,
    /// Policy namespace.
    pub namespace: &'a str,
    /// Policy name.
    pub name: &'a str,
}

impl fmt::Display for PolicyRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl CompiledPolicies {
    /// Number of distinct policies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether there are no policies.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policy with this id.
    pub fn policy(&self, id: PolicyId) -> Option<PolicyRef<'_>> {
        self.policies.get(id.index()).map(|p| p.reference(id))
    }

    /// Every policy, in id order.
    pub fn iter(&self) -> impl Iterator<Item = PolicyRef<'_>> + '_ {
        self.policies
            .iter()
            .enumerate()
            .map(|(i, p)| p.reference(PolicyId(i as u32)))
    }

    /// The policy with this `namespace/name` key.
    pub fn find(&self, key: &str) -> Option<PolicyRef<'_>> {
        self.by_key.get(key).and_then(|&id| self.policy(id))
    }

    /// Policies that could not be understood (each denies its whole scope), with the
    /// reason: the control plane logs these once per snapshot.
    pub fn invalid_policies(&self) -> impl Iterator<Item = (PolicyRef<'_>, &str)> + '_ {
        self.policies.iter().enumerate().filter_map(|(i, p)| {
            let id = PolicyId(i as u32);
            p.invalid.as_deref().map(|r| (p.reference(id), r))
        })
    }

    /// Resolves a destination workload's policies once per snapshot: the global
    /// policies, those of its namespace and those it references, split by action and
    /// dry-run, in canonical order. References to unknown policies are kept: the
    /// workload fails closed until they arrive.
    pub fn resolve<K: AsRef<str>>(&self, target: &Target<'_, K>) -> ResolvedTarget {
        let mut ids: Vec<PolicyId> = self.global.to_vec();
        if let Some(ns) = self.by_namespace.get(target.namespace) {
            ids.extend_from_slice(ns);
        }
        let mut missing = Vec::new();
        for key in target.policies {
            match self.by_key.get(key.as_ref()) {
                Some(&id) => ids.push(id),
                None => missing.push(Box::<str>::from(key.as_ref())),
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let mut t = ResolvedTarget {
            generation: self.generation,
            missing: missing.into_boxed_slice(),
            ..ResolvedTarget::default()
        };
        let (mut deny, mut allow, mut dry_deny, mut dry_allow) = (vec![], vec![], vec![], vec![]);
        for id in ids {
            let Some(p) = self.policies.get(id.index()) else {
                continue;
            };
            let list = match (p.invalid.is_some(), p.dry_run, p.action) {
                (true, false, _) => {
                    t.invalid = t.invalid.or(Some(id));
                    continue;
                }
                (true, true, _) => {
                    t.dry_invalid = t.dry_invalid.or(Some(id));
                    continue;
                }
                (false, false, Action::Deny) => &mut deny,
                (false, false, Action::Allow) => &mut allow,
                (false, true, Action::Deny) => &mut dry_deny,
                (false, true, Action::Allow) => &mut dry_allow,
            };
            list.push(id);
        }
        t.deny = deny.into_boxed_slice();
        t.allow = allow.into_boxed_slice();
        t.dry_deny = dry_deny.into_boxed_slice();
        t.dry_allow = dry_allow.into_boxed_slice();
        t
    }
}

/// A destination workload's applicable policies, resolved against one
/// [`CompiledPolicies`] (see [`CompiledPolicies::resolve`]). Evaluating it against
/// another compilation fails closed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResolvedTarget {
    pub(crate) generation: u64,
    pub(crate) missing: Box<[Box<str>]>,
    pub(crate) invalid: Option<PolicyId>,
    pub(crate) dry_invalid: Option<PolicyId>,
    pub(crate) deny: Box<[PolicyId]>,
    pub(crate) allow: Box<[PolicyId]>,
    pub(crate) dry_deny: Box<[PolicyId]>,
    pub(crate) dry_allow: Box<[PolicyId]>,
}

impl ResolvedTarget {
    /// Policy keys the workload references that the snapshot does not have.
    pub fn missing(&self) -> impl Iterator<Item = &str> {
        self.missing.iter().map(|k| &**k)
    }

    /// Number of policies that apply (enforced and dry-run, valid and invalid).
    pub fn applicable(&self) -> usize {
        self.deny.len()
            + self.allow.len()
            + self.dry_deny.len()
            + self.dry_allow.len()
            + usize::from(self.invalid.is_some())
            + usize::from(self.dry_invalid.is_some())
    }
}

/// Compiles a snapshot's policies.
///
/// Policies are identified by `namespace/name`; when a key appears twice the later
/// entry replaces the earlier one (as a store keyed by name would). A policy marked
/// invalid compiles to "deny everything" for its scope. Never fails.
pub fn compile(policies: &[Authorization]) -> CompiledPolicies {
    let mut winner: HashMap<String, usize, Hasher> =
        HashMap::with_capacity_and_hasher(policies.len(), hasher());
    for (i, p) in policies.iter().enumerate() {
        winner.insert(p.key(), i);
    }
    let mut order: Vec<(usize, String)> = winner.into_iter().map(|(k, i)| (i, k)).collect();
    order.sort_unstable();

    let mut compiled = Vec::with_capacity(order.len());
    let mut by_key = HashMap::with_capacity_and_hasher(order.len(), hasher());
    let mut global = Vec::new();
    let mut by_namespace: HashMap<Box<str>, Vec<PolicyId>, Hasher> = HashMap::with_hasher(hasher());
    for (n, (i, key)) in order.into_iter().enumerate() {
        let Some(p) = policies.get(i) else { continue };
        let id = PolicyId(n as u32);
        match p.scope {
            Scope::Global => global.push(id),
            Scope::Namespace => by_namespace
                .entry(p.namespace.as_str().into())
                .or_default()
                .push(id),
            Scope::WorkloadSelector => {}
        }
        by_key.insert(key.into_boxed_str(), id);
        compiled.push(CompiledPolicy::new(p));
    }
    CompiledPolicies {
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        policies: compiled.into_boxed_slice(),
        by_key,
        global: global.into_boxed_slice(),
        by_namespace: by_namespace
            .into_iter()
            .map(|(k, v)| (k, v.into_boxed_slice()))
            .collect(),
    }
}

/// One compiled policy.
#[derive(Debug)]
pub(crate) struct CompiledPolicy {
    pub(crate) namespace: Box<str>,
    pub(crate) name: Box<str>,
    pub(crate) action: Action,
    pub(crate) dry_run: bool,
    pub(crate) invalid: Option<Box<str>>,
    /// The rules as a decision program; it reports the model's rule index.
    pub(crate) program: Program,
}

impl CompiledPolicy {
    fn new(p: &Authorization) -> Self {
        CompiledPolicy {
            namespace: p.namespace.as_str().into(),
            name: p.name.as_str().into(),
            action: p.action,
            dry_run: p.dry_run,
            invalid: p.invalid.as_deref().map(Into::into),
            program: Program::new(&p.rules),
        }
    }

    pub(crate) fn reference(&self, id: PolicyId) -> PolicyRef<'_> {
        PolicyRef {
            id,
            namespace: &self.namespace,
            name: &self.name,
        }
    }
}
