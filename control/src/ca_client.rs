//! Client of the Istio CA (`istio.v1.auth.IstioCertificateService/CreateCertificate`).
//!
//! For each identity zpath serves, it generates an ECDSA P-256 key and a CSR with the
//! SPIFFE URI SAN, asks the CA (bearer token re-read per request, at most N fetches in
//! flight), and accepts the answer only if the chain verifies against the configured
//! roots for both client and server use, names the requested identity and carries our
//! key. Refresh is due at half-life ([`refresh_at`]); failures are retried with
//! jittered backoff while the current certificate is still valid
//! ([`CaClient::fetch_with_retry`]).
//!
//! Runs on the control thread's tokio runtime. Key generation, the CSR and the chain
//! checks are the crypto crate's ([`CertificateRequest`]); this module is the protocol.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost_types::value::Kind;
use prost_types::{Struct, Value};
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tracing::{debug, warn};

use crate::proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::proto::istio::v1::auth::IstioCertificateRequest;
use crate::xds::backoff::{Backoff, BackoffConfig};
use crate::xds::channel::{add_request_metadata, ChannelError, GrpcTarget};
use zpath_crypto::{CertificateRequest, Identity, TrustBundle, WorkloadCertificate};

/// How to reach the CA and what to ask for.
#[derive(Debug, Clone)]
pub struct CaClientConfig {
    /// CA address (`--ca-address`) and the root of its TLS certificate.
    pub target: GrpcTarget,
    /// PEM file with the mesh root(s) the returned chains must verify against; re-read
    /// at every fetch. Usually the same file as `target.root_cert`.
    pub trust_roots: PathBuf,
    /// Token sent as `authorization: Bearer` (`--ca-token-file`), re-read per request.
    pub token_file: Option<PathBuf>,
    /// Extra request headers (e.g. `ClusterID`).
    pub headers: Vec<(String, String)>,
    /// Requested certificate lifetime (`validity_duration`). Default 24 h.
    pub cert_lifetime: Duration,
    /// Ask for another identity's certificate (`ImpersonatedIdentity` metadata), as a
    /// node proxy serving many workloads does. Default true.
    pub impersonate: bool,
    /// Fetches in flight at once. Default 8; each holds one key pair and a few KiB.
    pub max_concurrent_fetches: usize,
    /// Deadline of one request. Default 10 s.
    pub request_timeout: Duration,
    /// Retry backoff. Default 1 s doubling to 60 s.
    pub backoff: BackoffConfig,
    /// Attempts when there is no valid certificate to fall back on. Default 3.
    pub attempts_without_certificate: u32,
}

impl CaClientConfig {
    /// Defaults for `address`, verifying chains against `trust_roots`.
    pub fn new(address: impl Into<String>, trust_roots: impl Into<PathBuf>) -> Self {
        CaClientConfig {
            target: GrpcTarget::new(address),
            trust_roots: trust_roots.into(),
            token_file: None,
            headers: Vec::new(),
            cert_lifetime: Duration::from_secs(24 * 3600),
            impersonate: true,
            max_concurrent_fetches: 8,
            request_timeout: Duration::from_secs(10),
            backoff: BackoffConfig {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            attempts_without_certificate: 3,
        }
    }
}

/// Half-life of a validity period: the instant a refresh is due (what
/// [`WorkloadCertificate::refresh_at`] answers for a certificate). A period that is
/// empty or inverted is due at once (at `not_before`).
pub fn refresh_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    match not_after.duration_since(not_before) {
        Ok(lifetime) => not_before + lifetime / 2,
        Err(_) => not_before,
    }
}

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Address, root certificate, token or headers are not usable.
    #[error("CA client setup: {0}")]
    Setup(#[from] ChannelError),
    /// The trust roots file cannot be read or holds no usable root.
    #[error("cannot use the trust roots {path}: {reason} (check the CA root certificate file)")]
    TrustRoots {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Key or CSR generation failed.
    #[error("cannot build a CSR for {identity}: {reason}")]
    Csr {
        /// The identity.
        identity: String,
        /// What failed.
        reason: String,
    },
    /// The CA could not be reached or did not answer in time.
    #[error("CA at {address} is unavailable: {reason} (is --ca-address reachable and --ca-root-cert its root?)")]
    Unavailable {
        /// The CA address.
        address: String,
        /// The transport or gRPC error.
        reason: String,
    },
    /// The CA answered with an error.
    #[error("CA refused the certificate for {identity}: {code:?}: {message} (is the token in --ca-token-file valid and allowed to request this identity?)")]
    Refused {
        /// The identity.
        identity: String,
        /// The gRPC code.
        code: tonic::Code,
        /// The CA's message.
        message: String,
    },
    /// The CA returned a chain that does not verify or does not fit the request.
    #[error("CA returned an unusable certificate for {identity}: {reason}")]
    InvalidChain {
        /// The identity.
        identity: String,
        /// Why it is unusable.
        reason: String,
    },
}

impl CaError {
    /// True for failures of the CA or the network, which a retry may fix.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CaError::Unavailable { .. } | CaError::Refused { .. } | CaError::InvalidChain { .. }
        )
    }
}

