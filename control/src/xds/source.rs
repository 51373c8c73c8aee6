//! xDS as a snapshot source: the [`XdsHandler`] that turns each delta response into
//! the next [`Snapshot`] (incrementally, through a [`SnapshotBuilder`]) and publishes
//! it, and [`XdsSource`], the entry point the daemon's control thread runs.
//!
//! A workload or service that cannot be decoded or converted is rejected (the client
//! NACKs it) and the snapshot keeps its previous value for that name; the valid
//! resources of the same response still apply. A policy never fails open: one that
//! cannot be understood (a malformed field, or a field this build does not define,
//! found by [`super::wire`]) denies its scope; one that cannot be decoded is NACKed
//! and denies every connection on the node until a decodable version replaces it. While istiod is away nothing changes, so the data path
//! keeps serving the last published snapshot.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prost::Message;
use tokio::sync::watch;

use super::client::{XdsClient, XdsClientConfig};
use super::metrics::ClientStats;
use super::resource::{decode_address, decode_authorization};
use super::state::{
    RejectedResource, XdsHandler, XdsResource, ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL,
};
use super::XdsError;
use crate::convert::{
    profile_matches, profile_wire_hash, workload_on_profile, workload_with, AddressResource,
    ConvertError,
};
use crate::model::{
    NamespacedHostname, NamespacedHostnameRef, Service, Strng, Workload, WorkloadProfile,
};
use crate::proto::istio::workload as xwl;
use crate::snapshot::{FastMap, FastSet, FastState, Snapshot, SnapshotBuilder, SnapshotCell};

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
    /// The client's own counters (streams ended, messages received).
    pub client: Arc<ClientStats>,
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
        ) + &self.client.prometheus()
    }
}

/// A converted Address resource.
enum Converted {
    Workload(Workload),
    Service(Service),
}

/// What an xDS resource name stands for in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    Workload(Strng),
    Service(NamespacedHostname),
    Policy(String),
}

/// Shares the strings and workload profiles (with their port maps) that many
/// workloads repeat (namespace, identity, telemetry names, service keys...), so that a
/// snapshot of 100k workloads holds one copy of each per deployment, not per workload.
///
/// Profiles are found from the wire message itself (by a hash of the fields they are
/// made of, then a field-by-field comparison), so a workload of a known deployment
/// converts only its own few fields.
#[derive(Debug, Default)]
struct Interner {
    strings: FastSet<Strng>,
    profiles: FastMap<u64, Vec<Arc<WorkloadProfile>>>,
    /// How many profiles `profiles` holds.
    profile_count: usize,
    hasher: FastState,
    pruned_at: usize,
}

/// Below this many entries the interner is never pruned.
const INTERNER_PRUNE_FLOOR: usize = 4096;

/// The shared copy of `s` in `strings`, added if new.
fn intern_str(strings: &mut FastSet<Strng>, s: &str) -> Strng {
    if let Some(shared) = strings.get(s) {
        return shared.clone();
    }
    let s = Strng::from(s);
    strings.insert(s.clone());
    s
}

impl Interner {
    fn str(&mut self, s: &str) -> Strng {
        intern_str(&mut self.strings, s)
    }

    /// Converts a workload, sharing its profile with earlier workloads of the same
    /// deployment.
    fn workload(&mut self, w: &xwl::Workload) -> Result<Workload, ConvertError> {
        let key = profile_wire_hash(w, &self.hasher);
        let Interner {
            strings,
            profiles,
            profile_count,
            ..
        } = self;
        let bucket = profiles.entry(key).or_default();
        if let Some(p) = bucket.iter().find(|p| profile_matches(p, w)) {
            return workload_on_profile(w, p.clone(), &mut |v| intern_str(strings, v));
        }
        let converted = workload_with(w, &mut |v| intern_str(strings, v), &mut |p| {
            let p = Arc::new(p);
            bucket.push(p.clone());
            *profile_count += 1;
            p
        });
        if bucket.is_empty() {
            profiles.remove(&key);
        }
        converted.map(|we| we.workload)
    }

    fn len(&self) -> usize {
        self.strings.len() + self.profile_count
    }

    /// Drops entries nothing else holds any more, once the table has doubled since the
    /// last pass (amortised O(1) per insertion). Profiles go first: they hold strings.
    fn prune(&mut self) {
        if self.len() < INTERNER_PRUNE_FLOOR.max(2 * self.pruned_at) {
            return;
        }
        self.profiles.retain(|_, bucket| {
            bucket.retain(|p| Arc::strong_count(p) > 1);
            !bucket.is_empty()
        });
        self.profile_count = self.profiles.values().map(Vec::len).sum();
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.pruned_at = self.len();
    }
}

