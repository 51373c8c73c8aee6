//! The loop's own guarantees over real loopback sockets: cancelled ops keep their memory
//! until the kernel lets go, a dry buffer ring pushes back without loss or spinning,
//! shutdown with ops pending frees everything, an idle loop does not iterate, and the
//! relay is byte-exact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use zpath_uring::{spawn, stats, time, Config, Runtime, TcpListener, TcpStream};

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A `Bytes` whose owner raises a flag when it is freed.
fn tracked(len: usize) -> (Bytes, Arc<AtomicBool>) {
    struct Owner(Vec<u8>, Arc<AtomicBool>);
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    impl Drop for Owner {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }
    let freed = Arc::new(AtomicBool::new(false));
    (
        Bytes::from_owner(Owner(vec![7u8; len], freed.clone())),
        freed,
    )
}

/// Runs the loop until `done` holds, failing after a generous 10 s.
async fn until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "condition not reached within 10 s"
        );
        time::sleep(Duration::from_millis(1)).await.unwrap();
    }
}

/// A std client connected to a ring listener, and the ring side of it.
async fn pair(listener: &TcpListener) -> (std::net::TcpStream, TcpStream) {
    let addr = listener.local_addr();
    let client = std::thread::spawn(move || std::net::TcpStream::connect(addr).unwrap());
    let server = listener.incoming().next().await.unwrap();
    (client.join().unwrap(), server)
}

