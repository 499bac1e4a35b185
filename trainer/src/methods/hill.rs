//! Hill loss (Zhang et al. 2021; method.md "Baselines").

use tch::Tensor;

use super::losses::{f32_logits, neg_log_p, sum_over_batch, value, weight, Labels};
use super::{Method, StepCtx, StepOut};

/// Positives: focal margin loss `−(1 − σ(x − m))^γ log σ(x − m)` (m = 1, γ = 2); every other entry:
/// the Hill term `(λ − p) p²` (λ = 1.5).
pub struct Hill {
    margin: f64,
    gamma: f64,
    lambda: f64,
}

impl Default for Hill {
    fn default() -> Self {
        Hill { margin: 1.0, gamma: 2.0, lambda: 1.5 }
    }
}

impl Method for Hill {
    fn name(&self) -> &'static str {
        "hill"
    }

    fn num_networks(&self) -> usize {
        1
    }

    fn step(&mut self, logits: &[Tensor], ctx: &StepCtx) -> StepOut {
        let x = f32_logits(&logits[0]);
        let y = weight(&Labels::of(ctx.y).pos);
        let shifted = &x - self.margin;
        let positive = (-shifted.sigmoid() + 1.0).pow_tensor_scalar(self.gamma) * neg_log_p(&shifted);
        let p = x.sigmoid();
        let negative = (self.lambda - &p) * p.square();
        let loss = sum_over_batch(&(&y * positive + (1.0 - &y) * negative));
        StepOut { per_net: vec![value(&loss)], loss, flagged: vec![] }
    }
}
