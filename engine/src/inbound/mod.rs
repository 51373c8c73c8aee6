//! Inbound: connections to the workloads this node serves. Captured plaintext arrives
//! on 15006 (this module), HBONE on 15008 ([`hbone`]); each is authorized
//! ([`crate::decide::authorize`]), and only an allowed one dials its upstream, with the
//! [`Authorized`](crate::decide::authorize::Authorized) it got.

pub(crate) mod hbone;

use std::rc::Rc;

use zpath_uring::IoStream;

use crate::capture::captured_destination;
use crate::decide::authorize::{authorize, Inbound, When};
use crate::dial::dial_permitted;
use crate::failure::{fail, Failure};
use crate::relay::{self, Abort};
use crate::shard::table::{ConnInfo, ConnState};
use crate::shard::Shard;
use crate::stats::FailReason;

/// Captured inbound plaintext: relay to the original (local) destination.
pub(crate) async fn inbound(
    shard: &Rc<Shard>,
    client: IoStream,
    info: &ConnInfo,
) -> Result<(), Failure> {
    let dst = captured_destination(shard, &client, info)?;
    info.addressed.set(Some(dst));
    let snapshot = shard.snapshot();
    let conn = Inbound {
        src: info.src.ip(),
        dst,
        peer: None,
    };
    shard.count_inbound_opened(info, &snapshot, dst, None, None);
    let tally = |d: &_| shard.count_decision(&snapshot, d);
    let authorized = match authorize(&snapshot, conn, When::Opening, tally) {
        Ok(authorized) => authorized,
        Err(refusal) => {
            client.abort();
            return Err(fail(refusal.reason(), refusal.to_string()));
        }
    };
    drop(snapshot);
    info.state.set(ConnState::Connecting);
    let upstream = match Box::pin(dial_permitted(shard, &authorized)).await {
        Ok(u) => u,
        Err(e) => {
            client.abort();
            return Err(fail(
                FailReason::UpstreamConnect,
                format!("connect to {dst} failed: {e}"),
            ));
        }
    };
    relay::pair(shard, client, upstream, info).await
}
