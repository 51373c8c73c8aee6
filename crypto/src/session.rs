//! A sans-I/O TLS session over rustls' unbuffered API.
//!
//! The session owns two caller-sized buffers: `incoming` (ciphertext read
//! from the socket, decrypted in place by rustls) and `plaintext` (decrypted
//! application data waiting for the caller). Ciphertext to send is written
//! into a buffer the caller passes to each call.
//!
//! Receive path, per byte: the socket read lands directly in
//! [`TlsSession::incoming_space`] (the kernel copy); AES-GCM decrypts it in
//! place; rustls copies the record's plaintext out (copy 1); the session
//! appends it to its plaintext buffer (copy 2); [`TlsSession::plaintext`] lends
//! it to the caller without a copy (or [`TlsSession::read_plaintext`] copies it
//! into a caller buffer, copy 3). A partial record left at the end of a read is
//! moved to the front of `incoming` (at most one record per read).
//!
//! Send path, per byte: rustls copies the plaintext into a record (copy 1),
//! encrypts it in place, and copies the record into the caller's buffer
//! (copy 2). Records carry 16 KiB of plaintext.
//!
//! Flow control: the session accepts new ciphertext only while everything in
//! `incoming` could be decrypted into the free part of `plaintext`. So
//! decryption never has to wait for the caller, and writing never waits for
//! the reader: a stalled reader only stops the session from taking more input.

use crate::tls::{ClientTlsConfig, Connection, DriveIo, PlaintextSink, ServerTlsConfig, Stop};
use rustls_pki_types::CertificateDer;

use crate::verifier::{Rejection, VerifiedPeer};

pub use crate::tls::{MAX_PLAINTEXT_LEN, MAX_RECORD_LEN};

/// Why a TLS session failed. Each variant has a stable metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// We refused the peer's certificate.
    #[error("peer certificate rejected ({label}): {0}", label = .0.label())]
    Rejected(Rejection),
    /// The peer sent an alert (typically: it refused our certificate).
    #[error(
        "peer aborted the TLS handshake with alert {0}: does it trust our mesh root and identity?"
    )]
    AlertReceived(String),
    /// The bytes received are not valid TLS (garbage, wrong record types, ...).
    #[error("peer sent invalid TLS data ({0}): is this port speaking TLS?")]
    Protocol(String),
    /// A record length exceeds the TLS 1.3 maximum.
    #[error("peer sent a TLS record larger than the protocol allows")]
    RecordTooLarge,
    /// The peer does not support what we require (TLS 1.3, AES-GCM, ALPN h2).
    #[error("peer is incompatible: {0}; zpath requires TLS 1.3 with AES-GCM and ALPN h2")]
    Incompatible(String),
    /// The transport closed before the handshake completed.
    #[error("connection closed during the TLS handshake")]
    HandshakeEof,
    /// The transport closed in the middle of a record.
    #[error("connection closed in the middle of a TLS record (truncated)")]
    Truncated,
    /// The transport closed without a close_notify from the peer.
    #[error("peer closed the connection without a TLS close_notify; data may be truncated")]
    UncleanClose,
    /// The session buffers cannot hold a message the peer sent.
    #[error("TLS message does not fit the session buffer; raise the TLS buffer size")]
    BufferTooSmall,
    /// The output buffer passed in has less than one record of room.
    #[error("output buffer must have room for at least {MAX_RECORD_LEN} bytes")]
    OutputTooSmall,
    /// Application data was written before the handshake completed.
    #[error("TLS handshake not complete")]
    NotReady,
    /// Application data was written after close.
    #[error("TLS session already closed for writing")]
    WriteAfterClose,
    /// The transport failed.
    #[error("transport error: {1}")]
    Io(std::io::ErrorKind, String),
    /// rustls failed in a way not listed above.
    #[error("TLS internal error: {0}")]
    Internal(String),
}

