//! Networks for CLS in tch, each with its ONNX graph side by side.
//!
//! Every network is a backbone (ResNet, EfficientNet-Lite0 or a small MLP over precomputed
//! features) followed by one linear classifier. Parameters carry the PyTorch checkpoint's own names
//! (torchvision for ResNet, lukemelas `efficientnet_pytorch` for EfficientNet-Lite0), so pretrained
//! weights load by name ([`load_pretrained`]) with no mapping table, and the ONNX exporter
//! ([`export_onnx`]) reads the same names back out of the `VarStore`.
//!
//! The classifier produces one logit per class; probabilities are `sigmoid(logit)` (method.md,
//! "Per-entry losses with p = sigmoid(logit)"). Its bias may start at `logit(prior)` (method.md,
//! end-to-end fine-tuning: "the classifier's bias started at logit(0.01)").

use std::str::FromStr;

use tch::{nn, Tensor};

mod efficientnet;
mod export;
mod graph;
mod load;
mod mlp;
mod resnet;

pub use export::{export_onnx, onnx_bytes, ExportMeta};
pub use load::{load_pretrained, IncompatibleWeights, LoadReport};

/// Errors of this crate that callers may want to match on.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "unknown architecture {0:?} (expected resnet18, resnet34, resnet50, resnet101, efficientnet-lite0 or mlp)"
    )]
    UnknownArch(String),
    #[error("invalid network: {0}")]
    Invalid(String),
}

/// Which network to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arch {
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    EfficientNetLite0,
    /// A head over precomputed feature vectors: `Linear(in_dim, hidden) → BatchNorm1d → ReLU`,
    /// then the classifier. `hidden == 0` means no hidden layer (a linear classifier on the features).
    Mlp {
        in_dim: i64,
        hidden: i64,
    },
}

impl Arch {
    /// The names [`FromStr`] accepts (besides the `efficientnet_lite0` spelling), for `--backbone`.
    pub const NAMES: [&'static str; 6] = ["resnet18", "resnet34", "resnet50", "resnet101", "efficientnet-lite0", "mlp"];
}

impl FromStr for Arch {
    type Err = ModelError;

    /// Parses `resnet18`, `resnet34`, `resnet50`, `resnet101`, `efficientnet-lite0` (also
    /// `efficientnet_lite0`) and `mlp` (as `Mlp { in_dim: 0, hidden: 512 }`; set the input width
    /// later with [`Arch::with_in_dim`]). Case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "resnet18" => Ok(Arch::ResNet18),
            "resnet34" => Ok(Arch::ResNet34),
            "resnet50" => Ok(Arch::ResNet50),
            "resnet101" => Ok(Arch::ResNet101),
            "efficientnet-lite0" | "efficientnet_lite0" | "efficientnetlite0" => Ok(Arch::EfficientNetLite0),
            "mlp" => Ok(Arch::Mlp { in_dim: 0, hidden: 512 }),
            _ => Err(ModelError::UnknownArch(s.to_string())),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl Arch {
    /// The name [`FromStr`] accepts (`mlp` carries no dimensions).
    pub fn name(&self) -> String {
        match self {
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
            Arch::ResNet101 => "resnet101",
            Arch::EfficientNetLite0 => "efficientnet-lite0",
            Arch::Mlp { .. } => "mlp",
        }
        .to_string()
    }

    /// Width of the feature vector the classifier reads (after global average pooling).
    pub fn feature_dim(&self) -> i64 {
        match self {
            Arch::ResNet18 | Arch::ResNet34 => 512,
            Arch::ResNet50 | Arch::ResNet101 => 2048,
            Arch::EfficientNetLite0 => efficientnet::HEAD_CHANNELS,
            Arch::Mlp { in_dim, hidden } => {
                if *hidden > 0 {
                    *hidden
                } else {
                    *in_dim
                }
            }
        }
    }

    /// Whether the network reads images `[N, 3, H, W]` (otherwise feature vectors `[N, in_dim]`).
    pub fn is_image(&self) -> bool {
        !matches!(self, Arch::Mlp { .. })
    }

    /// The same architecture with the MLP's input width set (other architectures are unchanged).
    pub fn with_in_dim(self, in_dim: i64) -> Arch {
        match self {
            Arch::Mlp { hidden, .. } => Arch::Mlp { in_dim, hidden },
            other => other,
        }
    }
}

enum Backbone {
    ResNet(resnet::ResNet),
    EfficientNet(Box<efficientnet::EfficientNet>),
    Mlp(mlp::Mlp),
}

/// A backbone plus a linear classifier producing one logit per class.
pub struct Net {
    arch: Arch,
    /// The `VarStore` path of `root` in [`Net::new`] (empty for the root itself), "." separated.
    prefix: String,
    num_classes: i64,
    backbone: Backbone,
    fc: nn::Linear,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("arch", &self.arch)
            .field("prefix", &self.prefix)
            .field("num_classes", &self.num_classes)
            .finish()
    }
}

/// PyTorch's default initialisation of `nn.Linear` and `nn.Conv2d` weights (and of their biases):
/// `kaiming_uniform_(a = √5)`, which is U(−1/√fan_in, +1/√fan_in), fan_in = inputs × kernel area
/// (÷ groups). tch's own default, Kaiming-uniform with the ReLU gain, draws U(±√(6/fan_in)): √6 ≈
/// 2.45× wider, enough to change how a freshly initialised classifier fine-tunes.
pub(crate) fn torch_default_init(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    nn::Init::Uniform { lo: -bound, up: bound }
}

/// `log(p / (1 - p))`.
pub fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

impl Net {
    /// Builds the network under `root`, with the PyTorch checkpoint's own parameter names
    /// (torchvision for ResNet: `conv1`, `bn1`, `layer1.0.conv1`, …, classifier `fc`; lukemelas
    /// `efficientnet_pytorch` for EfficientNet-Lite0: `_conv_stem`, `_bn0`, `_blocks.N.…`,
    /// `_conv_head`, `_bn1`, classifier `_fc`; MLP: `layers.0` (Linear), `layers.1` (BatchNorm1d),
    /// classifier `fc`).
    ///
    /// Weights not loaded from a checkpoint start as their PyTorch originals initialise them: the
    /// classifier (and the MLP's hidden layer) as `nn.Linear`, EfficientNet's convolutions as
    /// lukemelas's (PyTorch's `nn.Conv2d` default), ResNet's as torchvision's (Kaiming-normal,
    /// fan-out); batch norms at weight 1, bias 0. With `prior = Some(p)` the classifier bias
    /// starts at `logit(p)` for every class (docs/method.md: logit(0.01)); otherwise it keeps
    /// `nn.Linear`'s uniform init.
    ///
    /// Panics on invalid sizes or prior (see [`Net::try_new`], which returns them as errors).
    pub fn new(root: &nn::Path, arch: &Arch, num_classes: i64, prior: Option<f64>) -> Net {
        Net::try_new(root, arch, num_classes, prior).unwrap_or_else(|e| panic!("Net::new: {e}"))
    }

