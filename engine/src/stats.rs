//! Per-shard counters: written only by their shard, summed by the control thread at
//! scrape time. Each counter is an atomic updated with a plain load and store (one
//! writer, so no read-modify-write and no cross-core contention), aligned so that two
//! shards never share a cache line.

pub use crate::counter::Counter;
use crate::traffic::{ResponseFlag, TrafficCounters};
use std::fmt::Write;

/// Holds one unit of a gauge: added when made, taken back when dropped, also when the
/// task holding it is cancelled (drain, policy re-check).
pub(crate) struct Gauge<'a>(&'a Counter);

impl<'a> Gauge<'a> {
    /// Adds one to `counter` until the returned value is dropped.
    pub(crate) fn up(counter: &'a Counter) -> Self {
        counter.add(1);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.sub(1);
    }
}

/// Traffic direction, as Istio labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a local workload to anywhere (15001, SOCKS5); Istio's reporter "source".
    Outbound = 0,
    /// To a local workload (15006, 15008); Istio's reporter "destination".
    Inbound = 1,
}

impl Direction {
    /// `outbound` or `inbound`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
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
    /// Outbound from an address that is not a workload this node serves (HBONE needs
    /// the source workload's identity).
    UnknownSource = 9,
    /// No certificate for the identity a connection needs.
    NoCertificate = 10,
    /// The TLS handshake failed or timed out.
    Tls = 11,
    /// The HBONE connection or stream failed (HTTP/2 error, CONNECT refused).
    Tunnel = 12,
    /// An HBONE request we answered 400.
    BadRequest = 13,
    /// No configuration applied yet (xDS has not answered): refused, failing closed.
    NoConfig = 14,
    /// The destination has a waypoint, which zpath does not route through yet: refused
    /// rather than reached directly (that would bypass the waypoint's L7 policy).
    WaypointUnsupported = 15,
    /// The source workload's address could not be bound for the upstream connection
    /// (not local, and no `IP_TRANSPARENT`): refused rather than sent from another.
    SourceAddress = 16,
    /// Refused at accept: the shard holds `--max-connections-per-shard` connections, or
    /// the process is near its open-file limit.
    Overload = 17,
}

impl FailReason {
    /// How many reasons there are.
    pub const COUNT: usize = 18;

    /// Every reason, in label order.
    pub const ALL: [FailReason; FailReason::COUNT] = [
        FailReason::UpstreamConnect,
        FailReason::NoOriginalDst,
        FailReason::Loop,
        FailReason::Socks5,
        FailReason::Reset,
        FailReason::NoEndpoint,
        FailReason::Drained,
        FailReason::UnknownTarget,
        FailReason::Denied,
        FailReason::UnknownSource,
        FailReason::NoCertificate,
        FailReason::Tls,
        FailReason::Tunnel,
        FailReason::BadRequest,
        FailReason::NoConfig,
        FailReason::WaypointUnsupported,
        FailReason::SourceAddress,
        FailReason::Overload,
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
            FailReason::UnknownSource => "unknown_source",
            FailReason::NoCertificate => "no_certificate",
            FailReason::Tls => "tls",
            FailReason::Tunnel => "tunnel",
            FailReason::BadRequest => "bad_request",
            FailReason::NoConfig => "no_config",
            FailReason::WaypointUnsupported => "waypoint_unsupported",
            FailReason::SourceAddress => "source_address",
            FailReason::Overload => "overload",
        }
    }
}

