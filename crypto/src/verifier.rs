//! Peer certificate verification and its proof type, [`VerifiedPeer`].
//!
//! A peer is accepted only when all of these hold, checked in this order (the
//! first failure is the reported [`Rejection`]):
//!
//! 1. the chain reaches one of the mesh roots, every certificate is inside its
//!    validity window, the leaf is not a CA and carries the extended key usage
//!    of its role (`serverAuth` for a server, `clientAuth` for a client);
//! 2. the leaf has a KeyUsage extension asserting `digitalSignature`;
//! 3. no subject alternative name holds a NUL or control byte;
//! 4. the leaf has **exactly one** URI SAN (the X.509-SVID rule: a certificate
//!    with several URI SANs names several workloads and is rejected, even if
//!    one of them would match); DNS and IP SANs are ignored;
//! 5. that URI SAN is a well-formed SPIFFE workload identity;
//! 6. client side: the identity is one of those expected for the destination;
//!    server side: the identity's trust domain is ours.

use std::fmt;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::identity::{Identity, IdentityError};

/// Why a peer certificate was refused. Each variant has a stable metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The peer sent no certificate although one is required.
    #[error("peer presented no certificate: mutual TLS requires a workload certificate")]
    NoCertificate,
    /// A certificate in the chain could not be parsed.
    #[error("peer certificate is malformed: {0}")]
    Malformed(String),
    /// A certificate in the chain is past its notAfter.
    #[error(
        "peer certificate has expired: is its CA rotating certificates (check the peer's clock)?"
    )]
    Expired,
    /// A certificate in the chain is before its notBefore.
    #[error("peer certificate is not yet valid: check the clocks of this node and the peer")]
    NotYetValid,
    /// The chain does not lead to a trusted mesh root.
    #[error("peer certificate chain does not reach a trusted mesh root: do both sides share the same root CA?")]
    UntrustedRoot,
    /// A signature in the chain does not verify.
    #[error("peer certificate chain has an invalid signature")]
    BadSignature,
    /// The leaf's KeyUsage, ExtendedKeyUsage or BasicConstraints do not allow this use.
    #[error("peer certificate is not usable for mutual TLS: {0}")]
    WrongKeyUsage(&'static str),
    /// A SAN holds a NUL or control byte.
    #[error("peer certificate has a NUL or control byte in a subject alternative name")]
    ControlBytesInSan,
    /// The leaf has no URI SAN.
    #[error("peer certificate has no URI subject alternative name: it carries no SPIFFE identity")]
    NoUriSan,
    /// The leaf has more than one URI SAN.
    #[error("peer certificate has {0} URI subject alternative names; exactly one SPIFFE identity is required")]
    MultipleUriSans(usize),
    /// The URI SAN is not a valid SPIFFE workload identity.
    #[error("peer certificate URI SAN is not a SPIFFE workload identity: {0}")]
    UriSanNotSpiffe(IdentityError),
    /// The peer's trust domain is not ours (server side).
    #[error("peer identity {got} is from trust domain {}, expected {expected}", got.trust_domain())]
    WrongTrustDomain {
        /// Our trust domain.
        expected: Box<str>,
        /// The identity the peer presented.
        got: Identity,
    },
    /// The peer's identity is not one expected for the destination (client side).
    #[error("peer identity {got} is not one of the identities expected for this destination")]
    IdentityNotExpected {
        /// The identity the peer presented.
        got: Identity,
    },
}

impl Rejection {
    /// A stable, low-cardinality label for metrics (`reason="expired"`).
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::NoCertificate => "no_certificate",
            Rejection::Malformed(_) => "malformed_certificate",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::UntrustedRoot => "untrusted_root",
            Rejection::BadSignature => "bad_signature",
            Rejection::WrongKeyUsage(_) => "wrong_key_usage",
            Rejection::ControlBytesInSan => "control_bytes_in_san",
            Rejection::NoUriSan => "no_uri_san",
            Rejection::MultipleUriSans(_) => "multiple_uri_sans",
            Rejection::UriSanNotSpiffe(_) => "uri_san_not_spiffe",
            Rejection::WrongTrustDomain { .. } => "wrong_trust_domain",
            Rejection::IdentityNotExpected { .. } => "identity_not_expected",
        }
    }

    /// Every label [`Rejection::label`] can return, for pre-registering metrics.
    pub const LABELS: &'static [&'static str] = &[
        "no_certificate",
        "malformed_certificate",
        "expired",
        "not_yet_valid",
        "untrusted_root",
        "bad_signature",
        "wrong_key_usage",
        "control_bytes_in_san",
        "no_uri_san",
        "multiple_uri_sans",
        "uri_san_not_spiffe",
        "wrong_trust_domain",
        "identity_not_expected",
    ];
}

/// Proof that a peer presented a certificate chain verified by this crate.
///
/// Only the verifier in this crate creates one (there is no public
/// constructor); a session hands it out once its handshake has completed.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    identity: Identity,
}

