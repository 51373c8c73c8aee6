//! Every `unsafe` block of the crate, behind safe functions and types. Each states the
//! invariant that makes it sound.
//!
//! The one rule all of them serve: memory the kernel may read or write for an
//! in-flight operation (send buffers, iovecs, socket addresses, timespecs, the
//! provided-buffer ring and its buffers) stays allocated and unaliased by Rust
//! writes until that operation's last completion has been reaped.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::{RawWaker, RawWakerVTable, Waker};

use io_uring::{squeue, types::BufRingEntry, IoUring};

/// A buffer whose bytes stay at the same address while the value lives, even when the
/// value itself is moved (heap memory). Ops hand `as_ptr()` to the kernel and keep the
/// value until the completion arrives.
///
/// # Safety
/// `as_ptr()..as_ptr() + len()` must be readable for as long as the value is alive,
/// must not move when the value moves, and must not be written through `&self`.
pub unsafe trait IoBuf: 'static {
    /// Start of the bytes.
    fn as_ptr(&self) -> *const u8;
    /// Number of bytes.
    fn len(&self) -> usize;
    /// Whether there are no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// SAFETY: a Vec's heap buffer does not move when the Vec moves; `&self` cannot resize it.
unsafe impl IoBuf for Vec<u8> {
    fn as_ptr(&self) -> *const u8 {
        <[u8]>::as_ptr(self)
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

// SAFETY: as for Vec; a boxed slice never reallocates.
unsafe impl IoBuf for Box<[u8]> {
    fn as_ptr(&self) -> *const u8 {
        <[u8]>::as_ptr(self)
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

// SAFETY: `Bytes` points at immutable shared heap (or static) memory kept alive by its
// reference count, independent of where the handle lives.
unsafe impl IoBuf for bytes::Bytes {
    fn as_ptr(&self) -> *const u8 {
        <[u8]>::as_ptr(self)
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

// SAFETY: static memory lives forever and is immutable.
unsafe impl IoBuf for &'static [u8] {
    fn as_ptr(&self) -> *const u8 {
        <[u8]>::as_ptr(self)
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

/// Pushes one SQE (or a linked pair). Returns false when the queue has no room for all.
///
/// Callers (the driver only) guarantee that every pointer in the entries stays valid
/// until the entry's final completion: op resources live in the op's boxed slot or in
/// the op future, and a dropped future moves them into the slot (see `driver`).
pub(crate) fn push_entries(ring: &mut IoUring, entries: &[squeue::Entry]) -> bool {
    let mut sq = ring.submission();
    if sq.capacity() - sq.len() < entries.len() {
        return false;
    }
    // SAFETY: room was checked above; pointer validity is the caller's invariant above.
    unsafe { sq.push_multiple(entries).is_ok() }
}

/// Turns a descriptor number the kernel just returned to us (accept's result) into an
/// owned descriptor.
pub(crate) fn owned_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel created `fd` for this process and nothing else refers to it; the
    // completion that carried it is consumed exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A zeroed `msghdr` (the libc struct may carry private padding fields).
pub(crate) fn empty_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain old data; all-zero is a valid (empty) value.
    unsafe { std::mem::zeroed() }
}

/// A new close-on-exec eventfd. Blocking on purpose: io_uring may complete a read of
/// an `O_NONBLOCK` file at once with `EAGAIN` instead of waiting, and a write only blocks
/// when the counter would overflow (never: each wake adds one, each read empties it).
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a fresh descriptor we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned_fd(fd))
}

/// Adds one to an eventfd's counter (wakes a ring reading it).
pub(crate) fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local; `fd` is an eventfd kept open by its owner
    // for as long as it is registered. A full counter (EAGAIN) already means "wake".
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Where the wakes of key wakers go. Implemented above `sys` by the code that knows which
/// runtime owns a key, so that the raw waker here names nothing above it.
pub(crate) trait KeyWake: 'static {
    /// The vtable of these wakers: a `static` holding `KeyVtable::new::<Self>()`, so that
    /// every clone carries one vtable address (`Waker::will_wake` compares it).
    fn vtable() -> &'static KeyVtable;
    /// Wakes the task named by `key`, from any thread.
    fn wake(key: u64);
}

/// A waker vtable whose functions never dereference the data word (see [`waker_for`]).
pub(crate) struct KeyVtable(RawWakerVTable);

impl KeyVtable {
    /// The vtable of wakers whose wakes `W` routes.
    pub(crate) const fn new<W: KeyWake>() -> Self {
        KeyVtable(RawWakerVTable::new(
            raw_waker::<W>,
            wake_by_key::<W>,
            wake_by_key::<W>,
            |_| {},
        ))
    }
}

/// Builds a waker whose data word is `key` itself: clone and drop touch no memory, so
/// the waker needs no reference count (and no atomic). `W` routes its wakes.
pub(crate) fn waker_for<W: KeyWake>(key: u64) -> Waker {
    // SAFETY: the functions of a `KeyVtable` (only `KeyVtable::new` makes one) never
    // dereference the data pointer; it is an integer carried in pointer form, valid on
    // any thread.
    unsafe { Waker::from_raw(raw_waker::<W>(key as usize as *const ())) }
}

fn raw_waker<W: KeyWake>(data: *const ()) -> RawWaker {
    RawWaker::new(data, &W::vtable().0)
}

fn wake_by_key<W: KeyWake>(data: *const ()) {
    W::wake(data as usize as u64);
}

/// Memory of one provided-buffer ring: the entry ring the kernel reads and the buffers
/// it fills, both from anonymous mappings that never move.
pub(crate) struct BufRingMem {
    ring: NonNull<BufRingEntry>,
    ring_bytes: usize,
    arena: NonNull<u8>,
    arena_bytes: usize,
    entries: u16,
    buf_size: u32,
}

impl BufRingMem {
    /// Maps `entries` (a power of two, at most 32768) entries and as many buffers of
    /// `buf_size` bytes.
    pub(crate) fn new(entries: u16, buf_size: u32) -> io::Result<Self> {
        let ring_bytes = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        let arena_bytes = usize::from(entries) * buf_size as usize;
        let ring = map_anon(ring_bytes)?;
        let arena = match map_anon(arena_bytes) {
            Ok(a) => a,
            Err(e) => {
                unmap(ring, ring_bytes);
                return Err(e);
            }
        };
        Ok(BufRingMem {
            ring: ring.cast(),
            ring_bytes,
            arena,
            arena_bytes,
            entries,
            buf_size,
        })
    }

    /// Registers the ring with `ring` as buffer group `bgid`.
    ///
    /// The owner must unregister it (or close the ring) before dropping `self`.
    pub(crate) fn register(&self, ring: &IoUring, bgid: u16) -> io::Result<()> {
        // SAFETY: the mapping is page aligned, `entries` long, and outlives the
        // registration (the owner's invariant above).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                self.entries,
                bgid,
                0,
            )
        }
    }

    /// Writes ring slot `slot` to hand buffer `bid` to the kernel. Not visible to the
    /// kernel until [`publish_tail`](Self::publish_tail).
    pub(crate) fn write_entry(&self, slot: u16, bid: u16) {
        let index = usize::from(slot & (self.entries - 1));
        // SAFETY: `index` < entries, inside the mapping. The kernel only reads slots
        // between its head and our published tail, and we only write the slot at our
        // unpublished tail, which it does not read. `bid` < entries (checked by callers
        // through `buf_ptr`'s bound), so the address is inside the arena.
        unsafe {
            let entry = &mut *self.ring.as_ptr().add(index);
            entry.set_addr(self.buf_ptr(bid) as u64);
            entry.set_len(self.buf_size);
            entry.set_bid(bid);
        }
    }

    /// Makes slots up to `tail` visible to the kernel.
    pub(crate) fn publish_tail(&self, tail: u16) {
        // SAFETY: the tail field is the `resv` u16 of the first entry, naturally aligned
        // for u16; the kernel reads it with acquire semantics. A release store orders our
        // entry writes before it (a plain store on x86, no read-modify-write).
        unsafe {
            let tail_ptr = BufRingEntry::tail(self.ring.as_ptr()) as *mut u16;
            AtomicU16::from_ptr(tail_ptr).store(tail, Ordering::Release);
        }
    }

    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        let bid = usize::from(bid % self.entries);
        // SAFETY: bid < entries, so the offset is inside the arena mapping.
        unsafe { self.arena.as_ptr().add(bid * self.buf_size as usize) }
    }

    /// The first `len` bytes of buffer `bid`.
    ///
    /// Callers hold the only handle to a buffer the kernel has completed into and that
    /// has not been handed back to the ring, so nothing writes it meanwhile.
    pub(crate) fn buf(&self, bid: u16, len: u32) -> &[u8] {
        let len = len.min(self.buf_size) as usize;
        // SAFETY: in bounds (buf_ptr, len clamped); not written while the handle lives
        // (the caller's invariant above).
        unsafe { std::slice::from_raw_parts(self.buf_ptr(bid), len) }
    }
}

impl Drop for BufRingMem {
    fn drop(&mut self) {
        unmap(self.ring.cast(), self.ring_bytes);
        unmap(self.arena, self.arena_bytes);
    }
}

fn map_anon(bytes: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at an address the kernel picks.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes.max(1),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

fn unmap(ptr: NonNull<u8>, bytes: usize) {
    // SAFETY: `ptr`/`bytes` describe a mapping made by `map_anon` and unmapped once.
    unsafe {
        libc::munmap(ptr.as_ptr().cast(), bytes.max(1));
    }
}
