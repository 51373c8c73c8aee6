//! DATA payloads that count themselves while h2 holds them.
//!
//! h2 bounds what a stream queues in bytes, not in payloads: a peer that opens a huge
//! window and never reads lets a stream of 1-byte reads queue millions of entries,
//! each with its own bookkeeping and each keeping its buffer alive. Every payload the
//! relay hands h2 is counted in its stream's [`InFlight`] until h2 drops it (written,
//! or discarded with the stream), and the relay stops reading while the count is at
//! its limit.

use std::cell::Cell;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};

/// One DATA payload handed to h2: its bytes and, while h2 holds it, a place in its
/// stream's [`InFlight`] count.
pub struct Payload {
    bytes: Bytes,
    _held: Option<Held>,
}

impl Payload {
    /// A payload no stream counts (an empty END_STREAM, a test's request body).
    pub fn new(bytes: Bytes) -> Self {
        Self { bytes, _held: None }
    }

    /// A payload counted in `in_flight` until h2 drops it.
    pub fn counted(bytes: Bytes, in_flight: &Rc<InFlight>) -> Self {
        in_flight.held.set(in_flight.held.get() + 1);
        Self {
            bytes,
            _held: Some(Held(in_flight.clone())),
        }
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Self::new(bytes)
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload")
            .field("len", &self.bytes.len())
            .field("counted", &self._held.is_some())
            .finish()
    }
}

impl Buf for Payload {
    fn remaining(&self) -> usize {
        self.bytes.remaining()
    }

    fn chunk(&self) -> &[u8] {
        self.bytes.chunk()
    }

    fn advance(&mut self, cnt: usize) {
        self.bytes.advance(cnt);
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        self.bytes.chunks_vectored(dst)
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        self.bytes.copy_to_bytes(len)
    }
}

/// The payloads of one stream that h2 still holds (queued, or being written).
pub struct InFlight {
    held: Cell<usize>,
    limit: usize,
    waiting: Cell<Option<Waker>>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("held", &self.held.get())
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl InFlight {
    /// A count that makes [`InFlight::poll_room`] wait at `limit` held payloads.
    pub fn new(limit: usize) -> Rc<Self> {
        Rc::new(Self {
            held: Cell::new(0),
            limit: limit.max(1),
            waiting: Cell::new(None),
        })
    }

    /// Payloads h2 holds now.
    pub fn held(&self) -> usize {
        self.held.get()
    }

    /// Ready while fewer than the limit are held; otherwise wakes the caller when h2
    /// drops one.
    pub fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.held.get() < self.limit {
            return Poll::Ready(());
        }
        self.waiting.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

/// A payload's place in its stream's count, given back on drop.
struct Held(Rc<InFlight>);

impl Drop for Held {
    fn drop(&mut self) {
        let count = &self.0;
        let held = count.held.get() - 1;
        count.held.set(held);
        if held < count.limit {
            if let Some(waker) = count.waiting.take() {
                waker.wake();
            }
        }
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
    fn the_limit_makes_the_caller_wait_and_a_drop_wakes_it() {
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let in_flight = InFlight::new(2);
        let a = Payload::counted(Bytes::from_static(b"a"), &in_flight);
        assert!(in_flight.poll_room(&mut cx).is_ready());
        let b = Payload::counted(Bytes::from_static(b"b"), &in_flight);
        assert_eq!(in_flight.held(), 2);
        assert!(in_flight.poll_room(&mut cx).is_pending());
        drop(a);
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
        assert!(in_flight.poll_room(&mut cx).is_ready());
        drop(b);
        assert_eq!(in_flight.held(), 0);
        // Nobody waited since: no spurious wake.
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
        // An uncounted payload changes nothing.
        let _c = Payload::new(Bytes::from_static(b"c"));
        assert_eq!(in_flight.held(), 0);
    }

    #[test]
    fn a_payload_reads_like_its_bytes() {
        let in_flight = InFlight::new(4);
        let mut p = Payload::counted(Bytes::from_static(b"hello world"), &in_flight);
        assert_eq!(p.remaining(), 11);
        p.advance(6);
        assert_eq!(p.chunk(), b"world");
        assert_eq!(p.copy_to_bytes(3), Bytes::from_static(b"wor"));
        assert_eq!(p.remaining(), 2);
        assert_eq!(in_flight.held(), 1);
        drop(p);
        assert_eq!(in_flight.held(), 0);
    }
}
