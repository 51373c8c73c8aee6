//! Our session against a plain rustls peer (the buffered `ClientConnection`
//! and `ServerConnection`) after the handshake, where our own record layer
//! runs: bulk data both ways on each AES-GCM suite, session tickets, a key
//! update the rustls peer starts, alerts and close_notify.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::sync::Arc;

use common::*;
use rustls::crypto::ring::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
use rustls::{CipherSuite, SupportedCipherSuite};
use zpath_crypto::{SessionError, TlsSession, MAX_RECORD_LEN};

fn mesh_root() -> &'static TestRoot {
    static ROOT: std::sync::OnceLock<TestRoot> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| TestRoot::new("mesh root"))
}

fn only(suite: SupportedCipherSuite) -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..rustls::crypto::ring::default_provider()
    })
}

/// Our client against a plain rustls server offering only `suite`.
fn our_client(suite: SupportedCipherSuite) -> (TlsSession, rustls::Connection) {
    let mesh = mesh_root();
    let (chain, key) = mesh.sign(&good_leaf(SERVER_ID));
    let mut ours = client_session(&mesh.issue(CLIENT_ID), &[SERVER_ID]);
    let mut theirs = foreign_server_with(chain, &key, only(suite));
    let (a, b) = handshake_foreign(&mut ours, &mut theirs);
    a.unwrap();
    b.unwrap();
    (ours, theirs)
}

/// Our server against a plain rustls client offering only `suite`.
fn our_server(suite: SupportedCipherSuite) -> (TlsSession, rustls::Connection) {
    let mesh = mesh_root();
    let (chain, key) = mesh.sign(&good_leaf(CLIENT_ID));
    let mut ours = server_session(&mesh.issue(SERVER_ID));
    let mut theirs = foreign_client_with(Some((chain, &key)), only(suite), b"h2");
    let (a, b) = handshake_foreign(&mut ours, &mut theirs);
    a.unwrap();
    b.unwrap();
    (ours, theirs)
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Feeds the rustls peer, returning its error if the bytes are refused.
/// What it decrypts is dropped.
fn to_theirs(theirs: &mut rustls::Connection, wire: &[u8]) -> Result<(), rustls::Error> {
    to_theirs_into(theirs, wire, &mut Vec::new())
}

/// Feeds the rustls peer, appending what it decrypts to `received`.
fn to_theirs_into(
    theirs: &mut rustls::Connection,
    mut wire: &[u8],
    received: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let mut chunk = vec![0u8; 64 * 1024];
    while !wire.is_empty() {
        theirs.read_tls(&mut wire).unwrap();
        theirs.process_new_packets()?;
        loop {
            match theirs.reader().read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("rustls peer read: {e}"),
            }
        }
    }
    Ok(())
}

/// Everything the rustls peer wants to send.
fn from_theirs(theirs: &mut rustls::Connection) -> Vec<u8> {
    let mut wire = Vec::new();
    while theirs.wants_write() {
        theirs.write_tls(&mut wire).unwrap();
    }
    wire
}

/// Feeds our session and processes; whatever it answers goes to the peer.
fn to_ours(
    ours: &mut TlsSession,
    theirs: &mut rustls::Connection,
    wire: &[u8],
    received: &mut Vec<u8>,
) -> Result<usize, SessionError> {
    let mut out = vec![0u8; 2 * MAX_RECORD_LEN];
    let mut answered = 0;
    let mut fed = 0;
    loop {
        fed += ours.feed(&wire[fed..]);
        let n = ours.process(&mut out)?;
        answered += n;
        to_theirs(theirs, &out[..n]).unwrap();
        received.extend_from_slice(ours.plaintext());
        let len = ours.plaintext().len();
        ours.consume(len);
        if fed == wire.len() && n == 0 {
            return Ok(answered);
        }
    }
}

/// Ours -> theirs: seals `data`, the rustls peer reads it back.
fn send_ours(ours: &mut TlsSession, theirs: &mut rustls::Connection, data: &[u8]) {
    let mut wire = vec![0u8; 3 * MAX_RECORD_LEN];
    let mut sent = 0;
    let mut received = Vec::new();
    while sent < data.len() {
        let s = ours.seal(&data[sent..], &mut wire).unwrap();
        sent += s.consumed;
        to_theirs_into(theirs, &wire[..s.written], &mut received).unwrap();
    }
    assert!(received == data, "rustls peer received different bytes");
}

