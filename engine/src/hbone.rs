//! HBONE in the engine: outbound connections to HBONE workloads go through a pooled
//! mTLS HTTP/2 tunnel to the destination's port 15008; the 15008 listener terminates
//! tunnels for the workloads this node serves.
//!
//! Copies per byte (user space), each direction:
//! * into a tunnel: socket read into a `BytesMut` (kernel copy) → frozen and handed to
//!   h2 as the DATA payload (no copy) → sealed into TLS records (the AEAD writes the
//!   ciphertext into the session's output buffer: one pass) → socket write (kernel copy).
//! * out of a tunnel: socket read into the TLS session's input buffer (kernel copy) →
//!   decrypted in place → copied once into h2's frame buffer → the DATA payload is a
//!   slice of that buffer (no copy) → socket write (kernel copy).

use std::cell::Cell;
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use bytes::Bytes;
use glommio::net::TcpStream;
use http::StatusCode;
use tracing::{debug, info};
use zpath_control::model::Workload;
use zpath_control::snapshot::HBONE_PORT;
use zpath_crypto::{Identity, SessionBuffers, TlsStream};
use zpath_tunnel::connect::{self, SourceInfo};
use zpath_tunnel::relay::{ReadSizes, Way};
use zpath_tunnel::{ConnectFailed, OpenError, Tunnel};

use crate::certs::workload_identity;
use crate::flow::{fail, Failure};
use crate::relay::{Abort, Shared};
use crate::shard::Shard;
use crate::stats::{Direction, FailReason};
use crate::table::{ConnInfo, ConnState, ConnTable, TableGuard};

/// How a shard's pool keys its tunnels (as ztunnel does): our identity, the identities
/// the destination may present, the destination node address, and our source address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The source workload's identity (the certificate we present).
    pub src_id: Identity,
    /// Identities the server may present.
    pub dst_ids: Vec<Identity>,
    /// The destination's HBONE address.
    pub dst: SocketAddr,
    /// The source workload's address.
    pub src: IpAddr,
}

/// A shard's tunnel pool.
pub type TunnelPool = zpath_tunnel::Pool<PoolKey>;

type Tls = TlsStream<TcpStream>;

/// TLS handshakes a shard runs at once on 15008; more connections are refused until
/// some finish (each holds its session buffers, 3 x --tls-buffer, meanwhile).
const MAX_PENDING_HANDSHAKES: u64 = 256;

/// Opens a stream to the HBONE workload `dst_wl` at `target` for the client of `info`,
/// through a pooled tunnel to the workload's node.
pub async fn open(
    shard: &Rc<Shard>,
    info: &ConnInfo,
    dst_wl: &Workload,
    target: SocketAddr,
) -> Result<zpath_tunnel::OpenStream, Failure> {
    outbound_inner(shard, info, dst_wl, target).await
}

/// Relays `client` over an opened stream, first sending `early` (bytes the client
/// already sent). Resets the client on failure.
pub async fn relay_client(
    shard: &Rc<Shard>,
    client: TcpStream,
    stream: zpath_tunnel::OpenStream,
    early: &[u8],
    info: &ConnInfo,
) -> Result<(), Failure> {
    let zpath_tunnel::OpenStream {
        mut send,
        recv,
        slot,
    } = stream;
    if !early.is_empty() {
        let n = early.len() as u64;
        if let Err(e) = send.send_data(Bytes::copy_from_slice(early), false) {
            client.abort();
            return Err(fail(
                FailReason::Tunnel,
                format!("tunnel stream failed: {e}"),
            ));
        }
        shard.stats.dir(Direction::Outbound).received_bytes.add(n);
        info.up.set(info.up.get() + n);
    }
    let _streams = Gauge::up(&shard.stats.hbone.client_streams);
    let result = relay(shard, client, send, recv, info).await;
    drop(slot);
    result
}

/// Holds one unit of a gauge: added when made, taken back when dropped, also when the
/// task holding it is cancelled (drain, policy re-check).
struct Gauge<'a>(&'a crate::stats::Counter);

impl<'a> Gauge<'a> {
    fn up(counter: &'a crate::stats::Counter) -> Self {
        counter.add(1);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.sub(1);
    }
}

