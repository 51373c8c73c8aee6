//! An async TLS stream over any `futures-io` transport (a `zpath-uring`
//! `IoStream`, an in-memory pipe, ...), built on [`TlsSession`].
//!
//! The handshake is an ordinary future ([`TlsStream::connect`],
//! [`TlsStream::accept`]): it holds no timer and spawns nothing, so the caller
//! bounds it with its executor's timer, and dropping it at any await point
//! releases everything.
//!
//! Half-close: `poll_close` sends close_notify and closes the transport's
//! write side; reading continues until the peer's close_notify, after which
//! reads return 0 while writing still works. A transport EOF without the
//! peer's close_notify is an `UnexpectedEof` error (possible truncation).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_io::{AsyncBufRead, AsyncRead, AsyncWrite};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::error::SessionError;
use crate::limits::MAX_RECORD_LEN;
use crate::session::{SessionBuffers, TlsSession};
use crate::tls::{ClientTlsConfig, ServerTlsConfig};
use crate::verifier::VerifiedPeer;

/// Room kept free in the outgoing buffer for records the read path must
/// send (alerts, key updates), so reading never waits for the writer.
const RESERVE: usize = MAX_RECORD_LEN;

/// A TLS stream after a successful, verified handshake.
pub struct TlsStream<S> {
    io: S,
    session: TlsSession,
    out: Vec<u8>,
    out_start: usize,
    out_end: usize,
    transport_eof: bool,
    shutdown: bool,
    /// The transport refused a write: pending ciphertext was dropped, writes fail
    /// with this, and reads go on delivering what the peer sent before it left.
    write_failed: Option<io::ErrorKind>,
}

impl<S> std::fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("session", &self.session)
            .field("pending_out", &(self.out_end - self.out_start))
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Runs a client handshake over `io`, expecting one of the identities
    /// `config` was built for.
    pub async fn connect(
        io: S,
        config: &ClientTlsConfig,
        buffers: SessionBuffers,
    ) -> Result<Self, SessionError> {
        let session = TlsSession::client(config, buffers)?;
        Self::handshake(io, session).await
    }

    /// Runs a server handshake over `io`, requiring a client certificate from
    /// our trust domain.
    pub async fn accept(
        io: S,
        config: &ServerTlsConfig,
        buffers: SessionBuffers,
    ) -> Result<Self, SessionError> {
        let session = TlsSession::server(config, buffers)?;
        Self::handshake(io, session).await
    }

    async fn handshake(io: S, mut session: TlsSession) -> Result<Self, SessionError> {
        let mut out = session.take_outgoing();
        if out.len() < SessionBuffers::MIN_SIZE {
            out.resize(SessionBuffers::MIN_SIZE, 0);
        }
        let mut stream = Self {
            io,
            session,
            out,
            out_start: 0,
            out_end: 0,
            transport_eof: false,
            shutdown: false,
            write_failed: None,
        };
        match stream.run_handshake().await {
            Ok(()) => Ok(stream),
            Err(e) => {
                stream.send_alert().await;
                Err(e)
            }
        }
    }

    async fn run_handshake(&mut self) -> Result<(), SessionError> {
        loop {
            let n = self.session.process(&mut self.out)?;
            if n > 0 {
                self.io.write_all(&self.out[..n]).await.map_err(io_error)?;
                continue;
            }
            self.io.flush().await.map_err(io_error)?;
            if !self.session.is_handshaking() {
                return Ok(());
            }
            let space = self.session.incoming_space();
            if space.is_empty() {
                return Err(SessionError::BufferTooSmall);
            }
            let read = self.io.read(space).await.map_err(io_error)?;
            if read == 0 {
                return self.session.transport_eof();
            }
            self.session.commit_incoming(read);
        }
    }

    async fn send_alert(&mut self) {
        let n = self.session.failure_alert(&mut self.out);
        if n > 0 {
            // Best effort: the peer may already be gone.
            let _ = self.io.write_all(&self.out[..n]).await;
            let _ = self.io.flush().await;
        }
    }
}

impl<S> TlsStream<S> {
    /// The verified peer.
    pub fn peer(&self) -> Option<&VerifiedPeer> {
        self.session.peer()
    }

    /// The session (for its state: ALPN, close flags, failure).
    pub fn session(&self) -> &TlsSession {
        &self.session
    }

    /// The transport.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Ends the stream, returning the transport and the buffers for reuse.
    pub fn into_parts(mut self) -> (S, SessionBuffers) {
        let out = std::mem::take(&mut self.out);
        let mut buffers = self.session.into_buffers();
        buffers.outgoing = out;
        (self.io, buffers)
    }
}

