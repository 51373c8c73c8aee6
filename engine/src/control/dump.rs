//! The `/config_dump` sections ztunnel writes and `istioctl ztunnel-config` reads:
//! `workloads`, `services` and `policies` as arrays, each entry with ztunnel's field
//! names and JSON types (a waypoint is an object with `destination`, a VIP is
//! `network/ip`, a service's endpoints are a map by workload uid).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use zpath_control::model::{Service, Waypoint, Workload};
use zpath_control::Snapshot;

/// ztunnel's JSON of a waypoint reference.
fn waypoint(w: &Waypoint) -> Value {
    json!({ "destination": w.to_string() })
}

/// The workloads, sorted by uid, as ztunnel dumps them.
pub(crate) fn workloads(snapshot: &Snapshot) -> Vec<Value> {
    let mut all: Vec<_> = snapshot.workloads.values().collect();
    all.sort_by(|a, b| a.uid.cmp(&b.uid));
    all.into_iter().map(|w| workload(w)).collect()
}

fn workload(w: &Workload) -> Value {
    let mut v = json!({
        "uid": &*w.uid,
        "workloadIps": &w.workload_ips,
        "protocol": w.protocol,
        "networkMode": w.network_mode,
        "name": w.name(),
        "namespace": &*w.namespace,
        "trustDomain": &*w.trust_domain,
        "serviceAccount": &*w.service_account,
        "network": &*w.network,
        "workloadName": &*w.workload_name,
        "workloadType": &*w.workload_type,
        "canonicalName": &*w.canonical_name,
        "canonicalRevision": &*w.canonical_revision,
        "node": &*w.node,
        "authorizationPolicies": &w.authorization_policies,
        "status": w.status,
        "clusterId": &*w.cluster_id,
        "services": &w.services,
        "capacity": 1,
    });
    if let Value::Object(m) = &mut v {
        if let Some(wp) = &w.waypoint {
            m.insert("waypoint".into(), waypoint(wp));
        }
        if !w.locality.is_empty() {
            m.insert("locality".into(), json!(w.locality));
        }
    }
    v
}

/// The services, sorted by hostname (then namespace), as ztunnel dumps them: with the
/// endpoints the workloads give them, by workload uid.
pub(crate) fn services(snapshot: &Snapshot) -> Vec<Value> {
    let mut endpoints: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for w in snapshot.workloads.values() {
        for (key, ports) in w.services.iter().zip(&w.service_ports) {
            let Some(ports) = ports else { continue };
            let port: BTreeMap<String, u16> =
                ports.iter().map(|(s, t)| (s.to_string(), *t)).collect();
            endpoints.entry(key.to_string()).or_default().insert(
                w.uid.to_string(),
                json!({ "workloadUid": &*w.uid, "port": port, "status": w.status }),
            );
        }
    }
    let mut all: Vec<_> = snapshot.services.iter().collect();
    all.sort_by(|a, b| (&a.0.hostname, &a.0.namespace).cmp(&(&b.0.hostname, &b.0.namespace)));
    all.into_iter()
        .map(|(key, route)| {
            let mut of_service = endpoints.remove(&key.to_string()).unwrap_or_default();
            for (uid, e) in &route.service.endpoints {
                of_service
                    .entry(uid.to_string())
                    .or_insert_with(|| json!(e));
            }
            service(&route.service, of_service)
        })
        .collect()
}

fn service(s: &Service, endpoints: Map<String, Value>) -> Value {
    let ports: BTreeMap<String, u16> = s.ports.iter().map(|(p, t)| (p.to_string(), *t)).collect();
    let vips: Vec<String> = s.vips.iter().map(|ip| format!("/{ip}")).collect();
    let mut v = json!({
        "name": &*s.name,
        "namespace": &*s.namespace,
        "hostname": &*s.hostname,
        "vips": vips,
        "ports": ports,
        "endpoints": endpoints,
        "subjectAltNames": &s.subject_alt_names,
    });
    if let (Some(wp), Value::Object(m)) = (&s.waypoint, &mut v) {
        m.insert("waypoint".into(), waypoint(wp));
    }
    v
}

/// The authorization policies, sorted by `namespace/name`, as configured.
pub(crate) fn policies(snapshot: &Snapshot) -> Vec<Value> {
    snapshot
        .policies
        .values()
        .map(|p| serde_json::to_value(&**p).unwrap_or(Value::Null))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::decide::testing::snapshot;

    const YAML: &str = r#"
workloads:
- name: server-0
  namespace: prod
  serviceAccount: server
  workloadIps: ["10.0.1.2"]
  protocol: HBONE
  node: far
  waypoint: {destination: "/10.0.9.9"}
  services:
    prod/api.prod.svc.cluster.local: {80: 8080}
services:
- name: api
  namespace: prod
  hostname: api.prod.svc.cluster.local
  vips: ["/10.96.0.10"]
  ports: {80: 8080}
policies:
- {name: deny-1, namespace: prod, scope: Namespace, action: Deny,
   rules: [[[{destinationPorts: [1]}]]]}
"#;

    #[test]
    fn sections_have_ztunnels_shape() {
        let s = snapshot(YAML);
        let w = &workloads(&s)[0];
        assert_eq!(w["uid"], "local//prod/server-0", "{w}");
        assert_eq!(w["workloadIps"], json!(["10.0.1.2"]));
        assert_eq!(w["protocol"], "HBONE");
        assert_eq!(w["status"], "Healthy");
        assert_eq!(w["waypoint"], json!({"destination": "/10.0.9.9"}), "{w}");
        let svc = &services(&s)[0];
        assert_eq!(svc["vips"], json!(["/10.96.0.10"]));
        assert_eq!(svc["ports"], json!({"80": 8080}));
        let e = &svc["endpoints"]["local//prod/server-0"];
        assert_eq!(e["workloadUid"], "local//prod/server-0", "{svc}");
        assert_eq!(e["port"], json!({"80": 8080}));
        let p = &policies(&s)[0];
        assert_eq!(p["name"], "deny-1");
        assert_eq!(p["action"], "Deny");
        assert!(p["rules"][0][0][0].is_object(), "{p}");
    }
}
