//! The domain model of workloads and services, shared by every configuration source
//! (the local file and xDS). Values are immutable once built; strings are `Arc<str>`
//! so snapshots share them instead of copying, and the replicas of a deployment share
//! one [`WorkloadProfile`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

/// A shared, immutable string (cheap to clone into many snapshots).
pub type Strng = Arc<str>;

/// Service port → target port of one endpoint (a target of 0 keeps the service port).
pub type PortMap = Arc<BTreeMap<u16, u16>>;

/// How a workload receives mesh traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub enum TunnelProtocol {
    /// Plain TCP: traffic to it is relayed as is (passthrough).
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// HBONE: traffic to it is tunnelled over mTLS HTTP/2 CONNECT to port 15008.
    #[serde(rename = "HBONE")]
    Hbone,
}

/// Whether a workload may receive new traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub enum HealthStatus {
    /// Ready for traffic.
    #[default]
    Healthy,
    /// Not ready: not chosen as a service endpoint.
    Unhealthy,
}

/// Whether a workload's addresses are its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub enum NetworkMode {
    /// Its addresses identify it.
    #[default]
    #[serde(rename = "STANDARD")]
    Standard,
    /// It runs in its node's network namespace (a host-network pod): its address is
    /// the node's, shared by every process there, so it is never looked up by
    /// address (that would give the node's traffic this workload's identity).
    #[serde(rename = "HOST_NETWORK")]
    HostNetwork,
}

/// The waypoint proxy that traffic to a destination must go through (its L7 policy
/// lives there). zpath does not route through waypoints yet: a destination with one
/// is refused rather than reached directly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Waypoint {
    /// A service `namespace/hostname`.
    Service(NamespacedHostname),
    /// An address on a network.
    Address {
        /// The network (empty: the default network).
        network: Strng,
        /// The address.
        ip: IpAddr,
    },
}

impl fmt::Display for Waypoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Waypoint::Service(key) => write!(f, "{key}"),
            Waypoint::Address { network, ip } => write!(f, "{network}/{ip}"),
        }
    }
}

impl Serialize for Waypoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A service key: `namespace/hostname`, the primary key of a service in Istio.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedHostname {
    /// Namespace of the service.
    pub namespace: Strng,
    /// Fully qualified host name of the service.
    pub hostname: Strng,
}

impl fmt::Display for NamespacedHostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.hostname)
    }
}

impl Serialize for NamespacedHostname {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A borrowed service key, to look up a [`NamespacedHostname`] without allocating.
/// Orders exactly as the owned key does (namespace, then hostname).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespacedHostnameRef<'a> {
    /// Namespace of the service.
    pub namespace: &'a str,
    /// Fully qualified host name of the service.
    pub hostname: &'a str,
}

impl<'a> NamespacedHostnameRef<'a> {
    /// Splits `namespace/hostname`, with the checks of [`NamespacedHostname`]'s parser;
    /// `None` when `value` is not of that form.
    pub fn parse(value: &'a str) -> Option<Self> {
        match value.split_once('/') {
            Some((ns, host)) if !ns.is_empty() && !host.is_empty() && !host.contains('/') => {
                Some(Self {
                    namespace: ns,
                    hostname: host,
                })
            }
            _ => None,
        }
    }
}

impl equivalent::Equivalent<NamespacedHostname> for NamespacedHostnameRef<'_> {
    fn equivalent(&self, key: &NamespacedHostname) -> bool {
        self.namespace == &*key.namespace && self.hostname == &*key.hostname
    }
}

impl equivalent::Comparable<NamespacedHostname> for NamespacedHostnameRef<'_> {
    fn compare(&self, key: &NamespacedHostname) -> std::cmp::Ordering {
        self.namespace
            .cmp(&*key.namespace)
            .then_with(|| self.hostname.cmp(&*key.hostname))
    }
}

