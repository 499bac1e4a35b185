//! The training configuration: every knob is a command-line flag, the same names work as keys
//! of a TOML file (`--config FILE`), and the resolved configuration is saved in the run folder
//! (`config.toml`) so a run can be reproduced and resumed.
//!
//! Defaults are the paper's (method.md "Paper defaults"): Adam, weight decay 1e-4, batch 120,
//! 100 epochs, learning rate 4e-5 with cosine decay to 0, E_k = 10.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::lr::{LrSchedule, Schedule};
use crate::methods::{MethodConfig, MethodName, Reduction};
use cls_core::readers::Unlisted;

/// `auto`, `cpu`, `cuda` or `cuda:N` (whether the device exists is checked when it is opened).
fn check_device_name(flag: &str, s: &str) -> Result<()> {
    let ok = matches!(s, "auto" | "cpu" | "cuda") || s.strip_prefix("cuda:").is_some_and(|n| n.parse::<u16>().is_ok());
    if !ok {
        bail!("--{flag} {s}: expected auto, cpu, cuda or cuda:N");
    }
    Ok(())
}

// Parsers of the flags whose values have a shape: a typo fails when the command line is read.

/// `--device`'s parser: `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn device_flag(s: &str) -> Result<String> {
    // clap names the flag and the value; the message adds only what is expected.
    check_device_name("device", s).map_err(|_| anyhow::anyhow!("expected auto, cpu, cuda or cuda:N"))?;
    Ok(s.to_string())
}

fn partial_flag(s: &str) -> Result<String> {
    s.parse::<Labels>().map_err(|e| {
        // clap names the flag and the value: keep what is expected.
        let text = e.to_string();
        anyhow::anyhow!("{}", text.split_once(": ").map_or(text.as_str(), |(_, rest)| rest))
    })?;
    Ok(s.to_string())
}

fn unlisted_flag(s: &str) -> Result<Unlisted> {
    s.parse().map_err(|_| anyhow::anyhow!("expected unknown or negative"))
}

/// `--tag-sep`'s parser: one character, or `tab` / `space` (any whitespace).
fn tag_sep_flag(s: &str) -> Result<char> {
    match s {
        "tab" | "\\t" => Ok('\t'),
        "space" => Ok(' '),
        _ => {
            let mut chars = s.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Ok(c),
                _ => bail!("expected one character (or `tab`, `space`)"),
            }
        }
    }
}

/// What the training labels are: as the data gives them, or made partial in simulation
/// (method.md, "Partial-label protocols").
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Labels {
    /// `--partial given` (or `full`, its old name): every entry exactly as the data says:
    /// positives, verified negatives, and unknown (unlisted) entries.
    Given,
    /// A simulation protocol applied to the data's labels (`single`, a fraction, `entry:P`).
    Simulated(cls_core::protocol::Partial),
}

impl std::str::FromStr for Labels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "given" | "full" => Ok(Labels::Given),
            _ => s.parse().map(Labels::Simulated).map_err(|_| {
                format!(
                    "invalid --partial value '{s}': expected given (the labels as the data gives them; full is the \
                     same), or a simulation protocol: a fraction in (0, 1] (e.g. 0.25), single, or entry:P with P in [0, 1]"
                )
            }),
        }
    }
}

/// Where training images are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Decode every image once into a memory-mapped uint8 cache under --cache-dir.
    #[default]
    Images,
    /// Decode images each step in the background (data larger than the cache); the same results.
    None,
}

fn tau_h_flag(s: &str) -> Result<String> {
    if s != "auto" {
        let t: f64 = s.trim().parse().map_err(|_| anyhow::anyhow!("expected a number in [0, 1] or `auto`"))?;
        check_range("tau-h", t, 0.0, false, 1.0)?;
    }
    Ok(s.to_string())
}

/// `--backbone`'s parser: one of [`cls_models::Arch::NAMES`].
pub fn backbone_flag() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(cls_models::Arch::NAMES)
}

/// Which model `cls-train` exports at the end of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Export {
    /// The peer with the higher validation mAP at its best epoch.
    #[default]
    Better,
    /// One graph averaging both peers' probabilities.
    Ensemble,
}

impl Export {
    pub fn as_str(self) -> &'static str {
        match self {
            Export::Better => "better",
            Export::Ensemble => "ensemble",
        }
    }
}

