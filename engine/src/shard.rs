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

use crate::authorize::{authorize, When};
use crate::buffers::BufPool;
use crate::certs::{CertCell, CertStore};
use crate::config::EngineConfig;
use crate::fds::FdBudget;
use crate::flow;
use crate::handshakes::PendingHandshakes;
use crate::hbone::TunnelPool;
use crate::loglimit::LogLimiter;
use crate::notify::LocalNotify;
use crate::signal::FlagSet;
use crate::stats::{Direction, FailReason, PolicyCounts, ShardStats};
use crate::sys;
use crate::table::{ConnInfo, ConnTable, TableGuard};
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
    /// Whether `dst` reaches one of our own listeners (relaying there would loop):
    /// an unspecified address (`0.0.0.0`, `[::]`: connecting there reaches this host),
    /// the connection's own local address, one of our ports on the address its listener
    /// is bound to, or, for a wildcard listener, on any address of this host. A listener
    /// on 127.0.0.1 is not reached through 127.0.0.2: that is someone else's port.
    pub fn is_own(&self, dst: SocketAddr, local: Option<SocketAddr>) -> bool {
        // IPv4-mapped IPv6 addresses (dual-stack sockets) compare as IPv4.
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let dst = canonical(dst);
        let local = local.map(canonical);
        if dst.ip().is_unspecified() || Some(dst) == local {
            return true;
        }
        let mut ours = [self.outbound, self.inbound, self.socks5, self.hbone]
            .into_iter()
            .flatten()
            .chain(self.reserved.iter().copied())
            .map(canonical)
            .filter(|a| a.port() == dst.port())
            .peekable();
        if ours.peek().is_none() {
            return false;
        }
        let ip = dst.ip();
        // Asked only for one of our ports: no system call for ordinary destinations.
        let this_host =
            ip.is_loopback() || local.is_some_and(|l| l.ip() == ip) || sys::is_local_address(ip);
        ours.any(|a| a.ip() == ip || (a.ip().is_unspecified() && this_host))
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
    /// Handshakes pending on 15008.
    pub handshakes: Rc<RefCell<PendingHandshakes>>,
    /// The HBONE connections served on 15008, told together when drain starts.
    pub served: Rc<FlagSet>,
    /// Rate limit of per-connection failure logs (see [`Shard::may_log`]).
    pub logs: LogLimiter,
    cell: Arc<SnapshotCell>,
    current: RefCell<LocalSnapshot>,
    cert_cell: Arc<CertCell>,
    certs: RefCell<LocalCerts>,
    certs_wanted: Arc<tokio::sync::Notify>,
    certs_published: LocalNotify,
    rng: Cell<u64>,
    /// Accepted connections being served now (bounded by `--max-connections-per-shard`).
    accepted: Cell<usize>,
    fds: FdBudget,
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

    /// Waits until the current set has a certificate for `id`, at most `limit`; true if
    /// it has. The control thread is told at once (it fetches certificates of new
    /// workloads), and the wait is woken by [`ShardMsg::CertsChanged`]: no polling.
    pub async fn wait_for_certificate(&self, id: &zpath_crypto::Identity, limit: Duration) -> bool {
        if self.certs().get(id).is_some() {
            return true;
        }
        self.certs_wanted.notify_one();
        let found = glommio::timer::timeout(limit, async {
            loop {
                // Taken before the check: a set published in between still wakes it.
                let published = self.certs_published.wait();
                if self.certs().get(id).is_some() {
                    return Ok(());
                }
                published.await;
            }
        });
        found.await.is_ok()
    }

    /// Refreshes the tunnel and pool-key gauges from the pool (it walks the pool:
    /// called when a tunnel is made or ends, and by the idle sweep, not per flow).
    pub fn update_pool_gauges(&self) {
        let p = self.tunnels.stats();
        let h = &self.stats.hbone;
        h.tunnels.set(p.tunnels as u64);
        h.pool_keys.set(p.keys as u64);
    }

    /// Whether a per-connection failure line for `reason` may be written now: every
    /// data-path failure log asks first, so a flood of failures writes a few lines per
    /// second and a summary (the failure counters are kept apart and stay exact).
    pub fn may_log(&self, reason: FailReason) -> bool {
        self.logs.admit(reason, Instant::now())
    }

    /// Turns on TCP keepalive on a data-path socket, if configured (ztunnel's defaults).
    pub fn set_keepalive(&self, socket: &impl std::os::fd::AsRawFd) {
        let Some(k) = self.cfg.tcp_keepalive else {
            return;
        };
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
    certs: CertSource,
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
                certs: RefCell::new(Rc::new(certs.cell.load())),
                cert_cell: certs.cell,
                certs_wanted: certs.wanted,
                certs_published: LocalNotify::default(),
                client_tls: RefCell::new(ClientConfigCache::new(1024)),
                tunnels: TunnelPool::new(cfg.pool_max_streams),
                handshakes: Rc::new(RefCell::new(PendingHandshakes::new(cfg.handshakes))),
                served: Rc::default(),
                logs: LogLimiter::default(),
                rng: Cell::new(
                    0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) << 32) ^ std::process::id() as u64,
                ),
                accepted: Cell::new(0),
                fds,
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
    accepting.push(glommio::spawn_local(flush_log_summaries(shard.clone())).detach());
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
                ShardMsg::CertsChanged => shard.certs_published.notify_all(),
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
        let refused = with_inbound_conn(info, |conn| {
            let refusal = authorize(shard, &snapshot, conn, info, When::Recheck).err()?;
            let reason = refusal.reason();
            if shard.may_log(reason) {
                info!(shard = shard.id, src = %info.src, dst = %conn.dst_ip, "closing live connection: {refusal}");
            }
            Some(reason)
        });
        refused.flatten()
    });
    drop(table);
    if closed > 0 {
        info!(
            shard = shard.id,
            closed, "policy change closed live connections"
        );
    }
}

