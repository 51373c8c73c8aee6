//! The local config file: workloads, services and policies in the YAML shape of
//! ztunnel's local config, parsed strictly and converted into the domain model.
//!
//! ```yaml
//! workloads:
//! - name: echo
//!   namespace: default
//!   serviceAccount: echo
//!   workloadIps: ["10.0.0.2"]
//!   protocol: HBONE          # or TCP (the default)
//!   node: node-a
//!   networkMode: STANDARD    # HOST_NETWORK: never looked up by address
//!   services:                # service key -> { service port: target port }
//!     default/echo.default.svc.cluster.local: {80: 8080}
//!   # waypoint: {destination: "network/ip", hboneMtlsPort: 15008}: refused (unsupported)
//! services:
//! - name: echo
//!   namespace: default
//!   hostname: echo.default.svc.cluster.local
//!   vips: ["/10.96.0.10"]    # "network/ip" or a plain IP
//!   ports: {80: 8080}
//! policies: []               # istio.security.Authorization, as ztunnel's local config
//! ```
//!
//! A bare YAML list of workloads (the older ztunnel form, with `workloadIp`) is accepted too.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::model::{
    Endpoint, HealthStatus, Locality, NamespacedHostname, NetworkMode, Service, Strng,
    TunnelProtocol, Waypoint, Workload, WorkloadProfile,
};
use crate::ConfigError;

/// The parsed and validated contents of a local config file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalConfig {
    /// Every workload, in file order.
    pub workloads: Vec<Arc<Workload>>,
    /// Every service, with endpoints from both the service entries and the workloads.
    pub services: Vec<Arc<Service>>,
    /// Authorization policies.
    pub policies: Vec<zpath_policy::model::Authorization>,
}

impl LocalConfig {
    /// Reads, parses and validates a local config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates local config YAML.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let file = parse_file(text)?;
        convert(file)
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    workloads: Vec<FileWorkload>,
    #[serde(default)]
    services: Vec<FileService>,
    #[serde(default)]
    policies: Vec<zpath_policy::model::Authorization>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FileShape {
    Full(FileConfig),
    List(Vec<FileWorkload>),
}

// Some fields are accepted only so that any ztunnel local config parses; zpath does not
// use them (yet).
#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileWorkload {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    name: String,
    namespace: String,
    #[serde(default)]
    trust_domain: String,
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    workload_ips: Vec<IpAddr>,
    /// The older single-address form.
    #[serde(default)]
    workload_ip: Option<IpAddr>,
    #[serde(default)]
    protocol: FileProtocol,
    #[serde(default)]
    node: String,
    #[serde(default)]
    network: String,
    #[serde(default)]
    status: FileHealth,
    #[serde(default)]
    authorization_policies: Vec<String>,
    /// Service key → { service port → target port }.
    #[serde(default)]
    services: HashMap<String, BTreeMap<u16, u16>>,
    #[serde(default)]
    canonical_name: String,
    #[serde(default)]
    canonical_revision: String,
    #[serde(default)]
    workload_name: String,
    #[serde(default)]
    workload_type: String,
    #[serde(default)]
    cluster_id: String,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    network_mode: FileNetworkMode,
    #[serde(default)]
    waypoint: Option<FileWaypoint>,
    #[serde(default)]
    network_gateway: Option<serde_yaml::Value>,
    #[serde(default)]
    native_tunnel: bool,
    #[serde(default)]
    application_tunnel: Option<serde_yaml::Value>,
    #[serde(default)]
    locality: Locality,
    #[serde(default)]
    capacity: Option<u32>,
}

#[derive(Deserialize, Default, Clone, Copy)]
enum FileProtocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "HBONE")]
    Hbone,
}

/// Istio's enum names, or ztunnel's local-config spelling.
#[derive(Deserialize, Default, Clone, Copy)]
enum FileNetworkMode {
    #[default]
    #[serde(rename = "STANDARD", alias = "Standard")]
    Standard,
    #[serde(rename = "HOST_NETWORK", alias = "HostNetwork")]
    HostNetwork,
}

