//! The runtime of one thread: a ring, the op table, the buffer ring and the executor,
//! and the loop that drives them with one `io_uring_enter` per iteration.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::buf::BufRing;
use crate::executor::{self, Executor};
use crate::remote::Remote;
use crate::sys::{KeyVtable, KeyWake};

/// Most iovecs one vectored send carries.
pub const MAX_IOV: usize = 16;

/// `user_data` of SQEs whose completion nobody waits for (cancels, linked timeouts,
/// fire-and-forget closes).
const IGNORE: u64 = u64::MAX;
/// `user_data` of the eventfd read that carries cross-thread wakes.
const EVENTFD: u64 = u64::MAX - 1;
/// The executor slot that stands for `block_on`'s own future.
const MAIN_SLOT: u32 = (1 << 24) - 1;
/// Task polls per loop iteration before completions are reaped again.
const POLL_BUDGET: usize = 256;

/// Sizes of one runtime. Worst-case memory: `buf_entries * buf_size` for the buffer ring
/// plus about 64 bytes per SQ entry and 16 per CQ entry.
#[derive(Debug, Clone)]
pub struct Config {
    /// Submission queue entries (default 256).
    pub sq_entries: u32,
    /// Completion queue entries (default 4096; multishot ops post many).
    pub cq_entries: u32,
    /// Buffers in the large provided-buffer ring, a power of two up to 32768 (default 64).
    pub buf_entries: u16,
    /// Bytes per large provided buffer (default 64 KiB): what a connection receives into
    /// once its receives fill small buffers (bulk).
    pub buf_size: u32,
    /// Buffers in the small ring, a power of two up to 32768, or 0 for none (default
    /// 256). Every connection starts on it, so quiet ones touch only small buffers.
    pub small_entries: u16,
    /// Bytes per small buffer (default 2 KiB).
    pub small_size: u32,
    /// Completions a multishot receive may queue before it is cancelled until its reader
    /// catches up: how many buffers one connection can hold (default 8).
    pub recv_queue: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sq_entries: 256,
            cq_entries: 4096,
            buf_entries: 64,
            buf_size: 64 * 1024,
            small_entries: 256,
            small_size: 2 * 1024,
            recv_queue: 8,
        }
    }
}

impl Config {
    /// Checks the sizes the kernel and the buffer ring accept.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |what: &'static str| Err(crate::Error::Config(what));
        if !self.buf_entries.is_power_of_two() || self.buf_entries > 32768 {
            return bad("buf_entries must be a power of two of at most 32768");
        }
        if self.buf_size == 0 || self.buf_size > 1 << 20 {
            return bad("buf_size must be between 1 byte and 1 MiB");
        }
        if self.small_entries != 0
            && (!self.small_entries.is_power_of_two()
                || self.small_entries > 32768
                || self.small_size == 0
                || self.small_size >= self.buf_size)
        {
            return bad("small_entries must be 0 or a power of two of at most 32768, and small_size between 1 byte and buf_size");
        }
        if self.sq_entries < 8 || self.cq_entries < self.sq_entries {
            return bad("sq_entries must be at least 8 and cq_entries at least sq_entries");
        }
        if self.recv_queue == 0 {
            return bad("recv_queue must be at least 1");
        }
        Ok(())
    }
}

/// Counters of one runtime, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Loop iterations (each at most one `io_uring_enter`).
    pub iterations: u64,
    /// `io_uring_enter` calls made by the loop.
    pub enters: u64,
    /// Task polls.
    pub polls: u64,
    /// Ops whose final completion has not been reaped.
    pub ops_in_flight: usize,
    /// Provided buffers held by the process.
    pub buffers_out: u32,
    /// Receives that found the buffer ring empty (`ENOBUFS`).
    pub buffer_ring_dry: u64,
    /// Tasks not finished.
    pub tasks: usize,
}

/// One completion of an op.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub(crate) res: i32,
    pub(crate) flags: u32,
}

/// What a completion may carry that someone must release if its op was abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    /// Nothing but a result.
    Plain,
    /// A new descriptor per completion (multishot accept).
    Accept,
    /// A provided buffer per completion (multishot receive).
    Recv,
}

#[derive(PartialEq, Eq)]
enum SlotState {
    Free,
    /// An op future owns the slot.
    Owned,
    /// The future was dropped before the final completion; the slot keeps its
    /// resources until then.
    Orphaned,
}

