//! Bulk seal + open: our session (handshake by rustls, then our record layer
//! over ring, 16 KiB records) against ring's raw AES-128-GCM on the same
//! record sizes, in the same run.
//!
//! Both benches move 1 MiB of plaintext per iteration: sealed into TLS
//! records, then opened back into plaintext the caller can read. The session
//! seals directly into the receiver's incoming buffer, where a socket read
//! would have put the bytes.
//!
//! On a shared machine the two criterion figures are taken at different
//! moments; the bench therefore also prints the ratio of the best of many
//! interleaved runs of each, which other load cannot flatter.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, NONCE_LEN};
use zpath_crypto::{
    CertifiedTls, Identity, LocalCa, SessionBuffers, TlsSession, MAX_PLAINTEXT_LEN, MAX_RECORD_LEN,
};

const PAYLOAD: usize = 1024 * 1024;
/// Session buffer size; `ZPATH_BENCH_TLS_BUFFER` (bytes) overrides it.
fn buffer() -> usize {
    std::env::var("ZPATH_BENCH_TLS_BUFFER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256 * 1024)
}

fn established() -> (TlsSession, TlsSession) {
    let ca = LocalCa::generate().unwrap();
    let server_id: Identity = "spiffe://cluster.local/ns/default/sa/server"
        .parse()
        .unwrap();
    let client_id: Identity = "spiffe://cluster.local/ns/default/sa/client"
        .parse()
        .unwrap();
    let life = Duration::from_secs(3600);
    let s = CertifiedTls::new(Arc::new(ca.issue(&server_id, life).unwrap())).unwrap();
    let c = CertifiedTls::new(Arc::new(ca.issue(&client_id, life).unwrap())).unwrap();
    let mut client = TlsSession::client(
        &c.client_config(&[server_id]).unwrap(),
        SessionBuffers::new(buffer()),
    )
    .unwrap();
    let mut server = TlsSession::server(&s.server_config(), SessionBuffers::new(buffer())).unwrap();
    let mut wire = vec![0u8; buffer()];
    while client.is_handshaking() || server.is_handshaking() {
        let n = client.process(&mut wire).unwrap();
        server.feed(&wire[..n]);
        let m = server.process(&mut wire).unwrap();
        client.feed(&wire[..m]);
        if n == 0 && m == 0 {
            client.process(&mut wire).unwrap();
        }
    }
    (client, server)
}

/// Moves one payload through the session: seal on one side straight into the
/// other side's incoming buffer (standing for the socket, whose copy is not
/// session code), then open the records there.
fn session_round(
    client: &mut TlsSession,
    server: &mut TlsSession,
    data: &[u8],
    scratch: &mut [u8],
) {
    let mut sent = 0;
    let mut received = 0;
    while sent < data.len() {
        let space = server.incoming_space();
        if space.len() >= MAX_RECORD_LEN {
            let sealed = client.seal(&data[sent..], space).unwrap();
            sent += sealed.consumed;
            server.commit_incoming(sealed.written);
        }
        server.process(scratch).unwrap();
        let plain = server.plaintext();
        received += black_box(plain).len();
        let n = plain.len();
        server.consume(n);
    }
    assert_eq!(received, data.len());
}

/// ring alone: seal and open 16 KiB records in place, TLS-like AAD.
struct RawRing {
    key: LessSafeKey,
    record: Vec<u8>,
    seq: u64,
}

impl RawRing {
    fn new() -> Self {
        Self {
            key: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7u8; 16]).unwrap()),
            record: vec![0u8; MAX_PLAINTEXT_LEN + 16],
            seq: 0,
        }
    }

    fn nonce(seq: u64) -> Nonce {
        let mut n = [0u8; NONCE_LEN];
        n[4..].copy_from_slice(&seq.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    fn round(&mut self, data: &[u8]) {
        for chunk in data.chunks(MAX_PLAINTEXT_LEN) {
            let aad = [0x17, 0x03, 0x03, 0x40, 0x11];
            let body = &mut self.record[..chunk.len()];
            body.copy_from_slice(chunk);
            let tag = self
                .key
                .seal_in_place_separate_tag(Self::nonce(self.seq), Aad::from(aad), body)
                .unwrap();
            self.record[chunk.len()..chunk.len() + 16].copy_from_slice(tag.as_ref());
            let opened = self
                .key
                .open_in_place(
                    Self::nonce(self.seq),
                    Aad::from(aad),
                    &mut self.record[..chunk.len() + 16],
                )
                .unwrap();
            black_box(opened);
            self.seq += 1;
        }
    }
}

fn session_seal_open(c: &mut Criterion) {
    let (mut client, mut server) = established();
    let data = vec![0x5au8; PAYLOAD];
    let mut scratch = vec![0u8; buffer()];
    let mut raw = RawRing::new();

    // Best of interleaved runs: robust to other load on the machine.
    let (mut best_session, mut best_ring) = (Duration::MAX, Duration::MAX);
    for _ in 0..300 {
        let t = Instant::now();
        session_round(&mut client, &mut server, &data, &mut scratch);
        best_session = best_session.min(t.elapsed());
        let t = Instant::now();
        raw.round(&data);
        best_ring = best_ring.min(t.elapsed());
    }
    let gbps = |d: Duration| PAYLOAD as f64 * 8.0 / d.as_secs_f64() / 1e9;
    eprintln!(
        "buffers {} KiB; best of 300 interleaved 1 MiB runs: session {:.1} Gb/s, ring raw {:.1} Gb/s, ratio {:.2}",
        buffer() / 1024,
        gbps(best_session),
        gbps(best_ring),
        best_ring.as_secs_f64() / best_session.as_secs_f64()
    );

    let mut g = c.benchmark_group("bulk_seal_open");
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    g.bench_function("session_aes128gcm_16k_records", |b| {
        b.iter(|| session_round(&mut client, &mut server, &data, &mut scratch));
    });
    g.bench_function("ring_raw_aes128gcm_16k_records", |b| {
        b.iter(|| raw.round(&data));
    });
    g.finish();
}

criterion_group!(benches, session_seal_open);
criterion_main!(benches);