impl SessionError {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SessionError::Rejected(r) => r.label(),
            SessionError::AlertReceived(_) => "alert_received",
            SessionError::Protocol(_) => "protocol_error",
            SessionError::RecordTooLarge => "record_too_large",
            SessionError::Incompatible(_) => "incompatible_peer",
            SessionError::HandshakeEof => "handshake_eof",
            SessionError::Truncated => "truncated_record",
            SessionError::UncleanClose => "unclean_close",
            SessionError::BufferTooSmall => "buffer_too_small",
            SessionError::OutputTooSmall => "output_too_small",
            SessionError::NotReady => "not_ready",
            SessionError::WriteAfterClose => "write_after_close",
            SessionError::Io(..) => "io_error",
            SessionError::Internal(_) => "internal_error",
        }
    }

    /// The certificate rejection, if that is what failed.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            SessionError::Rejected(r) => Some(r),
            _ => None,
        }
    }
}

impl From<SessionError> for std::io::Error {
    fn from(e: SessionError) -> Self {
        let kind = match &e {
            SessionError::Io(kind, _) => *kind,
            SessionError::HandshakeEof | SessionError::Truncated | SessionError::UncleanClose => {
                std::io::ErrorKind::UnexpectedEof
            }
            SessionError::WriteAfterClose => std::io::ErrorKind::BrokenPipe,
            SessionError::Rejected(_) => std::io::ErrorKind::PermissionDenied,
            _ => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e)
    }
}

/// Buffers for one session, sized by the caller and reusable after it ends.
#[derive(Debug)]
pub struct SessionBuffers {
    pub(crate) incoming: Vec<u8>,
    pub(crate) plaintext: Vec<u8>,
    pub(crate) outgoing: Vec<u8>,
}

impl SessionBuffers {
    /// Smallest accepted size: two full records.
    pub const MIN_SIZE: usize = 2 * MAX_RECORD_LEN;

    /// Three buffers (incoming ciphertext, plaintext, outgoing ciphertext) of
    /// `size` bytes each (at least [`SessionBuffers::MIN_SIZE`]). Memory per
    /// session is 3 × `size`; the outgoing one is used by [`crate::TlsStream`].
    pub fn new(size: usize) -> Self {
        let size = size.max(Self::MIN_SIZE);
        Self {
            incoming: vec![0; size],
            plaintext: vec![0; size],
            outgoing: vec![0; size],
        }
    }

    /// The size of each buffer.
    pub fn size(&self) -> usize {
        self.incoming.len()
    }
}

/// A byte region `buf[start..end]` that is filled at the end and drained at
/// the front.
#[derive(Debug)]
struct Window {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Window {
    fn new(buf: Vec<u8>) -> Self {
        Self {
            buf,
            start: 0,
            end: 0,
        }
    }

    fn len(&self) -> usize {
        self.end - self.start
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes at least `want` bytes of room at the tail, moving data to the
    /// front if needed. Returns the tail room.
    fn make_room(&mut self, want: usize) -> usize {
        if self.buf.len() - self.end < want && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        self.buf.len() - self.end
    }
}

impl PlaintextSink for Window {
    fn room(&self) -> usize {
        self.buf.len() - self.len()
    }

    fn append(&mut self, data: &[u8]) {
        let n = data.len().min(self.make_room(data.len()));
        self.buf[self.end..self.end + n].copy_from_slice(&data[..n]);
        self.end += n;
    }
}

/// The outcome of [`TlsSession::seal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// Plaintext bytes taken (a prefix of the input).
    pub consumed: usize,
    /// Ciphertext bytes written to the output buffer.
    pub written: usize,
}

/// A TLS 1.3 session (client or server) with no I/O of its own.
pub struct TlsSession {
    conn: Connection,
    incoming: Window,
    plaintext: Window,
    outgoing: Vec<u8>,
    offered: usize,
    peer: Option<VerifiedPeer>,
    peer_closed: bool,
    close_sent: bool,
    closed: bool,
    failed: Option<SessionError>,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("peer", &self.peer)
            .field("incoming", &self.incoming.len())
            .field("plaintext", &self.plaintext.len())
            .field("peer_closed", &self.peer_closed)
            .field("close_sent", &self.close_sent)
            .field("failed", &self.failed)
            .finish()
    }
}

impl TlsSession {
    /// A client session: call [`TlsSession::process`] first to produce the
    /// ClientHello.
    pub fn client(config: &ClientTlsConfig, buffers: SessionBuffers) -> Result<Self, SessionError> {
        Ok(Self::new(Connection::client(config)?, buffers))
    }