impl std::fmt::Display for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Export {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        <Export as clap::ValueEnum>::from_str(s.trim(), true)
            .map_err(|_| anyhow::anyhow!("--export {s}: expected better or ensemble"))
    }
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    // ---------------------------------------------------------------- data
    /// Training data: a JSONL manifest (optional `negatives`), a COCO instances JSON (with
    /// --images), Open Images image-level labels (a CSV with ImageID,LabelName,Confidence, with
    /// --images and --classes), a tag table (a CSV with an image and a tags column), a VOC devkit
    /// folder, a NUS-WIDE folder or a CSV feature table (with --label-columns). Without it, the
    /// built-in synthetic multi-label image dataset is generated and used.
    #[arg(long, help_heading = "Data")]
    pub data: Option<PathBuf>,
    /// Image folder: COCO's (holding the JSON's file_names), Open Images' (holding <ImageID>.jpg)
    /// or a tag table's (its image column is relative to it; default: the table's folder).
    #[arg(long, help_heading = "Data")]
    pub images: Option<PathBuf>,
    /// Validation data, same kind as --data. Default: 20% of train held out with a fixed seed.
    #[arg(long, help_heading = "Data")]
    pub val: Option<PathBuf>,
    /// Image root for a COCO --val.
    #[arg(long, help_heading = "Data")]
    pub val_images: Option<PathBuf>,
    /// Test data, same kind as --data (evaluated at the best epoch, never used for choices).
    #[arg(long, help_heading = "Data")]
    pub test: Option<PathBuf>,
    /// Image root for a COCO --test.
    #[arg(long, help_heading = "Data")]
    pub test_images: Option<PathBuf>,
    /// Split names for VOC / NUS-WIDE folders: train split (the test split is --test-split).
    #[arg(long, help_heading = "Data")]
    pub split: Option<String>,
    /// Test split for VOC / NUS-WIDE when --test names the same folder.
    #[arg(long, help_heading = "Data")]
    pub test_split: Option<String>,
    /// CSV feature tables: the number of label columns at the end of each row.
    #[arg(long, help_heading = "Data")]
    pub label_columns: Option<usize>,
    /// The classes: a class list (one name per line) for JSONL manifests and tag tables; Open
    /// Images' class descriptions CSV (LabelName,DisplayName) or a list of MIDs.
    #[arg(long, help_heading = "Data")]
    pub classes: Option<PathBuf>,
    /// What a class an image's labels do not mention is: unknown (not annotated) or negative.
    /// Default: each format's own (unknown for Open Images and for JSONL manifests with
    /// `negatives`, negative for other manifests and tag tables).
    #[arg(long, value_parser = unlisted_flag, help_heading = "Data")]
    pub unlisted: Option<Unlisted>,
    /// Tag tables: the separator of the tags cell (one character, `tab` or `space`). Default: a
    /// comma or a semicolon if the cells hold one, else whitespace.
    #[arg(long, value_parser = tag_sep_flag, help_heading = "Data")]
    pub tag_sep: Option<char>,
    /// Open Images and tag tables: skip labels of classes outside --classes (counted) instead of
    /// an error.
    #[arg(long, help_heading = "Data")]
    pub skip_other_classes: bool,
    /// Open Images and tag tables: leave out images whose file is missing (counted) instead of
    /// an error.
    #[arg(long, help_heading = "Data")]
    pub drop_missing: bool,
    /// COCO: keep images without annotations.
    #[arg(long, help_heading = "Data")]
    pub keep_empty: bool,
    /// Fraction of validation held out of train when no --val is given.
    #[arg(long, default_value_t = 0.2, help_heading = "Data")]
    pub val_fraction: f64,
    /// Cache folder for decoded images and backbone features (default: ~/.cache/cls-rs).
    #[arg(long, help_heading = "Data")]
    pub cache_dir: Option<PathBuf>,
    /// images: decode every image once into a cache under --cache-dir; none: decode images each
    /// step, in the background (for data larger than the cache; the same results).
    #[arg(long, value_enum, default_value_t = CacheMode::Images, help_heading = "Data")]
    pub cache: CacheMode,

    // ---------------------------------------------------------------- partial labels
    /// The training labels: given (exactly as the data says: positives, verified negatives,
    /// unknown entries; `full` is the same) or a simulation protocol applied to them: 0.75 | 0.5
    /// | 0.25 (fraction of positives left) | single | entry:P (every entry unknown with
    /// probability P). The built-in synthetic data (complete labels) simulates single.
    #[arg(long, default_value = "given", value_parser = partial_flag, help_heading = "Partial labels")]
    pub partial: String,
    /// Let an image lose all its positives under a fractional protocol.
    #[arg(long, help_heading = "Partial labels")]
    pub allow_empty: bool,
    /// Seed of the labels a simulation protocol hides (--partial single, a fraction, entry:P)
    /// [default: --seed]. The protocol of Cole et al. draws the observed labels once and keeps
    /// them for every training seed: give runs that differ in --seed the same --mask-seed, so
    /// that their spread is the training's alone.
    #[arg(long, value_name = "N", help_heading = "Partial labels")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_seed: Option<u64>,
    /// Externally supplied observed training labels (SPML .npy, or the Hill/SPLC `name,i j k` text).
    #[arg(long, help_heading = "Partial labels")]
    pub observed: Option<PathBuf>,

    // ---------------------------------------------------------------- method
    /// The training method (CLS, its ablations, or a baseline; docs/method.md).
    #[arg(long, value_enum, default_value_t = MethodName::Cls, hide_possible_values = false, help_heading = "Method")]
    pub method: MethodName,
    /// τ_h: final rate of peer removal of high-loss negatives, or `auto`: from h, the share of
    /// unannotated entries that are hidden positives (k from --expected-positives, else the
    /// training labels' mean): on a frozen backbone or a feature table, the best of h/2, h, 2h, 3h
    /// and 0.012 on validation (trained first under RUN_DIR/tau-h-auto); end to end, h/2.
    /// Default: the paper's table for VOC/COCO/NUS-WIDE, else 0.012.
    #[arg(long, value_parser = tau_h_flag, help_heading = "Method")]
    pub tau_h: Option<String>,
    /// τ_l: final rate of self removal of low-loss negatives. Default: 0.02 for VOC (whatever
    /// --partial), else 0.06.
    #[arg(long, help_heading = "Method")]
    pub tau_l: Option<f64>,
    /// E_k: epochs over which the removal rates ramp up.
    #[arg(long, default_value_t = 10.0, help_heading = "Method")]
    pub e_k: f64,
    /// Loss reduction for the CLS family: sum (per-sample sums, divided by B) or mean.
    #[arg(long, value_enum, default_value_t = Reduction::Sum, help_heading = "Method")]
    pub reduction: Reduction,
    /// Expected number of positives per image (EPR, ROLE, --tau-h auto).
    #[arg(long, help_heading = "Method")]
    pub expected_positives: Option<f64>,
    /// LL-R/Ct/Cp: growth of the rejected/corrected fraction per epoch, in % of all B·C entries.
    #[arg(long, help_heading = "Method")]
    pub ll_delta: Option<f64>,
    /// Co-teaching / Co-teaching+ / JoCoR forget rate τ.
    #[arg(long, default_value_t = 0.2, help_heading = "Method")]
    pub forget_rate: f64,
    /// JoCoR's λ.
    #[arg(long, default_value_t = 0.5, help_heading = "Method")]
    pub jocor_lambda: f64,
    /// EM's entropy weight α. Default: 0.2 for VOC, else 0.1.
    #[arg(long, help_heading = "Method")]
    pub em_alpha: Option<f64>,
    /// Co-teaching+: epochs of plain Co-teaching before it keeps to the peers' disagreements.
    #[arg(long, default_value_t = 1, help_heading = "Method")]
    pub coteach_plus_warmup: usize,
    /// AN-LS: label smoothing ε (observed positives trained towards 1 − ε, the rest towards ε).
    #[arg(long, default_value_t = 0.1, help_heading = "Method")]
    pub label_smoothing: f64,
    /// ROLE: the label estimates' learning rate as a multiple of the network's.
    #[arg(long, default_value_t = 10.0, help_heading = "Method")]
    pub role_lr_mult: f64,
    /// ASL: let the gradient flow through the focal weights too (the official training, and
    /// this default, treat them as constants).
    #[arg(long, help_heading = "Method")]
    pub asl_focal_grad: bool,

    // ---------------------------------------------------------------- model
    /// Backbone (mlp: for feature tables) [default: resnet50 for images, mlp for tables].
    #[arg(long, value_parser = backbone_flag(), help_heading = "Model")]
    pub backbone: Option<String>,
    /// Pretrained weights of an image backbone (required): `imagenet` (EfficientNet-Lite0,
    /// converted by scripts/setup), a .safetensors state dict with torchvision's or timm's names
    /// (scripts/convert-torchvision), or `none` (random initialisation, on purpose).
    #[arg(long, help_heading = "Model")]
    pub pretrained: Option<String>,
    /// Train only the classifier; backbone features are computed once per image and cached.
    #[arg(long, help_heading = "Model")]
    pub freeze_backbone: bool,
    /// The classifier's learning rate as a multiple of the backbone's.
    #[arg(long, default_value_t = 10.0, help_heading = "Model")]
    pub head_lr_mult: f64,
    /// The classifier bias starts at logit(prior); default: k/C, k the expected positives per image
    /// (--expected-positives, else the training labels' mean; Corel5k: 0.009). A classifier that
    /// starts near the labels' rarity fine-tunes; one that starts at 0.5 collapses.
    #[arg(long, help_heading = "Model")]
    pub bias_prior: Option<f64>,
    /// Hidden width of the MLP backbone.
    #[arg(long, default_value_t = 512, help_heading = "Model")]
    pub mlp_hidden: i64,

    // ---------------------------------------------------------------- images
    /// Training images are squished to HxW (then randomly cropped to --crop). Default 256x256.
    #[arg(long, help_heading = "Images")]
    pub resize: Option<String>,
    /// Random crop size for training, HxW. Default 224x224. Equal to --resize: no crop.
    #[arg(long, help_heading = "Images")]
    pub crop: Option<String>,
    /// Evaluation squish size, HxW (no crop). Default: the crop size.
    #[arg(long, help_heading = "Images")]
    pub eval_size: Option<String>,
    /// Disable random horizontal flips.
    #[arg(long, help_heading = "Images")]
    pub no_flip: bool,

    // ---------------------------------------------------------------- optimisation
    #[arg(long, default_value_t = 100, help_heading = "Optimisation")]
    pub epochs: usize,
    #[arg(long, default_value_t = 120, help_heading = "Optimisation")]
    pub batch_size: usize,
    /// Learning rate (of the backbone; the classifier's is --head-lr-mult times it).
    #[arg(long, default_value_t = 4e-5, help_heading = "Optimisation")]
    pub lr: f64,
    /// Learning-rate schedule over the run.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine, help_heading = "Optimisation")]
    pub schedule: Schedule,
    /// Epochs of linear warm-up from near 0 to --lr before the schedule starts (cosine then
    /// decays over the remaining steps).
    #[arg(long, default_value_t = 0, help_heading = "Optimisation")]
    pub warmup_epochs: usize,
    /// With --schedule step: epochs between two decays (default: a third of --epochs).
    #[arg(long, help_heading = "Optimisation")]
    pub lr_step_epochs: Option<usize>,
    /// With --schedule step: the factor of each decay.
    #[arg(long, default_value_t = 0.1, help_heading = "Optimisation")]
    pub lr_gamma: f64,
    #[arg(long, default_value_t = 1e-4, help_heading = "Optimisation")]
    pub weight_decay: f64,
    /// Seed for initialisation, shuffling, augmentation and (without --mask-seed) label hiding.
    #[arg(long, default_value_t = 0, help_heading = "Optimisation")]
    pub seed: u64,
    /// Stop after this many epochs in this invocation (the run stays resumable).
    #[arg(long, help_heading = "Optimisation")]
    pub stop_after: Option<usize>,

    // ---------------------------------------------------------------- system
    /// auto | cpu | cuda | cuda:N  (auto: CUDA when present).
    #[arg(long, default_value = "auto", value_parser = device_flag, help_heading = "System")]
    pub device: String,
    /// Put the two peers on two devices, e.g. cuda:0,cuda:1.
    #[arg(long, help_heading = "System")]
    pub devices: Option<String>,
    /// On CUDA, train in fp32 instead of bf16 autocast with channels-last memory.
    #[arg(long, help_heading = "System")]
    pub no_amp: bool,
    /// Threads for libtorch and decoding (default: all cores).
    #[arg(long, help_heading = "System")]
    pub threads: Option<usize>,
    /// Which model to export at the end.
    #[arg(long, value_enum, default_value_t = Export::Better, help_heading = "System")]
    pub export: Export,
    /// Calibration: a class with fewer validation positives than this uses the global threshold
    /// instead of its own.
    #[arg(long, default_value_t = cls_core::calibrate::DEFAULT_MIN_POSITIVES, help_heading = "System")]
    pub calibrate_min_positives: usize,
    /// Calibration: each class's own threshold, fitted to its n validation positives, is pulled
    /// toward the global one as n : K in logit space (K this value; 0: the own thresholds).
    #[arg(long, default_value_t = cls_core::calibrate::DEFAULT_SHRINK, help_heading = "System")]
    pub calibrate_shrink: f64,
    /// Keep every epoch's weights under RUN_DIR/epochs/ (for `cls-train export --checkpoint N`).
    #[arg(long, help_heading = "System")]
    pub keep_epochs: bool,
    /// Run folder (default: runs/<method>-<partial>-s<seed>-<time>): new or empty; a folder
    /// holding files a run writes (config.toml, model.onnx, plots/, ...) that no run left there
    /// is refused.
    #[arg(long, help_heading = "System")]
    pub run_dir: Option<PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            c: TrainConfig,
        }
        Wrap::parse_from(["cls-train"]).c
    }
}