    /// [`Net::new`], with an error instead of a panic when `num_classes <= 0`, an `Mlp` has
    /// `in_dim <= 0` (set it with [`Arch::with_in_dim`]) or `hidden < 0`, or the prior is not in
    /// (0, 1).
    pub fn try_new(root: &nn::Path, arch: &Arch, num_classes: i64, prior: Option<f64>) -> Result<Net, ModelError> {
        if num_classes <= 0 {
            return Err(ModelError::Invalid(format!("num_classes must be positive, got {num_classes}")));
        }
        if let Some(p) = prior.filter(|p| !(*p > 0.0 && *p < 1.0)) {
            return Err(ModelError::Invalid(format!("the classifier prior must be in (0, 1), got {p}")));
        }
        let backbone = match arch {
            Arch::ResNet18 | Arch::ResNet34 | Arch::ResNet50 | Arch::ResNet101 => {
                Backbone::ResNet(resnet::ResNet::new(root, arch))
            }
            Arch::EfficientNetLite0 => Backbone::EfficientNet(Box::new(efficientnet::EfficientNet::new(root))),
            Arch::Mlp { in_dim, hidden } => {
                if *in_dim <= 0 || *hidden < 0 {
                    return Err(ModelError::Invalid(format!(
                        "mlp needs in_dim > 0 (Arch::with_in_dim) and hidden >= 0, got in_dim {in_dim}, hidden {hidden}"
                    )));
                }
                Backbone::Mlp(mlp::Mlp::new(root, *in_dim, *hidden))
            }
        };
        let fc_cfg = nn::LinearConfig { ws_init: torch_default_init(arch.feature_dim()), ..Default::default() };
        let fc = nn::linear(root / classifier_prefix(arch), arch.feature_dim(), num_classes, fc_cfg);
        if let (Some(p), Some(bs)) = (prior, &fc.bs) {
            tch::no_grad(|| {
                let _ = bs.shallow_clone().fill_(logit(p));
            });
        }
        let prefix = root.components().collect::<Vec<_>>().join(".");
        Ok(Net { arch: arch.clone(), prefix, num_classes, backbone, fc })
    }

