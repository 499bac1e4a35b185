//! Dataset readers: every supported on-disk format → [`Dataset`] with ground truth in three
//! states: positives `POS`, verified negatives `NEG`, and for the entries a file leaves unsaid
//! either `NEG` (complete-label formats) or `UNK` (partial-label formats; see [`Unlisted`]);
//! plus the external observed-label files of method.md, "Partial-label protocols".
//!
//! | format | reader | [`open`] picks it for | unlisted entries |
//! |---|---|---|---|
//! | JSONL manifest (`labels`, optional `negatives`) | [`read_jsonl_with`] | `*.jsonl` | `NEG`; `UNK` once any line has `negatives` |
//! | COCO instances JSON (2014, 2017) | [`read_coco`] | `*.json` (needs `images`) | `NEG` |
//! | PASCAL VOC devkit | [`read_voc`] | a folder with `ImageSets/Main` | `NEG` (difficult: `UNK`) |
//! | NUS-WIDE (official layout) | [`read_nuswide`] | a folder with `Concepts81.txt` | `NEG` |
//! | Open Images image-level labels | [`read_open_images`] | `*.csv` whose header has `ImageID`, `LabelName`, `Confidence` (needs `images`, `classes`) | `UNK` |
//! | tag table (Kaggle multi-label layout) | [`read_tag_table`] | `*.csv` with an image and a tags column, without `label_columns` | `NEG` |
//! | CSV feature table | [`read_csv`] | any other `*.csv` (needs `label_columns`) | (0/1 cells) |
//!
//! "Unlisted entries" is each format's default; [`ReadOptions::unlisted`] overrides it for the
//! three formats that list only some classes per image (JSONL, Open Images, tag table); COCO,
//! VOC, NUS-WIDE and feature tables are complete by construction and ignore it.
//! [`detect`] says which format [`open`] would read; [`open_detailed`] also returns the
//! readers' notes (rows skipped, images dropped) and, for Open Images, each class's MID: Open
//! Images classes are named by DisplayName, `DisplayName (MID)` where the descriptions file
//! gives one DisplayName to several MIDs, the MID where it has none (see
//! [`OpenImagesClasses::names`]). The Open Images reader streams its CSV: its memory follows
//! images × classes, not the file.
//!
//! Errors are values ([`DataError`]) naming the file and line; no reader panics on bad input.

mod coco;
mod csv;
mod error;
mod jsonl;
mod nuswide;
mod observed;
mod openimages;
mod same_file;
mod stream;
mod tags;
mod voc;

pub use coco::read_coco;
pub use csv::{read_csv, LabelColumns};
pub use error::{DataError, Loc};
pub use jsonl::{read_jsonl, read_jsonl_with};
pub use nuswide::read_nuswide;
pub use observed::{npy_shape, read_observed_npy, read_observed_txt};
pub use openimages::{read_open_images, read_open_images_classes, OpenImagesClasses, DESCRIPTION_FILES};
pub use same_file::{canonical_image_path, overlap, Overlap, SameFile};
pub use tags::{read_tag_table, IMAGE_COLUMNS, IMAGE_EXTENSIONS, TAG_COLUMNS};
pub use voc::{read_voc, VOC_CLASSES};

use crate::dataset::Dataset;
use crate::labels::{LabelSpace, NEG, UNK};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// What an (image, class) entry means when the file does not mention it: a partial-label file
/// lists only some classes per image (Open Images, a JSONL manifest with `negatives`), a
/// complete one every positive (then the rest are negatives).
///
/// Parses from and prints as `unknown` / `negative` (a CLI's `--unlisted unknown|negative`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unlisted {
    /// `UNK`: not annotated (a true negative or a missing positive).
    Unknown,
    /// `NEG`: every class not listed as positive is absent.
    Negative,
}

impl Unlisted {
    /// The target value (`LabelState as i8`) of an unlisted entry.
    pub fn state(self) -> i8 {
        match self {
            Unlisted::Unknown => UNK,
            Unlisted::Negative => NEG,
        }
    }
}

impl fmt::Display for Unlisted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unlisted::Unknown => "unknown",
            Unlisted::Negative => "negative",
        })
    }
}

impl FromStr for Unlisted {
    type Err = String;

    /// `unknown` or `negative` (ASCII case ignored).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "unknown" => Ok(Unlisted::Unknown),
            "negative" => Ok(Unlisted::Negative),
            _ => Err(format!("'{s}': expected 'unknown' or 'negative'")),
        }
    }
}

