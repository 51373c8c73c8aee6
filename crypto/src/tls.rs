//! The rustls side of TLS. With [`crate::pki`] (the provider, chain
//! verification, key loading), every call into rustls and webpki lives here,
//! so that an upgrade of either touches these two files only.
//!
//! * Configurations: ALPN `h2`, no SNI, no session tickets or resumption, a
//!   mandatory client certificate, and our own certificate verifiers, which
//!   keep the precise [`Rejection`] inside rustls' opaque error.
//! * The record layer during the handshake: a thin driver over rustls'
//!   *unbuffered* connection API used by [`crate::session::TlsSession`].
//! * After the handshake: the traffic keys handed to [`crate::record`]
//!   (rustls' kernel connection API), while rustls keeps the key schedule
//!   (key updates) and receives session tickets.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConnectionData, Resumption, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ServerConnectionData, UnbufferedServerConnection};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{
    AlertDescription, CertificateError, ConnectionTrafficSecrets, DigitallySignedStruct,
    DistinguishedName, InvalidMessage, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::certificate::{TrustBundle, WorkloadCertificate};
use crate::error::{Error, SessionError};
use crate::identity::Identity;
use crate::limits::{MAX_PLAINTEXT_LEN, MAX_RECORD_LEN};
use crate::pki::{self, provider, sig_algs};
use crate::record::{Aead, KeySchedule, RecordKey, RecordLayer};
use crate::verifier::{self, Expectation, PeerRole, Rejection, VerifiedPeer};

/// Bytes added to each application-data record by TLS 1.3 AES-GCM:
/// header, inner content type, tag.
const AEAD_RECORD_OVERHEAD: usize = 5 + 1 + 16;

const ALPN_H2: &[u8] = b"h2";

/// A server-side configuration for one of our workload certificates.
#[derive(Clone)]
pub struct ServerTlsConfig {
    inner: Arc<rustls::ServerConfig>,
    expect: Arc<Expectation>,
}

/// A client-side configuration: our certificate plus the identities expected
/// of the server.
#[derive(Clone)]
pub struct ClientTlsConfig {
    inner: Arc<rustls::ClientConfig>,
    expect: Arc<Expectation>,
}

impl std::fmt::Debug for ServerTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTlsConfig")
            .field("expect", &self.expect)
            .finish()
    }
}

impl std::fmt::Debug for ClientTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTlsConfig")
            .field("expect", &self.expect)
            .finish()
    }
}

