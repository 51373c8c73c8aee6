//! A shard: one glommio executor pinned to one core, with its own listeners
//! (`SO_REUSEPORT`), connection table, buffer pool and counters. Nothing here is shared
//! with another shard; the control thread talks to a shard only through [`ShardHandle`].

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{debug, info, warn};
use zpath_control::{Snapshot, SnapshotCell};

use crate::buffers::BufPool;
use crate::certs::{CertCell, CertStore};
use crate::config::EngineConfig;
use crate::fds::FdBudget;
use crate::flow;
use crate::hbone::TunnelPool;
use crate::log_limit::LogLimit;
use crate::stats::{Direction, FailReason, PolicyCounts, ShardStats};
use crate::sys;
use crate::table::{ConnTable, TableGuard};
use zpath_crypto::ClientConfigCache;

/// The addresses every shard listens on, with `:0` ports already resolved.
#[derive(Debug, Clone, Default)]
pub struct BoundAddrs {
    /// Captured outbound.
    pub outbound: Option<SocketAddr>,
    /// Captured inbound plaintext.
    pub inbound: Option<SocketAddr>,
    /// SOCKS5 entry.
    pub socks5: Option<SocketAddr>,
    /// HBONE (15008).
    pub hbone: Option<SocketAddr>,
    /// Our other ports (HBONE, admin, metrics, readiness): never a relay target.
    pub reserved: Vec<SocketAddr>,
}

impl BoundAddrs {
    /// Whether `dst` is one of our own listeners (relaying there would loop).
    pub fn is_own(&self, dst: SocketAddr, local: Option<SocketAddr>) -> bool {
        // IPv4-mapped IPv6 addresses (dual-stack sockets) compare as IPv4.
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let dst = canonical(dst);
        let local = local.map(canonical);
        let ours = [self.outbound, self.inbound, self.socks5, self.hbone]
            .into_iter()
            .flatten()
            .chain(self.reserved.iter().copied())
            .map(canonical);
        let dst_is_local = dst.ip().is_loopback()
            || dst.ip().is_unspecified()
            || local.is_some_and(|l| l.ip() == dst.ip());
        let mut ours = ours;
        Some(dst) == local
            || ours.any(|a| {
                a.port() == dst.port()
                    && (a.ip() == dst.ip() || (a.ip().is_unspecified() && dst_is_local))
            })
    }
}

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
}

/// The control thread's handle on a shard.
#[derive(Debug)]
pub struct ShardHandle {
    /// The shard's counters.
    pub stats: Arc<ShardStats>,
    tx: crossbeam_channel::Sender<ShardMsg>,
    wake: std::os::unix::net::UnixStream,
    join: Option<glommio::ExecutorJoinHandle<()>>,
}

impl ShardHandle {
    /// Sends a message and wakes the shard.
    pub fn send(&self, msg: ShardMsg) {
        if self.tx.send(msg).is_ok() {
            // A full socket buffer means a wake-up is already pending.
            let _ = (&self.wake).write(&[1]);
        }
    }

    /// Waits for the shard's thread to exit.
    pub fn join(&mut self) {
        if let Some(j) = self.join.take() {
            if let Err(e) = j.join() {
                warn!("shard exited with an error: {e}");
            }
        }
    }
}

/// A shard's copy of the current snapshot. The `Rc` is deliberate: connections clone
/// it (a plain increment on this core) instead of the `Arc`, whose count all shards share.
#[allow(clippy::redundant_allocation)]
pub type LocalSnapshot = Rc<Arc<Snapshot>>;

/// A shard's copy of the current certificates, shared with connections like
/// [`LocalSnapshot`].
#[allow(clippy::redundant_allocation)]
pub type LocalCerts = Rc<Arc<CertStore>>;

