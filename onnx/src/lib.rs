//! ONNX protobuf types generated from the vendored `onnx.proto`, plus a small builder for graphs
//! written from Rust (the trainer's exporter and the tests' hand-made models use it).

#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub mod builder;

pub use builder::GraphBuilder;
pub use proto::{ModelProto, NodeProto, TensorProto};