impl ServerTlsConfig {
    /// True if both handles share the same underlying configuration.
    pub fn same_as(&self, other: &ServerTlsConfig) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl ClientTlsConfig {
    /// True if both handles share the same underlying configuration.
    pub fn same_as(&self, other: &ClientTlsConfig) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// Builds the server configuration presenting `key`, accepting clients from
/// `cert`'s trust domain whose chain reaches `cert`'s roots.
pub(crate) fn server_config(
    cert: &WorkloadCertificate,
    key: &Arc<CertifiedKey>,
) -> Result<ServerTlsConfig, Error> {
    let expect = Arc::new(Expectation::TrustDomain(
        cert.identity().trust_domain().into(),
    ));
    let verifier = Arc::new(MeshVerifier {
        trust: cert.trust().clone(),
        expect: expect.clone(),
        verified: ChainCache::default(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(key.clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    // The record layer after the handshake is ours (crate::record).
    config.enable_secret_extraction = true;
    Ok(ServerTlsConfig {
        inner: Arc::new(config),
        expect,
    })
}

/// Builds a client configuration presenting `key` and accepting only a
/// server whose identity is one of `expected`.
pub(crate) fn client_config(
    cert: &WorkloadCertificate,
    key: &Arc<CertifiedKey>,
    expected: &[Identity],
) -> Result<ClientTlsConfig, Error> {
    if expected.is_empty() {
        return Err(Error::Config(
            "no expected server identity given: refusing to build a client that trusts anyone"
                .into(),
        ));
    }
    let expect = Arc::new(Expectation::OneOf(expected.to_vec()));
    let verifier = Arc::new(MeshVerifier {
        trust: cert.trust().clone(),
        expect: expect.clone(),
        verified: ChainCache::default(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key.clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    // The record layer after the handshake is ours (crate::record).
    config.enable_secret_extraction = true;
    Ok(ClientTlsConfig {
        inner: Arc::new(config),
        expect,
    })
}

/// Our verifier, for both roles: chain to the mesh roots, then the leaf rules
/// of [`crate::verifier`].
#[derive(Debug)]
struct MeshVerifier {
    trust: TrustBundle,
    expect: Arc<Expectation>,
    verified: ChainCache,
}

/// Chains this verifier has verified, by their exact bytes, with the time window in
/// which every certificate of the chain stays valid. A peer reconnecting with the same
/// chain skips the chain's signature checks; its handshake signature (possession of
/// the key) and the leaf rules are checked on every handshake. Reads are lock-free
/// (one atomic load); a new chain copies the map (rare: new peers and rotations).
#[derive(Debug, Default)]
struct ChainCache {
    chains: arc_swap::ArcSwap<ChainWindows>,
}

/// Exact chain bytes (with the role) → the Unix-seconds window it stays valid in.
type ChainWindows = std::collections::HashMap<Box<[u8]>, (u64, u64)>;

impl ChainCache {
    /// Chains remembered at most; the map starts over when full.
    const MAX: usize = 1024;

    fn key(role: PeerRole, end_entity: &[u8], intermediates: &[CertificateDer<'_>]) -> Box<[u8]> {
        let mut key = Vec::with_capacity(
            1 + 4 + end_entity.len() + intermediates.iter().map(|c| 4 + c.len()).sum::<usize>(),
        );
        key.push(matches!(role, PeerRole::Client) as u8);
        for part in std::iter::once(end_entity).chain(intermediates.iter().map(|c| c.as_ref())) {
            key.extend_from_slice(&(part.len() as u32).to_be_bytes());
            key.extend_from_slice(part);
        }
        key.into_boxed_slice()
    }

    fn contains(&self, key: &[u8], now: u64) -> bool {
        self.chains
            .load()
            .get(key)
            .is_some_and(|&(from, until)| from <= now && now <= until)
    }

    fn insert(&self, key: Box<[u8]>, window: (u64, u64)) {
        self.chains.rcu(|current| {
            let mut next = if current.len() >= Self::MAX {
                std::collections::HashMap::new()
            } else {
                (**current).clone()
            };
            next.insert(key.clone(), window);
            next
        });
    }
}

/// The time window (Unix seconds, inclusive) in which every certificate of the chain
/// is valid; `None` if one does not parse.
fn validity_window(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Option<(u64, u64)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let mut window = (0u64, u64::MAX);
    for der in std::iter::once(end_entity).chain(intermediates) {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let from = u64::try_from(cert.validity().not_before.timestamp()).unwrap_or(0);
        let until = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
        window = (window.0.max(from), window.1.min(until));
    }
    Some(window)
}

impl MeshVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: PeerRole,
    ) -> Result<(), rustls::Error> {
        let key = ChainCache::key(role, end_entity, intermediates);
        let chain = if self.verified.contains(&key, now.as_secs()) {
            Ok(())
        } else {
            pki::verify_chain(self.trust.anchors(), end_entity, intermediates, now, role).map(
                |()| {
                    if let Some(window) = validity_window(end_entity, intermediates) {
                        self.verified.insert(key, window);
                    }
                },
            )
        };
        chain
            .and_then(|()| verifier::verify_leaf(end_entity, &self.expect).map(|_| ()))
            .map_err(|rejection| {
                tracing::debug!(
                    reason = rejection.label(),
                    "peer certificate rejected: {rejection}"
                );
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    rejection,
                ))))
            })
    }
}

impl ServerCertVerifier for MeshVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now, PeerRole::Server)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, sig_algs())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        sig_algs().supported_schemes()
    }
}

