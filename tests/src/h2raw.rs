//! A raw HTTP/2 client for abuse tests: mTLS to a node's port 15008 with a certificate
//! from the mesh root, then hand-made frames written as bytes and frames read back
//! with their headers parsed, so a test can send what no well-behaved client would
//! (floods, bad stream ids, window overflows) and see exactly what the server answers.
//!
//! Everything here is single-threaded zpath-uring: run it with [`run_in`], which starts
//! a `Runtime` on a thread inside a network namespace.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use zpath_crypto::{CertifiedTls, Identity, LocalCa, SessionBuffers, TlsStream};
use zpath_uring::{ConnectOptions, IoStream, TcpStream};

use crate::netns::Netns;

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0;
    /// HEADERS.
    pub const HEADERS: u8 = 1;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 4;
    /// PING.
    pub const PING: u8 = 6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 9;
}

/// Frame flags.
pub mod flag {
    /// END_STREAM (DATA, HEADERS).
    pub const END_STREAM: u8 = 0x1;
    /// ACK (SETTINGS, PING).
    pub const ACK: u8 = 0x1;
    /// END_HEADERS (HEADERS, CONTINUATION).
    pub const END_HEADERS: u8 = 0x4;
}

/// Error codes (RFC 9113 §7).
pub mod code {
    /// NO_ERROR.
    pub const NO_ERROR: u32 = 0;
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// FLOW_CONTROL_ERROR.
    pub const FLOW_CONTROL_ERROR: u32 = 3;
    /// STREAM_CLOSED.
    pub const STREAM_CLOSED: u32 = 5;
    /// REFUSED_STREAM.
    pub const REFUSED_STREAM: u32 = 7;
    /// CANCEL.
    pub const CANCEL: u32 = 8;
    /// COMPRESSION_ERROR.
    pub const COMPRESSION_ERROR: u32 = 9;
    /// ENHANCE_YOUR_CALM.
    pub const ENHANCE_YOUR_CALM: u32 = 11;
}

/// Runs `make()`'s future on a zpath-uring runtime on a thread inside `ns`, so the
/// sockets it opens live in that namespace.
pub fn run_in<F, Fut, T>(ns: &Netns, make: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    ns.enter(move || {
        let rt = zpath_uring::Runtime::new(zpath_uring::Config::default())
            .expect("start a zpath-uring runtime");
        rt.block_on(make()).expect("run on the zpath-uring runtime")
    })
}

/// One frame: its header fields and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame type ([`kind`]).
    pub kind: u8,
    /// Flags ([`flag`]).
    pub flags: u8,
    /// Stream identifier (reserved bit cleared).
    pub stream: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            kind::RST_STREAM => 0,
            kind::GOAWAY => 4,
            _ => return None,
        };
        self.payload
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The last stream id of a GOAWAY frame.
    pub fn last_stream(&self) -> Option<u32> {
        (self.kind == kind::GOAWAY)
            .then(|| self.payload.get(..4))
            .flatten()
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
    }

    /// The `:status` of a response HEADERS frame (found by its HPACK static-table
    /// index or literal value; `None` if it cannot be read that simply).
    pub fn status(&self) -> Option<u16> {
        if self.kind != kind::HEADERS {
            return None;
        }
        // Static table entries 8..=14 are :status 200, 204, 206, 304, 400, 404, 500.
        const INDEXED: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
        let first = *self.payload.first()?;
        if first & 0x80 != 0 {
            let index = usize::from(first & 0x7f);
            return INDEXED.get(index.checked_sub(8)?).copied();
        }
        // Literal with an indexed :status name (8..=14): the value follows.
        let index = if first & 0x40 != 0 {
            first & 0x3f
        } else {
            first & 0x0f
        };
        if !(8..=14).contains(&index) {
            return None;
        }
        let len = usize::from(*self.payload.get(1)?);
        if len & 0x80 != 0 {
            // Huffman-coded: decode the three digits' codes (5 or 6 bits each).
            return huffman_digits(self.payload.get(2..2 + (len & 0x7f))?);
        }
        std::str::from_utf8(self.payload.get(2..2 + len)?)
            .ok()?
            .parse()
            .ok()
    }
}

