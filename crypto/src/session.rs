//! A sans-I/O TLS session: the handshake over rustls' unbuffered API, then
//! our own record layer ([`crate::record`]) with the keys rustls negotiated.
//!
//! The session owns caller-sized buffers: `incoming` (ciphertext read from
//! the socket) and `plaintext` (application data rustls delivered during the
//! handshake, if any). Ciphertext to send is written into a buffer the caller
//! passes to each call.
//!
//! Receive path after the handshake, per byte: the socket read lands directly
//! in [`TlsSession::incoming_space`] (the kernel copy); AES-GCM decrypts each
//! record in place, writing its plaintext right behind the plaintext already
//! waiting in `incoming` (no copy); [`TlsSession::plaintext`] lends it to the
//! caller (or [`TlsSession::read_plaintext`] copies it into a caller buffer).
//! The layout of `incoming` is `[consumed | plaintext | free | ciphertext |
//! free]`; the live parts move to the front only when the tail has less than
//! one record of room.
//!
//! Send path, per byte: the plaintext is copied into the record in the
//! caller's buffer and encrypted there (one copy). Records carry 16 KiB.
//!
//! Flow control: decryption needs no room of its own (the plaintext takes the
//! place of its ciphertext), so it never waits for the caller, and writing
//! never waits for the reader: unread plaintext only leaves less room for
//! ciphertext, so a stalled reader stops the session from taking more input.
//! During the handshake rustls' copies apply, and the session accepts
//! ciphertext only while it could all be decrypted into `plaintext`.

use rustls_pki_types::CertificateDer;

