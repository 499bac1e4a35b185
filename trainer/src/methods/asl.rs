//! ASL, the asymmetric loss (Ridnik et al. 2021; method.md "Baselines").

use tch::Tensor;

use super::losses::{f32_logits, neg_log_p, sum_over_batch, value, weight, Labels};
use super::{Method, StepCtx, StepOut};

/// Per entry `−[y (1 − p)^γ+ log p + (1 − y) p_m^γ− log(1 − p_m)]`, `p_m = max(p − m, 0)`, with
/// γ− = 4, γ+ = 0, m = 0.05; unannotated entries are y = 0.
///
/// The focal weights `(1 − p)^γ+` and `p_m^γ−` are constants of the step (no gradient), as the
/// official training runs it (`disable_torch_grad_focal_loss=True`): the gradient is the weight
/// times the log term's. `focal_grad` lets it flow through the weights too (`--asl-focal-grad`).
pub struct Asl {
    gamma_pos: f64,
    gamma_neg: f64,
    margin: f64,
    focal_grad: bool,
}

impl Default for Asl {
    fn default() -> Self {
        Asl { gamma_pos: 0.0, gamma_neg: 4.0, margin: 0.05, focal_grad: false }
    }
}

impl Asl {
    /// The default ASL, with the gradient through the focal weights when `focal_grad`.
    pub fn new(focal_grad: bool) -> Asl {
        Asl { focal_grad, ..Asl::default() }
    }
}

impl Method for Asl {
    fn name(&self) -> &'static str {
        "asl"
    }

    fn num_networks(&self) -> usize {
        1
    }

    fn step(&mut self, logits: &[Tensor], ctx: &StepCtx) -> StepOut {
        let x = f32_logits(&logits[0]);
        let y = weight(&Labels::of(ctx.y).pos);
        let p = x.sigmoid();
        let p_m = (&p - self.margin).clamp_min(0.0);
        let (w_pos, w_neg) = ((-&p + 1.0).pow_tensor_scalar(self.gamma_pos), p_m.pow_tensor_scalar(self.gamma_neg));
        let (w_pos, w_neg) = if self.focal_grad { (w_pos, w_neg) } else { (w_pos.detach(), w_neg.detach()) };
        let positive = w_pos * neg_log_p(&x);
        // 1 − p_m ≥ m > 0 whenever p_m > 0, so the log is finite; clamp guards m = 0.
        let negative = -w_neg * (-&p_m + 1.0).clamp_min(1e-8).log();
        let loss = sum_over_batch(&(&y * positive + (1.0 - &y) * negative));
        StepOut { per_net: vec![value(&loss)], loss, flagged: vec![] }
    }
}
