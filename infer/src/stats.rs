//! `<out>.stats.json`: the record of one run (one shard of an array job), as img2dataset and
//! clip-retrieval keep one per shard: what was tagged, failed and skipped, how fast, with which
//! model (its SHA-256 and classes) and thresholds, and which shard. `--from-tags` reads them beside
//! the tag files to say which shards are missing; `--resume` reads the [`Origin`] of the rows
//! already in `OUT` from them (and that of `OUT.partial`'s rows from its first line), and refuses
//! to add rows of another model or labelling rule.

use crate::shard::Shard;
use crate::thresholds::Decision;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// `OUT.stats.json`.
pub fn stats_path(out: &Path) -> PathBuf {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    // Bytes, not text: an --out name that is not UTF-8 keeps its own bytes.
    let bytes = out.as_os_str().as_bytes();
    let end = bytes.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    let mut name = bytes[..end].to_vec();
    name.extend_from_slice(b".stats.json");
    PathBuf::from(std::ffi::OsString::from_vec(name))
}

/// The SHA-256 of a file, in hex.
pub fn sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardStats {
    pub index: usize,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThresholdStats {
    pub source: String,
    pub global: f64,
    /// Per class (by name, in class order), when classes have their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_class: Option<serde_json::Map<String, serde_json::Value>>,
    pub min_labels: usize,
    pub top_k: Option<usize>,
}

impl ThresholdStats {
    pub fn of(d: &Decision, classes: &[String]) -> ThresholdStats {
        let per_class =
            (!d.uniform).then(|| classes.iter().cloned().zip(d.per_class.iter().map(|&t| t.into())).collect());
        ThresholdStats {
            source: d.source.clone(),
            global: d.global,
            per_class,
            min_labels: d.min_labels,
            top_k: d.top_k,
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    pub images: String,
    pub out: String,
    pub format: String,
    pub shard: ShardStats,
    pub images_tagged: usize,
    pub images_failed: usize,
    /// Already in the output (`--resume`).
    pub images_skipped: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub model: String,
    pub model_sha256: String,
    pub thresholds: ThresholdStats,
    /// False when the run stopped early (`--max-errors`).
    pub complete: bool,
    pub cls_infer: String,
    /// The model's classes, in its order (empty in the stats of earlier versions).
    #[serde(default)]
    pub classes: Vec<String>,
    /// CSV text cells written as they are (`--csv-raw`), not protected from spreadsheets.
    /// `None` in the stats of earlier versions (which wrote them as they are, and recorded
    /// neither this nor the classes).
    #[serde(default)]
    pub csv_raw: Option<bool>,
}

impl Stats {
    pub fn shard(s: Shard) -> ShardStats {
        ShardStats { index: s.index, count: s.count }
    }

    /// The origin of the rows of the output these stats describe.
    pub fn origin(&self) -> Origin {
        Origin {
            model: self.model.clone(),
            model_sha256: self.model_sha256.clone(),
            classes: self.classes.clone(),
            thresholds: self.thresholds.clone(),
            csv_raw: self.csv_raw,
        }
    }
}

/// What the rows of a tag file depend on besides the images: the model (its SHA-256 and its
/// classes), the labelling rule (thresholds, `--min-labels`, `--top-k`) and, for CSV, whether
/// text cells are protected. Recorded in `OUT.stats.json` and in the first line of `OUT.partial`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Origin {
    /// The model's path as given (for messages).
    pub model: String,
    pub model_sha256: String,
    /// Empty when unknown (the stats of earlier versions).
    #[serde(default)]
    pub classes: Vec<String>,
    pub thresholds: ThresholdStats,
    /// `None`: rows of an earlier version, which did not record it.
    #[serde(default)]
    pub csv_raw: Option<bool>,
}

/// How the origin of rows already written differs from this run's.
#[derive(Debug, Clone, PartialEq)]
pub enum Mismatch {
    /// Another model, other classes or another CSV cell mode: the rows cannot be made one file.
    Model(String),
    /// Only the labelling rule: the rows can be labelled again from their scores (`--relabel`).
    Rule(String),
}

/// The first characters of a SHA-256, for messages.
fn short(hash: &str) -> String {
    format!("{}…", hash.get(..12).unwrap_or(hash))
}

/// Each class's threshold under `t` (`classes`: the names when `t` has one global threshold).
fn per_class(t: &ThresholdStats, classes: &[String]) -> std::collections::BTreeMap<String, Option<f64>> {
    match &t.per_class {
        Some(map) => map.iter().map(|(k, v)| (k.clone(), v.as_f64())).collect(),
        None => classes.iter().map(|c| (c.clone(), Some(t.global))).collect(),
    }
}

impl Origin {
    /// How `then`, the origin of rows already written, differs from this run's (`self`); `None`
    /// when rows of both may share a file.
    pub fn compare(&self, then: &Origin) -> Option<Mismatch> {
        if then.model_sha256 != self.model_sha256 {
            return Some(Mismatch::Model(format!(
                "another model: sha256 {} ({}), while this run's {} is {}",
                short(&then.model_sha256),
                then.model,
                self.model,
                short(&self.model_sha256)
            )));
        }
        if !then.classes.is_empty() && then.classes != self.classes {
            let names = |c: &[String]| {
                let c: Vec<&str> = c.iter().map(String::as_str).collect();
                crate::truth::preview(&c)
            };
            return Some(Mismatch::Model(format!(
                "other class names ({} then; {} now)",
                names(&then.classes),
                names(&self.classes)
            )));
        }
        if then.csv_raw.is_none() {
            return Some(Mismatch::Model(
                "an earlier version of cls-infer, which recorded neither the model's classes nor how CSV cells were \
                 written"
                    .to_string(),
            ));
        }
        if then.csv_raw != self.csv_raw {
            let mode = |raw: Option<bool>| match raw {
                Some(true) => "as they are (--csv-raw)",
                _ => "protected from spreadsheets",
            };
            return Some(Mismatch::Model(format!(
                "CSV text cells {} then, {} now",
                mode(then.csv_raw),
                mode(self.csv_raw)
            )));
        }
        let (a, b) = (&then.thresholds, &self.thresholds);
        let mut what = Vec::new();
        let names = if then.classes.is_empty() { &self.classes } else { &then.classes };
        let (ta, tb) = (per_class(a, names), per_class(b, &self.classes));
        if ta != tb {
            if a.per_class.is_none() && b.per_class.is_none() {
                what.push(format!("threshold {} then, {} now", a.global, b.global));
            } else {
                let n: std::collections::BTreeSet<&String> =
                    ta.keys().chain(tb.keys()).filter(|c| ta.get(*c) != tb.get(*c)).collect();
                let show = |t: Option<&Option<f64>>| match t {
                    Some(Some(t)) => t.to_string(),
                    _ => "none".to_string(),
                };
                if let Some(c) = n.first() {
                    what.push(format!(
                        "the thresholds of {} classes ({c:?}: {} then, {} now)",
                        n.len(),
                        show(ta.get(*c)),
                        show(tb.get(*c))
                    ));
                }
            }
        }
        if a.min_labels != b.min_labels {
            what.push(format!("--min-labels {} then, {} now", a.min_labels, b.min_labels));
        }
        if a.top_k != b.top_k {
            let k = |k: Option<usize>| k.map_or("none".to_string(), |k| k.to_string());
            what.push(format!("--top-k {} then, {} now", k(a.top_k), k(b.top_k)));
        }
        (!what.is_empty()).then(|| Mismatch::Rule(format!("other labelling rules: {}", what.join("; "))))
    }
}

/// The stats beside a tag file, if any.
pub fn read_beside(tags: &Path) -> Option<Stats> {
    let text = std::fs::read_to_string(stats_path(tags)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Which shards of an array job have no tag file among `stats` (each `Some` for a tag file with
/// stats): `(count, missing indices)`, when the stats agree on a shard count.
pub fn missing_shards(stats: &[Option<Stats>]) -> Option<(usize, Vec<usize>)> {
    let counts: std::collections::BTreeSet<usize> = stats.iter().flatten().map(|s| s.shard.count).collect();
    if counts.len() != 1 {
        return None;
    }
    let count = *counts.first()?;
    let seen: std::collections::BTreeSet<usize> = stats.iter().flatten().map(|s| s.shard.index).collect();
    Some((count, (0..count).filter(|i| !seen.contains(i)).collect()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stats_file_keeps_the_output_name_s_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let out = Path::new(std::ffi::OsStr::from_bytes(b"tags-\xff.jsonl"));
        assert_eq!(stats_path(out).as_os_str().as_bytes(), b"tags-\xff.jsonl.stats.json");
        assert_eq!(stats_path(Path::new("dir/sidecars/")), Path::new("dir/sidecars.stats.json"));
    }

    use super::*;

    #[test]
    fn paths_and_missing_shards() {
        assert_eq!(stats_path(Path::new("t/tags-3.jsonl")), PathBuf::from("t/tags-3.jsonl.stats.json"));
        assert_eq!(stats_path(Path::new("side/")), PathBuf::from("side.stats.json"));
        let s = |index, count| {
            Some(Stats {
                images: String::new(),
                out: String::new(),
                format: "jsonl".into(),
                shard: ShardStats { index, count },
                images_tagged: 0,
                images_failed: 0,
                images_skipped: 0,
                seconds: 0.0,
                images_per_second: 0.0,
                model: String::new(),
                model_sha256: String::new(),
                thresholds: ThresholdStats {
                    source: String::new(),
                    global: 0.5,
                    per_class: None,
                    min_labels: 0,
                    top_k: None,
                },
                complete: true,
                cls_infer: String::new(),
                classes: Vec::new(),
                csv_raw: Some(false),
            })
        };
        assert_eq!(missing_shards(&[s(0, 4), s(2, 4), None]), Some((4, vec![1, 3])));
        assert_eq!(missing_shards(&[s(0, 2), s(1, 2)]), Some((2, vec![])));
        assert_eq!(missing_shards(&[s(0, 2), s(1, 3)]), None);
        assert_eq!(missing_shards(&[None]), None);
    }

    #[test]
    fn origins_differ_by_model_classes_or_rule() {
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let rule = |global, per: Option<&[f64]>, min, top| {
            let d = Decision::resolve(&classes, Some(global), per, None, None, min, top).unwrap();
            ThresholdStats::of(&d, &classes)
        };
        let o = Origin {
            model: "m.onnx".into(),
            model_sha256: "ab".repeat(32),
            classes: classes.clone(),
            thresholds: rule(0.5, None, 0, None),
            csv_raw: Some(false),
        };
        assert_eq!(o.compare(&o), None);
        // Another path to the same bytes is the same model; a stats file of an earlier version
        // (no classes, no CSV cell mode: it wrote cells as they are) is refused.
        assert_eq!(o.compare(&Origin { model: "copy.onnx".into(), ..o.clone() }), None);
        let earlier = Origin { classes: vec![], csv_raw: None, ..o.clone() };
        assert!(matches!(o.compare(&earlier), Some(Mismatch::Model(m)) if m.contains("an earlier version")));
        let other = Origin { model_sha256: "cd".repeat(32), model: "n.onnx".into(), ..o.clone() };
        let Some(Mismatch::Model(m)) = o.compare(&other) else { panic!() };
        assert!(
            m.contains("another model: sha256 cdcdcdcdcdcd… (n.onnx)") && m.contains("m.onnx is abababababab…"),
            "{m}"
        );
        let renamed = Origin { classes: vec!["a".into(), "b".into(), "x".into()], ..o.clone() };
        assert!(matches!(o.compare(&renamed), Some(Mismatch::Model(m)) if m.contains("other class names")));
        let raw = Origin { csv_raw: Some(true), ..o.clone() };
        assert!(matches!(o.compare(&raw), Some(Mismatch::Model(m)) if m.contains("--csv-raw")));
        for (then, needle) in [
            (rule(0.7, None, 0, None), "threshold 0.7 then, 0.5 now"),
            (rule(0.5, Some(&[0.5, 0.2, 0.5]), 0, None), "the thresholds of 1 classes (\"b\": 0.2 then, 0.5 now)"),
            (rule(0.5, None, 1, None), "--min-labels 1 then, 0 now"),
            (rule(0.5, None, 0, Some(2)), "--top-k 2 then, none now"),
        ] {
            let then = Origin { thresholds: then, ..o.clone() };
            let Some(Mismatch::Rule(m)) = o.compare(&then) else { panic!("{needle}") };
            assert!(m.contains(needle), "{m}");
        }
        // The same rule written per class (every class at the global value) is the same rule.
        let spelled = Origin { thresholds: rule(0.3, Some(&[0.5, 0.5, 0.5]), 0, None), ..o.clone() };
        assert_eq!(o.compare(&spelled), None, "{:?}", spelled.thresholds);
    }
}
