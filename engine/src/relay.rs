//! The relays of a shard's connections: [`pair`] between two sockets (passthrough,
//! captured inbound), [`tunnelled`] between a socket and an HBONE stream (both sides of
//! HBONE). Both count every byte through [`Meters`] and reset the local socket on
//! failure.
//!
//! Between two sockets each direction is one multishot receive into the shard's
//! provided-buffer ring, and every received buffer is sent on as it is: the kernel's
//! copies only, and an idle connection holds no buffer.
//! * FIN one way (end of stream) shuts down the write side of the other socket and
//!   keeps the opposite direction running (half-close).
//! * An error either way (a reset, a failed send) aborts both sockets with RST.
//! * The relay waits on completions; it never polls in a loop.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use zpath_tunnel::relay::{RelayError as TunnelError, Way};
use zpath_tunnel::Payload;
use zpath_uring::relay::{copy_counted, CopyError};
use zpath_uring::{IoStream, TcpStream};

use crate::failure::{relay_failed, Failure};
use crate::shard::table::{ConnInfo, ConnState};
use crate::shard::Shard;
use crate::stats::{Direction, DirectionStats};
use crate::traffic::TrafficCounters;

/// A stream the relay can abort with a reset.
pub(crate) trait Abort {
    /// Makes the next close send RST (best effort).
    fn abort(&self);
}

impl Abort for TcpStream {
    fn abort(&self) {
        let _ = self.set_reset_on_close();
    }
}

impl Abort for IoStream {
    fn abort(&self) {
        let _ = self.set_reset_on_close();
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

/// Relays the connection `info` between `client` and `upstream` (two sockets) until
/// both directions finished, or resets both on the first error.
pub(crate) async fn pair(
    shard: &Shard,
    client: IoStream,
    upstream: IoStream,
    info: &ConnInfo,
) -> Result<(), Failure> {
    info.fds.set([client.as_raw_fd(), upstream.as_raw_fd()]);
    info.state.set(ConnState::Relaying);
    crate::access::opened(|| shard.snapshot(), info);
    // Boxed: only this relay's own state stays allocated while the connection lives.
    let result = Box::pin(relay_pair(client, upstream, Meters::of(shard, info))).await;
    info.fds.set([-1, -1]);
    result.map(|_| ()).map_err(|e| {
        let kind = match &e {
            RelayError::Read { source, .. } | RelayError::Write { source, .. } => source.kind(),
        };
        relay_failed(kind, e.to_string())
    })
}

/// Both directions of [`pair`], in one task: a failure either way drops the other
/// direction (its receive and send are cancelled) and resets both sockets.
async fn relay_pair(
    client: IoStream,
    upstream: IoStream,
    meters: Meters<'_>,
) -> Result<Transferred, RelayError> {
    let split = |e| RelayError::Read {
        side: "client",
        source: e,
    };
    let (client, mut client_rx, client_unread) = client.into_parts().await.map_err(split)?;
    let (server, mut server_rx, server_unread) =
        upstream
            .into_parts()
            .await
            .map_err(|source| RelayError::Read {
                side: "server",
                source,
            })?;
    let named = |from: &'static str, to: &'static str| {
        move |e: CopyError| match e {
            CopyError::Recv(source) => RelayError::Read { side: from, source },
            CopyError::Send(source) => RelayError::Write { side: to, source },
        }
    };
    let up = async {
        copy_counted(&mut client_rx, client_unread, &server, |n| {
            meters.count(Toward::Server, n)
        })
        .await
        .map_err(named("client", "server"))
    };
    let down = async {
        copy_counted(&mut server_rx, server_unread, &client, |n| {
            meters.count(Toward::Client, n)
        })
        .await
        .map_err(named("server", "client"))
    };
    match futures_lite::future::try_zip(up, down).await {
        Ok((up, down)) => Ok(Transferred { up, down }),
        Err(e) => {
            client.abort();
            server.abort();
            Err(e)
        }
    }
}

/// The socket side of an HBONE relay that payloads out of the tunnel go to: each is
/// sent from h2's buffer as it is, borrowing the shared stream only within a poll.
struct SocketOut(Shared<IoStream>);

impl zpath_tunnel::relay::PayloadWrite for SocketOut {
    async fn write_payload(&mut self, data: bytes::Bytes) -> io::Result<()> {
        let mut data = Some(data);
        std::future::poll_fn(|cx| self.0 .0.borrow_mut().poll_write_bytes(cx, &mut data)).await
    }

    async fn close_write(&mut self) -> io::Result<()> {
        futures_lite::AsyncWriteExt::close(&mut self.0).await
    }
}

/// Relays the connection `info` between the local `socket` and an open HBONE stream
/// (`send`, `recv`); resets the socket on any failure.
pub(crate) async fn tunnelled(
    shard: &Shard,
    socket: IoStream,
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
    let sizes = shard.cfg.buffers.sizes();
    let result = Box::pin(zpath_tunnel::relay::relay(
        socket.clone(),
        SocketOut(socket.clone()),
        send,
        recv,
        sizes,
        &meter,
    ))
    .await;
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
