//! Immutable snapshots of the configuration, and their wait-free publication to shards.
//!
//! The control thread builds a [`Snapshot`] and stores it in a [`SnapshotCell`]; a shard
//! loads the current one once per new connection (one atomic load, no lock, no write to
//! shared memory) and keeps it for the connection's life.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::LocalConfig;
use crate::model::{HealthStatus, NamespacedHostname, Service, Strng, TunnelProtocol, Workload};

/// The port a destination node's zpath (or ztunnel) listens on for HBONE.
pub const HBONE_PORT: u16 = 15008;

/// Service port → target port of one endpoint.
pub type PortMap = Arc<std::collections::BTreeMap<u16, u16>>;

/// A service as the data path needs it: its definition and its healthy endpoints in a
/// vector, so that choosing one uniformly is O(1).
#[derive(Debug, Clone, Serialize)]
pub struct ServiceRoute {
    /// The service.
    pub service: Arc<Service>,
    /// Healthy endpoints: the workload and its target port map.
    #[serde(skip)]
    pub healthy: Vec<(Arc<Workload>, PortMap)>,
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
#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    /// Increases by one with every published snapshot.
    pub generation: u64,
    /// The node this daemon runs on; workloads with this `node` are served locally.
    pub node_name: Strng,
    /// Workloads by uid.
    pub workloads: HashMap<Strng, Arc<Workload>>,
    /// Services by `namespace/hostname`.
    pub services: HashMap<NamespacedHostname, Arc<ServiceRoute>>,
    #[serde(skip)]
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    #[serde(skip)]
    by_vip: HashMap<IpAddr, Arc<ServiceRoute>>,
    /// Authorization policies, as configured.
    pub policies: Vec<zpath_policy::model::Authorization>,
    /// The compiled policies.
    #[serde(skip)]
    compiled: Arc<zpath_policy::CompiledPolicies>,
    /// Each local workload's applicable policies, by uid.
    #[serde(skip)]
    targets: HashMap<Strng, zpath_policy::ResolvedTarget>,
    /// For inbound destinations that are not a known local workload: global policies only.
    #[serde(skip)]
    unknown_target: zpath_policy::ResolvedTarget,
}

impl Snapshot {
    /// Builds a snapshot from a parsed local config for the node `node_name`.
    pub fn from_local(config: &LocalConfig, node_name: &str, generation: u64) -> Snapshot {
        let mut snap = Snapshot {
            generation,
            node_name: node_name.into(),
            policies: config.policies.clone(),
            ..Snapshot::default()
        };
        for wl in &config.workloads {
            snap.workloads.insert(wl.uid.clone(), wl.clone());
            for ip in &wl.workload_ips {
                snap.by_ip.insert(*ip, wl.clone());
            }
        }
        for svc in &config.services {
            let route = Arc::new(snap.route_for(svc.clone()));
            for vip in &svc.vips {
                snap.by_vip.insert(*vip, route.clone());
            }
            snap.services.insert(svc.key(), route);
        }
        snap.compile_policies();
        snap
    }

    /// Compiles the policies and resolves those of every local workload; logs what
    /// fails closed (invalid policies, missing referenced policies).
    fn compile_policies(&mut self) {
        let compiled = zpath_policy::compile(&self.policies);
        for (policy, reason) in compiled.invalid_policies() {
            tracing::warn!(%policy, "policy could not be understood; it denies its whole scope: {reason}");
        }
        let none: &[&str] = &[];
        self.unknown_target = compiled.resolve(&zpath_policy::Target {
            namespace: "",
            policies: none,
        });
        let mut targets = HashMap::new();
        for wl in self.workloads.values().filter(|wl| self.is_local(wl)) {
            let target = compiled.resolve(&zpath_policy::Target {
                namespace: &wl.namespace,
                policies: &wl.authorization_policies,
            });
            for key in target.missing() {
                tracing::warn!(workload = %wl.uid, policy = key, "referenced policy is missing: the workload denies all inbound traffic until it arrives");
            }
            targets.insert(wl.uid.clone(), target);
        }
        self.targets = targets;
        self.compiled = Arc::new(compiled);
    }

    /// Authorizes an inbound connection to `conn.dst_ip`: against the local workload
    /// there, or against global policies only when no local workload owns the address.
    pub fn authorize<'s>(&'s self, conn: &zpath_policy::Conn<'_>) -> zpath_policy::Outcome<'s> {
        let target = self
            .local_workload(conn.dst_ip)
            .and_then(|wl| self.targets.get(&wl.uid))
            .unwrap_or(&self.unknown_target);
        self.compiled.evaluate(target, conn)
    }

