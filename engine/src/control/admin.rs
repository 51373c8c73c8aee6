//! Admin, metrics and readiness endpoints, served on the control thread so a slow
//! scrape never stalls a shard. They read only the published snapshot and the shards'
//! single-writer counters.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{debug, info, warn};
use zpath_control::watch::ReloadStats;
use zpath_control::SnapshotCell;

use crate::config::AdminLimits;
use crate::fds::FdBudget;
use crate::shard::loglimit::LogLimiter;
use crate::stats::{render_prometheus, FailReason, ShardStats};

/// What the endpoints read.
#[derive(Debug)]
pub struct AdminState {
    /// Counters of every shard.
    pub shards: Vec<Arc<ShardStats>>,
    /// The published configuration.
    pub snapshots: Arc<SnapshotCell>,
    /// Config reload counts.
    pub reloads: Arc<ReloadStats>,
    /// Set once drain starts: readiness turns false.
    pub draining: AtomicBool,
    /// The workload certificates in use.
    pub certs: Arc<crate::control::certs::CertCell>,
    /// Set once every workload known at start has its certificate.
    pub certs_ready: Arc<AtomicBool>,
    /// Workload certificates issued (first issues and renewals).
    pub certs_issued: Arc<std::sync::atomic::AtomicU64>,
    /// xDS counters, once an xDS source runs.
    pub xds: std::sync::OnceLock<Arc<zpath_control::xds::XdsStats>>,
    /// Timeouts and connection cap of each endpoint.
    pub limits: AdminLimits,
    /// Where the endpoints stop accepting, so the data path keeps its descriptors.
    pub fds: FdBudget,
    /// Connection counts by endpoint (index: `Endpoints as usize`).
    pub endpoints: [EndpointStats; 3],
    /// Raised by `POST /quitquitquit`: the daemon drains and exits, as on SIGTERM.
    pub quit: tokio::sync::Notify,
    /// The Istio version the proxy runs under (`ISTIO_META_ISTIO_VERSION`, else
    /// `unknown`), reported as ztunnel reports it in `istio_build`.
    pub istio_version: String,
}

/// Connections of one endpoint (updated by the control thread only).
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Open now.
    pub open: AtomicU64,
    /// Closed at accept: the endpoint held `--admin-max-connections`.
    pub refused_cap: AtomicU64,
    /// Closed at accept: the process was within `--fd-reserve` of its open-file limit.
    pub refused_fds: AtomicU64,
    /// Closed for sending no request headers in time, or for idling.
    pub timed_out: AtomicU64,
}

