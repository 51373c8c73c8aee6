//! The delta-xDS subscription state machine, without I/O.
//!
//! It owns what a delta ADS client must remember across responses and reconnects:
//! the resource names and versions it holds per type, and whether every subscribed
//! type has been answered once (readiness). The driver feeds it responses and sends
//! the requests it returns; tests feed it messages directly.
//!
//! Semantics, per response of type T:
//! 1. resources without a name or payload, with a payload of another type, or listed
//!    twice are rejected before the handler sees them;
//! 2. the handler gets the remaining added/changed resources and the removed names;
//!    it applies what it can and returns the names it rejected, with reasons;
//! 3. versions are updated for everything accepted; a rejected resource keeps the
//!    version (or absence) the client held before, so a reconnect asks for it again;
//! 4. the reply is an ACK (`response_nonce`) or, if anything was rejected, a NACK
//!    (`response_nonce` + `error_detail`).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::proto::envoy::config::core::v3::Node;
use crate::proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use crate::proto::google::rpc::Status;

/// Type URL of workload/service resources (`istio.workload.Address`).
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
/// Type URL of L4 authorization policies (`istio.security.Authorization`).
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// gRPC code put in NACKs (INTERNAL, as Envoy does).
pub const NACK_STATUS_CODE: i32 = 13;
/// NACK messages are cut to this many bytes so a flood of bad resources cannot
/// produce an unbounded request.
pub const MAX_NACK_MESSAGE_BYTES: usize = 4096;

/// One added or changed resource handed to the handler.
#[derive(Debug, Clone, PartialEq)]
pub struct XdsResource {
    /// Resource name (workload uid, `namespace/hostname`, `namespace/policy`).
    pub name: String,
    /// Opaque version chosen by the server.
    pub version: String,
    /// The payload; its `type_url` equals the response's type.
    pub resource: prost_types::Any,
}

/// A resource the handler (or the state machine) refused, with the reason sent back
/// to the server in the NACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedResource {
    /// Resource name.
    pub name: String,
    /// Why it was refused.
    pub reason: String,
}

