//! Relays one TCP connection over one HBONE stream.
//!
//! * Socket → stream: each read lands in a `BytesMut` whose filled part is frozen and
//!   handed to h2 as a DATA payload (no copy); h2 writes it and the TLS layer seals it
//!   into records. Buffers are recycled once h2 has dropped them, so a busy relay
//!   neither allocates nor clears memory per read. Reads follow the stream's send
//!   capacity (flow control), so nothing queues without bound.
//! * Stream → socket: each DATA payload is written to the socket from h2's own buffer
//!   (no copy), and its window released only after the write, so a slow reader slows
//!   the sender instead of growing our memory.
//! * EOF from the socket → END_STREAM; END_STREAM → FIN (write shutdown) on the socket.
//!   A socket error resets the stream (RST_STREAM CANCEL); a stream reset or a broken
//!   connection is returned as an error, on which the caller resets the socket.

use std::io;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use h2::{Reason, RecvStream, SendStream};

/// Which way bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// From the local socket into the tunnel.
    IntoTunnel,
    /// From the tunnel to the local socket.
    OutOfTunnel,
}

/// Why a tunnelled relay ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading the local socket failed (usually: it was reset).
    #[error("read from the local socket failed: {0}")]
    SocketRead(io::Error),
    /// Writing the local socket failed.
    #[error("write to the local socket failed: {0}")]
    SocketWrite(io::Error),
    /// The stream was reset by the peer, or its connection broke.
    #[error("the tunnel stream failed: {0}")]
    Stream(h2::Error),
}

/// Read sizes of the socket side: start small, grow on full reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSizes {
    /// First read size.
    pub min: usize,
    /// Largest read size.
    pub max: usize,
}

impl Default for ReadSizes {
    fn default() -> Self {
        Self {
            min: 16 << 10,
            max: 256 << 10,
        }
    }
}

/// Relays until both directions have finished, or the first error. `meter` is told
/// every chunk moved. Returns the bytes moved into and out of the tunnel.
pub async fn relay<R, W>(
    reader: R,
    writer: W,
    send: SendStream<Bytes>,
    recv: RecvStream,
    sizes: ReadSizes,
    meter: &dyn Fn(Way, usize),
) -> Result<(u64, u64), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let into = into_tunnel(reader, send, sizes, meter);
    let out = out_of_tunnel(recv, writer, meter);
    futures_lite::future::try_zip(into, out).await
}

async fn into_tunnel<R: AsyncRead + Unpin>(
    mut reader: R,
    mut send: SendStream<Bytes>,
    sizes: ReadSizes,
    meter: &dyn Fn(Way, usize),
) -> Result<u64, RelayError> {
    let mut recycler = Recycler::default();
    let mut want = sizes.min.max(1);
    let mut total = 0u64;
    loop {
        let mut buf = recycler.take(want);
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                send.send_reset(Reason::CANCEL);
                return Err(RelayError::SocketRead(e));
            }
        };
        // h2 gets the filled part; the recycler keeps the whole buffer, so taking it
        // back clears nothing (its bytes are initialized already).
        let whole = buf.freeze();
        let mut chunk = whole.slice(..n);
        recycler.keep(whole);
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = match futures_lite::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(c)) => c,
                Some(Err(e)) => return Err(RelayError::Stream(e)),
                None => return Err(RelayError::Stream(h2::Error::from(Reason::CANCEL))),
            };
            if granted == 0 {
                continue;
            }
            let part = chunk.split_to(granted.min(chunk.len()));
            send.send_data(part, false).map_err(RelayError::Stream)?;
        }
        total += n as u64;
        meter(Way::IntoTunnel, n);
        want = if n == want {
            (want * 2).min(sizes.max)
        } else {
            want
        };
    }
    send.send_data(Bytes::new(), true)
        .map_err(RelayError::Stream)?;
    Ok(total)
}

/// Buffers handed to h2, taken back once h2 has dropped its references.
#[derive(Default)]
struct Recycler {
    in_flight: std::collections::VecDeque<Bytes>,
}

impl Recycler {
    /// Buffers remembered at most (h2 queues up to its send buffer of them); older ones
    /// are left for h2 to free.
    const KEEP: usize = 32;

    /// A buffer of `len` initialized bytes: one h2 is done with (cleared only where it
    /// grows), else a new one.
    fn take(&mut self, len: usize) -> BytesMut {
        for i in 0..self.in_flight.len() {
            if !self.in_flight[i].is_unique() {
                continue;
            }
            let Some(free) = self.in_flight.remove(i) else {
                break;
            };
            match free.try_into_mut() {
                Ok(mut buf) if buf.capacity() >= len => {
                    buf.resize(len, 0);
                    return buf;
                }
                // Too small for the grown read size: let it go.
                Ok(_) => {}
                Err(still_used) => self.in_flight.push_back(still_used),
            }
            break;
        }
        BytesMut::zeroed(len)
    }

    /// Remembers a buffer given to h2.
    fn keep(&mut self, whole: Bytes) {
        if self.in_flight.len() == Self::KEEP {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back(whole);
    }
}

async fn out_of_tunnel<W: AsyncWrite + Unpin>(
    mut recv: RecvStream,
    mut writer: W,
    meter: &dyn Fn(Way, usize),
) -> Result<u64, RelayError> {
    let mut total = 0u64;
    while let Some(data) = recv.data().await {
        let data = match data {
            Ok(d) => d,
            // A reset with NO_ERROR ends the stream cleanly (the peer is done and needs
            // nothing more from us): a FIN, not a reset, for the local socket.
            Err(e) if e.reason() == Some(Reason::NO_ERROR) => break,
            Err(e) => return Err(RelayError::Stream(e)),
        };
        writer
            .write_all(&data)
            .await
            .map_err(RelayError::SocketWrite)?;
        let n = data.len();
        // Only now may the peer send more: memory stays bounded by the window.
        let _ = recv.flow_control().release_capacity(n);
        total += n as u64;
        meter(Way::OutOfTunnel, n);
    }
    match writer.close().await {
        Ok(()) => Ok(total),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(total),
        Err(e) => Err(RelayError::SocketWrite(e)),
    }
}
