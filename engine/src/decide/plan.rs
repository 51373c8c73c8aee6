//! The outbound plan: where a connection a local workload makes goes, over what, and
//! with which identities.

use std::net::{IpAddr, SocketAddr};

use zpath_control::model::{TunnelProtocol, Workload};
use zpath_control::snapshot::HBONE_PORT;
use zpath_control::{Route, Snapshot};
use zpath_crypto::Identity;
use zpath_tunnel::connect::SourceInfo;

use crate::control::certs::workload_identity;
use crate::failure::{fail, Failure};
use crate::stats::FailReason;

/// An upstream address an outbound plan chose. Only [`plan`] makes one, and the
/// general dial takes nothing else: inbound code, which has no plan, cannot dial an
/// address of its choosing (it dials an [`Authorized`](super::authorize::Authorized)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Hop(SocketAddr);

impl Hop {
    /// The address to connect to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.0
    }
}

/// How a shard's pool keys its tunnels (as ztunnel does): our identity, the identities
/// the destination may present, the destination node address, and our source address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    /// The source workload's identity (the certificate we present).
    pub(crate) src_id: Identity,
    /// Identities the server may present.
    pub(crate) dst_ids: Vec<Identity>,
    /// The destination's HBONE address.
    pub(crate) dst: Hop,
    /// The source workload's address.
    pub(crate) src: IpAddr,
}

/// Where an outbound connection goes.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Plain TCP (passthrough, or a workload that takes plain TCP).
    Direct(Hop),
    /// A stream through an HBONE tunnel.
    Tunnel(Tunnelled),
}

/// An outbound connection through an HBONE tunnel.
#[derive(Debug)]
pub(crate) struct Tunnelled {
    /// The pooled tunnel to use (or make).
    pub(crate) key: PoolKey,
    /// The CONNECT target: the destination workload's address and port.
    pub(crate) target: SocketAddr,
    /// The source workload's `baggage` header.
    pub(crate) baggage: String,
}

/// Plans the connection `src` makes to `dst`: the snapshot's route (`pick` chooses
/// among a service's endpoints); for an HBONE workload, the source must be a workload
/// this node serves (its identity is the certificate we present) and both ends need a
/// valid identity. `cluster_id` names the source's cluster when its workload does not.
/// A destination behind a waypoint, or a service without an endpoint, is refused.
pub(crate) fn plan(
    src: IpAddr,
    dst: SocketAddr,
    snapshot: &Snapshot,
    pick: u32,
    cluster_id: &str,
) -> Result<Plan, Failure> {
    match snapshot.route(dst, pick) {
        Route::Workload { workload, addr } if workload.protocol == TunnelProtocol::Hbone => {
            tunnel(src.to_canonical(), &workload, addr, snapshot, cluster_id).map(Plan::Tunnel)
        }
        Route::Passthrough(addr) | Route::Workload { addr, .. } => Ok(Plan::Direct(Hop(addr))),
        Route::Waypoint {
            destination,
            waypoint,
        } => Err(fail(
            FailReason::WaypointUnsupported,
            format!(
                "{destination} ({dst}) must be reached through its waypoint {waypoint}, \
                 which zpath does not support yet: refused"
            ),
        )),
        Route::NoEndpoint(svc) => Err(fail(
            FailReason::NoEndpoint,
            format!(
                "service {svc} has no healthy endpoint for port {}",
                dst.port()
            ),
        )),
    }
}

