//! zpath-tunnel: HBONE, HTTP/2 CONNECT over mutual TLS, as Istio ambient mode speaks it.
//!
//! * [`settings::H2Settings`]: windows and limits of every HBONE connection.
//! * [`connect`]: the CONNECT request as Istio's data planes send it (authority
//!   `ip:port`, `Forwarded`, `baggage`, `traceparent`) and its validation.
//! * [`client`]: a client connection ([`client::Tunnel`]) and its streams;
//!   [`pool::Pool`] keeps a shard's tunnels by key, with a stream limit per tunnel,
//!   one shared handshake for concurrent first requests, and idle release.
//! * [`server`]: the HTTP/2 server side of port 15008.
//! * [`relay`]: one TCP connection over one stream, zero-copy into and out of h2.
//! * [`payload::Payload`]: a DATA payload counted while h2 holds it.
//! * [`io::H2Io`]: our `futures-io` TLS stream seen through the `tokio` traits h2 uses.
//!
//! The crate is executor-agnostic and single-threaded by design: tunnels and pools are
//! shard-local (`Rc`), and the caller spawns each connection's driver future on its own
//! executor. It holds no timer; timeouts are the caller's.

pub mod client;
pub mod connect;
#[doc(hidden)]
pub mod fuzzing;
pub mod io;
pub mod payload;
pub mod pool;
pub mod relay;
pub mod server;
pub mod settings;

pub use client::{OpenError, OpenStream, StreamSlot, Tunnel};
pub use payload::Payload;
pub use pool::{ConnectFailed, Pool, PoolStats, SetupStep};
pub use settings::H2Settings;
