//! Noticing that the local config file changed, and turning it into a new snapshot.
//!
//! The file is compared by (device, inode, size, modification time) so that both an
//! in-place write and the symlink swap a Kubernetes ConfigMap does are seen. A file that
//! fails to load keeps the previous snapshot in place.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::{ConfigError, LocalConfig, Snapshot, SnapshotCell};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// Counts of config loads, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Successful loads (including the first).
    pub applied: AtomicU64,
    /// Rejected loads (the previous snapshot stayed).
    pub rejected: AtomicU64,
}

/// Loads the local config file into snapshots, on demand or when it changed.
#[derive(Debug)]
pub struct FileSource {
    path: Option<PathBuf>,
    node_name: String,
    last: Option<Stamp>,
    cell: Arc<SnapshotCell>,
    stats: Arc<ReloadStats>,
}

impl FileSource {
    /// A source for `path` (none: an empty configuration) publishing into `cell`.
    pub fn new(path: Option<PathBuf>, node_name: String, cell: Arc<SnapshotCell>) -> Self {
        Self {
            path,
            node_name,
            last: None,
            cell,
            stats: Arc::default(),
        }
    }

    /// The counters of this source.
    pub fn stats(&self) -> Arc<ReloadStats> {
        self.stats.clone()
    }

    /// Parses the file and returns the snapshot it describes, without publishing.
    pub fn build(&self) -> Result<Snapshot, ConfigError> {
        let config = match &self.path {
            Some(p) => LocalConfig::load(p)?,
            None => LocalConfig::default(),
        };
        let generation = self.cell.generation() + 1;
        Ok(Snapshot::from_local(&config, &self.node_name, generation))
    }

    /// Loads the file now and publishes it; on error the current snapshot stays.
    pub fn reload(&mut self) -> Result<u64, ConfigError> {
        self.last = self.path.as_deref().and_then(stamp);
        match self.build() {
            Ok(snap) => {
                let generation = snap.generation;
                self.cell.publish(snap);
                self.stats.applied.fetch_add(1, Ordering::Relaxed);
                Ok(generation)
            }
            Err(e) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Reloads when the file changed since the last load; `None` when it did not.
    pub fn reload_if_changed(&mut self) -> Option<Result<u64, ConfigError>> {
        let now = self.path.as_deref().and_then(stamp);
        if now == self.last {
            return None;
        }
        Some(self.reload())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn bad_reload_keeps_previous_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "workloads:\n- {name: a, namespace: d, workloadIps: [\"10.0.0.1\"]}\n",
        )
        .unwrap();
        let cell = Arc::new(SnapshotCell::new(Snapshot::default()));
        let mut src = FileSource::new(Some(path.clone()), "n".into(), cell.clone());
        assert_eq!(src.reload().unwrap(), 1);
        assert!(src.reload_if_changed().is_none());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(
            f,
            "- {{name: b, namespace: d, workloadIps: [\"not-an-ip\"]}}"
        )
        .unwrap();
        drop(f);
        assert!(src.reload_if_changed().unwrap().is_err());
        assert_eq!(cell.generation(), 1);
        assert_eq!(cell.load().workloads.len(), 1);
        assert_eq!(src.stats().rejected.load(Ordering::Relaxed), 1);
        // Unchanged since the failed attempt: no retry storm.
        assert!(src.reload_if_changed().is_none());
    }
}
