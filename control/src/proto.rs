//! Generated wire types (prost) and gRPC stubs (tonic) for the protocols zpath speaks
//! with istiod (delta ADS, the workload and authorization resources, the Istio CA) and
//! with istio-cni (ZDS).
//!
//! Only `control` and its tests use this module. The rest of zpath sees domain types,
//! converted from these with `TryFrom` (failing closed on anything invalid). The
//! `.proto` sources live in `control/proto/`; package names, message names, field
//! numbers and types match Istio's and Envoy's so that the bytes on the wire are the
//! same. Both client and server stubs are generated: the servers exist for tests.
//!
//! Module paths follow the proto packages:
//! * [`istio::workload`] — `Address`, `Workload`, `Service`, …
//! * [`istio::security`] — `Authorization`, `Rule`, `Clause`, `Match`, …
//! * [`istio::workload::zds`] — `ZdsHello`, `WorkloadRequest`, `WorkloadResponse`.
//! * [`istio::v1::auth`] — `IstioCertificateService` (`CreateCertificate`).
//! * [`envoy::service::discovery::v3`] — `AggregatedDiscoveryService`,
//!   `DeltaDiscoveryRequest`/`Response`, `Resource`.
//! * [`envoy::config::core::v3`] — `Node`.
//! * [`google::rpc`] — `Status` (NACK details).

#![allow(
    missing_docs,
    rust_2018_idioms,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]

include!(concat!(env!("OUT_DIR"), "/zpath_proto.rs"));
