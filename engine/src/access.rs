//! The access log: one line when a connection starts relaying (`debug`) and one when
//! it completes (`info`, `error` when it failed), under the target `access` with the
//! fields ztunnel logs, so the log reads as ztunnel's. Workloads, namespaces, services
//! and identities are looked up in the snapshot when the line is written, and only
//! when the line is enabled: the log filter decides (`--access-log off` adds
//! `access=off` to it, as `RUST_LOG=…,access=off` does).

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use tracing::Level;
use zpath_control::model::Workload;
use zpath_control::Snapshot;

use crate::control::certs::workload_identity;
use crate::failure::Failure;
use crate::shard::table::ConnInfo;
use crate::stats::Direction;

/// What the access log says of one connection's two ends.
struct Ends<'s> {
    src: Option<&'s Workload>,
    dst: Option<&'s Workload>,
    service: Option<&'s str>,
    src_identity: Option<String>,
    dst_identity: Option<String>,
    /// The address dialled: the destination node's 15008 over HBONE outbound.
    dst_addr: Option<SocketAddr>,
}

fn ends<'s>(snapshot: &'s Snapshot, info: &ConnInfo) -> Ends<'s> {
    let dst = info.dst.get();
    let src_wl = snapshot
        .workload_by_ip(info.src.ip().to_canonical())
        .map(|w| &**w);
    let dst_wl = dst.and_then(|d| snapshot.workload_by_ip(d.ip().to_canonical()).map(|w| &**w));
    let service = info
        .addressed
        .get()
        .and_then(|a| snapshot.service_by_vip(a.ip().to_canonical()))
        .map(|s| &*s.service.hostname);
    // Identities only for mutual TLS, as ztunnel: the peer's proven one inbound, the
    // certificates of both workloads outbound.
    let identity = |w: Option<&Workload>| w.and_then(workload_identity).map(|i| i.to_string());
    let (src_identity, dst_identity) = match (info.direction, info.peer.borrow().as_ref()) {
        (Direction::Inbound, Some(peer)) => (Some(peer.identity().to_string()), identity(dst_wl)),
        (Direction::Outbound, _) if info.tunnel.get().is_some() => {
            (identity(src_wl), identity(dst_wl))
        }
        _ => (None, None),
    };
    Ends {
        src: src_wl,
        dst: dst_wl,
        service,
        src_identity,
        dst_identity,
        dst_addr: info.tunnel.get().or(dst),
    }
}

/// Writes one access line at `level` for `info` with the ends `e`: the fields both
/// lines carry, then `extra` fields, then the message.
macro_rules! access_line {
    ($level:ident, $info:expr, $e:expr, $message:literal, $($extra:tt)*) => {
        tracing::event!(
            target: "access",
            parent: None,
            Level::$level,
            src.addr = %$info.src,
            src.workload = $e.src.map(|w| w.name()),
            src.namespace = $e.src.map(|w| &*w.namespace),
            src.identity = $e.src_identity.as_deref(),
            dst.addr = $e.dst_addr.map(tracing::field::display),
            dst.hbone_addr = $info.hbone_target().map(tracing::field::display),
            dst.service = $e.service,
            dst.workload = $e.dst.map(|w| w.name()),
            dst.namespace = $e.dst.map(|w| &*w.namespace),
            dst.identity = $e.dst_identity.as_deref(),
            direction = $info.direction.label(),
            $($extra)*
            $message
        )
    };
}

/// The connection starts relaying. `snapshot` gives the current snapshot, asked only
/// when the line is written.
pub(crate) fn opened<S: Deref<Target = Arc<Snapshot>>>(
    snapshot: impl FnOnce() -> S,
    info: &ConnInfo,
) {
    if !tracing::enabled!(target: "access", Level::DEBUG) {
        return;
    }
    let snapshot = snapshot();
    let e = ends(&snapshot, info);
    access_line!(DEBUG, info, e, "connection opened",);
}

/// The connection completed (`result`): bytes each way as the proxy moved them
/// (outbound: sent toward the server; inbound: sent toward the client), duration, and
/// the error.
pub(crate) fn completed<S: Deref<Target = Arc<Snapshot>>>(
    snapshot: impl FnOnce() -> S,
    info: &ConnInfo,
    result: &Result<(), Failure>,
) {
    let enabled = match result {
        Ok(()) => tracing::enabled!(target: "access", Level::INFO),
        Err(_) => tracing::enabled!(target: "access", Level::ERROR),
    };
    if !enabled {
        return;
    }
    let snapshot = snapshot();
    let e = ends(&snapshot, info);
    let (sent, recv) = match info.direction {
        Direction::Outbound => (info.up.get(), info.down.get()),
        Direction::Inbound => (info.down.get(), info.up.get()),
    };
    let duration = format!("{}ms", info.started.elapsed().as_millis());
    match result {
        Ok(()) => access_line!(
            INFO, info, e, "connection complete",
            bytes_sent = sent, bytes_recv = recv, duration = %duration,
        ),
        Err(f) => access_line!(
            ERROR, info, e, "connection complete",
            bytes_sent = sent, bytes_recv = recv, duration = %duration,
            error = %f.message, reason = f.reason.label(),
        ),
    }
}