/// Memory an op points the kernel at, inside a boxed slot that never moves.
pub(crate) struct Store {
    pub(crate) ts: types::Timespec,
    pub(crate) addr: Option<socket2::SockAddr>,
    pub(crate) iov: [libc::iovec; MAX_IOV],
    pub(crate) msg: libc::msghdr,
}

struct Slot {
    kind: OpKind,
    /// The buffer group a receive draws from (an index into `Core::rings`).
    group: u16,
    state: SlotState,
    cqes: VecDeque<Completion>,
    waker: Option<Waker>,
    finished: bool,
    cancel_sent: bool,
    keep: Option<Box<dyn Any>>,
    store: Store,
}

impl Slot {
    fn new() -> Box<Slot> {
        Box::new(Slot {
            kind: OpKind::Plain,
            group: 0,
            state: SlotState::Free,
            cqes: VecDeque::new(),
            waker: None,
            finished: false,
            cancel_sent: false,
            keep: None,
            store: Store {
                ts: types::Timespec::new(),
                addr: None,
                iov: [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_IOV],
                msg: crate::sys::empty_msghdr(),
            },
        })
    }
}

/// SQEs of one op: one, or one with a linked timeout.
pub(crate) enum Entries {
    One(squeue::Entry),
    Linked(squeue::Entry, squeue::Entry),
}

pub(crate) struct Core {
    ring: RefCell<IoUring>,
    // Boxed so that a slot's store keeps its address when the table grows: the kernel
    // holds pointers into it.
    #[allow(clippy::vec_box)]
    slots: RefCell<Vec<Box<Slot>>>,
    free: RefCell<Vec<u32>>,
    in_flight: Cell<usize>,
    pub(crate) exec: Executor,
    /// The provided-buffer rings, by buffer group id: the large one (0) and, when
    /// configured, the small one (1).
    pub(crate) rings: Vec<Rc<BufRing>>,
    remote: Arc<Remote>,
    eventfd_word: RefCell<Box<u64>>,
    eventfd_armed: Cell<bool>,
    main_woken: Cell<bool>,
    shutting_down: Cell<bool>,
    recv_queue: usize,
    iterations: Cell<u64>,
    enters: Cell<u64>,
    cqe_scratch: RefCell<Vec<(u64, i32, u32)>>,
    wake_scratch: RefCell<Vec<u64>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's runtime core, or fails when there is none.
pub(crate) fn with_core<R>(f: impl FnOnce(&Rc<Core>) -> R) -> io::Result<R> {
    let core = CURRENT.with(|c| c.borrow().clone());
    match core {
        Some(core) => Ok(f(&core)),
        None => Err(io::Error::other(crate::Error::NoRuntime)),
    }
}

/// Wakes `key` if it belongs to this thread's runtime. Returns false otherwise.
pub(crate) fn wake_local(key: u64) -> bool {
    CURRENT.with(|c| {
        let current = c.borrow();
        let Some(core) = current.as_ref() else {
            return false;
        };
        if executor::key_exec(key) != core.exec.id() {
            return false;
        }
        if (key & ((1 << 24) - 1)) as u32 == MAIN_SLOT {
            core.main_woken.set(true);
        } else {
            core.exec.schedule(key);
        }
        true
    })
}

/// Routes the wakes of task wakers: directly when the task's executor runs on this thread,
/// otherwise through that executor's eventfd.
pub(crate) struct TaskWake;

static TASK_WAKERS: KeyVtable = KeyVtable::new::<TaskWake>();

impl KeyWake for TaskWake {
    fn vtable() -> &'static KeyVtable {
        &TASK_WAKERS
    }

    fn wake(key: u64) {
        if !wake_local(key) {
            crate::remote::wake(key);
        }
    }
}

/// Drops the task named by `key` on this thread's runtime (see [`JoinHandle::abort`]).
fn abort(key: u64) {
    let _ = with_core(|core| core.exec.abort(key));
}

/// Spawns a task on this thread's runtime.
///
/// Fails only outside a runtime.
pub fn spawn<F>(future: F) -> io::Result<JoinHandle<F::Output>>
where
    F: Future + 'static,
    F::Output: 'static,
{
    with_core(|core| {
        let state = JoinState::new();
        let guard = CloseOnDrop(state.clone());
        let key = core.exec.spawn(Box::pin(async move {
            let guard = guard;
            let value = future.await;
            guard.0.finish(value);
        }));
        JoinHandle::new(key, state)
    })
}

