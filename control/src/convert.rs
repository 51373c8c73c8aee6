//! Conversions from the xDS wire types ([`crate::proto`]) into the domain model
//! ([`crate::model`]) and the authorization model ([`zpath_policy::model`]).
//!
//! Everything fails closed:
//! * a workload or service with a malformed field is rejected with a
//!   [`ConvertError`] naming the resource and the field (the xDS client NACKs it and
//!   the last good snapshot stays in place);
//! * an authorization policy with a malformed field is never dropped or narrowed
//!   into something more permissive: it becomes [`Authorization::invalid`], which
//!   denies every connection in the policy's scope (in [`Scope::Global`] when the
//!   scope itself cannot be read, the only choice that never widens access).
//!
//! Empty identity fields get the same defaults as ztunnel and the local config file:
//! trust domain `cluster.local`, service account `default`, cluster id `Kubernetes`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use zpath_policy::model::{
    Action, Authorization, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
};

use crate::model::{
    Endpoint, HealthStatus, Locality, NamespacedHostname, NetworkMode, Service, Strng,
    TunnelProtocol, Waypoint, Workload, WorkloadProfile,
};
use crate::proto::istio::security as xsec;
use crate::proto::istio::workload as xwl;

/// Trust domain of a workload whose `trust_domain` is empty.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Service account of a workload whose `service_account` is empty.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Cluster id of a workload whose `cluster_id` is empty.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// A workload or service from xDS that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "xDS {kind} {resource:?} rejected: field `{field}` is invalid: {message} \
     (istiod sent a malformed resource: check that istiod and zpath versions are compatible)"
)]
pub struct ConvertError {
    /// `"workload"`, `"service"` or `"address"`.
    pub kind: &'static str,
    /// The resource's uid, or `namespace/hostname` for a service.
    pub resource: String,
    /// Path of the field in the proto message, e.g. `addresses[1]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// A workload together with the endpoints it contributes to services
/// (from its `services` map: `namespace/hostname` → port list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadEndpoints {
    /// The workload.
    pub workload: Workload,
    /// One endpoint per service the workload belongs to, sorted by service key.
    pub endpoints: Vec<(NamespacedHostname, Endpoint)>,
}

/// A converted `istio.workload.Address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressResource {
    /// A workload with its service endpoints.
    Workload(WorkloadEndpoints),
    /// A service.
    Service(Service),
}

impl TryFrom<&xwl::Address> for AddressResource {
    type Error = ConvertError;

    fn try_from(a: &xwl::Address) -> Result<Self, ConvertError> {
        match &a.r#type {
            Some(xwl::address::Type::Workload(w)) => Ok(Self::Workload(w.try_into()?)),
            Some(xwl::address::Type::Service(s)) => Ok(Self::Service(s.try_into()?)),
            None => Err(ConvertError {
                kind: "address",
                resource: String::new(),
                field: "type".into(),
                message: "neither a workload nor a service is set".into(),
            }),
        }
    }
}

impl TryFrom<xwl::Address> for AddressResource {
    type Error = ConvertError;

    fn try_from(a: xwl::Address) -> Result<Self, ConvertError> {
        Self::try_from(&a)
    }
}

impl TryFrom<&xwl::Workload> for WorkloadEndpoints {
    type Error = ConvertError;

    fn try_from(w: &xwl::Workload) -> Result<Self, ConvertError> {
        workload_with(w, &mut |v| Strng::from(v), &mut Arc::new)
    }
}

/// The error of `w`'s conversion naming `field`.
fn workload_error(w: &xwl::Workload) -> impl Fn(&str, String) -> ConvertError + '_ {
    |field: &str, message: String| ConvertError {
        kind: "workload",
        resource: w.uid.clone(),
        field: field.to_string(),
        message,
    }
}

