//! An in-process delta ADS server over a real loopback socket, scripted by the test:
//! it records every request the client sends and pushes the responses the test gives.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use zpath_control::proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use zpath_control::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

/// Upper bound on waiting for the client; a hang guard, not a timing assertion.
pub const WAIT: Duration = Duration::from_secs(20);

type ResponseTx = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// A request as seen by the server, with the stream it arrived on (1-based).
#[derive(Debug, Clone)]
pub struct Seen {
    pub stream: u64,
    pub request: DeltaDiscoveryRequest,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Shared {
    streams: u64,
    current: Option<ResponseTx>,
}

#[derive(Clone)]
struct Ads {
    shared: Arc<Mutex<Shared>>,
    seen: mpsc::UnboundedSender<Seen>,
}

type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let stream = {
            let mut s = self.shared.lock().unwrap();
            s.streams += 1;
            s.current = Some(tx);
            s.streams
        };
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(request)) = incoming.next().await {
                let _ = seen.send(Seen {
                    stream,
                    request,
                    authorization: authorization.clone(),
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The running server.
pub struct TestXdsServer {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: JoinHandle<()>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestXdsServer {
    /// Starts on an ephemeral loopback port.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on `addr` (used to restart on the same port).
    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::start_with(addr, None).await
    }

    /// Starts on an ephemeral port, serving TLS with `(cert_pem, key_pem)`.
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        let identity = tonic::transport::Identity::from_pem(cert_pem, key_pem);
        Self::start_with("127.0.0.1:0".parse().unwrap(), Some(identity)).await
    }

    async fn start_with(addr: SocketAddr, tls: Option<tonic::transport::Identity>) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let svc = Ads {
            shared: shared.clone(),
            seen: seen_tx,
        };
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut builder = tonic::transport::Server::builder();
            if let Some(identity) = tls {
                builder = builder
                    .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                    .unwrap();
            }
            let _ = builder
                .add_service(AggregatedDiscoveryServiceServer::new(svc))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = shutdown_rx.await;
                })
                .await;
        });
        TestXdsServer {
            addr,
            shared,
            seen,
            task,
            shutdown: Some(shutdown),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Streams opened so far.
    pub fn streams(&self) -> u64 {
        self.shared.lock().unwrap().streams
    }

    /// The next request the client sent.
    pub async fn next_request(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("client sent no request in time")
            .expect("server gone")
    }

    /// Waits until a stream is open, then pushes `response` on the newest one.
    pub async fn push(&self, response: DeltaDiscoveryResponse) {
        let tx = self
            .shared
            .lock()
            .unwrap()
            .current
            .clone()
            .expect("no open stream");
        tx.send(Ok(response)).await.expect("stream closed");
    }

    /// Ends the open stream with UNAVAILABLE and stops listening: the client sees
    /// the server go away mid-stream.
    pub async fn stop(mut self) -> SocketAddr {
        let tx = self.shared.lock().unwrap().current.take();
        if let Some(tx) = tx {
            let _ = tx.send(Err(Status::unavailable("server restarting"))).await;
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(WAIT, &mut self.task).await.is_err() {
            self.task.abort();
        }
        self.addr
    }

    /// Stops (as [`TestXdsServer::stop`]) and starts a fresh server, with no memory
    /// of the client, on the same port.
    pub async fn restart(&mut self) {
        let fresh_placeholder = Self::placeholder();
        let old = std::mem::replace(self, fresh_placeholder);
        let addr = old.stop().await;
        *self = Self::start_on(addr).await;
    }

    fn placeholder() -> Self {
        let (_, seen) = mpsc::unbounded_channel();
        TestXdsServer {
            addr: "127.0.0.1:0".parse().unwrap(),
            shared: Arc::default(),
            seen,
            task: tokio::spawn(async {}),
            shutdown: None,
        }
    }
}

/// A delta response of `type_url` with `resources` added or updated and `removed` gone.
pub fn response(
    type_url: &str,
    nonce: &str,
    resources: Vec<Resource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}
