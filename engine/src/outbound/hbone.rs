//! The HBONE client: an outbound connection to an HBONE workload goes as a CONNECT
//! stream through a pooled mTLS HTTP/2 tunnel to the destination's node (port 15008).
//!
//! Copies per byte (user space), each direction:
//! * into a tunnel: socket read into a `BytesMut` (kernel copy) → frozen and handed to
//!   h2 as the DATA payload (no copy) → sealed into TLS records (the AEAD writes the
//!   ciphertext into the session's output buffer: one pass) → socket write (kernel copy).
//! * out of a tunnel: socket read into the TLS session's input buffer (kernel copy) →
//!   decrypted in place → copied once into h2's frame buffer → the DATA payload is a
//!   slice of that buffer (no copy) → socket write (kernel copy).
//!
//! The server side does the same copies the other way round.

use std::cell::Cell;
use std::rc::Rc;

use bytes::Bytes;
use tracing::{debug, info};
use zpath_crypto::{SessionBuffers, TlsStream};
use zpath_tunnel::connect;
use zpath_tunnel::{ConnectFailed, OpenError, Payload, SetupStep, Tunnel};
use zpath_uring::IoStream;

use crate::decide::plan::{PoolKey, Tunnelled};
use crate::dial::dial;
use crate::failure::{fail, Failure};
use crate::keepalive;
use crate::relay::{self, Abort, Meters, Toward};
use crate::shard::signal::Flag;
use crate::shard::table::{ConnInfo, ConnState};
use crate::shard::Shard;
use crate::stats::{CloseReason, FailReason, Gauge, Side};
use crate::sys::ConnectError;

/// Opens a stream for the client of `info` as `planned`: through a pooled tunnel to
/// the destination's node, made if none has room.
pub(crate) async fn open(
    shard: &Rc<Shard>,
    info: &ConnInfo,
    planned: &Tunnelled,
) -> Result<zpath_tunnel::OpenStream, Failure> {
    let Tunnelled {
        key,
        target,
        baggage,
    } = planned;
    let target = *target;
    info.state.set(ConnState::Connecting);
    // At cold start the first connections of a workload can come before the CA
    // answered: they wait for the certificate (as long as a connect may take).
    let limit = shard.cfg.connect_timeout;
    if !shard.wait_for_certificate(&key.src_id, limit).await {
        return Err(fail(
            FailReason::NoCertificate,
            format!(
                "no certificate for {} within {limit:?} (--connect-timeout): is the CA reachable?",
                key.src_id
            ),
        ));
    }
    // A pooled tunnel can turn out to take no new stream (a GOAWAY arrived): it is
    // then marked closed, and the request goes once more, on another tunnel.
    let mut attempts = 0;
    let stream = loop {
        attempts += 1;
        // Called only when a new tunnel is needed: a pooled one costs no clone here.
        let handshakes = shard.tunnels.handshakes();
        let checkout = shard.tunnels.checkout(key, |promised| {
            connect_tunnel(shard.clone(), key.clone(), promised)
        });
        let checked_out = checkout.await;
        if shard.tunnels.handshakes() != handshakes {
            // A tunnel was made (or tried): the pool gauges change.
            shard.update_pool_gauges();
        }
        let (tunnel, slot) = checked_out.map_err(|e| {
            let reason = match e.step {
                SetupStep::Tls => FailReason::Tls,
                SetupStep::Certificate => FailReason::NoCertificate,
                SetupStep::SourceAddress => FailReason::SourceAddress,
                SetupStep::Connect | SetupStep::Http2 | SetupStep::Pool => {
                    FailReason::UpstreamConnect
                }
            };
            fail(reason, format!("tunnel to {} failed: {e}", key.dst.addr()))
        })?;
        let req = connect::request(
            target,
            info.src,
            baggage,
            &connect::traceparent(
                u128::from(shard.random()) << 64 | u128::from(shard.random()),
                u64::from(shard.random()) << 32 | u64::from(shard.random()),
            ),
        )
        .map_err(|e| fail(FailReason::Tunnel, format!("cannot build the request: {e}")))?;
        // The answer is bounded like a connect: a peer that never answers does not
        // hold the flow (and its slot) forever.
        let limit = shard.cfg.connect_timeout;
        let opened = zpath_uring::time::timeout(limit, async { tunnel.open(req, slot).await })
            .await
            .unwrap_or_else(|_| Err(OpenError::H2(h2::Error::from(h2::Reason::CANCEL))));
        match opened {
            Ok(s) => break s,
            Err(OpenError::Status(status)) => {
                shard
                    .stats
                    .hbone
                    .count_status(Side::Client, status.as_u16());
                return Err(fail(
                    FailReason::Tunnel,
                    format!("{} answered {status} to CONNECT {target}", key.dst.addr()),
                ));
            }
            Err(OpenError::H2(_)) if attempts == 1 && tunnel.is_closed() => continue,
            Err(OpenError::H2(e)) => {
                return Err(fail(
                    FailReason::Tunnel,
                    format!("tunnel to {} failed: {e}", key.dst.addr()),
                ))
            }
        }
    };
    shard.stats.hbone.count_status(Side::Client, 200);
    Ok(stream)
}

