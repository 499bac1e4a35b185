//! Thresholds that tag: after training, one decision threshold per class and a global one are
//! chosen on the validation split (`cls_core::calibrate`): per class the threshold that maximises
//! that class's F1 over its observed validation entries, pulled toward the global one (which
//! maximises OF1) the fewer positives the class has (`--calibrate-shrink`); a class with fewer than
//! `--calibrate-min-positives` validation positives takes the global one.
//!
//! A model trained on partial labels scores low (every missing label was a negative to some
//! extent), so a fixed 0.5 leaves many images with no tag at all; calibrated thresholds follow
//! where the model's scores actually separate the classes.
//!
//! They go into the run folder as `thresholds.json` (`{"class name": threshold, ...}` in class
//! order, the format `cls-infer --thresholds FILE` reads, so it can be edited and given back) and
//! into the ONNX metadata (`thresholds`, `threshold`), which cls-infer applies by default.

use anyhow::{Context, Result};
use cls_core::calibrate::{calibrate, Calibration};
use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The run folder's thresholds file.
pub const FILE: &str = "thresholds.json";

/// What `summary.json` records about the thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdsSummary {
    /// The global threshold (best OF1 on validation).
    pub global: f64,
    /// Classes with their own threshold.
    pub per_class: usize,
    /// Classes with fewer than `min_positives` validation positives, at the global threshold.
    pub at_global: usize,
    pub min_positives: usize,
    /// The shrinkage of the classes' own thresholds toward the global one (`--calibrate-shrink`).
    #[serde(default)]
    pub shrink: f64,
    /// The validation labels of `conservative` classes had no verified negative: their unknown
    /// entries counted as negatives (the thresholds may tag less than they should).
    pub conservative: usize,
    /// Where the per-class thresholds were written.
    pub file: String,
}

/// Thresholds for the validation `scores` (images × classes) against `truth` (1, -1, 0 unknown:
/// left out; see `data::unknown_as_negative` for classes without verified negatives).
pub fn choose(
    scores: ArrayView2<f32>,
    truth: ArrayView2<i8>,
    min_positives: usize,
    shrink: f64,
) -> Result<Calibration> {
    calibrate(scores, truth, min_positives, shrink)
        .map_err(|e| anyhow::anyhow!("calibrating thresholds on validation: {e}"))
}

/// `{"class": threshold, ...}` in class order, one class a line.
pub fn to_json(classes: &[String], thresholds: &[f64]) -> Result<String> {
    let mut out = String::from("{\n");
    for (i, (c, t)) in classes.iter().zip(thresholds).enumerate() {
        let sep = if i + 1 < classes.len() { "," } else { "" };
        out += &format!("  {}: {}{sep}\n", serde_json::to_string(c)?, serde_json::to_string(t)?);
    }
    out += "}\n";
    Ok(out)
}

/// Write [`to_json`] to `path` atomically.
pub fn write(path: &Path, classes: &[String], cal: &Calibration) -> Result<()> {
    cls_core::fsio::write_atomic(path, to_json(classes, &cal.per_class)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The summary of `cal` written to `file`.
pub fn summarise(cal: &Calibration, conservative: usize, file: &Path) -> ThresholdsSummary {
    let at_global = cal.fallback.iter().filter(|&&f| f).count();
    ThresholdsSummary {
        global: cal.global,
        per_class: cal.per_class.len() - at_global,
        at_global,
        min_positives: cal.min_positives,
        shrink: cal.shrink,
        conservative,
        file: file.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn the_file_maps_class_names_to_thresholds_in_class_order() {
        let classes = vec!["zebra".to_string(), "a \"quoted\" name".to_string(), "apple".to_string()];
        let text = to_json(&classes, &[0.25, 0.1 + 0.2, 1.0]).unwrap();
        assert!(text.find("zebra").unwrap() < text.find("apple").unwrap(), "class order:\n{text}");
        let back: std::collections::BTreeMap<String, f64> = serde_json::from_str(&text).unwrap();
        assert_eq!(back["zebra"], 0.25);
        assert_eq!(back["a \"quoted\" name"], 0.1 + 0.2, "every digit kept");
        assert_eq!(back["apple"], 1.0);
    }

    #[test]
    fn rare_classes_fall_back_to_the_global_threshold() {
        let scores = array![[0.9f32, 0.2], [0.8, 0.1], [0.3, 0.05], [0.1, 0.6]];
        let truth = array![[1i8, -1], [1, -1], [-1, -1], [-1, 1]];
        let cal = choose(scores.view(), truth.view(), 2, 5.0).unwrap();
        assert_eq!(cal.fallback, vec![false, true]);
        assert_eq!(cal.per_class[1], cal.global);
        let s = summarise(&cal, 0, Path::new("t.json"));
        assert_eq!((s.per_class, s.at_global, s.min_positives), (1, 1, 2));
    }
}
