//! What the engine relies on from `IoStream` and the cross-thread pieces: bytes written
//! just before a drop still leave (unless the socket aborts), splitting a stream for the
//! zero-copy relay loses no byte already received, a `Signal` raised on another thread
//! wakes its task, and `unblock` runs work off the loop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use zpath_uring::{
    relay, spawn_local, stats, time, unblock, Config, IoStream, Runtime, Signal, TcpListener,
    TcpStream,
};

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn accepted(listener: &TcpListener) -> TcpStream {
    listener.incoming().next().await.unwrap()
}

/// A std client of `addr` on a thread of its own that reads until end of stream.
fn read_all_from(addr: SocketAddr) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        got
    })
}

#[test]
fn bytes_written_just_before_a_drop_still_reach_the_peer() {
    let rt = Runtime::new(Config::default()).unwrap();
    let listener = TcpListener::bind(loopback(), false).unwrap();
    let addr = listener.local_addr();
    let reader = read_all_from(addr);
    rt.block_on(async {
        let mut io = IoStream::new(accepted(&listener).await).unwrap();
        // Write-behind: the write returns before the send completes; the stream is
        // dropped at once, as a refusal path does.
        io.write_all(&[9u8; 200_000]).await.unwrap();
        drop(io);
        // The linger task finishes the send, then the socket closes.
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats().unwrap().tasks > 0 && Instant::now() < deadline {
            time::sleep(Duration::from_millis(5)).await.unwrap();
        }
    })
    .unwrap();
    let got = reader.join().unwrap();
    assert_eq!(
        got.len(),
        200_000,
        "bytes written before the drop were lost"
    );
    assert!(got.iter().all(|&b| b == 9));
}

#[test]
fn an_aborted_stream_resets_instead_of_lingering() {
    let rt = Runtime::new(Config::default()).unwrap();
    let listener = TcpListener::bind(loopback(), false).unwrap();
    let addr = listener.local_addr();
    let (connected_tx, connected_rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        // Not reading until told: the proxy's send stalls meanwhile.
        connected_rx.recv().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return Err("the peer saw a clean close, not a reset".to_string()),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(format!("no reset: {e}")),
            }
        }
    });
    rt.block_on(async {
        let mut io = IoStream::new(accepted(&listener).await).unwrap();
        // More than the socket buffers hold while the peer does not read: a send stays
        // in flight.
        for _ in 0..64 {
            let _ = io.write_all(&[1u8; 64 << 10]).await;
            time::sleep(Duration::from_millis(1)).await.unwrap();
        }
        io.set_reset_on_close().unwrap();
        drop(io);
        assert_eq!(stats().unwrap().tasks, 0, "an aborted stream lingered");
        connected_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !client.is_finished() && Instant::now() < deadline {
            time::sleep(Duration::from_millis(5)).await.unwrap();
        }
    })
    .unwrap();
    client.join().unwrap().unwrap();
}

#[test]
fn splitting_a_stream_keeps_every_byte_already_received() {
    let rt = Runtime::new(Config::default()).unwrap();
    let listener = TcpListener::bind(loopback(), false).unwrap();
    let upstream = std::net::TcpListener::bind(loopback()).unwrap();
    let (addr, up_addr) = (listener.local_addr(), upstream.local_addr().unwrap());
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    let client = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(&sent).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let sink = std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let relayed = rt
        .block_on(async {
            let mut io = IoStream::new(accepted(&listener).await).unwrap();
            // Read a few bytes the way a protocol sniffer would, leaving the rest of
            // the buffer and whatever the multishot receive queued.
            let mut head = [0u8; 7];
            io.read_exact(&mut head).await.unwrap();
            time::sleep(Duration::from_millis(50)).await.unwrap();
            let (_conn, mut rx, unread) = io.into_parts().await.unwrap();
            let to = TcpStream::connect(up_addr, &Default::default())
                .await
                .unwrap();
            let mut counted = 0;
            let n = relay::copy_counted(&mut rx, unread, &to, |n| counted += n)
                .await
                .unwrap();
            assert_eq!(n as usize, counted);
            (head, n)
        })
        .unwrap();
    client.join().unwrap();
    let got = sink.join().unwrap();
    assert_eq!(relayed.0[..], payload[..7]);
    assert_eq!(relayed.1 as usize, payload.len() - 7);
    assert_eq!(
        got[..],
        payload[7..],
        "bytes were lost or reordered in the split"
    );
}

