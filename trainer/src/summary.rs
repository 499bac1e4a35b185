//! The end of a run: pick the better peer by validation mAP at its best epoch (method.md,
//! "Paper defaults"), choose decision thresholds on the validation split (`thresholds.rs`),
//! evaluate the exported model on validation and test both at 0.5 and at those thresholds, export
//! it to `model.onnx` (the thresholds in its metadata) and write `thresholds.json` and
//! `summary.json` = `{"method", "best_peer", "best_epoch", "val": {metrics at 0.5}, "test": {...},
//! "val_calibrated": {metrics at the thresholds}, "test_calibrated": {...}, "thresholds": {...}}`.

use anyhow::{bail, Context, Result};
use cls_core::calibrate::Calibration;
use cls_core::metrics::{self, Metrics};
use cls_models::{export_onnx, Arch, ExportMeta};
use ndarray::Array2;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tch::Device;

use crate::checkpoint::{self, RunState};
use crate::config::TrainConfig;
use crate::data::RunData;
use crate::inputs::{Inputs, IMAGENET_MEAN, IMAGENET_STD};
use crate::rundir::RunLock;
use crate::setup::{self, image_sizes};
use crate::thresholds::{self, ThresholdsSummary};
use crate::train::{evaluate, predict, Peer};

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Summary {
    pub method: String,
    pub best_peer: usize,
    pub best_epoch: usize,
    pub export: String,
    /// Validation metrics at threshold 0.5.
    pub val: Metrics,
    /// Test metrics at threshold 0.5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<Metrics>,
    /// Validation metrics at the calibrated thresholds (chosen on this split: optimistic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_calibrated: Option<Metrics>,
    /// Test metrics at the calibrated thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_calibrated: Option<Metrics>,
    /// The calibrated thresholds (absent in summaries of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<ThresholdsSummary>,
    pub partial: String,
    pub realised_fraction: f64,
    /// Images that lost every positive to the protocol and got one back.
    #[serde(default)]
    pub restored_images: usize,
    pub model: PathBuf,
    /// Epochs the exported weights' run had completed, of `epochs` configured (absent in
    /// summaries of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs_done: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
}

impl Summary {
    /// Whether the summary is of a run that completed all its epochs (older summaries, which do not
    /// say, are taken as finished: only finished runs wrote one then).
    pub fn finished(&self) -> bool {
        match (self.epochs_done, self.epochs) {
            (Some(done), Some(all)) => done >= all,
            _ => true,
        }
    }
}

/// The summary of the run in `run_dir` if the run is finished: `summary.json` says so and, when
/// they can be read, its checkpoint has completed the epochs its `config.toml` asks for (a run
/// extended with `--resume --epochs`, or a summary an older version wrote on exporting an
/// unfinished run, is not finished). An unreadable `summary.json` is an error.
pub fn finished_summary(run_dir: &Path) -> Result<Option<Summary>> {
    let path = run_dir.join("summary.json");
    let Ok(bytes) = std::fs::read(&path) else { return Ok(None) };
    let s: Summary = serde_json::from_slice(&bytes).with_context(|| format!("{}", path.display()))?;
    let epochs = TrainConfig::default().with_file(&run_dir.join("config.toml"), &[]).ok().map(|c| c.epochs);
    let done = checkpoint::latest(run_dir).and_then(|d| checkpoint::read_state(&d).ok()).map(|st| st.epochs_done);
    let complete = match (done, epochs) {
        (Some(d), Some(e)) => d >= e,
        _ => true,
    };
    Ok((s.finished() && complete).then_some(s))
}

/// Which saved weights to export: each peer's best epoch (the default), the last checkpoint, or
/// one epoch kept by `--keep-epochs`.
#[derive(Debug, Clone, PartialEq)]
pub enum Weights {
    Best,
    Last,
    Epoch(usize),
}

impl std::str::FromStr for Weights {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "best" => Ok(Weights::Best),
            "last" => Ok(Weights::Last),
            n => n.parse().map(Weights::Epoch).map_err(|_| format!("'{s}': expected best, last or an epoch number")),
        }
    }
}

