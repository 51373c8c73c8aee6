//! What must be undone if the run ends early: a registry of live processes and
//! namespaces, emptied by the guards that own them, and drained by a signal thread on
//! Ctrl-C.
//!
//! Guards remove their entry and undo the thing themselves on drop (normal end, error,
//! panic). If a stop signal arrives first, the signal thread undoes every registered
//! entry, newest first, and exits the process with status 130.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::{sys, Error, Result};

/// Something the harness created that must not outlive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A process started by the harness (killed with SIGKILL).
    Process(u32),
    /// A named network namespace (deleted with `ip netns del`, which also removes its
    /// interfaces and iptables rules).
    Netns(String),
}

/// The live resources, and whether a stop signal has arrived (after which nothing new
/// may be created).
struct Registry {
    stopping: bool,
    entries: Vec<(u64, Resource)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    stopping: false,
    entries: Vec::new(),
});
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A registration; dropping it forgets the entry (the owner undoes the resource).
#[derive(Debug)]
pub struct Registration(u64);

/// Creates a resource with `make` and records it, atomically with respect to a stop
/// signal: either the signal thread sees the resource and undoes it, or `make` is never
/// called. `make` returns the value and the resource to undo.
pub fn create<T>(make: impl FnOnce() -> Result<(T, Resource)>) -> Result<(T, Registration)> {
    let mut r = REGISTRY
        .lock()
        .map_err(|_| Error::Usage("the cleanup registry is poisoned".into()))?;
    if r.stopping {
        return Err(Error::Interrupted);
    }
    let (value, resource) = make()?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    r.entries.push((id, resource));
    Ok((value, Registration(id)))
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut r) = REGISTRY.lock() {
            r.entries.retain(|(id, _)| *id != self.0);
        }
    }
}

/// Whether a stop signal arrived (the signal thread is cleaning up and will exit).
pub fn stopping() -> bool {
    REGISTRY.lock().map(|r| r.stopping).unwrap_or(true)
}

/// Undoes one resource, ignoring failures (it may already be gone).
pub fn undo(resource: &Resource) {
    match resource {
        Resource::Process(pid) => sys::kill(*pid, sys::SIGKILL),
        Resource::Netns(name) => {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Forbids creating anything more and undoes every registered resource, newest first
/// (processes are registered after the namespaces they live in, so they die before their
/// namespace is deleted).
pub fn undo_all() {
    let all = match REGISTRY.lock() {
        Ok(mut r) => {
            r.stopping = true;
            std::mem::take(&mut r.entries)
        }
        Err(_) => return,
    };
    for (_, res) in all.iter().rev() {
        undo(res);
    }
}

/// Blocks SIGINT/SIGTERM/SIGHUP in the calling thread and starts a thread that, when one
/// arrives, undoes every registered resource and exits with status 130.
/// Call it first thing in `main`, before any other thread exists.
pub fn install_signal_handler() {
    sys::block_stop_signals();
    let spawned = std::thread::Builder::new()
        .name("zpath-perf-signals".into())
        .spawn(|| {
            let sig = sys::wait_stop_signal();
            let pending = REGISTRY.lock().map(|r| r.entries.len()).unwrap_or(0);
            if pending > 0 {
                eprintln!("zpath-perf: signal {sig}: stopping {pending} processes/namespaces");
            }
            undo_all();
            std::process::exit(130);
        });
    if let Err(e) = spawned {
        eprintln!(
            "zpath-perf: cannot start the signal thread ({e}); Ctrl-C may leave namespaces behind"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_a_registration_forgets_it() {
        let ((), r) = create(|| Ok(((), Resource::Process(u32::MAX)))).unwrap();
        let present = |res: &Resource| {
            REGISTRY
                .lock()
                .unwrap()
                .entries
                .iter()
                .any(|(_, x)| x == res)
        };
        assert!(present(&Resource::Process(u32::MAX)));
        drop(r);
        assert!(!present(&Resource::Process(u32::MAX)));
    }
}
