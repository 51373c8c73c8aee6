//! Wake-ups from other threads. Each runtime registers an eventfd that its ring keeps a
//! read armed on; a waker used off its runtime's thread queues the task key here and
//! bumps the eventfd. This path takes a lock and is meant for control messages (a
//! snapshot published, a drain ordered), never for the data path, which stays on one
//! thread.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};

use crate::executor::key_exec;

/// The cross-thread inbox of one runtime.
pub(crate) struct Remote {
    id: u16,
    eventfd: OwnedFd,
    pending: Mutex<Vec<u64>>,
}

static REGISTRY: Mutex<Vec<Arc<Remote>>> = Mutex::new(Vec::new());
static NEXT_ID: Mutex<u16> = Mutex::new(1);

impl Remote {
    /// Registers a new inbox under an executor id no live runtime uses.
    pub(crate) fn register(eventfd: OwnedFd) -> Arc<Remote> {
        let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = NEXT_ID.lock().unwrap_or_else(PoisonError::into_inner);
        let mut id = *next;
        while id == 0 || registry.iter().any(|r| r.id == id) {
            id = id.wrapping_add(1);
        }
        *next = id.wrapping_add(1);
        let remote = Arc::new(Remote {
            id,
            eventfd,
            pending: Mutex::new(Vec::new()),
        });
        registry.push(remote.clone());
        remote
    }

    /// Removes this inbox: later foreign wakes for it are dropped.
    pub(crate) fn unregister(&self) {
        let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        registry.retain(|r| r.id != self.id);
    }

    pub(crate) fn id(&self) -> u16 {
        self.id
    }

    pub(crate) fn eventfd(&self) -> &OwnedFd {
        &self.eventfd
    }

    /// Takes the keys queued by other threads.
    pub(crate) fn drain(&self, into: &mut Vec<u64>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        into.append(&mut pending);
    }

    fn push(&self, key: u64) {
        let first = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.push(key);
            pending.len() == 1
        };
        if first {
            crate::sys::eventfd_signal(self.eventfd.as_raw_fd());
        }
    }
}

/// Wakes a task of a runtime on another thread (or of no live runtime: then nothing).
pub(crate) fn wake(key: u64) {
    let id = key_exec(key);
    let remote = {
        let registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        registry.iter().find(|r| r.id == id).cloned()
    };
    if let Some(remote) = remote {
        remote.push(key);
    }
}
