//! Ground truth for `--ground-truth`: read with `cls_core::readers::open` (a JSONL manifest, a
//! COCO instances JSON whose file names are relative to `--images`, or a VOC devkit folder,
//! split `test`, else `val`, else `trainval`), re-indexed to the model's classes by name, and
//! matched to the tagged images by canonicalised absolute path. Ground truth that cannot be
//! scored against the model (none of its classes, an image listed twice under two spellings) is
//! refused when loaded, before any tagging.

use anyhow::{bail, Context, Result};
use cls_core::labels::NEG;
use cls_core::readers::{self, ReadOptions};
use ndarray::Array2;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Ground-truth rows keyed by resolved path, with columns in the model's class order.
pub struct Truth {
    rows: HashMap<PathBuf, usize>,
    /// The path each row was given as (for reporting entries without an image).
    ids: Vec<String>,
    /// Entries × model classes, `LabelState as i8`.
    pub targets: Array2<i8>,
    /// Notes for stderr about the class mapping.
    pub notes: Vec<String>,
}

/// The resolved absolute form of `path`, or the path itself when it cannot be resolved (a
/// missing file then matches nothing).
pub fn resolve(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}

fn voc_split(root: &Path) -> String {
    let mut roots = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        roots.extend(
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("VOC"))),
        );
    }
    for split in ["test", "val", "trainval"] {
        if roots.iter().any(|r| r.join("ImageSets/Main").join(format!("{split}.txt")).is_file()) {
            return split.to_string();
        }
    }
    "test".to_string()
}

impl Truth {
    /// Read `spec` and map its classes onto `model_classes`. A model class the ground truth does
    /// not name is all negative (these formats list every positive); a ground-truth class the
    /// model lacks is ignored. Both are noted.
    pub fn load(spec: &Path, images_root: &Path, model_classes: &[String]) -> Result<Truth> {
        let split = if spec.is_dir() { voc_split(spec) } else { String::new() };
        let opts = ReadOptions {
            images: Some(images_root.to_path_buf()),
            split,
            keep_empty: true,
            check_images: false,
            ..Default::default()
        };
        let data = readers::open(spec, &opts).with_context(|| format!("--ground-truth {}", spec.display()))?;
        let mut notes = Vec::new();
        let n = data.samples.len();
        let mut targets = Array2::from_elem((n, model_classes.len()), NEG);
        let mut missing = Vec::new();
        for (c, name) in model_classes.iter().enumerate() {
            match data.classes.index_of(name) {
                Some(g) => targets.column_mut(c).assign(&data.targets.column(g)),
                None => missing.push(name.as_str()),
            }
        }
        if missing.len() == model_classes.len() {
            let names: Vec<&str> = data.classes.names().iter().map(|s| s.as_str()).collect();
            bail!(
                "--ground-truth {}: none of the model's classes ({}) is in it (its classes: {}): nothing to score",
                spec.display(),
                preview(&missing),
                preview(&names)
            );
        }
        if !missing.is_empty() {
            notes.push(format!(
                "{} model classes are not in the ground truth (counted as negative everywhere): {}",
                missing.len(),
                preview(&missing)
            ));
        }
        let extra: Vec<&str> =
            data.classes.names().iter().map(|s| s.as_str()).filter(|g| !model_classes.iter().any(|m| m == g)).collect();
        if !extra.is_empty() {
            notes.push(format!(
                "{} ground-truth classes are not in the model (ignored): {}",
                extra.len(),
                preview(&extra)
            ));
        }
        let mut rows = HashMap::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        for (i, s) in data.samples.iter().enumerate() {
            let id = s.path.display().to_string();
            let resolved = resolve(&s.path);
            if let Some(first) = rows.insert(resolved, i) {
                // One label set would silently replace the other.
                bail!(
                    "--ground-truth {}: one image is listed twice, as {} and as {} (entries {} and {})",
                    spec.display(),
                    ids[first],
                    id,
                    first + 1,
                    i + 1
                );
            }
            ids.push(id);
        }
        Ok(Truth { rows, ids, targets, notes })
    }