/// A waypoint, as ztunnel's local config writes it:
/// `{destination: "network/ip" | {namespace: ns, hostname: host}, hboneMtlsPort: 15008}`.
#[allow(dead_code)] // hboneMtlsPort: read once waypoints are supported.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileWaypoint {
    destination: FileWaypointDestination,
    #[serde(default)]
    hbone_mtls_port: u16,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FileWaypointDestination {
    /// `network/ip` (or a plain IP).
    Address(String),
    Hostname {
        namespace: String,
        hostname: String,
    },
}

#[derive(Deserialize, Default, Clone, Copy)]
enum FileHealth {
    #[default]
    Healthy,
    Unhealthy,
}

#[allow(dead_code)] // as for FileWorkload
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileService {
    name: String,
    namespace: String,
    hostname: String,
    #[serde(default)]
    vips: Vec<String>,
    #[serde(default)]
    ports: BTreeMap<u16, u16>,
    #[serde(default)]
    endpoints: HashMap<String, FileEndpoint>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    #[serde(default)]
    waypoint: Option<FileWaypoint>,
    #[serde(default)]
    load_balancer: Option<serde_yaml::Value>,
    #[serde(default)]
    ip_families: Option<serde_yaml::Value>,
    #[serde(default)]
    canonical: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileEndpoint {
    workload_uid: String,
    #[serde(default)]
    port: BTreeMap<u16, u16>,
    #[serde(default)]
    status: FileHealth,
}

fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    // Parse the map form with a path-tracking deserializer so an error names the field;
    // fall back to the bare-list form only when the document is a sequence.
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
        line: e.location().map(|l| l.line()),
        message: e.to_string(),
    })?;
    if value.is_null() {
        return Ok(FileConfig::default());
    }
    let de = serde_yaml::Deserializer::from_str(text);
    let shape: FileShape = if value.is_sequence() {
        FileShape::List(serde_path_to_error::deserialize(de).map_err(field_error)?)
    } else {
        FileShape::Full(serde_path_to_error::deserialize(de).map_err(field_error)?)
    };
    Ok(match shape {
        FileShape::Full(f) => f,
        FileShape::List(workloads) => FileConfig {
            workloads,
            ..FileConfig::default()
        },
    })
}

fn field_error(e: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let field = e.path().to_string();
    let inner = e.into_inner();
    ConfigError::Field {
        field,
        line: inner.location().map(|l| l.line()),
        message: inner.to_string(),
    }
}

fn convert(file: FileConfig) -> Result<LocalConfig, ConfigError> {
    let mut workloads = Vec::with_capacity(file.workloads.len());
    let mut by_uid: HashMap<Strng, usize> = HashMap::new();
    let mut by_ip: HashMap<IpAddr, usize> = HashMap::new();
    let mut staged: BTreeMap<NamespacedHostname, BTreeMap<Strng, Endpoint>> = BTreeMap::new();
    for (i, fw) in file.workloads.into_iter().enumerate() {
        let at = |f: &str| format!("workloads[{i}].{f}");
        let (wl, endpoints) = convert_workload(fw, &at)?;
        if by_uid.insert(wl.uid.clone(), i).is_some() {
            return Err(ConfigError::invalid(
                at("uid"),
                format!("duplicate uid {}", wl.uid),
            ));
        }
        // Host-network workloads share their node's address.
        let own_ips: &[IpAddr] = match wl.network_mode {
            NetworkMode::Standard => &wl.workload_ips,
            NetworkMode::HostNetwork => &[],
        };
        for ip in own_ips {
            if let Some(other) = by_ip.insert(*ip, i) {
                return Err(ConfigError::invalid(
                    at("workloadIps"),
                    format!("address {ip} is already used by workloads[{other}]"),
                ));
            }
        }
        for (key, ep) in endpoints {
            staged
                .entry(key)
                .or_default()
                .insert(ep.workload_uid.clone(), ep);
        }
        workloads.push(Arc::new(wl));
    }
    let mut services = Vec::with_capacity(file.services.len());
    let mut vips: HashMap<IpAddr, usize> = HashMap::new();
    for (i, fs) in file.services.into_iter().enumerate() {
        let at = |f: &str| format!("services[{i}].{f}");
        let mut svc = convert_service(fs, &at)?;
        for vip in &svc.vips {
            if let Some(other) = vips.insert(*vip, i) {
                return Err(ConfigError::invalid(
                    at("vips"),
                    format!("VIP {vip} is already used by services[{other}]"),
                ));
            }
            if by_ip.contains_key(vip) {
                return Err(ConfigError::invalid(
                    at("vips"),
                    format!("VIP {vip} is also a workload address"),
                ));
            }
        }
        if let Some(eps) = staged.remove(&svc.key()) {
            svc.endpoints.extend(eps);
        }
        services.push(Arc::new(svc));
    }
    if let Some((key, _)) = staged.into_iter().next() {
        return Err(ConfigError::invalid(
            "workloads[].services".to_string(),
            format!("service {key} is referenced by a workload but not defined under services"),
        ));
    }
    Ok(LocalConfig {
        workloads,
        services,
        policies: file.policies,
    })
}

