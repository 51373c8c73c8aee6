//! The label sets of a shard's `istio_tcp_*` counters (see [`crate::traffic`]),
//! interned: a connection finds its set by the addresses of the snapshot's workload
//! profiles and service it involves (plus, inbound over HBONE, the peer's identity),
//! so a set's text is built the first time the shard sees that combination, never per
//! connection. Two combinations with the same text (a new snapshot with the same
//! workloads, say) share one set of counters.

use std::cell::{Cell, RefCell};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use hashbrown::{Equivalent, HashMap};
use zpath_control::model::{Service, WorkloadProfile};
use zpath_control::Snapshot;
use zpath_crypto::VerifiedPeer;
use zpath_tunnel::connect::{parse_baggage, Baggage};

use crate::stats::ShardStats;
use crate::traffic::{LabelText, LocalCounters, Reporter, TrafficCounters, TrafficLabels};

/// Label sets a shard makes from baggage; past them a source unknown by address is
/// labelled `unknown`, so peers sending ever new baggage cannot grow the series
/// without bound.
const MAX_DERIVED_SETS: usize = 1024;

/// Combinations kept before the lookup table starts over (each holds its profiles
/// alive, also those of older snapshots; the counters stay).
const MAX_COMBINATIONS: usize = 4096;

/// Whose identity is the source principal.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Principal<'a> {
    /// Not proved (plaintext).
    Unknown,
    /// The source workload's own identity (outbound HBONE: our certificate proves it).
    OfSource,
    /// The identity the peer's certificate proved (inbound HBONE).
    Peer(&'a str),
}

/// What one connection's label set is made of.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parties<'a> {
    /// Which proxy reports.
    pub(crate) reporter: Reporter,
    /// The source workload's profile, when it is known.
    pub(crate) source: Option<&'a Arc<WorkloadProfile>>,
    /// The source principal.
    pub(crate) principal: Principal<'a>,
    /// Inbound over HBONE, what the request's `baggage` says of the source: its labels
    /// when it is not a workload known by address.
    pub(crate) baggage: Option<Baggage<'a>>,
    /// The destination workload's profile, when it is known.
    pub(crate) destination: Option<&'a Arc<WorkloadProfile>>,
    /// The destination port (inbound, where the service is the destination's service
    /// with this target port).
    pub(crate) port: u16,
    /// Whether the connection is carried over mutual TLS.
    pub(crate) mtls: bool,
}

/// The part of a lookup key that is plain values: which objects (by address), which
/// port, which way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Ids {
    reporter: Reporter,
    source: usize,
    destination: usize,
    service: usize,
    port: u16,
    mtls: bool,
}

/// The baggage attributes a label set uses, in a fixed order (a member the labels do
/// not use, a request id say, never makes another key).
type BaggageFields<'a> = [Option<&'a str>; 7];

fn fields<'a>(b: &Baggage<'a>) -> BaggageFields<'a> {
    [
        b.cluster,
        b.namespace,
        b.workload_name,
        b.service_name,
        b.service_version,
        b.region,
        b.zone,
    ]
}

/// A lookup key, borrowing the peer's identity and, for a source not known by
/// address, its baggage attributes.
struct Key<'a> {
    ids: Ids,
    peer: Option<&'a str>,
    baggage: Option<BaggageFields<'a>>,
}

/// A key as stored.
#[derive(PartialEq, Eq)]
struct StoredKey {
    ids: Ids,
    peer: Option<Box<str>>,
    baggage: Option<[Option<Box<str>>; 7]>,
}

impl StoredKey {
    fn baggage(&self) -> Option<BaggageFields<'_>> {
        self.baggage
            .as_ref()
            .map(|b| b.each_ref().map(|f| f.as_deref()))
    }
}

impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.ids.hash(state);
        self.peer.hash(state);
        self.baggage.hash(state);
    }
}

impl Hash for StoredKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.ids.hash(state);
        self.peer.as_deref().hash(state);
        self.baggage().hash(state);
    }
}

