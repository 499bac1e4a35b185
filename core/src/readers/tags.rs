//! Tag tables, the layout of Kaggle's multi-label competitions (Planet's `image_name,tags`
//! with `haze primary water`, iMet's `id,attribute_ids`, …): a header row, then one row per
//! image with an image column and a tags cell listing its positive classes. Parsed by the `csv`
//! crate (RFC 4180 quoting, so a cell may hold the separator or a quote); other columns are
//! ignored.

use super::stream::CsvStream;
use super::{
    file_stem_str, label_space, missing_images, parent_name, read_class_list, short_name, DataError, Format, Loaded,
    Loc, ReadOptions, SameFile, Unlisted, MISSING_SHOWN,
};
use crate::dataset::{Dataset, Sample};
use crate::labels::POS;
use ndarray::Array2;
use rayon::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Header names of the image column, in order of preference (ASCII case ignored).
pub const IMAGE_COLUMNS: [&str; 10] =
    ["image", "image_name", "image_id", "imageid", "filename", "file_name", "file", "path", "img", "id"];

/// Header names of the tags column, in order of preference (ASCII case ignored).
pub const TAG_COLUMNS: [&str; 9] =
    ["tags", "tag", "labels", "label", "attribute_ids", "categories", "classes", "targets", "target"];

/// Extensions tried, in order, for an image cell without an image extension (Planet's
/// `train_0` → `train_0.jpg`).
pub const IMAGE_EXTENSIONS: [&str; 11] =
    ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "JPG", "JPEG", "PNG"];

/// The image and tags columns of a header, if it has both.
pub(crate) fn columns(header: &[String]) -> Option<(usize, usize)> {
    let find = |names: &[&str]| names.iter().find_map(|name| header.iter().position(|h| h.eq_ignore_ascii_case(name)));
    Some((find(&IMAGE_COLUMNS)?, find(&TAG_COLUMNS)?))
}

