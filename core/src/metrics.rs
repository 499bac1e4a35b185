//! Multi-label evaluation (method.md, "Metrics"): one implementation, used by the trainer
//! (validation, test) and by `cls-infer`.
//!
//! Inputs are a score matrix (images × classes, probabilities or logits) and ground truth in the
//! [`Targets`](crate::labels::Targets) convention: [`POS`] = 1, [`NEG`] = −1, [`UNK`] = 0.
//! Unknown entries (e.g. VOC "difficult") are left out of every count for their class.
//!
//! * AP per class is scikit-learn's non-interpolated `average_precision_score`, ties grouped;
//!   mAP is the mean over the classes with at least one positive ("evaluated" classes).
//! * With a threshold `t`, a label is predicted when `score >= t`. CP and CR are means of the
//!   per-class precision and recall over the evaluated classes, CF1 their harmonic mean. OP, OR
//!   and OF1 use TP/FP/FN pooled over **all** classes (method.md says "pooled over all classes";
//!   a class without positives can only add false positives).
//! * The top-3 variant predicts a label when it is among the image's 3 highest scores and
//!   `score >= t`. Ties at the third place go to the lower class index.

use crate::labels::{NEG, POS, UNK};
use ndarray::{ArrayView1, ArrayView2};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// How many of an image's highest-scoring labels the top-k variant may predict.
pub const TOP_K: usize = 3;

/// Input that cannot be evaluated.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    #[error("scores have shape {scores:?} but the ground truth has shape {truth:?}")]
    ShapeMismatch { scores: (usize, usize), truth: (usize, usize) },
    #[error("score of image {image}, class {class} is NaN")]
    NanScore { image: usize, class: usize },
    #[error("ground truth of image {image}, class {class} is {value}; expected 1, -1 or 0")]
    BadTruth { image: usize, class: usize, value: i8 },
    #[error("threshold {0} is not a number")]
    BadThreshold(f64),
    #[error("{thresholds} per-class thresholds for {classes} classes")]
    ThresholdCount { thresholds: usize, classes: usize },
    #[error("no class has a positive label among {n_images} images and {n_classes} classes: mAP is undefined")]
    NoPositives { n_images: usize, n_classes: usize },
}

/// The six threshold metrics (fractions in [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThresholdMetrics {
    #[serde(rename = "CP")]
    pub cp: f64,
    #[serde(rename = "CR")]
    pub cr: f64,
    #[serde(rename = "CF1")]
    pub cf1: f64,
    #[serde(rename = "OP")]
    pub op: f64,
    #[serde(rename = "OR")]
    pub or: f64,
    #[serde(rename = "OF1")]
    pub of1: f64,
}

/// Everything [`evaluate`] reports. Serialises with the paper's names (`mAP`, `CP`, …,
/// `per_class_AP`); all metrics are fractions in [0, 1] at full precision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    #[serde(rename = "mAP")]
    pub map: f64,
    #[serde(rename = "CP")]
    pub cp: f64,
    #[serde(rename = "CR")]
    pub cr: f64,
    #[serde(rename = "CF1")]
    pub cf1: f64,
    #[serde(rename = "OP")]
    pub op: f64,
    #[serde(rename = "OR")]
    pub or: f64,
    #[serde(rename = "OF1")]
    pub of1: f64,
    /// The same six metrics when only an image's top 3 labels may be predicted.
    pub top3: ThresholdMetrics,
    /// AP of each class; `None` (JSON `null`) for a class without positives.
    #[serde(rename = "per_class_AP")]
    pub per_class_ap: Vec<Option<f64>>,
    /// The decision threshold (with per-class thresholds: the global one, for classes without
    /// their own).
    pub threshold: f64,
    /// Per-class thresholds, when the metrics were computed with them (calibrated models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Vec<f64>>,
    pub n_images: usize,
    /// Ground-truth entries that are unknown (neither positive nor negative): left out of every
    /// count of their class, as Open Images' own evaluation does.
    #[serde(default)]
    pub n_unknown: usize,
    /// Classes with at least one positive: those averaged in mAP, CP and CR.
    pub n_classes_evaluated: usize,
    /// Classes without a positive in the evaluated set.
    pub n_classes_excluded: usize,
}

