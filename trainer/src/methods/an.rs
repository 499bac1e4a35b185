//! AN (assume negative), AN-LS and WAN ("Baselines"): BCE with unannotated entries as negatives.

use tch::Tensor;

use super::losses::{bce, f32_logits, sum_over_batch, value, weight, Labels};
use super::{Method, StepCtx, StepOut};

/// AN and its two variants; every entry counts, with the sum reduction.
pub struct An {
    name: &'static str,
    /// ε of AN-LS: targets y(1 − ε) + (1 − y)ε, so 1 − ε and ε (0 for AN and WAN).
    smoothing: f64,
    /// Weight of the unannotated-negative terms: 1 for AN/AN-LS, 1/(C − 1) for WAN.
    unannotated_weight: f64,
}

impl An {
    /// AN: plain BCE, (1/B) Σ_ij ℓ(y_ij, p_ij).
    pub fn plain() -> An {
        An { name: "an", smoothing: 0.0, unannotated_weight: 1.0 }
    }

    /// AN-LS as Cole et al. apply it: BCE against targets 1 − ε (observed positives) and ε
    /// (everything else), y(1 − ε) + (1 − y)ε.
    pub fn label_smoothing(epsilon: f64) -> An {
        An { name: "an-ls", smoothing: epsilon, unannotated_weight: 1.0 }
    }

    /// WAN: BCE with the unannotated-negative terms weighted by 1/(C − 1); observed positives and
    /// observed negatives keep weight 1.
    pub fn weighted(n_classes: i64) -> An {
        let w = if n_classes > 1 { 1.0 / (n_classes - 1) as f64 } else { 1.0 };
        An { name: "wan", smoothing: 0.0, unannotated_weight: w }
    }
}

impl Method for An {
    fn name(&self) -> &'static str {
        self.name
    }

    fn num_networks(&self) -> usize {
        1
    }

    fn step(&mut self, logits: &[Tensor], ctx: &StepCtx) -> StepOut {
        let x = f32_logits(&logits[0]);
        let labels = Labels::of(ctx.y);
        let target = labels.target() * (1.0 - 2.0 * self.smoothing) + self.smoothing;
        let w = weight(&labels.unann) * (self.unannotated_weight - 1.0) + 1.0;
        let loss = sum_over_batch(&(bce(&x, &target) * w));
        StepOut { per_net: vec![value(&loss)], loss, flagged: vec![] }
    }
}
