//! Building the next snapshot from the previous one and a delta.
//!
//! Cost model (n workloads, s services, p policies; every map is persistent):
//! * upsert/remove of a workload: O(log n) for the indexes, plus O(log n) per service
//!   it is (or was) an endpoint of, to update that service's healthy vector in place;
//!   if it is local, its policy target is re-resolved;
//! * upsert/remove of an existing service: O(log s) plus its VIPs; a service seen for
//!   the first time builds its healthy vector from its members once (O(members));
//! * policies are recompiled only when a policy changed, and then every local
//!   workload's target is re-resolved (local workloads are the few this node serves).
//!
//! Nothing costs time proportional to all workloads.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use zpath_policy::model::Authorization;

use super::{IpKey, Member, PMap, PortMap, ServiceRoute, Snapshot, Uid, UidRef, NO_SLOT};
use crate::model::{HealthStatus, NamespacedHostname, Service, Strng, Workload};

/// Accumulates changes on a copy of a snapshot; [`SnapshotBuilder::finish`] returns
/// the next snapshot. The base snapshot is never modified.
#[derive(Debug)]
pub struct SnapshotBuilder {
    next: Snapshot,
    /// Routes being edited in place (copies of the published ones, O(1) each).
    editing: HashMap<NamespacedHostname, ServiceRoute>,
    /// Services defined in this delta for the first time: their healthy vector is
    /// built from their members by `finish`.
    fresh: HashSet<NamespacedHostname>,
    dirty_targets: HashSet<Uid>,
    policies_changed: bool,
}

