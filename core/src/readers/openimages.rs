//! Open Images image-level labels (`oidv6-train-annotations-human-imagelabels.csv` and its
//! validation/test siblings, header `ImageID,Source,LabelName,Confidence`): a partially
//! labelled dataset by construction. Each row is a human verification of one class for one
//! image: Confidence 1 a positive, 0 a verified negative; a class not verified for an image is
//! unknown. The file (hundreds of MB, tens of millions of rows) is streamed record by record:
//! memory holds the images and the targets, never the file.
//!
//! Classes come from the class descriptions CSV (`LabelName,DisplayName`, the v6 header
//! optional as in older releases) or from a trainable-classes list (one MID per line).

use super::stream::CsvStream;
use super::{file_stem_str, label_space, missing_images, short_name, DataError, Format, Loaded, Loc, ReadOptions};
use super::{Unlisted, MISSING_SHOWN};
use crate::dataset::{Dataset, Sample};
use crate::labels::{NEG, POS, UNK};
use ndarray::Array2;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Class description files looked for next to a trainable-classes list (then next to the labels
/// CSV) to name its MIDs.
pub const DESCRIPTION_FILES: [&str; 2] = ["oidv6-class-descriptions.csv", "class-descriptions.csv"];

/// Cell states while reading: no row yet, and rows that disagree.
const UNSET: i8 = 2;
const CONFLICT: i8 = 3;

/// Whether a CSV header is Open Images' (names `ImageID`, `LabelName` and `Confidence`).
pub(crate) fn is_header(fields: &[String]) -> bool {
    ["ImageID", "LabelName", "Confidence"].iter().all(|name| column(fields, name).is_some())
}

fn column(fields: &[String], name: &str) -> Option<usize> {
    fields.iter().position(|f| f.eq_ignore_ascii_case(name))
}

/// The classes of an Open Images dataset, in class order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenImagesClasses {
    /// The MIDs (`LabelName`, e.g. `/m/01g317`).
    pub mids: Vec<String>,
    /// The class names: the DisplayName; `DisplayName (MID)` for every class whose DisplayName
    /// more than one MID of the descriptions file has (e.g. two "Seal"s); the MID itself when
    /// there is no description (a trainable-classes list with no descriptions file found, or
    /// an empty DisplayName).
    pub names: Vec<String>,
    /// The list is a trainable-classes list (MIDs only): a subset, so rows of other classes
    /// are skipped rather than errors.
    pub subset: bool,
    /// The descriptions file the names come from (the class file itself for a descriptions CSV).
    pub descriptions: Option<PathBuf>,
}

