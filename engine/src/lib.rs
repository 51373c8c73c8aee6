//! zpath-engine: thread-per-core shards over io_uring (`zpath-uring`), listeners,
//! capture, the relay, drain and the composition root of the `zpath` binary.
//!
//! Threading: one shard per core, each a pinned thread running a `zpath_uring` runtime
//! (one ring, one executor) that owns its listeners (`SO_REUSEPORT`), connection table,
//! receive-buffer ring and counters; a connection
//! lives and dies on the shard that accepted it. The control thread (tokio,
//! current-thread) owns configuration, admin endpoints and signals, and talks to shards
//! only by message. On the data path: no lock, no atomic read-modify-write, no
//! allocation per byte.
//!
//! The folders say where a line runs and which way its bytes go:
//! * `shard/`: a shard's state and its loop (`shard::run`); the table, buffers,
//!   tunnel pool and pending handshakes it owns.
//! * `outbound/`: connections a local workload makes (captured 15001, SOCKS5 15080, the
//!   HBONE client).
//! * `inbound/`: connections to local workloads (captured plaintext 15006, the HBONE
//!   server on 15008).
//! * `decide/`: the decisions both ask, as plain functions of a snapshot (the outbound
//!   plan, CONNECT admission, authorization).
//! * `dial`, `relay`, `capture`, `keepalive`: what the flows share.
//! * `control/`: what runs on the control thread (daemon, admin, certificates).
//! * `stats`, `traffic`, `counter`: the shards' counters (Istio's labelled
//!   `istio_tcp_*` in `traffic`) and their Prometheus text.
//!
//! Raw syscalls of this crate are all in [`sys`]; those of the ring are in `zpath-uring`.

mod access;
#[doc(hidden)]
pub mod bench;
mod capture;
pub mod config;
mod control;
mod counter;
mod decide;
mod dial;
mod failure;
mod fds;
#[doc(hidden)]
pub mod fuzzing;
mod inbound;
mod keepalive;
pub mod logging;
mod outbound;
mod relay;
mod shard;
mod stats;
pub mod sys;
mod traffic;

pub use config::EngineConfig;
pub use control::daemon::{Daemon, StartError};
