//! Building the next snapshot from the previous one and a delta.
//!
//! Cost model (n workloads, s services, p policies; every map is persistent):
//! * upsert/remove of a workload: O(log n) for the indexes, plus O(log n) per service
//!   it is (or was) a healthy endpoint of, to update that service's endpoint vector in
//!   place (and the position of the endpoint moved into a vacated place); if it is
//!   local, its policy target is re-resolved;
//! * upsert/remove of a service: O(log s) plus its VIPs; endpoint vectors exist for
//!   every listed service whether or not it is defined, so defining one costs nothing
//!   more;
//! * policies are recompiled only when a policy changed, and then every local
//!   workload's target is re-resolved (local workloads are the few this node serves).
//!
//! Nothing costs time proportional to all workloads.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use zpath_policy::model::Authorization;

use super::index::{Entry, Slots, NO_SLOT};
use super::key::{FastMap, FastSet};
use super::{HealthyEndpoint, IpKey, ServiceRoute, Snapshot, Uid};
use crate::model::{HealthStatus, NamespacedHostname, NetworkMode, Service, Workload};

/// An endpoint vector.
type Endpoints = imbl::Vector<HealthyEndpoint>;

/// Accumulates changes on a copy of a snapshot; [`SnapshotBuilder::finish`] returns
/// the next snapshot. The base snapshot is never modified.
#[derive(Debug)]
pub struct SnapshotBuilder {
    next: Snapshot,
    /// Endpoint vectors being edited in place (O(1) copies of the snapshot's).
    editing: FastMap<NamespacedHostname, Endpoints>,
    /// Services (re)defined in this delta: their routes are rebuilt by `finish`.
    defined: FastSet<NamespacedHostname>,
    dirty_targets: HashSet<Uid>,
    policies_changed: bool,
}

/// Whether a member can receive traffic.
fn usable(w: &Workload) -> bool {
    w.status == HealthStatus::Healthy && !w.workload_ips.is_empty()
}

/// The addresses `w` is found by: none for a host-network workload, whose address
/// is its node's (found by it, the node's own traffic would get its identity).
fn indexed_ips(w: &Workload) -> &[IpAddr] {
    match w.network_mode {
        NetworkMode::Standard => &w.workload_ips,
        NetworkMode::HostNetwork => &[],
    }
}

/// The position of `workload` in the endpoint vector of `svc`, from its entry.
fn slot_of(entry: &Entry, svc: &NamespacedHostname) -> u32 {
    entry
        .workload
        .services
        .iter()
        .position(|k| k == svc)
        .map_or(NO_SLOT, |i| entry.slots.get(i))
}

impl SnapshotBuilder {
    /// A builder for the first snapshot of node `node_name` (generation 1).
    pub fn new(node_name: &str) -> Self {
        let empty = Snapshot {
            node_name: node_name.into(),
            ..Snapshot::default()
        };
        Self::from_snapshot(&empty)
    }

    pub(super) fn from_snapshot(base: &Snapshot) -> Self {
        let next = Snapshot {
            generation: base.generation + 1,
            ..base.clone()
        };
        SnapshotBuilder {
            policies_changed: !next.resolved,
            next,
            editing: FastMap::default(),
            defined: FastSet::default(),
            dirty_targets: HashSet::new(),
        }
    }

    /// Sets the generation of the snapshot being built (default: the base's + 1).
    pub fn set_generation(&mut self, generation: u64) -> &mut Self {
        self.next.generation = generation;
        self
    }

    /// The snapshot as built so far (its service routes and policy targets are
    /// brought up to date only by [`SnapshotBuilder::finish`]).
    pub fn current(&self) -> &Snapshot {
        &self.next
    }

