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
//!
//! Memory is kept near 300 bytes per workload at 10^5 workloads: the workload objects
//! hold only what differs between replicas (uid, name, node, addresses, health) and
//! share a profile per deployment; the index by uid has 8-byte keys
//! ([`Workloads`]), the index by address 4-byte keys for IPv4, and a service's
//! endpoint vector holds one pointer per endpoint.

mod builder;
mod index;
mod key;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

pub use builder::SnapshotBuilder;
pub use index::Workloads;
use key::IpKey;
pub(crate) use key::{FastMap, FastSet, FastState};
pub use key::{Uid, UidRef};

use crate::config::LocalConfig;
use crate::model::{
    HealthStatus, NamespacedHostname, Service, Strng, TunnelProtocol, Waypoint, Workload,
};

/// The port a destination node's zpath (or ztunnel) listens on for HBONE.
pub const HBONE_PORT: u16 = 15008;

pub use crate::model::PortMap;

/// A persistent map: O(1) clone, O(log n) lookup, insert and remove. A B-tree
/// rather than a hash trie: at 10^5 entries its nodes are well filled (a hash trie's
/// leaves are mostly empty there), and iteration order is stable for config dumps.
pub type PMap<K, V> = imbl::OrdMap<K, V>;

/// Workloads by address: IPv4 keys are 4 bytes, so the common case costs 16 bytes
/// per entry instead of 32.
#[derive(Debug, Clone, Default)]
struct ByIp {
    v4: PMap<u32, Arc<Workload>>,
    v6: PMap<u128, Arc<Workload>>,
}

impl ByIp {
    fn get(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        match ip {
            IpAddr::V4(v4) => self.v4.get(&v4.to_bits()),
            IpAddr::V6(v6) => self.v6.get(&v6.to_bits()),
        }
    }

    fn insert(&mut self, ip: IpAddr, w: Arc<Workload>) -> Option<Arc<Workload>> {
        match ip {
            IpAddr::V4(v4) => self.v4.insert(v4.to_bits(), w),
            IpAddr::V6(v6) => self.v6.insert(v6.to_bits(), w),
        }
    }

    fn remove(&mut self, ip: IpAddr) -> Option<Arc<Workload>> {
        match ip {
            IpAddr::V4(v4) => self.v4.remove(&v4.to_bits()),
            IpAddr::V6(v6) => self.v6.remove(&v6.to_bits()),
        }
    }
}

/// One healthy endpoint of a service: the workload (its port map for the service is
/// in its profile, [`crate::model::WorkloadProfile::endpoint_ports`]). One pointer,
/// so that endpoint vectors stay small.
pub type HealthyEndpoint = Arc<Workload>;

/// A service as the data path needs it: its definition and its healthy endpoints in a
/// persistent vector, so that choosing one uniformly is O(log n) and an endpoint
/// change costs O(log n) too.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceRoute {
    /// The service.
    pub service: Arc<Service>,
    /// Healthy endpoints.
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
    /// A destination whose traffic must go through a waypoint (its L7 policy lives
    /// there). zpath does not route through waypoints yet, so this is refused: going
    /// straight to the destination would bypass that policy.
    Waypoint {
        /// What the client addressed.
        destination: Addressed,
        /// Its waypoint.
        waypoint: Waypoint,
    },
}

/// What a client addressed: a workload (by one of its addresses) or a service (by a VIP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressed {
    /// A workload.
    Workload(Arc<Workload>),
    /// A service.
    Service(Arc<Service>),
}

