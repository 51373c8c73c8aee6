//! The connection flows of a shard: captured outbound (15001), SOCKS5 (15080) and
//! captured inbound plaintext (15006). Each takes an accepted stream, decides where it
//! goes, dials the upstream and hands both to the relay.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use zpath_control::Route;

use crate::authorize::{authorize, When};
use crate::hbone;
use crate::relay::{self, Abort, Meters};
use crate::shard::Shard;
use crate::socks5::{self, Reply, Socks5Error, Target};
use crate::stats::{Direction, FailReason};
use crate::sys;
use crate::table::{ConnInfo, ConnState};

/// Why a connection did not complete normally.
#[derive(Debug)]
pub struct Failure {
    /// The counted reason.
    pub reason: FailReason,
    /// What happened, for the log.
    pub message: String,
}

pub(crate) fn fail(reason: FailReason, message: impl Into<String>) -> Failure {
    Failure {
        reason,
        message: message.into(),
    }
}

/// Captured outbound: the destination is the original destination of the connection.
pub async fn outbound(
    shard: &Rc<Shard>,
    client: TcpStream,
    info: &ConnInfo,
) -> Result<(), Failure> {
    let dst = captured_destination(shard, &client, info)?;
    let upstream = match dial_route(shard, dst, info).await {
        Ok(u) => u,
        Err(f) => {
            client.abort();
            return Err(f.failure);
        }
    };
    match upstream {
        Upstream::Tcp(upstream) => {
            relay_pair(shard, client, upstream, info, Direction::Outbound).await
        }
        Upstream::Hbone(stream) => hbone::relay_client(shard, client, stream, &[], info).await,
    }
}

/// Where an outbound connection goes once dialled.
enum Upstream {
    /// A plain TCP connection (passthrough, or a `TCP` workload).
    Tcp(TcpStream),
    /// A stream through an HBONE tunnel.
    Hbone(zpath_tunnel::OpenStream),
}

/// Captured inbound plaintext: relay to the original (local) destination.
pub async fn inbound(shard: &Rc<Shard>, client: TcpStream, info: &ConnInfo) -> Result<(), Failure> {
    let dst = captured_destination(shard, &client, info)?;
    let snapshot = shard.snapshot();
    let conn = zpath_policy::Conn {
        src_ip: info.src.ip().to_canonical(),
        dst_ip: dst.ip().to_canonical(),
        dst_port: dst.port(),
        peer: None,
    };
    let permit = match authorize(shard, &snapshot, &conn, info, When::Opening) {
        Ok(permit) => permit,
        Err(refusal) => {
            client.abort();
            return Err(fail(refusal.reason(), refusal.to_string()));
        }
    };
    drop(snapshot);
    info.state.set(ConnState::Connecting);
    let upstream = match dial_permitted(shard, permit).await {
        Ok(u) => u,
        Err(e) => {
            client.abort();
            return Err(fail(
                FailReason::UpstreamConnect,
                format!("connect to {dst} failed: {e}"),
            ));
        }
    };
    relay_pair(shard, client, upstream, info, Direction::Inbound).await
}

/// SOCKS5 entry: the destination comes from the CONNECT request.
pub async fn socks5(
    shard: &Rc<Shard>,
    mut client: TcpStream,
    info: &ConnInfo,
) -> Result<(), Failure> {
    let mut buf = [0u8; socks5::MAX_GREETING + socks5::MAX_REQUEST];
    let limit = shard.cfg.socks5_handshake_timeout;
    let handshake = glommio::timer::timeout(limit, async {
        Ok(socks5_handshake(&mut client, &mut buf).await)
    })
    .await;
    let (target, early) = match handshake {
        Ok(Ok(t)) => t,
        Ok(Err(HandshakeError::Protocol(e))) => {
            if let Some(reply) = e.reply() {
                let _ = client.write_all(&reply).await;
            }
            return Err(fail(FailReason::Socks5, e.to_string()));
        }
        Ok(Err(HandshakeError::Io(e))) => {
            return Err(fail(
                FailReason::Socks5,
                format!("client went away during the SOCKS5 handshake: {e}"),
            ))
        }
        Err(_) => {
            return Err(fail(
                FailReason::Socks5,
                format!("no complete SOCKS5 request within {limit:?}"),
            ))
        }
    };
    let dst = match resolve(target).await {
        Ok(dst) => dst,
        Err(e) => {
            let _ = client
                .write_all(&socks5::reply(Reply::HostUnreachable, None))
                .await;
            return Err(fail(FailReason::UpstreamConnect, e.to_string()));
        }
    };
    info.dst.set(Some(dst));
    if shard.addrs.is_own(dst, None) {
        let _ = client
            .write_all(&socks5::reply(Reply::NotAllowed, None))
            .await;
        return Err(fail(
            FailReason::Loop,
            format!("SOCKS5 target {dst} is zpath itself"),
        ));
    }
    let upstream = match dial_route(shard, dst, info).await {
        Ok(u) => u,
        Err(f) => {
            let _ = client.write_all(&socks5::reply(f.reply, None)).await;
            return Err(f.failure);
        }
    };
    let mut upstream = match upstream {
        Upstream::Tcp(u) => u,
        Upstream::Hbone(stream) => {
            socks5_succeeded(&mut client, None).await?;
            return hbone::relay_client(shard, client, stream, &buf[early], info).await;
        }
    };
    socks5_succeeded(&mut client, upstream.local_addr().ok()).await?;
    if !early.is_empty() {
        // Data the client sent right after its request, before our answer: it is part
        // of the request bytes, counted like the relay counts them.
        let n = early.len() as u64;
        upstream.write_all(&buf[early]).await.map_err(|e| {
            fail(
                FailReason::Reset,
                format!("write to the server failed: {e}"),
            )
        })?;
        shard.stats.dir(Direction::Outbound).received_bytes.add(n);
        info.up.set(info.up.get() + n);
    }
    relay_pair(shard, client, upstream, info, Direction::Outbound).await
}

