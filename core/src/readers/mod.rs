//! Dataset readers: every supported on-disk format → [`Dataset`] with complete ground truth
//! (positives `POS`, everything else `NEG`; `UNK` only where a format says "unknown", as VOC's
//! "difficult"), plus the external observed-label files of method.md, "Partial-label protocols".
//!
//! | format | reader | [`open`] picks it for |
//! |---|---|---|
//! | JSONL manifest | [`read_jsonl`] | `*.jsonl` |
//! | COCO instances JSON (2014, 2017) | [`read_coco`] | `*.json` (needs `images`) |
//! | PASCAL VOC devkit | [`read_voc`] | a folder with `ImageSets/Main` |
//! | NUS-WIDE (official layout) | [`read_nuswide`] | a folder with `Concepts81.txt` |
//! | CSV feature table | [`read_csv`] | `*.csv` (needs `label_columns`) |
//!
//! Errors are values ([`DataError`]) naming the file and line; no reader panics on bad input.

mod coco;
mod csv;
mod error;
mod jsonl;
mod nuswide;
mod observed;
mod voc;

pub use coco::read_coco;
pub use csv::{read_csv, LabelColumns};
pub use error::{DataError, Loc};
pub use jsonl::read_jsonl;
pub use nuswide::read_nuswide;
pub use observed::{read_observed_npy, read_observed_txt};
pub use voc::{read_voc, VOC_CLASSES};

use crate::dataset::Dataset;
use crate::labels::LabelSpace;
use std::io;
use std::path::{Path, PathBuf};

/// Options for [`open`] (the trainer's `--data` and its companion flags).
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// COCO: the folder holding the images named by `file_name`.
    pub images: Option<PathBuf>,
    /// VOC: an `ImageSets/Main/<split>.txt` list (`train`, `val`, `trainval`, `test`);
    /// NUS-WIDE: `train` or `test`.
    pub split: String,
    /// CSV: which columns are labels.
    pub label_columns: Option<LabelColumns>,
    /// JSONL: an explicit class list (one name per line).
    pub classes: Option<PathBuf>,
    /// COCO: keep images without annotations (all-negative rows).
    pub keep_empty: bool,
    /// Fail on image files that do not exist.
    pub check_images: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            images: None,
            split: "train".to_string(),
            label_columns: None,
            classes: None,
            keep_empty: false,
            check_images: true,
        }
    }
}

const SUPPORTED: &str = "supported: a JSONL manifest (*.jsonl), COCO instances JSON (*.json with --images), \
a CSV feature table (*.csv with --label-columns), a PASCAL VOC devkit folder (ImageSets/Main), \
a NUS-WIDE folder (Concepts81.txt)";

/// Read `path` in whichever supported format it is (see the table in the module docs).
pub fn open(path: &Path, opts: &ReadOptions) -> Result<Dataset, DataError> {
    if !path.exists() {
        return Err(DataError::io(path, io::Error::new(io::ErrorKind::NotFound, "no such file or directory")));
    }
    if path.is_dir() {
        if path.join(nuswide::CONCEPTS_FILE).is_file() {
            return read_nuswide(path, &opts.split, opts.check_images);
        }
        if voc::find_root(path).is_some() {
            return read_voc(path, &opts.split, opts.check_images);
        }
        return Err(DataError::Usage(format!(
            "{}: folder is neither a VOC devkit (no ImageSets/Main, nor one VOC* subfolder with it) \
             nor NUS-WIDE (no Concepts81.txt); {SUPPORTED}",
            path.display()
        )));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" => read_jsonl(path, opts.classes.as_deref(), opts.check_images),
        "json" => {
            let images = opts.images.as_deref().ok_or_else(|| {
                DataError::Usage(format!(
                    "{}: a COCO annotation file needs the image folder (--images <dir>)",
                    path.display()
                ))
            })?;
            read_coco(path, images, opts.keep_empty, opts.check_images)
        }
        "csv" => {
            let labels = opts.label_columns.clone().ok_or_else(|| {
                DataError::Usage(format!(
                    "{}: a CSV table needs to know its label columns (--label-columns <N> for the \
                     last N columns, or a comma-separated list of column names)",
                    path.display()
                ))
            })?;
            read_csv(path, labels)
        }
        _ => Err(DataError::Usage(format!("{}: unknown dataset format; {SUPPORTED}", path.display()))),
    }
}

/// The non-blank lines of a text file as `(1-based line number, trimmed text)`.
///
/// Accepts `\n` and `\r\n` endings and a UTF-8 byte-order mark; invalid UTF-8 is an error at
/// its line.
pub(crate) fn read_lines(path: &Path) -> Result<Vec<(usize, String)>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut lines = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let text =
            std::str::from_utf8(raw).map_err(|_| DataError::malformed(Loc::line(path, i + 1), "not valid UTF-8"))?;
        let text = text.trim();
        if !text.is_empty() {
            lines.push((i + 1, text.to_string()));
        }
    }
    Ok(lines)
}

/// A class list file: one name per non-blank line, in order. Empty files and repeated names are
/// errors.
pub(crate) fn read_class_list(path: &Path) -> Result<LabelSpace, DataError> {
    let lines = read_lines(path)?;
    if lines.is_empty() {
        return Err(DataError::Empty { at: Loc::file(path), what: "class names" });
    }
    let mut seen = std::collections::HashMap::new();
    for (line, name) in &lines {
        if let Some(first) = seen.insert(name.as_str(), *line) {
            return Err(DataError::malformed(
                Loc::line(path, *line),
                format!("class '{name}' is listed twice (first at line {first})"),
            ));
        }
    }
    label_space(lines.into_iter().map(|(_, n)| n).collect(), Loc::file(path))
}

/// [`LabelSpace::new`] with its error located at `at`.
pub(crate) fn label_space(names: Vec<String>, at: Loc) -> Result<LabelSpace, DataError> {
    LabelSpace::new(names).map_err(|msg| DataError::malformed(at, msg))
}

/// A short dataset name for cache keys and metadata: the parts joined by `-`, lower-cased,
/// with anything but letters, digits, `.` and `_` replaced by `_` (e.g. `corel5k-train`).
pub(crate) fn short_name(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c.to_ascii_lowercase() } else { '_' })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The last component of a path as text ("" when there is none).
pub(crate) fn file_name_str(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// The file stem of a path as text ("" when there is none).
pub(crate) fn file_stem_str(path: &Path) -> &str {
    path.file_stem().and_then(|n| n.to_str()).unwrap_or("")
}

/// The name of the folder holding `path` ("" when there is none), e.g. `corel5k` for
/// `data/corel5k/train.jsonl`.
pub(crate) fn parent_name(path: &Path) -> String {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::env::current_dir().unwrap_or_default(),
    };
    let parent = parent.canonicalize().unwrap_or(parent);
    file_name_str(&parent).to_string()
}