impl AdminState {
    /// Ready once every shard listens, a snapshot is applied, the workloads known at
    /// start have their certificates, and drain has not begun.
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
            && self.snapshots.generation() > 0
            && self.certs_ready.load(Ordering::Relaxed)
            && self.shards.iter().all(|s| s.listening.get() > 0)
    }

    fn metrics(&self) -> String {
        let applied = self.reloads.applied.load(Ordering::Relaxed);
        let rejected = self.reloads.rejected.load(Ordering::Relaxed);
        let extra = format!(
            "# HELP zpath_config_loads_total Local config loads, by result.\n# TYPE zpath_config_loads_total counter\nzpath_config_loads_total{{result=\"applied\"}} {applied}\nzpath_config_loads_total{{result=\"rejected\"}} {rejected}\n# HELP zpath_snapshot_generation Generation of the applied snapshot.\n# TYPE zpath_snapshot_generation gauge\nzpath_snapshot_generation {}\n",
            self.snapshots.generation()
        );
        let certs = self.certs.load();
        let extra = format!(
            "{extra}# HELP zpath_certificates_issued_total Workload certificates issued, renewals included.\n# TYPE zpath_certificates_issued_total counter\nzpath_certificates_issued_total {}\n# HELP zpath_certificates Workload certificates held now.\n# TYPE zpath_certificates gauge\nzpath_certificates {}\n",
            self.certs_issued.load(Ordering::Relaxed),
            certs.len()
        );
        let extra = format!(
            "{extra}# HELP istio_build Istio component build info.\n# TYPE istio_build gauge\nistio_build{{component=\"ztunnel\",tag=\"{}\"}} 1\n",
            zpath_control::xds::metrics::label_value(&self.istio_version)
        );
        let xds = self.xds.get().map(|x| x.prometheus()).unwrap_or_default();
        let endpoints = self.endpoint_metrics();
        render_prometheus(&self.shards, &format!("{extra}{xds}{endpoints}"))
    }

    /// The workload certificates in ztunnel's `config_dump` shape: by identity, each
    /// with its chain and roots (PEM base64-encoded, serial, validity in RFC 3339).
    fn certificates(&self) -> Vec<serde_json::Value> {
        let show = |c: &zpath_crypto::CertSummary| {
            serde_json::json!({
                "pem": c.pem_base64,
                "serialNumber": c.serial,
                "validFrom": humantime::format_rfc3339_seconds(c.not_before).to_string(),
                "expirationTime": humantime::format_rfc3339_seconds(c.not_after).to_string(),
            })
        };
        let certs = self.certs.load();
        let by_identity: std::collections::BTreeMap<String, serde_json::Value> = certs
            .iter()
            .map(|(id, tls)| {
                let (chain, roots) = tls.certificate().summaries();
                let id = id.to_string();
                let dump = serde_json::json!({
                    "identity": id,
                    "state": "Available",
                    "certChain": chain.iter().map(show).collect::<Vec<_>>(),
                    "rootCerts": roots.iter().map(show).collect::<Vec<_>>(),
                });
                (id, dump)
            })
            .collect();
        by_identity.into_values().collect()
    }

    fn endpoint_metrics(&self) -> String {
        use std::fmt::Write;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::from(
            "# HELP zpath_admin_connections Connections open now on the admin, metrics and readiness endpoints.\n\
             # TYPE zpath_admin_connections gauge\n",
        );
        for which in Endpoints::ALL {
            let e = &self.endpoints[which as usize];
            let _ = writeln!(
                out,
                "zpath_admin_connections{{endpoint=\"{}\"}} {}",
                which.label(),
                get(&e.open)
            );
        }
        out.push_str(
            "# HELP zpath_admin_connections_closed_total Admin, metrics and readiness connections refused at accept or timed out, by reason.\n\
             # TYPE zpath_admin_connections_closed_total counter\n",
        );
        for which in Endpoints::ALL {
            let e = &self.endpoints[which as usize];
            for (reason, c) in [
                ("max_connections", &e.refused_cap),
                ("fd_reserve", &e.refused_fds),
                ("timeout", &e.timed_out),
            ] {
                let _ = writeln!(
                    out,
                    "zpath_admin_connections_closed_total{{endpoint=\"{}\",reason=\"{reason}\"}} {}",
                    which.label(),
                    get(c)
                );
            }
        }
        out
    }

    fn config_dump(&self) -> String {
        let snap = self.snapshots.load();
        let shards: Vec<_> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| serde_json::json!({"shard": i, "open_connections": s.open.get()}))
            .collect();
        let dump = serde_json::json!({
            "workloads": super::dump::workloads(&snap),
            "services": super::dump::services(&snap),
            "policies": super::dump::policies(&snap),
            // In-pod mode's per-pod state (ztunnel's `workloadState`): none until zpath
            // takes pods from istio-cni.
            "workloadState": {},
            "snapshot": &*snap,
            "shards": shards,
            "certificates": self.certificates(),
            "version": {
                "version": env!("CARGO_PKG_VERSION"),
                "rustVersion": option_env!("CARGO_PKG_RUST_VERSION").unwrap_or(""),
                "buildProfile": if cfg!(debug_assertions) { "debug" } else { "release" },
                "istioVersion": self.istio_version,
            },
        });
        serde_json::to_string_pretty(&dump).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// `/config_dump` (and the others, for convenience on the local admin port).
    Admin = 0,
    /// `/stats/prometheus` and `/metrics`.
    Metrics = 1,
    /// `/healthz/ready`.
    Readiness = 2,
}

impl Endpoints {
    const ALL: [Endpoints; 3] = [Endpoints::Admin, Endpoints::Metrics, Endpoints::Readiness];

    fn label(self) -> &'static str {
        match self {
            Endpoints::Admin => "admin",
            Endpoints::Metrics => "metrics",
            Endpoints::Readiness => "readiness",
        }
    }
}

fn respond(
    state: &AdminState,
    which: Endpoints,
    req: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let text = |code: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        r
    };
    let path = req.uri().path();
    let admin = matches!(which, Endpoints::Admin);
    // ztunnel's two POST endpoints, on the admin port only.
    match (admin, path, req.method()) {
        (true, "/logging", &Method::POST) => {
            let (status, body) = logging(req.uri().query().unwrap_or(""));
            return text(status, "text/plain", body);
        }
        (true, "/quitquitquit", &Method::POST) => {
            info!("shutdown asked for on /quitquitquit");
            state.quit.notify_one();
            return text(StatusCode::OK, "text/plain", "shutdown now\n".into());
        }
        (true, "/logging" | "/quitquitquit", _) => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "only POST\n".into(),
            )
        }
        _ => {}
    }
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match path {
        "/healthz/ready" if admin || matches!(which, Endpoints::Readiness) => {
            if state.ready() {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            }
        }
        "/stats/prometheus" | "/metrics" if admin || matches!(which, Endpoints::Metrics) => {
            text(StatusCode::OK, "text/plain; version=0.0.4", state.metrics())
        }
        "/config_dump" if admin => text(StatusCode::OK, "application/json", state.config_dump()),
        // ztunnel's in-process profiler samples every thread from a signal handler that
        // takes a lock; zpath keeps locks off its shards and is profiled from outside.
        "/debug/pprof/profile" | "/debug/pprof/heap" if admin => text(
            StatusCode::NOT_IMPLEMENTED,
            "text/plain",
            "zpath has no in-process profiler (it would take a lock on every shard); \
             profile it from outside: perf record -g -p <pid>, or zpath-perf compare --perf-record\n"
                .into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serves `which` on `listener` until the runtime stops. Beyond the endpoint's cap, or
/// once the process is within the descriptor reserve of its limit, new connections
/// are closed at once (counted); idle ones are closed after the timeouts.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AdminState>, which: Endpoints) {
    let refusals = LogLimiter::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                debug!("admin accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(open) = admit(&state, which, &stream) else {
            if refusals.admit(FailReason::Overload, Instant::now()) {
                warn!(endpoint = which.label(), %peer,
                    "{} connection refused: at --admin-max-connections {} or within --fd-reserve of the open-file limit",
                    which.label(), state.limits.max_connections);
            }
            let _ = crate::sys::set_reset_on_close(&stream);
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, &state, which).await;
            drop(open);
        });
    }
}

