//! PASCAL VOC devkit: `ImageSets/Main/<split>.txt` lists the images, and one
//! `ImageSets/Main/<class>_<split>.txt` per class gives `<id> <1|-1|0>` for each of them.

use super::{file_name_str, label_space, read_lines, short_name, DataError, Loc};
use crate::dataset::{Dataset, Sample};
use crate::labels::{NEG, POS, UNK};
use ndarray::Array2;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The 20 VOC classes in the standard order.
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// The year folder holding `ImageSets/Main`: `root` itself, or its only `VOC*` child that has
/// one (so both `VOCdevkit/VOC2007` and `VOCdevkit` work).
pub(crate) fn find_root(root: &Path) -> Option<PathBuf> {
    let has_sets = |p: &Path| p.join("ImageSets").join("Main").is_dir();
    if has_sets(root) {
        return Some(root.to_path_buf());
    }
    let children: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| file_name_str(p).starts_with("VOC") && has_sets(p))
        .collect();
    match children.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    }
}

/// Read the `split` of a VOC devkit (`train`, `val`, `trainval`, `test`).
///
/// Per class, `1` is positive, `-1` negative and `0` ("difficult") unknown (`UNK`), so that
/// evaluation leaves it out. Every listed image must appear exactly once in every class file.
/// `Sample.id` is the image id, the path `JPEGImages/<id>.jpg`. The name is
/// `<year folder>-<split>`, e.g. `voc2007-trainval`.
pub fn read_voc(root: &Path, split: &str, check_images: bool) -> Result<Dataset, DataError> {
    let year = find_root(root).ok_or_else(|| {
        DataError::Usage(format!(
            "{}: not a VOC devkit: expected ImageSets/Main in it, or exactly one VOC* subfolder with one",
            root.display()
        ))
    })?;
    if split.is_empty() || split.contains(['/', '\\']) {
        return Err(DataError::Usage(format!("'{split}' is not a VOC split name (train, val, trainval, test)")));
    }
    let sets = year.join("ImageSets").join("Main");
    let list = sets.join(format!("{split}.txt"));

    let mut samples = Vec::new();
    let mut row_of: HashMap<String, (usize, usize)> = HashMap::new();
    for (line, text) in read_lines(&list)? {
        let id = text.split_whitespace().next().unwrap_or_default().to_string();
        if let Some((_, first)) = row_of.insert(id.clone(), (samples.len(), line)) {
            return Err(DataError::DuplicateImage {
                at: Loc::line(&list, line),
                id,
                first: format!("at line {first}"),
            });
        }
        let path = year.join("JPEGImages").join(format!("{id}.jpg"));
        if check_images && !path.is_file() {
            return Err(DataError::MissingImage { at: Loc::line(&list, line), image: path.display().to_string() });
        }
        samples.push(Sample { id, path });
    }
    if samples.is_empty() {
        return Err(DataError::Empty { at: Loc::file(&list), what: "image ids" });
    }

    let mut targets = Array2::from_elem((samples.len(), VOC_CLASSES.len()), NEG);
    for (col, class) in VOC_CLASSES.iter().enumerate() {
        let file = sets.join(format!("{class}_{split}.txt"));
        let mut seen: Vec<Option<usize>> = vec![None; samples.len()];
        for (line, text) in read_lines(&file)? {
            let fields: Vec<&str> = text.split_whitespace().collect();
            if fields.len() != 2 {
                return Err(DataError::ColumnCount { at: Loc::line(&file, line), expected: 2, found: fields.len() });
            }
            let (row, _) = *row_of.get(fields[0]).ok_or_else(|| {
                DataError::malformed(
                    Loc::line(&file, line),
                    format!("image '{}' is not in {}", fields[0], list.display()),
                )
            })?;
            if let Some(first) = seen[row].replace(line) {
                return Err(DataError::DuplicateImage {
                    at: Loc::line(&file, line),
                    id: fields[0].to_string(),
                    first: format!("at line {first}"),
                });
            }
            targets[[row, col]] = match fields[1] {
                "1" => POS,
                "-1" => NEG,
                "0" => UNK,
                other => {
                    return Err(DataError::bad_value(
                        Loc::cell(&file, line, 2),
                        format!("label '{other}' is not 1, -1 or 0 (difficult)"),
                    ))
                }
            };
        }
        if let Some(row) = seen.iter().position(Option::is_none) {
            let missing = seen.iter().filter(|s| s.is_none()).count();
            return Err(DataError::malformed(
                Loc::file(&file),
                format!("{missing} image(s) of {} have no label here, e.g. '{}'", list.display(), samples[row].id),
            ));
        }
    }

    let classes = label_space(VOC_CLASSES.iter().map(|c| c.to_string()).collect(), Loc::file(&sets))?;
    Ok(Dataset { name: short_name(&[file_name_str(&year), split]), classes, samples, targets, features: None })
}