impl ClientCertVerifier for MeshVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now, PeerRole::Client)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, sig_algs())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        sig_algs().supported_schemes()
    }
}

/// Maps a rustls failure to our session error, recovering our [`Rejection`]
/// from inside rustls' opaque certificate error.
fn map_error(e: rustls::Error) -> SessionError {
    use rustls::Error as R;
    match e {
        R::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            match inner.downcast_ref::<Rejection>() {
                Some(r) => SessionError::Rejected(r.clone()),
                None => SessionError::Internal(inner.to_string()),
            }
        }
        R::InvalidCertificate(other) => {
            SessionError::Rejected(Rejection::Malformed(format!("{other:?}")))
        }
        R::NoCertificatesPresented => SessionError::Rejected(Rejection::NoCertificate),
        R::AlertReceived(alert) => SessionError::AlertReceived(format!("{alert:?}")),
        R::InvalidMessage(InvalidMessage::MessageTooLarge) | R::PeerSentOversizedRecord => {
            SessionError::RecordTooLarge
        }
        R::InvalidMessage(m) => SessionError::Protocol(format!("{m:?}")),
        R::PeerIncompatible(p) => SessionError::Incompatible(format!("{p:?}")),
        R::NoApplicationProtocol => {
            SessionError::Incompatible("peer does not speak ALPN h2".into())
        }
        R::DecryptError => SessionError::Protocol("record failed to decrypt".into()),
        R::PeerMisbehaved(m) => SessionError::Protocol(format!("{m:?}")),
        R::InappropriateMessage { .. } | R::InappropriateHandshakeMessage { .. } => {
            SessionError::Protocol(format!("{e}"))
        }
        other => SessionError::Internal(other.to_string()),
    }
}

/// What stopped a drive of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// More ciphertext is needed.
    NeedInput,
    /// Everything buffered was processed; the connection can send data.
    Ready,
    /// The output buffer has less than one record of room.
    OutputFull,
    /// The plaintext sink has no room for the next record.
    PlaintextFull,
    /// Both sides have sent close_notify.
    Closed,
}

/// Where a drive puts its results.
pub(crate) struct DriveIo<'a> {
    /// Ciphertext to transmit.
    pub out: &'a mut [u8],
    /// Bytes of `out` already filled.
    pub written: usize,
    /// Decrypted application data is appended here.
    pub plaintext: &'a mut dyn PlaintextSink,
    /// Application data to encrypt once the connection can send.
    pub seal: &'a [u8],
    /// Bytes of `seal` encrypted.
    pub sealed: usize,
    /// Queue a close_notify once the connection can send.
    pub close: bool,
    /// Set when a close_notify was encoded.
    pub close_sent: bool,
    /// Set when the peer's close_notify was seen.
    pub peer_closed: bool,
}

/// Receives decrypted records.
pub(crate) trait PlaintextSink {
    /// Free room, in bytes.
    fn room(&self) -> usize;
    /// Appends `data` (`data.len() <= room()`).
    fn append(&mut self, data: &[u8]);
}

enum Conn {
    Client(UnbufferedClientConnection),
    Server(UnbufferedServerConnection),
    /// After the handshake: key schedule and tickets only.
    KernelClient(KernelConnection<ClientConnectionData>),
    /// After the handshake: key schedule only.
    KernelServer(KernelConnection<ServerConnectionData>),
    /// A hand-over to the record layer failed.
    Gone,
}

/// A TLS connection driven through rustls' unbuffered API.
pub(crate) struct Connection {
    conn: Conn,
    expect: Arc<Expectation>,
    /// Kept from the handshake once rustls' connection is handed over.
    chain: Option<Vec<CertificateDer<'static>>>,
    /// Kept from the handshake once rustls' connection is handed over.
    alpn: Option<Vec<u8>>,
}

