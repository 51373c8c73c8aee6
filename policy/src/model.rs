//! The authorization model: Istio's `istio.security.Authorization` as a node proxy
//! receives it from istiod (or from a local config file).
//!
//! The shape follows the workload API proto (`authorization.proto`) field for field:
//! a policy has rules (ORed), a rule has clauses (ANDed), a clause has matches (ORed),
//! and a match has fields (ANDed) whose values are ORed.
//!
//! The serde form is the one ztunnel's local config file accepts for its
//! `policies:` list (camelCase keys, `rules` as three nested lists, externally tagged
//! string matches such as `{Exact: "cluster.local/ns/a/sa/b"}`), so a local file
//! written for ztunnel loads here unchanged. Two deliberate differences, both
//! fail-closed: unknown keys anywhere are rejected (ztunnel ignores unknown keys
//! inside a match, which could silently widen an ALLOW), and `dryRun` may be
//! omitted (it defaults to `false`).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::{self, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeTupleVariant, Serializer};
use serde::{Deserialize, Serialize};

/// One authorization policy (`istio.security.Authorization`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    /// Policy name (the `AuthorizationPolicy` object name).
    pub name: String,
    /// Policy namespace; also the namespace a `Namespace`-scoped policy applies to.
    pub namespace: String,
    /// Which workloads the policy applies to.
    pub scope: Scope,
    /// What happens when a rule matches.
    pub action: Action,
    /// Rules, ORed: the policy matches when any rule matches.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// A dry-run policy is evaluated and reported, never enforced.
    #[serde(default)]
    pub dry_run: bool,
    /// Set when the policy could not be understood (see [`Authorization::invalid`]).
    /// An invalid policy denies every connection in its scope. Never read from or
    /// written to a config file: a bad field in a file is a parse error instead.
    #[serde(skip)]
    pub invalid: Option<String>,
}

impl Authorization {
    /// A policy that could not be understood (unknown enum value, malformed address,
    /// port out of range...). It compiles to "deny everything" for its scope, and the
    /// reason is reported with every denial it causes.
    pub fn invalid(
        name: impl Into<String>,
        namespace: impl Into<String>,
        scope: Scope,
        reason: impl Into<String>,
    ) -> Self {
        Authorization {
            name: name.into(),
            namespace: namespace.into(),
            scope,
            action: Action::Deny,
            rules: Vec::new(),
            dry_run: false,
            invalid: Some(reason.into()),
        }
    }

    /// The key workloads use to reference the policy: `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the policy is valid (not marked with [`Authorization::invalid`]).
    pub fn is_valid(&self) -> bool {
        self.invalid.is_none()
    }
}

/// Which workloads a policy applies to (`istio.security.Scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Every workload in the mesh (policies in the root namespace).
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// Only workloads that list the policy's `namespace/name` key.
    WorkloadSelector,
}

/// What a matching policy does (`istio.security.Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Allow the connection when a rule matches.
    Allow,
    /// Deny the connection when a rule matches.
    Deny,
}

/// A rule: its clauses are ANDed. A rule without clauses matches every connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rule {
    /// Clauses (the policy's `from`, `to` and `when`), ANDed.
    pub clauses: Vec<Clause>,
}

/// A clause: its matches are ORed. A clause without matches is satisfied by every
/// connection; a match with no field set is ignored (it never satisfies a clause).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Clause {
    /// Matches, ORed.
    pub matches: Vec<Match>,
}

/// A match: every field that is set must hold (ANDed); within a field any value may
/// match (ORed); a `not_` field holds when none of its values matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Match {
    /// Peer namespace (from its identity; `""` without one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<StringMatch>,
    /// Peer namespace must match none of these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<StringMatch>,
    /// Peer service account (namespace and name, both exact).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountMatch>,
    /// Peer service account must match none of these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    /// Peer principal `trust-domain/ns/NS/sa/SA` (no `spiffe://` prefix).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<StringMatch>,
    /// Peer principal must match none of these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<StringMatch>,
    /// Source address ranges.
    #[serde(skip_serializing_if = "Vec::is_empty", with = "cidr_list")]
    pub source_ips: Vec<IpNet>,
    /// Source address must be in none of these ranges.
    #[serde(skip_serializing_if = "Vec::is_empty", with = "cidr_list")]
    pub not_source_ips: Vec<IpNet>,
    /// Destination address ranges.
    #[serde(skip_serializing_if = "Vec::is_empty", with = "cidr_list")]
    pub destination_ips: Vec<IpNet>,
    /// Destination address must be in none of these ranges.
    #[serde(skip_serializing_if = "Vec::is_empty", with = "cidr_list")]
    pub not_destination_ips: Vec<IpNet>,
    /// Destination ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_ports: Vec<u16>,
    /// Destination port must be none of these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ports: Vec<u16>,
}

impl Match {
    /// Whether no field is set. An empty match is ignored by its clause.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.service_accounts.is_empty()
            && self.not_service_accounts.is_empty()
            && self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.source_ips.is_empty()
            && self.not_source_ips.is_empty()
            && self.destination_ips.is_empty()
            && self.not_destination_ips.is_empty()
            && self.destination_ports.is_empty()
            && self.not_destination_ports.is_empty()
    }
}

/// A service account: namespace and name, compared exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountMatch {
    /// Service account namespace.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
}