type WorkloadEndpoints = Vec<(NamespacedHostname, Endpoint)>;

fn convert_workload(
    fw: FileWorkload,
    at: &dyn Fn(&str) -> String,
) -> Result<(Workload, WorkloadEndpoints), ConfigError> {
    let namespace = non_empty_segment(&fw.namespace, at("namespace"))?;
    let trust_domain = or_default(&fw.trust_domain, "cluster.local");
    let service_account = or_default(&fw.service_account, "default");
    non_empty_segment(&trust_domain, at("trustDomain"))?;
    non_empty_segment(&service_account, at("serviceAccount"))?;
    let mut ips = fw.workload_ips;
    if let Some(ip) = fw.workload_ip {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let uid: Strng = if fw.uid.is_empty() {
        if fw.name.is_empty() {
            return Err(ConfigError::invalid(
                at("name"),
                "a workload needs a name or a uid",
            ));
        }
        format!("local//{}/{}", namespace, fw.name).into()
    } else {
        fw.uid.as_str().into()
    };
    let mut policies = Vec::with_capacity(fw.authorization_policies.len());
    for p in fw.authorization_policies {
        if p.split_once('/')
            .is_none_or(|(n, m)| n.is_empty() || m.is_empty())
        {
            return Err(ConfigError::invalid(
                at("authorizationPolicies"),
                format!("{p:?} is not of the form namespace/name"),
            ));
        }
        policies.push(Strng::from(p));
    }
    let status = match fw.status {
        FileHealth::Healthy => HealthStatus::Healthy,
        FileHealth::Unhealthy => HealthStatus::Unhealthy,
    };
    let mut endpoints = Vec::with_capacity(fw.services.len());
    let mut services = Vec::with_capacity(fw.services.len());
    for (key, ports) in fw.services {
        let key: NamespacedHostname = key
            .parse()
            .map_err(|e: String| ConfigError::invalid(at("services"), e))?;
        services.push(key.clone());
        endpoints.push((
            key,
            Endpoint {
                workload_uid: uid.clone(),
                port: ports,
                status,
            },
        ));
    }
    services.sort();
    let profile = WorkloadProfile {
        namespace,
        trust_domain,
        service_account,
        protocol: match fw.protocol {
            FileProtocol::Tcp => TunnelProtocol::Tcp,
            FileProtocol::Hbone => TunnelProtocol::Hbone,
        },
        network: fw.network.into(),
        authorization_policies: policies,
        service_ports: services
            .iter()
            .map(|k| {
                endpoints
                    .iter()
                    .find(|(e, _)| e == k)
                    .map(|(_, ep)| Arc::new(ep.port.clone()))
            })
            .collect(),
        services,
        canonical_name: fw.canonical_name.into(),
        canonical_revision: fw.canonical_revision.into(),
        workload_name: fw.workload_name.into(),
        workload_type: file_workload_type(&fw.workload_type, at)?,
        cluster_id: or_default(&fw.cluster_id, "Kubernetes"),
        waypoint: file_waypoint(fw.waypoint, at("waypoint"))?,
        locality: fw.locality,
    };
    let mut wl = Workload::new(uid, &fw.name, Arc::new(profile));
    wl.node = fw.node.into();
    wl.workload_ips = ips.into();
    wl.status = status;
    wl.network_mode = match fw.network_mode {
        FileNetworkMode::Standard => NetworkMode::Standard,
        FileNetworkMode::HostNetwork => NetworkMode::HostNetwork,
    };
    Ok((wl, endpoints))
}

fn convert_service(fs: FileService, at: &dyn Fn(&str) -> String) -> Result<Service, ConfigError> {
    let namespace = non_empty_segment(&fs.namespace, at("namespace"))?;
    if fs.hostname.is_empty() || fs.hostname.contains('/') {
        return Err(ConfigError::invalid(
            at("hostname"),
            format!("{:?} is not a host name", fs.hostname),
        ));
    }
    let mut vips = Vec::with_capacity(fs.vips.len());
    for v in &fs.vips {
        // "network/ip" as ztunnel writes network addresses, or a plain IP.
        let ip_text = v.rsplit_once('/').map_or(v.as_str(), |(_, ip)| ip);
        let ip: IpAddr = ip_text
            .parse()
            .map_err(|_| ConfigError::invalid(at("vips"), format!("{v:?} is not an IP address")))?;
        vips.push(ip);
    }
    if fs.ports.keys().any(|p| *p == 0) {
        return Err(ConfigError::invalid(
            at("ports"),
            "service port 0 is not valid",
        ));
    }
    let mut endpoints = BTreeMap::new();
    for (uid, ep) in fs.endpoints {
        let status = match ep.status {
            FileHealth::Healthy => HealthStatus::Healthy,
            FileHealth::Unhealthy => HealthStatus::Unhealthy,
        };
        let uid: Strng = if ep.workload_uid.is_empty() {
            uid
        } else {
            ep.workload_uid
        }
        .into();
        endpoints.insert(
            uid.clone(),
            Endpoint {
                workload_uid: uid,
                port: ep.port,
                status,
            },
        );
    }
    let waypoint = file_waypoint(fs.waypoint, at("waypoint"))?;
    Ok(Service {
        name: fs.name.into(),
        namespace,
        hostname: fs.hostname.into(),
        vips,
        ports: fs.ports,
        subject_alt_names: fs.subject_alt_names.into_iter().map(Strng::from).collect(),
        endpoints,
        waypoint,
    })
}

fn file_waypoint(w: Option<FileWaypoint>, field: String) -> Result<Option<Waypoint>, ConfigError> {
    let Some(w) = w else { return Ok(None) };
    match w.destination {
        FileWaypointDestination::Hostname {
            namespace,
            hostname,
        } => {
            let key = format!("{namespace}/{hostname}")
                .parse()
                .map_err(|e: String| ConfigError::invalid(field, e))?;
            Ok(Some(Waypoint::Service(key)))
        }
        FileWaypointDestination::Address(text) => {
            let (network, ip) = text.rsplit_once('/').unwrap_or(("", &text));
            let ip: IpAddr = ip.parse().map_err(|_| {
                ConfigError::invalid(
                    field,
                    format!("{text:?} is not an address of the form network/ip"),
                )
            })?;
            Ok(Some(Waypoint::Address {
                network: network.into(),
                ip,
            }))
        }
    }
}

/// The owner kind: `deployment` when absent, else a lower-case word (any case is
/// accepted, as are Istio's enum names such as `CRONJOB`). It goes into the `baggage`
/// header as `k8s.<kind>.name`, so anything but letters and digits is refused.
fn file_workload_type(v: &str, at: &dyn Fn(&str) -> String) -> Result<Strng, ConfigError> {
    if v.is_empty() {
        return Ok("deployment".into());
    }
    if !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ConfigError::invalid(
            at("workloadType"),
            format!("{v:?} is not a workload kind such as deployment, cronjob, pod or job"),
        ));
    }
    Ok(v.to_ascii_lowercase().into())
}

fn or_default(v: &str, default: &str) -> Strng {
    if v.is_empty() { default } else { v }.into()
}

/// A namespace, trust domain or service account: it becomes a path segment of a
/// SPIFFE id, so it must be non-empty and free of '/', whitespace and control bytes.
fn non_empty_segment(v: &str, field: String) -> Result<Strng, ConfigError> {
    if v.is_empty() {
        return Err(ConfigError::invalid(field, "must not be empty"));
    }
    if v.chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(ConfigError::invalid(
            field,
            format!("{v:?} must not contain '/', spaces or control characters"),
        ));
    }
    Ok(v.into())
}

#[cfg(test)]
mod tests;
