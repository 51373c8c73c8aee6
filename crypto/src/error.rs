//! The crate's error type for set-up operations (certificates, CA, configs).
//! Data-path failures are [`crate::session::SessionError`]; verification
//! failures are [`crate::verifier::Rejection`].

use std::path::PathBuf;

use crate::identity::IdentityError;

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
