//! Upstream connections. Every dial names the decision that allowed it: an inbound
//! upstream is dialled with the [`Authorized`] policy gave it, an outbound one with
//! the [`Hop`] its plan chose. No function here takes a bare address.

use std::io;
use std::net::{IpAddr, SocketAddr};

use zpath_uring::{ConnectOptions, IoStream, TcpStream};

use crate::decide::authorize::Authorized;
use crate::decide::plan::Hop;
use crate::shard::Shard;
use crate::sys;

/// Connects to the destination a policy decision permitted.
pub(crate) async fn dial_permitted(shard: &Shard, authorized: &Authorized) -> io::Result<IoStream> {
    connect(shard, authorized.permit.destination(), None)
        .await
        .map_err(sys::ConnectError::into_io)
}

/// Connects to the upstream an outbound plan chose, from `source` when given (see
/// [`sys::upstream_socket`]: that address or none, never silently another).
pub(crate) async fn dial(
    shard: &Shard,
    hop: Hop,
    source: Option<IpAddr>,
) -> Result<IoStream, sys::ConnectError> {
    connect(shard, hop.addr(), source).await
}

/// Connects to `dst` with our packet mark and TCP keepalive, within the connect
/// timeout (a linked timeout of the connect itself).
async fn connect(
    shard: &Shard,
    dst: SocketAddr,
    source: Option<IpAddr>,
) -> Result<IoStream, sys::ConnectError> {
    let sock = sys::upstream_socket(dst, shard.cfg.packet_mark, source)?;
    shard.set_keepalive(&sock);
    let limit = shard.cfg.connect_timeout;
    let options = ConnectOptions {
        mark: 0,
        timeout: Some(limit),
    };
    let stream = TcpStream::connect_socket(sock, dst, &options)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {limit:?}"),
            ),
            _ => e,
        })?;
    Ok(IoStream::new(stream)?)
}
