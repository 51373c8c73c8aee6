//! Immutable snapshots of the configuration, and their wait-free publication to shards.
//!
//! The control thread builds a [`Snapshot`] and stores it in a [`SnapshotCell`]; a shard
//! loads the current one once per new connection (one atomic load, no lock, no write to
//! shared memory) and keeps it for the connection's life.
//!
//! Snapshots are persistent: their indexes are `imbl` maps, so cloning one is O(1) and
//! the next snapshot after a delta is built with a [`SnapshotBuilder`] in time
//! proportional to the change (O(log n) per changed workload or service), sharing
//! everything else with the previous one. Every source (the local file, xDS) feeds
//! the same builder.

mod builder;
mod key;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

pub use builder::SnapshotBuilder;
use key::IpKey;
pub use key::{Uid, UidRef};

use crate::config::LocalConfig;
use crate::model::{HealthStatus, NamespacedHostname, Service, Strng, TunnelProtocol, Workload};

/// The port a destination node's zpath (or ztunnel) listens on for HBONE.
pub const HBONE_PORT: u16 = 15008;

/// Service port → target port of one endpoint.
pub type PortMap = Arc<BTreeMap<u16, u16>>;

/// A persistent map: O(1) clone, O(log n) lookup, insert and remove. A B-tree
/// rather than a hash trie: at 10^5 entries its nodes are well filled (a hash trie's
/// leaves are mostly empty there), and iteration order is stable for config dumps.
pub type PMap<K, V> = imbl::OrdMap<K, V>;

/// No position in a route's healthy vector.
const NO_SLOT: u32 = u32::MAX;

/// A workload's membership in one service: its port map and its position in the
/// service route's `healthy` vector (`NO_SLOT` when it is not there: unhealthy, or the
/// service is not defined). Two words: copying a map node of members stays cheap.
#[derive(Debug, Clone)]
struct Member {
    ports: PortMap,
    slot: u32,
}

/// One healthy endpoint of a service: the workload and its target port map.
pub type HealthyEndpoint = (Arc<Workload>, PortMap);

/// A service as the data path needs it: its definition and its healthy endpoints in a
/// persistent vector, so that choosing one uniformly is O(log n) and an endpoint
/// change costs O(log n) too.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceRoute {
    /// The service.
    pub service: Arc<Service>,
    /// Healthy endpoints: the workload and its target port map.
    #[serde(skip)]
    pub healthy: imbl::Vector<HealthyEndpoint>,
}

/// Where a new outbound connection goes, decided from the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To a known workload: `addr` is the workload address and target port.
    Workload {
        /// The destination workload.
        workload: Arc<Workload>,
        /// The workload address and (mapped) port to reach.
        addr: SocketAddr,
    },
    /// Not a mesh destination: relay plain TCP to the original destination.
    Passthrough(SocketAddr),
    /// A service VIP and port with no healthy endpoint, or a port the service does not expose.
    NoEndpoint(NamespacedHostname),
}

impl Route {
    /// Whether the destination is reached over HBONE (to its address on port 15008).
    pub fn is_hbone(&self) -> bool {
        matches!(self, Route::Workload { workload, .. } if workload.protocol == TunnelProtocol::Hbone)
    }
}

