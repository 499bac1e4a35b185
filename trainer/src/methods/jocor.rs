//! JoCoR, joint training with co-regularisation (Wei et al. 2020; method.md "Baselines").

use tch::{Kind, Tensor};

use super::coteaching::removed_unannotated;
use super::losses::{bce, bernoulli_kl, f32_logits, per_sample, value, weight, Labels};
use super::schedule::keep_rate;
use super::selection::pick;
use super::{Method, MethodConfig, StepCtx, StepOut};

/// Per sample `(1 − λ)(ℓ_f + ℓ_g) + λ(KL(p_f‖p_g) + KL(p_g‖p_f))`, ℓ the BCE summed over classes
/// (unannotated entries as negatives) and KL the Bernoulli KL summed over classes; the
/// floor(R(e)·B) samples with the smallest (detached) joint loss are kept, R from "Schedules" with
/// τ the forget rate; the loss is their sum divided by B, one scalar for both networks.
/// `per_net` splits it for logging into f's part `(1 − λ)ℓ_f + λ KL(p_f‖p_g)` and g's part.
pub struct JoCoR {
    lambda: f64,
    forget_rate: f64,
    e_k: f64,
}

impl JoCoR {
    /// JoCoR with λ, the forget rate and E_k of `cfg`.
    pub fn new(cfg: &MethodConfig) -> JoCoR {
        JoCoR { lambda: cfg.jocor_lambda, forget_rate: cfg.forget_rate, e_k: cfg.e_k }
    }
}

impl Method for JoCoR {
    fn name(&self) -> &'static str {
        "jocor"
    }

    fn num_networks(&self) -> usize {
        2
    }

    fn step(&mut self, logits: &[Tensor], ctx: &StepCtx) -> StepOut {
        assert_eq!(logits.len(), 2, "jocor needs the logits of two networks");
        let (f, g) = (f32_logits(&logits[0]), f32_logits(&logits[1]));
        let labels = Labels::of(ctx.y);
        let target = labels.target();
        let part_f =
            per_sample(&bce(&f, &target)) * (1.0 - self.lambda) + per_sample(&bernoulli_kl(&f, &g)) * self.lambda;
        let part_g =
            per_sample(&bce(&g, &target)) * (1.0 - self.lambda) + per_sample(&bernoulli_kl(&g, &f)) * self.lambda;
        let joint = &part_f + &part_g;
        let b = f.size()[0];
        let all = Tensor::ones([b], (Kind::Bool, f.device()));
        let count = super::losses::floor_count(keep_rate(ctx.epoch, self.e_k, self.forget_rate), b);
        let kept = pick(&joint, &all, count, false);
        let w = weight(&kept) / b.max(1) as f64;
        let (net_f, net_g) = ((&part_f * &w).sum(Kind::Float), (&part_g * &w).sum(Kind::Float));
        let removed = removed_unannotated(&kept, &labels);
        StepOut {
            per_net: vec![value(&net_f), value(&net_g)],
            loss: net_f + net_g,
            flagged: vec![removed.shallow_clone(), removed],
        }
    }
}