impl Connection {
    /// A client connection (no SNI is sent).
    pub(crate) fn client(config: &ClientTlsConfig) -> Result<Self, SessionError> {
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
        let conn =
            UnbufferedClientConnection::new(config.inner.clone(), name).map_err(map_error)?;
        Ok(Self {
            conn: Conn::Client(conn),
            expect: config.expect.clone(),
            chain: None,
            alpn: None,
        })
    }

    /// A server connection.
    pub(crate) fn server(config: &ServerTlsConfig) -> Result<Self, SessionError> {
        let conn = UnbufferedServerConnection::new(config.inner.clone()).map_err(map_error)?;
        Ok(Self {
            conn: Conn::Server(conn),
            expect: config.expect.clone(),
            chain: None,
            alpn: None,
        })
    }

    /// True until the handshake (including the peer's Finished) completed.
    pub(crate) fn is_handshaking(&self) -> bool {
        match &self.conn {
            Conn::Client(c) => c.is_handshaking(),
            Conn::Server(c) => c.is_handshaking(),
            Conn::KernelClient(_) | Conn::KernelServer(_) | Conn::Gone => false,
        }
    }

    /// The proof for the peer of a completed handshake.
    pub(crate) fn verified_peer(&self) -> Result<VerifiedPeer, SessionError> {
        let leaf = self
            .peer_chain()
            .and_then(|c| c.first())
            .ok_or(SessionError::Rejected(Rejection::NoCertificate))?;
        verifier::verify_leaf(leaf, &self.expect).map_err(SessionError::Rejected)
    }

    /// The certificate chain the peer presented (leaf first).
    pub(crate) fn peer_chain(&self) -> Option<&[CertificateDer<'static>]> {
        match &self.conn {
            Conn::Client(c) => c.peer_certificates(),
            Conn::Server(c) => c.peer_certificates(),
            Conn::KernelClient(_) | Conn::KernelServer(_) | Conn::Gone => self.chain.as_deref(),
        }
    }

    /// The negotiated ALPN protocol.
    pub(crate) fn alpn(&self) -> Option<&[u8]> {
        match &self.conn {
            Conn::Client(c) => c.alpn_protocol(),
            Conn::Server(c) => c.alpn_protocol(),
            Conn::KernelClient(_) | Conn::KernelServer(_) | Conn::Gone => self.alpn.as_deref(),
        }
    }

    /// Hands the record layer over from rustls once the handshake completed
    /// and rustls has nothing left to send: returns our record layer with the
    /// traffic keys and sequence numbers rustls reached. rustls keeps the key
    /// schedule ([`KeySchedule::next_tx_key`], [`KeySchedule::next_rx_key`]) and
    /// session tickets. The caller must not hand over a partially received
    /// handshake message (rustls would drop it).
    pub(crate) fn take_record_layer(&mut self) -> Result<RecordLayer, SessionError> {
        let (secrets, limit) = match std::mem::replace(&mut self.conn, Conn::Gone) {
            Conn::Client(c) => {
                self.keep_handshake_facts(c.peer_certificates(), c.alpn_protocol());
                let (secrets, kernel) = c.dangerous_into_kernel_connection().map_err(map_error)?;
                let limit = confidentiality_limit(kernel.negotiated_cipher_suite());
                self.conn = Conn::KernelClient(kernel);
                (secrets, limit)
            }
            Conn::Server(c) => {
                self.keep_handshake_facts(c.peer_certificates(), c.alpn_protocol());
                let (secrets, kernel) = c.dangerous_into_kernel_connection().map_err(map_error)?;
                let limit = confidentiality_limit(kernel.negotiated_cipher_suite());
                self.conn = Conn::KernelServer(kernel);
                (secrets, limit)
            }
            other => {
                self.conn = other;
                return Err(SessionError::Internal(
                    "TLS record layer handed over twice".into(),
                ));
            }
        };
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        Ok(RecordLayer::new(
            record_key(tx_seq, tx)?,
            record_key(rx_seq, rx)?,
            limit,
        ))
    }

