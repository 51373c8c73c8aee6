//! The engine's configuration: plain data with [`EngineConfig::validate`]. Only the
//! binary reads flags and the environment to fill it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::keepalive::Keepalive;
pub use crate::shard::buffers::BufferConfig;
pub use crate::shard::handshakes::HandshakeLimits;

/// How the kernel picks the shard of a new connection among the shards' `SO_REUSEPORT`
/// listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Steering {
    /// By a hash of the connection's addresses: even spread, whatever CPU it arrived on.
    #[default]
    Hash,
    /// To the shard on the CPU that received the connection (`SO_INCOMING_CPU`, Linux
    /// 6.2+; the hash for CPUs without a shard): the client's CPU on loopback and
    /// veth, the receive queue's CPU for a NIC. Keeps a flow's wakeups on one CPU.
    /// Its cost: connections received on one CPU all load one shard (one client
    /// thread opening every connection, a NIC whose interrupts all go to one CPU).
    /// Needs pinned shards; unpinned, the hash is used.
    Cpu,
}

/// TCP keepalive probes on data-path sockets (ztunnel's defaults: 180 s idle, then
/// every 180 s, 9 unanswered probes end the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// Idle time before the first probe (`TCP_KEEPIDLE`).
    pub time: Duration,
    /// Time between probes (`TCP_KEEPINTVL`).
    pub interval: Duration,
    /// Unanswered probes before the kernel resets the connection (`TCP_KEEPCNT`).
    pub retries: u32,
}

impl Default for TcpKeepalive {
    fn default() -> Self {
        Self {
            time: Duration::from_secs(180),
            interval: Duration::from_secs(180),
            retries: 9,
        }
    }
}

/// Limits of the admin, metrics and readiness endpoints (each endpoint on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Time a client has to send a request's headers; also how long a kept-alive
    /// connection may wait for its next request. Default 2 s, as ztunnel's.
    pub header_timeout: Duration,
    /// A connection on which nothing is read or written this long is closed (e.g. a
    /// client that stops reading its answer). Default 30 s.
    pub idle_timeout: Duration,
    /// Connections one endpoint holds at once; more are closed at accept. Default 128
    /// (memory: ~10 KiB each, plus an answer being written).
    pub max_connections: usize,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            max_connections: 128,
        }
    }
}

