//! gRPC channels to istiod (xDS and CA): TLS with a PEM root, or plaintext `http://`
//! for tests, plus the bearer token and extra headers istiod expects.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Where and how to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcTarget {
    /// `https://host:port` (TLS) or `http://host:port` (plaintext, tests only).
    pub address: String,
    /// PEM file with the root(s) that sign the server certificate; required for
    /// `https`. Re-read at every connect, so a rotated root is picked up.
    pub root_cert: Option<PathBuf>,
    /// Name to verify in the server certificate instead of the address host
    /// (e.g. `istiod.istio-system.svc` when dialling an IP).
    pub server_name: Option<String>,
    /// TCP+TLS connect timeout. Default 10 s.
    pub connect_timeout: Duration,
}

impl GrpcTarget {
    /// A target with no TLS root and the default timeout.
    pub fn new(address: impl Into<String>) -> Self {
        GrpcTarget {
            address: address.into(),
            root_cert: None,
            server_name: None,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Checks the scheme and that `https` has a root certificate.
    pub fn validate(&self) -> Result<(), ChannelError> {
        let bad = |reason: &str| ChannelError::Address {
            address: self.address.clone(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = self
            .address
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("https") if self.root_cert.is_none() => {
                Err(bad("https needs a root certificate file"))
            }
            Some("https") | Some("http") => {
                if uri.host().is_none() {
                    Err(bad("no host"))
                } else {
                    Ok(())
                }
            }
            _ => Err(bad("scheme must be https:// (or http:// for tests)")),
        }
    }

    /// The endpoint, with TLS configured from the root file for `https`.
    pub fn endpoint(&self) -> Result<Endpoint, ChannelError> {
        self.validate()?;
        let bad = |reason: String| ChannelError::Address {
            address: self.address.clone(),
            reason,
        };
        let mut ep = Endpoint::from_shared(self.address.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(root) = &self.root_cert {
            if self.address.starts_with("https") {
                let pem = read_file("root certificate", root)?;
                let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
                if let Some(name) = &self.server_name {
                    tls = tls.domain_name(name.clone());
                }
                ep = ep.tls_config(tls).map_err(|e| bad(e.to_string()))?;
            }
        }
        Ok(ep)
    }
}

/// Errors building a channel or its request metadata.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The address is not usable.
    #[error("invalid address {address:?}: {reason}")]
    Address {
        /// The address given.
        address: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or is empty.
    #[error("cannot read {what} {path}: {source}")]
    File {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A header name or value is not valid.
    #[error("invalid gRPC metadata {name}: {reason}")]
    Metadata {
        /// Header name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Adds `authorization: Bearer <token>` (token file re-read now, whitespace trimmed)
/// and the extra headers to `metadata`.
pub fn add_request_metadata(
    metadata: &mut MetadataMap,
    token_file: Option<&Path>,
    headers: &[(String, String)],
) -> Result<(), ChannelError> {
    if let Some(path) = token_file {
        let raw = read_file("token file", path)?;
        let token = String::from_utf8_lossy(&raw).trim().to_string();
        if token.is_empty() {
            return Err(ChannelError::File {
                what: "token file",
                path: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "file is empty"),
            });
        }
        let value: AsciiMetadataValue =
            format!("Bearer {token}")
                .parse()
                .map_err(|_| ChannelError::Metadata {
                    name: "authorization".into(),
                    reason: format!("token in {} has non-ASCII characters", path.display()),
                })?;
        metadata.insert("authorization", value);
    }
    for (k, v) in headers {
        let key: AsciiMetadataKey = k.parse().map_err(|_| ChannelError::Metadata {
            name: k.clone(),
            reason: "not a valid header name".into(),
        })?;
        let value: AsciiMetadataValue = v.parse().map_err(|_| ChannelError::Metadata {
            name: k.clone(),
            reason: "not a valid ASCII header value".into(),
        })?;
        metadata.insert(key, value);
    }
    Ok(())
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, ChannelError> {
    std::fs::read(path).map_err(|source| ChannelError::File {
        what,
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn validates_scheme_and_root() {
        assert!(GrpcTarget::new("http://127.0.0.1:15010").validate().is_ok());
        assert!(GrpcTarget::new("https://istiod:15012").validate().is_err());
        let mut t = GrpcTarget::new("https://istiod:15012");
        t.root_cert = Some("/nonexistent/root.pem".into());
        assert!(t.validate().is_ok());
        assert!(matches!(t.endpoint(), Err(ChannelError::File { .. })));
        assert!(GrpcTarget::new("istiod:15012").validate().is_err());
        assert!(GrpcTarget::new("ftp://istiod:15012").validate().is_err());
    }

    #[test]
    fn token_is_reread_trimmed_and_sent_as_bearer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc.def\n").unwrap();
        let mut md = MetadataMap::new();
        add_request_metadata(&mut md, Some(&path), &[("ClusterID".into(), "c1".into())]).unwrap();
        assert_eq!(md.get("authorization").unwrap(), "Bearer abc.def");
        assert_eq!(md.get("clusterid").unwrap(), "c1");
        std::fs::write(&path, "rotated").unwrap();
        add_request_metadata(&mut md, Some(&path), &[]).unwrap();
        assert_eq!(md.get("authorization").unwrap(), "Bearer rotated");
        std::fs::write(&path, "  \n").unwrap();
        assert!(add_request_metadata(&mut md, Some(&path), &[]).is_err());
        assert!(add_request_metadata(&mut md, Some(&dir.path().join("missing")), &[]).is_err());
    }
}
