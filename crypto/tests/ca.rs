//! The built-in CA: persistence in the state directory, given roots of every
//! supported key type, issued leaves, and the CSR round trip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use zpath_crypto::{
    CertificateRequest, CertifiedTls, Error, LocalCa, TrustBundle, ROOT_CERT_FILE, ROOT_KEY_FILE,
};

const RSA_ROOT_CERT: &str = include_str!("data/rsa-root-cert.pem");
const RSA_ROOT_KEY: &str = include_str!("data/rsa-root-key.pem");
const P384_ROOT_CERT: &str = include_str!("data/p384-root-cert.pem");
const P384_ROOT_KEY: &str = include_str!("data/p384-root-key.pem");

#[test]
fn restart_keeps_the_root_in_the_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = LocalCa::load_or_create(dir.path()).unwrap();
    let key_mode = std::fs::metadata(dir.path().join(ROOT_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert!(dir.path().join(ROOT_CERT_FILE).exists());

    let second = LocalCa::load_or_create(dir.path()).unwrap();
    assert_eq!(first.trust(), second.trust());
    assert_eq!(first.root_pem(), second.root_pem());

    // A leaf from the restarted CA is trusted by a peer of the first one.
    let before = certified(
        first
            .issue(&id(CLIENT_ID), Duration::from_secs(600))
            .unwrap(),
    );
    let after = certified(
        second
            .issue(&id(SERVER_ID), Duration::from_secs(600))
            .unwrap(),
    );
    let mut client = client_session(&before, &[SERVER_ID]);
    let mut server = server_session(&after);
    let (c, s) = handshake(&mut client, &mut server);
    c.unwrap();
    s.unwrap();
}

#[test]
fn a_fresh_state_directory_gets_a_different_root() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let ca_a = LocalCa::load_or_create(a.path()).unwrap();
    let ca_b = LocalCa::load_or_create(b.path()).unwrap();
    assert_ne!(ca_a.trust(), ca_b.trust());
}

#[test]
fn half_present_state_is_an_error_not_a_new_root() {
    let dir = tempfile::tempdir().unwrap();
    LocalCa::load_or_create(dir.path()).unwrap();
    std::fs::remove_file(dir.path().join(ROOT_KEY_FILE)).unwrap();
    let err = LocalCa::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Ca(_)), "{err}");
    assert!(err.to_string().contains(ROOT_KEY_FILE), "{err}");
}

#[test]
fn state_directory_is_created_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    LocalCa::load_or_create(&nested).unwrap();
    assert!(nested.join(ROOT_CERT_FILE).exists());
}

fn check_root_issues_working_leaves(ca: &LocalCa) {
    let trust = TrustBundle::from_pem(&ca.root_pem()).unwrap();
    assert_eq!(&trust, ca.trust());
    let server = certified(ca.issue(&id(SERVER_ID), Duration::from_secs(600)).unwrap());
    let client = certified(ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap());
    let mut c = client_session(&client, &[SERVER_ID]);
    let mut s = server_session(&server);
    let (cr, sr) = handshake(&mut c, &mut s);
    cr.unwrap();
    sr.unwrap();
    assert_eq!(s.peer().unwrap().identity(), &id(CLIENT_ID));
}

#[test]
fn rsa_root_given_as_pem_issues_trusted_leaves() {
    let ca = LocalCa::from_pem(RSA_ROOT_CERT, RSA_ROOT_KEY).unwrap();
    check_root_issues_working_leaves(&ca);
}

#[test]
fn p384_root_given_as_pem_issues_trusted_leaves() {
    let ca = LocalCa::from_pem(P384_ROOT_CERT, P384_ROOT_KEY).unwrap();
    check_root_issues_working_leaves(&ca);
}

#[test]
fn p256_root_given_as_pem_issues_trusted_leaves() {
    let generated = LocalCa::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let persisted = LocalCa::load_or_create(dir.path()).unwrap();
    let cert = std::fs::read_to_string(dir.path().join(ROOT_CERT_FILE)).unwrap();
    let key = std::fs::read_to_string(dir.path().join(ROOT_KEY_FILE)).unwrap();
    let given = LocalCa::from_pem(&cert, &key).unwrap();
    assert_eq!(given.trust(), persisted.trust());
    check_root_issues_working_leaves(&given);
    check_root_issues_working_leaves(&generated);
}

#[test]
fn mismatched_root_key_is_refused() {
    let err = LocalCa::from_pem(RSA_ROOT_CERT, P384_ROOT_KEY).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
}

#[test]
fn non_ca_root_is_refused() {
    let ca = LocalCa::generate().unwrap();
    let leaf = ca.issue(&id(SERVER_ID), Duration::from_secs(600)).unwrap();
    let err = LocalCa::from_pem(&leaf.chain_pem(), &leaf.private_key_pem()).unwrap_err();
    assert!(err.to_string().contains("cA=true"), "{err}");
}

