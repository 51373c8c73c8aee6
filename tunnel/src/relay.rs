//! Relays one TCP connection over one HBONE stream.
//!
//! * Socket → stream: each read lands in a `BytesMut` whose filled part is frozen and
//!   handed to h2 as a DATA payload (no copy); h2 writes it and the TLS layer seals it
//!   into records. Buffers are recycled once h2 has dropped them, so a busy relay
//!   neither allocates nor clears memory per read. Reads follow the stream's send
//!   capacity (flow control), so nothing queues without bound.
//! * What h2 holds is bounded in payloads as well as bytes: a read that fills less than
//!   half its buffer is copied into a shared block (so a 1-byte read does not pin a
//!   whole buffer), and reading stops while h2 holds [`MAX_HELD`] payloads of the
//!   stream ([`crate::payload`]).
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

use crate::payload::{InFlight, Payload};

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

impl ReadSizes {
    /// The size of the read after one of `n` bytes into `want`: doubled after a full
    /// read, halved after one under half, within `min..=max`. Both relays (socket to
    /// socket, socket to tunnel) size their reads by this rule.
    pub fn next(&self, want: usize, n: usize) -> usize {
        if n >= want {
            (want * 2).min(self.max)
        } else if n * 2 < want {
            (want / 2).max(self.min)
        } else {
            want
        }
    }
}

impl Default for ReadSizes {
    fn default() -> Self {
        Self {
            min: 16 << 10,
            max: 256 << 10,
        }
    }
}

/// Where the bytes that come out of the tunnel go: a socket that takes each DATA
/// payload whole, so that one that can send owned memory (a ring socket) sends it from
/// h2's buffer without a copy.
pub trait PayloadWrite {
    /// Writes all of `data`; done once the bytes have left (so the stream's window is
    /// released only for bytes no longer held).
    fn write_payload(&mut self, data: Bytes) -> impl std::future::Future<Output = io::Result<()>>;
    /// Ends the write side (half-close).
    fn close_write(&mut self) -> impl std::future::Future<Output = io::Result<()>>;
}

/// Any `futures-io` writer as a [`PayloadWrite`], writing each payload by copy.
#[derive(Debug)]
pub struct Copying<W>(pub W);

impl<W: AsyncWrite + Unpin> PayloadWrite for Copying<W> {
    async fn write_payload(&mut self, data: Bytes) -> io::Result<()> {
        self.0.write_all(&data).await?;
        self.0.flush().await
    }

    async fn close_write(&mut self) -> io::Result<()> {
        self.0.close().await
    }
}

/// Relays until both directions have finished, or the first error. `meter` is told
/// every chunk moved. Returns the bytes moved into and out of the tunnel.
pub async fn relay<R, W>(
    reader: R,
    writer: W,
    send: SendStream<Payload>,
    recv: RecvStream,
    sizes: ReadSizes,
    meter: &dyn Fn(Way, usize),
) -> Result<(u64, u64), RelayError>
where
    R: AsyncRead + Unpin,
    W: PayloadWrite,
{
    let into = into_tunnel(reader, send, sizes, meter);
    let out = out_of_tunnel(recv, writer, meter);
    futures_lite::future::try_zip(into, out).await
}

/// Payloads of one stream h2 may hold before the relay stops reading (checked before
/// each read, whose parts may take it a little past). What a stream pins is then about
/// four times the bytes h2 queues for it (at most its send buffer), plus a spill block
/// or two and one read buffer, however the peer's windows and the socket's reads go.
pub const MAX_HELD: usize = 256;

/// Block that small reads are copied into, shared by the payloads cut from it.
const SPILL_BLOCK: usize = 16 << 10;

async fn into_tunnel<R: AsyncRead + Unpin>(
    mut reader: R,
    mut send: SendStream<Payload>,
    sizes: ReadSizes,
    meter: &dyn Fn(Way, usize),
) -> Result<u64, RelayError> {
    let mut chunker = Chunker::new(sizes);
    let in_flight = InFlight::new(MAX_HELD);
    let mut total = 0u64;
    loop {
        futures_lite::future::poll_fn(|cx| in_flight.poll_room(cx)).await;
        let buf = chunker.buffer();
        let n = match reader.read(buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                send.send_reset(Reason::CANCEL);
                return Err(RelayError::SocketRead(e));
            }
        };
        let mut chunk = chunker.filled(n);
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
            send.send_data(Payload::counted(part, &in_flight), false)
                .map_err(RelayError::Stream)?;
        }
        total += n as u64;
        meter(Way::IntoTunnel, n);
    }
    send.send_data(Payload::new(Bytes::new()), true)
        .map_err(RelayError::Stream)?;
    Ok(total)
}

/// Turns socket reads into DATA payloads whose memory is a small multiple of their
/// bytes: a read that fills at least half its buffer (of at most twice the read size,
/// so at most four times the read) is handed over as it is (no copy); a smaller one is
/// copied into a shared block, whose payloads keep it alive together, and its buffer is
/// read into again. The read size doubles after a full read and halves after one under
/// half, within [`ReadSizes`].
struct Chunker {
    sizes: ReadSizes,
    want: usize,
    /// The buffer of the next read.
    buf: BytesMut,
    recycler: Recycler,
    /// What is left of the block small reads are copied into.
    spill: BytesMut,
}