/// Spawns a task on this thread's runtime, for callers that are always inside one.
/// Outside a runtime the future is dropped unrun and the handle reports the task
/// finished (awaiting it gives `None`); nothing panics.
pub fn spawn_local<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    spawn(future).unwrap_or_else(|_| {
        let state = JoinState::new();
        state.close();
        // Executor id 0 belongs to no runtime, so `abort` reaches nothing.
        JoinHandle::new(0, state)
    })
}

/// Counters of this thread's runtime.
pub fn stats() -> io::Result<Stats> {
    with_core(|core| core.stats())
}

impl Core {
    fn stats(&self) -> Stats {
        Stats {
            iterations: self.iterations.get(),
            enters: self.enters.get(),
            polls: self.exec.polls(),
            ops_in_flight: self.in_flight.get(),
            buffers_out: self.rings.iter().map(|r| r.out()).sum(),
            buffer_ring_dry: self.rings.iter().map(|r| r.dry_count()).sum(),
            tasks: self.exec.live(),
        }
    }

    /// Takes a slot, lets `build` point SQEs at its stable store, and queues them.
    pub(crate) fn submit(
        &self,
        kind: OpKind,
        build: impl FnOnce(&mut Store) -> Entries,
    ) -> io::Result<u32> {
        if self.shutting_down.get() {
            return Err(io::Error::other(crate::Error::ShuttingDown));
        }
        let id = self.free.borrow_mut().pop();
        let mut slots = self.slots.borrow_mut();
        let id = match id {
            Some(id) => id,
            None => {
                slots.push(Slot::new());
                (slots.len() - 1) as u32
            }
        };
        let slot = &mut slots[id as usize];
        slot.kind = kind;
        slot.group = 0;
        slot.state = SlotState::Owned;
        slot.finished = false;
        slot.cancel_sent = false;
        slot.waker = None;
        let entries = build(&mut slot.store);
        drop(slots);
        self.in_flight.set(self.in_flight.get() + 1);
        let pushed = match entries {
            Entries::One(e) => self.push(&[e.user_data(u64::from(id))]),
            Entries::Linked(e, t) => self.push(&[
                e.user_data(u64::from(id)).flags(squeue::Flags::IO_LINK),
                t.user_data(IGNORE),
            ]),
        };
        if let Err(e) = pushed {
            // Nothing reached the kernel: the slot is free again.
            self.free_slot(id);
            return Err(e);
        }
        Ok(id)
    }

