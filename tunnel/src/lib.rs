//! zpath-tunnel: HBONE, HTTP/2 CONNECT over mutual TLS, as Istio ambient mode speaks it.
//!
//! Not built yet: this crate will hold the CONNECT client and server, pool keys and
//! limits, and CONNECT request building, parsing and validation.