/// State of one shard, owned by its executor thread.
pub struct Shard {
    /// Index of the shard.
    pub id: usize,
    /// Engine settings.
    pub cfg: Arc<EngineConfig>,
    /// Our listener addresses.
    pub addrs: Arc<BoundAddrs>,
    /// Counters (read by the control thread).
    pub stats: Arc<ShardStats>,
    /// Relay buffers.
    pub pool: Rc<BufPool>,
    /// Live connections.
    pub table: Rc<RefCell<ConnTable>>,
    /// Client TLS configurations, by our identity and the expected server identities.
    pub client_tls: RefCell<ClientConfigCache>,
    /// HBONE tunnels to other nodes.
    pub tunnels: Rc<TunnelPool>,
    cell: Arc<SnapshotCell>,
    current: RefCell<LocalSnapshot>,
    cert_cell: Arc<CertCell>,
    certs: RefCell<LocalCerts>,
    rng: Cell<u64>,
    /// Accepted connections being served now (bounded by `--max-connections-per-shard`).
    accepted: Cell<usize>,
    fds: FdBudget,
    overload_log: LogLimit,
}

/// A connection's place among the shard's `--max-connections-per-shard`, held for as
/// long as it is served.
struct Admitted(Rc<Shard>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.accepted.set(self.0.accepted.get() - 1);
    }
}

impl Shard {
    /// The current snapshot: one atomic load; the shared `Arc` is cloned only when a new
    /// one was published, and connections share this shard's copy through an `Rc`.
    pub fn snapshot(&self) -> LocalSnapshot {
        let mut cur = self.current.borrow_mut();
        if let Some(newer) = self.cell.newer(&cur) {
            let counts = PolicyCounts::for_snapshot(&newer, &self.stats.by_policy.load());
            self.stats.by_policy.store(Arc::new(counts));
            *cur = Rc::new(newer);
        }
        cur.clone()
    }

    /// Counts an inbound decision: by outcome and reason, and by the policy that made
    /// it when there is one (ids belong to `snapshot`).
    pub fn count_decision(&self, snapshot: &Snapshot, decision: &zpath_policy::Decision<'_>) {
        let (id, allowed) = match decision {
            zpath_policy::Decision::Allow(permit) => {
                self.stats.count_allowed();
                (permit.allowed_by().map(|(id, _)| id), true)
            }
            zpath_policy::Decision::Deny(reason) => {
                self.stats.count_denied(reason.kind());
                (reason.policy().map(|p| p.id), false)
            }
        };
        let Some(id) = id else { return };
        let counts = self.stats.by_policy.load();
        if counts.generation != snapshot.generation {
            return;
        }
        let set = if allowed { &counts.allow } else { &counts.deny };
        if let Some(c) = set.get(id.index()) {
            c.add(1);
        }
    }

    /// The current workload certificates (one atomic load).
    pub fn certs(&self) -> LocalCerts {
        let mut cur = self.certs.borrow_mut();
        if let Some(newer) = self.cert_cell.newer(&cur) {
            *cur = Rc::new(newer);
        }
        cur.clone()
    }

    /// Refreshes the tunnel and pool-key gauges from the pool (it walks the pool:
    /// called when a tunnel is made or ends, and by the idle sweep, not per flow).
    pub fn update_pool_gauges(&self) {
        let p = self.tunnels.stats();
        let h = &self.stats.hbone;
        h.tunnels.set(p.tunnels as u64);
        h.pool_keys.set(p.keys as u64);
    }

    /// Turns on TCP keepalive on a data-path socket, if configured (ztunnel's defaults).
    pub fn set_keepalive(&self, socket: &impl std::os::fd::AsRawFd) {
        let Some(k) = self.cfg.keepalive else { return };
        if let Err(e) = sys::set_keepalive(socket, k.time, k.interval, k.retries) {
            debug!(shard = self.id, "cannot set TCP keepalive: {e}");
        }
    }

    /// A cheap shard-local random number (xorshift), e.g. to pick an endpoint.
    pub fn random(&self) -> u32 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        (x >> 32) as u32
    }
}