/// A CA client; cheap to share by reference on the control thread.
#[derive(Debug)]
pub struct CaClient {
    config: CaClientConfig,
    channel: Channel,
    limit: Arc<Semaphore>,
}

impl CaClient {
    /// Builds the client; the connection is opened on first use and re-opened after
    /// failures. Must be called inside a tokio runtime.
    pub fn new(config: CaClientConfig) -> Result<Self, CaError> {
        let channel = config.target.endpoint()?.connect_lazy();
        let limit = Arc::new(Semaphore::new(config.max_concurrent_fetches.max(1)));
        Ok(CaClient {
            config,
            channel,
            limit,
        })
    }

    /// One attempt: key and CSR, `CreateCertificate`, then the chain is verified
    /// against the trust roots (re-read now) and must name `identity` and fit our key.
    pub async fn fetch(&self, identity: &Identity) -> Result<WorkloadCertificate, CaError> {
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| CaError::Unavailable {
                address: self.config.target.address.clone(),
                reason: "client is shut down".into(),
            })?;
        let csr = CertificateRequest::new(identity).map_err(|e| CaError::Csr {
            identity: identity.to_string(),
            reason: e.to_string(),
        })?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr.csr_pem().to_string(),
            subject_id: String::new(),
            validity_duration: i64::try_from(self.config.cert_lifetime.as_secs())
                .unwrap_or(i64::MAX),
            metadata: self
                .config
                .impersonate
                .then(|| impersonation(&identity.to_string())),
        });
        request.set_timeout(self.config.request_timeout);
        add_request_metadata(
            request.metadata_mut(),
            self.config.token_file.as_deref(),
            &self.config.headers,
        )?;
        let mut client = IstioCertificateServiceClient::new(self.channel.clone());
        let response = client
            .create_certificate(request)
            .await
            .map_err(|status| self.status_error(identity, status))?
            .into_inner();
        let trust = self.trust_roots()?;
        if response.cert_chain.is_empty() {
            return Err(CaError::InvalidChain {
                identity: identity.to_string(),
                reason: "empty certificate chain".into(),
            });
        }
        let cert = csr
            .complete(&response.cert_chain.join("\n"), trust)
            .map_err(|e| CaError::InvalidChain {
                identity: identity.to_string(),
                reason: e.to_string(),
            })?;
        debug!(%identity, not_after = ?cert.not_after(), "certificate issued");
        Ok(cert)
    }

    fn trust_roots(&self) -> Result<TrustBundle, CaError> {
        let path = &self.config.trust_roots;
        let bad = |reason: String| CaError::TrustRoots {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        TrustBundle::from_pem(&pem).map_err(|e| bad(e.to_string()))
    }

    /// Fetches, retrying retryable failures with jittered backoff: for as long as the
    /// certificate in use stays valid (`serving_until`, its notAfter), or
    /// [`CaClientConfig::attempts_without_certificate`] times when there is none (or it
    /// has expired). Returns the last error when it gives up; the caller keeps serving
    /// its current certificate meanwhile.
    pub async fn fetch_with_retry(
        &self,
        identity: &Identity,
        serving_until: Option<SystemTime>,
    ) -> Result<WorkloadCertificate, CaError> {
        let mut backoff = Backoff::new(self.config.backoff);
        loop {
            let err = match self.fetch(identity).await {
                Ok(c) => return Ok(c),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => e,
            };
            let delay = backoff.next_delay();
            let now = SystemTime::now();
            let keep_trying = match serving_until.filter(|until| now < *until) {
                Some(until) => now + delay < until,
                None => backoff.attempts() < self.config.attempts_without_certificate,
            };
            if !keep_trying {
                return Err(err);
            }
            warn!(%identity, error = %err, ?delay, "certificate fetch failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    fn status_error(&self, identity: &Identity, status: tonic::Status) -> CaError {
        use tonic::Code;
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                CaError::Unavailable {
                    address: self.config.target.address.clone(),
                    reason: format!("{:?}: {}", status.code(), status.message()),
                }
            }
            code => CaError::Refused {
                identity: identity.to_string(),
                code,
                message: status.message().to_string(),
            },
        }
    }
}

fn impersonation(identity: &str) -> Struct {
    Struct {
        fields: BTreeMap::from([(
            "ImpersonatedIdentity".to_string(),
            Value {
                kind: Some(Kind::StringValue(identity.to_string())),
            },
        )]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn refresh_is_due_at_half_life() {
        assert_eq!(refresh_at(t(1000), t(2000)), t(1500));
        assert_eq!(
            refresh_at(t(1000), t(1001)),
            t(1000) + Duration::from_millis(500)
        );
        assert_eq!(refresh_at(t(1000), t(1000)), t(1000));
        assert_eq!(
            refresh_at(t(2000), t(1000)),
            t(2000),
            "inverted period is due at once"
        );
    }

    #[test]
    fn retryable_kinds() {
        assert!(!CaError::TrustRoots {
            path: "p".into(),
            reason: "r".into()
        }
        .is_retryable());
        assert!(CaError::Unavailable {
            address: "a".into(),
            reason: "r".into()
        }
        .is_retryable());
    }
}