/// Decodes a Huffman-coded string made only of decimal digits (RFC 7541 Appendix B:
/// '0', '1', '2' are 5-bit codes 0..=2, '3'..='9' are 6-bit codes 0x19..=0x1f).
fn huffman_digits(bytes: &[u8]) -> Option<u16> {
    let mut bits: u64 = 0;
    let mut nbits = 0u32;
    for &b in bytes {
        bits = bits << 8 | u64::from(b);
        nbits += 8;
    }
    let mut value: u16 = 0;
    let mut digits = 0;
    while nbits >= 5 {
        let five = (bits >> (nbits - 5)) & 0x1f;
        if five <= 2 {
            value = value.checked_mul(10)? + five as u16;
            nbits -= 5;
        } else if nbits >= 6 {
            let six = (bits >> (nbits - 6)) & 0x3f;
            if !(0x19..=0x1f).contains(&six) {
                break;
            }
            value = value.checked_mul(10)? + (six - 0x19 + 3) as u16;
            nbits -= 6;
        } else {
            break;
        }
        digits += 1;
    }
    (digits == 3).then_some(value)
}

/// Encodes a frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < 1 << 24, "a frame payload is at most 2^24-1 bytes");
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A SETTINGS frame with `(identifier, value)` pairs.
pub fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::with_capacity(6 * params.len());
    for (id, value) in params {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&value.to_be_bytes());
    }
    frame(kind::SETTINGS, 0, 0, &p)
}

/// A PING acknowledgement of `data`.
pub fn ping_ack(data: [u8; 8]) -> Vec<u8> {
    frame(kind::PING, flag::ACK, 0, &data)
}

/// A SETTINGS acknowledgement.
pub fn settings_ack() -> Vec<u8> {
    frame(kind::SETTINGS, flag::ACK, 0, &[])
}

/// A PING (not an acknowledgement) carrying `data`.
pub fn ping(data: [u8; 8]) -> Vec<u8> {
    frame(kind::PING, 0, 0, &data)
}

/// A HEADERS frame carrying the header block fragment `block`.
pub fn headers(stream: u32, block: &[u8], end_headers: bool, end_stream: bool) -> Vec<u8> {
    let mut flags = 0;
    if end_headers {
        flags |= flag::END_HEADERS;
    }
    if end_stream {
        flags |= flag::END_STREAM;
    }
    frame(kind::HEADERS, flags, stream, block)
}

/// A CONTINUATION frame carrying `block`.
pub fn continuation(stream: u32, block: &[u8], end_headers: bool) -> Vec<u8> {
    let flags = if end_headers { flag::END_HEADERS } else { 0 };
    frame(kind::CONTINUATION, flags, stream, block)
}

/// A RST_STREAM frame.
pub fn rst_stream(stream: u32, error: u32) -> Vec<u8> {
    frame(kind::RST_STREAM, 0, stream, &error.to_be_bytes())
}

/// A WINDOW_UPDATE frame (`stream` 0: the connection window).
pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(kind::WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// A DATA frame.
pub fn data(stream: u32, payload: &[u8], end_stream: bool) -> Vec<u8> {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    frame(kind::DATA, flags, stream, payload)
}

/// Appends an HPACK integer with a `prefix`-bit prefix, `first` holding the bits above
/// it (RFC 7541 §5.1). A string's length is `hpack_int(out, 0, 7, len)`.
pub fn hpack_int(out: &mut Vec<u8>, first: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// An HPACK string literal (no Huffman coding).
pub fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// One header as an HPACK "literal header field without indexing, new name"
/// (RFC 7541 §6.2.2), with plain (non-Huffman) strings.
pub fn hpack_literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    hpack_string(&mut out, name.as_bytes());
    hpack_string(&mut out, value);
    out
}

/// The header block of `CONNECT authority` as HBONE sends it.
pub fn connect_block(authority: &str) -> Vec<u8> {
    let mut b = hpack_literal(":method", b"CONNECT");
    b.extend(hpack_literal(":authority", authority.as_bytes()));
    b
}

/// How a watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A GOAWAY arrived with this last stream id and error code.
    GoAway {
        /// Last stream the server processed.
        last_stream: u32,
        /// Its error code ([`code`]).
        code: u32,
    },
    /// The connection closed (EOF or a transport/TLS error) without a GOAWAY.
    Closed,
    /// The caller's stop condition matched.
    Matched,
    /// Nothing ended it within the time limit.
    TimedOut,
}

