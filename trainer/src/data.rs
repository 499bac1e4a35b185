//! Loading the run's data: train / validation / test datasets through `cls-core`'s readers, the
//! validation hold-out, and the observed training labels: as the data gives them (`--partial
//! given`, the default with `--data`), or made partial by a simulation protocol.
//!
//! Labels in three states come from the data itself (JSONL `negatives`, Open Images' verified
//! negatives, `--unlisted unknown`): positives, verified negatives and unknown entries. Given
//! labels keep all three (observed `1`, `-1`, `0`). Validation labels that say nothing negative
//! about a class (positives and unknown entries only) cannot rank its scores: for such a class
//! the unknown entries count as negatives in validation (the best epoch, the calibrated
//! thresholds), and the run says so.

use anyhow::{bail, Context, Result};
use cls_core::labels::{NEG, POS, UNK};
use cls_core::protocol::{self, Observed};
use cls_core::readers::{self, LabelColumns, ReadOptions};
use cls_core::synthetic::{self, SyntheticSpec};
use cls_core::Dataset;
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

use crate::config::{Labels, TrainConfig};

/// Seed of the validation hold-out: fixed, so every run (and every seed) sees the same split.
pub const HOLDOUT_SEED: u64 = 20_250_101;

pub struct RunData {
    pub train: Dataset,
    pub val: Dataset,
    pub test: Option<Dataset>,
    /// Observed training labels (1 observed positive, 0 unannotated, -1 observed negative).
    pub observed: Observed,
    /// A hint for method.md's τ table: "voc", "coco", "nus" or "".
    pub family: String,
    /// Stable class identifiers of the training data (Open Images MIDs), in class order.
    pub class_ids: Option<Vec<String>>,
    /// Classes whose validation labels have no verified negative, their unknown entries counted
    /// as negatives (see the module's doc).
    pub val_unknown_as_negative: usize,
}

