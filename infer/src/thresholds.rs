//! Which labels an image gets: the decision thresholds (per class) and the label-count bounds.
//!
//! Where the thresholds come from, in order (later ones override earlier ones):
//! 1. the model: its per-class `thresholds` metadata when it has them (cls-train calibrates them
//!    on validation data), else its global `threshold`, else 0.5;
//! 2. `--threshold T`: one global threshold for every class instead of the model's;
//! 3. `--thresholds FILE`: a JSON object `{"class name": t, ...}` overriding the classes it names.
//!
//! A label is predicted when `score >= threshold` (as in `cls_core::metrics`). `--min-labels K`
//! gives every image at least its K best labels (whatever their scores), `--top-k K` keeps at
//! most K; both keep the best first.

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::Path;

/// The threshold when neither the model nor the command line gives one.
pub const DEFAULT_THRESHOLD: f64 = 0.5;

/// The decision rule of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// One threshold per class, in class order.
    pub per_class: Vec<f64>,
    /// The global threshold (the one recorded in the metrics; every class's when `uniform`).
    pub global: f64,
    /// Every class has the global threshold.
    pub uniform: bool,
    /// Where the thresholds came from, in words (for stderr and the stats file).
    pub source: String,
    /// Every image gets at least this many labels (its best).
    pub min_labels: usize,
    /// Every image gets at most this many labels.
    pub top_k: Option<usize>,
}

/// The value of a threshold given on the command line or in a file: a number in [0, 1].
fn check(what: &str, t: f64) -> Result<f64> {
    if !(t.is_finite() && (0.0..=1.0).contains(&t)) {
        bail!("{what} {t} is not a number between 0 and 1");
    }
    Ok(t)
}

impl Decision {
    /// The rule from the model's metadata (`model_global`, `model_per_class`) and the flags.
    pub fn resolve(
        classes: &[String],
        model_global: Option<f64>,
        model_per_class: Option<&[f64]>,
        flag: Option<f64>,
        file: Option<&Path>,
        min_labels: usize,
        top_k: Option<usize>,
    ) -> Result<Decision> {
        if let Some(k) = top_k.filter(|&k| k < min_labels) {
            bail!("--min-labels {min_labels} is more than --top-k {k}: no image could have both");
        }
        let (mut per_class, global, mut source) = match (flag, model_per_class) {
            (Some(t), _) => {
                let t = check("--threshold", t)?;
                (vec![t; classes.len()], t, format!("one global threshold {t} (--threshold)"))
            }
            (None, Some(per_class)) => {
                let global = model_global.unwrap_or(DEFAULT_THRESHOLD);
                let (lo, hi) = per_class.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
                let source =
                    format!("the model's per-class thresholds ({lo} to {hi}; --threshold T for one global threshold)");
                (per_class.to_vec(), global, source)
            }
            (None, None) => match model_global {
                Some(t) => (vec![t; classes.len()], t, format!("the model's threshold {t}")),
                None => (
                    vec![DEFAULT_THRESHOLD; classes.len()],
                    DEFAULT_THRESHOLD,
                    format!("{DEFAULT_THRESHOLD} (the model names no threshold)"),
                ),
            },
        };
        if let Some(file) = file {
            let overrides = read_file(file, classes)?;
            for (c, t) in &overrides {
                per_class[*c] = *t;
            }
            source.push_str(&format!(
                ", {} of {} classes from --thresholds {}",
                overrides.len(),
                classes.len(),
                file.display()
            ));
        }
        let uniform = per_class.iter().all(|&t| t == global);
        Ok(Decision { per_class, global, uniform, source, min_labels, top_k })
    }

    /// The per-class thresholds for `cls_core::metrics::evaluate_with`, `None` when uniform.
    pub fn per_class_for_metrics(&self) -> Option<&[f64]> {
        (!self.uniform).then_some(self.per_class.as_slice())
    }