impl Equivalent<StoredKey> for Key<'_> {
    fn equivalent(&self, key: &StoredKey) -> bool {
        self.ids == key.ids && self.peer == key.peer.as_deref() && self.baggage == key.baggage()
    }
}

/// A combination's counters; the objects its key points at, held so that their
/// addresses cannot be reused by others while the key is stored; and the snapshot
/// generation it was last found valid in.
struct Held {
    counters: LocalCounters,
    generation: Cell<u64>,
    /// The service it was labelled with (an inbound one is checked again in a newer
    /// snapshot: the destination's services may have changed).
    service: Option<Arc<Service>>,
    _alive: Alive,
}

/// The source and destination profiles a stored key points at (held, never read).
#[allow(dead_code)]
struct Alive(Option<Arc<WorkloadProfile>>, Option<Arc<WorkloadProfile>>);

/// One shard's label sets.
#[derive(Default)]
pub(crate) struct TrafficSets {
    by_key: RefCell<HashMap<StoredKey, Held>>,
    by_text: RefCell<HashMap<LabelText, LocalCounters>>,
    /// Label sets made from baggage (which a peer chooses), bounded by
    /// [`MAX_DERIVED_SETS`].
    derived_sets: Cell<usize>,
}

fn address<T>(v: Option<&Arc<T>>) -> usize {
    v.map_or(0, |a| Arc::as_ptr(a) as usize)
}

fn same<T>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    address(a) == address(b)
}

impl TrafficSets {
    /// What the source's baggage says of it, when its labels come from there: a source
    /// not known by address, while the shard has room for such label sets.
    fn derived<'a>(&self, parties: &Parties<'a>) -> Option<Baggage<'a>> {
        let room = self.derived_sets.get() < MAX_DERIVED_SETS;
        parties.baggage.filter(|_| parties.source.is_none() && room)
    }

    /// The counters of `parties` with `service` (outbound: the addressed service, part
    /// of the key) or `inbound_service` (a function of the others and the snapshot,
    /// looked up only for a new combination, or for one last found valid in an older
    /// snapshot), made and published to `stats` the first time their text is seen.
    pub(crate) fn counters(
        &self,
        generation: u64,
        parties: &Parties<'_>,
        service: Option<&Arc<Service>>,
        inbound_service: impl FnOnce() -> Option<Arc<Service>>,
        stats: &ShardStats,
    ) -> LocalCounters {
        let peer = match parties.principal {
            Principal::Peer(p) => Some(p),
            Principal::Unknown | Principal::OfSource => None,
        };
        let key = Key {
            ids: Ids {
                reporter: parties.reporter,
                source: address(parties.source),
                destination: address(parties.destination),
                service: address(service),
                port: parties.port,
                mtls: parties.mtls,
            },
            peer,
            baggage: self.derived(parties).as_ref().map(fields),
        };
        let by_key = self.by_key.borrow();
        if let Some(held) = by_key.get(&key) {
            // Outbound, every part of the label set is in the key.
            if held.generation.get() == generation || parties.reporter == Reporter::Source {
                held.generation.set(generation);
                return held.counters.clone();
            }
            let now = inbound_service();
            if same(now.as_ref(), held.service.as_ref()) {
                held.generation.set(generation);
                return held.counters.clone();
            }
            drop(by_key);
            return self.insert(key, parties, now, generation, stats);
        }
        drop(by_key);
        let service = service.cloned().or_else(inbound_service);
        self.insert(key, parties, service, generation, stats)
    }

    /// Stores the combination `key` of `parties` and `service`, with its counters.
    fn insert(
        &self,
        key: Key<'_>,
        parties: &Parties<'_>,
        service: Option<Arc<Service>>,
        generation: u64,
        stats: &ShardStats,
    ) -> LocalCounters {
        let counters = self.by_text(parties, service.as_deref(), stats);
        let mut by_key = self.by_key.borrow_mut();
        if by_key.len() >= MAX_COMBINATIONS {
            by_key.clear();
        }
        by_key.insert(
            StoredKey {
                ids: key.ids,
                peer: key.peer.map(Box::from),
                baggage: key.baggage.map(|b| b.map(|f| f.map(Box::from))),
            },
            Held {
                counters: counters.clone(),
                generation: Cell::new(generation),
                service,
                _alive: Alive(parties.source.cloned(), parties.destination.cloned()),
            },
        );
        counters
    }

    /// The counters of the label set of `parties`: built, then shared with every
    /// combination of the same text.
    fn by_text(
        &self,
        parties: &Parties<'_>,
        service: Option<&Service>,
        stats: &ShardStats,
    ) -> LocalCounters {
        let own;
        let source_principal = match parties.principal {
            Principal::Unknown => None,
            Principal::Peer(p) => Some(p),
            Principal::OfSource => {
                own = parties.source.map(|w| w.spiffe_id());
                own.as_deref()
            }
        };
        let derived = self.derived(parties);
        let text = TrafficLabels {
            reporter: parties.reporter,
            source: parties.source.map(|w| &**w),
            derived,
            source_principal,
            destination: parties.destination.map(|w| &**w),
            service,
            mtls: parties.mtls,
        }
        .render();
        if let Some(c) = self.by_text.borrow().get(&text) {
            return c.clone();
        }
        if derived.is_some() {
            self.derived_sets.set(self.derived_sets.get() + 1);
        }
        let counters = Arc::new(TrafficCounters::new(text.clone()));
        // A new label set is rare (a new workload pair): one append, which the control
        // thread sees without a lock.
        stats.traffic.push(counters.clone());
        let counters = Rc::new(counters);
        self.by_text.borrow_mut().insert(text, counters.clone());
        counters
    }
}