/// Read an Open Images class file.
///
/// A descriptions CSV (two columns `LabelName,DisplayName`; a first row `LabelName,...` is a
/// header and skipped) gives the classes in file order with their names. A trainable-classes
/// list (one column: MIDs; a first row `LabelName` skipped) gives the classes in list order
/// and is a subset; its names come from the first of [`DESCRIPTION_FILES`] found next to the
/// list, else next to `labels` (the labels CSV), else are the MIDs. Repeated MIDs, rows of
/// another width and an empty file are errors naming `file:line`.
pub fn read_open_images_classes(classes: &Path, labels: Option<&Path>) -> Result<OpenImagesClasses, DataError> {
    let rows = read_class_rows(classes)?;
    let subset = rows.iter().all(|r| r.name.is_none());
    let (descriptions, source) = if subset {
        let dirs = [classes.parent(), labels.and_then(Path::parent)];
        let found = dirs
            .iter()
            .flatten()
            .flat_map(|dir| DESCRIPTION_FILES.iter().map(move |f| dir.join(f)))
            .find(|p| p.is_file() && !same_file(p, classes));
        match found {
            Some(path) => {
                let rows = read_class_rows(&path)?;
                if let Some(row) = rows.iter().find(|r| r.name.is_none()) {
                    return Err(DataError::ColumnCount { at: Loc::line(&path, row.line), expected: 2, found: 1 });
                }
                (rows, Some(path))
            }
            None => (Vec::new(), None),
        }
    } else {
        (Vec::new(), Some(classes.to_path_buf()))
    };
    let described: &[ClassRow] = if subset { &descriptions } else { &rows };
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for row in described {
        if let Some(name) = row.name.as_deref().filter(|n| !n.is_empty()) {
            *uses.entry(name).or_default() += 1;
        }
    }
    let display: HashMap<&str, &str> =
        described.iter().filter_map(|r| Some((r.mid.as_str(), r.name.as_deref().filter(|n| !n.is_empty())?))).collect();
    let names = rows
        .iter()
        .map(|r| match display.get(r.mid.as_str()) {
            Some(&name) if uses.get(name).copied().unwrap_or(0) > 1 => format!("{name} ({})", r.mid),
            Some(&name) => name.to_string(),
            None => r.mid.clone(),
        })
        .collect();
    Ok(OpenImagesClasses { mids: rows.into_iter().map(|r| r.mid).collect(), names, subset, descriptions: source })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

struct ClassRow {
    line: usize,
    mid: String,
    name: Option<String>,
}

/// The rows of a class file: `MID` or `MID,DisplayName`, all of one width; a header row skipped.
fn read_class_rows(path: &Path) -> Result<Vec<ClassRow>, DataError> {
    let mut stream = CsvStream::open(path)?;
    let mut rows: Vec<ClassRow> = Vec::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    let mut width = None;
    while stream.next()? {
        if width.is_none() && stream.get(0).eq_ignore_ascii_case("LabelName") {
            continue;
        }
        let w = *width.get_or_insert(stream.len());
        if stream.len() != w || w > 2 {
            return Err(DataError::ColumnCount { at: stream.at(), expected: w.min(2), found: stream.len() });
        }
        let mid = stream.get(0);
        if mid.is_empty() {
            return Err(DataError::bad_value(stream.cell(0), "empty LabelName"));
        }
        if let Some(first) = first_line.insert(mid.to_string(), stream.line()) {
            return Err(DataError::malformed(
                stream.at(),
                format!("class '{mid}' is listed twice (first at line {first})"),
            ));
        }
        rows.push(ClassRow { line: stream.line(), mid: mid.to_string(), name: (w == 2).then(|| stream.get(1).into()) });
    }
    if rows.is_empty() {
        return Err(DataError::Empty { at: Loc::file(path), what: "classes" });
    }
    Ok(rows)
}

/// Read Open Images image-level labels (`labels`, the `--data` CSV) with `opts.classes` (the
/// class file, required; see [`read_open_images_classes`]) and `opts.images` (the folder of
/// `<ImageID>.jpg`, required).
///
/// * Rows: Confidence `1` (or `1.0`) is a positive, `0` a verified negative, anything else an
///   error at `file:line:column`; the `Source` column and any other are ignored. Columns are
///   found by header name (ASCII case ignored), rows need the header's width.
/// * Unlisted classes (no row for that image) are `opts.unlisted`, default
///   [`Unlisted::Unknown`]: the file is partial by nature. Rows that disagree (1 and 0 for
///   one image and class) make that entry unknown; counted in the notes.
/// * Classes: only those of the class file are kept, in its order. A `LabelName` outside it is
///   an error at `file:line`, except with a trainable-classes list or
///   `opts.skip_other_classes`: then such rows are skipped and counted in the notes, and an
///   image none of whose rows is of a kept class is left out (kept, all unlisted, with
///   `opts.keep_empty`). The MIDs are `Loaded.class_ids`; the names as documented on
///   [`OpenImagesClasses::names`] (DisplayNames, made unique with the MID).
/// * Images: in order of first appearance (the file groups rows by image; nothing relies on
///   it). `Sample.id` is the ImageID, the path `<images>/<ImageID>.jpg`. With
///   `opts.check_images`, missing files are one error naming the count and the first few
///   ImageIDs with their lines, or with `opts.drop_missing` are left out and counted.
/// * Memory: the file is streamed; what is held is the ImageID index and the targets, built in
///   place (images × classes bytes), so peak memory follows the dataset, not the file.
///
/// The name is `openimages-<split>` (`train`, `validation` or `test`, from the file name), else
/// `openimages-<stem>`.
pub fn read_open_images(labels: &Path, opts: &ReadOptions) -> Result<Loaded, DataError> {
    let classes_file = opts.classes.as_deref().ok_or_else(|| {
        DataError::Usage(format!(
            "{}: Open Images labels need their class list (--classes <class-descriptions.csv, or a \
             trainable-classes list of MIDs>)",
            labels.display()
        ))
    })?;
    let images = opts.images.as_deref().ok_or_else(|| {
        DataError::Usage(format!(
            "{}: Open Images labels need the image folder (--images <dir> holding <ImageID>.jpg)",
            labels.display()
        ))
    })?;
    let classes = read_open_images_classes(classes_file, Some(labels))?;
    let space = label_space(classes.names.clone(), Loc::file(classes_file))?;
    let skip_other = classes.subset || opts.skip_other_classes;
    let unlisted = opts.unlisted.unwrap_or(Unlisted::Unknown);
    let k = classes.mids.len();
    let class_of: HashMap<&str, usize> = classes.mids.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();

    let mut stream = CsvStream::open(labels)?;
    if !stream.next()? {
        return Err(DataError::Empty { at: Loc::file(labels), what: "header row" });
    }
    let header = stream.fields();
    let find = |name: &str| {
        column(&header, name).ok_or_else(|| {
            DataError::malformed(
                stream.at(),
                format!("no column '{name}' in the header (Open Images: ImageID,Source,LabelName,Confidence)"),
            )
        })
    };
    let (c_image, c_label, c_conf) = (find("ImageID")?, find("LabelName")?, find("Confidence")?);
    let width = header.len();

    // Row of each ImageID, first line of each row, and the targets (row-major, grown per image).
    let mut row_of: HashMap<Box<str>, u32> = HashMap::new();
    let mut first_line: Vec<u32> = Vec::new();
    let mut cells: Vec<i8> = Vec::new();
    let (mut skipped_rows, mut conflicts) = (0usize, 0usize);
    let mut skipped_mids: HashSet<Box<str>> = HashSet::new();
    while stream.next()? {
        if stream.len() != width {
            return Err(DataError::ColumnCount { at: stream.at(), expected: width, found: stream.len() });
        }
        let id = stream.get(c_image);
        if id.is_empty() || id == "." || id == ".." || id.contains(['/', '\\']) {
            return Err(DataError::bad_value(stream.cell(c_image), format!("ImageID '{id}' is not a file name")));
        }
        let mid = stream.get(c_label);
        if mid.is_empty() {
            return Err(DataError::bad_value(stream.cell(c_label), "empty LabelName"));
        }
        let conf = stream.get(c_conf);
        let state = confidence(conf).ok_or_else(|| {
            DataError::bad_value(
                stream.cell(c_conf),
                format!("Confidence '{conf}' is neither 1 (positive) nor 0 (verified negative)"),
            )
        })?;
        let class = match class_of.get(mid) {
            Some(&c) => Some(c),
            None if skip_other => {
                skipped_rows += 1;
                if !skipped_mids.contains(mid) {
                    skipped_mids.insert(mid.into());
                }
                None
            }
            None => {
                return Err(DataError::malformed(
                    stream.at(),
                    format!(
                        "unknown class '{mid}': not in {} (--skip-other-classes skips such rows)",
                        classes_file.display()
                    ),
                ))
            }
        };
        if class.is_none() && !opts.keep_empty {
            continue;
        }
        let row = match row_of.get(id) {
            Some(&row) => row as usize,
            None => {
                let row = first_line.len();
                let too_many =
                    || DataError::malformed(stream.at(), format!("cannot hold {} images × {k} classes", row + 1));
                let index = u32::try_from(row).map_err(|_| too_many())?;
                cells.try_reserve(k).map_err(|_| too_many())?;
                cells.resize(cells.len() + k, UNSET);
                row_of.insert(id.into(), index);
                first_line.push(u32::try_from(stream.line()).unwrap_or(u32::MAX));
                row
            }
        };
        if let Some(c) = class {
            let cell = &mut cells[row * k + c];
            *cell = match *cell {
                UNSET => state,
                s if s == state || s == CONFLICT => s,
                _ => {
                    conflicts += 1;
                    CONFLICT
                }
            };
        }
    }
    let n = first_line.len();
    if n == 0 {
        return Err(DataError::Empty { at: Loc::file(labels), what: "label rows of the listed classes" });
    }

    let mut notes = Vec::new();
    if let (true, Some(desc)) = (classes.subset, &classes.descriptions) {
        notes.push(format!("{}: {k} classes, named from {}", classes_file.display(), desc.display()));
    } else if classes.subset {
        notes.push(format!(
            "{}: {k} classes named by their MIDs (no {} next to it or to the labels)",
            classes_file.display(),
            DESCRIPTION_FILES.join(" or ")
        ));
    }
    if skipped_rows > 0 {
        notes.push(format!(
            "{}: skipped {skipped_rows} rows of {} classes not in {}",
            labels.display(),
            skipped_mids.len(),
            classes_file.display()
        ));
    }
    if conflicts > 0 {
        notes.push(format!(
            "{}: {conflicts} (image, class) pairs have rows with Confidence 1 and 0: unknown",
            labels.display()
        ));
    }
    drop(skipped_mids);

    // Image ids back in row order, then the samples.
    let mut ids: Vec<Box<str>> = vec![Box::default(); n];
    for (id, row) in row_of {
        ids[row as usize] = id;
    }
    let mut samples: Vec<Sample> = ids
        .into_iter()
        .map(|id| {
            let path = images.join(format!("{id}.jpg"));
            Sample { id: id.into_string(), path }
        })
        .collect();

    if opts.check_images {
        let missing: Vec<usize> = (0..n).into_par_iter().filter(|&r| !samples[r].path.is_file()).collect();
        let shown: Vec<(&str, usize)> =
            missing.iter().take(MISSING_SHOWN).map(|&r| (samples[r].id.as_str(), first_line[r] as usize)).collect();
        let place = format!("under {} (<ImageID>.jpg)", images.display());
        if let Some(note) = missing_images(labels, n, missing.len(), &shown, &place, opts.drop_missing)? {
            notes.push(note);
            // Compact rows in place, keeping order.
            let mut gone = missing.iter().peekable();
            let mut kept = 0;
            for r in 0..n {
                if gone.peek() == Some(&&r) {
                    gone.next();
                    continue;
                }
                if kept != r {
                    cells.copy_within(r * k..(r + 1) * k, kept * k);
                    samples.swap(kept, r);
                }
                kept += 1;
            }
            cells.truncate(kept * k);
            samples.truncate(kept);
            if kept == 0 {
                return Err(DataError::Empty { at: Loc::file(labels), what: "images with a file" });
            }
        }
    }
    drop(first_line);

    let (mut positives, mut negatives) = (0usize, 0usize);
    for cell in cells.iter_mut() {
        match *cell {
            UNSET => *cell = unlisted.state(),
            CONFLICT => *cell = UNK,
            POS => positives += 1,
            NEG => negatives += 1,
            _ => {}
        }
    }
    notes.push(format!(
        "{}: {} images × {k} classes: {positives} positives, {negatives} verified negatives, the rest {unlisted}",
        labels.display(),
        samples.len()
    ));
    cells.shrink_to_fit();
    let rows = samples.len();
    let targets = Array2::from_shape_vec((rows, k), cells)
        .map_err(|e| DataError::malformed(Loc::file(labels), format!("targets: {e}")))?;

    let stem = file_stem_str(labels).to_ascii_lowercase();
    let split = ["train", "validation", "test"].into_iter().find(|s| stem.contains(s)).unwrap_or(stem.as_str());
    Ok(Loaded {
        dataset: Dataset { name: short_name(&["openimages", split]), classes: space, samples, targets, features: None },
        format: Format::OpenImages,
        class_ids: Some(classes.mids),
        notes,
    })
}

/// A Confidence cell: 1 → positive, 0 → verified negative (`1.0`, `0.0` too).
fn confidence(text: &str) -> Option<i8> {
    match text {
        "1" => Some(POS),
        "0" => Some(NEG),
        _ => match text.parse::<f64>() {
            Ok(1.0) => Some(POS),
            Ok(0.0) => Some(NEG),
            _ => None,
        },
    }
}
