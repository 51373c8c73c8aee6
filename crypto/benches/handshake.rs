//! mTLS handshakes in memory, both sides on this core, buffers pooled.
//!
//! `full`: client + server handshake, wall time per handshake.
//! `server_side` / `client_side`: the same handshakes, timing only the calls
//! made on one side, so the server's share is reported on its own.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use zpath_crypto::{
    CertifiedTls, ClientTlsConfig, Identity, LocalCa, ServerTlsConfig, SessionBuffers, TlsSession,
    MAX_RECORD_LEN,
};

struct Setup {
    client: ClientTlsConfig,
    server: ServerTlsConfig,
    pool: Vec<SessionBuffers>,
    wire: Vec<u8>,
}

fn setup() -> Setup {
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
    Setup {
        client: c.client_config(&[server_id]).unwrap(),
        server: s.server_config(),
        pool: (0..2).map(|_| SessionBuffers::new(64 * 1024)).collect(),
        wire: vec![0; 4 * MAX_RECORD_LEN],
    }
}

/// Runs one handshake; returns the time spent in (client, server) calls.
fn one_handshake(s: &mut Setup) -> (Duration, Duration) {
    let (mut tc, mut ts) = (Duration::ZERO, Duration::ZERO);
    let t = Instant::now();
    let mut client = TlsSession::client(&s.client, s.pool.pop().unwrap()).unwrap();
    tc += t.elapsed();
    let t = Instant::now();
    let mut server = TlsSession::server(&s.server, s.pool.pop().unwrap()).unwrap();
    ts += t.elapsed();
    while client.is_handshaking() || server.is_handshaking() {
        let t = Instant::now();
        let n = client.process(&mut s.wire).unwrap();
        tc += t.elapsed();
        let t = Instant::now();
        server.feed(&s.wire[..n]);
        let m = server.process(&mut s.wire).unwrap();
        ts += t.elapsed();
        let t = Instant::now();
        client.feed(&s.wire[..m]);
        tc += t.elapsed();
        if n == 0 && m == 0 {
            let t = Instant::now();
            client.process(&mut s.wire).unwrap();
            tc += t.elapsed();
        }
    }
    black_box(server.peer());
    s.pool.push(client.into_buffers());
    s.pool.push(server.into_buffers());
    (tc, ts)
}

fn handshakes(c: &mut Criterion) {
    let mut s = setup();
    // Best of many runs: robust to other load on the machine.
    let (mut best_client, mut best_server) = (Duration::MAX, Duration::MAX);
    for _ in 0..2000 {
        let (client, server) = one_handshake(&mut s);
        best_client = best_client.min(client);
        best_server = best_server.min(server);
    }
    eprintln!(
        "best of 2000 handshakes: server side {:?} ({:.0}/s per core), client side {:?}",
        best_server,
        1.0 / best_server.as_secs_f64(),
        best_client
    );
    let mut g = c.benchmark_group("mtls_handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("full", |b| {
        b.iter(|| one_handshake(&mut s));
    });
    g.bench_function("server_side", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| one_handshake(&mut s).1).sum());
    });
    g.bench_function("client_side", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| one_handshake(&mut s).0).sum());
    });
    g.finish();
}

criterion_group!(benches, handshakes);
criterion_main!(benches);
