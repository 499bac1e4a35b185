//! Decision thresholds chosen on validation data, so that a model trained on partial labels tags
//! images (its scores sit low: with every missing label taken as negative, a fixed 0.5 leaves
//! many images with no tag at all).
//!
//! * Per class: the threshold that maximises that class's F1 on the validation entries whose
//!   label is observed (positive or negative; unknown entries are left out).
//! * Global: the threshold that maximises OF1 (F1 of the counts pooled over all classes).
//! * Shrinkage: a class's own optimum, fitted to its `n` validation positives, is pulled toward
//!   the global threshold in logit space, `logit t = (n·logit t_own + K·logit t_global) / (n + K)`
//!   with `K = shrink`: a class seen a few times mostly takes the global threshold, a frequent
//!   one keeps its own. Measured (BENCHMARKS.md, "Decision thresholds"): on Corel5k (374
//!   classes, most with under 20 validation positives) the own optima of rare classes sit low,
//!   and with them the tags were two thirds wrong (OP 27–41%); K = 5 kept CF1 (−1.3 to +1.2)
//!   and raised OF1 by 2.8 to 7.7 points over 9 runs; on scene (6 classes, dozens of positives
//!   each) nothing moved by more than 0.9. `shrink = 0` gives the own optima.
//! * A class with fewer than `min_positives` observed positives uses the global threshold.
//!
//! A label is predicted when `score >= threshold` (as in [`crate::metrics`]). The search runs
//! over the distinct scores; the chosen threshold is the midpoint between the lowest score that
//! is predicted and the next lower observed score (the score itself when none is lower), so
//! that a test image scoring a little below the validation cut is still tagged. Among cuts with
//! the same F1 the highest wins (fewer, surer tags). A class or pool without positives gets 0.5.

use crate::labels::{POS, UNK};
use crate::metrics::MetricsError;
use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

/// Fewer validation positives than this and a class uses the global threshold.
pub const DEFAULT_MIN_POSITIVES: usize = 1;

/// The weight of the global threshold, in validation positives, against a class's own optimum.
pub const DEFAULT_SHRINK: f64 = 5.0;

/// The threshold when nothing can be learnt (no positive observed).
const NO_INFORMATION: f64 = 0.5;

/// Thresholds chosen on validation data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// One threshold per class (the global one for rare classes).
    pub per_class: Vec<f64>,
    /// The threshold that maximises OF1.
    pub global: f64,
    /// Per class: whether it fell back to the global threshold (fewer than `min_positives`).
    pub fallback: Vec<bool>,
    /// The `min_positives` used.
    pub min_positives: usize,
    /// The shrinkage toward the global threshold used (`K`; 0: none).
    #[serde(default)]
    pub shrink: f64,
}

/// The best cut of one list of `(score, is_positive)` entries: `(threshold, F1)`.
fn best_cut(mut entries: Vec<(f32, bool)>) -> (f64, f64) {
    let n_pos = entries.iter().filter(|e| e.1).count();
    if n_pos == 0 {
        return (NO_INFORMATION, 0.0);
    }
    entries.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0usize, 0usize);
    let (mut best_f1, mut best_at) = (-1.0f64, 0usize);
    let mut i = 0;
    while i < entries.len() {
        // Take the whole group of equal scores: they are predicted together.
        let score = entries[i].0;
        while i < entries.len() && entries[i].0 == score {
            if entries[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let f1 = 2.0 * tp as f64 / (2 * tp + fp + (n_pos - tp)) as f64;
        if f1 > best_f1 {
            best_f1 = f1;
            best_at = i; // entries[..i] are predicted
        }
    }
    let cut = f64::from(entries[best_at - 1].0);
    let threshold = match entries.get(best_at) {
        Some(next) => (cut + f64::from(next.0)) / 2.0,
        None => cut,
    };
    (threshold, best_f1)
}

/// `t_own` pulled toward `global` in logit space with the weights `n` and `shrink`.
fn shrunk(t_own: f64, global: f64, n: usize, shrink: f64) -> f64 {
    if shrink <= 0.0 {
        return t_own;
    }
    let logit = |p: f64| {
        let p = p.clamp(1e-7, 1.0 - 1e-7);
        (p / (1.0 - p)).ln()
    };
    let n = n as f64;
    let z = (n * logit(t_own) + shrink * logit(global)) / (n + shrink);
    1.0 / (1.0 + (-z).exp())
}

/// Choose per-class and global thresholds from validation `scores` (images × classes) and
/// `truth` (1 positive, -1 negative, 0 unknown: left out), each class's own optimum shrunk toward
/// the global threshold by `shrink` (module doc; 0: none). To calibrate on labels that are
/// positives only, pass the unknown entries as negatives (the result is then conservative).
///
/// ```
/// use cls_core::calibrate::calibrate;
/// use ndarray::array;
/// let scores = array![[0.9f32, 0.30], [0.8, 0.20], [0.4, 0.10], [0.1, 0.05]];
/// let truth = array![[1i8, 1], [1, 1], [-1, -1], [-1, -1]];
/// let c = calibrate(scores.view(), truth.view(), 1, 0.0).unwrap();
/// // Class 0: predicting the top two is perfect; midway between 0.8 and the next score 0.4.
/// assert!((c.per_class[0] - 0.6).abs() < 1e-6);
/// // Class 1: its positives score 0.30 and 0.20; midway between 0.20 and 0.10.
/// assert!((c.per_class[1] - 0.15).abs() < 1e-6);
/// // Shrunk with the weight of 2 positives, as many as each class has: logits averaged.
/// let s = calibrate(scores.view(), truth.view(), 1, 2.0).unwrap();
/// let logit = |p: f64| (p / (1.0 - p)).ln();
/// let mid = (logit(c.per_class[1]) + logit(s.global)) / 2.0;
/// assert!((s.per_class[1] - 1.0 / (1.0 + (-mid).exp())).abs() < 1e-9);
/// ```
pub fn calibrate(
    scores: ArrayView2<f32>,
    truth: ArrayView2<i8>,
    min_positives: usize,
    shrink: f64,
) -> Result<Calibration, MetricsError> {
    if scores.dim() != truth.dim() {
        return Err(MetricsError::ShapeMismatch { scores: scores.dim(), truth: truth.dim() });
    }
    if let Some(((image, class), _)) = scores.indexed_iter().find(|(_, s)| s.is_nan()) {
        return Err(MetricsError::NanScore { image, class });
    }
    let observed = |s: &f32, t: &i8| (*t != UNK).then_some((*s, *t == POS));
    let pooled: Vec<(f32, bool)> = scores.iter().zip(truth.iter()).filter_map(|(s, t)| observed(s, t)).collect();
    let (global, _) = best_cut(pooled);
    let mut per_class = Vec::with_capacity(scores.ncols());
    let mut fallback = Vec::with_capacity(scores.ncols());
    for (s, t) in scores.columns().into_iter().zip(truth.columns()) {
        let entries: Vec<(f32, bool)> = s.iter().zip(t.iter()).filter_map(|(s, t)| observed(s, t)).collect();
        let positives = entries.iter().filter(|e| e.1).count();
        if positives < min_positives.max(1) {
            per_class.push(global);
            fallback.push(true);
        } else {
            per_class.push(shrunk(best_cut(entries).0, global, positives, shrink));
            fallback.push(false);
        }
    }
    Ok(Calibration { per_class, global, fallback, min_positives, shrink })
}
