//! Per-shard counters: written only by their shard, summed by the control thread at
//! scrape time. Each counter is an atomic updated with a plain load and store (one
//! writer, so no read-modify-write and no cross-core contention), aligned so that two
//! shards never share a cache line.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A counter or gauge with a single writer (its shard).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`; only the owning shard calls it.
    #[inline]
    pub fn add(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    /// Subtracts `n` (gauges); only the owning shard calls it.
    #[inline]
    pub fn sub(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_sub(n), Ordering::Relaxed);
    }

    /// The current value, from any thread.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Traffic direction, as Istio labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a local workload to anywhere (15001, SOCKS5); reporter "source".
    Outbound = 0,
    /// To a local workload (15006, 15008); reporter "destination".
    Inbound = 1,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }

    fn reporter(self) -> &'static str {
        match self {
            Direction::Outbound => "source",
            Direction::Inbound => "destination",
        }
    }
}

/// Why a connection failed before or while relaying; a closed set, used as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The upstream refused, was unreachable, or did not answer in time.
    UpstreamConnect = 0,
    /// The original destination could not be read (not redirected traffic).
    NoOriginalDst = 1,
    /// The destination is one of our own listeners.
    Loop = 2,
    /// A SOCKS5 client sent something we do not accept.
    Socks5 = 3,
    /// A peer reset the connection while relaying.
    Reset = 4,
    /// A service VIP with no healthy endpoint.
    NoEndpoint = 5,
    /// Closed by drain after the deadline.
    Drained = 6,
    /// Inbound to an address that is not a workload this node serves.
    UnknownTarget = 7,
    /// Denied by authorization policy (at connect, or closed after a policy change).
    Denied = 8,
}

impl FailReason {
    const ALL: [FailReason; 9] = [
        FailReason::UpstreamConnect,
        FailReason::NoOriginalDst,
        FailReason::Loop,
        FailReason::Socks5,
        FailReason::Reset,
        FailReason::NoEndpoint,
        FailReason::Drained,
        FailReason::UnknownTarget,
        FailReason::Denied,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            FailReason::UpstreamConnect => "upstream_connect",
            FailReason::NoOriginalDst => "no_original_dst",
            FailReason::Loop => "loop",
            FailReason::Socks5 => "socks5",
            FailReason::Reset => "reset",
            FailReason::NoEndpoint => "no_endpoint",
            FailReason::Drained => "drained",
            FailReason::UnknownTarget => "unknown_target",
            FailReason::Denied => "denied",
        }
    }
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct DirectionStats {
    /// Connections accepted.
    pub opened: Counter,
    /// Connections finished (any outcome).
    pub closed: Counter,
    /// Bytes from the connection's client towards its server (Istio: received).
    pub received_bytes: Counter,
    /// Bytes from the server back to the client (Istio: sent).
    pub sent_bytes: Counter,
    /// Failures by reason.
    pub failed: [Counter; 9],
}

/// All counters of one shard.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardStats {
    /// By direction (index: `Direction as usize`).
    pub dirs: [DirectionStats; 2],
    /// Connections currently in the shard's table.
    pub open: Counter,
    /// Listeners bound and accepting (readiness).
    pub listening: Counter,
    /// Inbound policy decisions: allowed.
    pub policy_allowed: Counter,
    /// Inbound policy decisions: denied, by reason kind (see [`DENY_KINDS`]).
    pub policy_denied: [Counter; 5],
}

/// The deny reason kinds, in the order of [`ShardStats::policy_denied`].
pub const DENY_KINDS: [zpath_policy::DenyKind; 5] = [
    zpath_policy::DenyKind::MissingPolicy,
    zpath_policy::DenyKind::InvalidPolicy,
    zpath_policy::DenyKind::ExplicitDeny,
    zpath_policy::DenyKind::NotAllowed,
    zpath_policy::DenyKind::StaleTarget,
];

impl ShardStats {
    /// Counts an allowed inbound decision.
    pub fn count_allowed(&self) {
        self.policy_allowed.add(1);
    }

