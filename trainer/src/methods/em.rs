//! EM, entropy maximisation of the unannotated entries (Zhou et al. 2022; method.md "Baselines").

use tch::Tensor;

use super::epr::observed_bce;
use super::losses::{f32_logits, sum_over_batch, value, weight, Labels};
use super::{Method, StepCtx, StepOut};

/// Observed entries: BCE (−log p on positives, −log(1 − p) on observed negatives). Unannotated
/// entries: `−α·H(p)` with `H(p) = −p log p − (1 − p) log(1 − p)`, so minimising maximises entropy.
pub struct Em {
    alpha: f64,
}

impl Em {
    /// EM with entropy weight α.
    pub fn new(alpha: f64) -> Em {
        Em { alpha }
    }
}

impl Method for Em {
    fn name(&self) -> &'static str {
        "em"
    }

    fn num_networks(&self) -> usize {
        1
    }

    fn step(&mut self, logits: &[Tensor], ctx: &StepCtx) -> StepOut {
        let x = f32_logits(&logits[0]);
        let labels = Labels::of(ctx.y);
        let p = x.sigmoid();
        // H(p) = p·(−log p) + (1 − p)·(−log(1 − p)), in the stable logits form.
        let entropy = &p * -x.log_sigmoid() + (1.0 - &p) * -(-&x).log_sigmoid();
        let per_entry = observed_bce(&x, &labels) - entropy * weight(&labels.unann) * self.alpha;
        let loss = sum_over_batch(&per_entry);
        StepOut { per_net: vec![value(&loss)], loss, flagged: vec![] }
    }
}