    /// Records that receive `id` draws from buffer group `group`.
    pub(crate) fn set_group(&self, id: u32, group: u16) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(id as usize) {
            slot.group = group;
        }
    }

    fn ring_of(&self, group: u16) -> Option<&Rc<BufRing>> {
        self.rings.get(usize::from(group))
    }

    /// Queues SQEs, flushing the queue to the kernel first when it is full.
    fn push(&self, entries: &[squeue::Entry]) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        if crate::sys::push_entries(&mut ring, entries) {
            return Ok(());
        }
        self.enters.set(self.enters.get() + 1);
        ring.submit()?;
        if crate::sys::push_entries(&mut ring, entries) {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EBUSY))
        }
    }

    fn free_slot(&self, id: u32) {
        let keep = {
            let mut slots = self.slots.borrow_mut();
            let slot = &mut slots[id as usize];
            slot.state = SlotState::Free;
            slot.cqes.clear();
            slot.waker = None;
            slot.keep.take()
        };
        self.free.borrow_mut().push(id);
        self.in_flight.set(self.in_flight.get() - 1);
        // Dropped outside the borrow: the kept resources may own anything.
        drop(keep);
    }

    /// Takes the next completion of op `id`, or parks `cx`'s waker. `Ready(None)`: the op
    /// has ended and every completion was taken.
    pub(crate) fn poll_cqe(&self, id: u32, cx: &mut Context<'_>) -> Poll<Option<Completion>> {
        let mut slots = self.slots.borrow_mut();
        let slot = &mut slots[id as usize];
        if let Some(c) = slot.cqes.pop_front() {
            return Poll::Ready(Some(c));
        }
        if slot.finished {
            return Poll::Ready(None);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The op future gives up slot `id`: freed now if the op has ended, else cancelled
    /// and kept (with `keep`, the memory the kernel may still touch) until its final
    /// completion. Completions nobody will read are released (descriptors closed,
    /// buffers handed back).
    pub(crate) fn release(&self, id: u32, keep: Option<Box<dyn Any>>) {
        let (kind, group, leftovers, finished) = {
            let mut slots = self.slots.borrow_mut();
            let slot = &mut slots[id as usize];
            let leftovers: Vec<Completion> = if slot.cqes.is_empty() {
                Vec::new()
            } else {
                slot.cqes.drain(..).collect()
            };
            (slot.kind, slot.group, leftovers, slot.finished)
        };
        for c in leftovers {
            // Their buffers were counted as taken when they were dispatched.
            self.discard(kind, group, c, true);
        }
        if finished {
            drop(keep);
            self.free_slot(id);
            return;
        }
        {
            let mut slots = self.slots.borrow_mut();
            let slot = &mut slots[id as usize];
            slot.state = SlotState::Orphaned;
            slot.waker = None;
            slot.keep = keep;
        }
        self.cancel(id);
    }

    /// Asks the kernel to cancel op `id` (once).
    pub(crate) fn cancel(&self, id: u32) {
        {
            let mut slots = self.slots.borrow_mut();
            let slot = &mut slots[id as usize];
            if slot.cancel_sent || slot.finished {
                return;
            }
            slot.cancel_sent = true;
        }
        let entry = opcode::AsyncCancel::new(u64::from(id))
            .build()
            .user_data(IGNORE);
        // A full queue is flushed by `push`; if even that fails the op simply runs to its
        // natural end, and its slot still keeps the memory until then.
        let _ = self.push(&[entry]);
    }

    /// Queues a close of `fd` that nobody waits for.
    pub(crate) fn close_later(&self, fd: std::os::fd::OwnedFd) {
        use std::os::fd::IntoRawFd;
        if self.shutting_down.get() {
            return;
        }
        let raw = fd.into_raw_fd();
        let entry = opcode::Close::new(types::Fd(raw)).build().user_data(IGNORE);
        if self.push(&[entry]).is_err() {
            drop(crate::sys::owned_fd(raw));
        }
    }

    /// Releases what a completion nobody will read carries. `counted`: its buffer was
    /// already counted as taken (it went through `dispatch` to a live op).
    fn discard(&self, kind: OpKind, group: u16, c: Completion, counted: bool) {
        if let (Some(bid), Some(ring)) = (cqueue::buffer_select(c.flags), self.ring_of(group)) {
            if !counted {
                ring.note_taken();
            }
            ring.recycle(bid);
        }
        if kind == OpKind::Accept && c.res >= 0 {
            drop(crate::sys::owned_fd(c.res));
        }
    }

    fn arm_eventfd(&self) -> io::Result<()> {
        if self.eventfd_armed.get() || self.shutting_down.get() {
            return Ok(());
        }
        let ptr: *mut u64 = &mut **self.eventfd_word.borrow_mut();
        let fd = self.remote.eventfd().as_raw_fd();
        let entry = opcode::Read::new(types::Fd(fd), ptr.cast(), 8)
            .build()
            .user_data(EVENTFD);
        self.push(&[entry])?;
        self.eventfd_armed.set(true);
        Ok(())
    }

    /// Moves the ring's completions to their ops and wakes their tasks.
    fn reap(&self) -> io::Result<()> {
        let mut batch = std::mem::take(&mut *self.cqe_scratch.borrow_mut());
        {
            let mut ring = self.ring.borrow_mut();
            batch.extend(
                ring.completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
        }
        for &(user_data, res, flags) in &batch {
            match user_data {
                IGNORE => {}
                EVENTFD => self.on_eventfd(res)?,
                id => self.dispatch(id as u32, Completion { res, flags }),
            }
        }
        batch.clear();
        *self.cqe_scratch.borrow_mut() = batch;
        Ok(())
    }

    fn on_eventfd(&self, res: i32) -> io::Result<()> {
        self.eventfd_armed.set(false);
        if res < 0 && res != -libc::EINTR && res != -libc::EAGAIN && !self.shutting_down.get() {
            // Re-arming a read that fails would spin; without it wakes from other
            // threads would be lost, so the loop stops with the reason.
            return Err(io::Error::other(format!(
                "reading the runtime's eventfd failed: {}",
                io::Error::from_raw_os_error(-res)
            )));
        }
        let mut keys = std::mem::take(&mut *self.wake_scratch.borrow_mut());
        self.remote.drain(&mut keys);
        for key in keys.drain(..) {
            wake_local(key);
        }
        *self.wake_scratch.borrow_mut() = keys;
        self.arm_eventfd()
    }

    fn dispatch(&self, id: u32, c: Completion) {
        let more = cqueue::more(c.flags);
        let (state, kind, group) = {
            let slots = self.slots.borrow();
            match slots.get(id as usize) {
                Some(slot) => (
                    match slot.state {
                        SlotState::Free => return,
                        SlotState::Owned => SlotState::Owned,
                        SlotState::Orphaned => SlotState::Orphaned,
                    },
                    slot.kind,
                    slot.group,
                ),
                None => return,
            }
        };
        if state == SlotState::Orphaned {
            self.discard(kind, group, c, false);
            if !more {
                self.free_slot(id);
            }
            return;
        }
        if cqueue::buffer_select(c.flags).is_some() {
            if let Some(ring) = self.ring_of(group) {
                ring.note_taken();
            }
        }
        let (waker, over_cap) = {
            let mut slots = self.slots.borrow_mut();
            let slot = &mut slots[id as usize];
            slot.cqes.push_back(c);
            if !more {
                slot.finished = true;
            }
            let over_cap = kind == OpKind::Recv
                && !slot.finished
                && !slot.cancel_sent
                && slot.cqes.len() >= self.recv_queue;
            (slot.waker.clone(), over_cap)
        };
        if over_cap {
            // The reader is behind: stop filling buffers for it; it re-arms once it
            // has consumed what it holds (the data waits in the socket meanwhile).
            self.cancel(id);
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// One loop iteration's syscall: submit what is queued and, when no task is ready,
    /// wait for at least one completion.
    fn enter(&self, wait: bool) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        if !wait && ring.submission().is_empty() && !ring.submission().taskrun() {
            return Ok(());
        }
        self.enters.set(self.enters.get() + 1);
        match ring.submit_and_wait(usize::from(wait)) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Waits (bounded) for the final completion of every op after cancelling them all.
    fn drain(&self, bound: Duration) -> bool {
        let cancel_all = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(IGNORE);
        let _ = self.push(&[cancel_all]);
        let deadline = std::time::Instant::now() + bound;
        while self.in_flight.get() > 0 || self.eventfd_armed.get() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            let ts = types::Timespec::from(Duration::from_millis(10));
            let args = types::SubmitArgs::new().timespec(&ts);
            self.enters.set(self.enters.get() + 1);
            let _ = self
                .ring
                .borrow_mut()
                .submitter()
                .submit_with_args(1, &args);
            if self.reap().is_err() {
                self.eventfd_armed.set(false);
            }
        }
        true
    }
}

/// A runtime bound to the thread that created it. Not `Send`: everything it runs stays
/// on this thread.
pub struct Runtime {
    core: Rc<Core>,
}

impl Runtime {
    /// Creates the ring, registers the buffer ring and the eventfd, and makes this the
    /// thread's runtime. Fails if the thread already has one.
    pub fn new(config: Config) -> Result<Runtime, crate::Error> {
        config.validate()?;
        if CURRENT.with(|c| c.borrow().is_some()) {
            return Err(crate::Error::AlreadyRunning);
        }
        let ring = IoUring::builder()
            .setup_cqsize(config.cq_entries)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_coop_taskrun()
            .build(config.sq_entries)
            .map_err(crate::Error::Ring)?;
        let mut rings = vec![Rc::new(
            BufRing::new(&ring, 0, config.buf_entries, config.buf_size)
                .map_err(crate::Error::BufRing)?,
        )];
        if config.small_entries > 0 {
            rings.push(Rc::new(
                BufRing::new(&ring, 1, config.small_entries, config.small_size)
                    .map_err(crate::Error::BufRing)?,
            ));
        }
        let remote = Remote::register(crate::sys::eventfd().map_err(crate::Error::Ring)?);
        let core = Rc::new(Core {
            ring: RefCell::new(ring),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            in_flight: Cell::new(0),
            exec: Executor::new(remote.id()),
            rings,
            remote,
            eventfd_word: RefCell::new(Box::new(0)),
            eventfd_armed: Cell::new(false),
            main_woken: Cell::new(true),
            shutting_down: Cell::new(false),
            recv_queue: config.recv_queue,
            iterations: Cell::new(0),
            enters: Cell::new(0),
            cqe_scratch: RefCell::new(Vec::with_capacity(256)),
            wake_scratch: RefCell::new(Vec::new()),
        });
        if let Err(e) = core.arm_eventfd() {
            core.remote.unregister();
            return Err(crate::Error::Ring(e));
        }
        CURRENT.with(|c| *c.borrow_mut() = Some(core.clone()));
        Ok(Runtime { core })
    }

    /// Runs `future` to completion, together with every spawned task, on this thread.
    pub fn block_on<F: Future>(&self, future: F) -> io::Result<F::Output> {
        let core = &self.core;
        let mut future = pin!(future);
        let waker = crate::sys::waker_for::<TaskWake>(executor::key(core.exec.id(), MAIN_SLOT, 0));
        let mut cx = Context::from_waker(&waker);
        core.main_woken.set(true);
        loop {
            if core.main_woken.replace(false) {
                if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                    return Ok(out);
                }
            }
            core.exec.run::<TaskWake>(POLL_BUDGET);
            let ready = core.main_woken.get() || core.exec.has_work();
            core.enter(!ready)?;
            core.iterations.set(core.iterations.get() + 1);
            core.reap()?;
        }
    }

    /// Spawns a task (see [`spawn`]).
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let state = JoinState::new();
        let guard = CloseOnDrop(state.clone());
        let key = self.core.exec.spawn(Box::pin(async move {
            let guard = guard;
            let value = future.await;
            guard.0.finish(value);
        }));
        JoinHandle::new(key, state)
    }

    /// Counters of this runtime.
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let core = &self.core;
        // Dropping the tasks drops their op futures, which hand their memory to the
        // slots and queue cancels.
        core.exec.drop_all();
        core.shutting_down.set(true);
        let drained = core.drain(Duration::from_secs(2));
        core.remote.unregister();
        CURRENT.with(|c| *c.borrow_mut() = None);
        if !drained {
            // Some op never completed: the kernel may still write its memory, so the
            // slots and buffers are leaked rather than freed.
            std::mem::forget(self.core.clone());
        }
    }
}