async fn outbound_inner(
    shard: &Rc<Shard>,
    info: &ConnInfo,
    dst_wl: &Workload,
    target: SocketAddr,
) -> Result<zpath_tunnel::OpenStream, Failure> {
    let src_ip = info.src.ip().to_canonical();
    let snapshot = shard.snapshot();
    let Some(src_wl) = snapshot.local_workload(src_ip) else {
        return Err(fail(
            FailReason::UnknownSource,
            format!("source {src_ip} is not a workload this node serves; HBONE needs its identity"),
        ));
    };
    let src_id = workload_identity(src_wl).ok_or_else(|| {
        fail(
            FailReason::NoCertificate,
            format!("source workload {} has no valid identity", src_wl.uid),
        )
    })?;
    let dst_id = workload_identity(dst_wl).ok_or_else(|| {
        fail(
            FailReason::NoCertificate,
            format!("destination workload {} has no valid identity", dst_wl.uid),
        )
    })?;
    let baggage = SourceInfo {
        cluster: if src_wl.cluster_id.is_empty() {
            &shard.cfg.cluster_id
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
    drop(snapshot);
    let key = PoolKey {
        src_id,
        dst_ids: vec![dst_id],
        dst: SocketAddr::new(target.ip(), HBONE_PORT),
        src: src_ip,
    };
    info.state.set(ConnState::Connecting);
    // A pooled tunnel can turn out to take no new stream (a GOAWAY arrived): it is
    // then marked closed, and the request goes once more, on another tunnel.
    let mut attempts = 0;
    let stream = loop {
        attempts += 1;
        // Called only when a new tunnel is needed: a pooled one costs no clone here.
        let handshakes = shard.tunnels.handshakes();
        let checkout = shard.tunnels.checkout(&key, |promised| {
            connect_tunnel(shard.clone(), key.clone(), promised)
        });
        let checked_out = checkout.await;
        if shard.tunnels.handshakes() != handshakes {
            // A tunnel was made (or tried): the pool gauges change.
            shard.update_pool_gauges();
        }
        let (tunnel, slot) = checked_out.map_err(|e| {
            let reason = match e.label {
                "tls" => FailReason::Tls,
                "certificate" => FailReason::NoCertificate,
                _ => FailReason::UpstreamConnect,
            };
            fail(reason, format!("tunnel to {} failed: {e}", key.dst))
        })?;
        let req = connect::request(
            target,
            info.src,
            &baggage,
            &connect::traceparent(
                u128::from(shard.random()) << 64 | u128::from(shard.random()),
                u64::from(shard.random()) << 32 | u64::from(shard.random()),
            ),
        )
        .map_err(|e| fail(FailReason::Tunnel, format!("cannot build the request: {e}")))?;
        // The answer is bounded like a connect: a peer that never answers does not
        // hold the flow (and its slot) forever.
        let limit = shard.cfg.connect_timeout;
        let opened = glommio::timer::timeout(limit, async { Ok(tunnel.open(req, slot).await) })
            .await
            .unwrap_or_else(|_| Err(OpenError::H2(h2::Error::from(h2::Reason::CANCEL))));
        match opened {
            Ok(s) => break s,
            Err(OpenError::Status(status)) => {
                shard.stats.hbone.count_status(false, status.as_u16());
                return Err(fail(
                    FailReason::Tunnel,
                    format!("{} answered {status} to CONNECT {target}", key.dst),
                ));
            }
            Err(OpenError::H2(_)) if attempts == 1 && tunnel.is_closed() => continue,
            Err(OpenError::H2(e)) => {
                return Err(fail(
                    FailReason::Tunnel,
                    format!("tunnel to {} failed: {e}", key.dst),
                ))
            }
        }
    };
    shard.stats.hbone.count_status(false, 200);
    Ok(stream)
}

async fn connect_tunnel(
    shard: Rc<Shard>,
    key: PoolKey,
    promised: Rc<Cell<u32>>,
) -> Result<Tunnel, ConnectFailed> {
    let failed = |label: &'static str, message: String| ConnectFailed {
        label,
        message: message.into(),
    };
    let certs = shard.certs();
    let Some(cert) = certs.get(&key.src_id) else {
        return Err(failed(
            "certificate",
            format!("no certificate for {} yet", key.src_id),
        ));
    };
    let config = shard
        .client_tls
        .borrow_mut()
        .get(cert, &key.dst_ids)
        .map_err(|e| failed("tls", format!("cannot build the TLS configuration: {e}")))?;
    drop(certs);
    shard.stats.hbone.client_handshakes.add(1);
    let tcp = crate::flow::dial_from(&shard, key.dst, Some(key.src))
        .await
        .map_err(|e| failed("connect", format!("connect to {} failed: {e}", key.dst)))?;
    let buffers = SessionBuffers::new(shard.cfg.tls_buffer);
    let limit = shard.cfg.handshake_timeout;
    let tls = glommio::timer::timeout(limit, async {
        Ok(TlsStream::connect(tcp, &config, buffers).await)
    })
    .await;
    let tls = match tls {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            shard.stats.hbone.count_tls(false, Some(e.label()));
            return Err(failed(
                "tls",
                format!("TLS handshake with {} failed: {e}", key.dst),
            ));
        }
        Err(_) => {
            shard.stats.hbone.count_tls(false, Some("timeout"));
            return Err(failed(
                "tls",
                format!("TLS handshake with {} took longer than {limit:?}", key.dst),
            ));
        }
    };
    shard.stats.hbone.count_tls(false, None);
    let (tunnel, driver) =
        zpath_tunnel::client::handshake(tls, &shard.cfg.h2, shard.cfg.pool_max_streams, promised)
            .await
            .map_err(|e| {
                failed(
                    "http2",
                    format!("HTTP/2 handshake with {} failed: {e}", key.dst),
                )
            })?;
    let dst = key.dst;
    let s = shard.clone();
    glommio::spawn_local(async move {
        if let Err(e) = driver.await {
            debug!(%dst, "HBONE connection ended: {e}");
        }
        s.update_pool_gauges();
    })
    .detach();
    Ok(tunnel)
}