impl Weights {
    fn file(&self, run_dir: &Path, peer: usize) -> Result<PathBuf> {
        let f = match self {
            Weights::Best => checkpoint::best_file(run_dir, peer),
            Weights::Last => {
                checkpoint::latest(run_dir).context("no checkpoint")?.join(format!("peer{peer}.safetensors"))
            }
            Weights::Epoch(e) => checkpoint::epoch_file(run_dir, *e, peer),
        };
        if !f.is_file() {
            let kept: Vec<String> = std::fs::read_dir(run_dir.join("epochs"))
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            bail!(
                "{} does not exist (epochs are kept only with --keep-epochs; kept here: {})",
                f.display(),
                if kept.is_empty() { "none".to_string() } else { kept.join(", ") }
            );
        }
        Ok(f)
    }
}

/// Which peer had the higher validation mAP at its best epoch.
pub fn better_peer(state: &RunState) -> Result<(usize, usize)> {
    state
        .best
        .iter()
        .enumerate()
        .filter_map(|(k, b)| b.map(|(e, m)| (k, e, m)))
        .max_by(|a, b| a.2.total_cmp(&b.2).then(b.0.cmp(&a.0)))
        .map(|(k, e, _)| (k, e))
        .context("no validation result recorded: the run has no completed epoch")
}