/// ztunnel's response flag of a connection that ended with `failure` (`None`:
/// completed). As in ztunnel, a connection closed by drain carries no flag, a policy
/// denial (at connect or on a re-check) is `DENY`, a missing certificate
/// `IDENTITY_ERROR`, and everything else a connection failure (`CONNECT`): a failed
/// upstream connect or tunnel handshake, a refused or reset HBONE stream. (A peer's
/// reset while relaying carries no flag either: see [`crate::failure::Failure`].)
pub(crate) fn response_flag(failure: Option<FailReason>) -> ResponseFlag {
    match failure {
        None | Some(FailReason::Drained) => ResponseFlag::None,
        Some(FailReason::Denied) => ResponseFlag::Deny,
        Some(FailReason::NoCertificate) => ResponseFlag::IdentityError,
        Some(_) => ResponseFlag::Connect,
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
    pub failed: [Counter; FailReason::COUNT],
}

impl DirectionStats {
    /// Counts one failed connection.
    pub fn count_failed(&self, reason: FailReason) {
        self.failed[reason as usize].add(1);
    }
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
    /// HBONE counters and gauges.
    pub hbone: HboneStats,
    /// Decisions by policy, for the snapshot the shard uses now.
    pub by_policy: arc_swap::ArcSwap<PolicyCounts>,
    /// The `istio_tcp_*` counters of every label set the shard has seen: appended to
    /// by the shard (once per new set), read by the control thread, without a lock.
    pub(crate) traffic: boxcar::Vec<std::sync::Arc<TrafficCounters>>,
}

/// Inbound decisions by policy of one shard: ALLOWs by the policy that allowed, DENYs
/// by the policy that denied, indexed by the snapshot's policy ids. A new snapshot gets
/// a new set, carrying the counts over by policy name.
#[derive(Debug, Default)]
pub struct PolicyCounts {
    /// The snapshot generation the ids belong to.
    pub generation: u64,
    /// `namespace/name` by policy id.
    pub names: Vec<String>,
    /// Allowed by each policy.
    pub allow: Vec<Counter>,
    /// Denied by each policy.
    pub deny: Vec<Counter>,
}

impl PolicyCounts {
    /// The set for `snapshot`, starting from the counts in `previous`.
    pub fn for_snapshot(snapshot: &zpath_control::Snapshot, previous: &PolicyCounts) -> Self {
        let carried: std::collections::HashMap<&str, (u64, u64)> = previous
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.as_str(),
                    (previous.allow[i].get(), previous.deny[i].get()),
                )
            })
            .collect();
        let names: Vec<String> = snapshot
            .compiled_policies()
            .iter()
            .map(|p| p.to_string())
            .collect();
        let counter = |v: u64| {
            let c = Counter::default();
            c.set(v);
            c
        };
        let allow = names
            .iter()
            .map(|n| counter(carried.get(n.as_str()).map_or(0, |c| c.0)))
            .collect();
        let deny = names
            .iter()
            .map(|n| counter(carried.get(n.as_str()).map_or(0, |c| c.1)))
            .collect();
        PolicyCounts {
            generation: snapshot.generation,
            names,
            allow,
            deny,
        }
    }
}

/// HTTP statuses counted one by one on CONNECT requests; others count as "other".
pub const CONNECT_STATUSES: [u16; 6] = [200, 400, 401, 403, 503, 0];

/// Labels of TLS handshake failures, in counter order (the last is "other").
pub fn tls_failure_labels() -> impl Iterator<Item = &'static str> {
    zpath_crypto::Rejection::LABELS
        .iter()
        .copied()
        .chain(TLS_SESSION_LABELS.iter().copied())
}

const TLS_SESSION_LABELS: [&str; 10] = [
    "timeout",
    "evicted",
    "source_limit",
    "alert_received",
    "protocol_error",
    "record_too_large",
    "incompatible_peer",
    "handshake_eof",
    "io_error",
    "other",
];

const TLS_LABEL_COUNT: usize = zpath_crypto::Rejection::LABELS.len() + TLS_SESSION_LABELS.len();

/// HBONE counters of one shard.
#[derive(Debug, Default)]
pub struct HboneStats {
    /// Client tunnels (HTTP/2 connections) in the pool now.
    pub tunnels: Counter,
    /// Client streams open now.
    pub client_streams: Counter,
    /// Pool keys now.
    pub pool_keys: Counter,
    /// Client tunnel handshakes started.
    pub client_handshakes: Counter,
    /// Server (15008) connections open now.
    pub server_connections: Counter,
    /// Server streams open now.
    pub server_streams: Counter,
    /// Server handshakes (TLS, then the HTTP/2 preface) pending on 15008.
    pub handshakes_in_flight: Counter,
    /// CONNECT answers received as client, by [`CONNECT_STATUSES`].
    pub client_status: [Counter; 6],
    /// CONNECT answers sent as server, by [`CONNECT_STATUSES`].
    pub server_status: [Counter; 6],
    /// TLS handshakes completed: [client, server].
    pub tls_ok: [Counter; 2],
    /// TLS handshakes failed, by side and [`tls_failure_labels`].
    pub tls_failed: [[Counter; TLS_LABEL_COUNT]; 2],
    /// HBONE connections we closed, by side ([client, server]) and [`CloseReason`].
    pub closed: [[Counter; CloseReason::ALL.len()]; 2],
}