/// Non-interpolated average precision of one class, exactly as scikit-learn's
/// `average_precision_score`: AP = Σₙ (Rₙ − Rₙ₋₁)·Pₙ over the distinct score thresholds taken
/// in decreasing order (tied scores enter together), with R₀ = 0.
///
/// Entries whose truth is 0 (unknown) are skipped; any other non-positive value counts as a
/// negative. Returns `None` when no positive remains, when the slices differ in length, or
/// when a considered score is NaN (the ranking is undefined; [`evaluate`] reports NaN as an
/// error instead). Scores are compared as given and the sums are taken in `f64`.
///
/// ```
/// use cls_core::metrics::average_precision;
/// // Positives at ranks 1 and 3: precisions 1 and 2/3, so AP = (1 + 2/3) / 2.
/// let ap = average_precision(&[0.9, 0.8, 0.7, 0.6], &[1, -1, 1, -1]).unwrap();
/// assert!((ap - 5.0 / 6.0).abs() < 1e-12);
/// // Tied scores enter together: one group holding 2 positives of 4 gives precision 1/2.
/// assert_eq!(average_precision(&[0.5; 4], &[1, -1, -1, 1]), Some(0.5));
/// // An unknown entry (0) is left out; no positive at all gives no AP.
/// assert_eq!(average_precision(&[0.9, 0.1], &[0, 1]), Some(1.0));
/// assert_eq!(average_precision(&[0.9, 0.1], &[-1, -1]), None);
/// ```
pub fn average_precision(scores: &[f32], truth: &[i8]) -> Option<f64> {
    if scores.len() != truth.len() {
        return None;
    }
    let mut ranked: Vec<(f32, bool)> =
        scores.iter().zip(truth).filter(|(_, &t)| t != UNK).map(|(&s, &t)| (s, t == POS)).collect();
    if ranked.iter().any(|(s, _)| s.is_nan()) {
        return None;
    }
    let n_pos = ranked.iter().filter(|(_, p)| *p).count();
    if n_pos == 0 {
        return None;
    }
    // Decreasing score; the order inside a tie group does not matter.
    ranked.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));

    let n_pos = n_pos as f64;
    let (mut tp, mut fp, mut tp_prev) = (0usize, 0usize, 0usize);
    let mut ap = 0.0f64;
    for (i, &(score, positive)) in ranked.iter().enumerate() {
        if positive {
            tp += 1;
        } else {
            fp += 1;
        }
        // Close the group at the last entry with this score.
        let group_ends = ranked.get(i + 1).is_none_or(|next| next.0 != score);
        if group_ends && tp > tp_prev {
            let precision = tp as f64 / (tp + fp) as f64;
            ap += (tp - tp_prev) as f64 / n_pos * precision;
            tp_prev = tp;
        }
    }
    Some(ap)
}

/// Evaluate a score matrix (images × classes) against ground truth at threshold `threshold`
/// (method.md default: 0.5 on probabilities).
///
/// Errors on a shape mismatch, a NaN score, a truth value other than 1/−1/0, a NaN threshold
/// and when no class has a positive (mAP undefined).
///
/// ```
/// use cls_core::metrics::evaluate;
/// use ndarray::array;
/// let scores = array![[0.9f32, 0.2], [0.6, 0.7], [0.1, 0.4]];
/// let truth = array![[1i8, -1], [-1, 1], [-1, 1]];
/// let m = evaluate(scores.view(), truth.view(), 0.5).unwrap();
/// assert_eq!(m.map, 1.0); // every class ranks its positives first
/// // At 0.5: class 0 predicts images 0 and 1 (one right), class 1 predicts image 1 (right).
/// assert_eq!((m.cp, m.cr), (0.75, 0.75)); // mean of (1/2, 1) and of (1, 1/2)
/// assert_eq!(m.op, 2.0 / 3.0); // 2 right of 3 predicted, pooled over the classes
/// assert_eq!(m.or, 2.0 / 3.0); // 2 found of 3 positives
/// // CF1 is the harmonic mean of CP and CR (ML-GCN's definition): 0.75 here. scikit-learn's
/// // macro F1 averages the per-class F1 scores instead: F1 = 2/3 for each class, so 0.667.
/// assert_eq!(m.cf1, 0.75);
/// let f1 = |p: f64, r: f64| 2.0 * p * r / (p + r);
/// let macro_f1 = (f1(0.5, 1.0) + f1(1.0, 0.5)) / 2.0;
/// assert!((macro_f1 - 2.0 / 3.0).abs() < 1e-12 && m.cf1 > macro_f1);
/// ```
pub fn evaluate(scores: ArrayView2<f32>, truth: ArrayView2<i8>, threshold: f64) -> Result<Metrics, MetricsError> {
    evaluate_with(scores, truth, threshold, None)
}