/// The result side of a spawned task. Awaiting it gives the task's output, or `None`
/// when the task was aborted or its runtime shut down. Dropping it detaches the task.
pub struct JoinHandle<T> {
    key: u64,
    state: Rc<JoinState<T>>,
}

/// What a task shares with its [`JoinHandle`]: the output, and who waits for it.
struct JoinState<T> {
    result: RefCell<Option<T>>,
    waiter: RefCell<Option<Waker>>,
    done: Cell<bool>,
}

impl<T> JoinState<T> {
    fn new() -> Rc<Self> {
        Rc::new(JoinState {
            result: RefCell::new(None),
            waiter: RefCell::new(None),
            done: Cell::new(false),
        })
    }

    fn finish(&self, value: T) {
        *self.result.borrow_mut() = Some(value);
        self.close();
    }

    fn close(&self) {
        self.done.set(true);
        if let Some(waker) = self.waiter.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// Marks the join state done when the task's future is dropped without finishing.
struct CloseOnDrop<T>(Rc<JoinState<T>>);

impl<T> Drop for CloseOnDrop<T> {
    fn drop(&mut self) {
        if !self.0.done.get() {
            self.0.close();
        }
    }
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle")
            .field("key", &self.key)
            .field("finished", &self.state.done.get())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    fn new(key: u64, state: Rc<JoinState<T>>) -> Self {
        JoinHandle { key, state }
    }

    /// Stops the task: its future is dropped, which cancels the ops it has in flight.
    pub fn abort(&self) {
        abort(self.key);
    }

    /// Whether the task has finished (or was aborted).
    pub fn is_finished(&self) -> bool {
        self.state.done.get()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if self.state.done.get() {
            return Poll::Ready(self.state.result.borrow_mut().take());
        }
        let mut waiter = self.state.waiter.borrow_mut();
        match waiter.as_ref() {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waiter = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}
