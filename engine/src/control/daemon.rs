//! The composition root: loads the configuration, binds every listener, starts one shard
//! per core and runs the control thread (config reloads, admin endpoints, signals, drain).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tracing::{error, info, warn};
use zpath_control::watch::FileSource;
use zpath_control::{Snapshot, SnapshotCell};

use zpath_crypto::LocalCa;

use crate::config::{ConfigInvalid, EngineConfig, Steering};
use crate::control::admin::{self, AdminState, Endpoints};
use crate::control::certs::{CertCell, CertManager, Issuer};
use crate::fds::FdBudget;
use crate::shard::addrs::BoundAddrs;
use crate::shard::run::{self as shard, ShardHandle, ShardMsg};
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
    /// The certificate authority could not be loaded or created.
    #[error("certificate authority: {0}")]
    Ca(String),
    /// The xDS client could not be set up.
    #[error("xDS: {0}")]
    Xds(String),
}

/// A started daemon: shards are listening; [`Daemon::run`] runs the control thread.
pub struct Daemon {
    cfg: Arc<EngineConfig>,
    shards: Vec<ShardHandle>,
    state: Arc<AdminState>,
    source: FileSource,
    certs: CertManager,
    /// Signalled by a shard whose connection waits for a certificate.
    certs_wanted: Arc<tokio::sync::Notify>,
    admin: Vec<(std::net::TcpListener, Endpoints)>,
    addrs: Arc<BoundAddrs>,
}

