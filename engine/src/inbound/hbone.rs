//! The HBONE server: the 15008 listener terminates mTLS HTTP/2 tunnels for the
//! workloads this node serves. TLS presents the certificate of the workload the
//! connection is addressed to; every CONNECT stream becomes a connection of the
//! shard's table, admitted ([`crate::decide::admit`]) and relayed.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use http::StatusCode;
use tracing::{debug, info};
use zpath_crypto::{SessionBuffers, TlsStream, VerifiedPeer};
use zpath_tunnel::Payload;
use zpath_uring::{IoStream, TcpStream};

use crate::control::certs::workload_identity;
use crate::decide::admit::{admit, Admitted, Carrier};
use crate::dial::dial_permitted;
use crate::failure::{fail, Failure};
use crate::keepalive::{self, Activity, Watched};
use crate::relay::{self, Abort};
use crate::shard::handshakes::{SourceFull, Ticket};
use crate::shard::table::{ConnState, ConnTable, TableGuard};
use crate::shard::Shard;
use crate::stats::{CloseReason, Direction, FailReason, Gauge, Side};

type Tls = TlsStream<IoStream>;

/// Serves one connection accepted on 15008: TLS with the certificate of the workload
/// the connection is addressed to, then HTTP/2; every CONNECT becomes a connection of
/// the shard's table, checked, authorized and relayed.
pub(crate) async fn serve(shard: Rc<Shard>, stream: IoStream) {
    let (Ok(local), Ok(peer)) = (stream.local_addr(), stream.peer_addr()) else {
        return;
    };
    let socket = stream.get_ref().clone();
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
    let Some((conn, verified)) = handshake(&shard, stream, &cert, &ticket, peer, local).await
    else {
        return;
    };
    drop(ticket);
    let outer = Rc::new(Outer {
        peer,
        local,
        verified,
        activity: Activity::new(),
    });
    serve_connection(shard, conn, socket, outer).await;
}

/// Longest a GOAWAY to a peer that stopped answering may take to leave, and longest a
/// connection ended by an error is read from (and discarded) before it is closed.
const GOAWAY_FLUSH: Duration = Duration::from_secs(1);