/// Why we closed an HBONE connection (a closed set, used as a label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// TLS done, but no HTTP/2 preface within the handshake timeout.
    PrefaceTimeout = 0,
    /// No stream for the idle timeout (GOAWAY).
    Idle = 1,
    /// A PING went unanswered for the keepalive timeout.
    KeepaliveTimeout = 2,
    /// Drain started (GOAWAY; open streams finish).
    Drain = 3,
    /// A newer handshake took its place before it finished (the shard's pending
    /// handshakes were full and this was the oldest).
    Evicted = 4,
}

impl CloseReason {
    const ALL: [CloseReason; 5] = [
        CloseReason::PrefaceTimeout,
        CloseReason::Idle,
        CloseReason::KeepaliveTimeout,
        CloseReason::Drain,
        CloseReason::Evicted,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::PrefaceTimeout => "preface_timeout",
            CloseReason::Idle => "idle",
            CloseReason::KeepaliveTimeout => "keepalive_timeout",
            CloseReason::Drain => "drain",
            CloseReason::Evicted => "evicted",
        }
    }
}

/// Which end of an HBONE connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// We opened it (the tunnel pool of an outbound flow).
    Client = 0,
    /// We accepted it on 15008.
    Server = 1,
}

impl HboneStats {
    /// Counts a CONNECT answer, received as client or sent as server.
    pub fn count_status(&self, side: Side, status: u16) {
        let i = CONNECT_STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(CONNECT_STATUSES.len() - 1);
        let set = match side {
            Side::Server => &self.server_status,
            Side::Client => &self.client_status,
        };
        set[i].add(1);
    }

    /// Counts an HBONE connection we closed, on the side we are.
    pub fn count_closed(&self, side: Side, reason: CloseReason) {
        self.closed[side as usize][reason as usize].add(1);
    }