/// What the server sent while a test watched.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Every frame read, in order (DATA payloads kept), except SETTINGS and PING
    /// acknowledgements, which are only counted (floods bring millions).
    pub frames: Vec<Frame>,
    /// SETTINGS acknowledgements received.
    pub settings_acks: usize,
    /// PING acknowledgements received.
    pub ping_acks: usize,
    /// How it ended (`None` until it has).
    pub end: Option<End>,
}

impl Seen {
    /// Records one frame; true if it was a GOAWAY (which then ends the record).
    pub fn record(&mut self, f: Frame) -> bool {
        if f.flags & flag::ACK != 0 && f.kind == kind::SETTINGS {
            self.settings_acks += 1;
            return false;
        }
        if f.flags & flag::ACK != 0 && f.kind == kind::PING {
            self.ping_acks += 1;
            return false;
        }
        let goaway = (f.kind == kind::GOAWAY).then(|| End::GoAway {
            last_stream: f.last_stream().unwrap_or(0),
            code: f.error_code().unwrap_or(u32::MAX),
        });
        self.frames.push(f);
        if goaway.is_some() {
            self.end = goaway;
            return true;
        }
        false
    }

    /// Asserts the server said GOAWAY with `code`; `what` names the attack.
    pub fn assert_goaway(&self, code: u32, what: &str) {
        assert_eq!(self.goaway(), Some(code), "{what}: {}", self.summary());
    }

    /// The GOAWAY error code, if one arrived.
    pub fn goaway(&self) -> Option<u32> {
        match self.end {
            Some(End::GoAway { code, .. }) => Some(code),
            _ => None,
        }
    }

    /// `(stream, error code)` of each RST_STREAM.
    pub fn resets(&self) -> Vec<(u32, u32)> {
        self.frames
            .iter()
            .filter(|f| f.kind == kind::RST_STREAM)
            .filter_map(|f| Some((f.stream, f.error_code()?)))
            .collect()
    }

    /// How many frames of `kind` with all of `flags` set arrived.
    pub fn count(&self, kind: u8, flags: u8) -> usize {
        let kept = self
            .frames
            .iter()
            .filter(|f| f.kind == kind && f.flags & flags == flags)
            .count();
        let acks = match kind {
            kind::SETTINGS => self.settings_acks,
            kind::PING => self.ping_acks,
            _ => 0,
        };
        // Acknowledgements carry only the ACK flag.
        kept + if flags & !flag::ACK == 0 { acks } else { 0 }
    }

    /// A short description for assertion messages: frame counts by type, the first
    /// resets and statuses, and the end.
    pub fn summary(&self) -> String {
        let mut counts = std::collections::BTreeMap::<u8, usize>::new();
        for f in &self.frames {
            *counts.entry(f.kind).or_default() += 1;
        }
        let statuses: Vec<(u32, Option<u16>)> = self
            .frames
            .iter()
            .filter(|f| f.kind == kind::HEADERS)
            .take(8)
            .map(|f| (f.stream, f.status()))
            .collect();
        let resets: Vec<(u32, u32)> = self.resets().into_iter().take(8).collect();
        format!(
            "frames by type {counts:?}, SETTINGS/PING acks {}/{}, statuses (stream, status) \
             {statuses:?}, resets (stream, code) {resets:?}, end {:?}",
            self.settings_acks, self.ping_acks, self.end
        )
    }

