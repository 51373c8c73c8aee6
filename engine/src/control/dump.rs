//! The `/config_dump` sections ztunnel writes and `istioctl ztunnel-config` reads:
//! `workloads`, `services` and `policies` as arrays, each entry with ztunnel's field
//! names and JSON types (a waypoint is an object with `destination`, a VIP is
//! `network/ip`, a service's endpoints are a map by workload uid).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use zpath_control::model::{Endpoint, Service, Waypoint, Workload};
use zpath_control::Snapshot;

/// Sets `v`'s `waypoint` as ztunnel writes it (`{destination}`), or leaves it out.
fn set_waypoint(v: &mut Map<String, Value>, w: Option<&Waypoint>) {
    match w {
        Some(w) => v.insert("waypoint".into(), json!({ "destination": w.to_string() })),
        None => v.remove("waypoint"),
    };
}

/// The workloads, sorted by uid, as ztunnel dumps them: the model's own JSON, with
/// the waypoint as an object, `capacity`, and no empty locality.
pub(crate) fn workloads(snapshot: &Snapshot) -> Vec<Value> {
    let mut all: Vec<_> = snapshot.workloads.values().collect();
    all.sort_by(|a, b| a.uid.cmp(&b.uid));
    all.into_iter().map(|w| workload(w)).collect()
}

fn workload(w: &Workload) -> Value {
    let mut v = match serde_json::to_value(w) {
        Ok(Value::Object(v)) => v,
        _ => return Value::Null,
    };
    set_waypoint(&mut v, w.waypoint.as_ref());
    if w.locality.is_empty() {
        v.remove("locality");
    }
    v.insert("capacity".into(), json!(1));
    Value::Object(v)
}

/// The services, sorted by hostname (then namespace), as ztunnel dumps them: the
/// model's own JSON, with VIPs as `network/ip`, the waypoint as an object, and the
/// endpoints the workloads give them added, by workload uid.
pub(crate) fn services(snapshot: &Snapshot) -> Vec<Value> {
    let mut endpoints: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for w in snapshot.workloads.values() {
        for (key, ports) in w.services.iter().zip(&w.service_ports) {
            let Some(ports) = ports else { continue };
            let e = Endpoint {
                workload_uid: w.uid.clone(),
                port: (**ports).clone(),
                status: w.status,
            };
            endpoints
                .entry(key.to_string())
                .or_default()
                .insert(w.uid.to_string(), json!(e));
        }
    }
    let mut all: Vec<_> = snapshot.services.iter().collect();
    all.sort_by(|a, b| (&a.0.hostname, &a.0.namespace).cmp(&(&b.0.hostname, &b.0.namespace)));
    all.into_iter()
        .map(|(key, route)| {
            let from_workloads = endpoints.remove(&key.to_string()).unwrap_or_default();
            service(&route.service, from_workloads)
        })
        .collect()
}

fn service(s: &Service, from_workloads: Map<String, Value>) -> Value {
    let mut v = match serde_json::to_value(s) {
        Ok(Value::Object(v)) => v,
        _ => return Value::Null,
    };
    let vips: Vec<String> = s.vips.iter().map(|ip| format!("/{ip}")).collect();
    v.insert("vips".into(), json!(vips));
    set_waypoint(&mut v, s.waypoint.as_ref());
    if let Some(Value::Object(endpoints)) = v.get_mut("endpoints") {
        for (uid, e) in from_workloads {
            endpoints.entry(uid).or_insert(e);
        }
    }
    Value::Object(v)
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
