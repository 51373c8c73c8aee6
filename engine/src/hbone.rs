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
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::net::TcpStream;
use http::StatusCode;
use tracing::{debug, info};
use zpath_control::model::Workload;
use zpath_control::snapshot::HBONE_PORT;
use zpath_crypto::{Identity, SessionBuffers, TlsStream};
use zpath_tunnel::connect::{self, SourceInfo};
use zpath_tunnel::relay::{ReadSizes, Way};
use zpath_tunnel::{ConnectFailed, OpenError, Payload, Tunnel};

use crate::authorize::{authorize, Refusal, When};
use crate::certs::workload_identity;
use crate::flow::{fail, Failure};
use crate::handshakes::{SourceFull, Ticket};
use crate::keepalive::{self, Activity, Watched};
use crate::relay::{Abort, Shared};
use crate::shard::Shard;
use crate::signal::Flag;
use crate::stats::{CloseReason, Direction, FailReason, Side};
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
        if let Err(e) = send.send_data(Payload::new(Bytes::copy_from_slice(early)), false) {
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
    // At cold start the first connections of a workload can come before the CA
    // answered: they wait for the certificate (as long as a connect may take).
    let limit = shard.cfg.connect_timeout;
    if !shard.wait_for_certificate(&key.src_id, limit).await {
        return Err(fail(
            FailReason::NoCertificate,
            format!(
                "no certificate for {} within {limit:?} (--connect-timeout): is the CA reachable?",
                key.src_id
            ),
        ));
    }
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
                "source_address" => FailReason::SourceAddress,
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
                shard
                    .stats
                    .hbone
                    .count_status(Side::Client, status.as_u16());
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
    shard.stats.hbone.count_status(Side::Client, 200);
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
        .map_err(|e| match e {
            crate::sys::ConnectError::Source { .. } => failed(
                "source_address",
                format!("connect to {} refused: {e} (the workload's address is kept, never replaced by another)", key.dst),
            ),
            crate::sys::ConnectError::Socket(e) => {
                failed("connect", format!("connect to {} failed: {e}", key.dst))
            }
        })?;
    let buffers = SessionBuffers::new(shard.cfg.tls_buffer);
    let limit = shard.cfg.handshake_timeout;
    let tls = glommio::timer::timeout(limit, async {
        Ok(TlsStream::connect(tcp, &config, buffers).await)
    })
    .await;
    let tls = match tls {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            shard.stats.hbone.count_tls(Side::Client, Some(e.label()));
            return Err(failed(
                "tls",
                format!("TLS handshake with {} failed: {e}", key.dst),
            ));
        }
        Err(_) => {
            shard.stats.hbone.count_tls(Side::Client, Some("timeout"));
            return Err(failed(
                "tls",
                format!("TLS handshake with {} took longer than {limit:?}", key.dst),
            ));
        }
    };
    shard.stats.hbone.count_tls(Side::Client, None);
    let (tunnel, mut driver) =
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
    let silent = Rc::new(Flag::default());
    let k = shard.cfg.keepalive;
    let watchers = keepalive::watch_client(driver.ping_pong(), k, silent.clone());
    glommio::spawn_local(async move {
        let driven = async { Some(driver.await) };
        let unanswered = async {
            silent.raised().await;
            None
        };
        // A silent peer's connection is dropped: its streams fail, the pool forgets it.
        match futures_lite::future::or(driven, unanswered).await {
            Some(Ok(())) => {}
            Some(Err(e)) => debug!(%dst, "HBONE connection ended: {e}"),
            None => {
                s.stats.hbone.count_closed(Side::Client, CloseReason::KeepaliveTimeout);
                if s.may_log(FailReason::Tunnel) {
                    info!(%dst, "HBONE peer left a PING unanswered for {:?}; connection closed", k.timeout);
                }
            }
        }
        drop(watchers);
        s.update_pool_gauges();
    })
    .detach();
    Ok(tunnel)
}

