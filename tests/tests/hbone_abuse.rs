//! HTTP/2 abuse against a node's HBONE port (root only: network namespaces). Each known
//! attack is sent as hand-made frames over a real mTLS connection from the client host
//! to node B's port 15008. The server must end the connection (GOAWAY) or the stream
//! (RST_STREAM, or an error status) with the error code RFC 9113 and our limits call
//! for, keep its memory bounded, go on serving normal CONNECTs, and release every
//! stream, connection and pool entry it counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zpath_tests::echo::{serve_with, EchoServer};
use zpath_tests::h2raw::{self, code, flag, kind, Conn, End, Flood, Seen};
use zpath_tests::mesh::{self, Mesh};
use zpath_tests::netns::Netns;
use zpath_tests::node::{http_get, sum_metric};
use zpath_tests::{pattern, roundtrip};

/// Peak memory growth of node B tolerated during one attack.
const MEMORY_BOUND_KIB: u64 = 50 << 10;

/// Longest a test waits for the server's answer to one attack.
const ANSWER: Duration = Duration::from_secs(5);

/// Longest a test writes (and reads) through one attack.
const PUMP: Duration = Duration::from_secs(20);

/// Two nodes, an echo server behind node B, and node B's process for memory readings.
struct Target {
    m: Mesh,
    echo: EchoServer,
    pid: u32,
}

impl Target {
    /// Starts the mesh (node A releases idle tunnels after 1 s so every gauge can
    /// return to zero) and checks the normal path works before any attack.
    fn start(tag: &str, net: &str) -> Target {
        Self::start_with(tag, net, &[])
    }

    /// As [`Target::start`], with `args_b` passed to node B.
    fn start_with(tag: &str, net: &str, args_b: &[&str]) -> Target {
        let config = mesh::config(net, "");
        let m = Mesh::start(
            tag,
            net,
            &config,
            None,
            &["--pool-idle-timeout", "1s"],
            args_b,
        );
        let echo = EchoServer::serve(m.server_listener());
        let pid = zpath_pid(&m.hosts.server.name);
        let mut t = Target { m, echo, pid };
        t.assert_serves(1);
        t.assert_released();
        t
    }