impl VerifiedPeer {
    /// The peer's SPIFFE identity, taken from its verified certificate.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

#[cfg(feature = "test-peer")]
impl VerifiedPeer {
    /// A peer that proved nothing, for other crates' tests (feature `test-peer`).
    #[doc(hidden)]
    pub fn for_tests(identity: Identity) -> Self {
        VerifiedPeer { identity }
    }
}

impl fmt::Debug for VerifiedPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifiedPeer({})", self.identity)
    }
}

/// The role the verified peer plays in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerRole {
    /// The peer is a TLS server (we are the client).
    Server,
    /// The peer is a TLS client (we are the server).
    Client,
}

/// What a peer must satisfy beyond a chain to the mesh root.
#[derive(Debug, Clone)]
pub(crate) enum Expectation {
    /// Client side: the server must be one of these identities.
    OneOf(Vec<Identity>),
    /// Server side: the client must be in this trust domain.
    TrustDomain(Box<str>),
}

impl Expectation {
    fn role(&self) -> PeerRole {
        match self {
            Expectation::OneOf(_) => PeerRole::Server,
            Expectation::TrustDomain(_) => PeerRole::Client,
        }
    }
}

/// Steps 2–6 of the module rules, on a leaf whose chain already verified.
pub(crate) fn verify_leaf(
    leaf_der: &[u8],
    expect: &Expectation,
) -> Result<VerifiedPeer, Rejection> {
    let identity = leaf_identity(leaf_der, expect.role())?;
    match expect {
        Expectation::OneOf(ids) if ids.contains(&identity) => Ok(VerifiedPeer { identity }),
        Expectation::OneOf(_) => Err(Rejection::IdentityNotExpected { got: identity }),
        Expectation::TrustDomain(td) if identity.trust_domain() == &**td => {
            Ok(VerifiedPeer { identity })
        }
        Expectation::TrustDomain(td) => Err(Rejection::WrongTrustDomain {
            expected: td.clone(),
            got: identity,
        }),
    }
}

/// Checks the key usage and SAN rules of a leaf (used for both roles) and
/// returns its identity.
pub(crate) fn leaf_identity(leaf_der: &[u8], role: PeerRole) -> Result<Identity, Rejection> {
    let (_, cert) = X509Certificate::from_der(leaf_der)
        .map_err(|e| Rejection::Malformed(format!("cannot parse leaf certificate: {e}")))?;
    check_key_usage(&cert, role)?;
    let uri = single_uri_san(&cert)?;
    uri.parse::<Identity>().map_err(Rejection::UriSanNotSpiffe)
}

fn check_key_usage(cert: &X509Certificate<'_>, role: PeerRole) -> Result<(), Rejection> {
    let bc = cert
        .basic_constraints()
        .map_err(|e| Rejection::Malformed(format!("bad basic constraints: {e}")))?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(Rejection::WrongKeyUsage(
            "a CA certificate is used as a leaf",
        ));
    }
    let ku = cert
        .key_usage()
        .map_err(|e| Rejection::Malformed(format!("bad key usage: {e}")))?;
    match ku {
        Some(ku) if ku.value.digital_signature() => {}
        Some(_) => return Err(Rejection::WrongKeyUsage("key usage lacks digitalSignature")),
        None => return Err(Rejection::WrongKeyUsage("no key usage extension")),
    }
    let eku = cert
        .extended_key_usage()
        .map_err(|e| Rejection::Malformed(format!("bad extended key usage: {e}")))?;
    let Some(eku) = eku else {
        return Err(Rejection::WrongKeyUsage("no extended key usage extension"));
    };
    match role {
        PeerRole::Server if !eku.value.server_auth => Err(Rejection::WrongKeyUsage(
            "extended key usage lacks serverAuth",
        )),
        PeerRole::Client if !eku.value.client_auth => Err(Rejection::WrongKeyUsage(
            "extended key usage lacks clientAuth",
        )),
        _ => Ok(()),
    }
}

fn single_uri_san<'a>(cert: &'a X509Certificate<'_>) -> Result<&'a str, Rejection> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| Rejection::Malformed(format!("bad subject alternative name: {e}")))?;
    let Some(san) = san else {
        return Err(Rejection::NoUriSan);
    };
    let names = &san.value.general_names;
    for name in names {
        let text = match name {
            GeneralName::URI(s) | GeneralName::DNSName(s) | GeneralName::RFC822Name(s) => s,
            _ => continue,
        };
        if text.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(Rejection::ControlBytesInSan);
        }
    }
    let mut uris = names.iter().filter_map(|n| match n {
        GeneralName::URI(s) => Some(*s),
        _ => None,
    });
    match (uris.next(), uris.count()) {
        (None, _) => Err(Rejection::NoUriSan),
        (Some(uri), 0) => Ok(uri),
        (Some(_), more) => Err(Rejection::MultipleUriSans(more + 1)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_listed_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for l in Rejection::LABELS {
            assert!(seen.insert(*l), "duplicate label {l}");
        }
        assert!(Rejection::LABELS.contains(&Rejection::Expired.label()));
        assert!(Rejection::LABELS.contains(&Rejection::MultipleUriSans(2).label()));
    }

    #[test]
    fn garbage_leaf_is_malformed() {
        let err = leaf_identity(b"not a certificate", PeerRole::Client).unwrap_err();
        assert_eq!(err.label(), "malformed_certificate");
    }
}
