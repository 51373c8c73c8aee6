//! Incremental snapshot building and snapshot memory.
//!
//! * `delta/*`: on a snapshot of 10,000 workloads, one delta adding 1,000 workloads
//!   and the next removing them (the target: ≤ 2 ms for both). Measured at
//!   the builder (domain objects in hand) and through the xDS handler (protobuf
//!   decode, conversion, interning, build and publication), with the new workloads
//!   spread over 100 services of 100 endpoints or all in one service of 10,000
//!   endpoints (the worst case: that service's endpoint vector is rebuilt per delta).
//! * `delta/builder/1-add-then-remove-on-*`: the smallest delta on 10,000 and on
//!   100,000 workloads in 1,000 services; the two must cost about the same.
//! * `xds/insert-remove`: the shape of ztunnel's own benchmark: from an empty state
//!   with one service, 1,000 workloads of that service added, then removed.
//! * Workload uids end in a random-looking pod suffix, as ReplicaSet pods do, so a
//!   delta's workloads are scattered over the maps' nodes (sequential names would let
//!   the persistent maps share far more and measure about half the time).
//! * Memory (printed before the timings): live heap bytes per workload of a snapshot
//!   of 100,000 workloads built through the xDS handler, split into the workload
//!   objects themselves and the snapshot's indexes. Counted by a global allocator as
//!   requested bytes (malloc's own rounding and headers are not included).
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`): the build
//! machine is shared, and wall time there mostly measures waiting for a core.
//!
//! Run: `cargo bench -p zpath-control --bench snapshot -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, BatchSize, Criterion, Throughput};

#[path = "../../policy/benches/cpu.rs"]
mod cpu;
use cpu::ThreadCpu;
use prost_types::Any;
use zpath_control::convert::WorkloadEndpoints;
use zpath_control::model::{NamespacedHostname, Strng, Workload, WorkloadProfile};
use zpath_control::proto::istio::workload as xwl;
use zpath_control::snapshot::{PortMap, SnapshotBuilder};
use zpath_control::xds::resource::to_any;
use zpath_control::xds::{
    SnapshotHandler, XdsHandler, XdsResource, ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL,
};
use zpath_control::{Snapshot, SnapshotCell};

// ---- counting allocator ----

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments
// unchanged; the counter is a side effect only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

// ---- the cluster ----

const NAMESPACES: usize = 50;

fn ns(i: usize) -> String {
    format!("ns-{}", i % NAMESPACES)
}

fn service_host(svc: usize) -> String {
    format!("svc-{svc}.{}.svc.cluster.local", ns(svc))
}

/// A pod name as a ReplicaSet makes them: a random-looking suffix (here a bijection
/// of `i`, so names are unique but not in creation order).
fn pod_name(i: usize, svc: usize) -> String {
    let suffix = (i as u32).wrapping_mul(0x9e37_79b1).rotate_left(13);
    format!("deploy-{svc}-7d9f8c6b5-{suffix:08x}")
}

/// Workload `i` of a cluster where workloads are spread over `services` services.
fn xds_workload(i: usize, services: usize) -> xwl::Workload {
    let svc = i % services;
    let ip = 0x0a00_0000u32 + i as u32;
    xwl::Workload {
        uid: format!("cluster1//v1/Pod/{}/{}", ns(svc), pod_name(i, svc)),
        name: pod_name(i, svc),
        namespace: ns(svc),
        addresses: vec![ip.to_be_bytes().to_vec()],
        service_account: format!("sa-{svc}"),
        node: format!("node-{}", i % 100),
        tunnel_protocol: xwl::TunnelProtocol::Hbone as i32,
        workload_name: format!("deploy-{svc}"),
        canonical_name: format!("app-{svc}"),
        canonical_revision: "v1".into(),
        cluster_id: "cluster1".into(),
        trust_domain: "cluster.local".into(),
        services: [(
            format!("{}/{}", ns(svc), service_host(svc)),
            xwl::PortList {
                ports: vec![xwl::Port {
                    service_port: 80,
                    target_port: 8080,
                }],
            },
        )]
        .into(),
        ..Default::default()
    }
}

fn xds_service(svc: usize) -> xwl::Service {
    xwl::Service {
        name: format!("svc-{svc}"),
        namespace: ns(svc),
        hostname: service_host(svc),
        addresses: vec![xwl::NetworkAddress {
            network: String::new(),
            address: (0x0a60_0000u32 + svc as u32).to_be_bytes().to_vec(),
        }],
        ports: vec![xwl::Port {
            service_port: 80,
            target_port: 8080,
        }],
        ..Default::default()
    }
}

