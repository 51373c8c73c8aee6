//! The TLS 1.3 record layer after the handshake, over ring's AES-GCM.
//!
//! rustls runs the handshake; once it completes, [`crate::tls`] hands the
//! traffic keys and sequence numbers over and keeps a key-schedule-only
//! connection that derives the keys of each key update and stores session
//! tickets. This module asks that connection for them through [`KeySchedule`],
//! so it sits below the handshake and names nothing of rustls. From then on it
//! seals and opens records itself, with no allocation and no copy besides the
//! one from the caller's plaintext into the output record:
//!
//! * sealing writes the 5-byte header, copies the plaintext behind it, adds
//!   the inner content type and encrypts in place (RFC 8446 §5.2);
//! * opening decrypts each record in place and, in the same pass, moves its
//!   plaintext down to the end of the plaintext already waiting, so the
//!   caller sees one contiguous run of plaintext and no copy is made.
//!
//! Post-handshake messages are handled here: KeyUpdate (RFC 8446 §4.6.3; we
//! answer a request before our next record), NewSessionTicket (stored by
//! rustls on a client, refused from a client), close_notify and
//! user_canceled; any other alert ends the session. We also update our own
//! keys before the cipher suite's confidentiality limit.
//!
//! What the protocol allows but costs us work for no data is limited as rustls
//! 0.23 limits it (its `TemperCounters` and deframer, after BoringSSL): 32
//! KeyUpdates without application data between them, 32 empty records in a
//! row, 4 warning alerts per session. Past a limit the session fails with
//! unexpected_message, so a peer cannot make us derive keys or open records in
//! a loop.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, NONCE_LEN};

use crate::error::SessionError;
use crate::limits::MAX_PLAINTEXT_LEN;

/// Record header: type, legacy version, length.
const HEADER_LEN: usize = 5;
const TAG_LEN: usize = 16;
/// Largest TLSCiphertext.length in TLS 1.3 (RFC 8446 §5.2).
const MAX_CIPHERTEXT_LEN: usize = MAX_PLAINTEXT_LEN + 256;
/// Bytes a record adds to its plaintext: header, inner content type, tag.
const RECORD_OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;
/// Largest post-handshake handshake message we reassemble (as rustls).
const MAX_HANDSHAKE_LEN: usize = 0xffff;
/// A sealed KeyUpdate: 4-byte message header, 1-byte body, record overhead.
const KEY_UPDATE_RECORD_LEN: usize = 5 + RECORD_OVERHEAD;

const TYPE_ALERT: u8 = 0x15;
const TYPE_HANDSHAKE: u8 = 0x16;
const TYPE_APPLICATION_DATA: u8 = 0x17;

const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const KEY_UPDATE_NOT_REQUESTED: u8 = 0;
const KEY_UPDATE_REQUESTED: u8 = 1;

/// KeyUpdates accepted without non-empty application data between them
/// (rustls 0.23: `TemperCounters::INITIAL_KEY_UPDATE_REQUESTS`; BoringSSL:
/// `kMaxKeyUpdates`).
const MAX_KEY_UPDATES_WITHOUT_DATA: u8 = 32;
/// Empty records accepted in a row (rustls 0.23:
/// `ALLOWED_CONSECUTIVE_EMPTY_FRAGMENTS_MAX`; BoringSSL: `kMaxEmptyRecords`).
const MAX_CONSECUTIVE_EMPTY_RECORDS: u8 = 32;
/// Warning alerts (user_canceled) accepted per session (rustls 0.23:
/// `allowed_warning_alerts`; BoringSSL: `kMaxWarningAlerts`).
const MAX_WARNING_ALERTS: u8 = 4;

const ALERT_LEVEL_WARNING: u8 = 1;
const ALERT_LEVEL_FATAL: u8 = 2;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_BAD_RECORD_MAC: u8 = 20;
const ALERT_RECORD_OVERFLOW: u8 = 22;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_INTERNAL_ERROR: u8 = 80;
const ALERT_USER_CANCELED: u8 = 90;

