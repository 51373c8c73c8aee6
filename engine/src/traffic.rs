//! Istio's labelled TCP metrics (`istio_tcp_*`), with ztunnel's label set: a connection
//! counts into the counters of its label set once its source and destination are
//! known. A shard builds each label set's text once (see `shard::traffic`, which
//! interns them per workload pair), never per connection; the control thread sums the
//! sets of every shard at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use zpath_control::model::{Service, WorkloadProfile};
use zpath_control::xds::metrics::label_value;
use zpath_tunnel::connect::Baggage;

use crate::counter::Counter;

/// Which proxy of a connection reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reporter {
    /// The source's node (outbound).
    Source,
    /// The destination's node (inbound).
    Destination,
}

impl Reporter {
    fn label(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// ztunnel's `response_flags`: how a connection ended, as a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFlag {
    /// Completed (or drained), no failure.
    None = 0,
    /// Denied by authorization policy.
    Deny = 1,
    /// The upstream connection could not be made or failed.
    Connect = 2,
    /// No certificate for an identity the connection needs.
    IdentityError = 3,
}

impl ResponseFlag {
    /// How many flags there are.
    pub(crate) const COUNT: usize = 4;

    const ALL: [ResponseFlag; ResponseFlag::COUNT] = [
        ResponseFlag::None,
        ResponseFlag::Deny,
        ResponseFlag::Connect,
        ResponseFlag::IdentityError,
    ];

    /// The label value, as ztunnel writes it.
    fn label(self) -> &'static str {
        match self {
            ResponseFlag::None => "-",
            ResponseFlag::Deny => "DENY",
            ResponseFlag::Connect => "CONNECT",
            ResponseFlag::IdentityError => "IDENTITY_ERROR",
        }
    }
}

/// What the label set of one connection is made of, borrowed from the snapshot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrafficLabels<'a> {
    /// Which proxy reports.
    pub(crate) reporter: Reporter,
    /// The source workload, when it is known.
    pub(crate) source: Option<&'a WorkloadProfile>,
    /// Inbound over HBONE, what the source's `baggage` says of it: its labels when
    /// the source workload is not known by address (as ztunnel's derived source).
    pub(crate) derived: Option<Baggage<'a>>,
    /// The source identity, when mTLS proved it (inbound HBONE) or will prove it
    /// (outbound HBONE): `spiffe://...`.
    pub(crate) source_principal: Option<&'a str>,
    /// The destination workload, when it is known.
    pub(crate) destination: Option<&'a WorkloadProfile>,
    /// The destination service: the one addressed (outbound), or the one the
    /// destination port belongs to (inbound).
    pub(crate) service: Option<&'a Service>,
    /// Whether the connection is carried over mutual TLS (HBONE).
    pub(crate) mtls: bool,
}

/// A field of `w`, or "" when it is not known.
fn field(w: Option<&WorkloadProfile>, f: fn(&WorkloadProfile) -> &str) -> &str {
    w.map_or("", f)
}

/// Writes one label; an empty value is written `unknown`, as ztunnel does.
fn label(out: &mut String, name: &str, value: &str) {
    let value = if value.is_empty() { "unknown" } else { value };
    if !out.is_empty() {
        out.push(',');
    }
    let _ = write!(out, "{name}=\"{}\"", label_value(value));
}

