//! The sans-I/O session: bad input (garbage, oversized and truncated records,
//! tampering, random bytes), record sizing, flow control and API misuse.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use zpath_crypto::{
    CertifiedTls, LocalCa, SessionBuffers, SessionError, TlsSession, MAX_PLAINTEXT_LEN,
    MAX_RECORD_LEN,
};

fn certs() -> (std::sync::Arc<CertifiedTls>, std::sync::Arc<CertifiedTls>) {
    let ca = LocalCa::generate().unwrap();
    (
        certified(ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap()),
        certified(ca.issue(&id(SERVER_ID), Duration::from_secs(600)).unwrap()),
    )
}

fn established() -> (TlsSession, TlsSession) {
    let (c, s) = certs();
    let mut client = client_session(&c, &[SERVER_ID]);
    let mut server = server_session(&s);
    let (cr, sr) = handshake(&mut client, &mut server);
    cr.unwrap();
    sr.unwrap();
    (client, server)
}

fn out() -> Vec<u8> {
    vec![0u8; 8 * MAX_RECORD_LEN]
}

#[test]
fn garbage_before_client_hello_is_a_protocol_error() {
    let (_, s) = certs();
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"[..],
        &b"\x00\x00\x00\x00\x00\x00\x00\x00"[..],
        &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
        &b"\x16\x07\x07\x00\x10hello world12345"[..],
    ] {
        let mut server = server_session(&s);
        server.feed(garbage);
        let err = server.process(&mut out()).unwrap_err();
        assert_eq!(err.label(), "protocol_error", "{garbage:?}: {err}");
        // Sticky: later calls fail the same way.
        assert_eq!(server.process(&mut out()).unwrap_err(), err);
        assert!(server.failure_alert(&mut out()) > 0, "an alert is sent");
    }
}

#[test]
fn oversized_record_length_in_handshake_is_refused() {
    let (_, s) = certs();
    let mut server = server_session(&s);
    server.feed(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x01]);
    let err = server.process(&mut out()).unwrap_err();
    assert_eq!(err, SessionError::RecordTooLarge);
}

#[test]
fn oversized_application_record_is_refused() {
    for len in [0xffffu16, 16384 + 2048 + 1] {
        let (_, mut server) = established();
        // Only the header is needed for the length check.
        server.feed(&[0x17, 0x03, 0x03, (len >> 8) as u8, len as u8, 0xaa, 0xbb]);
        let err = server.process(&mut out()).unwrap_err();
        assert_eq!(err, SessionError::RecordTooLarge, "length {len}");
    }
    // Longer than TLS 1.3 allows but within what the record layer buffers:
    // refused when it fails to authenticate.
    let (_, mut server) = established();
    let len = (16384 + 256 + 1) as u16;
    let mut record = vec![0x17, 0x03, 0x03];
    record.extend_from_slice(&len.to_be_bytes());
    record.resize(5 + len as usize, 0xaa);
    server.feed(&record);
    assert!(server.process(&mut out()).is_err());
    assert!(server.plaintext().is_empty());
}

#[test]
fn truncated_records_are_reported_at_eof() {
    let (c, s) = certs();
    // A partial ClientHello.
    let mut client = client_session(&c, &[SERVER_ID]);
    let mut hello = out();
    let n = client.process(&mut hello).unwrap();
    let mut server = server_session(&s);
    server.feed(&hello[..n / 2]);
    assert_eq!(server.process(&mut out()).unwrap(), 0);
    assert!(server.is_handshaking());
    assert_eq!(server.transport_eof(), Err(SessionError::Truncated));

    // A partial application record.
    let (mut client, mut server) = established();
    let mut wire = out();
    let sealed = client.seal(b"some data", &mut wire).unwrap();
    server.feed(&wire[..sealed.written - 3]);
    server.process(&mut out()).unwrap();
    assert!(server.plaintext().is_empty());
    assert_eq!(server.transport_eof(), Err(SessionError::Truncated));
    server.feed(&wire[sealed.written - 3..sealed.written]);
    server.process(&mut out()).unwrap();
    assert_eq!(server.plaintext(), b"some data");
    assert_eq!(server.transport_eof(), Err(SessionError::UncleanClose));
}