/// The AEAD of a TLS 1.3 cipher suite we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aead {
    /// TLS_AES_128_GCM_SHA256.
    Aes128Gcm,
    /// TLS_AES_256_GCM_SHA384.
    Aes256Gcm,
}

/// What the record layer asks of the TLS connection after the hand-over:
/// rustls keeps the key schedule and the session tickets.
pub(crate) trait KeySchedule {
    /// Our next sending key, after we send a KeyUpdate.
    fn next_tx_key(&mut self) -> Result<RecordKey, SessionError>;
    /// The peer's next sending key, after it sent a KeyUpdate.
    fn next_rx_key(&mut self) -> Result<RecordKey, SessionError>;
    /// A NewSessionTicket body (after its 4-byte header) from the server.
    fn new_session_ticket(&mut self, body: &[u8]) -> Result<(), SessionError>;
    /// The name of an alert description, for the error it ends the session with.
    fn alert_name(&self, description: u8) -> String;
}

/// A traffic key for one direction, with its sequence number.
pub(crate) struct RecordKey {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordKey")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl RecordKey {
    /// A key from its bytes, the static IV and the next sequence number.
    pub(crate) fn new(aead: Aead, key: &[u8], iv: &[u8], seq: u64) -> Result<Self, SessionError> {
        let alg = match aead {
            Aead::Aes128Gcm => &AES_128_GCM,
            Aead::Aes256Gcm => &AES_256_GCM,
        };
        let key = UnboundKey::new(alg, key)
            .map_err(|_| SessionError::Internal("traffic key has the wrong length".into()))?;
        let iv: [u8; NONCE_LEN] = iv
            .try_into()
            .map_err(|_| SessionError::Internal("traffic IV has the wrong length".into()))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The per-record nonce (RFC 8446 §5.3), then the next sequence number.
    fn next_nonce(&mut self) -> Result<Nonce, Fatal> {
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.seq.to_be_bytes())
        {
            *n ^= s;
        }
        self.seq = self.seq.checked_add(1).ok_or(Fatal {
            alert: None,
            error: SessionError::Internal("TLS record sequence number exhausted".into()),
        })?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// Seals one record of inner type `typ` carrying `payload` into `out`
    /// (`payload.len() + RECORD_OVERHEAD` bytes); returns its length.
    fn seal(&mut self, typ: u8, payload: &[u8], out: &mut [u8]) -> Result<usize, Fatal> {
        self.seal_parts(typ, &[payload], out)
    }

    /// Seals one record whose payload is `parts` one after another (at most
    /// [`MAX_PLAINTEXT_LEN`] bytes in all): the pieces are copied into the record as
    /// one payload would be, so gathering costs nothing over a contiguous payload.
    fn seal_parts(&mut self, typ: u8, parts: &[&[u8]], out: &mut [u8]) -> Result<usize, Fatal> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let inner = len + 1;
        let total = HEADER_LEN + inner + TAG_LEN;
        if len > MAX_PLAINTEXT_LEN || out.len() < total {
            return Err(internal("record does not fit the output buffer"));
        }
        let length = u16::try_from(inner + TAG_LEN).map_err(|_| internal("record too long"))?;
        let (header, rest) = out.split_at_mut(HEADER_LEN);
        let [l0, l1] = length.to_be_bytes();
        header.copy_from_slice(&[TYPE_APPLICATION_DATA, 0x03, 0x03, l0, l1]);
        let (body, rest) = rest.split_at_mut(inner);
        let mut at = 0;
        for part in parts {
            body[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        body[len] = typ;
        let nonce = self.next_nonce()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&*header), body)
            .map_err(|_| internal("AES-GCM seal failed"))?;
        rest[..TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(total)
    }

    /// Opens the record `buf[at..at + HEADER_LEN + len]` and writes its inner
    /// plaintext (content type and padding included) at `buf[dst..]`
    /// (`dst <= at`). Returns the inner content type and the content length.
    fn open(
        &mut self,
        buf: &mut [u8],
        dst: usize,
        at: usize,
        len: usize,
    ) -> Result<(u8, usize), Fatal> {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&buf[at..at + HEADER_LEN]);
        let nonce = self.next_nonce()?;
        let in_out = &mut buf[dst..at + HEADER_LEN + len];
        let plain = self
            .key
            .open_within(nonce, Aad::from(header), in_out, at + HEADER_LEN - dst..)
            .map_err(|_| Fatal {
                alert: Some(ALERT_BAD_RECORD_MAC),
                error: SessionError::Protocol("record failed to decrypt".into()),
            })?;
        // The content type is the last non-zero byte; zeros after it are padding.
        let Some(end) = plain.iter().rposition(|&b| b != 0) else {
            return Err(unexpected("record carries no content type"));
        };
        if end > MAX_PLAINTEXT_LEN {
            return Err(Fatal {
                alert: Some(ALERT_RECORD_OVERFLOW),
                error: SessionError::RecordTooLarge,
            });
        }
        Ok((plain[end], end))
    }
}

