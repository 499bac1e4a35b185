//! What cls-infer writes: the JSON Lines records of tags and unreadable files. Files are written
//! through `cls_core::fsio` (atomic for regular files, straight into devices, FIFOs and standard
//! output, temporary files removed on an error or a signal).

use anyhow::Result;
pub use cls_core::fsio::Output;
use std::path::Path;

/// An output file, or standard output when `dest` is `None`.
pub fn open(dest: Option<&Path>) -> Result<Output> {
    dest.map_or_else(|| Ok(Output::stdout()), Output::create)
}

/// Write a whole small file (JSON) atomically.
pub fn write_file(dest: &Path, text: &str) -> Result<()> {
    cls_core::fsio::write_atomic(dest, format!("{text}\n").as_bytes())
}

/// The labels to report for one image: classes with `p >= threshold`, best first (ties by class
/// order), at most `top_k`.
pub fn chosen_labels(scores: &[f32], threshold: f64, top_k: Option<usize>) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).filter(|&c| f64::from(scores[c]) >= threshold).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    if let Some(k) = top_k {
        idx.truncate(k);
    }
    idx
}

/// Writes the output lines: `{"image": rel, "labels": [...], "scores": {class: p, ...}}` with the
/// scores in class order (f32 in its shortest exact form, as serde_json prints it). The class
/// names are quoted once and the line buffer is reused: with 374 classes, building every line
/// from fresh strings cost 0.14 ms per image, 1.4% of a run, spent between inference batches.
pub struct Tagger {
    /// The class names, JSON-quoted.
    names: Vec<String>,
    line: Vec<u8>,
}

impl Tagger {
    pub fn new(classes: &[String]) -> Tagger {
        Tagger { names: classes.iter().map(|c| quote(c)).collect(), line: Vec::new() }
    }

    /// The line for one image (without the newline).
    pub fn line(&mut self, rel: &str, scores: &[f32], threshold: f64, top_k: Option<usize>) -> &str {
        let l = &mut self.line;
        l.clear();
        l.extend_from_slice(b"{\"image\": ");
        l.extend_from_slice(quote(rel).as_bytes());
        l.extend_from_slice(b", \"labels\": [");
        for (k, c) in chosen_labels(scores, threshold, top_k).into_iter().enumerate() {
            if k > 0 {
                l.extend_from_slice(b", ");
            }
            l.extend_from_slice(self.names[c].as_bytes());
        }
        l.extend_from_slice(b"], \"scores\": {");
        for (c, (name, p)) in self.names.iter().zip(scores).enumerate() {
            if c > 0 {
                l.extend_from_slice(b", ");
            }
            l.extend_from_slice(name.as_bytes());
            l.extend_from_slice(b": ");
            if p.is_finite() {
                // Writing a finite f32 into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *l, p);
            } else {
                l.extend_from_slice(b"null");
            }
        }
        l.extend_from_slice(b"}}");
        // Only JSON text went in: quoted UTF-8 strings, numbers and punctuation.
        std::str::from_utf8(l).unwrap_or_default()
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// One `--errors` line: `{"path": ..., "reason": ...}`.
pub fn error_line(path: &str, reason: &str) -> String {
    serde_json::json!({ "path": path, "reason": reason }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_thresholded_sorted_and_capped() {
        let s = [0.6, 0.2, 0.9, 0.6, 0.5];
        assert_eq!(chosen_labels(&s, 0.5, None), vec![2, 0, 3, 4]);
        assert_eq!(chosen_labels(&s, 0.5, Some(2)), vec![2, 0]);
        assert_eq!(chosen_labels(&s, 0.95, None), Vec::<usize>::new());
    }

    #[test]
    fn tag_lines_round_trip() {
        let classes = ["a \"q\"".to_string(), "b".to_string(), "ü\\".to_string()];
        let mut tagger = Tagger::new(&classes);
        let line = tagger.line("x/\"y\".jpg", &[0.1, 0.7, 0.9], 0.5, None).to_string();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["image"], "x/\"y\".jpg");
        assert_eq!(v["labels"], serde_json::json!(["ü\\", "b"]));
        assert_eq!(v["scores"]["a \"q\""].as_f64().unwrap() as f32, 0.1f32);
        assert_eq!(v["scores"]["b"].as_f64().unwrap() as f32, 0.7f32);
        assert_eq!(v["scores"]["ü\\"].as_f64().unwrap() as f32, 0.9f32);
        // The buffer is reused: a second line carries nothing of the first; NaN becomes null.
        let second = tagger.line("z.png", &[f32::NAN, 0.2, 0.3], 0.5, Some(1)).to_string();
        let v: serde_json::Value = serde_json::from_str(&second).unwrap();
        assert_eq!(v["image"], "z.png");
        assert_eq!(v["labels"], serde_json::json!([]));
        assert!(v["scores"]["a \"q\""].is_null());
    }
}
