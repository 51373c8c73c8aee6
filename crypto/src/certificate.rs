//! Workload certificates, the mesh trust bundle, and certificate signing
//! requests for an external CA (the Istio CA client builds on these).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, TrustAnchor};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::Error;
use crate::identity::Identity;
use crate::pki;
use crate::verifier::{self, PeerRole};

/// The mesh roots: certificates a peer chain must lead to.
#[derive(Clone)]
pub struct TrustBundle {
    inner: Arc<TrustInner>,
}

struct TrustInner {
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// Parses one or more PEM root certificates.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let roots = parse_certificates(pem, "root certificate")?;
        Self::from_der(roots)
    }

    /// Builds a bundle from DER root certificates.
    pub fn from_der(roots: Vec<CertificateDer<'static>>) -> Result<Self, Error> {
        if roots.is_empty() {
            return Err(Error::Pem {
                what: "root certificate",
                detail: "no root certificate given".into(),
            });
        }
        let anchors = roots
            .iter()
            .map(pki::trust_anchor)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            inner: Arc::new(TrustInner { roots, anchors }),
        })
    }

    /// The root certificates, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.inner.roots
    }

    /// The roots, PEM.
    pub fn to_pem(&self) -> String {
        self.inner
            .roots
            .iter()
            .map(|c| to_pem("CERTIFICATE", c))
            .collect()
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.inner.anchors
    }
}

impl PartialEq for TrustBundle {
    fn eq(&self, other: &Self) -> bool {
        self.inner.roots == other.inner.roots
    }
}

impl Eq for TrustBundle {}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustBundle({} roots)", self.inner.roots.len())
    }
}

/// A workload's certificate chain and private key, verified against the mesh
/// roots when it was built.
pub struct WorkloadCertificate {
    identity: Identity,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    trust: TrustBundle,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity.to_string())
            .field("chain_len", &self.chain.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCertificate {
    /// Accepts a PEM chain (leaf first, then intermediates; a trailing copy of
    /// a root is dropped) and its PKCS#8 PEM private key, as returned by a CA.
    ///
    /// The chain must reach one of `trust`'s roots now, the leaf must carry
    /// exactly one SPIFFE URI SAN, be usable as both TLS client and server,
    /// and match the key.
    pub fn from_pem(chain_pem: &str, key_pem: &str, trust: TrustBundle) -> Result<Self, Error> {
        let chain = parse_certificates(chain_pem, "certificate chain")?;
        let key =
            PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Error::Pem {
                what: "private key",
                detail: format!("expected a PKCS#8 `PRIVATE KEY` block: {e}"),
            })?;
        Self::from_der(chain, key, trust)
    }

    /// As [`WorkloadCertificate::from_pem`], from DER.
    pub fn from_der(
        mut chain: Vec<CertificateDer<'static>>,
        key: PrivatePkcs8KeyDer<'static>,
        trust: TrustBundle,
    ) -> Result<Self, Error> {
        // CAs (Istio's included) often append the root; it is not sent.
        chain.retain(|c| !trust.roots().contains(c));
        let Some(leaf) = chain.first() else {
            return Err(Error::Pem {
                what: "certificate chain",
                detail: "no leaf certificate".into(),
            });
        };
        let now = pki::unix_now();
        for role in [PeerRole::Server, PeerRole::Client] {
            pki::verify_chain(trust.anchors(), leaf, &chain[1..], now, role)
                .map_err(|r| Error::ChainRejected(r.to_string()))?;
        }
        let identity = verifier::leaf_identity(leaf, PeerRole::Server)
            .and_then(|_| verifier::leaf_identity(leaf, PeerRole::Client))
            .map_err(|r| Error::ChainRejected(r.to_string()))?;
        let (not_before, not_after) = validity(leaf)?;
        let cert = Self {
            identity,
            chain,
            key,
            trust,
            not_before,
            not_after,
        };
        // Fails if the key does not belong to the leaf.
        cert.certified_key()?;
        Ok(cert)
    }

    /// The SPIFFE identity in the leaf's URI SAN.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Leaf first, then intermediates (the root is not included), DER.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| to_pem("CERTIFICATE", c))
            .collect()
    }

    /// The signing key and chain, ready for rustls; fails if the key does not
    /// belong to the leaf.
    pub(crate) fn certified_key(&self) -> Result<Arc<CertifiedKey>, Error> {
        pki::certified_key(&self.chain, self.key.secret_pkcs8_der())
    }

    /// The private key, PKCS#8 DER.
    pub fn private_key_der(&self) -> &[u8] {
        self.key.secret_pkcs8_der()
    }

    /// The private key, PKCS#8 PEM.
    pub fn private_key_pem(&self) -> String {
        to_pem("PRIVATE KEY", self.key.secret_pkcs8_der())
    }

    /// The roots this certificate (and its peers) chain to.
    pub fn trust(&self) -> &TrustBundle {
        &self.trust
    }

    /// Start of the leaf's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the leaf's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When to replace this certificate: half-way through its lifetime.
    pub fn refresh_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + lifetime / 2
    }

    /// True once `now` is past the leaf's notAfter.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now > self.not_after
    }
}

