//! The shapes of cls-infer's output rows, one struct each, written by serde:
//!
//! - `jsonl` (the default): `{"image": rel, "labels": [best first], "scores": {class: p, ...}}`
//!   on one line in `json.dumps`' layout; a failed image `{"image": rel, "labels": [], "error":
//!   reason}` (the img2dataset convention: a failure is a row, not a gap).
//! - `csv`: a header `image,labels,<one column per class>,error`, then one row per image: the
//!   labels joined by `;` (best first), the scores, an empty `error`; a failed image has empty
//!   labels and scores and its reason in `error`. RFC 4180 quoting (the `csv` crate). A text cell
//!   (a name, the labels, an error, a class in the header) that starts with `=`, `+`, `-`, `@`,
//!   a tab or a carriage return would run as a formula in a spreadsheet ("CSV injection"): it gets
//!   a leading `'`, as OWASP recommends, and so does one that starts with `'` itself, so that
//!   removing one leading `'` from a text cell gives its text back ([`unprotect`]); `--csv-raw`
//!   writes cells as they are. Scores are numbers and are never changed.
//! - `exiftool`: the JSON array that `exiftool -json=FILE DIR` imports: per tagged image
//!   `{"SourceFile": path as opened, "XMP-dc:Subject": [labels], "XMP-lr:HierarchicalSubject":
//!   ["cls|label", ...]}`; images without labels and failed images are left out (exiftool would
//!   otherwise empty their keywords).
//!
//! Scores are f32 in their shortest exact form; a non-finite score is `null` (JSON) or empty
//! (CSV). Files are written through `cls_core::fsio` (see [`crate::sink`]).

use crate::inputs::Item;
use anyhow::Result;
pub use cls_core::fsio::Output;
use serde::Serialize;
use std::borrow::Cow;
use std::path::Path;

/// The output formats of `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object a line: image, labels, scores (and error).
    Jsonl,
    /// image,labels,<one score column per class>,error.
    Csv,
    /// One XMP sidecar per image (<name>.<ext>.xmp), under --out DIR or beside the images (--out .)
    Xmp,
    /// The JSON that `exiftool -json=FILE DIR` imports (SourceFile, XMP-dc:Subject).
    Exiftool,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Xmp => "xmp",
            Format::Exiftool => "exiftool",
        }
    }
}

/// The first characters by which a spreadsheet runs a cell as a formula (OWASP, "CSV Injection").
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// A CSV text cell safe to open in a spreadsheet: one that starts with a formula character, or
/// with `'`, gets a leading `'` (see the module's doc).
pub fn protect(cell: &str) -> Cow<'_, str> {
    match cell.chars().next() {
        Some(c) if c == '\'' || FORMULA_START.contains(&c) => Cow::Owned(format!("'{cell}")),
        _ => Cow::Borrowed(cell),
    }
}

/// The text of a CSV text cell [`protect`] wrote: without its one leading `'`.
pub fn unprotect(cell: &str) -> &str {
    cell.strip_prefix('\'').unwrap_or(cell)
}

/// Write a whole small file (JSON) atomically.
pub fn write_file(dest: &Path, text: &str) -> Result<()> {
    cls_core::fsio::write_atomic(dest, format!("{text}\n").as_bytes())
}

/// One `--errors` line: `{"path": ..., "reason": ...}`.
pub fn error_line(path: &str, reason: &str) -> String {
    serde_json::json!({ "path": path, "reason": reason }).to_string()
}

/// One image's result: its scores and chosen labels (class indices, best first), or why it failed.
pub struct Tagged<'a> {
    pub item: &'a Item,
    pub result: Result<(&'a [f32], &'a [usize]), &'a str>,
}

/// The JSONL row.
#[derive(Serialize)]
struct JsonRow<'a> {
    image: &'a str,
    labels: Labels<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scores: Option<Scores<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// The chosen class names, best first (prefixed by `prefix`, for hierarchical keywords).
struct Labels<'a> {
    names: &'a [String],
    chosen: &'a [usize],
    prefix: &'a str,
}

impl Serialize for Labels<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.prefix.is_empty() {
            s.collect_seq(self.chosen.iter().map(|&c| &self.names[c]))
        } else {
            s.collect_seq(self.chosen.iter().map(|&c| format!("{}{}", self.prefix, self.names[c])))
        }
    }
}

/// Class name → score, in class order, without building a map.
struct Scores<'a> {
    names: &'a [String],
    scores: &'a [f32],
}

