//! An HBONE peer built from parts zpath does not use: rustls' buffered connection API
//! over tokio (tokio-rustls) and the h2 crate's tokio client and server, configured as
//! ztunnel configures its own. Tests point it at zpath to check the wire itself rather
//! than zpath's agreement with zpath.
//!
//! As ztunnel does, the peer speaks TLS 1.3 only with the AES-GCM suites, offers ALPN
//! `h2`, sends no SNI and resumes no session, and checks the other side's SPIFFE URI SAN
//! after a chain check against the mesh root. Its HTTP/2 windows and limits are
//! ztunnel's: 4 MiB per stream, 16 MiB per connection, 1 MiB frames; as a client, a
//! 16 KiB header list limit and no push; as a server, 200 concurrent streams and a
//! 64 KiB header list limit. Its certificates are issued straight from the mesh root's
//! PEM files with rcgen, shaped as istiod issues them (ECDSA P-256, one URI SAN, server
//! and client authentication).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};

/// Runs `make()`'s future on a tokio current-thread runtime on a thread inside `ns`,
/// so the sockets it opens live in that namespace.
pub fn run_in<F, Fut, T>(ns: &crate::netns::Netns, make: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    ns.enter(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("start a tokio runtime")
            .block_on(make())
    })
}

/// What the peer holds to authenticate: a leaf chained to the mesh root, its key, the root.
pub struct PeerCert {
    /// The leaf, then the intermediate CA that signed it if there is one.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
    /// The mesh root the other side must chain to.
    pub root: CertificateDer<'static>,
    /// The leaf's identity, `spiffe://cluster.local/ns/default/sa/<sa>`.
    pub identity: String,
}

/// The SPIFFE identity of service account `sa` in namespace `default`.
pub fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
}

/// Certificate parameters valid from five minutes ago for an hour.
fn params_for_now() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::hours(1);
    params
}