/// A failure of the record layer: the error, and the alert to send for it.
#[derive(Debug)]
pub(crate) struct Fatal {
    /// The alert description to send the peer, if any.
    pub(crate) alert: Option<u8>,
    /// What went wrong.
    pub(crate) error: SessionError,
}

fn internal(what: &str) -> Fatal {
    Fatal {
        alert: Some(ALERT_INTERNAL_ERROR),
        error: SessionError::Internal(what.into()),
    }
}

fn unexpected(what: &str) -> Fatal {
    Fatal {
        alert: Some(ALERT_UNEXPECTED_MESSAGE),
        error: SessionError::Protocol(what.into()),
    }
}

fn decode_error(what: &str) -> Fatal {
    Fatal {
        alert: Some(ALERT_DECODE_ERROR),
        error: SessionError::Protocol(what.into()),
    }
}

fn from_tls(error: SessionError) -> Fatal {
    let alert = match error {
        SessionError::Protocol(_) => ALERT_UNEXPECTED_MESSAGE,
        _ => ALERT_INTERNAL_ERROR,
    };
    Fatal {
        alert: Some(alert),
        error,
    }
}

/// The ciphertext regions of the incoming buffer that [`RecordLayer::open`]
/// works on: `buf[plain_end..cipher_start]` is free, `buf[cipher_start..cipher_end]`
/// is ciphertext not yet opened. (No `Debug`: it would print plaintext.)
pub(crate) struct Incoming<'a> {
    /// The whole incoming buffer.
    pub(crate) buf: &'a mut [u8],
    /// End of the plaintext waiting for the caller; advanced as records open.
    pub(crate) plain_end: usize,
    /// Start of unopened ciphertext; advanced as records open.
    pub(crate) cipher_start: usize,
    /// End of the ciphertext received.
    pub(crate) cipher_end: usize,
}

/// Our record layer: both traffic keys and the state of post-handshake
/// messages.
#[derive(Debug)]
pub(crate) struct RecordLayer {
    tx: RecordKey,
    rx: RecordKey,
    /// Update our sending key when its sequence number reaches this.
    tx_limit: u64,
    /// The peer asked for a key update; we owe it one before our next record.
    update_requested: bool,
    /// A handshake message spanning records, being reassembled.
    handshake: Vec<u8>,
    /// The peer's close_notify arrived.
    peer_closed: bool,
    /// What the peer sent that is legal but yields no data, against its limits.
    temper: Temper,
}

