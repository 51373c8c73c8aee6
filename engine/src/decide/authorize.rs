//! The authorization of an inbound connection: one sequence for captured plaintext
//! (15006), HBONE (15008) and the re-check of live connections after a policy change.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use zpath_control::snapshot::{Snapshot, UnknownDestination};
use zpath_crypto::VerifiedPeer;
use zpath_policy::{Conn, Decision, DenyReason, Peer, Permit};

use crate::stats::FailReason;

/// An inbound connection as policy sees it: where it comes from, where it goes and,
/// over HBONE, the peer its certificate proved.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inbound<'a> {
    /// The connection's source address.
    pub(crate) src: IpAddr,
    /// The destination workload address and port.
    pub(crate) dst: SocketAddr,
    /// The verified peer; `None` for plaintext (15006).
    pub(crate) peer: Option<&'a Rc<VerifiedPeer>>,
}

/// What an allowed inbound connection carries to its upstream dial: the only way to
/// dial an inbound upstream (see [`crate::dial::dial_permitted`]).
#[derive(Debug)]
pub(crate) struct Authorized {
    /// The policy decision's proof, with the permitted destination.
    pub(crate) permit: Permit,
    /// The verified peer it was allowed for (`None`: plaintext).
    pub(crate) peer: Option<Rc<VerifiedPeer>>,
}

/// Why an inbound connection is refused.
#[derive(Debug)]
pub(crate) enum Refusal<'s> {
    /// Its destination is not a workload this node serves, so its policies are unknown.
    UnknownTarget(UnknownDestination<'s>),
    /// Policy denies it.
    Denied(DenyReason<'s>),
    /// The peer's identity has no policy form (never for an identity the verifier
    /// yields; refused rather than matched as some other principal). Counted as a
    /// denied connection, not as a policy decision: no policy decided it.
    BadPeer,
}

impl Refusal<'_> {
    /// The failure it is counted as.
    pub(crate) fn reason(&self) -> FailReason {
        match self {
            Refusal::UnknownTarget(_) => FailReason::UnknownTarget,
            Refusal::Denied(_) | Refusal::BadPeer => FailReason::Denied,
        }
    }
}

impl fmt::Display for Refusal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnknownTarget(unknown) => write!(f, "{unknown}"),
            Refusal::Denied(reason) => write!(f, "denied by policy: {reason}"),
            Refusal::BadPeer => write!(f, "the peer identity has no policy principal"),
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

/// The policy's view of a verified peer, built from the parts the verifier separated:
/// the one place a certificate's identity becomes a policy principal.
pub(crate) fn policy_peer(peer: &VerifiedPeer) -> Option<Peer<'_>> {
    let id = peer.identity();
    Peer::from_parts(
        id.principal(),
        id.trust_domain(),
        id.namespace(),
        id.service_account(),
    )
    .ok()
}

/// Authorizes `conn` against `snapshot`: its destination must be a workload this node
/// serves, and the policies of that workload must allow it. Only an allow yields the
/// [`Authorized`] an upstream is dialled with. `tally` is given each decision to count
/// (all of them when opening, only denials on a re-check).
pub(crate) fn authorize<'s>(
    snapshot: &'s Snapshot,
    conn: Inbound<'_>,
    when: When,
    tally: impl FnOnce(&Decision<'s>),
) -> Result<Authorized, Refusal<'s>> {
    let peer = match conn.peer {
        Some(p) => Some(policy_peer(p).ok_or(Refusal::BadPeer)?),
        None => None,
    };
    let policy_conn = Conn {
        src_ip: conn.src.to_canonical(),
        dst_ip: conn.dst.ip().to_canonical(),
        dst_port: conn.dst.port(),
        peer,
    };
    let outcome = snapshot
        .authorize(&policy_conn)
        .map_err(Refusal::UnknownTarget)?;
    if when == When::Opening {
        if let Some(dry) = &outcome.dry_run {
            tracing::info!(src = %conn.src, dst = %conn.dst, would_allow = dry.would_allow, "dry-run policy evaluated: {dry:?}");
        }
    }
    if when == When::Opening || !outcome.decision.is_allow() {
        tally(&outcome.decision);
    }
    match outcome.decision {
        Decision::Allow(permit) => Ok(Authorized {
            permit,
            peer: conn.peer.cloned(),
        }),
        Decision::Deny(reason) => Err(Refusal::Denied(reason)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::decide::testing::{snapshot, verified, MESH};

    fn inbound<'a>(dst: &str, peer: Option<&'a Rc<VerifiedPeer>>) -> Inbound<'a> {
        Inbound {
            src: "10.0.0.1".parse().unwrap(),
            dst: dst.parse().unwrap(),
            peer,
        }
    }

    #[test]
    fn an_allowed_peer_gets_a_permit_for_the_destination_and_keeps_its_identity() {
        let s = snapshot(MESH);
        let web = verified("spiffe://cluster.local/ns/web/sa/frontend");
        let mut counted = 0;
        let ok = authorize(&s, inbound("10.0.0.2:80", Some(&web)), When::Opening, |d| {
            counted += 1;
            assert!(d.is_allow());
        })
        .unwrap();
        assert_eq!(ok.permit.destination(), "10.0.0.2:80".parse().unwrap());
        assert!(Rc::ptr_eq(ok.peer.as_ref().unwrap(), &web));
        assert_eq!(counted, 1);
    }

    #[test]
    fn another_peer_and_plaintext_are_denied_and_counted() {
        let s = snapshot(MESH);
        let other = verified("spiffe://cluster.local/ns/web/sa/other");
        for peer in [Some(&other), None] {
            let mut counted = 0;
            let refused = authorize(&s, inbound("10.0.0.2:80", peer), When::Opening, |_| {
                counted += 1
            })
            .unwrap_err();
            assert!(matches!(refused, Refusal::Denied(_)), "{refused}");
            assert_eq!(refused.reason(), FailReason::Denied);
            assert_eq!(counted, 1);
        }
    }

    #[test]
    fn a_destination_this_node_does_not_serve_is_refused_uncounted() {
        let s = snapshot(MESH);
        let web = verified("spiffe://cluster.local/ns/web/sa/frontend");
        for dst in ["10.0.0.9:80", "10.9.9.9:80"] {
            let refused = authorize(&s, inbound(dst, Some(&web)), When::Opening, |_| {
                panic!("not a decision")
            })
            .unwrap_err();
            assert_eq!(refused.reason(), FailReason::UnknownTarget, "{dst}");
        }
    }

    #[test]
    fn a_recheck_counts_only_denials() {
        let s = snapshot(MESH);
        let web = verified("spiffe://cluster.local/ns/web/sa/frontend");
        let allowed = authorize(
            &s,
            inbound("10.0.0.2:80", Some(&web)),
            When::Recheck,
            |_| panic!("an allow is counted when the connection opens"),
        );
        assert!(allowed.is_ok());
        let mut counted = 0;
        let denied = authorize(&s, inbound("10.0.0.2:80", None), When::Recheck, |_| {
            counted += 1
        });
        assert!(denied.is_err());
        assert_eq!(counted, 1);
    }
}