    /// Adds or replaces the workload with `workload.uid`. It is an endpoint of each
    /// service its profile gives a port map for, while it is healthy and has an
    /// address.
    pub fn upsert_workload(&mut self, workload: Arc<Workload>) {
        let old = self.next.workloads.entry(&workload.uid);
        if let Some(old) = &old {
            for ip in indexed_ips(&old.workload) {
                if !indexed_ips(&workload).contains(ip) {
                    self.unindex_ip(*ip, &workload.uid);
                }
            }
        }
        for ip in indexed_ips(&workload) {
            if let Some(prev) = self.next.by_ip.insert(*ip, workload.clone()) {
                if prev.uid != workload.uid {
                    tracing::debug!(%ip, new = %workload.uid, old = %prev.uid, "address moved to another workload");
                }
            }
        }
        let healthy = usable(&workload);
        let mut slots = Slots::none(workload.services.len());
        for (i, svc) in workload.services.iter().enumerate() {
            if workload.services[..i].contains(svc) {
                continue; // Listed twice: one endpoint only.
            }
            let old_slot = old.as_ref().map_or(NO_SLOT, |o| slot_of(o, svc));
            let member = healthy && matches!(workload.service_ports.get(i), Some(Some(_)));
            let slot = if member {
                self.place(svc, old_slot, workload.clone())
            } else {
                self.vacate(svc, old_slot);
                NO_SLOT
            };
            slots.set(i, slot);
        }
        if let Some(old) = &old {
            for (i, svc) in old.workload.services.iter().enumerate() {
                if !workload.services.contains(svc) && !old.workload.services[..i].contains(svc) {
                    self.vacate(svc, old.slots.get(i));
                }
            }
        }
        let was_local = old
            .as_ref()
            .is_some_and(|o| self.next.is_local(&o.workload));
        if was_local || self.next.is_local(&workload) {
            self.dirty_targets.insert(Uid::new(workload.uid.clone()));
        }
        self.next.workloads.insert(Entry { workload, slots });
    }

    /// Removes the workload with this uid; returns it if it was present.
    pub fn remove_workload(&mut self, uid: &str) -> Option<Arc<Workload>> {
        let Entry { workload, slots } = self.next.workloads.remove(uid)?;
        for ip in indexed_ips(&workload) {
            self.unindex_ip(*ip, &workload.uid);
        }
        for (i, svc) in workload.services.iter().enumerate() {
            if !workload.services[..i].contains(svc) {
                self.vacate(svc, slots.get(i));
            }
        }
        if self.next.is_local(&workload) {
            self.dirty_targets.insert(Uid::new(workload.uid.clone()));
        }
        Some(workload)
    }

    /// Adds or replaces the service with `service.key()`. Endpoints listed in the
    /// service itself are not read: memberships come from the workloads (see
    /// [`Snapshot::from_local`] for the local file's form).
    pub fn upsert_service(&mut self, service: Arc<Service>) {
        let key = service.key();
        // The route's endpoints are filled in by `finish`.
        let route = Arc::new(ServiceRoute {
            service: service.clone(),
            healthy: Endpoints::new(),
        });
        if let Some(old) = self.next.services.insert(key.clone(), route) {
            for vip in &old.service.vips {
                if !service.vips.contains(vip) {
                    self.unindex_vip(*vip, &key);
                }
            }
        }
        self.defined.insert(key);
    }

    /// Removes the service with this key; returns it if it was present. Its
    /// endpoints are kept: they return with the service.
    pub fn remove_service(&mut self, key: &NamespacedHostname) -> Option<Arc<Service>> {
        let route = self.next.services.remove(key)?;
        self.defined.remove(key);
        for vip in &route.service.vips {
            self.unindex_vip(*vip, key);
        }
        Some(route.service.clone())
    }

    /// Adds or replaces the policy with `policy.key()` (`namespace/name`).
    pub fn upsert_policy(&mut self, policy: Authorization) {
        self.next.policies.insert(policy.key(), Arc::new(policy));
        self.policies_changed = true;
    }

    /// Removes the policy with this `namespace/name` key; returns whether it was present.
    pub fn remove_policy(&mut self, key: &str) -> bool {
        let removed = self.next.policies.remove(key).is_some();
        self.policies_changed |= removed;
        removed
    }

    /// Brings routes and policy targets up to date and returns the snapshot.
    pub fn finish(mut self) -> Snapshot {
        let editing = std::mem::take(&mut self.editing);
        for (key, endpoints) in &editing {
            if endpoints.is_empty() {
                self.next.endpoints.remove(key);
            } else {
                self.next.endpoints.insert(key.clone(), endpoints.clone());
            }
            self.refresh_route(key);
        }
        for key in std::mem::take(&mut self.defined) {
            if !editing.contains_key(&key) {
                self.refresh_route(&key);
            }
        }
        if self.policies_changed {
            self.compile_policies();
        } else {
            for uid in std::mem::take(&mut self.dirty_targets) {
                self.resolve_target(&uid);
            }
        }
        self.next
    }

    /// Rebuilds the route of `key`, if the service is defined, with its current
    /// endpoint vector, and points its VIPs at it.
    fn refresh_route(&mut self, key: &NamespacedHostname) {
        let Some(service) = self.next.services.get(key).map(|r| r.service.clone()) else {
            return;
        };
        let healthy = self.next.endpoints.get(key).cloned().unwrap_or_default();
        let route = Arc::new(ServiceRoute { service, healthy });
        for vip in &route.service.vips {
            self.next.by_vip.insert(IpKey::from(*vip), route.clone());
        }
        self.next.services.insert(key.clone(), route);
    }

