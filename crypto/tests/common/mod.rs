//! Test helpers: test roots, hand-made (possibly bad) leaves, a foreign rustls
//! peer that accepts anything, and in-memory pumps between peers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName as TlsDn, SignatureScheme};
use zpath_crypto::{
    CertifiedTls, ClientTlsConfig, Identity, LocalCa, ServerTlsConfig, SessionBuffers,
    SessionError, TlsSession, WorkloadCertificate, MAX_RECORD_LEN,
};

pub const TD: &str = "cluster.local";
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";

pub fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

/// A root made with rcgen, so tests can sign arbitrary leaves with it.
pub struct TestRoot {
    pub key: KeyPair,
    pub params: CertificateParams,
    pub cert: rcgen::Certificate,
    pub ca: LocalCa,
}

impl TestRoot {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let ca = LocalCa::from_pem(&cert.pem(), &key.serialize_pem()).unwrap();
        Self {
            key,
            params,
            cert,
            ca,
        }
    }

    /// Signs a leaf from `params` with a fresh P-256 key.
    pub fn sign(&self, params: &CertificateParams) -> (Vec<CertificateDer<'static>>, KeyPair) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (vec![cert.der().clone()], key)
    }

    /// Signs an intermediate CA from `ca_params` with a fresh P-256 key, then a leaf
    /// from `leaf` with it; the chain is the leaf and the intermediate.
    pub fn sign_via_intermediate(
        &self,
        ca_params: &CertificateParams,
        leaf: &CertificateParams,
    ) -> (Vec<CertificateDer<'static>>, KeyPair) {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let root = Issuer::from_params(&self.params, &self.key);
        let intermediate = ca_params.signed_by(&ca_key, &root).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer = Issuer::from_params(ca_params, &ca_key);
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        (vec![cert.der().clone(), intermediate.der().clone()], key)
    }

    pub fn issue(&self, identity: &str) -> Arc<CertifiedTls> {
        certified(
            self.ca
                .issue(&id(identity), Duration::from_secs(3600))
                .unwrap(),
        )
    }
}

pub fn certified(cert: WorkloadCertificate) -> Arc<CertifiedTls> {
    Arc::new(CertifiedTls::new(Arc::new(cert)).unwrap())
}

/// Parameters of a correct workload leaf for `uri`.
pub fn good_leaf(uri: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + Duration::from_secs(3600)).into();
    params
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate: the foreign peer must not be the one refusing.
#[derive(Debug)]
struct AcceptAll;