#[allow(clippy::too_many_arguments)]
pub fn finish(
    cfg: &TrainConfig,
    run_dir: &Path,
    arch: &Arch,
    data: &RunData,
    peers: &mut [Peer],
    state: &RunState,
    val_inputs: &Inputs,
    test_inputs: Option<&Inputs>,
    head_only: bool,
    devices: &[Device],
    model: &Path,
    which: &Weights,
) -> Result<()> {
    // Every peer back to the chosen weights, and the better of them.
    for (k, p) in peers.iter_mut().enumerate() {
        let f = which.file(run_dir, k)?;
        checkpoint::restore_vars(&p.vs, &checkpoint::load_tensors(&f)?)?;
    }
    let (best_peer, best_epoch) = match which {
        Weights::Best => better_peer(state)?,
        Weights::Last | Weights::Epoch(_) => {
            let epoch = if let Weights::Epoch(e) = which { *e } else { state.epochs_done };
            let mut maps = Vec::new();
            for (k, p) in peers.iter().enumerate() {
                maps.push(evaluate(p, val_inputs, &data.val.targets, head_only, devices[k])?.map);
            }
            let k = (0..maps.len()).max_by(|&a, &b| maps[a].total_cmp(&maps[b]).then(b.cmp(&a))).unwrap_or(0);
            (k, epoch)
        }
    };
    let ensemble = match cfg.export.as_str() {
        "better" => false,
        "ensemble" => {
            if peers.len() < 2 {
                bail!("--export ensemble needs a two-network method; {} trains one", cfg.method);
            }
            true
        }
        other => bail!("--export {other}: expected better or ensemble"),
    };
    let chosen: Vec<usize> = if ensemble { (0..peers.len()).collect() } else { vec![best_peer] };
    // The exported model's probabilities: the better peer's, or the mean of the peers' (the
    // ensemble graph computes the same mean).
    let probabilities = |inputs: &Inputs| -> Result<Array2<f32>> {
        let mut sum: Option<Array2<f32>> = None;
        for &k in &chosen {
            let p = predict(&peers[k], inputs, head_only, devices[k])?;
            sum = Some(match sum {
                Some(s) => s + p,
                None => p,
            });
        }
        let sum = sum.context("no network to evaluate")?;
        Ok(if chosen.len() > 1 { sum / chosen.len() as f32 } else { sum })
    };
    let metrics_at = |probs: &Array2<f32>, truth: &Array2<i8>, cal: Option<&Calibration>| -> Result<Metrics> {
        let r = match cal {
            Some(c) => metrics::evaluate_with(probs.view(), truth.view(), c.global, Some(&c.per_class)),
            None => metrics::evaluate(probs.view(), truth.view(), 0.5),
        };
        r.map_err(|e| anyhow::anyhow!("evaluation: {e}"))
    };
    let val_probs = probabilities(val_inputs)?;
    let cal = thresholds::choose(
        val_probs.view(),
        data.val.targets.view(),
        cfg.calibrate_min_positives,
        cfg.calibrate_shrink,
    )?;
    let val = metrics_at(&val_probs, &data.val.targets, None)?;
    let val_calibrated = metrics_at(&val_probs, &data.val.targets, Some(&cal))?;
    let (test, test_calibrated) = match (test_inputs, &data.test) {
        (Some(inp), Some(ds)) => {
            let probs = probabilities(inp)?;
            (Some(metrics_at(&probs, &ds.targets, None)?), Some(metrics_at(&probs, &ds.targets, Some(&cal))?))
        }
        _ => (None, None),
    };

    let meta =
        export_meta(cfg, run_dir, arch, data, &val, test.as_ref(), &cal, &val_calibrated, test_calibrated.as_ref())?;
    let nets: Vec<_> = chosen.iter().map(|&k| (&peers[k].net, &peers[k].vs)).collect();
    export_onnx(&nets, arch, &meta, model).context("exporting model.onnx")?;
    let thresholds_file = thresholds_path(run_dir, model);
    thresholds::write(&thresholds_file, data.train.classes.names(), &cal)?;

    let summary = Summary {
        method: cfg.method.to_string(),
        best_peer,
        best_epoch,
        export: cfg.export.to_string(),
        val,
        test,
        val_calibrated: Some(val_calibrated),
        test_calibrated,
        thresholds: Some(thresholds::summarise(&cal, data.val_unknown_as_negative, &thresholds_file)),
        partial: cfg.partial.clone(),
        realised_fraction: data.observed.realised_fraction,
        restored_images: data.observed.n_restored,
        model: model.to_path_buf(),
        epochs_done: Some(state.epochs_done),
        epochs: Some(cfg.epochs),
    };
    let summary_path = summary_path(run_dir, model);
    checkpoint::write_atomic(&summary_path, serde_json::to_string_pretty(&summary)?.as_bytes())?;
    eprintln!("best: peer {best_peer} at epoch {best_epoch}");
    let shrunk = if cal.shrink > 0.0 { format!(" shrunk toward it by {}", cal.shrink) } else { String::new() };
    let at = format!(
        "calibrated thresholds (global {:.3}; {} classes with their own{shrunk}, {} at the global one)",
        cal.global,
        cal.fallback.iter().filter(|&&f| !f).count(),
        cal.fallback.iter().filter(|&&f| f).count()
    );
    eprintln!("validation at 0.5:\n{}", summary.val.table());
    if let Some(v) = &summary.val_calibrated {
        eprintln!("validation at the {at}, chosen on it:\n{}", v.table());
    }
    if let Some(t) = &summary.test {
        eprintln!("test at 0.5:\n{}", t.table());
    }
    if let Some(t) = &summary.test_calibrated {
        eprintln!("test at the {at}:\n{}", t.table());
    }
    if data.val_unknown_as_negative > 0 {
        eprintln!(
            "warning: the thresholds are conservative: {} classes had no verified negative in validation, their \
             unknown entries counted as negatives",
            data.val_unknown_as_negative
        );
    }
    eprintln!("exported {} (thresholds in its metadata and in {})", model.display(), thresholds_file.display());
    Ok(())
}