    /// Features after global average pooling, `[N, feature_dim]`. `train` selects batch-norm's
    /// batch statistics (and updates the running ones) versus the running statistics.
    ///
    /// Image backbones run in channels-last (NHWC) memory order whatever the input's layout:
    /// libtorch's oneDNN convolutions are much faster that way on CPU (EfficientNet-Lite0's
    /// depthwise ones most: measured on 2 cores, forward 2.0x, forward + backward 1.3-2.5x), and
    /// cuDNN's are on GPU. Values are the same up to float rounding.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.backbone {
            Backbone::ResNet(m) => m.features_t(&channels_last(x), train),
            Backbone::EfficientNet(m) => m.features_t(&channels_last(x), train),
            Backbone::Mlp(m) => m.features_t(x, train),
        }
    }

    /// Classifier logits `[N, C]` from features `[N, feature_dim]`.
    pub fn head(&self, features: &Tensor) -> Tensor {
        features.apply(&self.fc)
    }

    /// `head(features_t(x, train))`: logits `[N, C]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.head(&self.features_t(x, train))
    }

    /// The classifier's module name: `"fc"` (ResNet, MLP) or `"_fc"` (EfficientNet-Lite0).
    pub fn classifier_prefix(&self) -> &'static str {
        classifier_prefix(&self.arch)
    }

    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    pub fn num_classes(&self) -> i64 {
        self.num_classes
    }

    /// The `VarStore` path the network was built under ("" for the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

fn classifier_prefix(arch: &Arch) -> &'static str {
    match arch {
        Arch::EfficientNetLite0 => "_fc",
        _ => "fc",
    }
}

/// Dlopens `libtorch_cuda.so` so that CUDA is visible to tch: rustc links with `--as-needed`, which
/// drops the library because no symbol of it is referenced directly, and libtorch then reports no
/// CUDA device. Failures are ignored (CPU-only machines and CPU-only libtorch builds).
pub fn init_cuda() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut candidates: Vec<String> = Vec::new();
        // The libtorch the crate was built against (`.cargo/config.toml` sets LIBTORCH), then the
        // dynamic loader's own search (RUNPATH, LD_LIBRARY_PATH).
        if let Some(dir) = option_env!("LIBTORCH") {
            candidates.push(format!("{dir}/lib/libtorch_cuda.so"));
        }
        candidates.push("libtorch_cuda.so".to_string());
        for name in &candidates {
            // SAFETY: loading libtorch's own CUDA library runs its static initialisers, which only
            // register CUDA kernels and hooks with the already loaded libtorch.
            if let Ok(lib) = unsafe { libloading::Library::new(name) } {
                // Keep it loaded for the life of the process.
                std::mem::forget(lib);
                return;
            }
        }
    });
}

extern "C" {
    fn cls_set_cuda_autocast_bf16() -> i32;
    fn cls_cuda_autocast_enter(enabled: i32) -> i32;
    fn cls_cuda_autocast_exit(prev: i32) -> i32;
}

/// `f` under CUDA autocast (`enabled`), as `tch::autocast` but through libtorch's per-device
/// calls (csrc/amp.cpp), which print no deprecation warning; without CUDA, `f` alone. Should
/// libtorch refuse, `f` runs without autocast.
pub fn cuda_autocast<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if !tch::Cuda::is_available() {
        return f();
    }
    /// Leaves autocast as it was, also when `f` panics.
    struct Exit(i32);
    impl Drop for Exit {
        fn drop(&mut self) {
            // SAFETY: a C function of our own (csrc/amp.cpp) that catches every C++ exception;
            // `self.0` is what enter returned.
            unsafe { cls_cuda_autocast_exit(self.0) };
        }
    }
    // SAFETY: as above.
    let prev = unsafe { cls_cuda_autocast_enter(i32::from(enabled)) };
    if prev < 0 {
        return f();
    }
    let _exit = Exit(prev);
    f()
}

/// Make bfloat16 the dtype of autocast on CUDA (libtorch's default is float16); the trainer
/// wraps forward passes on CUDA in [`cuda_autocast`]. Returns false if libtorch
/// refused.
pub fn use_bf16_autocast() -> bool {
    // SAFETY: a C function of our own (csrc/amp.cpp) that catches every C++ exception.
    unsafe { cls_set_cuda_autocast_bf16() == 0 }
}

/// Store every 4-D parameter of `vs` in channels-last (NHWC) memory order, which cuDNN's
/// convolutions prefer; the logical shape stays NCHW. (tch has no memory-format API: a permute
/// to NHWC, `contiguous`, and the permute back give exactly the channels-last strides.)
pub fn to_channels_last(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (_, mut t) in vs.variables() {
            if t.dim() == 4 {
                let cl = channels_last(&t);
                t.set_data(&cl);
            }
        }
    });
}

/// `x` with channels-last strides (same values, same NCHW shape).
pub fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

#[cfg(test)]
mod amp_tests {
    use super::*;

    #[test]
    fn channels_last_keeps_values_and_changes_strides() {
        let x = Tensor::arange(2 * 3 * 4 * 5, (tch::Kind::Float, tch::Device::Cpu)).view([2, 3, 4, 5]);
        let y = channels_last(&x);
        assert_eq!(y.size(), x.size());
        assert_eq!(y.stride(), vec![60, 1, 15, 3]);
        assert!(y.equal(&x));
        // Setting the autocast dtype works without a GPU (it only records the choice).
        assert!(use_bf16_autocast());
        // Without CUDA, the closure runs as it is.
        assert_eq!(cuda_autocast(true, || 7), 7);
    }
}
