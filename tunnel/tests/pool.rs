//! The pool and client over real loopback sockets (plain TCP under HTTP/2: the TLS
//! layer is tested in zpath-crypto and end to end in zpath-tests).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;

use http::StatusCode;
use zpath_tunnel::{client, connect, server, ConnectFailed, H2Settings, Pool, SetupStep, Tunnel};
use zpath_uring::{ConnectOptions, IoStream, TcpListener, TcpStream};

type Conn = IoStream;

/// Runs `future` to completion on a fresh ring on this thread.
fn run<F: Future>(future: F) -> F::Output {
    let rt = zpath_uring::Runtime::new(zpath_uring::Config::default())
        .expect("start a zpath-uring runtime");
    rt.block_on(future).expect("run the test on the ring")
}

fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0".parse().unwrap(), false).unwrap()
}

async fn dial(
    addr: std::net::SocketAddr,
    promised: Rc<Cell<u32>>,
) -> Result<Tunnel, ConnectFailed> {
    let connect_failed = |e: std::io::Error| ConnectFailed {
        step: SetupStep::Connect,
        message: e.to_string().into(),
    };
    let tcp = TcpStream::connect(addr, &ConnectOptions::default())
        .await
        .map_err(connect_failed)?;
    let io = IoStream::new(tcp).map_err(connect_failed)?;
    let (tunnel, driver) = client::handshake(io, &H2Settings::default(), 100, promised)
        .await
        .map_err(|e| ConnectFailed {
            step: SetupStep::Http2,
            message: e.to_string().into(),
        })?;
    drop(zpath_uring::spawn_local(driver));
    Ok(tunnel)
}

fn request() -> http::Request<()> {
    let addr = "10.0.0.2:80".parse().unwrap();
    connect::request(
        addr,
        "10.0.0.1:1".parse().unwrap(),
        "",
        &connect::traceparent(1, 1),
    )
    .unwrap()
}

/// Accepts connections; answers every CONNECT with 200 and keeps the streams; with
/// `goaway_first`, the first connection says GOAWAY after its first stream (the stream
/// stays open).
async fn serve(listener: TcpListener, goaway_first: bool) {
    serve_with(listener, goaway_first, H2Settings::default()).await;
}

async fn serve_with(listener: TcpListener, goaway_first: bool, settings: H2Settings) {
    let mut first = goaway_first;
    let mut incoming = listener.incoming();
    loop {
        let tcp = incoming.next().await.unwrap();
        let goaway = std::mem::take(&mut first);
        drop(zpath_uring::spawn_local(async move {
            let io = IoStream::new(tcp).unwrap();
            let mut conn: server::ServerConnection<Conn> =
                server::accept(io, &settings).await.unwrap();
            let mut kept = Vec::new();
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                assert_eq!(connect::target(&req).unwrap().port(), 80);
                let send = server::answer(&mut respond, StatusCode::OK).unwrap();
                kept.push((req, send));
                if goaway {
                    conn.graceful_shutdown();
                }
            }
            let _ = futures_lite::future::poll_fn(|cx| conn.poll_closed(cx)).await;
        }));
    }
}

#[test]
fn a_tunnel_that_said_goaway_is_not_offered_again() {
    run(async {
        let listener = loopback();
        let addr = listener.local_addr();
        drop(zpath_uring::spawn_local(serve(listener, true)));
        let pool = Pool::<u8>::new(100);

        // First stream: a new tunnel; its server then says GOAWAY.
        let (t1, slot) = pool.checkout(&0, |p| dial(addr, p)).await.unwrap();
        let first = t1.open(request(), slot).await.unwrap();
        assert_eq!(pool.handshakes(), 1);
        // Let the GOAWAY arrive.
        let _ = zpath_uring::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            t1.is_closed(),
            "a tunnel that said GOAWAY takes no new stream"
        );

        // The next checkout makes a new tunnel, and its stream opens.
        let (t2, slot) = pool.checkout(&0, |p| dial(addr, p)).await.unwrap();
        assert_eq!(pool.handshakes(), 2);
        let second = t2.open(request(), slot).await.unwrap();
        assert!(!t2.is_closed());
        assert_eq!(pool.stats().tunnels, 1, "the closed tunnel is not counted");
        drop((first, second));
    });
}

#[test]
fn concurrent_first_requests_share_one_handshake_up_to_the_stream_limit() {
    run(async {
        let listener = loopback();
        let addr = listener.local_addr();
        drop(zpath_uring::spawn_local(serve(listener, false)));
        let pool = Pool::<u8>::new(3);
        // Seven flows at once, three streams per tunnel: three handshakes, not seven.
        let flows: Vec<_> = (0..7)
            .map(|_| {
                let pool = pool.clone();
                zpath_uring::spawn_local(async move {
                    let (t, slot) = pool.checkout(&0, |p| dial(addr, p)).await.unwrap();
                    (t, slot)
                })
            })
            .collect();
        let mut held = Vec::new();
        for f in flows {
            held.push(f.await.expect("the flow ran to its end"));
        }
        assert_eq!(pool.handshakes(), 3);
        assert_eq!(pool.stats().streams, 7);
        drop(held);
        assert_eq!(pool.stats().streams, 0);
        // Idle now: released by the sweep.
        let later = std::time::Instant::now() + std::time::Duration::from_secs(1);
        assert_eq!(
            pool.release_idle(later, std::time::Duration::from_millis(10)),
            3
        );
        assert_eq!(pool.stats(), zpath_tunnel::PoolStats::default());
    });
}

