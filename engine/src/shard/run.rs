//! A shard's loop: spawns the shard's thread, binds its listeners, accepts and hands
//! each connection to its flow (`outbound/`, `inbound/`), takes the control thread's
//! messages (new snapshot: re-check live connections; new certificates; drain).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use zpath_control::SnapshotCell;
use zpath_crypto::ClientConfigCache;
use zpath_uring::{IoStream, Signal, TcpListener};

use super::addrs::BoundAddrs;
use super::handshakes::PendingHandshakes;
use super::loglimit::LogLimiter;
use super::notify::LocalNotify;
use super::pool::TunnelPool;
use super::table::{ConnInfo, ConnTable, TableGuard};
use super::Shard;
use crate::config::EngineConfig;
use crate::control::certs::CertCell;
use crate::decide::authorize::{authorize, Inbound, When};
use crate::failure::{fail, Failure};
use crate::fds::FdBudget;
use crate::relay::Abort;
use crate::stats::{Direction, FailReason, PolicyCounts, ShardStats};
use crate::sys;
use crate::{inbound, outbound};

/// Which listener accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// 15001: captured outbound.
    Outbound,
    /// 15006: captured inbound plaintext.
    Inbound,
    /// 15080: SOCKS5.
    Socks5,
    /// 15008: HBONE.
    Hbone,
}

impl ListenerKind {
    fn direction(self) -> Direction {
        match self {
            ListenerKind::Inbound | ListenerKind::Hbone => Direction::Inbound,
            ListenerKind::Outbound | ListenerKind::Socks5 => Direction::Outbound,
        }
    }
}

/// Messages from the control thread to a shard.
#[derive(Debug)]
pub enum ShardMsg {
    /// Stop accepting; abort what is still open at `deadline`; then exit.
    Drain {
        /// When to abort the remaining connections.
        deadline: Instant,
    },
    /// A new snapshot was published.
    SnapshotChanged,
    /// A new certificate set was published: connections waiting for one re-check.
    CertsChanged,
}

/// Where a shard gets workload certificates.
#[derive(Debug, Clone)]
pub struct CertSource {
    /// The published set.
    pub cell: Arc<CertCell>,
    /// Tells the control thread that a connection waits for a certificate.
    pub wanted: Arc<tokio::sync::Notify>,
}

/// The control thread's handle on a shard.
#[derive(Debug)]
pub struct ShardHandle {
    /// The shard's counters.
    pub stats: Arc<ShardStats>,
    tx: crossbeam_channel::Sender<ShardMsg>,
    wake: Signal,
    join: Option<std::thread::JoinHandle<()>>,
}

impl ShardHandle {
    /// Sends a message and wakes the shard (through its ring's eventfd).
    pub fn send(&self, msg: ShardMsg) {
        if self.tx.send(msg).is_ok() {
            self.wake.raise();
        }
    }

    /// Waits for the shard's thread to exit.
    pub fn join(&mut self) {
        if let Some(j) = self.join.take() {
            if j.join().is_err() {
                warn!("shard thread ended abnormally");
            }
        }
    }
}

impl Drop for ShardHandle {
    /// A handle dropped without a drain (the process is failing) stops its shard: the
    /// channel closes and the wake tells the loop so.
    fn drop(&mut self) {
        self.wake.raise();
    }
}

/// A connection's place among the shard's `--max-connections-per-shard`, held for as
/// long as it is served.
struct Place(Rc<Shard>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.accepted.set(self.0.accepted.get() - 1);
    }
}

