//! A shard-local notification: tasks of one shard wait for an event (a certificate set
//! was published) that the shard's message loop announces. Single-threaded (`Cell`,
//! `RefCell`); a waiter that gives up (timeout, cancellation) removes itself, so
//! nothing is left behind by connections that stopped waiting.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakes every task waiting on it.
#[derive(Debug, Default)]
pub struct LocalNotify {
    epoch: Cell<u64>,
    next_id: Cell<u64>,
    waiters: RefCell<Vec<(u64, Waker)>>,
}

impl LocalNotify {
    /// Wakes every current waiter; waits made from now on wait for the next call.
    pub fn notify_all(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        for (_, w) in self.waiters.take() {
            w.wake();
        }
    }

    /// A future that completes at the first [`LocalNotify::notify_all`] after this call
    /// (even one made before it is first polled), so a caller checks its condition
    /// after taking the wait and loses no notification.
    pub fn wait(&self) -> Wait<'_> {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        Wait {
            notify: self,
            epoch: self.epoch.get(),
            id,
        }
    }

    #[cfg(test)]
    /// Tasks waiting now.
    pub fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }

    fn forget(&self, id: u64) {
        self.waiters.borrow_mut().retain(|(i, _)| *i != id);
    }
}

/// See [`LocalNotify::wait`].
#[derive(Debug)]
pub struct Wait<'a> {
    notify: &'a LocalNotify,
    epoch: u64,
    id: u64,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let n = self.notify;
        if n.epoch.get() != self.epoch {
            return Poll::Ready(());
        }
        let mut waiters = n.waiters.borrow_mut();
        match waiters.iter_mut().find(|(i, _)| *i == self.id) {
            Some((_, w)) => w.clone_from(cx.waker()),
            None => waiters.push((self.id, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        self.notify.forget(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(w: &mut Wait<'_>) -> Poll<()> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(w).poll(&mut cx)
    }

    #[test]
    fn a_wait_completes_at_the_next_notification_even_one_before_its_first_poll() {
        let n = LocalNotify::default();
        let mut early = n.wait();
        n.notify_all();
        assert_eq!(poll(&mut early), Poll::Ready(()));
        let mut later = n.wait();
        assert_eq!(poll(&mut later), Poll::Pending);
        assert_eq!(poll(&mut later), Poll::Pending);
        assert_eq!(n.waiting(), 1, "polled twice, registered once");
        n.notify_all();
        assert_eq!(poll(&mut later), Poll::Ready(()));
    }

    #[test]
    fn a_wait_given_up_leaves_no_waker_behind() {
        let n = LocalNotify::default();
        for _ in 0..100 {
            let mut w = n.wait();
            assert_eq!(poll(&mut w), Poll::Pending);
        }
        assert_eq!(n.waiting(), 0);
    }
}