/// Options for [`open`] (the trainer's `--data` and its companion flags).
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// COCO: the folder holding the images named by `file_name`; Open Images: the folder holding
    /// `<ImageID>.jpg`; tag table: the folder the image column is relative to (default: the
    /// table's folder).
    pub images: Option<PathBuf>,
    /// VOC: an `ImageSets/Main/<split>.txt` list (`train`, `val`, `trainval`, `test`);
    /// NUS-WIDE: `train` or `test`.
    pub split: String,
    /// CSV feature table: which columns are labels (given, it also forces a `*.csv` that is not
    /// Open Images to be read as a feature table rather than a tag table).
    pub label_columns: Option<LabelColumns>,
    /// JSONL and tag table: an explicit class list (one name per line). Open Images: the class
    /// descriptions CSV (`LabelName,DisplayName`, with or without that header) or a
    /// trainable-classes list (one MID per line); see [`read_open_images`].
    pub classes: Option<PathBuf>,
    /// COCO: keep images without annotations (all-negative rows). Open Images with a class
    /// subset: keep images none of whose rows is of a kept class (all-unlisted rows).
    pub keep_empty: bool,
    /// Fail on image files that do not exist (Open Images and tag tables: one error listing
    /// the count and the first few, unless `drop_missing`).
    pub check_images: bool,
    /// What entries a file does not mention are (JSONL, Open Images, tag table); `None`: the
    /// format's default (see the module table: `UNK` for Open Images and for JSONL manifests
    /// with a `negatives` field, `NEG` otherwise). Complete formats ignore it.
    pub unlisted: Option<Unlisted>,
    /// Tag table: the separator of the tags cell; `None`: a comma or a semicolon if the cells
    /// hold one (never both), else whitespace. `Some(' ')` splits on any whitespace.
    pub tag_sep: Option<char>,
    /// Open Images and tag table: labels of classes outside the class list are skipped (and
    /// counted in the notes of [`open_detailed`]) instead of an error. Always the case for an
    /// Open Images trainable-classes list.
    pub skip_other_classes: bool,
    /// Open Images and tag table, with `check_images`: images whose file is missing are left out
    /// (counted in the notes) instead of an error.
    pub drop_missing: bool,
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
            unlisted: None,
            tag_sep: None,
            skip_other_classes: false,
            drop_missing: false,
        }
    }
}

/// The on-disk formats [`open`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Jsonl,
    Coco,
    Voc,
    NusWide,
    OpenImages,
    TagTable,
    CsvFeatures,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Jsonl => "JSONL manifest",
            Format::Coco => "COCO instances JSON",
            Format::Voc => "PASCAL VOC devkit",
            Format::NusWide => "NUS-WIDE",
            Format::OpenImages => "Open Images image-level labels",
            Format::TagTable => "tag table",
            Format::CsvFeatures => "CSV feature table",
        })
    }
}

/// A dataset as [`open_detailed`] returns it: what [`open`] returns plus what a caller may
/// want to show or keep.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub dataset: Dataset,
    pub format: Format,
    /// Open Images: each class's MID (`LabelName`, e.g. `/m/01g317`), in class order (the
    /// class names are display names, see [`read_open_images`]). `None` for other formats.
    pub class_ids: Option<Vec<String>>,
    /// What the reader skipped, dropped or resolved, one sentence each (for stderr).
    pub notes: Vec<String>,
}

impl Loaded {
    fn plain(dataset: Dataset, format: Format) -> Self {
        Loaded { dataset, format, class_ids: None, notes: Vec::new() }
    }
}

const SUPPORTED: &str = "supported: a JSONL manifest (*.jsonl), COCO instances JSON (*.json with --images), \
Open Images image-level labels (*.csv with ImageID,LabelName,Confidence, with --images and --classes), \
a tag table (*.csv with an image and a tags column), a CSV feature table (*.csv with --label-columns), \
a PASCAL VOC devkit folder (ImageSets/Main), a NUS-WIDE folder (Concepts81.txt)";

/// Which format [`open`] reads `path` as.
///
/// Folders: NUS-WIDE if it holds `Concepts81.txt`, else VOC if it (or one `VOC*` subfolder)
/// holds `ImageSets/Main`. Files by extension: `*.jsonl` JSONL, `*.json` COCO; `*.csv` by its
/// header row (the first non-blank record): Open Images if it names `ImageID`, `LabelName`
/// and `Confidence`; else a feature table if `label_columns` is given; else a tag table if it
/// names one of [`IMAGE_COLUMNS`] and one of [`TAG_COLUMNS`] (ASCII case ignored); else an
/// error asking for `--label-columns`.
pub fn detect(path: &Path, opts: &ReadOptions) -> Result<Format, DataError> {
    if !path.exists() {
        return Err(DataError::io(path, io::Error::new(io::ErrorKind::NotFound, "no such file or directory")));
    }
    if path.is_dir() {
        if path.join(nuswide::CONCEPTS_FILE).is_file() {
            return Ok(Format::NusWide);
        }
        if voc::find_root(path).is_some() {
            return Ok(Format::Voc);
        }
        return Err(DataError::Usage(format!(
            "{}: folder is neither a VOC devkit (no ImageSets/Main, nor one VOC* subfolder with it) \
             nor NUS-WIDE (no Concepts81.txt); {SUPPORTED}",
            path.display()
        )));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" => Ok(Format::Jsonl),
        "json" => Ok(Format::Coco),
        "csv" => {
            let mut stream = stream::CsvStream::open(path)?;
            if !stream.next()? {
                return Err(DataError::Empty { at: Loc::file(path), what: "header row" });
            }
            let header = stream.fields();
            if openimages::is_header(&header) {
                Ok(Format::OpenImages)
            } else if opts.label_columns.is_some() {
                Ok(Format::CsvFeatures)
            } else if tags::columns(&header).is_some() {
                Ok(Format::TagTable)
            } else {
                Err(DataError::Usage(format!(
                    "{}: a CSV table needs to know its label columns (--label-columns <N> for the \
                     last N columns, or a comma-separated list of column names); its header names \
                     neither ImageID,LabelName,Confidence (Open Images) nor an image column ({}) and \
                     a tags column ({}) (a tag table)",
                    path.display(),
                    IMAGE_COLUMNS.join(", "),
                    TAG_COLUMNS.join(", ")
                )))
            }
        }
        _ => Err(DataError::Usage(format!("{}: unknown dataset format; {SUPPORTED}", path.display()))),
    }
}

