//! SPIFFE workload identities as Istio issues them:
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Parsing is strict: exactly that shape, no empty segment, no extra path
//! segment, no query or fragment, no byte outside printable ASCII. An identity
//! that parses is safe to print in logs and to compare byte for byte.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a valid SPIFFE workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The string does not start with `spiffe://`.
    #[error("not a SPIFFE identity: expected `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`")]
    NotSpiffe,
    /// A NUL, control or non-ASCII byte appears.
    #[error("SPIFFE identity contains a NUL, control or non-ASCII byte at offset {offset}")]
    ForbiddenByte {
        /// Byte offset of the first offending byte.
        offset: usize,
    },
    /// The path does not have the shape `/ns/<namespace>/sa/<service-account>`.
    #[error("SPIFFE identity path must be exactly `/ns/<namespace>/sa/<service-account>`")]
    BadPath,
    /// One of the segments is empty.
    #[error("SPIFFE identity has an empty {segment}")]
    EmptySegment {
        /// Which segment is empty (`trust domain`, `namespace`, `service account`).
        segment: &'static str,
    },
    /// A segment holds a character that SPIFFE does not allow there.
    #[error("SPIFFE identity {segment} contains the character {ch:?}, which is not allowed")]
    BadCharacter {
        /// Which segment holds it.
        segment: &'static str,
        /// The offending character.
        ch: char,
    },
}

/// A SPIFFE workload identity (`spiffe://td/ns/ns/sa/sa`).
///
/// Kept as the one URI string with the bounds of its parts, so the principal
/// (`td/ns/NS/sa/SA`) and each part are slices of it: policy matches them without
/// parsing the identity again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// `spiffe://td/ns/NS/sa/SA`; the parts below are determined by it.
    uri: Box<str>,
    /// End of the trust domain in `uri`.
    td_end: usize,
    /// Start of the namespace in `uri`.
    ns_start: usize,
    /// Start of the service account in `uri`.
    sa_start: usize,
}

const SCHEME: &str = "spiffe://";

impl Identity {
    /// Builds an identity from its three parts, validating each one.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        check_segment(trust_domain, "trust domain", is_trust_domain_char)?;
        check_segment(namespace, "namespace", is_path_char)?;
        check_segment(service_account, "service account", is_path_char)?;
        let uri = format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        let td_end = SCHEME.len() + trust_domain.len();
        let ns_start = td_end + "/ns/".len();
        Ok(Self {
            uri: uri.into(),
            td_end,
            ns_start,
            sa_start: ns_start + namespace.len() + "/sa/".len(),
        })
    }

    /// The whole URI, `spiffe://td/ns/NS/sa/SA`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The trust domain (`cluster.local` in a default Istio install).
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.td_end]
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.uri[self.ns_start..self.sa_start - "/sa/".len()]
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.uri[self.sa_start..]
    }

    /// The principal `td/ns/NS/sa/SA` (the identity without `spiffe://`), as Istio's
    /// policies name it; the three parts above are slices of it.
    pub fn principal(&self) -> &str {
        &self.uri[SCHEME.len()..]
    }
}

impl Ord for Identity {
    /// By trust domain, then namespace, then service account.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (
            self.trust_domain(),
            self.namespace(),
            self.service_account(),
        )
            .cmp(&(
                other.trust_domain(),
                other.namespace(),
                other.service_account(),
            ))
    }
}

impl PartialOrd for Identity {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Forbidden bytes are reported before anything else so that a log line
        // never carries them further than this check.
        if let Some(offset) = s.bytes().position(|b| !(0x20..0x7f).contains(&b)) {
            return Err(IdentityError::ForbiddenByte { offset });
        }
        let rest = s.strip_prefix(SCHEME).ok_or(IdentityError::NotSpiffe)?;
        let (trust_domain, path) = rest.split_once('/').ok_or(IdentityError::BadPath)?;
        let mut parts = path.split('/');
        let (Some("ns"), Some(namespace), Some("sa"), Some(service_account), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            if trust_domain.is_empty() {
                return Err(IdentityError::EmptySegment {
                    segment: "trust domain",
                });
            }
            return Err(IdentityError::BadPath);
        };
        Identity::new(trust_domain, namespace, service_account)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

fn check_segment(
    value: &str,
    segment: &'static str,
    allowed: fn(char) -> bool,
) -> Result<(), IdentityError> {
    if value.is_empty() {
        return Err(IdentityError::EmptySegment { segment });
    }
    if let Some(offset) = value.bytes().position(|b| !(0x20..0x7f).contains(&b)) {
        return Err(IdentityError::ForbiddenByte { offset });
    }
    match value.chars().find(|c| !allowed(*c)) {
        Some(ch) => Err(IdentityError::BadCharacter { segment, ch }),
        None => Ok(()),
    }
}

/// SPIFFE trust domains: lowercase letters, digits, `.`, `-`, `_`.
/// Uppercase is accepted too, as Istio does not normalise the mesh config value.
fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// SPIFFE path segments: letters, digits, `.`, `-`, `_` (Kubernetes names are a subset).
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Identity, IdentityError> {
        s.parse()
    }

