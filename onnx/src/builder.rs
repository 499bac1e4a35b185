//! A minimal, explicit ONNX graph builder: add initializers and nodes by name, declare the input
//! and output, then serialise a `ModelProto` with metadata. Node names and value names are the
//! caller's; nothing is inferred.

use crate::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use prost::Message;

/// The ONNX opset every exported graph declares (opset 17: LayerNormalization and friends exist,
/// and ONNX Runtime 1.16+ runs every operator we emit).
pub const OPSET: i64 = 17;

/// One attribute value for [`GraphBuilder::node`].
#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    String(String),
}

/// A dimension of an input or output: fixed, or a named dynamic one (for example "N").
#[derive(Debug, Clone)]
pub enum Dim {
    Fixed(i64),
    Named(String),
}

#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    metadata: Vec<(String, String)>,
    counter: usize,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder { graph: GraphProto { name: Some(name.to_string()), ..Default::default() }, ..Default::default() }
    }

    /// A fresh value name with the given prefix, unique within this graph.
    pub fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{}", self.counter)
    }

    /// Declare a float32 graph input.
    pub fn input_f32(&mut self, name: &str, dims: &[Dim]) {
        self.graph.input.push(value_info(name, dims));
    }

    /// Declare a float32 graph output.
    pub fn output_f32(&mut self, name: &str, dims: &[Dim]) {
        self.graph.output.push(value_info(name, dims));
    }

    /// Add a float32 initializer (a constant weight) and return its name.
    pub fn initializer_f32(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        assert_eq!(dims.iter().product::<i64>() as usize, values.len(), "initializer {name}: shape and data disagree");
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(TensorProto {
            name: Some(name.to_string()),
            dims: dims.to_vec(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(raw),
            ..Default::default()
        });
        name.to_string()
    }

    /// Add an int64 initializer (shapes, axes) and return its name.
    pub fn initializer_i64(&mut self, name: &str, dims: &[i64], values: &[i64]) -> String {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(TensorProto {
            name: Some(name.to_string()),
            dims: dims.to_vec(),
            data_type: Some(DataType::Int64 as i32),
            raw_data: Some(raw),
            ..Default::default()
        });
        name.to_string()
    }

    /// Add a node `op_type(inputs) -> outputs` with attributes.
    pub fn node(&mut self, op_type: &str, inputs: &[&str], outputs: &[&str], attrs: &[(&str, Attr)]) {
        let name = self.fresh(op_type);
        self.graph.node.push(NodeProto {
            name: Some(name),
            op_type: Some(op_type.to_string()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs.iter().map(|(k, v)| attribute(k, v)).collect(),
            ..Default::default()
        });
    }

    /// Add a node with one output named freshly after the op, and return that output's name.
    pub fn op(&mut self, op_type: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = self.fresh(&op_type.to_lowercase());
        self.node(op_type, inputs, &[&out], attrs);
        out
    }

    /// A `metadata_props` entry of the model.
    pub fn metadata(&mut self, key: &str, value: impl Into<String>) {
        self.metadata.push((key.to_string(), value.into()));
    }

    pub fn build(self) -> ModelProto {
        ModelProto {
            ir_version: Some(8),
            producer_name: Some("cls-rs".to_string()),
            producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
            metadata_props: self
                .metadata
                .into_iter()
                .map(|(k, v)| StringStringEntryProto { key: Some(k), value: Some(v) })
                .collect(),
            graph: Some(self.graph),
            ..Default::default()
        }
    }

    /// Serialise the model to protobuf bytes.
    pub fn to_bytes(self) -> Vec<u8> {
        self.build().encode_to_vec()
    }
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let shape = TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| tensor_shape_proto::Dimension {
                value: Some(match d {
                    Dim::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                    Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
                }),
                ..Default::default()
            })
            .collect(),
    };
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(shape),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attribute(name: &str, value: &Attr) -> AttributeProto {
    let mut a = AttributeProto { name: Some(name.to_string()), ..Default::default() };
    match value {
        Attr::Int(v) => {
            a.i = Some(*v);
            a.r#type = Some(AttributeType::Int as i32);
        }
        Attr::Float(v) => {
            a.f = Some(*v);
            a.r#type = Some(AttributeType::Float as i32);
        }
        Attr::Ints(v) => {
            a.ints = v.clone();
            a.r#type = Some(AttributeType::Ints as i32);
        }
        Attr::Floats(v) => {
            a.floats = v.clone();
            a.r#type = Some(AttributeType::Floats as i32);
        }
        Attr::String(v) => {
            a.s = Some(v.clone().into_bytes());
            a.r#type = Some(AttributeType::String as i32);
        }
    }
    a
}
