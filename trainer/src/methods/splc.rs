//! SPLC, self-paced loss correction (Zhang et al. 2021; method.md "Baselines").

use tch::Tensor;

use super::losses::{f32_logits, neg_log_1mp, neg_log_p, sum_over_batch, value, weight, Labels};
use super::{Method, StepCtx, StepOut};

/// Focal BCE (γ = 2). Observed positives use margin m = 1: `−(1 − σ(x − m))^γ log σ(x − m)`.
/// From completed epoch 1 on, an unannotated entry with p > 0.6 counts as positive for that step,
/// without margin (as in the SPLC code, which subtracts the margin before correcting):
/// `−(1 − p)^γ log p`. Every other entry: `−p^γ log(1 − p)`. Observed negatives are never corrected.
pub struct Splc {
    margin: f64,
    gamma: f64,
    threshold: f64,
    change_epoch: usize,
}

impl Default for Splc {
    fn default() -> Self {
        Splc { margin: 1.0, gamma: 2.0, threshold: 0.6, change_epoch: 1 }
    }
}

impl Method for Splc {
    fn name(&self) -> &'static str {
        "splc"
    }

    fn num_networks(&self) -> usize {
        1
    }

    fn step(&mut self, logits: &[Tensor], ctx: &StepCtx) -> StepOut {
        let x = f32_logits(&logits[0]);
        let labels = Labels::of(ctx.y);
        let p = x.sigmoid();
        let corrected = if ctx.epoch >= self.change_epoch {
            labels.unann.logical_and(&p.detach().gt(self.threshold))
        } else {
            labels.unann.zeros_like()
        };
        let (pos, cor) = (weight(&labels.pos), weight(&corrected));
        let shifted = &x - self.margin;
        let observed_pos = (-shifted.sigmoid() + 1.0).pow_tensor_scalar(self.gamma) * neg_log_p(&shifted);
        let corrected_pos = (-&p + 1.0).pow_tensor_scalar(self.gamma) * neg_log_p(&x);
        let negative = p.pow_tensor_scalar(self.gamma) * neg_log_1mp(&x);
        let per_entry = &pos * observed_pos + &cor * corrected_pos + (1.0 - &pos - &cor) * negative;
        let loss = sum_over_batch(&per_entry);
        StepOut { per_net: vec![value(&loss)], loss, flagged: vec![corrected] }
    }
}