/// Tells the SOCKS5 client its CONNECT succeeded (bound to `bound`, when known).
async fn socks5_succeeded(
    client: &mut TcpStream,
    bound: Option<SocketAddr>,
) -> Result<(), Failure> {
    client
        .write_all(&socks5::reply(Reply::Succeeded, bound))
        .await
        .map_err(|e| {
            fail(
                FailReason::Socks5,
                format!("cannot answer the SOCKS5 client: {e}"),
            )
        })
}

enum HandshakeError {
    Protocol(Socks5Error),
    Io(io::Error),
}

/// Reads the greeting and request; returns the target and the range of `buf` holding
/// bytes the client sent after the request.
async fn socks5_handshake(
    client: &mut TcpStream,
    buf: &mut [u8],
) -> Result<(Target, std::ops::Range<usize>), HandshakeError> {
    let mut have = 0;
    let used = loop {
        if let Some(n) = socks5::parse_greeting(&buf[..have]).map_err(HandshakeError::Protocol)? {
            break n;
        }
        have += read_more(client, buf, have).await?;
    };
    client
        .write_all(&[5, 0])
        .await
        .map_err(HandshakeError::Io)?;
    buf.copy_within(used..have, 0);
    have -= used;
    loop {
        if let Some((target, n)) =
            socks5::parse_request(&buf[..have]).map_err(HandshakeError::Protocol)?
        {
            return Ok((target, n..have));
        }
        have += read_more(client, buf, have).await?;
    }
}

async fn read_more(
    client: &mut TcpStream,
    buf: &mut [u8],
    have: usize,
) -> Result<usize, HandshakeError> {
    if have == buf.len() {
        return Err(HandshakeError::Protocol(Socks5Error::Malformed(
            "request too long",
        )));
    }
    match client.read(&mut buf[have..]).await {
        Ok(0) => Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into())),
        Ok(n) => Ok(n),
        Err(e) => Err(HandshakeError::Io(e)),
    }
}

async fn resolve(target: Target) -> io::Result<SocketAddr> {
    match target {
        Target::Addr(a) => Ok(a),
        Target::Domain(name, port) => {
            let lookup = glommio::executor().spawn_blocking(move || {
                use std::net::ToSocketAddrs;
                (name.as_str(), port)
                    .to_socket_addrs()
                    .map(|mut it| it.next())
                    .map_err(|e| (name.clone(), e))
                    .and_then(|a| a.ok_or((name, io::ErrorKind::NotFound.into())))
            });
            lookup.await.map_err(|(name, e)| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("cannot resolve {name}: {e}"),
                )
            })
        }
    }
}

/// The original destination of a redirected connection, refused (RST) when it is one of
/// our own listeners: a connection made straight to a capture port would loop.
fn captured_destination(
    shard: &Shard,
    client: &TcpStream,
    info: &ConnInfo,
) -> Result<SocketAddr, Failure> {
    let local = client.local_addr().ok();
    let dst = original_dst(client, local)?;
    info.dst.set(Some(dst));
    if shard.addrs.is_own(dst, local) {
        client.abort();
        return Err(fail(
            FailReason::Loop,
            format!(
                "destination {dst} is one of zpath's own ports (was the connection redirected?)"
            ),
        ));
    }
    Ok(dst)
}

