//! A metrics scrape on the control thread: `/stats/prometheus` over 10,000 distinct
//! `istio_tcp_*` label sets held by each of two shards (20,000 sets of counters summed
//! into 10,000 series per family). The target is 50 ms. Shards never wait on a scrape:
//! it reads their single-writer counters and the published list of sets, without a lock.
//!
//! `cargo bench -p zpath-engine --bench scrape`

use criterion::{criterion_group, criterion_main, Criterion};

fn scrape(c: &mut Criterion) {
    let shards = zpath_engine::bench::shards_with_label_sets(10_000, 2);
    let text = zpath_engine::bench::scrape(&shards);
    // Opened, closed, received and sent: four series per set.
    let lines = text.lines().count();
    assert!(
        lines >= 40_000,
        "the label sets were not rendered: {lines} lines"
    );
    let mut group = c.benchmark_group("scrape");
    group.sample_size(20);
    group.bench_function("10k_label_sets_2_shards", |b| {
        b.iter(|| zpath_engine::bench::scrape(&shards).len())
    });
    group.finish();
}

criterion_group!(benches, scrape);
criterion_main!(benches);
