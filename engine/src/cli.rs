//! The `zpath` binary's command line: flags (each with its `ZPATH_*` variable) and what
//! they become, an [`EngineConfig`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use zpath_engine::config::{
    AdminLimits, BufferConfig, HandshakeLimits, Keepalive, Steering, TcpKeepalive,
};
use zpath_engine::EngineConfig;

/// zpath: a node dataplane for Istio ambient mode (drop-in for ztunnel).
///
/// Memory: each shard registers --io-memory with io_uring and keeps up to 64 free relay
/// buffers per size class; each live connection holds two relay buffers between
/// --buffer-min and --buffer-max bytes.
#[derive(Debug, Parser)]
#[command(name = "zpath", version, about, long_about = None)]
pub(crate) struct Args {
    /// Local config file (ztunnel's local-config YAML: workloads, services, policies).
    /// Reloaded when it changes and on SIGHUP. One of --config, --xds-address and
    /// --no-control-plane is needed.
    #[arg(long, env = "ZPATH_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Captured outbound listener (iptables REDIRECT target); "off" disables it.
    #[arg(long, env = "ZPATH_OUTBOUND_ADDR", default_value = "[::]:15001", value_parser = listen_addr)]
    pub(crate) outbound_addr: Listen,
    /// Captured inbound plaintext listener; "off" disables it.
    #[arg(long, env = "ZPATH_INBOUND_ADDR", default_value = "[::]:15006", value_parser = listen_addr)]
    pub(crate) inbound_addr: Listen,
    /// HBONE (mTLS HTTP/2 CONNECT) port, kept out of relay targets.
    #[arg(long, env = "ZPATH_HBONE_ADDR", default_value = "[::]:15008", value_parser = listen_addr)]
    pub(crate) hbone_addr: Listen,
    /// SOCKS5 entry for hosts without capture (no auth, CONNECT); "off" disables it.
    /// The client's source address picks the workload (and certificate) it speaks for,
    /// so any local process can use it: it is on by default only when the configuration
    /// is local (--config, or none), off when it comes from istiod (--xds-address)
    /// [default: 127.0.0.1:15080 without --xds-address, off with it].
    #[arg(long, env = "ZPATH_SOCKS5_ADDR", value_parser = listen_addr)]
    pub(crate) socks5_addr: Option<Listen>,
    /// Admin endpoint (GET /config_dump); "off" disables it.
    #[arg(long, env = "ZPATH_ADMIN_ADDR", default_value = "127.0.0.1:15000", value_parser = listen_addr)]
    pub(crate) admin_addr: Listen,
    /// Prometheus endpoint (GET /stats/prometheus, /metrics); "off" disables it.
    #[arg(long, env = "ZPATH_METRICS_ADDR", default_value = "[::]:15020", value_parser = listen_addr)]
    pub(crate) metrics_addr: Listen,
    /// Readiness endpoint (GET /healthz/ready); "off" disables it.
    #[arg(long, env = "ZPATH_READINESS_ADDR", default_value = "[::]:15021", value_parser = listen_addr)]
    pub(crate) readiness_addr: Listen,
    /// Where state that must survive a restart is kept
    /// [default: /var/lib/zpath as root, else $XDG_STATE_HOME/zpath or ~/.local/state/zpath].
    #[arg(long, env = "ZPATH_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// This node's name; workloads whose `node` equals it are served here [default: the host name].
    #[arg(long, env = "NODE_NAME")]
    pub(crate) node_name: Option<String>,
    /// CPUs to run shards on, one shard each, e.g. "0,1" or "0-3" [default: every allowed CPU].
    #[arg(long, env = "ZPATH_CORES", conflicts_with = "shards", value_parser = core_list)]
    pub(crate) cores: Option<CoreList>,
    /// Number of shards, on the first N allowed CPUs (alternative to --cores); more
    /// than the CPUs allowed needs --unpinned.
    #[arg(long, env = "ZPATH_SHARDS")]
    pub(crate) shards: Option<usize>,
    /// Leave shard threads unpinned: the kernel moves them between CPUs. Pinned (the
    /// default) keeps each shard's memory and caches on one CPU; unpinned lets the
    /// kernel balance shards against other busy processes.
    #[arg(long, env = "ZPATH_UNPINNED")]
    pub(crate) unpinned: bool,
    /// How new connections are spread over shards: `hash` (of the addresses: even
    /// spread whatever CPU connections arrive on) or `cpu` (to the shard on the CPU that
    /// received the connection, so a flow's wakeups stay on one CPU: more connections
    /// per second, and lower latency when CPUs are busy; but connections received on
    /// one CPU, e.g. from a NIC whose interrupts all go to one CPU, load one shard;
    /// needs pinned shards and Linux 6.2+).
    #[arg(long, env = "ZPATH_STEERING", default_value = "hash", value_parser = steering)]
    pub(crate) steering: Steering,
    /// After SIGTERM/SIGINT, how long connections may finish before being aborted.
    #[arg(long, env = "ZPATH_DRAIN_DEADLINE", default_value = "5s", value_parser = duration_flag)]
    pub(crate) drain_deadline: Duration,
    /// SO_MARK on zpath's own upstream sockets, so capture rules can skip them (0: none).
    #[arg(long, env = "ZPATH_PACKET_MARK", default_value_t = 1337)]
    pub(crate) packet_mark: u32,
    /// Upstream connect timeout.
    #[arg(long, env = "ZPATH_CONNECT_TIMEOUT", default_value = "10s", value_parser = duration_flag)]
    pub(crate) connect_timeout: Duration,
    /// Time a SOCKS5 client has to complete its greeting and request.
    #[arg(long, env = "ZPATH_SOCKS5_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration_flag)]
    pub(crate) socks5_handshake_timeout: Duration,
    /// io_uring submission queue entries per shard (each ~64 B, plus 4 completion entries
    /// of 16 B; the completion queue has at least 4096).
    #[arg(long, env = "ZPATH_RING_DEPTH", default_value_t = 256)]
    pub(crate) ring_depth: usize,
    /// Large receive buffers per shard, in bytes: the provided-buffer ring of 64 KiB
    /// buffers (rounded down to a power of two of them, 8 to 32768) a connection moves
    /// to when its receives fill the small ones (every shard also has 256 small buffers
    /// of 2 KiB). A connection holds at most 8 buffers, only while their bytes wait to be
    /// sent on; an idle one holds none.
    #[arg(long, env = "ZPATH_IO_MEMORY", default_value_t = 4 << 20)]
    pub(crate) io_memory: usize,
    /// First read of each direction of an HBONE stream, in bytes.
    #[arg(long, env = "ZPATH_BUFFER_MIN", default_value_t = 4096)]
    pub(crate) buffer_min: usize,
    /// Largest read a busy HBONE stream direction grows to.
    #[arg(long, env = "ZPATH_BUFFER_MAX", default_value_t = 1024 * 1024)]
    pub(crate) buffer_max: usize,
    /// Listen backlog of each data-path listener, per shard.
    #[arg(long, env = "ZPATH_ACCEPT_BACKLOG", default_value_t = 1024)]
    pub(crate) accept_backlog: i32,
    /// Connections one shard serves at once (15001, 15006, SOCKS5 and 15008 together);
    /// more are reset at accept and counted as failed with reason "overload". Memory:
    /// ~5 KiB per idle passthrough connection (it holds no receive buffer), so ~80 MiB per
    /// shard at the default; a busy one holds up to 8 receive buffers per direction
    /// (HBONE streams also 2 x --buffer-max of reads and 2 x --tls-buffer).
    #[arg(long, env = "ZPATH_MAX_CONNECTIONS_PER_SHARD", default_value_t = 16384)]
    pub(crate) max_connections_per_shard: usize,
    /// Idle time before TCP keepalive probes start on accepted and upstream data-path
    /// sockets (ztunnel's default); 0 turns keepalive off.
    #[arg(long, env = "ZPATH_KEEPALIVE_TIME", default_value = "180s", value_parser = duration_flag)]
    pub(crate) keepalive_time: Duration,
    /// Time between TCP keepalive probes.
    #[arg(long, env = "ZPATH_KEEPALIVE_INTERVAL", default_value = "180s", value_parser = duration_flag)]
    pub(crate) keepalive_interval: Duration,
    /// Unanswered TCP keepalive probes before the kernel resets the connection.
    #[arg(long, env = "ZPATH_KEEPALIVE_RETRIES", default_value_t = 9)]
    pub(crate) keepalive_retries: u32,
    /// Time a client of the admin, metrics or readiness endpoint has to send a
    /// request's headers; also how long a kept-alive connection waits for its next request.
    #[arg(long, env = "ZPATH_ADMIN_HEADER_TIMEOUT", default_value = "2s", value_parser = duration_flag)]
    pub(crate) admin_header_timeout: Duration,
    /// An admin, metrics or readiness connection on which nothing is read or written
    /// this long is closed (a client that stops reading its answer).
    #[arg(long, env = "ZPATH_ADMIN_IDLE_TIMEOUT", default_value = "30s", value_parser = duration_flag)]
    pub(crate) admin_idle_timeout: Duration,
    /// Connections each of the admin, metrics and readiness endpoints holds at once;
    /// more are closed at accept (memory: ~10 KiB each).
    #[arg(long, env = "ZPATH_ADMIN_MAX_CONNECTIONS", default_value_t = 128)]
    pub(crate) admin_max_connections: usize,
    /// Descriptors the admin, metrics and readiness endpoints leave to the data path and
    /// the control thread: they refuse connections once the process holds more than its
    /// open-file limit (raised to the hard limit at start) minus this; at most half the
    /// limit. The data path itself stops 64 descriptors before the limit, for xDS and the CA.
    #[arg(long, env = "ZPATH_FD_RESERVE", default_value_t = 1024)]
    pub(crate) fd_reserve: u64,
    /// Mesh root certificate (PEM) the built-in CA issues from; with --ca-key. Two nodes
    /// (or a node and another mesh proxy) given the same root trust each other
    /// [default: a root created once and kept in --state-dir].
    #[arg(long, env = "ZPATH_CA_CERT", requires = "ca_key")]
    pub(crate) ca_cert: Option<PathBuf>,
    /// Private key (PEM; ECDSA or RSA) of --ca-cert.
    #[arg(long, env = "ZPATH_CA_KEY", requires = "ca_cert")]
    pub(crate) ca_key: Option<PathBuf>,
    /// Lifetime of the workload certificates zpath issues; each is renewed at half of it.
    #[arg(long, env = "ZPATH_CERT_LIFETIME", default_value = "24h", value_parser = duration_flag)]
    pub(crate) cert_lifetime: Duration,
    /// Time a TLS handshake on an HBONE connection may take before it is closed.
    #[arg(long, env = "ZPATH_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration_flag)]
    pub(crate) handshake_timeout: Duration,
    /// TLS handshakes (with the HTTP/2 preface after them) pending at once on 15008, per
    /// shard; past it the oldest is aborted to admit the newest (memory: up to 3 x
    /// --tls-buffer each).
    #[arg(long, env = "ZPATH_HANDSHAKE_MAX_PENDING", default_value_t = 256)]
    pub(crate) handshake_max_pending: usize,
    /// Handshakes pending at once on 15008 per shard from one source (an IPv4 address
    /// or an IPv6 /64); more from it are refused.
    #[arg(long, env = "ZPATH_HANDSHAKE_MAX_PER_SOURCE", default_value_t = 16)]
    pub(crate) handshake_max_per_source: usize,
    /// Time between HTTP/2 PINGs on every HBONE connection (client and server side).
    #[arg(long, env = "ZPATH_HBONE_KEEPALIVE_INTERVAL", default_value = "10s", value_parser = duration_flag)]
    pub(crate) hbone_keepalive_interval: Duration,
    /// An HBONE connection whose peer leaves a PING unanswered this long is closed.
    #[arg(long, env = "ZPATH_HBONE_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = duration_flag)]
    pub(crate) hbone_keepalive_timeout: Duration,
    /// An HBONE connection we serve that carries no stream this long is closed (GOAWAY).
    #[arg(long, env = "ZPATH_HBONE_IDLE_TIMEOUT", default_value = "10m", value_parser = duration_flag)]
    pub(crate) hbone_idle_timeout: Duration,
    /// Streams one pooled HBONE connection carries before another is opened.
    #[arg(long, env = "ZPATH_POOL_MAX_STREAMS", default_value_t = 100)]
    pub(crate) pool_max_streams: u32,
    /// Idle pooled HBONE connections are closed after this long.
    #[arg(long, env = "ZPATH_POOL_IDLE_TIMEOUT", default_value = "5m", value_parser = duration_flag)]
    pub(crate) pool_idle_timeout: Duration,
    /// TLS session buffer per direction of each HBONE connection, in bytes
    /// (memory: 2 x this per HBONE connection).
    #[arg(long, env = "ZPATH_TLS_BUFFER", default_value_t = 256 << 10)]
    pub(crate) tls_buffer: usize,
    /// Cluster id sent in the baggage of HBONE requests and to istiod.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub(crate) cluster_id: String,
    /// istiod's xDS address, e.g. https://istiod.istio-system.svc:15012; replaces the
    /// local config file (delta ADS for istio.workload.Address and
    /// istio.security.Authorization).
    #[arg(long, env = "ZPATH_XDS_ADDRESS", conflicts_with = "config")]
    pub(crate) xds_address: Option<String>,
    /// Run on an empty configuration, with neither --config nor --xds-address: every
    /// outbound connection is passthrough and no workload is served here. Without this,
    /// zpath refuses to start with no configuration source.
    #[arg(long, env = "ZPATH_NO_CONTROL_PLANE", conflicts_with_all = ["config", "xds_address"])]
    pub(crate) no_control_plane: bool,
    /// Root certificate (PEM) that signs istiod's (and the CA's) TLS certificate.
    #[arg(long, env = "ZPATH_XDS_ROOT_CERT")]
    pub(crate) xds_root_cert: Option<PathBuf>,
    /// Name istiod's TLS certificate is checked for instead of the --xds-address host.
    #[arg(long, env = "ZPATH_XDS_SERVER_NAME")]
    pub(crate) xds_server_name: Option<String>,
    /// Name the CA's TLS certificate is checked for instead of the --ca-address host.
    #[arg(long, env = "ZPATH_CA_SERVER_NAME")]
    pub(crate) ca_server_name: Option<String>,
    /// The Istio CA (IstioCertificateService), e.g. https://istiod.istio-system.svc:15012;
    /// workload certificates are then requested there instead of the built-in CA.
    #[arg(long, env = "ZPATH_CA_ADDRESS", conflicts_with_all = ["ca_cert", "ca_key"])]
    pub(crate) ca_address: Option<String>,
    /// Mesh root(s) (PEM) certificates from --ca-address must chain to [default: --xds-root-cert].
    #[arg(long, env = "ZPATH_CA_ROOT_CERT")]
    pub(crate) ca_root_cert: Option<PathBuf>,
    /// Service account token sent to istiod and the CA as a bearer token (re-read per request).
    #[arg(long, env = "ZPATH_CA_TOKEN_FILE")]
    pub(crate) ca_token_file: Option<PathBuf>,
    /// This proxy's pod name (node id sent to istiod).
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub(crate) pod_name: String,
    /// This proxy's pod namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pub(crate) pod_namespace: String,
    /// This proxy's pod IP(s), comma-separated.
    #[arg(long, env = "INSTANCE_IP", default_value = "")]
    pub(crate) instance_ip: String,
    /// HTTP/2 receive window of one HBONE stream, in bytes (memory: up to this much
    /// buffered per stream).
    #[arg(long, env = "ZPATH_H2_STREAM_WINDOW", default_value_t = 16 << 20)]
    pub(crate) h2_stream_window: u32,
    /// HTTP/2 receive window of one HBONE connection, in bytes (memory: the most a
    /// connection buffers for all its streams together).
    #[arg(long, env = "ZPATH_H2_CONNECTION_WINDOW", default_value_t = 32 << 20)]
    pub(crate) h2_connection_window: u32,
    /// Largest HTTP/2 frame accepted, in bytes (16384..16777215; memory: one frame
    /// buffer of this size per connection while a large frame arrives).
    #[arg(long, env = "ZPATH_H2_MAX_FRAME_SIZE", default_value_t = 1 << 20)]
    pub(crate) h2_max_frame_size: u32,
    /// Streams a peer may open at once on one HBONE connection we serve (memory: a
    /// few hundred bytes of state per stream plus its window).
    #[arg(long, env = "ZPATH_H2_MAX_CONCURRENT_STREAMS", default_value_t = 200)]
    pub(crate) h2_max_concurrent_streams: u32,
    /// Largest request header list accepted, in bytes; bounds CONTINUATION floods
    /// (memory: up to this much per request being received).
    #[arg(long, env = "ZPATH_H2_MAX_HEADER_LIST_SIZE", default_value_t = 64 << 10)]
    pub(crate) h2_max_header_list_size: u32,
    /// Bytes one HBONE stream may queue for sending (memory: up to this per stream).
    #[arg(long, env = "ZPATH_H2_MAX_SEND_BUFFER", default_value_t = 4 << 20)]
    pub(crate) h2_max_send_buffer: usize,
    /// Streams a peer may reset before we accept them (rapid-reset protection; more
    /// ends the connection; memory: ~100 bytes each).
    #[arg(long, env = "ZPATH_H2_MAX_PENDING_RESETS", default_value_t = 100)]
    pub(crate) h2_max_pending_resets: usize,
    /// Streams we may reset for a peer's protocol errors before ending its connection.
    #[arg(long, env = "ZPATH_H2_MAX_LOCAL_ERROR_RESETS", default_value_t = 1024)]
    pub(crate) h2_max_local_error_resets: usize,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "zpath_engine=debug".
    #[arg(long, env = "ZPATH_LOG", default_value = "info")]
    pub(crate) log: String,
    /// The access log (target `access`, ztunnel's fields): a line per connection
    /// opened (debug) and completed (info; error when it failed, rate-limited).
    #[arg(long, env = "ZPATH_ACCESS_LOG", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    pub(crate) access_log: bool,
    /// How log lines are written: plain text or one JSON object per line.
    #[arg(long, env = "ZPATH_LOG_FORMAT", value_enum, default_value = "plain")]
    pub(crate) log_format: LogFormat,
    /// Node metadata for istiod, from ztunnel's `ISTIO_META_*`.
    #[arg(skip)]
    pub(crate) node_metadata: BTreeMap<String, String>,
    /// Structured node metadata for istiod, from ztunnel's `ISTIO_METAJSON_*`.
    #[arg(skip)]
    pub(crate) node_json_metadata: BTreeMap<String, serde_json::Value>,
    /// Extra gRPC metadata on the xDS stream, from ztunnel's `XDS_HEADER_*`.
    #[arg(skip)]
    pub(crate) xds_headers: Vec<(String, String)>,
    /// Extra gRPC metadata on certificate requests, from ztunnel's `CA_HEADER_*`.
    #[arg(skip)]
    pub(crate) ca_headers: Vec<(String, String)>,
}

