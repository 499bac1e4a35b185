//! Per-entry loss pieces and label masks shared by the methods ("Notation").
//!
//! Everything here works on [B, C] tensors in f32 and keeps the autograd graph of the logits.

use tch::{Kind, Tensor};

/// The three observed label states of `StepCtx::y` as bool masks.
pub struct Labels {
    /// Observed positives P (`y == 1`).
    pub pos: Tensor,
    /// Unannotated entries N (`y == 0`).
    pub unann: Tensor,
    /// Observed negatives (`y == -1`): always negatives, never selected.
    pub neg: Tensor,
}

impl Labels {
    /// Splits the observed label tensor into its three states.
    pub fn of(y: &Tensor) -> Labels {
        let y = y.to_kind(Kind::Float);
        Labels { pos: y.gt(0.5), unann: y.abs().lt(0.5), neg: y.lt(-0.5) }
    }

    /// The BCE target: 1 on P, 0 elsewhere (unannotated entries are assumed negative).
    pub fn target(&self) -> Tensor {
        self.pos.to_kind(Kind::Float)
    }
}

/// The logits of one network in f32 (bf16/f16 logits are upcast; the graph is kept).
pub fn f32_logits(logits: &Tensor) -> Tensor {
    if logits.kind() == Kind::Float {
        logits.shallow_clone()
    } else {
        logits.to_kind(Kind::Float)
    }
}

/// ℓ(y, p) = −(y log p + (1 − y) log(1 − p)) per entry, in the stable logits form.
pub fn bce(logits: &Tensor, target: &Tensor) -> Tensor {
    logits.binary_cross_entropy_with_logits::<Tensor>(target, None, None, tch::Reduction::None)
}

/// −log p = softplus(−x).
pub fn neg_log_p(logits: &Tensor) -> Tensor {
    -logits.log_sigmoid()
}

/// −log(1 − p) = softplus(x).
pub fn neg_log_1mp(logits: &Tensor) -> Tensor {
    -(-logits).log_sigmoid()
}

/// Bernoulli KL(p‖q) per entry from logits: p log(p/q) + (1 − p) log((1 − p)/(1 − q)).
pub fn bernoulli_kl(logits_p: &Tensor, logits_q: &Tensor) -> Tensor {
    let p = logits_p.sigmoid();
    let (lp, l1p) = (logits_p.log_sigmoid(), (-logits_p).log_sigmoid());
    let (lq, l1q) = (logits_q.log_sigmoid(), (-logits_q).log_sigmoid());
    &p * (lp - lq) + (1.0 - &p) * (l1p - l1q)
}

/// The sum reduction: Σ over all entries of `per_entry` (zeros where an entry does not count),
/// divided by the batch size B.
pub fn sum_over_batch(per_entry: &Tensor) -> Tensor {
    let b = per_entry.size()[0].max(1) as f64;
    per_entry.sum(Kind::Float) / b
}

/// Per-sample sums over classes: [B, C] → [B].
pub fn per_sample(per_entry: &Tensor) -> Tensor {
    per_entry.sum_dim_intlist(&[1i64][..], false, Kind::Float)
}

/// Bool mask as f32 (1 where true).
pub fn weight(mask: &Tensor) -> Tensor {
    mask.to_kind(Kind::Float)
}

/// A scalar's value as f64 (for logging).
pub fn value(t: &Tensor) -> f64 {
    t.detach().to_kind(Kind::Double).double_value(&[])
}

/// floor(r · n) with a 1e-9 tolerance, so that e.g. 0.988 · 1000 counts 988 and not 987 because of
/// binary rounding of r. Clamped to [0, n].
pub fn floor_count(r: f64, n: i64) -> i64 {
    let c = (r * n as f64 + 1e-9).floor();
    (c.max(0.0) as i64).min(n)
}