    fn keep_handshake_facts(
        &mut self,
        chain: Option<&[CertificateDer<'static>]>,
        alpn: Option<&[u8]>,
    ) {
        self.chain = chain.map(<[CertificateDer<'static>]>::to_vec);
        self.alpn = alpn.map(<[u8]>::to_vec);
    }

    /// Processes `incoming` (ciphertext) until input runs out or a buffer is
    /// full, handling `io`'s requests. Returns the bytes of `incoming` fully
    /// consumed (to drop from its front) and why it stopped.
    pub(crate) fn drive(
        &mut self,
        incoming: &mut [u8],
        io: &mut DriveIo<'_>,
    ) -> (usize, Result<Stop, SessionError>) {
        let mut consumed = 0;
        loop {
            if io.out.len() - io.written < MAX_RECORD_LEN {
                return (consumed, Ok(Stop::OutputFull));
            }
            let buf = &mut incoming[consumed..];
            let (discard, flow) = match &mut self.conn {
                Conn::Client(c) => step(c.process_tls_records(buf), io),
                Conn::Server(c) => step(c.process_tls_records(buf), io),
                Conn::KernelClient(_) | Conn::KernelServer(_) | Conn::Gone => {
                    let e = SessionError::Internal("rustls driven after hand-over".into());
                    return (consumed, Err(e));
                }
            };
            consumed += discard;
            match flow {
                Ok(None) => continue,
                Ok(Some(stop)) => return (consumed, Ok(stop)),
                Err(e) => return (consumed, Err(map_error(e))),
            }
        }
    }

    /// After a failure: encodes the alert rustls queued for the peer, if any.
    /// `incoming` must be the buffer the last [`Connection::drive`] was given,
    /// less what it consumed: rustls may still hold ranges into it (a
    /// handshake message split over records) and panics on any other buffer.
    pub(crate) fn pending_alert(&mut self, incoming: &mut [u8], out: &mut [u8]) -> usize {
        let written = match &mut self.conn {
            Conn::Client(c) => encode_pending(c.process_tls_records(incoming), out),
            Conn::Server(c) => encode_pending(c.process_tls_records(incoming), out),
            Conn::KernelClient(_) | Conn::KernelServer(_) | Conn::Gone => None,
        };
        written.unwrap_or(0)
    }
}

/// The key schedule rustls keeps after the hand-over, as the record layer
/// asks for it.
impl KeySchedule for Connection {
    /// Our next sending key, after we send a KeyUpdate.
    fn next_tx_key(&mut self) -> Result<RecordKey, SessionError> {
        let (seq, secrets) = match &mut self.conn {
            Conn::KernelClient(k) => k.update_tx_secret(),
            Conn::KernelServer(k) => k.update_tx_secret(),
            _ => return Err(SessionError::Internal("key update before hand-over".into())),
        }
        .map_err(map_error)?;
        record_key(seq, secrets)
    }

    /// The peer's next sending key, after it sent a KeyUpdate.
    fn next_rx_key(&mut self) -> Result<RecordKey, SessionError> {
        let (seq, secrets) = match &mut self.conn {
            Conn::KernelClient(k) => k.update_rx_secret(),
            Conn::KernelServer(k) => k.update_rx_secret(),
            _ => return Err(SessionError::Internal("key update before hand-over".into())),
        }
        .map_err(map_error)?;
        record_key(seq, secrets)
    }

    /// A NewSessionTicket body (after its 4-byte header) from the server.
    /// Resumption is disabled, so rustls only checks and drops it.
    fn new_session_ticket(&mut self, body: &[u8]) -> Result<(), SessionError> {
        match &mut self.conn {
            Conn::KernelClient(k) => k.handle_new_session_ticket(body).map_err(map_error),
            _ => Err(SessionError::Protocol(
                "NewSessionTicket sent by a client".into(),
            )),
        }
    }

    /// The name of an alert description, as rustls spells it.
    fn alert_name(&self, description: u8) -> String {
        format!("{:?}", AlertDescription::from(description))
    }
}

/// Our key from rustls' traffic secrets.
fn record_key(seq: u64, secrets: ConnectionTrafficSecrets) -> Result<RecordKey, SessionError> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
            RecordKey::new(Aead::Aes128Gcm, key.as_ref(), iv.as_ref(), seq)
        }
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            RecordKey::new(Aead::Aes256Gcm, key.as_ref(), iv.as_ref(), seq)
        }
        _ => Err(SessionError::Incompatible(
            "negotiated cipher suite is not AES-GCM".into(),
        )),
    }
}