    /// Reads a metric of node B from any thread (it enters B's namespace), so an
    /// attack can look at the gauges while its connection is open.
    fn b_metric(&self) -> impl Fn(&str) -> u64 + Send + Clone + 'static {
        let ns = self.m.hosts.server.name.clone();
        let addr = self.m.b.metrics;
        move |prefix: &str| {
            let prefix = prefix.to_string();
            Netns::existing(&ns).enter(move || {
                let (_, text) = http_get(addr, "/stats/prometheus").expect("scrape node B");
                sum_metric(&text, &prefix)
            })
        }
    }

    /// Node B's HBONE address (the server workload's address, port 15008).
    fn hbone(&self) -> SocketAddr {
        format!("{}.2:15008", self.m.net).parse().unwrap()
    }

    /// The CONNECT authority of the echo server.
    fn authority(&self) -> String {
        self.echo.addr.to_string()
    }

    /// Runs `attack` on a fresh raw mTLS HTTP/2 connection from the client host.
    fn attack<F, Fut, T>(&self, attack: F) -> T
    where
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let ca = self.m.ca.path().to_path_buf();
        let addr = self.hbone();
        h2raw::run_in(&self.m.hosts.client, move || async move {
            let conn = Conn::connect(&ca, addr, "server")
                .await
                .expect("mTLS and HTTP/2 handshake with node B");
            attack(conn).await
        })
    }

    /// Caps the kernel's socket buffers in node B's namespace at 256 KiB each way,
    /// so a flood outgrows what the kernels can hold and the server has to push back.
    fn small_socket_buffers_on_b(&self) {
        self.m.hosts.server.exec(
            "sysctl -qw net.ipv4.tcp_rmem='4096 65536 262144' \
             net.ipv4.tcp_wmem='4096 16384 262144'",
        );
    }

    /// Resets node B's peak-memory mark and returns its resident memory now (KiB).
    fn memory_baseline(&self) -> u64 {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5")
            .expect("reset node B's peak RSS");
        status_kib(self.pid, "VmRSS")
    }

    /// Asserts node B's peak memory since `baseline` grew by less than the bound.
    fn assert_memory_bounded(&self, baseline: u64, what: &str) {
        let peak = status_kib(self.pid, "VmHWM");
        eprintln!("{what}: node B's RSS {baseline} KiB before, peak {peak} KiB");
        assert!(
            peak.saturating_sub(baseline) < MEMORY_BOUND_KIB,
            "{what}: node B's peak RSS grew from {baseline} KiB to {peak} KiB"
        );
    }

    /// After an attack: node B's memory stayed bounded, it still serves a normal
    /// CONNECT, and every gauge of both nodes is back to zero.
    fn assert_unharmed(&mut self, baseline: u64, what: &str) {
        self.assert_memory_bounded(baseline, what);
        self.assert_serves(2);
        self.assert_released();
    }

    /// A normal CONNECT through node A still round-trips through node B.
    fn assert_serves(&self, seed: u8) {
        let data = pattern(64 << 10, seed);
        let s = self
            .m
            .connect(self.echo.addr)
            .expect("node B accepts a normal CONNECT");
        assert!(roundtrip(s, &data) == data, "the echo came back different");
    }

    /// Every stream, connection and pool entry of both nodes is released, and
    /// node B's log shows no panic.
    fn assert_released(&mut self) {
        let until = Instant::now() + Duration::from_secs(10);
        let gauges = |t: &Target| {
            [
                t.m.b.metric("zpath_hbone_server_streams"),
                t.m.b.metric("zpath_hbone_server_connections"),
                t.m.a.metric("zpath_hbone_client_streams"),
                t.m.a.metric("zpath_hbone_tunnels"),
                t.m.a.metric("zpath_hbone_pool_keys"),
            ]
        };
        loop {
            let g = gauges(self);
            if g == [0; 5] {
                break;
            }
            assert!(
                Instant::now() < until,
                "gauges not back to zero: B server streams/connections {:?}, \
                 A client streams/tunnels/pool keys {:?}",
                &g[..2],
                &g[2..]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.m.a.assert_no_open_connections();
        self.m.b.assert_no_open_connections();
        let log = self.m.b.stderr();
        assert!(!log.contains("panicked"), "node B panicked:\n{log}");
    }
}

/// The pid of the `zpath` process in network namespace `ns`.
fn zpath_pid(ns: &str) -> u32 {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .expect("ip netns pids");
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "zpath")
        })
        .collect();
    assert_eq!(pids.len(), 1, "one zpath process in {ns}: {pids:?}");
    pids[0]
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Sends a PING with `data` and waits for its acknowledgement (all frames the server
/// sent before it are in the returned record).
async fn ping_probe(c: &mut Conn, data: [u8; 8]) -> Seen {
    if let Err(e) = c.send(&h2raw::ping(data)).await {
        let end = if e.kind() == std::io::ErrorKind::TimedOut {
            End::TimedOut
        } else {
            End::Closed
        };
        return Seen {
            end: Some(end),
            ..Seen::default()
        };
    }
    c.watch_until(ANSWER, |f| {
        f.kind == kind::PING && f.flags & flag::ACK != 0 && f.payload == data
    })
    .await
}

/// Opens `stream` with a CONNECT to `authority` and returns the response's status.
async fn connect_status(c: &mut Conn, stream: u32, authority: &str) -> (Option<u16>, Seen) {
    let seen = c
        .open_connect(stream, authority, ANSWER)
        .await
        .expect("send CONNECT");
    let status = match (seen.end, seen.frames.last()) {
        (Some(End::Matched), Some(f)) => f.status(),
        _ => None,
    };
    (status, seen)
}

#[test]
fn rapid_reset_gets_enhance_your_calm_and_the_node_keeps_serving() {
    if zpath_tests::skip_unless_root() {
        return;
    }
    let mut t = Target::start("ha1", "10.81.1");
    let authority = t.authority();
    let baseline = t.memory_baseline();
    // 1000 streams, each opened with a valid CONNECT and cancelled at once, in one burst.
    let (flood, seen) = t.attack(move |mut c| async move {
        let mut burst = Vec::new();
        for i in 0..1000u32 {
            let id = 2 * i + 1;
            burst.extend(h2raw::headers(
                id,
                &h2raw::connect_block(&authority),
                true,
                false,
            ));
            burst.extend(h2raw::rst_stream(id, code::CANCEL));
        }
        let (flood, mut seen) = c.flood_reading(&burst, PUMP).await;
        if !seen.ended_connection() {
            seen.extend(c.watch(ANSWER).await);
        }
        (flood, seen)
    });
    // More resets of not-yet-accepted streams than --h2-max-pending-resets (100) is a
    // connection error: GOAWAY ENHANCE_YOUR_CALM, and the rest of the burst is ignored.
    seen.assert_goaway(
        code::ENHANCE_YOUR_CALM,
        &format!("rapid reset (flood {flood:?})"),
    );
    t.assert_unharmed(baseline, "rapid reset");

    // The same 1000 streams in batches of 50 with a round trip between batches, so
    // the server may accept (and start serving) streams before their resets arrive:
    // whether or not the connection is cut off, every stream the server accepted is
    // torn down (its upstream connection too) and the node keeps serving.
    let baseline = t.memory_baseline();
    let (batches, seen) = batched_resets(&t, t.authority(), 20, 50);
    assert!(
        batches == 20 || seen.goaway() == Some(code::ENHANCE_YOUR_CALM),
        "batched rapid reset ended otherwise: {}",
        seen.summary()
    );
    t.assert_memory_bounded(baseline, "batched rapid reset");
    t.assert_serves(3);
    t.assert_released();
}

/// A connection ended for a protocol error is closed without a reset: node B sends
/// its GOAWAY, then reads and discards what the peer still sends, so the peer's writes
/// keep succeeding and it reads the GOAWAY and a clean end (a socket closed with
/// unread input answers with RST, which can overtake the GOAWAY).
#[test]
fn a_connection_ended_by_a_protocol_error_is_closed_without_a_reset() {
    if zpath_tests::skip_unless_root() {
        return;
    }
    let t = Target::start("ha16", "10.81.16");
    let (seen, late_write, end) = t.attack(move |mut c| async move {
        // An even (server-initiated) stream id is a connection error; the PINGs behind
        // it in the same write are never read by h2.
        let block = h2raw::connect_block("10.0.0.1:80");
        let mut burst = h2raw::headers(2, &block, true, false);
        for i in 0..4096u64 {
            burst.extend(h2raw::ping(i.to_be_bytes()));
        }
        c.send(&burst).await.expect("send the burst");
        let seen = c.watch(ANSWER).await;
        // Long enough for a reset to arrive if one was sent.
        let _ = zpath_uring::time::sleep(Duration::from_millis(200)).await;
        let late_write = c.send(&h2raw::ping([7; 8])).await;
        let end = c.watch(ANSWER).await.end;
        (seen, late_write.map_err(|e| e.kind()), end)
    });
    seen.assert_goaway(code::PROTOCOL_ERROR, "even stream id");
    assert_eq!(
        late_write,
        Ok(()),
        "a write after the GOAWAY was refused: the connection was reset"
    );
    assert_eq!(
        end,
        Some(End::Closed),
        "the connection was not closed within {ANSWER:?} of the GOAWAY"
    );
    t.assert_serves(1);
}

/// Peak memory node B may gain while queueing tiny payloads for a peer that never
/// reads: a fifth of the general bound (before the payload bound it gained about
/// 90 MiB in this test, after it about 3 MiB).
const PINNED_BOUND_KIB: u64 = 10 << 10;

/// A peer that opens the largest windows, never reads, and has an upstream trickle
/// 1-byte writes into its streams: each small read of node B is a DATA payload h2
/// queues. B pins a bounded number of payloads per stream, each at most a few times
/// its length, instead of a read buffer for every byte.
#[test]
fn one_byte_payloads_queued_for_a_peer_that_never_reads_pin_bounded_memory() {
    if zpath_tests::skip_unless_root() {
        return;
    }
    const STREAMS: u32 = 32;
    let mut t = Target::start("ha15", "10.81.15");
    t.small_socket_buffers_on_b();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = stop.clone();
    let trickle = serve_with(t.m.server_listener(), move |mut conn| {
        use std::io::Write;
        let _ = conn.set_nodelay(true);
        while !running.load(Ordering::Relaxed) && conn.write_all(b"x").is_ok() {
            std::thread::sleep(Duration::from_micros(20));
        }
    });
    let authority = trickle.to_string();
    let baseline = t.memory_baseline();
    let metric = t.b_metric();
    let (answered, open_streams) = t.attack(move |mut c| async move {
        c.shrink_socket_buffers(16 << 10)
            .expect("shrink the client's buffers");
        let mut open = h2raw::settings(&[(0x4, 0x7fff_ffff)]);
        open.extend(h2raw::window_update(0, 0x7fff_ffff - 65_535));
        for i in 0..STREAMS {
            open.extend(h2raw::headers(
                2 * i + 1,
                &h2raw::connect_block(&authority),
                true,
                false,
            ));
        }
        c.send(&open).await.expect("open the streams");
        let mut answered = 0;
        c.watch_until(ANSWER, |f| {
            if f.kind == kind::HEADERS && f.status() == Some(200) {
                answered += 1;
            }
            answered == STREAMS
        })
        .await;
        // Reads nothing more: B's socket and TLS buffers fill, then h2 queues.
        let _ = zpath_uring::time::sleep(Duration::from_secs(4)).await;
        let open_streams = metric("zpath_hbone_server_streams");
        (answered, open_streams)
    });
    stop.store(true, Ordering::Relaxed);
    assert_eq!(answered, STREAMS, "every CONNECT answered 200");
    assert_eq!(
        open_streams,
        u64::from(STREAMS),
        "the streams stayed open while queueing"
    );
    let peak = status_kib(t.pid, "VmHWM");
    eprintln!("tiny payloads: node B's RSS {baseline} KiB before, peak {peak} KiB");
    assert!(
        peak.saturating_sub(baseline) < PINNED_BOUND_KIB,
        "node B's peak RSS grew from {baseline} KiB to {peak} KiB queueing 1-byte payloads"
    );
    t.assert_serves(2);
    t.assert_released();
}

/// Opens `batches` × `per` streams with a valid CONNECT to `authority`, each
/// cancelled (RST_STREAM CANCEL) right after its HEADERS, with a PING round trip
/// after each batch. Returns the batches sent before the connection ended, and what
/// the server sent.
fn batched_resets(t: &Target, authority: String, batches: u32, per: u32) -> (u32, Seen) {
    t.attack(move |mut c| async move {
        let mut seen = Seen::default();
        let mut sent = 0;
        for batch in 0..batches {
            let mut burst = Vec::new();
            for i in 0..per {
                let id = 2 * (batch * per + i) + 1;
                let block = h2raw::connect_block(&authority);
                burst.extend(h2raw::headers(id, &block, true, false));
                burst.extend(h2raw::rst_stream(id, code::CANCEL));
            }
            let (_, s) = c.flood_reading(&burst, PUMP).await;
            seen.extend(s);
            if seen.ended_connection() {
                break;
            }
            let probe = (u64::from(batch) | 0x7265_7365_7400_0000).to_be_bytes();
            seen.extend(ping_probe(&mut c, probe).await);
            if seen.ended_connection() {
                break;
            }
            sent += 1;
        }
        (sent, seen)
    })
}

/// Known issue, kept as a failing check until the server handles it: a stream the
/// client cancels right after opening it, in batches under the pending-reset limit,
/// is still accepted, dialed upstream and counted as answered 200: each costs the
/// destination workload a TCP connection that is dropped at once (rapid-reset
/// amplification past h2's pending-accept limit).
#[test]
fn cancelled_streams_open_no_upstream_connections() {
    if zpath_tests::skip_unless_root() {
        return;
    }
    let mut t = Target::start("ha8", "10.81.8");
    // An upstream that counts the connections it accepts.
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let upstream = serve_with(t.m.server_listener(), move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let answered = |t: &Target| {
        t.m.b
            .metric("zpath_hbone_connect_responses_total{side=\"server\",status=\"200\"}")
    };
    let ok = answered(&t);
    let (batches, seen) = batched_resets(&t, upstream.to_string(), 20, 50);
    assert_eq!(batches, 20, "{}", seen.summary());
    t.assert_released();
    let (dialed, ok) = (accepted.load(Ordering::Relaxed), answered(&t) - ok);
    assert!(
        dialed <= 10 && ok <= 10,
        "1000 cancelled CONNECTs made node B open {dialed} upstream connections and count \
         {ok} answers of 200"
    );
}

#[test]
fn continuation_floods_are_cut_off_and_oversized_headers_refused() {
    if zpath_tests::skip_unless_root() {
        return;
    }
    let mut t = Target::start("ha2", "10.81.2");
    let authority = t.authority();
    let baseline = t.memory_baseline();

    // 1. Endless small CONTINUATION frames: a header value announced as 16 MiB, fed
    // 1 KiB at a time, never ending the header block.
    let auth = authority.clone();
    let (flood, seen) = t.attack(move |mut c| async move {
        let mut block = h2raw::connect_block(&auth);
        block.push(0x00);
        h2raw::hpack_string(&mut block, b"x-flood");
        h2raw::hpack_int(&mut block, 0, 7, 16 << 20);
        let mut bytes = h2raw::headers(1, &block, false, false);
        let chunk = h2raw::continuation(1, &[b'a'; 1024], false);
        for _ in 0..10_000 {
            bytes.extend_from_slice(&chunk);
        }
        let (flood, mut seen) = c
            .flood_paced(&bytes, 16 << 10, Duration::from_millis(5))
            .await;
        if !seen.ended_connection() {
            seen.extend(c.watch(ANSWER).await);
        }
        (flood, seen)
    });
    assert!(
        matches!(flood, Flood::Ended { .. }),
        "the server took the whole CONTINUATION flood ({flood:?}): {}",
        seen.summary()
    );
    seen.assert_goaway(code::ENHANCE_YOUR_CALM, "endless CONTINUATION");

    // 2. A header list over the 64 KiB limit (but not abusive): refused with 431 on
    // its stream; the connection stays usable.
    let auth = authority.clone();
    let (status, later, seen) = t.attack(move |mut c| async move {
        let mut block = h2raw::connect_block(&auth);
        block.extend(h2raw::hpack_literal("x-big", &vec![b'b'; 100 << 10]));
        let third = block.len() / 3;
        let mut bytes = h2raw::headers(1, &block[..third], false, false);
        bytes.extend(h2raw::continuation(1, &block[third..2 * third], false));
        bytes.extend(h2raw::continuation(1, &block[2 * third..], true));
        c.send(&bytes).await.expect("send the header block");
        let mut seen = c
            .watch_until(ANSWER, |f| f.kind == kind::HEADERS && f.stream == 1)
            .await;
        let status = seen.frames.last().and_then(|f| f.status());
        // The connection still answers, and still opens streams.
        seen.extend(ping_probe(&mut c, *b"alive-1!").await);
        let (later, s) = connect_status(&mut c, 3, &auth).await;
        seen.extend(s);
        (status, later, seen)
    });
    assert_eq!(status, Some(431), "oversized headers: {}", seen.summary());
    assert_eq!(
        later,
        Some(200),
        "a CONNECT after the refused one: {}",
        seen.summary()
    );

    // 3. A header list far over the limit (300 KiB in three frames): the connection
    // is ended.
    let auth = authority.clone();
    let seen = t.attack(move |mut c| async move {
        let mut block = h2raw::connect_block(&auth);
        block.extend(h2raw::hpack_literal("x-huge", &vec![b'h'; 300 << 10]));
        let third = block.len() / 3;
        let mut bytes = h2raw::headers(1, &block[..third], false, false);
        bytes.extend(h2raw::continuation(1, &block[third..2 * third], false));
        bytes.extend(h2raw::continuation(1, &block[2 * third..], true));
        let (_, mut seen) = c.flood_reading(&bytes, PUMP).await;
        if !seen.ended_connection() {
            seen.extend(c.watch(ANSWER).await);
        }
        seen
    });
    seen.assert_goaway(code::ENHANCE_YOUR_CALM, "huge header list");

    t.assert_unharmed(baseline, "CONTINUATION floods");
}

/// Floods `frames` copies of `one` without reading (over a socket with small kernel
/// buffers, so the server soon has nowhere to put its answers), then reads every
/// answer; returns how the unread flood went, how many acknowledgements of
/// `answer_kind` arrived, and all that was seen. A flood the server stalls (it stops
/// reading while its answers wait) is finished while reading.
async fn flood_unread(
    c: &mut Conn,
    one: &[u8],
    frames: usize,
    answer_kind: u8,
) -> (Flood, usize, Seen) {
    c.shrink_socket_buffers(64 << 10)
        .expect("set the socket's buffer sizes");
    let bytes = one.repeat(frames);
    let flood = c.flood(&bytes, Duration::from_secs(1)).await;
    let mut seen = Seen::default();
    match flood {
        Flood::Sent => {}
        Flood::Stalled { written } => {
            let (_, s) = c.flood_reading(&bytes[written..], PUMP).await;
            seen.extend(s);
        }
        Flood::Ended { .. } => seen.extend(c.drain(Duration::from_millis(500)).await),
    }
    if !seen.ended_connection() {
        seen.extend(ping_probe(c, *b"probe-1!").await);
    }
    let acks = seen.count(answer_kind, flag::ACK);
    (flood, acks, seen)
}

/// The verdict on a flood of frames that each ask for an answer (`what`): node B's
/// memory stayed bounded; the server stopped reading (or hung up) rather than queue
/// answers that had nowhere to go; and either it ended the connection with an error,
/// or it answered the probe PING after the flood and acknowledged `acks.1` frames.
fn assert_flood_pushed_back(
    t: &Target,
    baseline: u64,
    what: &str,
    flood: Flood,
    acks: (usize, usize),
    seen: &Seen,
) {
    eprintln!("{what} flood: {flood:?}, then {}", seen.summary());
    t.assert_memory_bounded(baseline, &format!("{what} flood"));
    assert!(
        matches!(flood, Flood::Stalled { .. } | Flood::Ended { .. }),
        "the server took a {what} flood it could not answer: {}",
        seen.summary()
    );
    if seen.ended_connection() {
        assert_ne!(seen.goaway(), Some(code::NO_ERROR), "{}", seen.summary());
        return;
    }
    assert_eq!(
        seen.end,
        Some(End::Matched),
        "the PING after the flood was not answered ({flood:?}): {}",
        seen.summary()
    );
    assert_eq!(
        acks.0,
        acks.1,
        "{what} frames acknowledged ({flood:?}): {}",
        seen.summary()
    );
}

#[test]
fn settings_flood_is_pushed_back_and_answered_in_order() {
    if zpath_tests::skip_unless_root() {
        return;
    }
    let mut t = Target::start("ha3", "10.81.3");
    t.small_socket_buffers_on_b();
    let baseline = t.memory_baseline();
    const FRAMES: usize = 400_000;
    let (flood, acks, seen) = t.attack(|mut c| async move {
        // Every other SETTINGS sets the initial window (which touches every stream);
        // all are small, so the answers fill the way back about as fast.
        let mut one = h2raw::settings(&[]);
        one.extend(h2raw::settings(&[(0x4, 65_535)]));
        flood_unread(&mut c, &one, FRAMES / 2, kind::SETTINGS).await
    });
    // Every flood SETTINGS and the one sent with the preface: acknowledged once each.
    assert_flood_pushed_back(&t, baseline, "SETTINGS", flood, (acks, FRAMES + 1), &seen);
    t.assert_serves(2);
    t.assert_released();
}

#[test]
fn ping_flood_is_pushed_back_and_answered_in_order() {
    if zpath_tests::skip_unless_root() {
        return;
    }
    let mut t = Target::start("ha4", "10.81.4");
    t.small_socket_buffers_on_b();
    let baseline = t.memory_baseline();
    const FRAMES: usize = 300_000;
    let (flood, acks, seen) = t.attack(|mut c| async move {
        flood_unread(&mut c, &h2raw::ping(*b"flooding"), FRAMES, kind::PING).await
    });
    // Every flood PING and the probe: acknowledged once each.
    assert_flood_pushed_back(&t, baseline, "PING", flood, (acks, FRAMES + 1), &seen);
    t.assert_serves(2);
    t.assert_released();
}

#[test]
fn window_overflow_is_a_flow_control_error() {
    if zpath_tests::skip_unless_root() {
        return;
    }
    let mut t = Target::start("ha5", "10.81.5");
    let authority = t.authority();
    let baseline = t.memory_baseline();
    const MAX_INCREMENT: u32 = (1 << 31) - 1;

    // The connection window: 65535 + (2^31-1) overflows → GOAWAY FLOW_CONTROL_ERROR.
    let (advertised, seen) = t.attack(|mut c| async move {
        // The limits the server announced: concurrent streams, stream window, frame
        // size, header list size (RFC 9113 §6.5.2 identifiers 3 to 6).
        let advertised = [3, 4, 5, 6].map(|id| c.server_setting(id));
        c.send(&h2raw::window_update(0, MAX_INCREMENT))
            .await
            .expect("send WINDOW_UPDATE");
        (advertised, c.watch(ANSWER).await)
    });
    assert_eq!(
        advertised,
        [Some(200), Some(16 << 20), Some(1 << 20), Some(64 << 10)],
        "SETTINGS of node B's HBONE server"
    );
    seen.assert_goaway(code::FLOW_CONTROL_ERROR, "connection window overflow");

    // A stream's window overflows → RST_STREAM FLOW_CONTROL_ERROR on that stream only;
    // the connection keeps working.
    let auth = authority.clone();
    let b = t.b_metric();
    let (opened, live, seen, later) = t.attack(move |mut c| async move {
        let (opened, mut seen) = connect_status(&mut c, 1, &auth).await;
        let live = [
            b("zpath_hbone_server_connections"),
            b("zpath_hbone_server_streams"),
        ];
        c.send(&h2raw::window_update(1, MAX_INCREMENT))
            .await
            .expect("send WINDOW_UPDATE");
        seen.extend(
            c.watch_until(ANSWER, |f| f.kind == kind::RST_STREAM && f.stream == 1)
                .await,
        );
        seen.extend(ping_probe(&mut c, *b"alive-2!").await);
        let (later, s) = connect_status(&mut c, 3, &auth).await;
        seen.extend(s);
        (opened, live, seen, later)
    });
    assert_eq!(opened, Some(200), "{}", seen.summary());
    assert_eq!(
        live,
        [1, 1],
        "node B's connection and stream gauges while the stream is open"
    );
    assert!(
        seen.resets().contains(&(1, code::FLOW_CONTROL_ERROR)),
        "stream window overflow: {}",
        seen.summary()
    );
    assert!(seen.goaway().is_none(), "{}", seen.summary());
    assert_eq!(
        later,
        Some(200),
        "a CONNECT after the reset stream: {}",
        seen.summary()
    );

    // A zero increment on the connection is a PROTOCOL_ERROR.
    let seen = t.attack(|mut c| async move {
        c.send(&h2raw::window_update(0, 0))
            .await
            .expect("send WINDOW_UPDATE");
        c.watch(ANSWER).await
    });
    seen.assert_goaway(code::PROTOCOL_ERROR, "zero connection window increment");

    t.assert_unharmed(baseline, "window overflows");
}

#[test]
fn reused_lower_or_even_stream_ids_are_protocol_errors() {
    if zpath_tests::skip_unless_root() {
        return;
    }
    let mut t = Target::start("ha6", "10.81.6");
    let authority = t.authority();
    let baseline = t.memory_baseline();

    // A stream id lower than one already opened.
    let auth = authority.clone();
    let (opened, seen) = t.attack(move |mut c| async move {
        let (opened, mut seen) = connect_status(&mut c, 5, &auth).await;
        c.send(&h2raw::headers(
            3,
            &h2raw::connect_block(&auth),
            true,
            false,
        ))
        .await
        .expect("send HEADERS");
        seen.extend(c.watch(ANSWER).await);
        (opened, seen)
    });
    assert_eq!(opened, Some(200), "{}", seen.summary());
    assert_eq!(
        seen.end,
        Some(End::GoAway {
            last_stream: 5,
            code: code::PROTOCOL_ERROR
        }),
        "lower stream id: {}",
        seen.summary()
    );

    // The id of a stream that is over: the request ended with its HEADERS, the server
    // answered 400 and ended its side, so the stream is closed and forgotten.
    let auth = authority.clone();
    let (refused, seen) = t.attack(move |mut c| async move {
        c.send(&h2raw::headers(
            1,
            &h2raw::connect_block("not-an-address"),
            true,
            true,
        ))
        .await
        .expect("send CONNECT");
        let mut seen = c
            .watch_until(ANSWER, |f| f.kind == kind::HEADERS && f.stream == 1)
            .await;
        let refused = seen.frames.last().and_then(|f| f.status());
        seen.extend(ping_probe(&mut c, *b"closed-1").await);
        c.send(&h2raw::headers(
            1,
            &h2raw::connect_block(&auth),
            true,
            false,
        ))
        .await
        .expect("send HEADERS");
        seen.extend(c.watch(ANSWER).await);
        (refused, seen)
    });
    assert_eq!(refused, Some(400), "{}", seen.summary());
    seen.assert_goaway(code::PROTOCOL_ERROR, "reused stream id");

    // The id of a stream the server reset (answered 400 while the request was still
    // open: RST_STREAM NO_ERROR). RFC 9113 §5.1: after sending RST_STREAM an endpoint
    // ignores frames on that stream, so a HEADERS reusing the id opens nothing and
    // the connection goes on.
    let answered = |t: &Target| {
        t.m.b
            .metric("zpath_hbone_connect_responses_total{side=\"server\"")
    };
    let before = answered(&t);
    let auth = authority.clone();
    let (refused, seen) = t.attack(move |mut c| async move {
        let (refused, mut seen) = connect_status(&mut c, 1, "not-an-address").await;
        seen.extend(ping_probe(&mut c, *b"closed-2").await);
        c.send(&h2raw::headers(
            1,
            &h2raw::connect_block(&auth),
            true,
            false,
        ))
        .await
        .expect("send HEADERS");
        seen.extend(ping_probe(&mut c, *b"closed-3").await);
        (refused, seen)
    });
    assert_eq!(refused, Some(400), "{}", seen.summary());
    assert!(
        seen.resets().contains(&(1, code::NO_ERROR)),
        "the 400 ended the open request with RST_STREAM NO_ERROR: {}",
        seen.summary()
    );
    assert_eq!(
        seen.end,
        Some(End::Matched),
        "the connection answers after the reused id: {}",
        seen.summary()
    );
    assert_eq!(
        seen.count(kind::HEADERS, 0),
        1,
        "only the 400 was answered: {}",
        seen.summary()
    );
    assert_eq!(answered(&t) - before, 1, "the server answered one CONNECT");

    // An even (server-initiated) stream id from the client.
    let auth = authority.clone();
    let seen = t.attack(move |mut c| async move {
        c.send(&h2raw::headers(
            2,
            &h2raw::connect_block(&auth),
            true,
            false,
        ))
        .await
        .expect("send HEADERS");
        c.watch(ANSWER).await
    });
    seen.assert_goaway(code::PROTOCOL_ERROR, "even stream id");

    t.assert_unharmed(baseline, "stream id misuse");
}

#[test]
fn streams_reset_for_the_peers_errors_are_limited() {
    if zpath_tests::skip_unless_root() {
        return;
    }
    let mut t = Target::start("ha7", "10.81.7");
    let authority = t.authority();
    let baseline = t.memory_baseline();
    // Each stream's headers are malformed (a connection-specific header, forbidden in
    // HTTP/2), so the server resets it with PROTOCOL_ERROR without accepting it.
    // Past --h2-max-local-error-resets (1024) the connection is ended.
    let (flood, seen) = t.attack(move |mut c| async move {
        let mut block = h2raw::connect_block(&authority);
        block.extend(h2raw::hpack_literal("connection", b"close"));
        let mut burst = Vec::new();
        for i in 0..1100u32 {
            burst.extend(h2raw::headers(2 * i + 1, &block, true, false));
        }
        let (flood, mut seen) = c.flood_reading(&burst, PUMP).await;
        if !seen.ended_connection() {
            seen.extend(c.watch(ANSWER).await);
        }
        (flood, seen)
    });
    // The resets queued when the GOAWAY is sent may be dropped with the connection.
    let resets = seen.resets();
    assert!(
        resets.iter().all(|&(_, c)| c == code::PROTOCOL_ERROR),
        "malformed streams reset with PROTOCOL_ERROR ({flood:?}): {}",
        seen.summary()
    );
    assert_eq!(
        seen.goaway(),
        Some(code::ENHANCE_YOUR_CALM),
        "after 1024 resets ({} seen): {}",
        resets.len(),
        seen.summary()
    );
    assert!(
        resets.len() <= 1024,
        "{} resets before the GOAWAY",
        resets.len()
    );
    t.assert_unharmed(baseline, "error resets");
}

/// Opens `n` TCP connections from `src` on the client host to node B's 15008 and
/// holds them without a byte sent (each is a TLS handshake pending on node B).
fn idle_sockets(t: &Target, src: &str, n: usize) -> Vec<std::net::TcpStream> {
    let src: std::net::IpAddr = src.parse().unwrap();
    let dst = t.hbone();
    t.m.hosts.client.enter(move || {
        (0..n)
            .map(|_| {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                s.bind(&SocketAddr::new(src, 0).into()).unwrap();
                s.connect(&dst.into()).unwrap();
                std::net::TcpStream::from(s)
            })
            .collect()
    })
}

/// Waits until node B has taken in `n` connections on 15008: pending, or refused or
/// aborted as TLS failures.
fn wait_accepted(t: &Target, n: u64) {
    zpath_tests::wait_for(
        "node B to take in the idle connections",
        Duration::from_secs(10),
        || {
            t.m.b.metric("zpath_hbone_handshakes_in_flight")
                + t.m
                    .b
                    .metric("zpath_connections_failed_total{direction=\"inbound\",reason=\"tls\"}")
                >= n
        },
    );
}

/// A normal CONNECT through node A, timed.
fn timed_connect(t: &Target, seed: u8) -> Duration {
    let data = pattern(16 << 10, seed);
    let started = Instant::now();
    let s =
        t.m.connect(t.echo.addr)
            .expect("node B accepts a CONNECT from another source");
    assert!(roundtrip(s, &data) == data, "the echo came back different");
    started.elapsed()
}

#[test]
fn idle_sockets_from_one_source_do_not_lock_out_other_peers() {
    if zpath_tests::skip_unless_root() {
        return;
    }
    let mut t = Target::start("ha9", "10.81.9");
    // 300 idle sockets per shard (node B has two) from one address of the client host,
    // more than the 256 handshakes a shard keeps pending.
    let idle_ip = format!("{}.3", t.m.net);
    t.m.hosts.add_client_ipv4(&idle_ip);
    let idle = idle_sockets(&t, &idle_ip, 600);
    wait_accepted(&t, 600);
    // A peer from another address (node A, from the client workload's) still gets in.
    let took = timed_connect(&t, 5);
    eprintln!("CONNECT beside 600 idle sockets from one source: {took:?}");
    assert!(took < Duration::from_secs(5), "the CONNECT took {took:?}");
    let pending = t.m.b.metric("zpath_hbone_handshakes_in_flight");
    let refused = t.m.b.metric(
        "zpath_tls_handshakes_total{side=\"server\",outcome=\"failed\",reason=\"source_limit\"}",
    );
    // 16 per source and shard are pending; the rest was refused at once, counted.
    assert!(
        pending <= 32,
        "{pending} handshakes pending from one source"
    );
    assert_eq!(
        pending + refused,
        600,
        "pending {pending}, refused {refused}"
    );
    drop(idle);
    t.assert_released();
    zpath_tests::wait_for(
        "node B's pending handshakes to end",
        Duration::from_secs(10),
        || t.m.b.metric("zpath_hbone_handshakes_in_flight") == 0,
    );
}

#[test]
fn a_full_shard_evicts_its_oldest_pending_handshake_for_a_new_peer() {
    if zpath_tests::skip_unless_root() {
        return;
    }
    let mut t = Target::start_with("ha10", "10.81.10", &["--handshake-max-pending", "32"]);
    // 8 sources x 16 idle sockets: under the per-source limit, twice what node B's two
    // shards keep pending.
    let net = t.m.net.clone();
    let mut idle = Vec::new();
    for i in 10..18 {
        let ip = format!("{net}.{i}");
        t.m.hosts.add_client_ipv4(&ip);
        idle.extend(idle_sockets(&t, &ip, 16));
    }
    wait_accepted(&t, 128);
    let evicted = |t: &Target| {
        t.m.b
            .metric("zpath_hbone_connections_closed_total{side=\"server\",reason=\"evicted\"}")
    };
    let before = evicted(&t);
    assert!(before >= 64, "{before} pending handshakes evicted of 128");
    // The newest pending handshakes are kept, the oldest were aborted.
    assert!(
        zpath_tests::closed_by_peer(&mut idle[0]),
        "the oldest idle socket was closed"
    );
    let newest = idle.last_mut().unwrap();
    newest
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut b = [0u8; 1];
    let still_open = matches!(
        std::io::Read::read(newest, &mut b),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    );
    assert!(still_open, "the newest idle socket is still pending");
    let took = timed_connect(&t, 6);
    eprintln!("CONNECT beside full shards of pending handshakes: {took:?}");
    assert!(took < Duration::from_secs(5), "the CONNECT took {took:?}");
    assert!(
        evicted(&t) > before,
        "node A's handshake evicted an idle one"
    );
    drop(idle);
    t.assert_released();
}

#[test]
fn a_peer_silent_after_tls_is_closed_after_the_handshake_timeout() {
    if zpath_tests::skip_unless_root() {
        return;
    }
    let mut t = Target::start_with("ha11", "10.81.11", &["--handshake-timeout", "1s"]);
    let ca = t.m.ca.path().to_path_buf();
    let addr = t.hbone();
    let closed = h2raw::run_in(&t.m.hosts.client, move || async move {
        let mut tls = h2raw::tls_connect(&ca, addr, "server")
            .await
            .expect("TLS with node B");
        // No HTTP/2 preface: node B closes after --handshake-timeout (1 s).
        h2raw::closed_within(&mut tls, Duration::from_secs(5)).await
    });
    assert!(closed, "node B kept a connection that sent no preface");
    assert_eq!(
        t.m.b.metric(
            "zpath_hbone_connections_closed_total{side=\"server\",reason=\"preface_timeout\"}"
        ),
        1
    );
    assert_eq!(t.m.b.metric("zpath_hbone_handshakes_in_flight"), 0);
    t.assert_serves(7);
    t.assert_released();
}

#[test]
fn drain_sends_goaway_finishes_open_streams_and_refuses_new_ones() {
    if zpath_tests::skip_unless_root() {
        return;
    }
    let mut t = Target::start_with("ha12", "10.81.12", &["--drain-deadline", "10s"]);
    let authority = t.authority();
    let b_pid = t.pid;
    let (opened, echoed, seen, finished) = t.attack(move |mut c| async move {
        let (opened, mut seen) = connect_status(&mut c, 1, &authority).await;
        // Drain starts while stream 1 is open.
        // SAFETY: kill(2) with node B's pid.
        unsafe { libc::kill(b_pid as i32, libc::SIGTERM) };
        seen.extend(c.watch(ANSWER).await);
        // The first GOAWAY (last stream 2^31-1) comes with a PING: answering it lets
        // node B send the final GOAWAY, with the last stream it took.
        let ping = c
            .watch_until(ANSWER, |f| f.kind == kind::PING && f.flags & flag::ACK == 0)
            .await;
        let payload: [u8; 8] = ping
            .frames
            .last()
            .and_then(|f| f.payload.clone().try_into().ok())
            .unwrap_or_default();
        seen.extend(ping);
        c.send(&h2raw::ping_ack(payload))
            .await
            .expect("answer the PING");
        seen.extend(c.watch(ANSWER).await);
        // A new stream is not taken; the open one still carries bytes both ways.
        c.send(&h2raw::headers(
            3,
            &h2raw::connect_block(&authority),
            true,
            false,
        ))
        .await
        .expect("send CONNECT");
        c.send(&h2raw::data(1, b"still here", true))
            .await
            .expect("send DATA");
        let mut echoed = Vec::new();
        let rest = c
            .watch_until(ANSWER, |f| {
                if f.kind == kind::DATA && f.stream == 1 {
                    echoed.extend_from_slice(&f.payload);
                }
                f.stream == 1 && f.flags & flag::END_STREAM != 0
            })
            .await;
        seen.extend(rest);
        // With its last stream done, node B closes the connection.
        let finished = c.watch(ANSWER).await;
        (opened, echoed, seen, finished)
    });
    assert_eq!(opened, Some(200), "{}", seen.summary());
    let goaways: Vec<(u32, u32)> = seen
        .frames
        .iter()
        .filter(|f| f.kind == kind::GOAWAY)
        .map(|f| (f.last_stream().unwrap(), f.error_code().unwrap()))
        .collect();
    assert_eq!(
        goaways,
        [(0x7fff_ffff, code::NO_ERROR), (1, code::NO_ERROR)],
        "{}",
        seen.summary()
    );
    assert_eq!(echoed, b"still here", "{}", seen.summary());
    assert!(
        !seen.frames.iter().any(|f| f.stream == 3),
        "stream 3, opened after the final GOAWAY, got an answer: {}",
        seen.summary()
    );
    assert_eq!(finished.end, Some(End::Closed), "{}", finished.summary());
    let status = t.m.b.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "node B exited with {status}");
    let log = t.m.b.stderr();
    assert!(!log.contains("panicked"), "node B panicked:\n{log}");
}

#[test]
fn a_peer_that_stops_answering_pings_is_closed_after_the_keepalive_timeout() {
    if zpath_tests::skip_unless_root() {
        return;
    }
    let mut t = Target::start_with(
        "ha13",
        "10.81.13",
        &[
            "--hbone-keepalive-interval",
            "200ms",
            "--hbone-keepalive-timeout",
            "500ms",
        ],
    );
    let authority = t.authority();
    let (opened, seen) = t.attack(move |mut c| async move {
        let (opened, mut seen) = connect_status(&mut c, 1, &authority).await;
        // A stream stays open (the connection is not idle), and no PING is answered.
        seen.extend(c.watch(Duration::from_secs(10)).await);
        (opened, seen)
    });
    assert_eq!(opened, Some(200), "{}", seen.summary());
    assert!(
        seen.count(kind::PING, 0) >= 1,
        "node B sent a PING: {}",
        seen.summary()
    );
    assert!(
        seen.ended_connection(),
        "node B kept a connection whose peer answers no PING: {}",
        seen.summary()
    );
    assert_eq!(
        t.m.b.metric(
            "zpath_hbone_connections_closed_total{side=\"server\",reason=\"keepalive_timeout\"}"
        ),
        1
    );
    // Node A answers PINGs: its tunnels live on.
    t.assert_serves(8);
    t.assert_released();
}

#[test]
fn an_hbone_connection_without_streams_is_closed_after_the_idle_timeout_one_with_an_idle_stream_is_not(
) {
    if zpath_tests::skip_unless_root() {
        return;
    }
    let mut t = Target::start_with(
        "ha14",
        "10.81.14",
        &[
            "--hbone-idle-timeout",
            "1s",
            "--hbone-keepalive-interval",
            "300ms",
        ],
    );
    let idle_closed = |t: &Target| {
        t.m.b
            .metric("zpath_hbone_connections_closed_total{side=\"server\",reason=\"idle\"}")
    };
    let before = idle_closed(&t);
    // No stream: GOAWAY after about a second.
    let seen = t.attack(|mut c| async move { c.watch(Duration::from_secs(10)).await });
    assert_eq!(
        seen.end,
        Some(End::GoAway {
            last_stream: 0x7fff_ffff,
            code: code::NO_ERROR
        }),
        "{}",
        seen.summary()
    );
    assert_eq!(idle_closed(&t), before + 1);

    // A stream through node A, left idle three times the idle timeout: still served.
    let before = idle_closed(&t);
    let mut s = t.m.connect(t.echo.addr).expect("CONNECT through node A");
    let mut b = [0u8; 5];
    std::io::Write::write_all(&mut s, b"first").unwrap();
    std::io::Read::read_exact(&mut s, &mut b).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    std::io::Write::write_all(&mut s, b"again").unwrap();
    std::io::Read::read_exact(&mut s, &mut b).unwrap();
    assert_eq!(&b, b"again");
    assert_eq!(
        idle_closed(&t),
        before,
        "the connection with a stream was closed"
    );
    assert_eq!(t.m.b.metric("zpath_hbone_server_connections"), 1);
    drop(s);
    t.assert_released();
}