impl std::str::FromStr for NamespacedHostname {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match NamespacedHostnameRef::parse(value) {
            Some(r) => Ok(Self {
                namespace: r.namespace.into(),
                hostname: r.hostname.into(),
            }),
            None => Err(format!(
                "{value:?} is not a service key of the form namespace/hostname"
            )),
        }
    }
}

/// A workload's addresses. Almost every workload has exactly one, which is stored
/// inline (no allocation); reads see a slice.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Addresses(AddressesRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum AddressesRepr {
    One(IpAddr),
    /// None or several (an empty box does not allocate).
    Other(Box<[IpAddr]>),
}

impl Default for AddressesRepr {
    fn default() -> Self {
        AddressesRepr::Other(Box::default())
    }
}

impl std::ops::Deref for Addresses {
    type Target = [IpAddr];

    fn deref(&self) -> &[IpAddr] {
        match &self.0 {
            AddressesRepr::One(ip) => std::slice::from_ref(ip),
            AddressesRepr::Other(ips) => ips,
        }
    }
}

impl From<Vec<IpAddr>> for Addresses {
    fn from(ips: Vec<IpAddr>) -> Self {
        match *ips {
            [ip] => Addresses(AddressesRepr::One(ip)),
            _ => Addresses(AddressesRepr::Other(ips.into_boxed_slice())),
        }
    }
}

impl<'a> IntoIterator for &'a Addresses {
    type Item = &'a IpAddr;
    type IntoIter = std::slice::Iter<'a, IpAddr>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl FromIterator<IpAddr> for Addresses {
    fn from_iter<I: IntoIterator<Item = IpAddr>>(iter: I) -> Self {
        iter.into_iter().collect::<Vec<_>>().into()
    }
}

impl PartialEq<Vec<IpAddr>> for Addresses {
    fn eq(&self, other: &Vec<IpAddr>) -> bool {
        **self == **other
    }
}

impl PartialEq<[IpAddr]> for Addresses {
    fn eq(&self, other: &[IpAddr]) -> bool {
        **self == *other
    }
}

impl fmt::Debug for Addresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Addresses {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// What the workloads of one deployment have in common: identity, telemetry names,
/// services and policies. Workloads hold it behind an `Arc`, so the xDS source shares
/// one copy between every replica instead of repeating a dozen strings per workload.
/// [`Workload`] dereferences to it: `workload.namespace` reads the profile's field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct WorkloadProfile {
    /// Namespace.
    pub namespace: Strng,
    /// SPIFFE trust domain of its identity.
    pub trust_domain: Strng,
    /// Service account of its identity.
    pub service_account: Strng,
    /// How it receives mesh traffic.
    pub protocol: TunnelProtocol,
    /// Network the addresses belong to (empty: the default network).
    pub network: Strng,
    /// Selector-scoped authorization policies that apply to it, as `namespace/name`.
    pub authorization_policies: Vec<Strng>,
    /// Services it lists (no duplicates).
    pub services: Vec<NamespacedHostname>,
    /// For each of `services` (same order): the port map of its endpoint in that
    /// service, or `None` when it is listed there but is not an endpoint.
    pub service_ports: Vec<Option<PortMap>>,
    /// Canonical (app) name, for telemetry.
    pub canonical_name: Strng,
    /// Canonical revision, for telemetry.
    pub canonical_revision: Strng,
    /// Owner (deployment) name, for telemetry.
    pub workload_name: Strng,
    /// Owner kind in lower case (`deployment`, `cronjob`, `pod`, `job`): `baggage`
    /// names the owner `k8s.<kind>.name`.
    pub workload_type: Strng,
    /// Cluster id, for telemetry.
    pub cluster_id: Strng,
    /// The waypoint that workload-addressed traffic to it must go through.
    pub waypoint: Option<Waypoint>,
    /// Where it runs (region, zone, subzone), for telemetry.
    pub locality: Locality,
}

/// Where a workload runs, as Istio's workload API gives it (empty: unknown).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Locality {
    /// Region.
    pub region: Strng,
    /// Zone within the region.
    pub zone: Strng,
    /// Subzone within the zone.
    pub subzone: Strng,
}

