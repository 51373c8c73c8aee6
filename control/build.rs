//! Generates the wire types (prost) and gRPC stubs (tonic) from `proto/`.
//!
//! protoc comes from `protoc-bin-vendored`, so no system protoc is needed.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/istio/workload/workload.proto",
    "proto/istio/security/authorization.proto",
    "proto/istio/ca/ca.proto",
    "proto/envoy/service/discovery/v3/discovery.proto",
    "proto/istio/zds/zds.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest.join("proto");
    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| manifest.join(p)).collect();
    let includes = vec![proto_root.clone(), well_known];

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Servers implement only what they need (tests implement the delta
        // stream only); the rest answer UNIMPLEMENTED.
        .generate_default_stubs(true)
        .include_file("zpath_proto.rs")
        // The descriptors of the same protos: tests check hand-written field tables
        // (`xds::wire`) against them.
        .file_descriptor_set_path(
            PathBuf::from(std::env::var("OUT_DIR")?).join("zpath_descriptors.bin"),
        )
        .compile_with_config(config, &protos, &includes)?;

    println!("cargo:rerun-if-changed={}", proto_root.display());
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}
