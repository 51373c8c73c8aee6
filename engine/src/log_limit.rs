//! A log line that may be written at most once a second, so that a remote client
//! cannot flood the log by repeating what gets it refused. The counters stay exact.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// At most one line a second; the lines held back are counted into the next one.
/// Single-threaded (one per shard, or one per accept loop).
#[derive(Debug, Default)]
pub struct LogLimit {
    last: Cell<Option<Instant>>,
    held_back: Cell<u64>,
}

impl LogLimit {
    /// `Some(lines held back since the last one)` when a line may be logged now.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        if self
            .last
            .get()
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.held_back.set(self.held_back.get() + 1);
            return None;
        }
        self.last.set(Some(now));
        Some(self.held_back.replace(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_and_the_next_counts_those_held_back() {
        let l = LogLimit::default();
        let t = Instant::now();
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t + Duration::from_millis(10)), None);
        assert_eq!(l.allow(t + Duration::from_millis(999)), None);
        assert_eq!(l.allow(t + Duration::from_millis(1000)), Some(2));
        assert_eq!(l.allow(t + Duration::from_millis(1001)), None);
    }
}
