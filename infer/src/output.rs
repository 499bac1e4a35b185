//! What cls-infer writes: the JSON Lines records of tags and unreadable files. Files are written
//! through `cls_core::fsio` (atomic for regular files, straight into devices, FIFOs and standard
//! output, temporary files removed on an error or a signal).

use crate::thresholds::Decision;
use anyhow::Result;
pub use cls_core::fsio::Output;
use serde::Serialize;
use std::path::Path;

/// An output file, or standard output when `dest` is `None`.
pub fn open(dest: Option<&Path>) -> Result<Output> {
    dest.map_or_else(|| Ok(Output::stdout()), Output::create)
}

/// Write a whole small file (JSON) atomically.
pub fn write_file(dest: &Path, text: &str) -> Result<()> {
    cls_core::fsio::write_atomic(dest, format!("{text}\n").as_bytes())
}

/// One output row: `{"image": rel, "labels": [best first], "scores": {class: p, ...}}`, the
/// scores in class order (f32 in its shortest exact form; a non-finite score is `null`). The
/// shape lives in this struct; serde writes it.
#[derive(serde::Serialize)]
struct Row<'a> {
    image: &'a str,
    labels: Labels<'a>,
    scores: Scores<'a>,
}

/// The chosen class names, best first.
struct Labels<'a> {
    names: &'a [String],
    chosen: &'a [usize],
}

impl serde::Serialize for Labels<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.chosen.iter().map(|&c| &self.names[c]))
    }
}

/// Class name → score, in class order, without building a map.
struct Scores<'a> {
    names: &'a [String],
    scores: &'a [f32],
}

impl serde::Serialize for Scores<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.names.iter().zip(self.scores).map(|(n, p)| (n, p.is_finite().then_some(*p))))
    }
}

/// JSON on one line with a space after each `:` and `,` (the layout `json.dumps` writes).
struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// Writes the output lines into one reused buffer (with 374 classes, a line costs about 20 µs).
pub struct Tagger {
    names: Vec<String>,
    chosen: Vec<usize>,
    line: Vec<u8>,
}

impl Tagger {
    pub fn new(classes: &[String]) -> Tagger {
        Tagger { names: classes.to_vec(), chosen: Vec::new(), line: Vec::new() }
    }

    /// The line for one image (without the newline).
    pub fn line(&mut self, rel: &str, scores: &[f32], decision: &Decision) -> &str {
        decision.choose(scores, &mut self.chosen);
        self.line.clear();
        let row = Row {
            image: rel,
            labels: Labels { names: &self.names, chosen: &self.chosen },
            scores: Scores { names: &self.names, scores },
        };
        // Serialising strings and numbers into a Vec cannot fail.
        let _ = row.serialize(&mut serde_json::Serializer::with_formatter(&mut self.line, Spaced));
        // serde_json writes UTF-8 only.
        std::str::from_utf8(&self.line).unwrap_or_default()
    }
}

/// One `--errors` line: `{"path": ..., "reason": ...}`.
pub fn error_line(path: &str, reason: &str) -> String {
    serde_json::json!({ "path": path, "reason": reason }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(classes: usize, threshold: f64, top_k: Option<usize>) -> Decision {
        let names: Vec<String> = (0..classes).map(|c| c.to_string()).collect();
        Decision::resolve(&names, Some(threshold), None, None, None, 0, top_k).unwrap()
    }

    #[test]
    fn tag_lines_round_trip() {
        let classes = ["a \"q\"".to_string(), "b".to_string(), "ü\\".to_string()];
        let mut tagger = Tagger::new(&classes);
        let line = tagger.line("x/\"y\".jpg", &[0.1, 0.7, 0.9], &rule(3, 0.5, None)).to_string();
        assert_eq!(
            line,
            r#"{"image": "x/\"y\".jpg", "labels": ["ü\\", "b"], "scores": {"a \"q\"": 0.1, "b": 0.7, "ü\\": 0.9}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["image"], "x/\"y\".jpg");
        assert_eq!(v["labels"], serde_json::json!(["ü\\", "b"]));
        assert_eq!(v["scores"]["a \"q\""].as_f64().unwrap() as f32, 0.1f32);
        assert_eq!(v["scores"]["b"].as_f64().unwrap() as f32, 0.7f32);
        assert_eq!(v["scores"]["ü\\"].as_f64().unwrap() as f32, 0.9f32);
        // The buffer is reused: a second line carries nothing of the first; NaN becomes null.
        let second = tagger.line("z.png", &[f32::NAN, 0.2, 0.3], &rule(3, 0.5, Some(1))).to_string();
        let v: serde_json::Value = serde_json::from_str(&second).unwrap();
        assert_eq!(v["image"], "z.png");
        assert_eq!(v["labels"], serde_json::json!([]));
        assert!(v["scores"]["a \"q\""].is_null());
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release -p cls-infer speed -- --ignored --nocapture`: the cost of the output
    /// lines of a Corel5k-sized run (499 images x 374 classes).
    #[test]
    #[ignore]
    fn tagger_speed() {
        let classes: Vec<String> = (0..374).map(|c| format!("class_{c}")).collect();
        let scores: Vec<f32> = (0..374).map(|c| ((c * 7919) % 1000) as f32 / 1000.0).collect();
        let mut tagger = Tagger::new(&classes);
        let rule = Decision::resolve(&classes, Some(0.5), None, None, None, 0, None).unwrap();
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let mut bytes = 0;
            for i in 0..499 {
                bytes += tagger.line(&format!("test/{i}.jpeg"), &scores, &rule).len();
            }
            best = best.min(t.elapsed().as_secs_f64());
            assert!(bytes > 0);
        }
        eprintln!("499 lines x 374 scores: {:.1} ms (best of 5)", best * 1e3);
    }
}