#[test]
fn aborted_connection_cancels_in_flight_ops_and_keeps_send_buffer_until_completion() {
    let rt = Runtime::new(Config::default()).unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind(loopback(), false).unwrap();
        let (mut client, conn) = pair(&listener).await;
        // The client never reads: sends stall once the socket buffers are full.
        let (payload, freed) = tracked(64 << 20);
        let sender = conn.clone();
        let send = spawn(async move { sender.send_all(payload).await.0 }).unwrap();
        let receiver = conn.clone();
        let recv = spawn(async move {
            let mut rx = receiver.recv_stream().unwrap();
            rx.recv().await.map(|b| b.map(|b| b.len()))
        })
        .unwrap();
        until(|| stats().unwrap().ops_in_flight >= 2).await;
        time::sleep(Duration::from_millis(20)).await.unwrap();
        assert!(!send.is_finished() && !recv.is_finished());

        conn.set_reset_on_close().unwrap();
        send.abort();
        recv.abort();
        drop(conn);
        // The kernel has not confirmed the cancel yet: the buffer it reads must live.
        assert!(
            !freed.load(Ordering::SeqCst),
            "send buffer freed while the SQE was in flight"
        );
        assert!(stats().unwrap().ops_in_flight >= 1);

        until(|| stats().unwrap().ops_in_flight == 0).await;
        assert!(
            freed.load(Ordering::SeqCst),
            "send buffer leaked after the cancel completed"
        );
        assert_eq!(stats().unwrap().buffers_out, 0);
        assert!(send.await.is_none() && recv.await.is_none());

        // The socket was closed: the client sees the reset (or the end) after the bytes
        // that made it.
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut sink = vec![0u8; 1 << 20];
        loop {
            match client.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .unwrap();
}

#[test]
fn dry_buffer_ring_pushes_back_without_loss_or_busy_loop() {
    const CONNS: usize = 4;
    const BYTES: usize = 1 << 20;
    let config = Config {
        buf_entries: 2,
        buf_size: 4096,
        small_entries: 0,
        recv_queue: 16,
        ..Config::default()
    };
    let rt = Runtime::new(config).unwrap();
    let pattern = |conn: usize, i: usize| (i.wrapping_mul(31) ^ conn) as u8;
    rt.block_on(async {
        let listener = TcpListener::bind(loopback(), false).unwrap();
        let addr = listener.local_addr();
        let senders: Vec<_> = (0..CONNS)
            .map(|c| {
                std::thread::spawn(move || {
                    let mut s = std::net::TcpStream::connect(addr).unwrap();
                    s.write_all(&[c as u8]).unwrap();
                    let data: Vec<u8> = (0..BYTES).map(|i| pattern(c, i)).collect();
                    s.write_all(&data).unwrap();
                    s.shutdown(Shutdown::Write).unwrap();
                })
            })
            .collect();
        let mut incoming = listener.incoming();
        let mut readers = Vec::new();
        for _ in 0..CONNS {
            let conn = incoming.next().await.unwrap();
            readers.push(
                spawn(async move {
                    let mut rx = conn.recv_stream().unwrap();
                    let mut id = None;
                    let mut at = 0usize;
                    loop {
                        let Some(buf) = rx.recv().await.unwrap() else {
                            break;
                        };
                        // A slow reader holds its buffer a while: four readers hold
                        // more than the ring's two, so the others find it dry.
                        time::sleep(Duration::from_micros(200)).await.unwrap();
                        for &b in buf.iter() {
                            match id {
                                None => id = Some(usize::from(b)),
                                Some(c) => {
                                    assert_eq!(b, pattern(c, at), "byte {at} of connection {c}");
                                    at += 1;
                                }
                            }
                        }
                    }
                    at
                })
                .unwrap(),
            );
        }
        for reader in readers {
            assert_eq!(reader.await, Some(BYTES), "bytes lost or duplicated");
        }
        for s in senders {
            s.join().unwrap();
        }
    })
    .unwrap();
    let s = rt.stats();
    assert!(
        s.buffer_ring_dry > 0,
        "the ring never ran dry: the test proves nothing"
    );
    assert_eq!(s.buffers_out, 0);
    // Each 4 KiB buffer costs a handful of iterations (completion, sleep, timer); a loop
    // spinning on ENOBUFS would make orders of magnitude more.
    let buffers = (CONNS * BYTES / 4096) as u64;
    assert!(
        s.iterations < buffers * 8 + 1000,
        "{} iterations for {buffers} buffers (dry {} times)",
        s.iterations,
        s.buffer_ring_dry
    );
}

#[test]
fn shutdown_with_ops_pending_cancels_and_frees_everything() {
    let (payload, freed) = tracked(64 << 20);
    let addr;
    let (mut idle_client, mut busy_client);
    {
        let rt = Runtime::new(Config::default()).unwrap();
        let listener = TcpListener::bind(loopback(), false).unwrap();
        addr = listener.local_addr();
        let (ic, idle, bc, busy) = rt
            .block_on(async {
                let (idle_client, idle) = pair(&listener).await;
                let (busy_client, busy) = pair(&listener).await;
                (idle_client, idle, busy_client, busy)
            })
            .unwrap();
        idle_client = ic;
        busy_client = bc;
        rt.spawn(async move {
            let mut incoming = listener.incoming();
            let _ = incoming.next().await;
        });
        rt.spawn(async move {
            let mut rx = idle.recv_stream().unwrap();
            let _ = rx.recv().await;
        });
        rt.spawn(async move {
            let _ = busy.send_all(payload).await;
        });
        rt.spawn(async {
            let _ = time::sleep(Duration::from_secs(3600)).await;
        });
        rt.block_on(async {
            until(|| stats().unwrap().ops_in_flight >= 4).await;
            time::sleep(Duration::from_millis(20)).await.unwrap();
        })
        .unwrap();
        assert!(!freed.load(Ordering::SeqCst));
        let started = Instant::now();
        drop(rt);
        assert!(started.elapsed() < Duration::from_secs(5), "shutdown hung");
    }
    assert!(
        freed.load(Ordering::SeqCst),
        "send buffer not freed at shutdown"
    );
    // Every socket was closed: both clients see the end, the listener refuses.
    for client in [&mut idle_client, &mut busy_client] {
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut sink = vec![0u8; 1 << 20];
        loop {
            match client.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener still open"
    );
    // The thread can run a new runtime.
    let rt = Runtime::new(Config::default()).unwrap();
    assert_eq!(rt.stats().ops_in_flight, 0);
}

#[test]
fn idle_loop_does_not_iterate() {
    let rt = Runtime::new(Config::default()).unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind(loopback(), false).unwrap();
        let (_client, conn) = pair(&listener).await;
        spawn(async move {
            let mut incoming = listener.incoming();
            let _ = incoming.next().await;
        })
        .unwrap();
        spawn(async move {
            let mut rx = conn.recv_stream().unwrap();
            let _ = rx.recv().await;
        })
        .unwrap();
        time::sleep(Duration::from_millis(10)).await.unwrap();
        let before = stats().unwrap();
        let cpu_before = thread_cpu();
        time::sleep(Duration::from_millis(200)).await.unwrap();
        let after = stats().unwrap();
        let cpu = thread_cpu() - cpu_before;
        // Arm the timer, wake on it: nothing in between.
        assert!(
            after.iterations - before.iterations <= 3,
            "{} iterations while idle",
            after.iterations - before.iterations
        );
        assert!(cpu < Duration::from_millis(20), "{cpu:?} of CPU while idle");
    })
    .unwrap();
}

fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[test]
fn relay_copies_a_few_mib_byte_exact_both_ways() {
    const BYTES: usize = 4 << 20;
    let echo = std::net::TcpListener::bind(loopback()).unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let echo_thread = std::thread::spawn(move || {
        let (mut s, _) = echo.accept().unwrap();
        let mut r = s.try_clone().unwrap();
        std::io::copy(&mut r, &mut s).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    });
    let rt = Runtime::new(Config::default()).unwrap();
    let relayed = rt
        .block_on(async {
            let listener = TcpListener::bind(loopback(), false).unwrap();
            let addr = listener.local_addr();
            let client = std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                let data: Vec<u8> = (0..BYTES).map(|i| (i % 251) as u8).collect();
                let mut w = s.try_clone().unwrap();
                let writer = std::thread::spawn(move || {
                    w.write_all(&data).unwrap();
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let mut back = Vec::new();
                s.read_to_end(&mut back).unwrap();
                writer.join().unwrap();
                back
            });
            let conn = listener.incoming().next().await.unwrap();
            let upstream = TcpStream::connect(echo_addr, &Default::default())
                .await
                .unwrap();
            let counts = zpath_uring::relay::copy_bidirectional(&conn, &upstream)
                .await
                .unwrap();
            (counts, client)
        })
        .unwrap();
    let ((up, down), client) = relayed;
    let back = client.join().unwrap();
    echo_thread.join().unwrap();
    assert_eq!((up, down), (BYTES as u64, BYTES as u64));
    assert_eq!(back.len(), BYTES);
    assert!(
        back.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
        "relayed bytes differ"
    );
    assert_eq!(rt.stats().buffers_out, 0);
}

