//! A shard: one executor pinned to one core, with its own listeners (`SO_REUSEPORT`),
//! connection table, buffer pool, tunnel pool and counters. Nothing here is shared with
//! another shard; the control thread talks to a shard only through
//! [`run::ShardHandle`].
//!
//! This module holds the shard's state ([`Shard`]); [`run`] is its loop (spawn,
//! accept, dispatch to the flows, drain); the other modules are the state's parts.

pub(crate) mod addrs;
pub(crate) mod buffers;
pub(crate) mod handshakes;
pub(crate) mod loglimit;
pub(crate) mod notify;
pub(crate) mod pool;
pub(crate) mod run;
pub(crate) mod signal;
pub(crate) mod table;
pub(crate) mod traffic;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info};
use zpath_control::{Snapshot, SnapshotCell};
use zpath_crypto::ClientConfigCache;

use crate::config::EngineConfig;
use crate::control::certs::{CertCell, CertStore};
use crate::failure::Failure;
use crate::fds::FdBudget;
use crate::stats::{Direction, FailReason, PolicyCounts, ShardStats};
use crate::sys;
use addrs::BoundAddrs;
use handshakes::PendingHandshakes;
use loglimit::LogLimiter;
use notify::LocalNotify;
use pool::TunnelPool;
use signal::FlagSet;
use table::{ConnInfo, ConnTable, TableGuard};

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
    /// The label sets of the `istio_tcp_*` counters.
    pub(crate) traffic: traffic::TrafficSets,
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
    /// workloads), and the wait is woken by [`run::ShardMsg::CertsChanged`]: no polling.
    pub async fn wait_for_certificate(&self, id: &zpath_crypto::Identity, limit: Duration) -> bool {
        if self.certs().get(id).is_some() {
            return true;
        }
        self.certs_wanted.notify_one();
        let found = zpath_uring::time::timeout(limit, async {
            loop {
                // Taken before the check: a set published in between still wakes it.
                let published = self.certs_published.wait();
                if self.certs().get(id).is_some() {
                    return;
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

    /// Counts the outbound connection `info` as opened under its `istio_tcp_*` label
    /// set (see [`traffic::TrafficSets::outbound`]).
    pub(crate) fn count_outbound_opened(
        &self,
        info: &ConnInfo,
        snapshot: &Snapshot,
        upstream: SocketAddr,
        mtls: bool,
    ) {
        let addressed = info.addressed.get();
        let counters = self.traffic.outbound(
            snapshot,
            info.src.ip(),
            addressed,
            upstream,
            mtls,
            &self.stats,
        );
        count_opened(info, counters);
    }

    /// Counts the inbound connection `info` to `dst` as opened under its
    /// `istio_tcp_*` label set (see [`traffic::TrafficSets::inbound`]); `peer` and the
    /// request's `baggage` over HBONE.
    pub(crate) fn count_inbound_opened(
        &self,
        info: &ConnInfo,
        snapshot: &Snapshot,
        dst: SocketAddr,
        peer: Option<&zpath_crypto::VerifiedPeer>,
        baggage: Option<&str>,
    ) {
        let src = info.src.ip();
        let stats = &self.stats;
        if let Some(c) = self
            .traffic
            .inbound(snapshot, src, dst, peer, baggage, stats)
        {
            count_opened(info, c);
        }
    }

    /// Counts a connection of the table that ended, and logs its failure (rate-limited).
    pub(crate) fn finish(&self, dir: Direction, guard: &TableGuard, result: Result<(), Failure>) {
        let info = &guard.info;
        info.fds.set([-1, -1]);
        info.count_end(self.stats.dir(dir), result.as_ref().err());
        if let Err(f) = &result {
            // A flood of failures writes a few lines per second (and a summary), access
            // log included.
            if !self.may_log(f.reason) {
                return;
            }
            if matches!(f.reason, FailReason::Reset) {
                debug!(shard = self.id, src = %info.src, "connection reset: {}", f.message);
            } else {
                info!(shard = self.id, src = %info.src, dst = ?info.dst.get(), reason = f.reason.label(), "connection failed: {}", f.message);
            }
        }
        crate::access::completed(|| self.snapshot(), info, &result);
    }
}

/// Counts `info` as opened under `counters`, once: a connection has one label set.
fn count_opened(info: &ConnInfo, counters: crate::traffic::LocalCounters) {
    if info.traffic.get().is_none() {
        counters.open();
        let _ = info.traffic.set(counters);
    }
}
