//! Loading the run's data: train / validation / test datasets through `cls-core`'s readers, the
//! validation hold-out, and the observed (partially hidden) training labels.

use anyhow::{bail, Context, Result};
use cls_core::labels::POS;
use cls_core::protocol::{self, Observed, Partial};
use cls_core::readers::{self, LabelColumns, ReadOptions};
use cls_core::synthetic::{self, SyntheticSpec};
use cls_core::Dataset;
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

use crate::config::TrainConfig;

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
        ..ReadOptions::default()
    }
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

    let full = readers::open(&train_path, &read_options(cfg, cfg.images.as_ref(), &train_split))
        .with_context(|| format!("reading training data {}", train_path.display()))?;
    if full.is_empty() {
        bail!("{}: no training samples", train_path.display());
    }

    let (train, val) = match &cfg.val {
        Some(v) => {
            let val =
                readers::open(v, &read_options(cfg, cfg.val_images.as_ref().or(cfg.images.as_ref()), &test_split))
                    .with_context(|| format!("reading validation data {}", v.display()))?;
            check_same_classes(&full, &val, v)?;
            (full, val)
        }
        None => holdout(full, cfg.val_fraction)?,
    };

    let test = match &test_path {
        Some(t) => {
            // A VOC / NUS-WIDE folder is read at its test split.
            let ds =
                readers::open(t, &read_options(cfg, cfg.test_images.as_ref().or(cfg.images.as_ref()), &test_split))
                    .with_context(|| format!("reading test data {}", t.display()))?;
            check_same_classes(&train, &ds, t)?;
            Some(ds)
        }
        None => None,
    };

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
    let observed = observe(cfg, &train)?;
    let family = family_of(&train_path, &train);
    Ok(RunData { train, val, test, observed, family })
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

/// Hold out `fraction` of train for validation with a fixed seed (method.md: "When a dataset
/// has no validation split, hold out 20% of train with a fixed seed").
pub fn holdout(full: Dataset, fraction: f64) -> Result<(Dataset, Dataset)> {
    if !(0.0..1.0).contains(&fraction) || fraction == 0.0 {
        bail!("--val-fraction must be in (0, 1), got {fraction}");
    }
    let n = full.len();
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
    Ok((full.subset(&t, &format!("{}-train", full.name)), full.subset(&v, &format!("{}-val", full.name))))
}

/// The observed training labels: an external file, or a protocol applied to the ground truth.
fn observe(cfg: &TrainConfig, train: &Dataset) -> Result<Observed> {
    if let Some(file) = &cfg.observed {
        let obs: Array2<i8> = if file.extension().is_some_and(|e| e == "npy") {
            readers::read_observed_npy(file, train.len(), train.num_classes())?
        } else {
            readers::read_observed_txt(file, train)?
        };
        return protocol::merge_external(train.targets.view(), obs.view())
            .with_context(|| format!("--observed {}", file.display()));
    }
    let partial: Partial = cfg.partial.parse().map_err(|e| anyhow::anyhow!("--partial: {e}"))?;
    Ok(protocol::apply(train.targets.view(), &partial, cfg.seed, cfg.allow_empty))
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
