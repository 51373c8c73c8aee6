//! The `zpath` node daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use zpath_engine::buffers::BufferConfig;
use zpath_engine::{Daemon, EngineConfig};

/// zpath: a node dataplane for Istio ambient mode (drop-in for ztunnel).
///
/// Memory: each shard registers --io-memory with io_uring and keeps up to 64 free relay
/// buffers per size class; each live connection holds two relay buffers between
/// --buffer-min and --buffer-max bytes.
#[derive(Debug, Parser)]
#[command(name = "zpath", version, about, long_about = None)]
struct Args {
    /// Local config file (ztunnel's local-config YAML: workloads, services, policies).
    /// Reloaded when it changes and on SIGHUP. Without it, every destination is passthrough.
    #[arg(long, env = "ZPATH_CONFIG")]
    config: Option<PathBuf>,
    /// Captured outbound listener (iptables REDIRECT target); "off" disables it.
    #[arg(long, env = "ZPATH_OUTBOUND_ADDR", default_value = "0.0.0.0:15001", value_parser = listen_addr)]
    outbound_addr: Listen,
    /// Captured inbound plaintext listener; "off" disables it.
    #[arg(long, env = "ZPATH_INBOUND_ADDR", default_value = "0.0.0.0:15006", value_parser = listen_addr)]
    inbound_addr: Listen,
    /// HBONE (mTLS HTTP/2 CONNECT) port, kept out of relay targets.
    #[arg(long, env = "ZPATH_HBONE_ADDR", default_value = "0.0.0.0:15008", value_parser = listen_addr)]
    hbone_addr: Listen,
    /// SOCKS5 entry for hosts without capture (no auth, CONNECT); "off" disables it.
    #[arg(long, env = "ZPATH_SOCKS5_ADDR", default_value = "127.0.0.1:15080", value_parser = listen_addr)]
    socks5_addr: Listen,
    /// Admin endpoint (GET /config_dump); "off" disables it.
    #[arg(long, env = "ZPATH_ADMIN_ADDR", default_value = "127.0.0.1:15000", value_parser = listen_addr)]
    admin_addr: Listen,
    /// Prometheus endpoint (GET /stats/prometheus, /metrics); "off" disables it.
    #[arg(long, env = "ZPATH_METRICS_ADDR", default_value = "0.0.0.0:15020", value_parser = listen_addr)]
    metrics_addr: Listen,
    /// Readiness endpoint (GET /healthz/ready); "off" disables it.
    #[arg(long, env = "ZPATH_READINESS_ADDR", default_value = "0.0.0.0:15021", value_parser = listen_addr)]
    readiness_addr: Listen,
    /// Where state that must survive a restart is kept
    /// [default: /var/lib/zpath as root, else $XDG_STATE_HOME/zpath or ~/.local/state/zpath].
    #[arg(long, env = "ZPATH_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// This node's name; workloads whose `node` equals it are served here [default: the host name].
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// CPUs to run shards on, one shard each, e.g. "0,1" or "0-3" [default: every allowed CPU].
    #[arg(long, env = "ZPATH_CORES", conflicts_with = "shards", value_parser = core_list)]
    cores: Option<CoreList>,
    /// Number of shards, on the first N allowed CPUs (alternative to --cores).
    #[arg(long, env = "ZPATH_SHARDS")]
    shards: Option<usize>,
    /// After SIGTERM/SIGINT, how long connections may finish before being aborted.
    #[arg(long, env = "ZPATH_DRAIN_DEADLINE", default_value = "5s", value_parser = duration)]
    drain_deadline: Duration,
    /// SO_MARK on zpath's own upstream sockets, so capture rules can skip them (0: none).
    #[arg(long, env = "ZPATH_PACKET_MARK", default_value_t = 1337)]
    packet_mark: u32,
    /// Upstream connect timeout.
    #[arg(long, env = "ZPATH_CONNECT_TIMEOUT", default_value = "10s", value_parser = duration)]
    connect_timeout: Duration,
    /// Time a SOCKS5 client has to complete its greeting and request.
    #[arg(long, env = "ZPATH_SOCKS5_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration)]
    socks5_handshake_timeout: Duration,
    /// io_uring ring depth per shard (each entry ~64 B of submission + completion queue).
    #[arg(long, env = "ZPATH_RING_DEPTH", default_value_t = 128)]
    ring_depth: usize,
    /// io_uring registered I/O memory per shard, in bytes (locked memory: this much per shard).
    #[arg(long, env = "ZPATH_IO_MEMORY", default_value_t = 2 << 20)]
    io_memory: usize,
    /// First relay buffer of each direction, in bytes (idle cost: 2 x this per connection).
    #[arg(long, env = "ZPATH_BUFFER_MIN", default_value_t = 4096)]
    buffer_min: usize,
    /// Largest relay buffer a busy direction grows to (worst case: 2 x this per connection).
    #[arg(long, env = "ZPATH_BUFFER_MAX", default_value_t = 1024 * 1024)]
    buffer_max: usize,
    /// Listen backlog of each data-path listener, per shard.
    #[arg(long, env = "ZPATH_ACCEPT_BACKLOG", default_value_t = 1024)]
    accept_backlog: i32,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "zpath_engine=debug".
    #[arg(long, env = "ZPATH_LOG", default_value = "info")]
    log: String,
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

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 5s or 500ms: {e}"))
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

impl Args {
    fn into_config(self) -> Result<EngineConfig, String> {
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
            socks5_addr: self.socks5_addr,
            admin_addr: self.admin_addr,
            metrics_addr: self.metrics_addr,
            readiness_addr: self.readiness_addr,
            config_file: self.config,
            state_dir: self.state_dir.unwrap_or_else(default_state_dir),
            node_name: self.node_name.unwrap_or_else(host_name),
            cores,
            drain_deadline: self.drain_deadline,
            packet_mark: self.packet_mark,
            connect_timeout: self.connect_timeout,
            socks5_handshake_timeout: self.socks5_handshake_timeout,
            ring_depth: self.ring_depth,
            io_memory: self.io_memory,
            buffers: BufferConfig {
                min: self.buffer_min,
                max: self.buffer_max,
                ..BufferConfig::default()
            },
            accept_backlog: self.accept_backlog,
            ..EngineConfig::default()
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("zpath: error: {e}");
            return ExitCode::from(2);
        }
    };
    let daemon = match Daemon::start(cfg) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("zpath: error: {e}");
            return ExitCode::from(2);
        }
    };
    match daemon.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zpath: error: {e}");
            ExitCode::FAILURE
        }
    }
}