impl TrafficSets {
    /// The counters of an outbound connection from `src`: its source is the local
    /// workload at that address, its destination the workload at `upstream`, its
    /// service the one whose VIP it `addressed`; `mtls` when it goes over HBONE.
    pub(crate) fn outbound(
        &self,
        snapshot: &Snapshot,
        src: IpAddr,
        addressed: Option<SocketAddr>,
        upstream: SocketAddr,
        mtls: bool,
        stats: &ShardStats,
    ) -> LocalCounters {
        let service = addressed
            .and_then(|a| snapshot.service_by_vip(a.ip()))
            .map(|r| &r.service);
        let parties = Parties {
            reporter: Reporter::Source,
            source: snapshot
                .local_workload(src.to_canonical())
                .map(|w| &w.profile),
            principal: if mtls {
                Principal::OfSource
            } else {
                Principal::Unknown
            },
            destination: snapshot
                .workload_by_ip(upstream.ip().to_canonical())
                .map(|w| &w.profile),
            baggage: None,
            port: 0,
            mtls,
        };
        self.counters(snapshot.generation, &parties, service, || None, stats)
    }

    /// The counters of an inbound connection from `src` to `dst`: its source is the
    /// workload at `src` (over HBONE, `peer` is the principal and, when no workload has
    /// that address, the request's `baggage` names the source), its destination the
    /// local workload at `dst`, its service that workload's service with `dst`'s port
    /// as target port. `None` for a destination this node does not serve (refused
    /// before anything is known of it, as ztunnel does).
    pub(crate) fn inbound(
        &self,
        snapshot: &Snapshot,
        src: IpAddr,
        dst: SocketAddr,
        peer: Option<&VerifiedPeer>,
        baggage: Option<&str>,
        stats: &ShardStats,
    ) -> Option<LocalCounters> {
        let baggage = baggage.map(parse_baggage);
        let destination = snapshot.local_workload(dst.ip().to_canonical())?;
        let parties = Parties {
            reporter: Reporter::Destination,
            source: snapshot
                .workload_by_ip(src.to_canonical())
                .map(|w| &w.profile),
            principal: peer.map_or(Principal::Unknown, |p| Principal::Peer(p.identity().uri())),
            destination: Some(&destination.profile),
            baggage,
            port: dst.port(),
            mtls: peer.is_some(),
        };
        let service = || service_with_target_port(snapshot, &destination.profile, dst.port());
        Some(self.counters(snapshot.generation, &parties, None, service, stats))
    }
}

