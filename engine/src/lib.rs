//! zpath-engine: thread-per-core shards over io_uring (glommio), listeners, capture,
//! the relay, drain and the composition root of the `zpath` binary.
//!
//! Threading: one shard per core, each a pinned glommio `LocalExecutor` that owns its
//! listeners (`SO_REUSEPORT`), connection table, buffer pool and counters; a connection
//! lives and dies on the shard that accepted it. The control thread (tokio,
//! current-thread) owns configuration, admin endpoints and signals, and talks to shards
//! only by message. On the data path: no lock, no atomic read-modify-write, no
//! allocation per byte.
//!
//! This crate is the only user of glommio and raw syscalls (all in [`sys`]).

pub mod admin;
mod authorize;
pub mod buffers;
pub mod certs;
pub mod config;
pub mod daemon;
pub mod fds;
pub mod flow;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshakes;
pub mod hbone;
pub mod keepalive;
pub mod loglimit;
pub mod notify;
pub mod relay;
pub mod shard;
pub mod signal;
pub mod socks5;
pub mod stats;
pub mod sys;
pub mod table;

pub use config::EngineConfig;
pub use daemon::{Daemon, StartError};