/// Spawns shard `id` on `core`. Returns once its listeners are bound (or failed to bind).
pub fn spawn(
    id: usize,
    core: usize,
    cfg: Arc<EngineConfig>,
    addrs: Arc<BoundAddrs>,
    cell: Arc<SnapshotCell>,
    cert_cell: Arc<CertCell>,
    fds: FdBudget,
) -> std::io::Result<ShardHandle> {
    let stats = Arc::new(ShardStats::default());
    let (tx, rx) = crossbeam_channel::unbounded();
    let (wake_tx, wake_rx) = std::os::unix::net::UnixStream::pair()?;
    wake_tx.set_nonblocking(true)?;
    let (started_tx, started_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let shard_stats = stats.clone();
    let placement = if cfg.pin_shards {
        Placement::Fixed(core)
    } else {
        Placement::Unbound
    };
    let join = LocalExecutorBuilder::new(placement)
        .name(&format!("zpath-shard-{id}"))
        .ring_depth(cfg.ring_depth)
        .io_memory(cfg.io_memory)
        .spawn(move || async move {
            let initial = cell.load();
            shard_stats
                .by_policy
                .store(Arc::new(PolicyCounts::for_snapshot(
                    &initial,
                    &PolicyCounts::default(),
                )));
            let shard = Rc::new(Shard {
                id,
                pool: BufPool::new(cfg.buffers),
                table: ConnTable::new(shard_stats.clone()),
                stats: shard_stats,
                current: RefCell::new(Rc::new(initial)),
                cell,
                certs: RefCell::new(Rc::new(cert_cell.load())),
                cert_cell,
                client_tls: RefCell::new(ClientConfigCache::new(1024)),
                tunnels: TunnelPool::new(cfg.pool_max_streams),
                rng: Cell::new(
                    0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) << 32) ^ std::process::id() as u64,
                ),
                accepted: Cell::new(0),
                fds,
                overload_log: LogLimit::default(),
                cfg,
                addrs,
            });
            run(shard, rx, wake_rx, started_tx).await;
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
        wake: wake_tx,
        join: Some(join),
    })
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
    Ok(sys::into_glommio_listener(sock))
}

async fn run(
    shard: Rc<Shard>,
    rx: crossbeam_channel::Receiver<ShardMsg>,
    wake: std::os::unix::net::UnixStream,
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
            Ok(l) => {
                accepting.push(glommio::spawn_local(accept_loop(shard.clone(), l, kind)).detach())
            }
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        }
    }
    accepting.push(glommio::spawn_local(sweep_pool(shard.clone())).detach());
    shard.stats.listening.add(1);
    let _ = started.send(Ok(()));
    let mut wake = sys::into_glommio_unix(wake);
    let mut buf = [0u8; 64];
    loop {
        use futures_lite::AsyncReadExt;
        let closed = !matches!(wake.read(&mut buf).await, Ok(n) if n > 0);
        let mut deadline = closed.then(Instant::now);
        while let Ok(msg) = rx.try_recv() {
            match msg {
                ShardMsg::Drain { deadline: d } => deadline = Some(d),
                ShardMsg::SnapshotChanged => recheck(&shard),
            }
        }
        if let Some(d) = deadline {
            drain(&shard, accepting, d).await;
            return;
        }
    }
}

/// Re-authorizes live inbound connections against the newest snapshot and aborts those
/// it now denies.
fn recheck(shard: &Rc<Shard>) {
    let snapshot = shard.snapshot();
    let closed = shard.table.borrow_mut().abort_matching(FailReason::Denied, |info| {
        let Some(dst) = info.dst.get() else { return false };
        if info.direction != Direction::Inbound {
            return false;
        }
        let peer = info.peer.borrow().clone();
        let conn = zpath_policy::Conn {
            src_ip: info.src.ip().to_canonical(),
            dst_ip: dst.ip().to_canonical(),
            dst_port: dst.port(),
            peer: peer.as_deref().and_then(|p| zpath_policy::Peer::parse(p).ok()),
        };
        let decision = snapshot.authorize(&conn).decision;
        if !decision.is_allow() {
            shard.count_decision(&snapshot, &decision);
        }
        match decision {
            zpath_policy::Decision::Allow(_) => false,
            zpath_policy::Decision::Deny(reason) => {
                info!(shard = shard.id, src = %info.src, %dst, "closing connection now denied by policy: {reason}");
                true
            }
        }
    });
    if closed > 0 {
        info!(
            shard = shard.id,
            closed, "policy change closed live connections"
        );
    }
}

