//! The admin endpoint's run-time controls, as ztunnel's: `/logging` reads and changes
//! the log filter, `/quitquitquit` drains and stops the daemon.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use zpath_tests::node::{http_get, http_post};
use zpath_tests::{Node, NodeOptions};

#[test]
fn logging_reads_and_changes_the_level_and_quitquitquit_stops_the_daemon() {
    let mut node = Node::start(NodeOptions::default());
    let admin = node.admin;
    let post = |path: &str| http_post(admin, path).unwrap();
    assert_eq!(
        post("/logging"),
        (200, "current log level is info\n".into())
    );
    assert_eq!(
        post("/logging?level=debug"),
        (200, "current log level is debug\n".into())
    );
    let (status, body) = post("/logging?level=info,zpath_engine=trace");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("zpath_engine=trace"), "{body}");
    // A percent-encoded filter (as curl --data-urlencode writes it, lower case too).
    let (status, body) = post("/logging?level=info%2czpath_engine%3A%3Adecide%3Ddebug");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("zpath_engine::decide=debug"), "{body}");
    let (status, body) = post("/logging?level=loud");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Invalid level provided: loud"), "{body}");
    assert_eq!(
        post("/logging?reset"),
        (200, "current log level is info\n".into())
    );
    // No in-process profiler: the answer says how to profile instead.
    let (status, body) = http_get(node.admin, "/debug/pprof/profile").unwrap();
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("perf record"), "{body}");
    // Both are POST only, as in ztunnel.
    assert_eq!(http_get(node.admin, "/logging").unwrap().0, 405);
    assert_eq!(http_get(node.admin, "/quitquitquit").unwrap().0, 405);
    // Each change is logged (at info, so it shows under the filter it leaves).
    assert!(node.stderr().contains("log level changed on /logging"));
    assert_eq!(post("/quitquitquit"), (200, "shutdown now\n".into()));
    let status = node.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert!(node
        .stderr()
        .contains("shutdown asked for on /quitquitquit"));
}

/// Checks `v` against `schema`, the shape of what `istioctl ztunnel-config` decodes
/// (its Go structs): "string", "number" or "bool" for a value of that JSON type, `[s]`
/// for an array of `s`, `{"*": s}` for a map of `s`, an object for a struct whose keys
/// must be present (a key starting with `?` may be absent). A Go decoder fails on a
/// type mismatch, so a mismatch here is what would break `istioctl`.
fn check(v: &serde_json::Value, schema: &serde_json::Value, at: &str) {
    use serde_json::Value;
    match schema {
        Value::String(t) => {
            let ok = match t.as_str() {
                "string" => v.is_string(),
                "number" => v.is_number(),
                "bool" => v.is_boolean(),
                other => panic!("schema type {other}"),
            };
            assert!(ok, "{at}: {v} is not a {t}");
        }
        Value::Array(item) => {
            let items = v
                .as_array()
                .unwrap_or_else(|| panic!("{at}: {v} is not an array"));
            for (i, x) in items.iter().enumerate() {
                check(x, &item[0], &format!("{at}[{i}]"));
            }
        }
        Value::Object(fields) if fields.contains_key("*") => {
            let map = v
                .as_object()
                .unwrap_or_else(|| panic!("{at}: {v} is not a map"));
            for (k, x) in map {
                check(x, &fields["*"], &format!("{at}.{k}"));
            }
        }
        Value::Object(fields) => {
            let obj = v
                .as_object()
                .unwrap_or_else(|| panic!("{at}: {v} is not an object"));
            for (k, s) in fields {
                let (key, optional) = match k.strip_prefix('?') {
                    Some(key) => (key, true),
                    None => (k.as_str(), false),
                };
                match obj.get(key) {
                    Some(x) => check(x, s, &format!("{at}.{key}")),
                    None => assert!(optional, "{at}: no {key} in {v}"),
                }
            }
        }
        other => panic!("schema {other}"),
    }
}

/// `/config_dump` decodes as `istioctl ztunnel-config` decodes ztunnel's: the
/// workloads, services, policies and certificates arrays with their fields' types.
#[test]
fn config_dump_has_the_shape_istioctl_reads() {
    let config = r#"workloads:
- name: client
  namespace: default
  serviceAccount: client
  workloadIps: ["127.0.0.1"]
  protocol: HBONE
  node: node-a
  canonicalName: client
  locality: {region: eu, zone: eu-1}
- name: server
  namespace: prod
  serviceAccount: server
  workloadIps: ["10.0.1.2"]
  protocol: HBONE
  node: node-b
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
   rules: [[[{destinationPorts: [1], principals: [{Exact: "cluster.local/ns/a/sa/b"}]}]]]}
"#;
    let node = Node::start(NodeOptions {
        config: config.into(),
        ..NodeOptions::default()
    });
    // The local workload's certificate is issued before ready.
    let dump = node.config_dump();
    let cert = serde_json::json!({
        "pem": "string", "serialNumber": "string", "validFrom": "string",
        "expirationTime": "string",
    });
    let schema = serde_json::json!({
        "workloads": [{
            "uid": "string", "workloadIps": ["string"], "?waypoint": {"destination": "string"},
            "protocol": "string", "name": "string", "namespace": "string",
            "serviceAccount": "string", "workloadName": "string", "workloadType": "string",
            "canonicalName": "string", "canonicalRevision": "string", "clusterId": "string",
            "trustDomain": "string", "node": "string", "network": "string",
            "status": "string", "capacity": "number", "authorizationPolicies": ["string"],
            "services": ["string"], "networkMode": "string",
            "?locality": {"?region": "string", "?zone": "string", "?subzone": "string"},
        }],
        "services": [{
            "name": "string", "namespace": "string", "hostname": "string", "vips": ["string"],
            "ports": {"*": "number"}, "?waypoint": {"destination": "string"},
            "endpoints": {"*": {"workloadUid": "string", "port": {"*": "number"}, "status": "string"}},
            "subjectAltNames": ["string"],
        }],
        "policies": [{
            "name": "string", "namespace": "string", "scope": "string", "action": "string",
            "rules": [[[{
                "?destinationPorts": ["number"],
                "?principals": [{"?Exact": "string", "?Prefix": "string", "?Suffix": "string"}],
            }]]],
        }],
        "certificates": [{
            "identity": "string", "state": "string", "certChain": [cert], "rootCerts": [cert],
        }],
        "workloadState": {"*": {}},
    });
    check(&dump, &schema, "config_dump");
    assert_eq!(dump["workloads"].as_array().unwrap().len(), 2, "{dump}");
    assert_eq!(dump["workloads"][0]["locality"]["zone"], "eu-1", "{dump}");
    let server = &dump["workloads"][1];
    assert_eq!(server["waypoint"]["destination"], "/10.0.9.9", "{server}");
    let api = &dump["services"][0];
    assert_eq!(api["vips"][0], "/10.96.0.10", "{api}");
    let endpoints = api["endpoints"].as_object().unwrap();
    assert_eq!(endpoints.len(), 1, "{api}");
    assert_eq!(dump["policies"][0]["name"], "deny-1");
    assert_eq!(
        dump["certificates"][0]["identity"], "spiffe://cluster.local/ns/default/sa/client",
        "{dump}"
    );
}