/// [`evaluate`] with one threshold per class (`thresholds[c]` for class `c`), e.g. thresholds
/// calibrated on validation data; `threshold` is recorded as the global one.
///
/// ```
/// use cls_core::metrics::evaluate_with;
/// use ndarray::array;
/// let scores = array![[0.9f32, 0.3], [0.6, 0.35], [0.1, 0.25]];
/// let truth = array![[1i8, 1], [-1, 1], [-1, -1]];
/// // Class 1's scores sit low: at 0.5 it predicts nothing, at its own 0.28 both positives.
/// let m = evaluate_with(scores.view(), truth.view(), 0.5, Some(&[0.7, 0.28])).unwrap();
/// assert_eq!((m.cp, m.cr, m.op, m.or), (1.0, 1.0, 1.0, 1.0));
/// assert_eq!(m.thresholds, Some(vec![0.7, 0.28]));
/// ```
pub fn evaluate_with(
    scores: ArrayView2<f32>,
    truth: ArrayView2<i8>,
    threshold: f64,
    thresholds: Option<&[f64]>,
) -> Result<Metrics, MetricsError> {
    validate(scores, truth, threshold)?;
    let (n_images, n_classes) = scores.dim();
    if let Some(t) = thresholds {
        if t.len() != n_classes {
            return Err(MetricsError::ThresholdCount { thresholds: t.len(), classes: n_classes });
        }
        if let Some(&bad) = t.iter().find(|t| t.is_nan()) {
            return Err(MetricsError::BadThreshold(bad));
        }
    }
    let threshold_of = |c: usize| thresholds.map_or(threshold, |t| t[c]);
    let in_top = top_k_mask(scores, TOP_K);

    let per_class: Vec<ClassResult> = (0..n_classes)
        .into_par_iter()
        .map(|c| {
            let column = scores.column(c).to_vec();
            let truth_c = truth.column(c).to_vec();
            let mut all = Counts::default();
            let mut top = Counts::default();
            for (i, (&s, &t)) in column.iter().zip(&truth_c).enumerate() {
                let predicted = f64::from(s) >= threshold_of(c);
                all.add(predicted, t);
                top.add(predicted && in_top[i * n_classes + c], t);
            }
            ClassResult { ap: average_precision(&column, &truth_c), all, top }
        })
        .collect();

    let n_evaluated = per_class.iter().filter(|r| r.ap.is_some()).count();
    if n_evaluated == 0 {
        return Err(MetricsError::NoPositives { n_images, n_classes });
    }
    let map = per_class.iter().filter_map(|r| r.ap).sum::<f64>() / n_evaluated as f64;
    let at_t = summarise(&per_class, |r| r.all, n_evaluated);
    let top3 = summarise(&per_class, |r| r.top, n_evaluated);
    Ok(Metrics {
        map,
        cp: at_t.cp,
        cr: at_t.cr,
        cf1: at_t.cf1,
        op: at_t.op,
        or: at_t.or,
        of1: at_t.of1,
        top3,
        per_class_ap: per_class.iter().map(|r| r.ap).collect(),
        threshold,
        thresholds: thresholds.map(<[f64]>::to_vec),
        n_images,
        n_unknown: truth.iter().filter(|&&t| t == UNK).count(),
        n_classes_evaluated: n_evaluated,
        n_classes_excluded: n_classes - n_evaluated,
    })
}

