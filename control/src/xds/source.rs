//! xDS as a snapshot source: the [`XdsHandler`] that turns each delta response into
//! the next [`Snapshot`] (incrementally, through a [`SnapshotBuilder`]) and publishes
//! it, and [`XdsSource`], the entry point the daemon's control thread runs.
//!
//! A resource that cannot be decoded or converted is rejected (the client NACKs it)
//! and the snapshot keeps its previous value for that name; the valid resources of the
//! same response still apply. While istiod is away nothing changes, so the data path
//! keeps serving the last published snapshot.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use super::client::{XdsClient, XdsClientConfig};
use super::resource::{decode_address, decode_authorization};
use super::state::{
    RejectedResource, XdsHandler, XdsResource, ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL,
};
use super::XdsError;
use crate::convert::{workload_with, AddressResource, WorkloadEndpoints};
use crate::model::{NamespacedHostname, Service, Strng};
use crate::proto::istio::workload as xwl;
use crate::snapshot::{PortMap, Snapshot, SnapshotBuilder, SnapshotCell};

/// Counters of the xDS source, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct XdsStats {
    /// Responses applied in full (ACKed).
    pub updates_accepted: AtomicU64,
    /// Responses with at least one rejected resource (NACKed; the valid rest applied).
    pub updates_rejected: AtomicU64,
    /// Resources applied (added, changed or removed).
    pub resources_applied: AtomicU64,
    /// Resources rejected.
    pub resources_rejected: AtomicU64,
    /// Snapshots published by this source.
    pub snapshots_published: AtomicU64,
}

impl XdsStats {
    /// The counters in the Prometheus text format (`zpath_xds_*`).
    pub fn prometheus(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "# HELP zpath_xds_updates_total xDS responses handled, by result (rejected: NACKed, valid resources still applied).\n\
             # TYPE zpath_xds_updates_total counter\n\
             zpath_xds_updates_total{{result=\"accepted\"}} {}\n\
             zpath_xds_updates_total{{result=\"rejected\"}} {}\n\
             # HELP zpath_xds_resources_total xDS resources handled, by result.\n\
             # TYPE zpath_xds_resources_total counter\n\
             zpath_xds_resources_total{{result=\"applied\"}} {}\n\
             zpath_xds_resources_total{{result=\"rejected\"}} {}\n\
             # HELP zpath_xds_snapshots_published_total Snapshots published from xDS.\n\
             # TYPE zpath_xds_snapshots_published_total counter\n\
             zpath_xds_snapshots_published_total {}\n",
            get(&self.updates_accepted),
            get(&self.updates_rejected),
            get(&self.resources_applied),
            get(&self.resources_rejected),
            get(&self.snapshots_published),
        )
    }
}

/// What an xDS resource name stands for in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    Workload(Strng),
    Service(NamespacedHostname),
    Policy(String),
}

/// Shares the strings and port maps that many workloads repeat (namespace, trust
/// domain, service account, node, service keys...), so that a snapshot of 100k
/// workloads does not hold 100k copies of each.
#[derive(Debug, Default)]
struct Interner {
    strings: HashSet<Strng>,
    ports: HashSet<PortMap>,
    pruned_at: usize,
}

/// Below this many entries the interner is never pruned.
const INTERNER_PRUNE_FLOOR: usize = 4096;

impl Interner {
    fn str(&mut self, s: &str) -> Strng {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        let s = Strng::from(s);
        self.strings.insert(s.clone());
        s
    }

    fn ports(&mut self, p: std::collections::BTreeMap<u16, u16>) -> PortMap {
        if let Some(shared) = self.ports.get(&p) {
            return shared.clone();
        }
        let p = Arc::new(p);
        self.ports.insert(p.clone());
        p
    }

    /// Drops entries nothing else holds any more, once the table has doubled since the
    /// last pass (amortised O(1) per insertion).
    fn prune(&mut self) {
        let len = self.strings.len() + self.ports.len();
        if len < INTERNER_PRUNE_FLOOR.max(2 * self.pruned_at) {
            return;
        }
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.ports.retain(|p| Arc::strong_count(p) > 1);
        self.pruned_at = self.strings.len() + self.ports.len();
    }
}

/// The [`XdsHandler`] that applies Address and Authorization resources to the
/// snapshot and publishes the result.
#[derive(Debug)]
pub struct SnapshotHandler {
    cell: Arc<SnapshotCell>,
    current: Arc<Snapshot>,
    /// Names whose resource is not keyed by its natural key (a workload named other
    /// than its uid, a service other than `namespace/hostname`, a policy other than
    /// `namespace/name`). istiod always uses the natural keys, so this stays empty.
    aliases: HashMap<String, Held>,
    interner: Interner,
    stats: Arc<XdsStats>,
    /// Types answered at least once: nothing is published before both Address and
    /// Authorization have been, so the data path never runs on workloads without
    /// their policies (a partial first configuration would fail open).
    answered: [bool; 2],
    published: bool,
}