/// Converts a workload, making every shared-looking string (namespace, identity,
/// node, network, telemetry names, service keys, policy keys) with `intern`, so a
/// caller can share one copy between many workloads without allocating duplicates.
/// The uid and name are unique per workload and always allocated. `share` turns the
/// profile into the `Arc` the workload holds (the xDS source reuses an equal one).
pub(crate) fn workload_with(
    w: &xwl::Workload,
    intern: &mut dyn FnMut(&str) -> Strng,
    share: &mut dyn FnMut(WorkloadProfile) -> Arc<WorkloadProfile>,
) -> Result<WorkloadEndpoints, ConvertError> {
    let err = workload_error(w);
    if w.uid.is_empty() {
        return Err(err("uid", "must not be empty".into()));
    }
    let namespace = intern(segment(&w.namespace).map_err(|m| err("namespace", m))?);
    let trust_domain = intern(
        segment(or_default(&w.trust_domain, DEFAULT_TRUST_DOMAIN))
            .map_err(|m| err("trust_domain", m))?,
    );
    let service_account = intern(
        segment(or_default(&w.service_account, DEFAULT_SERVICE_ACCOUNT))
            .map_err(|m| err("service_account", m))?,
    );
    let at = |(field, message): (String, String)| err(&field, message);
    let workload_ips = list("addresses", &w.addresses, |b| ip_from_bytes(b)).map_err(at)?;
    let protocol = tunnel_protocol(w.tunnel_protocol).map_err(|m| err("tunnel_protocol", m))?;
    let status = health(w.status).map_err(|m| err("status", m))?;
    let network_mode = network_mode(w.network_mode).map_err(|m| err("network_mode", m))?;
    let waypoint = waypoint(w.waypoint.as_ref(), intern).map_err(|m| err("waypoint", m))?;
    let authorization_policies = list("authorization_policies", &w.authorization_policies, |p| {
        policy_ref(p).map(&mut *intern)
    })
    .map_err(at)?;
    let uid = Strng::from(w.uid.as_str());
    let mut endpoints = Vec::with_capacity(w.services.len());
    for (key, list) in &w.services {
        let field = || format!("services[{key:?}]");
        let svc = service_key(key).map_err(|m| err(&field(), m))?;
        let svc = NamespacedHostname {
            namespace: intern(svc.0),
            hostname: intern(svc.1),
        };
        let port = port_map(&list.ports).map_err(|m| err(&field(), m))?;
        let endpoint = Endpoint {
            workload_uid: uid.clone(),
            port,
            status,
        };
        endpoints.push((svc, endpoint));
    }
    // The proto map has no order; sort so equal input gives equal output.
    endpoints.sort_by(|a, b| a.0.cmp(&b.0));
    let profile = WorkloadProfile {
        namespace,
        trust_domain,
        service_account,
        protocol,
        network: intern(&w.network),
        authorization_policies,
        services: endpoints.iter().map(|(k, _)| k.clone()).collect(),
        service_ports: endpoints
            .iter()
            .map(|(_, e)| Some(Arc::new(e.port.clone())))
            .collect(),
        canonical_name: intern(&w.canonical_name),
        canonical_revision: intern(&w.canonical_revision),
        workload_name: intern(&w.workload_name),
        workload_type: intern(workload_type(w.workload_type)),
        cluster_id: intern(or_default(&w.cluster_id, DEFAULT_CLUSTER_ID)),
        waypoint,
        locality: w
            .locality
            .as_ref()
            .map(|l| Locality {
                region: intern(&l.region),
                zone: intern(&l.zone),
                subzone: intern(&l.subzone),
            })
            .unwrap_or_default(),
    };
    let mut workload = Workload::new(uid, &w.name, share(profile));
    workload.node = intern(&w.node);
    workload.workload_ips = workload_ips.into();
    workload.status = status;
    workload.network_mode = network_mode;
    Ok(WorkloadEndpoints {
        workload,
        endpoints,
    })
}

