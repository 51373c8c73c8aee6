//! A shard's pool of client tunnels, keyed as ztunnel keys them: source identity,
//! destination identities, destination (node) address and source address.
//!
//! * A tunnel carries up to `max_streams` streams; past that a new one is made.
//! * Concurrent first requests for one key share one handshake: the first starts it,
//!   the next ones (up to `max_streams` in all) wait for it; more start another.
//! * Closed tunnels are dropped on the next checkout; idle ones by [`Pool::release_idle`].
//! * A handshake every waiter gave up on (all cancelled) is abandoned: the next
//!   checkout or sweep drops it, which closes its half-made connection.
//!
//! Not `Sync`: each shard owns one pool, and nothing in it is shared across cores.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::{FutureExt, Shared};

use crate::client::{StreamSlot, Tunnel};

/// Why a tunnel could not be made; cloneable so every waiter gets it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConnectFailed {
    /// The step of making the tunnel that failed.
    pub step: SetupStep,
    /// What happened.
    pub message: Rc<str>,
}

/// The steps of making a tunnel, each of which can fail on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupStep {
    /// No certificate for the identity to present.
    Certificate,
    /// The TLS configuration or handshake.
    Tls,
    /// The source address could not be used (it is never replaced by another).
    SourceAddress,
    /// The TCP connect.
    Connect,
    /// The HTTP/2 handshake.
    Http2,
    /// The pool itself.
    Pool,
}

type Connecting = Shared<Pin<Box<dyn Future<Output = Result<Tunnel, ConnectFailed>>>>>;

struct Pending {
    connecting: Connecting,
    /// Callers waiting for this handshake; moves into the tunnel as its promised slots.
    waiting: Rc<Cell<u32>>,
}

impl Pending {
    /// Whether anyone still waits for this handshake. Nobody polls an abandoned one,
    /// so it would never finish (nor release its socket) if it were kept.
    fn wanted(&self) -> bool {
        self.waiting.get() > 0
    }
}

struct Entry {
    tunnels: Vec<Tunnel>,
    pending: Vec<Pending>,
}

/// Counts of a pool, for gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Keys with at least one tunnel or handshake.
    pub keys: usize,
    /// Tunnels in the pool.
    pub tunnels: usize,
    /// Streams open on pooled tunnels.
    pub streams: u64,
    /// Handshakes in progress.
    pub connecting: usize,
}

/// A shard-local pool of tunnels.
pub struct Pool<K> {
    entries: RefCell<HashMap<K, Entry>>,
    max_streams: u32,
    handshakes: Cell<u64>,
}

impl<K> std::fmt::Debug for Pool<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("max_streams", &self.max_streams)
            .field("handshakes", &self.handshakes.get())
            .finish_non_exhaustive()
    }
}

/// What a checkout takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    /// A stream on this open tunnel.
    Tunnel(usize),
    /// A place among the callers waiting for this handshake.
    Join(usize),
    /// A new handshake.
    Handshake,
}

/// The pool's choice of tunnel for a key: the first open tunnel with room (`rooms`: for
/// each open tunnel, whether it has room), else the first handshake in progress that
/// fewer than `max` callers wait for (`waiting`: for each, how many), else a new
/// handshake. So a burst of first requests shares one handshake up to the stream limit.
fn choose(
    rooms: impl IntoIterator<Item = bool>,
    waiting: impl IntoIterator<Item = u32>,
    max: u32,
) -> Choice {
    if let Some(i) = rooms.into_iter().position(|room| room) {
        return Choice::Tunnel(i);
    }
    match waiting.into_iter().position(|w| w < max) {
        Some(i) => Choice::Join(i),
        None => Choice::Handshake,
    }
}