/// Sets its flag when dropped: tells whether an abandoned handshake was let go.
struct DropFlag(Rc<Cell<bool>>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

/// Starts a handshake for key 0 that never finishes and gives up waiting for it; the
/// flag tells when the pool has dropped that handshake.
async fn give_up_on_a_stalled_handshake(pool: &Rc<Pool<u8>>) -> Rc<Cell<bool>> {
    let dropped = Rc::new(Cell::new(false));
    let flag = DropFlag(dropped.clone());
    let stalled = pool.checkout(&0, move |_| async move {
        let _flag = flag;
        futures_lite::future::pending::<Result<Tunnel, ConnectFailed>>().await
    });
    let gave_up =
        futures_lite::future::or(async { stalled.await.map(|_| ()) }, async { Ok(()) }).await;
    assert!(gave_up.is_ok());
    dropped
}

#[test]
fn a_handshake_every_waiter_gave_up_on_is_dropped_not_joined() {
    run(async {
        let listener = loopback();
        let addr = listener.local_addr();
        drop(zpath_uring::spawn_local(serve(listener, false)));
        let pool = Pool::<u8>::new(10);
        // A handshake that never finishes (a peer that never answers), and a caller
        // that gives up on it.
        let dropped = give_up_on_a_stalled_handshake(&pool).await;
        assert_eq!(pool.stats().connecting, 1, "still counted until swept");
        assert!(!dropped.get());

        // The sweep drops it, and with it the half-made connection.
        pool.release_idle(
            std::time::Instant::now(),
            std::time::Duration::from_secs(60),
        );
        assert_eq!(pool.stats(), zpath_tunnel::PoolStats::default());
        assert!(dropped.get());

        // Same on checkout: a new caller starts a fresh handshake instead of joining
        // one nobody drives.
        let dropped = give_up_on_a_stalled_handshake(&pool).await;
        let (tunnel, slot) = pool.checkout(&0, |p| dial(addr, p)).await.unwrap();
        assert!(dropped.get());
        assert_eq!(pool.handshakes(), 3);
        let stats = pool.stats();
        assert_eq!((stats.connecting, stats.tunnels, stats.streams), (0, 1, 1));
        drop((tunnel, slot));
        let later = std::time::Instant::now() + std::time::Duration::from_secs(1);
        pool.release_idle(later, std::time::Duration::from_millis(10));
        assert_eq!(pool.stats(), zpath_tunnel::PoolStats::default());
    });
}

#[test]
fn the_servers_stream_limit_is_followed_once_its_settings_arrive() {
    run(async {
        let listener = loopback();
        let addr = listener.local_addr();
        let settings = H2Settings {
            max_concurrent_streams: 2,
            ..H2Settings::default()
        };
        let server = serve_with(listener, false, settings);
        drop(zpath_uring::spawn_local(server));
        // We would put 100 streams on a tunnel; this server takes 2.
        let pool = Pool::<u8>::new(100);
        let (t1, slot) = pool.checkout(&0, |p| dial(addr, p)).await.unwrap();
        // An answered stream means the server's SETTINGS were read before it.
        let s1 = t1.open(request(), slot).await.unwrap();
        let (t2, slot) = pool.checkout(&0, |p| dial(addr, p)).await.unwrap();
        let s2 = t2.open(request(), slot).await.unwrap();
        assert_eq!(pool.handshakes(), 1);
        // The third stream needs a new tunnel; on the first it would wait in h2's
        // queue until one of the two closed.
        let (t3, slot) = pool.checkout(&0, |p| dial(addr, p)).await.unwrap();
        assert_eq!(pool.handshakes(), 2);
        let s3 = futures_lite::future::or(async { Some(t3.open(request(), slot).await) }, async {
            let _ = zpath_uring::time::sleep(std::time::Duration::from_secs(5)).await;
            None
        })
        .await
        .expect("the third stream opens at once on its own tunnel")
        .unwrap();
        assert_eq!(pool.stats().streams, 3);
        drop((s1, s2, s3));
        assert_eq!(pool.stats().streams, 0);
        let later = std::time::Instant::now() + std::time::Duration::from_secs(1);
        assert_eq!(
            pool.release_idle(later, std::time::Duration::from_millis(10)),
            2
        );
        assert_eq!(pool.stats(), zpath_tunnel::PoolStats::default());
    });
}
