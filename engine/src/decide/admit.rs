//! CONNECT admission on 15008: whether a stream of an HBONE connection may reach its
//! target, and the status it is answered with when not.

use std::net::SocketAddr;
use std::rc::Rc;

use http::StatusCode;
use zpath_control::Snapshot;
use zpath_crypto::VerifiedPeer;
use zpath_policy::Decision;
use zpath_tunnel::connect;

use super::authorize::{authorize, Authorized, Inbound, Refusal, When};
use crate::failure::{fail, Failure};
use crate::shard::addrs::BoundAddrs;
use crate::stats::FailReason;

/// The HBONE connection a CONNECT arrived on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Carrier<'a> {
    /// The connection's source (the peer node).
    pub(crate) peer_addr: SocketAddr,
    /// The address the connection was made to (the workload whose certificate we
    /// presented).
    pub(crate) local: SocketAddr,
    /// The identity the peer's certificate proved.
    pub(crate) peer: &'a Rc<VerifiedPeer>,
}

/// An accepted CONNECT.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// What the client asked for.
    pub(crate) target: SocketAddr,
    /// Its authorization, to dial the upstream with.
    pub(crate) authorized: Authorized,
}

/// A refused CONNECT.
#[derive(Debug)]
pub(crate) struct Refused {
    /// The answer's status.
    pub(crate) status: StatusCode,
    /// The counted reason and the log message.
    pub(crate) failure: Failure,
    /// The target, when the request named one.
    pub(crate) target: Option<SocketAddr>,
}

/// Admits a CONNECT for `req` on `carrier`: a well-formed target (400), the address of
/// the connection itself and a workload this node serves there (400), not one of
/// zpath's own ports (400), allowed by policy (401). `tally` counts the policy
/// decision, as [`authorize`].
pub(crate) fn admit<'s, B>(
    req: &http::Request<B>,
    carrier: Carrier<'_>,
    snapshot: &'s Snapshot,
    addrs: &BoundAddrs,
    tally: impl FnOnce(&Decision<'s>),
) -> Result<Admitted, Refused> {
    let bad = |failure, target| Refused {
        status: StatusCode::BAD_REQUEST,
        failure,
        target,
    };
    let target = connect::target(req).map_err(|e| {
        bad(
            fail(FailReason::BadRequest, format!("bad CONNECT: {e}")),
            None,
        )
    })?;
    let dst_ip = target.ip().to_canonical();
    let local = carrier.local;
    if dst_ip != local.ip().to_canonical() || snapshot.local_workload(dst_ip).is_none() {
        return Err(bad(
            fail(
                FailReason::UnknownTarget,
                format!(
                    "CONNECT {target} on a connection to {local}: not a workload this node serves at that address"
                ),
            ),
            Some(target),
        ));
    }
    let canonical = SocketAddr::new(dst_ip, target.port());
    if addrs.is_own(canonical, Some(local)) {
        return Err(bad(
            fail(
                FailReason::Loop,
                format!("CONNECT {target} names one of zpath's own ports"),
            ),
            Some(target),
        ));
    }
    let conn = Inbound {
        src: carrier.peer_addr.ip(),
        dst: canonical,
        peer: Some(carrier.peer),
    };
    match authorize(snapshot, conn, When::Opening, tally) {
        Ok(authorized) => Ok(Admitted { target, authorized }),
        Err(refusal @ Refusal::UnknownTarget(_)) => Err(bad(
            fail(refusal.reason(), format!("CONNECT {target}: {refusal}")),
            Some(target),
        )),
        Err(refusal @ (Refusal::Denied(_) | Refusal::BadPeer)) => Err(Refused {
            status: StatusCode::UNAUTHORIZED,
            failure: fail(
                refusal.reason(),
                format!("{refusal} (peer {})", carrier.peer.identity()),
            ),
            target: Some(target),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::decide::testing::{snapshot, verified, MESH};

    fn addrs() -> BoundAddrs {
        BoundAddrs {
            hbone: Some("10.0.0.2:15008".parse().unwrap()),
            inbound: Some("10.0.0.2:15006".parse().unwrap()),
            ..BoundAddrs::default()
        }
    }

    fn connect(authority: &str) -> http::Request<()> {
        http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(authority)
            .body(())
            .unwrap()
    }

    fn admit_as(peer: &str, req: &http::Request<()>) -> Result<Admitted, Refused> {
        let peer = verified(peer);
        let carrier = Carrier {
            peer_addr: "10.0.9.1:40000".parse().unwrap(),
            local: "10.0.0.2:15008".parse().unwrap(),
            peer: &peer,
        };
        admit(req, carrier, &snapshot(MESH), &addrs(), |_| {})
    }

    const WEB: &str = "spiffe://cluster.local/ns/web/sa/frontend";

    #[test]
    fn an_allowed_connect_to_the_connection_address_is_admitted() {
        let ok = admit_as(WEB, &connect("10.0.0.2:8080")).unwrap();
        assert_eq!(ok.target, "10.0.0.2:8080".parse().unwrap());
        assert_eq!(
            ok.authorized.permit.destination(),
            "10.0.0.2:8080".parse().unwrap()
        );
        assert_eq!(
            ok.authorized.peer.unwrap().identity().to_string(),
            WEB,
            "the permit carries the verified peer"
        );
    }

    fn refused(peer: &str, req: &http::Request<()>) -> (u16, FailReason) {
        let r = admit_as(peer, req).unwrap_err();
        (r.status.as_u16(), r.failure.reason)
    }

    #[test]
    fn each_refusal_has_its_status_and_reason() {
        let other = "spiffe://cluster.local/ns/web/sa/other";
        // Denied by policy.
        assert_eq!(
            refused(other, &connect("10.0.0.2:8080")),
            (401, FailReason::Denied)
        );
        // Another address of the same workload than the connection's: refused.
        assert_eq!(
            refused(WEB, &connect("10.0.0.3:8080")),
            (400, FailReason::UnknownTarget)
        );
        // An address this node serves nothing at.
        assert_eq!(
            refused(WEB, &connect("10.9.9.9:8080")),
            (400, FailReason::UnknownTarget)
        );
        // Our own port.
        assert_eq!(
            refused(WEB, &connect("10.0.0.2:15006")),
            (400, FailReason::Loop)
        );
        // Not an address.
        assert_eq!(
            refused(WEB, &connect("server.prod:8080")),
            (400, FailReason::BadRequest)
        );
        let get = http::Request::builder()
            .uri("http://10.0.0.2:8080/")
            .body(())
            .unwrap();
        assert_eq!(refused(WEB, &get), (400, FailReason::BadRequest));
    }
}