fn tunnel(
    src_ip: IpAddr,
    dst_wl: &Workload,
    target: SocketAddr,
    snapshot: &Snapshot,
    cluster_id: &str,
) -> Result<Tunnelled, Failure> {
    let Some(src_wl) = snapshot.local_workload(src_ip) else {
        return Err(fail(
            FailReason::UnknownSource,
            format!("source {src_ip} is not a workload this node serves; HBONE needs its identity"),
        ));
    };
    let identity = |wl: &Workload, end: &str| {
        workload_identity(wl).ok_or_else(|| {
            fail(
                FailReason::NoCertificate,
                format!("{end} workload {} has no valid identity", wl.uid),
            )
        })
    };
    let src_id = identity(src_wl, "source")?;
    let dst_id = identity(dst_wl, "destination")?;
    let baggage = SourceInfo {
        cluster: if src_wl.cluster_id.is_empty() {
            cluster_id
        } else {
            &src_wl.cluster_id
        },
        namespace: &src_wl.namespace,
        workload_kind: &src_wl.workload_type,
        workload_name: &src_wl.workload_name,
        canonical_name: &src_wl.canonical_name,
        canonical_revision: &src_wl.canonical_revision,
    }
    .baggage();
    Ok(Tunnelled {
        key: PoolKey {
            src_id,
            dst_ids: vec![dst_id],
            dst: Hop(SocketAddr::new(target.ip(), HBONE_PORT)),
            src: src_ip,
        },
        target,
        baggage,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::decide::testing::snapshot;

    const YAML: &str = r#"
workloads:
- name: client
  namespace: web
  serviceAccount: frontend
  workloadIps: ["10.0.0.1"]
  protocol: HBONE
  node: node
- name: server
  namespace: prod
  serviceAccount: server
  workloadIps: ["10.0.1.2"]
  protocol: HBONE
  node: far
  services:
    prod/api.prod.svc.cluster.local: {80: 8080}
- name: legacy
  namespace: prod
  serviceAccount: legacy
  workloadIps: ["10.0.1.3"]
  protocol: TCP
  node: far
services:
- name: api
  namespace: prod
  hostname: api.prod.svc.cluster.local
  vips: ["/10.96.0.10"]
  ports: {80: 8080}
- name: empty
  namespace: prod
  hostname: empty.prod.svc.cluster.local
  vips: ["/10.96.0.11"]
  ports: {80: 8080}
"#;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn plan_of(src: &str, dst: &str) -> Result<Plan, Failure> {
        plan(
            src.parse().unwrap(),
            addr(dst),
            &snapshot(YAML),
            7,
            "Kubernetes",
        )
    }

    #[test]
    fn an_hbone_workload_is_tunnelled_to_its_node_with_both_identities() {
        let Plan::Tunnel(t) = plan_of("10.0.0.1", "10.0.1.2:9000").unwrap() else {
            panic!("not tunnelled")
        };
        assert_eq!(t.target, addr("10.0.1.2:9000"));
        assert_eq!(t.key.dst.addr(), addr("10.0.1.2:15008"));
        assert_eq!(
            t.key.src_id.to_string(),
            "spiffe://cluster.local/ns/web/sa/frontend"
        );
        assert_eq!(
            t.key.dst_ids[0].to_string(),
            "spiffe://cluster.local/ns/prod/sa/server"
        );
        assert!(
            t.baggage.contains("k8s.namespace.name=web"),
            "{}",
            t.baggage
        );
        assert!(
            t.baggage.contains("k8s.cluster.name=Kubernetes"),
            "{}",
            t.baggage
        );
    }

    #[test]
    fn a_service_vip_is_tunnelled_to_an_endpoint_on_the_target_port() {
        let Plan::Tunnel(t) = plan_of("10.0.0.1", "10.96.0.10:80").unwrap() else {
            panic!("not tunnelled")
        };
        assert_eq!(t.target, addr("10.0.1.2:8080"));
    }

    #[test]
    fn plain_tcp_workloads_and_unknown_addresses_go_direct() {
        for (dst, hop) in [
            ("10.0.1.3:5432", "10.0.1.3:5432"),
            ("192.0.2.7:443", "192.0.2.7:443"),
        ] {
            match plan_of("10.0.0.1", dst).unwrap() {
                Plan::Direct(h) => assert_eq!(h.addr(), addr(hop)),
                Plan::Tunnel(_) => panic!("{dst} tunnelled"),
            }
        }
    }

    #[test]
    fn a_tunnel_needs_a_source_this_node_serves() {
        let refused = plan_of("10.0.0.99", "10.0.1.2:9000").unwrap_err();
        assert_eq!(refused.reason, FailReason::UnknownSource);
        // Passthrough does not need one.
        assert!(matches!(
            plan_of("10.0.0.99", "192.0.2.7:443"),
            Ok(Plan::Direct(_))
        ));
    }

    #[test]
    fn a_service_without_endpoints_is_refused() {
        let refused = plan_of("10.0.0.1", "10.96.0.11:80").unwrap_err();
        assert_eq!(refused.reason, FailReason::NoEndpoint);
    }
}