    /// The row of the image at `path` (resolved), if the ground truth has one.
    pub fn row_of(&self, resolved: &Path) -> Option<usize> {
        self.rows.get(resolved).copied()
    }

    /// How many entries have their resolved path in `present`.
    pub fn entries_in(&self, present: &std::collections::HashSet<PathBuf>) -> usize {
        self.rows.keys().filter(|p| present.contains(*p)).count()
    }

    /// The entries whose resolved path is not in `present`, as given in the ground truth.
    pub fn entries_without_image(&self, present: &std::collections::HashSet<PathBuf>) -> Vec<&str> {
        let mut out: Vec<(usize, &str)> =
            self.rows.iter().filter(|(p, _)| !present.contains(*p)).map(|(_, &i)| (i, self.ids[i].as_str())).collect();
        out.sort();
        out.into_iter().map(|(_, s)| s).collect()
    }
}

/// The first few items of a list, for messages.
pub fn preview(items: &[&str]) -> String {
    const SHOW: usize = 5;
    let mut s = items.iter().take(SHOW).copied().collect::<Vec<_>>().join(", ");
    if items.len() > SHOW {
        s.push_str(&format!(", … ({} more)", items.len() - SHOW));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use cls_core::labels::POS;
    use std::collections::HashSet;
    use std::fs;

    #[test]
    fn maps_classes_by_name_and_matches_paths() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = dir.path().join("imgs");
        fs::create_dir_all(&imgs).unwrap();
        fs::write(imgs.join("a.jpg"), b"").unwrap();
        let manifest = dir.path().join("gt.jsonl");
        fs::write(&manifest, "{\"image\": \"imgs/a.jpg\", \"labels\": [\"dog\", \"sun\"]}\n{\"image\": \"imgs/gone.jpg\", \"labels\": [\"cat\"]}\n").unwrap();
        let model = ["cat".to_string(), "dog".to_string(), "tree".to_string()];
        let t = Truth::load(&manifest, &imgs, &model).unwrap();
        assert_eq!(t.targets.dim(), (2, 3));
        // Reached through a different spelling of the same file.
        let row = t.row_of(&resolve(&imgs.join("../imgs/a.jpg"))).expect("a.jpg matched");
        assert_eq!(t.targets.row(row).to_vec(), vec![NEG, POS, NEG]);
        assert_eq!(t.notes.len(), 2, "{:?}", t.notes); // "tree" missing, "sun" extra
        let present: HashSet<PathBuf> = [resolve(&imgs.join("a.jpg"))].into();
        let without = t.entries_without_image(&present);
        assert_eq!(without.len(), 1);
        assert!(without[0].ends_with("gone.jpg"));
        assert_eq!(t.entries_in(&present), 1);
    }

    #[test]
    fn refuses_what_cannot_be_scored() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = dir.path().join("imgs");
        fs::create_dir_all(&imgs).unwrap();
        fs::write(imgs.join("a.jpg"), b"").unwrap();
        let manifest = dir.path().join("gt.jsonl");
        let model = ["cat".to_string(), "dog".to_string()];
        // The same image under two spellings.
        fs::write(&manifest, "{\"image\": \"imgs/./a.jpg\", \"labels\": [\"dog\"]}\n{\"image\": \"imgs/a.jpg\", \"labels\": [\"cat\"]}\n").unwrap();
        let err = Truth::load(&manifest, &imgs, &model).err().unwrap().to_string();
        assert!(err.contains("listed twice") && err.contains("entries 1 and 2"), "{err}");
        // None of the model's classes.
        fs::write(&manifest, "{\"image\": \"imgs/a.jpg\", \"labels\": [\"sun\"]}\n").unwrap();
        let err = Truth::load(&manifest, &imgs, &model).err().unwrap().to_string();
        assert!(err.contains("none of the model's classes"), "{err}");
    }
}