/// Relays a local socket over an open stream; resets the socket on any failure.
async fn relay(
    shard: &Rc<Shard>,
    socket: TcpStream,
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    info: &ConnInfo,
) -> Result<(), Failure> {
    use std::os::fd::AsRawFd;
    info.fds.set([socket.as_raw_fd(), -1]);
    info.state.set(ConnState::Relaying);
    let dir = info.direction;
    let stats = shard.stats.dir(dir);
    let meter = |way: Way, n: usize| {
        let n = n as u64;
        // Client → server bytes are "received" in Istio's terms, whichever side we are.
        let into_server = (way == Way::IntoTunnel) == (dir == Direction::Outbound);
        if into_server {
            stats.received_bytes.add(n);
            info.up.set(info.up.get() + n);
        } else {
            stats.sent_bytes.add(n);
            info.down.set(info.down.get() + n);
        }
    };
    let socket = Shared(Rc::new(RefCell::new(socket)));
    // The first read of a stream is --buffer-min bytes, as passthrough's: an idle
    // stream holds only that much; bulk doubles it up to --buffer-max.
    let sizes = ReadSizes {
        min: shard.cfg.buffers.min,
        max: shard.cfg.buffers.max,
    };
    let result =
        zpath_tunnel::relay::relay(socket.clone(), socket.clone(), send, recv, sizes, &meter).await;
    info.fds.set([-1, -1]);
    result.map(|_| ()).map_err(|e| {
        socket.0.borrow().abort();
        fail(FailReason::Reset, e.to_string())
    })
}