/// Relays a local socket over an open stream; resets the socket on any failure.
async fn relay(
    shard: &Rc<Shard>,
    socket: TcpStream,
    send: h2::SendStream<Payload>,
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
    let fd = stream.as_raw_fd();
    let _ = stream.set_nodelay(true);
    let stats = &shard.stats;
    let local_ip = local.ip().to_canonical();
    let snapshot = shard.snapshot();
    if snapshot.generation == 0 {
        stats
            .dir(Direction::Inbound)
            .count_failed(FailReason::NoConfig);
        if shard.may_log(FailReason::NoConfig) {
            info!(%peer, %local, "no configuration applied yet; HBONE connection refused");
        }
        stream.abort();
        return;
    }
    let Some(wl) = snapshot.local_workload(local_ip) else {
        stats
            .dir(Direction::Inbound)
            .count_failed(FailReason::UnknownTarget);
        if shard.may_log(FailReason::UnknownTarget) {
            info!(%peer, %local, "HBONE connection to an address this node serves no workload at; closed");
        }
        stream.abort();
        return;
    };
    let cert = workload_identity(wl).and_then(|id| shard.certs().get(&id).cloned());
    drop(snapshot);
    let Some(cert) = cert else {
        stats
            .dir(Direction::Inbound)
            .count_failed(FailReason::NoCertificate);
        if shard.may_log(FailReason::NoCertificate) {
            info!(%peer, %local, "no certificate for the workload at {local_ip}; HBONE connection closed");
        }
        stream.abort();
        return;
    };
    // Each handshake holds its TLS buffers before the peer proved anything: bounded per
    // source, and per shard by evicting the oldest.
    let gauge = {
        let s = shard.clone();
        move |n: usize| s.stats.hbone.handshakes_in_flight.set(n as u64)
    };
    let ticket = match Ticket::take(&shard.handshakes, peer.ip(), gauge) {
        Ok(ticket) => ticket,
        Err(SourceFull) => {
            stats.hbone.count_tls(Side::Server, Some("source_limit"));
            stats.dir(Direction::Inbound).count_failed(FailReason::Tls);
            let max = shard.cfg.handshakes.max_per_source;
            if shard.may_log(FailReason::Tls) {
                info!(%peer, %local, "{max} handshakes from this source already pending on this shard; connection refused");
            }
            stream.abort();
            return;
        }
    };
    let Some((conn, identity)) = handshake(&shard, stream, &cert, &ticket, peer, local).await
    else {
        return;
    };
    drop(ticket);
    let outer = Rc::new(Outer {
        peer,
        local,
        identity,
        activity: Activity::new(),
    });
    serve_connection(shard, conn, fd, outer).await;
}

/// Longest a GOAWAY to a peer that stopped answering may take to leave, and longest a
/// connection ended by an error is read from (and discarded) before it is closed.
const GOAWAY_FLUSH: Duration = Duration::from_secs(1);