impl SnapshotHandler {
    /// A handler for node `node_name` publishing into `cell`. It starts from an empty
    /// configuration and publishes its first snapshot once both types have been
    /// answered (even empty: an empty cluster is a valid configuration).
    pub fn new(cell: Arc<SnapshotCell>, node_name: &str) -> Self {
        let mut empty = SnapshotBuilder::new(node_name);
        empty.set_generation(0);
        SnapshotHandler {
            cell,
            current: Arc::new(empty.finish()),
            aliases: HashMap::new(),
            interner: Interner::default(),
            stats: Arc::default(),
            answered: [false; 2],
            published: false,
        }
    }

    /// The last snapshot this handler published (or the empty start).
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.current
    }

    /// The counters of this handler.
    pub fn stats(&self) -> Arc<XdsStats> {
        self.stats.clone()
    }

    /// What `name` currently stands for in the snapshot being built.
    fn held(&self, b: &SnapshotBuilder, name: &str, type_url: &str) -> Option<Held> {
        if let Some(h) = self.aliases.get(name) {
            return Some(h.clone());
        }
        let snap = b.current();
        if type_url == AUTHORIZATION_TYPE_URL {
            return snap
                .policies
                .contains_key(name)
                .then(|| Held::Policy(name.to_string()));
        }
        if let Some(wl) = snap.workload(name) {
            return Some(Held::Workload(wl.uid.clone()));
        }
        let key: NamespacedHostname = name.parse().ok()?;
        snap.services
            .contains_key(&key)
            .then_some(Held::Service(key))
    }

    fn remove(b: &mut SnapshotBuilder, held: &Held) {
        match held {
            Held::Workload(uid) => {
                b.remove_workload(uid);
            }
            Held::Service(key) => {
                b.remove_service(key);
            }
            Held::Policy(key) => {
                b.remove_policy(key);
            }
        }
    }

    /// Records `name` → `now`, first removing what the name stood for before if that
    /// was something else (a name that changed kind or key).
    fn rebind(&mut self, b: &mut SnapshotBuilder, name: &str, type_url: &str, now: Held) {
        if let Some(before) = self.held(b, name, type_url) {
            if before != now {
                Self::remove(b, &before);
            }
        }
        let natural = match &now {
            Held::Workload(uid) => **uid == *name,
            Held::Service(key) => key.to_string() == name,
            Held::Policy(key) => key == name,
        };
        if natural {
            self.aliases.remove(name);
        } else {
            self.aliases.insert(name.to_string(), now);
        }
    }

    fn apply_address(&mut self, b: &mut SnapshotBuilder, r: XdsResource) -> Result<(), String> {
        let wire = decode_address(&r.resource.value).map_err(|e| e.to_string())?;
        let converted = match &wire.r#type {
            Some(xwl::address::Type::Workload(w)) => {
                let interner = &mut self.interner;
                workload_with(w, &mut |v| interner.str(v)).map(AddressResource::Workload)
            }
            _ => AddressResource::try_from(&wire),
        };
        match converted.map_err(|e| e.to_string())? {
            AddressResource::Workload(WorkloadEndpoints {
                workload,
                endpoints,
            }) => {
                let ports = endpoints
                    .into_iter()
                    .map(|(svc, ep)| (svc, self.interner.ports(ep.port)))
                    .collect();
                let uid = workload.uid.clone();
                self.rebind(b, &r.name, ADDRESS_TYPE_URL, Held::Workload(uid));
                b.upsert_workload(Arc::new(workload), ports);
            }
            AddressResource::Service(svc) => {
                let svc = Service {
                    namespace: self.interner.str(&svc.namespace),
                    hostname: self.interner.str(&svc.hostname),
                    ..svc
                };
                self.rebind(b, &r.name, ADDRESS_TYPE_URL, Held::Service(svc.key()));
                b.upsert_service(Arc::new(svc));
            }
        }
        Ok(())
    }

    fn apply_authorization(
        &mut self,
        b: &mut SnapshotBuilder,
        r: XdsResource,
    ) -> Result<(), String> {
        let wire = decode_authorization(&r.resource.value).map_err(|e| e.to_string())?;
        // Never fails: a policy that cannot be understood denies its whole scope.
        let policy = zpath_policy::model::Authorization::from(&wire);
        if let Some(reason) = &policy.invalid {
            tracing::warn!(policy = %r.name, "policy fails closed: {reason}");
        }
        self.rebind(
            b,
            &r.name,
            AUTHORIZATION_TYPE_URL,
            Held::Policy(policy.key()),
        );
        b.upsert_policy(policy);
        Ok(())
    }
}

