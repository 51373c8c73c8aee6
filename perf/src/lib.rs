//! zpath-perf: load generators and the comparison harness that drives proxies as black boxes.
//!
//! The harness measures zpath against `direct` (no proxy) and against any other proxy
//! described by a target file, in one run, on one machine:
//!
//! * [`generators`]: `bulk`, `rr`, `crr` and `idle` load over plain blocking sockets, one
//!   OS thread per flow or connection, latency in hdrhistograms (nanoseconds).
//! * [`server`]: the sink/echo application the generators talk to (`zpath-perf serve`).
//! * [`topology`]: two network namespaces joined by a veth pair with an iptables REDIRECT
//!   on the client node (root), or a loopback fallback with a SOCKS5 entry.
//! * [`target`]: how a proxy is started on each node, as data (TOML), with built-ins.
//! * [`binaries`]: where the zpath and ztunnel binaries are, as absolute paths.
//! * [`procstat`]: CPU time and RSS of the proxy processes, read from `/proc`.
//! * [`syscalls`]: system calls of the proxy processes, counted by kernel tracepoints.
//! * [`compare`]: runs every scenario for every target, interleaved, with repeats.
//! * [`report`]: summary statistics, the text table, the JSON file and SVG charts.
//! * [`relay`]: a minimal reference relay, so the harness can be tested without a real proxy.
//!
//! Threading: generators spawn their own threads and join them before returning; nothing
//! runs in the background after a call returns, except the cleanup signal thread that
//! [`cleanup::install_signal_handler`] starts once in the binary.
//!
//! It must never leave anything behind: every namespace, rule and process it creates is
//! owned by a guard that removes it on drop, and registered with [`cleanup`] so that
//! Ctrl-C removes it too. It never touches the root namespace's interfaces or rules.

pub mod binaries;
pub mod cleanup;
pub mod compare;
pub mod generators;
pub mod procstat;
pub mod relay;
pub mod report;
pub mod server;
pub mod sys;
pub mod syscalls;
pub mod target;
pub mod topology;

use std::path::PathBuf;

/// Everything that can go wrong in the harness, with what an operator can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket operation against the system under test failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The SOCKS5 entry of a proxy refused or garbled a CONNECT.
    #[error("SOCKS5 proxy {proxy}: {reason}; is the target's socks5 address right?")]
    Socks5 {
        /// The proxy's SOCKS5 address.
        proxy: String,
        /// What went wrong.
        reason: String,
    },
    /// The sink/echo server answered something unexpected.
    #[error("load server protocol error: {0}; is the proxy relaying bytes unchanged?")]
    Protocol(String),
    /// A command the harness runs (ip, iptables, perf, a proxy) failed.
    #[error("command `{command}` failed: {reason}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status and stderr, or the spawn error.
        reason: String,
    },
    /// A target file is invalid.
    #[error("target {target}: {reason}")]
    Target {
        /// The target name or file.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A proxy did not become ready.
    #[error("proxy {name} not ready after {secs}s at {url}: {reason} (log: {log})")]
    NotReady {
        /// Target and node.
        name: String,
        /// How long the harness waited.
        secs: u64,
        /// The readiness URL polled.
        url: String,
        /// The last failure seen.
        reason: String,
        /// The proxy's log file.
        log: PathBuf,
    },
    /// A required tool is missing.
    #[error("`{tool}` not found: install it with `{install}`")]
    MissingTool {
        /// The tool.
        tool: String,
        /// How to install it.
        install: String,
    },
    /// A stop signal arrived: nothing new is started.
    #[error("interrupted by a signal")]
    Interrupted,
    /// The options given do not make sense together.
    #[error("invalid options: {0}")]
    Usage(String),
    /// Writing the report failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// The harness's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