/// Serves one connection accepted on 15008: TLS with the certificate of the workload
/// the connection is addressed to, then HTTP/2; every CONNECT becomes a connection of
/// the shard's table, checked, authorized and relayed.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let (Ok(local), Ok(peer)) = (stream.local_addr(), stream.peer_addr()) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let stats = &shard.stats;
    let local_ip = local.ip().to_canonical();
    let snapshot = shard.snapshot();
    if snapshot.generation == 0 {
        stats.dir(Direction::Inbound).failed[FailReason::NoConfig as usize].add(1);
        info!(%peer, %local, "no configuration applied yet; HBONE connection refused");
        stream.abort();
        return;
    }
    let Some(wl) = snapshot.local_workload(local_ip) else {
        stats.dir(Direction::Inbound).failed[FailReason::UnknownTarget as usize].add(1);
        info!(%peer, %local, "HBONE connection to an address this node serves no workload at; closed");
        stream.abort();
        return;
    };
    let cert = workload_identity(wl).and_then(|id| shard.certs().get(&id).cloned());
    drop(snapshot);
    let Some(cert) = cert else {
        stats.dir(Direction::Inbound).failed[FailReason::NoCertificate as usize].add(1);
        info!(%peer, %local, "no certificate for the workload at {local_ip}; HBONE connection closed");
        stream.abort();
        return;
    };
    // Each handshake holds its TLS buffers before the peer proved anything: bounded.
    if stats.hbone.handshakes_in_flight.get() >= MAX_PENDING_HANDSHAKES {
        stats.hbone.count_tls(true, Some("overload"));
        stats.dir(Direction::Inbound).failed[FailReason::Tls as usize].add(1);
        info!(%peer, %local, "{MAX_PENDING_HANDSHAKES} TLS handshakes already in progress on this shard; connection refused");
        stream.abort();
        return;
    }
    let pending = Gauge::up(&stats.hbone.handshakes_in_flight);
    let limit = shard.cfg.handshake_timeout;
    let buffers = SessionBuffers::new(shard.cfg.tls_buffer);
    let accepted = glommio::timer::timeout(limit, async {
        Ok(TlsStream::accept(stream, &cert.server_config(), buffers).await)
    })
    .await;
    let tls: Tls = match accepted {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            stats.hbone.count_tls(true, Some(e.label()));
            stats.dir(Direction::Inbound).failed[FailReason::Tls as usize].add(1);
            info!(%peer, %local, reason = e.label(), "HBONE TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            stats.hbone.count_tls(true, Some("timeout"));
            stats.dir(Direction::Inbound).failed[FailReason::Tls as usize].add(1);
            info!(%peer, %local, "HBONE TLS handshake took longer than {limit:?}; closed");
            return;
        }
    };
    drop(pending);
    stats.hbone.count_tls(true, None);
    let Some(identity) = tls
        .peer()
        .map(|p| Rc::<str>::from(p.identity().to_string()))
    else {
        return;
    };
    let mut conn = match zpath_tunnel::server::accept(tls, &shard.cfg.h2).await {
        Ok(c) => c,
        Err(e) => {
            stats.dir(Direction::Inbound).failed[FailReason::Tunnel as usize].add(1);
            info!(%peer, %identity, "HTTP/2 handshake failed: {e}");
            return;
        }
    };
    stats.hbone.server_connections.add(1);
    let outer = Outer {
        peer,
        local,
        identity,
    };
    let outer = Rc::new(outer);
    loop {
        match conn.accept().await {
            Some(Ok((req, respond))) => spawn_stream(&shard, &outer, req, respond),
            Some(Err(e)) => {
                info!(%peer, identity = %outer.identity, "HBONE connection failed: {e}");
                break;
            }
            None => break,
        }
    }
    // Let streams still open finish (a graceful close waits for them).
    let _ = futures_lite::future::poll_fn(|cx| conn.poll_closed(cx)).await;
    stats.hbone.server_connections.sub(1);
}

/// What every stream of one 15008 connection shares.
struct Outer {
    peer: SocketAddr,
    local: SocketAddr,
    identity: Rc<str>,
}

fn spawn_stream(
    shard: &Rc<Shard>,
    outer: &Rc<Outer>,
    req: http::Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
) {
    let guard = ConnTable::insert(&shard.table, Direction::Inbound, outer.peer);
    *guard.info.peer.borrow_mut() = Some(outer.identity.clone());
    let key = guard.key();
    shard.stats.dir(Direction::Inbound).opened.add(1);
    let s = shard.clone();
    let outer = outer.clone();
    let task = glommio::spawn_local(async move {
        let streams = Gauge::up(&s.stats.hbone.server_streams);
        let result = serve_stream(&s, &outer, req, respond, &guard).await;
        drop(streams);
        crate::shard::finish(&s, Direction::Inbound, &guard, result);
    })
    .detach();
    shard.table.borrow_mut().set_task(key, task);
}

