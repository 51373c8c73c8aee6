//! The engine's configuration: plain data with [`EngineConfig::validate`]. Only the
//! binary reads flags and the environment to fill it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::buffers::BufferConfig;

/// Everything the engine needs to start.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Captured outbound listener (15001); `None` disables it.
    pub outbound_addr: Option<SocketAddr>,
    /// Captured inbound plaintext listener (15006); `None` disables it.
    pub inbound_addr: Option<SocketAddr>,
    /// HBONE listener (15008); reserved as one of our own ports (loop protection).
    pub hbone_addr: Option<SocketAddr>,
    /// SOCKS5 listener (127.0.0.1:15080); `None` disables it.
    pub socks5_addr: Option<SocketAddr>,
    /// Admin listener (config dump), on the control thread.
    pub admin_addr: Option<SocketAddr>,
    /// Prometheus listener, on the control thread.
    pub metrics_addr: Option<SocketAddr>,
    /// Readiness listener, on the control thread.
    pub readiness_addr: Option<SocketAddr>,
    /// Local config file; `None`: an empty configuration (everything is passthrough).
    pub config_file: Option<PathBuf>,
    /// Where state that must survive a restart is kept.
    pub state_dir: PathBuf,
    /// This node's name: workloads whose `node` equals it are served here.
    pub node_name: String,
    /// The CPU of each shard (one shard per entry).
    pub cores: Vec<usize>,
    /// How long in-flight connections may finish after SIGTERM before being aborted.
    pub drain_deadline: Duration,
    /// `SO_MARK` on upstream sockets (0: none).
    pub packet_mark: u32,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Time a SOCKS5 client has to send its greeting and request.
    pub socks5_handshake_timeout: Duration,
    /// io_uring submission queue depth per shard.
    pub ring_depth: usize,
    /// io_uring registered I/O memory per shard, in bytes.
    pub io_memory: usize,
    /// Relay buffer sizing per shard.
    pub buffers: BufferConfig,
    /// Listen backlog of every data-path listener.
    pub accept_backlog: i32,
    /// How often the config file is checked for changes.
    pub config_poll: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let any = |port: u16| Some(SocketAddr::from(([0, 0, 0, 0], port)));
        let lo = |port: u16| Some(SocketAddr::from(([127, 0, 0, 1], port)));
        Self {
            outbound_addr: any(15001),
            inbound_addr: any(15006),
            hbone_addr: any(15008),
            socks5_addr: lo(15080),
            admin_addr: lo(15000),
            metrics_addr: any(15020),
            readiness_addr: any(15021),
            config_file: None,
            state_dir: PathBuf::from("/var/lib/zpath"),
            node_name: String::new(),
            cores: vec![0],
            drain_deadline: Duration::from_secs(5),
            packet_mark: 1337,
            connect_timeout: Duration::from_secs(10),
            socks5_handshake_timeout: Duration::from_secs(10),
            ring_depth: 128,
            io_memory: 2 << 20,
            buffers: BufferConfig::default(),
            accept_backlog: 1024,
            config_poll: Duration::from_secs(1),
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
    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<(), ConfigInvalid> {
        if self.cores.is_empty() {
            return Err(invalid("--cores", "at least one core is needed"));
        }
        let mut cores = self.cores.clone();
        cores.sort_unstable();
        cores.dedup();
        if cores.len() != self.cores.len() {
            return Err(invalid("--cores", "a core is listed twice"));
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

    #[test]
    fn defaults_are_valid() {
        EngineConfig::default().validate().unwrap();
    }

    #[test]
    fn overlapping_listeners_are_rejected() {
        let cfg = EngineConfig {
            socks5_addr: Some("127.0.0.1:15001".parse().unwrap()),
            ..EngineConfig::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("--outbound-addr") && e.contains("--socks5-addr"),
            "{e}"
        );
    }

    #[test]
    fn buffer_bounds_are_checked() {
        let mut cfg = EngineConfig::default();
        cfg.buffers.min = 512;
        assert!(cfg.validate().is_err());
        cfg.buffers.min = 1 << 20;
        cfg.buffers.max = 1 << 19;
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn duplicate_cores_are_rejected() {
        let cfg = EngineConfig {
            cores: vec![0, 0],
            ..EngineConfig::default()
        };
        assert!(cfg.validate().is_err());
    }
}