impl std::fmt::Display for Addressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addressed::Workload(w) => write!(f, "workload {}", w.uid),
            Addressed::Service(s) => write!(f, "service {}/{}", s.namespace, s.hostname),
        }
    }
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
    pub workloads: Workloads,
    /// Services by `namespace/hostname`.
    pub services: PMap<NamespacedHostname, Arc<ServiceRoute>>,
    #[serde(skip)]
    by_ip: ByIp,
    #[serde(skip)]
    by_vip: PMap<IpKey, Arc<ServiceRoute>>,
    /// The healthy endpoints of every service some workload lists, defined or not:
    /// a workload arriving before (or outliving) its service keeps its place, and a
    /// service defined later takes this vector as it is. Its route shares it.
    #[serde(skip)]
    endpoints: PMap<NamespacedHostname, imbl::Vector<HealthyEndpoint>>,
    /// Authorization policies by `namespace/name`, as configured.
    #[serde(serialize_with = "serialize_policies")]
    pub policies: PMap<String, Arc<zpath_policy::model::Authorization>>,
    /// The compiled policies.
    #[serde(skip)]
    compiled: Arc<zpath_policy::CompiledPolicies>,
    /// Each local workload's applicable policies, by uid. Its keys are exactly the
    /// workloads this node serves; an inbound destination without an entry here is
    /// refused ([`UnknownDestination`]), never authorized against a subset of policies.
    #[serde(skip)]
    targets: PMap<Uid, Arc<zpath_policy::ResolvedTarget>>,
    /// Whether `targets` were resolved against `compiled`. False only for
    /// [`Snapshot::default`], which serves no workload and so refuses every inbound
    /// connection.
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
            // A service that lists the workload makes it an endpoint there, as if the
            // workload listed the service itself; one that does not (or lists it
            // unhealthy) does not.
            let mut services = wl.services.clone();
            for (k, _) in &ports {
                if !services.contains(k) {
                    services.push(k.clone());
                }
            }
            services.sort();
            let service_ports: Vec<Option<PortMap>> = services
                .iter()
                .map(|k| ports.iter().find(|(s, _)| s == k).map(|(_, p)| p.clone()))
                .collect();
            let wl = if services == wl.services && service_ports == wl.service_ports {
                wl.clone()
            } else {
                let mut with = (**wl).clone();
                let profile = with.profile_mut();
                profile.services = services;
                profile.service_ports = service_ports;
                Arc::new(with)
            };
            b.upsert_workload(wl);
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

    /// Authorizes an inbound connection to `conn.dst_ip` against the policies of the
    /// local workload there. An address that is not a workload this node serves is
    /// refused: its namespace and selector policies are unknown, and authorizing it
    /// against the others would let through what they deny.
    pub fn authorize<'s>(
        &'s self,
        conn: &zpath_policy::Conn<'_>,
    ) -> Result<zpath_policy::Outcome<'s>, UnknownDestination<'s>> {
        let ip = conn.dst_ip;
        let Some(workload) = self.by_ip.get(ip) else {
            return Err(UnknownDestination::NoWorkload { ip });
        };
        if !self.is_local(workload) {
            return Err(UnknownDestination::OtherNode {
                ip,
                workload,
                local: &self.node_name,
            });
        }
        match self.targets.get(&UidRef::new(&workload.uid)) {
            Some(target) => Ok(self.compiled.evaluate(target, conn)),
            None => Err(UnknownDestination::Unresolved { ip, workload }),
        }
    }

    /// The workload with this uid.
    pub fn workload(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid)
    }

    /// The compiled policies (ids index per-policy counters).
    pub fn compiled_policies(&self) -> &zpath_policy::CompiledPolicies {
        &self.compiled
    }

    /// The workload that owns `ip`, if any.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(ip)
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
            .filter_map(|uid| self.workloads.get(uid.as_str()))
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
    ///
    /// A destination with a waypoint is [`Route::Waypoint`]: for a workload address
    /// the workload's waypoint, for a VIP the service's (as Istio: traffic addressed
    /// to a service goes through the service's waypoint only).
    pub fn route(&self, dst: SocketAddr, pick: u32) -> Route {
        if let Some(wl) = self.by_ip.get(dst.ip()) {
            if let Some(waypoint) = &wl.waypoint {
                return Route::Waypoint {
                    destination: Addressed::Workload(wl.clone()),
                    waypoint: waypoint.clone(),
                };
            }
            return Route::Workload {
                workload: wl.clone(),
                addr: dst,
            };
        }
        let Some(route) = self.by_vip.get(&IpKey::from(dst.ip())) else {
            return Route::Passthrough(dst);
        };
        if let Some(waypoint) = &route.service.waypoint {
            return Route::Waypoint {
                destination: Addressed::Service(route.service.clone()),
                waypoint: waypoint.clone(),
            };
        }
        if !route.service.ports.contains_key(&dst.port()) {
            return Route::NoEndpoint(route.service.key());
        }
        if route.healthy.is_empty() {
            return Route::NoEndpoint(route.service.key());
        }
        let Some(wl) = route.healthy.get(pick as usize % route.healthy.len()) else {
            return Route::NoEndpoint(route.service.key());
        };
        let svc = &route.service;
        let ports = wl.endpoint_ports(&svc.namespace, &svc.hostname);
        let Some(port) = svc.target_port(dst.port(), ports) else {
            return Route::NoEndpoint(route.service.key());
        };
        let ip = pick_family(&wl.workload_ips, dst.ip());
        Route::Workload {
            workload: wl.clone(),
            addr: SocketAddr::new(ip, port),
        }
    }
}

/// Why an inbound connection has no local workload to be authorized against: it is
/// refused (ztunnel: `UnknownDestination`). Borrowed from the snapshot, so building
/// one costs nothing on the data path.
#[derive(Debug, Clone, Copy)]
pub enum UnknownDestination<'s> {
    /// No workload has the address: the control plane has not pushed it yet, or the
    /// address was released.
    NoWorkload {
        /// The destination address.
        ip: IpAddr,
    },
    /// The workload with the address runs on another node (a node-name mismatch, or
    /// an address taken over before the configuration caught up).
    OtherNode {
        /// The destination address.
        ip: IpAddr,
        /// The workload that has it.
        workload: &'s Workload,
        /// This node's name.
        local: &'s str,
    },
    /// A local workload whose policies were never resolved (only in a snapshot that
    /// no builder finished).
    Unresolved {
        /// The destination address.
        ip: IpAddr,
        /// The workload.
        workload: &'s Workload,
    },
}

impl std::fmt::Display for UnknownDestination<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnknownDestination::NoWorkload { ip } => write!(
                f,
                "unknown destination {ip}: no workload has this address (not pushed by the \
                 control plane yet, or released)"
            ),
            UnknownDestination::OtherNode {
                ip,
                workload,
                local,
            } => write!(
                f,
                "unknown destination {ip}: workload {} has this address but runs on node \
                 {:?}, not on this node {local:?} (is --node-name right?)",
                workload.uid, workload.node
            ),
            UnknownDestination::Unresolved { ip, workload } => write!(
                f,
                "unknown destination {ip}: the policies of workload {} are not resolved",
                workload.uid
            ),
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
pub type SnapshotCell = crate::published::Published<Snapshot>;

impl SnapshotCell {
    /// The generation of the current snapshot, without taking a reference.
    pub fn generation(&self) -> u64 {
        self.peek(|s| s.generation)
    }
}

#[cfg(test)]
mod tests;
