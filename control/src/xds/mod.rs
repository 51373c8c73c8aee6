//! Delta xDS (ADS) client for istiod's workload API.
//!
//! Split as the rest of zpath's protocol code is: [`state`] is the subscription state
//! machine without I/O (responses in, ACK/NACK requests out); [`client`] is the tonic
//! driver that owns the stream, reconnects with [`backoff`] and reports readiness.
//! The domain conversion plugs in through [`XdsHandler`]; [`source`] implements it
//! on snapshots and is the entry point a daemon runs ([`XdsSource`]).
//!
//! Everything here runs on the control thread's tokio current-thread runtime; the
//! handler does not need to be `Send`.

pub mod backoff;
pub mod channel;
pub mod client;
pub mod metrics;
pub mod node;
pub mod resource;
pub mod source;
pub mod state;
pub mod wire;

pub use backoff::{backoff_delay, Backoff, BackoffConfig};
pub use client::{XdsClient, XdsClientConfig};
pub use metrics::{ClientStats, Termination};
pub use node::NodeInfo;
pub use resource::{decode_address, decode_authorization, decode_resource, DecodedResource};
pub use source::{run_xds, SnapshotHandler, XdsSource, XdsStats};
pub use state::{
    RejectedResource, ResponseOutcome, SubscriptionState, XdsHandler, XdsResource,
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL,
};

/// What can go wrong talking to istiod.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// A payload has a type this client does not know.
    #[error("unknown xDS resource type {0:?}: only istio.workload.Address and istio.security.Authorization are supported")]
    UnknownType(String),
    /// A payload is not valid protobuf for its type.
    #[error("cannot decode {type_url} payload: {source}")]
    Decode {
        /// The payload's type.
        type_url: &'static str,
        /// The protobuf error.
        source: prost::DecodeError,
    },
    /// The address, root certificate, token or headers are not usable.
    #[error("xDS client setup: {0}")]
    Channel(#[from] channel::ChannelError),
    /// The TCP/TLS connection to istiod failed.
    #[error("cannot connect to istiod at {address}: {source} (is the address reachable and the root certificate right?)")]
    Connect {
        /// The address dialled.
        address: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// istiod (or the network) ended the stream with a gRPC status.
    #[error("xDS stream to {address} failed: {status}")]
    Stream {
        /// The address dialled.
        address: String,
        /// The status.
        status: Box<tonic::Status>,
    },
    /// The request stream closed while the response stream was still open.
    #[error("xDS request stream to {address} closed unexpectedly")]
    RequestStreamClosed {
        /// The address dialled.
        address: String,
    },
}