/// The mesh root kept in `ca_dir` (by `zpath_crypto::LocalCa`), as an issuer.
fn root_issuer(
    ca_dir: &Path,
) -> (
    rcgen::Issuer<'static, rcgen::KeyPair>,
    CertificateDer<'static>,
) {
    let read = |name: &str| {
        std::fs::read_to_string(ca_dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let root_pem = read(zpath_crypto::ROOT_CERT_FILE);
    let root_key = rcgen::KeyPair::from_pem(&read(zpath_crypto::ROOT_KEY_FILE)).expect("root key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&root_pem, root_key).expect("root certificate");
    let root = CertificateDer::from_pem_slice(root_pem.as_bytes()).expect("root PEM");
    (issuer, root)
}

/// A leaf for service account `sa` signed by `issuer`, with its key.
fn leaf(
    sa: &str,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let mut params = params_for_now();
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe(sa).try_into().expect("URI SAN"))];
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// Issues a certificate for service account `sa` straight from the mesh root kept in
/// `ca_dir`.
pub fn issue(ca_dir: &Path, sa: &str) -> PeerCert {
    let (issuer, root) = root_issuer(ca_dir);
    let (cert, key) = leaf(sa, &issuer);
    PeerCert {
        chain: vec![cert],
        key,
        root,
        identity: spiffe(sa),
    }
}

/// Issues a certificate for `sa` from an intermediate CA that the mesh root signs, as
/// istiod does with a plugged-in CA: the chain sent is the leaf and the intermediate.
pub fn issue_via_intermediate(ca_dir: &Path, sa: &str) -> PeerCert {
    let (root_issuer, root) = root_issuer(ca_dir);
    let mut params = params_for_now();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "cluster.local");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
    let intermediate = params
        .signed_by(&key, &root_issuer)
        .expect("sign intermediate");
    let issuer = rcgen::Issuer::new(params, key);
    let (cert, leaf_key) = leaf(sa, &issuer);
    PeerCert {
        chain: vec![cert, intermediate.der().clone()],
        key: leaf_key,
        root,
        identity: spiffe(sa),
    }
}

/// ring with the two TLS 1.3 AES-GCM suites ztunnel enables, in its order.
fn provider() -> Arc<CryptoProvider> {
    let mut p = ring::default_provider();
    p.cipher_suites = vec![
        ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    Arc::new(p)
}

/// The URI SANs of a certificate (empty if it does not parse).
pub fn uri_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect()
}

/// Accepts a server whose chain reaches the mesh root and whose URI SAN is `expected`;
/// the server name is not looked at (ztunnel sends none).
#[derive(Debug)]
struct SpiffeServerVerifier {
    root: CertificateDer<'static>,
    expected: String,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refuse = |what: String| rustls::Error::General(what);
        let anchor = webpki::anchor_from_trusted_cert(&self.root)
            .map_err(|e| refuse(format!("mesh root: {e}")))?;
        let leaf = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| refuse(format!("server leaf: {e}")))?;
        leaf.verify_for_usage(
            self.algs.all,
            &[anchor],
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| refuse(format!("server chain: {e}")))?;
        let sans = uri_sans(end_entity);
        if sans.contains(&self.expected) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(refuse(format!(
                "server identity {sans:?} is not {}",
                self.expected
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// What the TLS handshake settled.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// Protocol version (TLS 1.3 expected).
    pub version: Option<rustls::ProtocolVersion>,
    /// Cipher suite.
    pub suite: Option<rustls::CipherSuite>,
    /// ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// Key exchange group.
    pub kx_group: Option<rustls::NamedGroup>,
    /// The URI SANs of the other side's leaf.
    pub peer_sans: Vec<String>,
    /// The server name the client sent (server side only).
    pub sni: Option<String>,
}

fn negotiated(conn: &rustls::CommonState, sni: Option<&str>) -> Negotiated {
    Negotiated {
        version: conn.protocol_version(),
        suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        kx_group: conn.negotiated_key_exchange_group().map(|g| g.name()),
        peer_sans: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(uri_sans)
            .unwrap_or_default(),
        sni: sni.map(str::to_string),
    }
}

/// A client connection: HTTP/2 over mTLS to an HBONE server.
pub struct Client {
    send: h2::client::SendRequest<Bytes>,
    /// What the handshake settled.
    pub tls: Negotiated,
}

/// Connects to `addr` as ztunnel's outbound does, expecting the server to be `expected`.
pub async fn connect(addr: SocketAddr, cert: &PeerCert, expected: &str) -> Result<Client, String> {
    let verifier = SpiffeServerVerifier {
        root: cert.root.clone(),
        expected: expected.to_string(),
        algs: ring::default_provider().signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();

    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    // Any name will do: the verifier checks the SPIFFE identity, and no SNI is sent.
    let name = ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let tls_state = negotiated(tls.get_ref().1, None);
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .initial_max_send_streams(100)
        .max_header_list_size(16 << 10)
        .max_send_buffer_size(4 << 20)
        .enable_push(false)
        .handshake(tls)
        .await
        .map_err(|e| format!("HTTP/2: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Client {
        send,
        tls: tls_state,
    })
}

/// ztunnel's request headers for a flow from `source`.
pub fn hbone_request(authority: &str, source: SocketAddr) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .version(http::Version::HTTP_2)
        .header("forwarded", format!("for=\"{source}\""))
        .header(
            "baggage",
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=client,service.name=client,service.version=v1",
        )
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )
        .body(())
        .expect("request")
}

/// Sends `data` on `stream` as flow control allows (END_STREAM is the caller's).
async fn send_bytes(stream: &mut h2::SendStream<Bytes>, mut data: Bytes) -> Result<(), String> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let granted = std::future::poll_fn(|cx| stream.poll_capacity(cx))
            .await
            .ok_or("stream closed while sending")?
            .map_err(|e| e.to_string())?;
        let chunk = data.split_to(granted.min(data.len()));
        stream.send_data(chunk, false).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Sends `data`, then END_STREAM.
async fn send_all(stream: &mut h2::SendStream<Bytes>, data: &[u8]) -> Result<(), String> {
    send_bytes(stream, Bytes::copy_from_slice(data)).await?;
    stream
        .send_data(Bytes::new(), true)
        .map_err(|e| e.to_string())
}

/// Reads a body to its END_STREAM, returning the capacity it used as it goes.
async fn read_all(body: &mut h2::RecvStream) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("receiving: {e}"))?;
        body.flow_control()
            .release_capacity(chunk.len())
            .map_err(|e| e.to_string())?;
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

impl Client {
    /// Opens a CONNECT stream; on 200 sends `data`, half-closes and returns the status
    /// with everything the other side sent until its END_STREAM, read while sending.
    /// Other statuses return with no body.
    pub async fn exchange(
        &mut self,
        request: http::Request<()>,
        data: &[u8],
    ) -> Result<(u16, Vec<u8>), String> {
        self.exchange_with(request, data, true).await
    }

    /// As [`Client::exchange`], reading only once all of `data` is sent when `overlap`
    /// is false: the other side must then hold back what it sends while this side's
    /// window is full, and keep taking data meanwhile.
    pub async fn exchange_with(
        &mut self,
        request: http::Request<()>,
        data: &[u8],
        overlap: bool,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut send = self
            .send
            .clone()
            .ready()
            .await
            .map_err(|e| format!("not ready: {e}"))?;
        let (response, mut stream) = send
            .send_request(request, false)
            .map_err(|e| format!("request: {e}"))?;
        let response = response.await.map_err(|e| format!("response: {e}"))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Ok((status, Vec::new()));
        }
        let mut body = response.into_body();
        if !overlap {
            send_all(&mut stream, data).await?;
            return Ok((status, read_all(&mut body).await?));
        }
        let (sent, echoed) = tokio::join!(send_all(&mut stream, data), read_all(&mut body));
        sent?;
        Ok((status, echoed?))
    }
}