/// How many records one key may seal before it must be updated.
fn confidentiality_limit(suite: rustls::SupportedCipherSuite) -> u64 {
    // AES-GCM in TLS 1.3: 2^24.5 records (RFC 8446 §5.5); rustls uses 2^24.
    const AES_GCM_LIMIT: u64 = 1 << 24;
    suite
        .tls13()
        .map_or(AES_GCM_LIMIT, |s| s.common.confidentiality_limit)
        .min(AES_GCM_LIMIT)
}

fn encode_pending<Data>(status: UnbufferedStatus<'_, '_, Data>, out: &mut [u8]) -> Option<usize> {
    match status.state {
        Ok(ConnectionState::EncodeTlsData(mut e)) => e.encode(out).ok(),
        _ => None,
    }
}

/// Handles one state of the unbuffered state machine. `Ok(None)` means: call
/// `process_tls_records` again.
fn step<Data>(
    status: UnbufferedStatus<'_, '_, Data>,
    io: &mut DriveIo<'_>,
) -> (usize, Result<Option<Stop>, rustls::Error>) {
    let discard = status.discard;
    let state = match status.state {
        Ok(state) => state,
        Err(e) => return (discard, Err(e)),
    };
    let flow = match state {
        ConnectionState::ReadTraffic(mut read) => loop {
            match read.peek_len() {
                None => break Ok(None),
                Some(len) if len.get() > io.plaintext.room() => {
                    break Ok(Some(Stop::PlaintextFull));
                }
                Some(_) => {}
            }
            match read.next_record() {
                Some(Ok(record)) => io.plaintext.append(record.payload),
                Some(Err(e)) => break Err(e),
                None => break Ok(None),
            }
        },
        ConnectionState::EncodeTlsData(mut encode) => {
            match encode.encode(&mut io.out[io.written..]) {
                Ok(n) => {
                    io.written += n;
                    Ok(None)
                }
                // The caller checks for MAX_RECORD_LEN of room before each step.
                Err(EncodeError::InsufficientSize(_)) | Err(EncodeError::AlreadyEncoded) => Err(
                    rustls::Error::General("handshake record larger than one TLS record".into()),
                ),
            }
        }
        ConnectionState::TransmitTlsData(transmit) => {
            // The bytes are in `io.out`, in order; the caller sends them.
            transmit.done();
            Ok(None)
        }
        ConnectionState::BlockedHandshake => Ok(Some(Stop::NeedInput)),
        ConnectionState::PeerClosed => {
            io.peer_closed = true;
            Ok(None)
        }
        ConnectionState::Closed => {
            io.peer_closed = true;
            Ok(Some(Stop::Closed))
        }
        ConnectionState::WriteTraffic(mut write) => {
            let result = write_traffic(&mut write, io);
            result.map(|()| Some(Stop::Ready))
        }
        _ => Err(rustls::Error::General("unexpected early data".into())),
    };
    (discard, flow)
}