/// Spawns shard `id` on `core`. Returns once its listeners are bound (or failed to bind).
pub fn spawn(
    id: usize,
    core: usize,
    cfg: Arc<EngineConfig>,
    addrs: Arc<BoundAddrs>,
    cell: Arc<SnapshotCell>,
    certs: CertSource,
    fds: FdBudget,
) -> std::io::Result<ShardHandle> {
    let stats = Arc::new(ShardStats::default());
    let (tx, rx) = crossbeam_channel::unbounded();
    let wake = Signal::new();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let shard_stats = stats.clone();
    let shard_wake = wake.clone();
    let join = std::thread::Builder::new()
        .name(format!("zpath-shard-{id}"))
        .spawn(move || {
            if cfg.pin_shards {
                if let Err(e) = sys::pin_to_cpu(core) {
                    let _ =
                        started_tx.send(Err(format!("cannot pin shard {id} to CPU {core}: {e}")));
                    return;
                }
            }
            let runtime = match zpath_uring::Runtime::new(ring_config(&cfg)) {
                Ok(r) => r,
                Err(e) => {
                    let _ = started_tx.send(Err(format!("shard {id}: {e}")));
                    return;
                }
            };
            let initial = cell.load();
            shard_stats
                .by_policy
                .store(Arc::new(PolicyCounts::for_snapshot(
                    &initial,
                    &PolicyCounts::default(),
                )));
            let shard = Rc::new(Shard {
                id,
                table: ConnTable::new(shard_stats.clone()),
                stats: shard_stats,
                current: RefCell::new(Rc::new(initial)),
                cell,
                certs: RefCell::new(Rc::new(certs.cell.load())),
                cert_cell: certs.cell,
                certs_wanted: certs.wanted,
                certs_published: LocalNotify::default(),
                client_tls: RefCell::new(ClientConfigCache::new(1024)),
                tunnels: TunnelPool::new(cfg.pool_max_streams),
                handshakes: Rc::new(RefCell::new(PendingHandshakes::new(cfg.handshakes))),
                served: Rc::default(),
                logs: LogLimiter::default(),
                traffic: Default::default(),
                rng: Cell::new(
                    0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) << 32) ^ std::process::id() as u64,
                ),
                accepted: Cell::new(0),
                fds,
                cfg,
                addrs,
            });
            if let Err(e) = runtime.block_on(run(shard, rx, shard_wake, started_tx)) {
                warn!(shard = id, "shard loop stopped: {e}");
            }
        })
        .map_err(|e| {
            std::io::Error::other(format!("cannot start shard {id} on core {core}: {e}"))
        })?;
    let started = started_rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| std::io::Error::other(format!("shard {id} did not start")))?;
    started.map_err(std::io::Error::other)?;
    Ok(ShardHandle {
        stats,
        tx,
        wake,
        join: Some(join),
    })
}

/// The ring of a shard: `--ring-depth` submission entries; `--io-memory` of large
/// receive buffers (64 KiB, a power of two of them, at least 8) and the runtime's
/// default small ones (256 of 2 KiB).
fn ring_config(cfg: &EngineConfig) -> zpath_uring::Config {
    let defaults = zpath_uring::Config::default();
    let buffers = (cfg.io_memory / defaults.buf_size as usize).clamp(8, 32768);
    let buffers = 1usize << buffers.ilog2();
    zpath_uring::Config {
        sq_entries: cfg.ring_depth as u32,
        cq_entries: (cfg.ring_depth as u32 * 4).max(defaults.cq_entries),
        buf_entries: buffers as u16,
        ..defaults
    }
}

/// Listens on `addr` in the shards' `SO_REUSEPORT` group; with `steer` (this shard's
/// CPU), connections received on that CPU come to this listener.
fn bind(addr: SocketAddr, backlog: i32, steer: Option<usize>) -> Result<TcpListener, String> {
    let sock = sys::listen_reuseport(addr, backlog).map_err(|e| {
        format!("cannot listen on {addr}: {e} (is another process using the port?)")
    })?;
    if let Some(cpu) = steer {
        if let Err(e) = sys::steer_to_cpu(&sock, cpu) {
            tracing::warn!(%addr, cpu, "cannot steer connections by CPU, hashing instead: {e}");
        }
    }
    TcpListener::from_socket(sock).map_err(|e| format!("cannot listen on {addr}: {e}"))
}

