//! Generates the conformance client's message types from the wire schema alone
//! (`proto/proto/typha/sync/v1/sync.proto`, compiled with protox: no system protoc).
//! Plain prost messages, no service code: the client speaks gRPC through tonic's generic
//! client with its own pass-through codec, so it sees every frame's bytes as received.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/proto/typha/sync/v1/sync.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../proto/proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
