//! The built-in certificate authority, used when no external CA is configured.
//!
//! It owns a root (created on first start and kept in the state directory, or
//! given as PEM) and issues ECDSA P-256 workload certificates: one SPIFFE URI
//! SAN, KeyUsage digitalSignature + keyEncipherment, ExtendedKeyUsage
//! serverAuth + clientAuth, no CA bit.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::certificate::{self, TrustBundle, WorkloadCertificate};
use crate::error::Error;
use crate::identity::Identity;

/// File name of the root certificate inside the state directory.
pub const ROOT_CERT_FILE: &str = "ca-root-cert.pem";
/// File name of the root key inside the state directory (mode 0600).
pub const ROOT_KEY_FILE: &str = "ca-root-key.pem";

/// How far leaves are back-dated, to tolerate clock skew between nodes.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Lifetime of a root created on first start.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A root certificate and key that issue workload certificates.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    trust: TrustBundle,
    root_not_after: SystemTime,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Creates a new in-memory root (ECDSA P-256, ten years).
    pub fn generate() -> Result<Self, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::generate)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "zpath");
        // A unique name: peers holding a different zpath root then report an
        // untrusted root rather than a bad signature from a same-named issuer.
        let serial = fresh_serial();
        let tag: String = serial
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        dn.push(DnType::CommonName, format!("zpath local mesh root {tag}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + ROOT_LIFETIME).into();
        params.serial_number = Some(serial);
        let cert = params.self_signed(&key).map_err(Error::generate)?;
        Self::from_parts(cert.der().clone(), key)
    }

    /// Loads the root kept in `state_dir`, or creates one there on first start.
    ///
    /// The key is written with mode 0600. If only one of the two files exists
    /// the state is inconsistent and this fails rather than replacing trust.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, Error> {
        let cert_path = state_dir.join(ROOT_CERT_FILE);
        let key_path = state_dir.join(ROOT_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert_pem = read(&cert_path)?;
                let key_pem = read(&key_path)?;
                Self::from_pem(&cert_pem, &key_pem)
            }
            (false, false) => {
                fs::create_dir_all(state_dir).map_err(|source| Error::StateDir {
                    path: state_dir.to_path_buf(),
                    source,
                })?;
                let ca = Self::generate()?;
                write_file(&key_path, ca.issuer.key().serialize_pem().as_bytes(), 0o600)?;
                write_file(&cert_path, ca.trust.to_pem().as_bytes(), 0o644)?;
                tracing::info!(dir = %state_dir.display(), "created a new local mesh root");
                Ok(ca)
            }
            (cert, _) => Err(Error::Ca(format!(
                "{} exists but {} does not: restore the missing file or remove both to create a new root",
                if cert { cert_path.display() } else { key_path.display() },
                if cert { key_path.display() } else { cert_path.display() },
            ))),
        }
    }

    /// Uses a given root: a PEM certificate (must be a CA) and its PKCS#8 PEM
    /// key (ECDSA P-256, P-384 or RSA).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let mut certs = certificate::parse_certificates(cert_pem, "CA certificate")?;
        if certs.len() != 1 {
            return Err(Error::Ca(format!(
                "expected exactly one CA certificate, found {}",
                certs.len()
            )));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            Error::Ca(format!(
                "cannot read the CA key ({e}); it must be an unencrypted PKCS#8 `PRIVATE KEY` \
                 (ECDSA P-256/P-384 or RSA); convert with `openssl pkcs8 -topk8 -nocrypt`"
            ))
        })?;
        Self::from_parts(certs.remove(0), key)
    }

    fn from_parts(cert: CertificateDer<'static>, key: KeyPair) -> Result<Self, Error> {
        let (_, parsed) = X509Certificate::from_der(&cert)
            .map_err(|e| Error::Ca(format!("cannot parse the CA certificate: {e}")))?;
        let is_ca = parsed
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(Error::Ca(
                "the CA certificate lacks BasicConstraints cA=true".into(),
            ));
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(Error::Ca(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        let root_not_after = certificate::validity(&cert)?.1;
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(Error::generate)?;
        let trust = TrustBundle::from_der(vec![cert])?;
        Ok(Self {
            issuer,
            trust,
            root_not_after,
        })
    }

    /// The root, as a trust bundle for verifiers.
    pub fn trust(&self) -> &TrustBundle {
        &self.trust
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> String {
        self.trust.to_pem()
    }

    /// Issues a certificate for `identity`, valid from now (minus a minute of
    /// clock skew) for `lifetime`, with a fresh ECDSA P-256 key.
    pub fn issue(
        &self,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<WorkloadCertificate, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::generate)?;
        let params = self.leaf_params(identity, lifetime)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(Error::generate)?;
        WorkloadCertificate::from_der(
            vec![cert.der().clone()],
            PrivatePkcs8KeyDer::from(key.serialize_der()),
            self.trust.clone(),
        )
    }

    /// Signs a PEM CSR asking for exactly one SPIFFE URI SAN, returning the
    /// leaf as PEM. Key usages and lifetime are ours, not the request's.
    pub fn sign_csr(&self, csr_pem: &str, lifetime: Duration) -> Result<String, Error> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::Ca(format!("cannot read the CSR: {e}")))?;
        let uris: Vec<&str> = request
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(uri) => Some(uri.as_str()),
                _ => None,
            })
            .collect();
        let [uri] = uris[..] else {
            return Err(Error::Ca(format!(
                "the CSR must carry exactly one URI SAN, it has {}",
                uris.len()
            )));
        };
        let identity: Identity = uri.parse()?;
        let params = self.leaf_params(&identity, lifetime)?;
        let cert = params
            .signed_by(&request.public_key, &self.issuer)
            .map_err(Error::generate)?;
        Ok(cert.pem())
    }

    fn leaf_params(
        &self,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<CertificateParams, Error> {
        if lifetime.is_zero() {
            return Err(Error::Ca("certificate lifetime must be positive".into()));
        }
        let now = SystemTime::now();
        let not_after = (now + lifetime).min(self.root_not_after);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![certificate::spiffe_san(identity)?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        params.serial_number = Some(fresh_serial());
        Ok(params)
    }
}

/// A positive serial unique within this process and very likely across
/// restarts: nanoseconds since the epoch plus a counter.
fn fresh_serial() -> SerialNumber {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut bytes = Vec::with_capacity(17);
    bytes.push(0x01);
    bytes.extend_from_slice(&(nanos as u64).to_be_bytes());
    bytes.extend_from_slice(&count.to_be_bytes());
    bytes.extend_from_slice(&std::process::id().to_be_bytes());
    SerialNumber::from_slice(&bytes)
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::StateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `data` to `path` via a temporary file created with `mode` and a
/// rename, so a crash never leaves a half-written key.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp: PathBuf = path.with_extension("tmp");
    let err = |source| Error::StateDir {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(data).map_err(err)?;
    file.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}