#[test]
fn a_signal_raised_on_another_thread_wakes_its_task_once_per_raise() {
    let rt = Runtime::new(Config::default()).unwrap();
    let signal = Signal::new();
    let remote = signal.clone();
    rt.block_on(async {
        let raiser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            remote.raise();
            remote.raise();
        });
        time::timeout(Duration::from_secs(5), signal.wait())
            .await
            .expect("the raise did not wake the task");
        raiser.join().unwrap();
        // Two raises before the wait returned count as one.
        assert!(
            time::timeout(Duration::from_millis(50), signal.wait())
                .await
                .is_err(),
            "a second wake without a second raise"
        );
    })
    .unwrap();
}

#[test]
fn unblock_runs_work_off_the_loop_while_other_tasks_go_on() {
    let rt = Runtime::new(Config::default()).unwrap();
    rt.block_on(async {
        let ticks = std::rc::Rc::new(std::cell::Cell::new(0));
        let t = ticks.clone();
        let ticker = spawn_local(async move {
            loop {
                time::sleep(Duration::from_millis(5)).await.unwrap();
                t.set(t.get() + 1);
            }
        });
        let value = unblock(|| {
            std::thread::sleep(Duration::from_millis(100));
            42
        })
        .await
        .unwrap();
        assert_eq!(value, 42);
        assert!(
            ticks.get() >= 5,
            "the loop was blocked: {} ticks",
            ticks.get()
        );
        ticker.abort();
    })
    .unwrap();
}

#[test]
fn spawn_local_outside_a_runtime_drops_the_task_without_panicking() {
    let handle = spawn_local(async { 1 });
    assert!(handle.is_finished());
    handle.abort();
}

#[test]
fn abort_drops_the_task_later_so_a_caller_may_hold_what_its_drop_touches() {
    use std::cell::RefCell;
    use std::rc::Rc;
    struct Leaves(Rc<RefCell<Vec<u32>>>);
    impl Drop for Leaves {
        fn drop(&mut self) {
            // What a connection's table guard does when its task is dropped.
            self.0.borrow_mut().push(1);
        }
    }
    let rt = Runtime::new(Config::default()).unwrap();
    rt.block_on(async {
        let table = Rc::new(RefCell::new(Vec::new()));
        let guard = Leaves(table.clone());
        let task = spawn_local(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        time::sleep(Duration::from_millis(1)).await.unwrap();
        {
            let held = table.borrow_mut();
            task.abort();
            drop(held);
        }
        assert!(table.borrow().is_empty(), "dropped inside abort");
        time::sleep(Duration::from_millis(1)).await.unwrap();
        assert_eq!(*table.borrow(), vec![1], "not dropped after abort");
        assert!(task.is_finished());
    })
    .unwrap();
}

#[test]
fn an_owned_payload_is_sent_whole_and_in_order_with_copied_writes() {
    let rt = Runtime::new(Config::default()).unwrap();
    let listener = TcpListener::bind(loopback(), false).unwrap();
    let addr = listener.local_addr();
    let reader = read_all_from(addr);
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 239) as u8).collect();
    let expected = [&b"head"[..], &big, b"tail"].concat();
    rt.block_on(async {
        let mut io = IoStream::new(accepted(&listener).await).unwrap();
        io.write_all(b"head").await.unwrap();
        // More than the socket takes at once: the send is resumed where it stopped.
        let mut data = Some(bytes::Bytes::from(big));
        std::future::poll_fn(|cx| io.poll_write_bytes(cx, &mut data))
            .await
            .unwrap();
        assert!(data.is_none());
        io.write_all(b"tail").await.unwrap();
        io.close().await.unwrap();
    })
    .unwrap();
    assert_eq!(reader.join().unwrap(), expected);
}