fn write_traffic<Data>(
    write: &mut rustls::unbuffered::WriteTraffic<'_, Data>,
    io: &mut DriveIo<'_>,
) -> Result<(), rustls::Error> {
    while io.sealed < io.seal.len() {
        let room = io.out.len() - io.written;
        let pending = &io.seal[io.sealed..];
        // Full 16 KiB records, then one shorter record in what is left.
        let record = MAX_PLAINTEXT_LEN + AEAD_RECORD_OVERHEAD;
        let mut take = ((room / record) * MAX_PLAINTEXT_LEN
            + (room % record).saturating_sub(AEAD_RECORD_OVERHEAD))
        .min(pending.len());
        loop {
            if take == 0 {
                return Ok(());
            }
            match write.encrypt(&pending[..take], &mut io.out[io.written..]) {
                Ok(n) => {
                    io.written += n;
                    io.sealed += take;
                    break;
                }
                Err(EncryptError::InsufficientSize(need)) => {
                    let over = need.required_size.saturating_sub(room);
                    take = take.saturating_sub(over.max(1) + AEAD_RECORD_OVERHEAD);
                }
                Err(EncryptError::EncryptExhausted) => return Err(rustls::Error::EncryptError),
            }
        }
    }
    if io.close && !io.close_sent {
        match write.queue_close_notify(&mut io.out[io.written..]) {
            Ok(n) => {
                io.written += n;
                io.close_sent = true;
            }
            Err(EncryptError::InsufficientSize(_)) => {}
            Err(EncryptError::EncryptExhausted) => return Err(rustls::Error::EncryptError),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::LocalCa;
    use std::time::{Duration, SystemTime};

    fn verifier_and_leaf() -> (MeshVerifier, CertificateDer<'static>, SystemTime) {
        let ca = LocalCa::generate().unwrap();
        let id = Identity::new("cluster.local", "default", "client").unwrap();
        let cert = ca.issue(&id, Duration::from_secs(3600)).unwrap();
        let verifier = MeshVerifier {
            trust: cert.trust().clone(),
            expect: Arc::new(Expectation::TrustDomain("cluster.local".into())),
            verified: ChainCache::default(),
        };
        (verifier, cert.chain()[0].clone(), cert.not_after())
    }

    fn at(t: SystemTime) -> UnixTime {
        UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap())
    }

    #[test]
    fn a_verified_chain_is_remembered_but_never_past_its_validity() {
        let (v, leaf, not_after) = verifier_and_leaf();
        let now = at(SystemTime::now());
        v.check(&leaf, &[], now, PeerRole::Client).unwrap();
        assert_eq!(v.verified.chains.load().len(), 1, "remembered");
        // Again: answered from the cache.
        v.check(&leaf, &[], now, PeerRole::Client).unwrap();
        assert_eq!(v.verified.chains.load().len(), 1);
        // Past notAfter the cached entry does not count: the chain is verified again
        // and refused as expired.
        let later = at(not_after + Duration::from_secs(1));
        let err = v.check(&leaf, &[], later, PeerRole::Client).unwrap_err();
        assert!(format!("{err:?}").contains("Expired"), "{err:?}");
    }

    #[test]
    fn the_cache_is_per_role_and_per_exact_chain() {
        let (v, leaf, _) = verifier_and_leaf();
        let now = at(SystemTime::now());
        v.check(&leaf, &[], now, PeerRole::Client).unwrap();
        // The same bytes presented as a server certificate are verified for that role
        // (and remembered separately).
        v.check(&leaf, &[], now, PeerRole::Server).unwrap();
        assert_eq!(v.verified.chains.load().len(), 2);
        // One byte different is another chain: verified, and refused.
        let mut tampered = leaf.as_ref().to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let tampered = CertificateDer::from(tampered);
        assert!(v.check(&tampered, &[], now, PeerRole::Client).is_err());
    }
}
