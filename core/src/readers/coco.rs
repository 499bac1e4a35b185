//! COCO instances JSON (2014 and 2017 share the format). Only the fields needed for image-level
//! labels are read: `images[].{id, file_name}`, `annotations[].{image_id, category_id}` and
//! `categories[].{id, name}`. Every other field (segmentation polygons, boxes, licences…) is
//! skipped by serde's derive, which reads unknown fields as `serde::de::IgnoredAny`: nothing of
//! them is kept, so a 450 MB file is parsed from a buffered reader in bounded memory.

use super::{file_stem_str, label_space, short_name, DataError, Loc};
use crate::dataset::{Dataset, Sample};
use crate::labels::{NEG, POS};
use ndarray::Array2;
use serde::Deserialize;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<Image>,
    /// Absent in the test-set info files (`image_info_test2017.json`).
    #[serde(default)]
    annotations: Vec<Annotation>,
    categories: Vec<Category>,
}

#[derive(Deserialize)]
struct Image {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct Annotation {
    image_id: u64,
    category_id: u64,
}

#[derive(Deserialize)]
struct Category {
    id: u64,
    name: String,
}

/// Read a COCO instances file.
///
/// Categories sorted by id become classes `0..K-1` (COCO's 80 sparse ids 1..90 → 0..79), named
/// by their `name`. An image is positive for every category it has an annotation of and
/// negative for the rest. Images without annotations are left out unless `keep_empty`. Images
/// keep the file's order; `Sample.id` is `file_name`, the path `image_root/file_name`.
/// The name is `coco-<rest>` for `instances_<rest>.json`, else the file stem.
pub fn read_coco(json: &Path, image_root: &Path, keep_empty: bool, check_images: bool) -> Result<Dataset, DataError> {
    let file = File::open(json).map_err(|e| DataError::io(json, e))?;
    let coco: CocoFile = serde_json::from_reader(BufReader::with_capacity(1 << 20, file)).map_err(|e| {
        if e.is_io() {
            DataError::io(json, std::io::Error::other(e))
        } else {
            DataError::json(json, e.line(), &e)
        }
    })?;

    let mut categories: Vec<(usize, &Category)> = coco.categories.iter().enumerate().collect();
    categories.sort_by_key(|(_, c)| c.id);
    let mut class_of_category = HashMap::with_capacity(categories.len());
    for (class, (pos, cat)) in categories.iter().enumerate() {
        if class_of_category.insert(cat.id, class).is_some() {
            return Err(DataError::malformed(
                Loc::entry(json, format!("categories[{pos}]")),
                format!("category id {} is listed twice", cat.id),
            ));
        }
    }
    if categories.is_empty() {
        return Err(DataError::Empty { at: Loc::file(json), what: "categories" });
    }
    let names = categories.iter().map(|(_, c)| c.name.clone()).collect();
    let classes = label_space(names, Loc::entry(json, "categories"))?;

    let mut row_of_image = HashMap::with_capacity(coco.images.len());
    let mut first_with_name: HashMap<&str, usize> = HashMap::with_capacity(coco.images.len());
    for (pos, image) in coco.images.iter().enumerate() {
        let at = || Loc::entry(json, format!("images[{pos}]"));
        if row_of_image.insert(image.id, pos).is_some() {
            return Err(DataError::malformed(at(), format!("image id {} is listed twice", image.id)));
        }
        if let Some(first) = first_with_name.insert(&image.file_name, pos) {
            return Err(DataError::DuplicateImage {
                at: at(),
                id: image.file_name.clone(),
                first: format!("at images[{first}]"),
            });
        }
    }

    let mut labels = Array2::from_elem((coco.images.len(), classes.len()), NEG);
    let mut annotated = vec![false; coco.images.len()];
    for (pos, ann) in coco.annotations.iter().enumerate() {
        let at = || Loc::entry(json, format!("annotations[{pos}]"));
        let row = *row_of_image
            .get(&ann.image_id)
            .ok_or_else(|| DataError::malformed(at(), format!("unknown image_id {}", ann.image_id)))?;
        let col = *class_of_category
            .get(&ann.category_id)
            .ok_or_else(|| DataError::malformed(at(), format!("unknown category_id {}", ann.category_id)))?;
        labels[[row, col]] = POS;
        annotated[row] = true;
    }

    let keep: Vec<usize> = (0..coco.images.len()).filter(|&i| keep_empty || annotated[i]).collect();
    if keep.is_empty() {
        return Err(DataError::Empty { at: Loc::file(json), what: "images (with annotations)" });
    }
    let mut samples = Vec::with_capacity(keep.len());
    for &i in &keep {
        let image = &coco.images[i];
        let path = image_root.join(&image.file_name);
        if check_images && !path.is_file() {
            return Err(DataError::MissingImage {
                at: Loc::entry(json, format!("images[{i}]")),
                image: path.display().to_string(),
            });
        }
        samples.push(Sample { id: image.file_name.clone(), path });
    }

    let stem = file_stem_str(json);
    let name = match stem.strip_prefix("instances_") {
        Some(rest) => short_name(&["coco", rest]),
        None => short_name(&[stem]),
    };
    Ok(Dataset { name, classes, samples, targets: labels.select(ndarray::Axis(0), &keep), features: None })
}