fn validate(scores: ArrayView2<f32>, truth: ArrayView2<i8>, threshold: f64) -> Result<(), MetricsError> {
    if scores.dim() != truth.dim() {
        return Err(MetricsError::ShapeMismatch { scores: scores.dim(), truth: truth.dim() });
    }
    if threshold.is_nan() {
        return Err(MetricsError::BadThreshold(threshold));
    }
    if let Some(((image, class), _)) = scores.indexed_iter().find(|(_, s)| s.is_nan()) {
        return Err(MetricsError::NanScore { image, class });
    }
    if let Some(((image, class), &value)) = truth.indexed_iter().find(|(_, &t)| t != POS && t != NEG && t != UNK) {
        return Err(MetricsError::BadTruth { image, class, value });
    }
    Ok(())
}

/// Row-major `n_images × n_classes` flags: is the class among the image's `k` highest scores?
/// Ties go to the lower class index (a stable sort by decreasing score).
fn top_k_mask(scores: ArrayView2<f32>, k: usize) -> Vec<bool> {
    let n_classes = scores.ncols();
    let mut mask = vec![false; scores.len()];
    for (i, row) in scores.rows().into_iter().enumerate() {
        for c in top_k_of_row(row, k) {
            mask[i * n_classes + c] = true;
        }
    }
    mask
}

fn top_k_of_row(row: ArrayView1<f32>, k: usize) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    for (c, &s) in row.iter().enumerate() {
        // A later class displaces an earlier one only with a strictly higher score.
        let pos = best.iter().position(|&b| s > row[b]).unwrap_or(best.len());
        if pos < k {
            best.insert(pos, c);
            best.truncate(k);
        }
    }
    best
}

/// Confusion counts of one class over its known (non-zero truth) entries: what the threshold
/// metrics, cls-infer's per-class metrics and its report page all count, one way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
}

