//! CPU time and resident memory of proxy processes, read from `/proc` while a scenario
//! runs. A proxy is a process tree: the root and all its descendants (a wrapper such as
//! `perf record` is excluded by passing the proxy itself as the root).

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::sys;

/// One reading of a set of process trees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcReading {
    /// Seconds since the sampler started.
    pub t_s: f64,
    /// User plus system CPU seconds consumed so far by every process in the trees.
    pub cpu_s: f64,
    /// Resident set size of every process in the trees, KiB.
    pub rss_kib: u64,
}

/// What the proxies used during a scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcUsage {
    /// CPU seconds used between the first and the last reading.
    pub cpu_s: f64,
    /// RSS at the first reading, KiB.
    pub rss_start_kib: u64,
    /// Largest RSS seen, KiB.
    pub rss_max_kib: u64,
    /// RSS at the last reading, KiB.
    pub rss_end_kib: u64,
    /// Every reading.
    pub readings: Vec<ProcReading>,
}

/// Parses `/proc/PID/stat`: (parent pid, utime+stime ticks, rss pages).
fn parse_stat(stat: &str) -> Option<(u32, u64, u64)> {
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12) ... rss(21).
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let rss = f.get(21)?.parse().ok()?;
    Some((ppid, utime + stime, rss))
}

/// Every process's (ppid, ticks, rss pages), by pid.
fn all_processes() -> HashMap<u32, (u32, u64, u64)> {
    let mut m = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return m;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(st) = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        {
            m.insert(pid, st);
        }
    }
    m
}

/// The live pids of the trees rooted at `roots` in `procs`, each once.
fn tree_members(procs: &HashMap<u32, (u32, u64, u64)>, roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, (ppid, _, _)) in procs {
        children.entry(*ppid).or_default().push(*pid);
    }
    let mut members = Vec::new();
    let mut stack: Vec<u32> = roots.to_vec();
    let mut seen = std::collections::HashSet::new();
    while let Some(pid) = stack.pop() {
        if !seen.insert(pid) {
            continue;
        }
        if procs.contains_key(&pid) {
            members.push(pid);
        }
        if let Some(c) = children.get(&pid) {
            stack.extend(c);
        }
    }
    members
}

/// Sums CPU ticks and RSS pages over the trees rooted at `roots`.
fn tree_totals(procs: &HashMap<u32, (u32, u64, u64)>, roots: &[u32]) -> (u64, u64) {
    tree_members(procs, roots)
        .iter()
        .filter_map(|pid| procs.get(pid))
        .fold((0, 0), |(t, p), (_, ticks, pages)| (t + ticks, p + pages))
}

/// Every live thread id of every process in the trees rooted at `roots`.
pub fn tree_threads(roots: &[u32]) -> Vec<u32> {
    let mut tids = Vec::new();
    for pid in tree_members(&all_processes(), roots) {
        let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        tids.extend(
            dir.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())),
        );
    }
    tids
}

/// Reads the trees rooted at `roots` once.
pub fn read_trees(roots: &[u32], since: Instant) -> ProcReading {
    let (ticks, pages) = tree_totals(&all_processes(), roots);
    let page_kib = sys::page_size() / 1024;
    ProcReading {
        t_s: since.elapsed().as_secs_f64(),
        cpu_s: ticks as f64 / sys::clock_ticks_per_sec() as f64,
        rss_kib: pages * page_kib,
    }
}

/// Samples process trees in the background until [`Sampler::finish`].
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<ProcReading>>>,
    roots: Vec<u32>,
    since: Instant,
}

impl Sampler {
    /// Takes a first reading now, then one every `interval`.
    pub fn start(roots: Vec<u32>, interval: Duration) -> Sampler {
        let since = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let first = read_trees(&roots, since);
        let handle = if roots.is_empty() {
            None
        } else {
            let (stop2, roots2) = (stop.clone(), roots.clone());
            std::thread::Builder::new()
                .name("zpath-perf-procstat".into())
                .spawn(move || {
                    let mut v = vec![first];
                    while !stop2.load(Ordering::Relaxed) {
                        std::thread::sleep(interval);
                        v.push(read_trees(&roots2, since));
                    }
                    v
                })
                .ok()
        };
        Sampler {
            stop,
            handle,
            roots,
            since,
        }
    }

    /// A reading now, outside the background series (e.g. when idle connections are up).
    pub fn read_now(&self) -> ProcReading {
        read_trees(&self.roots, self.since)
    }

    /// Stops sampling, takes a last reading and summarises.
    pub fn finish(mut self) -> ProcUsage {
        self.stop.store(true, Ordering::Relaxed);
        let mut readings = match self.handle.take().map(|h| h.join()) {
            Some(Ok(v)) => v,
            _ => Vec::new(),
        };
        if self.roots.is_empty() {
            return ProcUsage::default();
        }
        readings.push(read_trees(&self.roots, self.since));
        summarise(readings)
    }
}

/// Summarises a series of readings (the first and last bound the CPU time).
pub fn summarise(readings: Vec<ProcReading>) -> ProcUsage {
    let (Some(first), Some(last)) = (readings.first().copied(), readings.last().copied()) else {
        return ProcUsage::default();
    };
    ProcUsage {
        cpu_s: (last.cpu_s - first.cpu_s).max(0.0),
        rss_start_kib: first.rss_kib,
        rss_max_kib: readings.iter().map(|r| r.rss_kib).max().unwrap_or(0),
        rss_end_kib: last.rss_kib,
        readings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_the_name_parses() {
        let line = "42 (my (odd) proc) S 7 42 42 0 -1 4194304 100 0 0 0 150 50 0 0 20 0 3 0 \
                    100 1000000 321 18446744073709551615";
        assert_eq!(parse_stat(line), Some((7, 200, 321)));
    }

    #[test]
    fn own_process_is_seen_with_memory_and_cpu() {
        // Burn a little CPU so the tick count is not zero on a coarse clock.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        assert!(x != 1);
        let r = read_trees(&[std::process::id()], Instant::now());
        assert!(r.rss_kib > 0);
        assert!(r.cpu_s > 0.0);
    }

    #[test]
    fn summary_takes_cpu_difference_and_max_rss() {
        let r = |t, c, m| ProcReading {
            t_s: t,
            cpu_s: c,
            rss_kib: m,
        };
        let u = summarise(vec![r(0.0, 1.0, 100), r(1.0, 1.5, 300), r(2.0, 3.0, 200)]);
        assert_eq!(u.cpu_s, 2.0);
        assert_eq!(
            (u.rss_start_kib, u.rss_max_kib, u.rss_end_kib),
            (100, 300, 200)
        );
    }
}
