//! Liveness of HBONE connections, client and server side: an HTTP/2 PING every
//! `interval`, and a connection whose peer leaves one unanswered for `timeout` is
//! closed (ztunnel's defaults: 10 s and 20 s); a connection we serve that carries no
//! stream for the idle timeout is closed too.
//!
//! Each runs in a task of its own on the shard, apart from the connection's task: the
//! connection's task polls only a [`Flag`] (a cell), not a timer, for every frame.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use zpath_uring::JoinHandle;

use crate::shard::signal::Flag;

/// How often an HBONE connection is PINGed and how long an answer may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Time between one answer and the next PING (ztunnel: 10 s).
    pub interval: Duration,
    /// Longest a PING may wait for its answer before the connection is closed
    /// (ztunnel: 20 s).
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(20),
        }
    }
}

/// PINGs the peer every `k.interval`; returns when a PING went unanswered for
/// `k.timeout`. Never returns if the connection ends first (its own task sees that).
pub async fn unanswered(ping_pong: Option<h2::PingPong>, k: Keepalive) {
    let Some(mut ping_pong) = ping_pong else {
        return futures_lite::future::pending().await;
    };
    loop {
        let _ = zpath_uring::time::sleep(k.interval).await;
        let answered = zpath_uring::time::timeout(k.timeout, async {
            ping_pong.ping(h2::Ping::opaque()).await
        })
        .await;
        match answered {
            Ok(Ok(_pong)) => {}
            // The connection is gone: nothing left to keep alive.
            Ok(Err(_)) => return futures_lite::future::pending().await,
            Err(_) => return,
        }
    }
}

/// The streams a served connection carries, and since when it carries none.
#[derive(Debug)]
pub struct Activity {
    streams: Cell<u32>,
    idle_since: Cell<Option<Instant>>,
}

impl Activity {
    /// A connection without streams since now.
    pub fn new() -> Rc<Self> {
        Rc::new(Self {
            streams: Cell::new(0),
            idle_since: Cell::new(Some(Instant::now())),
        })
    }

    /// Counts a stream until the returned guard is dropped.
    pub fn stream(self: &Rc<Self>) -> ActiveStream {
        self.streams.set(self.streams.get() + 1);
        self.idle_since.set(None);
        ActiveStream(self.clone())
    }

    /// Streams open now.
    pub fn streams(&self) -> u32 {
        self.streams.get()
    }
}

/// One stream of a served connection, counted while it lives.
#[derive(Debug)]
pub struct ActiveStream(Rc<Activity>);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        let a = &self.0;
        let left = a.streams.get().saturating_sub(1);
        a.streams.set(left);
        if left == 0 {
            a.idle_since.set(Some(Instant::now()));
        }
    }
}

/// Returns once `activity` has carried no stream for `idle`. While streams are open
/// it looks again every `idle`, which costs one timer per idle period.
pub async fn idle_for(activity: &Activity, idle: Duration) {
    loop {
        let left = match activity.idle_since.get() {
            Some(since) => (since + idle).saturating_duration_since(Instant::now()),
            None => idle,
        };
        if left.is_zero() {
            return;
        }
        let _ = zpath_uring::time::sleep(left).await;
    }
}

/// What a served connection's watchers tell its task.
#[derive(Debug, Default)]
pub struct Watched {
    /// A PING went unanswered: close now.
    pub silent: Flag,
    /// No stream for the idle timeout: close.
    pub idle: Flag,
}

/// Spawns the watchers of a served connection: keepalive and idle time. They stop
/// when the returned guard is dropped.
pub fn watch_server(
    ping_pong: Option<h2::PingPong>,
    k: Keepalive,
    activity: Rc<Activity>,
    idle: Duration,
    watched: Rc<Watched>,
) -> Watchers {
    let task = zpath_uring::spawn_local(async move {
        let keepalive = async {
            unanswered(ping_pong, k).await;
            watched.silent.raise();
        };
        let idle = async {
            idle_for(&activity, idle).await;
            watched.idle.raise();
        };
        futures_lite::future::zip(keepalive, idle).await;
    });
    Watchers(task)
}

/// Spawns the keepalive of a client connection; `silent` is raised when a PING went
/// unanswered. It stops when the returned guard is dropped.
pub fn watch_client(ping_pong: Option<h2::PingPong>, k: Keepalive, silent: Rc<Flag>) -> Watchers {
    let task = zpath_uring::spawn_local(async move {
        unanswered(ping_pong, k).await;
        silent.raise();
    });
    Watchers(task)
}

/// Watcher tasks of one connection, cancelled when dropped.
#[derive(Debug)]
pub struct Watchers(JoinHandle<()>);

impl Drop for Watchers {
    fn drop(&mut self) {
        self.0.abort();
    }
}
