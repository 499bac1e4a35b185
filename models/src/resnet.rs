//! torchvision's ResNet-18/34/50/101, with torchvision's parameter names, and its ONNX graph.
//!
//! Stem: `conv1` (7×7, stride 2, pad 3) → `bn1` → ReLU → 3×3 max pool (stride 2, pad 1); then
//! `layer1`…`layer4` of BasicBlocks (18/34: 3×3 → 3×3) or Bottlenecks (50/101: 1×1 → 3×3 → 1×1,
//! expansion 4, stride on the 3×3 conv as in torchvision's "ResNet v1.5"); a block whose shape
//! changes has `downsample.0` (1×1 conv with the block's stride) and `downsample.1` (batch norm).
//! Batch norm eps is 1e-5; global average pooling gives the features.

use anyhow::Result;
use cls_onnx::builder::Attr;
use tch::nn;
use tch::Tensor;

use crate::graph::{Emitter, Padding};
use crate::Arch;

const BN_EPS: f64 = 1e-5;

/// One residual block's shape, shared by the tch builder and the ONNX emitter.
#[derive(Debug, Clone)]
struct BlockSpec {
    /// `layer{layer}.{index}`
    name: String,
    bottleneck: bool,
    in_ch: i64,
    /// Width of the 3×3 conv (the block's output is `width * expansion`).
    width: i64,
    out_ch: i64,
    stride: i64,
}

impl BlockSpec {
    fn has_downsample(&self) -> bool {
        self.stride != 1 || self.in_ch != self.out_ch
    }
}

/// The blocks of `arch` in order (torchvision's `_make_layer`).
fn block_specs(arch: &Arch) -> Vec<BlockSpec> {
    let (bottleneck, counts): (bool, [usize; 4]) = match arch {
        Arch::ResNet18 => (false, [2, 2, 2, 2]),
        Arch::ResNet34 => (false, [3, 4, 6, 3]),
        Arch::ResNet50 => (true, [3, 4, 6, 3]),
        Arch::ResNet101 => (true, [3, 4, 23, 3]),
        other => unreachable!("resnet::block_specs called with {other:?}"),
    };
    let expansion = if bottleneck { 4 } else { 1 };
    let mut specs = Vec::new();
    let mut in_ch = 64;
    for (layer, &count) in counts.iter().enumerate() {
        let width = 64 << layer;
        for index in 0..count {
            let stride = if layer > 0 && index == 0 { 2 } else { 1 };
            let out_ch = width * expansion;
            specs.push(BlockSpec {
                name: format!("layer{}.{index}", layer + 1),
                bottleneck,
                in_ch,
                width,
                out_ch,
                stride,
            });
            in_ch = out_ch;
        }
    }
    specs
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        bias: false,
        // torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
        ws_init: nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

pub(crate) fn bn(p: nn::Path, ch: i64, eps: f64, momentum: f64) -> nn::BatchNorm {
    let cfg = nn::BatchNormConfig {
        eps,
        momentum,
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::batch_norm2d(p, ch, cfg)
}

struct Block {
    /// (conv, bn) pairs in order: 2 for a BasicBlock, 3 for a Bottleneck.
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl Block {
    fn new(root: &nn::Path, s: &BlockSpec) -> Block {
        let (layer, index) = s.name.split_once('.').unwrap_or((s.name.as_str(), "0"));
        let p = root / layer / index;
        let layers: Vec<(i64, i64, i64, i64, i64)> = if s.bottleneck {
            // (cin, cout, kernel, stride, padding)
            vec![(s.in_ch, s.width, 1, 1, 0), (s.width, s.width, 3, s.stride, 1), (s.width, s.out_ch, 1, 1, 0)]
        } else {
            vec![(s.in_ch, s.width, 3, s.stride, 1), (s.width, s.out_ch, 3, 1, 1)]
        };
        let convs = layers
            .into_iter()
            .enumerate()
            .map(|(i, (cin, cout, k, stride, pad))| {
                (
                    conv(&p / format!("conv{}", i + 1), cin, cout, k, stride, pad),
                    bn(&p / format!("bn{}", i + 1), cout, BN_EPS, 0.1),
                )
            })
            .collect();
        let downsample = s.has_downsample().then(|| {
            let d = &p / "downsample";
            (conv(&d / "0", s.in_ch, s.out_ch, 1, s.stride, 0), bn(&d / "1", s.out_ch, BN_EPS, 0.1))
        });
        Block { convs, downsample }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let last = self.convs.len() - 1;
        let mut y = x.shallow_clone();
        for (i, (c, b)) in self.convs.iter().enumerate() {
            y = y.apply(c).apply_t(b, train);
            if i < last {
                y = y.relu();
            }
        }
        let identity = match &self.downsample {
            Some((c, b)) => x.apply(c).apply_t(b, train),
            None => x.shallow_clone(),
        };
        (y + identity).relu()
    }
}

pub(crate) struct ResNet {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    blocks: Vec<Block>,
}

impl ResNet {
    pub fn new(root: &nn::Path, arch: &Arch) -> ResNet {
        let conv1 = conv(root / "conv1", 3, 64, 7, 2, 3);
        let bn1 = bn(root / "bn1", 64, BN_EPS, 0.1);
        let blocks = block_specs(arch).iter().map(|s| Block::new(root, s)).collect();
        ResNet { conv1, bn1, blocks }
    }

    pub fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y =
            x.apply(&self.conv1).apply_t(&self.bn1, train).relu().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for b in &self.blocks {
            y = b.forward_t(&y, train);
        }
        y.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

/// The ONNX nodes of [`ResNet::features_t`] in eval mode; returns the `[N, feature_dim]` value.
pub(crate) fn emit_features(e: &mut Emitter, arch: &Arch, x: &str) -> Result<String> {
    let y = e.conv(x, "conv1", 2, Padding::Symmetric(3), 1, false)?;
    let y = e.batch_norm(&y, "bn1", BN_EPS)?;
    let y = e.relu(&y);
    let mut y = e.g.op(
        "MaxPool",
        &[&y],
        &[
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("strides", Attr::Ints(vec![2, 2])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
        ],
    );
    for s in block_specs(arch) {
        let n = &s.name;
        let steps: Vec<(i64, i64)> = if s.bottleneck {
            // (stride, padding) of conv1..conv3
            vec![(1, 0), (s.stride, 1), (1, 0)]
        } else {
            vec![(s.stride, 1), (1, 1)]
        };
        let mut z = y.clone();
        for (i, (stride, pad)) in steps.iter().enumerate() {
            z = e.conv(&z, &format!("{n}.conv{}", i + 1), *stride, Padding::Symmetric(*pad), 1, false)?;
            z = e.batch_norm(&z, &format!("{n}.bn{}", i + 1), BN_EPS)?;
            if i + 1 < steps.len() {
                z = e.relu(&z);
            }
        }
        let identity = if s.has_downsample() {
            let d = e.conv(&y, &format!("{n}.downsample.0"), s.stride, Padding::Symmetric(0), 1, false)?;
            e.batch_norm(&d, &format!("{n}.downsample.1"), BN_EPS)?
        } else {
            y.clone()
        };
        let sum = e.add(&z, &identity);
        y = e.relu(&sum);
    }
    Ok(e.global_avg_pool(&y))
}