/// The largest image side (`--resize`, `--crop`, `--eval-size`, bench-step's `--size`).
pub const MAX_SIDE: u32 = 4096;
/// The largest `--batch-size`.
pub const MAX_BATCH: usize = 1 << 16;
/// The most input values (f32) one batch may hold: 4 GiB.
pub const MAX_BATCH_VALUES: u64 = 1 << 30;
/// Samples per evaluation batch (fewer for large images, see [`eval_batch`]).
pub const EVAL_BATCH: usize = 128;

/// Images per evaluation batch at `height`×`width`: [`EVAL_BATCH`], or fewer so that a batch
/// stays within [`MAX_BATCH_VALUES`].
pub fn eval_batch(height: usize, width: usize) -> usize {
    let per = (3 * height * width).max(1) as u64;
    (MAX_BATCH_VALUES / per).clamp(1, EVAL_BATCH as u64) as usize
}
/// What `--pretrained` takes, for messages.
pub const PRETRAINED_CHOICES: &str = "not a file; give `imagenet` (EfficientNet-Lite0's ImageNet weights, \
made by scripts/setup), a .safetensors state dict with torchvision's or timm's names (torchvision's \
.pth through scripts/convert-torchvision), or `none` to train from random weights on purpose";
/// The largest `--calibrate-min-positives`.
pub const MAX_MIN_POSITIVES: usize = 1_000_000;
/// The largest `--epochs` (and `--stop-after`).
pub const MAX_EPOCHS: usize = 1_000_000;
/// The most `--threads`.
pub const MAX_THREADS: usize = 4096;
/// The widest `--mlp-hidden`.
pub const MAX_MLP_HIDDEN: i64 = 1 << 16;
/// The most `--label-columns`.
pub const MAX_LABEL_COLUMNS: usize = 100_000;

