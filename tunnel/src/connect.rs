//! The HBONE CONNECT request: built as Istio's data planes send it, validated as a
//! destination node must before it opens anything.
//!
//! A request is `:method CONNECT`, `:authority <ip>:<port>` (the destination workload
//! and port), with `Forwarded: for="<source ip:port>"`, `baggage` (the source
//! workload's cluster, namespace, workload and canonical service) and `traceparent`
//! (W3C trace context). The server never trusts `Forwarded` for the source address:
//! the source is the TCP peer of the tunnel connection.

use std::net::SocketAddr;

use http::{Method, Request, StatusCode};

/// Header carrying the source workload's attributes (W3C baggage).
pub const BAGGAGE: &str = "baggage";
/// Header carrying the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The source workload's attributes sent in `baggage`, borrowed from the workload
/// while the header is built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceInfo<'a> {
    /// Cluster id (`k8s.cluster.name`).
    pub cluster: &'a str,
    /// Namespace (`k8s.namespace.name`).
    pub namespace: &'a str,
    /// Workload kind in lower case (`deployment`, `pod`...; `k8s.<kind>.name`);
    /// empty means `deployment`, the default of Istio's workload API.
    pub workload_kind: &'a str,
    /// Workload name.
    pub workload_name: &'a str,
    /// Canonical service name (`service.name`).
    pub canonical_name: &'a str,
    /// Canonical revision (`service.version`).
    pub canonical_revision: &'a str,
}

impl SourceInfo<'_> {
    /// The `baggage` header value: the attributes in Istio's order, leaving out those
    /// that are empty (a receiver reads an absent key and an empty value alike).
    pub fn baggage(&self) -> String {
        let kind = if self.workload_kind.is_empty() {
            "deployment"
        } else {
            self.workload_kind
        };
        // Key as (prefix, middle, suffix), so `k8s.<kind>.name` needs no buffer of its own.
        let attributes = [
            (("k8s.cluster.name", "", ""), self.cluster),
            (("k8s.namespace.name", "", ""), self.namespace),
            (("k8s.", kind, ".name"), self.workload_name),
            (("service.name", "", ""), self.canonical_name),
            (("service.version", "", ""), self.canonical_revision),
        ];
        let mut out = String::with_capacity(160);
        for ((a, b, c), value) in attributes.iter().filter(|(_, v)| !v.is_empty()) {
            if !out.is_empty() {
                out.push(',');
            }
            for part in [a, b, c, "=", value] {
                out.push_str(part);
            }
        }
        out
    }
}

/// The source attributes a `baggage` header carries, as ztunnel reads them: borrowed
/// from the header value, an empty value read as absent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Baggage<'a> {
    /// `k8s.cluster.name`.
    pub cluster: Option<&'a str>,
    /// `k8s.namespace.name`.
    pub namespace: Option<&'a str>,
    /// `k8s.<deployment|cronjob|pod|job>.name`.
    pub workload_name: Option<&'a str>,
    /// `service.name` (the canonical service).
    pub service_name: Option<&'a str>,
    /// `service.version` (the canonical revision).
    pub service_version: Option<&'a str>,
    /// `cloud.region`.
    pub region: Option<&'a str>,
    /// `cloud.availability_zone`.
    pub zone: Option<&'a str>,
}

/// Reads a `baggage` header value: comma-separated `key=value` members, the keys
/// ztunnel knows, others ignored (a member without `=` too).
pub fn parse_baggage(value: &str) -> Baggage<'_> {
    let mut b = Baggage::default();
    for member in value.split(',') {
        let mut parts = member.split('=');
        let (Some(key), Some(v)) = (parts.next(), parts.next()) else {
            continue;
        };
        let v = (!v.is_empty()).then_some(v);
        match key {
            "k8s.cluster.name" => b.cluster = v,
            "k8s.namespace.name" => b.namespace = v,
            "k8s.deployment.name" | "k8s.cronjob.name" | "k8s.pod.name" | "k8s.job.name" => {
                b.workload_name = v
            }
            "service.name" => b.service_name = v,
            "service.version" => b.service_version = v,
            "cloud.region" => b.region = v,
            "cloud.availability_zone" => b.zone = v,
            _ => {}
        }
    }
    b
}

/// A W3C `traceparent` value with fresh ids from the caller's random numbers:
/// `00-<32 hex trace id>-<16 hex span id>-00` (not sampled).
pub fn traceparent(trace_id: u128, span_id: u64) -> String {
    // All-zero ids are invalid in W3C trace context.
    let trace_id = trace_id.max(1);
    let span_id = span_id.max(1);
    format!("00-{trace_id:032x}-{span_id:016x}-00")
}

/// The RFC 7239 `Forwarded` value naming the original client `src`.
pub fn forwarded_for(src: SocketAddr) -> String {
    format!("for=\"{src}\"")
}

/// Builds the CONNECT request for `target`, from `source` (the original client).
pub fn request(
    target: SocketAddr,
    source: SocketAddr,
    baggage: &str,
    traceparent: &str,
) -> Result<Request<()>, http::Error> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .version(http::Version::HTTP_2)
        .header(http::header::FORWARDED, forwarded_for(source))
        .header(BAGGAGE, baggage)
        .header(TRACEPARENT, traceparent)
        .body(())
}

