//! The decisions of the data path, as plain functions of a snapshot: no socket I/O, no
//! shard state, no clock (only the own-port check may ask the kernel whether an address
//! is local, and only for one of zpath's ports). The flows in `outbound/` and
//! `inbound/` ask them and act on the answer; each is unit-tested over an in-memory
//! snapshot.
//!
//! * [`plan`]: where an outbound connection goes (HBONE through which tunnel, plain
//!   TCP, or refused) and with which identity.
//! * [`admit`]: whether a CONNECT on 15008 is accepted, and the status it is answered
//!   with when not.
//! * [`authorize`]: the policy decision for every inbound connection (15006, 15008 and
//!   the re-check after a policy change).

pub(crate) mod admit;
pub(crate) mod authorize;
pub(crate) mod plan;

#[cfg(test)]
pub(crate) mod testing {
    //! In-memory snapshots and peers for the decisions' tests.
    #![allow(clippy::unwrap_used)]

    use std::rc::Rc;

    use zpath_control::{LocalConfig, Snapshot};
    use zpath_crypto::VerifiedPeer;

    /// A node's view for the inbound decisions: `prod/server` here at 10.0.0.2 and
    /// 10.0.0.3, another workload at 10.0.0.9 on another node, and a policy that lets
    /// only `web/frontend` in.
    pub(crate) const MESH: &str = r#"
workloads:
- name: server
  namespace: prod
  serviceAccount: server
  workloadIps: ["10.0.0.2", "10.0.0.3"]
  protocol: HBONE
  node: node
- name: elsewhere
  namespace: prod
  serviceAccount: server
  workloadIps: ["10.0.0.9"]
  protocol: HBONE
  node: other
policies:
- name: only-web
  namespace: prod
  scope: Namespace
  action: Allow
  rules:
  - - - principals: [{Exact: "cluster.local/ns/web/sa/frontend"}]
"#;

    /// The snapshot of node `node` for a local config in YAML.
    pub(crate) fn snapshot(yaml: &str) -> Snapshot {
        Snapshot::from_local(&LocalConfig::parse(yaml).unwrap(), "node", 1)
    }

    /// A peer as the verifier would yield it for `uri`.
    pub(crate) fn verified(uri: &str) -> Rc<VerifiedPeer> {
        Rc::new(VerifiedPeer::for_tests(uri.parse().unwrap()))
    }
}