    /// Appends what `later` saw (a watch continued after this one).
    pub fn extend(&mut self, later: Seen) {
        self.frames.extend(later.frames);
        self.settings_acks += later.settings_acks;
        self.ping_acks += later.ping_acks;
        if later.end.is_some() {
            self.end = later.end;
        }
    }

    /// The server ended the connection: GOAWAY or close.
    pub fn ended_connection(&self) -> bool {
        matches!(self.end, Some(End::GoAway { .. }) | Some(End::Closed))
    }
}

/// How a flood of writes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    /// Every byte was handed to the socket.
    Sent,
    /// The server stopped taking bytes: no progress within the time limit (flow
    /// control pushed back).
    Stalled {
        /// Bytes written before the stall.
        written: usize,
    },
    /// The server ended the connection (a write failed, or it sent GOAWAY or closed).
    Ended {
        /// Bytes written before the end.
        written: usize,
    },
}

/// Longest [`Conn::send`] waits for the socket.
const SEND_LIMIT: Duration = Duration::from_secs(10);

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 << 10;

/// Opens TCP to `addr` and runs TLS as `spiffe://cluster.local/ns/default/sa/client`
/// with a certificate from the mesh root in `ca_dir`, expecting the server to be
/// `.../sa/<server_sa>`; sends nothing more (no HTTP/2 preface).
pub async fn tls_connect(
    ca_dir: &Path,
    addr: SocketAddr,
    server_sa: &str,
) -> io::Result<TlsStream<IoStream>> {
    let ca = LocalCa::load_or_create(ca_dir).map_err(io::Error::other)?;
    let me = Identity::new("cluster.local", "default", "client").map_err(io::Error::other)?;
    let server = Identity::new("cluster.local", "default", server_sa).map_err(io::Error::other)?;
    let cert = ca
        .issue(&me, Duration::from_secs(3600))
        .map_err(io::Error::other)?;
    let certified = CertifiedTls::new(Arc::new(cert)).map_err(io::Error::other)?;
    let config = certified
        .client_config(&[server])
        .map_err(io::Error::other)?;
    let tcp = TcpStream::connect(addr, &ConnectOptions::default()).await?;
    tcp.set_nodelay(true)?;
    let tcp = IoStream::new(tcp)?;
    TlsStream::connect(tcp, &config, SessionBuffers::new(4 * 16645))
        .await
        .map_err(io::Error::other)
}