    /// A server session, waiting for a ClientHello.
    pub fn server(config: &ServerTlsConfig, buffers: SessionBuffers) -> Result<Self, SessionError> {
        Ok(Self::new(Connection::server(config)?, buffers))
    }

    fn new(conn: Connection, buffers: SessionBuffers) -> Self {
        let size = buffers.size().min(buffers.plaintext.len());
        let mut incoming = buffers.incoming;
        let mut plaintext = buffers.plaintext;
        incoming.resize(size.max(SessionBuffers::MIN_SIZE), 0);
        plaintext.resize(size.max(SessionBuffers::MIN_SIZE), 0);
        Self {
            conn,
            incoming: Window::new(incoming),
            plaintext: Window::new(plaintext),
            outgoing: buffers.outgoing,
            offered: 0,
            peer: None,
            peer_closed: false,
            close_sent: false,
            closed: false,
            failed: None,
        }
    }

    /// Gives the buffers back for another session.
    pub fn into_buffers(self) -> SessionBuffers {
        SessionBuffers {
            incoming: self.incoming.buf,
            plaintext: self.plaintext.buf,
            outgoing: self.outgoing,
        }
    }

    pub(crate) fn take_outgoing(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outgoing)
    }

    /// Where to put ciphertext read from the transport; then call
    /// [`TlsSession::commit_incoming`]. Empty while the plaintext buffer is
    /// too full to guarantee room for decrypting more (consume plaintext).
    pub fn incoming_space(&mut self) -> &mut [u8] {
        // Everything in `incoming` must fit `plaintext` once decrypted.
        let budget = self.plaintext.room().saturating_sub(self.incoming.len());
        let tail = self.incoming.make_room(budget);
        self.offered = tail.min(budget);
        let end = self.incoming.end;
        &mut self.incoming.buf[end..end + self.offered]
    }

    /// Records that `n` bytes were written into [`TlsSession::incoming_space`].
    pub fn commit_incoming(&mut self, n: usize) {
        let n = n.min(self.offered);
        self.incoming.end += n;
        self.offered -= n;
    }

    /// Copies ciphertext in; returns how much was taken (may be less than
    /// `data.len()` when the buffers are full).
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let space = self.incoming_space();
        let n = space.len().min(data.len());
        space[..n].copy_from_slice(&data[..n]);
        self.commit_incoming(n);
        n
    }

    /// Runs the handshake and decrypts buffered ciphertext. Writes TLS bytes
    /// to send into `out` (needs [`MAX_RECORD_LEN`] of room) and returns their
    /// length. Send them, then call again while it returns non-zero.
    pub fn process(&mut self, out: &mut [u8]) -> Result<usize, SessionError> {
        self.drive(out, &[], false).map(|s| s.written)
    }

    /// Encrypts a prefix of `plaintext` into `out` (as many 16 KiB records as
    /// fit). Only after the handshake completed.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<Sealed, SessionError> {
        self.check_failed()?;
        if self.close_sent {
            return Err(SessionError::WriteAfterClose);
        }
        if self.peer.is_none() {
            return Err(SessionError::NotReady);
        }
        self.drive(out, plaintext, false)
    }

    /// Queues a close_notify (we will send no more data) into `out`; returns
    /// its length. Reading continues until the peer closes too.
    pub fn close(&mut self, out: &mut [u8]) -> Result<usize, SessionError> {
        self.check_failed()?;
        if self.close_sent || self.peer.is_none() {
            self.close_sent = true;
            return Ok(0);
        }
        let sealed = self.drive(out, &[], true)?;
        Ok(sealed.written)
    }

    /// After a failure: the alert to send to the peer (best effort), written
    /// into `out`. Returns its length.
    pub fn failure_alert(&mut self, out: &mut [u8]) -> usize {
        if self.failed.is_some() {
            self.conn.pending_alert(out)
        } else {
            0
        }
    }

    /// Decrypted data waiting for the caller.
    pub fn plaintext(&self) -> &[u8] {
        self.plaintext.data()
    }

    /// Drops `n` bytes from the front of [`TlsSession::plaintext`].
    pub fn consume(&mut self, n: usize) {
        self.plaintext.consume(n);
    }

    /// Copies decrypted data into `dst`; returns the length copied.
    pub fn read_plaintext(&mut self, dst: &mut [u8]) -> usize {
        let data = self.plaintext.data();
        let n = data.len().min(dst.len());
        dst[..n].copy_from_slice(&data[..n]);
        self.plaintext.consume(n);
        n
    }

    /// The transport reached end of file: `Ok` if that is a clean close.
    pub fn transport_eof(&self) -> Result<(), SessionError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.peer_closed {
            Ok(())
        } else if self.incoming.len() > 0 {
            Err(SessionError::Truncated)
        } else if self.peer.is_none() {
            Err(SessionError::HandshakeEof)
        } else {
            Err(SessionError::UncleanClose)
        }
    }

    /// True until the handshake completed and the peer was verified.
    pub fn is_handshaking(&self) -> bool {
        self.peer.is_none()
    }

    /// The verified peer, once the handshake completed.
    pub fn peer(&self) -> Option<&VerifiedPeer> {
        self.peer.as_ref()
    }

    /// The certificate chain the peer presented (leaf first), once verified.
    pub fn peer_chain(&self) -> Option<&[CertificateDer<'static>]> {
        self.peer.as_ref().and(self.conn.peer_chain())
    }

    /// The negotiated ALPN protocol (`h2` with zpath peers).
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn()
    }

    /// True once the peer's close_notify arrived (buffered plaintext may remain).
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// True once we queued our close_notify.
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// The failure that ended this session, if any.
    pub fn failure(&self) -> Option<&SessionError> {
        self.failed.as_ref()
    }

    fn check_failed(&self) -> Result<(), SessionError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn drive(&mut self, out: &mut [u8], seal: &[u8], close: bool) -> Result<Sealed, SessionError> {
        self.check_failed()?;
        if out.len() < MAX_RECORD_LEN {
            return Err(SessionError::OutputTooSmall);
        }
        if self.closed {
            return Ok(Sealed {
                consumed: 0,
                written: 0,
            });
        }
        let mut io = DriveIo {
            out,
            written: 0,
            plaintext: &mut self.plaintext,
            seal,
            sealed: 0,
            close,
            close_sent: false,
            peer_closed: false,
        };
        let window = &mut self.incoming;
        let (consumed, result) = self
            .conn
            .drive(&mut window.buf[window.start..window.end], &mut io);
        let sealed = Sealed {
            consumed: io.sealed,
            written: io.written,
        };
        self.peer_closed |= io.peer_closed;
        self.close_sent |= io.close_sent;
        self.incoming.consume(consumed);
        match result.and_then(|stop| self.after_stop(stop)) {
            Ok(()) => Ok(sealed),
            Err(e) => {
                tracing::debug!(reason = e.label(), "TLS session failed: {e}");
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn after_stop(&mut self, stop: Stop) -> Result<(), SessionError> {
        if self.peer.is_none() && !self.conn.is_handshaking() {
            self.peer = Some(self.conn.verified_peer()?);
        }
        match stop {
            Stop::Closed => self.closed = true,
            Stop::NeedInput
                if self.incoming.start == 0 && self.incoming.end == self.incoming.buf.len() =>
            {
                return Err(SessionError::BufferTooSmall);
            }
            Stop::NeedInput | Stop::Ready | Stop::OutputFull | Stop::PlaintextFull => {}
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn window_compacts_only_when_needed() {
        let mut w = Window::new(vec![0; 8]);
        w.append(b"abcdef");
        w.consume(4);
        assert_eq!(w.data(), b"ef");
        assert_eq!(w.room(), 6);
        w.append(b"ghij");
        assert_eq!(w.data(), b"efghij");
        assert_eq!(w.start, 0);
    }

    #[test]
    fn errors_have_distinct_labels() {
        let all = [
            SessionError::AlertReceived(String::new()),
            SessionError::Protocol(String::new()),
            SessionError::RecordTooLarge,
            SessionError::Incompatible(String::new()),
            SessionError::HandshakeEof,
            SessionError::Truncated,
            SessionError::UncleanClose,
            SessionError::BufferTooSmall,
            SessionError::OutputTooSmall,
            SessionError::NotReady,
            SessionError::WriteAfterClose,
            SessionError::Io(std::io::ErrorKind::Other, String::new()),
            SessionError::Internal(String::new()),
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|e| e.label()).collect();
        assert_eq!(labels.len(), all.len());
    }
}