/// One open connection of an endpoint, counted while it lives.
struct Open(Arc<AdminState>, Endpoints);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.endpoints[self.1 as usize]
            .open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn admit(
    state: &Arc<AdminState>,
    which: Endpoints,
    stream: &tokio::net::TcpStream,
) -> Option<Open> {
    let stats = &state.endpoints[which as usize];
    if stats.open.load(Ordering::Relaxed) >= state.limits.max_connections as u64 {
        stats.refused_cap.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    if !state.fds.admin_allows(stream.as_raw_fd()) {
        stats.refused_fds.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    stats.open.fetch_add(1, Ordering::Relaxed);
    Some(Open(state.clone(), which))
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: &Arc<AdminState>,
    which: Endpoints,
) {
    let limits = state.limits;
    let activity = Arc::new(Activity::new());
    let io = hyper_util::rt::TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let svc_state = state.clone();
    let svc = hyper::service::service_fn(move |req| {
        let resp = respond(&svc_state, which, &req);
        async move { Ok::<_, Infallible>(resp) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(8 << 10)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    loop {
        let idle = activity.idle_for();
        if idle >= limits.idle_timeout {
            state.endpoints[which as usize]
                .timed_out
                .fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "admin connection idle for {idle:?}; closed");
            return;
        }
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    if e.is_timeout() {
                        state.endpoints[which as usize].timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    debug!(%peer, "admin connection ended: {e}");
                }
                return;
            }
            _ = tokio::time::sleep(limits.idle_timeout - idle) => {}
        }
    }
}

/// When a connection last read or wrote a byte.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let since_start = self.start.elapsed();
        since_start.saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A stream that records in [`Activity`] each read or write that moves bytes.
struct Watched {
    inner: tokio::net::TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Binds an admin listener now (so start-up fails early on a taken port).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listen = || -> std::io::Result<std::net::TcpListener> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        sock.set_reuse_address(true)?;
        if addr.is_ipv6() {
            // `[::]` takes IPv4 too, whatever `net.ipv6.bindv6only` says.
            sock.set_only_v6(false)?;
        }
        sock.bind(&addr.into())?;
        sock.listen(1024)?;
        sock.set_nonblocking(true)?;
        Ok(sock.into())
    };
    listen().map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// ztunnel's `/logging` usage text.
const LOGGING_HELP: &str = "usage: POST /logging\t\t\t\t(To list current level)\n\
usage: POST /logging?level=<level>\t\t(To change global levels)\n\
usage: POST /logging?level={mod1}={level1},{mod2}={level2}\t(To change specific mods' logging level)\n\
usage: POST /logging?reset\t\t\t(To go back to the start level)\n\n\
hint: loglevel:\terror|warn|info|debug|trace|off\n";

/// `POST /logging[?level=...|?reset]`: the current filter, after changing it if asked.
fn logging(query: &str) -> (StatusCode, String) {
    let Some(control) = crate::logging::control() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the log level cannot be changed in this process\n".into(),
        );
    };
    let mut level = None;
    let mut reset = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("level", v)) => {
                level = Some(
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned(),
                )
            }
            None if pair == "reset" => reset = true,
            Some(("reset", _)) => reset = true,
            _ => {}
        }
    }
    let wanted = match (reset, level) {
        (true, _) => Some(control.initial.clone()),
        (false, Some(l)) if !l.is_empty() => Some(l),
        _ => None,
    };
    if let Some(wanted) = wanted {
        if !crate::logging::valid_level(&wanted) {
            return (
                StatusCode::BAD_REQUEST,
                format!("Invalid level provided: {wanted}\n{LOGGING_HELP}"),
            );
        }
        if let Err(e) = (control.set)(&wanted) {
            return (
                StatusCode::BAD_REQUEST,
                format!("Failed to set new level: {e}\n{LOGGING_HELP}"),
            );
        }
        info!(level = %wanted, "log level changed on /logging");
    }
    (
        StatusCode::OK,
        format!("current log level is {}\n", (control.current)()),
    )
}
