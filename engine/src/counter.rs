//! The counter every shard-written metric is made of: one writer, so a plain load and
//! store (no read-modify-write), read by the control thread at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

/// A counter or gauge with a single writer (its shard).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`; only the owning shard calls it.
    #[inline]
    pub fn add(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    /// Sets a gauge; only the owning shard calls it.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Subtracts `n` (gauges); only the owning shard calls it.
    #[inline]
    pub fn sub(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_sub(n), Ordering::Relaxed);
    }

    /// The current value, from any thread.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