/// Parse "HxW" or a single "S" (square); each side in 1..=[`MAX_SIDE`] (the one parser of both
/// binaries, `cls_core::preprocess::parse_size`).
pub fn parse_size(s: &str) -> Result<(u32, u32)> {
    cls_core::preprocess::parse_size(s, MAX_SIDE)
}

/// (height, width) of the training squish, the training crop and the evaluation squish.
pub type ImageSizes = ((u32, u32), (u32, u32), (u32, u32));

/// The (height, width) sizes: training squish, training crop, evaluation squish.
pub fn image_sizes(cfg: &TrainConfig) -> Result<ImageSizes> {
    let flag = |name: &str, r: Result<(u32, u32)>| r.with_context(|| format!("--{name}"));
    let crop = flag("crop", parse_size(cfg.crop.as_deref().unwrap_or("224x224")))?;
    let resize = match &cfg.resize {
        Some(r) => flag("resize", parse_size(r))?,
        None if cfg.crop.is_some() => crop,
        None => (256, 256),
    };
    if crop.0 > resize.0 || crop.1 > resize.1 {
        bail!("--crop {}x{} is larger than --resize {}x{}", crop.0, crop.1, resize.0, resize.1);
    }
    let eval = match &cfg.eval_size {
        Some(e) => flag("eval-size", parse_size(e))?,
        None => crop,
    };
    Ok((resize, crop, eval))
}

