//! Admin, metrics and readiness endpoints, served on the control thread so a slow
//! scrape never stalls a shard. They read only the published snapshot and the shards'
//! single-writer counters.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use tracing::debug;
use zpath_control::watch::ReloadStats;
use zpath_control::SnapshotCell;

use crate::stats::{render_prometheus, ShardStats};

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
    pub certs: Arc<crate::certs::CertCell>,
    /// Set once every workload known at start has its certificate.
    pub certs_ready: Arc<AtomicBool>,
    /// Workload certificates issued (first issues and renewals).
    pub certs_issued: Arc<std::sync::atomic::AtomicU64>,
    /// xDS counters, once an xDS source runs.
    pub xds: std::sync::OnceLock<Arc<zpath_control::xds::XdsStats>>,
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
        let xds = self.xds.get().map(|x| x.prometheus()).unwrap_or_default();
        render_prometheus(&self.shards, &format!("{extra}{xds}"))
    }

    fn config_dump(&self) -> String {
        let snap = self.snapshots.load();
        let shards: Vec<_> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| serde_json::json!({"shard": i, "open_connections": s.open.get()}))
            .collect();
        let dump = serde_json::json!({ "snapshot": &*snap, "shards": shards });
        serde_json::to_string_pretty(&dump).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy)]
pub enum Endpoints {
    /// `/config_dump` (and the others, for convenience on the local admin port).
    Admin,
    /// `/stats/prometheus` and `/metrics`.
    Metrics,
    /// `/healthz/ready`.
    Readiness,
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
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    let path = req.uri().path();
    let admin = matches!(which, Endpoints::Admin);
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
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serves `which` on `listener` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AdminState>, which: Endpoints) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                debug!("admin accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let resp = respond(&state, which, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                debug!(%peer, "admin connection ended: {e}");
            }
        });
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