type Listen = Option<SocketAddr>;
type CoreList = Vec<usize>;

fn listen_addr(s: &str) -> Result<Listen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| format!("{s:?} is not an address like 0.0.0.0:15001 (or \"off\")"))
}

fn core_list(s: &str) -> Result<CoreList, String> {
    let mut cores = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} is not a core number or range like 0-3");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                cores.extend(a..=b);
            }
            None => cores.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cores.is_empty() {
        return Err("no core given".into());
    }
    Ok(cores)
}

/// A duration flag: as ztunnel's durations (see [`duration`]), named in the error.
fn duration_flag(s: &str) -> Result<Duration, String> {
    duration(s).map_err(|e| format!("{s:?}: {e}"))
}

fn default_state_dir() -> PathBuf {
    // SAFETY-free check: geteuid has no preconditions; use the environment instead of libc.
    let root = std::env::var("USER").is_ok_and(|u| u == "root")
        || std::env::var("HOME").is_ok_and(|h| h == "/root");
    if root {
        return PathBuf::from("/var/lib/zpath");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(x).join("zpath");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/zpath")
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?}: use on or off")),
    }
}

fn steering(s: &str) -> Result<Steering, String> {
    match s {
        "hash" => Ok(Steering::Hash),
        "cpu" => Ok(Steering::Cpu),
        other => Err(format!("{other:?} is not a steering: use hash or cpu")),
    }
}