impl Serialize for Scores<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.names.iter().zip(self.scores).map(|(n, p)| (n, p.is_finite().then_some(*p))))
    }
}

/// The CSV row (the header names its columns).
#[derive(Serialize)]
struct CsvRow<'a> {
    image: Cow<'a, str>,
    labels: Joined<'a>,
    scores: CsvScores<'a>,
    error: Cow<'a, str>,
}

/// The chosen class names joined by `;`, best first (protected unless `raw`).
struct Joined<'a> {
    names: &'a [String],
    chosen: &'a [usize],
    raw: bool,
}

impl Serialize for Joined<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut text = String::new();
        for (k, &c) in self.chosen.iter().enumerate() {
            if k > 0 {
                text.push(';');
            }
            text.push_str(&self.names[c]);
        }
        if self.raw {
            s.serialize_str(&text)
        } else {
            s.serialize_str(&protect(&text))
        }
    }
}

/// One cell per class: the score, empty when not finite or when the image failed.
struct CsvScores<'a> {
    n: usize,
    scores: Option<&'a [f32]>,
}

impl Serialize for CsvScores<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.scores {
            Some(scores) => s.collect_seq(scores.iter().map(|p| p.is_finite().then_some(*p))),
            None => s.collect_seq((0..self.n).map(|_| None::<f32>)),
        }
    }
}

/// The exiftool row.
#[derive(Serialize)]
struct ExifRow<'a> {
    #[serde(rename = "SourceFile")]
    source_file: &'a str,
    #[serde(rename = "XMP-dc:Subject")]
    subject: Labels<'a>,
    #[serde(rename = "XMP-lr:HierarchicalSubject")]
    hierarchical: Labels<'a>,
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

/// Encodes rows of one format into a reused buffer (with 374 classes, a JSONL line costs about
/// 20 µs).
pub struct Encoder {
    format: Format,
    names: Vec<String>,
    /// `root|` for hierarchical keywords.
    prefix: String,
    csv: csv::Writer<Shared>,
    csv_out: Shared,
    /// CSV text cells as they are (`--csv-raw`), not protected from spreadsheets.
    csv_raw: bool,
    buf: Vec<u8>,
}

