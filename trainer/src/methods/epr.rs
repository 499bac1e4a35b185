//! EPR, the expected-positive regulariser ("Baselines").

use tch::{Kind, Tensor};

use super::losses::{f32_logits, neg_log_1mp, neg_log_p, per_sample, sum_over_batch, value, weight, Labels};
use super::{Method, StepCtx, StepOut};

/// (mean over the batch of Σ_j p_ij − k)² / C, on probabilities `p` [B, C].
///
/// Cole et al. divide by C² with a data term that is the mean over all B·C entries; under this
/// project's one reduction (sum over entries / B) the data term is C times larger, so the
/// regulariser is C times larger too, keeping the published balance (docs/method.md, EPR).
pub fn expected_positive_regulariser(p: &Tensor, k: f64) -> Tensor {
    let c = p.size()[1] as f64;
    (per_sample(p).mean(Kind::Float) - k).square() / c
}

/// The BCE of the observed entries only: −log p on P, −log(1 − p) on observed negatives.
pub fn observed_bce(logits: &Tensor, labels: &Labels) -> Tensor {
    neg_log_p(logits) * weight(&labels.pos) + neg_log_1mp(logits) * weight(&labels.neg)
}

/// EPR: (1/B) Σ_{P} −log p + (mean_i Σ_j p_ij − k)²/C. Observed negatives add their BCE.
pub struct Epr {
    k: f64,
}

impl Epr {
    /// EPR with k expected positives per image.
    pub fn new(k: f64) -> Epr {
        Epr { k }
    }
}

impl Method for Epr {
    fn name(&self) -> &'static str {
        "epr"
    }

    fn num_networks(&self) -> usize {
        1
    }

    fn step(&mut self, logits: &[Tensor], ctx: &StepCtx) -> StepOut {
        let x = f32_logits(&logits[0]);
        let labels = Labels::of(ctx.y);
        let loss = sum_over_batch(&observed_bce(&x, &labels)) + expected_positive_regulariser(&x.sigmoid(), self.k);
        StepOut { per_net: vec![value(&loss)], loss, flagged: vec![] }
    }
}
