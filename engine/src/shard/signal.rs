//! A shard-local flag: one side raises it, one task waits for it. Used to tell a
//! connection's task to stop from elsewhere on the shard (drain, eviction of a pending
//! handshake, a keepalive that went unanswered) without a lock or an atomic.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A flag raised once; the task polling it is woken when it is.
#[derive(Default)]
pub struct Flag {
    raised: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl std::fmt::Debug for Flag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flag")
            .field("raised", &self.raised.get())
            .finish_non_exhaustive()
    }
}

impl Flag {
    /// Raises the flag and wakes the task waiting for it (if any).
    pub fn raise(&self) {
        if !self.raised.replace(true) {
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }

    #[cfg(test)]
    /// Whether the flag was raised.
    pub fn is_raised(&self) -> bool {
        self.raised.get()
    }

    /// Ready once the flag is raised; else remembers `cx`'s waker (one waiter: the last
    /// task to poll is the one woken).
    pub fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.raised.get() {
            return Poll::Ready(());
        }
        let waker = match self.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        self.waker.set(Some(waker));
        Poll::Pending
    }

    /// Waits until the flag is raised.
    pub async fn raised(&self) {
        futures_lite::future::poll_fn(|cx| self.poll_raised(cx)).await
    }
}

/// Flags raised together (a shard's drain reaching every connection it serves): each
/// member holds its own; one raised after [`FlagSet::raise_all`] is raised at once.
#[derive(Debug, Default)]
pub struct FlagSet {
    raised: Cell<bool>,
    next: Cell<u64>,
    members: RefCell<HashMap<u64, Rc<Flag>>>,
}

impl FlagSet {
    /// A new member; it leaves the set when dropped.
    pub fn join(self: &Rc<Self>) -> Member {
        let id = self.next.get();
        self.next.set(id + 1);
        let flag = Rc::new(Flag::default());
        if self.raised.get() {
            flag.raise();
        }
        self.members.borrow_mut().insert(id, flag.clone());
        Member {
            set: self.clone(),
            id,
            flag,
        }
    }

    /// Raises every member's flag, and those of members yet to join.
    pub fn raise_all(&self) {
        self.raised.set(true);
        // Raising wakes tasks, which run later: no member leaves meanwhile.
        for f in self.members.borrow().values() {
            f.raise();
        }
    }

    #[cfg(test)]
    /// Members now.
    pub fn len(&self) -> usize {
        self.members.borrow().len()
    }

    /// Whether the set has no member.
    pub fn is_empty(&self) -> bool {
        self.members.borrow().is_empty()
    }
}

/// A member of a [`FlagSet`].
#[derive(Debug)]
pub struct Member {
    set: Rc<FlagSet>,
    id: u64,
    /// Raised with the set.
    pub flag: Rc<Flag>,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.set.members.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn raising_wakes_the_waiting_task_once() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let flag = Flag::default();
        assert!(flag.poll_raised(&mut cx).is_pending());
        assert!(flag.poll_raised(&mut cx).is_pending());
        flag.raise();
        flag.raise();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(flag.poll_raised(&mut cx).is_ready());
        assert!(flag.is_raised());
    }

    #[test]
    fn a_set_raises_its_members_and_later_ones() {
        let set = Rc::new(FlagSet::default());
        let a = set.join();
        let b = set.join();
        drop(b);
        assert_eq!(set.len(), 1);
        set.raise_all();
        assert!(a.flag.is_raised());
        let late = set.join();
        assert!(late.flag.is_raised());
        drop((a, late));
        assert!(set.is_empty());
    }
}