#[test]
fn tampered_ciphertext_fails_to_decrypt() {
    let (mut client, mut server) = established();
    let mut wire = out();
    let sealed = client.seal(b"attack at dawn", &mut wire).unwrap();
    wire[sealed.written - 1] ^= 0x01;
    server.feed(&wire[..sealed.written]);
    let err = server.process(&mut out()).unwrap_err();
    assert_eq!(err.label(), "protocol_error", "{err}");
    assert!(server.plaintext().is_empty());
}

/// A small deterministic generator, so a failure reproduces.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn random_bytes_never_panic_or_stall() {
    let (c, s) = certs();
    let mut rng = Lcg(0x5eed);
    let mut client = client_session(&c, &[SERVER_ID]);
    let mut hello = out();
    let hello_len = client.process(&mut hello).unwrap();
    for round in 0..400 {
        let mut server = server_session(&s);
        let mut input: Vec<u8> = (0..(rng.next() % 600)).map(|_| rng.next() as u8).collect();
        match round % 4 {
            // Pure noise.
            0 => {}
            // A plausible record header then noise.
            1 => input
                .splice(
                    0..0,
                    [
                        0x16,
                        0x03,
                        0x01,
                        (rng.next() % 0x50) as u8,
                        rng.next() as u8,
                    ],
                )
                .for_each(drop),
            // A real ClientHello with bytes flipped.
            2 => {
                input = hello[..hello_len].to_vec();
                for _ in 0..=(rng.next() % 4) {
                    let at = (rng.next() as usize) % input.len();
                    input[at] ^= 1 << (rng.next() % 8);
                }
            }
            // A real ClientHello followed by noise.
            _ => input
                .splice(0..0, hello[..hello_len].iter().copied())
                .for_each(drop),
        }
        let mut taken = 0;
        let mut result = Ok(0);
        let mut steps = 0;
        while taken < input.len() && result.is_ok() {
            taken += server.feed(&input[taken..]);
            result = server.process(&mut out());
            steps += 1;
            assert!(steps < 100, "round {round}: no progress");
        }
        // Either an error or a session waiting for more; never plaintext.
        assert!(server.is_handshaking(), "round {round}");
        assert!(server.plaintext().is_empty(), "round {round}");
    }
}

#[test]
fn records_carry_16_kib_of_plaintext() {
    let (mut client, mut server) = established();
    let data: Vec<u8> = (0..4 * MAX_PLAINTEXT_LEN).map(|i| i as u8).collect();
    let mut wire = out();
    let sealed = client.seal(&data, &mut wire).unwrap();
    assert_eq!(sealed.consumed, data.len());
    // Four full records: 5-byte header + 16 KiB + content type + 16-byte tag.
    assert_eq!(sealed.written, 4 * (MAX_PLAINTEXT_LEN + 22));
    for r in 0..4 {
        let at = r * (MAX_PLAINTEXT_LEN + 22);
        assert_eq!(wire[at], 0x17);
        assert_eq!(
            u16::from_be_bytes([wire[at + 3], wire[at + 4]]) as usize,
            MAX_PLAINTEXT_LEN + 17
        );
    }
    let (mut fed, mut received) = (0, Vec::new());
    while received.len() < data.len() {
        fed += server.feed(&wire[fed..sealed.written]);
        server.process(&mut out()).unwrap();
        received.extend_from_slice(server.plaintext());
        let n = server.plaintext().len();
        server.consume(n);
    }
    assert!(received == data, "plaintext differs");
}

#[test]
fn seal_takes_only_what_fits_the_output() {
    let (mut client, _) = established();
    let data = vec![7u8; 10 * MAX_PLAINTEXT_LEN];
    let mut wire = vec![0u8; 2 * MAX_RECORD_LEN];
    let sealed = client.seal(&data, &mut wire).unwrap();
    assert!(sealed.consumed >= MAX_PLAINTEXT_LEN && sealed.consumed < data.len());
    assert!(sealed.written <= wire.len());
}

