//! Test servers speaking the real protocols over loopback sockets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod ca_server;
pub mod xds_server;