#[test]
fn unreadable_key_explains_the_expected_format() {
    let err = LocalCa::from_pem(
        RSA_ROOT_CERT,
        "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("PKCS#8"), "{err}");
}

#[test]
fn issued_leaf_has_the_workload_shape() {
    let ca = LocalCa::generate().unwrap();
    let lifetime = Duration::from_secs(24 * 3600);
    let cert = ca.issue(&id(SERVER_ID), lifetime).unwrap();
    assert_eq!(cert.identity(), &id(SERVER_ID));
    assert_eq!(cert.chain().len(), 1);
    let total = cert.not_after().duration_since(cert.not_before()).unwrap();
    let half = cert.refresh_at().duration_since(cert.not_before()).unwrap();
    assert_eq!(half, total / 2);
    assert!(cert.refresh_at() > SystemTime::now());
    assert!(!cert.is_expired_at(SystemTime::now()));
    assert!(cert.is_expired_at(cert.not_after() + Duration::from_secs(1)));

    let (_, x509) = X509Certificate::from_der(&cert.chain()[0]).unwrap();
    let san = x509.subject_alternative_name().unwrap().unwrap();
    let uris: Vec<_> = san
        .value
        .general_names
        .iter()
        .filter(|n| matches!(n, GeneralName::URI(_)))
        .collect();
    assert_eq!(uris.len(), 1);
    assert!(x509.key_usage().unwrap().unwrap().value.digital_signature());
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!x509.basic_constraints().unwrap().unwrap().value.ca);
    // ECDSA P-256 leaf key.
    assert_eq!(
        x509.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1"
    );
}

#[test]
fn zero_lifetime_is_refused() {
    let ca = LocalCa::generate().unwrap();
    assert!(ca.issue(&id(SERVER_ID), Duration::ZERO).is_err());
}

#[test]
fn csr_round_trip_through_a_ca() {
    let ca = LocalCa::generate().unwrap();
    let request = CertificateRequest::new(&id(CLIENT_ID)).unwrap();
    assert!(request
        .csr_pem()
        .starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    let leaf_pem = ca
        .sign_csr(request.csr_pem(), Duration::from_secs(600))
        .unwrap();
    // CAs such as Istio's append the root; it is accepted and dropped.
    let answer = format!("{leaf_pem}{}", ca.root_pem());
    let cert = request.complete(&answer, ca.trust().clone()).unwrap();
    assert_eq!(cert.identity(), &id(CLIENT_ID));
    assert_eq!(cert.chain().len(), 1);
    CertifiedTls::new(Arc::new(cert)).unwrap();
}

/// As istiod answers with a plugged-in CA: leaf, intermediate (with no extended key
/// usage, as such CAs are made) and root. The intermediate is kept and sent in the
/// handshake; the root is dropped.
#[test]
fn csr_answered_through_an_intermediate_ca_keeps_the_intermediate() {
    use rcgen::{
        BasicConstraints, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
        Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    };
    let root = TestRoot::new("mesh root");
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "intermediate");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let intermediate = ca_params
        .signed_by(&ca_key, &Issuer::from_params(&root.params, &root.key))
        .unwrap();

    let request = CertificateRequest::new(&id(CLIENT_ID)).unwrap();
    let mut csr = CertificateSigningRequestParams::from_pem(request.csr_pem()).unwrap();
    csr.params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    csr.params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf = csr
        .signed_by(&Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let answer = format!("{}{}{}", leaf.pem(), intermediate.pem(), root.cert.pem());
    let trust = TrustBundle::from_pem(&root.cert.pem()).unwrap();
    let cert = request.complete(&answer, trust).unwrap();
    assert_eq!(cert.identity(), &id(CLIENT_ID));
    assert_eq!(cert.chain().len(), 2, "leaf and intermediate, root dropped");
    assert_eq!(cert.chain()[1], *intermediate.der());

    // A peer that trusts only the root sees both in the handshake.
    let ours = CertifiedTls::new(Arc::new(cert)).unwrap();
    let mut server = server_session(&ours);
    let (client_chain, client_key) = root.sign(&good_leaf(SERVER_ID));
    let mut client = foreign_client(Some((client_chain, &client_key)));
    let (ours_result, theirs) = handshake_foreign(&mut server, &mut client);
    theirs.unwrap();
    ours_result.unwrap();
    let sent = client.peer_certificates().unwrap();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1], *intermediate.der());
}

#[test]
fn csr_answer_from_another_root_is_refused() {
    let ca = LocalCa::generate().unwrap();
    let other = LocalCa::generate().unwrap();
    let request = CertificateRequest::new(&id(CLIENT_ID)).unwrap();
    let leaf_pem = other
        .sign_csr(request.csr_pem(), Duration::from_secs(600))
        .unwrap();
    let err = request.complete(&leaf_pem, ca.trust().clone()).unwrap_err();
    assert!(matches!(err, Error::ChainRejected(_)), "{err}");
    assert!(err.to_string().contains("root"), "{err}");
}

#[test]
fn csr_answer_for_another_identity_is_refused() {
    let ca = LocalCa::generate().unwrap();
    let request = CertificateRequest::new(&id(CLIENT_ID)).unwrap();
    let imposter = CertificateRequest::new(&id(SERVER_ID)).unwrap();
    let leaf_pem = ca
        .sign_csr(imposter.csr_pem(), Duration::from_secs(600))
        .unwrap();
    // Wrong key and wrong identity: refused either way.
    assert!(request.complete(&leaf_pem, ca.trust().clone()).is_err());
}

#[test]
fn chain_with_wrong_private_key_is_refused() {
    let ca = LocalCa::generate().unwrap();
    let a = ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap();
    let b = ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap();
    let err = zpath_crypto::WorkloadCertificate::from_pem(
        &a.chain_pem(),
        &b.private_key_pem(),
        ca.trust().clone(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("do not match"), "{err}");
}

#[test]
fn workload_certificate_pem_round_trip() {
    let ca = LocalCa::generate().unwrap();
    let a = ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap();
    let b = zpath_crypto::WorkloadCertificate::from_pem(
        &a.chain_pem(),
        &a.private_key_pem(),
        ca.trust().clone(),
    )
    .unwrap();
    assert_eq!(a.chain(), b.chain());
    assert_eq!(a.identity(), b.identity());
}
