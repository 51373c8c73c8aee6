//! The webpki side of TLS and the crypto provider: trust anchors, chain
//! verification, and loading a signing key, on raw DER so that the certificate
//! types above build on it. With [`crate::tls`] (configurations and the
//! handshake), the only module that calls rustls or webpki.
//!
//! The provider is rustls' `ring` backend restricted to TLS 1.3 with
//! AES-128-GCM and AES-256-GCM (X25519, P-256, P-384 key exchange).

use std::sync::{Arc, OnceLock};

use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, TrustAnchor, UnixTime};

use crate::error::Error;
use crate::verifier::{PeerRole, Rejection};

/// `id-kp-serverAuth` (1.3.6.1.5.5.7.3.1), DER contents.
const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// `id-kp-clientAuth` (1.3.6.1.5.5.7.3.2), DER contents.
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// The crypto provider: ring, TLS 1.3 AES-GCM suites only.
pub(crate) fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let ring = rustls::crypto::ring::default_provider();
        Arc::new(CryptoProvider {
            cipher_suites: vec![
                rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
                rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
            ],
            ..ring
        })
    })
}

/// The signature algorithms of [`provider`], for certificates and handshakes.
pub(crate) fn sig_algs() -> &'static WebPkiSupportedAlgorithms {
    &provider().signature_verification_algorithms
}

/// Turns a root certificate into a webpki trust anchor.
pub(crate) fn trust_anchor(der: &CertificateDer<'_>) -> Result<TrustAnchor<'static>, Error> {
    webpki::anchor_from_trusted_cert(der)
        .map(|a| a.to_owned())
        .map_err(|e| Error::Pem {
            what: "root certificate",
            detail: format!("not usable as a trust anchor: {e}"),
        })
}

/// Verifies that `leaf` chains to one of the roots `anchors` at `now`, with no
/// certificate of the chain whose extended key usage excludes `role`. Reports the
/// precise [`Rejection`].
///
/// Intermediate CAs usually carry no extended key usage at all (Istio's plugged-in
/// CAs among them), so an absent extension passes here, as in ztunnel; that the
/// leaf itself carries the extension with `role`'s purpose is checked with the rest
/// of the leaf rules ([`crate::verifier`]).
pub(crate) fn verify_chain(
    anchors: &[TrustAnchor<'_>],
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    role: PeerRole,
) -> Result<(), Rejection> {
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| Rejection::Malformed(format!("cannot parse leaf certificate: {e}")))?;
    let eku = match role {
        PeerRole::Server => webpki::KeyUsage::required_if_present(EKU_SERVER_AUTH),
        PeerRole::Client => webpki::KeyUsage::required_if_present(EKU_CLIENT_AUTH),
    };
    cert.verify_for_usage(sig_algs().all, anchors, intermediates, now, eku, None, None)
        .map(|_| ())
        .map_err(map_webpki_error)
}

fn map_webpki_error(e: webpki::Error) -> Rejection {
    use webpki::Error as W;
    match e {
        W::CertExpired { .. } => Rejection::Expired,
        W::CertNotValidYet { .. } => Rejection::NotYetValid,
        W::UnknownIssuer => Rejection::UntrustedRoot,
        W::InvalidSignatureForPublicKey
        | W::UnsupportedSignatureAlgorithmContext(_)
        | W::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => Rejection::BadSignature,
        W::CaUsedAsEndEntity => Rejection::WrongKeyUsage("a CA certificate is used as a leaf"),
        W::RequiredEkuNotFoundContext(_) | W::EmptyEkuExtension => {
            Rejection::WrongKeyUsage("extended key usage does not allow this role")
        }
        other => Rejection::Malformed(format!("{other}")),
    }
}

/// The current time as webpki wants it.
pub(crate) fn unix_now() -> UnixTime {
    UnixTime::now()
}

/// A signing key (PKCS#8 DER) and its certificate chain, ready for rustls;
/// fails if the key does not belong to the chain's leaf.
pub(crate) fn certified_key(
    chain: &[CertificateDer<'static>],
    pkcs8: &[u8],
) -> Result<Arc<CertifiedKey>, Error> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    let certified = CertifiedKey::from_der(chain.to_vec(), key, provider())
        .map_err(|e| Error::Config(format!("certificate and private key do not match: {e}")))?;
    Ok(Arc::new(certified))
}
