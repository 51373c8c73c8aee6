//! The delta ADS driver: dials istiod, runs `DeltaAggregatedResources`, feeds the
//! [`SubscriptionState`] and sends back what it returns, reconnects with jittered
//! backoff, and publishes readiness once every type has been answered.
//!
//! Runs on the control thread's current-thread runtime. While istiod is away nothing
//! is applied, so the data path keeps serving the last published snapshot.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use super::backoff::{Backoff, BackoffConfig};
use super::channel::{add_request_metadata, GrpcTarget};
use super::metrics::{ClientStats, Termination};
use super::node::NodeInfo;
use super::state::{SubscriptionState, XdsHandler, ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use super::XdsError;
use crate::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;

/// Default cap on one response message: istiod sends the whole state of a large
/// cluster in the first response (ztunnel uses the same bound).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 200 * 1024 * 1024;

/// How to reach istiod and what to ask for.
#[derive(Debug, Clone)]
pub struct XdsClientConfig {
    /// istiod address (`--xds-address`) and TLS root (`--xds-root-cert`).
    pub target: GrpcTarget,
    /// Service account token sent as `authorization: Bearer`, re-read at every
    /// connect; `None` sends no token.
    pub token_file: Option<PathBuf>,
    /// Extra request headers (e.g. `ClusterID`).
    pub headers: Vec<(String, String)>,
    /// Identity of this proxy in the `Node`.
    pub node: NodeInfo,
    /// Wildcard subscriptions, in the order the first requests are sent. Default:
    /// Address then Authorization.
    pub type_urls: Vec<String>,
    /// Reconnect backoff. Default 100 ms doubling to 15 s.
    pub backoff: BackoffConfig,
    /// Largest accepted response message. Default [`DEFAULT_MAX_MESSAGE_BYTES`];
    /// worst-case memory is about twice this during decoding.
    pub max_message_bytes: usize,
}

impl XdsClientConfig {
    /// Defaults for `address` (TLS root, token and headers unset).
    pub fn new(address: impl Into<String>, node: NodeInfo) -> Self {
        XdsClientConfig {
            target: GrpcTarget::new(address),
            token_file: None,
            headers: Vec::new(),
            node,
            type_urls: vec![ADDRESS_TYPE_URL.into(), AUTHORIZATION_TYPE_URL.into()],
            backoff: BackoffConfig::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// A delta ADS client. Create it, hand out [`XdsClient::readiness`], then drive
/// [`XdsClient::run`] on the control runtime.
#[derive(Debug)]
pub struct XdsClient {
    config: XdsClientConfig,
    state: SubscriptionState,
    ready: watch::Sender<bool>,
    streams_started: u64,
    stats: Arc<ClientStats>,
}

impl XdsClient {
    /// Validates the address and builds the subscription state.
    pub fn new(config: XdsClientConfig) -> Result<Self, XdsError> {
        config.target.validate()?;
        let state = SubscriptionState::new(config.node.to_node(), config.type_urls.clone());
        let (ready, _) = watch::channel(false);
        Ok(XdsClient {
            config,
            state,
            ready,
            streams_started: 0,
            stats: Arc::default(),
        })
    }

    /// The client's counters (`istio_xds_*`).
    pub fn stats(&self) -> Arc<ClientStats> {
        self.stats.clone()
    }

    /// Becomes `true` once every subscribed type has been answered (first full
    /// state received and handed to the handler); never goes back to `false`.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// The subscription state (versions held, readiness).
    pub fn state(&self) -> &SubscriptionState {
        &self.state
    }

    /// Streams started so far (1 + reconnects).
    pub fn streams_started(&self) -> u64 {
        self.streams_started
    }

    /// Runs until `shutdown` completes: one stream at a time, reconnecting after any
    /// failure with jittered exponential backoff (reset once a stream delivered a
    /// response).
    pub async fn run<H, F>(&mut self, handler: &mut H, shutdown: F)
    where
        H: XdsHandler + ?Sized,
        F: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::new(self.config.backoff);
        loop {
            let mut responses = 0u64;
            let result = tokio::select! {
                r = self.run_stream(handler, &mut responses) => r,
                () = &mut shutdown => return,
            };
            if responses > 0 {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            self.stats.terminated(match &result {
                Ok(()) => Termination::Complete,
                Err(XdsError::Connect { .. }) => Termination::ConnectionError,
                Err(XdsError::Stream { status, .. }) => Termination::of_status(status),
                Err(_) => Termination::Error,
            });
            match result {
                Ok(()) => info!(
                    address = %self.config.target.address,
                    ?delay,
                    "xDS stream closed by the server; reconnecting"
                ),
                Err(e) => warn!(error = %e, ?delay, "xDS stream failed; reconnecting"),
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// One stream: connect, send the first requests, then answer every response.
    /// Returns `Ok` when the server ends the stream cleanly.
    pub async fn run_stream<H>(
        &mut self,
        handler: &mut H,
        responses: &mut u64,
    ) -> Result<(), XdsError>
    where
        H: XdsHandler + ?Sized,
    {
        self.streams_started += 1;
        let address = self.config.target.address.clone();
        let endpoint = self.config.target.endpoint()?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| XdsError::Connect {
                address: address.clone(),
                source,
            })?;

        let initial = self.state.initial_requests();
        let (tx, rx) = mpsc::channel(initial.len() + 4);
        for req in initial {
            debug!(
                type_url = %req.type_url,
                held = req.initial_resource_versions.len(),
                "sending initial xDS request"
            );
            tx.try_send(req)
                .map_err(|_| XdsError::RequestStreamClosed {
                    address: address.clone(),
                })?;
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        add_request_metadata(
            request.metadata_mut(),
            self.config.token_file.as_deref(),
            &self.config.headers,
        )?;
        let stream_err = |status: tonic::Status| XdsError::Stream {
            address: address.clone(),
            status: Box::new(status),
        };
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.config.max_message_bytes);
        let mut stream = client
            .delta_aggregated_resources(request)
            .await
            .map_err(stream_err)?
            .into_inner();
        info!(%address, "xDS stream established");

        while let Some(response) = stream.message().await.map_err(stream_err)? {
            *responses += 1;
            let bytes = response
                .resources
                .iter()
                .filter_map(|r| r.resource.as_ref())
                .map(|any| any.value.len() as u64)
                .sum();
            self.stats.received(&response.type_url, bytes);
            let type_url = response.type_url.clone();
            let (added, removed) = (response.resources.len(), response.removed_resources.len());
            let outcome = self.state.handle_response(response, handler);
            if outcome.is_nack() {
                warn!(
                    %type_url, added, removed,
                    nonce = %outcome.request.response_nonce,
                    rejected = outcome.rejected.len(),
                    "xDS response rejected (NACK)"
                );
            } else {
                debug!(%type_url, added, removed, "xDS response applied (ACK)");
            }
            if outcome.became_ready {
                info!("xDS initial state received from every subscribed type");
                self.ready.send_replace(true);
            }
            tx.send(outcome.request)
                .await
                .map_err(|_| XdsError::RequestStreamClosed {
                    address: address.clone(),
                })?;
        }
        Ok(())
    }
}