/// A certificate signing request for a workload identity, with the ECDSA
/// P-256 key it was made for. Send [`CertificateRequest::csr_pem`] to the
/// CA, then [`CertificateRequest::complete`] with the returned chain.
pub struct CertificateRequest {
    identity: Identity,
    csr_pem: String,
    key: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for CertificateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateRequest")
            .field("identity", &self.identity.to_string())
            .finish_non_exhaustive()
    }
}

impl CertificateRequest {
    /// Generates a fresh P-256 key and a CSR carrying `identity` as its only
    /// (critical-free) URI SAN and an empty subject, as Istio agents do.
    pub fn new(identity: &Identity) -> Result<Self, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![spiffe_san(identity)?];
        let csr_pem = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(Error::generate)?;
        Ok(Self {
            identity: identity.clone(),
            csr_pem,
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }

    /// The identity requested.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The CSR, PEM (`CERTIFICATE REQUEST`).
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// Combines the CA's answer with our key. The chain must verify against
    /// `trust` and name the identity that was requested.
    pub fn complete(
        self,
        chain_pem: &str,
        trust: TrustBundle,
    ) -> Result<WorkloadCertificate, Error> {
        let chain = parse_certificates(chain_pem, "certificate chain")?;
        let cert = WorkloadCertificate::from_der(chain, self.key, trust)?;
        if cert.identity != self.identity {
            return Err(Error::ChainRejected(format!(
                "CA issued a certificate for {} but {} was requested",
                cert.identity, self.identity
            )));
        }
        Ok(cert)
    }
}

pub(crate) fn spiffe_san(identity: &Identity) -> Result<SanType, Error> {
    let uri = identity
        .to_string()
        .try_into()
        .map_err(|e: rcgen::Error| Error::generate(e))?;
    Ok(SanType::URI(uri))
}

/// Parses all `CERTIFICATE` blocks of a PEM text.
pub(crate) fn parse_certificates(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            what,
            detail: "no `CERTIFICATE` block found".into(),
        });
    }
    Ok(certs)
}

/// The validity window of a certificate.
pub(crate) fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), Error> {
    parse(der).map(|cert| validity_of(&cert))
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, Error> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| Error::Pem {
        what: "certificate",
        detail: format!("cannot parse: {e}"),
    })?;
    Ok(cert)
}

fn validity_of(cert: &X509Certificate<'_>) -> (SystemTime, SystemTime) {
    let to_time = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    (
        to_time(cert.validity().not_before.timestamp()),
        to_time(cert.validity().not_after.timestamp()),
    )
}

/// What an admin dump shows of one certificate, as ztunnel's `config_dump` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The certificate's PEM text, itself base64-encoded (ztunnel's `pem`).
    pub pem_base64: String,
    /// The serial number, in decimal (ztunnel's `serialNumber`).
    pub serial: String,
    /// Start of its validity.
    pub not_before: SystemTime,
    /// End of its validity.
    pub not_after: SystemTime,
}

/// The [`CertSummary`] of one DER certificate.
fn summarize(der: &[u8]) -> Result<CertSummary, Error> {
    let cert = parse(der)?;
    let (not_before, not_after) = validity_of(&cert);
    Ok(CertSummary {
        pem_base64: base64(to_pem("CERTIFICATE", der).as_bytes()),
        serial: cert.tbs_certificate.serial.to_string(),
        not_before,
        not_after,
    })
}

impl WorkloadCertificate {
    /// The summaries of its chain (leaf first) and of its roots.
    pub fn summaries(&self) -> (Vec<CertSummary>, Vec<CertSummary>) {
        let all = |certs: &[CertificateDer<'static>]| {
            certs.iter().filter_map(|c| summarize(c).ok()).collect()
        };
        (all(self.chain()), all(self.trust().roots()))
    }
}

/// Standard base64 (with padding).
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Encodes DER as PEM with 64-column lines.
pub(crate) fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_shows_the_serial_validity_and_pem_of_each_certificate() {
        let ca = crate::ca::LocalCa::generate().unwrap();
        let id: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let cert = ca.issue(&id, Duration::from_secs(3600)).unwrap();
        let (chain, roots) = cert.summaries();
        assert_eq!((chain.len(), roots.len()), (1, 1));
        let leaf = &chain[0];
        assert!(!leaf.serial.is_empty() && leaf.serial.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(
            (leaf.not_before, leaf.not_after),
            (cert.not_before(), cert.not_after())
        );
        assert!(
            leaf.pem_base64
                .starts_with("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"),
            "{}",
            leaf.pem_base64
        );
        assert_ne!(roots[0].serial, "");
    }

    #[test]
    fn pem_round_trips_through_the_parser() {
        for len in [1usize, 2, 3, 4, 5, 47, 48, 49, 100] {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let pem = to_pem("CERTIFICATE", &der);
            let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert_eq!(back.as_ref(), &der[..], "len {len}");
        }
    }

    #[test]
    fn empty_pem_is_a_clear_error() {
        let err = TrustBundle::from_pem("nothing here")
            .unwrap_err()
            .to_string();
        assert!(err.contains("root certificate"), "{err}");
    }
}
