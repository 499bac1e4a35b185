//! LL-R / LL-Ct / LL-Cp, "Large Loss Matters" (Kim et al. 2022; method.md "Baselines").
//!
//! BCE with unannotated entries as negatives, except that among the unannotated entries of the
//! flattened batch those with the largest loss (ties to the lower flat index) are rejected (R: loss
//! 0), corrected for this step (Ct: trained as positive) or corrected permanently (Cp: the stored
//! label becomes 1 and stays a positive in every later step). How many, per step:
//! - R and Ct: floor(e·Δ/100 · B·C), e = completed epochs, so none in the first epoch and Δ more
//!   each epoch (floor, as CLS counts; decision: the LL code uses ceil);
//! - Cp: the constant ceil(Δ/100 · B·C) from the second epoch on, as the official code does
//!   (corrections are permanent: a growing count would turn most unannotated entries positive).

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

use super::losses::{bce, f32_logits, floor_count, sum_over_batch, value, weight, Labels};
use super::selection::pick;
use super::{Method, StepCtx, StepOut};

/// What happens to the large-loss entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// LL-R: their loss is set to 0.
    Reject,
    /// LL-Ct: trained as positives for this step.
    CorrectTemporary,
    /// LL-Cp: their stored label becomes 1.
    CorrectPermanent,
}

impl Mode {
    /// Δ in percent of B·C per epoch when none is configured: 0.5 / 0.2 / 0.1.
    pub fn default_delta(self) -> f64 {
        match self {
            Mode::Reject => 0.5,
            Mode::CorrectTemporary => 0.2,
            Mode::CorrectPermanent => 0.1,
        }
    }
}

const STATE_CORRECTED: &str = "ll-cp.corrected";

/// How many unannotated entries of a batch of `entries` (B·C) the step rejects or corrects in
/// epoch `epoch` (0-based: completed epochs), with Δ = `delta_percent` % (see the module comment).
pub fn ll_count(mode: Mode, epoch: usize, delta_percent: f64, entries: i64) -> i64 {
    match mode {
        Mode::CorrectPermanent if epoch == 0 => 0,
        Mode::CorrectPermanent => {
            let c = (delta_percent / 100.0 * entries as f64 - 1e-9).ceil();
            (c.max(0.0) as i64).min(entries)
        }
        Mode::Reject | Mode::CorrectTemporary => floor_count((epoch as f64 * delta_percent / 100.0).min(1.0), entries),
    }
}

/// One of the three LL methods.
pub struct LargeLoss {
    mode: Mode,
    delta_percent: f64,
    /// LL-Cp only: [n_train, C] bool, entries whose stored label was corrected to 1.
    corrected: Option<Tensor>,
}

impl LargeLoss {
    /// An LL method; LL-Cp gets a corrected-label matrix of `n_train` × `n_classes` on `device`.
    pub fn new(mode: Mode, delta_percent: Option<f64>, n_train: i64, n_classes: i64, device: Device) -> LargeLoss {
        let corrected =
            (mode == Mode::CorrectPermanent).then(|| Tensor::zeros([n_train, n_classes], (Kind::Bool, device)));
        LargeLoss { mode, delta_percent: delta_percent.unwrap_or(mode.default_delta()), corrected }
    }
}

impl Method for LargeLoss {
    fn name(&self) -> &'static str {
        match self.mode {
            Mode::Reject => "ll-r",
            Mode::CorrectTemporary => "ll-ct",
            Mode::CorrectPermanent => "ll-cp",
        }
    }

    fn num_networks(&self) -> usize {
        1
    }

    fn step(&mut self, logits: &[Tensor], ctx: &StepCtx) -> StepOut {
        let x = f32_logits(&logits[0]);
        let mut labels = Labels::of(ctx.y);
        // LL-Cp: earlier corrections are stored positives.
        let earlier = self.corrected.as_ref().map(|c| {
            let rows = c.index_select(0, &ctx.indices.to_device(c.device())).to_device(x.device());
            rows.logical_and(&labels.unann)
        });
        if let Some(earlier) = &earlier {
            labels.pos = labels.pos.logical_or(earlier);
            labels.unann = labels.unann.logical_and(&earlier.logical_not());
        }
        let target = labels.target();
        let loss_an = bce(&x, &target);
        let count = ll_count(self.mode, ctx.epoch, self.delta_percent, x.numel() as i64);
        let large = pick(&loss_an, &labels.unann, count, true);
        let per_entry = match self.mode {
            Mode::Reject => &loss_an * (1.0 - weight(&large)),
            Mode::CorrectTemporary | Mode::CorrectPermanent => bce(&x, &target.maximum(&weight(&large))),
        };
        let mut flagged = large.shallow_clone();
        if let (Some(corrected), Some(earlier)) = (&mut self.corrected, &earlier) {
            let idx = ctx.indices.to_device(corrected.device());
            let rows = corrected.index_select(0, &idx).logical_or(&large.to_device(corrected.device()));
            let _ = corrected.index_copy_(0, &idx, &rows);
            flagged = flagged.logical_or(earlier);
        }
        let loss = sum_over_batch(&per_entry);
        StepOut { per_net: vec![value(&loss)], loss, flagged: vec![flagged] }
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.corrected.iter().map(|c| (STATE_CORRECTED.to_string(), c.copy())).collect()
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let Some(corrected) = &mut self.corrected else {
            return Ok(());
        };
        let saved = state
            .iter()
            .find(|(n, _)| n == STATE_CORRECTED)
            .map(|(_, t)| t)
            .with_context(|| format!("LL-Cp state lacks {STATE_CORRECTED:?}"))?;
        if saved.size() != corrected.size() {
            bail!("LL-Cp state has shape {:?}; this run needs {:?}", saved.size(), corrected.size());
        }
        corrected.copy_(&saved.to_kind(Kind::Bool));
        Ok(())
    }
}
