//! zpath-crypto: SPIFFE identities, the built-in certificate authority,
//! rustls (ring) configurations for mutual TLS, peer verification, and the
//! TLS data path.
//!
//! * [`Identity`] parses and prints `spiffe://<td>/ns/<ns>/sa/<sa>` strictly.
//! * [`LocalCa`] keeps a root in the state directory (or takes one as PEM)
//!   and issues [`WorkloadCertificate`]s; [`CertificateRequest`] builds CSRs
//!   for an external CA and checks what it returns.
//! * [`CertifiedTls`] turns a certificate into server and client
//!   configurations (TLS 1.3, AES-GCM, ALPN `h2`, no SNI); rotation is a new
//!   `CertifiedTls`, sessions keep the configuration they started with.
//! * Verification yields a [`VerifiedPeer`] (only this crate can make one) or
//!   a [`Rejection`] with a stable metric label.
//! * [`TlsSession`] is a sans-I/O session working on caller-sized buffers:
//!   the handshake runs in rustls' unbuffered API, then records are sealed
//!   and opened in place with ring's AES-GCM on the keys rustls negotiated
//!   (rustls keeps the key schedule for key updates); [`TlsStream`] adapts
//!   it to any `futures-io` transport and is itself `AsyncRead +
//!   AsyncBufRead + AsyncWrite`.
//!
//! Threading: everything is `Send`; configurations and certificates are
//! shared through `Arc` and immutable. [`ClientConfigCache`] is meant to be
//! owned by one shard. The crate never spawns, sleeps, or reads a clock other
//! than the system time for certificate validity; it knows nothing of the
//! executor (timeouts are the caller's).
//!
//! Every rustls and webpki call lives in the private `pki` (provider, chain
//! verification, key loading) and `tls` (configurations, handshake) modules;
//! every ring AEAD call in the private `record` module.
//!
//! The modules layer bottom-up, each naming only modules below it: `identity`
//! and `limits` (record sizes); `verifier`; `error`; `pki` and `record`;
//! `certificate`; `ca` and `tls`; `config` and `session`; `stream`. The record
//! layer reaches the key schedule rustls keeps after the handshake through its
//! own `KeySchedule` trait, which `tls` implements, so it sits below `tls`.

mod ca;
mod certificate;
mod config;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod identity;
mod limits;
mod pki;
mod record;
mod session;
mod stream;
mod tls;
mod verifier;

pub use ca::{LocalCa, ROOT_CERT_FILE, ROOT_KEY_FILE};
pub use certificate::{CertSummary, CertificateRequest, TrustBundle, WorkloadCertificate};
pub use config::{CertifiedTls, ClientConfigCache};
pub use error::{Error, SessionError};
pub use identity::{Identity, IdentityError};
pub use limits::{MAX_PLAINTEXT_LEN, MAX_RECORD_LEN};
pub use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
pub use session::{Sealed, SessionBuffers, TlsSession};
pub use stream::TlsStream;
pub use tls::{ClientTlsConfig, ServerTlsConfig};
pub use verifier::{Rejection, VerifiedPeer};
