//! System calls the proxies make during a sample, counted by the kernel.
//!
//! Method: one perf counter (`perf_event_open`, counting mode, no sampling) per proxy
//! thread on the syscall-entry tracepoints `raw_syscalls:sys_enter` (every system call)
//! and `syscalls:sys_enter_io_uring_enter`, opened just before the load starts and read
//! just after it ends; `inherit` makes threads started meanwhile count too. This is
//! `perf stat -e raw_syscalls:sys_enter -p PID` without the `perf` tool, so nothing needs
//! installing, and unlike `strace -c -f` (which stops the proxy at every call) it barely
//! perturbs the proxy: the kernel only takes its syscall tracepoint path while counting,
//! tens of nanoseconds per call. Needs root (or `kernel.perf_event_paranoid` = -1) and
//! tracefs; without them the figure is reported as unavailable, with the reason.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::procstat;
use crate::sys::TracepointCounter;

/// System calls counted during one sample, over every thread of every proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SyscallCounts {
    /// Every system call.
    pub total: u64,
    /// `io_uring_enter` calls (part of `total`); `None` if the kernel has no tracepoint
    /// for it.
    pub io_uring_enter: Option<u64>,
    /// Threads counted when the window opened (threads started later count too).
    pub threads: usize,
}

/// Where tracefs may be mounted.
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs id of tracepoint `event` (`GROUP/NAME`), if the kernel has it.
fn tracepoint_id(event: &str) -> Option<u64> {
    TRACEFS.iter().find_map(|root| {
        let p = PathBuf::from(root).join("events").join(event).join("id");
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    })
}

/// Counters open on the proxies' threads; [`SyscallCounter::finish`] reads them.
#[derive(Debug)]
pub struct SyscallCounter {
    total: Vec<TracepointCounter>,
    io_uring_enter: Option<Vec<TracepointCounter>>,
}

impl SyscallCounter {
    /// Starts counting every thread of the process trees rooted at `roots`; the error
    /// says why the count is unavailable.
    pub fn start(roots: &[u32]) -> Result<SyscallCounter, String> {
        SyscallCounter::start_threads(&procstat::tree_threads(roots))
    }

    /// Starts counting in the given threads.
    pub fn start_threads(tids: &[u32]) -> Result<SyscallCounter, String> {
        let all = tracepoint_id("raw_syscalls/sys_enter").ok_or_else(|| {
            "no raw_syscalls:sys_enter tracepoint: mount tracefs \
             (mount -t tracefs nodev /sys/kernel/tracing)"
                .to_string()
        })?;
        if tids.is_empty() {
            return Err("no proxy thread found".into());
        }
        let open = |id: u64| -> Result<Vec<TracepointCounter>, String> {
            let mut v = Vec::with_capacity(tids.len());
            for &tid in tids {
                match TracepointCounter::open(id, tid) {
                    Ok(c) => v.push(c),
                    // The thread ended between listing and opening: nothing to count.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => {
                        return Err(format!(
                            "perf_event_open on thread {tid}: {e} (needs root or \
                             kernel.perf_event_paranoid=-1)"
                        ))
                    }
                }
            }
            Ok(v)
        };
        let total = open(all)?;
        // Without its own tracepoint io_uring_enter is still part of the total.
        let io_uring_enter = tracepoint_id("syscalls/sys_enter_io_uring_enter")
            .map(open)
            .transpose()?;
        Ok(SyscallCounter {
            total,
            io_uring_enter,
        })
    }

    /// Reads the counts so far and closes the counters.
    pub fn finish(self) -> Result<SyscallCounts, String> {
        let sum = |v: &[TracepointCounter]| -> Result<u64, String> {
            v.iter().try_fold(0u64, |acc, c| {
                c.read()
                    .map(|n| acc.saturating_add(n))
                    .map_err(|e| format!("reading a syscall counter: {e}"))
            })
        };
        Ok(SyscallCounts {
            total: sum(&self.total)?,
            io_uring_enter: self.io_uring_enter.as_deref().map(sum).transpose()?,
            threads: self.total.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's id.
    fn gettid() -> u32 {
        // SAFETY: gettid has no preconditions and cannot fail.
        unsafe { libc::gettid() as u32 }
    }

    #[test]
    fn counts_the_syscalls_of_a_thread_and_its_io_uring_enter_calls() {
        let Ok(c) = SyscallCounter::start_threads(&[gettid()]) else {
            eprintln!("skipping: syscall tracepoints unavailable here (root and tracefs)");
            return;
        };
        for _ in 0..1000 {
            // SAFETY: getppid has no preconditions.
            unsafe { libc::getppid() };
        }
        for _ in 0..100 {
            // SAFETY: io_uring_enter on an invalid fd fails with EBADF and touches no
            // memory (no arguments point anywhere).
            unsafe {
                libc::syscall(
                    libc::SYS_io_uring_enter,
                    -1 as libc::c_int,
                    0u32,
                    0u32,
                    0u32,
                    std::ptr::null::<libc::c_void>(),
                    0usize,
                )
            };
        }
        let n = c.finish().unwrap();
        assert_eq!(n.threads, 1);
        // The loops, plus the few calls of the counting itself.
        assert!(n.total >= 1100 && n.total < 1200, "{n:?}");
        if let Some(u) = n.io_uring_enter {
            assert_eq!(u, 100, "{n:?}");
        }
    }

    #[test]
    fn a_child_thread_started_after_opening_is_counted() {
        let Ok(c) = SyscallCounter::start_threads(&[gettid()]) else {
            eprintln!("skipping: syscall tracepoints unavailable here (root and tracefs)");
            return;
        };
        std::thread::spawn(|| {
            for _ in 0..2000 {
                // SAFETY: getppid has no preconditions.
                unsafe { libc::getppid() };
            }
        })
        .join()
        .unwrap();
        let n = c.finish().unwrap();
        assert!(n.total >= 2000, "{n:?}");
    }

    #[test]
    fn no_thread_is_unavailable_not_zero() {
        assert!(SyscallCounter::start(&[]).is_err());
    }
}