/// Everything the engine needs to start.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Captured outbound listener (15001); `None` disables it.
    pub outbound_addr: Option<SocketAddr>,
    /// Captured inbound plaintext listener (15006); `None` disables it.
    pub inbound_addr: Option<SocketAddr>,
    /// HBONE listener (15008); reserved as one of our own ports (loop protection).
    pub hbone_addr: Option<SocketAddr>,
    /// SOCKS5 listener; `None` disables it. Default: see
    /// [`EngineConfig::default_socks5_addr`] (on, as this default has no xDS).
    pub socks5_addr: Option<SocketAddr>,
    /// Admin listener (config dump), on the control thread.
    pub admin_addr: Option<SocketAddr>,
    /// Prometheus listener, on the control thread.
    pub metrics_addr: Option<SocketAddr>,
    /// Readiness listener, on the control thread.
    pub readiness_addr: Option<SocketAddr>,
    /// Local config file; `None` with no xDS address either is refused unless
    /// `no_control_plane` says so.
    pub config_file: Option<PathBuf>,
    /// Run on an empty configuration, with neither a config file nor xDS: asked for
    /// explicitly, since everything outbound is then passthrough and nothing is local.
    pub no_control_plane: bool,
    /// Where state that must survive a restart is kept.
    pub state_dir: PathBuf,
    /// This node's name: workloads whose `node` equals it are served here.
    pub node_name: String,
    /// The CPU of each shard (one shard per entry).
    pub cores: Vec<usize>,
    /// Whether each shard's thread is pinned to its CPU (else the kernel places it);
    /// default: pinned.
    pub pin_shards: bool,
    /// How new connections are spread over the shards' listeners; default: by hash.
    pub steering: Steering,
    /// How long in-flight connections may finish after SIGTERM before being aborted.
    pub drain_deadline: Duration,
    /// `SO_MARK` on upstream sockets (0: none).
    pub packet_mark: u32,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Time a SOCKS5 client has to send its greeting and request.
    pub socks5_handshake_timeout: Duration,
    /// io_uring submission queue entries per shard.
    pub ring_depth: usize,
    /// Bytes of large provided receive buffers per shard (64 KiB each).
    pub io_memory: usize,
    /// Relay buffer sizing per shard.
    pub buffers: BufferConfig,
    /// Listen backlog of every data-path listener.
    pub accept_backlog: i32,
    /// Connections one shard serves at once (15001, 15006, SOCKS5 and 15008
    /// together); more are refused at accept, counted as `overload`. Default 16384:
    /// ~10 KiB each when idle (2 x `buffers.min` plus state), 160 MiB per shard at the
    /// cap; busy passthrough up to 2 x `buffers.max` each, HBONE 2 x `tls_buffer`.
    pub max_connections_per_shard: usize,
    /// TCP keepalive on accepted and upstream data-path sockets; `None`: off.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Limits of the admin, metrics and readiness endpoints.
    pub admin: AdminLimits,
    /// Descriptors the admin endpoints leave to the data path and the control thread:
    /// they refuse connections once the process holds more than its open-file limit
    /// minus this (at most half the limit). Default 1024.
    pub fd_reserve: u64,
    /// How often the config file is checked for changes.
    pub config_poll: Duration,
    /// Mesh root certificate (PEM) to issue from; `None`: the root kept in `state_dir`.
    pub ca_cert: Option<PathBuf>,
    /// The root's private key (PEM, ECDSA or RSA); given together with `ca_cert`.
    pub ca_key: Option<PathBuf>,
    /// Lifetime of issued workload certificates (renewed at half of it).
    pub cert_lifetime: Duration,
    /// Time a TLS handshake may take on an HBONE connection; on 15008 it also bounds
    /// the HTTP/2 preface after it.
    pub handshake_timeout: Duration,
    /// Pending 15008 handshakes per shard and per source (memory: up to 3 x
    /// --tls-buffer each, allocated as the handshake needs it).
    pub handshakes: HandshakeLimits,
    /// HTTP/2 PING keepalive of every HBONE connection, client and server side.
    pub keepalive: Keepalive,
    /// HBONE connections we serve are closed (GOAWAY) after carrying no stream for
    /// this long.
    pub hbone_idle_timeout: Duration,
    /// HTTP/2 windows and limits of HBONE connections.
    pub h2: zpath_tunnel::H2Settings,
    /// Streams one pooled HBONE connection carries before another is opened.
    pub pool_max_streams: u32,
    /// Idle pooled HBONE connections are closed after this long.
    pub pool_idle_timeout: Duration,
    /// Buffer size of each direction of a TLS session, in bytes.
    pub tls_buffer: usize,
    /// Cluster id sent in the `baggage` of HBONE requests and to istiod.
    pub cluster_id: String,
    /// istiod's xDS address (`https://host:port`); set, it replaces the local config file.
    pub xds_address: Option<String>,
    /// Root certificate (PEM) of istiod's TLS certificate (and of the CA's).
    pub xds_root_cert: Option<PathBuf>,
    /// The Istio CA's address; set, workload certificates come from it instead of the
    /// built-in CA.
    pub ca_address: Option<String>,
    /// The mesh root(s) (PEM) certificates from the remote CA must chain to; defaults
    /// to `xds_root_cert`.
    pub ca_root_cert: Option<PathBuf>,
    /// Bearer token file for istiod and the CA (re-read per request).
    pub token_file: Option<PathBuf>,
    /// This proxy's pod name, IP and namespace, as istiod knows them.
    pub pod_name: String,
    /// This proxy's pod namespace.
    pub pod_namespace: String,
    /// This proxy's pod IP(s).
    pub instance_ip: String,
    /// Extra node metadata sent to istiod (ztunnel's `ISTIO_META_*`, prefix stripped).
    pub node_metadata: BTreeMap<String, String>,
    /// Extra structured node metadata (ztunnel's `ISTIO_METAJSON_*`).
    pub node_json_metadata: BTreeMap<String, serde_json::Value>,
    /// Name istiod's certificate is verified against instead of the address host.
    pub xds_server_name: Option<String>,
    /// Name the CA's certificate is verified against instead of the address host.
    pub ca_server_name: Option<String>,
    /// Extra gRPC metadata on the xDS stream (ztunnel's `XDS_HEADER_*`).
    pub xds_headers: Vec<(String, String)>,
    /// Extra gRPC metadata on certificate requests (ztunnel's `CA_HEADER_*`).
    pub ca_headers: Vec<(String, String)>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        // Dual-stack wildcard, as ztunnel listens (`0.0.0.0` on a host without IPv6).
        let any = |port: u16| Some(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)));
        let lo = |port: u16| Some(SocketAddr::from(([127, 0, 0, 1], port)));
        Self {
            outbound_addr: any(15001),
            inbound_addr: any(15006),
            hbone_addr: any(15008),
            socks5_addr: Self::default_socks5_addr(false),
            admin_addr: lo(15000),
            metrics_addr: any(15020),
            readiness_addr: any(15021),
            config_file: None,
            no_control_plane: false,
            state_dir: PathBuf::from("/var/lib/zpath"),
            node_name: String::new(),
            cores: vec![0],
            pin_shards: true,
            steering: Steering::Hash,
            drain_deadline: Duration::from_secs(5),
            packet_mark: 1337,
            connect_timeout: Duration::from_secs(10),
            socks5_handshake_timeout: Duration::from_secs(10),
            ring_depth: 256,
            io_memory: 4 << 20,
            buffers: BufferConfig::default(),
            accept_backlog: 1024,
            max_connections_per_shard: 16384,
            tcp_keepalive: Some(TcpKeepalive::default()),
            admin: AdminLimits::default(),
            fd_reserve: 1024,
            config_poll: Duration::from_secs(1),
            ca_cert: None,
            ca_key: None,
            cert_lifetime: Duration::from_secs(24 * 3600),
            handshake_timeout: Duration::from_secs(10),
            handshakes: HandshakeLimits::default(),
            keepalive: Keepalive::default(),
            hbone_idle_timeout: Duration::from_secs(600),
            h2: zpath_tunnel::H2Settings::default(),
            pool_max_streams: 100,
            pool_idle_timeout: Duration::from_secs(300),
            tls_buffer: 256 << 10,
            cluster_id: "Kubernetes".into(),
            xds_address: None,
            xds_root_cert: None,
            ca_address: None,
            ca_root_cert: None,
            token_file: None,
            pod_name: String::new(),
            pod_namespace: String::new(),
            instance_ip: String::new(),
            node_metadata: BTreeMap::new(),
            node_json_metadata: BTreeMap::new(),
            xds_server_name: None,
            ca_server_name: None,
            xds_headers: Vec::new(),
            ca_headers: Vec::new(),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {message}")]
pub struct ConfigInvalid {
    /// The flag at fault.
    pub setting: &'static str,
    /// Why.
    pub message: String,
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigInvalid {
    ConfigInvalid {
        setting,
        message: message.into(),
    }
}

impl EngineConfig {
    /// The SOCKS5 listener when no flag names one: `127.0.0.1:15080` when the
    /// configuration is local (file or none), off when it comes from xDS. SOCKS5 lets
    /// any local process speak for the workload whose address it binds, which a
    /// single-host setup accepts and a cluster node must not by default (ztunnel's is
    /// off by default).
    pub fn default_socks5_addr(xds: bool) -> Option<SocketAddr> {
        (!xds).then_some(SocketAddr::from(([127, 0, 0, 1], 15080)))
    }

    /// Whether connections are steered to the shard of their CPU: asked for, and the
    /// shards are pinned (each on its own CPU, as [`EngineConfig::validate`] requires).
    pub fn steers_by_cpu(&self) -> bool {
        self.steering == Steering::Cpu && self.pin_shards
    }

    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<(), ConfigInvalid> {
        if self.cores.is_empty() {
            return Err(invalid("--cores", "at least one core is needed"));
        }
        let mut cores = self.cores.clone();
        cores.sort_unstable();
        cores.dedup();
        if cores.len() != self.cores.len() && self.pin_shards {
            return Err(invalid(
                "--cores",
                "two pinned shards on one CPU (a core listed twice, or --shards above the CPUs \
                 allowed); use --unpinned to run more shards than CPUs",
            ));
        }
        let b = self.buffers;
        if b.min < 1024 || b.min > b.max {
            return Err(invalid(
                "--buffer-min",
                "must be at least 1024 and at most --buffer-max",
            ));
        }
        if b.max > 16 << 20 {
            return Err(invalid("--buffer-max", "must be at most 16 MiB"));
        }
        if !(8..=32768).contains(&self.ring_depth) {
            return Err(invalid("--ring-depth", "must be between 8 and 32768"));
        }
        if !((512 << 10)..=(2 << 30)).contains(&self.io_memory) {
            return Err(invalid(
                "--io-memory",
                "must be between 512 KiB (8 receive buffers) and 2 GiB",
            ));
        }
        if self.drain_deadline > Duration::from_secs(3600) {
            return Err(invalid("--drain-deadline", "must be at most one hour"));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("--connect-timeout", "must be more than zero"));
        }
        if self.socks5_handshake_timeout.is_zero() {
            return Err(invalid(
                "--socks5-handshake-timeout",
                "must be more than zero",
            ));
        }
        let sources = usize::from(self.config_file.is_some())
            + usize::from(self.xds_address.is_some())
            + usize::from(self.no_control_plane);
        if sources == 0 {
            return Err(invalid(
                "--config",
                "no configuration source: give --config FILE or --xds-address URL \
                 (--no-control-plane runs on an empty configuration)",
            ));
        }
        if let Some(address) = &self.xds_address {
            if address.starts_with("https://") && self.xds_root_cert.is_none() {
                return Err(invalid(
                    "--xds-root-cert",
                    format!(
                        "xDS at {address} needs the root certificate of istiod's TLS \
                         certificate (ztunnel's XDS_ROOT_CA; the Istio chart mounts it at \
                         ./var/run/secrets/istio/root-cert.pem); or run on a local file \
                         (--config FILE) or on nothing (--no-control-plane)"
                    ),
                ));
            }
        }
        if self.no_control_plane && sources > 1 {
            return Err(invalid(
                "--no-control-plane",
                "an empty configuration and --config or --xds-address are alternatives",
            ));
        }
        if self.xds_address.is_some() && self.config_file.is_some() {
            return Err(invalid(
                "--xds-address",
                "the local config file (--config) and xDS are alternatives; give one",
            ));
        }
        if self.ca_address.is_some() && self.ca_cert.is_some() {
            return Err(invalid(
                "--ca-address",
                "a remote CA (--ca-address) and a built-in root (--ca-cert) are alternatives",
            ));
        }
        if self.ca_address.is_some() && self.ca_root_cert.is_none() && self.xds_root_cert.is_none()
        {
            return Err(invalid(
                "--ca-address",
                "the remote CA needs the mesh root: give --ca-root-cert (or --xds-root-cert)",
            ));
        }
        if self.ca_cert.is_some() != self.ca_key.is_some() {
            return Err(invalid("--ca-cert", "--ca-cert and --ca-key go together"));
        }
        if self.cert_lifetime < Duration::from_secs(10) {
            return Err(invalid("--cert-lifetime", "must be at least 10 seconds"));
        }
        if self.handshake_timeout.is_zero() {
            return Err(invalid("--handshake-timeout", "must be more than zero"));
        }
        if self.handshakes.max_pending == 0 {
            return Err(invalid("--handshake-max-pending", "must be at least 1"));
        }
        if self.handshakes.max_per_source == 0 {
            return Err(invalid("--handshake-max-per-source", "must be at least 1"));
        }
        if self.keepalive.interval.is_zero() {
            return Err(invalid(
                "--hbone-keepalive-interval",
                "must be more than zero",
            ));
        }
        if self.keepalive.timeout.is_zero() {
            return Err(invalid(
                "--hbone-keepalive-timeout",
                "must be more than zero",
            ));
        }
        if self.hbone_idle_timeout.is_zero() {
            return Err(invalid("--hbone-idle-timeout", "must be more than zero"));
        }
        if self.max_connections_per_shard == 0 {
            return Err(invalid("--max-connections-per-shard", "must be at least 1"));
        }
        if let Some(k) = self.tcp_keepalive {
            if k.time < Duration::from_secs(1) || k.interval < Duration::from_secs(1) {
                return Err(invalid(
                    "--keepalive-time",
                    "keepalive time and interval must be at least 1 s (0 disables keepalive)",
                ));
            }
            if k.retries == 0 || k.retries > 127 {
                return Err(invalid("--keepalive-retries", "must be between 1 and 127"));
            }
        }
        if self.admin.header_timeout.is_zero() || self.admin.idle_timeout.is_zero() {
            return Err(invalid(
                "--admin-header-timeout",
                "admin header and idle timeouts must be more than zero",
            ));
        }
        if self.admin.max_connections == 0 {
            return Err(invalid("--admin-max-connections", "must be at least 1"));
        }
        if self.pool_max_streams == 0 {
            return Err(invalid("--pool-max-streams", "must be at least 1"));
        }
        if self.tls_buffer < zpath_crypto::SessionBuffers::MIN_SIZE || self.tls_buffer > 16 << 20 {
            return Err(invalid(
                "--tls-buffer",
                format!(
                    "must be between {} bytes and 16 MiB",
                    zpath_crypto::SessionBuffers::MIN_SIZE
                ),
            ));
        }
        self.h2
            .validate()
            .map_err(|e| invalid("--h2-*", e.to_string()))?;
        let named = [
            ("--outbound-addr", self.outbound_addr),
            ("--inbound-addr", self.inbound_addr),
            ("--hbone-addr", self.hbone_addr),
            ("--socks5-addr", self.socks5_addr),
            ("--admin-addr", self.admin_addr),
            ("--metrics-addr", self.metrics_addr),
            ("--readiness-addr", self.readiness_addr),
        ];
        for (i, (name, a)) in named.iter().enumerate() {
            let Some(a) = a else { continue };
            if a.port() == 0 {
                continue;
            }
            for (other, b) in &named[i + 1..] {
                if b.is_some_and(|b| {
                    b.port() == a.port()
                        && (b.ip() == a.ip() || b.ip().is_unspecified() || a.ip().is_unspecified())
                }) {
                    return Err(invalid(name, format!("{a} overlaps {other}")));
                }
            }
        }
        Ok(())
    }

    /// Worst-case relay buffer memory of one connection (both directions at the maximum).
    pub fn max_buffer_per_connection(&self) -> usize {
        2 * self.buffers.max.next_power_of_two()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults with a configuration source (they have none of their own).
    fn configured() -> EngineConfig {
        EngineConfig {
            config_file: Some("local.yaml".into()),
            ..EngineConfig::default()
        }
    }

    #[test]
    fn defaults_are_valid_once_a_configuration_source_is_given() {
        configured().validate().unwrap();
    }

    #[test]
    fn no_configuration_source_is_refused_unless_asked_for_explicitly() {
        let e = EngineConfig::default().validate().unwrap_err();
        assert_eq!(e.setting, "--config");
        assert!(e.to_string().contains("no configuration source"), "{e}");
        let empty = EngineConfig {
            no_control_plane: true,
            ..EngineConfig::default()
        };
        empty.validate().unwrap();
        let both = EngineConfig {
            no_control_plane: true,
            ..configured()
        };
        assert_eq!(both.validate().unwrap_err().setting, "--no-control-plane");
    }

    #[test]
    fn overlapping_listeners_are_rejected() {
        let cfg = EngineConfig {
            socks5_addr: Some("127.0.0.1:15001".parse().unwrap()),
            ..configured()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("--outbound-addr") && e.contains("--socks5-addr"),
            "{e}"
        );
    }

    #[test]
    fn zero_keepalive_idle_and_handshake_limits_are_rejected() {
        let named = |cfg: EngineConfig| cfg.validate().unwrap_err().setting;
        let mut cfg = configured();
        cfg.keepalive.interval = Duration::ZERO;
        assert_eq!(named(cfg), "--hbone-keepalive-interval");
        let mut cfg = configured();
        cfg.keepalive.timeout = Duration::ZERO;
        assert_eq!(named(cfg), "--hbone-keepalive-timeout");
        let cfg = EngineConfig {
            hbone_idle_timeout: Duration::ZERO,
            ..configured()
        };
        assert_eq!(named(cfg), "--hbone-idle-timeout");
        let mut cfg = configured();
        cfg.handshakes.max_per_source = 0;
        assert_eq!(named(cfg), "--handshake-max-per-source");
        let mut cfg = configured();
        cfg.handshakes.max_pending = 0;
        assert_eq!(named(cfg), "--handshake-max-pending");
    }

    #[test]
    fn buffer_bounds_are_checked() {
        let mut cfg = configured();
        cfg.buffers.min = 512;
        assert!(cfg.validate().is_err());
        cfg.buffers.min = 1 << 20;
        cfg.buffers.max = 1 << 19;
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn two_pinned_shards_on_one_cpu_are_rejected_unpinned_they_run() {
        let mut cfg = EngineConfig {
            cores: vec![0, 0],
            pin_shards: true,
            ..configured()
        };
        let e = cfg.validate().unwrap_err();
        assert!(e.to_string().contains("--unpinned"), "{e}");
        cfg.pin_shards = false;
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn steering_by_cpu_needs_pinned_shards() {
        let cfg = |pin_shards, steering| EngineConfig {
            cores: vec![1, 0],
            pin_shards,
            steering,
            ..configured()
        };
        assert!(cfg(true, Steering::Cpu).steers_by_cpu());
        assert!(!cfg(false, Steering::Cpu).steers_by_cpu());
        assert!(!cfg(true, Steering::Hash).steers_by_cpu());
        assert_eq!(configured().steering, Steering::Hash);
    }
}