/// Relays `client` over an opened stream, first sending `early` (bytes the client
/// already sent). Resets the client on failure.
pub(crate) async fn relay_client(
    shard: &Rc<Shard>,
    client: IoStream,
    stream: zpath_tunnel::OpenStream,
    early: &[u8],
    info: &ConnInfo,
) -> Result<(), Failure> {
    let zpath_tunnel::OpenStream {
        mut send,
        recv,
        slot,
    } = stream;
    if !early.is_empty() {
        if let Err(e) = send.send_data(Payload::new(Bytes::copy_from_slice(early)), false) {
            client.abort();
            return Err(fail(
                FailReason::Tunnel,
                format!("tunnel stream failed: {e}"),
            ));
        }
        Meters::of(shard, info).count(Toward::Server, early.len());
    }
    let _streams = Gauge::up(&shard.stats.hbone.client_streams);
    let result = relay::tunnelled(shard, client, send, recv, info).await;
    drop(slot);
    result
}

async fn connect_tunnel(
    shard: Rc<Shard>,
    key: PoolKey,
    promised: Rc<Cell<u32>>,
) -> Result<Tunnel, ConnectFailed> {
    let failed = |step: SetupStep, message: String| ConnectFailed {
        step,
        message: message.into(),
    };
    let dst = key.dst.addr();
    let certs = shard.certs();
    let Some(cert) = certs.get(&key.src_id) else {
        return Err(failed(
            SetupStep::Certificate,
            format!("no certificate for {} yet", key.src_id),
        ));
    };
    let config = shard
        .client_tls
        .borrow_mut()
        .get(cert, &key.dst_ids)
        .map_err(|e| {
            failed(
                SetupStep::Tls,
                format!("cannot build the TLS configuration: {e}"),
            )
        })?;
    drop(certs);
    shard.stats.hbone.client_handshakes.add(1);
    let tcp = dial(&shard, key.dst, Some(key.src))
        .await
        .map_err(|e| match e {
            ConnectError::Source { .. } => failed(
                SetupStep::SourceAddress,
                format!("connect to {dst} refused: {e} (the workload's address is kept, never replaced by another)"),
            ),
            ConnectError::Socket(e) => {
                failed(SetupStep::Connect, format!("connect to {dst} failed: {e}"))
            }
        })?;
    let buffers = SessionBuffers::new(shard.cfg.tls_buffer);
    let limit = shard.cfg.handshake_timeout;
    let tls = zpath_uring::time::timeout(limit, async {
        TlsStream::connect(tcp, &config, buffers).await
    })
    .await;
    let tls = match tls {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            shard.stats.hbone.count_tls(Side::Client, Some(e.label()));
            return Err(failed(
                SetupStep::Tls,
                format!("TLS handshake with {dst} failed: {e}"),
            ));
        }
        Err(_) => {
            shard.stats.hbone.count_tls(Side::Client, Some("timeout"));
            return Err(failed(
                SetupStep::Tls,
                format!("TLS handshake with {dst} took longer than {limit:?}"),
            ));
        }
    };
    shard.stats.hbone.count_tls(Side::Client, None);
    let (tunnel, mut driver) =
        zpath_tunnel::client::handshake(tls, &shard.cfg.h2, shard.cfg.pool_max_streams, promised)
            .await
            .map_err(|e| {
                failed(
                    SetupStep::Http2,
                    format!("HTTP/2 handshake with {dst} failed: {e}"),
                )
            })?;
    let s = shard.clone();
    let silent = Rc::new(Flag::default());
    let k = shard.cfg.keepalive;
    let watchers = keepalive::watch_client(driver.ping_pong(), k, silent.clone());
    zpath_uring::spawn_local(async move {
        let driven = async { Some(driver.await) };
        let unanswered = async {
            silent.raised().await;
            None
        };
        // A silent peer's connection is dropped: its streams fail, the pool forgets it.
        match futures_lite::future::or(driven, unanswered).await {
            Some(Ok(())) => {}
            Some(Err(e)) => debug!(%dst, "HBONE connection ended: {e}"),
            None => {
                s.stats
                    .hbone
                    .count_closed(Side::Client, CloseReason::KeepaliveTimeout);
                if s.may_log(FailReason::Tunnel) {
                    info!(%dst, "HBONE peer left a PING unanswered for {:?}; connection closed", k.timeout);
                }
            }
        }
        drop(watchers);
        s.update_pool_gauges();
    });
    Ok(tunnel)
}
