//! EfficientNet-Lite0 with the lukemelas `efficientnet_pytorch` parameter names, and its ONNX graph.
//!
//! Lite0 is EfficientNet-B0 made friendly to fixed-point hardware: ReLU6 instead of swish, no
//! squeeze-and-excitation, and the stem (32 channels) and head (1280 channels) not rescaled. Every
//! convolution uses TensorFlow "same" padding (output `ceil(in / stride)`, odd padding at the end),
//! computed from the input size; batch norm has eps 1e-3 and momentum 0.01 (TF's 0.99 decay).
//!
//! `_conv_stem` (3×3, stride 2) → `_bn0` → ReLU6 → 16 MBConv `_blocks` → `_conv_head` (1×1) → `_bn1`
//! → ReLU6 → global average pooling. A block is `_expand_conv`/`_bn0`/ReLU6 (absent when the expand
//! ratio is 1), `_depthwise_conv`/`_bn1`/ReLU6, `_project_conv`/`_bn2`, plus the identity when the
//! stride is 1 and the channel count is unchanged. Training-time drop-connect and the dropout
//! before the classifier of the reference implementation are not reproduced.

use anyhow::Result;
use tch::nn;
use tch::Tensor;

use crate::graph::{Emitter, Padding};
use crate::resnet::bn;
use crate::torch_default_init;

pub(crate) const STEM_CHANNELS: i64 = 32;
pub(crate) const HEAD_CHANNELS: i64 = 1280;
const BN_EPS: f64 = 1e-3;
const BN_MOMENTUM: f64 = 0.01;

