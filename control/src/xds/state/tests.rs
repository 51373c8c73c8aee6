use super::*;
use crate::proto::envoy::service::discovery::v3::Resource;
use prost_types::Any;

#[derive(Default)]
struct Recorder {
    calls: Vec<(String, Vec<XdsResource>, Vec<String>)>,
    reject: Vec<&'static str>,
}

impl XdsHandler for Recorder {
    fn apply(
        &mut self,
        type_url: &str,
        added: Vec<XdsResource>,
        removed: Vec<String>,
    ) -> Result<(), Vec<RejectedResource>> {
        let errs: Vec<RejectedResource> = added
            .iter()
            .map(|r| r.name.as_str())
            .chain(removed.iter().map(String::as_str))
            .filter(|n| self.reject.contains(n))
            .map(|n| RejectedResource::new(n, "invalid address length"))
            .collect();
        self.calls.push((type_url.to_string(), added, removed));
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

fn node() -> Node {
    Node {
        id: "ztunnel~10.0.0.1~p.ns~ns.svc.cluster.local".into(),
        ..Default::default()
    }
}

fn state() -> SubscriptionState {
    SubscriptionState::new(node(), [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL])
}

fn res(type_url: &str, name: &str, version: &str) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(Any {
            type_url: type_url.into(),
            value: name.as_bytes().to_vec(),
        }),
        ..Default::default()
    }
}

fn response(
    type_url: &str,
    nonce: &str,
    added: Vec<Resource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources: added,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn initial_requests_carry_node_and_type_and_no_versions() {
    let s = state();
    let reqs = s.initial_requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].type_url, ADDRESS_TYPE_URL);
    assert_eq!(reqs[1].type_url, AUTHORIZATION_TYPE_URL);
    for r in &reqs {
        assert_eq!(r.node, Some(node()));
        assert!(r.initial_resource_versions.is_empty());
        assert!(r.resource_names_subscribe.is_empty());
        assert!(r.response_nonce.is_empty());
        assert!(r.error_detail.is_none());
    }
}

#[test]
fn duplicate_type_urls_subscribe_once() {
    let s = SubscriptionState::new(node(), [ADDRESS_TYPE_URL, ADDRESS_TYPE_URL]);
    assert_eq!(s.initial_requests().len(), 1);
}

#[test]
fn ack_echoes_nonce_and_records_versions() {
    let mut s = state();
    let mut h = Recorder::default();
    let out = s.handle_response(
        response(
            ADDRESS_TYPE_URL,
            "n1",
            vec![
                res(ADDRESS_TYPE_URL, "a", "1"),
                res(ADDRESS_TYPE_URL, "b", "1"),
            ],
            &[],
        ),
        &mut h,
    );
    assert!(!out.is_nack());
    assert_eq!(out.request.response_nonce, "n1");
    assert_eq!(out.request.type_url, ADDRESS_TYPE_URL);
    assert!(
        out.request.node.is_none(),
        "only first requests carry the node"
    );
    assert_eq!(h.calls.len(), 1);
    assert_eq!(h.calls[0].1.len(), 2);
    assert_eq!(h.calls[0].1[0].resource.value, b"a".to_vec());
    let v = sorted_versions(s.versions(ADDRESS_TYPE_URL).unwrap());
    assert_eq!(v.len(), 2);
    assert_eq!(v["a"], "1");
}

#[test]
fn ready_only_after_every_type_answered() {
    let mut s = state();
    let mut h = Recorder::default();
    assert!(!s.is_ready());
    let out = s.handle_response(response(ADDRESS_TYPE_URL, "n1", vec![], &[]), &mut h);
    assert!(!out.became_ready);
    assert!(!s.is_ready());
    let out = s.handle_response(response(AUTHORIZATION_TYPE_URL, "n2", vec![], &[]), &mut h);
    assert!(out.became_ready);
    assert!(s.is_ready());
    let out = s.handle_response(response(AUTHORIZATION_TYPE_URL, "n3", vec![], &[]), &mut h);
    assert!(!out.became_ready, "readiness is reported once");
}

#[test]
fn handler_rejection_nacks_with_nonce_and_detail_and_keeps_old_version() {
    let mut s = state();
    let mut h = Recorder::default();
    s.handle_response(
        response(
            ADDRESS_TYPE_URL,
            "n1",
            vec![res(ADDRESS_TYPE_URL, "a", "1")],
            &[],
        ),
        &mut h,
    );
    h.reject = vec!["a", "new"];
    let out = s.handle_response(
        response(
            ADDRESS_TYPE_URL,
            "n2",
            vec![
                res(ADDRESS_TYPE_URL, "a", "2"),
                res(ADDRESS_TYPE_URL, "new", "1"),
                res(ADDRESS_TYPE_URL, "ok", "1"),
            ],
            &[],
        ),
        &mut h,
    );
    assert!(out.is_nack());
    assert_eq!(out.request.response_nonce, "n2");
    let detail = out.request.error_detail.clone().unwrap();
    assert_eq!(detail.code, NACK_STATUS_CODE);
    assert!(
        detail.message.contains("a: invalid address length"),
        "{}",
        detail.message
    );
    assert!(
        detail.message.contains("new: invalid address length"),
        "{}",
        detail.message
    );
    assert_eq!(out.rejected.len(), 2);
    let v = sorted_versions(s.versions(ADDRESS_TYPE_URL).unwrap());
    assert_eq!(v["a"], "1", "rejected update keeps the version held");
    assert!(!v.contains_key("new"), "rejected add is not recorded");
    assert_eq!(
        v["ok"], "1",
        "accepted resources of a NACKed response are recorded"
    );
}