/// The service of `destination` that `port` is a target port of (as routing maps a
/// service port to it: [`Service::target_port`]), as ztunnel guesses an inbound
/// connection's service.
fn service_with_target_port(
    snapshot: &Snapshot,
    destination: &WorkloadProfile,
    port: u16,
) -> Option<Arc<Service>> {
    destination
        .services
        .iter()
        .zip(&destination.service_ports)
        .find_map(|(key, endpoint_ports)| {
            let svc = &snapshot.service(key)?.service;
            let targets = svc
                .ports
                .keys()
                .any(|p| svc.target_port(*p, endpoint_ports.as_ref()) == Some(port));
            targets.then(|| svc.clone())
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn profile(ns: &str) -> Arc<WorkloadProfile> {
        Arc::new(WorkloadProfile {
            namespace: ns.into(),
            trust_domain: "cluster.local".into(),
            service_account: "sa".into(),
            ..Default::default()
        })
    }

    fn parties<'a>(
        src: &'a Arc<WorkloadProfile>,
        dst: &'a Arc<WorkloadProfile>,
        principal: Principal<'a>,
    ) -> Parties<'a> {
        Parties {
            reporter: Reporter::Destination,
            source: Some(src),
            principal,
            baggage: None,
            destination: Some(dst),
            port: 8080,
            mtls: true,
        }
    }

    #[test]
    fn a_combination_is_built_once_and_equal_texts_share_counters() {
        let sets = TrafficSets::default();
        let stats = ShardStats::default();
        let (a, b) = (profile("web"), profile("prod"));
        let built = Cell::new(0);
        let lookup = || {
            built.set(built.get() + 1);
            None
        };
        let peer = Principal::Peer("spiffe://cluster.local/ns/web/sa/sa");
        let first = sets.counters(1, &parties(&a, &b, peer), None, lookup, &stats);
        let again = sets.counters(1, &parties(&a, &b, peer), None, lookup, &stats);
        assert!(Rc::ptr_eq(&first, &again));
        assert_eq!(built.get(), 1, "the service was looked up again");
        // Another peer is another set.
        let other = Principal::Peer("spiffe://cluster.local/ns/x/sa/y");
        let third = sets.counters(1, &parties(&a, &b, other), None, lookup, &stats);
        assert!(!Arc::ptr_eq(&first, &third));
        // Equal profiles elsewhere (a new snapshot) give the same text: same counters.
        let (a2, b2) = (profile("web"), profile("prod"));
        let fourth = sets.counters(2, &parties(&a2, &b2, peer), None, lookup, &stats);
        assert!(Arc::ptr_eq(&first, &fourth));
        assert_eq!(stats.traffic.count(), 2);
    }

    #[test]
    fn the_source_principal_of_outbound_mtls_is_the_sources_identity() {
        let sets = TrafficSets::default();
        let stats = ShardStats::default();
        let (a, b) = (profile("web"), profile("prod"));
        let mut p = parties(&a, &b, Principal::OfSource);
        p.reporter = Reporter::Source;
        sets.counters(1, &p, None, || None, &stats);
        let text = stats.traffic[0].labels().as_str();
        assert!(
            text.contains("source_principal=\"spiffe://cluster.local/ns/web/sa/sa\""),
            "{text}"
        );
    }

    #[test]
    fn the_lookup_table_is_bounded() {
        let sets = TrafficSets::default();
        let stats = ShardStats::default();
        let b = profile("prod");
        let profiles: Vec<_> = (0..MAX_COMBINATIONS + 10).map(|_| profile("web")).collect();
        for a in &profiles {
            sets.counters(
                1,
                &parties(a, &b, Principal::Unknown),
                None,
                || None,
                &stats,
            );
        }
        assert!(sets.by_key.borrow().len() <= MAX_COMBINATIONS);
        assert_eq!(stats.traffic.count(), 1, "one text, one set of counters");
    }

    fn service(name: &str) -> Arc<Service> {
        Arc::new(Service {
            name: name.into(),
            namespace: "prod".into(),
            hostname: format!("{name}.prod.svc.cluster.local").as_str().into(),
            vips: vec![],
            ports: [(80, 8080)].into(),
            subject_alt_names: vec![],
            endpoints: Default::default(),
            waypoint: None,
        })
    }

    #[test]
    fn an_inbound_combination_is_checked_again_in_a_newer_snapshot() {
        let sets = TrafficSets::default();
        let stats = ShardStats::default();
        let (a, b) = (profile("web"), profile("prod"));
        let (api, other) = (service("api"), service("other"));
        let p = parties(&a, &b, Principal::Unknown);
        let asked = Cell::new(0);
        let ask = |s: &Arc<Service>| {
            asked.set(asked.get() + 1);
            Some(s.clone())
        };
        let first = sets.counters(1, &p, None, || ask(&api), &stats);
        // Same snapshot: not looked up again.
        let again = sets.counters(1, &p, None, || ask(&other), &stats);
        assert!(Rc::ptr_eq(&first, &again));
        assert_eq!(asked.get(), 1);
        // A newer snapshot with the same service: same counters, found valid again.
        let valid = sets.counters(2, &p, None, || ask(&api), &stats);
        assert!(Rc::ptr_eq(&first, &valid));
        assert_eq!(asked.get(), 2);
        assert!(Rc::ptr_eq(
            &first,
            &sets.counters(2, &p, None, || ask(&other), &stats)
        ));
        assert_eq!(asked.get(), 2);
        // A newer one where the port belongs to another service: another label set.
        let moved = sets.counters(3, &p, None, || ask(&other), &stats);
        assert!(!Arc::ptr_eq(&first, &moved));
        assert!(moved
            .labels()
            .as_str()
            .contains("destination_service_name=\"other\""));
        assert_eq!(stats.traffic.count(), 2);
    }

    #[test]
    fn baggage_keys_by_the_attributes_labels_use_and_its_sets_are_bounded() {
        let sets = TrafficSets::default();
        let stats = ShardStats::default();
        let b = profile("prod");
        let of = |value: &'static str| Parties {
            reporter: Reporter::Destination,
            source: None,
            principal: Principal::Unknown,
            baggage: Some(parse_baggage(value)),
            destination: Some(&b),
            port: 8080,
            mtls: true,
        };
        let first = sets.counters(
            1,
            &of("k8s.namespace.name=web,x-request-id=1"),
            None,
            || None,
            &stats,
        );
        let second = sets.counters(
            1,
            &of("k8s.namespace.name=web,x-request-id=2"),
            None,
            || None,
            &stats,
        );
        assert!(
            Rc::ptr_eq(&first, &second),
            "an unused member made another set"
        );
        assert!(first
            .labels()
            .as_str()
            .contains("source_workload_namespace=\"web\""));
        let values: Vec<String> = (0..MAX_DERIVED_SETS + 5)
            .map(|i| format!("k8s.namespace.name=ns{i}"))
            .collect();
        for v in &values {
            let p = Parties {
                baggage: Some(parse_baggage(v)),
                ..of("")
            };
            sets.counters(1, &p, None, || None, &stats);
        }
        // The web set, the bounded number of derived ones, and one without baggage.
        assert_eq!(stats.traffic.count(), MAX_DERIVED_SETS + 1);
        let last = stats
            .traffic
            .iter()
            .last()
            .unwrap()
            .1
            .labels()
            .as_str()
            .to_owned();
        assert!(
            last.contains("source_workload_namespace=\"unknown\""),
            "{last}"
        );
    }
}