impl XdsHandler for SnapshotHandler {
    fn apply(
        &mut self,
        type_url: &str,
        added: Vec<XdsResource>,
        removed: Vec<String>,
    ) -> Result<(), Vec<RejectedResource>> {
        if type_url != ADDRESS_TYPE_URL && type_url != AUTHORIZATION_TYPE_URL {
            let reason = format!("type {type_url:?} is not handled by this client");
            let rejected: Vec<RejectedResource> = added
                .into_iter()
                .map(|r| RejectedResource::new(r.name, reason.clone()))
                .chain(
                    removed
                        .into_iter()
                        .map(|n| RejectedResource::new(n, reason.clone())),
                )
                .collect();
            self.count(0, &rejected);
            return Err(rejected);
        }
        let mut b = self.current.builder();
        let mut rejected = Vec::new();
        let mut applied = 0u64;
        for r in added {
            let name = r.name.clone();
            let result = if type_url == ADDRESS_TYPE_URL {
                self.apply_address(&mut b, r)
            } else {
                self.apply_authorization(&mut b, r)
            };
            match result {
                Ok(()) => applied += 1,
                Err(reason) => rejected.push(RejectedResource::new(name, reason)),
            }
        }
        for name in removed {
            if let Some(held) = self.held(&b, &name, type_url) {
                Self::remove(&mut b, &held);
                applied += 1;
            }
            self.aliases.remove(&name);
        }
        self.answered[usize::from(type_url == AUTHORIZATION_TYPE_URL)] = true;
        let complete = self.answered.iter().all(|a| *a);
        if complete && (applied > 0 || !self.published) {
            b.set_generation(self.cell.generation().max(self.current.generation) + 1);
            let next = Arc::new(b.finish());
            self.cell.publish_shared(next.clone());
            self.current = next;
            self.published = true;
            self.stats
                .snapshots_published
                .fetch_add(1, Ordering::Relaxed);
            self.interner.prune();
        } else if !complete && applied > 0 {
            // Kept for the next response; not published yet.
            b.set_generation(0);
            self.current = Arc::new(b.finish());
        }
        self.count(applied, &rejected);
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(rejected)
        }
    }
}

impl SnapshotHandler {
    fn count(&self, applied: u64, rejected: &[RejectedResource]) {
        let s = &self.stats;
        s.resources_applied.fetch_add(applied, Ordering::Relaxed);
        s.resources_rejected
            .fetch_add(rejected.len() as u64, Ordering::Relaxed);
        if rejected.is_empty() {
            s.updates_accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            s.updates_rejected.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// istiod as the configuration source: the delta ADS client driving a
/// [`SnapshotHandler`]. Build it, take [`XdsSource::readiness`] and
/// [`XdsSource::stats`], then run [`XdsSource::run`] on the control thread's runtime.
#[derive(Debug)]
pub struct XdsSource {
    client: XdsClient,
    handler: SnapshotHandler,
}

impl XdsSource {
    /// Validates `config` and prepares a source for node `node_name` publishing into
    /// `cell`. Nothing is dialled until [`XdsSource::run`].
    pub fn new(
        config: XdsClientConfig,
        cell: Arc<SnapshotCell>,
        node_name: &str,
    ) -> Result<Self, XdsError> {
        Ok(XdsSource {
            client: XdsClient::new(config)?,
            handler: SnapshotHandler::new(cell, node_name),
        })
    }

    /// Becomes `true` once istiod has answered every subscribed type and the result
    /// is published; never goes back to `false` (a reconnect keeps the last snapshot).
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.client.readiness()
    }

    /// The counters of this source.
    pub fn stats(&self) -> Arc<XdsStats> {
        self.handler.stats()
    }

    /// The client (subscription state, versions held, streams started).
    pub fn client(&self) -> &XdsClient {
        &self.client
    }

    /// The last snapshot this source published.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        self.handler.snapshot()
    }

    /// Runs until `shutdown` completes, reconnecting with backoff after any failure;
    /// returns the source (for its state and counters).
    pub async fn run<F: Future<Output = ()>>(mut self, shutdown: F) -> Self {
        self.client.run(&mut self.handler, shutdown).await;
        self
    }
}

/// Runs the xDS source for `node_name` into `cell` until `shutdown`. Convenience for
/// callers that need neither readiness nor counters; fails only on an unusable config.
pub async fn run_xds<F: Future<Output = ()>>(
    config: XdsClientConfig,
    cell: Arc<SnapshotCell>,
    node_name: &str,
    shutdown: F,
) -> Result<(), XdsError> {
    XdsSource::new(config, cell, node_name)?.run(shutdown).await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