async fn serve_stream(
    shard: &Rc<Shard>,
    outer: &Outer,
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    guard: &TableGuard,
) -> Result<(), Failure> {
    let info = &guard.info;
    let hbone = &shard.stats.hbone;
    let refuse = |respond: &mut h2::server::SendResponse<Bytes>, status: StatusCode| {
        hbone.count_status(true, status.as_u16());
        let _ = zpath_tunnel::server::answer(respond, status);
    };
    let target = match connect::target(&req) {
        Ok(t) => t,
        Err(e) => {
            refuse(&mut respond, StatusCode::BAD_REQUEST);
            return Err(fail(FailReason::BadRequest, format!("bad CONNECT: {e}")));
        }
    };
    info.dst.set(Some(target));
    let dst_ip = target.ip().to_canonical();
    let snapshot = shard.snapshot();
    if dst_ip != outer.local.ip().to_canonical() || snapshot.local_workload(dst_ip).is_none() {
        refuse(&mut respond, StatusCode::BAD_REQUEST);
        return Err(fail(
            FailReason::UnknownTarget,
            format!(
                "CONNECT {target} on a connection to {}: not a workload this node serves at that address",
                outer.local
            ),
        ));
    }
    let canonical = SocketAddr::new(dst_ip, target.port());
    if shard.addrs.is_own(canonical, Some(outer.local)) {
        refuse(&mut respond, StatusCode::BAD_REQUEST);
        return Err(fail(
            FailReason::Loop,
            format!("CONNECT {target} names one of zpath's own ports"),
        ));
    }
    let peer = zpath_policy::Peer::parse(&outer.identity).ok();
    let conn = zpath_policy::Conn {
        src_ip: outer.peer.ip().to_canonical(),
        dst_ip,
        dst_port: target.port(),
        peer,
    };
    let outcome = snapshot.authorize(&conn);
    crate::flow::log_dry_run(&outcome, info);
    shard.count_decision(&snapshot, &outcome.decision);
    let permit = match outcome.decision {
        zpath_policy::Decision::Allow(permit) => permit,
        zpath_policy::Decision::Deny(reason) => {
            refuse(&mut respond, StatusCode::UNAUTHORIZED);
            return Err(fail(
                FailReason::Denied,
                format!("denied by policy: {reason} (peer {})", outer.identity),
            ));
        }
    };
    drop(snapshot);
    info.state.set(ConnState::Connecting);
    // A client that reset the stream gets no upstream connection: checked before the
    // dial starts, and raced with it (a reset-after-accept flood opens nothing).
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if respond.poll_reset(&mut cx).is_ready() {
        return Err(fail(
            FailReason::Tunnel,
            "the client reset the stream before the answer",
        ));
    }
    let dialled = {
        let reset = async {
            let _ = futures_lite::future::poll_fn(|cx| respond.poll_reset(cx)).await;
            None
        };
        let dial = async { Some(crate::flow::dial_permitted(shard, permit).await) };
        futures_lite::future::or(reset, dial).await
    };
    let upstream = match dialled {
        Some(Ok(u)) => u,
        Some(Err(e)) => {
            refuse(&mut respond, StatusCode::SERVICE_UNAVAILABLE);
            return Err(fail(
                FailReason::UpstreamConnect,
                format!("connect to {target} failed: {e}"),
            ));
        }
        None => {
            return Err(fail(
                FailReason::Tunnel,
                "the client reset the stream before the answer",
            ))
        }
    };
    let send = match zpath_tunnel::server::answer(&mut respond, StatusCode::OK) {
        Ok(Some(send)) => send,
        Ok(None) | Err(_) => {
            upstream.abort();
            return Err(fail(
                FailReason::Tunnel,
                "the client went away before the answer",
            ));
        }
    };
    hbone.count_status(true, 200);
    relay(shard, upstream, send, req.into_body(), info).await
}