/// Converts `w` on a `profile` already known to be what its shared fields convert to
/// (see [`profile_matches`]): only the per-workload fields (uid, name, node,
/// addresses, health) are converted and checked.
pub(crate) fn workload_on_profile(
    w: &xwl::Workload,
    profile: Arc<WorkloadProfile>,
    intern: &mut dyn FnMut(&str) -> Strng,
) -> Result<Workload, ConvertError> {
    let err = workload_error(w);
    if w.uid.is_empty() {
        return Err(err("uid", "must not be empty".into()));
    }
    let workload_ips = list("addresses", &w.addresses, |b| ip_from_bytes(b))
        .map_err(|(field, message)| err(&field, message))?;
    let status = health(w.status).map_err(|m| err("status", m))?;
    let network_mode = network_mode(w.network_mode).map_err(|m| err("network_mode", m))?;
    let mut workload = Workload::new(w.uid.as_str().into(), &w.name, profile);
    workload.node = intern(&w.node);
    workload.workload_ips = workload_ips.into();
    workload.status = status;
    workload.network_mode = network_mode;
    Ok(workload)
}

/// Whether the shared fields of `w` convert to exactly `p` (and so pass every check
/// of [`workload_with`], as they did when `p` was made).
pub(crate) fn profile_matches(p: &WorkloadProfile, w: &xwl::Workload) -> bool {
    // The comparison below is quadratic in services and ports: beyond a few, the
    // full conversion (n log n) decides instead.
    const FAST_MAX: usize = 16;
    if w.services.len() > FAST_MAX || w.services.values().any(|l| l.ports.len() > FAST_MAX) {
        return false;
    }
    *p.namespace == *w.namespace
        && *p.trust_domain == *or_default(&w.trust_domain, DEFAULT_TRUST_DOMAIN)
        && *p.service_account == *or_default(&w.service_account, DEFAULT_SERVICE_ACCOUNT)
        && tunnel_protocol(w.tunnel_protocol).ok() == Some(p.protocol)
        && *p.network == *w.network
        && *p.canonical_name == *w.canonical_name
        && *p.canonical_revision == *w.canonical_revision
        && *p.workload_name == *w.workload_name
        && *p.workload_type == *workload_type(w.workload_type)
        && *p.cluster_id == *or_default(&w.cluster_id, DEFAULT_CLUSTER_ID)
        && same_waypoint(p.waypoint.as_ref(), w.waypoint.as_ref())
        && same_locality(&p.locality, w.locality.as_ref())
        && p.authorization_policies.len() == w.authorization_policies.len()
        && p.authorization_policies
            .iter()
            .zip(&w.authorization_policies)
            .all(|(a, b)| **a == **b)
        && p.services.len() == w.services.len()
        && w.services.iter().all(|(key, list)| {
            let Ok((ns, host)) = service_key(key) else {
                return false;
            };
            p.services
                .iter()
                .position(|k| *k.namespace == *ns && *k.hostname == *host)
                .and_then(|i| p.service_ports.get(i)?.as_ref())
                .is_some_and(|m| same_ports(m, &list.ports))
        })
}

/// Whether `l` converts to exactly `locality`.
fn same_locality(locality: &Locality, l: Option<&xwl::Locality>) -> bool {
    match l {
        None => locality.is_empty(),
        Some(l) => {
            *locality.region == *l.region
                && *locality.zone == *l.zone
                && *locality.subzone == *l.subzone
        }
    }
}

/// Whether `g` converts (without error) to exactly `wp`, without allocating.
fn same_waypoint(wp: Option<&Waypoint>, g: Option<&xwl::GatewayAddress>) -> bool {
    use xwl::gateway_address::Destination;
    match (wp, g.map(|g| g.destination.as_ref())) {
        (None, None) => true,
        (Some(Waypoint::Service(k)), Some(Some(Destination::Hostname(h)))) => {
            *k.namespace == *h.namespace && *k.hostname == *h.hostname
        }
        (Some(Waypoint::Address { network, ip }), Some(Some(Destination::Address(a)))) => {
            **network == *a.network && ip_from_bytes(&a.address).ok() == Some(*ip)
        }
        _ => false,
    }
}