/// Refuse a batch of `batch` images of `size` whose input would not fit [`MAX_BATCH_VALUES`].
pub fn check_batch_values(what: &str, batch: usize, size: (u32, u32)) -> Result<()> {
    let values = batch as u64 * 3 * size.0 as u64 * size.1 as u64;
    if values > MAX_BATCH_VALUES {
        bail!(
            "{what}: a batch of {batch} images of {}x{} holds {} GiB of input (at most {} GiB): lower the batch size or the image size",
            size.0,
            size.1,
            (values * 4) >> 30,
            (MAX_BATCH_VALUES * 4) >> 30
        );
    }
    Ok(())
}

/// Refuse `v` unless it is a finite number within `lo..=hi` (`lo_open`: `v > lo`).
fn check_range(flag: &str, v: f64, lo: f64, lo_open: bool, hi: f64) -> Result<()> {
    let ok = v.is_finite() && if lo_open { v > lo } else { v >= lo } && v <= hi;
    if !ok {
        let lower = if lo_open { format!("> {lo}") } else { format!(">= {lo}") };
        let upper = if hi.is_finite() { format!(" and <= {hi}") } else { String::new() };
        bail!("--{flag} {v}: must be a finite number {lower}{upper}");
    }
    Ok(())
}

/// Refuse `v` unless it lies within `lo..=hi`.
fn check_count(flag: &str, v: usize, lo: usize, hi: usize) -> Result<()> {
    if v < lo || v > hi {
        bail!("--{flag} {v}: must be between {lo} and {hi}");
    }
    Ok(())
}

impl TrainConfig {
    /// Merge a TOML file under the command line: keys in the file set every value that was not
    /// given explicitly on the command line (`explicit`: the field names given there).
    pub fn with_file(self, file: &Path, explicit: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading config {}", file.display()))?;
        self.with_toml(&text, &file.display().to_string(), explicit)
    }

    /// A run folder's saved `config.toml`. One written before `calibrate_shrink` existed was
    /// calibrated with the classes' own optima, and keeps them (`calibrate_shrink = 0`), so that
    /// `--resume` and `cls-train export` calibrate such a run as it was.
    pub fn read_saved(file: &Path) -> Result<Self> {
        let origin = file.display().to_string();
        let text = std::fs::read_to_string(file).with_context(|| format!("reading config {origin}"))?;
        let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing config {origin}"))?;
        let predates_shrink = !table.contains_key("calibrate_shrink");
        let mut cfg = Self::default().with_table(table, &origin, &[])?;
        if predates_shrink {
            cfg.calibrate_shrink = 0.0;
        }
        Ok(cfg)
    }

