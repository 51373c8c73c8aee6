//! zpath's shard loop: one io_uring per thread, driven by a small single-threaded
//! executor, with socket operations as futures.
//!
//! Threading and ownership: a [`Runtime`] belongs to the thread that created it (it is
//! not `Send`), and so do every task, op and buffer it hands out. In steady state each
//! loop iteration makes one `io_uring_enter`, which submits everything queued and, when
//! no task is ready, waits for a completion; no timer is armed per iteration (a timeout
//! SQE exists only while a task waits on a deadline). Other threads reach a runtime only
//! by waking one of its tasks, which goes through an eventfd the ring keeps a read on.
//!
//! Receives are multishot into one provided-buffer ring per runtime of a single size
//! class (16 KiB by default): an idle connection owns no receive buffer, and a buffer is
//! held only from its completion until its bytes are sent on or copied out. A connection
//! may hold at most `recv_queue` buffers before its receive is cancelled until it
//! catches up, so one slow reader cannot empty the ring for everyone; when the ring does
//! run dry (`ENOBUFS`) the receive is re-armed when a buffer comes back, not before.
//!
//! What it must never do: free or reuse memory the kernel may still access. Every op
//! owns its buffers, addresses and timespecs until its final completion has been reaped;
//! a dropped op future cancels its SQE and leaves that memory with the runtime until
//! then, and a runtime that is dropped cancels and waits for every op first.
//!
//! Layering, bottom-up (no file names one above it): `sys` holds the raw syscalls and
//! every `unsafe` block; `buf` (the buffer ring) and `executor` (the task slab) sit on
//! it; `remote` (cross-thread wakes) on `executor`; `runtime` (ring, op table, loop,
//! where a wake goes, join handles) on all of them; the ops (`op`, `net`, `time`) on
//! `runtime`; `relay` and `compat` on the ops; `signal` (wakes from other threads, blocking work
//! on a thread) on nothing but the wakers it is given. The one `unsafe` item outside `sys` is
//! `IoBuf` for `BufRef`, in `buf` beside the hand-back rule that makes it sound.

mod buf;
pub mod compat;
mod executor;
mod net;
mod op;
pub mod relay;
mod remote;
mod runtime;
mod signal;
mod sys;
pub mod time;

pub use buf::BufRef;
pub use compat::IoStream;
pub use net::{ConnectOptions, Incoming, RecvStream, TcpListener, TcpStream};
pub use runtime::{spawn, spawn_local, stats, Config, JoinHandle, Runtime, Stats, MAX_IOV};
pub use signal::{unblock, Signal};
pub use sys::IoBuf;

/// Errors of the runtime itself (ops fail with `std::io::Error`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid runtime configuration: {0}")]
    Config(&'static str),
    /// The ring could not be created (kernel without io_uring, or io_uring disabled by
    /// `kernel.io_uring_disabled`, or `RLIMIT_MEMLOCK` too low on old kernels).
    #[error("cannot create the io_uring (is io_uring enabled on this kernel?): {0}")]
    Ring(#[source] std::io::Error),
    /// The provided-buffer ring could not be mapped or registered (needs Linux 5.19).
    #[error("cannot set up the provided-buffer ring (needs Linux 5.19 or later): {0}")]
    BufRing(#[source] std::io::Error),
    /// This thread already runs a runtime.
    #[error("this thread already has a zpath-uring runtime")]
    AlreadyRunning,
    /// An op was started on a thread without a runtime.
    #[error("not inside a zpath-uring runtime")]
    NoRuntime,
    /// An op was started while the runtime shuts down.
    #[error("the runtime is shutting down")]
    ShuttingDown,
}