impl ServerCertVerifier for AcceptAll {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for AcceptAll {
    fn root_hint_subjects(&self) -> &[TlsDn] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// A plain rustls server presenting `chain`, not asking for a client cert.
pub fn foreign_server(chain: Vec<CertificateDer<'static>>, key: &KeyPair) -> rustls::Connection {
    foreign_server_with(chain, key, provider())
}

/// As [`foreign_server`], with a chosen provider. It sends rustls' default
/// session tickets after the handshake.
pub fn foreign_server_with(
    chain: Vec<CertificateDer<'static>>,
    key: &KeyPair,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> rustls::Connection {
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(Arc::new(AcceptAll))
        .with_single_cert(chain, key_der(key))
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    rustls::ServerConnection::new(Arc::new(config))
        .unwrap()
        .into()
}

/// A plain rustls client presenting `chain` (or nothing), trusting anything.
pub fn foreign_client(
    client_cert: Option<(Vec<CertificateDer<'static>>, &KeyPair)>,
) -> rustls::Connection {
    foreign_client_with(client_cert, provider(), b"h2")
}

/// As [`foreign_client`], with a chosen provider and ALPN protocol.
pub fn foreign_client_with(
    client_cert: Option<(Vec<CertificateDer<'static>>, &KeyPair)>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    alpn: &[u8],
) -> rustls::Connection {
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAll));
    let mut config = match client_cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key_der(key)).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let name = ServerName::try_from("server.example").unwrap();
    rustls::ClientConnection::new(Arc::new(config), name)
        .unwrap()
        .into()
}

pub fn buffers() -> SessionBuffers {
    SessionBuffers::new(64 * 1024)
}

pub fn client_session(ours: &CertifiedTls, expected: &[&str]) -> TlsSession {
    let ids: Vec<Identity> = expected.iter().map(|s| id(s)).collect();
    let config: ClientTlsConfig = ours.client_config(&ids).unwrap();
    TlsSession::client(&config, buffers()).unwrap()
}

pub fn server_session(ours: &CertifiedTls) -> TlsSession {
    let config: ServerTlsConfig = ours.server_config();
    TlsSession::server(&config, buffers()).unwrap()
}

/// Moves all bytes `from` produces into `to`.
fn transfer(
    from: &mut TlsSession,
    to: &mut TlsSession,
    out: &mut [u8],
) -> Result<bool, SessionError> {
    let mut moved = false;
    loop {
        let n = from.process(out)?;
        if n == 0 {
            return Ok(moved);
        }
        moved = true;
        let mut fed = 0;
        while fed < n {
            let m = to.feed(&out[fed..n]);
            assert!(m > 0, "receiver buffer full during handshake");
            fed += m;
        }
    }
}

/// Runs a handshake between two of our sessions in memory.
/// Returns each side's outcome.
pub fn handshake(
    client: &mut TlsSession,
    server: &mut TlsSession,
) -> (Result<(), SessionError>, Result<(), SessionError>) {
    let mut out = vec![0u8; 4 * MAX_RECORD_LEN];
    let mut client_result = Ok(());
    let mut server_result = Ok(());
    for _ in 0..20 {
        let mut moved = false;
        match transfer(client, server, &mut out) {
            Ok(m) => moved |= m,
            Err(e) => {
                client_result = Err(e);
                deliver_alert(client, server, &mut out);
            }
        }
        match transfer(server, client, &mut out) {
            Ok(m) => moved |= m,
            Err(e) => {
                server_result = Err(e);
                deliver_alert(server, client, &mut out);
            }
        }
        if client_result.is_err() || server_result.is_err() {
            // Let the other side see the alert.
            if client_result.is_ok() {
                client_result = client.process(&mut out).map(|_| ());
            }
            if server_result.is_ok() {
                server_result = server.process(&mut out).map(|_| ());
            }
            break;
        }
        if !moved && !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
    }
    (client_result, server_result)
}

fn deliver_alert(from: &mut TlsSession, to: &mut TlsSession, out: &mut [u8]) {
    let n = from.failure_alert(out);
    to.feed(&out[..n]);
}

/// Runs a handshake between our session and a foreign rustls connection.
/// Returns our outcome and theirs.
pub fn handshake_foreign(
    ours: &mut TlsSession,
    theirs: &mut rustls::Connection,
) -> (Result<(), SessionError>, Result<(), rustls::Error>) {
    let mut out = vec![0u8; 4 * MAX_RECORD_LEN];
    let mut theirs_result = Ok(());
    for _ in 0..20 {
        // Ours -> theirs.
        let n = match ours.process(&mut out) {
            Ok(n) => n,
            Err(e) => {
                let n = ours.failure_alert(&mut out);
                let _ = theirs.read_tls(&mut &out[..n]);
                let _ = theirs.process_new_packets();
                return (Err(e), theirs_result);
            }
        };
        let mut slice = &out[..n];
        while !slice.is_empty() {
            theirs.read_tls(&mut slice).unwrap();
        }
        if let Err(e) = theirs.process_new_packets() {
            theirs_result = Err(e);
        }
        // Theirs -> ours.
        let mut wire = Vec::new();
        while theirs.wants_write() {
            theirs.write_tls(&mut wire).unwrap();
        }
        let mut fed = 0;
        while fed < wire.len() {
            fed += ours.feed(&wire[fed..]);
        }
        if theirs_result.is_err() {
            return (ours.process(&mut out).map(|_| ()), theirs_result);
        }
        if wire.is_empty() && n == 0 && !ours.is_handshaking() && !theirs.is_handshaking() {
            break;
        }
    }
    (Ok(()), theirs_result)
}

/// A std socket made into a futures-io stream by blocking inside poll (each
/// side runs on its own thread).
pub struct Blocking(pub std::net::TcpStream);

impl futures_io::AsyncRead for Blocking {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::io::Read;
        std::task::Poll::Ready(self.get_mut().0.read(buf))
    }
}

impl futures_io::AsyncWrite for Blocking {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::io::Write;
        std::task::Poll::Ready(self.get_mut().0.write(buf))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(self.get_mut().0.shutdown(std::net::Shutdown::Write))
    }
}

/// One direction of an in-memory pipe.
#[derive(Default)]
struct Pipe {
    data: std::collections::VecDeque<u8>,
    closed: bool,
    reader: Option<std::task::Waker>,
}

/// One end of an in-memory duplex pipe (single-threaded executors).
pub struct DuplexEnd {
    rx: std::rc::Rc<std::cell::RefCell<Pipe>>,
    tx: std::rc::Rc<std::cell::RefCell<Pipe>>,
}

pub fn duplex() -> (DuplexEnd, DuplexEnd) {
    let a = std::rc::Rc::new(std::cell::RefCell::new(Pipe::default()));
    let b = std::rc::Rc::new(std::cell::RefCell::new(Pipe::default()));
    (
        DuplexEnd {
            rx: a.clone(),
            tx: b.clone(),
        },
        DuplexEnd { rx: b, tx: a },
    )
}

impl DuplexEnd {
    /// Sends raw bytes to the other end without going through a poll.
    pub fn inject(&self, bytes: &[u8]) {
        let mut p = self.tx.borrow_mut();
        p.data.extend(bytes);
        if let Some(w) = p.reader.take() {
            w.wake();
        }
    }
}

impl futures_io::AsyncRead for DuplexEnd {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut p = self.rx.borrow_mut();
        if p.data.is_empty() {
            if p.closed {
                return std::task::Poll::Ready(Ok(0));
            }
            p.reader = Some(cx.waker().clone());
            return std::task::Poll::Pending;
        }
        let n = buf.len().min(p.data.len());
        for (dst, src) in buf.iter_mut().zip(p.data.drain(..n)) {
            *dst = src;
        }
        std::task::Poll::Ready(Ok(n))
    }
}

impl futures_io::AsyncWrite for DuplexEnd {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut p = self.tx.borrow_mut();
        if p.closed {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        p.data.extend(buf);
        if let Some(w) = p.reader.take() {
            w.wake();
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let mut p = self.tx.borrow_mut();
        p.closed = true;
        if let Some(w) = p.reader.take() {
            w.wake();
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl Drop for DuplexEnd {
    fn drop(&mut self) {
        let mut p = self.tx.borrow_mut();
        p.closed = true;
        if let Some(w) = p.reader.take() {
            w.wake();
        }
    }
}