/// The payload of an encoded `istio.workload.Address` that holds a workload and
/// nothing else (field 1, once, spanning the whole message: what istiod sends), or
/// `None` for any other shape. Decoding that payload as a `Workload` gives exactly
/// what decoding the whole `Address` gives.
fn lone_workload(bytes: &[u8]) -> Option<&[u8]> {
    // Tag of field 1 (`workload`), wire type 2 (length-delimited).
    let mut rest = bytes.strip_prefix(&[0x0a])?;
    let len = prost::encoding::decode_varint(&mut rest).ok()?;
    (u64::try_from(rest.len()).ok()? == len).then_some(rest)
}

/// Resets `w` to the default message while keeping the capacity of its strings and
/// collections, so that merging the next payload into it equals decoding that
/// payload afresh. Every field is named, so a field added to the proto does not
/// compile until it is reset here.
fn reset_workload(w: &mut xwl::Workload) {
    let xwl::Workload {
        uid,
        name,
        namespace,
        addresses,
        hostname,
        network,
        tunnel_protocol,
        trust_domain,
        service_account,
        waypoint,
        network_gateway,
        node,
        canonical_name,
        canonical_revision,
        workload_type,
        workload_name,
        native_tunnel,
        application_tunnel,
        services,
        authorization_policies,
        status,
        cluster_id,
        locality,
        network_mode,
        extensions,
        capacity,
    } = w;
    for s in [
        uid,
        name,
        namespace,
        hostname,
        network,
        trust_domain,
        service_account,
        node,
        canonical_name,
        canonical_revision,
        workload_name,
        cluster_id,
    ] {
        s.clear();
    }
    addresses.clear();
    services.clear();
    authorization_policies.clear();
    extensions.clear();
    *tunnel_protocol = 0;
    *workload_type = 0;
    *native_tunnel = false;
    *status = 0;
    *network_mode = 0;
    *waypoint = None;
    *network_gateway = None;
    *application_tunnel = None;
    *locality = None;
    *capacity = None;
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
    /// Reused to decode workloads: its strings keep their capacity between resources.
    scratch: xwl::Workload,
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
            scratch: xwl::Workload::default(),
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
        // Almost always empty: skip hashing the name then.
        if !self.aliases.is_empty() {
            if let Some(h) = self.aliases.get(name) {
                return Some(h.clone());
            }
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
        // Parsed borrowed first: most names are workload uids, not service keys.
        let key = NamespacedHostnameRef::parse(name)?;
        let (key, _) = snap.services.get_key_value(&key)?;
        Some(Held::Service(key.clone()))
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
        // istiod's case, without a workload lookup: no aliases and a workload named by
        // its uid. The name then stood for this same workload, for a service, or for
        // nothing.
        if self.aliases.is_empty() {
            if let Held::Workload(uid) = &now {
                if **uid == *name {
                    let snap = b.current();
                    let service = NamespacedHostnameRef::parse(name)
                        .and_then(|k| snap.services.get_key_value(&k))
                        .filter(|_| snap.workload(name).is_none())
                        .map(|(k, _)| k.clone());
                    if let Some(key) = service {
                        b.remove_service(&key);
                    }
                    return;
                }
            }
        }
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
            if !self.aliases.is_empty() {
                self.aliases.remove(name);
            }
        } else {
            self.aliases.insert(name.to_string(), now);
        }
    }

    fn apply_address(&mut self, b: &mut SnapshotBuilder, r: &XdsResource) -> Result<(), String> {
        if let Some(payload) = lone_workload(&r.resource.value) {
            // istiod's shape: decoded into the reused message, without allocating
            // its strings again.
            reset_workload(&mut self.scratch);
            self.scratch.merge(payload).map_err(|source| {
                XdsError::Decode {
                    type_url: ADDRESS_TYPE_URL,
                    source,
                }
                .to_string()
            })?;
            let workload = self
                .interner
                .workload(&self.scratch)
                .map_err(|e| e.to_string())?;
            let uid = workload.uid.clone();
            self.rebind(b, &r.name, ADDRESS_TYPE_URL, Held::Workload(uid));
            b.upsert_workload(Arc::new(workload));
            return Ok(());
        }
        let wire = decode_address(&r.resource.value).map_err(|e| e.to_string())?;
        let converted = match &wire.r#type {
            Some(xwl::address::Type::Workload(w)) => {
                self.interner.workload(w).map(Converted::Workload)
            }
            _ => AddressResource::try_from(&wire).map(|a| match a {
                AddressResource::Workload(we) => Converted::Workload(we.workload),
                AddressResource::Service(s) => Converted::Service(s),
            }),
        };
        match converted.map_err(|e| e.to_string())? {
            // The endpoints' port maps are in the (shared) profile.
            Converted::Workload(workload) => {
                let uid = workload.uid.clone();
                self.rebind(b, &r.name, ADDRESS_TYPE_URL, Held::Workload(uid));
                b.upsert_workload(Arc::new(workload));
            }
            Converted::Service(svc) => {
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

    /// Applies a policy. One that cannot be understood (a malformed field, or a field
    /// this build does not know, at any depth) denies its whole scope; one that cannot
    /// be decoded at all denies every connection on the node until a decodable version
    /// replaces it, and is NACKed.
    fn apply_authorization(
        &mut self,
        b: &mut SnapshotBuilder,
        r: &XdsResource,
    ) -> Result<(), Rejection> {
        let policy = match decode_authorization(&r.resource.value) {
            Ok(wire) => {
                let policy = zpath_policy::model::Authorization::from(&wire);
                match super::wire::check_authorization(&r.resource.value) {
                    Ok(()) => policy,
                    Err(unknown) => zpath_policy::model::Authorization::invalid(
                        &policy.name,
                        &policy.namespace,
                        policy.scope,
                        format!("{unknown}; the policy denies every connection in its scope"),
                    ),
                }
            }
            Err(e) => {
                let reason = e.to_string();
                let policy = undecodable_policy(&r.name, &reason);
                tracing::warn!(policy = %r.name, "policy fails closed: {}", policy.invalid.as_deref().unwrap_or(""));
                self.rebind(
                    b,
                    &r.name,
                    AUTHORIZATION_TYPE_URL,
                    Held::Policy(policy.key()),
                );
                b.upsert_policy(policy);
                return Err(Rejection {
                    reason,
                    changed: true,
                });
            }
        };
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

/// A resource the handler refused (NACKed); `changed` when refusing it still changed
/// the snapshot (an undecodable policy is replaced by a deny-all).
struct Rejection {
    reason: String,
    changed: bool,
}

impl From<String> for Rejection {
    fn from(reason: String) -> Self {
        Rejection {
            reason,
            changed: false,
        }
    }
}

/// What stands for a policy resource `name` that cannot be decoded: its scope cannot
/// be read, so it denies every connection on the node (the only choice that never
/// widens access) until a decodable version replaces it. Keyed by the resource name
/// (`namespace/name`, as istiod names policies), so that version takes its place.
fn undecodable_policy(name: &str, reason: &str) -> zpath_policy::model::Authorization {
    let (namespace, policy) = name.split_once('/').unwrap_or(("", name));
    zpath_policy::model::Authorization::invalid(
        policy,
        namespace,
        zpath_policy::model::Scope::Global,
        format!(
            "the resource cannot be decoded ({reason}); it denies every connection on this \
             node until a decodable version replaces it"
        ),
    )
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
        // Whether a rejected resource changed the snapshot all the same.
        let mut changed = false;
        for r in added {
            let result = if type_url == ADDRESS_TYPE_URL {
                self.apply_address(&mut b, &r).map_err(Rejection::from)
            } else {
                self.apply_authorization(&mut b, &r)
            };
            match result {
                Ok(()) => applied += 1,
                Err(e) => {
                    changed |= e.changed;
                    rejected.push(RejectedResource::new(r.name, e.reason));
                }
            }
        }
        for name in removed {
            // Without aliases a workload's name is its uid: one lookup, not two.
            if self.aliases.is_empty()
                && type_url == ADDRESS_TYPE_URL
                && b.remove_workload(&name).is_some()
            {
                applied += 1;
                continue;
            }
            if let Some(held) = self.held(&b, &name, type_url) {
                Self::remove(&mut b, &held);
                applied += 1;
            }
            if !self.aliases.is_empty() {
                self.aliases.remove(&name);
            }
        }
        self.answered[usize::from(type_url == AUTHORIZATION_TYPE_URL)] = true;
        let complete = self.answered.iter().all(|a| *a);
        let changed = changed || applied > 0;
        if complete && (changed || !self.published) {
            b.set_generation(self.cell.generation().max(self.current.generation) + 1);
            let next = Arc::new(b.finish());
            self.cell.publish_shared(next.clone());
            self.current = next;
            self.published = true;
            self.stats
                .snapshots_published
                .fetch_add(1, Ordering::Relaxed);
            self.interner.prune();
        } else if !complete && changed {
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
        let client = XdsClient::new(config)?;
        let mut handler = SnapshotHandler::new(cell, node_name);
        handler.stats = Arc::new(XdsStats {
            client: client.stats(),
            ..XdsStats::default()
        });
        Ok(XdsSource { client, handler })
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