/// TLS, then the HTTP/2 preface, both within --handshake-timeout of the accept, and
/// aborted if a newer handshake evicts this one. Counts and logs every failure.
async fn handshake<G: Fn(usize)>(
    shard: &Rc<Shard>,
    stream: IoStream,
    cert: &zpath_crypto::CertifiedTls,
    ticket: &Ticket<G>,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<(
    zpath_tunnel::server::ServerConnection<Tls>,
    Rc<VerifiedPeer>,
)> {
    let stats = &shard.stats;
    let failed_tls = || stats.dir(Direction::Inbound).count_failed(FailReason::Tls);
    let limit = shard.cfg.handshake_timeout;
    let deadline = Instant::now() + limit;
    let buffers = SessionBuffers::new(shard.cfg.tls_buffer);
    let accept = zpath_uring::time::timeout(limit, async {
        TlsStream::accept(stream, &cert.server_config(), buffers).await
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
    let verified = Rc::new(tls.peer()?.clone());
    let identity = verified.identity();
    // A peer that completes TLS and then sends nothing is closed like a stalled TLS
    // handshake: the preface shares the handshake's deadline.
    let left = deadline.saturating_duration_since(Instant::now());
    let preface = zpath_uring::time::timeout(left, async {
        zpath_tunnel::server::accept(tls, &shard.cfg.h2).await
    });
    let failed_tunnel = || {
        stats
            .dir(Direction::Inbound)
            .count_failed(FailReason::Tunnel)
    };
    match or_evicted(ticket, preface).await {
        Some(Ok(Ok(conn))) => Some((conn, verified.clone())),
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

/// Serves the streams of one HBONE connection (on `socket`) until it ends:
/// GOAWAY when the shard drains or the connection idles (open streams finish first),
/// dropped at once when the peer stops answering PINGs, closed lingering when the peer
/// broke the protocol.
async fn serve_connection(
    shard: Rc<Shard>,
    mut conn: zpath_tunnel::server::ServerConnection<Tls>,
    socket: TcpStream,
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
    let (peer, identity) = (outer.peer, outer.verified.identity());
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
                close_lingering(conn, socket).await;
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
                let _ = zpath_uring::time::timeout(GOAWAY_FLUSH, flush).await;
                break;
            }
        }
    }
}

/// Closes a connection h2 ended with an error without resetting it: a socket closed
/// with unread input answers with RST, which can reach the peer before it reads the
/// GOAWAY (h2 has sent it, with TLS close_notify, unless the error was the transport's).
/// The socket (`socket`, a second handle of the connection's) outlives `conn` and is
/// read and discarded until the peer closes, for at most `GOAWAY_FLUSH`.
async fn close_lingering(conn: zpath_tunnel::server::ServerConnection<Tls>, socket: TcpStream) {
    drop(conn);
    let _ = socket.shutdown(std::net::Shutdown::Write).await;
    let Ok(mut incoming) = socket.recv_stream() else {
        return;
    };
    let discard = async { while let Ok(Some(_)) = incoming.recv().await {} };
    let _ = zpath_uring::time::timeout(GOAWAY_FLUSH, discard).await;
}

/// What every stream of one 15008 connection shares.
struct Outer {
    peer: SocketAddr,
    local: SocketAddr,
    /// The identity the peer's certificate proved.
    verified: Rc<VerifiedPeer>,
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
    let key = guard.key();
    shard.stats.dir(Direction::Inbound).opened.add(1);
    let s = shard.clone();
    let outer = outer.clone();
    let task = zpath_uring::spawn_local(async move {
        let streams = Gauge::up(&s.stats.hbone.server_streams);
        let active = outer.activity.stream();
        let result = serve_stream(&s, &outer, req, respond, &guard).await;
        drop((active, streams));
        s.finish(Direction::Inbound, &guard, result);
    });
    shard.table.borrow_mut().set_task(key, task);
}

/// Serves one CONNECT: admitted ([`admit`]) or answered with its refusal; an admitted
/// one dials its upstream (raced with the client resetting the stream), answers 200 and
/// relays.
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
    let carrier = Carrier {
        peer_addr: outer.peer,
        local: outer.local,
        peer: &outer.verified,
    };
    let snapshot = shard.snapshot();
    let tally = |d: &_| shard.count_decision(&snapshot, d);
    let admitted = admit(&req, carrier, &snapshot, &shard.addrs, tally);
    let target = match &admitted {
        Ok(a) => Some(a.target),
        Err(refused) => refused.target,
    };
    if let Some(target) = target {
        // The first `baggage` header (ztunnel's clients and zpath's send one).
        let baggage = req.headers().get("baggage").and_then(|v| v.to_str().ok());
        shard.count_inbound_opened(info, &snapshot, target, Some(&outer.verified), baggage);
    }
    drop(snapshot);
    let Admitted { target, authorized } = match admitted {
        Ok(admitted) => admitted,
        Err(refused) => {
            info.dst.set(refused.target);
            refuse(&mut respond, refused.status);
            return Err(refused.failure);
        }
    };
    info.dst.set(Some(target));
    info.addressed.set(Some(target));
    // Policy re-checks of the live stream see the peer it was authorized for.
    info.peer.borrow_mut().clone_from(&authorized.peer);
    info.state.set(ConnState::Connecting);
    // A client that reset the stream gets no upstream connection: `or` polls the reset
    // first, so it is checked before the dial starts, and raced with it after (a
    // reset-after-accept flood opens nothing).
    let dialled = {
        let reset = async {
            let _ = futures_lite::future::poll_fn(|cx| respond.poll_reset(cx)).await;
            None
        };
        let dial = async { Some(Box::pin(dial_permitted(shard, &authorized)).await) };
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
    relay::tunnelled(shard, upstream, send, req.into_body(), info).await
}
