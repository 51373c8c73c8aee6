//! Jittered exponential backoff, as a pure function plus a small stateful helper.
//!
//! Used by the xDS stream (reconnects) and the CA client (failed fetches).

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Backoff bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Delay before the first retry (before jitter). Default 100 ms.
    pub initial: Duration,
    /// Upper bound of any delay. Default 15 s (ztunnel's maximum).
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
        }
    }
}

/// The delay before retry number `attempt` (0-based).
///
/// The ceiling doubles per attempt from `initial` and is capped at `max`; the delay
/// is drawn in `[ceiling/2, ceiling]` by `jitter` (expected in `[0, 1]`, clamped), so
/// reconnecting clients spread out while still backing off.
pub fn backoff_delay(config: &BackoffConfig, attempt: u32, jitter: f64) -> Duration {
    let initial = config.initial.min(config.max);
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    let ceiling = initial.saturating_mul(factor).min(config.max);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let half = ceiling / 2;
    half + half.mul_f64(jitter)
}

/// Attempt counter plus a jitter source: `next_delay` grows, `reset` starts over.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// A backoff at attempt 0.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff { config, attempt: 0 }
    }

    /// The delay before the next retry; each call counts one attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = backoff_delay(&self.config, self.attempt, random_unit());
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Retries made since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A number in `[0, 1)` from the process's randomly keyed hasher; good enough to
/// de-synchronise retries, not for cryptography.
fn random_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn cfg() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }

    #[test]
    fn grows_exponentially_within_jitter_bounds() {
        let c = cfg();
        assert_eq!(backoff_delay(&c, 0, 0.0), Duration::from_millis(50));
        assert_eq!(backoff_delay(&c, 0, 1.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(&c, 3, 0.0), Duration::from_millis(400));
        assert_eq!(backoff_delay(&c, 3, 1.0), Duration::from_millis(800));
        assert_eq!(backoff_delay(&c, 3, 0.5), Duration::from_millis(600));
    }

    #[test]
    fn is_capped_at_max_even_for_huge_attempts() {
        let c = cfg();
        assert_eq!(backoff_delay(&c, 20, 1.0), Duration::from_secs(10));
        assert_eq!(backoff_delay(&c, u32::MAX, 1.0), Duration::from_secs(10));
        assert_eq!(backoff_delay(&c, u32::MAX, 0.0), Duration::from_secs(5));
    }

    #[test]
    fn bad_jitter_is_clamped() {
        let c = cfg();
        assert_eq!(backoff_delay(&c, 0, -3.0), Duration::from_millis(50));
        assert_eq!(backoff_delay(&c, 0, 7.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(&c, 0, f64::NAN), Duration::from_millis(50));
    }

    #[test]
    fn stateful_backoff_counts_and_resets() {
        let mut b = Backoff::new(cfg());
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            b.next_delay();
        }
        assert_eq!(b.attempts(), 11);
        assert!(b.next_delay() >= Duration::from_secs(5));
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn random_unit_is_in_range() {
        for _ in 0..100 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r));
        }
    }
}
