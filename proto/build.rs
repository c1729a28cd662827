//! Compiles the wire schema with protox (no system protoc) and generates:
//! - prost messages (maps as BTreeMap so that encoding is deterministic: the state
//!   digest hashes encoded bytes, and equal values must encode equally);
//! - a hand-described client that decodes frames with `crate::codec::ClientCodec`, which
//!   keeps each KeyValue's bytes as received (the digest hashes them; re-encoding would
//!   drop fields an older client does not know and break the comparison).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/typha/sync/v1/sync.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .btree_map(".")
        .bytes(".typha.sync.v1.SnapshotChunk.payload")
        .build_server(false)
        .build_client(false)
        .compile_fds(fds)?;

    // typha serves `Sync` with its own route and body (typha::server::route), so only
    // the client is generated.
    let sync = tonic_build::manual::Method::builder()
        .name("sync")
        .route_name("Sync")
        .input_type("crate::pb::ClientMessage")
        .output_type("crate::frame::ServerFrame")
        .codec_path("crate::codec::ClientCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("Typha")
        .package("typha.sync.v1")
        .method(sync)
        .build();
    let dir = PathBuf::from(std::env::var("OUT_DIR")?).join("client");
    std::fs::create_dir_all(&dir)?;
    tonic_build::manual::Builder::new()
        .build_client(true)
        .build_server(false)
        .out_dir(dir)
        .compile(&[service]);
    Ok(())
}
