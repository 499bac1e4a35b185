//! CLS (Co-Label Selection) and its ablations CLS-H, CLS-L and CLC ("One CLS step", "Ablations").

use tch::{Kind, Tensor};

use super::losses::{bce, f32_logits, neg_log_1mp, per_sample, value, weight, Labels};
use super::schedule::keep_rate;
use super::selection::co_label_select;
use super::{Method, MethodConfig, Reduction, StepCtx, StepOut};

/// Which member of the CLS family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Peer removal of high-loss negatives, eq. (1)–(2), and self removal of low-loss ones, eq. (3)–(4).
    Cls,
    /// Without peer removal: step 2 keeps all of N.
    ClsH,
    /// Without self removal: step 3 keeps all of N_f.
    ClsL,
    /// Co-label correction: the entries the peer flags are trained as positives instead of removed.
    Clc,
}

/// Two networks trained on each other's label selections.
pub struct Cls {
    variant: Variant,
    tau_h: f64,
    tau_l: f64,
    e_k: f64,
    reduction: Reduction,
}

impl Cls {
    /// A CLS-family method with the schedule and reduction of `cfg`.
    pub fn new(variant: Variant, cfg: &MethodConfig) -> Cls {
        Cls { variant, tau_h: cfg.tau_h, tau_l: cfg.tau_l, e_k: cfg.e_k, reduction: cfg.reduction }
    }

    /// Eq. (7)–(8): the loss of one network over its kept entries `keep` with BCE targets `target`.
    /// Sum: (1/B) Σ_{(i,j)∈Y} ℓ(y_ij, p_ij). Mean: each sample's mean over its kept entries (0 for a
    /// sample with none), averaged over B.
    fn reduce(&self, logits: &Tensor, target: &Tensor, keep: &Tensor) -> Tensor {
        let kept = bce(logits, target) * weight(keep);
        match self.reduction {
            Reduction::Sum => super::losses::sum_over_batch(&kept),
            Reduction::Mean => {
                let counts = per_sample(&weight(keep)).clamp_min(1.0);
                (per_sample(&kept) / counts).mean(Kind::Float)
            }
        }
    }
}

impl Method for Cls {
    fn name(&self) -> &'static str {
        match self.variant {
            Variant::Cls => "cls",
            Variant::ClsH => "cls-h",
            Variant::ClsL => "cls-l",
            Variant::Clc => "clc",
        }
    }

    fn num_networks(&self) -> usize {
        2
    }

    fn step(&mut self, logits: &[Tensor], ctx: &StepCtx) -> StepOut {
        assert_eq!(logits.len(), 2, "{} needs the logits of two networks", self.name());
        let (f, g) = (f32_logits(&logits[0]), f32_logits(&logits[1]));
        let labels = Labels::of(ctx.y);
        let r_h = keep_rate(ctx.epoch, self.e_k, self.tau_h);
        let r_l = keep_rate(ctx.epoch, self.e_k, self.tau_l);
        let peer = self.variant != Variant::ClsH;
        let self_ = self.variant != Variant::ClsL;
        // ℓ(0, p) of every entry; the selection detaches them.
        let sel = co_label_select(&neg_log_1mp(&f), &neg_log_1mp(&g), &labels.unann, r_h, r_l, peer, self_);
        let target = labels.target();
        let (loss_f, loss_g) = if self.variant == Variant::Clc {
            // Flagged entries join Y as positives (y = 1) instead of leaving it.
            let t_f = target.maximum(&weight(&sel.flagged_f));
            let t_g = target.maximum(&weight(&sel.flagged_g));
            (
                self.reduce(&f, &t_f, &sel.keep_f.logical_or(&sel.flagged_f)),
                self.reduce(&g, &t_g, &sel.keep_g.logical_or(&sel.flagged_g)),
            )
        } else {
            (self.reduce(&f, &target, &sel.keep_f), self.reduce(&g, &target, &sel.keep_g))
        };
        StepOut {
            per_net: vec![value(&loss_f), value(&loss_g)],
            loss: loss_f + loss_g,
            flagged: vec![sel.flagged_f, sel.flagged_g],
        }
    }
}
