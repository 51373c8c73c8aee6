//! An in-process Istio CA over a real loopback socket: signs CSRs with an rcgen
//! test root, and can be told to refuse, fail, sign with another root or for
//! another identity.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use zpath_control::proto::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use zpath_control::proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};

/// A self-signed test root.
pub struct TestRoot {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestRoot {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        TestRoot {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A TLS server certificate for `dns` signed by this root: (chain PEM, key PEM).
    pub fn server_cert(&self, dns: &str) -> (String, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec![dns.to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the root PEM to `dir/name` and returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, &self.pem).unwrap();
        p
    }
}

/// What the CA does with the next requests.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Sign,
    Refuse,
    /// Sign for this URI instead of the one in the CSR.
    SignAs(String),
}

/// One request as the CA saw it.
#[derive(Clone, Debug)]
pub struct SeenCsr {
    pub authorization: Option<String>,
    pub validity_duration: i64,
    pub impersonated: Option<String>,
    pub san: Vec<String>,
}

pub struct CaState {
    pub mode: Mode,
    /// Answer UNAVAILABLE to this many requests first.
    pub fail_next: usize,
    /// Sign with this root instead of the trusted one.
    pub wrong_root: Option<Arc<TestRoot>>,
    /// Hold each request this long (to observe concurrency).
    pub delay: Duration,
    pub seen: Vec<SeenCsr>,
}

#[derive(Clone)]
struct Ca {
    root: Arc<TestRoot>,
    state: Arc<Mutex<CaState>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl IstioCertificateService for Ca {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let result = self.sign(request).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

impl Ca {
    async fn sign(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let req = request.into_inner();
        let csr = CertificateSigningRequestParams::from_pem(&req.csr)
            .map_err(|e| Status::invalid_argument(format!("bad CSR: {e}")))?;
        let san: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|s| match s {
                SanType::URI(u) => Some(u.as_str().to_string()),
                _ => None,
            })
            .collect();
        let impersonated = req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("ImpersonatedIdentity"))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            });
        let (mode, fail, wrong_root, delay) = {
            let mut s = self.state.lock().unwrap();
            s.seen.push(SeenCsr {
                authorization,
                validity_duration: req.validity_duration,
                impersonated,
                san: san.clone(),
            });
            let fail = s.fail_next > 0;
            if fail {
                s.fail_next -= 1;
            }
            (s.mode.clone(), fail, s.wrong_root.clone(), s.delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if fail {
            return Err(Status::unavailable("CA temporarily down"));
        }
        let san = match mode {
            Mode::Refuse => {
                return Err(Status::permission_denied(
                    "identity not allowed for this token",
                ))
            }
            Mode::SignAs(other) => vec![other],
            Mode::Sign => san,
        };
        let root = wrong_root.unwrap_or_else(|| self.root.clone());
        let mut params = csr.params;
        params.subject_alt_names = san
            .into_iter()
            .map(|u| SanType::URI(u.try_into().unwrap()))
            .collect();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::seconds(60);
        params.not_after = now + time::Duration::seconds(req.validity_duration.max(1));
        let csr = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let leaf = csr
            .signed_by(&root.issuer)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: vec![leaf.pem(), root.pem.clone()],
        }))
    }
}

/// The running CA.
pub struct TestCa {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<CaState>>,
    pub max_in_flight: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestCa {
    pub async fn start(root: Arc<TestRoot>) -> Self {
        Self::start_on(root, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(root: Arc<TestRoot>, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(CaState {
            mode: Mode::Sign,
            fail_next: 0,
            wrong_root: None,
            delay: Duration::ZERO,
            seen: Vec::new(),
        }));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let svc = Ca {
            root,
            state: state.clone(),
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: max_in_flight.clone(),
        };
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(IstioCertificateServiceServer::new(svc))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = shutdown_rx.await;
                })
                .await;
        });
        TestCa {
            addr,
            state,
            max_in_flight,
            task,
            shutdown: Some(shutdown),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<SeenCsr> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Stops listening and closes every connection (GOAWAY), like a CA going down.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// A loopback address nothing listens on (bound, then released).
pub async fn unused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}
