//! NUS-WIDE in its official layout:
//! `Concepts81.txt` (one concept per line), `ImageList/{Train,Test}Imagelist.txt` (Windows
//! paths such as `actor\0001_2124494179.jpg`, sometimes with a `C:\ImageData\Flickr\` prefix)
//! and `Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt` (one 0/1 per line,
//! aligned with the image list).

use super::{label_space, read_lines, short_name, DataError, Loc};
use crate::dataset::{Dataset, Sample};
use crate::labels::{NEG, POS};
use ndarray::Array2;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub(crate) const CONCEPTS_FILE: &str = "Concepts81.txt";

/// Read the `split` (`train` or `test`) of a NUS-WIDE folder.
///
/// `Sample.id` is the list entry with `/` separators and any prefix up to `Flickr\` removed
/// (e.g. `actor/0001_2124494179.jpg`). The image path is the first of `root/Flickr/<id>`,
/// `root/images/<file name>`, `root/<id>` that exists; without `check_images`, the first
/// candidate. Labels are 1 → positive, 0 → negative. The name is `nuswide-<split>`.
pub fn read_nuswide(root: &Path, split: &str, check_images: bool) -> Result<Dataset, DataError> {
    let part = match split.to_ascii_lowercase().as_str() {
        "train" => "Train",
        "test" => "Test",
        _ => return Err(DataError::Usage(format!("NUS-WIDE split must be 'train' or 'test', not '{split}'"))),
    };
    let concepts_file = root.join(CONCEPTS_FILE);
    let concepts: Vec<String> = read_lines(&concepts_file)?.into_iter().map(|(_, c)| c).collect();
    if concepts.is_empty() {
        return Err(DataError::Empty { at: Loc::file(&concepts_file), what: "concepts" });
    }
    let classes = label_space(concepts, Loc::file(&concepts_file))?;

    let list = root.join("ImageList").join(format!("{part}Imagelist.txt"));
    let mut samples = Vec::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (line, text) in read_lines(&list)? {
        let id = normalise(&text);
        if let Some(first) = first_line.insert(id.clone(), line) {
            return Err(DataError::DuplicateImage {
                at: Loc::line(&list, line),
                id,
                first: format!("at line {first}"),
            });
        }
        let path = resolve(root, &id, check_images)
            .map_err(|tried| DataError::MissingImage { at: Loc::line(&list, line), image: tried })?;
        samples.push(Sample { id, path });
    }
    if samples.is_empty() {
        return Err(DataError::Empty { at: Loc::file(&list), what: "images" });
    }

    let labels_dir = root.join("Groundtruth").join("TrainTestLabels");
    let mut targets = Array2::from_elem((samples.len(), classes.len()), NEG);
    for (col, concept) in classes.names().iter().enumerate() {
        let file = labels_dir.join(format!("Labels_{concept}_{part}.txt"));
        let lines = read_lines(&file)?;
        if lines.len() != samples.len() {
            return Err(DataError::malformed(
                Loc::file(&file),
                format!("{} labels, but {} lists {} images", lines.len(), list.display(), samples.len()),
            ));
        }
        for (row, (line, text)) in lines.iter().enumerate() {
            targets[[row, col]] = match text.as_str() {
                "1" => POS,
                "0" => NEG,
                other => {
                    return Err(DataError::bad_value(Loc::line(&file, *line), format!("label '{other}' is not 0 or 1")))
                }
            };
        }
    }
    Ok(Dataset { name: short_name(&["nuswide", split]), classes, samples, targets, features: None })
}

/// `C:\ImageData\Flickr\actor\0001.jpg` or `actor\0001.jpg` → `actor/0001.jpg`.
fn normalise(entry: &str) -> String {
    let slashed = entry.replace('\\', "/");
    match slashed.rfind("Flickr/") {
        Some(at) => slashed[at + "Flickr/".len()..].to_string(),
        None => slashed.trim_start_matches('/').to_string(),
    }
}

/// The image file for `id`: the first existing candidate, or (unchecked) the first candidate.
/// On failure, a description of the candidates tried.
fn resolve(root: &Path, id: &str, check_images: bool) -> Result<PathBuf, String> {
    let base = id.rsplit('/').next().unwrap_or(id);
    let candidates = [root.join("Flickr").join(id), root.join("images").join(base), root.join(id)];
    if !check_images {
        return Ok(candidates[0].clone());
    }
    match candidates.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(format!(
            "{} (nor {}, nor {})",
            candidates[0].display(),
            candidates[1].display(),
            candidates[2].display()
        )),
    }
}