    #[test]
    fn parses_and_formats_round_trip() {
        let id = parse("spiffe://cluster.local/ns/default/sa/bookinfo-productpage").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        );
        assert_eq!(parse(&id.to_string()).unwrap(), id);
        assert_eq!(
            id.principal(),
            "cluster.local/ns/default/sa/bookinfo-productpage"
        );
    }

    #[test]
    fn orders_by_part_not_by_uri() {
        // As a URI "a/..." sorts after "a.b/..."; by parts "a" comes first.
        let short = Identity::new("a", "x", "y").unwrap();
        let long = Identity::new("a.b", "x", "y").unwrap();
        assert!(short < long);
        assert!(short.to_string() > long.to_string());
    }

    #[test]
    fn rejects_other_schemes() {
        assert_eq!(
            parse("https://cluster.local/ns/a/sa/b"),
            Err(IdentityError::NotSpiffe)
        );
        assert_eq!(
            parse("SPIFFE://cluster.local/ns/a/sa/b"),
            Err(IdentityError::NotSpiffe)
        );
        assert_eq!(parse(""), Err(IdentityError::NotSpiffe));
    }

    #[test]
    fn rejects_empty_segments() {
        assert_eq!(
            parse("spiffe:///ns/a/sa/b"),
            Err(IdentityError::EmptySegment {
                segment: "trust domain"
            })
        );
        assert_eq!(
            parse("spiffe://td/ns//sa/b"),
            Err(IdentityError::EmptySegment {
                segment: "namespace"
            })
        );
        assert_eq!(
            parse("spiffe://td/ns/a/sa/"),
            Err(IdentityError::EmptySegment {
                segment: "service account"
            })
        );
    }

    #[test]
    fn rejects_extra_or_missing_path_segments() {
        for bad in [
            "spiffe://td",
            "spiffe://td/",
            "spiffe://td/ns/a",
            "spiffe://td/ns/a/sa",
            "spiffe://td/ns/a/sa/b/",
            "spiffe://td/ns/a/sa/b/extra",
            "spiffe://td/sa/b/ns/a",
            "spiffe://td/ns/a/xx/b",
        ] {
            assert_eq!(parse(bad), Err(IdentityError::BadPath), "{bad}");
        }
    }

    #[test]
    fn rejects_nul_and_control_bytes() {
        assert_eq!(
            parse("spiffe://td/ns/a\0/sa/b"),
            Err(IdentityError::ForbiddenByte { offset: 16 })
        );
        assert_eq!(
            parse("spiffe://td/ns/a/sa/b\n"),
            Err(IdentityError::ForbiddenByte { offset: 21 })
        );
        assert_eq!(
            parse("spiffe://t\x7fd/ns/a/sa/b"),
            Err(IdentityError::ForbiddenByte { offset: 10 })
        );
        assert!(matches!(
            parse("spiffe://td/ns/é/sa/b"),
            Err(IdentityError::ForbiddenByte { .. })
        ));
    }

    #[test]
    fn rejects_query_fragment_port_and_userinfo() {
        assert!(matches!(
            parse("spiffe://td/ns/a/sa/b?x=1"),
            Err(IdentityError::BadCharacter { ch: '?', .. })
        ));
        assert!(matches!(
            parse("spiffe://td/ns/a/sa/b#f"),
            Err(IdentityError::BadCharacter { ch: '#', .. })
        ));
        assert!(matches!(
            parse("spiffe://td:443/ns/a/sa/b"),
            Err(IdentityError::BadCharacter { ch: ':', .. })
        ));
        assert!(matches!(
            parse("spiffe://u@td/ns/a/sa/b"),
            Err(IdentityError::BadCharacter { ch: '@', .. })
        ));
        assert!(matches!(
            parse("spiffe://td/ns/a b/sa/b"),
            Err(IdentityError::BadCharacter { ch: ' ', .. })
        ));
    }

    #[test]
    fn new_validates_parts() {
        assert!(Identity::new("td", "ns", "sa").is_ok());
        assert_eq!(
            Identity::new("td", "", "sa"),
            Err(IdentityError::EmptySegment {
                segment: "namespace"
            })
        );
        assert!(matches!(
            Identity::new("td", "a/b", "sa"),
            Err(IdentityError::BadCharacter { ch: '/', .. })
        ));
    }

    #[test]
    fn error_messages_name_the_problem() {
        let msg = parse("spiffe://td/ns/a/sa/b/c").unwrap_err().to_string();
        assert!(
            msg.contains("/ns/<namespace>/sa/<service-account>"),
            "{msg}"
        );
    }
}
