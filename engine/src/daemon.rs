//! The composition root: loads the configuration, binds every listener, starts one shard
//! per core and runs the control thread (config reloads, admin endpoints, signals, drain).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::{error, info, warn};
use zpath_control::watch::FileSource;
use zpath_control::{Snapshot, SnapshotCell};

use crate::admin::{self, AdminState, Endpoints};
use crate::config::{ConfigInvalid, EngineConfig};
use crate::shard::{self, BoundAddrs, ShardHandle, ShardMsg};
use crate::sys;

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A flag is invalid.
    #[error(transparent)]
    Settings(#[from] ConfigInvalid),
    /// The local config file is invalid.
    #[error("{0}")]
    Config(#[from] zpath_control::ConfigError),
    /// A socket, thread or runtime could not be set up.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A started daemon: shards are listening; [`Daemon::run`] runs the control thread.
pub struct Daemon {
    cfg: Arc<EngineConfig>,
    shards: Vec<ShardHandle>,
    state: Arc<AdminState>,
    source: FileSource,
    admin: Vec<(std::net::TcpListener, Endpoints)>,
    addrs: Arc<BoundAddrs>,
}

impl Daemon {
    /// Validates `cfg`, loads the config file, binds and starts the shards.
    pub fn start(cfg: EngineConfig) -> Result<Daemon, StartError> {
        cfg.validate()?;
        let cfg = Arc::new(cfg);
        let cell = Arc::new(SnapshotCell::new(Snapshot::default()));
        let mut source =
            FileSource::new(cfg.config_file.clone(), cfg.node_name.clone(), cell.clone());
        source.reload()?;
        let mut admin = Vec::new();
        let mut reserved = Vec::new();
        for (addr, which) in [
            (cfg.admin_addr, Endpoints::Admin),
            (cfg.metrics_addr, Endpoints::Metrics),
            (cfg.readiness_addr, Endpoints::Readiness),
        ] {
            if let Some(addr) = addr {
                let l = admin::bind(addr)?;
                reserved.push(l.local_addr()?);
                admin.push((l, which));
            }
        }
        reserved.extend(cfg.hbone_addr);
        // Resolve `:0` ports once, so every shard binds the same port.
        let mut holds = Vec::new();
        let mut resolve = |a: Option<SocketAddr>| -> std::io::Result<Option<SocketAddr>> {
            let Some(a) = a else { return Ok(None) };
            if a.port() != 0 {
                return Ok(Some(a));
            }
            let s = sys::bind_reuseport(a)?;
            let bound = s
                .local_addr()?
                .as_socket()
                .ok_or_else(|| std::io::Error::other("no address"))?;
            holds.push(s);
            Ok(Some(bound))
        };
        let addrs = Arc::new(BoundAddrs {
            outbound: resolve(cfg.outbound_addr)?,
            inbound: resolve(cfg.inbound_addr)?,
            socks5: resolve(cfg.socks5_addr)?,
            reserved,
        });
        let mut shards = Vec::with_capacity(cfg.cores.len());
        for (id, &core) in cfg.cores.iter().enumerate() {
            shards.push(shard::spawn(
                id,
                core,
                cfg.clone(),
                addrs.clone(),
                cell.clone(),
            )?);
        }
        drop(holds);
        let state = Arc::new(AdminState {
            shards: shards.iter().map(|s| s.stats.clone()).collect(),
            snapshots: cell,
            reloads: source.stats(),
            draining: Default::default(),
        });
        info!(
            shards = shards.len(),
            outbound = ?addrs.outbound,
            inbound = ?addrs.inbound,
            socks5 = ?addrs.socks5,
            "zpath started"
        );
        Ok(Daemon {
            cfg,
            shards,
            state,
            source,
            admin,
            addrs,
        })
    }

    /// The data-path addresses the shards listen on.
    pub fn addrs(&self) -> &BoundAddrs {
        &self.addrs
    }

    /// Runs the control thread until SIGTERM/SIGINT and the drain that follows.
    pub fn run(self) -> Result<(), StartError> {
        let handle = std::thread::Builder::new()
            .name("zpath-control".into())
            .spawn(move || self.control())?;
        handle
            .join()
            .map_err(|_| std::io::Error::other("control thread panicked"))?
    }

    fn control(self) -> Result<(), StartError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let Daemon {
            cfg,
            mut shards,
            state,
            mut source,
            admin,
            ..
        } = self;
        rt.block_on(async {
            for (l, which) in admin {
                let l = tokio::net::TcpListener::from_std(l)?;
                tokio::spawn(admin::serve(l, state.clone(), which));
            }
            wait_for_stop(&cfg, &mut source, &shards).await?;
            state.draining.store(true, Ordering::Relaxed);
            let deadline = Instant::now() + cfg.drain_deadline;
            info!(deadline = ?cfg.drain_deadline, "draining: no new connections");
            for s in &shards {
                s.send(ShardMsg::Drain { deadline });
            }
            let joined = tokio::task::spawn_blocking(move || {
                for s in &mut shards {
                    s.join();
                }
            });
            if joined.await.is_err() {
                error!("a shard panicked while draining");
            }
            info!("drained; exiting");
            Ok::<(), StartError>(())
        })
    }
}

async fn wait_for_stop(
    cfg: &EngineConfig,
    source: &mut FileSource,
    shards: &[ShardHandle],
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(cfg.config_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let result = tokio::select! {
            _ = tick.tick() => source.reload_if_changed(),
            _ = hup.recv() => Some(source.reload()),
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        };
        match result {
            None => {}
            Some(Ok(generation)) => {
                info!(generation, "config reloaded");
                for s in shards {
                    s.send(ShardMsg::SnapshotChanged);
                }
            }
            Some(Err(e)) => warn!("config reload rejected, keeping the previous one: {e}"),
        }
    }
}