#[test]
fn wake_from_another_thread_arrives_through_the_eventfd() {
    struct Shared {
        value: Option<u32>,
        waker: Option<Waker>,
    }
    let shared = Arc::new(Mutex::new(Shared {
        value: None,
        waker: None,
    }));
    let rt = Runtime::new(Config::default()).unwrap();
    let remote = shared.clone();
    let thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let mut s = remote.lock().unwrap();
        s.value = Some(42);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    });
    let polls = Rc::new(Cell::new(0));
    let counted = polls.clone();
    let got = rt
        .block_on(std::future::poll_fn(|cx| {
            counted.set(counted.get() + 1);
            let mut s = shared.lock().unwrap();
            match s.value {
                Some(v) => Poll::Ready(v),
                None => {
                    s.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }))
        .unwrap();
    thread.join().unwrap();
    assert_eq!(got, 42);
    assert!(
        polls.get() <= 3,
        "{} polls: the wait was not a sleep",
        polls.get()
    );
    assert!(
        rt.stats().iterations <= 4,
        "{} iterations",
        rt.stats().iterations
    );
}

#[test]
fn connect_times_out_through_the_linked_timeout() {
    // A listener whose accept queue is full drops further SYNs, so a connect hangs.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&loopback().into()).unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    let rt = Runtime::new(Config::default()).unwrap();
    let started = Instant::now();
    let res = rt
        .block_on(TcpStream::connect(
            addr,
            &zpath_uring::ConnectOptions {
                mark: 0,
                timeout: Some(Duration::from_millis(300)),
            },
        ))
        .unwrap();
    let err = res.expect_err("connect to a full accept queue succeeded");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(rt.stats().ops_in_flight, 0);
    drop(fillers);
}

#[test]
fn dropped_receiver_hands_its_queued_buffers_back() {
    let rt = Runtime::new(Config::default()).unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind(loopback(), false).unwrap();
        let (mut client, conn) = pair(&listener).await;
        let mut rx = conn.recv_stream().unwrap();
        client.write_all(b"first").unwrap();
        assert_eq!(&*rx.recv().await.unwrap().unwrap(), b"first");
        // Three more completions queue on the armed receive while nobody reads.
        for chunk in [&b"a"[..], b"b", b"c"] {
            client.write_all(chunk).unwrap();
            time::sleep(Duration::from_millis(5)).await.unwrap();
        }
        assert_eq!(stats().unwrap().buffers_out, 3);
        drop(rx);
        assert_eq!(
            stats().unwrap().buffers_out,
            0,
            "queued buffers not handed back"
        );
        assert_eq!(
            conn.recv_stream().unwrap().buffers_available(),
            u32::from(Config::default().buf_entries)
        );
    })
    .unwrap();
}

#[test]
fn a_receiver_moves_to_large_buffers_for_bulk_and_back_when_quiet() {
    let rt = Runtime::new(Config::default()).unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind(loopback(), false).unwrap();
        let (mut client, conn) = pair(&listener).await;
        let mut rx = conn.recv_stream().unwrap();
        client.write_all(b"hello").unwrap();
        let first = rx.recv().await.unwrap().unwrap();
        assert_eq!(&*first, b"hello");
        drop(first);
        assert!(
            rx.on_small_buffers(),
            "a quiet receiver left the small ring"
        );
        // Bulk: receives fill small buffers, so the receiver moves to the large ring.
        let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i % 241) as u8).collect();
        let writer = {
            let mut client = client.try_clone().unwrap();
            let payload = payload.clone();
            std::thread::spawn(move || client.write_all(&payload).unwrap())
        };
        let mut got = Vec::with_capacity(payload.len());
        let mut largest = 0;
        while got.len() < payload.len() {
            let buf = rx.recv().await.unwrap().unwrap();
            largest = largest.max(buf.len());
            got.extend_from_slice(&buf);
        }
        writer.join().unwrap();
        assert_eq!(got, payload, "bytes lost or reordered across the move");
        assert!(largest > 2048, "bulk never reached the large ring");
        assert!(!rx.on_small_buffers());
        // Quiet again: a few small receives move it back.
        for _ in 0..8 {
            client.write_all(b"x").unwrap();
            let b = rx.recv().await.unwrap().unwrap();
            assert_eq!(&*b, b"x");
            time::sleep(Duration::from_millis(1)).await.unwrap();
        }
        client.write_all(b"y").unwrap();
        assert_eq!(&*rx.recv().await.unwrap().unwrap(), b"y");
        assert!(
            rx.on_small_buffers(),
            "a quiet receiver stayed on the large ring"
        );
    })
    .unwrap();
}