impl TrafficLabels<'_> {
    /// The label set's text, in ztunnel's order (its locality labels last), with the place of `response_flags`
    /// (which differs between the counters of one set) left out.
    pub(crate) fn render(&self) -> LabelText {
        let (src, dst, svc) = (self.source, self.destination, self.service);
        let principal = dst.map_or(String::new(), |w| w.spiffe_id());
        // The workload known by address wins; else what the source's baggage says.
        let derived = if src.is_none() { self.derived } else { None };
        let from = |of_workload: fn(&WorkloadProfile) -> &str,
                    of_baggage: fn(Baggage<'_>) -> Option<&str>| {
            match (src, &derived) {
                (Some(w), _) => of_workload(w),
                (None, Some(b)) => of_baggage(*b).unwrap_or(""),
                (None, None) => "",
            }
        };
        let labels: [(&str, &str); 21] = [
            ("reporter", self.reporter.label()),
            (
                "source_workload",
                from(|w| &w.workload_name, |b| b.workload_name),
            ),
            (
                "source_canonical_service",
                from(|w| &w.canonical_name, |b| b.service_name),
            ),
            (
                "source_canonical_revision",
                from(|w| &w.canonical_revision, |b| b.service_version),
            ),
            (
                "source_workload_namespace",
                from(|w| &w.namespace, |b| b.namespace),
            ),
            ("source_principal", self.source_principal.unwrap_or("")),
            // ztunnel's derived source gives its workload name as the app.
            (
                "source_app",
                from(|w| &w.canonical_name, |b| b.workload_name),
            ),
            (
                "source_version",
                from(|w| &w.canonical_revision, |b| b.service_version),
            ),
            ("source_cluster", from(|w| &w.cluster_id, |b| b.cluster)),
            ("destination_service", svc.map_or("", |s| &s.hostname)),
            (
                "destination_service_namespace",
                svc.map_or("", |s| &s.namespace),
            ),
            ("destination_service_name", svc.map_or("", |s| &s.name)),
            ("destination_workload", field(dst, |w| &w.workload_name)),
            (
                "destination_canonical_service",
                field(dst, |w| &w.canonical_name),
            ),
            (
                "destination_canonical_revision",
                field(dst, |w| &w.canonical_revision),
            ),
            (
                "destination_workload_namespace",
                field(dst, |w| &w.namespace),
            ),
            ("destination_principal", &principal),
            ("destination_app", field(dst, |w| &w.canonical_name)),
            ("destination_version", field(dst, |w| &w.canonical_revision)),
            ("destination_cluster", field(dst, |w| &w.cluster_id)),
            ("request_protocol", "tcp"),
        ];
        let mut out = String::with_capacity(768);
        for (name, value) in labels {
            label(&mut out, name, value);
        }
        let split = out.len();
        let policy = if self.mtls { "mutual_tls" } else { "unknown" };
        label(&mut out, "connection_security_policy", policy);
        for (name, value) in [
            ("source_region", from(|w| &w.locality.region, |b| b.region)),
            ("source_zone", from(|w| &w.locality.zone, |b| b.zone)),
            ("destination_region", field(dst, |w| &w.locality.region)),
            ("destination_zone", field(dst, |w| &w.locality.zone)),
        ] {
            label(&mut out, name, value);
        }
        LabelText {
            text: out.into_boxed_str(),
            split,
        }
    }
}

/// A label set's text, with the place where `response_flags` goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct LabelText {
    /// Every label but `response_flags`.
    text: Box<str>,
    /// The byte offset `response_flags` is written at.
    split: usize,
}

impl LabelText {
    /// The text without `response_flags`.
    #[cfg(test)]
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// Writes `{labels}` with `response_flags` set to `flag`.
    fn write_with(&self, out: &mut String, flag: ResponseFlag) {
        let (head, tail) = self.text.split_at(self.split);
        let _ = write!(out, "{{{head},response_flags=\"{}\"{tail}}}", flag.label());
    }
}

/// A shard's handle on one label set's counters. The `Rc` is deliberate (as for the
/// shard's snapshot): connections clone it with a plain increment on their core, while
/// the `Arc` inside is shared only with the control thread, which reads it.
#[allow(clippy::redundant_allocation)]
pub(crate) type LocalCounters = std::rc::Rc<Arc<TrafficCounters>>;

/// The counters of one label set on one shard: written only by that shard (plain load
/// and store, see [`Counter`]), read by the control thread.
#[derive(Debug)]
pub(crate) struct TrafficCounters {
    labels: LabelText,
    /// Connections opened.
    opened: Counter,
    /// Client → server bytes (Istio: received).
    pub(crate) received: Counter,
    /// Server → client bytes (Istio: sent).
    pub(crate) sent: Counter,
    /// Connections closed, by [`ResponseFlag`].
    closed: [Counter; ResponseFlag::COUNT],
}

impl TrafficCounters {
    /// Zeroed counters of `labels`.
    pub(crate) fn new(labels: LabelText) -> Self {
        TrafficCounters {
            labels,
            opened: Counter::default(),
            received: Counter::default(),
            sent: Counter::default(),
            closed: Default::default(),
        }
    }

    /// The label set's text.
    #[cfg(test)]
    pub(crate) fn labels(&self) -> &LabelText {
        &self.labels
    }

