//! A value the control thread replaces whole and the shards read lock-free.

use std::sync::Arc;

use arc_swap::ArcSwap;

/// The current version of a `T`, written by one thread, read by many: readers keep the
/// `Arc` they loaded (a snapshot, a certificate set) until they choose to look again.
#[derive(Debug, Default)]
pub struct Published<T> {
    current: ArcSwap<T>,
}

impl<T> Published<T> {
    /// A cell holding `initial`.
    pub fn new(initial: T) -> Self {
        Self {
            current: ArcSwap::from_pointee(initial),
        }
    }

    /// The current version.
    pub fn load(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// The current version if it is not `cached`. Costs one atomic load (and no write to
    /// shared memory) when nothing changed.
    pub fn newer(&self, cached: &Arc<T>) -> Option<Arc<T>> {
        let cur = self.current.load();
        (!Arc::ptr_eq(&cur, cached)).then(|| arc_swap::Guard::into_inner(cur))
    }

    /// Publishes `next`; readers that look afterwards see it.
    pub fn publish(&self, next: T) {
        self.current.store(Arc::new(next));
    }

    /// Publishes a version the caller keeps a reference to (the base of its next
    /// delta, say).
    pub fn publish_shared(&self, next: Arc<T>) {
        self.current.store(next);
    }

    /// Reads a field of the current version without taking a reference.
    pub fn peek<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.current.load())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_returns_only_a_version_the_reader_does_not_hold() {
        let cell = Published::new(1u32);
        let first = cell.load();
        assert!(cell.newer(&first).is_none());
        cell.publish(2);
        let second = cell.newer(&first).expect("a newer version");
        assert_eq!(*second, 2);
        assert!(cell.newer(&second).is_none());
        assert_eq!(*first, 1, "a reader keeps the version it loaded");
        let shared = Arc::new(3);
        cell.publish_shared(shared.clone());
        assert!(Arc::ptr_eq(&cell.load(), &shared));
        assert_eq!(cell.peek(|v| v + 1), 4);
    }
}