#[test]
fn removals_forget_versions_unless_rejected() {
    let mut s = state();
    let mut h = Recorder::default();
    s.handle_response(
        response(
            ADDRESS_TYPE_URL,
            "n1",
            vec![
                res(ADDRESS_TYPE_URL, "a", "1"),
                res(ADDRESS_TYPE_URL, "b", "1"),
            ],
            &[],
        ),
        &mut h,
    );
    h.reject = vec!["b"];
    let out = s.handle_response(
        response(ADDRESS_TYPE_URL, "n2", vec![], &["a", "b", "never-held"]),
        &mut h,
    );
    assert!(out.is_nack());
    assert_eq!(h.calls[1].2, vec!["a", "b", "never-held"]);
    let v = sorted_versions(s.versions(ADDRESS_TYPE_URL).unwrap());
    assert!(!v.contains_key("a"));
    assert_eq!(v["b"], "1");
}

#[test]
fn reconnect_sends_held_versions_per_type() {
    let mut s = state();
    let mut h = Recorder::default();
    s.handle_response(
        response(
            ADDRESS_TYPE_URL,
            "n1",
            vec![res(ADDRESS_TYPE_URL, "a", "7")],
            &[],
        ),
        &mut h,
    );
    s.handle_response(
        response(
            AUTHORIZATION_TYPE_URL,
            "n2",
            vec![res(AUTHORIZATION_TYPE_URL, "ns/p", "3")],
            &[],
        ),
        &mut h,
    );
    let reqs = s.initial_requests();
    assert_eq!(
        reqs[0]
            .initial_resource_versions
            .get("a")
            .map(String::as_str),
        Some("7")
    );
    assert_eq!(reqs[0].initial_resource_versions.len(), 1);
    assert_eq!(
        reqs[1]
            .initial_resource_versions
            .get("ns/p")
            .map(String::as_str),
        Some("3")
    );
    assert!(reqs
        .iter()
        .all(|r| r.node.is_some() && r.response_nonce.is_empty()));
}

#[test]
fn unsubscribed_type_is_nacked_without_calling_handler() {
    let mut s = state();
    let mut h = Recorder::default();
    let out = s.handle_response(
        response("type.googleapis.com/other", "n9", vec![], &[]),
        &mut h,
    );
    assert!(out.is_nack());
    assert_eq!(out.request.response_nonce, "n9");
    assert_eq!(out.request.type_url, "type.googleapis.com/other");
    assert!(h.calls.is_empty());
    assert!(!s.is_ready());
}

#[test]
fn malformed_resources_are_rejected_before_the_handler() {
    let mut s = state();
    let mut h = Recorder::default();
    let mut no_payload = res(ADDRESS_TYPE_URL, "nopayload", "1");
    no_payload.resource = None;
    let mut unnamed = res(ADDRESS_TYPE_URL, "", "1");
    unnamed.name.clear();
    let out = s.handle_response(
        response(
            ADDRESS_TYPE_URL,
            "n1",
            vec![
                no_payload,
                unnamed,
                res(AUTHORIZATION_TYPE_URL, "wrongtype", "1"),
                res(ADDRESS_TYPE_URL, "dup", "1"),
                res(ADDRESS_TYPE_URL, "dup", "2"),
                res(ADDRESS_TYPE_URL, "both", "1"),
                res(ADDRESS_TYPE_URL, "good", "1"),
            ],
            &["both"],
        ),
        &mut h,
    );
    assert!(out.is_nack());
    let names: Vec<&str> = out.rejected.iter().map(|r| r.name.as_str()).collect();
    for n in ["nopayload", "<unnamed>", "wrongtype", "dup", "both"] {
        assert!(names.contains(&n), "{n} not rejected: {names:?}");
    }
    let seen: Vec<&str> = h.calls[0].1.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(seen, vec!["good"]);
    assert!(h.calls[0].2.is_empty());
    let v = s.versions(ADDRESS_TYPE_URL).unwrap();
    assert_eq!(v.len(), 1);
}

#[test]
fn ttl_heartbeat_without_payload_is_accepted() {
    let mut s = state();
    let mut h = Recorder::default();
    s.handle_response(
        response(
            ADDRESS_TYPE_URL,
            "n1",
            vec![res(ADDRESS_TYPE_URL, "a", "1")],
            &[],
        ),
        &mut h,
    );
    let mut hb = res(ADDRESS_TYPE_URL, "a", "1");
    hb.resource = None;
    let out = s.handle_response(response(ADDRESS_TYPE_URL, "n2", vec![hb], &[]), &mut h);
    assert!(!out.is_nack());
    assert!(h.calls[1].1.is_empty());
}

#[test]
fn nack_message_is_bounded() {
    let rejected: Vec<RejectedResource> = (0..10_000)
        .map(|i| RejectedResource::new(format!("workload-{i}"), "bad"))
        .collect();
    let msg = nack_message(&rejected);
    assert!(msg.len() <= MAX_NACK_MESSAGE_BYTES + 32, "{}", msg.len());
    assert!(msg.starts_with("workload-0: bad; workload-1: bad"));
    assert!(msg.contains("more"));
}