async fn run(
    shard: Rc<Shard>,
    rx: crossbeam_channel::Receiver<ShardMsg>,
    wake: Signal,
    started: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let mut accepting = Vec::new();
    let listeners = [
        (shard.addrs.outbound, ListenerKind::Outbound),
        (shard.addrs.inbound, ListenerKind::Inbound),
        (shard.addrs.socks5, ListenerKind::Socks5),
        (shard.addrs.hbone, ListenerKind::Hbone),
    ];
    for (addr, kind) in listeners {
        let Some(addr) = addr else { continue };
        let steer = match shard.cfg.steers_by_cpu() {
            true => shard.cfg.cores.get(shard.id).copied(),
            false => None,
        };
        match bind(addr, shard.cfg.accept_backlog, steer) {
            Ok(l) => accepting.push(zpath_uring::spawn_local(accept_loop(
                shard.clone(),
                l,
                kind,
            ))),
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        }
    }
    accepting.push(zpath_uring::spawn_local(sweep_pool(shard.clone())));
    accepting.push(zpath_uring::spawn_local(flush_log_summaries(shard.clone())));
    shard.stats.listening.add(1);
    let _ = started.send(Ok(()));
    loop {
        wake.wait().await;
        let mut deadline = None;
        loop {
            match rx.try_recv() {
                Ok(ShardMsg::Drain { deadline: d }) => deadline = Some(d),
                Ok(ShardMsg::SnapshotChanged) => recheck(&shard),
                Ok(ShardMsg::CertsChanged) => shard.certs_published.notify_all(),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                // The control thread is gone: stop now.
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    deadline = Some(Instant::now());
                    break;
                }
            }
        }
        if let Some(d) = deadline {
            drain(&shard, accepting, d).await;
            return;
        }
    }
}

/// Re-authorizes live inbound connections against the newest snapshot and aborts those
/// it now refuses: denied by policy, or no longer to a workload this node serves.
fn recheck(shard: &Rc<Shard>) {
    let snapshot = shard.snapshot();
    let mut table = shard.table.borrow_mut();
    let closed = table.abort_matching(|info| {
        let peer = info.peer.borrow();
        let conn = inbound_of(info, peer.as_ref())?;
        let tally = |d: &_| shard.count_decision(&snapshot, d);
        let refusal = authorize(&snapshot, conn, When::Recheck, tally).err()?;
        let reason = refusal.reason();
        if shard.may_log(reason) {
            info!(shard = shard.id, src = %info.src, dst = %conn.dst, "closing live connection: {refusal}");
        }
        Some(reason)
    });
    drop(table);
    if closed > 0 {
        info!(
            shard = shard.id,
            closed, "policy change closed live connections"
        );
    }
}

/// The policy view of a live inbound connection (with `peer`, its verified peer);
/// `None` for outbound connections and those whose destination is not known yet.
fn inbound_of<'a>(
    info: &ConnInfo,
    peer: Option<&'a Rc<zpath_crypto::VerifiedPeer>>,
) -> Option<Inbound<'a>> {
    let dst = info.dst.get()?;
    if info.direction != Direction::Inbound {
        return None;
    }
    Some(Inbound {
        src: info.src.ip(),
        dst: SocketAddr::new(dst.ip().to_canonical(), dst.port()),
        peer,
    })
}

