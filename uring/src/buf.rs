//! The provided-buffer ring: one per runtime, one size class, shared by every
//! connection's multishot receive. A buffer belongs to the kernel until a completion
//! names it, then to exactly one [`BufRef`], which hands it back when dropped.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::task::Waker;

use io_uring::IoUring;

use crate::sys::{BufRingMem, IoBuf};

/// The buffer ring of one runtime.
pub(crate) struct BufRing {
    mem: BufRingMem,
    bgid: u16,
    entries: u16,
    size: u32,
    tail: Cell<u16>,
    out: Cell<u32>,
    waiters: RefCell<Vec<Waker>>,
    dry: Cell<u64>,
}

impl BufRing {
    /// Maps `entries` buffers of `buf_size` bytes, hands them all to the kernel and
    /// registers the ring as group `bgid`.
    pub(crate) fn new(ring: &IoUring, bgid: u16, entries: u16, buf_size: u32) -> io::Result<Self> {
        let mem = BufRingMem::new(entries, buf_size)?;
        for bid in 0..entries {
            mem.write_entry(bid, bid);
        }
        mem.publish_tail(entries);
        mem.register(ring, bgid)?;
        Ok(BufRing {
            mem,
            bgid,
            entries,
            size: buf_size,
            tail: Cell::new(entries),
            out: Cell::new(0),
            waiters: RefCell::new(Vec::new()),
            dry: Cell::new(0),
        })
    }

    pub(crate) fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Bytes per buffer.
    pub(crate) fn size(&self) -> u32 {
        self.size
    }

    /// Buffers the kernel can still fill.
    pub(crate) fn available(&self) -> u32 {
        u32::from(self.entries) - self.out.get()
    }

    /// Buffers held by the process (in completions not yet consumed, or in `BufRef`s).
    pub(crate) fn out(&self) -> u32 {
        self.out.get()
    }

    /// Times a receive found the ring empty.
    pub(crate) fn dry_count(&self) -> u64 {
        self.dry.get()
    }

    /// Notes that the kernel filled buffer `bid` (a completion named it).
    pub(crate) fn note_taken(&self) {
        self.out.set(self.out.get() + 1);
    }

    /// Counts a receive that found the ring empty (`ENOBUFS`).
    pub(crate) fn note_dry(&self) {
        self.dry.set(self.dry.get() + 1);
    }

    /// Parks `waker` until a buffer comes back.
    pub(crate) fn wait_for_buffer(&self, waker: &Waker) {
        let mut waiters = self.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
    }

    /// Hands buffer `bid` back to the kernel and wakes receivers waiting for one.
    pub(crate) fn recycle(&self, bid: u16) {
        let tail = self.tail.get();
        self.mem.write_entry(tail, bid);
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        self.mem.publish_tail(tail);
        self.out.set(self.out.get().saturating_sub(1));
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }

    fn bytes(&self, bid: u16, len: u32) -> &[u8] {
        self.mem.buf(bid, len)
    }
}

/// Received bytes in a buffer of the ring. Dropping it hands the buffer back.
pub struct BufRef {
    ring: Rc<BufRing>,
    bid: u16,
    len: u32,
}

impl BufRef {
    pub(crate) fn new(ring: Rc<BufRing>, bid: u16, len: u32) -> Self {
        BufRef { ring, bid, len }
    }

    /// The received bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.ring.bytes(self.bid, self.len)
    }
}

// SAFETY: the bytes live in the ring's mapping, which the `BufRef`'s `Rc` keeps alive and
// which never moves; the kernel does not write this buffer until the `BufRef` is dropped
// (its drop is what hands the buffer back). This impl sits here rather than in `sys`,
// beside the hand-back rule it rests on, so that `sys` names nothing above it.
unsafe impl IoBuf for BufRef {
    fn as_ptr(&self) -> *const u8 {
        self.as_slice().as_ptr()
    }
    fn len(&self) -> usize {
        self.as_slice().len()
    }
}

impl std::ops::Deref for BufRef {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for BufRef {
    fn drop(&mut self) {
        self.ring.recycle(self.bid);
    }
}

impl std::fmt::Debug for BufRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRef")
            .field("bid", &self.bid)
            .field("len", &self.len)
            .finish()
    }
}