/// Ours -> theirs in pieces, as HTTP/2 writes a frame header and its payload: records
/// are filled across pieces, and the rustls peer reads back their concatenation.
fn send_ours_vectored(ours: &mut TlsSession, theirs: &mut rustls::Connection, pieces: &[&[u8]]) {
    let all = pieces.concat();
    let mut wire = vec![0u8; 3 * MAX_RECORD_LEN];
    let mut sent = 0;
    let mut received = Vec::new();
    while sent < all.len() {
        // The pieces not sent yet.
        let mut skip = sent;
        let rest: Vec<&[u8]> = pieces
            .iter()
            .filter_map(|p| {
                let drop = skip.min(p.len());
                skip -= drop;
                (drop < p.len()).then(|| &p[drop..])
            })
            .collect();
        let s = ours.seal_vectored(&rest, &mut wire).unwrap();
        sent += s.consumed;
        to_theirs_into(theirs, &wire[..s.written], &mut received).unwrap();
    }
    assert!(received == all, "rustls peer received different bytes");
}

/// Theirs -> ours: the rustls peer writes `data`, our session opens it.
fn send_theirs(ours: &mut TlsSession, theirs: &mut rustls::Connection, data: &[u8]) {
    let mut received = Vec::new();
    for chunk in data.chunks(48 * 1024) {
        theirs.writer().write_all(chunk).unwrap();
        let wire = from_theirs(theirs);
        to_ours(ours, theirs, &wire, &mut received).unwrap();
    }
    assert!(received == data, "our session received different bytes");
}

fn check_suite(theirs: &rustls::Connection, suite: CipherSuite) {
    assert_eq!(theirs.negotiated_cipher_suite().unwrap().suite(), suite);
}

fn bulk_both_ways_with_key_updates_and_close(mut ours: TlsSession, mut theirs: rustls::Connection) {
    let up = payload(1024 * 1024 + 123, 1);
    let down = payload(1024 * 1024 + 77, 2);
    send_ours(&mut ours, &mut theirs, &up);
    send_theirs(&mut ours, &mut theirs, &down);

    // A frame header and a 1-byte payload leave as one record of 10 bytes.
    let mut wire = vec![0u8; MAX_RECORD_LEN];
    let s = ours.seal_vectored(&[&[0u8; 9], b"x"], &mut wire).unwrap();
    assert_eq!((s.consumed, s.written), (10, 5 + 10 + 1 + 16));
    let mut received = Vec::new();
    to_theirs_into(&mut theirs, &wire[..s.written], &mut received).unwrap();
    assert_eq!(received, b"\0\0\0\0\0\0\0\0\0x");
    // Pieces of every size, records spanning them.
    send_ours_vectored(
        &mut ours,
        &mut theirs,
        &[
            &[1u8; 9],
            &up[..40_000],
            b"",
            &[2u8; 5],
            &up[40_000..300_000],
            b"z",
        ],
    );

    // The rustls peer updates its keys and asks for ours (update_requested).
    for round in 0..3 {
        theirs.refresh_traffic_keys().unwrap();
        theirs
            .writer()
            .write_all(b"after their key update")
            .unwrap();
        let wire = from_theirs(&mut theirs);
        let mut received = Vec::new();
        let answered = to_ours(&mut ours, &mut theirs, &wire, &mut received).unwrap();
        assert_eq!(received, b"after their key update", "round {round}");
        assert!(answered > 0, "round {round}: our KeyUpdate answer was sent");
        // Both directions still work on the new keys.
        send_ours(&mut ours, &mut theirs, &up[..100_000]);
        send_theirs(&mut ours, &mut theirs, &down[..100_000]);
    }

    // close_notify both ways: ours first (half-close), then theirs.
    let mut out = vec![0u8; MAX_RECORD_LEN];
    let n = ours.close(&mut out).unwrap();
    assert!(n > 0);
    to_theirs(&mut theirs, &out[..n]).unwrap();
    let mut sink = [0u8; 16];
    assert_eq!(theirs.reader().read(&mut sink).unwrap(), 0, "clean EOF");
    send_theirs(&mut ours, &mut theirs, b"still talking after your close");
    theirs.send_close_notify();
    let wire = from_theirs(&mut theirs);
    to_ours(&mut ours, &mut theirs, &wire, &mut Vec::new()).unwrap();
    assert!(ours.peer_closed());
    assert_eq!(ours.transport_eof(), Ok(()));
}