/// Where downloaded-once artefacts (the synthetic data, decoded images, features) live.
pub fn cache_dir(cfg: &TrainConfig) -> PathBuf {
    if let Some(d) = &cfg.cache_dir {
        return d.clone();
    }
    if let Some(d) = std::env::var_os("CLS_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("cls-rs")
}

fn read_options(cfg: &TrainConfig, images: Option<&PathBuf>, split: &str) -> ReadOptions {
    ReadOptions {
        images: images.cloned(),
        split: split.to_string(),
        label_columns: cfg.label_columns.map(LabelColumns::Last),
        classes: cfg.classes.clone(),
        keep_empty: cfg.keep_empty,
        check_images: true,
        unlisted: cfg.unlisted,
        tag_sep: cfg.tag_sep,
        skip_other_classes: cfg.skip_other_classes,
        drop_missing: cfg.drop_missing,
    }
}

/// Read one split with `opts`, printing the readers' notes (rows skipped, images left out).
fn read(path: &Path, opts: &ReadOptions, what: &str) -> Result<readers::Loaded> {
    let loaded = readers::open_detailed(path, opts).with_context(|| format!("reading {what} {}", path.display()))?;
    for note in &loaded.notes {
        eprintln!("note: {what}: {note}");
    }
    Ok(loaded)
}

/// The built-in synthetic dataset (generated once into the cache folder).
pub fn synthetic_manifests(cfg: &TrainConfig) -> Result<(PathBuf, PathBuf)> {
    let spec = SyntheticSpec::default();
    let dir = cache_dir(cfg).join(format!("synthetic-v2-s{}", spec.seed));
    let train = synthetic::generate(&dir, &spec).context("generating the built-in synthetic dataset")?;
    Ok((train, dir.join("test.jsonl")))
}

pub fn load(cfg: &TrainConfig) -> Result<RunData> {
    let (train_path, test_path) = match &cfg.data {
        Some(d) => (d.clone(), cfg.test.clone()),
        None => {
            let (tr, te) = synthetic_manifests(cfg)?;
            (tr, Some(cfg.test.clone().unwrap_or(te)))
        }
    };
    let train_split =
        cfg.split.clone().unwrap_or_else(|| if is_voc(&train_path) { "trainval".into() } else { "train".into() });
    let test_split = cfg.test_split.clone().unwrap_or_else(|| "test".into());

    let loaded = read(&train_path, &read_options(cfg, cfg.images.as_ref(), &train_split), "training data")?;
    let class_ids = loaded.class_ids;
    let full = loaded.dataset;
    if full.is_empty() {
        bail!("{}: no training samples", train_path.display());
    }

    // With a hold-out, `whole` keeps --data and the rows of it that train (an --observed file
    // may cover them all).
    let (train, val, whole) = match &cfg.val {
        Some(v) => {
            let opts = read_options(cfg, cfg.val_images.as_ref().or(cfg.images.as_ref()), &test_split);
            let val = read(v, &opts, "validation data")?.dataset;
            check_same_classes(&full, &val, v)?;
            (full, val, None)
        }
        None => {
            let (t, v) = holdout_rows(full.len(), cfg.val_fraction)?;
            let train = full.subset(&t, &format!("{}-train", full.name));
            let val = full.subset(&v, &format!("{}-val", full.name));
            (train, val, Some((full, t)))
        }
    };

    let test = match &test_path {
        Some(t) => {
            // A VOC / NUS-WIDE folder is read at its test split.
            let opts = read_options(cfg, cfg.test_images.as_ref().or(cfg.images.as_ref()), &test_split);
            let ds = read(t, &opts, "test data")?.dataset;
            check_same_classes(&train, &ds, t)?;
            Some(ds)
        }
        None => None,
    };

    // Images scored that also trained make their scores optimistic; a tiny validation split picks
    // the best epoch and the thresholds by chance.
    if let Some(t) = &test {
        let seen: Vec<&Path> = train.samples.iter().chain(&val.samples).map(|s| s.path.as_path()).collect();
        warn_overlap(&seen, t, "test", "training or validation");
    }
    if cfg.val.is_some() {
        let seen: Vec<&Path> = train.samples.iter().map(|s| s.path.as_path()).collect();
        warn_overlap(&seen, &val, "validation", "training");
    }
    if val.len() < MIN_VAL_IMAGES {
        eprintln!(
            "warning: the validation split has {} images (fewer than {MIN_VAL_IMAGES}): its mAP, which picks the best \
             epoch and the thresholds, means little; give --val a larger labelled set{}",
            val.len(),
            if cfg.val.is_none() { " or raise --val-fraction" } else { "" }
        );
    }

    // Every epoch is scored by validation mAP, which needs at least one positive: say so now
    // rather than after the first epoch.
    let no_positive = |ds: &Dataset| !ds.targets.iter().any(|&v| v == POS);
    if no_positive(&val) {
        bail!(
            "the validation set ({} images{}) has no positive label, so its mAP, which picks the best epoch, is undefined: \
             give --val a labelled set, or a larger --val-fraction",
            val.len(),
            if cfg.val.is_none() { ", held out from --data" } else { "" }
        );
    }
    if let Some(t) = test.as_ref().filter(|t| no_positive(t)) {
        bail!("the test set ({} images) has no positive label: its mAP is undefined", t.len());
    }
    let mut val = val;
    let val_unknown_as_negative = unknown_as_negative(&mut val.targets);
    if val_unknown_as_negative > 0 {
        eprintln!(
            "warning: the validation labels of {val_unknown_as_negative} of {} classes have no verified negative \
             (positives and unknown entries only): their unknown entries count as negatives for the best epoch and \
             the calibrated thresholds, which are therefore conservative (they may tag less than the best cut on \
             complete labels would)",
            val.num_classes()
        );
    }
    let observed = observe(cfg, &train, whole.as_ref().map(|(full, rows)| (full, rows.as_slice())))?;
    drop(whole);
    let family = family_of(&train_path, &train);
    Ok(RunData { train, val, test, observed, family, class_ids, val_unknown_as_negative })
}

/// Below this many images a validation split gets a warning.
pub const MIN_VAL_IMAGES: usize = 20;

/// Warn when images of `split` (`what`) are also among `seen` (`seen_what`): the same file by
/// canonical path, or the same bytes under another name (`readers::overlap`).
fn warn_overlap(seen: &[&Path], split: &Dataset, what: &str, seen_what: &str) {
    let other: Vec<&Path> = split.samples.iter().map(|s| s.path.as_path()).collect();
    let o = readers::overlap(seen, &other);
    if o.total() > 0 {
        eprintln!(
            "warning: {} of the {} {what} images are also {seen_what} images ({} the same file, {} the same bytes \
             under another name): their {what} scores are optimistic for images the model has not seen",
            o.total(),
            split.len(),
            o.same_file,
            o.same_content
        );
    }
}

/// For every class of `truth` with unknown entries and no verified negative, make its unknown
/// entries negatives; returns how many classes changed. Such a class's labels are positives only:
/// left as they are, every ranking of its scores would look perfect.
pub fn unknown_as_negative(truth: &mut ndarray::Array2<i8>) -> usize {
    let mut changed = 0;
    for mut column in truth.columns_mut() {
        if column.iter().any(|&v| v == UNK) && !column.iter().any(|&v| v == NEG) {
            column.mapv_inplace(|v| if v == UNK { NEG } else { v });
            changed += 1;
        }
    }
    changed
}

fn is_voc(p: &Path) -> bool {
    p.is_dir()
        && (p.join("ImageSets/Main").is_dir() || p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("VOC")))
}