/// One immutable view of everything the data path needs to know.
///
/// Cloning is O(1): every index is a persistent map or an `Arc`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Snapshot {
    /// Increases by one with every published snapshot.
    pub generation: u64,
    /// The node this daemon runs on; workloads with this `node` are served locally.
    pub node_name: Strng,
    /// Workloads by uid (look one up with [`Snapshot::workload`]).
    pub workloads: PMap<Uid, Arc<Workload>>,
    /// Services by `namespace/hostname`.
    pub services: PMap<NamespacedHostname, Arc<ServiceRoute>>,
    #[serde(skip)]
    by_ip: PMap<IpKey, Arc<Workload>>,
    #[serde(skip)]
    by_vip: PMap<IpKey, Arc<ServiceRoute>>,
    /// Service memberships: service key → workload uid → member (healthy or not).
    /// Kept apart from the services so that a workload arriving before (or
    /// outliving) its service keeps its membership.
    #[serde(skip)]
    members: PMap<NamespacedHostname, PMap<Uid, Member>>,
    /// Authorization policies by `namespace/name`, as configured.
    #[serde(serialize_with = "serialize_policies")]
    pub policies: PMap<String, Arc<zpath_policy::model::Authorization>>,
    /// The compiled policies.
    #[serde(skip)]
    compiled: Arc<zpath_policy::CompiledPolicies>,
    /// Each local workload's applicable policies, by uid. Its keys are exactly the
    /// workloads this node serves.
    #[serde(skip)]
    targets: PMap<Uid, Arc<zpath_policy::ResolvedTarget>>,
    /// For inbound destinations that are not a known local workload: global policies only.
    #[serde(skip)]
    unknown_target: Arc<zpath_policy::ResolvedTarget>,
    /// Whether `targets` and `unknown_target` were resolved against `compiled`. False
    /// only for [`Snapshot::default`], which denies every inbound connection.
    #[serde(skip)]
    resolved: bool,
}

fn serialize_policies<S: serde::Serializer>(
    policies: &PMap<String, Arc<zpath_policy::model::Authorization>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(policies.values().map(|p| &**p))
}

impl Snapshot {
    /// Builds a snapshot from a parsed local config for the node `node_name`.
    ///
    /// The file lists endpoints on services (merged there from the workloads'
    /// `services`); they become the workloads' memberships, as xDS delivers them.
    pub fn from_local(config: &LocalConfig, node_name: &str, generation: u64) -> Snapshot {
        let mut memberships: HashMap<&str, Vec<(NamespacedHostname, PortMap)>> = HashMap::new();
        for svc in &config.services {
            for ep in svc.endpoints.values() {
                if ep.status == HealthStatus::Healthy {
                    memberships
                        .entry(&*ep.workload_uid)
                        .or_default()
                        .push((svc.key(), Arc::new(ep.port.clone())));
                }
            }
        }
        let mut b = SnapshotBuilder::new(node_name);
        b.set_generation(generation);
        for svc in &config.services {
            b.upsert_service(svc.clone());
        }
        for wl in &config.workloads {
            let ports = memberships.remove(&*wl.uid).unwrap_or_default();
            let missing: Vec<NamespacedHostname> = ports
                .iter()
                .map(|(k, _)| k)
                .filter(|k| !wl.services.contains(k))
                .cloned()
                .collect();
            let wl = if missing.is_empty() {
                wl.clone()
            } else {
                // A service that lists the workload makes it a member, as if the
                // workload listed the service itself.
                let mut with = (**wl).clone();
                with.services.extend(missing);
                with.services.sort();
                Arc::new(with)
            };
            b.upsert_workload(wl, ports);
        }
        for p in &config.policies {
            b.upsert_policy(p.clone());
        }
        b.finish()
    }

    /// A builder for the next snapshot: a copy of this one (O(1)) with generation + 1.
    pub fn builder(&self) -> SnapshotBuilder {
        SnapshotBuilder::from_snapshot(self)
    }

    /// Authorizes an inbound connection to `conn.dst_ip`: against the local workload
    /// there, or against global policies only when no local workload owns the address.
    pub fn authorize<'s>(&'s self, conn: &zpath_policy::Conn<'_>) -> zpath_policy::Outcome<'s> {
        let target = self
            .local_workload(conn.dst_ip)
            .and_then(|wl| self.targets.get(&UidRef::new(&wl.uid)))
            .unwrap_or(&self.unknown_target);
        self.compiled.evaluate(target, conn)
    }

    /// The workload with this uid.
    pub fn workload(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(&UidRef::new(uid))
    }

    /// The compiled policies (ids index per-policy counters).
    pub fn compiled_policies(&self) -> &zpath_policy::CompiledPolicies {
        &self.compiled
    }