impl Counts {
    /// One class's counts: `scores` and `truth` are its column, a label predicted when
    /// `score >= threshold`; unknown (0) entries are left out.
    pub fn of_class<'a>(
        scores: impl IntoIterator<Item = &'a f32>,
        truth: impl IntoIterator<Item = &'a i8>,
        threshold: f64,
    ) -> Counts {
        let mut c = Counts::default();
        for (&s, &t) in scores.into_iter().zip(truth) {
            c.add(f64::from(s) >= threshold, t);
        }
        c
    }

    fn add(&mut self, predicted: bool, truth: i8) {
        match (predicted, truth) {
            (_, UNK) => {}
            (true, POS) => self.tp += 1,
            (true, _) => self.fp += 1,
            (false, POS) => self.fn_ += 1,
            (false, _) => {}
        }
    }

    /// TP/(TP+FP), 0 when nothing is predicted.
    pub fn precision(self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// TP/(TP+FN), 0 when there is no positive.
    pub fn recall(self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// The harmonic mean of precision and recall, 0 when both are 0.
    pub fn f1(self) -> f64 {
        f1(self.precision(), self.recall())
    }

    /// The known positives.
    pub fn support(self) -> usize {
        self.tp + self.fn_
    }
}

struct ClassResult {
    ap: Option<f64>,
    all: Counts,
    top: Counts,
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Harmonic mean, 0 when both are 0.
fn f1(p: f64, r: f64) -> f64 {
    if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}

/// CP/CR averaged over evaluated classes, OP/OR over counts pooled over all classes.
fn summarise(
    per_class: &[ClassResult],
    counts: impl Fn(&ClassResult) -> Counts,
    n_evaluated: usize,
) -> ThresholdMetrics {
    let evaluated = per_class.iter().filter(|r| r.ap.is_some());
    let cp = evaluated.clone().map(|r| counts(r).precision()).sum::<f64>() / n_evaluated as f64;
    let cr = evaluated.map(|r| counts(r).recall()).sum::<f64>() / n_evaluated as f64;
    let pooled = per_class.iter().map(&counts).fold(Counts::default(), |a, b| Counts {
        tp: a.tp + b.tp,
        fp: a.fp + b.fp,
        fn_: a.fn_ + b.fn_,
    });
    let (op, or) = (pooled.precision(), pooled.recall());
    ThresholdMetrics { cp, cr, cf1: f1(cp, cr), op, or, of1: f1(op, or) }
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

impl Metrics {
    /// A short table in percent with one decimal: one row at the threshold, one for top-3.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let header: String = ["mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"].map(|h| format!("{h:>7}")).concat();
        let rows = [
            (
                if self.thresholds.is_some() { "t=class".to_string() } else { format!("t={}", self.threshold) },
                pct(self.map),
                self.threshold_metrics(),
            ),
            (format!("top-{TOP_K}"), "-".to_string(), self.top3),
        ];
        let _ = writeln!(out, "{:<8}{header}", "");
        for (name, map, m) in rows {
            let cells = [m.cp, m.cr, m.cf1, m.op, m.or, m.of1].map(|v| format!("{:>7}", pct(v)));
            let _ = writeln!(out, "{name:<8}{map:>7}{}", cells.concat());
        }
        let _ = writeln!(
            out,
            "{} images, {} classes evaluated, {} classes excluded (no positives)",
            self.n_images, self.n_classes_evaluated, self.n_classes_excluded
        );
        if self.n_unknown > 0 {
            let _ = writeln!(out, "{} unknown ground-truth entries left out of their class's counts", self.n_unknown);
        }
        out
    }

    /// The six metrics at the threshold (without top-3), as one value.
    pub fn threshold_metrics(&self) -> ThresholdMetrics {
        ThresholdMetrics { cp: self.cp, cr: self.cr, cf1: self.cf1, op: self.op, or: self.or, of1: self.of1 }
    }

    /// The metrics [`regressions`] and [`comparison_table`] compare, by name.
    fn headline(&self) -> [(&'static str, f64); 3] {
        [("mAP", self.map), ("CF1", self.cf1), ("OF1", self.of1)]
    }
}

/// A headline metric that dropped by more than the tolerance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Regression {
    pub metric: &'static str,
    pub old: f64,
    pub new: f64,
    /// `new − old` (negative for a regression).
    pub diff: f64,
}

/// The headline metrics (mAP, CF1, OF1) where `new < old − tolerance` (fractions, so a
/// tolerance of 0.005 is half a point). Empty when nothing regressed; equal is never a
/// regression.
///
/// ```
/// use cls_core::metrics::{evaluate, regressions};
/// use ndarray::array;
/// let base = evaluate(array![[0.9f32], [0.2]].view(), array![[1i8], [-1]].view(), 0.5).unwrap();
/// assert!(regressions(&base, &base, 0.0).is_empty());
/// let worse = evaluate(array![[0.2f32], [0.9]].view(), array![[1i8], [-1]].view(), 0.5).unwrap();
/// let r = regressions(&base, &worse, 0.01);
/// assert_eq!(r.iter().map(|r| r.metric).collect::<Vec<_>>(), ["mAP", "CF1", "OF1"]);
/// ```
pub fn regressions(baseline: &Metrics, new: &Metrics, tolerance: f64) -> Vec<Regression> {
    baseline
        .headline()
        .into_iter()
        .zip(new.headline())
        .filter(|((_, old), (_, new))| *new < *old - tolerance)
        .map(|((metric, old), (_, new))| Regression { metric, old, new, diff: new - old })
        .collect()
}

/// A table of old, new and difference (percent, one decimal) for mAP, CF1 and OF1.
pub fn comparison_table(baseline: &Metrics, new: &Metrics) -> String {
    let mut out = format!("{:<6}{:>8}{:>8}{:>8}\n", "", "old", "new", "diff");
    for ((metric, old), (_, new)) in baseline.headline().into_iter().zip(new.headline()) {
        let diff = 100.0 * (new - old);
        let _ = writeln!(out, "{metric:<6}{:>8}{:>8}{:>+8.1}", pct(old), pct(new), diff);
    }
    out
}