    /// The labels of one image into `out`: best first (ties by class order).
    pub fn choose(&self, scores: &[f32], out: &mut Vec<usize>) {
        out.clear();
        out.extend((0..scores.len()).filter(|&c| f64::from(scores[c]) >= self.per_class[c]));
        let by_score = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
        if out.len() < self.min_labels {
            // The best labels whatever their thresholds (a NaN score is never among them).
            let mut all: Vec<usize> = (0..scores.len()).filter(|&c| !scores[c].is_nan()).collect();
            all.sort_by(by_score);
            for &c in all.iter().take(self.min_labels) {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        out.sort_by(by_score);
        if let Some(k) = self.top_k {
            out.truncate(k);
        }
    }
}

/// The words of the error for a key given twice (see [`Unique`]).
const TWICE: &str = "is given twice";

/// A JSON object's entries in file order, refusing a key given twice: serde_json into a map
/// would keep the last value silently, so `{"cat": 0.2, "cat": 0.9}` would mean 0.9.
struct Unique(Vec<(String, f64)>);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Unique, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Unique;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of class names and thresholds")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Unique, A::Error> {
                let mut seen = BTreeSet::new();
                let mut out = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if !seen.insert(name.clone()) {
                        return Err(serde::de::Error::custom(format!("{name:?} {TWICE}")));
                    }
                    out.push((name, map.next_value::<f64>()?));
                }
                Ok(Unique(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// `--thresholds FILE`: `{"class": t, ...}`; every name must be a class of the model, and given
/// once.
fn read_file(path: &Path, classes: &[String]) -> Result<Vec<(usize, f64)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--thresholds {}", path.display()))?;
    let map: Unique = serde_json::from_str(text.trim_start_matches('\u{feff}')).map_err(|e| {
        // A key given twice is named as such; anything else is not the expected shape.
        if e.to_string().contains(TWICE) {
            anyhow::anyhow!("--thresholds {}: {e}", path.display())
        } else {
            anyhow::Error::new(e).context(format!(
                "--thresholds {}: expected a JSON object of class names and thresholds, {{\"cat\": 0.4, ...}}",
                path.display()
            ))
        }
    })?;
    let mut out = Vec::with_capacity(map.0.len());
    for (name, t) in map.0 {
        let Some(c) = classes.iter().position(|n| *n == name) else {
            bail!("--thresholds {}: {name:?} is not a class of the model", path.display());
        };
        out.push((c, check(&format!("--thresholds {}: the threshold of {name:?}", path.display()), t)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|c| format!("c{c}")).collect()
    }

    fn rule(global: Option<f64>, per: Option<&[f64]>, flag: Option<f64>, min: usize, top: Option<usize>) -> Decision {
        Decision::resolve(&names(3), global, per, flag, None, min, top).unwrap()
    }

    #[test]
    fn sources_in_order() {
        let d = rule(None, None, None, 0, None);
        assert_eq!((d.per_class.clone(), d.uniform), (vec![0.5; 3], true));
        assert!(d.per_class_for_metrics().is_none());
        let d = rule(Some(0.3), None, None, 0, None);
        assert_eq!((d.per_class.clone(), d.global), (vec![0.3; 3], 0.3));
        let per = [0.2, 0.4, 0.6];
        let d = rule(Some(0.3), Some(&per), None, 0, None);
        assert_eq!((d.per_class.as_slice(), d.global, d.uniform), (&per[..], 0.3, false));
        assert!(d.source.contains("per-class"), "{}", d.source);
        assert_eq!(d.per_class_for_metrics(), Some(&per[..]));
        let d = rule(Some(0.3), Some(&per), Some(0.7), 0, None);
        assert_eq!((d.per_class.clone(), d.uniform), (vec![0.7; 3], true));
        for bad in [f64::NAN, -0.1, 1.5] {
            assert!(Decision::resolve(&names(3), None, None, Some(bad), None, 0, None).is_err());
        }
        assert!(Decision::resolve(&names(3), None, None, None, None, 3, Some(2)).is_err());
    }

    #[test]
    fn file_overrides_named_classes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.json");
        std::fs::write(&f, r#"{"c2": 0.9, "c0": 0.1}"#).unwrap();
        let d = Decision::resolve(&names(3), Some(0.5), Some(&[0.2, 0.4, 0.6]), None, Some(&f), 0, None).unwrap();
        assert_eq!(d.per_class, [0.1, 0.4, 0.9]);
        assert!(d.source.contains("2 of 3 classes from --thresholds"), "{}", d.source);
        for (text, needle) in [
            (r#"{"dog": 0.5}"#, "\"dog\" is not a class"),
            (r#"{"c1": 2}"#, "\"c1\" 2 is not a number between 0 and 1"),
            (r#"[0.5]"#, "expected a JSON object"),
            // A key given twice is refused by name (it used to mean its last value).
            (r#"{"c0": 0.2, "c1": 0.3, "c0": 0.9}"#, "\"c0\" is given twice"),
            ("\u{feff}{\"c2\": 0.2,\n \"c2\": 0.2}", "\"c2\" is given twice at line 2"),
        ] {
            std::fs::write(&f, text).unwrap();
            let err = format!("{:#}", Decision::resolve(&names(3), None, None, None, Some(&f), 0, None).unwrap_err());
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn labels_best_first_with_bounds() {
        let mut out = Vec::new();
        let s = [0.6, 0.2, 0.9, 0.6, 0.5];
        let d = Decision::resolve(&names(5), Some(0.5), None, None, None, 0, None).unwrap();
        d.choose(&s, &mut out);
        assert_eq!(out, [2, 0, 3, 4]);
        let d = Decision::resolve(&names(5), Some(0.5), None, None, None, 0, Some(2)).unwrap();
        d.choose(&s, &mut out);
        assert_eq!(out, [2, 0]);
        // Per class: class 1 at 0.1 gets in, class 2 at 0.95 does not.
        let per = [0.5, 0.1, 0.95, 0.5, 0.5];
        let d = Decision::resolve(&names(5), Some(0.5), Some(&per), None, None, 0, None).unwrap();
        d.choose(&s, &mut out);
        assert_eq!(out, [0, 3, 4, 1]);
        // At least 2: an image below every threshold still gets its two best.
        let d = Decision::resolve(&names(5), Some(0.99), None, None, None, 2, None).unwrap();
        d.choose(&[0.1, f32::NAN, 0.3, 0.2, 0.0], &mut out);
        assert_eq!(out, [2, 3]);
        // At least 1 with labels above the threshold already: nothing added.
        let d = Decision::resolve(&names(5), Some(0.5), None, None, None, 1, None).unwrap();
        d.choose(&s, &mut out);
        assert_eq!(out, [2, 0, 3, 4]);
    }
}