/// The standard Lite0 stage table: (repeats, kernel, stride, expand ratio, in, out).
const STAGES: [(usize, i64, i64, i64, i64, i64); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

#[derive(Debug, Clone, Copy)]
struct BlockSpec {
    kernel: i64,
    stride: i64,
    expand: i64,
    in_ch: i64,
    out_ch: i64,
}

impl BlockSpec {
    fn mid(&self) -> i64 {
        self.in_ch * self.expand
    }
    fn has_skip(&self) -> bool {
        self.stride == 1 && self.in_ch == self.out_ch
    }
}

/// The 16 blocks in order: the first block of a stage has its stride and input width, repeats
/// have stride 1 and the stage's output width as input.
fn block_specs() -> Vec<BlockSpec> {
    let mut specs = Vec::new();
    for &(repeats, kernel, stride, expand, in_ch, out_ch) in &STAGES {
        specs.push(BlockSpec { kernel, stride, expand, in_ch, out_ch });
        for _ in 1..repeats {
            specs.push(BlockSpec { kernel, stride: 1, expand, in_ch: out_ch, out_ch });
        }
    }
    specs
}

/// TensorFlow "same" padding of one spatial dimension: `(before, after)`.
fn same_pad(size: i64, kernel: i64, stride: i64) -> (i64, i64) {
    let out = (size + stride - 1) / stride;
    let total = ((out - 1) * stride + kernel - size).max(0);
    (total / 2, total - total / 2)
}

/// A bias-free convolution with "same" padding computed from the input size. The symmetric part
/// of the padding is the convolution's own; only an odd remainder (one row or column at the end,
/// which stride-2 layers need) costs an explicit pad.
struct SameConv {
    conv: nn::Conv2D,
    kernel: i64,
    stride: i64,
    groups: i64,
}

impl SameConv {
    fn new(p: nn::Path, cin: i64, cout: i64, kernel: i64, stride: i64, groups: i64) -> SameConv {
        // lukemelas's Conv2dStaticSamePadding keeps nn.Conv2d's default init.
        let fan_in = cin / groups * kernel * kernel;
        let cfg = nn::ConvConfig {
            stride,
            padding: 0,
            groups,
            bias: false,
            ws_init: torch_default_init(fan_in),
            ..Default::default()
        };
        SameConv { conv: nn::conv2d(p, cin, cout, kernel, cfg), kernel, stride, groups }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
        let (top, bottom) = same_pad(h, self.kernel, self.stride);
        let (left, right) = same_pad(w, self.kernel, self.stride);
        // same_pad puts the odd element at the end: bottom - top and right - left are 0 or 1.
        let extra = [0, right - left, 0, bottom - top];
        let padded;
        let input = if extra.iter().any(|&p| p != 0) {
            padded = x.constant_pad_nd(extra);
            &padded
        } else {
            x
        };
        input.conv2d(&self.conv.ws, None::<&Tensor>, [self.stride, self.stride], [top, left], [1, 1], self.groups)
    }
}

struct Block {
    spec: BlockSpec,
    expand: Option<(SameConv, nn::BatchNorm)>,
    depthwise: (SameConv, nn::BatchNorm),
    project: (SameConv, nn::BatchNorm),
}

impl Block {
    fn new(p: nn::Path, spec: BlockSpec) -> Block {
        let mid = spec.mid();
        let expand = (spec.expand != 1).then(|| {
            (SameConv::new(&p / "_expand_conv", spec.in_ch, mid, 1, 1, 1), bn(&p / "_bn0", mid, BN_EPS, BN_MOMENTUM))
        });
        let depthwise = (
            SameConv::new(&p / "_depthwise_conv", mid, mid, spec.kernel, spec.stride, mid),
            bn(&p / "_bn1", mid, BN_EPS, BN_MOMENTUM),
        );
        let project = (
            SameConv::new(&p / "_project_conv", mid, spec.out_ch, 1, 1, 1),
            bn(&p / "_bn2", spec.out_ch, BN_EPS, BN_MOMENTUM),
        );
        Block { spec, expand, depthwise, project }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        if let Some((c, b)) = &self.expand {
            y = c.forward(&y).apply_t(b, train).relu6();
        }
        y = self.depthwise.0.forward(&y).apply_t(&self.depthwise.1, train).relu6();
        y = self.project.0.forward(&y).apply_t(&self.project.1, train);
        if self.spec.has_skip() {
            y + x
        } else {
            y
        }
    }
}

pub(crate) struct EfficientNet {
    stem: (SameConv, nn::BatchNorm),
    blocks: Vec<Block>,
    head: (SameConv, nn::BatchNorm),
}

impl EfficientNet {
    pub fn new(root: &nn::Path) -> EfficientNet {
        let stem = (
            SameConv::new(root / "_conv_stem", 3, STEM_CHANNELS, 3, 2, 1),
            bn(root / "_bn0", STEM_CHANNELS, BN_EPS, BN_MOMENTUM),
        );
        let blocks_path = root / "_blocks";
        let blocks = block_specs().into_iter().enumerate().map(|(i, s)| Block::new(&blocks_path / i, s)).collect();
        let last = STAGES[STAGES.len() - 1].5;
        let head = (
            SameConv::new(root / "_conv_head", last, HEAD_CHANNELS, 1, 1, 1),
            bn(root / "_bn1", HEAD_CHANNELS, BN_EPS, BN_MOMENTUM),
        );
        EfficientNet { stem, blocks, head }
    }

    pub fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = self.stem.0.forward(x).apply_t(&self.stem.1, train).relu6();
        for b in &self.blocks {
            y = b.forward_t(&y, train);
        }
        y = self.head.0.forward(&y).apply_t(&self.head.1, train).relu6();
        y.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

/// conv ("same") → batch norm → optional ReLU6, in ONNX.
fn emit_conv_bn(e: &mut Emitter, x: &str, conv: &str, bn: &str, stride: i64, groups: i64, act: bool) -> Result<String> {
    let y = e.conv(x, conv, stride, Padding::SameUpper, groups, false)?;
    let y = e.batch_norm(&y, bn, BN_EPS)?;
    Ok(if act { e.relu6(&y) } else { y })
}

/// The ONNX nodes of [`EfficientNet::features_t`] in eval mode; returns the `[N, 1280]` value.
pub(crate) fn emit_features(e: &mut Emitter, x: &str) -> Result<String> {
    let mut y = emit_conv_bn(e, x, "_conv_stem", "_bn0", 2, 1, true)?;
    for (i, s) in block_specs().into_iter().enumerate() {
        let p = format!("_blocks.{i}");
        let mut z = y.clone();
        if s.expand != 1 {
            z = emit_conv_bn(e, &z, &format!("{p}._expand_conv"), &format!("{p}._bn0"), 1, 1, true)?;
        }
        z = emit_conv_bn(e, &z, &format!("{p}._depthwise_conv"), &format!("{p}._bn1"), s.stride, s.mid(), true)?;
        z = emit_conv_bn(e, &z, &format!("{p}._project_conv"), &format!("{p}._bn2"), 1, 1, false)?;
        y = if s.has_skip() { e.add(&z, &y) } else { z };
    }
    let y = emit_conv_bn(e, &y, "_conv_head", "_bn1", 1, 1, true)?;
    Ok(e.global_avg_pool(&y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // TF: out = ceil(in / s), total = max((out - 1) * s + k - in, 0), extra at the end.
        assert_eq!(same_pad(224, 3, 2), (0, 1)); // out 112: 111*2 + 3 - 224 = 1
        assert_eq!(same_pad(225, 3, 2), (1, 1)); // out 113: 112*2 + 3 - 225 = 2
        assert_eq!(same_pad(14, 5, 1), (2, 2));
        assert_eq!(same_pad(7, 1, 1), (0, 0));
    }

    #[test]
    fn block_table_has_sixteen_blocks_ending_at_320() {
        let specs = block_specs();
        assert_eq!(specs.len(), 16);
        assert_eq!(specs[0].in_ch, STEM_CHANNELS);
        assert_eq!(specs[15].out_ch, 320);
        assert_eq!(specs.iter().filter(|s| s.stride == 2).count(), 4);
    }
}