/// The ONNX metadata: what inference needs (classes, size, normalisation, threshold) and what
/// a reader of the file wants to know (method, backbone, data, protocol, metrics, config hash).
#[allow(clippy::too_many_arguments)]
pub fn export_meta(
    cfg: &TrainConfig,
    run_dir: &Path,
    arch: &Arch,
    data: &RunData,
    val: &Metrics,
    test: Option<&Metrics>,
    cal: &Calibration,
    val_calibrated: &Metrics,
    test_calibrated: Option<&Metrics>,
) -> Result<ExportMeta> {
    let (_, _, eval) = image_sizes(cfg)?;
    let (height, width) = if arch.is_image() { (eval.0 as i64, eval.1 as i64) } else { (0, 0) };
    let config = std::fs::read(run_dir.join("config.toml")).unwrap_or_default();
    let brief = |m: &Metrics| serde_json::json!({"mAP": m.map, "CF1": m.cf1, "OF1": m.of1}).to_string();
    let mut extra = vec![
        ("method".to_string(), cfg.method.to_string()),
        ("backbone".to_string(), arch.name()),
        ("dataset".to_string(), data.train.name.clone()),
        ("partial".to_string(), cfg.partial.clone()),
        ("export".to_string(), cfg.export.to_string()),
        ("val_metrics".to_string(), brief(val)),
        ("config_sha256".to_string(), hex::encode(Sha256::digest(&config))),
    ];
    if let Some(t) = test {
        extra.push(("test_metrics".to_string(), brief(t)));
    }
    extra.push(("val_metrics_calibrated".to_string(), brief(val_calibrated)));
    if let Some(t) = test_calibrated {
        extra.push(("test_metrics_calibrated".to_string(), brief(t)));
    }
    extra.push(("calibrate_min_positives".to_string(), cal.min_positives.to_string()));
    extra.push(("calibrate_shrink".to_string(), cal.shrink.to_string()));
    Ok(ExportMeta {
        classes: data.train.classes.names().to_vec(),
        height,
        width,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
        threshold: cal.global,
        thresholds: Some(cal.per_class.clone()),
        class_ids: data.class_ids.clone(),
        extra,
    })
}

/// Where the summary of an export to `model` goes: the run's `summary.json` for the run's own
/// `model.onnx`; a re-export elsewhere gets its own summary beside the model, and the run's stays
/// as it is.
pub fn summary_path(run_dir: &Path, model: &Path) -> PathBuf {
    if is_runs_model(run_dir, model) {
        run_dir.join("summary.json")
    } else {
        model.with_extension("summary.json")
    }
}

/// Where the thresholds of an export to `model` go: the run's `thresholds.json` for the run's own
/// `model.onnx`, else `<model stem>.thresholds.json` beside the model.
pub fn thresholds_path(run_dir: &Path, model: &Path) -> PathBuf {
    if is_runs_model(run_dir, model) {
        run_dir.join(thresholds::FILE)
    } else {
        model.with_extension(thresholds::FILE)
    }
}

/// Whether `model` is `RUN_DIR/model.onnx`, however spelled.
fn is_runs_model(run_dir: &Path, model: &Path) -> bool {
    let own = run_dir.join("model.onnx");
    if model == own {
        return true;
    }
    let canon = |p: &Path| -> Option<PathBuf> {
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Some(parent.canonicalize().ok()?.join(p.file_name()?))
    };
    matches!((canon(model), canon(&own)), (Some(a), Some(b)) if a == b)
}

/// Refuse an output that would take a name the run folder keeps for its own files (existing or
/// not yet written): its configuration, log, summary, lock, best weights, or anything in its
/// checkpoint, epochs and plots folders.
fn refuse_run_names(flag: &str, run_dir: &Path, out: &Path) -> Result<()> {
    for sub in ["checkpoint", "checkpoint.old", "checkpoint.tmp", "epochs", "plots"] {
        cls_core::fsio::refuse_inside(flag, out, "the run's folder", &run_dir.join(sub))?;
    }
    let canon = |p: &Path| p.canonicalize().ok();
    let parent = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let in_run = canon(parent).is_some() && canon(parent) == canon(run_dir);
    let kept = ["config.toml", "metrics.jsonl", "summary.json", thresholds::FILE, crate::rundir::LOCK_NAME];
    if in_run && (kept.contains(&name.as_str()) || name.starts_with("best-peer")) {
        bail!("{flag} {}: the run folder keeps that name for its own file; choose another", out.display());
    }
    Ok(())
}

/// Every file of a run folder that an export reads or must leave alone.
fn run_files(run_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for sub in ["", "checkpoint", "checkpoint.old", "epochs", "plots"] {
        let dir = if sub.is_empty() { run_dir.to_path_buf() } else { run_dir.join(sub) };
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        files.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
    }
    files
}

