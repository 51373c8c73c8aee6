//! Evaluation inputs: the connection being authorized and its destination workload.

use std::net::IpAddr;

use crate::PolicyError;

/// A verified peer identity (from the client certificate of an HBONE connection).
///
/// It borrows one contiguous principal string `TD/ns/NS/sa/SA` so principal matches
/// compare plain slices, with no allocation per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer<'a> {
    principal: &'a str,
    trust_domain: &'a str,
    namespace: &'a str,
    service_account: &'a str,
}

impl<'a> Peer<'a> {
    /// Parses `spiffe://TD/ns/NS/sa/SA` or the bare principal `TD/ns/NS/sa/SA`.
    /// Each part must be non-empty and contain no `/` (as Istio's identity parser).
    pub fn parse(identity: &'a str) -> Result<Self, PolicyError> {
        let principal = identity.strip_prefix("spiffe://").unwrap_or(identity);
        let bad = || PolicyError::BadIdentity {
            text: identity.to_owned(),
        };
        let mut parts = principal.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        if td.is_empty() || ns.is_empty() || sa.is_empty() {
            return Err(bad());
        }
        Ok(Peer {
            principal,
            trust_domain: td,
            namespace: ns,
            service_account: sa,
        })
    }

    /// The peer whose principal `TD/ns/NS/sa/SA` is `principal`, from parts a verifier
    /// already separated: nothing is parsed, only checked. `principal` must be exactly
    /// `trust_domain/ns/namespace/sa/service_account` with no part empty or holding a
    /// `/` (as every identity the verifier yields), or the peer is refused.
    pub fn from_parts(
        principal: &'a str,
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, PolicyError> {
        let parts = [trust_domain, namespace, service_account];
        let expected_len = parts.iter().map(|p| p.len()).sum::<usize>() + "/ns//sa/".len();
        let well_formed = parts.iter().all(|p| !p.is_empty() && !p.contains('/'))
            && principal.len() == expected_len
            && principal.starts_with(trust_domain)
            && principal[trust_domain.len()..].starts_with("/ns/")
            && principal.ends_with(service_account)
            && principal[..principal.len() - service_account.len()].ends_with("/sa/");
        let bad = || PolicyError::BadIdentity {
            text: principal.to_owned(),
        };
        if !well_formed {
            return Err(bad());
        }
        // Well formed: the principal is longer than each part, and the bounds below fall
        // on the `/` separators checked above.
        let ns_start = trust_domain.len() + "/ns/".len();
        let sa_start = principal.len() - service_account.len();
        if &principal[ns_start..sa_start - "/sa/".len()] != namespace {
            return Err(bad());
        }
        Ok(Peer {
            principal,
            trust_domain: &principal[..trust_domain.len()],
            namespace: &principal[ns_start..sa_start - "/sa/".len()],
            service_account: &principal[sa_start..],
        })
    }

    /// The principal `TD/ns/NS/sa/SA` (no `spiffe://` prefix).
    pub fn principal(&self) -> &'a str {
        self.principal
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &'a str {
        self.trust_domain
    }

    /// The peer's namespace.
    pub fn namespace(&self) -> &'a str {
        self.namespace
    }

    /// The peer's service account.
    pub fn service_account(&self) -> &'a str {
        self.service_account
    }
}

/// The connection being authorized, as seen by the destination's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn<'a> {
    /// Source address of the connection.
    pub src_ip: IpAddr,
    /// Destination workload address.
    pub dst_ip: IpAddr,
    /// Destination port.
    pub dst_port: u16,
    /// Verified peer identity; `None` for plaintext (inbound 15006).
    pub peer: Option<Peer<'a>>,
}

/// The destination workload, as far as policy is concerned. `K` is any string type
/// the caller stores policy keys as (`&str`, `String`, `Arc<str>`...).
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a, K = &'a str> {
    /// The workload's namespace (selects `Namespace`-scoped policies).
    pub namespace: &'a str,
    /// The `namespace/name` keys of the policies selecting the workload (the
    /// workload's `authorization_policies`).
    pub policies: &'a [K],
}

impl<K> Clone for Target<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for Target<'_, K> {}