/// A string match (`istio.security.StringMatch`).
///
/// Serde form (serde-derive's, as ztunnel's): in YAML `!Exact v`, `!Prefix v`,
/// `!Suffix v`, `!Presence []`; in JSON `{"Exact": "v"}` ... `{"Presence": []}`.
/// The single-key map form `{Exact: v}` is accepted in YAML too, and Presence's
/// empty value may be written `[]`, `null` or `{}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringMatch {
    /// Equal to the value.
    Exact(String),
    /// Starts with the value.
    Prefix(String),
    /// Ends with the value.
    Suffix(String),
    /// Present and not empty.
    Presence,
}

impl StringMatch {
    /// Whether `value` matches (for principals, `value` has no `spiffe://` prefix).
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(v) => value == v,
            StringMatch::Prefix(v) => value.starts_with(v.as_str()),
            StringMatch::Suffix(v) => value.ends_with(v.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

impl Serialize for StringMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The serde-derive form of ztunnel's enum: YAML `!Exact v`, JSON `{"Exact": v}`,
        // and `Presence()` as an empty tuple variant.
        match self {
            StringMatch::Exact(v) => s.serialize_newtype_variant("StringMatch", 0, "Exact", v),
            StringMatch::Prefix(v) => s.serialize_newtype_variant("StringMatch", 1, "Prefix", v),
            StringMatch::Suffix(v) => s.serialize_newtype_variant("StringMatch", 2, "Suffix", v),
            StringMatch::Presence => s
                .serialize_tuple_variant("StringMatch", 3, "Presence", 0)?
                .end(),
        }
    }
}

/// Accepts `[]`, `null` or `{}` as the (empty) argument of `Presence`.
struct PresenceArg;

impl<'de> Deserialize<'de> for PresenceArg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PresenceArg;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an empty list `[]` (Presence takes no value)")
            }
            fn visit_unit<E: de::Error>(self) -> Result<PresenceArg, E> {
                Ok(PresenceArg)
            }
            fn visit_none<E: de::Error>(self) -> Result<PresenceArg, E> {
                Ok(PresenceArg)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PresenceArg, A::Error> {
                match seq.next_element::<de::IgnoredAny>()? {
                    None => Ok(PresenceArg),
                    Some(_) => Err(de::Error::custom(
                        "Presence takes no value: write `Presence: []`",
                    )),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PresenceArg, A::Error> {
                match map.next_key::<de::IgnoredAny>()? {
                    None => Ok(PresenceArg),
                    Some(_) => Err(de::Error::custom(
                        "Presence takes no value: write `Presence: []`",
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

const KINDS: &[&str] = &["Exact", "Prefix", "Suffix", "Presence"];

impl<'de> Deserialize<'de> for StringMatch {
    /// Accepts the YAML tag form ztunnel's serde_yaml reads (`!Exact v`,
    /// `!Presence []`), the single-key map form (`{Exact: v}`, as JSON writes it),
    /// and the bare string `Presence`.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringMatch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a string match: one of Exact, Prefix, Suffix (with a string) or Presence",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StringMatch, E> {
                match v {
                    "Presence" => Ok(StringMatch::Presence),
                    other => Err(E::custom(format!(
                        "`{other}` is not a string match: write e.g. `Exact: {other}`"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringMatch, A::Error> {
                let Some(kind) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(
                        "empty string match: write one of Exact, Prefix, Suffix or Presence",
                    ));
                };
                let m = match kind.as_str() {
                    "Exact" => StringMatch::Exact(map.next_value()?),
                    "Prefix" => StringMatch::Prefix(map.next_value()?),
                    "Suffix" => StringMatch::Suffix(map.next_value()?),
                    "Presence" => {
                        map.next_value::<PresenceArg>()?;
                        StringMatch::Presence
                    }
                    other => return Err(de::Error::unknown_variant(other, KINDS)),
                };
                if map.next_key::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(
                        "a string match has exactly one kind (Exact, Prefix, Suffix or Presence)",
                    ));
                }
                Ok(m)
            }
            fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<StringMatch, A::Error> {
                let (kind, variant) = data.variant::<String>()?;
                Ok(match kind.as_str() {
                    "Exact" => StringMatch::Exact(variant.newtype_variant()?),
                    "Prefix" => StringMatch::Prefix(variant.newtype_variant()?),
                    "Suffix" => StringMatch::Suffix(variant.newtype_variant()?),
                    "Presence" => {
                        variant.newtype_variant::<PresenceArg>()?;
                        StringMatch::Presence
                    }
                    other => return Err(de::Error::unknown_variant(other, KINDS)),
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses an address range: `10.0.0.0/8`, `fd00::/8`, or a bare address (a single
/// host). Errors name the offending text.
pub fn parse_cidr(text: &str) -> Result<IpNet, crate::PolicyError> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(crate::PolicyError::BadCidr {
        text: text.to_owned(),
    })
}

/// Serde for CIDR lists as strings, with a clear error for a malformed entry.
mod cidr_list {
    use super::*;

    pub(super) fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(nets.len()))?;
        for n in nets {
            seq.serialize_element(&n.to_string())?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<IpNet>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of address ranges such as [\"10.0.0.0/8\"]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<IpNet>, A::Error> {
                let mut out = Vec::new();
                while let Some(text) = seq.next_element::<String>()? {
                    out.push(parse_cidr(&text).map_err(de::Error::custom)?);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}
