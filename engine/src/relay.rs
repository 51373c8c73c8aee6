//! The relays of a shard's connections: [`pair`] between two sockets (passthrough,
//! captured inbound), [`tunnelled`] between a socket and an HBONE stream (both sides of
//! HBONE). Both count every byte through [`Meters`] and reset the local socket on
//! failure.
//!
//! Between two sockets, each direction reads into its own [`RelayBuf`] and writes what it read; bytes are
//! copied only by the kernel (socket read into the buffer, write out of it).
//! * FIN one way (read returns 0) shuts down the write side of the other stream and
//!   keeps the opposite direction running (half-close).
//! * An error either way (a reset, a failed write) aborts both streams with RST.
//! * The relay waits on the streams' readiness; it never polls in a loop.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use zpath_tunnel::relay::{RelayError as TunnelError, Way};
use zpath_tunnel::Payload;

use crate::failure::{relay_failed, Failure};
use crate::shard::buffers::{BufPool, RelayBuf};
use crate::shard::table::{ConnInfo, ConnState};
use crate::shard::Shard;
use crate::stats::{Direction, DirectionStats};
use crate::traffic::TrafficCounters;

/// A stream the relay can abort with a reset.
pub(crate) trait Abort {
    /// Makes the next close send RST (best effort).
    fn abort(&self);
}

impl Abort for glommio::net::TcpStream {
    fn abort(&self) {
        let _ = crate::sys::set_reset_on_close(self);
    }
}

/// Byte counts of one finished relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Transferred {
    /// Client → server bytes.
    pub up: u64,
    /// Server → client bytes.
    pub down: u64,
}

/// Why a relay ended abnormally.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    /// Reading from one side failed (usually: that peer reset the connection).
    #[error("read from the {side} failed: {source}")]
    Read {
        /// "client" or "server".
        side: &'static str,
        /// The socket error.
        source: io::Error,
    },
    /// Writing to one side failed.
    #[error("write to the {side} failed: {source}")]
    Write {
        /// "client" or "server".
        side: &'static str,
        /// The socket error.
        source: io::Error,
    },
}

/// Which way bytes go, in Istio's terms: toward the server they are "received", toward
/// the client "sent", whichever side of the mesh we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Toward {
    /// Client → server.
    Server,
    /// Server → client.
    Client,
}

/// Where a connection counts its bytes: the shard's counters of its direction and the
/// table entry's own counts. Every byte a flow moves (relayed, or sent ahead of the
/// relay) is counted here.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meters<'a> {
    stats: &'a DirectionStats,
    info: &'a ConnInfo,
    traffic: Option<&'a TrafficCounters>,
}

impl<'a> Meters<'a> {
    /// The meters of the table entry `info` on `shard`.
    pub(crate) fn of(shard: &'a Shard, info: &'a ConnInfo) -> Self {
        Meters {
            stats: shard.stats.dir(info.direction),
            info,
            traffic: info.traffic.get().map(|t| &***t),
        }
    }

    /// Counts `n` bytes moved `toward` one end.
    pub(crate) fn count(&self, toward: Toward, n: usize) {
        let n = n as u64;
        let (counter, cell) = match toward {
            Toward::Server => (&self.stats.received_bytes, &self.info.up),
            Toward::Client => (&self.stats.sent_bytes, &self.info.down),
        };
        counter.add(n);
        cell.set(cell.get() + n);
        if let Some(t) = self.traffic {
            match toward {
                Toward::Server => t.received.add(n),
                Toward::Client => t.sent.add(n),
            }
        }
    }
}