async fn drain(
    shard: &Rc<Shard>,
    accepting: Vec<glommio::task::JoinHandle<()>>,
    deadline: Instant,
) {
    for a in accepting {
        a.cancel();
    }
    shard.stats.listening.sub(1);
    let open = shard.table.borrow().len();
    info!(shard = shard.id, open, "draining");
    while !shard.table.borrow().is_empty() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
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
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// Releases idle tunnels now and then.
async fn sweep_pool(shard: Rc<Shard>) {
    let idle = shard.cfg.pool_idle_timeout;
    let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        glommio::timer::sleep(every).await;
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

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, kind: ListenerKind) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let Some(admitted) = admit(&shard, &stream, kind) else {
                    continue;
                };
                shard.set_keepalive(&stream);
                if kind == ListenerKind::Hbone {
                    let s = shard.clone();
                    glommio::spawn_local(async move {
                        crate::hbone::serve(s, stream).await;
                        drop(admitted);
                    })
                    .detach();
                } else {
                    spawn_connection(&shard, stream, kind, admitted);
                }
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                warn!(shard = shard.id, ?kind, "accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Takes a place for a new connection, or refuses it (reset, counted as `overload`)
/// when the shard holds its cap or the process is near its open-file limit.
fn admit(shard: &Rc<Shard>, stream: &TcpStream, kind: ListenerKind) -> Option<Admitted> {
    use std::os::fd::AsRawFd;
    let held = shard.accepted.get();
    let cap = shard.cfg.max_connections_per_shard;
    let at_cap = held >= cap;
    if !at_cap && shard.fds.data_allows(stream.as_raw_fd()) {
        shard.accepted.set(held + 1);
        return Some(Admitted(shard.clone()));
    }
    crate::relay::Abort::abort(stream);
    shard.stats.dir(kind.direction()).failed[FailReason::Overload as usize].add(1);
    if let Some(held_back) = shard.overload_log.allow(Instant::now()) {
        let src = stream.peer_addr().ok();
        if at_cap {
            warn!(shard = shard.id, ?kind, ?src, held_back, "connection refused: the shard holds {held} connections (--max-connections-per-shard {cap})");
        } else {
            warn!(
                shard = shard.id,
                ?kind,
                ?src,
                held_back,
                "connection refused: the process is near its open-file limit (raise RLIMIT_NOFILE)"
            );
        }
    }
    None
}

fn spawn_connection(shard: &Rc<Shard>, stream: TcpStream, kind: ListenerKind, admitted: Admitted) {
    let Ok(src) = stream.peer_addr() else { return };
    let dir = kind.direction();
    let guard = ConnTable::insert(&shard.table, dir, src);
    let key = guard.key();
    shard.stats.dir(dir).opened.add(1);
    let s = shard.clone();
    let task = glommio::spawn_local(async move {
        let result = serve(&s, stream, kind, &guard).await;
        finish(&s, dir, &guard, result);
        drop(admitted);
    })
    .detach();
    shard.table.borrow_mut().set_task(key, task);
}

async fn serve(
    shard: &Rc<Shard>,
    stream: TcpStream,
    kind: ListenerKind,
    guard: &TableGuard,
) -> Result<(), flow::Failure> {
    use std::os::fd::AsRawFd;
    let _ = stream.set_nodelay(true);
    guard.info.fds.set([stream.as_raw_fd(), -1]);
    if shard.snapshot().generation == 0 {
        // No configuration yet (xDS has not answered): nothing is known of workloads
        // or policies, so nothing is relayed.
        crate::relay::Abort::abort(&stream);
        return Err(flow::fail(
            FailReason::NoConfig,
            "no configuration applied yet; refusing until the control plane answers",
        ));
    }
    match kind {
        ListenerKind::Outbound => flow::outbound(shard, stream, &guard.info).await,
        ListenerKind::Inbound => flow::inbound(shard, stream, &guard.info).await,
        ListenerKind::Socks5 => flow::socks5(shard, stream, &guard.info).await,
        ListenerKind::Hbone => Ok(()),
    }
}

pub(crate) fn finish(
    shard: &Shard,
    dir: Direction,
    guard: &TableGuard,
    result: Result<(), flow::Failure>,
) {
    let stats = shard.stats.dir(dir);
    stats.closed.add(1);
    guard.info.fds.set([-1, -1]);
    if let Err(f) = result {
        stats.failed[f.reason as usize].add(1);
        let level_info = !matches!(f.reason, FailReason::Reset);
        if level_info {
            info!(shard = shard.id, src = %guard.info.src, dst = ?guard.info.dst.get(), reason = f.reason.label(), "connection failed: {}", f.message);
        } else {
            debug!(shard = shard.id, src = %guard.info.src, "connection reset: {}", f.message);
        }
    }
}