async fn drain(shard: &Rc<Shard>, accepting: Vec<zpath_uring::JoinHandle<()>>, deadline: Instant) {
    for a in accepting {
        a.abort();
    }
    shard.stats.listening.sub(1);
    let open = shard.table.borrow().len();
    info!(shard = shard.id, open, "draining");
    // HBONE connections we serve say GOAWAY: their peers open new streams elsewhere,
    // open streams run on. Each closes once its last stream is done and the GOAWAY
    // is out.
    shard.served.raise_all();
    let busy = |s: &Shard| !s.table.borrow().is_empty() || !s.served.is_empty();
    while busy(shard) && Instant::now() < deadline {
        let _ = zpath_uring::time::sleep(Duration::from_millis(10)).await;
    }
    let aborted = shard.table.borrow_mut().abort_all();
    if aborted > 0 {
        info!(
            shard = shard.id,
            aborted, "drain deadline passed: aborting connections"
        );
    }
    // Cancelled tasks drop their sockets (RST) and leave the table on their next poll.
    let give_up = Instant::now() + Duration::from_secs(1);
    while !shard.table.borrow().is_empty() && Instant::now() < give_up {
        let _ = zpath_uring::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Releases idle tunnels now and then.
async fn sweep_pool(shard: Rc<Shard>) {
    let idle = shard.cfg.pool_idle_timeout;
    let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let _ = zpath_uring::time::sleep(every).await;
        let released = shard.tunnels.release_idle(Instant::now(), idle);
        if released > 0 {
            debug!(
                shard = shard.id,
                released, "released idle HBONE connections"
            );
        }
        shard.update_pool_gauges();
    }
}

/// Sums up suppressed failure logs of a flood that stopped.
async fn flush_log_summaries(shard: Rc<Shard>) {
    loop {
        let _ = zpath_uring::time::sleep(Duration::from_secs(1)).await;
        shard.logs.flush(Instant::now());
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, kind: ListenerKind) {
    let mut incoming = listener.incoming();
    loop {
        let accepted = incoming.next().await.and_then(IoStream::new);
        match accepted {
            Ok(stream) => {
                let Some(admitted) = take_place(&shard, &stream, kind) else {
                    continue;
                };
                shard.set_keepalive(&stream);
                if kind == ListenerKind::Hbone {
                    let s = shard.clone();
                    zpath_uring::spawn_local(async move {
                        inbound::hbone::serve(s, stream).await;
                        drop(admitted);
                    });
                } else {
                    spawn_connection(&shard, stream, kind, admitted);
                }
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                warn!(shard = shard.id, ?kind, "accept failed: {e}");
                let _ = zpath_uring::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Takes a place for a new connection, or refuses it (reset, counted as `overload`)
/// when the shard holds its cap or the process is near its open-file limit.
fn take_place(shard: &Rc<Shard>, stream: &IoStream, kind: ListenerKind) -> Option<Place> {
    use std::os::fd::AsRawFd;
    let held = shard.accepted.get();
    let cap = shard.cfg.max_connections_per_shard;
    let at_cap = held >= cap;
    if !at_cap && shard.fds.data_allows(stream.as_raw_fd()) {
        shard.accepted.set(held + 1);
        return Some(Place(shard.clone()));
    }
    stream.abort();
    shard
        .stats
        .dir(kind.direction())
        .count_failed(FailReason::Overload);
    if shard.may_log(FailReason::Overload) {
        let src = stream.peer_addr().ok();
        if at_cap {
            warn!(shard = shard.id, ?kind, ?src, "connection refused: the shard holds {held} connections (--max-connections-per-shard {cap})");
        } else {
            warn!(
                shard = shard.id,
                ?kind,
                ?src,
                "connection refused: the process is near its open-file limit (raise RLIMIT_NOFILE)"
            );
        }
    }
    None
}

fn spawn_connection(shard: &Rc<Shard>, stream: IoStream, kind: ListenerKind, admitted: Place) {
    let Ok(src) = stream.peer_addr() else { return };
    let dir = kind.direction();
    let guard = ConnTable::insert(&shard.table, dir, src);
    let key = guard.key();
    shard.stats.dir(dir).opened.add(1);
    let s = shard.clone();
    let task = zpath_uring::spawn_local(async move {
        let result = serve(&s, stream, kind, &guard).await;
        s.finish(dir, &guard, result);
        drop(admitted);
    });
    shard.table.borrow_mut().set_task(key, task);
}

async fn serve(
    shard: &Rc<Shard>,
    stream: IoStream,
    kind: ListenerKind,
    guard: &TableGuard,
) -> Result<(), Failure> {
    use std::os::fd::AsRawFd;
    let _ = stream.set_nodelay(true);
    guard.info.fds.set([stream.as_raw_fd(), -1]);
    if shard.snapshot().generation == 0 {
        // No configuration yet (xDS has not answered): nothing is known of workloads
        // or policies, so nothing is relayed.
        stream.abort();
        return Err(fail(
            FailReason::NoConfig,
            "no configuration applied yet; refusing until the control plane answers",
        ));
    }
    // Each flow is boxed on its own: a connection's task is as large as its own flow,
    // not as the largest of them (the HBONE client's handshakes).
    match kind {
        ListenerKind::Outbound => Box::pin(outbound::outbound(shard, stream, &guard.info)).await,
        ListenerKind::Inbound => Box::pin(inbound::inbound(shard, stream, &guard.info)).await,
        ListenerKind::Socks5 => {
            Box::pin(outbound::socks5::socks5(shard, stream, &guard.info)).await
        }
        ListenerKind::Hbone => Ok(()),
    }
}