    /// Counts a TLS handshake outcome; a `failure` is a session error label or "timeout".
    pub fn count_tls(&self, side: Side, failure: Option<&str>) {
        let side = side as usize;
        match failure {
            None => self.tls_ok[side].add(1),
            Some(label) => {
                let i = tls_failure_labels()
                    .position(|l| l == label)
                    .unwrap_or(TLS_LABEL_COUNT - 1);
                self.tls_failed[side][i].add(1);
            }
        }
    }
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

/// Writes the `# HELP` and `# TYPE` lines of a metric family (`kind`: counter or gauge).
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Renders the Prometheus text exposition of all shards' counters, summed.
pub fn render_prometheus(shards: &[std::sync::Arc<ShardStats>], extra: &str) -> String {
    let mut out = String::with_capacity(4096);
    let sum = |f: &dyn Fn(&ShardStats) -> u64| shards.iter().map(|s| f(s)).sum::<u64>();
    let sets = shards
        .iter()
        .flat_map(|s| s.traffic.iter().map(|(_, c)| &**c));
    crate::traffic::render_prometheus(&mut out, sets);
    type Family = (&'static str, &'static str, fn(&DirectionStats) -> &Counter);
    let families: [Family; 4] = [
        (
            "zpath_connections_opened_total",
            "Connections accepted, by direction (istio_tcp_connections_opened_total counts those whose workloads were resolved).",
            |d| &d.opened,
        ),
        (
            "zpath_connections_closed_total",
            "Connections finished (any outcome), by direction.",
            |d| &d.closed,
        ),
        (
            "zpath_received_bytes_total",
            "Bytes from clients towards servers (Istio: received), by direction.",
            |d| &d.received_bytes,
        ),
        (
            "zpath_sent_bytes_total",
            "Bytes from servers back to clients (Istio: sent), by direction.",
            |d| &d.sent_bytes,
        ),
    ];
    for (name, help, get) in families {
        family(&mut out, name, "counter", help);
        for d in [Direction::Outbound, Direction::Inbound] {
            let v = sum(&|s| get(s.dir(d)).get());
            let _ = writeln!(out, "{name}{{direction=\"{}\"}} {v}", d.label());
        }
    }
    let name = "zpath_connections_failed_total";
    family(
        &mut out,
        name,
        "counter",
        "Connections that failed, by reason.",
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
    family(
        &mut out,
        name,
        "counter",
        "Inbound authorization decisions, by outcome and reason.",
    );
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
    family(&mut out, name, "gauge", "Connections open now, by shard.");
    for (i, s) in shards.iter().enumerate() {
        let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", s.open.get());
    }
    render_hbone(&mut out, shards);
    render_by_policy(&mut out, shards);
    out.push_str(extra);
    out
}

fn render_by_policy(out: &mut String, shards: &[std::sync::Arc<ShardStats>]) {
    let mut by_name: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for s in shards {
        let counts = s.by_policy.load();
        for (i, name) in counts.names.iter().enumerate() {
            let e = by_name.entry(name.clone()).or_default();
            e.0 += counts.allow[i].get();
            e.1 += counts.deny[i].get();
        }
    }
    let name = "zpath_policy_decisions_by_policy_total";
    family(
        out,
        name,
        "counter",
        "Inbound decisions made by each policy (the ALLOW that allowed, the DENY that denied).",
    );
    for (policy, (allow, deny)) in by_name {
        let _ = writeln!(
            out,
            "{name}{{policy=\"{policy}\",outcome=\"allow\"}} {allow}"
        );
        let _ = writeln!(out, "{name}{{policy=\"{policy}\",outcome=\"deny\"}} {deny}");
    }
}

fn render_hbone(out: &mut String, shards: &[std::sync::Arc<ShardStats>]) {
    let sum = |f: &dyn Fn(&HboneStats) -> u64| shards.iter().map(|s| f(&s.hbone)).sum::<u64>();
    type Gauge = (&'static str, &'static str, fn(&HboneStats) -> &Counter);
    let gauges: [Gauge; 6] = [
        (
            "zpath_hbone_tunnels",
            "Pooled client HBONE connections",
            |h| &h.tunnels,
        ),
        (
            "zpath_hbone_client_streams",
            "Client HBONE streams open",
            |h| &h.client_streams,
        ),
        (
            "zpath_hbone_pool_keys",
            "Keys in the HBONE connection pools",
            |h| &h.pool_keys,
        ),
        (
            "zpath_hbone_server_connections",
            "HBONE connections served on 15008",
            |h| &h.server_connections,
        ),
        (
            "zpath_hbone_server_streams",
            "HBONE streams served on 15008",
            |h| &h.server_streams,
        ),
        (
            "zpath_hbone_handshakes_in_flight",
            "Handshakes (TLS, then the HTTP/2 preface) pending on 15008",
            |h| &h.handshakes_in_flight,
        ),
    ];
    for (name, help, get) in gauges {
        family(out, name, "gauge", &format!("{help}."));
        let _ = writeln!(out, "{name} {}", sum(&|h| get(h).get()));
    }
    let name = "zpath_hbone_client_handshakes_total";
    family(out, name, "counter", "HBONE client connections started.");
    let _ = writeln!(out, "{name} {}", sum(&|h| h.client_handshakes.get()));
    let name = "zpath_hbone_connect_responses_total";
    family(out, name, "counter", "CONNECT answers, by side and status.");
    for (side, server) in [("client", false), ("server", true)] {
        for (i, status) in CONNECT_STATUSES.iter().enumerate() {
            let label = if *status == 0 {
                "other".to_string()
            } else {
                status.to_string()
            };
            let v = sum(&|h| {
                if server {
                    h.server_status[i].get()
                } else {
                    h.client_status[i].get()
                }
            });
            let _ = writeln!(out, "{name}{{side=\"{side}\",status=\"{label}\"}} {v}");
        }
    }
    let name = "zpath_hbone_connections_closed_total";
    family(
        out,
        name,
        "counter",
        "HBONE connections zpath closed, by side and reason.",
    );
    for (side, i) in [("client", 0usize), ("server", 1usize)] {
        for r in CloseReason::ALL {
            let v = sum(&|h| h.closed[i][r as usize].get());
            let _ = writeln!(
                out,
                "{name}{{side=\"{side}\",reason=\"{}\"}} {v}",
                r.label()
            );
        }
    }
    let name = "zpath_tls_handshakes_total";
    family(
        out,
        name,
        "counter",
        "TLS handshakes on HBONE connections, by side, outcome and reason.",
    );
    for (side, i) in [("client", 0usize), ("server", 1usize)] {
        let _ = writeln!(
            out,
            "{name}{{side=\"{side}\",outcome=\"ok\",reason=\"\"}} {}",
            sum(&|h| h.tls_ok[i].get())
        );
        for (j, label) in tls_failure_labels().enumerate() {
            let v = sum(&|h| h.tls_failed[i][j].get());
            let _ = writeln!(
                out,
                "{name}{{side=\"{side}\",outcome=\"failed\",reason=\"{label}\"}} {v}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn snapshot(policies: &[&str], generation: u64) -> zpath_control::Snapshot {
        let mut yaml = String::from("policies:\n");
        for p in policies {
            yaml.push_str(&format!(
                "- name: {p}\n  namespace: default\n  scope: Namespace\n  action: Deny\n  rules:\n  - - - destinationPorts: [1]\n"
            ));
        }
        let config = zpath_control::LocalConfig::parse(&yaml).unwrap();
        zpath_control::Snapshot::from_local(&config, "node", generation)
    }

    #[test]
    fn policy_counts_carry_over_by_name_across_snapshots() {
        let first = PolicyCounts::for_snapshot(&snapshot(&["a", "b"], 1), &PolicyCounts::default());
        let b = first.names.iter().position(|n| n == "default/b").unwrap();
        first.deny[b].add(3);
        // "a" goes away, "c" arrives: ids change, "b" keeps its count.
        let second = PolicyCounts::for_snapshot(&snapshot(&["c", "b"], 2), &first);
        assert_eq!(second.generation, 2);
        let b2 = second.names.iter().position(|n| n == "default/b").unwrap();
        assert_eq!(second.deny[b2].get(), 3);
        let c = second.names.iter().position(|n| n == "default/c").unwrap();
        assert_eq!(second.deny[c].get(), 0);
        assert!(!second.names.iter().any(|n| n == "default/a"));
        let stats = Arc::new(ShardStats::default());
        stats.by_policy.store(Arc::new(second));
        let text = render_prometheus(&[stats], "");
        assert!(text.contains(
            "zpath_policy_decisions_by_policy_total{policy=\"default/b\",outcome=\"deny\"} 3"
        ));
    }

    #[test]
    fn every_family_has_help_and_type_and_samples_are_well_formed() {
        let text = render_prometheus(&[Arc::new(ShardStats::default())], "");
        let lines: Vec<&str> = text.lines().collect();
        let mut families = 0;
        for (i, line) in lines.iter().enumerate() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                families += 1;
                let name = rest.split(' ').next().unwrap();
                let next = lines[i + 1];
                assert!(
                    next == format!("# TYPE {name} counter")
                        || next == format!("# TYPE {name} gauge"),
                    "{name} has no TYPE line: {next:?}"
                );
            } else if !line.starts_with('#') {
                let (_, value) = line.rsplit_once(' ').unwrap();
                assert!(value.parse::<u64>().is_ok(), "{line:?}");
            }
        }
        assert!(families >= 15, "{families} families");
    }

    #[test]
    fn prometheus_sums_shards() {
        let a = Arc::new(ShardStats::default());
        let b = Arc::new(ShardStats::default());
        a.dir(Direction::Outbound).opened.add(2);
        b.dir(Direction::Outbound).opened.add(3);
        b.dir(Direction::Inbound).count_failed(FailReason::Loop);
        a.open.add(4);
        a.open.sub(1);
        let text = render_prometheus(&[a, b], "");
        assert!(
            text.contains("zpath_connections_opened_total{direction=\"outbound\"} 5"),
            "{text}"
        );
        assert!(text
            .contains("zpath_connections_failed_total{direction=\"inbound\",reason=\"loop\"} 1"));
        assert!(text.contains("zpath_open_connections{shard=\"0\"} 3"));
    }

    #[test]
    fn flags_follow_ztunnels_classification() {
        assert_eq!(response_flag(None), ResponseFlag::None);
        assert_eq!(response_flag(Some(FailReason::Drained)), ResponseFlag::None);
        assert_eq!(response_flag(Some(FailReason::Denied)), ResponseFlag::Deny);
        assert_eq!(
            response_flag(Some(FailReason::NoCertificate)),
            ResponseFlag::IdentityError
        );
        for r in [
            FailReason::UpstreamConnect,
            FailReason::Tls,
            FailReason::Tunnel,
            FailReason::Reset,
        ] {
            assert_eq!(response_flag(Some(r)), ResponseFlag::Connect);
        }
    }
}