    /// Counts a connection that opened.
    pub(crate) fn open(&self) {
        self.opened.add(1);
    }

    /// Counts a connection that closed with `flag`.
    pub(crate) fn close(&self, flag: ResponseFlag) {
        self.closed[flag as usize].add(1);
    }
}

/// One label set's counts, summed over shards.
#[derive(Default)]
struct Sums {
    opened: u64,
    received: u64,
    sent: u64,
    closed: [u64; ResponseFlag::COUNT],
}

/// Writes the `istio_tcp_*` families of every shard's label sets, equal sets summed, as
/// ztunnel names them (failed: the closed connections with a failure flag).
pub(crate) fn render_prometheus<'a>(
    out: &mut String,
    sets: impl Iterator<Item = &'a TrafficCounters>,
) {
    let mut sums: BTreeMap<&LabelText, Sums> = BTreeMap::new();
    for c in sets {
        let s = sums.entry(&c.labels).or_default();
        s.opened += c.opened.get();
        s.received += c.received.get();
        s.sent += c.sent.get();
        for (i, n) in c.closed.iter().enumerate() {
            s.closed[i] += n.get();
        }
    }
    type Family = (&'static str, &'static str, fn(&Sums) -> u64);
    let flagless: [Family; 3] = [
        (
            "istio_tcp_connections_opened_total",
            "The total number of TCP connections opened.",
            |s| s.opened,
        ),
        (
            "istio_tcp_received_bytes_total",
            "The size of total bytes received during request in case of a TCP connection.",
            |s| s.received,
        ),
        (
            "istio_tcp_sent_bytes_total",
            "The size of total bytes sent during response in case of a TCP connection.",
            |s| s.sent,
        ),
    ];
    for (name, help, get) in flagless {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, s) in &sums {
            out.push_str(name);
            labels.write_with(out, ResponseFlag::None);
            let _ = writeln!(out, " {}", get(s));
        }
    }
    let flagged = [
        (
            "istio_tcp_connections_closed_total",
            "The total number of TCP connections closed.",
            false,
        ),
        (
            "istio_tcp_connections_failed_total",
            "The total number of TCP connections that failed to establish (unstable).",
            true,
        ),
    ];
    for (name, help, failures_only) in flagged {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, s) in &sums {
            for flag in ResponseFlag::ALL {
                let n = s.closed[flag as usize];
                if n == 0 || (failures_only && flag == ResponseFlag::None) {
                    continue;
                }
                out.push_str(name);
                labels.write_with(out, flag);
                let _ = writeln!(out, " {n}");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn profile(ns: &str, app: &str) -> WorkloadProfile {
        WorkloadProfile {
            namespace: ns.into(),
            trust_domain: "cluster.local".into(),
            service_account: format!("{app}-sa").as_str().into(),
            canonical_name: app.into(),
            canonical_revision: "v1".into(),
            workload_name: format!("{app}-deploy").as_str().into(),
            cluster_id: "Kubernetes".into(),
            ..Default::default()
        }
    }

    #[test]
    fn labels_are_ztunnels_in_its_order_with_unknown_for_what_is_not_known() {
        let mut src = profile("web", "client");
        src.locality.region = "eu".into();
        src.locality.zone = "eu-1".into();
        let dst = profile("prod", "server");
        let text = TrafficLabels {
            reporter: Reporter::Source,
            source: Some(&src),
            derived: None,
            source_principal: Some("spiffe://cluster.local/ns/web/sa/client-sa"),
            destination: Some(&dst),
            service: None,
            mtls: true,
        }
        .render();
        let mut out = String::new();
        text.write_with(&mut out, ResponseFlag::None);
        assert_eq!(
            out,
            "{reporter=\"source\",source_workload=\"client-deploy\",\
             source_canonical_service=\"client\",source_canonical_revision=\"v1\",\
             source_workload_namespace=\"web\",\
             source_principal=\"spiffe://cluster.local/ns/web/sa/client-sa\",\
             source_app=\"client\",source_version=\"v1\",source_cluster=\"Kubernetes\",\
             destination_service=\"unknown\",destination_service_namespace=\"unknown\",\
             destination_service_name=\"unknown\",destination_workload=\"server-deploy\",\
             destination_canonical_service=\"server\",destination_canonical_revision=\"v1\",\
             destination_workload_namespace=\"prod\",\
             destination_principal=\"spiffe://cluster.local/ns/prod/sa/server-sa\",\
             destination_app=\"server\",destination_version=\"v1\",\
             destination_cluster=\"Kubernetes\",request_protocol=\"tcp\",\
             response_flags=\"-\",connection_security_policy=\"mutual_tls\",\
             source_region=\"eu\",source_zone=\"eu-1\",destination_region=\"unknown\",\
             destination_zone=\"unknown\"}"
        );
    }

    #[test]
    fn a_source_not_known_by_address_is_labelled_from_its_baggage() {
        let dst = profile("prod", "server");
        let baggage = zpath_tunnel::connect::parse_baggage(
            "k8s.cluster.name=east,k8s.namespace.name=web,k8s.deployment.name=client-deploy,\
             service.name=client,service.version=v1,cloud.region=eu",
        );
        let labels = |source: Option<&WorkloadProfile>| {
            TrafficLabels {
                reporter: Reporter::Destination,
                source,
                derived: Some(baggage),
                source_principal: None,
                destination: Some(&dst),
                service: None,
                mtls: true,
            }
            .render()
        };
        let derived = labels(None);
        for want in [
            "source_workload=\"client-deploy\"",
            "source_canonical_service=\"client\"",
            "source_canonical_revision=\"v1\"",
            "source_workload_namespace=\"web\"",
            // As ztunnel: the derived source's app is its workload name.
            "source_app=\"client-deploy\"",
            "source_version=\"v1\"",
            "source_cluster=\"east\"",
            "source_region=\"eu\"",
            "source_zone=\"unknown\"",
        ] {
            assert!(
                derived.as_str().contains(want),
                "{want}: {}",
                derived.as_str()
            );
        }
        // A workload known by address wins over what its baggage says.
        let known = profile("shop", "other");
        let text = labels(Some(&known));
        assert!(text.as_str().contains("source_workload_namespace=\"shop\""));
        assert!(text.as_str().contains("source_region=\"unknown\""));
    }

    #[test]
    fn a_value_is_escaped() {
        let mut src = profile("web", "client");
        src.canonical_name = "a\"b\\c\nd".into();
        let text = TrafficLabels {
            reporter: Reporter::Destination,
            source: Some(&src),
            derived: None,
            source_principal: None,
            destination: None,
            service: None,
            mtls: false,
        }
        .render();
        assert!(
            text.as_str()
                .contains("source_canonical_service=\"a\\\"b\\\\c\\nd\""),
            "{}",
            text.as_str()
        );
        assert!(text
            .as_str()
            .contains(",connection_security_policy=\"unknown\","));
    }

    #[test]
    fn equal_sets_of_two_shards_are_summed_and_flags_split_closed_and_failed() {
        let dst = profile("prod", "server");
        let labels = TrafficLabels {
            reporter: Reporter::Destination,
            source: None,
            derived: None,
            source_principal: None,
            destination: Some(&dst),
            service: None,
            mtls: false,
        }
        .render();
        let a = Arc::new(TrafficCounters::new(labels.clone()));
        let b = Arc::new(TrafficCounters::new(labels));
        for c in [&a, &b] {
            c.open();
            c.received.add(10);
            c.sent.add(3);
        }
        a.close(ResponseFlag::None);
        b.close(ResponseFlag::Deny);
        let mut out = String::new();
        render_prometheus(&mut out, [&*a, &*b].into_iter());
        let value = |name: &str, flag: &str| -> Option<u64> {
            out.lines()
                .find(|l| l.starts_with(name) && l.contains(&format!("response_flags=\"{flag}\"")))
                .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        };
        assert_eq!(value("istio_tcp_connections_opened_total{", "-"), Some(2));
        assert_eq!(value("istio_tcp_received_bytes_total{", "-"), Some(20));
        assert_eq!(value("istio_tcp_sent_bytes_total{", "-"), Some(6));
        assert_eq!(value("istio_tcp_connections_closed_total{", "-"), Some(1));
        assert_eq!(
            value("istio_tcp_connections_closed_total{", "DENY"),
            Some(1)
        );
        assert_eq!(
            value("istio_tcp_connections_failed_total{", "DENY"),
            Some(1)
        );
        assert_eq!(value("istio_tcp_connections_failed_total{", "-"), None);
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
                .count(),
            1,
            "{out}"
        );
    }
}