/// Counts of legal messages that carry no application data; each is limited so
/// a peer cannot keep us busy with them (the limits rustls 0.23 applies).
#[derive(Debug, Default)]
struct Temper {
    /// KeyUpdates since the last non-empty application data.
    key_updates: u8,
    /// Empty records in a row.
    empty_records: u8,
    /// Warning alerts in this session.
    warning_alerts: u8,
}

impl Temper {
    /// Counts a record whose content (after padding) is `len` bytes.
    fn record(&mut self, typ: u8, len: usize) -> Result<(), Fatal> {
        if len > 0 {
            self.empty_records = 0;
            if typ == TYPE_APPLICATION_DATA {
                self.key_updates = 0;
            }
            return Ok(());
        }
        self.empty_records = bump(self.empty_records, MAX_CONSECUTIVE_EMPTY_RECORDS)
            .ok_or_else(|| unexpected("too many empty records in a row"))?;
        Ok(())
    }

    fn key_update(&mut self) -> Result<(), Fatal> {
        self.key_updates = bump(self.key_updates, MAX_KEY_UPDATES_WITHOUT_DATA)
            .ok_or_else(|| unexpected("too many KeyUpdates without application data"))?;
        Ok(())
    }

    fn warning_alert(&mut self) -> Result<(), Fatal> {
        self.warning_alerts = bump(self.warning_alerts, MAX_WARNING_ALERTS)
            .ok_or_else(|| unexpected("too many warning alerts"))?;
        Ok(())
    }
}

/// `count + 1` while that stays within `limit`.
fn bump(count: u8, limit: u8) -> Option<u8> {
    count.checked_add(1).filter(|&c| c <= limit)
}

impl RecordLayer {
    /// A record layer taking over from rustls with these keys. `tx_limit` is
    /// how many records one key may seal (the suite's confidentiality limit).
    pub(crate) fn new(tx: RecordKey, rx: RecordKey, tx_limit: u64) -> Self {
        Self {
            tx,
            rx,
            tx_limit,
            update_requested: false,
            handshake: Vec::new(),
            peer_closed: false,
            temper: Temper::default(),
        }
    }

    /// True once the peer's close_notify arrived.
    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// True while a handshake message is partially received.
    pub(crate) fn has_partial_message(&self) -> bool {
        !self.handshake.is_empty()
    }

    /// Opens every complete record of `io`, appending application data to the
    /// plaintext at `io.plain_end`.
    pub(crate) fn open(
        &mut self,
        conn: &mut impl KeySchedule,
        io: &mut Incoming<'_>,
    ) -> Result<(), Fatal> {
        while !self.peer_closed {
            let at = io.cipher_start;
            let Some(header) = io.buf[..io.cipher_end].get(at..at + HEADER_LEN) else {
                break;
            };
            if header[0] != TYPE_APPLICATION_DATA {
                return Err(unexpected("unprotected record after the handshake"));
            }
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if len > MAX_CIPHERTEXT_LEN {
                return Err(Fatal {
                    alert: Some(ALERT_RECORD_OVERFLOW),
                    error: SessionError::RecordTooLarge,
                });
            }
            let end = at + HEADER_LEN + len;
            if end > io.cipher_end {
                break;
            }
            let dst = io.plain_end;
            let (typ, n) = self.rx.open(io.buf, dst, at, len)?;
            io.cipher_start = end;
            self.temper.record(typ, n)?;
            match typ {
                TYPE_APPLICATION_DATA => {
                    if self.has_partial_message() {
                        return Err(unexpected("application data inside a handshake message"));
                    }
                    io.plain_end += n;
                }
                TYPE_HANDSHAKE => {
                    let message = &io.buf[dst..dst + n];
                    self.handshake_record(conn, message)?;
                }
                TYPE_ALERT => {
                    if self.has_partial_message() {
                        return Err(unexpected("alert inside a handshake message"));
                    }
                    self.alert(conn, &io.buf[dst..dst + n])?;
                }
                _ => return Err(unexpected("record of unknown content type")),
            }
        }
        if self.peer_closed {
            // Anything after close_notify is ignored (RFC 8446 §6.1).
            io.cipher_start = io.cipher_end;
        }
        Ok(())
    }

