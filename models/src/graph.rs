//! The ONNX side of the layers: an [`Emitter`] reads a network's weights from its `VarStore` by
//! the same names the tch modules were built with, and appends the matching ONNX nodes.
//! Batch norm is emitted as `BatchNormalization` in inference mode (running statistics), which
//! ONNX Runtime folds into the preceding convolution when it optimises the graph.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use cls_onnx::builder::Attr;
use cls_onnx::GraphBuilder;
use tch::{Device, Kind, Tensor};

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Padding {
    /// The same padding on every side (PyTorch's `padding=p`).
    Symmetric(i64),
    /// TensorFlow's "same": output size `ceil(in / stride)`, any odd extra padding at the end
    /// (ONNX `auto_pad = SAME_UPPER`).
    SameUpper,
}

/// Appends one network's nodes to a graph. Initializers are named `{tag}{local name}` so that two
/// networks (an ensemble) can share one graph.
pub(crate) struct Emitter<'a> {
    pub g: &'a mut GraphBuilder,
    vars: HashMap<String, Tensor>,
    /// The network's `VarStore` path, with a trailing "." unless empty.
    prefix: String,
    /// Prefix for initializer names in the graph.
    tag: String,
    /// The `Clip` bounds of [`Emitter::relu6`], added once.
    relu6_bounds: Option<(String, String)>,
}

impl<'a> Emitter<'a> {
    pub fn new(g: &'a mut GraphBuilder, vs: &tch::nn::VarStore, net_prefix: &str, tag: &str) -> Self {
        let prefix = if net_prefix.is_empty() { String::new() } else { format!("{net_prefix}.") };
        Emitter { g, vars: vs.variables(), prefix, tag: tag.to_string(), relu6_bounds: None }
    }

    /// Adds the variable `name` (relative to the network) as an initializer and returns the
    /// initializer's name and its shape.
    pub fn weight(&mut self, name: &str) -> Result<(String, Vec<i64>)> {
        let full = format!("{}{name}", self.prefix);
        let t = self.vars.get(&full).ok_or_else(|| anyhow!("export: variable {full:?} not found in the VarStore"))?;
        let shape = t.size();
        let values = tensor_to_vec(t).with_context(|| format!("export: reading {full}"))?;
        let init = self.g.initializer_f32(&format!("{}{name}", self.tag), &shape, &values);
        Ok((init, shape))
    }

    /// `Conv` with the weight `{name}.weight` (and `{name}.bias` when `bias`).
    pub fn conv(
        &mut self,
        x: &str,
        name: &str,
        stride: i64,
        padding: Padding,
        groups: i64,
        bias: bool,
    ) -> Result<String> {
        let (w, shape) = self.weight(&format!("{name}.weight"))?;
        if shape.len() != 4 {
            bail!("export: {name}.weight has shape {shape:?}, expected 4 dimensions");
        }
        let mut inputs = vec![x.to_string(), w];
        if bias {
            inputs.push(self.weight(&format!("{name}.bias"))?.0);
        }
        let mut attrs = vec![
            ("kernel_shape", Attr::Ints(vec![shape[2], shape[3]])),
            ("strides", Attr::Ints(vec![stride, stride])),
            ("group", Attr::Int(groups)),
        ];
        match padding {
            Padding::Symmetric(p) => attrs.push(("pads", Attr::Ints(vec![p, p, p, p]))),
            Padding::SameUpper => attrs.push(("auto_pad", Attr::String("SAME_UPPER".into()))),
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(self.g.op("Conv", &inputs, &attrs))
    }

    /// `BatchNormalization` in inference mode from `{name}.weight/bias/running_mean/running_var`.
    pub fn batch_norm(&mut self, x: &str, name: &str, eps: f64) -> Result<String> {
        let scale = self.weight(&format!("{name}.weight"))?.0;
        let bias = self.weight(&format!("{name}.bias"))?.0;
        let mean = self.weight(&format!("{name}.running_mean"))?.0;
        let var = self.weight(&format!("{name}.running_var"))?.0;
        Ok(self.g.op("BatchNormalization", &[x, &scale, &bias, &mean, &var], &[("epsilon", Attr::Float(eps as f32))]))
    }

    /// `x · Wᵀ + b` from a PyTorch `Linear` (`{name}.weight` is `[out, in]`).
    pub fn linear(&mut self, x: &str, name: &str) -> Result<String> {
        let w = self.weight(&format!("{name}.weight"))?.0;
        let b = self.weight(&format!("{name}.bias"))?.0;
        Ok(self.g.op("Gemm", &[x, &w, &b], &[("transB", Attr::Int(1))]))
    }

    pub fn relu(&mut self, x: &str) -> String {
        self.g.op("Relu", &[x], &[])
    }

    /// `min(max(x, 0), 6)` as `Clip` with constant bounds (opset ≥ 11 takes them as inputs).
    pub fn relu6(&mut self, x: &str) -> String {
        let (lo, hi) = match &self.relu6_bounds {
            Some(bounds) => bounds.clone(),
            None => {
                let lo = self.g.initializer_f32(&format!("{}const.zero", self.tag), &[], &[0.0]);
                let hi = self.g.initializer_f32(&format!("{}const.six", self.tag), &[], &[6.0]);
                self.relu6_bounds = Some((lo.clone(), hi.clone()));
                (lo, hi)
            }
        };
        self.g.op("Clip", &[x, &lo, &hi], &[])
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.g.op("Add", &[a, b], &[])
    }

    /// Global average pooling to `[N, C]`.
    pub fn global_avg_pool(&mut self, x: &str) -> String {
        let pooled = self.g.op("GlobalAveragePool", &[x], &[]);
        self.g.op("Flatten", &[&pooled], &[("axis", Attr::Int(1))])
    }
}

/// A tensor's values as a flat `Vec<f32>` (any float kind, any device).
pub(crate) fn tensor_to_vec(t: &Tensor) -> Result<Vec<f32>> {
    let flat = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view(-1);
    Vec::<f32>::try_from(&flat).map_err(|e| anyhow!("tensor to Vec<f32>: {e}"))
}