    /// The workload that owns `ip`, if any.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&IpKey::from(ip))
    }

    /// Whether `wl` runs on this node (so this daemon serves it).
    pub fn is_local(&self, wl: &Workload) -> bool {
        !self.node_name.is_empty() && wl.node == self.node_name
    }

    /// The local workload that owns `ip`, if this node serves one there.
    pub fn local_workload(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workload_by_ip(ip).filter(|wl| self.is_local(wl))
    }

    /// The workloads this node serves (in no particular order).
    pub fn local_workloads(&self) -> impl Iterator<Item = &Arc<Workload>> + '_ {
        self.targets
            .keys()
            .filter_map(|uid| self.workloads.get(uid))
    }

    /// The service with this key, with its healthy endpoints.
    pub fn service(&self, key: &NamespacedHostname) -> Option<&Arc<ServiceRoute>> {
        self.services.get(key)
    }

    /// The service that owns the virtual IP `vip`, if any.
    pub fn service_by_vip(&self, vip: IpAddr) -> Option<&Arc<ServiceRoute>> {
        self.by_vip.get(&IpKey::from(vip))
    }

    /// Decides where a connection to `dst` goes. `pick` chooses among a service's
    /// healthy endpoints (any value; the caller supplies a cheap random number).
    pub fn route(&self, dst: SocketAddr, pick: u32) -> Route {
        if let Some(wl) = self.by_ip.get(&IpKey::from(dst.ip())) {
            return Route::Workload {
                workload: wl.clone(),
                addr: dst,
            };
        }
        let Some(route) = self.by_vip.get(&IpKey::from(dst.ip())) else {
            return Route::Passthrough(dst);
        };
        let Some(&target) = route.service.ports.get(&dst.port()) else {
            return Route::NoEndpoint(route.service.key());
        };
        if route.healthy.is_empty() {
            return Route::NoEndpoint(route.service.key());
        }
        let Some((wl, ports)) = route.healthy.get(pick as usize % route.healthy.len()) else {
            return Route::NoEndpoint(route.service.key());
        };
        // The endpoint's own mapping wins, then the service's, then the service port.
        let port = match ports.get(&dst.port()) {
            Some(&p) if p != 0 => p,
            _ if target != 0 => target,
            _ => dst.port(),
        };
        let ip = pick_family(&wl.workload_ips, dst.ip());
        Route::Workload {
            workload: wl.clone(),
            addr: SocketAddr::new(ip, port),
        }
    }
}

/// Prefers an address of the same family as the VIP the client used. Only called
/// for healthy endpoints, which have at least one address.
fn pick_family(ips: &[IpAddr], like: IpAddr) -> IpAddr {
    ips.iter()
        .copied()
        .find(|ip| ip.is_ipv4() == like.is_ipv4())
        .or_else(|| ips.first().copied())
        .unwrap_or(like)
}

/// The current snapshot, shared between the control thread (writer) and the shards.
#[derive(Debug)]
pub struct SnapshotCell {
    current: ArcSwap<Snapshot>,
}

impl SnapshotCell {
    /// A cell holding `initial`.
    pub fn new(initial: Snapshot) -> Self {
        Self {
            current: ArcSwap::from_pointee(initial),
        }
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The current snapshot if it is not `cached`. Costs one atomic load (and no write to
    /// shared memory) when nothing changed.
    pub fn newer(&self, cached: &Arc<Snapshot>) -> Option<Arc<Snapshot>> {
        let cur = self.current.load();
        (!Arc::ptr_eq(&cur, cached)).then(|| arc_swap::Guard::into_inner(cur))
    }

    /// The generation of the current snapshot, without taking a reference.
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// Publishes `next`; connections opened afterwards see it.
    pub fn publish(&self, next: Snapshot) {
        self.current.store(Arc::new(next));
    }

    /// Publishes a snapshot the caller keeps a reference to (the base of its next
    /// delta); connections opened afterwards see it.
    pub fn publish_shared(&self, next: Arc<Snapshot>) {
        self.current.store(next);
    }
}

#[cfg(test)]
mod tests;