impl Args {
    pub(crate) fn into_config(self) -> Result<EngineConfig, String> {
        let allowed = zpath_engine::sys::allowed_cpus();
        let cores = match (self.cores, self.shards) {
            (Some(c), _) => {
                if let Some(bad) = c.iter().find(|c| !allowed.contains(c)) {
                    return Err(format!("--cores: CPU {bad} is not available to this process (allowed: {allowed:?})"));
                }
                c
            }
            (None, Some(0)) => return Err("--shards must be at least 1".into()),
            (None, Some(n)) => (0..n).map(|i| allowed[i % allowed.len()]).collect(),
            (None, None) => allowed,
        };
        Ok(EngineConfig {
            outbound_addr: self.outbound_addr,
            inbound_addr: self.inbound_addr,
            hbone_addr: self.hbone_addr,
            socks5_addr: self
                .socks5_addr
                .unwrap_or_else(|| EngineConfig::default_socks5_addr(self.xds_address.is_some())),
            admin_addr: self.admin_addr,
            metrics_addr: self.metrics_addr,
            readiness_addr: self.readiness_addr,
            config_file: self.config,
            no_control_plane: self.no_control_plane,
            state_dir: self.state_dir.unwrap_or_else(default_state_dir),
            node_name: self.node_name.unwrap_or_else(host_name),
            cores,
            pin_shards: !self.unpinned,
            steering: self.steering,
            drain_deadline: self.drain_deadline,
            packet_mark: self.packet_mark,
            connect_timeout: self.connect_timeout,
            socks5_handshake_timeout: self.socks5_handshake_timeout,
            ring_depth: self.ring_depth,
            io_memory: self.io_memory,
            buffers: BufferConfig {
                min: self.buffer_min,
                max: self.buffer_max,
            },
            accept_backlog: self.accept_backlog,
            max_connections_per_shard: self.max_connections_per_shard,
            tcp_keepalive: (!self.keepalive_time.is_zero()).then_some(TcpKeepalive {
                time: self.keepalive_time,
                interval: self.keepalive_interval,
                retries: self.keepalive_retries,
            }),
            admin: AdminLimits {
                header_timeout: self.admin_header_timeout,
                idle_timeout: self.admin_idle_timeout,
                max_connections: self.admin_max_connections,
            },
            fd_reserve: self.fd_reserve,
            ca_cert: self.ca_cert,
            ca_key: self.ca_key,
            cert_lifetime: self.cert_lifetime,
            handshake_timeout: self.handshake_timeout,
            handshakes: HandshakeLimits {
                max_pending: self.handshake_max_pending,
                max_per_source: self.handshake_max_per_source,
            },
            keepalive: Keepalive {
                interval: self.hbone_keepalive_interval,
                timeout: self.hbone_keepalive_timeout,
            },
            hbone_idle_timeout: self.hbone_idle_timeout,
            pool_max_streams: self.pool_max_streams,
            pool_idle_timeout: self.pool_idle_timeout,
            tls_buffer: self.tls_buffer,
            cluster_id: self.cluster_id,
            xds_address: self.xds_address,
            xds_root_cert: self.xds_root_cert,
            ca_address: self.ca_address,
            ca_root_cert: self.ca_root_cert,
            token_file: self.ca_token_file,
            pod_name: self.pod_name,
            pod_namespace: self.pod_namespace,
            instance_ip: self.instance_ip,
            node_metadata: self.node_metadata,
            node_json_metadata: self.node_json_metadata,
            xds_server_name: self.xds_server_name,
            ca_server_name: self.ca_server_name,
            xds_headers: self.xds_headers,
            ca_headers: self.ca_headers,
            h2: zpath_tunnel::H2Settings {
                stream_window: self.h2_stream_window,
                connection_window: self.h2_connection_window,
                max_frame_size: self.h2_max_frame_size,
                max_concurrent_streams: self.h2_max_concurrent_streams,
                max_header_list_size: self.h2_max_header_list_size,
                max_send_buffer: self.h2_max_send_buffer,
                max_pending_accept_reset_streams: self.h2_max_pending_resets,
                max_local_error_reset_streams: self.h2_max_local_error_resets,
                ..zpath_tunnel::H2Settings::default()
            },
            ..EngineConfig::default()
        })
    }
}