/// One stream shared by the two directions of a relay. Both run on the same thread and
/// borrow the stream only inside a single poll call, so the borrows never overlap.
pub(crate) struct Shared<S>(pub(crate) Rc<RefCell<S>>);

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Shared<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Shared<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// Relays between `client` and `server` until both directions finished, or aborts both
/// with RST on the first error. Consumes the streams: they are closed on return.
pub(crate) async fn relay<C, S>(
    client: C,
    server: S,
    pool: &Rc<BufPool>,
    meters: Meters<'_>,
) -> Result<Transferred, RelayError>
where
    C: AsyncRead + AsyncWrite + Abort + Unpin,
    S: AsyncRead + AsyncWrite + Abort + Unpin,
{
    let client = Shared(Rc::new(RefCell::new(client)));
    let server = Shared(Rc::new(RefCell::new(server)));
    let up = one_way(
        client.clone(),
        server.clone(),
        ("client", "server"),
        RelayBuf::new(pool),
        (meters, Toward::Server),
    );
    let down = one_way(
        server.clone(),
        client.clone(),
        ("server", "client"),
        RelayBuf::new(pool),
        (meters, Toward::Client),
    );
    match futures_lite::future::try_zip(up, down).await {
        Ok((up, down)) => Ok(Transferred { up, down }),
        Err(e) => {
            client.0.borrow().abort();
            server.0.borrow().abort();
            Err(e)
        }
    }
}

async fn one_way<R, W>(
    mut from: Shared<R>,
    mut to: Shared<W>,
    (from_name, to_name): (&'static str, &'static str),
    mut buf: RelayBuf,
    (meters, toward): (Meters<'_>, Toward),
) -> Result<u64, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    loop {
        let n = match from.read(buf.space()).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(RelayError::Read {
                    side: from_name,
                    source,
                })
            }
        };
        to.write_all(buf.filled(n))
            .await
            .map_err(|source| RelayError::Write {
                side: to_name,
                source,
            })?;
        total += n as u64;
        meters.count(toward, n);
        buf.adapt(n);
    }
    // Half-close: pass the FIN on, keep the other direction running.
    match to.close().await {
        Ok(()) => Ok(total),
        // The other side is already fully gone; nothing left to tell it.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(total),
        Err(source) => Err(RelayError::Write {
            side: to_name,
            source,
        }),
    }
}

/// Relays the connection `info` between `client` and `upstream` (two sockets) until
/// both directions finished, or resets both on the first error.
pub(crate) async fn pair(
    shard: &Shard,
    client: TcpStream,
    upstream: TcpStream,
    info: &ConnInfo,
) -> Result<(), Failure> {
    info.fds.set([client.as_raw_fd(), upstream.as_raw_fd()]);
    info.state.set(ConnState::Relaying);
    crate::access::opened(|| shard.snapshot(), info);
    let result = relay(client, upstream, &shard.pool, Meters::of(shard, info)).await;
    info.fds.set([-1, -1]);
    result.map(|_| ()).map_err(|e| {
        let kind = match &e {
            RelayError::Read { source, .. } | RelayError::Write { source, .. } => source.kind(),
        };
        relay_failed(kind, e.to_string())
    })
}

/// Relays the connection `info` between the local `socket` and an open HBONE stream
/// (`send`, `recv`); resets the socket on any failure.
pub(crate) async fn tunnelled(
    shard: &Shard,
    socket: TcpStream,
    send: h2::SendStream<Payload>,
    recv: h2::RecvStream,
    info: &ConnInfo,
) -> Result<(), Failure> {
    info.fds.set([socket.as_raw_fd(), -1]);
    info.state.set(ConnState::Relaying);
    crate::access::opened(|| shard.snapshot(), info);
    let meters = Meters::of(shard, info);
    let outbound = info.direction == Direction::Outbound;
    let meter = |way: Way, n: usize| {
        // Into the tunnel is toward the server on the client's node, toward the client
        // on the server's.
        let toward = match (way == Way::IntoTunnel) == outbound {
            true => Toward::Server,
            false => Toward::Client,
        };
        meters.count(toward, n);
    };
    let socket = Shared(Rc::new(RefCell::new(socket)));
    // The first read of a stream is --buffer-min bytes, as passthrough's: an idle
    // stream holds only that much; bulk doubles it up to --buffer-max.
    let sizes = shard.pool.sizes();
    let result =
        zpath_tunnel::relay::relay(socket.clone(), socket.clone(), send, recv, sizes, &meter).await;
    info.fds.set([-1, -1]);
    result.map(|_| ()).map_err(|e| {
        socket.0.borrow().abort();
        let kind = match &e {
            TunnelError::SocketRead(e) | TunnelError::SocketWrite(e) => e.kind(),
            // A stream error is not the local peer closing.
            TunnelError::Stream(_) => io::ErrorKind::Other,
        };
        relay_failed(kind, e.to_string())
    })
}