impl Chunker {
    fn new(sizes: ReadSizes) -> Self {
        let min = sizes.min.max(1);
        let sizes = ReadSizes {
            min,
            max: sizes.max.max(min),
        };
        Self {
            sizes,
            want: min,
            buf: BytesMut::new(),
            recycler: Recycler::default(),
            spill: BytesMut::new(),
        }
    }

    /// The buffer to read into: `want` initialized bytes.
    fn buffer(&mut self) -> &mut [u8] {
        if self.buf.len() != self.want {
            self.buf = self.recycler.take(self.want);
        }
        &mut self.buf
    }

    /// The payload of a read of `n` bytes into [`Chunker::buffer`].
    fn filled(&mut self, n: usize) -> Bytes {
        let want = self.want;
        self.want = self.sizes.next(want, n);
        if n * 2 >= want {
            // h2 gets the filled part; the recycler keeps the whole buffer, so taking it
            // back clears nothing (its bytes are initialized already).
            let whole = std::mem::take(&mut self.buf).freeze();
            let chunk = whole.slice(..n);
            self.recycler.keep(whole);
            return chunk;
        }
        if self.spill.capacity() < n {
            // Reclaims the block in place once every payload cut from it is gone.
            self.spill.reserve(n.max(SPILL_BLOCK));
        }
        self.spill.extend_from_slice(&self.buf[..n]);
        self.spill.split().freeze()
    }
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
    /// grows) and no more than twice that large, else a new one.
    fn take(&mut self, len: usize) -> BytesMut {
        for i in 0..self.in_flight.len() {
            if !self.in_flight[i].is_unique() {
                continue;
            }
            let Some(free) = self.in_flight.remove(i) else {
                break;
            };
            match free.try_into_mut() {
                // At most twice the read size: a payload of at least half of it then
                // pins at most four times its length.
                Ok(mut buf) if (len..=2 * len).contains(&buf.capacity()) => {
                    buf.resize(len, 0);
                    return buf;
                }
                // Too small for the grown read size, or too large for the shrunk one:
                // let it go.
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

async fn out_of_tunnel<W: PayloadWrite>(
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
        let n = data.len();
        writer
            .write_payload(data)
            .await
            .map_err(RelayError::SocketWrite)?;
        // Only now may the peer send more: memory stays bounded by the window.
        let _ = recv.flow_control().release_capacity(n);
        total += n as u64;
        meter(Way::OutOfTunnel, n);
    }
    match writer.close_write().await {
        Ok(()) => Ok(total),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(total),
        Err(e) => Err(RelayError::SocketWrite(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: ReadSizes = ReadSizes {
        min: 1024,
        max: 8192,
    };

    /// Reads `data` into the chunker's buffer as a socket read would.
    fn read(chunker: &mut Chunker, data: &[u8]) -> Bytes {
        let buf = chunker.buffer();
        buf[..data.len()].copy_from_slice(data);
        chunker.filled(data.len())
    }

    #[test]
    fn small_reads_are_copied_into_one_shared_block_and_reuse_the_read_buffer() {
        let mut chunker = Chunker::new(SIZES);
        let buf_ptr = chunker.buffer().as_ptr();
        let payloads: Vec<Bytes> = (0..100u8).map(|i| read(&mut chunker, &[i; 3])).collect();
        for (i, p) in payloads.iter().enumerate() {
            assert_eq!(&p[..], &[i as u8; 3]);
            // Cut one after the other from the same block, not from the read buffer.
            assert_ne!(p.as_ptr(), buf_ptr);
            if i > 0 {
                assert_eq!(p.as_ptr(), payloads[i - 1].as_ptr().wrapping_add(3));
            }
        }
        assert_eq!(
            chunker.buffer().as_ptr(),
            buf_ptr,
            "the read buffer is read into again"
        );
    }

    #[test]
    fn a_read_of_at_least_half_the_buffer_is_handed_over_without_a_copy() {
        let mut chunker = Chunker::new(SIZES);
        let buf_ptr = chunker.buffer().as_ptr();
        let p = read(&mut chunker, &[9; 512]);
        assert_eq!(p.as_ptr(), buf_ptr);
        assert_eq!(p.len(), 512);
        // That buffer is h2's now: the next read goes elsewhere.
        assert_ne!(chunker.buffer().as_ptr(), buf_ptr);
    }

    #[test]
    fn the_read_size_doubles_on_full_reads_and_halves_on_small_ones_within_bounds() {
        let mut chunker = Chunker::new(SIZES);
        let mut sizes = Vec::new();
        for _ in 0..5 {
            let n = chunker.buffer().len();
            sizes.push(n);
            read(&mut chunker, &vec![1; n]);
        }
        assert_eq!(sizes, [1024, 2048, 4096, 8192, 8192]);
        let mut sizes = Vec::new();
        for _ in 0..5 {
            sizes.push(chunker.buffer().len());
            read(&mut chunker, b"x");
        }
        assert_eq!(sizes, [8192, 4096, 2048, 1024, 1024]);
    }

    #[test]
    fn a_recycled_buffer_is_at_most_twice_the_read_size() {
        let mut recycler = Recycler::default();
        recycler.keep(BytesMut::zeroed(8192).freeze());
        // h2 dropped it (the recycler holds the only handle), but it is too large.
        assert_eq!(recycler.take(1024).capacity(), 1024);
        recycler.keep(BytesMut::zeroed(2048).freeze());
        let again = recycler.take(1024);
        assert_eq!((again.len(), again.capacity()), (1024, 2048));
    }
}
