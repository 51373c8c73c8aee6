//! SOCKS5 entry (15080): the destination comes from the client's CONNECT request
//! ([`wire`] parses it); the connection is then planned and opened as a captured one.

pub(crate) mod wire;

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use zpath_uring::IoStream;

use super::{open, OpenFailed, Upstream};
use crate::failure::{fail, relay_failed, Failure};
use crate::relay::{self, Meters, Toward};
use crate::shard::table::ConnInfo;
use crate::shard::Shard;
use crate::stats::FailReason;
use wire::{Reply, Socks5Error, Target};

/// SOCKS5 entry: the destination comes from the CONNECT request.
pub(crate) async fn socks5(
    shard: &Rc<Shard>,
    mut client: IoStream,
    info: &ConnInfo,
) -> Result<(), Failure> {
    let mut buf = [0u8; wire::MAX_GREETING + wire::MAX_REQUEST];
    let limit = shard.cfg.socks5_handshake_timeout;
    let handshake =
        zpath_uring::time::timeout(limit, socks5_handshake(&mut client, &mut buf)).await;
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
                .write_all(&wire::reply(Reply::HostUnreachable, None))
                .await;
            return Err(fail(FailReason::UpstreamConnect, e.to_string()));
        }
    };
    info.dst.set(Some(dst));
    if shard.addrs.is_own(dst, None) {
        let _ = client
            .write_all(&wire::reply(Reply::NotAllowed, None))
            .await;
        return Err(fail(
            FailReason::Loop,
            format!("SOCKS5 target {dst} is zpath itself"),
        ));
    }
    let upstream = match Box::pin(open(shard, dst, info)).await {
        Ok(u) => u,
        Err(f) => {
            let _ = client.write_all(&wire::reply(reply_for(&f), None)).await;
            return Err(f.failure);
        }
    };
    let mut upstream = match upstream {
        Upstream::Tcp(u) => u,
        Upstream::Hbone(stream) => {
            socks5_succeeded(&mut client, None).await?;
            return Box::pin(super::hbone::relay_client(
                shard,
                client,
                stream,
                &buf[early],
                info,
            ))
            .await;
        }
    };
    socks5_succeeded(&mut client, upstream.local_addr().ok()).await?;
    if !early.is_empty() {
        // Data the client sent right after its request, before our answer: it is part
        // of the request bytes, counted like the relay counts them.
        upstream
            .write_all(&buf[early.clone()])
            .await
            .map_err(|e| relay_failed(e.kind(), format!("write to the server failed: {e}")))?;
        Meters::of(shard, info).count(Toward::Server, early.len());
    }
    relay::pair(shard, client, upstream, info).await
}

/// Tells the SOCKS5 client its CONNECT succeeded (bound to `bound`, when known).
async fn socks5_succeeded(client: &mut IoStream, bound: Option<SocketAddr>) -> Result<(), Failure> {
    client
        .write_all(&wire::reply(Reply::Succeeded, bound))
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
    client: &mut IoStream,
    buf: &mut [u8],
) -> Result<(Target, std::ops::Range<usize>), HandshakeError> {
    let mut have = 0;
    let used = loop {
        if let Some(n) = wire::parse_greeting(&buf[..have]).map_err(HandshakeError::Protocol)? {
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
            wire::parse_request(&buf[..have]).map_err(HandshakeError::Protocol)?
        {
            return Ok((target, n..have));
        }
        have += read_more(client, buf, have).await?;
    }
}

async fn read_more(
    client: &mut IoStream,
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
            let lookup = zpath_uring::unblock(move || {
                use std::net::ToSocketAddrs;
                (name.as_str(), port)
                    .to_socket_addrs()
                    .map(|mut it| it.next())
                    .map_err(|e| (name.clone(), e))
                    .and_then(|a| a.ok_or((name, io::ErrorKind::NotFound.into())))
            });
            let lookup = lookup.await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot start a name lookup: {e}"))
            })?;
            lookup.map_err(|(name, e)| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("cannot resolve {name}: {e}"),
                )
            })
        }
    }
}

/// The SOCKS5 reply that describes an outbound connection that could not be opened.
fn reply_for(failed: &OpenFailed) -> Reply {
    match (&failed.io, failed.failure.reason) {
        (Some(e), _) => wire::reply_for_io(e),
        (None, FailReason::WaypointUnsupported) => Reply::NotAllowed,
        (None, FailReason::NoEndpoint) => Reply::HostUnreachable,
        (None, _) => Reply::GeneralFailure,
    }
}