fn original_dst(client: &TcpStream, local: Option<SocketAddr>) -> Result<SocketAddr, Failure> {
    let Some(local) = local else {
        client.abort();
        return Err(fail(
            FailReason::NoOriginalDst,
            "socket has no local address",
        ));
    };
    sys::original_dst(client, local).map_err(|e| {
        client.abort();
        fail(FailReason::NoOriginalDst, format!("cannot read the original destination ({e}): was the connection redirected by iptables/nftables?"))
    })
}

/// A failed dial with the SOCKS5 reply that describes it.
struct DialFailure {
    failure: Failure,
    reply: Reply,
}

async fn dial_route(
    shard: &Rc<Shard>,
    dst: SocketAddr,
    info: &ConnInfo,
) -> Result<Upstream, DialFailure> {
    let snapshot = shard.snapshot();
    let route = snapshot.route(dst, shard.random());
    let target = match route {
        Route::Workload { workload, addr }
            if workload.protocol == zpath_control::model::TunnelProtocol::Hbone =>
        {
            drop(snapshot);
            info.dst.set(Some(addr));
            return hbone::open(shard, info, &workload, addr)
                .await
                .map(Upstream::Hbone)
                .map_err(|failure| DialFailure {
                    failure,
                    reply: Reply::GeneralFailure,
                });
        }
        Route::Passthrough(addr) | Route::Workload { addr, .. } => addr,
        Route::Waypoint {
            destination,
            waypoint,
        } => {
            let failure = fail(
                FailReason::WaypointUnsupported,
                format!(
                    "{destination} ({dst}) must be reached through its waypoint {waypoint}, \
                     which zpath does not support yet: refused"
                ),
            );
            return Err(DialFailure {
                failure,
                reply: Reply::NotAllowed,
            });
        }
        Route::NoEndpoint(svc) => {
            let failure = fail(
                FailReason::NoEndpoint,
                format!(
                    "service {svc} has no healthy endpoint for port {}",
                    dst.port()
                ),
            );
            return Err(DialFailure {
                failure,
                reply: Reply::HostUnreachable,
            });
        }
    };
    drop(snapshot);
    info.state.set(ConnState::Connecting);
    dial(shard, target).await.map(Upstream::Tcp).map_err(|e| {
        let reply = socks5::reply_for_io(&e);
        let failure = fail(
            FailReason::UpstreamConnect,
            format!("connect to {target} failed: {e}"),
        );
        DialFailure { failure, reply }
    })
}

/// Connects to the destination a policy decision permitted.
pub(crate) async fn dial_permitted(
    shard: &Shard,
    permit: zpath_policy::Permit,
) -> io::Result<TcpStream> {
    dial(shard, permit.destination()).await
}

/// Connects to `dst` with our packet mark, within the connect timeout.
pub async fn dial(shard: &Shard, dst: SocketAddr) -> io::Result<TcpStream> {
    dial_from(shard, dst, None)
        .await
        .map_err(sys::ConnectError::into_io)
}

/// As [`dial`], from `source` when given (see [`sys::start_connect_from`]: that
/// address or none, never silently another).
pub async fn dial_from(
    shard: &Shard,
    dst: SocketAddr,
    source: Option<std::net::IpAddr>,
) -> Result<TcpStream, sys::ConnectError> {
    let sock = sys::start_connect_from(dst, shard.cfg.packet_mark, source)?;
    let mut stream = sys::into_glommio_stream(sock);
    shard.set_keepalive(&stream);
    let limit = shard.cfg.connect_timeout;
    // A zero-length send completes when the connect does: it waits for writability
    // while the handshake is in flight and reports the connect error if it failed.
    let connected = glommio::timer::timeout(limit, async {
        stream.write(&[]).await?;
        Ok(())
    })
    .await;
    match connected {
        Ok(()) => {}
        Err(glommio::GlommioError::TimedOut(_)) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {limit:?}"),
            )
            .into())
        }
        Err(e) => return Err(io::Error::from(e).into()),
    }
    if let Some(e) = sys::take_error(&stream)? {
        return Err(e.into());
    }
    Ok(stream)
}

async fn relay_pair(
    shard: &Rc<Shard>,
    client: TcpStream,
    upstream: TcpStream,
    info: &ConnInfo,
    dir: Direction,
) -> Result<(), Failure> {
    info.fds.set([client.as_raw_fd(), upstream.as_raw_fd()]);
    info.state.set(ConnState::Relaying);
    let stats = shard.stats.dir(dir);
    let meters = Meters {
        up: &stats.received_bytes,
        down: &stats.sent_bytes,
        conn_up: &info.up,
        conn_down: &info.down,
    };
    let result = relay::relay(client, upstream, &shard.pool, meters).await;
    info.fds.set([-1, -1]);
    result
        .map(|_| ())
        .map_err(|e| fail(FailReason::Reset, e.to_string()))
}
