//! Rate limit for per-connection failure logs: a remote client that makes connections
//! fail must not be able to flood the log. Each shard keeps one window per
//! [`FailReason`]: the first [`LINES_PER_SECOND`] lines of a reason in a second are
//! written, the rest only counted, and one summary line says how many were left out.
//! Counters (`zpath_connections_failed_total`) are kept apart and stay exact.
//!
//! Shard-local (`Cell`s, no atomics), no allocation: a suppressed line costs a clock
//! read and an increment. The clock is passed in, so tests drive it.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::stats::FailReason;

/// Lines of one reason written per second on one shard before the rest are suppressed.
pub const LINES_PER_SECOND: u32 = 10;

const WINDOW: Duration = Duration::from_secs(1);

/// One reason's window.
#[derive(Debug, Default)]
struct Window {
    /// When the current window began; `None` before the first line.
    start: Cell<Option<Instant>>,
    /// Lines written in the current window.
    written: Cell<u32>,
    /// Lines suppressed since the last summary.
    suppressed: Cell<u64>,
}

/// Per-reason log windows of one shard.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: u32,
    windows: [Window; FailReason::COUNT],
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(LINES_PER_SECOND)
    }
}

impl LogLimiter {
    /// A limiter writing at most `per_second` lines per reason and second.
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            windows: Default::default(),
        }
    }

    /// Whether a line for `reason` may be written at `now`. A window that ended with
    /// lines suppressed is summed up (one line) before the new window's first line.
    pub fn admit(&self, reason: FailReason, now: Instant) -> bool {
        let w = &self.windows[reason as usize];
        let expired = w
            .start
            .get()
            .is_none_or(|s| now.saturating_duration_since(s) >= WINDOW);
        if expired {
            summarize(reason, w);
            w.start.set(Some(now));
            w.written.set(0);
        }
        if w.written.get() < self.per_second {
            w.written.set(w.written.get() + 1);
            true
        } else {
            w.suppressed.set(w.suppressed.get() + 1);
            false
        }
    }

    /// Writes the summary of every window that ended before `now` with lines
    /// suppressed (called now and then, so a flood that stopped is still summed up).
    /// Returns how many summaries were written.
    pub fn flush(&self, now: Instant) -> usize {
        let mut written = 0;
        for (reason, w) in FailReason::ALL.into_iter().zip(&self.windows) {
            let ended = w
                .start
                .get()
                .is_some_and(|s| now.saturating_duration_since(s) >= WINDOW);
            if ended && summarize(reason, w) {
                written += 1;
            }
        }
        written
    }

    #[cfg(test)]
    /// Lines of `reason` suppressed and not yet summed up.
    pub fn pending(&self, reason: FailReason) -> u64 {
        self.windows[reason as usize].suppressed.get()
    }
}

/// Writes "suppressed K lines" for `w` if it suppressed any; true if it did.
fn summarize(reason: FailReason, w: &Window) -> bool {
    let k = w.suppressed.replace(0);
    if k > 0 {
        tracing::info!(
            reason = reason.label(),
            suppressed = k,
            "suppressed {k} connection failure log lines for reason {} (counted in zpath_connections_failed_total)",
            reason.label()
        );
    }
    k > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_one_reason_writes_the_first_lines_then_one_summary() {
        let limit = LogLimiter::new(3);
        let t0 = Instant::now();
        let admitted = (0..1000)
            .filter(|i| limit.admit(FailReason::Socks5, t0 + Duration::from_micros(*i)))
            .count();
        assert_eq!(admitted, 3);
        assert_eq!(limit.pending(FailReason::Socks5), 997);
        // Within the window nothing is summed up yet.
        assert_eq!(limit.flush(t0 + Duration::from_millis(999)), 0);
        // The window ended: one summary, and the count starts again.
        assert_eq!(limit.flush(t0 + WINDOW), 1);
        assert_eq!(limit.pending(FailReason::Socks5), 0);
        assert_eq!(limit.flush(t0 + 2 * WINDOW), 0);
    }

    #[test]
    fn a_new_second_admits_lines_again_and_sums_up_the_last() {
        let limit = LogLimiter::new(2);
        let t0 = Instant::now();
        for _ in 0..5 {
            limit.admit(FailReason::Tls, t0);
        }
        assert_eq!(limit.pending(FailReason::Tls), 3);
        let t1 = t0 + Duration::from_millis(1500);
        assert!(limit.admit(FailReason::Tls, t1));
        assert_eq!(
            limit.pending(FailReason::Tls),
            0,
            "summed up at the new window"
        );
        assert!(limit.admit(FailReason::Tls, t1));
        assert!(!limit.admit(FailReason::Tls, t1));
    }

    #[test]
    fn reasons_are_limited_apart() {
        let limit = LogLimiter::new(1);
        let t0 = Instant::now();
        assert!(limit.admit(FailReason::Denied, t0));
        assert!(!limit.admit(FailReason::Denied, t0));
        assert!(limit.admit(FailReason::Loop, t0));
        assert_eq!(limit.pending(FailReason::Denied), 1);
        assert_eq!(limit.pending(FailReason::Loop), 0);
    }
}
