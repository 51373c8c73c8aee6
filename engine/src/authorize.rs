//! The authorization of an inbound connection: one sequence for captured plaintext
//! (15006), HBONE (15008) and the re-check of live connections after a policy change.

use std::fmt;

use zpath_control::snapshot::{Snapshot, UnknownDestination};
use zpath_policy::{Conn, Decision, DenyReason, Permit};

use crate::shard::Shard;
use crate::stats::FailReason;
use crate::table::ConnInfo;

/// Why an inbound connection is refused.
#[derive(Debug)]
pub(crate) enum Refusal<'s> {
    /// Its destination is not a workload this node serves, so its policies are unknown.
    UnknownTarget(UnknownDestination<'s>),
    /// Policy denies it.
    Denied(DenyReason<'s>),
}

impl Refusal<'_> {
    /// The failure it is counted as.
    pub(crate) fn reason(&self) -> FailReason {
        match self {
            Refusal::UnknownTarget(_) => FailReason::UnknownTarget,
            Refusal::Denied(_) => FailReason::Denied,
        }
    }
}

impl fmt::Display for Refusal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnknownTarget(unknown) => write!(f, "{unknown}"),
            Refusal::Denied(reason) => write!(f, "denied by policy: {reason}"),
        }
    }
}

/// When a connection is authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// As it opens: every decision is counted, and a dry-run policy's verdict logged.
    Opening,
    /// Again, after a policy change: only a denial is counted (the connection's allow
    /// was counted when it opened).
    Recheck,
}

/// Authorizes an inbound connection (`info`, seen by policy as `conn`) against
/// `snapshot`: its destination must be a workload this node serves, and the policies of
/// that workload must allow it. Only an allow yields the [`Permit`] an upstream is dialled
/// with.
pub(crate) fn authorize<'s>(
    shard: &Shard,
    snapshot: &'s Snapshot,
    conn: &Conn<'_>,
    info: &ConnInfo,
    when: When,
) -> Result<Permit, Refusal<'s>> {
    let outcome = snapshot.authorize(conn).map_err(Refusal::UnknownTarget)?;
    if when == When::Opening {
        if let Some(dry) = &outcome.dry_run {
            tracing::info!(src = %info.src, dst = ?info.dst.get(), would_allow = dry.would_allow, "dry-run policy evaluated: {dry:?}");
        }
    }
    if when == When::Opening || !outcome.decision.is_allow() {
        shard.count_decision(snapshot, &outcome.decision);
    }
    match outcome.decision {
        Decision::Allow(permit) => Ok(permit),
        Decision::Deny(reason) => Err(Refusal::Denied(reason)),
    }
}