/// Why a destination node answers 400 to a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// The method is not CONNECT.
    #[error("method {0} is not CONNECT")]
    Method(String),
    /// There is no `:authority`.
    #[error("the request has no authority")]
    NoAuthority,
    /// The authority is not `ip:port`.
    #[error("authority {0:?} is not an ip:port")]
    Authority(String),
}

impl BadRequest {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            BadRequest::Method(_) => "method",
            BadRequest::NoAuthority | BadRequest::Authority(_) => "authority",
        }
    }
}

/// Checks a request is a CONNECT to an `ip:port` and returns that target.
pub fn target<B>(req: &Request<B>) -> Result<SocketAddr, BadRequest> {
    if req.method() != Method::CONNECT {
        return Err(BadRequest::Method(
            req.method().as_str().chars().take(32).collect(),
        ));
    }
    let authority = req.uri().authority().ok_or(BadRequest::NoAuthority)?;
    let text = authority.as_str();
    text.parse::<SocketAddr>()
        .map_err(|_| BadRequest::Authority(text.chars().take(128).collect()))
}

/// The response for a status with no body.
pub fn response(status: StatusCode) -> http::Response<()> {
    let mut r = http::Response::new(());
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_carries_the_headers_istio_sends() {
        let src: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        let info = SourceInfo {
            cluster: "Kubernetes",
            namespace: "default",
            workload_kind: "deployment",
            workload_name: "client",
            canonical_name: "client",
            canonical_revision: "v1",
        };
        let tp = traceparent(0xabc, 0x12);
        let req = request(dst, src, &info.baggage(), &tp).unwrap();
        assert_eq!(req.method(), Method::CONNECT);
        assert_eq!(req.uri().authority().unwrap().as_str(), "10.0.0.2:8080");
        assert_eq!(req.headers()["forwarded"], "for=\"10.0.0.1:40000\"");
        assert_eq!(
            req.headers()["baggage"],
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=client,service.name=client,service.version=v1"
        );
        assert_eq!(
            req.headers()["traceparent"],
            "00-00000000000000000000000000000abc-0000000000000012-00"
        );
        assert_eq!(target(&req), Ok(dst));
    }

    #[test]
    fn baggage_leaves_out_empty_attributes_and_defaults_the_kind() {
        let info = SourceInfo {
            cluster: "Kubernetes",
            namespace: "default",
            workload_name: "client",
            ..SourceInfo::default()
        };
        assert_eq!(
            info.baggage(),
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=client"
        );
        let job = SourceInfo {
            workload_kind: "job",
            canonical_revision: "v2",
            ..SourceInfo::default()
        };
        assert_eq!(job.baggage(), "service.version=v2");
        assert_eq!(SourceInfo::default().baggage(), "");
    }

    #[test]
    fn baggage_we_send_reads_back_and_unknown_or_empty_members_are_absent() {
        let info = SourceInfo {
            cluster: "east",
            namespace: "web",
            workload_kind: "cronjob",
            workload_name: "report",
            canonical_name: "reporter",
            canonical_revision: "v3",
        };
        let sent = info.baggage();
        let got = parse_baggage(&sent);
        assert_eq!(
            got,
            Baggage {
                cluster: Some("east"),
                namespace: Some("web"),
                workload_name: Some("report"),
                service_name: Some("reporter"),
                service_version: Some("v3"),
                region: None,
                zone: None,
            }
        );
        let odd =
            parse_baggage("cloud.region=eu,cloud.availability_zone=,x=y,bare,k8s.pod.name=p=q");
        assert_eq!(odd.region, Some("eu"));
        assert_eq!(odd.zone, None);
        assert_eq!(odd.workload_name, Some("p"));
        assert_eq!(parse_baggage(""), Baggage::default());
    }

    #[test]
    fn ipv6_targets_round_trip() {
        let dst: SocketAddr = "[fd00::2]:8080".parse().unwrap();
        let src: SocketAddr = "[fd00::1]:1".parse().unwrap();
        let req = request(dst, src, "", &traceparent(0, 0)).unwrap();
        assert_eq!(target(&req), Ok(dst));
        assert_eq!(req.headers()["forwarded"], "for=\"[fd00::1]:1\"");
        assert!(req.headers()["traceparent"]
            .to_str()
            .unwrap()
            .ends_with("0000000000000001-00"));
    }

    #[test]
    fn non_connect_and_bad_authorities_are_400s() {
        let get = Request::get("http://10.0.0.2:80/").body(()).unwrap();
        assert_eq!(target(&get), Err(BadRequest::Method("GET".into())));
        for authority in ["example.com:80", "10.0.0.2", "10.0.0.2:99999", "[::1]"] {
            let req = Request::builder()
                .method(Method::CONNECT)
                .uri(authority)
                .body(())
                .unwrap();
            assert!(
                matches!(target(&req), Err(BadRequest::Authority(_))),
                "{authority}"
            );
        }
    }
}