impl Locality {
    /// Whether nothing of it is known.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }
}

impl WorkloadProfile {
    /// The SPIFFE identity of its workloads, `spiffe://td/ns/NS/sa/SA`.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// The port map of the endpoint in service `namespace/hostname`, if it is one.
    pub fn endpoint_ports(&self, namespace: &str, hostname: &str) -> Option<&PortMap> {
        let i = self
            .services
            .iter()
            .position(|k| *k.namespace == *namespace && *k.hostname == *hostname)?;
        self.service_ports.get(i)?.as_ref()
    }
}

/// A workload: a pod or VM with one or more addresses and one identity.
///
/// Only what differs between replicas is stored here (uid, name, node, addresses,
/// health); the rest is the shared [`WorkloadProfile`], reachable through `Deref`
/// (`workload.namespace`, `workload.protocol`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Unique id (xDS resource name); derived from namespace/name when a file omits it.
    pub uid: Strng,
    /// The pod (or VM) name, or `None` when it is the part of `uid` after its last
    /// `/` (as in istiod's uids `cluster/group/kind/namespace/name`): no second copy.
    name: Option<Strng>,
    /// Node the workload runs on (the node whose zpath serves it).
    pub node: Strng,
    /// Addresses the workload answers on.
    pub workload_ips: Addresses,
    /// Health.
    pub status: HealthStatus,
    /// Whether its addresses are its own (only then is it found by address).
    pub network_mode: NetworkMode,
    /// Everything it shares with the other replicas of its deployment.
    pub profile: Arc<WorkloadProfile>,
}

impl std::ops::Deref for Workload {
    type Target = WorkloadProfile;

    fn deref(&self) -> &WorkloadProfile {
        &self.profile
    }
}

/// The part of `uid` after its last `/` (all of it when there is none).
fn uid_tail(uid: &str) -> &str {
    uid.rsplit_once('/').map_or(uid, |(_, tail)| tail)
}

impl Workload {
    /// A healthy workload `uid` named `name`, with no address and no node yet.
    pub fn new(uid: Strng, name: &str, profile: Arc<WorkloadProfile>) -> Self {
        let mut w = Workload {
            uid,
            name: None,
            node: Strng::from(""),
            workload_ips: Addresses::default(),
            status: HealthStatus::Healthy,
            network_mode: NetworkMode::Standard,
            profile,
        };
        w.set_name(name);
        w
    }

    /// Pod (or VM) name.
    pub fn name(&self) -> &str {
        match &self.name {
            Some(n) => n,
            None => uid_tail(&self.uid),
        }
    }

    /// Sets the pod (or VM) name.
    pub fn set_name(&mut self, name: &str) {
        self.name = (uid_tail(&self.uid) != name).then(|| Strng::from(name));
    }

    /// The shared profile, for changing it (copied first if other workloads share it).
    pub fn profile_mut(&mut self) -> &mut WorkloadProfile {
        Arc::make_mut(&mut self.profile)
    }
}

/// The same JSON as when every field lived in the workload itself.
impl Serialize for Workload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let p = &*self.profile;
        let mut st = s.serialize_struct("Workload", 20)?;
        st.serialize_field("uid", &*self.uid)?;
        st.serialize_field("name", self.name())?;
        st.serialize_field("namespace", &*p.namespace)?;
        st.serialize_field("trustDomain", &*p.trust_domain)?;
        st.serialize_field("serviceAccount", &*p.service_account)?;
        st.serialize_field("workloadIps", &self.workload_ips)?;
        st.serialize_field("protocol", &p.protocol)?;
        st.serialize_field("node", &*self.node)?;
        st.serialize_field("network", &*p.network)?;
        st.serialize_field("status", &self.status)?;
        st.serialize_field("authorizationPolicies", &p.authorization_policies)?;
        st.serialize_field("services", &p.services)?;
        st.serialize_field("canonicalName", &*p.canonical_name)?;
        st.serialize_field("canonicalRevision", &*p.canonical_revision)?;
        st.serialize_field("workloadName", &*p.workload_name)?;
        st.serialize_field("workloadType", &*p.workload_type)?;
        st.serialize_field("clusterId", &*p.cluster_id)?;
        st.serialize_field("networkMode", &self.network_mode)?;
        st.serialize_field("waypoint", &p.waypoint)?;
        st.serialize_field("locality", &p.locality)?;
        st.end()
    }
}

