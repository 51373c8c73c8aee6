//! Captured connections (15001, 15006): the destination the client meant, read from
//! the redirect, and refused when it is one of zpath's own listeners.

use std::net::SocketAddr;

use zpath_uring::IoStream;

use crate::failure::{fail, Failure};
use crate::relay::Abort;
use crate::shard::table::ConnInfo;
use crate::shard::Shard;
use crate::stats::FailReason;
use crate::sys;

/// The original destination of a redirected connection, refused (RST) when it is one of
/// our own listeners: a connection made straight to a capture port would loop.
pub(crate) fn captured_destination(
    shard: &Shard,
    client: &IoStream,
    info: &ConnInfo,
) -> Result<SocketAddr, Failure> {
    let local = client.local_addr().ok();
    let dst = original_dst(client, local)?;
    info.dst.set(Some(dst));
    if shard.addrs.is_own(dst, local) {
        client.abort();
        return Err(fail(
            FailReason::Loop,
            format!(
                "destination {dst} is one of zpath's own ports (was the connection redirected?)"
            ),
        ));
    }
    Ok(dst)
}

fn original_dst(client: &IoStream, local: Option<SocketAddr>) -> Result<SocketAddr, Failure> {
    let Some(local) = local else {
        client.abort();
        return Err(fail(
            FailReason::NoOriginalDst,
            "socket has no local address",
        ));
    };
    sys::original_dst(client, local).map_err(|e| {
        client.abort();
        fail(FailReason::NoOriginalDst, format!("cannot read the original destination ({e}): was the connection redirected by iptables/nftables?"))
    })
}