fn check_same_classes(train: &Dataset, other: &Dataset, path: &Path) -> Result<()> {
    if train.classes.names() != other.classes.names() {
        bail!(
            "{}: its classes differ from the training data's ({} vs {} classes); give both the same class list (--classes)",
            path.display(),
            other.num_classes(),
            train.num_classes()
        );
    }
    Ok(())
}

/// Hold out `fraction` of `n` training samples for validation with a fixed seed (method.md: "When
/// a dataset has no validation split, hold out 20% of train with a fixed seed"): (training rows,
/// validation rows), each sorted.
pub fn holdout_rows(n: usize, fraction: f64) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(0.0..1.0).contains(&fraction) || fraction == 0.0 {
        bail!("--val-fraction must be in (0, 1), got {fraction}");
    }
    let n_val = ((n as f64) * fraction).round().max(1.0) as usize;
    if n_val >= n {
        bail!("only {n} training samples: too few to hold out a validation split (give --val)");
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(HOLDOUT_SEED));
    let (v, t) = idx.split_at(n_val);
    let (mut v, mut t) = (v.to_vec(), t.to_vec());
    v.sort_unstable();
    t.sort_unstable();
    Ok((t, v))
}

/// The observed training labels: an external file, or a protocol applied to the ground truth.
///
/// With a hold-out (`whole`: --data and its training rows), an `--observed` file is read
/// against the whole of --data and its rows for the held-out images are left out; a `.npy` with
/// exactly one row per remaining training image is taken as it is.
fn observe(cfg: &TrainConfig, train: &Dataset, whole: Option<(&Dataset, &[usize])>) -> Result<Observed> {
    if let Some(file) = &cfg.observed {
        let obs = read_observed(file, train, whole, cfg.val_fraction)?;
        return protocol::merge_external(train.targets.view(), obs.view())
            .with_context(|| format!("--observed {}", file.display()));
    }
    Ok(match cfg.labels()? {
        Labels::Given => given(train.targets.view()),
        Labels::Simulated(partial) => {
            protocol::apply(train.targets.view(), &partial, cfg.mask_seed.unwrap_or(cfg.seed), cfg.allow_empty)
        }
    })
}

fn read_observed(
    file: &Path,
    train: &Dataset,
    whole: Option<(&Dataset, &[usize])>,
    fraction: f64,
) -> Result<Array2<i8>> {
    let npy = file.extension().is_some_and(|e| e == "npy");
    let Some((full, kept)) = whole else {
        return Ok(if npy {
            readers::read_observed_npy(file, train.len(), train.num_classes())?
        } else {
            readers::read_observed_txt(file, train)?
        });
    };
    let held_out = full.len() - kept.len();
    if npy {
        // Which rows the file covers, from its header: all of --data (the held-out rows are then
        // left out), or the training rows alone; a file that fits neither says what it needs.
        let classes = full.num_classes() as u64;
        let shape = readers::npy_shape(file)?;
        let obs = if shape == [full.len() as u64, classes] {
            readers::read_observed_npy(file, full.len(), full.num_classes())?.select(ndarray::Axis(0), kept)
        } else if shape == [train.len() as u64, classes] {
            readers::read_observed_npy(file, train.len(), train.num_classes())?
        } else {
            bail!(
                "{}: shape {shape:?}, but --data has {} images ({} classes) and {held_out} of them are held out for \
                 validation (--val-fraction {fraction}), leaving {} to train: an --observed .npy needs one row per \
                 image of --data, in --data's order ({} × {}); or give --val a separate validation set, and then \
                 one row per image of --data",
                file.display(),
                full.len(),
                classes,
                train.len(),
                full.len(),
                classes
            );
        };
        eprintln!(
            "note: --observed gives the labels of the {} training images; the {held_out} held out for validation \
             are scored on --data's own labels",
            kept.len()
        );
        return Ok(obs);
    }
    let all = readers::read_observed_txt(file, full)?;
    Ok(all.select(ndarray::Axis(0), kept))
}

/// The labels as the data gives them: positives observed (`1`), verified negatives observed
/// (`-1`), unknown entries unannotated (`0`).
pub fn given(truth: ndarray::ArrayView2<i8>) -> Observed {
    Observed {
        labels: truth.mapv(|v| match v {
            POS => 1,
            NEG => -1,
            _ => 0,
        }),
        realised_fraction: 1.0,
        n_restored: 0,
        n_observed_not_true: 0,
    }
}

fn family_of(path: &Path, ds: &Dataset) -> String {
    let s = format!("{} {}", path.display(), ds.name).to_lowercase();
    if s.contains("voc") {
        "voc".into()
    } else if s.contains("coco") {
        "coco".into()
    } else if s.contains("nus") {
        "nus".into()
    } else {
        String::new()
    }
}