/// One service endpoint: a workload with the service's port mapping for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The workload's uid.
    pub workload_uid: Strng,
    /// Service port → target port on this endpoint (a target of 0 keeps the service port).
    pub port: BTreeMap<u16, u16>,
    /// Health of the endpoint.
    pub status: HealthStatus,
}

/// A service: virtual IPs and ports in front of a set of endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Service name.
    pub name: Strng,
    /// Namespace.
    pub namespace: Strng,
    /// Fully qualified host name.
    pub hostname: Strng,
    /// Virtual IPs.
    pub vips: Vec<IpAddr>,
    /// Service port → target port (0: same as the service port).
    pub ports: BTreeMap<u16, u16>,
    /// Identities allowed to serve it besides its endpoints' own.
    pub subject_alt_names: Vec<Strng>,
    /// Endpoints given with the service itself (a file may also list them on workloads).
    pub endpoints: BTreeMap<Strng, Endpoint>,
    /// The waypoint that traffic addressed to the service must go through.
    pub waypoint: Option<Waypoint>,
}

impl Service {
    /// The port a connection to `service_port` reaches on an endpoint whose own port
    /// map is `endpoint_ports`: the endpoint's mapping wins, then the service's, then
    /// the service port itself (a target of 0 keeps it). `None`: the service does not
    /// expose `service_port`.
    pub fn target_port(&self, service_port: u16, endpoint_ports: Option<&PortMap>) -> Option<u16> {
        let target = *self.ports.get(&service_port)?;
        Some(match endpoint_ports.and_then(|p| p.get(&service_port)) {
            Some(&p) if p != 0 => p,
            _ if target != 0 => target,
            _ => service_port,
        })
    }

