//! A ring connection as an async byte stream, for protocol code written against the
//! usual I/O traits: tokio's `AsyncRead` / `AsyncWrite` (h2) and `futures-io`'s
//! `AsyncRead` / `AsyncBufRead` / `AsyncWrite` (TLS streams, relays), without a tokio
//! runtime.
//!
//! Reads copy out of the provided buffer (which goes back to the ring at once when
//! drained). Writes are write-behind: `poll_write` copies into the connection's one send
//! buffer (reused, at most `WRITE_CAP` bytes) and submits it; the next write, flush or
//! shutdown waits for that send. One send is in flight at a time, which keeps the byte
//! order on the socket without linking SQEs.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::buf::BufRef;
use crate::net::{RecvStream, TcpStream};
use crate::op::{check, Op};
use crate::sys::IoBuf;

/// Most bytes one `poll_write` takes.
const WRITE_CAP: usize = 64 * 1024;

enum WriteState {
    Idle(Vec<u8>),
    /// A send from the copy buffer.
    Sending(Op<(Vec<u8>, usize)>),
    /// A send of a caller's payload as it is, with the copy buffer kept for later.
    SendingBytes(Op<(Bytes, usize)>, Vec<u8>),
    ShuttingDown(Op<()>),
    Done,
}

/// Longest a send still in flight when its stream is dropped may take to finish.
const DROP_LINGER: Duration = Duration::from_secs(1);

/// The write side: one send at a time. Dropped with a send in flight, it lets that
/// send finish (within `DROP_LINGER`) instead of cancelling it, so that bytes a caller
/// wrote just before dropping the stream (a refusal, a last reply) still leave, as they
/// would from a blocking write; unless the socket was set to reset on close (an
/// abort), whose send is cancelled so the reset goes out now.
struct Writer {
    state: WriteState,
    stream: TcpStream,
}

impl Drop for Writer {
    fn drop(&mut self) {
        let state = std::mem::replace(&mut self.state, WriteState::Done);
        if !matches!(state, WriteState::Sending(_) | WriteState::SendingBytes(..))
            || self.stream.resets_on_close()
        {
            // Nothing in flight, or an abort: a send in flight is cancelled here.
            return;
        }
        let stream = self.stream.clone();
        match state {
            WriteState::Sending(op) => drop(crate::runtime::spawn_local(finish_send(stream, op))),
            WriteState::SendingBytes(op, _) => {
                drop(crate::runtime::spawn_local(finish_send(stream, op)))
            }
            _ => {}
        }
    }
}

/// Waits for `op` and sends what it left, within `DROP_LINGER`; the socket closes when
/// this returns (it holds the last handle).
async fn finish_send<B: IoBuf>(stream: TcpStream, op: Op<(B, usize)>) {
    let rest = async move {
        let (mut res, (mut buf, mut offset)) = op.await;
        while let Ok(n @ 1..) = check(res) {
            offset += n;
            if offset >= buf.len() {
                return;
            }
            (res, (buf, offset)) = match stream.send_op(buf, offset) {
                Ok(op) => op.await,
                Err(_) => return,
            };
        }
    };
    let _ = crate::time::timeout(DROP_LINGER, rest).await;
}

/// A [`TcpStream`] as an I/O object of both trait families.
pub struct IoStream {
    stream: TcpStream,
    recv: RecvStream,
    partial: Option<(BufRef, usize)>,
    write: Writer,
}

impl IoStream {
    /// Wraps a connection.
    pub fn new(stream: TcpStream) -> io::Result<IoStream> {
        let recv = stream.recv_stream()?;
        Ok(IoStream {
            write: Writer {
                state: WriteState::Idle(Vec::new()),
                stream: stream.clone(),
            },
            stream,
            recv,
            partial: None,
        })
    }