    fn handshake_record(
        &mut self,
        conn: &mut impl KeySchedule,
        record: &[u8],
    ) -> Result<(), Fatal> {
        if record.is_empty() {
            return Err(unexpected("empty handshake record"));
        }
        if self.handshake.is_empty() {
            let rest = self.handshake_messages(conn, record)?;
            if !rest.is_empty() {
                self.handshake.extend_from_slice(rest);
            }
            return Ok(());
        }
        if self.handshake.len() + record.len() > MAX_HANDSHAKE_LEN + 4 {
            return Err(decode_error("post-handshake message too large"));
        }
        let mut joined = std::mem::take(&mut self.handshake);
        joined.extend_from_slice(record);
        let rest = self.handshake_messages(conn, &joined)?.to_vec();
        joined.clear();
        joined.extend_from_slice(&rest);
        self.handshake = joined;
        Ok(())
    }

    /// Handles the complete messages at the front of `data` (which ends at a
    /// record boundary); returns the incomplete tail.
    fn handshake_messages<'d>(
        &mut self,
        conn: &mut impl KeySchedule,
        mut data: &'d [u8],
    ) -> Result<&'d [u8], Fatal> {
        while let [typ, a, b, c, rest @ ..] = data {
            let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
            if len > MAX_HANDSHAKE_LEN {
                return Err(decode_error("post-handshake message too large"));
            }
            if rest.len() < len {
                break;
            }
            let (body, after) = rest.split_at(len);
            match *typ {
                HANDSHAKE_KEY_UPDATE => {
                    // A key change must end its record (RFC 8446 §5.1).
                    if !after.is_empty() {
                        return Err(unexpected("KeyUpdate not at the end of its record"));
                    }
                    match body {
                        [KEY_UPDATE_NOT_REQUESTED] => {}
                        [KEY_UPDATE_REQUESTED] => self.update_requested = true,
                        _ => return Err(decode_error("malformed KeyUpdate")),
                    }
                    self.temper.key_update()?;
                    self.rx = conn.next_rx_key().map_err(from_tls)?;
                }
                HANDSHAKE_NEW_SESSION_TICKET => conn.new_session_ticket(body).map_err(from_tls)?,
                _ => return Err(unexpected("unexpected post-handshake message")),
            }
            data = after;
        }
        Ok(data)
    }

    fn alert(&mut self, conn: &impl KeySchedule, alert: &[u8]) -> Result<(), Fatal> {
        match *alert {
            [_, ALERT_CLOSE_NOTIFY] => {
                self.peer_closed = true;
                Ok(())
            }
            [ALERT_LEVEL_WARNING, ALERT_USER_CANCELED] => self.temper.warning_alert(),
            [ALERT_LEVEL_WARNING | ALERT_LEVEL_FATAL, description] => Err(Fatal {
                alert: None,
                error: SessionError::AlertReceived(conn.alert_name(description)),
            }),
            _ => Err(decode_error("malformed alert")),
        }
    }

    /// Writes the records we owe the peer (a key update) into `out`; returns
    /// their length. Also rolls our key before its confidentiality limit.
    /// Nothing is written while `out` is too small; [`RecordLayer::owes_update`]
    /// then stays true.
    pub(crate) fn flush(
        &mut self,
        conn: &mut impl KeySchedule,
        out: &mut [u8],
    ) -> Result<usize, Fatal> {
        if !self.owes_update() || out.len() < KEY_UPDATE_RECORD_LEN {
            return Ok(0);
        }
        let message = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, KEY_UPDATE_NOT_REQUESTED];
        let n = self.tx.seal(TYPE_HANDSHAKE, &message, out)?;
        self.tx = conn.next_tx_key().map_err(from_tls)?;
        self.update_requested = false;
        Ok(n)
    }

    /// True while we must send a KeyUpdate before any other record.
    pub(crate) fn owes_update(&self) -> bool {
        self.update_requested || self.tx.seq >= self.tx_limit
    }

    /// Seals a prefix of `data` into `out` as 16 KiB records (then one shorter
    /// record in what room is left). Returns (plaintext taken, bytes written).
    pub(crate) fn seal(
        &mut self,
        conn: &mut impl KeySchedule,
        data: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, usize), Fatal> {
        let (mut taken, mut written) = (0, 0);
        while taken < data.len() {
            written += self.flush(conn, &mut out[written..])?;
            let room = (out.len() - written).saturating_sub(RECORD_OVERHEAD);
            let n = room.min(MAX_PLAINTEXT_LEN).min(data.len() - taken);
            if n == 0 || self.owes_update() {
                break;
            }
            written += self.tx.seal(
                TYPE_APPLICATION_DATA,
                &data[taken..taken + n],
                &mut out[written..],
            )?;
            taken += n;
        }
        Ok((taken, written))
    }

    /// [`RecordLayer::seal`] for a payload in pieces: records are filled across
    /// piece boundaries, so a small piece (an HTTP/2 frame header) shares its record
    /// with what follows instead of costing a record of its own. Returns the bytes
    /// taken (a prefix of the pieces' concatenation) and written.
    pub(crate) fn seal_vectored(
        &mut self,
        conn: &mut impl KeySchedule,
        data: &[&[u8]],
        out: &mut [u8],
    ) -> Result<(usize, usize), Fatal> {
        let total: usize = data.iter().map(|d| d.len()).sum();
        let (mut taken, mut written) = (0, 0);
        let mut at = (0, 0);
        while taken < total {
            written += self.flush(conn, &mut out[written..])?;
            let room = (out.len() - written).saturating_sub(RECORD_OVERHEAD);
            let want = room.min(MAX_PLAINTEXT_LEN).min(total - taken);
            if want == 0 || self.owes_update() {
                break;
            }
            let mut parts: [&[u8]; MAX_PARTS] = [&[]; MAX_PARTS];
            let (n, len) = gather(data, &mut at, want, &mut parts);
            written +=
                self.tx
                    .seal_parts(TYPE_APPLICATION_DATA, &parts[..n], &mut out[written..])?;
            taken += len;
        }
        Ok((taken, written))
    }

    /// Writes a close_notify alert into `out`; returns its length.
    pub(crate) fn close_notify(&mut self, out: &mut [u8]) -> Result<usize, Fatal> {
        self.tx
            .seal(TYPE_ALERT, &[ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY], out)
    }

    /// Writes a fatal alert into `out` (best effort); returns its length.
    pub(crate) fn fatal_alert(&mut self, description: u8, out: &mut [u8]) -> usize {
        self.tx
            .seal(TYPE_ALERT, &[ALERT_LEVEL_FATAL, description], out)
            .unwrap_or(0)
    }
}