    fn route_for(&self, service: Arc<Service>) -> ServiceRoute {
        let healthy = service
            .endpoints
            .values()
            .filter(|ep| ep.status == HealthStatus::Healthy)
            .filter_map(|ep| {
                let wl = self.workloads.get(&ep.workload_uid)?;
                (wl.status == HealthStatus::Healthy && !wl.workload_ips.is_empty())
                    .then(|| (wl.clone(), Arc::new(ep.port.clone())))
            })
            .collect();
        ServiceRoute { service, healthy }
    }

    /// The workload that owns `ip`, if any.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    /// Whether `wl` runs on this node (so this daemon serves it).
    pub fn is_local(&self, wl: &Workload) -> bool {
        !self.node_name.is_empty() && wl.node == self.node_name
    }

    /// The local workload that owns `ip`, if this node serves one there.
    pub fn local_workload(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workload_by_ip(ip).filter(|wl| self.is_local(wl))
    }

    /// Decides where a connection to `dst` goes. `pick` chooses among a service's
    /// healthy endpoints (any value; the caller supplies a cheap random number).
    pub fn route(&self, dst: SocketAddr, pick: u32) -> Route {
        if let Some(wl) = self.by_ip.get(&dst.ip()) {
            return Route::Workload {
                workload: wl.clone(),
                addr: dst,
            };
        }
        let Some(route) = self.by_vip.get(&dst.ip()) else {
            return Route::Passthrough(dst);
        };
        let Some(&target) = route.service.ports.get(&dst.port()) else {
            return Route::NoEndpoint(route.service.key());
        };
        if route.healthy.is_empty() {
            return Route::NoEndpoint(route.service.key());
        }
        let (wl, ports) = &route.healthy[pick as usize % route.healthy.len()];
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

/// Prefers an address of the same family as the VIP the client used.
fn pick_family(ips: &[IpAddr], like: IpAddr) -> IpAddr {
    ips.iter()
        .copied()
        .find(|ip| ip.is_ipv4() == like.is_ipv4())
        .unwrap_or(ips[0])
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
workloads:
- name: a
  namespace: default
  workloadIps: ["10.0.0.1"]
  protocol: HBONE
  node: n1
  services:
    default/svc.default.svc.cluster.local: {80: 8080}
- name: b
  namespace: default
  workloadIps: ["10.0.0.2"]
  node: n2
  services:
    default/svc.default.svc.cluster.local: {80: 9090}
- name: c
  namespace: default
  workloadIps: ["10.0.0.3"]
  status: Unhealthy
  services:
    default/svc.default.svc.cluster.local: {}
services:
- name: svc
  namespace: default
  hostname: svc.default.svc.cluster.local
  vips: ["/10.96.0.1"]
  ports: {80: 8000, 81: 0}
"#;

    fn snap() -> Snapshot {
        let cfg = LocalConfig::parse(CONFIG).unwrap();
        Snapshot::from_local(&cfg, "n1", 1)
    }

    #[test]
    fn direct_workload_address_routes_to_that_workload() {
        let s = snap();
        let r = s.route("10.0.0.1:5000".parse().unwrap(), 0);
        assert!(r.is_hbone());
        match r {
            Route::Workload { workload, addr } => {
                assert_eq!(&*workload.name, "a");
                assert_eq!(addr, "10.0.0.1:5000".parse().unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn vip_chooses_only_healthy_endpoints_with_their_port_mapping() {
        let s = snap();
        let mut seen = std::collections::BTreeSet::new();
        for pick in 0..16 {
            match s.route("10.96.0.1:80".parse().unwrap(), pick) {
                Route::Workload { addr, .. } => {
                    seen.insert(addr);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let want: std::collections::BTreeSet<SocketAddr> = ["10.0.0.1:8080", "10.0.0.2:9090"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn vip_port_not_exposed_has_no_endpoint() {
        let s = snap();
        assert!(matches!(
            s.route("10.96.0.1:443".parse().unwrap(), 0),
            Route::NoEndpoint(_)
        ));
    }

    #[test]
    fn unknown_address_is_passthrough() {
        let s = snap();
        let dst: SocketAddr = "192.0.2.1:80".parse().unwrap();
        assert_eq!(s.route(dst, 0), Route::Passthrough(dst));
    }

    #[test]
    fn local_workloads_are_those_on_this_node() {
        let s = snap();
        assert!(s.local_workload("10.0.0.1".parse().unwrap()).is_some());
        assert!(s.local_workload("10.0.0.2".parse().unwrap()).is_none());
    }

    #[test]
    fn publish_replaces_what_new_loads_see() {
        let cell = SnapshotCell::new(Snapshot::default());
        let old = cell.load();
        cell.publish(snap());
        assert_eq!(old.generation, 0);
        assert_eq!(cell.generation(), 1);
    }
}
