//! Load generators: `bulk`, `rr`, `crr` and `idle`, over blocking sockets, one thread
//! per flow or connection. Each returns a [`LoadResult`] with exact byte, request and
//! connection counts and, where it applies, a latency histogram in nanoseconds.

mod bulk;
mod dial;
mod idle;
mod rr;

pub use bulk::{run_bulk, BulkParams};
pub use dial::Dialer;
pub use idle::{open_idle, IdleConns, IdleParams};
pub use rr::{run_crr, run_rr, CrrParams, RrParams};

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A latency histogram in nanoseconds, 3 significant digits, up to 100 s.
pub fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3)
        .map_err(|e| Error::Usage(format!("histogram bounds: {e}")))
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of recorded latencies.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest value.
    pub max_us: f64,
}

impl LatencySummary {
    /// Summarises a nanosecond histogram.
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// What one generator run did.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Wall time of the measured phase.
    pub elapsed: Duration,
    /// Payload bytes the client sent (headers excluded).
    pub bytes_sent: u64,
    /// Payload bytes received: for `bulk`, the count the sink confirmed.
    pub bytes_received: u64,
    /// Completed request/response exchanges.
    pub requests: u64,
    /// Connections opened and used successfully.
    pub connections: u64,
    /// Failed connections or exchanges.
    pub errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Latency of each exchange (`rr`, `crr`), in nanoseconds.
    pub latency: Option<Histogram<u64>>,
}

impl LoadResult {
    fn empty() -> LoadResult {
        LoadResult {
            elapsed: Duration::ZERO,
            bytes_sent: 0,
            bytes_received: 0,
            requests: 0,
            connections: 0,
            errors: 0,
            first_error: None,
            latency: None,
        }
    }

    /// Adds another thread's counts into this one.
    fn merge(&mut self, other: LoadResult) -> Result<()> {
        self.elapsed = self.elapsed.max(other.elapsed);
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.requests += other.requests;
        self.connections += other.connections;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        match (&mut self.latency, other.latency) {
            (Some(a), Some(b)) => a
                .add(&b)
                .map_err(|e| Error::Usage(format!("merging histograms: {e}")))?,
            (a @ None, b) => *a = b,
            (_, None) => {}
        }
        Ok(())
    }

    fn record_error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    /// Payload bits per second received.
    pub fn gbit_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.bytes_received as f64 * 8.0 / s / 1e9
        } else {
            0.0
        }
    }

    /// Exchanges (or connections for `crr`) per second.
    pub fn per_sec(&self, count: u64) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            count as f64 / s
        } else {
            0.0
        }
    }
}

/// Runs `f(i)` on `n` threads and merges their results.
fn run_threads<F>(n: usize, f: F) -> Result<LoadResult>
where
    F: Fn(usize) -> LoadResult + Sync,
{
    let results: Vec<std::thread::Result<LoadResult>> = std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (0..n).map(|i| s.spawn(move || f(i))).collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut total = LoadResult::empty();
    for r in results {
        match r {
            Ok(r) => total.merge(r)?,
            Err(_) => total.record_error("a load thread panicked"),
        }
    }
    Ok(total)
}