    /// Runs `f` on the endpoint vector of `svc`, copied from the snapshot on first use.
    fn with_endpoints<R>(
        &mut self,
        svc: &NamespacedHostname,
        f: impl FnOnce(&mut Endpoints) -> R,
    ) -> R {
        if let Some(v) = self.editing.get_mut(svc) {
            return f(v);
        }
        let mut v = self.next.endpoints.get(svc).cloned().unwrap_or_default();
        let r = f(&mut v);
        self.editing.insert(svc.clone(), v);
        r
    }

    /// Puts `entry` in `svc`'s endpoint vector, at `slot` if it holds one there
    /// already, else at the end; returns its position.
    fn place(&mut self, svc: &NamespacedHostname, slot: u32, entry: HealthyEndpoint) -> u32 {
        self.with_endpoints(svc, |v| {
            if (slot as usize) < v.len() {
                v.set(slot as usize, entry);
                slot
            } else {
                if slot != NO_SLOT {
                    // A position that is not there: never expected; append rather than panic.
                    tracing::warn!(service = %svc, workload = %entry.uid, "endpoint position out of range; re-adding it");
                }
                v.push_back(entry);
                v.len() as u32 - 1
            }
        })
    }

    /// Empties position `slot` of `svc`'s endpoint vector by moving the last entry
    /// there (and recording that workload's new position). `NO_SLOT` does nothing.
    fn vacate(&mut self, svc: &NamespacedHostname, slot: u32) {
        if slot == NO_SLOT {
            return;
        }
        let moved = self.with_endpoints(svc, |v| {
            if slot as usize >= v.len() {
                return None;
            }
            let last = v.pop_back()?;
            if slot as usize == v.len() {
                return None; // `slot` was the last position.
            }
            let moved = last.clone();
            v.set(slot as usize, last);
            Some(moved)
        });
        if let Some(moved) = moved {
            if let Some(i) = moved.services.iter().position(|k| k == svc) {
                self.next.workloads.set_slot(&moved.uid, i, slot);
            }
        }
    }

    /// Drops `ip` from the address index if `uid` owns it there.
    fn unindex_ip(&mut self, ip: IpAddr, uid: &str) {
        // Remove first and check: one descent in the usual case.
        if let Some(w) = self.next.by_ip.remove(ip) {
            if *w.uid != *uid {
                self.next.by_ip.insert(ip, w);
            }
        }
    }

    fn unindex_vip(&mut self, vip: IpAddr, key: &NamespacedHostname) {
        let vip = IpKey::from(vip);
        let owned = self.next.by_vip.get(&vip).is_some_and(|r| {
            r.service.namespace == key.namespace && r.service.hostname == key.hostname
        });
        if owned {
            self.next.by_vip.remove(&vip);
        }
    }

    /// Recompiles the policies and re-resolves every local workload's target; logs
    /// what fails closed (invalid policies, missing referenced policies).
    fn compile_policies(&mut self) {
        let list: Vec<Authorization> = self.next.policies.values().map(|p| (**p).clone()).collect();
        let compiled = zpath_policy::compile(&list);
        for (policy, reason) in compiled.invalid_policies() {
            tracing::warn!(%policy, "policy could not be understood; it denies its whole scope: {reason}");
        }
        self.next.compiled = Arc::new(compiled);
        self.next.resolved = true;
        let mut local: HashSet<Uid> = self.next.targets.keys().cloned().collect();
        local.extend(self.dirty_targets.drain());
        for uid in local {
            self.resolve_target(&uid);
        }
    }

    /// Resolves (or drops) the policy target of the workload `uid` against the
    /// current compilation.
    fn resolve_target(&mut self, uid: &Uid) {
        let snap = &self.next;
        let Some(wl) = snap
            .workloads
            .get(uid.as_str())
            .filter(|wl| snap.is_local(wl))
        else {
            self.next.targets.remove(uid);
            return;
        };
        let target = snap.compiled.resolve(&zpath_policy::Target {
            namespace: &wl.namespace,
            policies: &wl.authorization_policies,
        });
        for key in target.missing() {
            tracing::warn!(workload = %wl.uid, policy = key, "referenced policy is missing: the workload denies all inbound traffic until it arrives");
        }
        self.next.targets.insert(uid.clone(), Arc::new(target));
    }
}