    /// Counts a denied inbound decision.
    pub fn count_denied(&self, kind: zpath_policy::DenyKind) {
        if let Some(i) = DENY_KINDS.iter().position(|k| *k == kind) {
            self.policy_denied[i].add(1);
        }
    }

    /// Counters of a direction.
    pub fn dir(&self, d: Direction) -> &DirectionStats {
        &self.dirs[d as usize]
    }
}

/// Renders the Prometheus text exposition of all shards' counters, summed.
pub fn render_prometheus(shards: &[std::sync::Arc<ShardStats>], extra: &str) -> String {
    let mut out = String::with_capacity(4096);
    let sum = |f: &dyn Fn(&ShardStats) -> u64| shards.iter().map(|s| f(s)).sum::<u64>();
    type Family = (&'static str, &'static str, fn(&DirectionStats) -> &Counter);
    let families: [Family; 4] = [
        (
            "istio_tcp_connections_opened_total",
            "Total TCP connections opened",
            |d| &d.opened,
        ),
        (
            "istio_tcp_connections_closed_total",
            "Total TCP connections closed",
            |d| &d.closed,
        ),
        (
            "istio_tcp_received_bytes_total",
            "Total bytes received during request in case of a TCP connection",
            |d| &d.received_bytes,
        ),
        (
            "istio_tcp_sent_bytes_total",
            "Total bytes sent during response in case of a TCP connection",
            |d| &d.sent_bytes,
        ),
    ];
    for (name, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter");
        for d in [Direction::Outbound, Direction::Inbound] {
            let v = sum(&|s| get(s.dir(d)).get());
            let _ = writeln!(
                out,
                "{name}{{reporter=\"{}\",direction=\"{}\"}} {v}",
                d.reporter(),
                d.label()
            );
        }
    }
    let name = "zpath_connections_failed_total";
    let _ = writeln!(
        out,
        "# HELP {name} Connections that failed, by reason.\n# TYPE {name} counter"
    );
    for d in [Direction::Outbound, Direction::Inbound] {
        for r in FailReason::ALL {
            let v = sum(&|s| s.dir(d).failed[r as usize].get());
            let _ = writeln!(
                out,
                "{name}{{direction=\"{}\",reason=\"{}\"}} {v}",
                d.label(),
                r.label()
            );
        }
    }
    let name = "zpath_policy_decisions_total";
    let _ = writeln!(out, "# HELP {name} Inbound authorization decisions, by outcome and reason.\n# TYPE {name} counter");
    let _ = writeln!(
        out,
        "{name}{{outcome=\"allow\",reason=\"\"}} {}",
        sum(&|s| s.policy_allowed.get())
    );
    for (i, k) in DENY_KINDS.iter().enumerate() {
        let _ = writeln!(
            out,
            "{name}{{outcome=\"deny\",reason=\"{}\"}} {}",
            k.as_str(),
            sum(&|s| s.policy_denied[i].get())
        );
    }
    let name = "zpath_open_connections";
    let _ = writeln!(
        out,
        "# HELP {name} Connections open now, by shard.\n# TYPE {name} gauge"
    );
    for (i, s) in shards.iter().enumerate() {
        let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", s.open.get());
    }
    out.push_str(extra);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn prometheus_sums_shards() {
        let a = Arc::new(ShardStats::default());
        let b = Arc::new(ShardStats::default());
        a.dir(Direction::Outbound).opened.add(2);
        b.dir(Direction::Outbound).opened.add(3);
        b.dir(Direction::Inbound).failed[FailReason::Loop as usize].add(1);
        a.open.add(4);
        a.open.sub(1);
        let text = render_prometheus(&[a, b], "");
        assert!(
            text.contains(
                "istio_tcp_connections_opened_total{reporter=\"source\",direction=\"outbound\"} 5"
            ),
            "{text}"
        );
        assert!(text
            .contains("zpath_connections_failed_total{direction=\"inbound\",reason=\"loop\"} 1"));
        assert!(text.contains("zpath_open_connections{shard=\"0\"} 3"));
    }
}
