//! The shard-local connection table: one entry per live connection, with what the
//! config dump and drain need to know. Single-threaded (`Rc`/`RefCell`), never shared.

use std::cell::{Cell, OnceCell, RefCell};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Instant;

use zpath_uring::JoinHandle;

use crate::failure::{fail, Failure};
use crate::stats::{Direction, DirectionStats, ShardStats};
use crate::traffic::LocalCounters;
use crate::traffic::ResponseFlag;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Reading the destination (original destination or SOCKS5 request).
    Accepted,
    /// Connecting to the upstream.
    Connecting,
    /// Relaying bytes.
    Relaying,
}

/// What a connection's task and the table share about it.
#[derive(Debug)]
pub struct ConnInfo {
    /// Shard-unique id.
    pub id: u64,
    /// Which way the traffic goes.
    pub direction: Direction,
    /// The client's address.
    pub src: SocketAddr,
    /// The destination, once known.
    pub dst: Cell<Option<SocketAddr>>,
    /// Client → server bytes so far.
    pub up: Cell<u64>,
    /// Server → client bytes so far.
    pub down: Cell<u64>,
    /// Life stage.
    pub state: Cell<ConnState>,
    /// Descriptors of the client and upstream sockets while they are open (-1: none).
    pub fds: Cell<[RawFd; 2]>,
    /// The verified peer identity of an HBONE inbound stream (policy re-checks use it).
    pub peer: RefCell<Option<Rc<zpath_crypto::VerifiedPeer>>>,
    /// When it was accepted (the access log's duration).
    pub started: Instant,
    /// What the client addressed (a service VIP, say), before any routing.
    pub addressed: Cell<Option<SocketAddr>>,
    /// Outbound over HBONE, the tunnel's address (the destination node's 15008).
    pub tunnel: Cell<Option<SocketAddr>>,
    /// The `istio_tcp_*` counters it counts into, once its workloads are resolved.
    pub(crate) traffic: OnceCell<LocalCounters>,
}

impl ConnInfo {
    /// Counts the connection as ended, completed or with `failure`: closed and failed
    /// by direction, and closed with its response flag under its Istio label set.
    pub(crate) fn count_end(&self, stats: &DirectionStats, failure: Option<&Failure>) {
        stats.closed.add(1);
        if let Some(f) = failure {
            stats.count_failed(f.reason);
        }
        if let Some(t) = self.traffic.get() {
            t.close(failure.map_or(ResponseFlag::None, Failure::response_flag));
        }
    }

    /// Over HBONE, the CONNECT target (`:authority`): the destination of a connection
    /// that went through a tunnel (outbound) or came in one (inbound, once admitted).
    pub fn hbone_target(&self) -> Option<SocketAddr> {
        let tunnelled = self.tunnel.get().is_some() || self.peer.borrow().is_some();
        self.dst.get().filter(|_| tunnelled)
    }
}

struct Entry {
    info: Rc<ConnInfo>,
    task: Option<JoinHandle<()>>,
}

/// The table of one shard.
pub struct ConnTable {
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    next_id: u64,
    stats: std::sync::Arc<ShardStats>,
}

/// Where an entry lives: its slot, and the id it was given, so that a key kept past
/// its connection never reaches a newer one that reuses the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnKey {
    slot: usize,
    id: u64,
}

/// Removes its connection from the table when dropped (finished or cancelled).
pub struct TableGuard {
    table: Rc<RefCell<ConnTable>>,
    slot: usize,
    /// The connection's shared record.
    pub info: Rc<ConnInfo>,
}

impl TableGuard {
    /// The entry's key, to reach it again without searching.
    pub fn key(&self) -> ConnKey {
        ConnKey {
            slot: self.slot,
            id: self.info.id,
        }
    }
}

impl Drop for TableGuard {
    fn drop(&mut self) {
        let mut t = self.table.borrow_mut();
        if t.slots[self.slot].take().is_some() {
            t.free.push(self.slot);
            t.stats.open.sub(1);
        }
    }
}