/// Releases a waiter's promised place if it gives up before taking its slot.
struct Waiting(Rc<Cell<u32>>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl<K: Hash + Eq + Clone + 'static> Pool<K> {
    /// An empty pool whose tunnels carry at most `max_streams` streams each.
    pub fn new(max_streams: u32) -> Rc<Self> {
        Rc::new(Self {
            entries: RefCell::new(HashMap::new()),
            max_streams: max_streams.max(1),
            handshakes: Cell::new(0),
        })
    }

    /// Handshakes started so far (successful or not).
    pub fn handshakes(&self) -> u64 {
        self.handshakes.get()
    }

    /// The most streams one tunnel carries.
    pub fn max_streams(&self) -> u32 {
        self.max_streams
    }

    /// A tunnel for `key` with a slot taken on it: an open tunnel with room, else a
    /// handshake in progress with room, else a new handshake made by `connect`, which
    /// receives the cell counting the callers waiting for it (pass it to
    /// [`crate::client::handshake`]).
    pub async fn checkout<F, Fut>(
        self: &Rc<Self>,
        key: &K,
        connect: F,
    ) -> Result<(Tunnel, StreamSlot), ConnectFailed>
    where
        F: FnOnce(Rc<Cell<u32>>) -> Fut,
        Fut: Future<Output = Result<Tunnel, ConnectFailed>> + 'static,
    {
        let (connecting, waiting) = {
            let mut entries = self.entries.borrow_mut();
            // The key is cloned only for a new entry, not on every checkout.
            if !entries.contains_key(key) {
                entries.insert(
                    key.clone(),
                    Entry {
                        tunnels: Vec::new(),
                        pending: Vec::new(),
                    },
                );
            }
            let Some(entry) = entries.get_mut(key) else {
                return Err(ConnectFailed {
                    step: SetupStep::Pool,
                    message: "pool entry missing right after insertion".into(),
                });
            };
            entry.tunnels.retain(|t| !t.is_closed());
            entry.pending.retain(Pending::wanted);
            let choice = choose(
                entry.tunnels.iter().map(|t| t.state.has_room()),
                entry.pending.iter().map(|p| p.waiting.get()),
                self.max_streams,
            );
            match choice {
                Choice::Tunnel(i) => {
                    let t = &entry.tunnels[i];
                    let slot = StreamSlot::take(&t.state);
                    return Ok((t.clone(), slot));
                }
                Choice::Join(i) => {
                    let p = &entry.pending[i];
                    p.waiting.set(p.waiting.get() + 1);
                    (p.connecting.clone(), p.waiting.clone())
                }
                Choice::Handshake => {
                    let waiting = Rc::new(Cell::new(1));
                    self.handshakes.set(self.handshakes.get() + 1);
                    let connecting = self.start(key.clone(), connect(waiting.clone()), &waiting);
                    entry.pending.push(Pending {
                        connecting: connecting.clone(),
                        waiting: waiting.clone(),
                    });
                    (connecting, waiting)
                }
            }
        };
        let waiter = Waiting(waiting);
        let tunnel = connecting.await?;
        // Take the slot before giving up the promised place: the tunnel never looks
        // fuller or emptier than it is.
        let slot = StreamSlot::take(&tunnel.state);
        drop(waiter);
        Ok((tunnel, slot))
    }

    fn start(
        self: &Rc<Self>,
        key: K,
        connect: impl Future<Output = Result<Tunnel, ConnectFailed>> + 'static,
        waiting: &Rc<Cell<u32>>,
    ) -> Connecting {
        let pool = Rc::downgrade(self);
        let waiting = waiting.clone();
        let fut: Pin<Box<dyn Future<Output = Result<Tunnel, ConnectFailed>>>> =
            Box::pin(async move {
                let result = connect.await;
                if let Some(pool) = pool.upgrade() {
                    let mut entries = pool.entries.borrow_mut();
                    if let Some(entry) = entries.get_mut(&key) {
                        entry.pending.retain(|p| !Rc::ptr_eq(&p.waiting, &waiting));
                        if let Ok(t) = &result {
                            entry.tunnels.push(t.clone());
                        }
                        if entry.tunnels.is_empty() && entry.pending.is_empty() {
                            entries.remove(&key);
                        }
                    }
                }
                result
            });
        fut.shared()
    }

    /// Drops tunnels closed or idle (no stream, nobody waiting) for at least `idle`,
    /// and handshakes nobody waits for any more; returns how many tunnels were
    /// dropped. Dropping the last handle of a tunnel ends its connection with GOAWAY.
    pub fn release_idle(&self, now: Instant, idle: Duration) -> usize {
        let mut released = 0;
        self.entries.borrow_mut().retain(|_, entry| {
            entry.tunnels.retain(|t| {
                let s = &t.state;
                let idle_long = s.streams.get() == 0
                    && s.promised.get() == 0
                    && s.idle_since
                        .get()
                        .is_some_and(|since| now.saturating_duration_since(since) >= idle);
                let drop_it = s.closed.get() || idle_long;
                released += usize::from(drop_it);
                !drop_it
            });
            entry.pending.retain(Pending::wanted);
            !entry.tunnels.is_empty() || !entry.pending.is_empty()
        });
        released
    }

    /// Drops every tunnel (their connections end once their streams finish).
    pub fn clear(&self) {
        self.entries.borrow_mut().clear();
    }

    /// Current counts.
    pub fn stats(&self) -> PoolStats {
        let entries = self.entries.borrow();
        let mut stats = PoolStats {
            keys: entries.len(),
            ..PoolStats::default()
        };
        for e in entries.values() {
            let open = e.tunnels.iter().filter(|t| !t.is_closed());
            stats.tunnels += open.clone().count();
            stats.connecting += e.pending.len();
            stats.streams += open.map(|t| u64::from(t.streams())).sum::<u64>();
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_tunnel_with_room_comes_first() {
        assert_eq!(choose([false, true, true], [0], 100), Choice::Tunnel(1));
        assert_eq!(choose([true], [], 100), Choice::Tunnel(0));
    }

    #[test]
    fn with_no_room_a_handshake_under_the_stream_limit_is_joined() {
        assert_eq!(choose([false], [100, 99], 100), Choice::Join(1));
        assert_eq!(choose([], [0], 1), Choice::Join(0));
    }

    #[test]
    fn a_new_handshake_only_when_every_tunnel_and_handshake_is_full() {
        assert_eq!(choose([false, false], [100, 100], 100), Choice::Handshake);
        assert_eq!(choose([], [], 100), Choice::Handshake);
        assert_eq!(choose([], [1], 1), Choice::Handshake);
    }
}
