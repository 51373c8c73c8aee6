//! A single-threaded executor: a slab of boxed task futures and a run queue of keys.
//!
//! A waker is the task's key (executor id, slot, generation) carried in the waker's data
//! word (see `sys::waker_for`): cloning or dropping a waker touches no memory, so the
//! per-message path has no atomic read-modify-write, unlike `async-task`, whose wakers
//! hold an atomic reference count. A stale key (the task finished and its slot was reused)
//! costs at most a spurious poll, which futures must tolerate anyway. Where a wake goes is
//! decided above this module (`runtime::TaskWake`): to this thread's runtime, or from
//! another thread through the owning runtime's eventfd (see `remote`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Context;

use crate::sys::KeyWake;

type BoxFuture = Pin<Box<dyn Future<Output = ()>>>;

const SLOT_BITS: u32 = 24;
const GEN_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const GEN_MASK: u32 = (1 << GEN_BITS) - 1;

/// Packs an executor id, a task slot and its generation into a waker key.
pub(crate) fn key(exec: u16, slot: u32, generation: u32) -> u64 {
    (u64::from(exec) << (SLOT_BITS + GEN_BITS))
        | (u64::from(generation & GEN_MASK) << SLOT_BITS)
        | (u64::from(slot) & SLOT_MASK)
}

/// The executor id of a key.
pub(crate) fn key_exec(key: u64) -> u16 {
    (key >> (SLOT_BITS + GEN_BITS)) as u16
}

fn key_slot(key: u64) -> u32 {
    (key & SLOT_MASK) as u32
}

fn key_gen(key: u64) -> u32 {
    ((key >> SLOT_BITS) as u32) & GEN_MASK
}

struct Task {
    generation: u32,
    future: Option<BoxFuture>,
    /// In the run queue already: a second wake before the poll adds nothing.
    queued: bool,
    /// Being polled right now (its future is out of the slab).
    running: bool,
    /// Aborted while running: drop the future when the poll returns.
    aborted: bool,
    live: bool,
}

/// The task slab and its run queue.
pub(crate) struct Executor {
    id: u16,
    tasks: RefCell<Vec<Task>>,
    free: RefCell<Vec<u32>>,
    queue: RefCell<VecDeque<u64>>,
    live: Cell<usize>,
    polls: Cell<u64>,
}

impl Executor {
    pub(crate) fn new(id: u16) -> Self {
        Executor {
            id,
            tasks: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            queue: RefCell::new(VecDeque::new()),
            live: Cell::new(0),
            polls: Cell::new(0),
        }
    }

    pub(crate) fn id(&self) -> u16 {
        self.id
    }

    /// Number of tasks not yet finished.
    pub(crate) fn live(&self) -> usize {
        self.live.get()
    }

    /// Number of task polls so far.
    pub(crate) fn polls(&self) -> u64 {
        self.polls.get()
    }

    /// Whether a task is waiting to be polled.
    pub(crate) fn has_work(&self) -> bool {
        !self.queue.borrow().is_empty()
    }

    /// Adds a task and queues its first poll. Returns its key.
    pub(crate) fn spawn(&self, future: BoxFuture) -> u64 {
        let mut tasks = self.tasks.borrow_mut();
        let slot = match self.free.borrow_mut().pop() {
            Some(slot) => slot,
            None => {
                tasks.push(Task {
                    generation: 0,
                    future: None,
                    queued: false,
                    running: false,
                    aborted: false,
                    live: false,
                });
                (tasks.len() - 1) as u32
            }
        };
        let task = &mut tasks[slot as usize];
        task.future = Some(future);
        task.live = true;
        task.queued = true;
        task.aborted = false;
        let key = key(self.id, slot, task.generation);
        self.queue.borrow_mut().push_back(key);
        self.live.set(self.live.get() + 1);
        key
    }

    /// Queues the task named by `key` if it is still alive.
    pub(crate) fn schedule(&self, key: u64) {
        let mut tasks = self.tasks.borrow_mut();
        let Some(task) = tasks.get_mut(key_slot(key) as usize) else {
            return;
        };
        if !task.live || task.generation != key_gen(key) || task.queued {
            return;
        }
        task.queued = true;
        self.queue.borrow_mut().push_back(key);
    }

    /// Polls up to `budget` queued tasks, with wakers whose wakes `W` routes. Returns how
    /// many were polled.
    pub(crate) fn run<W: KeyWake>(&self, budget: usize) -> usize {
        let mut polled = 0;
        while polled < budget {
            let Some(key) = self.queue.borrow_mut().pop_front() else {
                break;
            };
            let slot = key_slot(key) as usize;
            let future = {
                let mut tasks = self.tasks.borrow_mut();
                let Some(task) = tasks.get_mut(slot) else {
                    continue;
                };
                if !task.live || task.generation != key_gen(key) {
                    continue;
                }
                task.queued = false;
                task.running = true;
                task.future.take()
            };
            let Some(mut future) = future else { continue };
            if self.tasks.borrow()[slot].aborted {
                // Aborted while queued: dropped unpolled, outside any borrow.
                drop(future);
                self.tasks.borrow_mut()[slot].running = false;
                self.release(slot);
                continue;
            }
            polled += 1;
            self.polls.set(self.polls.get() + 1);
            let waker = crate::sys::waker_for::<W>(key);
            let done = future
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready();
            let finished = {
                let mut tasks = self.tasks.borrow_mut();
                let task = &mut tasks[slot];
                task.running = false;
                if done || task.aborted {
                    true
                } else {
                    task.future = Some(future);
                    false
                }
            };
            if finished {
                // The future is dropped here, outside any borrow: its drop may wake or
                // spawn.
                self.release(slot);
            }
        }
        polled
    }

    fn release(&self, slot: usize) {
        let mut tasks = self.tasks.borrow_mut();
        let task = &mut tasks[slot];
        task.live = false;
        task.queued = false;
        task.aborted = false;
        task.generation = (task.generation + 1) & GEN_MASK;
        self.free.borrow_mut().push(slot as u32);
        self.live.set(self.live.get() - 1);
    }

    /// Stops the task named by `key`: its future is dropped (and its pending ops
    /// cancelled by their drops) on the executor's next run, never inside this call, so
    /// a caller may abort while it holds state the task's drop touches.
    pub(crate) fn abort(&self, key: u64) {
        let mut tasks = self.tasks.borrow_mut();
        let Some(task) = tasks.get_mut(key_slot(key) as usize) else {
            return;
        };
        if !task.live || task.generation != key_gen(key) {
            return;
        }
        task.aborted = true;
        if !task.running && !task.queued {
            task.queued = true;
            self.queue.borrow_mut().push_back(key);
        }
    }

    /// Drops every task, repeatedly, until none is left (a drop may spawn).
    pub(crate) fn drop_all(&self) {
        loop {
            let futures: Vec<BoxFuture> = {
                let mut tasks = self.tasks.borrow_mut();
                tasks.iter_mut().filter_map(|t| t.future.take()).collect()
            };
            if futures.is_empty() {
                break;
            }
            drop(futures);
        }
        let count = self.tasks.borrow().len();
        for slot in 0..count {
            if self.tasks.borrow()[slot].live {
                self.release(slot);
            }
        }
        self.queue.borrow_mut().clear();
    }
}
