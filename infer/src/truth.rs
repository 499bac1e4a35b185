//! Ground truth for `--ground-truth`, in any format the trainer reads (`cls_core::readers`): a
//! JSONL manifest (image names relative to the manifest's own folder, as cls-train reads it), a
//! COCO instances JSON (file names relative to `--images`: the folder, or the folder of the file,
//! glob or list), a VOC devkit (split `test`, else `val`, else `trainval`), Open Images image-level
//! labels (with their class descriptions, `--gt-classes`), or a tag table (image names relative to
//! `--images`). Ground truth naming none of the images says where it looked
//! ([`Truth::where_it_looked`]).
//!
//! Classes: each model class is matched by name to the ground truth's classes (Open Images:
//! their DisplayNames), else, for Open Images, to their MIDs, so a model trained on display names
//! and one trained on MIDs both evaluate against the same labels file.
//!
//! Images: Open Images rows are matched by ImageID = the tagged file's stem (`000a1249af2bc5f0`
//! for `any/folder/000a1249af2bc5f0.jpg`, or a tar member `shard.tar/000a1249af2bc5f0.jpg`);
//! every other format by canonicalised absolute path. Ground truth that cannot be scored against
//! the model (none of its classes, an image listed twice under two spellings) is refused when
//! loaded, before any tagging.
//!
//! Unlisted entries: Open Images' are unknown (left out of the metrics: the file lists only the
//! verified classes of each image); a JSONL manifest with `negatives` keeps its own partial
//! meaning (the reader's default); every other format lists every positive, so the rest are
//! negatives.

use anyhow::{bail, Context, Result};
use cls_core::labels::NEG;
use cls_core::readers::{self, Format, ReadOptions, Unlisted};
use ndarray::Array2;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// How tagged images find their ground-truth row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// By canonicalised absolute path.
    Path,
    /// By file stem (Open Images' ImageID).
    Stem,
}

/// Ground-truth rows keyed by image (see [`Match`]), with columns in the model's class order.
pub struct Truth {
    pub matching: Match,
    rows: HashMap<OsString, usize>,
    /// The image each row was given as (for reporting entries without an image).
    ids: Vec<String>,
    /// Entries × model classes, `LabelState as i8`.
    pub targets: Array2<i8>,
    /// Notes for stderr about the class mapping.
    pub notes: Vec<String>,
    /// How the entries' names were resolved, in words, for messages ("relative to ...").
    resolved_as: String,
    /// The first entry as given and the path it was resolved to (for messages).
    first: Option<(String, PathBuf)>,
}