#[test]
fn seal_never_overruns_any_output_size() {
    let (mut client, mut server) = established();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut received = Vec::new();
    for (i, size) in (MAX_RECORD_LEN..5 * MAX_RECORD_LEN)
        .step_by(4099)
        .enumerate()
    {
        let mut wire = vec![0u8; size];
        let start = (i * 7919) % 100_000;
        let s = client.seal(&data[start..], &mut wire).unwrap();
        assert!(s.consumed > 0 && s.written <= size, "size {size}");
        // Nearly all of the room is used.
        assert!(
            size - s.written < MAX_RECORD_LEN,
            "size {size}: wrote {}",
            s.written
        );
        let mut fed = 0;
        while fed < s.written {
            fed += server.feed(&wire[fed..s.written]);
            server.process(&mut out()).unwrap();
            received.extend_from_slice(server.plaintext());
            let n = server.plaintext().len();
            server.consume(n);
        }
        assert!(
            received == data[start..start + s.consumed],
            "size {size}: data differs"
        );
        received.clear();
    }
}

#[test]
fn unread_plaintext_limits_input_but_never_blocks_writing() {
    let (mut client, mut server) = established();
    let size = SessionBuffers::new(64 * 1024).size();
    let data = vec![1u8; 3 * size];
    let mut wire = vec![0u8; 4 * size];
    let mut sent = 0;
    let mut ciphertext = Vec::new();
    while sent < data.len() {
        let s = client.seal(&data[sent..], &mut wire).unwrap();
        ciphertext.extend_from_slice(&wire[..s.written]);
        sent += s.consumed;
    }
    // The server never consumes: it accepts at most one buffer's worth.
    let mut fed = 0;
    loop {
        let n = server.feed(&ciphertext[fed..]);
        server.process(&mut out()).unwrap();
        if n == 0 {
            break;
        }
        fed += n;
    }
    assert!(fed < ciphertext.len());
    assert!(server.plaintext().len() <= size);
    // Writing still works while the reader is stalled.
    let s = server.seal(b"still writing", &mut wire).unwrap();
    assert_eq!(s.consumed, 13);
    client.feed(&wire[..s.written]);
    client.process(&mut out()).unwrap();
    assert_eq!(client.plaintext(), b"still writing");
    // Draining resumes input, and nothing was lost.
    let mut received = server.plaintext().len();
    server.consume(received);
    while fed < ciphertext.len() {
        fed += server.feed(&ciphertext[fed..]);
        server.process(&mut out()).unwrap();
        received += server.plaintext().len();
        let n = server.plaintext().len();
        server.consume(n);
    }
    assert_eq!(received, data.len());
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let (c, s) = certs();
    let mut client = client_session(&c, &[SERVER_ID]);
    assert_eq!(
        client.seal(b"early", &mut out()).unwrap_err(),
        SessionError::NotReady
    );
    let mut tiny = [0u8; 100];
    assert_eq!(
        client.process(&mut tiny).unwrap_err(),
        SessionError::OutputTooSmall
    );
    // Committing more than offered is clamped.
    let mut server = server_session(&s);
    let offered = server.incoming_space().len();
    server.commit_incoming(offered + 1000);
    assert!(server.process(&mut out()).is_err());

    let (mut client, _) = established();
    client.close(&mut out()).unwrap();
    assert_eq!(
        client.seal(b"late", &mut out()).unwrap_err(),
        SessionError::WriteAfterClose
    );
}

#[test]
fn close_notify_is_seen_by_the_peer() {
    let (mut client, mut server) = established();
    let mut wire = out();
    let s = client.seal(b"last words", &mut wire).unwrap();
    let n = client.close(&mut wire[s.written..]).unwrap();
    assert!(n > 0);
    server.feed(&wire[..s.written + n]);
    server.process(&mut out()).unwrap();
    assert_eq!(server.plaintext(), b"last words");
    assert!(server.peer_closed());
    assert_eq!(server.transport_eof(), Ok(()));
    // The server may still answer (half-close).
    let s = server.seal(b"reply", &mut wire).unwrap();
    client.feed(&wire[..s.written]);
    client.process(&mut out()).unwrap();
    assert_eq!(client.plaintext(), b"reply");
}

#[test]
fn buffers_are_reusable() {
    let (c, _) = certs();
    let session = client_session(&c, &[SERVER_ID]);
    let buffers = session.into_buffers();
    assert_eq!(buffers.size(), 64 * 1024);
    let config = c.client_config(&[id(SERVER_ID)]).unwrap();
    TlsSession::client(&config, buffers).unwrap();
}
