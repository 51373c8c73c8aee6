//! What runs on the control thread (tokio, current-thread), apart from the shards:
//! start-up and shutdown ([`daemon`]), the admin, metrics and readiness endpoints
//! ([`admin`], with the config dump's ztunnel sections in [`dump`]), and workload
//! certificates ([`certs`]). It talks to the shards only by
//! message ([`crate::shard::run::ShardHandle`]) and through published cells.

pub(crate) mod admin;
pub(crate) mod certs;
pub(crate) mod daemon;
pub(crate) mod dump;
