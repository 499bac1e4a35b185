//! A head over precomputed feature vectors (for example frozen EfficientNet-Lite0 features or the
//! scene dataset's CSV features): `layers.0` Linear(in_dim, hidden) → `layers.1` BatchNorm1d →
//! ReLU. With `hidden == 0` there is no hidden layer and the features pass through unchanged, so
//! the network is the linear classifier of method.md's frozen-feature reference runs.

use anyhow::Result;
use tch::nn;
use tch::Tensor;

use crate::graph::Emitter;
use crate::torch_default_init;

const BN_EPS: f64 = 1e-5;

pub(crate) struct Mlp {
    hidden: Option<(nn::Linear, nn::BatchNorm)>,
}

impl Mlp {
    pub fn new(root: &nn::Path, in_dim: i64, hidden: i64) -> Mlp {
        let layers = root / "layers";
        let hidden = (hidden > 0).then(|| {
            let lin_cfg = nn::LinearConfig { ws_init: torch_default_init(in_dim), ..Default::default() };
            let lin = nn::linear(&layers / "0", in_dim, hidden, lin_cfg);
            let cfg = nn::BatchNormConfig {
                eps: BN_EPS,
                ws_init: nn::Init::Const(1.0),
                bs_init: nn::Init::Const(0.0),
                ..Default::default()
            };
            (lin, nn::batch_norm1d(&layers / "1", hidden, cfg))
        });
        Mlp { hidden }
    }

    pub fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.hidden {
            Some((lin, bn)) => x.apply(lin).apply_t(bn, train).relu(),
            None => x.shallow_clone(),
        }
    }
}

/// The ONNX nodes of [`Mlp::features_t`] in eval mode.
pub(crate) fn emit_features(e: &mut Emitter, hidden: i64, x: &str) -> Result<String> {
    if hidden <= 0 {
        return Ok(x.to_string());
    }
    let y = e.linear(x, "layers.0")?;
    let y = e.batch_norm(&y, "layers.1", BN_EPS)?;
    Ok(e.relu(&y))
}