fn any(t: xwl::address::Type) -> Any {
    to_any(ADDRESS_TYPE_URL, &xwl::Address { r#type: Some(t) })
}

fn workload_resources(range: std::ops::Range<usize>, services: usize) -> Vec<XdsResource> {
    range
        .map(|i| {
            let w = xds_workload(i, services);
            XdsResource {
                name: w.uid.clone(),
                version: "1".into(),
                resource: any(xwl::address::Type::Workload(w)),
            }
        })
        .collect()
}

fn service_resources(services: usize) -> Vec<XdsResource> {
    (0..services)
        .map(|s| XdsResource {
            name: format!("{}/{}", ns(s), service_host(s)),
            version: "1".into(),
            resource: any(xwl::address::Type::Service(xds_service(s))),
        })
        .collect()
}

/// A workload (its service port maps are in its profile), ready for the builder.
type Converted = Arc<Workload>;

/// Converted workloads with their strings and profiles shared as the xDS handler
/// shares them.
fn domain_workloads(range: std::ops::Range<usize>, services: usize) -> Vec<Converted> {
    let mut strings: HashSet<Strng> = HashSet::new();
    let mut s = |v: &Strng| -> Strng {
        if let Some(x) = strings.get(v) {
            return x.clone();
        }
        strings.insert(v.clone());
        v.clone()
    };
    let mut profiles: HashSet<Arc<WorkloadProfile>> = HashSet::new();
    let mut ports: HashSet<PortMap> = HashSet::new();
    let mut port = |m: &PortMap| -> PortMap {
        if let Some(x) = ports.get(m) {
            return x.clone();
        }
        ports.insert(m.clone());
        m.clone()
    };
    range
        .map(|i| {
            let we = WorkloadEndpoints::try_from(xds_workload(i, services)).unwrap();
            let mut w = we.workload;
            let profile = match profiles.get(&*w.profile) {
                Some(p) => p.clone(),
                None => {
                    let p = &w.profile;
                    let services: Vec<NamespacedHostname> = p
                        .services
                        .iter()
                        .map(|k| NamespacedHostname {
                            namespace: s(&k.namespace),
                            hostname: s(&k.hostname),
                        })
                        .collect();
                    let service_ports: Vec<Option<PortMap>> = p
                        .service_ports
                        .iter()
                        .map(|m| m.as_ref().map(&mut port))
                        .collect();
                    let shared = Arc::new(WorkloadProfile {
                        namespace: s(&p.namespace),
                        trust_domain: s(&p.trust_domain),
                        service_account: s(&p.service_account),
                        network: s(&p.network),
                        canonical_name: s(&p.canonical_name),
                        canonical_revision: s(&p.canonical_revision),
                        workload_name: s(&p.workload_name),
                        cluster_id: s(&p.cluster_id),
                        services,
                        service_ports,
                        ..(**p).clone()
                    });
                    profiles.insert(shared.clone());
                    shared
                }
            };
            w.profile = profile;
            w.node = s(&w.node);
            Arc::new(w)
        })
        .collect()
}

fn base_snapshot(workloads: usize, services: usize) -> Snapshot {
    let mut b = SnapshotBuilder::new("node-0");
    for s in 0..services {
        let svc = zpath_control::model::Service::try_from(xds_service(s)).unwrap();
        b.upsert_service(Arc::new(svc));
    }
    for w in domain_workloads(0..workloads, services) {
        b.upsert_workload(w);
    }
    b.finish()
}

// ---- timings ----

const BASE: usize = 10_000;
const DELTA: usize = 1_000;

fn bench_builder(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("delta");
    g.throughput(Throughput::Elements(2 * DELTA as u64));
    for (label, services) in [("spread-100-services", 100), ("one-service", 1)] {
        let base = base_snapshot(BASE, services);
        let new = domain_workloads(BASE..BASE + DELTA, services);
        g.bench_function(
            format!("builder/1000-adds-then-removes-on-10k/{label}"),
            |b| {
                b.iter_batched(
                    || new.clone(),
                    |new| {
                        let mut add = base.builder();
                        let uids: Vec<Strng> = new.iter().map(|w| w.uid.clone()).collect();
                        for w in new {
                            add.upsert_workload(w);
                        }
                        let added = add.finish();
                        let mut remove = added.builder();
                        for uid in &uids {
                            remove.remove_workload(uid);
                        }
                        black_box(remove.finish())
                    },
                    BatchSize::SmallInput,
                )
            },
        );

        let cell = Arc::new(SnapshotCell::new(Snapshot::default()));
        let mut handler = SnapshotHandler::new(cell, "node-0");
        // istiod's (empty) first Authorization answer: without it nothing is published.
        handler
            .apply(AUTHORIZATION_TYPE_URL, vec![], vec![])
            .unwrap();
        handler
            .apply(ADDRESS_TYPE_URL, service_resources(services), vec![])
            .unwrap();
        handler
            .apply(
                ADDRESS_TYPE_URL,
                workload_resources(0..BASE, services),
                vec![],
            )
            .unwrap();
        let adds = workload_resources(BASE..BASE + DELTA, services);
        let removes: Vec<String> = adds.iter().map(|r| r.name.clone()).collect();
        g.bench_function(format!("xds/1000-adds-then-removes-on-10k/{label}"), |b| {
            b.iter_batched(
                || (adds.clone(), removes.clone()),
                |(adds, removes)| {
                    handler.apply(ADDRESS_TYPE_URL, adds, vec![]).unwrap();
                    handler.apply(ADDRESS_TYPE_URL, vec![], removes).unwrap();
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// One workload added then removed on 100,000: the cost of a small delta must not
/// grow with the snapshot (compare with the same delta on 10,000).
fn bench_single(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("delta");
    for n in [10_000, 100_000] {
        let base = base_snapshot(n, 1000);
        let new = domain_workloads(n..n + 1, 1000);
        g.bench_function(format!("builder/1-add-then-remove-on-{}k", n / 1000), |b| {
            b.iter_batched(
                || new.clone(),
                |new| {
                    let mut add = base.builder();
                    let uid = new[0].uid.clone();
                    for w in new {
                        add.upsert_workload(w);
                    }
                    let added = add.finish();
                    let mut remove = added.builder();
                    remove.remove_workload(&uid);
                    black_box(remove.finish())
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_ztunnel_shape(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("xds");
    let adds = workload_resources(0..DELTA, 1);
    let removes: Vec<String> = adds.iter().map(|r| r.name.clone()).collect();
    let svc = service_resources(1);
    g.bench_function("insert-remove", |b| {
        b.iter_batched(
            || (svc.clone(), adds.clone(), removes.clone()),
            |(svc, adds, removes)| {
                let cell = Arc::new(SnapshotCell::new(Snapshot::default()));
                let mut handler = SnapshotHandler::new(cell, "node-0");
                // istiod's (empty) first Authorization answer: without it nothing is published.
                handler
                    .apply(AUTHORIZATION_TYPE_URL, vec![], vec![])
                    .unwrap();
                handler.apply(ADDRESS_TYPE_URL, svc, vec![]).unwrap();
                handler.apply(ADDRESS_TYPE_URL, adds, vec![]).unwrap();
                handler.apply(ADDRESS_TYPE_URL, vec![], removes).unwrap();
                black_box(handler)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

// ---- memory ----

const MEM_WORKLOADS: usize = 100_000;
const MEM_SERVICES: usize = 1_000;

fn per(bytes: isize) -> f64 {
    bytes as f64 / MEM_WORKLOADS as f64
}

fn memory_report() {
    // Through the xDS handler: what a node holds after istiod's initial push.
    // Each chunk of encoded resources is generated, consumed and freed inside the
    // loop, so what stays counted is what the handler retains.
    let before = live();
    let cell = Arc::new(SnapshotCell::new(Snapshot::default()));
    let mut handler = SnapshotHandler::new(cell.clone(), "node-0");
    // istiod's (empty) first Authorization answer: without it nothing is published.
    handler
        .apply(AUTHORIZATION_TYPE_URL, vec![], vec![])
        .unwrap();
    handler
        .apply(ADDRESS_TYPE_URL, service_resources(MEM_SERVICES), vec![])
        .unwrap();
    for c in 0..MEM_WORKLOADS / 1000 {
        let chunk = workload_resources(c * 1000..(c + 1) * 1000, MEM_SERVICES);
        handler.apply(ADDRESS_TYPE_URL, chunk, vec![]).unwrap();
    }
    let total = live() - before;
    assert_eq!(cell.load().workloads.len(), MEM_WORKLOADS);

    // The same workloads as plain objects, then the snapshot indexes over them.
    let before_objects = live();
    let objects = domain_workloads(0..MEM_WORKLOADS, MEM_SERVICES);
    let vec_itself = (objects.capacity() * std::mem::size_of::<Converted>()) as isize;
    let workload_objects = live() - before_objects - vec_itself;
    let mut b = SnapshotBuilder::new("node-0");
    for s in 0..MEM_SERVICES {
        let svc = zpath_control::model::Service::try_from(xds_service(s)).unwrap();
        b.upsert_service(Arc::new(svc));
    }
    let before_index = live();
    for w in objects.iter().cloned() {
        b.upsert_workload(w);
    }
    let snap = b.finish();
    let index = live() - before_index;
    let dict = std::mem::size_of::<Workload>();
    println!(
        "memory at {MEM_WORKLOADS} workloads in {MEM_SERVICES} services:\n  \
         snapshot built through xDS (workloads + indexes + services + interned strings): {:.0} B/workload\n  \
         workload objects alone (Arc<Workload> {dict} B struct + 16 B Arc header, uid, name, shared profiles): {:.0} B/workload\n  \
         snapshot indexes (by uid, by IP, service endpoints and endpoint vectors, local targets): {:.0} B/workload",
        per(total),
        per(workload_objects),
        per(index),
    );
    black_box((snap, handler, objects));
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench_builder, bench_single, bench_ztunnel_shape
}

fn main() {
    memory_report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