    /// The service key `namespace/hostname`.
    pub fn key(&self) -> NamespacedHostname {
        NamespacedHostname {
            namespace: self.namespace.clone(),
            hostname: self.hostname.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_hold_none_one_or_many_and_read_as_a_slice() {
        let none = Addresses::from(vec![]);
        assert!(none.is_empty());
        let one = Addresses::from(vec![ip("10.0.0.1")]);
        assert_eq!(*one, [ip("10.0.0.1")]);
        let two: Addresses = [ip("fd00::1"), ip("10.0.0.1")].into_iter().collect();
        assert_eq!(two, vec![ip("fd00::1"), ip("10.0.0.1")]);
        assert_ne!(one, two);
        assert_eq!(format!("{two:?}"), "[fd00::1, 10.0.0.1]");
        assert_eq!(serde_json::to_string(&one).unwrap(), r#"["10.0.0.1"]"#);
        assert_eq!(Addresses::default(), none);
        // One address lives inline: the whole list is three words.
        assert_eq!(std::mem::size_of::<Addresses>(), 24);
    }

    #[test]
    fn a_target_port_is_the_endpoints_then_the_services_then_the_service_port() {
        let svc = Service {
            name: "api".into(),
            namespace: "prod".into(),
            hostname: "api.prod.svc.cluster.local".into(),
            vips: vec![],
            ports: [(80, 8080), (443, 0)].into(),
            subject_alt_names: vec![],
            endpoints: BTreeMap::new(),
            waypoint: None,
        };
        let own: PortMap = Arc::new([(80, 9090), (443, 0)].into());
        assert_eq!(svc.target_port(80, None), Some(8080));
        assert_eq!(svc.target_port(80, Some(&own)), Some(9090));
        assert_eq!(svc.target_port(443, None), Some(443));
        assert_eq!(svc.target_port(443, Some(&own)), Some(443));
        assert_eq!(svc.target_port(81, Some(&own)), None);
    }

    #[test]
    fn a_name_that_ends_the_uid_is_not_stored_twice() {
        let p = Arc::new(WorkloadProfile::default());
        let w = Workload::new("c//v1/Pod/ns/web-0".into(), "web-0", p.clone());
        assert_eq!(w.name(), "web-0");
        assert!(w.name.is_none());
        let other = Workload::new("c//v1/Pod/ns/web-0".into(), "web", p.clone());
        assert_eq!(other.name(), "web");
        let bare = Workload::new("web-0".into(), "web-0", p.clone());
        assert_eq!(bare.name(), "web-0");
        let empty = Workload::new("c//v1/Pod/ns/web-0".into(), "", p);
        assert_eq!(empty.name(), "");
        assert_ne!(w, other);
    }

    #[test]
    fn a_workload_serializes_as_one_flat_object_in_the_established_order() {
        let profile = WorkloadProfile {
            namespace: "shop".into(),
            trust_domain: "cluster.local".into(),
            service_account: "web".into(),
            protocol: TunnelProtocol::Hbone,
            network: "".into(),
            authorization_policies: vec!["shop/allow".into()],
            services: vec!["shop/web.shop.svc.cluster.local".parse().unwrap()],
            service_ports: vec![Some(Arc::new([(80, 8080)].into()))],
            canonical_name: "web".into(),
            canonical_revision: "v1".into(),
            workload_name: "web".into(),
            workload_type: "deployment".into(),
            cluster_id: "Kubernetes".into(),
            waypoint: None,
            locality: Locality::default(),
        };
        let mut w = Workload::new("K//Pod/shop/web-0".into(), "web-0", Arc::new(profile));
        w.node = "node-1".into();
        w.workload_ips = vec![ip("10.0.0.2")].into();
        w.status = HealthStatus::Unhealthy;
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            concat!(
                r#"{"uid":"K//Pod/shop/web-0","name":"web-0","namespace":"shop","#,
                r#""trustDomain":"cluster.local","serviceAccount":"web","#,
                r#""workloadIps":["10.0.0.2"],"protocol":"HBONE","node":"node-1","#,
                r#""network":"","status":"Unhealthy","authorizationPolicies":["shop/allow"],"#,
                r#""services":["shop/web.shop.svc.cluster.local"],"canonicalName":"web","#,
                r#""canonicalRevision":"v1","workloadName":"web","workloadType":"deployment","#,
                r#""clusterId":"Kubernetes","networkMode":"STANDARD","waypoint":null,"#,
                r#""locality":{"region":"","zone":"","subzone":""}}"#
            )
        );
        // Profile fields read through the workload.
        assert_eq!(&*w.namespace, "shop");
        assert_eq!(w.spiffe_id(), "spiffe://cluster.local/ns/shop/sa/web");
        let ports = w
            .endpoint_ports("shop", "web.shop.svc.cluster.local")
            .unwrap();
        assert_eq!(ports.get(&80), Some(&8080));
        assert!(w.endpoint_ports("shop", "other").is_none());
    }

    #[test]
    fn borrowed_service_keys_parse_and_order_like_owned_ones() {
        use equivalent::Comparable;
        let keys: Vec<NamespacedHostname> = ["a/x", "a/y", "b/a", "ab/a"]
            .iter()
            .map(|k| k.parse().unwrap())
            .collect();
        for k in &keys {
            let text = k.to_string();
            let r = NamespacedHostnameRef::parse(&text).unwrap();
            for other in &keys {
                assert_eq!(r.compare(other), k.cmp(other), "{k} vs {other}");
            }
        }
        for bad in ["", "a", "/x", "a/", "a/b/c"] {
            assert!(NamespacedHostnameRef::parse(bad).is_none(), "{bad:?}");
            assert!(bad.parse::<NamespacedHostname>().is_err(), "{bad:?}");
        }
    }
}
