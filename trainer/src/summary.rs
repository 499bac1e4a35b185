//! The end of a run: pick the better peer by validation mAP at its best epoch (method.md,
//! "Paper defaults"), evaluate it on the test split, export it to `model.onnx`, and write
//! `summary.json` = `{"method", "best_peer", "best_epoch", "val": {metrics}, "test": {metrics}}`.

use anyhow::{bail, Context, Result};
use cls_core::metrics::Metrics;
use cls_models::{export_onnx, Arch, ExportMeta};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tch::Device;

use crate::checkpoint::{self, RunState};
use crate::config::TrainConfig;
use crate::data::RunData;
use crate::inputs::{Inputs, IMAGENET_MEAN, IMAGENET_STD};
use crate::setup::{self, image_sizes};
use crate::train::{evaluate, Peer};

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Summary {
    pub method: String,
    pub best_peer: usize,
    pub best_epoch: usize,
    pub export: String,
    pub val: Metrics,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<Metrics>,
    pub partial: String,
    pub realised_fraction: f64,
    pub model: PathBuf,
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
            Weights::Best => run_dir.join(format!("best-peer{peer}.safetensors")),
            Weights::Last => {
                checkpoint::latest(run_dir).context("no checkpoint")?.join(format!("peer{peer}.safetensors"))
            }
            Weights::Epoch(e) => epoch_file(run_dir, *e, peer),
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

/// The weights of `peer` after `epoch` (1-based), kept with `--keep-epochs`.
pub fn epoch_file(run_dir: &Path, epoch: usize, peer: usize) -> PathBuf {
    run_dir.join("epochs").join(format!("epoch-{epoch:03}-peer{peer}.safetensors"))
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
    let val = evaluate(&peers[best_peer], val_inputs, &data.val.targets, head_only, devices[best_peer])?;
    let test = match (test_inputs, &data.test) {
        (Some(inp), Some(ds)) => Some(evaluate(&peers[best_peer], inp, &ds.targets, head_only, devices[best_peer])?),
        _ => None,
    };

    let chosen: Vec<&Peer> = if ensemble { peers.iter().collect() } else { vec![&peers[best_peer]] };
    let meta = export_meta(cfg, run_dir, arch, data, &val, test.as_ref())?;
    let nets: Vec<_> = chosen.iter().map(|p| (&p.net, &p.vs)).collect();
    export_onnx(&nets, arch, &meta, model).context("exporting model.onnx")?;

    let summary = Summary {
        method: cfg.method.clone(),
        best_peer,
        best_epoch,
        export: cfg.export.clone(),
        val,
        test,
        partial: cfg.partial.clone(),
        realised_fraction: data.observed.realised_fraction,
        model: model.to_path_buf(),
    };
    // A re-export elsewhere gets its own summary beside the model; the run's stays as it is.
    let summary_path = if model == run_dir.join("model.onnx") {
        run_dir.join("summary.json")
    } else {
        model.with_extension("summary.json")
    };
    checkpoint::write_atomic(&summary_path, serde_json::to_string_pretty(&summary)?.as_bytes())?;
    eprintln!("best: peer {best_peer} at epoch {best_epoch}");
    eprintln!("validation:\n{}", summary.val.table());
    if let Some(t) = &summary.test {
        eprintln!("test:\n{}", t.table());
    }
    eprintln!("exported {}", model.display());
    Ok(())
}

/// The ONNX metadata: what inference needs (classes, size, normalisation, threshold) and what
/// a reader of the file wants to know (method, backbone, data, protocol, metrics, config hash).
pub fn export_meta(
    cfg: &TrainConfig,
    run_dir: &Path,
    arch: &Arch,
    data: &RunData,
    val: &Metrics,
    test: Option<&Metrics>,
) -> Result<ExportMeta> {
    let (_, _, eval) = image_sizes(cfg)?;
    let (height, width) = if arch.is_image() { (eval.0 as i64, eval.1 as i64) } else { (0, 0) };
    let config = std::fs::read(run_dir.join("config.toml")).unwrap_or_default();
    let brief = |m: &Metrics| serde_json::json!({"mAP": m.map, "CF1": m.cf1, "OF1": m.of1}).to_string();
    let mut extra = vec![
        ("method".to_string(), cfg.method.clone()),
        ("backbone".to_string(), arch.name()),
        ("dataset".to_string(), data.train.name.clone()),
        ("partial".to_string(), cfg.partial.clone()),
        ("export".to_string(), cfg.export.clone()),
        ("val_metrics".to_string(), brief(val)),
        ("config_sha256".to_string(), hex::encode(Sha256::digest(&config))),
    ];
    if let Some(t) = test {
        extra.push(("test_metrics".to_string(), brief(t)));
    }
    Ok(ExportMeta {
        classes: data.train.classes.names().to_vec(),
        height,
        width,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
        threshold: 0.5,
        extra,
    })
}

/// `cls-train export RUN_DIR`: rebuild the run's networks, load each peer's best weights and
/// export again (to `out`, default RUN_DIR/model.onnx), optionally as the other export kind.
pub fn reexport(run_dir: &Path, out: Option<&Path>, export: Option<&str>, which: &Weights) -> Result<()> {
    let saved = run_dir.join("config.toml");
    let mut cfg = TrainConfig::default()
        .with_file(&saved, &[])
        .with_context(|| format!("{} is not a run folder", run_dir.display()))?;
    if let Some(e) = export {
        cfg.export = e.to_string();
    }
    let ck = checkpoint::load(run_dir, 0)?;
    let mut s = setup::prepare(&cfg)?;
    let model = out.map_or_else(|| run_dir.join("model.onnx"), Path::to_path_buf);
    finish(
        &cfg,
        run_dir,
        &s.arch,
        &s.data,
        &mut s.peers,
        &ck.state,
        &s.val_inputs,
        s.test_inputs.as_ref(),
        s.head_only,
        &s.devices,
        &model,
        which,
    )
}
