//! Metrics against the ground truth (through `cls_core::metrics`, so cls-train and cls-infer
//! cannot disagree), the `--metrics-out` file and the `--baseline` comparison.
//!
//! The metrics file is `cls_core::metrics::Metrics` (the paper's names: `mAP`, `CP`, …, with
//! `threshold` and, when classes have their own, `thresholds`), plus `thresholds_source` (where
//! the thresholds came from) and `per_class`: AP, precision, recall, F1, support (known
//! positives) and threshold of each class, keyed by class name, in class order. CF1 is the
//! harmonic mean of CP and CR (ML-GCN's definition), not the mean of the per-class F1 values
//! (scikit-learn's macro F1): the two differ whenever classes differ in precision and recall.

use crate::thresholds::Decision;
use crate::truth::Truth;
use anyhow::{bail, Context, Result};
use cls_core::metrics::{comparison_table, evaluate_with, regressions, Counts, Metrics};
use ndarray::{Array2, ArrayView2};
use serde::Serialize;
use std::path::Path;

use crate::report::{ReportImage, ReportInput};

/// Scores of the tagged images that have ground truth: `rows` index the ground truth, `scores`
/// holds one row of class probabilities per entry of `rows`.
#[derive(Default)]
pub struct Scored {
    pub rows: Vec<usize>,
    pub scores: Vec<f32>,
    /// The image of each entry of `rows` (for the report page).
    pub images: Vec<ReportImage>,
    /// Tagged images without ground truth.
    pub no_truth: usize,
}

/// One class's line of `per_class`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClassMetrics {
    #[serde(rename = "AP")]
    pub ap: Option<f64>,
    pub precision: f64,
    pub recall: f64,
    #[serde(rename = "F1")]
    pub f1: f64,
    /// Known positives.
    pub support: usize,
    pub threshold: f64,
}

/// Per-class precision, recall, F1 and support at `thresholds` (unknown entries left out;
/// precision 0 when nothing is predicted, as in `cls_core::metrics`).
pub fn per_class(
    scores: ArrayView2<f32>,
    truth: ArrayView2<i8>,
    thresholds: &[f64],
    ap: &[Option<f64>],
) -> Vec<ClassMetrics> {
    (0..scores.ncols())
        .map(|c| {
            let n = Counts::of_class(scores.column(c), truth.column(c), thresholds[c]);
            ClassMetrics {
                ap: ap[c],
                precision: n.precision(),
                recall: n.recall(),
                f1: n.f1(),
                support: n.support(),
                threshold: thresholds[c],
            }
        })
        .collect()
}

/// The `per_class` map: class name → its metrics, in class order.
struct PerClass<'a> {
    names: &'a [String],
    metrics: &'a [ClassMetrics],
}

impl Serialize for PerClass<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.names.iter().zip(self.metrics))
    }
}

/// What `--metrics-out` holds.
#[derive(Serialize)]
struct MetricsFile<'a> {
    #[serde(flatten)]
    metrics: &'a Metrics,
    thresholds_source: &'a str,
    per_class: PerClass<'a>,
}

/// Compute the metrics (table on stderr, `--metrics-out`) and compare with `--baseline`.
/// Returns whether a metric regressed.
#[allow(clippy::too_many_arguments)]
pub fn score_and_compare(
    ground_truth: &Path,
    metrics_out: Option<&Path>,
    report: Option<(&Path, &[(String, String)])>,
    truth: &Truth,
    baseline: Option<&Metrics>,
    tolerance: f64,
    classes: &[String],
    decision: &Decision,
    scored: Scored,
) -> Result<bool> {
    if scored.no_truth > 0 {
        tracing::info!("{} tagged images have no ground truth (left out of the metrics)", scored.no_truth);
    }
    if scored.rows.is_empty() {
        bail!("none of the tagged images is in the ground truth {}: no metrics", ground_truth.display());
    }
    let scores = Array2::from_shape_vec((scored.rows.len(), classes.len()), scored.scores)?;
    let targets = truth.targets.select(ndarray::Axis(0), &scored.rows);
    let metrics = evaluate_with(scores.view(), targets.view(), decision.global, decision.per_class_for_metrics())
        .context("cannot compute the metrics")?;
    crate::report!("{}", metrics.table().trim_end_matches('\n'));
    if let Some(path) = metrics_out {
        let per = per_class(scores.view(), targets.view(), &decision.per_class, &metrics.per_class_ap);
        let file = MetricsFile {
            metrics: &metrics,
            thresholds_source: &decision.source,
            per_class: PerClass { names: classes, metrics: &per },
        };
        crate::output::write_file(path, &serde_json::to_string_pretty(&file)?)?;
    }
    if let Some((dir, about)) = report {
        let input = ReportInput {
            classes,
            images: &scored.images,
            scores: scores.view(),
            truth: targets.view(),
            metrics: &metrics,
            about,
        };
        let written = crate::report::write_report(dir, &input)?;
        for (name, reason) in &written.unreadable {
            tracing::warn!("report: no thumbnail of {name}: {reason}");
        }
        tracing::info!("report: {} ({} thumbnails)", written.index.display(), written.thumbnails);
    }
    let Some(base) = baseline else { return Ok(false) };
    let dropped = regressions(base, &metrics, tolerance);
    crate::report!("{}", comparison_table(base, &metrics).trim_end_matches('\n'));
    if dropped.is_empty() {
        tracing::info!("no metric dropped by more than {tolerance} against the baseline");
    }
    for r in &dropped {
        tracing::error!(
            "REGRESSION {}: {:.4} -> {:.4} ({:+.4}, tolerance {tolerance})",
            r.metric,
            r.old,
            r.new,
            r.diff
        );
    }
    Ok(!dropped.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn per_class_means_are_cp_and_cr() {
        let scores = array![[0.9f32, 0.2, 0.1], [0.6, 0.7, 0.3], [0.1, 0.4, 0.8], [0.7, 0.45, 0.2]];
        let truth = array![[1i8, -1, -1], [-1, 1, 0], [-1, 1, -1], [1, 0, -1]];
        let t = [0.5, 0.42, 0.5];
        let m = evaluate_with(scores.view(), truth.view(), 0.5, Some(&t)).unwrap();
        let per = per_class(scores.view(), truth.view(), &t, &m.per_class_ap);
        let evaluated: Vec<&ClassMetrics> = per.iter().filter(|c| c.ap.is_some()).collect();
        let mean = |f: fn(&ClassMetrics) -> f64| evaluated.iter().map(|c| f(c)).sum::<f64>() / evaluated.len() as f64;
        assert!((mean(|c| c.precision) - m.cp).abs() < 1e-12);
        assert!((mean(|c| c.recall) - m.cr).abs() < 1e-12);
        assert_eq!(per[0].support, 2);
        // Class 1: predicted at 0.42 for images 1 and 3; image 3 is unknown, so 1 of 1 right.
        assert_eq!((per[1].precision, per[1].recall, per[1].support), (1.0, 0.5, 2));
        // Class 2 has no positive: no AP, and its false positive counts.
        assert_eq!((per[2].ap, per[2].precision, per[2].support), (None, 0.0, 0));
    }
}