/// Read `path` in whichever supported format it is (see [`detect`] and the module table).
pub fn open(path: &Path, opts: &ReadOptions) -> Result<Dataset, DataError> {
    open_detailed(path, opts).map(|loaded| loaded.dataset)
}

/// [`open`], also returning the format, the readers' notes and Open Images' class MIDs.
pub fn open_detailed(path: &Path, opts: &ReadOptions) -> Result<Loaded, DataError> {
    let format = detect(path, opts)?;
    let dataset = match format {
        Format::NusWide => read_nuswide(path, &opts.split, opts.check_images)?,
        Format::Voc => read_voc(path, &opts.split, opts.check_images)?,
        Format::Jsonl => read_jsonl_with(path, opts.classes.as_deref(), opts.check_images, opts.unlisted)?,
        Format::Coco => {
            let images = opts.images.as_deref().ok_or_else(|| {
                DataError::Usage(format!(
                    "{}: a COCO annotation file needs the image folder (--images <dir>)",
                    path.display()
                ))
            })?;
            read_coco(path, images, opts.keep_empty, opts.check_images)?
        }
        Format::OpenImages => return read_open_images(path, opts),
        Format::TagTable => return read_tag_table(path, opts),
        Format::CsvFeatures => {
            let labels = opts.label_columns.clone().ok_or_else(|| {
                DataError::Usage(format!("{}: a CSV feature table needs --label-columns", path.display()))
            })?;
            read_csv(path, labels)?
        }
    };
    if matches!(format, Format::Coco | Format::Voc | Format::NusWide) {
        refuse_same_file(&dataset, path)?;
    }
    Ok(Loaded::plain(dataset, format))
}

/// One image listed twice under two spellings (the JSONL and tag-table readers say which lines;
/// here, for the formats that list images by id, which entries).
fn refuse_same_file(ds: &Dataset, source: &Path) -> Result<(), DataError> {
    let mut seen = SameFile::default();
    for (i, s) in ds.samples.iter().enumerate() {
        if let Some(first) = seen.insert(&s.path, i) {
            return Err(DataError::DuplicateImage {
                at: Loc::entry(source, format!("entry {} ('{}')", i + 1, s.id)),
                id: s.id.clone(),
                first: format!(
                    "as entry {} ('{}'): the same file, {}",
                    first + 1,
                    ds.samples[first].id,
                    s.path.display()
                ),
            });
        }
    }
    Ok(())
}

/// How many missing images an error or a note names.
pub(crate) const MISSING_SHOWN: usize = 5;

/// `count` of `total` images have no file (`shown`: the first few, as `(id, line)`): with
/// `drop_missing` a note (the caller leaves them out), else (or when none has a file) one error
/// at the first one's line with the count and the first few ids. `where_` says where the files
/// were looked for.
pub(crate) fn missing_images(
    file: &Path,
    total: usize,
    count: usize,
    shown: &[(&str, usize)],
    where_: &str,
    drop_missing: bool,
) -> Result<Option<String>, DataError> {
    let Some(&(_, first_line)) = shown.first() else {
        return Ok(None);
    };
    let listed: Vec<String> = shown.iter().map(|(id, line)| format!("{id} (line {line})")).collect();
    let more = if count > shown.len() { ", …" } else { "" };
    let summary = format!("{count} of {total} images have no file {where_}: {}{more}", listed.join(", "));
    if count == total {
        Err(DataError::malformed(Loc::line(file, first_line), format!("{summary} (is the image folder right?)")))
    } else if drop_missing {
        Ok(Some(format!("{}: left out {summary}", file.display())))
    } else {
        Err(DataError::malformed(
            Loc::line(file, first_line),
            format!("{summary} (--drop-missing leaves them out instead)"),
        ))
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