impl ConnTable {
    /// An empty table counting into `stats`.
    pub fn new(stats: std::sync::Arc<ShardStats>) -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Self {
            slots: Vec::new(),
            free: Vec::new(),
            next_id: 1,
            stats,
        }))
    }

    /// Adds a connection; the returned guard removes it when dropped.
    pub fn insert(this: &Rc<RefCell<Self>>, direction: Direction, src: SocketAddr) -> TableGuard {
        let mut t = this.borrow_mut();
        let id = t.next_id;
        t.next_id += 1;
        let info = Rc::new(ConnInfo {
            id,
            direction,
            src,
            dst: Cell::new(None),
            up: Cell::new(0),
            down: Cell::new(0),
            state: Cell::new(ConnState::Accepted),
            fds: Cell::new([-1, -1]),
            peer: RefCell::new(None),
            started: Instant::now(),
            addressed: Cell::new(None),
            tunnel: Cell::new(None),
            traffic: OnceCell::new(),
        });
        let entry = Entry {
            info: info.clone(),
            task: None,
        };
        let slot = match t.free.pop() {
            Some(s) => {
                t.slots[s] = Some(entry);
                s
            }
            None => {
                t.slots.push(Some(entry));
                t.slots.len() - 1
            }
        };
        t.stats.open.add(1);
        TableGuard {
            table: this.clone(),
            slot,
            info,
        }
    }

    /// Records the task serving the entry `key`, so drain can cancel it. Reaches the
    /// entry by its slot (accept stays O(1) however many connections are open); a
    /// stale key (its connection gone, the slot reused) changes nothing.
    pub fn set_task(&mut self, key: ConnKey, task: JoinHandle<()>) {
        if let Some(Some(e)) = self.slots.get_mut(key.slot) {
            if e.info.id == key.id {
                e.task = Some(task);
            }
        }
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Aborts every live connection (drain deadline). Returns how many were aborted.
    pub fn abort_all(&mut self) -> usize {
        self.abort_matching(|_| Some(crate::stats::FailReason::Drained))
    }

    /// Aborts the live connections `refuse` gives a reason for: their sockets will send
    /// RST and their tasks are cancelled; each is counted as closed and failed for its
    /// reason.
    pub fn abort_matching(
        &mut self,
        mut refuse: impl FnMut(&ConnInfo) -> Option<crate::stats::FailReason>,
    ) -> usize {
        let mut n = 0;
        for e in self.slots.iter_mut().flatten() {
            if e.task.is_none() {
                continue;
            }
            let Some(reason) = refuse(&e.info) else {
                continue;
            };
            for fd in e.info.fds.get() {
                if fd >= 0 {
                    let _ = crate::sys::set_reset_on_close_fd(fd);
                }
            }
            if let Some(t) = e.task.take() {
                t.abort();
            }
            // The cancelled task will not reach its own accounting.
            let failure = fail(reason, "aborted");
            e.info
                .count_end(self.stats.dir(e.info.direction), Some(&failure));
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn pending() -> JoinHandle<()> {
        zpath_uring::spawn_local(futures_lite::future::pending::<()>())
    }

    #[test]
    fn a_key_reaches_its_own_entry_and_a_stale_key_reaches_nothing() {
        let ex = zpath_uring::Runtime::new(zpath_uring::Config::default()).unwrap();
        ex.block_on(async {
            let table = ConnTable::new(Default::default());
            let first = ConnTable::insert(&table, Direction::Outbound, src(1));
            let stale = first.key();
            drop(first);
            // The freed slot is reused by the next connection, under a new id.
            let second = ConnTable::insert(&table, Direction::Outbound, src(2));
            assert_eq!(second.key().slot, stale.slot);
            assert_ne!(second.key(), stale);
            table.borrow_mut().set_task(stale, pending());
            assert_eq!(table.borrow_mut().abort_all(), 0, "a stale key set a task");
            table.borrow_mut().set_task(second.key(), pending());
            assert_eq!(table.borrow_mut().abort_all(), 1);
        })
        .unwrap();
    }

    #[test]
    fn keys_of_many_entries_each_reach_their_own() {
        let ex = zpath_uring::Runtime::new(zpath_uring::Config::default()).unwrap();
        ex.block_on(async {
            let table = ConnTable::new(Default::default());
            let guards: Vec<_> = (0..1000)
                .map(|i| ConnTable::insert(&table, Direction::Inbound, src(i)))
                .collect();
            for g in guards.iter().filter(|g| g.info.src.port() % 2 == 0) {
                table.borrow_mut().set_task(g.key(), pending());
            }
            let aborted = table.borrow_mut().abort_matching(|i| {
                assert_eq!(i.src.port() % 2, 0, "an entry got another's task");
                Some(crate::stats::FailReason::Drained)
            });
            assert_eq!(aborted, 500);
            assert_eq!(table.borrow().len(), 1000);
            drop(guards);
            assert!(table.borrow().is_empty());
        })
        .unwrap();
    }
}