/// TLS, then the HTTP/2 preface, both within --handshake-timeout of the accept, and
/// aborted if a newer handshake evicts this one. Counts and logs every failure.
async fn handshake<G: Fn(usize)>(
    shard: &Rc<Shard>,
    stream: TcpStream,
    cert: &zpath_crypto::CertifiedTls,
    ticket: &Ticket<G>,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<(zpath_tunnel::server::ServerConnection<Tls>, Rc<str>)> {
    let stats = &shard.stats;
    let failed_tls = || stats.dir(Direction::Inbound).count_failed(FailReason::Tls);
    let limit = shard.cfg.handshake_timeout;
    let deadline = Instant::now() + limit;
    let buffers = SessionBuffers::new(shard.cfg.tls_buffer);
    let accept = glommio::timer::timeout(limit, async {
        Ok(TlsStream::accept(stream, &cert.server_config(), buffers).await)
    });
    let tls: Tls = match or_evicted(ticket, accept).await {
        Some(Ok(Ok(t))) => t,
        Some(Ok(Err(e))) => {
            stats.hbone.count_tls(Side::Server, Some(e.label()));
            failed_tls();
            if shard.may_log(FailReason::Tls) {
                info!(%peer, %local, reason = e.label(), "HBONE TLS handshake failed: {e}");
            }
            return None;
        }
        Some(Err(_)) => {
            stats.hbone.count_tls(Side::Server, Some("timeout"));
            failed_tls();
            if shard.may_log(FailReason::Tls) {
                info!(%peer, %local, "HBONE TLS handshake took longer than {limit:?}; closed");
            }
            return None;
        }
        None => {
            stats.hbone.count_tls(Side::Server, Some("evicted"));
            stats.hbone.count_closed(Side::Server, CloseReason::Evicted);
            failed_tls();
            if shard.may_log(FailReason::Tls) {
                info!(%peer, %local, "HBONE TLS handshake aborted: the shard's pending handshakes are full and this was the oldest");
            }
            return None;
        }
    };
    stats.hbone.count_tls(Side::Server, None);
    let identity = tls
        .peer()
        .map(|p| Rc::<str>::from(p.identity().to_string()))?;
    // A peer that completes TLS and then sends nothing is closed like a stalled TLS
    // handshake: the preface shares the handshake's deadline.
    let left = deadline.saturating_duration_since(Instant::now());
    let preface = glommio::timer::timeout(left, async {
        Ok(zpath_tunnel::server::accept(tls, &shard.cfg.h2).await)
    });
    let failed_tunnel = || {
        stats
            .dir(Direction::Inbound)
            .count_failed(FailReason::Tunnel)
    };
    match or_evicted(ticket, preface).await {
        Some(Ok(Ok(conn))) => Some((conn, identity)),
        Some(Ok(Err(e))) => {
            failed_tunnel();
            if shard.may_log(FailReason::Tunnel) {
                info!(%peer, %identity, "HTTP/2 handshake failed: {e}");
            }
            None
        }
        Some(Err(_)) => {
            stats
                .hbone
                .count_closed(Side::Server, CloseReason::PrefaceTimeout);
            failed_tunnel();
            if shard.may_log(FailReason::Tunnel) {
                info!(%peer, %identity, "no HTTP/2 preface within {limit:?} of the connection; closed");
            }
            None
        }
        None => {
            stats.hbone.count_closed(Side::Server, CloseReason::Evicted);
            failed_tunnel();
            if shard.may_log(FailReason::Tunnel) {
                info!(%peer, %identity, "HBONE connection aborted before its HTTP/2 preface: the shard's pending handshakes are full and this was the oldest");
            }
            None
        }
    }
}

/// Runs `step`, or returns `None` once `ticket` is evicted.
async fn or_evicted<G: Fn(usize), T>(
    ticket: &Ticket<G>,
    step: impl std::future::Future<Output = T>,
) -> Option<T> {
    let evicted = async {
        ticket.evicted().await;
        None
    };
    futures_lite::future::or(async { Some(step.await) }, evicted).await
}

/// A CONNECT request and the handle to answer it.
type Incoming = (
    http::Request<h2::RecvStream>,
    h2::server::SendResponse<Payload>,
);

/// What a served connection's task reacts to.
// Made and matched at once on the stack, never stored: its size costs nothing.
#[allow(clippy::large_enum_variant)]
enum Event {
    /// The connection gave a new stream, failed, or ended (`None`).
    Accepted(Option<Result<Incoming, h2::Error>>),
    /// The shard drains.
    Drain,
    /// No stream for the idle timeout.
    Idle,
    /// A PING went unanswered.
    Silent,
}

/// Serves the streams of one HBONE connection (on the socket `fd`) until it ends:
/// GOAWAY when the shard drains or the connection idles (open streams finish first),
/// dropped at once when the peer stops answering PINGs, closed lingering when the peer
/// broke the protocol.
async fn serve_connection(
    shard: Rc<Shard>,
    mut conn: zpath_tunnel::server::ServerConnection<Tls>,
    fd: RawFd,
    outer: Rc<Outer>,
) {
    let stats = &shard.stats;
    let _connections = Gauge::up(&stats.hbone.server_connections);
    let drain = shard.served.join();
    let watched = Rc::new(Watched::default());
    let _watchers = keepalive::watch_server(
        conn.ping_pong(),
        shard.cfg.keepalive,
        outer.activity.clone(),
        shard.cfg.hbone_idle_timeout,
        watched.clone(),
    );
    let (peer, identity) = (outer.peer, &outer.identity);
    let mut closing = false;
    loop {
        let event = futures_lite::future::poll_fn(|cx| {
            use std::task::Poll;
            if !closing {
                if drain.flag.poll_raised(cx).is_ready() {
                    return Poll::Ready(Event::Drain);
                }
                if watched.idle.poll_raised(cx).is_ready() {
                    return Poll::Ready(Event::Idle);
                }
            }
            if watched.silent.poll_raised(cx).is_ready() {
                return Poll::Ready(Event::Silent);
            }
            conn.poll_accept(cx).map(Event::Accepted)
        })
        .await;
        match event {
            Event::Accepted(Some(Ok((req, respond)))) => spawn_stream(&shard, &outer, req, respond),
            Event::Accepted(Some(Err(e))) => {
                if shard.may_log(FailReason::Tunnel) {
                    info!(%peer, %identity, "HBONE connection failed: {e}");
                }
                close_lingering(conn, fd).await;
                break;
            }
            Event::Accepted(None) => break,
            Event::Drain | Event::Idle => {
                let reason = match event {
                    Event::Drain => CloseReason::Drain,
                    _ => CloseReason::Idle,
                };
                stats.hbone.count_closed(Side::Server, reason);
                debug!(%peer, %identity, streams = outer.activity.streams(), reason = reason.label(), "HBONE connection: GOAWAY");
                // GOAWAY, a PING round trip for streams already on their way, then a
                // final GOAWAY; the connection closes when its last stream ends.
                conn.graceful_shutdown();
                closing = true;
            }
            Event::Silent => {
                stats
                    .hbone
                    .count_closed(Side::Server, CloseReason::KeepaliveTimeout);
                if shard.may_log(FailReason::Tunnel) {
                    info!(%peer, %identity, "HBONE peer left a PING unanswered for {:?}; connection closed", shard.cfg.keepalive.timeout);
                }
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                let flush = futures_lite::future::poll_fn(|cx| conn.poll_closed(cx));
                let _ = glommio::timer::timeout(GOAWAY_FLUSH, async { Ok(flush.await) }).await;
                break;
            }
        }
    }
}

/// Closes a connection h2 ended with an error without resetting it: a socket closed
/// with unread input answers with RST, which can reach the peer before it reads the
/// GOAWAY (h2 has sent it, with TLS close_notify, unless the error was the transport's). The socket is kept on a
/// second descriptor and read and discarded until the peer closes, for at most
/// `GOAWAY_FLUSH`.
async fn close_lingering(conn: zpath_tunnel::server::ServerConnection<Tls>, fd: RawFd) {
    // `conn` owns `fd` until it is dropped below.
    let socket = crate::sys::dup_stream(fd);
    drop(conn);
    let Ok(mut socket) = socket else {
        return;
    };
    let _ = socket.shutdown(std::net::Shutdown::Write).await;
    let discard = async {
        let mut sink = [0u8; 4096];
        while let Ok(1..) = futures_lite::AsyncReadExt::read(&mut socket, &mut sink).await {}
        Ok(())
    };
    let _ = glommio::timer::timeout(GOAWAY_FLUSH, discard).await;
}

/// What every stream of one 15008 connection shares.
struct Outer {
    peer: SocketAddr,
    local: SocketAddr,
    identity: Rc<str>,
    /// Its open streams (the idle timeout runs while there is none).
    activity: Rc<Activity>,
}

fn spawn_stream(
    shard: &Rc<Shard>,
    outer: &Rc<Outer>,
    req: http::Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Payload>,
) {
    let guard = ConnTable::insert(&shard.table, Direction::Inbound, outer.peer);
    *guard.info.peer.borrow_mut() = Some(outer.identity.clone());
    let key = guard.key();
    shard.stats.dir(Direction::Inbound).opened.add(1);
    let s = shard.clone();
    let outer = outer.clone();
    let task = glommio::spawn_local(async move {
        let streams = Gauge::up(&s.stats.hbone.server_streams);
        let active = outer.activity.stream();
        let result = serve_stream(&s, &outer, req, respond, &guard).await;
        drop((active, streams));
        crate::shard::finish(&s, Direction::Inbound, &guard, result);
    })
    .detach();
    shard.table.borrow_mut().set_task(key, task);
}

async fn serve_stream(
    shard: &Rc<Shard>,
    outer: &Outer,
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Payload>,
    guard: &TableGuard,
) -> Result<(), Failure> {
    let info = &guard.info;
    let hbone = &shard.stats.hbone;
    let refuse = |respond: &mut h2::server::SendResponse<Payload>, status: StatusCode| {
        hbone.count_status(Side::Server, status.as_u16());
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
    let permit = match authorize(shard, &snapshot, &conn, info, When::Opening) {
        Ok(permit) => permit,
        Err(refusal @ Refusal::UnknownTarget(_)) => {
            refuse(&mut respond, StatusCode::BAD_REQUEST);
            return Err(fail(
                refusal.reason(),
                format!("CONNECT {target}: {refusal}"),
            ));
        }
        Err(refusal @ Refusal::Denied(_)) => {
            refuse(&mut respond, StatusCode::UNAUTHORIZED);
            return Err(fail(
                refusal.reason(),
                format!("{refusal} (peer {})", outer.identity),
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
    hbone.count_status(Side::Server, 200);
    relay(shard, upstream, send, req.into_body(), info).await
}
