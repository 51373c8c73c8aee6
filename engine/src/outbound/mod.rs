//! Outbound: connections a local workload makes. Captured ones arrive on 15001 (this
//! module), SOCKS5 ones on 15080 ([`socks5`]); each is planned
//! ([`crate::decide::plan`]), then dialled straight or through an HBONE tunnel
//! ([`hbone`]), then relayed.

pub(crate) mod hbone;
pub(crate) mod socks5;

use std::net::SocketAddr;
use std::rc::Rc;

use zpath_uring::IoStream;

use crate::capture::captured_destination;
use crate::decide::plan::{plan, Plan};
use crate::dial::dial;
use crate::failure::{fail, Failure};
use crate::relay::{self, Abort};
use crate::shard::table::{ConnInfo, ConnState};
use crate::shard::Shard;
use crate::stats::FailReason;

/// Captured outbound: the destination is the original destination of the connection.
pub(crate) async fn outbound(
    shard: &Rc<Shard>,
    client: IoStream,
    info: &ConnInfo,
) -> Result<(), Failure> {
    let dst = captured_destination(shard, &client, info)?;
    // Boxed: the dial's state (a TLS handshake, for a new tunnel) is freed before the
    // relay starts instead of sizing the connection's task for its whole life.
    let upstream = match Box::pin(open(shard, dst, info)).await {
        Ok(u) => u,
        Err(f) => {
            client.abort();
            return Err(f.failure);
        }
    };
    match upstream {
        Upstream::Tcp(upstream) => relay::pair(shard, client, upstream, info).await,
        Upstream::Hbone(stream) => {
            Box::pin(hbone::relay_client(shard, client, stream, &[], info)).await
        }
    }
}

/// Where an outbound connection goes once dialled.
pub(crate) enum Upstream {
    /// A plain TCP connection (passthrough, or a `TCP` workload).
    Tcp(IoStream),
    /// A stream through an HBONE tunnel.
    Hbone(zpath_tunnel::OpenStream),
}

/// Why an outbound connection could not be opened.
pub(crate) struct OpenFailed {
    /// What is counted and logged.
    pub(crate) failure: Failure,
    /// The connect's own error, when the plan's plain TCP dial failed.
    pub(crate) io: Option<std::io::Error>,
}

/// Plans the connection of `info` to `dst` and opens its upstream.
pub(crate) async fn open(
    shard: &Rc<Shard>,
    dst: SocketAddr,
    info: &ConnInfo,
) -> Result<Upstream, OpenFailed> {
    let refused = |failure| OpenFailed { failure, io: None };
    info.addressed.set(Some(dst));
    let snapshot = shard.snapshot();
    let planned = plan(
        info.src.ip(),
        dst,
        &snapshot,
        shard.random(),
        &shard.cfg.cluster_id,
    );
    let planned = planned.map_err(refused)?;
    let (upstream, mtls) = match &planned {
        Plan::Tunnel(t) => (t.target, true),
        Plan::Direct(hop) => (hop.addr(), false),
    };
    shard.count_outbound_opened(info, &snapshot, upstream, mtls);
    drop(snapshot);
    match planned {
        Plan::Tunnel(tunnelled) => {
            info.dst.set(Some(tunnelled.target));
            info.tunnel.set(Some(tunnelled.key.dst.addr()));
            hbone::open(shard, info, &tunnelled)
                .await
                .map(Upstream::Hbone)
                .map_err(refused)
        }
        Plan::Direct(hop) => {
            info.state.set(ConnState::Connecting);
            dial(shard, hop, None)
                .await
                .map(Upstream::Tcp)
                .map_err(|e| {
                    let e = e.into_io();
                    OpenFailed {
                        failure: fail(
                            FailReason::UpstreamConnect,
                            format!("connect to {} failed: {e}", hop.addr()),
                        ),
                        io: Some(e),
                    }
                })
        }
    }
}
