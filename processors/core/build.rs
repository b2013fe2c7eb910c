//! Generates the Rust types for `proto/sensorflow/v1/messages.proto` with prost.
//! protoc comes from `protoc-bin-vendored`, so no system protobuf compiler is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    println!("cargo:rerun-if-changed=proto/sensorflow/v1/messages.proto");
    prost_build::Config::new()
        .protoc_executable(protoc)
        .compile_protos(&["proto/sensorflow/v1/messages.proto"], &["proto"])?;
    Ok(())
}
