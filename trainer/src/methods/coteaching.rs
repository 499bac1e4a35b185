//! Co-teaching and Co-teaching+ (sample selection; method.md "Baselines").
//!
//! Each network ranks the candidate samples by its own per-sample BCE (unannotated entries as
//! negatives, summed over classes) and keeps the floor(R(e)·|candidates|) smallest for its peer,
//! R(e) = 1 − min(e/E_k·τ, τ) ("Schedules") with τ the forget rate. A network's loss is the sum of
//! its per-sample BCE over the samples its peer kept, divided by B (the common sum reduction).
//! Co-teaching's candidates are the whole batch. Co-teaching+ does the same during its warm-up
//! epochs and afterwards only among the samples on which the networks disagree; decision (ours): a
//! sample disagrees when the thresholded predictions (p > 0.5) differ in at least one class. With no
//! disagreement nothing is kept and the loss is 0 (as in the Co-teaching+ code).

use tch::{Kind, Tensor};

use super::losses::{bce, f32_logits, per_sample, value, weight, Labels};
use super::schedule::keep_rate;
use super::selection::pick;
use super::{Method, MethodConfig, StepCtx, StepOut};

/// Co-teaching (`plus == false`) or Co-teaching+.
pub struct CoTeaching {
    plus: bool,
    forget_rate: f64,
    e_k: f64,
    warmup: usize,
}

impl CoTeaching {
    /// Co-teaching or Co-teaching+ with the forget rate, E_k and warm-up of `cfg`.
    pub fn new(cfg: &MethodConfig, plus: bool) -> CoTeaching {
        CoTeaching { plus, forget_rate: cfg.forget_rate, e_k: cfg.e_k, warmup: cfg.coteach_plus_warmup }
    }
}

/// The unannotated entries of the samples outside `kept` ([B] bool): what sample selection removed.
pub(crate) fn removed_unannotated(kept: &Tensor, labels: &Labels) -> Tensor {
    labels.unann.logical_and(&kept.logical_not().unsqueeze(1))
}

impl Method for CoTeaching {
    fn name(&self) -> &'static str {
        if self.plus {
            "co-teaching-plus"
        } else {
            "co-teaching"
        }
    }

    fn num_networks(&self) -> usize {
        2
    }

    fn step(&mut self, logits: &[Tensor], ctx: &StepCtx) -> StepOut {
        assert_eq!(logits.len(), 2, "{} needs the logits of two networks", self.name());
        let (f, g) = (f32_logits(&logits[0]), f32_logits(&logits[1]));
        let labels = Labels::of(ctx.y);
        let target = labels.target();
        let (loss_f, loss_g) = (per_sample(&bce(&f, &target)), per_sample(&bce(&g, &target)));
        let b = f.size()[0];
        let candidates = if self.plus && ctx.epoch >= self.warmup {
            f.detach().gt(0.0).ne_tensor(&g.detach().gt(0.0)).any_dim(1, false)
        } else {
            Tensor::ones([b], (Kind::Bool, f.device()))
        };
        let n = candidates.sum(Kind::Int64).int64_value(&[]);
        let count = super::losses::floor_count(keep_rate(ctx.epoch, self.e_k, self.forget_rate), n);
        // f's small-loss samples train g and vice versa.
        let for_g = pick(&loss_f, &candidates, count, false);
        let for_f = pick(&loss_g, &candidates, count, false);
        let bf = b.max(1) as f64;
        let net_f = (&loss_f * weight(&for_f)).sum(Kind::Float) / bf;
        let net_g = (&loss_g * weight(&for_g)).sum(Kind::Float) / bf;
        StepOut {
            per_net: vec![value(&net_f), value(&net_g)],
            loss: net_f + net_g,
            flagged: vec![removed_unannotated(&for_f, &labels), removed_unannotated(&for_g, &labels)],
        }
    }
}
