//! Generate the ONNX protobuf types from the vendored `proto/onnx.proto` (copied verbatim from the
//! `onnx` 1.23.2 wheel) with protox, a pure-Rust protobuf compiler: no `protoc` needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
