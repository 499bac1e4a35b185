//! Run folders and checkpoints.
//!
//! ```text
//! RUN_DIR/config.toml          the resolved configuration (what --resume rebuilds from)
//! RUN_DIR/metrics.jsonl        one line per epoch
//! RUN_DIR/checkpoint/          the last completed epoch: peer{k}.safetensors (weights and
//!                              batch-norm buffers), adam{k}.safetensors, method.safetensors, state.json
//! RUN_DIR/best-peer{k}.safetensors   each peer's weights at its best validation mAP
//! RUN_DIR/plots/*.png, RUN_DIR/model.onnx, RUN_DIR/summary.json
//! ```
//! A checkpoint is written to `checkpoint.tmp/` and swapped in by renames, so a run killed at
//! any moment leaves a complete previous checkpoint (`checkpoint/`, or `checkpoint.old/` if it
//! died between the two renames).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Everything of the loop's progress that is not a tensor.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunState {
    /// Completed epochs.
    pub epochs_done: usize,
    /// Completed optimisation steps (drives the cosine schedule).
    pub steps_done: usize,
    /// Per peer: (best epoch, 1-based; its validation mAP).
    pub best: Vec<Option<(usize, f64)>>,
}

pub struct Checkpoint {
    pub state: RunState,
    pub peers: Vec<Vec<(String, Tensor)>>,
    pub optimizers: Vec<Vec<(String, Tensor)>>,
    pub method: Vec<(String, Tensor)>,
}

/// Write a whole file atomically (`cls_core::fsio`: synced, renamed into place, the temporary
/// file removed on an error or a signal).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    cls_core::fsio::write_atomic(path, bytes)
}

/// Write named tensors as safetensors, atomically.
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let cpu: Vec<(String, Tensor)> =
        tensors.iter().map(|(n, t)| (n.clone(), t.detach().to_device(tch::Device::Cpu).contiguous())).collect();
    cls_core::fsio::write_via_path(path, |tmp| {
        Tensor::write_safetensors(&cpu, tmp).with_context(|| format!("writing {}", path.display()))
    })
}

pub fn load_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Tensor::read_safetensors(path).with_context(|| format!("reading {}", path.display()))
}

pub fn save(run_dir: &Path, ck: &Checkpoint) -> Result<()> {
    let tmp = run_dir.join("checkpoint.tmp");
    let cur = run_dir.join("checkpoint");
    let old = run_dir.join("checkpoint.old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    for (k, p) in ck.peers.iter().enumerate() {
        save_tensors(&tmp.join(format!("peer{k}.safetensors")), p)?;
    }
    for (k, o) in ck.optimizers.iter().enumerate() {
        save_tensors(&tmp.join(format!("adam{k}.safetensors")), o)?;
    }
    if !ck.method.is_empty() {
        save_tensors(&tmp.join("method.safetensors"), &ck.method)?;
    }
    std::fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(&ck.state)?)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    if cur.exists() {
        std::fs::rename(&cur, &old)?;
    }
    std::fs::rename(&tmp, &cur)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// The folder of the last complete checkpoint, if any.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    ["checkpoint", "checkpoint.old"].iter().map(|n| run_dir.join(n)).find(|d| d.join("state.json").is_file())
}

pub fn load(run_dir: &Path, n_peers: usize) -> Result<Checkpoint> {
    let Some(dir) = latest(run_dir) else { bail!("{}: no checkpoint to resume from", run_dir.display()) };
    let state: RunState = serde_json::from_slice(&std::fs::read(dir.join("state.json"))?)
        .with_context(|| format!("reading {}", dir.join("state.json").display()))?;
    let peers = (0..n_peers).map(|k| load_tensors(&dir.join(format!("peer{k}.safetensors")))).collect::<Result<_>>()?;
    let optimizers =
        (0..n_peers).map(|k| load_tensors(&dir.join(format!("adam{k}.safetensors")))).collect::<Result<_>>()?;
    let m = dir.join("method.safetensors");
    let method = if m.exists() { load_tensors(&m)? } else { vec![] };
    Ok(Checkpoint { state, peers, optimizers, method })
}

/// Copy named tensors into a VarStore's variables; every variable must be present.
pub fn restore_vars(vs: &tch::nn::VarStore, tensors: &[(String, Tensor)]) -> Result<()> {
    let map: std::collections::HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut vars = vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (name, var) in vars.iter_mut() {
            let Some(src) = map.get(name.as_str()) else { bail!("checkpoint lacks '{name}'") };
            var.copy_(&src.to_device(var.device()).to_kind(var.kind()));
        }
        Ok(())
    })
}

pub fn named_vars(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Save the resolved configuration as RUN_DIR/config.toml.
pub fn save_config(cfg: &crate::config::TrainConfig, run_dir: &Path) -> Result<()> {
    let text = toml::to_string_pretty(cfg).context("serialising the configuration")?;
    write_atomic(&run_dir.join("config.toml"), text.as_bytes())
}