/// Read a tag table (`*.csv`).
///
/// * Columns: the first of [`IMAGE_COLUMNS`] and the first of [`TAG_COLUMNS`] the header names;
///   rows need the header's width. An empty image cell and a repeated image are errors at
///   their line.
/// * Tags: split on `opts.tag_sep`, by default a comma or a semicolon if any tags cell holds
///   one (both: an error asking for `--tag-sep`), else whitespace; pieces are trimmed, empty
///   ones dropped. An empty tags cell is an image without positives.
/// * Classes: `opts.classes` (one name per line), else a `classes.txt` next to the table, else
///   the sorted union of the tags. With a list, a tag outside it is an error at
///   `file:line:column`, or with `opts.skip_other_classes` skipped and counted in the notes.
/// * Targets: tags are positives; every other class is `opts.unlisted`, default
///   [`Unlisted::Negative`] (these tables list every positive).
/// * Images: the cell is a path relative to `opts.images`, else to the table's folder. A cell
///   without an image extension (Planet's `train_0`) is looked up as is, then with each of
///   [`IMAGE_EXTENSIONS`]; the path is the first that exists (the cell as written if none).
///   With `opts.check_images`, missing files are one error naming the count and the first
///   few, or with `opts.drop_missing` are left out and counted. `Sample.id` is the cell.
///
/// The name is `<folder>-<stem>`, e.g. `planet-train_v2`.
pub fn read_tag_table(path: &Path, opts: &ReadOptions) -> Result<Loaded, DataError> {
    let mut stream = CsvStream::open(path)?;
    if !stream.next()? {
        return Err(DataError::Empty { at: Loc::file(path), what: "header row" });
    }
    let header = stream.fields();
    let (c_image, c_tags) = columns(&header).ok_or_else(|| {
        DataError::malformed(
            stream.at(),
            format!(
                "a tag table needs an image column ({}) and a tags column ({}) in its header",
                IMAGE_COLUMNS.join(", "),
                TAG_COLUMNS.join(", ")
            ),
        )
    })?;
    let width = header.len();
    let mut rows: Vec<(usize, String, String)> = Vec::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    while stream.next()? {
        if stream.len() != width {
            return Err(DataError::ColumnCount { at: stream.at(), expected: width, found: stream.len() });
        }
        let image = stream.get(c_image);
        if image.is_empty() {
            return Err(DataError::bad_value(stream.cell(c_image), format!("empty image cell ({})", header[c_image])));
        }
        if let Some(first) = first_line.insert(image.to_string(), stream.line()) {
            return Err(DataError::DuplicateImage {
                at: stream.at(),
                id: image.to_string(),
                first: format!("at line {first}"),
            });
        }
        rows.push((stream.line(), image.to_string(), stream.get(c_tags).to_string()));
    }
    drop(first_line);
    if rows.is_empty() {
        return Err(DataError::Empty { at: Loc::file(path), what: "images" });
    }

    let mut notes = Vec::new();
    let sep = match opts.tag_sep {
        Some(sep) => sep,
        None => {
            let holds = |c: char| rows.iter().any(|(_, _, tags)| tags.contains(c));
            match (holds(','), holds(';')) {
                (true, true) => {
                    return Err(DataError::Usage(format!(
                        "{}: the tags cells hold both ',' and ';': say which separates tags (--tag-sep)",
                        path.display()
                    )))
                }
                (true, false) => ',',
                (false, true) => ';',
                (false, false) => ' ',
            }
        }
    };
    if opts.tag_sep.is_none() && sep != ' ' {
        notes.push(format!("{}: tags separated by '{sep}'", path.display()));
    }
    let split = |tags: &str| -> Vec<String> {
        if sep.is_whitespace() {
            tags.split_whitespace().map(str::to_string).collect()
        } else {
            tags.split(sep).map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect()
        }
    };

    let default_list = path.parent().unwrap_or(Path::new("")).join("classes.txt");
    let space = match &opts.classes {
        Some(list) => read_class_list(list)?,
        None if default_list.is_file() => read_class_list(&default_list)?,
        None => {
            let names: BTreeSet<String> = rows.iter().flat_map(|(_, _, tags)| split(tags)).collect();
            if names.is_empty() {
                return Err(DataError::Empty { at: Loc::file(path), what: "tags (and no class list given)" });
            }
            label_space(names.into_iter().collect(), Loc::file(path))?
        }
    };

    let unlisted = opts.unlisted.unwrap_or(Unlisted::Negative);
    let mut targets = Array2::from_elem((rows.len(), space.len()), unlisted.state());
    let mut skipped: HashMap<String, usize> = HashMap::new();
    for (row, (line, _, tags)) in rows.iter().enumerate() {
        for tag in split(tags) {
            match space.index_of(&tag) {
                Some(col) => targets[[row, col]] = POS,
                None if opts.skip_other_classes => *skipped.entry(tag).or_default() += 1,
                None => return Err(DataError::UnknownClass { at: Loc::cell(path, *line, c_tags + 1), class: tag }),
            }
        }
    }
    if !skipped.is_empty() {
        notes.push(format!(
            "{}: skipped {} tags of {} classes not in the class list",
            path.display(),
            skipped.values().sum::<usize>(),
            skipped.len()
        ));
    }

    let base = opts.images.clone().unwrap_or_else(|| path.parent().unwrap_or(Path::new("")).to_path_buf());
    let found: Vec<(PathBuf, bool)> = rows.par_iter().map(|(_, image, _)| resolve(&base, image)).collect();
    let mut keep = vec![true; rows.len()];
    if opts.check_images {
        let missing: Vec<usize> = (0..rows.len()).filter(|&r| !found[r].1).collect();
        let shown: Vec<(&str, usize)> =
            missing.iter().take(MISSING_SHOWN).map(|&r| (rows[r].1.as_str(), rows[r].0)).collect();
        let place = format!("under {}", base.display());
        if let Some(note) = missing_images(path, rows.len(), missing.len(), &shown, &place, opts.drop_missing)? {
            notes.push(note);
            for r in missing {
                keep[r] = false;
            }
        }
    }
    let kept: Vec<usize> = (0..rows.len()).filter(|&r| keep[r]).collect();
    if kept.is_empty() {
        return Err(DataError::Empty { at: Loc::file(path), what: "images with a file" });
    }
    if kept.len() < rows.len() {
        targets = targets.select(ndarray::Axis(0), &kept);
    }
    // One file under two spellings (`a.jpg`, `./a.jpg`, a symlinked folder) is one image.
    let mut seen = SameFile::default();
    for &r in &kept {
        if let Some(first) = seen.insert(&found[r].0, r) {
            return Err(DataError::DuplicateImage {
                at: Loc::line(path, rows[r].0),
                id: rows[r].1.clone(),
                first: format!("at line {} as '{}', the same file", rows[first].0, rows[first].1),
            });
        }
    }
    let mut found: Vec<Option<PathBuf>> = found.into_iter().map(|(p, _)| Some(p)).collect();
    let samples =
        kept.iter().map(|&r| Sample { id: rows[r].1.clone(), path: found[r].take().unwrap_or_default() }).collect();
    Ok(Loaded {
        dataset: Dataset {
            name: short_name(&[&parent_name(path), file_stem_str(path)]),
            classes: space,
            samples,
            targets,
            features: None,
        },
        format: Format::TagTable,
        class_ids: None,
        notes,
    })
}

/// The file an image cell names under `base`, and whether it exists (see [`read_tag_table`]).
fn resolve(base: &Path, image: &str) -> (PathBuf, bool) {
    let direct = base.join(image);
    let has_image_ext = Path::new(image)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)));
    let exists = direct.is_file();
    if has_image_ext || exists {
        return (direct, exists);
    }
    for ext in IMAGE_EXTENSIONS {
        let candidate = base.join(format!("{image}.{ext}"));
        if candidate.is_file() {
            return (candidate, true);
        }
    }
    (direct, false)
}