impl RejectedResource {
    /// A rejection of `name` because of `reason`.
    pub fn new(name: impl Into<String>, reason: impl Into<String>) -> Self {
        RejectedResource {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

/// Receives the resources of each response; the domain conversion plugs in here.
///
/// Contract: apply every resource that is valid (added/changed replace the previous
/// value of the same name; removed names that are unknown are ignored), leave every
/// rejected name exactly as it was, and return the rejected names with reasons.
/// Returning `Ok` means everything was applied.
pub trait XdsHandler {
    /// Applies one response of type `type_url`.
    fn apply(
        &mut self,
        type_url: &str,
        added: Vec<XdsResource>,
        removed: Vec<String>,
    ) -> Result<(), Vec<RejectedResource>>;
}

/// What handling one response produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseOutcome {
    /// The ACK or NACK to send.
    pub request: DeltaDiscoveryRequest,
    /// Resources refused in this response (empty for an ACK).
    pub rejected: Vec<RejectedResource>,
    /// True when this response completed the first answer for every subscribed type.
    pub became_ready: bool,
}

impl ResponseOutcome {
    /// True when the reply is a NACK.
    pub fn is_nack(&self) -> bool {
        self.request.error_detail.is_some()
    }
}

#[derive(Debug)]
struct TypeState {
    type_url: String,
    /// name -> version of every resource the client holds.
    versions: HashMap<String, String>,
    answered: bool,
}

/// Delta ADS subscription state for a set of wildcard type subscriptions.
#[derive(Debug)]
pub struct SubscriptionState {
    node: Node,
    types: Vec<TypeState>,
}

impl SubscriptionState {
    /// Subscribes (wildcard) to `type_urls`, in order; `node` goes in each first request.
    pub fn new<I, S>(node: Node, type_urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut seen = HashSet::new();
        let types = type_urls
            .into_iter()
            .map(Into::into)
            .filter(|t| seen.insert(t.clone()))
            .map(|type_url| TypeState {
                type_url,
                versions: HashMap::new(),
                answered: false,
            })
            .collect();
        SubscriptionState { node, types }
    }

    /// The first request of each type for a new stream. After a reconnect they carry
    /// `initial_resource_versions` with every resource the client holds.
    pub fn initial_requests(&self) -> Vec<DeltaDiscoveryRequest> {
        self.types
            .iter()
            .map(|t| DeltaDiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: t.type_url.clone(),
                initial_resource_versions: t
                    .versions
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                ..Default::default()
            })
            .collect()
    }

    /// True once every subscribed type has been answered at least once (since start,
    /// not per stream: a reconnect does not make the proxy unready).
    pub fn is_ready(&self) -> bool {
        self.types.iter().all(|t| t.answered)
    }

    /// The versions held for `type_url` (name -> version), if subscribed.
    pub fn versions(&self, type_url: &str) -> Option<&HashMap<String, String>> {
        self.types
            .iter()
            .find(|t| t.type_url == type_url)
            .map(|t| &t.versions)
    }

    /// Handles one response: validates it, hands it to `handler`, updates versions
    /// and returns the ACK or NACK to send.
    pub fn handle_response<H: XdsHandler + ?Sized>(
        &mut self,
        response: DeltaDiscoveryResponse,
        handler: &mut H,
    ) -> ResponseOutcome {
        let was_ready = self.is_ready();
        let DeltaDiscoveryResponse {
            resources,
            type_url,
            removed_resources,
            nonce,
            ..
        } = response;
        let Some(idx) = self.types.iter().position(|t| t.type_url == type_url) else {
            let rejected = vec![RejectedResource::new(
                "*",
                format!("type {type_url:?} is not subscribed by this client"),
            )];
            return ResponseOutcome {
                request: reply(type_url, nonce, &rejected),
                rejected,
                became_ready: false,
            };
        };

        let held = &self.types[idx].versions;
        let (added, removed, mut rejected) =
            validate(&type_url, resources, removed_resources, held);
        let accepted_added: Vec<(String, String)> = added
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        let accepted_removed = removed.clone();
        if let Err(errs) = handler.apply(&type_url, added, removed) {
            rejected.extend(errs);
        }

        let refused: HashSet<&str> = rejected.iter().map(|r| r.name.as_str()).collect();
        let t = &mut self.types[idx];
        for name in accepted_removed {
            if !refused.contains(name.as_str()) {
                t.versions.remove(&name);
            }
        }
        for (name, version) in accepted_added {
            if !refused.contains(name.as_str()) {
                t.versions.insert(name, version);
            }
        }
        t.answered = true;

        ResponseOutcome {
            request: reply(type_url, nonce, &rejected),
            rejected,
            became_ready: !was_ready && self.is_ready(),
        }
    }
}

type Validated = (Vec<XdsResource>, Vec<String>, Vec<RejectedResource>);

/// Splits a response into what the handler may see and what is refused outright.
fn validate(
    type_url: &str,
    resources: Vec<crate::proto::envoy::service::discovery::v3::Resource>,
    removed_resources: Vec<String>,
    held: &HashMap<String, String>,
) -> Validated {
    let mut rejected = Vec::new();
    let mut added = Vec::with_capacity(resources.len());
    let mut seen: HashSet<String> = HashSet::with_capacity(resources.len());
    let mut duplicated: HashSet<String> = HashSet::new();
    for r in resources {
        if r.name.is_empty() {
            rejected.push(RejectedResource::new(
                "<unnamed>",
                "resource has no name".to_string(),
            ));
            continue;
        }
        if !seen.insert(r.name.clone()) {
            duplicated.insert(r.name);
            continue;
        }
        match r.resource {
            None if held.get(&r.name) == Some(&r.version) => {
                // A TTL heartbeat for a resource already held: nothing to apply.
            }
            None => rejected.push(RejectedResource::new(r.name, "resource has no payload")),
            Some(any) if any.type_url != type_url => rejected.push(RejectedResource::new(
                r.name,
                format!(
                    "payload type {:?} does not match response type {type_url:?}",
                    any.type_url
                ),
            )),
            Some(any) => added.push(XdsResource {
                name: r.name,
                version: r.version,
                resource: any,
            }),
        }
    }
    if !duplicated.is_empty() {
        added.retain(|r| !duplicated.contains(&r.name));
        let mut names: Vec<String> = duplicated.into_iter().collect();
        names.sort();
        rejected.extend(
            names.into_iter().map(|n| {
                RejectedResource::new(n, "resource listed more than once in one response")
            }),
        );
    }
    let added_names: HashSet<&str> = added.iter().map(|r| r.name.as_str()).collect();
    let mut removed = Vec::with_capacity(removed_resources.len());
    let mut conflicting = Vec::new();
    for name in removed_resources {
        if added_names.contains(name.as_str()) {
            conflicting.push(name);
        } else {
            removed.push(name);
        }
    }
    if !conflicting.is_empty() {
        let bad: HashSet<&String> = conflicting.iter().collect();
        added.retain(|r| !bad.contains(&r.name));
        rejected.extend(conflicting.into_iter().map(|n| {
            RejectedResource::new(n, "resource both updated and removed in one response")
        }));
    }
    (added, removed, rejected)
}

/// The ACK (no rejections) or NACK for a response.
fn reply(type_url: String, nonce: String, rejected: &[RejectedResource]) -> DeltaDiscoveryRequest {
    let error_detail = if rejected.is_empty() {
        None
    } else {
        Some(Status {
            code: NACK_STATUS_CODE,
            message: nack_message(rejected),
            details: Vec::new(),
        })
    };
    DeltaDiscoveryRequest {
        type_url,
        response_nonce: nonce,
        error_detail,
        ..Default::default()
    }
}

/// "name: reason; name: reason", cut at [`MAX_NACK_MESSAGE_BYTES`] with a count of
/// what was left out.
pub fn nack_message(rejected: &[RejectedResource]) -> String {
    let mut msg = String::new();
    for (i, r) in rejected.iter().enumerate() {
        let part = format!("{}: {}", r.name, r.reason);
        let sep = if msg.is_empty() { "" } else { "; " };
        if msg.len() + sep.len() + part.len() > MAX_NACK_MESSAGE_BYTES {
            msg.push_str(&format!("{sep}… and {} more", rejected.len() - i));
            break;
        }
        msg.push_str(sep);
        msg.push_str(&part);
    }
    msg
}

/// Versions as an ordered map, convenient for logs and tests.
pub fn sorted_versions(v: &HashMap<String, String>) -> BTreeMap<String, String> {
    v.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