/// Whether `ports` converts (without error) to exactly `map`.
fn same_ports(map: &BTreeMap<u16, u16>, ports: &[xwl::Port]) -> bool {
    map.len() == ports.len()
        && ports.iter().enumerate().all(|(i, p)| {
            let found = u16::try_from(p.service_port).ok().and_then(|s| map.get(&s));
            let unique = ports[..i].iter().all(|q| q.service_port != p.service_port);
            unique && found.is_some_and(|t| u32::from(*t) == p.target_port)
        })
}

/// A hash of the fields of `w` its profile is made of: equal for every `w` that
/// [`profile_matches`] the same profile (given the same `state`).
pub(crate) fn profile_wire_hash(w: &xwl::Workload, state: &impl std::hash::BuildHasher) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = state.build_hasher();
    w.namespace.hash(&mut h);
    or_default(&w.trust_domain, DEFAULT_TRUST_DOMAIN).hash(&mut h);
    or_default(&w.service_account, DEFAULT_SERVICE_ACCOUNT).hash(&mut h);
    w.tunnel_protocol.hash(&mut h);
    w.network.hash(&mut h);
    w.canonical_name.hash(&mut h);
    w.canonical_revision.hash(&mut h);
    w.workload_name.hash(&mut h);
    or_default(&w.cluster_id, DEFAULT_CLUSTER_ID).hash(&mut h);
    let locality = w.locality.as_ref();
    for part in [
        locality.map_or("", |l| &l.region),
        locality.map_or("", |l| &l.zone),
        locality.map_or("", |l| &l.subzone),
    ] {
        part.hash(&mut h);
    }
    w.authorization_policies.hash(&mut h);
    // The services map has no order: combine its keys' hashes commutatively.
    let services = w
        .services
        .keys()
        .fold(0u64, |acc, k| acc.wrapping_add(state.hash_one(k)));
    h.write_u64(services);
    h.finish()
}

impl TryFrom<xwl::Workload> for WorkloadEndpoints {
    type Error = ConvertError;

    fn try_from(w: xwl::Workload) -> Result<Self, ConvertError> {
        Self::try_from(&w)
    }
}

impl TryFrom<&xwl::Workload> for Workload {
    type Error = ConvertError;

    /// The workload alone (its service endpoints are dropped; use
    /// [`WorkloadEndpoints`] to keep them).
    fn try_from(w: &xwl::Workload) -> Result<Self, ConvertError> {
        WorkloadEndpoints::try_from(w).map(|we| we.workload)
    }
}

impl TryFrom<xwl::Workload> for Workload {
    type Error = ConvertError;

    fn try_from(w: xwl::Workload) -> Result<Self, ConvertError> {
        Self::try_from(&w)
    }
}

impl TryFrom<&xwl::Service> for Service {
    type Error = ConvertError;

    fn try_from(s: &xwl::Service) -> Result<Self, ConvertError> {
        let err = |field: &str, message: String| ConvertError {
            kind: "service",
            resource: format!("{}/{}", s.namespace, s.hostname),
            field: field.to_string(),
            message,
        };
        let namespace: Strng = segment(&s.namespace)
            .map_err(|m| err("namespace", m))?
            .into();
        if s.hostname.is_empty() || s.hostname.contains('/') {
            return Err(err(
                "hostname",
                format!("{:?} is not a host name", s.hostname),
            ));
        }
        let mut vips = Vec::with_capacity(s.addresses.len());
        for (i, a) in s.addresses.iter().enumerate() {
            vips.push(
                ip_from_bytes(&a.address)
                    .map_err(|m| err(&format!("addresses[{i}].address"), m))?,
            );
        }
        let ports = port_map(&s.ports).map_err(|m| err("ports", m))?;
        let waypoint = waypoint(s.waypoint.as_ref(), &mut |v| Strng::from(v))
            .map_err(|m| err("waypoint", m))?;
        Ok(Service {
            name: s.name.as_str().into(),
            namespace,
            hostname: s.hostname.as_str().into(),
            vips,
            ports,
            subject_alt_names: s
                .subject_alt_names
                .iter()
                .map(|n| Strng::from(n.as_str()))
                .collect(),
            endpoints: BTreeMap::new(),
            waypoint,
        })
    }
}