    /// [`TrainConfig::with_file`] on TOML text; `origin` names it in errors.
    pub fn with_toml(self, text: &str, origin: &str, explicit: &[String]) -> Result<Self> {
        let from_file: toml::Table = toml::from_str(text).with_context(|| format!("parsing config {origin}"))?;
        self.with_table(from_file, origin, explicit)
    }

    /// [`TrainConfig::with_toml`] on the parsed table.
    fn with_table(self, from_file: toml::Table, origin: &str, explicit: &[String]) -> Result<Self> {
        let mut merged = serde_json::to_value(&self)?;
        let fields = merged.as_object_mut().context("the configuration does not serialise to a table")?;
        for (k, v) in serde_json::to_value(from_file)?.as_object().into_iter().flatten() {
            let key = k.replace('-', "_");
            if !fields.contains_key(&key) {
                bail!("{origin}: unknown key '{k}' (keys are the long flags, e.g. tau_h = \"0.01\")");
            }
            if !explicit.contains(&key) {
                fields.insert(key, v.clone());
            }
        }
        serde_json::from_value(merged).with_context(|| format!("config {origin}"))
    }

    /// Check every value before anything is created or loaded: ranges and bounds of numbers and
    /// counts, names (method, protocol, reduction, export kind, backbone, device), sizes, files
    /// that must exist. Data-dependent checks follow in `setup`.
    pub fn validate(&self) -> Result<()> {
        check_count("epochs", self.epochs, 1, MAX_EPOCHS)?;
        if let Some(n) = self.stop_after {
            check_count("stop-after", n, 1, MAX_EPOCHS)?;
        }
        check_count("batch-size", self.batch_size, 1, MAX_BATCH)?;
        if let Some(n) = self.threads {
            check_count("threads", n, 1, MAX_THREADS)?;
        }
        if let Some(n) = self.label_columns {
            check_count("label-columns", n, 1, MAX_LABEL_COLUMNS)?;
        }
        if !(0..=MAX_MLP_HIDDEN).contains(&self.mlp_hidden) {
            bail!("--mlp-hidden {}: must be between 0 (no hidden layer) and {MAX_MLP_HIDDEN}", self.mlp_hidden);
        }
        check_range("lr", self.lr, 0.0, true, f64::INFINITY)?;
        if self.warmup_epochs >= self.epochs {
            bail!("--warmup-epochs {}: must be below --epochs {}", self.warmup_epochs, self.epochs);
        }
        if let Some(n) = self.lr_step_epochs {
            check_count("lr-step-epochs", n, 1, MAX_EPOCHS)?;
        }
        check_range("lr-gamma", self.lr_gamma, 0.0, true, 1.0)?;
        if self.schedule != Schedule::Step && (self.lr_step_epochs.is_some() || self.lr_gamma != 0.1) {
            bail!(
                "--lr-step-epochs and --lr-gamma apply to --schedule step (this run: --schedule {})",
                format!("{:?}", self.schedule).to_lowercase()
            );
        }
        check_range("weight-decay", self.weight_decay, 0.0, false, f64::INFINITY)?;
        check_range("head-lr-mult", self.head_lr_mult, 0.0, true, f64::INFINITY)?;
        check_range("val-fraction", self.val_fraction, 0.0, true, 1.0)?;
        if self.val_fraction >= 1.0 {
            bail!("--val-fraction {}: must be below 1", self.val_fraction);
        }
        if let Some(p) = self.bias_prior {
            check_range("bias-prior", p, 0.0, true, 1.0)?;
            if p >= 1.0 {
                bail!("--bias-prior {p}: must be a probability in (0, 1)");
            }
        }
        self.labels()?;
        let tau_h = match self.tau_h.as_deref() {
            None | Some("auto") => 0.0,
            Some(v) => {
                let t = v.trim().parse::<f64>().with_context(|| format!("--tau-h {v}: expected a number or `auto`"))?;
                check_range("tau-h", t, 0.0, false, 1.0)?;
                t
            }
        };
        if let Some(t) = self.tau_l {
            check_range("tau-l", t, 0.0, false, 1.0)?;
        }
        if let Some(k) = self.expected_positives {
            check_range("expected-positives", k, 0.0, false, f64::INFINITY)?;
        }
        let mcfg = self.method_config(tau_h, self.tau_l.unwrap_or(0.0), self.expected_positives.unwrap_or(0.0))?;
        mcfg.validate()?;
        let networks = self.networks()?;
        if self.export == Export::Ensemble && networks < 2 {
            bail!("--export ensemble needs a two-network method; {} trains one", self.method);
        }
        check_device_name("device", &self.device)?;
        if let Some(list) = &self.devices {
            let names: Vec<&str> = list.split(',').map(str::trim).collect();
            for n in &names {
                check_device_name("devices", n)?;
            }
            if names.len() != networks {
                bail!("--devices lists {} device(s) but {} trains {networks} network(s)", names.len(), self.method);
            }
        }
        let backbone = match &self.backbone {
            Some(b) => Some(b.parse::<cls_models::Arch>().map_err(|e| anyhow::anyhow!("--backbone: {e}"))?),
            None => None,
        };
        if let Some(arch) = &backbone {
            if self.freeze_backbone && !arch.is_image() {
                bail!("--freeze-backbone applies to image backbones; the MLP of a feature table always trains whole");
            }
            if self.pretrained.as_deref() == Some("imagenet") && !matches!(arch, cls_models::Arch::EfficientNetLite0) {
                bail!(
                    "--pretrained imagenet is available offline for efficientnet-lite0 only; for {} give a .safetensors file \
                     (convert torchvision weights with scripts/convert-torchvision; timm's names load as they are), \
                     or `none` to train from scratch",
                    arch.name()
                );
            }
            if self.pretrained.is_some() && !arch.is_image() {
                bail!("--pretrained applies to image backbones; the MLP of a feature table starts from random weights");
            }
        }
        if let Some(p) = self.pretrained.as_deref().filter(|p| !matches!(*p, "imagenet" | "none")) {
            if !Path::new(p).is_file() {
                bail!("--pretrained {p}: {PRETRAINED_CHOICES}");
            }
        }
        if self.calibrate_min_positives > MAX_MIN_POSITIVES {
            bail!("--calibrate-min-positives {}: must be at most {MAX_MIN_POSITIVES}", self.calibrate_min_positives);
        }
        if !(self.calibrate_shrink.is_finite() && (0.0..=1e9).contains(&self.calibrate_shrink)) {
            bail!("--calibrate-shrink {}: must be a number from 0 to 1e9", self.calibrate_shrink);
        }
        let (_, crop, _) = image_sizes(self)?;
        if backbone.as_ref().is_none_or(|a| a.is_image()) {
            check_batch_values("--batch-size", self.batch_size, crop)?;
        }
        let files = [
            ("data", &self.data),
            ("images", &self.images),
            ("val", &self.val),
            ("val-images", &self.val_images),
            ("test", &self.test),
            ("test-images", &self.test_images),
            ("classes", &self.classes),
            ("observed", &self.observed),
        ];
        for (flag, path) in files {
            if let Some(p) = path {
                if !p.exists() {
                    bail!("--{flag} {}: no such file or folder", p.display());
                }
            }
        }
        Ok(())
    }

