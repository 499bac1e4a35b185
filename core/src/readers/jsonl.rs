//! JSONL manifests: one `{"image": "<path relative to the manifest's folder>", "labels":
//! ["name", ...], "negatives": ["name", ...]}` object per line (`negatives` optional); blank
//! lines are skipped, other fields are ignored.

use super::{
    file_stem_str, label_space, parent_name, read_class_list, read_lines, short_name, DataError, Loc, SameFile,
    Unlisted,
};
use crate::dataset::{Dataset, Sample};
use crate::labels::{LabelSpace, NEG, POS};
use ndarray::Array2;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::Path;

#[derive(Deserialize)]
struct Entry {
    image: String,
    labels: Vec<String>,
    /// Classes verified absent; `None` when the field is missing (or `null`).
    #[serde(default)]
    negatives: Option<Vec<String>>,
}

/// Read a JSONL manifest: [`read_jsonl_with`] with the format's default for unlisted classes.
pub fn read_jsonl(manifest: &Path, classes: Option<&Path>, check_images: bool) -> Result<Dataset, DataError> {
    read_jsonl_with(manifest, classes, check_images, None)
}

/// Read a JSONL manifest.
///
/// `labels` are positives, `negatives` verified negatives; a class in neither is `unlisted`,
/// whose default (`None`) is [`Unlisted::Unknown`] when any line of the manifest has a
/// `negatives` field (the manifest is partial by its own account) and [`Unlisted::Negative`]
/// otherwise (every positive is listed, as before `negatives` existed). A class in both lists
/// of one line is an error at that line.
///
/// The class list is `classes` if given, else a `classes.txt` next to the manifest, else the
/// sorted union of the names used (positives and negatives). With a class list, a name outside
/// it is an error. Paths are resolved against the manifest's folder; `Sample.id` is the `image`
/// string as written. Duplicate images, an empty manifest and (with `check_images`) missing
/// files are errors, each naming `manifest:line`. The name is `<folder>-<stem>`, e.g. `corel5k-train`.
pub fn read_jsonl_with(
    manifest: &Path,
    classes: Option<&Path>,
    check_images: bool,
    unlisted: Option<Unlisted>,
) -> Result<Dataset, DataError> {
    let base = manifest.parent().unwrap_or(Path::new(""));
    let mut entries = Vec::new();
    let mut seen = SameFile::default();
    for (line, text) in read_lines(manifest)? {
        let entry: Entry = serde_json::from_str(&text).map_err(|e| DataError::json(manifest, line, &e))?;
        if let Some(name) = entry.negatives.iter().flatten().find(|n| entry.labels.contains(n)) {
            return Err(DataError::malformed(
                Loc::line(manifest, line),
                format!("class '{name}' is both in \"labels\" and in \"negatives\""),
            ));
        }
        let path = base.join(&entry.image);
        // One file under two spellings (`a.jpg`, `./a.jpg`, a symlinked folder) is one image.
        if let Some(first) = seen.insert(&path, entries.len()) {
            let (first_line, first_entry): &(usize, Entry) = &entries[first];
            let same = if first_entry.image == entry.image {
                String::new()
            } else {
                format!(" as '{}', the same file", first_entry.image)
            };
            return Err(DataError::DuplicateImage {
                at: Loc::line(manifest, line),
                id: entry.image,
                first: format!("at line {first_line}{same}"),
            });
        }
        if check_images && !path.is_file() {
            return Err(DataError::MissingImage { at: Loc::line(manifest, line), image: path.display().to_string() });
        }
        entries.push((line, entry));
    }
    if entries.is_empty() {
        return Err(DataError::Empty { at: Loc::file(manifest), what: "images" });
    }

    let default_list = base.join("classes.txt");
    let space = match classes {
        Some(list) => read_class_list(list)?,
        None if default_list.is_file() => read_class_list(&default_list)?,
        None => union_of_names(&entries, manifest)?,
    };

    let has_negatives = entries.iter().any(|(_, e)| e.negatives.is_some());
    let unlisted = unlisted.unwrap_or(if has_negatives { Unlisted::Unknown } else { Unlisted::Negative });
    let mut targets = Array2::from_elem((entries.len(), space.len()), unlisted.state());
    let mut samples = Vec::with_capacity(entries.len());
    for (row, (line, entry)) in entries.into_iter().enumerate() {
        for name in &entry.labels {
            let col = space
                .index_of(name)
                .ok_or_else(|| DataError::UnknownClass { at: Loc::line(manifest, line), class: name.clone() })?;
            targets[[row, col]] = POS;
        }
        for name in entry.negatives.iter().flatten() {
            let col = space
                .index_of(name)
                .ok_or_else(|| DataError::UnknownClass { at: Loc::line(manifest, line), class: name.clone() })?;
            targets[[row, col]] = NEG;
        }
        samples.push(Sample { path: base.join(&entry.image), id: entry.image });
    }
    Ok(Dataset {
        name: short_name(&[&parent_name(manifest), file_stem_str(manifest)]),
        classes: space,
        samples,
        targets,
        features: None,
    })
}

/// The sorted union of all label names (positive or negative) in the manifest.
fn union_of_names(entries: &[(usize, Entry)], manifest: &Path) -> Result<LabelSpace, DataError> {
    let names: BTreeSet<&String> =
        entries.iter().flat_map(|(_, e)| e.labels.iter().chain(e.negatives.iter().flatten())).collect();
    if names.is_empty() {
        return Err(DataError::Empty { at: Loc::file(manifest), what: "labels (and no class list given)" });
    }
    label_space(names.into_iter().cloned().collect(), Loc::file(manifest))
}