/// The buffer the CSV writer writes into, shared with the encoder that takes the rows out.
#[derive(Clone, Default)]
struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Encoder {
    /// `root`: the root of the hierarchical keywords (`--keyword-root`).
    pub fn new(format: Format, classes: &[String], root: &str) -> Encoder {
        let csv_out = Shared::default();
        Encoder {
            format,
            names: classes.to_vec(),
            prefix: format!("{root}|"),
            csv: csv::WriterBuilder::new().has_headers(false).from_writer(csv_out.clone()),
            csv_out,
            csv_raw: false,
            buf: Vec::new(),
        }
    }

    /// Write CSV text cells as they are (`--csv-raw`).
    pub fn with_csv_raw(mut self, raw: bool) -> Encoder {
        self.csv_raw = raw;
        self
    }

    /// A CSV text cell as written.
    fn cell<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.csv_raw {
            Cow::Borrowed(text)
        } else {
            protect(text)
        }
    }

    /// The format of the rows.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Whether CSV text cells are written as they are (`--csv-raw`).
    pub fn csv_raw(&self) -> bool {
        self.csv_raw
    }

    /// The text of a CSV text cell as read back (see [`unprotect`]).
    pub fn text_of_cell<'a>(&self, cell: &'a str) -> &'a str {
        if self.csv_raw {
            cell
        } else {
            unprotect(cell)
        }
    }

    /// The model's class names.
    pub fn classes(&self) -> &[String] {
        &self.names
    }

    /// `root|`, the prefix of the hierarchical keywords.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The first line of a file (CSV's header), if the format has one.
    pub fn header(&mut self) -> Option<Vec<u8>> {
        if self.format != Format::Csv {
            return None;
        }
        let classes: Vec<Cow<str>> = self.names.iter().map(|n| self.cell(n)).collect();
        let fields = ["image", "labels"].into_iter().chain(classes.iter().map(|c| c.as_ref())).chain(["error"]);
        let _ = self.csv.write_record(fields);
        Some(self.take_csv())
    }

    fn take_csv(&mut self) -> Vec<u8> {
        let _ = self.csv.flush();
        let mut out = std::mem::take(&mut *self.csv_out.0.borrow_mut());
        // The record's line end is added by whoever writes the line.
        if out.last() == Some(&b'\n') {
            out.pop();
        }
        if out.last() == Some(&b'\r') {
            out.pop();
        }
        out
    }

    /// The row of one image (without its line end), or `None` when the format leaves it out.
    pub fn row(&mut self, t: &Tagged) -> Option<&[u8]> {
        self.buf.clear();
        let names = &self.names;
        let raw = self.csv_raw;
        match self.format {
            Format::Jsonl => {
                let row = match t.result {
                    Ok((scores, chosen)) => JsonRow {
                        image: &t.item.name,
                        labels: Labels { names, chosen, prefix: "" },
                        scores: Some(Scores { names, scores }),
                        error: None,
                    },
                    Err(reason) => JsonRow {
                        image: &t.item.name,
                        labels: Labels { names, chosen: &[], prefix: "" },
                        scores: None,
                        error: Some(reason),
                    },
                };
                // Serialising strings and numbers into a Vec cannot fail.
                let _ = row.serialize(&mut serde_json::Serializer::with_formatter(&mut self.buf, Spaced));
            }
            Format::Csv => {
                let row = match t.result {
                    Ok((scores, chosen)) => CsvRow {
                        image: self.cell(&t.item.name),
                        labels: Joined { names, chosen, raw },
                        scores: CsvScores { n: names.len(), scores: Some(scores) },
                        error: Cow::Borrowed(""),
                    },
                    Err(reason) => CsvRow {
                        image: self.cell(&t.item.name),
                        labels: Joined { names, chosen: &[], raw },
                        scores: CsvScores { n: names.len(), scores: None },
                        error: self.cell(reason),
                    },
                };
                let _ = self.csv.serialize(row);
                self.buf = self.take_csv();
            }
            Format::Exiftool => {
                let Ok((_, chosen)) = t.result else { return None };
                if chosen.is_empty() {
                    return None;
                }
                let source = t.item.path.to_string_lossy();
                let row = ExifRow {
                    source_file: &source,
                    subject: Labels { names, chosen, prefix: "" },
                    hierarchical: Labels { names, chosen, prefix: &self.prefix },
                };
                let _ = serde_json::to_writer(&mut self.buf, &row);
            }
            Format::Xmp => return None,
        }
        Some(&self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn item(name: &str) -> Item {
        Item { name: name.to_string(), path: PathBuf::from("dir").join(name), failed: None }
    }

    fn text(e: &mut Encoder, t: &Tagged) -> String {
        String::from_utf8(e.row(t).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn jsonl_rows_round_trip() {
        let classes = ["a \"q\"".to_string(), "b".to_string(), "ü\\".to_string()];
        let mut e = Encoder::new(Format::Jsonl, &classes, "cls");
        let it = item("x/\"y\".jpg");
        let line = text(&mut e, &Tagged { item: &it, result: Ok((&[0.1, 0.7, 0.9], &[2, 1])) });
        assert_eq!(
            line,
            r#"{"image": "x/\"y\".jpg", "labels": ["ü\\", "b"], "scores": {"a \"q\"": 0.1, "b": 0.7, "ü\\": 0.9}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["scores"]["b"].as_f64().unwrap() as f32, 0.7f32);
        // The buffer is reused: a second line carries nothing of the first; NaN becomes null.
        let it = item("z.png");
        let second = text(&mut e, &Tagged { item: &it, result: Ok((&[f32::NAN, 0.2, 0.3], &[])) });
        let v: serde_json::Value = serde_json::from_str(&second).unwrap();
        assert_eq!((v["image"].as_str(), v["labels"].as_array().map(Vec::len)), (Some("z.png"), Some(0)));
        assert!(v["scores"]["a \"q\""].is_null());
        // A failure is a row with an error and no scores.
        let failed = text(&mut e, &Tagged { item: &it, result: Err("cannot decode: bad") });
        assert_eq!(failed, r#"{"image": "z.png", "labels": [], "error": "cannot decode: bad"}"#);
    }

    #[test]
    fn csv_rows_have_one_width() {
        let classes = ["x,y".to_string(), "q\"".to_string()];
        let mut e = Encoder::new(Format::Csv, &classes, "cls");
        assert_eq!(e.header().unwrap(), b"image,labels,\"x,y\",\"q\"\"\",error");
        let it = item("a b.jpg");
        assert_eq!(
            text(&mut e, &Tagged { item: &it, result: Ok((&[0.5, 1e-10], &[0])) }),
            "a b.jpg,\"x,y\",0.5,1e-10,"
        );
        assert_eq!(
            text(&mut e, &Tagged { item: &it, result: Err("bad, \"very\"") }),
            "a b.jpg,,,,\"bad, \"\"very\"\"\""
        );
    }

    #[test]
    fn csv_text_cells_cannot_run_as_formulas() {
        let classes = ["=SUM(A1)".to_string(), "ok".to_string(), "'quoted".to_string()];
        let mut e = Encoder::new(Format::Csv, &classes, "cls");
        assert_eq!(e.header().unwrap(), b"image,labels,'=SUM(A1),ok,''quoted,error");
        for (name, cell) in [
            ("=HYPERLINK(\"http://x\").jpg", "\"'=HYPERLINK(\"\"http://x\"\").jpg\""),
            ("+1.jpg", "'+1.jpg"),
            ("-1.jpg", "'-1.jpg"),
            ("@x.jpg", "'@x.jpg"),
            ("\tx.jpg", "'\tx.jpg"),
            ("\rx.jpg", "\"'\rx.jpg\""),
            ("'x.jpg", "''x.jpg"),
            ("a=b.jpg", "a=b.jpg"),
        ] {
            let it = item(name);
            let row = text(&mut e, &Tagged { item: &it, result: Ok((&[0.9, 0.1, 0.8], &[0, 2])) });
            assert_eq!(row, format!("{cell},'=SUM(A1);'quoted,0.9,0.1,0.8,"), "{name:?}");
            let rec = csv::ReaderBuilder::new().has_headers(false).from_reader(row.as_bytes()).records().next();
            let rec = rec.unwrap().unwrap();
            assert_eq!(unprotect(&rec[0]), name);
            assert_eq!(e.text_of_cell(&rec[0]), name);
        }
        // A failure's reason is a text cell too; --csv-raw writes every cell as it is.
        let it = item("-x.jpg");
        assert_eq!(text(&mut e, &Tagged { item: &it, result: Err("-oops") }), "'-x.jpg,,,,,'-oops");
        let mut raw = Encoder::new(Format::Csv, &classes, "cls").with_csv_raw(true);
        assert_eq!(raw.header().unwrap(), b"image,labels,=SUM(A1),ok,'quoted,error");
        assert_eq!(
            text(&mut raw, &Tagged { item: &it, result: Ok((&[0.9, 0.1, 0.8], &[0])) }),
            "-x.jpg,=SUM(A1),0.9,0.1,0.8,"
        );
        assert_eq!(raw.text_of_cell("'x"), "'x");
    }

    #[test]
    fn exiftool_rows_name_the_file() {
        let classes = ["cat".to_string(), "dog".to_string()];
        let mut e = Encoder::new(Format::Exiftool, &classes, "animals");
        let it = item("p.jpg");
        let row = text(&mut e, &Tagged { item: &it, result: Ok((&[0.9, 0.8], &[0, 1])) });
        let v: serde_json::Value = serde_json::from_str(&row).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"SourceFile": "dir/p.jpg", "XMP-dc:Subject": ["cat", "dog"], "XMP-lr:HierarchicalSubject": ["animals|cat", "animals|dog"]})
        );
        assert!(e.row(&Tagged { item: &it, result: Ok((&[0.1, 0.2], &[])) }).is_none());
        assert!(e.row(&Tagged { item: &it, result: Err("x") }).is_none());
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release -p cls-infer speed -- --ignored --nocapture`: the cost of the output
    /// rows of a Corel5k-sized run (499 images x 374 classes), per format.
    #[test]
    #[ignore]
    fn row_speed() {
        let classes: Vec<String> = (0..374).map(|c| format!("class_{c}")).collect();
        let scores: Vec<f32> = (0..374).map(|c| ((c * 7919) % 1000) as f32 / 1000.0).collect();
        let chosen: Vec<usize> = (0..374).filter(|&c| scores[c] >= 0.5).collect();
        let items: Vec<Item> = (0..499)
            .map(|i| Item { name: format!("test/{i}.jpeg"), path: format!("corel/test/{i}.jpeg").into(), failed: None })
            .collect();
        for format in [Format::Jsonl, Format::Csv, Format::Exiftool] {
            let mut e = Encoder::new(format, &classes, "cls");
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                let mut bytes = 0;
                for it in &items {
                    bytes += e.row(&Tagged { item: it, result: Ok((&scores, &chosen)) }).map_or(0, <[u8]>::len);
                }
                best = best.min(t.elapsed().as_secs_f64());
                assert!(bytes > 0);
            }
            eprintln!("{}: 499 rows x 374 scores: {:.1} ms (best of 5)", format.name(), best * 1e3);
        }
    }
}