/// Whether a member can receive traffic.
fn usable(w: &Workload) -> bool {
    w.status == HealthStatus::Healthy && !w.workload_ips.is_empty()
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
            editing: HashMap::new(),
            fresh: HashSet::new(),
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

    /// Adds or replaces the workload with `workload.uid`. `ports` gives, for each
    /// service the workload is an endpoint of, its service port → target port map;
    /// entries for services that `workload.services` does not list are ignored. The
    /// endpoint is healthy when the workload is.
    pub fn upsert_workload(
        &mut self,
        workload: Arc<Workload>,
        ports: Vec<(NamespacedHostname, PortMap)>,
    ) {
        let uid = workload.uid.clone();
        let key = Uid::new(uid.clone());
        let old = self.next.workloads.insert(key.clone(), workload.clone());
        if let Some(old) = &old {
            for ip in &old.workload_ips {
                if !workload.workload_ips.contains(ip) {
                    self.unindex_ip(*ip, &uid);
                }
            }
        }
        for ip in &workload.workload_ips {
            if let Some(prev) = self.next.by_ip.insert(IpKey::from(*ip), workload.clone()) {
                if prev.uid != uid {
                    tracing::debug!(%ip, new = %uid, old = %prev.uid, "address moved to another workload");
                }
            }
        }
        let mut kept: Vec<&NamespacedHostname> = Vec::with_capacity(ports.len());
        for (svc, port) in ports {
            if !workload.services.contains(&svc) {
                tracing::debug!(workload = %uid, service = %svc, "port map for a service the workload does not list; ignored");
                continue;
            }
            if let Some(k) = workload.services.iter().find(|k| **k == svc) {
                kept.push(k);
            }
            self.set_member(&svc, &key, workload.clone(), port);
        }
        if let Some(old) = &old {
            for svc in &old.services {
                if !kept.contains(&svc) {
                    self.remove_member(svc, &key);
                }
            }
        }
        let was_local = old.as_deref().is_some_and(|o| self.next.is_local(o));
        if was_local || self.next.is_local(&workload) {
            self.dirty_targets.insert(key);
        }
    }

    /// Removes the workload with this uid; returns it if it was present.
    pub fn remove_workload(&mut self, uid: &str) -> Option<Arc<Workload>> {
        let (key, old) = self.next.workloads.remove_with_key(&UidRef::new(uid))?;
        for ip in &old.workload_ips {
            self.unindex_ip(*ip, &old.uid);
        }
        for svc in &old.services {
            self.remove_member(svc, &key);
        }
        if self.next.is_local(&old) {
            self.dirty_targets.insert(key);
        }
        Some(old)
    }

    /// Adds or replaces the service with `service.key()`. Endpoints listed in the
    /// service itself are not read: memberships come from the workloads (see
    /// [`Snapshot::from_local`] for the local file's form).
    pub fn upsert_service(&mut self, service: Arc<Service>) {
        let key = service.key();
        let old = match self.route_mut(&key) {
            Some(route) => Some(std::mem::replace(&mut route.service, service.clone())),
            None => {
                self.fresh.insert(key.clone());
                let placeholder = Arc::new(ServiceRoute {
                    service: service.clone(),
                    healthy: imbl::Vector::new(),
                });
                self.next
                    .services
                    .insert(key.clone(), placeholder)
                    .map(|r| r.service.clone())
            }
        };
        if let Some(old) = old {
            for vip in &old.vips {
                if !service.vips.contains(vip) {
                    self.unindex_vip(*vip, &key);
                }
            }
        }
    }

    /// Removes the service with this key; returns it if it was present. Memberships
    /// are kept: the endpoints return with the service.
    pub fn remove_service(&mut self, key: &NamespacedHostname) -> Option<Arc<Service>> {
        let published = self.next.services.remove(key)?;
        let service = match self.editing.remove(key) {
            Some(route) => route.service,
            None => published.service.clone(),
        };
        self.fresh.remove(key);
        for vip in &service.vips {
            self.unindex_vip(*vip, key);
        }
        Some(service)
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
        for key in std::mem::take(&mut self.fresh) {
            self.build_route(&key);
        }
        for (key, route) in std::mem::take(&mut self.editing) {
            let route = Arc::new(route);
            for vip in &route.service.vips {
                self.next.by_vip.insert(IpKey::from(*vip), route.clone());
            }
            self.next.services.insert(key, route);
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

    /// The route of `key` being edited, copied from the snapshot on first use; `None`
    /// when the service is not defined or its route is built by `finish`.
    fn route_mut(&mut self, key: &NamespacedHostname) -> Option<&mut ServiceRoute> {
        if self.fresh.contains(key) {
            return None;
        }
        match self.editing.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => Some(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                let route = self.next.services.get(key)?;
                Some(e.insert((**route).clone()))
            }
        }
    }

    /// Records `uid` as a member of `svc` and puts it in (or takes it out of) the
    /// service's healthy vector, in place.
    fn set_member(
        &mut self,
        svc: &NamespacedHostname,
        uid: &Uid,
        wl: Arc<Workload>,
        ports: PortMap,
    ) {
        let old_slot = self
            .next
            .members
            .get(svc)
            .and_then(|m| m.get(uid))
            .map_or(NO_SLOT, |m| m.slot);
        let healthy = usable(&wl);
        let entry = (wl.clone(), ports.clone());
        let mut slot = NO_SLOT;
        let mut vacate = None;
        if let Some(route) = self.route_mut(svc) {
            match (healthy, old_slot) {
                (true, NO_SLOT) => {
                    slot = route.healthy.len() as u32;
                    route.healthy.push_back(entry);
                }
                (true, s) if (s as usize) < route.healthy.len() => {
                    route.healthy.set(s as usize, entry);
                    slot = s;
                }
                (true, _) => {
                    // A position that is not there: never expected; append rather than panic.
                    tracing::warn!(service = %svc, workload = %uid, "endpoint position out of range; re-adding it");
                    slot = route.healthy.len() as u32;
                    route.healthy.push_back(entry);
                }
                (false, NO_SLOT) => {}
                (false, s) => vacate = Some(s),
            }
        }
        if let Some(s) = vacate {
            self.vacate(svc, s);
        }
        self.next
            .members
            .entry(svc.clone())
            .or_default()
            .insert(uid.clone(), Member { ports, slot });
    }

    /// Drops `uid`'s membership of `svc`, taking it out of the healthy vector.
    fn remove_member(&mut self, svc: &NamespacedHostname, uid: &Uid) {
        let (old, now_empty) = match self.next.members.get_mut(svc) {
            Some(m) => {
                let old = m.remove(uid);
                (old, m.is_empty())
            }
            None => (None, false),
        };
        if now_empty {
            self.next.members.remove(svc);
        }
        if let Some(old) = old.filter(|o| o.slot != NO_SLOT) {
            self.vacate(svc, old.slot);
        }
    }

    /// Empties position `slot` of `svc`'s healthy vector by moving the last entry
    /// there (and recording that member's new position).
    fn vacate(&mut self, svc: &NamespacedHostname, slot: u32) {
        let Some(route) = self.route_mut(svc) else {
            return;
        };
        if slot as usize >= route.healthy.len() {
            return;
        }
        let Some(last) = route.healthy.pop_back() else {
            return;
        };
        if slot as usize == route.healthy.len() {
            return; // `slot` was the last position.
        }
        let moved = last.0.clone();
        route.healthy.set(slot as usize, last);
        if let Some(m) = self
            .next
            .members
            .get_mut(svc)
            .and_then(|m| m.get_mut(&UidRef::new(&moved.uid)))
        {
            m.slot = slot;
        }
    }

    /// Builds the healthy vector of a service defined in this delta from its members.
    fn build_route(&mut self, key: &NamespacedHostname) {
        let Some(service) = self.next.services.get(key).map(|r| r.service.clone()) else {
            return;
        };
        let mut healthy = imbl::Vector::new();
        if let Some(members) = self.next.members.get(key) {
            let mut renumbered = PMap::new();
            for (uid, m) in members {
                let wl = self.next.workloads.get(uid).filter(|w| usable(w));
                let slot = match wl {
                    Some(wl) => {
                        healthy.push_back((wl.clone(), m.ports.clone()));
                        healthy.len() as u32 - 1
                    }
                    None => NO_SLOT,
                };
                renumbered.insert(uid.clone(), Member { slot, ..m.clone() });
            }
            self.next.members.insert(key.clone(), renumbered);
        }
        self.editing
            .insert(key.clone(), ServiceRoute { service, healthy });
    }

    fn unindex_ip(&mut self, ip: std::net::IpAddr, uid: &Strng) {
        let ip = IpKey::from(ip);
        if self.next.by_ip.get(&ip).is_some_and(|w| w.uid == *uid) {
            self.next.by_ip.remove(&ip);
        }
    }

    fn unindex_vip(&mut self, vip: std::net::IpAddr, key: &NamespacedHostname) {
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
        let none: &[&str] = &[];
        self.next.unknown_target = Arc::new(compiled.resolve(&zpath_policy::Target {
            namespace: "",
            policies: none,
        }));
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
        let Some(wl) = snap.workloads.get(uid).filter(|wl| snap.is_local(wl)) else {
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