impl TryFrom<xwl::Service> for Service {
    type Error = ConvertError;

    fn try_from(s: xwl::Service) -> Result<Self, ConvertError> {
        Self::try_from(&s)
    }
}

/// Never fails: a policy that cannot be read becomes [`Authorization::invalid`]
/// (deny everything in its scope), so it is also usable through `TryFrom` with an
/// infallible error.
impl From<&xsec::Authorization> for Authorization {
    fn from(p: &xsec::Authorization) -> Self {
        let scope = match xsec::Scope::try_from(p.scope) {
            Ok(xsec::Scope::Global) => Scope::Global,
            Ok(xsec::Scope::Namespace) => Scope::Namespace,
            Ok(xsec::Scope::WorkloadSelector) => Scope::WorkloadSelector,
            Err(_) => {
                return Authorization::invalid(
                    &p.name,
                    &p.namespace,
                    Scope::Global,
                    format!(
                        "field `scope`: unknown value {} (expected GLOBAL, NAMESPACE or \
                         WORKLOAD_SELECTOR); the policy denies every connection on this node",
                        p.scope
                    ),
                )
            }
        };
        let invalid = |reason: String| {
            Authorization::invalid(
                &p.name,
                &p.namespace,
                scope,
                format!("{reason}; the policy denies every connection in its scope"),
            )
        };
        let action = match xsec::Action::try_from(p.action) {
            Ok(xsec::Action::Allow) => Action::Allow,
            Ok(xsec::Action::Deny) => Action::Deny,
            Err(_) => {
                return invalid(format!(
                    "field `action`: unknown value {} (expected ALLOW or DENY)",
                    p.action
                ))
            }
        };
        match rules(&p.rules) {
            Ok(rules) => Authorization {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                scope,
                action,
                rules,
                dry_run: p.dry_run,
                invalid: None,
            },
            Err(reason) => invalid(reason),
        }
    }
}

impl From<xsec::Authorization> for Authorization {
    fn from(p: xsec::Authorization) -> Self {
        Self::from(&p)
    }
}

/// Converts the rules; an error is `field `path`: what is wrong`.
fn rules(rules: &[xsec::Rule]) -> Result<Vec<Rule>, String> {
    let mut out = Vec::with_capacity(rules.len());
    for (r, rule) in rules.iter().enumerate() {
        let mut clauses = Vec::with_capacity(rule.clauses.len());
        for (c, clause) in rule.clauses.iter().enumerate() {
            let mut matches = Vec::with_capacity(clause.matches.len());
            for (m, xm) in clause.matches.iter().enumerate() {
                let at = format!("rules[{r}].clauses[{c}].matches[{m}]");
                matches.push(policy_match(xm).map_err(|(f, e)| format!("field `{at}.{f}`: {e}"))?);
            }
            clauses.push(Clause { matches });
        }
        out.push(Rule { clauses });
    }
    Ok(out)
}

/// Converts one match; an error is (field path within the match, what is wrong).
fn policy_match(m: &xsec::Match) -> Result<Match, (String, String)> {
    Ok(Match {
        namespaces: list("namespaces", &m.namespaces, string_match)?,
        not_namespaces: list("not_namespaces", &m.not_namespaces, string_match)?,
        service_accounts: m.service_accounts.iter().map(service_account).collect(),
        not_service_accounts: m.not_service_accounts.iter().map(service_account).collect(),
        principals: list("principals", &m.principals, string_match)?,
        not_principals: list("not_principals", &m.not_principals, string_match)?,
        source_ips: list("source_ips", &m.source_ips, cidr)?,
        not_source_ips: list("not_source_ips", &m.not_source_ips, cidr)?,
        destination_ips: list("destination_ips", &m.destination_ips, cidr)?,
        not_destination_ips: list("not_destination_ips", &m.not_destination_ips, cidr)?,
        destination_ports: list("destination_ports", &m.destination_ports, port)?,
        not_destination_ports: list("not_destination_ports", &m.not_destination_ports, port)?,
    })
}