    /// The checks of a new run beyond [`TrainConfig::validate`] (a resumed or re-exported run
    /// keeps what it was started with): an image backbone needs `--pretrained` (`none` for random
    /// weights on purpose). Whether the data are images is known from the flags: only a CSV
    /// feature table (`--label-columns`) is not.
    pub fn validate_new_run(&self) -> Result<()> {
        self.validate()?;
        let images = match &self.backbone {
            Some(b) => b.parse::<cls_models::Arch>().map(|a| a.is_image()).unwrap_or(true),
            None => self.label_columns.is_none(),
        };
        if images && self.pretrained.is_none() {
            bail!(
                "an image backbone ({}) needs --pretrained: `imagenet` (EfficientNet-Lite0's ImageNet weights, made by \
                 scripts/setup; with --backbone efficientnet-lite0), a .safetensors state dict with torchvision's or \
                 timm's names (torchvision's .pth through scripts/convert-torchvision), or `none` to train from random \
                 weights on purpose",
                self.backbone.as_deref().unwrap_or("resnet50, the default")
            );
        }
        Ok(())
    }

    /// What the training labels are (`--partial`).
    pub fn labels(&self) -> Result<Labels> {
        self.partial.parse().map_err(|e| anyhow::anyhow!("--partial: {e}"))
    }

    /// How many networks the method trains (1 or 2).
    pub fn networks(&self) -> Result<usize> {
        let m = crate::methods::build(self.method.as_str(), &MethodConfig::default(), 1, 1, tch::Device::Cpu)?;
        Ok(m.num_networks())
    }

    pub fn reduction(&self) -> Result<Reduction> {
        Ok(self.reduction)
    }

    /// `--schedule step`'s interval in epochs: --lr-step-epochs, else a third of --epochs.
    pub fn lr_step_interval(&self) -> usize {
        self.lr_step_epochs.unwrap_or((self.epochs / 3).max(1))
    }

    /// The learning rate of every step (`--lr`, `--schedule`, `--warmup-epochs`,
    /// `--lr-step-epochs`, `--lr-gamma`) for epochs of `steps_per_epoch` steps.
    pub fn lr_schedule(&self, steps_per_epoch: usize) -> LrSchedule {
        LrSchedule {
            base: self.lr,
            kind: self.schedule,
            steps_per_epoch: steps_per_epoch.max(1),
            epochs: self.epochs,
            warmup_epochs: self.warmup_epochs,
            step_epochs: self.lr_step_interval(),
            gamma: self.lr_gamma,
        }
    }