use crate::error::SessionError;
use crate::limits::MAX_RECORD_LEN;
use crate::record::{Fatal, Incoming, RecordLayer};
use crate::tls::{ClientTlsConfig, Connection, DriveIo, PlaintextSink, ServerTlsConfig, Stop};
use crate::verifier::VerifiedPeer;

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
    /// Ciphertext not yet opened is `incoming.data()`.
    incoming: Window,
    /// Plaintext delivered by rustls during the handshake.
    plaintext: Window,
    /// After the handshake: our record layer.
    records: Option<RecordLayer>,
    /// After the handshake: the plaintext waiting in `incoming.buf`.
    opened: (usize, usize),
    /// After a record-layer failure: the alert to send.
    alert: Option<u8>,
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
            records: None,
            opened: (0, 0),
            alert: None,
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
    /// [`TlsSession::commit_incoming`] before any other call. Empty while
    /// unread plaintext fills the buffers (consume plaintext).
    pub fn incoming_space(&mut self) -> &mut [u8] {
        if self.records.is_some() {
            self.tidy();
            if self.incoming.buf.len() - self.incoming.end < MAX_RECORD_LEN {
                self.compact();
            }
            let end = self.incoming.end;
            self.offered = self.incoming.buf.len() - end;
            return &mut self.incoming.buf[end..];
        }
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
        if self.records.is_some() {
            return self.process_records(out);
        }
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
        if let Some(records) = &mut self.records {
            if out.len() < MAX_RECORD_LEN {
                return Err(SessionError::OutputTooSmall);
            }
            let sealed = records.seal(&mut self.conn, plaintext, out);
            let (consumed, written) = sealed.map_err(|f| self.fail(f))?;
            return Ok(Sealed { consumed, written });
        }
        self.drive(out, plaintext, false)
    }

    /// [`TlsSession::seal`] for plaintext in pieces, filling records across piece
    /// boundaries once the session seals its own records; before that, the first
    /// non-empty piece only.
    pub fn seal_vectored(
        &mut self,
        pieces: &[&[u8]],
        out: &mut [u8],
    ) -> Result<Sealed, SessionError> {
        if self.records.is_none() {
            let first = pieces
                .iter()
                .find(|p| !p.is_empty())
                .copied()
                .unwrap_or(&[]);
            return self.seal(first, out);
        }
        self.check_failed()?;
        if self.close_sent {
            return Err(SessionError::WriteAfterClose);
        }
        if self.peer.is_none() {
            return Err(SessionError::NotReady);
        }
        if out.len() < MAX_RECORD_LEN {
            return Err(SessionError::OutputTooSmall);
        }
        let Some(records) = &mut self.records else {
            return Err(SessionError::NotReady);
        };
        let sealed = records.seal_vectored(&mut self.conn, pieces, out);
        let (consumed, written) = sealed.map_err(|f| self.fail(f))?;
        Ok(Sealed { consumed, written })
    }

    /// Queues a close_notify (we will send no more data) into `out`; returns
    /// its length. Reading continues until the peer closes too.
    pub fn close(&mut self, out: &mut [u8]) -> Result<usize, SessionError> {
        self.check_failed()?;
        if self.close_sent || self.peer.is_none() {
            self.close_sent = true;
            return Ok(0);
        }
        if let Some(records) = &mut self.records {
            if out.len() < MAX_RECORD_LEN {
                return Err(SessionError::OutputTooSmall);
            }
            let n = records.close_notify(out).map_err(|f| self.fail(f))?;
            self.close_sent = true;
            return Ok(n);
        }
        let sealed = self.drive(out, &[], true)?;
        Ok(sealed.written)
    }

    /// After a failure: the alert to send to the peer (best effort), written
    /// into `out`. Returns its length.
    pub fn failure_alert(&mut self, out: &mut [u8]) -> usize {
        if let Some(records) = &mut self.records {
            return match self.alert.take() {
                Some(alert) if self.failed.is_some() && !self.close_sent => {
                    records.fatal_alert(alert, out)
                }
                _ => 0,
            };
        }
        if self.failed.is_some() {
            let window = &mut self.incoming;
            let incoming = &mut window.buf[window.start..window.end];
            self.conn.pending_alert(incoming, out)
        } else {
            0
        }
    }

    /// Decrypted data waiting for the caller.
    pub fn plaintext(&self) -> &[u8] {
        if self.plaintext.len() > 0 {
            self.plaintext.data()
        } else {
            &self.incoming.buf[self.opened.0..self.opened.1]
        }
    }

    /// Drops `n` bytes from the front of [`TlsSession::plaintext`].
    pub fn consume(&mut self, n: usize) {
        if self.plaintext.len() > 0 {
            self.plaintext.consume(n);
        } else {
            self.opened.0 += n.min(self.opened.1 - self.opened.0);
        }
    }

    /// Copies decrypted data into `dst`; returns the length copied.
    pub fn read_plaintext(&mut self, dst: &mut [u8]) -> usize {
        let data = self.plaintext();
        let n = data.len().min(dst.len());
        dst[..n].copy_from_slice(&data[..n]);
        self.consume(n);
        n
    }

    /// The transport reached end of file: `Ok` if that is a clean close.
    pub fn transport_eof(&self) -> Result<(), SessionError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let partial = self
            .records
            .as_ref()
            .is_some_and(RecordLayer::has_partial_message);
        if self.peer_closed {
            Ok(())
        } else if self.incoming.len() > 0 || partial {
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
            Stop::Ready => self.hand_over()?,
            Stop::NeedInput | Stop::OutputFull | Stop::PlaintextFull => {}
        }
        Ok(())
    }

    /// Once the handshake completed and rustls is idle, takes the record
    /// layer over from it. Not while a complete record is still buffered:
    /// rustls leaves one there only when it holds part of a handshake
    /// message, which it would drop. Not once either side closed.
    fn hand_over(&mut self) -> Result<(), SessionError> {
        if self.peer.is_none() || self.peer_closed || self.close_sent || self.closed {
            return Ok(());
        }
        if let [_, _, _, a, b, rest @ ..] = self.incoming.data() {
            if rest.len() >= usize::from(u16::from_be_bytes([*a, *b])) {
                return Ok(());
            }
        }
        self.records = Some(self.conn.take_record_layer()?);
        Ok(())
    }

    /// [`TlsSession::process`] after the hand-over: opens every complete
    /// record and writes what we owe the peer (a key update).
    fn process_records(&mut self, out: &mut [u8]) -> Result<usize, SessionError> {
        self.check_failed()?;
        if out.len() < MAX_RECORD_LEN {
            return Err(SessionError::OutputTooSmall);
        }
        let Some(records) = &mut self.records else {
            return Ok(0);
        };
        let mut io = Incoming {
            buf: &mut self.incoming.buf,
            plain_end: self.opened.1,
            cipher_start: self.incoming.start,
            cipher_end: self.incoming.end,
        };
        let opened = records.open(&mut self.conn, &mut io);
        self.opened.1 = io.plain_end;
        self.incoming.start = io.cipher_start;
        self.peer_closed |= records.peer_closed();
        let written = match opened {
            Ok(()) if self.close_sent => Ok(0),
            Ok(()) => records.flush(&mut self.conn, out),
            Err(f) => Err(f),
        };
        let written = written.map_err(|f| self.fail(f))?;
        self.tidy();
        self.offered = 0;
        Ok(written)
    }

    /// Records a record-layer failure; returns its error.
    fn fail(&mut self, fatal: Fatal) -> SessionError {
        let e = fatal.error;
        tracing::debug!(reason = e.label(), "TLS session failed: {e}");
        self.alert = fatal.alert;
        self.failed = Some(e.clone());
        e
    }

    /// Restarts empty regions of `incoming` at the front (no data moves).
    fn tidy(&mut self) {
        if self.opened.0 == self.opened.1 {
            self.opened = (0, 0);
        }
        if self.incoming.start == self.incoming.end {
            self.incoming.start = self.opened.1;
            self.incoming.end = self.opened.1;
        }
    }

    /// Moves the unread plaintext and the unopened ciphertext of `incoming`
    /// to its front.
    fn compact(&mut self) {
        let (start, end) = self.opened;
        let buf = &mut self.incoming.buf;
        if start > 0 {
            buf.copy_within(start..end, 0);
        }
        let plain = end - start;
        let (cs, ce) = (self.incoming.start, self.incoming.end);
        if cs > plain {
            buf.copy_within(cs..ce, plain);
        }
        self.opened = (0, plain);
        self.incoming.start = plain;
        self.incoming.end = plain + (ce - cs);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{CertifiedTls, Identity, LocalCa, MAX_PLAINTEXT_LEN};
    use std::sync::Arc;
    use std::time::Duration;

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

    const HANDSHAKE: u8 = 0x16;
    const ALERT: u8 = 0x15;
    const DATA: u8 = 0x17;

    /// Two of our sessions after the handshake, both on our record layer.
    fn established() -> (TlsSession, TlsSession) {
        let ca = LocalCa::generate().unwrap();
        let server_id: Identity = "spiffe://td/ns/a/sa/server".parse().unwrap();
        let client_id: Identity = "spiffe://td/ns/a/sa/client".parse().unwrap();
        let life = Duration::from_secs(600);
        let s = CertifiedTls::new(Arc::new(ca.issue(&server_id, life).unwrap())).unwrap();
        let c = CertifiedTls::new(Arc::new(ca.issue(&client_id, life).unwrap())).unwrap();
        let config = c.client_config(&[server_id]).unwrap();
        let mut client = TlsSession::client(&config, SessionBuffers::new(0)).unwrap();
        let mut server = TlsSession::server(&s.server_config(), SessionBuffers::new(0)).unwrap();
        let mut wire = vec![0u8; 4 * MAX_RECORD_LEN];
        for _ in 0..10 {
            let n = client.process(&mut wire).unwrap();
            server.feed(&wire[..n]);
            let m = server.process(&mut wire).unwrap();
            client.feed(&wire[..m]);
        }
        assert!(client.records.is_some() && server.records.is_some());
        (client, server)
    }

    /// `from` seals one raw inner record; `to` receives it.
    fn raw(from: &mut TlsSession, to: &mut TlsSession, typ: u8, payload: &[u8]) {
        let mut wire = vec![0u8; MAX_RECORD_LEN];
        let records = from.records.as_mut().unwrap();
        let n = records.seal_raw(typ, payload, &mut wire);
        assert_eq!(to.feed(&wire[..n]), n);
    }

    /// Moves `data` from `from` to `to`; returns the ciphertext length.
    fn transfer(from: &mut TlsSession, to: &mut TlsSession, data: &[u8]) -> usize {
        let mut wire = vec![0u8; 4 * MAX_RECORD_LEN];
        let mut out = vec![0u8; MAX_RECORD_LEN];
        let (mut sent, mut wire_len, mut received) = (0, 0, Vec::new());
        while sent < data.len() {
            let s = from.seal(&data[sent..], &mut wire).unwrap();
            sent += s.consumed;
            wire_len += s.written;
            let mut fed = 0;
            while fed < s.written {
                fed += to.feed(&wire[fed..s.written]);
                // What the receiver owes (a key update) goes back.
                let n = to.process(&mut out).unwrap();
                assert_eq!(from.feed(&out[..n]), n);
                received.extend_from_slice(to.plaintext());
                to.consume(to.plaintext().len());
            }
        }
        assert!(received == data, "data differs");
        wire_len
    }

    impl TlsSession {
        /// Opens records without writing anything (a test-only process).
        fn process_records_only(&mut self) {
            let records = self.records.as_mut().unwrap();
            let mut io = Incoming {
                buf: &mut self.incoming.buf,
                plain_end: self.opened.1,
                cipher_start: self.incoming.start,
                cipher_end: self.incoming.end,
            };
            records.open(&mut self.conn, &mut io).unwrap();
            self.opened.1 = io.plain_end;
            self.incoming.start = io.cipher_start;
        }
    }

    /// `to` fails on what it was fed; returns the error and the alert sent.
    fn refused(to: &mut TlsSession) -> (SessionError, Vec<u8>) {
        let mut out = vec![0u8; MAX_RECORD_LEN];
        let e = to.process(&mut out).unwrap_err();
        let n = to.failure_alert(&mut out);
        (e, out[..n].to_vec())
    }

    #[test]
    fn our_own_key_update_is_followed_by_the_peer() {
        let (mut client, mut server) = established();
        client.records.as_mut().unwrap().limit_tx(3);
        let data = vec![0x42u8; 5 * MAX_PLAINTEXT_LEN];
        let wire = transfer(&mut client, &mut server, &data);
        // Six records (the first output buffer ends with a short one) and one
        // KeyUpdate record (header 5, message 5, type 1, tag 16), after
        // which the peer still decrypts.
        assert_eq!(wire, data.len() + 6 * 22 + 27);
        transfer(&mut server, &mut client, b"and back");
        transfer(&mut client, &mut server, b"again");
    }

    #[test]
    fn requested_key_update_is_answered_before_more_data() {
        let (mut client, mut server) = established();
        let mut wire = vec![0u8; MAX_RECORD_LEN];
        let mut out = vec![0u8; MAX_RECORD_LEN];
        // A KeyUpdate(update_requested) split over two records.
        let records = client.records.as_mut().unwrap();
        let n = records.key_update_raw(&mut client.conn, &[&[24, 0, 0], &[1, 1]], &mut wire);
        server.feed(&wire[..n]);
        let answer = server.process(&mut out).unwrap();
        assert_eq!(answer, 27, "the server answers with its own KeyUpdate");
        assert_eq!(server.process(&mut out).unwrap(), 0, "only once");
        client.feed(&out[..answer]);
        assert_eq!(client.process(&mut wire).unwrap(), 0);
        transfer(&mut server, &mut client, b"new keys both ways");
        transfer(&mut client, &mut server, b"indeed");
        // Asked again, the answer precedes the data sealed next.
        let records = client.records.as_mut().unwrap();
        let n = records.key_update_raw(&mut client.conn, &[&[24, 0, 0, 1, 1]], &mut wire);
        server.feed(&wire[..n]);
        server.process_records_only();
        let mut big = vec![0u8; 2 * MAX_RECORD_LEN];
        let s = server.seal(b"hello", &mut big).unwrap();
        assert_eq!(s.written, 27 + 5 + 22);
        client.feed(&big[..s.written]);
        client.process(&mut wire).unwrap();
        assert_eq!(client.plaintext(), b"hello");
    }

    /// Feeds `server` what `send` seals, up to 10,000 times; returns how many
    /// were accepted before the session failed, and the error and alert.
    fn flood(
        client: &mut TlsSession,
        server: &mut TlsSession,
        mut send: impl FnMut(&mut TlsSession, &mut [u8]) -> usize,
    ) -> (usize, SessionError, Vec<u8>) {
        let mut wire = vec![0u8; MAX_RECORD_LEN];
        let mut out = vec![0u8; MAX_RECORD_LEN];
        for accepted in 0..10_000 {
            let n = send(client, &mut wire);
            assert_eq!(server.feed(&wire[..n]), n);
            if let Err(e) = server.process(&mut out) {
                let n = server.failure_alert(&mut out);
                return (accepted, e, out[..n].to_vec());
            }
        }
        panic!("10,000 records accepted");
    }

    /// The client sees `alert` from the server in `sent`.
    fn assert_alerted(client: &mut TlsSession, sent: &[u8], alert: &str) {
        client.feed(sent);
        let (got, _) = refused(client);
        assert_eq!(got, SessionError::AlertReceived(alert.into()));
    }

    fn key_update(client: &mut TlsSession, wire: &mut [u8]) -> usize {
        let records = client.records.as_mut().unwrap();
        records.key_update_raw(&mut client.conn, &[&[24, 0, 0, 1, 0]], wire)
    }

    #[test]
    fn a_flood_of_key_updates_ends_in_an_error() {
        let (mut client, mut server) = established();
        let (accepted, e, sent) = flood(&mut client, &mut server, key_update);
        assert_eq!(accepted, 32, "rustls' limit: 32 KeyUpdates without data");
        assert_eq!(
            e,
            SessionError::Protocol("too many KeyUpdates without application data".into())
        );
        assert_alerted(&mut client, &sent, "UnexpectedMessage");
        // Asking for an update each time changes nothing: we answer once, and the
        // limit is the same.
        let (mut client, mut server) = established();
        let (accepted, e, _) = flood(&mut client, &mut server, |client, wire| {
            let records = client.records.as_mut().unwrap();
            records.key_update_raw(&mut client.conn, &[&[24, 0, 0, 1, 1]], wire)
        });
        assert_eq!((accepted, e.label()), (32, "protocol_error"));
    }

    #[test]
    fn a_flood_of_empty_records_ends_in_an_error() {
        let (mut client, mut server) = established();
        let (accepted, e, sent) = flood(&mut client, &mut server, |client, wire| {
            client.records.as_mut().unwrap().seal_raw(DATA, &[], wire)
        });
        assert_eq!(accepted, 32, "rustls' limit: 32 empty records in a row");
        assert_eq!(
            e,
            SessionError::Protocol("too many empty records in a row".into())
        );
        assert_alerted(&mut client, &sent, "UnexpectedMessage");
        // Padding does not make a record less empty.
        let (mut client, mut server) = established();
        let (accepted, _, _) = flood(&mut client, &mut server, |client, wire| {
            let padded = [DATA, 0, 0, 0];
            client.records.as_mut().unwrap().seal_raw(0, &padded, wire)
        });
        assert_eq!(accepted, 32);
    }

    #[test]
    fn empty_records_between_key_updates_do_not_reset_the_limit() {
        let (mut client, mut server) = established();
        let mut turn = 0;
        let (accepted, e, _) = flood(&mut client, &mut server, |client, wire| {
            turn += 1;
            if turn % 2 == 0 {
                return key_update(client, wire);
            }
            client.records.as_mut().unwrap().seal_raw(DATA, &[], wire)
        });
        // 32 KeyUpdates and the 33 empty records around them, then the 33rd update.
        assert_eq!(accepted, 65);
        assert_eq!(e.label(), "protocol_error", "{e}");
    }

    #[test]
    fn key_updates_between_application_data_never_run_out() {
        let (mut client, mut server) = established();
        let mut wire = vec![0u8; MAX_RECORD_LEN];
        let data = vec![0x5au8; 64 << 10];
        // 100 updates in 6.4 MiB, far more than the 32 allowed without data between.
        for _ in 0..100 {
            let n = key_update(&mut client, &mut wire);
            server.feed(&wire[..n]);
            transfer(&mut client, &mut server, &data);
        }
        transfer(&mut server, &mut client, b"both ways still");
        // And our own updates, one every 64 records (1 MiB), as the peer sees them.
        client.records.as_mut().unwrap().limit_tx(64);
        for _ in 0..40 {
            transfer(&mut client, &mut server, &data);
        }
    }

    #[test]
    fn more_than_four_warning_alerts_end_the_session() {
        let (mut client, mut server) = established();
        let (accepted, e, sent) = flood(&mut client, &mut server, |client, wire| {
            client
                .records
                .as_mut()
                .unwrap()
                .seal_raw(ALERT, &[1, 90], wire)
        });
        assert_eq!(accepted, 4, "rustls' limit: 4 warning alerts");
        assert_eq!(e, SessionError::Protocol("too many warning alerts".into()));
        assert_alerted(&mut client, &sent, "UnexpectedMessage");
    }

    #[test]
    fn misplaced_post_handshake_messages_are_refused() {
        // Records (inner type, content) the client sends; the alert expected.
        type Case<'a> = (&'a [(u8, &'a [u8])], &'a str);
        let cases: [Case<'_>; 9] = [
            // KeyUpdate not at the end of its record.
            (
                &[(HANDSHAKE, &[24, 0, 0, 1, 0, 24, 0, 0, 1, 0])],
                "UnexpectedMessage",
            ),
            // Malformed KeyUpdate.
            (&[(HANDSHAKE, &[24, 0, 0, 1, 7])], "DecodeError"),
            // A client may not send NewSessionTicket.
            (&[(HANDSHAKE, &[4, 0, 0, 1, 0])], "UnexpectedMessage"),
            // No post-handshake authentication.
            (&[(HANDSHAKE, &[13, 0, 0, 1, 0])], "UnexpectedMessage"),
            // Empty handshake record.
            (&[(HANDSHAKE, &[])], "UnexpectedMessage"),
            // Too large a message.
            (&[(HANDSHAKE, &[4, 0x01, 0, 0])], "DecodeError"),
            // Data inside a fragmented handshake message.
            (
                &[(HANDSHAKE, &[4, 0, 0, 9, 1]), (DATA, b"x")],
                "UnexpectedMessage",
            ),
            // Malformed alert.
            (&[(ALERT, &[1, 0, 0])], "DecodeError"),
            // Unknown inner content type.
            (&[(0x42, b"x")], "UnexpectedMessage"),
        ];
        for (i, (records, alert)) in cases.iter().enumerate() {
            let (mut client, mut server) = established();
            for (typ, payload) in records.iter() {
                raw(&mut client, &mut server, *typ, payload);
            }
            let (e, sent) = refused(&mut server);
            assert_eq!(e.label(), "protocol_error", "case {i}: {e}");
            // The alert reaches the client, encrypted, as a fatal alert.
            client.feed(&sent);
            let (got, _) = refused(&mut client);
            assert_eq!(
                got,
                SessionError::AlertReceived(alert.to_string()),
                "case {i}"
            );
        }
    }

    #[test]
    fn unprotected_record_after_handshake_is_refused() {
        let (_, mut server) = established();
        server.feed(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
        let (e, _) = refused(&mut server);
        assert_eq!(e.label(), "protocol_error");
    }

    #[test]
    fn alerts_after_the_handshake() {
        let (mut client, mut server) = established();
        // user_canceled is a warning; data continues.
        raw(&mut client, &mut server, ALERT, &[1, 90]);
        transfer(&mut client, &mut server, b"still here");
        // Any other alert ends the session.
        raw(&mut client, &mut server, ALERT, &[2, 40]);
        let (e, sent) = refused(&mut server);
        assert_eq!(e, SessionError::AlertReceived("HandshakeFailure".into()));
        assert!(sent.is_empty(), "no alert answers an alert");
        // close_notify: data after it is ignored.
        let (mut client, mut server) = established();
        let mut wire = vec![0u8; MAX_RECORD_LEN];
        let n = client.close(&mut wire).unwrap();
        server.feed(&wire[..n]);
        raw(&mut client, &mut server, DATA, b"ignored");
        server.process(&mut wire).unwrap();
        assert!(server.peer_closed());
        assert!(server.plaintext().is_empty());
        assert_eq!(server.transport_eof(), Ok(()));
    }

    #[test]
    fn partial_handshake_message_at_eof_is_truncation() {
        let (mut client, mut server) = established();
        raw(&mut client, &mut server, HANDSHAKE, &[24, 0]);
        server.process(&mut vec![0u8; MAX_RECORD_LEN]).unwrap();
        assert_eq!(server.transport_eof(), Err(SessionError::Truncated));
    }

    #[test]
    fn unread_plaintext_is_kept_when_compacting() {
        let (mut client, mut server) = established();
        let size = server.incoming.buf.len();
        let data: Vec<u8> = (0..size * 3).map(|i| (i % 253) as u8).collect();
        let mut wire = vec![0u8; size * 4];
        let mut ciphertext = Vec::new();
        let mut sent = 0;
        while sent < data.len() {
            let s = client.seal(&data[sent..], &mut wire).unwrap();
            ciphertext.extend_from_slice(&wire[..s.written]);
            sent += s.consumed;
        }
        // Read a little at a time, in odd sizes, so regions move around.
        let (mut fed, mut received, mut out) = (0, Vec::new(), vec![0u8; MAX_RECORD_LEN]);
        let mut step = 0;
        while received.len() < data.len() {
            step += 1;
            let take = (ciphertext.len() - fed).min(1 + step * 7919 % 30_000);
            fed += server.feed(&ciphertext[fed..fed + take]);
            server.process(&mut out).unwrap();
            let mut buf = vec![0u8; 1 + step * 104_729 % 20_000];
            let n = server.read_plaintext(&mut buf);
            received.extend_from_slice(&buf[..n]);
            assert!(step < 10_000, "no progress");
        }
        assert!(received == data, "data differs");
    }

    #[test]
    fn random_records_after_the_handshake_never_panic_or_stall() {
        let mut state = 0x5eed_u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let mut out = vec![0u8; MAX_RECORD_LEN];
        for round in 0..40 {
            let (mut client, mut server) = established();
            let mut wire = vec![0u8; MAX_RECORD_LEN];
            let sealed = client.seal(b"genuine", &mut wire).unwrap().written;
            let mut input: Vec<u8> = match round % 4 {
                // Noise.
                0 => (0..next() % 3000).map(|_| next() as u8).collect(),
                // A plausible header, then noise.
                1 => {
                    let len = (next() % 0x4200) as u16;
                    let mut v = vec![0x17, 0x03, 0x03];
                    v.extend_from_slice(&len.to_be_bytes());
                    v.extend((0..next() % 20_000).map(|_| next() as u8));
                    v
                }
                // A genuine record with bits flipped.
                2 => {
                    let mut v = wire[..sealed].to_vec();
                    for _ in 0..=next() % 3 {
                        let at = next() % v.len();
                        v[at] ^= 1 << (next() % 8);
                    }
                    v
                }
                // A genuine record cut short, then noise.
                _ => {
                    let mut v = wire[..next() % sealed].to_vec();
                    v.extend((0..next() % 100).map(|_| next() as u8));
                    v
                }
            };
            input.truncate(input.len().min(server.incoming.buf.len()));
            let mut fed = 0;
            let mut steps = 0;
            loop {
                let take = (input.len() - fed).min(1 + next() % 5000);
                fed += server.feed(&input[fed..fed + take]);
                let result = server.process(&mut out);
                steps += 1;
                assert!(steps < 10_000, "round {round}: no progress");
                if result.is_err() {
                    assert_eq!(server.process(&mut out), result, "round {round}: sticky");
                    server.failure_alert(&mut out);
                    break;
                }
                if fed == input.len() {
                    break;
                }
            }
            let plain = server.plaintext();
            assert!(plain.is_empty() || plain == b"genuine", "round {round}");
        }
    }

    #[test]
    fn a_client_hello_fragmented_over_records_does_not_panic_the_server() {
        let ca = LocalCa::generate().unwrap();
        let id: Identity = "spiffe://td/ns/a/sa/server".parse().unwrap();
        let cert = ca.issue(&id, Duration::from_secs(600)).unwrap();
        let tls = CertifiedTls::new(Arc::new(cert)).unwrap();
        let mut server = TlsSession::server(&tls.server_config(), SessionBuffers::new(0)).unwrap();
        // A handshake record with a complete message, then the start of one
        // that continues past it: rustls keeps ranges into `incoming`.
        let hello = [
            0x16, 0x03, 0x01, 0x00, 0x0b, 0x01, 0x00, 0x00, 0x01, 0x00, 0x1c, 0x16, 0x03, 0x01,
            0x00, 0x0b, 0x01, 0x00, 0x00, 0x01, 0x00,
        ];
        assert_eq!(server.feed(&hello), hello.len());
        let mut out = vec![0u8; MAX_RECORD_LEN];
        let e = server.process(&mut out).unwrap_err();
        assert_eq!(e.label(), "protocol_error", "{e}");
        // The alert the engine sends next must not make rustls read a
        // buffer other than the one holding those ranges.
        assert!(server.failure_alert(&mut out) <= MAX_RECORD_LEN);
        assert_eq!(server.process(&mut out), Err(e));
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
