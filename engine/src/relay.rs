//! The bidirectional relay between two byte streams of one shard.
//!
//! Each direction reads into its own [`RelayBuf`] and writes what it read; bytes are
//! copied only by the kernel (socket read into the buffer, write out of it).
//! * FIN one way (read returns 0) shuts down the write side of the other stream and
//!   keeps the opposite direction running (half-close).
//! * An error either way (a reset, a failed write) aborts both streams with RST.
//! * The relay waits on the streams' readiness; it never polls in a loop.

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::buffers::{BufPool, RelayBuf};
use crate::stats::Counter;

/// A stream the relay can abort with a reset.
pub trait Abort {
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
pub struct Transferred {
    /// Client → server bytes.
    pub up: u64,
    /// Server → client bytes.
    pub down: u64,
}

/// Why a relay ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
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

/// Where one relay counts its bytes: the shard's counters and the table entry's cells.
#[derive(Debug, Clone, Copy)]
pub struct Meters<'a> {
    /// Shard counter for client → server bytes.
    pub up: &'a Counter,
    /// Shard counter for server → client bytes.
    pub down: &'a Counter,
    /// The connection's own client → server count.
    pub conn_up: &'a Cell<u64>,
    /// The connection's own server → client count.
    pub conn_down: &'a Cell<u64>,
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
pub async fn relay<C, S>(
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
        meters.up,
        meters.conn_up,
    );
    let down = one_way(
        server.clone(),
        client.clone(),
        ("server", "client"),
        RelayBuf::new(pool),
        meters.down,
        meters.conn_down,
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
    counter: &Counter,
    conn: &Cell<u64>,
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
        counter.add(n as u64);
        conn.set(conn.get() + n as u64);
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
