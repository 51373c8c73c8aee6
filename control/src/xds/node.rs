//! The xDS `Node` zpath presents to istiod: the same id format and metadata keys as
//! ztunnel, so istiod classifies the client as a node proxy and scopes its pushes.

use std::collections::BTreeMap;

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

use crate::proto::envoy::config::core::v3::Node;

/// Node type istiod recognises for ambient node proxies (first `~` field of the id).
pub const NODE_TYPE: &str = "ztunnel";

/// Address used in the node id when the pod IP is unknown (as ztunnel does).
pub const DEFAULT_INSTANCE_IP: &str = "1.1.1.1";

/// What the binary knows about the pod it runs in (downward API) plus extra metadata.
///
/// The binary fills this from the environment (`INSTANCE_IP`, `POD_NAME`,
/// `POD_NAMESPACE`, `NODE_NAME`, `ISTIO_META_*` with the prefix stripped into
/// `metadata`, `ISTIO_METAJSON_*` parsed into `json_metadata`); this module never
/// reads the environment itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeInfo {
    /// Pod IP(s) of the proxy, comma-separated as Kubernetes gives them; empty if unknown.
    pub instance_ip: String,
    /// Pod name of the proxy.
    pub pod_name: String,
    /// Namespace of the proxy pod.
    pub pod_namespace: String,
    /// Kubernetes node name; istiod uses it to select the workloads of this node.
    pub node_name: String,
    /// Extra string metadata (e.g. `CLUSTER_ID`, `ISTIO_VERSION`); overrides the
    /// built-in keys when names collide.
    pub metadata: BTreeMap<String, String>,
    /// Extra structured metadata (from `ISTIO_METAJSON_<KEY>`); overrides both above.
    pub json_metadata: BTreeMap<String, serde_json::Value>,
}

impl NodeInfo {
    /// The node id: `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
    pub fn node_id(&self) -> String {
        let ip = self.ip_or_default();
        let ns = &self.pod_namespace;
        format!(
            "{NODE_TYPE}~{ip}~{pod}.{ns}~{ns}.svc.cluster.local",
            pod = self.pod_name
        )
    }

    /// The metadata struct: `NAME`, `NAMESPACE`, `INSTANCE_IPS`, `NODE_NAME`, then the
    /// extra string metadata, then the JSON metadata.
    pub fn metadata_struct(&self) -> Struct {
        let mut fields = BTreeMap::new();
        let builtin = [
            ("NAME", self.pod_name.as_str()),
            ("NAMESPACE", self.pod_namespace.as_str()),
            ("INSTANCE_IPS", self.ip_or_default()),
            ("NODE_NAME", self.node_name.as_str()),
        ];
        for (k, v) in builtin {
            fields.insert(k.to_string(), string_value(v));
        }
        for (k, v) in &self.metadata {
            fields.insert(k.clone(), string_value(v));
        }
        for (k, v) in &self.json_metadata {
            fields.insert(k.clone(), json_to_value(v));
        }
        Struct { fields }
    }

    /// The complete `Node` sent in the first request of every type on a stream.
    pub fn to_node(&self) -> Node {
        Node {
            id: self.node_id(),
            metadata: Some(self.metadata_struct()),
            ..Default::default()
        }
    }

    fn ip_or_default(&self) -> &str {
        if self.instance_ip.is_empty() {
            DEFAULT_INSTANCE_IP
        } else {
            &self.instance_ip
        }
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// Converts JSON to a protobuf `Value` (numbers become doubles, as in JSON).
pub fn json_to_value(json: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match json {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        J::Object(map) => Kind::StructValue(Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn info() -> NodeInfo {
        NodeInfo {
            instance_ip: "10.0.0.7".into(),
            pod_name: "zpath-abc".into(),
            pod_namespace: "istio-system".into(),
            node_name: "worker-1".into(),
            ..Default::default()
        }
    }

    fn get<'a>(s: &'a Struct, key: &str) -> Option<&'a Kind> {
        s.fields.get(key).and_then(|v| v.kind.as_ref())
    }

    #[test]
    fn node_id_has_ztunnel_format() {
        assert_eq!(
            info().node_id(),
            "ztunnel~10.0.0.7~zpath-abc.istio-system~istio-system.svc.cluster.local"
        );
    }

    #[test]
    fn unknown_ip_uses_the_default_like_ztunnel() {
        let n = NodeInfo::default();
        assert_eq!(n.node_id(), "ztunnel~1.1.1.1~.~.svc.cluster.local");
        assert_eq!(
            get(&n.metadata_struct(), "INSTANCE_IPS"),
            Some(&Kind::StringValue("1.1.1.1".into()))
        );
    }

    #[test]
    fn metadata_has_builtin_keys_and_extras_override() {
        let mut n = info();
        n.metadata.insert("CLUSTER_ID".into(), "Kubernetes".into());
        n.metadata.insert("NODE_NAME".into(), "override".into());
        n.json_metadata
            .insert("LABELS".into(), serde_json::json!({"app": "x", "n": 2}));
        let s = n.metadata_struct();
        assert_eq!(
            get(&s, "NAME"),
            Some(&Kind::StringValue("zpath-abc".into()))
        );
        assert_eq!(
            get(&s, "NAMESPACE"),
            Some(&Kind::StringValue("istio-system".into()))
        );
        assert_eq!(
            get(&s, "INSTANCE_IPS"),
            Some(&Kind::StringValue("10.0.0.7".into()))
        );
        assert_eq!(
            get(&s, "NODE_NAME"),
            Some(&Kind::StringValue("override".into()))
        );
        assert_eq!(
            get(&s, "CLUSTER_ID"),
            Some(&Kind::StringValue("Kubernetes".into()))
        );
        let Some(Kind::StructValue(labels)) = get(&s, "LABELS") else {
            panic!("LABELS is not a struct: {s:?}");
        };
        assert_eq!(get(labels, "n"), Some(&Kind::NumberValue(2.0)));
        let node = n.to_node();
        assert_eq!(node.id, n.node_id());
        assert_eq!(node.metadata, Some(s));
    }
}