    /// The method's knobs, with τ resolved by the caller (dataset- and protocol-dependent).
    pub fn method_config(&self, tau_h: f64, tau_l: f64, expected_positives: f64) -> Result<MethodConfig> {
        Ok(MethodConfig {
            tau_h,
            tau_l,
            e_k: self.e_k,
            reduction: self.reduction()?,
            expected_positives,
            ll_delta: self.ll_delta,
            forget_rate: self.forget_rate,
            jocor_lambda: self.jocor_lambda,
            em_alpha: self.em_alpha.unwrap_or(0.1),
            coteach_plus_warmup: self.coteach_plus_warmup,
            label_smoothing: self.label_smoothing,
            role_lr_mult: self.role_lr_mult,
            asl_focal_grad: self.asl_focal_grad,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        c: TrainConfig,
    }

    /// A run's config.toml from before `calibrate_shrink` keeps the own optima it was calibrated
    /// with; one that names it (or a new run's) keeps its value.
    #[test]
    fn saved_configs_without_the_shrinkage_keep_the_own_thresholds() {
        let tmp = tempfile::tempdir().unwrap();
        let old = tmp.path().join("old.toml");
        std::fs::write(&old, "method = \"cls\"\ncalibrate_min_positives = 5\n").unwrap();
        let cfg = TrainConfig::read_saved(&old).unwrap();
        assert_eq!((cfg.calibrate_min_positives, cfg.calibrate_shrink), (5, 0.0));
        let new = tmp.path().join("new.toml");
        std::fs::write(&new, "method = \"cls\"\ncalibrate_shrink = 2.5\n").unwrap();
        assert_eq!(TrainConfig::read_saved(&new).unwrap().calibrate_shrink, 2.5);
        // A run saved by this version names it.
        let saved = tmp.path().join("saved.toml");
        std::fs::write(&saved, toml::to_string_pretty(&TrainConfig::default()).unwrap()).unwrap();
        assert_eq!(TrainConfig::read_saved(&saved).unwrap().calibrate_shrink, cls_core::calibrate::DEFAULT_SHRINK);
    }

    #[test]
    fn sizes_and_batches_are_bounded() {
        assert_eq!(parse_size("224").unwrap(), (224, 224));
        for bad in ["0x5", "16384x16384", "4097", "x", "-3"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(eval_batch(224, 224), EVAL_BATCH);
        let b = eval_batch(4096, 4096);
        assert!(b >= 1 && b as u64 * 3 * 4096 * 4096 <= MAX_BATCH_VALUES, "{b}");
        assert!(check_batch_values("b", 1000, (2048, 2048)).is_err());
        assert!(check_batch_values("b", 120, (224, 224)).is_ok());
    }

    #[test]
    fn every_method_knob_reaches_the_method_config() {
        // Defaults agree with MethodConfig's.
        let d = TrainConfig::default().method_config(0.01, 0.05, 3.0).unwrap();
        let m = MethodConfig::default();
        assert_eq!(
            (d.coteach_plus_warmup, d.label_smoothing, d.role_lr_mult),
            (m.coteach_plus_warmup, m.label_smoothing, m.role_lr_mult)
        );
        assert_eq!(
            (d.forget_rate, d.jocor_lambda, d.em_alpha, d.e_k),
            (m.forget_rate, m.jocor_lambda, m.em_alpha, m.e_k)
        );
        // Flags and TOML keys set them.
        let c = Wrap::parse_from([
            "x",
            "--coteach-plus-warmup",
            "4",
            "--label-smoothing",
            "0.2",
            "--role-lr-mult",
            "3",
            "--em-alpha",
            "0.5",
        ])
        .c;
        let got = c.method_config(0.01, 0.05, 3.0).unwrap();
        assert_eq!((got.coteach_plus_warmup, got.label_smoothing, got.role_lr_mult, got.em_alpha), (4, 0.2, 3.0, 0.5));
        let c = TrainConfig::default().with_toml("coteach_plus_warmup = 2\nlabel-smoothing = 0.3\n", "t", &[]).unwrap();
        let got = c.method_config(0.01, 0.05, 3.0).unwrap();
        assert_eq!((got.coteach_plus_warmup, got.label_smoothing), (2, 0.3));
        // Out-of-range values are refused by name.
        let bad = Wrap::parse_from(["x", "--label-smoothing", "1.5"]).c.method_config(0.01, 0.05, 3.0).unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("label_smoothing"));
        let bad = Wrap::parse_from(["x", "--role-lr-mult", "0"]).c.method_config(0.01, 0.05, 3.0).unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("role_lr_mult"));
    }
}
