//! Upstream connections. Every dial names the decision that allowed it: an inbound
//! upstream is dialled with the [`Authorized`] policy gave it, an outbound one with
//! the [`Hop`] its plan chose. No function here takes a bare address.

use std::io;
use std::net::{IpAddr, SocketAddr};

use glommio::net::TcpStream;

use crate::decide::authorize::Authorized;
use crate::decide::plan::Hop;
use crate::shard::Shard;
use crate::sys;

/// Connects to the destination a policy decision permitted.
pub(crate) async fn dial_permitted(
    shard: &Shard,
    authorized: &Authorized,
) -> io::Result<TcpStream> {
    connect(shard, authorized.permit.destination(), None)
        .await
        .map_err(sys::ConnectError::into_io)
}

/// Connects to the upstream an outbound plan chose, from `source` when given (see
/// [`sys::start_connect_from`]: that address or none, never silently another).
pub(crate) async fn dial(
    shard: &Shard,
    hop: Hop,
    source: Option<IpAddr>,
) -> Result<TcpStream, sys::ConnectError> {
    connect(shard, hop.addr(), source).await
}

/// Connects to `dst` with our packet mark and TCP keepalive, within the connect
/// timeout.
async fn connect(
    shard: &Shard,
    dst: SocketAddr,
    source: Option<IpAddr>,
) -> Result<TcpStream, sys::ConnectError> {
    let sock = sys::start_connect_from(dst, shard.cfg.packet_mark, source)?;
    let mut stream = sys::into_glommio_stream(sock);
    shard.set_keepalive(&stream);
    let limit = shard.cfg.connect_timeout;
    // A zero-length send completes when the connect does: it waits for writability
    // while the handshake is in flight and reports the connect error if it failed.
    let connected = glommio::timer::timeout(limit, async {
        futures_lite::AsyncWriteExt::write(&mut stream, &[]).await?;
        Ok(())
    })
    .await;
    match connected {
        Ok(()) => {}
        Err(glommio::GlommioError::TimedOut(_)) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {limit:?}"),
            )
            .into())
        }
        Err(e) => return Err(io::Error::from(e).into()),
    }
    if let Some(e) = sys::take_error(&stream)? {
        return Err(e.into());
    }
    Ok(stream)
}
