//! zpath-control: the workload/service model, the local config file, the xDS and CA
//! clients, and building and publishing immutable snapshots for the shards.
//!
//! Threading: everything here runs on the control thread (a tokio current-thread
//! runtime) except [`snapshot::SnapshotCell::load`], which shards call once per new
//! connection. This crate never touches a data-path socket.
//!
//! Every configuration source (the local file, xDS) produces the same domain objects
//! ([`model`]) and feeds the same [`snapshot::SnapshotBuilder`]; invalid input is
//! rejected with an error naming the field, and a rejected update never replaces the
//! last good snapshot. Snapshots are persistent maps: the next one after a delta costs
//! time proportional to the change, and publication to shards is one atomic swap.
//!
//! Entry points for the daemon: [`watch::FileSource`] (local file) and
//! [`xds::XdsSource`] (istiod: delta xDS into snapshots, with readiness and counters).
//! [`zds`] is the protocol istio-cni speaks to hand the node proxy its pods (in-pod
//! mode), without I/O; the daemon does not use it yet.

pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
pub mod published;
pub mod snapshot;
pub mod watch;

pub use config::LocalConfig;
pub use snapshot::{Addressed, Route, Snapshot, SnapshotCell, UnknownDestination};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("config is not valid YAML{}: {message}", line_suffix(*.line))]
    Syntax {
        /// 1-based line, when the parser knows it.
        line: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// A field has a value of the wrong type or an unknown name.
    #[error("config field `{field}`{}: {message}", line_suffix(*.line))]
    Field {
        /// Path of the field, e.g. `workloads[0].workloadIps[1]`.
        field: String,
        /// 1-based line, when the parser knows it.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A field parsed but its value is not acceptable.
    #[error("config field `{field}` is invalid: {message}")]
    Invalid {
        /// Path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}
pub mod ca_client;
pub mod convert;
pub mod proto;
pub mod xds;
pub mod zds;