/// The log filter to start with: `log`, with the access log turned off in it unless
/// `access_log` (so `/logging?reset` keeps it off, and one filter decides every line).
pub(crate) fn log_filter(log: &str, access_log: bool) -> String {
    if access_log {
        log.to_string()
    } else {
        format!("{log},access=off")
    }
}

/// ztunnel's durations: `30s`, `5m`, `500ms`, `1h`, or a bare number of seconds.
pub(crate) fn duration(v: &str) -> Result<Duration, String> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v
            .parse()
            .map(Duration::from_secs)
            .map_err(|e: std::num::ParseIntError| e.to_string());
    }
    humantime::parse_duration(v).map_err(|e| format!("not a duration like 5s or 500ms: {e}"))
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// ztunnel's `LOG_FORMAT`: `json`, anything else is plain.
    pub(crate) fn from_ztunnel(v: &str) -> Self {
        match v {
            "json" => LogFormat::Json,
            _ => LogFormat::Plain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_off_is_a_clause_of_the_log_filter() {
        assert_eq!(log_filter("info", true), "info");
        assert_eq!(log_filter("info,h2=warn", false), "info,h2=warn,access=off");
        let args = Args::try_parse_from(["zpath", "--access-log", "off"]).expect("flags parse");
        assert!(!args.access_log);
        // The filter it makes parses, and turns off exactly the access target.
        let filter = tracing_subscriber::EnvFilter::try_new(log_filter("debug", false)).unwrap();
        let mut clauses: Vec<String> = filter.to_string().split(',').map(str::to_owned).collect();
        clauses.sort();
        assert_eq!(clauses, ["access=off", "debug"]);
    }

    fn socks5_of(args: &[&str]) -> Option<SocketAddr> {
        let args = Args::try_parse_from(std::iter::once("zpath").chain(args.iter().copied()))
            .expect("flags parse");
        args.into_config().expect("valid flags").socks5_addr
    }

    #[test]
    fn socks5_is_on_by_default_only_with_a_local_configuration() {
        let on = Some(SocketAddr::from(([127, 0, 0, 1], 15080)));
        assert_eq!(socks5_of(&[]), on);
        assert_eq!(socks5_of(&["--config", "/dev/null"]), on);
        assert_eq!(
            socks5_of(&["--xds-address", "https://istiod:15012"]),
            None,
            "off by default when the configuration comes from istiod"
        );
    }

    #[test]
    fn the_socks5_flag_overrides_the_default_either_way() {
        let given = Some(SocketAddr::from(([127, 0, 0, 1], 1080)));
        assert_eq!(
            socks5_of(&[
                "--xds-address",
                "https://istiod:15012",
                "--socks5-addr",
                "127.0.0.1:1080"
            ]),
            given
        );
        assert_eq!(socks5_of(&["--socks5-addr", "off"]), None);
    }
}
