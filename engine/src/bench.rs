//! What the engine's benchmarks (`engine/benches`) drive that is not public: a metrics
//! scrape over many label sets.

use std::sync::Arc;

use zpath_control::model::WorkloadProfile;

use crate::stats::{render_prometheus, ShardStats};
use crate::traffic::{Reporter, ResponseFlag, TrafficCounters, TrafficLabels};

/// The counters of `shards` shards holding `label_sets` distinct `istio_tcp_*` label
/// sets between them (each set on every shard, as when every shard serves every
/// workload pair), each with one connection opened and closed and some bytes.
pub fn shards_with_label_sets(label_sets: usize, shards: usize) -> Vec<Arc<ShardStats>> {
    let sets: Vec<_> = (0..label_sets)
        .map(|i| {
            let workload = |ns: &str| WorkloadProfile {
                namespace: ns.into(),
                trust_domain: "cluster.local".into(),
                service_account: format!("sa-{i}").as_str().into(),
                canonical_name: format!("app-{i}").as_str().into(),
                canonical_revision: "v1".into(),
                workload_name: format!("app-{i}").as_str().into(),
                cluster_id: "Kubernetes".into(),
                ..Default::default()
            };
            let (src, dst) = (workload("client"), workload("server"));
            TrafficLabels {
                reporter: Reporter::Destination,
                source: Some(&src),
                derived: None,
                source_principal: Some("spiffe://cluster.local/ns/client/sa/sa"),
                destination: Some(&dst),
                service: None,
                mtls: true,
            }
            .render()
        })
        .collect();
    (0..shards)
        .map(|_| {
            let stats = ShardStats::default();
            for labels in &sets {
                let c = TrafficCounters::new(labels.clone());
                c.open();
                c.received.add(1000);
                c.close(ResponseFlag::None);
                stats.traffic.push(Arc::new(c));
            }
            Arc::new(stats)
        })
        .collect()
}

/// One scrape's text of `shards`, as `/stats/prometheus` renders it.
pub fn scrape(shards: &[Arc<ShardStats>]) -> String {
    render_prometheus(shards, "")
}
