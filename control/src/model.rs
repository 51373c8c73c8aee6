//! The domain model of workloads and services, shared by every configuration source
//! (the local file and xDS). Values are immutable once built; strings are `Arc<str>`
//! so snapshots share them instead of copying.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

/// A shared, immutable string (cheap to clone into many snapshots).
pub type Strng = Arc<str>;

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

impl std::str::FromStr for NamespacedHostname {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.split_once('/') {
            Some((ns, host)) if !ns.is_empty() && !host.is_empty() && !host.contains('/') => {
                Ok(Self {
                    namespace: ns.into(),
                    hostname: host.into(),
                })
            }
            _ => Err(format!(
                "{value:?} is not a service key of the form namespace/hostname"
            )),
        }
    }
}

/// A workload: a pod or VM with one or more addresses and one identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Unique id (xDS resource name); derived from namespace/name when a file omits it.
    pub uid: Strng,
    /// Pod (or VM) name.
    pub name: Strng,
    /// Namespace.
    pub namespace: Strng,
    /// SPIFFE trust domain of its identity.
    pub trust_domain: Strng,
    /// Service account of its identity.
    pub service_account: Strng,
    /// Addresses the workload answers on.
    pub workload_ips: Vec<IpAddr>,
    /// How it receives mesh traffic.
    pub protocol: TunnelProtocol,
    /// Node the workload runs on (the node whose zpath serves it).
    pub node: Strng,
    /// Network the addresses belong to (empty: the default network).
    pub network: Strng,
    /// Health.
    pub status: HealthStatus,
    /// Selector-scoped authorization policies that apply to it, as `namespace/name`.
    pub authorization_policies: Vec<Strng>,
    /// Services it is an endpoint of.
    pub services: Vec<NamespacedHostname>,
    /// Canonical (app) name, for telemetry.
    pub canonical_name: Strng,
    /// Canonical revision, for telemetry.
    pub canonical_revision: Strng,
    /// Owner (deployment) name, for telemetry.
    pub workload_name: Strng,
    /// Cluster id, for telemetry.
    pub cluster_id: Strng,
}

impl Workload {
    /// The workload's SPIFFE identity, `spiffe://td/ns/NS/sa/SA`.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
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
}

impl Service {
    /// The service key `namespace/hostname`.
    pub fn key(&self) -> NamespacedHostname {
        NamespacedHostname {
            namespace: self.namespace.clone(),
            hostname: self.hostname.clone(),
        }
    }
}