    /// The connection underneath.
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }

    /// Splits the stream for a relay that sends received buffers on as they are: the
    /// connection, its receiver (with whatever it has queued) and the bytes already
    /// received but not read, after the send in flight (if any) has gone.
    pub async fn into_parts(mut self) -> io::Result<(TcpStream, RecvStream, Vec<u8>)> {
        std::future::poll_fn(|cx| self.poll_idle(cx)).await?;
        let unread = match self.partial.take() {
            Some((buf, offset)) => buf[offset..].to_vec(),
            None => Vec::new(),
        };
        Ok((self.stream, self.recv, unread))
    }

    /// Sends `data` as it is (no copy), after the send in flight, and waits until it
    /// has gone: `data` is taken on the first poll, later polls wait for the send.
    pub fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Option<Bytes>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_idle(cx))?;
        if let Some(data) = data.take().filter(|d| !d.is_empty()) {
            let spare = self.take_send_buffer()?;
            self.submit_bytes(data, 0, spare)?;
            ready!(self.poll_idle(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn submit_bytes(&mut self, data: Bytes, offset: usize, spare: Vec<u8>) -> io::Result<()> {
        match self.stream.send_op(data, offset) {
            Ok(op) => {
                self.write.state = WriteState::SendingBytes(op, spare);
                Ok(())
            }
            Err((e, _)) => {
                self.write.state = WriteState::Idle(spare);
                Err(e)
            }
        }
    }

    /// Waits until no send is in flight.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let WriteState::SendingBytes(op, _) = &mut self.write.state {
                let (res, (data, offset)) = ready!(Pin::new(op).poll(cx));
                let spare = match std::mem::replace(&mut self.write.state, WriteState::Done) {
                    WriteState::SendingBytes(_, spare) => spare,
                    _ => Vec::new(),
                };
                match check(res) {
                    Ok(n) if n > 0 && offset + n < data.len() => {
                        self.submit_bytes(data, offset + n, spare)?;
                    }
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(_) => self.write.state = WriteState::Idle(spare),
                    Err(e) => return Poll::Ready(Err(e)),
                }
                continue;
            }
            let WriteState::Sending(op) = &mut self.write.state else {
                return Poll::Ready(Ok(()));
            };
            let (res, (buf, offset)) = ready!(Pin::new(op).poll(cx));
            match check(res) {
                Ok(n) if n > 0 && offset + n < buf.len() => {
                    self.submit(buf, offset + n)?;
                }
                Ok(0) if !buf.is_empty() => {
                    self.write.state = WriteState::Done;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(_) => {
                    let mut buf = buf;
                    buf.clear();
                    self.write.state = WriteState::Idle(buf);
                }
                Err(e) => {
                    self.write.state = WriteState::Done;
                    return Poll::Ready(Err(e));
                }
            }
        }
    }

    fn submit(&mut self, buf: Vec<u8>, offset: usize) -> io::Result<()> {
        match self.stream.send_op(buf, offset) {
            Ok(op) => {
                self.write.state = WriteState::Sending(op);
                Ok(())
            }
            Err((e, (buf, _))) => {
                self.write.state = WriteState::Idle(buf);
                Err(e)
            }
        }
    }

    /// Received bytes not yet taken, waiting for some when none are; empty at end of
    /// stream.
    fn poll_filled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        if self.partial.is_none() {
            match ready!(self.recv.poll_recv(cx))? {
                Some(buf) => self.partial = Some((buf, 0)),
                None => return Poll::Ready(Ok(&[])),
            }
        }
        match &self.partial {
            Some((buf, offset)) => Poll::Ready(Ok(&buf[*offset..])),
            None => Poll::Ready(Ok(&[])),
        }
    }

    /// Marks `n` received bytes as taken; a drained buffer goes back to the ring now.
    fn consume_filled(&mut self, n: usize) {
        if let Some((buf, offset)) = &mut self.partial {
            *offset = (*offset + n).min(buf.len());
            if *offset == buf.len() {
                self.partial = None;
            }
        }
    }

    /// Copies received bytes into `out`; 0 at end of stream (or for an empty `out`).
    fn poll_read_into(&mut self, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        if out.is_empty() {
            // Nothing to fill: taking a buffer now would report end of stream.
            return Poll::Ready(Ok(0));
        }
        let filled = ready!(self.poll_filled(cx))?;
        let n = filled.len().min(out.len());
        out[..n].copy_from_slice(&filled[..n]);
        self.consume_filled(n);
        Poll::Ready(Ok(n))
    }

    /// Copies `slices` into the send buffer and submits it (write-behind).
    fn poll_write_slices(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_idle(cx))?;
        let mut buf = self.take_send_buffer()?;
        for slice in slices {
            let room = WRITE_CAP - buf.len();
            if room == 0 {
                break;
            }
            buf.extend_from_slice(&slice[..slice.len().min(room)]);
        }
        let n = buf.len();
        if n == 0 {
            self.write.state = WriteState::Idle(buf);
            return Poll::Ready(Ok(0));
        }
        self.submit(buf, 0)?;
        Poll::Ready(Ok(n))
    }

    /// Waits for the send in flight, then shuts the write side down (once).
    fn poll_shutdown_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_idle(cx))?;
        loop {
            match &mut self.write.state {
                WriteState::Idle(_) => {
                    let op = self.stream.shutdown_op(Shutdown::Write)?;
                    self.write.state = WriteState::ShuttingDown(op);
                }
                WriteState::ShuttingDown(op) => {
                    let (res, ()) = ready!(Pin::new(op).poll(cx));
                    self.write.state = WriteState::Done;
                    return Poll::Ready(match check(res) {
                        // The peer is already fully gone: nothing left to tell it.
                        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
                        other => other.map(drop),
                    });
                }
                WriteState::Done | WriteState::Sending(_) | WriteState::SendingBytes(..) => {
                    return Poll::Ready(Ok(()))
                }
            }
        }
    }

    fn take_send_buffer(&mut self) -> io::Result<Vec<u8>> {
        match std::mem::replace(&mut self.write.state, WriteState::Done) {
            WriteState::Idle(buf) => Ok(buf),
            other => {
                self.write.state = other;
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "connection is shut down for writing",
                ))
            }
        }
    }
}

impl std::ops::Deref for IoStream {
    type Target = TcpStream;

    /// The connection, for its addresses and socket options.
    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

impl std::os::fd::AsRawFd for IoStream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }
}

impl AsyncRead for IoStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = ready!(self.poll_read_into(cx, out.initialize_unfilled()))?;
        out.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for IoStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_slices(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_slices(cx, slices)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_idle(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_shutdown_write(cx)
    }
}

impl futures_io::AsyncRead for IoStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_read_into(cx, out)
    }
}

impl futures_io::AsyncBufRead for IoStream {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        self.get_mut().poll_filled(cx)
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        self.consume_filled(amt);
    }
}

impl futures_io::AsyncWrite for IoStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_slices(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_slices(cx, slices)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_idle(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_shutdown_write(cx)
    }
}
