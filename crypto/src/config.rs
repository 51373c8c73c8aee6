//! TLS configurations for workload certificates, and their rotation.
//!
//! A [`CertifiedTls`] is built once per issued certificate (the signing key is
//! loaded once) and gives out the server configuration and client
//! configurations cheaply. Rotation is a new `CertifiedTls`: sessions started
//! from the old one keep their configuration (and certificate) until they
//! close, new sessions take the new one.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use crate::certificate::WorkloadCertificate;
use crate::error::Error;
use crate::identity::Identity;
use crate::tls::{self, ClientTlsConfig, ServerTlsConfig};

/// Ready-made TLS configurations for one workload certificate.
pub struct CertifiedTls {
    cert: Arc<WorkloadCertificate>,
    key: Arc<CertifiedKey>,
    server: ServerTlsConfig,
}

impl std::fmt::Debug for CertifiedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedTls")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl CertifiedTls {
    /// Loads the certificate's key and builds its server configuration.
    pub fn new(cert: Arc<WorkloadCertificate>) -> Result<Self, Error> {
        let key = cert.certified_key()?;
        let server = tls::server_config(&cert, &key)?;
        Ok(Self { cert, key, server })
    }

    /// The certificate these configurations present.
    pub fn certificate(&self) -> &Arc<WorkloadCertificate> {
        &self.cert
    }

    /// The server configuration: presents this certificate, requires a client
    /// certificate chaining to the same roots from the same trust domain.
    pub fn server_config(&self) -> ServerTlsConfig {
        self.server.clone()
    }

    /// A new client configuration presenting this certificate and accepting
    /// only a server whose identity is one of `expected` (non-empty).
    /// Prefer [`ClientConfigCache`] on hot paths.
    pub fn client_config(&self, expected: &[Identity]) -> Result<ClientTlsConfig, Error> {
        tls::client_config(&self.cert, &self.key, expected)
    }
}

/// A bounded per-shard cache of client configurations keyed by (our
/// identity, expected server identities). Not `Sync`: each shard owns one.
#[derive(Debug)]
pub struct ClientConfigCache {
    entries: HashMap<Identity, HashMap<Vec<Identity>, Entry>>,
    len: usize,
    capacity: usize,
}

#[derive(Debug)]
struct Entry {
    ours: Arc<CertifiedTls>,
    config: ClientTlsConfig,
}

impl ClientConfigCache {
    /// A cache holding at most `capacity` configurations (cleared when full).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            len: 0,
            capacity: capacity.max(1),
        }
    }

    /// The client configuration for `ours` expecting `expected`, built on
    /// first use. An entry made for an older certificate is replaced.
    pub fn get(
        &mut self,
        ours: &Arc<CertifiedTls>,
        expected: &[Identity],
    ) -> Result<ClientTlsConfig, Error> {
        let identity = ours.certificate().identity();
        if let Some(entry) = self.entries.get(identity).and_then(|m| m.get(expected)) {
            if Arc::ptr_eq(&entry.ours, ours) {
                return Ok(entry.config.clone());
            }
        }
        let config = ours.client_config(expected)?;
        if self.len >= self.capacity {
            self.entries.clear();
            self.len = 0;
        }
        let entry = Entry {
            ours: ours.clone(),
            config: config.clone(),
        };
        let previous = self
            .entries
            .entry(identity.clone())
            .or_default()
            .insert(expected.to_vec(), entry);
        if previous.is_none() {
            self.len += 1;
        }
        Ok(config)
    }

    /// Number of cached configurations.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