impl Daemon {
    /// Validates `cfg`, loads the config file, binds and starts the shards.
    pub fn start(cfg: EngineConfig) -> Result<Daemon, StartError> {
        cfg.validate()?;
        let fds = fd_budget(&cfg);
        let cfg = Arc::new(cfg);
        let cell = Arc::new(SnapshotCell::new(Snapshot::default()));
        let mut source =
            FileSource::new(cfg.config_file.clone(), cfg.node_name.clone(), cell.clone());
        if cfg.xds_address.is_none() {
            source.reload()?;
        }
        // A remote CA client needs the control thread's runtime: it is set up there.
        let issuer = match cfg.ca_address {
            None => Some(Issuer::Local(Box::new(load_ca(&cfg)?))),
            Some(_) => None,
        };
        let cert_cell = Arc::new(CertCell::default());
        let mut certs = CertManager::new(issuer, cfg.cert_lifetime, cert_cell.clone());
        certs.sync(&cell.load(), SystemTime::now());
        // Wildcard listeners are `[::]` (dual-stack, as ztunnel's); a host without IPv6
        // gets `0.0.0.0` instead.
        let ipv6 = sys::ipv6_available();
        if !ipv6 {
            warn!("this host has no IPv6: wildcard listeners bind 0.0.0.0 instead of [::]");
        }
        let usable = |a: Option<SocketAddr>| a.map(|a| sys::usable_wildcard(a, ipv6));
        let mut admin = Vec::new();
        let mut reserved = Vec::new();
        for (addr, which) in [
            (cfg.admin_addr, Endpoints::Admin),
            (cfg.metrics_addr, Endpoints::Metrics),
            (cfg.readiness_addr, Endpoints::Readiness),
        ] {
            if let Some(addr) = usable(addr) {
                let l = admin::bind(addr)?;
                reserved.push(l.local_addr()?);
                admin.push((l, which));
            }
        }
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
            outbound: resolve(usable(cfg.outbound_addr))?,
            inbound: resolve(usable(cfg.inbound_addr))?,
            socks5: resolve(usable(cfg.socks5_addr))?,
            hbone: resolve(usable(cfg.hbone_addr))?,
            reserved,
        });
        if cfg.steering == Steering::Cpu && !cfg.steers_by_cpu() {
            tracing::warn!("--steering cpu needs pinned shards: spreading by hash instead");
        }
        let certs_wanted = Arc::new(tokio::sync::Notify::new());
        let mut shards = Vec::with_capacity(cfg.cores.len());
        for (id, &core) in cfg.cores.iter().enumerate() {
            shards.push(shard::spawn(
                id,
                core,
                cfg.clone(),
                addrs.clone(),
                cell.clone(),
                shard::CertSource {
                    cell: cert_cell.clone(),
                    wanted: certs_wanted.clone(),
                },
                fds,
            )?);
        }
        drop(holds);
        let state = Arc::new(AdminState {
            shards: shards.iter().map(|s| s.stats.clone()).collect(),
            snapshots: cell,
            reloads: source.stats(),
            draining: Default::default(),
            certs: certs.cell(),
            certs_ready: certs.ready(),
            certs_issued: certs.issued(),
            xds: Default::default(),
            limits: cfg.admin,
            fds,
            endpoints: Default::default(),
            quit: Default::default(),
            istio_version: cfg
                .node_metadata
                .get("ISTIO_VERSION")
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
        });
        info!(
            shards = shards.len(),
            outbound = ?addrs.outbound,
            inbound = ?addrs.inbound,
            socks5 = ?addrs.socks5,
            hbone = ?addrs.hbone,
            "zpath started"
        );
        Ok(Daemon {
            cfg,
            shards,
            state,
            source,
            certs,
            certs_wanted,
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
            mut certs,
            certs_wanted,
            admin,
            ..
        } = self;
        rt.block_on(async {
            for (l, which) in admin {
                let l = tokio::net::TcpListener::from_std(l)?;
                tokio::spawn(admin::serve(l, state.clone(), which));
            }
            if let Some(ca) = remote_ca(&cfg)? {
                certs.set_issuer(Issuer::Remote(Arc::new(ca)));
            }
            let (stop_xds, xds_stopped) = tokio::sync::oneshot::channel::<()>();
            let xds = match xds_source(&cfg, &state)? {
                Some(source) => {
                    state.xds.get_or_init(|| source.stats());
                    Some(tokio::spawn(async move {
                        source
                            .run(async {
                                let _ = xds_stopped.await;
                            })
                            .await;
                    }))
                }
                None => None,
            };
            wait_for_stop(
                &cfg,
                &mut source,
                &mut certs,
                &certs_wanted,
                &state,
                &shards,
            )
            .await?;
            let _ = stop_xds.send(());
            if let Some(x) = xds {
                let _ = x.await;
            }
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
    certs: &mut CertManager,
    certs_wanted: &tokio::sync::Notify,
    state: &AdminState,
    shards: &[ShardHandle],
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(cfg.config_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let file = cfg.xds_address.is_none();
    let mut fetched = certs.take_fetched();
    let mut notified = state.snapshots.generation();
    let mut certs_notified = certs.generation();
    loop {
        let result = tokio::select! {
            _ = tick.tick() => if file { source.reload_if_changed() } else { None },
            _ = hup.recv() => if file { Some(source.reload()) } else { None },
            Some(f) = async { match fetched.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                certs.install(f, SystemTime::now());
                None
            }
            // A connection waits for a certificate: fetch it now, not at the next tick.
            _ = certs_wanted.notified() => None,
            _ = term.recv() => return Ok(()),
            () = state.quit.notified() => return Ok(()),
            _ = int.recv() => return Ok(()),
        };
        match result {
            None => {}
            Some(Ok(generation)) => info!(generation, "config reloaded"),
            Some(Err(e)) => warn!("config reload rejected, keeping the previous one: {e}"),
        }
        // Whoever published (file or xDS), the shards re-check their connections.
        let generation = state.snapshots.generation();
        if generation != notified {
            notified = generation;
            for s in shards {
                s.send(ShardMsg::SnapshotChanged);
            }
        }
        // New workloads get their certificates; due ones are renewed (half-life).
        certs.sync(&state.snapshots.load(), SystemTime::now());
        // Connections waiting for a certificate are woken by their shard.
        if certs.generation() != certs_notified {
            certs_notified = certs.generation();
            for s in shards {
                s.send(ShardMsg::CertsChanged);
            }
        }
    }
}

/// Raises the open-file limit to the hard limit and shares it out (see [`FdBudget`]).
fn fd_budget(cfg: &EngineConfig) -> FdBudget {
    let limit = match sys::raise_fd_limit() {
        Ok(l) => l,
        Err(e) => {
            warn!("cannot raise the open-file limit: {e}");
            sys::fd_limit().unwrap_or(1024)
        }
    };
    // Two descriptors per passthrough connection (client and upstream).
    let wanted = (cfg.cores.len() as u64)
        .saturating_mul(cfg.max_connections_per_shard as u64)
        .saturating_mul(2);
    if wanted > limit {
        warn!(
            limit,
            wanted,
            "the open-file limit is below 2 x --max-connections-per-shard x shards: \
             connections beyond it are refused as overload"
        );
    }
    FdBudget::new(limit, cfg.fd_reserve)
}

/// The remote CA client, when `--ca-address` is set (inside the control runtime).
fn remote_ca(cfg: &EngineConfig) -> Result<Option<zpath_control::ca_client::CaClient>, StartError> {
    let Some(address) = &cfg.ca_address else {
        return Ok(None);
    };
    let roots = cfg
        .ca_root_cert
        .clone()
        .or_else(|| cfg.xds_root_cert.clone())
        .ok_or_else(|| StartError::Ca("--ca-address needs --ca-root-cert".into()))?;
    let mut c = zpath_control::ca_client::CaClientConfig::new(address.clone(), roots.clone());
    c.target.root_cert = Some(roots);
    c.token_file = cfg.token_file.clone();
    c.target.server_name = cfg.ca_server_name.clone();
    c.headers = vec![("ClusterID".into(), cfg.cluster_id.clone())];
    c.headers.extend(cfg.ca_headers.iter().cloned());
    c.cert_lifetime = cfg.cert_lifetime;
    let client = zpath_control::ca_client::CaClient::new(c)
        .map_err(|e| StartError::Ca(format!("--ca-address {address}: {e}")))?;
    info!(%address, "workload certificates come from the Istio CA");
    Ok(Some(client))
}

/// The xDS source, when `--xds-address` is set (inside the control runtime).
fn xds_source(
    cfg: &EngineConfig,
    state: &AdminState,
) -> Result<Option<zpath_control::xds::XdsSource>, StartError> {
    let Some(address) = &cfg.xds_address else {
        return Ok(None);
    };
    let node = zpath_control::xds::NodeInfo {
        instance_ip: cfg.instance_ip.clone(),
        pod_name: cfg.pod_name.clone(),
        pod_namespace: cfg.pod_namespace.clone(),
        node_name: cfg.node_name.clone(),
        metadata: [("CLUSTER_ID".to_string(), cfg.cluster_id.clone())]
            .into_iter()
            .chain(cfg.node_metadata.clone())
            .collect(),
        json_metadata: cfg.node_json_metadata.clone(),
    };
    let mut c = zpath_control::xds::XdsClientConfig::new(address.clone(), node);
    c.target.root_cert = cfg.xds_root_cert.clone();
    c.target.server_name = cfg.xds_server_name.clone();
    c.token_file = cfg.token_file.clone();
    c.headers = vec![("ClusterID".into(), cfg.cluster_id.clone())];
    c.headers.extend(cfg.xds_headers.iter().cloned());
    let source = zpath_control::xds::XdsSource::new(c, state.snapshots.clone(), &cfg.node_name)
        .map_err(|e| StartError::Xds(format!("--xds-address {address}: {e}")))?;
    info!(%address, "configuration comes from istiod over xDS");
    Ok(Some(source))
}

/// The built-in CA: the root given by flag, else the one kept in the state directory
/// (created on first start).
fn load_ca(cfg: &EngineConfig) -> Result<LocalCa, StartError> {
    match (&cfg.ca_cert, &cfg.ca_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &std::path::Path| {
                std::fs::read_to_string(p)
                    .map_err(|e| StartError::Ca(format!("cannot read {}: {e}", p.display())))
            };
            let ca = LocalCa::from_pem(&read(cert)?, &read(key)?).map_err(|e| {
                StartError::Ca(format!(
                    "cannot use {} / {} as the mesh root: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            info!(cert = %cert.display(), "using the mesh root given by --ca-cert");
            Ok(ca)
        }
        _ => {
            let ca = LocalCa::load_or_create(&cfg.state_dir).map_err(|e| {
                StartError::Ca(format!(
                    "cannot load or create the built-in CA in {}: {e}",
                    cfg.state_dir.display()
                ))
            })?;
            info!(state_dir = %cfg.state_dir.display(), "using the built-in CA root in the state directory");
            Ok(ca)
        }
    }
}
