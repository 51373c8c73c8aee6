//! The crate's error types: [`Error`] for set-up operations (certificates, CA,
//! configs) and [`SessionError`] for the data path; verification failures are
//! [`crate::verifier::Rejection`]. They sit below every module that returns
//! them (the record layer, the handshake driver and the session alike).

use std::path::PathBuf;

use crate::identity::IdentityError;
use crate::limits::MAX_RECORD_LEN;
use crate::verifier::Rejection;

/// Errors from building identities, certificates, the CA or TLS configurations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A string is not a valid SPIFFE identity.
    #[error("invalid SPIFFE identity: {0}")]
    Identity(#[from] IdentityError),
    /// PEM input could not be used.
    #[error("cannot use the {what}: {detail}")]
    Pem {
        /// What was being read (`root certificate`, `private key`, ...).
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A certificate chain handed to us does not verify.
    #[error("certificate chain rejected: {0}")]
    ChainRejected(String),
    /// The CA key or certificate cannot be used to issue certificates.
    #[error("cannot use the CA: {0}")]
    Ca(String),
    /// Reading or writing the CA state directory failed.
    #[error(
        "CA state in {path}: {source}; check that --state-dir exists and is writable by zpath"
    )]
    StateDir {
        /// The file or directory concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Certificate or key generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration rejected: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn generate(e: rcgen::Error) -> Self {
        Error::Generate(e.to_string())
    }
}

/// Why a TLS session failed. Each variant has a stable metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// We refused the peer's certificate.
    #[error("peer certificate rejected ({label}): {0}", label = .0.label())]
    Rejected(Rejection),
    /// The peer sent an alert (typically: it refused our certificate).
    #[error(
        "peer aborted the TLS handshake with alert {0}: does it trust our mesh root and identity?"
    )]
    AlertReceived(String),
    /// The bytes received are not valid TLS (garbage, wrong record types, ...).
    #[error("peer sent invalid TLS data ({0}): is this port speaking TLS?")]
    Protocol(String),
    /// A record length exceeds the TLS 1.3 maximum.
    #[error("peer sent a TLS record larger than the protocol allows")]
    RecordTooLarge,
    /// The peer does not support what we require (TLS 1.3, AES-GCM, ALPN h2).
    #[error("peer is incompatible: {0}; zpath requires TLS 1.3 with AES-GCM and ALPN h2")]
    Incompatible(String),
    /// The transport closed before the handshake completed.
    #[error("connection closed during the TLS handshake")]
    HandshakeEof,
    /// The transport closed in the middle of a record.
    #[error("connection closed in the middle of a TLS record (truncated)")]
    Truncated,
    /// The transport closed without a close_notify from the peer.
    #[error("peer closed the connection without a TLS close_notify; data may be truncated")]
    UncleanClose,
    /// The session buffers cannot hold a message the peer sent.
    #[error("TLS message does not fit the session buffer; raise the TLS buffer size")]
    BufferTooSmall,
    /// The output buffer passed in has less than one record of room.
    #[error("output buffer must have room for at least {MAX_RECORD_LEN} bytes")]
    OutputTooSmall,
    /// Application data was written before the handshake completed.
    #[error("TLS handshake not complete")]
    NotReady,
    /// Application data was written after close.
    #[error("TLS session already closed for writing")]
    WriteAfterClose,
    /// The transport failed.
    #[error("transport error: {1}")]
    Io(std::io::ErrorKind, String),
    /// rustls failed in a way not listed above.
    #[error("TLS internal error: {0}")]
    Internal(String),
}

impl SessionError {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SessionError::Rejected(r) => r.label(),
            SessionError::AlertReceived(_) => "alert_received",
            SessionError::Protocol(_) => "protocol_error",
            SessionError::RecordTooLarge => "record_too_large",
            SessionError::Incompatible(_) => "incompatible_peer",
            SessionError::HandshakeEof => "handshake_eof",
            SessionError::Truncated => "truncated_record",
            SessionError::UncleanClose => "unclean_close",
            SessionError::BufferTooSmall => "buffer_too_small",
            SessionError::OutputTooSmall => "output_too_small",
            SessionError::NotReady => "not_ready",
            SessionError::WriteAfterClose => "write_after_close",
            SessionError::Io(..) => "io_error",
            SessionError::Internal(_) => "internal_error",
        }
    }

    /// The certificate rejection, if that is what failed.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            SessionError::Rejected(r) => Some(r),
            _ => None,
        }
    }
}

impl From<SessionError> for std::io::Error {
    fn from(e: SessionError) -> Self {
        let kind = match &e {
            SessionError::Io(kind, _) => *kind,
            SessionError::HandshakeEof | SessionError::Truncated | SessionError::UncleanClose => {
                std::io::ErrorKind::UnexpectedEof
            }
            SessionError::WriteAfterClose => std::io::ErrorKind::BrokenPipe,
            SessionError::Rejected(_) => std::io::ErrorKind::PermissionDenied,
            _ => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e)
    }
}