/// The most pieces one record is gathered from (an HTTP/2 write has a few).
const MAX_PARTS: usize = 16;

/// Takes up to `want` bytes from `data` starting at `at` (piece, offset) into
/// `parts`, advancing `at`; returns how many parts were filled and their length.
fn gather<'a>(
    data: &[&'a [u8]],
    at: &mut (usize, usize),
    mut want: usize,
    parts: &mut [&'a [u8]; MAX_PARTS],
) -> (usize, usize) {
    let (mut n, mut len) = (0, 0);
    while want > 0 && n < MAX_PARTS {
        let Some(piece) = data.get(at.0) else { break };
        let part = &piece[at.1..at.1 + want.min(piece.len() - at.1)];
        if !part.is_empty() {
            parts[n] = part;
            n += 1;
        }
        len += part.len();
        want -= part.len();
        at.1 += part.len();
        if at.1 == piece.len() {
            *at = (at.0 + 1, 0);
        }
    }
    (n, len)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
impl RecordLayer {
    /// Seals an arbitrary inner record (tests craft peer misbehaviour).
    pub(crate) fn seal_raw(&mut self, typ: u8, payload: &[u8], out: &mut [u8]) -> usize {
        self.tx.seal(typ, payload, out).unwrap()
    }

    /// Sends a KeyUpdate made of `fragments` (one record each), then moves
    /// to our next key.
    pub(crate) fn key_update_raw(
        &mut self,
        conn: &mut impl KeySchedule,
        fragments: &[&[u8]],
        out: &mut [u8],
    ) -> usize {
        let mut n = 0;
        for fragment in fragments {
            n += self
                .tx
                .seal(TYPE_HANDSHAKE, fragment, &mut out[n..])
                .unwrap();
        }
        self.tx = conn.next_tx_key().unwrap();
        n
    }

    /// Makes our key update due after `records` more records.
    pub(crate) fn limit_tx(&mut self, records: u64) {
        self.tx_limit = self.tx.seq + records;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn pair(aead: Aead) -> (RecordKey, RecordKey) {
        let key = vec![9u8; if aead == Aead::Aes128Gcm { 16 } else { 32 }];
        let iv = [3u8; 12];
        (
            RecordKey::new(aead, &key, &iv, 0).unwrap(),
            RecordKey::new(aead, &key, &iv, 0).unwrap(),
        )
    }

    #[test]
    fn seal_then_open_moves_plaintext_down() {
        for aead in [Aead::Aes128Gcm, Aead::Aes256Gcm] {
            let (mut tx, mut rx) = pair(aead);
            let mut buf = vec![0u8; 4 * (MAX_PLAINTEXT_LEN + RECORD_OVERHEAD)];
            let a = tx.seal(TYPE_APPLICATION_DATA, b"hello ", &mut buf).unwrap();
            let b = tx
                .seal(TYPE_APPLICATION_DATA, b"world", &mut buf[a..])
                .unwrap();
            assert_eq!(a, 6 + RECORD_OVERHEAD);
            assert_eq!(b, 5 + RECORD_OVERHEAD);
            let (typ, n) = rx.open(&mut buf, 0, 0, a - HEADER_LEN).unwrap();
            assert_eq!((typ, n), (TYPE_APPLICATION_DATA, 6));
            let (typ, m) = rx.open(&mut buf, n, a, b - HEADER_LEN).unwrap();
            assert_eq!((typ, m), (TYPE_APPLICATION_DATA, 5));
            assert_eq!(&buf[..n + m], b"hello world");
        }
    }

    #[test]
    fn nonce_follows_the_sequence_number() {
        let (mut tx, mut rx) = pair(Aead::Aes128Gcm);
        let mut buf = vec![0u8; 64];
        let n = tx.seal(TYPE_APPLICATION_DATA, b"x", &mut buf).unwrap();
        // A receiver one record ahead cannot open it (replay/reorder).
        rx.seq = 1;
        assert!(rx.open(&mut buf, 0, 0, n - HEADER_LEN).is_err());
    }

    #[test]
    fn padding_is_stripped_and_all_zero_is_refused() {
        let (mut tx, mut rx) = pair(Aead::Aes128Gcm);
        let mut buf = vec![0u8; 64];
        // Inner plaintext "ab" + type + two bytes of padding, sealed by hand.
        let n = tx
            .seal(0, &[b'a', b'b', TYPE_APPLICATION_DATA, 0], &mut buf)
            .unwrap();
        let (typ, len) = rx.open(&mut buf, 0, 0, n - HEADER_LEN).unwrap();
        assert_eq!((typ, len), (TYPE_APPLICATION_DATA, 2));
        let n = tx.seal(0, &[0, 0], &mut buf).unwrap();
        let e = rx.open(&mut buf, 0, 0, n - HEADER_LEN).unwrap_err();
        assert_eq!(e.alert, Some(ALERT_UNEXPECTED_MESSAGE));
    }

    #[test]
    fn tampering_is_bad_record_mac() {
        let (mut tx, mut rx) = pair(Aead::Aes256Gcm);
        let mut buf = vec![0u8; 64];
        let n = tx.seal(TYPE_APPLICATION_DATA, b"data", &mut buf).unwrap();
        buf[3] ^= 1; // the header is authenticated too
        let e = rx.open(&mut buf, 0, 0, n - HEADER_LEN).unwrap_err();
        assert_eq!(e.alert, Some(ALERT_BAD_RECORD_MAC));
    }

    #[test]
    fn a_record_sealed_from_pieces_equals_one_sealed_from_their_concatenation() {
        let (mut a, _) = pair(Aead::Aes128Gcm);
        let (mut b, mut rx) = pair(Aead::Aes128Gcm);
        let mut one = vec![0u8; 128];
        let mut two = vec![0u8; 128];
        let n = a
            .seal(TYPE_APPLICATION_DATA, b"header:payload", &mut one)
            .unwrap();
        let m = b
            .seal_parts(
                TYPE_APPLICATION_DATA,
                &[b"header:", b"", b"payload"],
                &mut two,
            )
            .unwrap();
        assert_eq!(one[..n], two[..m]);
        let (_, len) = rx.open(&mut two, 0, 0, m - HEADER_LEN).unwrap();
        assert_eq!(&two[..len], b"header:payload");
    }

    #[test]
    fn gathering_fills_records_across_pieces_and_keeps_every_byte_in_order() {
        let pieces: Vec<Vec<u8>> = [9usize, 20_000, 0, 5, 30_000, 1]
            .iter()
            .enumerate()
            .map(|(i, &len)| (0..len).map(|j| (i * 31 + j) as u8).collect())
            .collect();
        let data: Vec<&[u8]> = pieces.iter().map(|p| p.as_slice()).collect();
        let total: usize = pieces.iter().map(Vec::len).sum();
        let mut at = (0, 0);
        let mut joined = Vec::new();
        let mut records = Vec::new();
        while joined.len() < total {
            let mut parts: [&[u8]; MAX_PARTS] = [&[]; MAX_PARTS];
            let (n, len) = gather(&data, &mut at, MAX_PLAINTEXT_LEN, &mut parts);
            assert!(parts[..n].iter().all(|p| !p.is_empty()));
            assert_eq!(parts[..n].iter().map(|p| p.len()).sum::<usize>(), len);
            parts[..n].iter().for_each(|p| joined.extend_from_slice(p));
            records.push(len);
        }
        assert_eq!(joined, pieces.concat());
        // The 9-byte header rides in the first full record; only the last is short.
        assert_eq!(records, [16_384, 16_384, 16_384, 863]);
        assert_eq!(at, (data.len(), 0));
    }

    #[test]
    fn gathering_many_tiny_pieces_stops_at_the_part_limit_and_resumes() {
        let pieces: Vec<Vec<u8>> = (0..40).map(|i| vec![i as u8; 1 + i % 9]).collect();
        let data: Vec<&[u8]> = pieces.iter().map(|p| p.as_slice()).collect();
        let total: usize = pieces.iter().map(Vec::len).sum();
        let mut at = (0, 0);
        let mut joined = Vec::new();
        let mut counts = Vec::new();
        while joined.len() < total {
            let mut parts: [&[u8]; MAX_PARTS] = [&[]; MAX_PARTS];
            let (n, len) = gather(&data, &mut at, MAX_PLAINTEXT_LEN, &mut parts);
            assert!(len > 0, "no progress at {at:?}");
            parts[..n].iter().for_each(|p| joined.extend_from_slice(p));
            counts.push(n);
        }
        assert_eq!(joined, pieces.concat());
        assert_eq!(counts, [16, 16, 8]);
    }
}
