//! Every rejection reason, each provoked by one defect in an otherwise valid
//! certificate, asserted on the side that must refuse it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
use zpath_crypto::{Rejection, SessionError};

/// Our client, expecting SERVER_ID, against a foreign server presenting a
/// leaf built from `params` by `root`. Returns our client's rejection.
fn client_rejects(root: &TestRoot, params: CertificateParams) -> Rejection {
    let mesh = mesh_root();
    let ours = mesh.issue(CLIENT_ID);
    let (chain, key) = root.sign(&params);
    let mut client = client_session(&ours, &[SERVER_ID]);
    let mut server = foreign_server(chain, &key);
    let (ours_result, _) = handshake_foreign(&mut client, &mut server);
    match ours_result {
        Err(SessionError::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Our server against a foreign client presenting a leaf built from `params`.
fn server_rejects(root: &TestRoot, params: CertificateParams) -> Rejection {
    let mesh = mesh_root();
    let ours = mesh.issue(SERVER_ID);
    let (chain, key) = root.sign(&params);
    let mut server = server_session(&ours);
    let mut client = foreign_client(Some((chain, &key)));
    let (ours_result, _) = handshake_foreign(&mut server, &mut client);
    match ours_result {
        Err(SessionError::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// One mesh root per test binary keeps the matrix fast.
fn mesh_root() -> &'static TestRoot {
    static ROOT: std::sync::OnceLock<TestRoot> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| TestRoot::new("mesh root"))
}

fn both_sides(params: impl Fn() -> CertificateParams, label: &str) {
    let root = mesh_root();
    let c = client_rejects(root, params());
    assert_eq!(c.label(), label, "client side: {c}");
    let s = server_rejects(root, params());
    assert_eq!(s.label(), label, "server side: {s}");
}

#[test]
fn valid_foreign_peers_are_accepted() {
    // The harness itself must not reject good certificates.
    let mesh = mesh_root();
    let ours = mesh.issue(CLIENT_ID);
    let (chain, key) = mesh.sign(&good_leaf(SERVER_ID));
    let mut client = client_session(&ours, &[SERVER_ID]);
    let mut server = foreign_server(chain, &key);
    let (ours_result, theirs) = handshake_foreign(&mut client, &mut server);
    ours_result.unwrap();
    theirs.unwrap();
    assert_eq!(client.peer().unwrap().identity(), &id(SERVER_ID));

    let ours = mesh.issue(SERVER_ID);
    let (chain, key) = mesh.sign(&good_leaf(CLIENT_ID));
    let mut server = server_session(&ours);
    let mut client = foreign_client(Some((chain, &key)));
    let (ours_result, theirs) = handshake_foreign(&mut server, &mut client);
    ours_result.unwrap();
    theirs.unwrap();
    assert_eq!(server.peer().unwrap().identity(), &id(CLIENT_ID));
}

/// An intermediate CA under the mesh root: no extended key usage, as Istio's
/// plugged-in CAs are made, unless `eku` gives one.
fn intermediate(eku: Vec<ExtendedKeyUsagePurpose>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "intermediate");
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.extended_key_usages = eku;
    p
}

/// Both of our sides against foreign peers whose chains run through `ca`: our
/// client's result against a server chain, our server's against a client chain.
fn via_intermediate(
    ca: &CertificateParams,
) -> (Result<(), SessionError>, Result<(), SessionError>) {
    let mesh = mesh_root();
    let (chain, key) = mesh.sign_via_intermediate(ca, &good_leaf(SERVER_ID));
    let mut client = client_session(&mesh.issue(CLIENT_ID), &[SERVER_ID]);
    let mut server = foreign_server(chain, &key);
    let (as_client, _) = handshake_foreign(&mut client, &mut server);

    let (chain, key) = mesh.sign_via_intermediate(ca, &good_leaf(CLIENT_ID));
    let mut server = server_session(&mesh.issue(SERVER_ID));
    let mut client = foreign_client(Some((chain, &key)));
    let (as_server, _) = handshake_foreign(&mut server, &mut client);
    (as_client, as_server)
}

#[test]
fn a_chain_through_an_intermediate_ca_is_accepted() {
    let (as_client, as_server) = via_intermediate(&intermediate(vec![]));
    as_client.expect("our client accepts leaf + intermediate");
    as_server.expect("our server accepts leaf + intermediate");
    // An intermediate that names both purposes is as good.
    let both = intermediate(vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ]);
    let (as_client, as_server) = via_intermediate(&both);
    as_client.unwrap();
    as_server.unwrap();
}

#[test]
fn an_intermediate_whose_extended_key_usage_excludes_the_role_is_rejected() {
    let rejected = |r: Result<(), SessionError>| match r {
        Err(SessionError::Rejected(r)) => r.label(),
        other => panic!("expected a rejection, got {other:?}"),
    };
    let (as_client, _) = via_intermediate(&intermediate(vec![ExtendedKeyUsagePurpose::ClientAuth]));
    assert_eq!(rejected(as_client), "wrong_key_usage");
    let (_, as_server) = via_intermediate(&intermediate(vec![ExtendedKeyUsagePurpose::ServerAuth]));
    assert_eq!(rejected(as_server), "wrong_key_usage");
}

#[test]
fn expired_certificate_is_rejected() {
    both_sides(
        || {
            let mut p = good_leaf(SERVER_ID);
            let now = SystemTime::now();
            p.not_before = (now - Duration::from_secs(7200)).into();
            p.not_after = (now - Duration::from_secs(3600)).into();
            p
        },
        "expired",
    );
}

#[test]
fn not_yet_valid_certificate_is_rejected() {
    both_sides(
        || {
            let mut p = good_leaf(SERVER_ID);
            let now = SystemTime::now();
            p.not_before = (now + Duration::from_secs(3600)).into();
            p.not_after = (now + Duration::from_secs(7200)).into();
            p
        },
        "not_yet_valid",
    );
}

#[test]
fn untrusted_root_is_rejected() {
    let other = TestRoot::new("some other root");
    let c = client_rejects(&other, good_leaf(SERVER_ID));
    assert_eq!(c, Rejection::UntrustedRoot);
    let s = server_rejects(&other, good_leaf(CLIENT_ID));
    assert_eq!(s, Rejection::UntrustedRoot);
}

#[test]
fn wrong_trust_domain_is_rejected_by_the_server() {
    let s = server_rejects(
        mesh_root(),
        good_leaf("spiffe://other.domain/ns/default/sa/client"),
    );
    assert!(matches!(s, Rejection::WrongTrustDomain { .. }), "{s}");
    assert_eq!(s.label(), "wrong_trust_domain");
}

#[test]
fn wrong_trust_domain_between_two_zpath_peers() {
    // Same root, our own client from another trust domain.
    let mesh = mesh_root();
    let server_cert = mesh.issue(SERVER_ID);
    let client_cert = mesh.issue("spiffe://other.domain/ns/default/sa/client");
    let mut client = client_session(&client_cert, &[SERVER_ID]);
    let mut server = server_session(&server_cert);
    let (c, s) = handshake(&mut client, &mut server);
    assert_eq!(s.unwrap_err().label(), "wrong_trust_domain");
    assert_eq!(c.unwrap_err().label(), "alert_received");
    assert!(server.peer().is_none());
}

#[test]
fn identity_not_expected_is_rejected_by_the_client() {
    let mesh = mesh_root();
    let server_cert = mesh.issue("spiffe://cluster.local/ns/default/sa/impostor");
    let client_cert = mesh.issue(CLIENT_ID);
    let mut client = client_session(&client_cert, &[SERVER_ID]);
    let mut server = server_session(&server_cert);
    let (c, s) = handshake(&mut client, &mut server);
    let c = c.unwrap_err();
    assert_eq!(c.label(), "identity_not_expected", "{c}");
    assert!(s.is_err(), "server must see the client abort");
    assert!(client.peer().is_none());
}

#[test]
fn one_of_several_expected_identities_is_accepted() {
    let mesh = mesh_root();
    let server_cert = mesh.issue(SERVER_ID);
    let client_cert = mesh.issue(CLIENT_ID);
    let mut client = client_session(
        &client_cert,
        &["spiffe://cluster.local/ns/default/sa/other", SERVER_ID],
    );
    let mut server = server_session(&server_cert);
    let (c, s) = handshake(&mut client, &mut server);
    c.unwrap();
    s.unwrap();
    assert_eq!(client.peer().unwrap().identity(), &id(SERVER_ID));
    assert_eq!(server.peer().unwrap().identity(), &id(CLIENT_ID));
    assert_eq!(client.alpn(), Some(&b"h2"[..]));
}

#[test]
fn missing_uri_san_is_rejected() {
    both_sides(
        || {
            let mut p = good_leaf(SERVER_ID);
            p.subject_alt_names = vec![SanType::DnsName("server.example".try_into().unwrap())];
            p
        },
        "no_uri_san",
    );
}

#[test]
fn no_san_extension_at_all_is_rejected() {
    both_sides(
        || {
            let mut p = good_leaf(SERVER_ID);
            p.subject_alt_names = vec![];
            p
        },
        "no_uri_san",
    );
}

#[test]
fn more_than_one_uri_san_is_rejected_even_if_one_matches() {
    let params = || {
        let mut p = good_leaf(SERVER_ID);
        p.subject_alt_names
            .push(SanType::URI(CLIENT_ID.try_into().unwrap()));
        p
    };
    let c = client_rejects(mesh_root(), params());
    assert_eq!(c, Rejection::MultipleUriSans(2));
    let s = server_rejects(mesh_root(), params());
    assert_eq!(s, Rejection::MultipleUriSans(2));
}

#[test]
fn non_spiffe_uri_san_is_rejected() {
    both_sides(
        || {
            let mut p = good_leaf(SERVER_ID);
            p.subject_alt_names = vec![SanType::URI(
                "https://cluster.local/ns/default/sa/server"
                    .try_into()
                    .unwrap(),
            )];
            p
        },
        "uri_san_not_spiffe",
    );
}

#[test]
fn malformed_spiffe_uri_san_is_rejected() {
    both_sides(
        || {
            let mut p = good_leaf(SERVER_ID);
            p.subject_alt_names = vec![SanType::URI(
                "spiffe://cluster.local/ns/default/sa/server/extra"
                    .try_into()
                    .unwrap(),
            )];
            p
        },
        "uri_san_not_spiffe",
    );
}

#[test]
fn nul_byte_in_uri_san_is_rejected() {
    both_sides(
        || {
            let mut p = good_leaf(SERVER_ID);
            p.subject_alt_names = vec![SanType::URI(
                "spiffe://cluster.local/ns/default/sa/server\0.evil"
                    .try_into()
                    .unwrap(),
            )];
            p
        },
        "control_bytes_in_san",
    );
}

#[test]
fn control_byte_in_dns_san_is_rejected() {
    both_sides(
        || {
            let mut p = good_leaf(SERVER_ID);
            p.subject_alt_names
                .push(SanType::DnsName("a\nb.example".try_into().unwrap()));
            p
        },
        "control_bytes_in_san",
    );
}

#[test]
fn ca_certificate_as_leaf_is_rejected() {
    both_sides(
        || {
            let mut p = good_leaf(SERVER_ID);
            p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p
        },
        "wrong_key_usage",
    );
}

#[test]
fn missing_digital_signature_key_usage_is_rejected() {
    both_sides(
        || {
            let mut p = good_leaf(SERVER_ID);
            p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
            p
        },
        "wrong_key_usage",
    );
}

#[test]
fn missing_key_usage_extension_is_rejected() {
    both_sides(
        || {
            let mut p = good_leaf(SERVER_ID);
            p.key_usages = vec![];
            p
        },
        "wrong_key_usage",
    );
}

#[test]
fn missing_extended_key_usage_is_rejected() {
    both_sides(
        || {
            let mut p = good_leaf(SERVER_ID);
            p.extended_key_usages = vec![];
            p
        },
        "wrong_key_usage",
    );
}

#[test]
fn server_certificate_without_server_auth_is_rejected() {
    let mut p = good_leaf(SERVER_ID);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let c = client_rejects(mesh_root(), p);
    assert_eq!(c.label(), "wrong_key_usage", "{c}");
}

#[test]
fn client_certificate_without_client_auth_is_rejected() {
    let mut p = good_leaf(CLIENT_ID);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let s = server_rejects(mesh_root(), p);
    assert_eq!(s.label(), "wrong_key_usage", "{s}");
}

#[test]
fn client_without_certificate_is_rejected() {
    let ours = mesh_root().issue(SERVER_ID);
    let mut server = server_session(&ours);
    let mut client = foreign_client(None);
    let (ours_result, _) = handshake_foreign(&mut server, &mut client);
    let err = ours_result.unwrap_err();
    assert_eq!(err.rejection(), Some(&Rejection::NoCertificate), "{err}");
}

#[test]
fn rejection_messages_tell_the_operator_what_to_check() {
    let other = TestRoot::new("some other root");
    let c = client_rejects(&other, good_leaf(SERVER_ID));
    assert!(c.to_string().contains("same root"), "{c}");
}

#[test]
fn peer_offering_only_chacha20_is_incompatible() {
    let mesh = mesh_root();
    let ours = mesh.issue(SERVER_ID);
    let (chain, key) = mesh.sign(&good_leaf(CLIENT_ID));
    let chacha_only = rustls::crypto::CryptoProvider {
        cipher_suites: vec![rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256],
        ..rustls::crypto::ring::default_provider()
    };
    let mut server = server_session(&ours);
    let mut client =
        foreign_client_with(Some((chain, &key)), std::sync::Arc::new(chacha_only), b"h2");
    let (ours_result, _) = handshake_foreign(&mut server, &mut client);
    assert_eq!(ours_result.unwrap_err().label(), "incompatible_peer");
}

#[test]
fn peer_without_h2_alpn_is_incompatible() {
    let mesh = mesh_root();
    let ours = mesh.issue(SERVER_ID);
    let (chain, key) = mesh.sign(&good_leaf(CLIENT_ID));
    let mut server = server_session(&ours);
    let mut client = foreign_client_with(
        Some((chain, &key)),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        b"http/1.1",
    );
    let (ours_result, _) = handshake_foreign(&mut server, &mut client);
    assert_eq!(ours_result.unwrap_err().label(), "incompatible_peer");
}