/// The file `path` names, by the rule the trainer's readers use too
/// ([`readers::canonical_image_path`]: symbolic links, `.` and `..` resolved).
pub fn resolve(path: &Path) -> PathBuf {
    readers::canonical_image_path(path)
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
    /// Read `spec` (`classes`: `--gt-classes`) and map its classes onto `model_classes`. A model
    /// class the ground truth does not name is all negative; a ground-truth class the model lacks
    /// is ignored. Both are noted.
    pub fn load(spec: &Path, images_root: &Path, classes: Option<&Path>, model_classes: &[String]) -> Result<Truth> {
        let split = if spec.is_dir() { voc_split(spec) } else { String::new() };
        let mut opts = ReadOptions {
            images: Some(images_root.to_path_buf()),
            split,
            classes: classes.map(Path::to_path_buf),
            keep_empty: true,
            check_images: false,
            skip_other_classes: true,
            ..Default::default()
        };
        let what = || format!("--ground-truth {}", spec.display());
        let format = readers::detect(spec, &opts).with_context(what)?;
        // Tag tables list every positive; Open Images and JSONL keep their readers' defaults.
        opts.unlisted = (format == Format::TagTable).then_some(Unlisted::Negative);
        if format == Format::OpenImages && classes.is_none() {
            bail!(
                "--ground-truth {} is Open Images image-level labels: give its class descriptions (LabelName,DisplayName) with --gt-classes FILE",
                spec.display()
            );
        }
        let loaded = readers::open_detailed(spec, &opts).with_context(what)?;
        let mut notes = loaded.notes.clone();
        let data = &loaded.dataset;
        let ids_of_classes = loaded.class_ids.as_deref();
        let n = data.samples.len();
        let mut targets = Array2::from_elem((n, model_classes.len()), NEG);
        let mut missing = Vec::new();
        let mut used = vec![false; data.classes.len()];
        for (c, name) in model_classes.iter().enumerate() {
            let found = data.classes.index_of(name).or_else(|| ids_of_classes?.iter().position(|id| id == name));
            match found {
                Some(g) => {
                    targets.column_mut(c).assign(&data.targets.column(g));
                    used[g] = true;
                }
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
            data.classes.names().iter().zip(&used).filter(|(_, u)| !**u).map(|(s, _)| s.as_str()).collect();
        if !extra.is_empty() {
            notes.push(format!(
                "{} ground-truth classes are not in the model (ignored): {}",
                extra.len(),
                preview(&extra)
            ));
        }
        let matching = if format == Format::OpenImages { Match::Stem } else { Match::Path };
        let folder =
            |p: &Path| resolve(if p.as_os_str().is_empty() { Path::new(".") } else { p }).display().to_string();
        let resolved_as = match format {
            Format::Jsonl => format!(
                "a JSONL manifest's image names are relative to the manifest's own folder, {}",
                folder(spec.parent().unwrap_or(Path::new("")))
            ),
            Format::Coco | Format::TagTable => {
                format!("its image names are relative to the folder of --images, {}", folder(images_root))
            }
            Format::Voc => "a VOC devkit's images are its JPEGImages/<id>.jpg".to_string(),
            Format::NusWide => "NUS-WIDE's images are its Flickr/<id>".to_string(),
            Format::OpenImages => "Open Images rows match images by ImageID = file stem".to_string(),
            Format::CsvFeatures => "a feature table names no images".to_string(),
        };
        let first = data.samples.first().map(|s| match matching {
            Match::Path => (s.id.clone(), resolve(&s.path)),
            Match::Stem => (s.id.clone(), PathBuf::from(&s.id)),
        });
        if matching == Match::Stem {
            notes.push("Open Images ground truth: images are matched by ImageID = file stem".to_string());
        }
        let mut rows = HashMap::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        for (i, s) in data.samples.iter().enumerate() {
            let (id, key) = match matching {
                Match::Path => (s.path.display().to_string(), resolve(&s.path).into_os_string()),
                Match::Stem => (s.id.clone(), OsString::from(&s.id)),
            };
            if let Some(first) = rows.insert(key, i) {
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
        Ok(Truth { matching, rows, ids, targets, notes, resolved_as, first })
    }

    /// Where the entries were looked for, for a ground truth that names none of the images
    /// (`first_image`: the first image tagged, if any): how names resolve, the first entry's
    /// expected path, and the first image's path to compare with.
    pub fn where_it_looked(&self, first_image: Option<&Path>) -> String {
        let mut s = self.resolved_as.clone();
        if let Some((id, path)) = &self.first {
            match self.matching {
                Match::Path => s.push_str(&format!(
                    "; its first entry, {id:?}, was looked for at {}, which is not among the images",
                    path.display()
                )),
                Match::Stem => s.push_str(&format!("; its first ImageID, {id:?}, is the stem of none of the images")),
            }
        }
        if let Some(img) = first_image {
            let img = match self.matching {
                Match::Path => resolve(img).display().to_string(),
                Match::Stem => img.display().to_string(),
            };
            s.push_str(&format!(" (the first image is {img})"));
        }
        s
    }

    /// The key an image at `path` is matched by.
    pub fn key_of(&self, path: &Path) -> OsString {
        match self.matching {
            Match::Path => resolve(path).into_os_string(),
            Match::Stem => path.file_stem().map(OsString::from).unwrap_or_default(),
        }
    }

    /// The row of the image whose key (see [`Truth::key_of`]) is `key`, if the ground truth has one.
    pub fn row_of(&self, key: &std::ffi::OsStr) -> Option<usize> {
        self.rows.get(key).copied()
    }

    /// How many entries have their key in `present`.
    pub fn entries_in(&self, present: &HashSet<OsString>) -> usize {
        self.rows.keys().filter(|p| present.contains(*p)).count()
    }

    /// The entries whose key is not in `present`, as given in the ground truth.
    pub fn entries_without_image(&self, present: &HashSet<OsString>) -> Vec<&str> {
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
    use cls_core::labels::{POS, UNK};
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
        let t = Truth::load(&manifest, &imgs, None, &model).unwrap();
        assert_eq!(t.targets.dim(), (2, 3));
        // Reached through a different spelling of the same file.
        let row = t.row_of(&t.key_of(&imgs.join("../imgs/a.jpg"))).expect("a.jpg matched");
        assert_eq!(t.targets.row(row).to_vec(), vec![NEG, POS, NEG]);
        assert_eq!(t.notes.len(), 2, "{:?}", t.notes); // "tree" missing, "sun" extra
        let present: HashSet<OsString> = [t.key_of(&imgs.join("a.jpg"))].into();
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
        let err = format!("{:#}", Truth::load(&manifest, &imgs, None, &model).err().unwrap());
        // The readers' rule, the trainer's too (cls_core::readers::SameFile).
        assert!(
            err.contains("gt.jsonl:2: duplicate image 'imgs/a.jpg'") && err.contains("line 1 as 'imgs/./a.jpg'"),
            "{err}"
        );
        // None of the model's classes.
        fs::write(&manifest, "{\"image\": \"imgs/a.jpg\", \"labels\": [\"sun\"]}\n").unwrap();
        let err = Truth::load(&manifest, &imgs, None, &model).err().unwrap().to_string();
        assert!(err.contains("none of the model's classes"), "{err}");
    }

    #[test]
    fn open_images_by_image_id_and_display_name_or_mid() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = dir.path().join("imgs");
        fs::create_dir_all(&imgs).unwrap();
        let labels = dir.path().join("labels.csv");
        fs::write(
            &labels,
            "ImageID,Source,LabelName,Confidence\n0001,human,/m/cat,1\n0001,human,/m/dog,0\n0002,human,/m/dog,1\n",
        )
        .unwrap();
        let desc = dir.path().join("desc.csv");
        fs::write(&desc, "LabelName,DisplayName\n/m/cat,Cat\n/m/dog,Dog\n/m/sun,Sun\n").unwrap();
        // Without the descriptions: a clear error.
        let err = format!("{:#}", Truth::load(&labels, &imgs, None, &["Cat".to_string()]).err().unwrap());
        assert!(err.contains("--gt-classes"), "{err}");
        // A model trained on display names, one on MIDs: the same targets.
        for model in [["Cat", "Dog", "Tree"], ["/m/cat", "/m/dog", "Tree"]] {
            let model: Vec<String> = model.iter().map(|s| s.to_string()).collect();
            let t = Truth::load(&labels, &imgs, Some(&desc), &model).unwrap();
            assert_eq!(t.matching, Match::Stem);
            let row = t.row_of(&t.key_of(Path::new("any/where/0001.jpg"))).expect("0001 matched by stem");
            assert_eq!(t.targets.row(row).to_vec(), vec![POS, NEG, NEG], "{model:?}");
            let row = t.row_of(&t.key_of(Path::new("shard.tar/0002.png"))).unwrap();
            // Cat not verified for 0002: unknown; Tree is not in the ground truth: negative.
            assert_eq!(t.targets.row(row).to_vec(), vec![UNK, POS, NEG], "{model:?}");
            assert!(t.notes.iter().any(|n| n.contains("Tree")), "{:?}", t.notes);
        }
    }

    #[test]
    fn names_that_match_nothing_say_where_they_were_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = dir.path().join("imgs");
        let gts = dir.path().join("labels");
        fs::create_dir_all(&imgs).unwrap();
        fs::create_dir_all(&gts).unwrap();
        fs::write(imgs.join("a.jpg"), b"").unwrap();
        // Names written relative to --images, in a manifest kept in another folder.
        let manifest = gts.join("gt.jsonl");
        fs::write(&manifest, "{\"image\": \"a.jpg\", \"labels\": [\"cat\"]}\n").unwrap();
        let t = Truth::load(&manifest, &imgs, None, &["cat".to_string()]).unwrap();
        let present: HashSet<OsString> = [t.key_of(&imgs.join("a.jpg"))].into();
        assert_eq!(t.entries_in(&present), 0);
        let gts = resolve(&gts);
        let msg = t.where_it_looked(Some(&imgs.join("a.jpg")));
        assert!(msg.contains(&format!("relative to the manifest's own folder, {}", gts.display())), "{msg}");
        assert!(msg.contains(&format!("\"a.jpg\", was looked for at {}", gts.join("a.jpg").display())), "{msg}");
        assert!(msg.contains(&format!("the first image is {}", resolve(&imgs).join("a.jpg").display())), "{msg}");
    }

    #[test]
    fn tag_tables_relative_to_the_images() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = dir.path().join("imgs");
        fs::create_dir_all(&imgs).unwrap();
        fs::write(imgs.join("a.jpg"), b"").unwrap();
        let table = dir.path().join("tags.csv");
        fs::write(&table, "image_name,tags\na.jpg,cat dog\nb.jpg,\n").unwrap();
        let model = ["cat".to_string(), "dog".to_string(), "owl".to_string()];
        let t = Truth::load(&table, &imgs, None, &model).unwrap();
        assert_eq!(t.matching, Match::Path);
        let row = t.row_of(&t.key_of(&imgs.join("a.jpg"))).unwrap();
        assert_eq!(t.targets.row(row).to_vec(), vec![POS, POS, NEG]);
    }
}