impl<S: AsyncWrite + Unpin> TlsStream<S> {
    /// Writes all pending ciphertext to the transport. A failed write is kept: the
    /// ciphertext behind it can never be sent, so it is dropped, and every later
    /// flush fails the same way.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(kind) = self.write_failed {
            self.out_start = 0;
            self.out_end = 0;
            return Poll::Ready(Err(kind.into()));
        }
        while self.out_start < self.out_end {
            let written =
                Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_start..self.out_end]);
            let failed = match ready!(written) {
                Ok(0) => io::Error::from(io::ErrorKind::WriteZero),
                Ok(n) => {
                    self.out_start += n;
                    continue;
                }
                Err(e) => e,
            };
            self.write_failed = Some(failed.kind());
            self.out_start = 0;
            self.out_end = 0;
            return Poll::Ready(Err(failed));
        }
        self.out_start = 0;
        self.out_end = 0;
        Poll::Ready(Ok(()))
    }

    /// Room at the tail of `out`, keeping `reserve` bytes free, after moving
    /// pending bytes to the front if that helps.
    fn out_room(&mut self, reserve: usize) -> usize {
        let limit = self.out.len() - reserve;
        if limit.saturating_sub(self.out_end) < MAX_RECORD_LEN && self.out_start > 0 {
            self.out.copy_within(self.out_start..self.out_end, 0);
            self.out_end -= self.out_start;
            self.out_start = 0;
        }
        limit.saturating_sub(self.out_end)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Processes buffered ciphertext; records to send go to `out`. A transport that
    /// no longer takes writes does not fail the read: what the peer sent before it
    /// left (a GOAWAY, say) is still delivered, and the records the read path would
    /// have sent (alerts, key updates) are dropped with the rest.
    fn process(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.out_room(0) < MAX_RECORD_LEN {
                // Only a healthy transport that is busy makes the read wait here; a
                // failed one has had its pending ciphertext dropped.
                let _ = ready!(self.poll_flush_out(cx));
            }
            let end = self.out_end;
            let n = self.session.process(&mut self.out[end..])?;
            self.out_end += n;
            if n == 0 {
                break;
            }
        }
        if self.out_end > self.out_start {
            // Best effort: if the transport is busy we are woken when it is
            // writable, and the next poll retries; if it failed, the next write
            // reports it.
            let _ = self.poll_flush_out(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.session.plaintext().is_empty() || self.session.peer_closed() {
                return Poll::Ready(Ok(()));
            }
            if self.transport_eof {
                return Poll::Ready(self.session.transport_eof().map_err(io::Error::from));
            }
            let space = self.session.incoming_space();
            if space.is_empty() {
                return Poll::Ready(Err(SessionError::BufferTooSmall.into()));
            }
            let n = ready!(Pin::new(&mut self.io).poll_read(cx, space))?;
            if n == 0 {
                self.transport_eof = true;
            } else {
                self.session.commit_incoming(n);
            }
            ready!(self.process(cx))?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_fill(cx))?;
        Poll::Ready(Ok(this.session.read_plaintext(buf)))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncBufRead for TlsStream<S> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        ready!(this.poll_fill(cx))?;
        Poll::Ready(Ok(this.session.plaintext()))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        self.get_mut().session.consume(amt);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.shutdown {
            return Poll::Ready(Err(SessionError::WriteAfterClose.into()));
        }
        if let Some(kind) = this.write_failed {
            // Nothing more can leave: sealing would only spend CPU and sequence numbers.
            return Poll::Ready(Err(kind.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        while this.out_room(RESERVE) < MAX_RECORD_LEN {
            ready!(this.poll_flush_out(cx))?;
        }
        let (start, limit) = (this.out_end, this.out.len() - RESERVE);
        let sealed = this.session.seal(buf, &mut this.out[start..limit])?;
        this.out_end += sealed.written;
        if let Poll::Ready(Err(e)) = this.poll_flush_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(sealed.consumed))
    }

    /// Seals as many of `bufs` as fit into records before one transport write,
    /// filling records across slices: a frame header and its payload share a record
    /// and leave together.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.shutdown {
            return Poll::Ready(Err(SessionError::WriteAfterClose.into()));
        }
        if let Some(kind) = this.write_failed {
            // Nothing more can leave: sealing would only spend CPU and sequence numbers.
            return Poll::Ready(Err(kind.into()));
        }
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        while this.out_room(RESERVE) < MAX_RECORD_LEN {
            ready!(this.poll_flush_out(cx))?;
        }
        /// Slices gathered per call; h2 writes a frame header and its payload.
        const MAX_SLICES: usize = 64;
        let mut pieces: [&[u8]; MAX_SLICES] = [&[]; MAX_SLICES];
        let n = bufs.len().min(MAX_SLICES);
        for (piece, buf) in pieces.iter_mut().zip(&bufs[..n]) {
            *piece = buf;
        }
        let (start, limit) = (this.out_end, this.out.len() - RESERVE);
        let sealed = this
            .session
            .seal_vectored(&pieces[..n], &mut this.out[start..limit])?;
        this.out_end += sealed.written;
        let consumed = sealed.consumed;
        if let Poll::Ready(Err(e)) = this.poll_flush_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(consumed))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(kind) = this.write_failed {
            return Poll::Ready(Err(kind.into()));
        }
        if !this.shutdown {
            while this.out_room(0) < MAX_RECORD_LEN {
                ready!(this.poll_flush_out(cx))?;
            }
            let end = this.out_end;
            let n = this.session.close(&mut this.out[end..])?;
            this.out_end += n;
            this.shutdown = true;
        }
        ready!(this.poll_flush_out(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Pin::new(&mut this.io).poll_close(cx)
    }
}

fn io_error(e: io::Error) -> SessionError {
    SessionError::Io(e.kind(), e.to_string())
}