/// One CONNECT request as the peer server received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The method.
    pub method: http::Method,
    /// `:authority`.
    pub authority: String,
    /// The regular headers.
    pub headers: http::HeaderMap,
    /// The tunnel connection's TLS state.
    pub tls: Negotiated,
    /// Bytes received on the stream before its END_STREAM.
    pub bytes: usize,
}

/// An HBONE server shaped as ztunnel's inbound: it answers a CONNECT with 200 and
/// echoes the stream (END_STREAM answered with END_STREAM), or, for a target port
/// given a status with [`Server::serve_with`], with that status and END_STREAM as
/// ztunnel refuses (401 denied, 503 upstream unreachable...). It records every request.
pub struct Server {
    /// Requests received so far (recorded when their stream ends).
    pub received: Arc<Mutex<Vec<Received>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves on `listener` (bound by the caller, e.g. inside a network namespace).
    pub fn serve(listener: std::net::TcpListener, cert: PeerCert) -> Server {
        Self::serve_with(listener, cert, &[])
    }

    /// As [`Server::serve`], refusing CONNECTs to the ports in `refusals` with their
    /// status.
    pub fn serve_with(
        listener: std::net::TcpListener,
        cert: PeerCert,
        refusals: &[(u16, u16)],
    ) -> Server {
        let refusals: Arc<[(u16, u16)]> = refusals.into();
        let roots = {
            let mut store = rustls::RootCertStore::empty();
            store.add(cert.root.clone()).expect("mesh root");
            Arc::new(store)
        };
        // Key exchange on P-256 and P-384 only, as ztunnel's OpenSSL and FIPS builds
        // offer: a client that leads with an X25519 share must retry (HelloRetryRequest).
        let provider = {
            let mut p = (*provider()).clone();
            p.kx_groups = vec![ring::kx_group::SECP256R1, ring::kx_group::SECP384R1];
            Arc::new(p)
        };
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .expect("client verifier");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_single_cert(cert.chain.clone(), cert.key.clone_key())
            .expect("server certificate");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        listener.set_nonblocking(true).expect("nonblocking");
        let received = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let log = received.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener");
                let accept = async {
                    while let Ok((tcp, _)) = listener.accept().await {
                        let (acceptor, log) = (acceptor.clone(), log.clone());
                        let refusals = refusals.clone();
                        tokio::spawn(async move {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = serve_connection(tls, log, refusals).await;
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Server {
            received,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Waits up to `limit` for `n` requests to be recorded and returns them.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        crate::wait_for("requests at the peer server", limit, || {
            self.received.lock().expect("log").len() >= n
        });
        self.received.lock().expect("log").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_connection(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    log: Arc<Mutex<Vec<Received>>>,
    refusals: Arc<[(u16, u16)]>,
) -> Result<(), h2::Error> {
    let state = {
        let conn = tls.get_ref().1;
        negotiated(conn, conn.server_name())
    };
    let mut conn = h2::server::Builder::new()
        .initial_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .max_header_list_size(64 << 10)
        .max_send_buffer_size(400 << 10)
        .max_concurrent_streams(200)
        .handshake(tls)
        .await?;
    while let Some(next) = conn.accept().await {
        let (request, mut respond) = next?;
        let (state, log) = (state.clone(), log.clone());
        let refusal = request
            .uri()
            .port_u16()
            .and_then(|port| refusals.iter().find(|(p, _)| *p == port))
            .map(|(_, status)| *status);
        tokio::spawn(async move {
            let (parts, mut body) = request.into_parts();
            let authority = parts
                .uri
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let mut received = Received {
                method: parts.method,
                authority,
                headers: parts.headers,
                tls: state,
                bytes: 0,
            };
            let status = refusal.unwrap_or(200);
            let answer = http::Response::builder()
                .status(status)
                .body(())
                .expect("response");
            let refused = status != 200;
            let Ok(mut stream) = respond.send_response(answer, refused) else {
                return;
            };
            if refused {
                log.lock().expect("log").push(received);
                return;
            }
            let mut bytes = 0;
            while let Some(Ok(chunk)) = body.data().await {
                bytes += chunk.len();
                let _ = body.flow_control().release_capacity(chunk.len());
                if send_bytes(&mut stream, chunk).await.is_err() {
                    return;
                }
            }
            let _ = stream.send_data(Bytes::new(), true);
            received.bytes = bytes;
            log.lock().expect("log").push(received);
        });
    }
    Ok(())
}
