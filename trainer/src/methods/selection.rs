//! Co-label selection, eq. (1)–(6) of method.md ("One CLS step"), as boolean masks over B×C.
//!
//! Rankings run over the flattened batch on **detached** losses; ties break by flat index (stable
//! sort over candidates listed in increasing flat index); counts use floor.

use tch::{Kind, Tensor};

use super::losses::floor_count;

/// The outcome of [`co_label_select`]; every field is a [B, C] bool mask.
pub struct Selection {
    /// Y^f of eq. (5): N_f' plus every entry outside N (observed positives and negatives).
    pub keep_f: Tensor,
    /// Y^g of eq. (6).
    pub keep_g: Tensor,
    /// N \ N_f: the unannotated entries that g's peer selection removed from f (likely positives).
    pub flagged_f: Tensor,
    /// N \ N_g.
    pub flagged_g: Tensor,
}

/// Eq. (1)–(6) for both networks.
///
/// * `loss_f`, `loss_g`: [B, C] per-entry losses ℓ(0, p) of f and g (detached here).
/// * `unannotated`: [B, C] bool mask of N.
/// * Peer selection, eq. (1)–(2) (skipped when `peer` is false, as in CLS-H): N_f = the
///   floor(r_h·|N|) entries of N with the smallest `loss_g`; N_g likewise with `loss_f`.
/// * Self selection, eq. (3)–(4) (skipped when `self_` is false, as in CLS-L): N_f' = the
///   floor(r_l·|N_f|) entries of N_f with the largest `loss_f`; N_g' likewise with `loss_g`.
pub fn co_label_select(
    loss_f: &Tensor,
    loss_g: &Tensor,
    unannotated: &Tensor,
    r_h: f64,
    r_l: f64,
    peer: bool,
    self_: bool,
) -> Selection {
    let one = |own: &Tensor, other: &Tensor| -> (Tensor, Tensor) {
        let n = unannotated.sum(Kind::Int64).int64_value(&[]);
        let peer_set =
            if peer { pick(other, unannotated, floor_count(r_h, n), false) } else { unannotated.shallow_clone() };
        let self_set = if self_ {
            let n_peer = peer_set.sum(Kind::Int64).int64_value(&[]);
            pick(own, &peer_set, floor_count(r_l, n_peer), true)
        } else {
            peer_set.shallow_clone()
        };
        let keep = unannotated.logical_not().logical_or(&self_set);
        let flagged = unannotated.logical_and(&peer_set.logical_not());
        (keep, flagged)
    };
    let (keep_f, flagged_f) = one(loss_f, loss_g);
    let (keep_g, flagged_g) = one(loss_g, loss_f);
    Selection { keep_f, keep_g, flagged_f, flagged_g }
}

/// The `count` candidates with the smallest (`largest == false`) or largest values, as a bool
/// mask of `values`' shape. Values are detached and flattened; ties go to the lower flat index.
/// `count` is clamped to the number of candidates.
pub fn pick(values: &Tensor, candidates: &Tensor, count: i64, largest: bool) -> Tensor {
    let shape = values.size();
    let flat_v = values.detach().to_kind(Kind::Float).reshape([-1]);
    let idx = candidates.reshape([-1]).nonzero().reshape([-1]); // increasing flat index
    let out = Tensor::zeros([flat_v.size()[0]], (Kind::Bool, flat_v.device()));
    let count = count.min(idx.size()[0]);
    if count <= 0 {
        return out.reshape(&shape[..]);
    }
    let order = flat_v.index_select(0, &idx).argsort_stable(true, 0, largest);
    let chosen = idx.index_select(0, &order.narrow(0, 0, count));
    out.index_fill(0, &chosen, 1).reshape(&shape[..])
}
