//! tokio's `AsyncRead` / `AsyncWrite` over a ring connection, so protocol code written
//! against those traits (h2, rustls stream wrappers) runs on this loop without a tokio
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

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::buf::BufRef;
use crate::net::{RecvStream, TcpStream};
use crate::op::{check, Op};

/// Most bytes one `poll_write` takes.
const WRITE_CAP: usize = 64 * 1024;

enum WriteState {
    Idle(Vec<u8>),
    Sending(Op<(Vec<u8>, usize)>),
    ShuttingDown(Op<()>),
    Done,
}

/// A [`TcpStream`] as a tokio I/O object.
pub struct TokioStream {
    stream: TcpStream,
    recv: RecvStream,
    partial: Option<(BufRef, usize)>,
    write: WriteState,
}

impl TokioStream {
    /// Wraps a connection.
    pub fn new(stream: TcpStream) -> io::Result<TokioStream> {
        let recv = stream.recv_stream()?;
        Ok(TokioStream {
            stream,
            recv,
            partial: None,
            write: WriteState::Idle(Vec::new()),
        })
    }

    /// The connection underneath.
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }

    /// Waits until no send is in flight.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let WriteState::Sending(op) = &mut self.write else {
                return Poll::Ready(Ok(()));
            };
            let (res, (buf, offset)) = ready!(Pin::new(op).poll(cx));
            match check(res) {
                Ok(n) if n > 0 && offset + n < buf.len() => {
                    self.submit(buf, offset + n)?;
                }
                Ok(0) if !buf.is_empty() => {
                    self.write = WriteState::Done;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(_) => {
                    let mut buf = buf;
                    buf.clear();
                    self.write = WriteState::Idle(buf);
                }
                Err(e) => {
                    self.write = WriteState::Done;
                    return Poll::Ready(Err(e));
                }
            }
        }
    }

    fn submit(&mut self, buf: Vec<u8>, offset: usize) -> io::Result<()> {
        match self.stream.send_op(buf, offset) {
            Ok(op) => {
                self.write = WriteState::Sending(op);
                Ok(())
            }
            Err((e, (buf, _))) => {
                self.write = WriteState::Idle(buf);
                Err(e)
            }
        }
    }

    fn take_send_buffer(&mut self) -> io::Result<Vec<u8>> {
        match std::mem::replace(&mut self.write, WriteState::Done) {
            WriteState::Idle(buf) => Ok(buf),
            other => {
                self.write = other;
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "connection is shut down for writing",
                ))
            }
        }
    }
}

impl AsyncRead for TokioStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if out.remaining() == 0 {
            // Nothing to fill: taking a buffer now would report end of stream.
            return Poll::Ready(Ok(()));
        }
        if this.partial.is_none() {
            match ready!(this.recv.poll_recv(cx))? {
                Some(buf) => this.partial = Some((buf, 0)),
                None => return Poll::Ready(Ok(())),
            }
        }
        if let Some((buf, offset)) = &mut this.partial {
            let n = (buf.len() - *offset).min(out.remaining());
            out.put_slice(&buf[*offset..*offset + n]);
            *offset += n;
            if *offset == buf.len() {
                // The buffer goes back to the ring now.
                this.partial = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TokioStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_idle(cx))?;
        let mut buf = this.take_send_buffer()?;
        for slice in slices {
            let room = WRITE_CAP - buf.len();
            if room == 0 {
                break;
            }
            buf.extend_from_slice(&slice[..slice.len().min(room)]);
        }
        let n = buf.len();
        if n == 0 {
            this.write = WriteState::Idle(buf);
            return Poll::Ready(Ok(0));
        }
        this.submit(buf, 0)?;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_idle(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_idle(cx))?;
        loop {
            match &mut this.write {
                WriteState::Idle(_) => {
                    let op = this.stream.shutdown_op(Shutdown::Write)?;
                    this.write = WriteState::ShuttingDown(op);
                }
                WriteState::ShuttingDown(op) => {
                    let (res, ()) = ready!(Pin::new(op).poll(cx));
                    this.write = WriteState::Done;
                    return Poll::Ready(check(res).map(drop));
                }
                WriteState::Done | WriteState::Sending(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}