/// Runs `f` on the policy view of a live inbound connection; `None` for outbound
/// connections and those whose destination is not known yet.
fn with_inbound_conn<R>(
    info: &ConnInfo,
    f: impl FnOnce(&zpath_policy::Conn<'_>) -> R,
) -> Option<R> {
    let dst = info.dst.get()?;
    if info.direction != Direction::Inbound {
        return None;
    }
    let peer = info.peer.borrow().clone();
    Some(f(&zpath_policy::Conn {
        src_ip: info.src.ip().to_canonical(),
        dst_ip: dst.ip().to_canonical(),
        dst_port: dst.port(),
        peer: peer
            .as_deref()
            .and_then(|p| zpath_policy::Peer::parse(p).ok()),
    }))
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
    // HBONE connections we serve say GOAWAY: their peers open new streams elsewhere,
    // open streams run on. Each closes once its last stream is done and the GOAWAY
    // is out.
    shard.served.raise_all();
    let busy = |s: &Shard| !s.table.borrow().is_empty() || !s.served.is_empty();
    while busy(shard) && Instant::now() < deadline {
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

/// Sums up suppressed failure logs of a flood that stopped.
async fn flush_log_summaries(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        shard.logs.flush(Instant::now());
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
        stats.count_failed(f.reason);
        let level_info = !matches!(f.reason, FailReason::Reset);
        if !shard.may_log(f.reason) {
            return;
        }
        if level_info {
            info!(shard = shard.id, src = %guard.info.src, dst = ?guard.info.dst.get(), reason = f.reason.label(), "connection failed: {}", f.message);
        } else {
            debug!(shard = shard.id, src = %guard.info.src, "connection reset: {}", f.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> BoundAddrs {
        let a = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        BoundAddrs {
            outbound: a("[::]:15001"),
            inbound: a("[::]:15006"),
            socks5: a("127.0.0.1:15080"),
            hbone: a("[::]:15008"),
            reserved: vec!["127.0.0.1:15000".parse().unwrap()],
        }
    }

    fn own(dst: &str) -> bool {
        addrs().is_own(dst.parse().unwrap(), None)
    }

    #[test]
    fn unspecified_targets_are_this_host_on_any_port() {
        assert!(own("0.0.0.0:15080"));
        assert!(own("[::]:15080"));
        assert!(own("[::ffff:0.0.0.0]:15001"));
        assert!(own("0.0.0.0:8080"), "0.0.0.0 is never a destination");
    }

    #[test]
    fn loopback_addresses_on_our_ports_are_a_loop_where_a_listener_takes_them() {
        assert!(own("127.0.0.1:15080"));
        assert!(own("127.0.0.1:15000"));
        // Wildcard listeners take every loopback address.
        assert!(own("[::1]:15001"));
        assert!(own("127.0.0.2:15006"));
        assert!(own("[::ffff:127.0.0.3]:15008"));
        // Listeners on 127.0.0.1 do not: another process may own these.
        assert!(!own("127.0.0.2:15080"));
        assert!(!own("127.9.9.9:15000"));
        assert!(!own("127.0.0.2:8080"));
    }

    #[test]
    fn a_local_interface_address_on_a_wildcard_port_is_a_loop() {
        // Whatever this host's addresses are, the probe must agree with a bind.
        let lo_any = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let _ = lo_any.connect("192.0.2.1:9");
        if let Ok(a) = lo_any.local_addr() {
            if !a.ip().is_unspecified() {
                assert!(own(&format!("{}:15001", a.ip())), "{a} is local");
            }
        }
        assert!(
            !own("192.0.2.1:15001"),
            "a documentation address is not local"
        );
    }
}
