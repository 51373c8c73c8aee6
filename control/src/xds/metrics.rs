//! The xDS client's own counters, under ztunnel's names (`istio_xds_*`), so dashboards
//! built for ztunnel read zpath's too.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Why an xDS stream ended, as ztunnel labels it (`reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// The connection could not be made, or broke.
    ConnectionError,
    /// The stream failed with a gRPC error (or anything else).
    Error,
    /// The server ended the stream the way it does to move clients (a GOAWAY, a
    /// cancelled or timed-out stream): reconnect at once.
    Reconnect,
    /// The server closed the stream cleanly.
    Complete,
}

impl Termination {
    /// Every reason, in rendering order.
    pub const ALL: [Termination; 4] = [
        Termination::ConnectionError,
        Termination::Error,
        Termination::Reconnect,
        Termination::Complete,
    ];

    /// The label value (ztunnel's variant name).
    pub fn label(self) -> &'static str {
        match self {
            Termination::ConnectionError => "ConnectionError",
            Termination::Error => "Error",
            Termination::Reconnect => "Reconnect",
            Termination::Complete => "Complete",
        }
    }

    /// How a stream that failed with gRPC `status` ended (ztunnel's rule).
    pub fn of_status(status: &tonic::Status) -> Termination {
        use tonic::Code;
        let moving = |text: &str| status.message().contains(text);
        match status.code() {
            Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => Termination::Reconnect,
            Code::Unavailable
                if moving("transport is closing") || moving("received prior goaway") =>
            {
                Termination::Reconnect
            }
            _ => Termination::Error,
        }
    }
}

/// Counters of an xDS client: streams ended by reason, responses and resource bytes by
/// type URL. Written by the control thread only.
#[derive(Debug, Default)]
pub struct ClientStats {
    terminations: [AtomicU64; 4],
    /// Responses and resource bytes received (in that order), by type URL.
    by_type: Mutex<BTreeMap<String, [u64; 2]>>,
}

impl ClientStats {
    /// Counts a stream that ended for `reason`.
    pub fn terminated(&self, reason: Termination) {
        self.terminations[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a response of `type_url` carrying `bytes` of resources.
    pub fn received(&self, type_url: &str, bytes: u64) {
        let mut by_type = self.by_type.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match by_type.get_mut(type_url) {
            Some(e) => e,
            None => by_type.entry(type_url.to_string()).or_default(),
        };
        entry[0] += 1;
        entry[1] += bytes;
    }

    /// Streams ended for `reason` so far.
    pub fn terminations(&self, reason: Termination) -> u64 {
        self.terminations[reason as usize].load(Ordering::Relaxed)
    }

    /// The counters in the Prometheus text format.
    pub fn prometheus(&self) -> String {
        let mut out = String::from(
            "# HELP istio_xds_connection_terminations_total The total number of completed connections to xds server (unstable).\n\
             # TYPE istio_xds_connection_terminations_total counter\n",
        );
        for reason in Termination::ALL {
            let _ = writeln!(
                out,
                "istio_xds_connection_terminations_total{{reason=\"{}\"}} {}",
                reason.label(),
                self.terminations(reason)
            );
        }
        let by_type = self.by_type.lock().unwrap_or_else(|e| e.into_inner());
        let families = [
            (
                "istio_xds_message_total",
                "Total number of messages received (unstable).",
            ),
            (
                "istio_xds_message_bytes_total",
                "Total number of bytes received (unstable).",
            ),
        ];
        for (i, (name, help)) in families.into_iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (url, counts) in by_type.iter() {
                let _ = writeln!(out, "{name}{{url=\"{}\"}} {}", label_value(url), counts[i]);
            }
        }
        out
    }
}

/// A label value as the Prometheus text format needs it (`\`, `"` and newlines escaped).
pub fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_under_ztunnels_names() {
        let s = ClientStats::default();
        s.terminated(Termination::Reconnect);
        s.received("type.googleapis.com/istio.workload.Address", 120);
        s.received("type.googleapis.com/istio.workload.Address", 30);
        let text = s.prometheus();
        assert!(
            text.contains("istio_xds_connection_terminations_total{reason=\"Reconnect\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("istio_xds_connection_terminations_total{reason=\"Complete\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "istio_xds_message_total{url=\"type.googleapis.com/istio.workload.Address\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("istio_xds_message_bytes_total{url=\"type.googleapis.com/istio.workload.Address\"} 150"), "{text}");
        s.received("a\"b", 0);
        assert!(s.prometheus().contains("url=\"a\\\"b\""));
    }

    #[test]
    fn stream_endings_are_classified_as_ztunnel_classifies_them() {
        let of = |code, msg: &str| Termination::of_status(&tonic::Status::new(code, msg));
        assert_eq!(of(tonic::Code::Cancelled, ""), Termination::Reconnect);
        assert_eq!(
            of(tonic::Code::Unavailable, "received prior goaway"),
            Termination::Reconnect
        );
        assert_eq!(
            of(tonic::Code::Unavailable, "connection refused"),
            Termination::Error
        );
        assert_eq!(of(tonic::Code::PermissionDenied, ""), Termination::Error);
    }
}