/// Converts every element, or names the first bad one as `field[i]`.
fn list<T, U>(
    field: &str,
    items: &[T],
    mut f: impl FnMut(&T) -> Result<U, String>,
) -> Result<Vec<U>, (String, String)> {
    items
        .iter()
        .enumerate()
        .map(|(i, x)| f(x).map_err(|e| (format!("{field}[{i}]"), e)))
        .collect()
}

fn string_match(s: &xsec::StringMatch) -> Result<StringMatch, String> {
    use xsec::string_match::MatchType;
    match &s.match_type {
        Some(MatchType::Exact(v)) => Ok(StringMatch::Exact(v.clone())),
        Some(MatchType::Prefix(v)) => Ok(StringMatch::Prefix(v.clone())),
        Some(MatchType::Suffix(v)) => Ok(StringMatch::Suffix(v.clone())),
        Some(MatchType::Presence(())) => Ok(StringMatch::Presence),
        None => Err("string match has no kind set (exact, prefix, suffix or presence)".into()),
    }
}

fn service_account(s: &xsec::ServiceAccountMatch) -> ServiceAccountMatch {
    ServiceAccountMatch {
        namespace: s.namespace.clone(),
        service_account: s.service_account.clone(),
    }
}

fn cidr(a: &xsec::Address) -> Result<IpNet, String> {
    let ip = ip_from_bytes(&a.address)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    u8::try_from(a.length)
        .ok()
        .and_then(|len| IpNet::new(ip, len).ok())
        .ok_or_else(|| format!("prefix length {} exceeds {max} for {ip}", a.length))
}

fn port(p: &u32) -> Result<u16, String> {
    u16::try_from(*p).map_err(|_| format!("port {p} is above 65535"))
}

/// An address as the workload API encodes it: 4 bytes (IPv4) or 16 bytes (IPv6).
fn ip_from_bytes(bytes: &[u8]) -> Result<IpAddr, String> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::V4(Ipv4Addr::from(b)));
    }
    if let Ok(b) = <[u8; 16]>::try_from(bytes) {
        // An IPv4-mapped address is the IPv4 address: the data path looks addresses
        // up in canonical form, so a mapped one would never be found.
        return Ok(IpAddr::V6(Ipv6Addr::from(b)).to_canonical());
    }
    Err(format!(
        "an address must be 4 (IPv4) or 16 (IPv6) bytes, got {}",
        bytes.len()
    ))
}

/// The owner kind's name as `baggage` spells it. It only labels telemetry, so a kind
/// newer than this build reads as the proto default (`deployment`) rather than
/// rejecting the workload.
fn workload_type(v: i32) -> &'static str {
    match xwl::WorkloadType::try_from(v) {
        Ok(xwl::WorkloadType::Cronjob) => "cronjob",
        Ok(xwl::WorkloadType::Pod) => "pod",
        Ok(xwl::WorkloadType::Job) => "job",
        Ok(xwl::WorkloadType::Deployment) | Err(_) => "deployment",
    }
}

fn network_mode(v: i32) -> Result<NetworkMode, String> {
    match xwl::NetworkMode::try_from(v) {
        Ok(xwl::NetworkMode::Standard) => Ok(NetworkMode::Standard),
        Ok(xwl::NetworkMode::HostNetwork) => Ok(NetworkMode::HostNetwork),
        Err(_) => Err(format!(
            "unknown value {v} (expected STANDARD or HOST_NETWORK)"
        )),
    }
}

