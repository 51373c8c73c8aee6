//! A shard's pool of outbound HBONE tunnels, keyed as the outbound plan decides.

use crate::decide::plan::PoolKey;

/// A shard's tunnel pool.
pub(crate) type TunnelPool = zpath_tunnel::Pool<PoolKey>;