/// `cls-train export RUN_DIR`: rebuild the run's networks, load each peer's best weights and
/// export again (to `out`, default RUN_DIR/model.onnx), optionally as the other export kind or
/// with the thresholds calibrated again with other settings (`--calibrate-min-positives`,
/// `--calibrate-shrink`: recorded in the summary and the model's metadata, and in config.toml
/// when the run's own model is written again, so that a later export or `--resume` keeps them).
///
/// Everything is checked before the networks are built: the export kind, the weights asked for,
/// the output (writable, not a file of the run). An unfinished run can be exported only with
/// `--out` elsewhere: the run's own `model.onnx` and `summary.json` mean a finished run.
pub fn reexport(
    run_dir: &Path,
    out: Option<&Path>,
    export: Option<&str>,
    which: &Weights,
    (min_positives, shrink): (Option<usize>, Option<f64>),
) -> Result<()> {
    if let Some(e) = export.filter(|e| !matches!(*e, "better" | "ensemble")) {
        bail!("--export {e}: expected better or ensemble");
    }
    let saved = run_dir.join("config.toml");
    if !saved.is_file() {
        bail!("{} is not a run folder (it has no config.toml)", run_dir.display());
    }
    let _lock = RunLock::open(run_dir)?;
    let mut cfg =
        TrainConfig::read_saved(&saved).with_context(|| format!("{} is not a run folder", run_dir.display()))?;
    if let Some(e) = export {
        cfg.export = e.parse()?;
    }
    if let Some(m) = min_positives {
        cfg.calibrate_min_positives = m;
    }
    if let Some(k) = shrink {
        cfg.calibrate_shrink = k;
    }
    cfg.validate().with_context(|| format!("{}", saved.display()))?;
    let ck_dir = checkpoint::latest(run_dir)
        .with_context(|| format!("{}: no checkpoint (the run has not completed an epoch)", run_dir.display()))?;
    let state = checkpoint::read_state(&ck_dir)?;
    let model = out.map_or_else(|| run_dir.join("model.onnx"), Path::to_path_buf);
    if state.epochs_done < cfg.epochs && is_runs_model(run_dir, &model) {
        bail!(
            "{} is unfinished (epoch {} of {}): its model.onnx and summary.json are written when it finishes \
             (cls-train --resume {0}); to export it as it is now, give --out FILE outside the run folder's own names",
            run_dir.display(),
            state.epochs_done,
            cfg.epochs
        );
    }
    if let Weights::Epoch(e) = which {
        if *e == 0 || *e > state.epochs_done {
            bail!("--checkpoint {e}: the run has completed {} epoch(s)", state.epochs_done);
        }
    }
    let summary = summary_path(run_dir, &model);
    let thresholds_file = thresholds_path(run_dir, &model);
    cls_core::fsio::check_output("--out", &model)?;
    if !is_runs_model(run_dir, &model) {
        refuse_run_names("--out", run_dir, &model)?;
        refuse_run_names("--out (its summary)", run_dir, &summary)?;
        refuse_run_names("--out (its thresholds)", run_dir, &thresholds_file)?;
    }
    let own = [run_dir.join("model.onnx"), run_dir.join("summary.json"), run_dir.join(thresholds::FILE)];
    let inputs: Vec<PathBuf> =
        run_files(run_dir).into_iter().filter(|p| !(is_runs_model(run_dir, &model) && own.contains(p))).collect();
    let inputs: Vec<(&str, &Path)> = inputs.iter().map(|p| ("a file of the run", p.as_path())).collect();
    cls_core::fsio::refuse_overlap(
        &[("--out", &model), ("the summary of --out", &summary), ("the thresholds of --out", &thresholds_file)],
        &inputs,
    )?;
    let mut s = setup::prepare(&cfg)?;
    finish(
        &cfg,
        run_dir,
        &s.arch,
        &s.data,
        &mut s.peers,
        &state,
        &s.val_inputs,
        s.test_inputs.as_ref(),
        s.head_only,
        &s.devices,
        &model,
        which,
    )?;
    // The run's own model now follows other calibration settings: config.toml records them.
    // Only they: `--export` applies to this export alone.
    if is_runs_model(run_dir, &model) && (min_positives.is_some() || shrink.is_some()) {
        let mut recorded = TrainConfig::read_saved(&saved)?;
        recorded.calibrate_min_positives = cfg.calibrate_min_positives;
        recorded.calibrate_shrink = cfg.calibrate_shrink;
        checkpoint::save_config(&recorded, run_dir)?;
    }
    Ok(())
}