/// A waypoint: a service `namespace/hostname` or a network address. One that names
/// neither cannot be honoured, nor ignored without bypassing it: an error.
fn waypoint(
    g: Option<&xwl::GatewayAddress>,
    intern: &mut dyn FnMut(&str) -> Strng,
) -> Result<Option<Waypoint>, String> {
    use xwl::gateway_address::Destination;
    let Some(g) = g else { return Ok(None) };
    match &g.destination {
        Some(Destination::Hostname(h)) => {
            let (ns, host) = service_key_parts(&h.namespace, &h.hostname)?;
            Ok(Some(Waypoint::Service(NamespacedHostname {
                namespace: intern(ns),
                hostname: intern(host),
            })))
        }
        Some(Destination::Address(a)) => Ok(Some(Waypoint::Address {
            network: intern(&a.network),
            ip: ip_from_bytes(&a.address)?,
        })),
        None => Err("a waypoint must name a hostname or an address".into()),
    }
}

/// A service key given as its two parts, checked as [`service_key`] checks one.
fn service_key_parts<'a>(ns: &'a str, host: &'a str) -> Result<(&'a str, &'a str), String> {
    if ns.is_empty() || host.is_empty() || ns.contains('/') || host.contains('/') {
        return Err(format!(
            "{ns:?}/{host:?} is not a service key of the form namespace/hostname"
        ));
    }
    Ok((ns, host))
}

fn tunnel_protocol(v: i32) -> Result<TunnelProtocol, String> {
    match xwl::TunnelProtocol::try_from(v) {
        Ok(xwl::TunnelProtocol::None) => Ok(TunnelProtocol::Tcp),
        Ok(xwl::TunnelProtocol::Hbone) => Ok(TunnelProtocol::Hbone),
        Err(_) => Err(format!("unknown value {v} (expected NONE or HBONE)")),
    }
}

/// A workload's reference to a selector-scoped policy: `namespace/name`.
fn policy_ref(p: &str) -> Result<&str, String> {
    match p.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok(p),
        _ => Err(format!("{p:?} is not of the form namespace/name")),
    }
}

fn health(v: i32) -> Result<HealthStatus, String> {
    match xwl::WorkloadStatus::try_from(v) {
        Ok(xwl::WorkloadStatus::Healthy) => Ok(HealthStatus::Healthy),
        Ok(xwl::WorkloadStatus::Unhealthy) => Ok(HealthStatus::Unhealthy),
        Err(_) => Err(format!("unknown value {v} (expected HEALTHY or UNHEALTHY)")),
    }
}

/// Service port → target port; service ports must be 1..=65535 and unique, target
/// ports 0..=65535 (0: same as the service port).
fn port_map(ports: &[xwl::Port]) -> Result<BTreeMap<u16, u16>, String> {
    let mut out = BTreeMap::new();
    for p in ports {
        let service = u16::try_from(p.service_port)
            .ok()
            .filter(|s| *s != 0)
            .ok_or_else(|| format!("service port {} is not in 1..=65535", p.service_port))?;
        let target = u16::try_from(p.target_port)
            .map_err(|_| format!("target port {} is above 65535", p.target_port))?;
        if out.insert(service, target).is_some() {
            return Err(format!("service port {service} is listed twice"));
        }
    }
    Ok(out)
}

/// A service key `namespace/hostname`, checked as [`NamespacedHostname`]'s parser does.
fn service_key(key: &str) -> Result<(&str, &str), String> {
    match key.split_once('/') {
        Some((ns, host)) if !ns.is_empty() && !host.is_empty() && !host.contains('/') => {
            Ok((ns, host))
        }
        _ => Err(format!(
            "{key:?} is not a service key of the form namespace/hostname"
        )),
    }
}

fn or_default<'a>(v: &'a str, default: &'a str) -> &'a str {
    if v.is_empty() {
        default
    } else {
        v
    }
}

/// A namespace, trust domain or service account becomes a path segment of a SPIFFE
/// id: non-empty, without '/', whitespace or control characters.
fn segment(v: &str) -> Result<&str, String> {
    if v.is_empty() {
        return Err("must not be empty".into());
    }
    if v.chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{v:?} must not contain '/', spaces or control characters"
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