/// Reads and discards until the peer closes (EOF or error); `false` if it did not
/// within `limit`.
pub async fn closed_within(tls: &mut TlsStream<IoStream>, limit: Duration) -> bool {
    let read = async {
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    zpath_uring::time::timeout(limit, read).await.is_ok()
}

/// An mTLS HTTP/2 connection driven frame by frame.
pub struct Conn {
    tls: TlsStream<IoStream>,
    /// Received plaintext; frames start at `pos`.
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    /// The SETTINGS parameters the server sent first.
    pub server_settings: Vec<(u16, u32)>,
    /// Frames read during the handshake after the server's SETTINGS.
    pub early: Vec<Frame>,
}

impl Conn {
    /// Opens TCP to `addr`, runs TLS as `spiffe://cluster.local/ns/default/sa/client`
    /// with a certificate from the mesh root in `ca_dir` (expecting the server to be
    /// `.../sa/<server_sa>`), sends the preface and empty SETTINGS, waits for the
    /// server's SETTINGS and acknowledges them.
    pub async fn connect(ca_dir: &Path, addr: SocketAddr, server_sa: &str) -> io::Result<Conn> {
        let tls = tls_connect(ca_dir, addr, server_sa).await?;
        let mut conn = Conn {
            tls,
            buf: Vec::new(),
            pos: 0,
            eof: false,
            server_settings: Vec::new(),
            early: Vec::new(),
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(&[]));
        conn.send(&hello).await?;
        loop {
            let f = conn
                .next_frame(Duration::from_secs(5))
                .await?
                .ok_or_else(|| io::Error::other("no SETTINGS from the server"))?;
            if f.kind == kind::SETTINGS && f.flags & flag::ACK == 0 {
                conn.server_settings = f
                    .payload
                    .chunks_exact(6)
                    .map(|c| {
                        (
                            u16::from_be_bytes([c[0], c[1]]),
                            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                        )
                    })
                    .collect();
                break;
            }
            conn.early.push(f);
        }
        conn.send(&settings_ack()).await?;
        Ok(conn)
    }

    /// The server's value for SETTINGS parameter `id`.
    pub fn server_setting(&self, id: u16) -> Option<u32> {
        self.server_settings
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| *v)
    }

    /// Limits the socket's kernel buffers (`SO_RCVBUF`, `SO_SNDBUF`) to about `bytes`,
    /// so a client that does not read pushes back on the server sooner.
    pub fn shrink_socket_buffers(&self, bytes: usize) -> io::Result<()> {
        use std::os::fd::{AsRawFd, BorrowedFd};
        let fd = self.tls.get_ref().get_ref().as_raw_fd();
        // SAFETY: the descriptor belongs to our open socket, which outlives the borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        sock.set_recv_buffer_size(bytes)?;
        sock.set_send_buffer_size(bytes)
    }

    /// Writes `bytes` and flushes them; fails with `TimedOut` if the socket takes
    /// no more for 10 s (the server stopped reading).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let tls = &mut self.tls;
        let sent = zpath_uring::time::timeout(SEND_LIMIT, async {
            let r = tls.write_all(bytes).await;
            r.and(tls.flush().await)
        })
        .await;
        sent.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }

    /// Writes `bytes` without reading anything; stops when the socket accepts nothing
    /// for `stall`, or on a write error.
    pub async fn flood(&mut self, bytes: &[u8], stall: Duration) -> Flood {
        let mut written = 0;
        while written < bytes.len() {
            let end = bytes.len().min(written + (64 << 10));
            let tls = &mut self.tls;
            let chunk = &bytes[written..end];
            match zpath_uring::time::timeout(stall, tls.write(chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Flood::Ended { written },
                Ok(Ok(n)) => written += n,
                Err(_) => return Flood::Stalled { written },
            }
        }
        let tls = &mut self.tls;
        match zpath_uring::time::timeout(stall, tls.flush()).await {
            Ok(Ok(())) => Flood::Sent,
            Ok(Err(_)) => Flood::Ended { written },
            Err(_) => Flood::Stalled { written },
        }
    }

    /// Writes `bytes` while reading whatever the server sends at the same time (so
    /// neither side waits on the other, and a GOAWAY is seen before the connection's
    /// reset can discard it). Stops at the server's GOAWAY or close (after reading
    /// what remains), when everything is written and flushed, or after `limit`.
    pub async fn flood_reading(&mut self, bytes: &[u8], limit: Duration) -> (Flood, Seen) {
        let mut seen = Seen::default();
        let mut written = 0usize;
        let mut write_failed = false;
        let mut flushed = false;
        let mut chunk = vec![0u8; READ_CHUNK];
        let pump = futures_lite::future::poll_fn(|cx| loop {
            let mut progress = false;
            if write_failed {
                // Only reading from here: the GOAWAY may still be on its way.
            } else if written < bytes.len() {
                let end = bytes.len().min(written + (64 << 10));
                match Pin::new(&mut self.tls).poll_write(cx, &bytes[written..end]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        written += n;
                        progress = true;
                    }
                    Poll::Ready(_) => write_failed = true,
                    Poll::Pending => {}
                }
            } else if !flushed {
                match Pin::new(&mut self.tls).poll_flush(cx) {
                    Poll::Ready(Ok(())) => flushed = true,
                    Poll::Ready(Err(_)) => write_failed = true,
                    Poll::Pending => {}
                }
            }
            if flushed {
                return Poll::Ready(Flood::Sent);
            }
            if !self.eof {
                match Pin::new(&mut self.tls).poll_read(cx, &mut chunk) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => self.eof = true,
                    Poll::Ready(Ok(n)) => {
                        self.buf.extend_from_slice(&chunk[..n]);
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
            while let Some(f) = self.take_frame() {
                if seen.record(f) {
                    return Poll::Ready(Flood::Ended { written });
                }
            }
            if self.eof {
                seen.end = Some(End::Closed);
                return Poll::Ready(Flood::Ended { written });
            }
            if !progress {
                return Poll::Pending;
            }
        });
        let flood = zpath_uring::time::timeout(limit, pump).await;
        match flood {
            Ok(flood) => (flood, seen),
            Err(_) => (Flood::Stalled { written }, seen),
        }
    }

    /// Writes `bytes` `chunk` bytes at a time, reading for `pause` after each write;
    /// stops at the server's GOAWAY or close, or a write failing or taking longer
    /// than 10 s. Slower than [`Conn::flood_reading`], but the server's GOAWAY is
    /// read before more bytes make its kernel answer them with a reset.
    pub async fn flood_paced(
        &mut self,
        bytes: &[u8],
        chunk: usize,
        pause: Duration,
    ) -> (Flood, Seen) {
        let mut seen = Seen::default();
        let mut written = 0;
        for part in bytes.chunks(chunk.max(1)) {
            match self.send(part).await {
                Ok(()) => written += part.len(),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return (Flood::Stalled { written }, seen)
                }
                Err(_) => {
                    self.drain_into(&mut seen, pause).await;
                    return (Flood::Ended { written }, seen);
                }
            }
            if self.drain_into(&mut seen, pause).await {
                return (Flood::Ended { written }, seen);
            }
        }
        (Flood::Sent, seen)
    }

    /// Reads frames until none arrives for `quiet`, or the connection ends.
    pub async fn drain(&mut self, quiet: Duration) -> Seen {
        let mut seen = Seen::default();
        self.drain_into(&mut seen, quiet).await;
        seen
    }

    /// Reads frames into `seen` until none arrives for `quiet`; true if the
    /// connection ended (GOAWAY or close).
    async fn drain_into(&mut self, seen: &mut Seen, quiet: Duration) -> bool {
        loop {
            match self.next_frame(quiet).await {
                Ok(Some(f)) => {
                    if seen.record(f) {
                        return true;
                    }
                }
                Ok(None) => {
                    seen.end = Some(End::Closed);
                    return true;
                }
                Err(_) => return false,
            }
        }
    }

    /// Takes one complete frame off the receive buffer.
    fn take_frame(&mut self) -> Option<Frame> {
        let (f, used) = parse(&self.buf[self.pos..])?;
        self.pos += used;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 1 << 20 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Some(f)
    }

    /// Reads the next frame, waiting up to `limit`. `Ok(None)`: the connection closed.
    /// `Err` of kind `TimedOut`: nothing complete arrived in time.
    pub async fn next_frame(&mut self, limit: Duration) -> io::Result<Option<Frame>> {
        if let Some(f) = self.take_frame() {
            return Ok(Some(f));
        }
        let read = async {
            let mut chunk = vec![0u8; READ_CHUNK];
            loop {
                if let Some(f) = self.take_frame() {
                    return Some(f);
                }
                if self.eof {
                    return None;
                }
                match self.tls.read(&mut chunk).await {
                    Ok(0) | Err(_) => self.eof = true,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        match zpath_uring::time::timeout(limit, read).await {
            Ok(f) => Ok(f),
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Reads frames until a GOAWAY, the connection's end, `stop` matching a frame, or
    /// `limit` passing.
    pub async fn watch_until(
        &mut self,
        limit: Duration,
        mut stop: impl FnMut(&Frame) -> bool,
    ) -> Seen {
        let until = std::time::Instant::now() + limit;
        let mut seen = Seen::default();
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                seen.end = Some(End::TimedOut);
                return seen;
            }
            match self.next_frame(left).await {
                Ok(Some(f)) => {
                    let matched = stop(&f);
                    if seen.record(f) {
                        return seen;
                    }
                    if matched {
                        seen.end = Some(End::Matched);
                        return seen;
                    }
                }
                Ok(None) => {
                    seen.end = Some(End::Closed);
                    return seen;
                }
                Err(_) => {
                    seen.end = Some(End::TimedOut);
                    return seen;
                }
            }
        }
    }

    /// Reads frames until a GOAWAY, the connection's end, or `limit`.
    pub async fn watch(&mut self, limit: Duration) -> Seen {
        self.watch_until(limit, |_| false).await
    }

    /// Opens `stream` with a CONNECT to `authority` and waits (up to `limit`) for the
    /// response HEADERS (or RST_STREAM) on it; returns what was seen (the last frame
    /// is the answer when `end` is `Matched`).
    pub async fn open_connect(
        &mut self,
        stream: u32,
        authority: &str,
        limit: Duration,
    ) -> io::Result<Seen> {
        self.send(&headers(stream, &connect_block(authority), true, false))
            .await?;
        Ok(self
            .watch_until(limit, |f| {
                (f.kind == kind::HEADERS || f.kind == kind::RST_STREAM) && f.stream == stream
            })
            .await)
    }
}

/// Parses one complete frame at the start of `buf`: the frame and the bytes it took.
fn parse(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 9 {
        return None;
    }
    let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
    if buf.len() < 9 + len {
        return None;
    }
    let f = Frame {
        kind: buf[3],
        flags: buf[4],
        stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
        payload: buf[9..9 + len].to_vec(),
    };
    Some((f, 9 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_parser() {
        let mut buf = rst_stream(5, code::CANCEL);
        buf.extend(frame(kind::GOAWAY, 0, 0, &[0, 0, 0, 7, 0, 0, 0, 11]));
        buf.extend_from_slice(&[0, 0, 4]); // an incomplete third frame
        let (rst, used) = parse(&buf).unwrap();
        assert_eq!(used, 13);
        assert_eq!(
            (rst.kind, rst.stream, rst.error_code()),
            (kind::RST_STREAM, 5, Some(8))
        );
        let (goaway, used) = parse(&buf[13..]).unwrap();
        assert_eq!(used, 17);
        assert_eq!(goaway.last_stream(), Some(7));
        assert_eq!(goaway.error_code(), Some(code::ENHANCE_YOUR_CALM));
        assert_eq!(parse(&buf[30..]), None);
    }

    #[test]
    fn long_strings_use_multi_byte_hpack_lengths() {
        let v = vec![b'x'; 300];
        let block = hpack_literal("a", &v);
        // 0x00, name length 1, 'a', then 300 = 127 + 173 → 0x7f, 0xad 0x01.
        assert_eq!(&block[..6], &[0x00, 0x01, b'a', 0x7f, 0xad, 0x01]);
        assert_eq!(block.len(), 6 + 300);
    }

    #[test]
    fn statuses_are_read_indexed_literal_and_huffman() {
        let status = |payload: Vec<u8>| {
            Frame {
                kind: kind::HEADERS,
                flags: flag::END_HEADERS,
                stream: 1,
                payload,
            }
            .status()
        };
        assert_eq!(status(vec![0x88]), Some(200));
        assert_eq!(status(vec![0x8c]), Some(400));
        assert_eq!(status(vec![0x08, 3, b'5', b'0', b'3']), Some(503));
        // "401" Huffman: '4' 0x1a (6 bits), '0' 0x0 (5), '1' 0x1 (5) → 011010 00000 00001.
        assert_eq!(status(vec![0x08, 0x82, 0x68, 0x01]), Some(401));
        assert_eq!(status(vec![0x82]), None);
    }
}