#[test]
fn our_client_with_rustls_server_aes128() {
    let (ours, theirs) = our_client(TLS13_AES_128_GCM_SHA256);
    check_suite(&theirs, CipherSuite::TLS13_AES_128_GCM_SHA256);
    bulk_both_ways_with_key_updates_and_close(ours, theirs);
}

#[test]
fn our_client_with_rustls_server_aes256() {
    let (ours, theirs) = our_client(TLS13_AES_256_GCM_SHA384);
    check_suite(&theirs, CipherSuite::TLS13_AES_256_GCM_SHA384);
    bulk_both_ways_with_key_updates_and_close(ours, theirs);
}

#[test]
fn our_server_with_rustls_client_aes128() {
    let (ours, theirs) = our_server(TLS13_AES_128_GCM_SHA256);
    check_suite(&theirs, CipherSuite::TLS13_AES_128_GCM_SHA256);
    bulk_both_ways_with_key_updates_and_close(ours, theirs);
}

#[test]
fn our_server_with_rustls_client_aes256() {
    let (ours, theirs) = our_server(TLS13_AES_256_GCM_SHA384);
    check_suite(&theirs, CipherSuite::TLS13_AES_256_GCM_SHA384);
    bulk_both_ways_with_key_updates_and_close(ours, theirs);
}

#[test]
fn rustls_peer_closing_first_is_seen() {
    let (mut ours, mut theirs) = our_server(TLS13_AES_128_GCM_SHA256);
    theirs.writer().write_all(b"bye").unwrap();
    theirs.send_close_notify();
    let wire = from_theirs(&mut theirs);
    let mut received = Vec::new();
    to_ours(&mut ours, &mut theirs, &wire, &mut received).unwrap();
    assert_eq!(received, b"bye");
    assert!(ours.peer_closed());
    // We may still write (half-close), then close.
    send_ours(&mut ours, &mut theirs, b"reply");
    let mut out = vec![0u8; MAX_RECORD_LEN];
    let n = ours.close(&mut out).unwrap();
    to_theirs(&mut theirs, &out[..n]).unwrap();
    let mut sink = [0u8; 16];
    assert_eq!(theirs.reader().read(&mut sink).unwrap(), 0, "clean EOF");
}

#[test]
fn tampered_record_gets_a_fatal_alert_both_ways() {
    // Our record tampered: the rustls peer refuses it and alerts us.
    let (mut ours, mut theirs) = our_client(TLS13_AES_256_GCM_SHA384);
    let mut wire = vec![0u8; MAX_RECORD_LEN];
    let s = ours.seal(b"tampered", &mut wire).unwrap();
    wire[s.written - 1] ^= 0x80;
    assert!(to_theirs(&mut theirs, &wire[..s.written]).is_err());
    let alert = from_theirs(&mut theirs);
    let err = to_ours(&mut ours, &mut theirs, &alert, &mut Vec::new()).unwrap_err();
    assert_eq!(err.label(), "alert_received", "{err}");
    assert!(err.to_string().contains("BadRecordMac"), "{err}");

    // Their record tampered: we refuse it and alert the rustls peer.
    let (mut ours, mut theirs) = our_server(TLS13_AES_128_GCM_SHA256);
    theirs.writer().write_all(b"tampered").unwrap();
    let mut wire = from_theirs(&mut theirs);
    let last = wire.len() - 1;
    wire[last] ^= 0x80;
    let err = to_ours(&mut ours, &mut theirs, &wire, &mut Vec::new()).unwrap_err();
    assert_eq!(err.label(), "protocol_error", "{err}");
    let mut out = vec![0u8; MAX_RECORD_LEN];
    let n = ours.failure_alert(&mut out);
    assert!(n > 0);
    match to_theirs(&mut theirs, &out[..n]) {
        Err(rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)) => {}
        other => panic!("expected bad_record_mac at the rustls peer, got {other:?}"),
    }
}
