//! Run folders and checkpoints.
//!
//! ```text
//! RUN_DIR/config.toml          the resolved configuration (what --resume rebuilds from)
//! RUN_DIR/metrics.jsonl        one line per epoch (rewritten from the checkpoint's state.json)
//! RUN_DIR/checkpoint/          the last completed epoch: peer{k}.safetensors (weights and
//!                              batch-norm buffers), adam{k}.safetensors, method.safetensors,
//!                              best-peer{k}.safetensors (each peer at its best epoch so far) and
//!                              state.json (counters, best epochs, every epoch's metrics line)
//! RUN_DIR/best-peer{k}.safetensors   copies of the checkpoint's best weights
//! RUN_DIR/plots/*.png, RUN_DIR/model.onnx, RUN_DIR/summary.json
//! ```
//! A checkpoint is written to `checkpoint.tmp/` and swapped in by renames, so a run killed at
//! any moment leaves a complete previous checkpoint (`checkpoint/`, or `checkpoint.old/` if it
//! died between the two renames). Everything a run records about an epoch is in the checkpoint:
//! what lives outside it (`metrics.jsonl`, the best weights, the plots) is written from it after
//! the swap and brought back in line with it on `--resume`, so after any kill the run folder
//! agrees with its checkpoint.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Tensor;

use crate::runlog::EpochLog;

/// Everything of the loop's progress that is not a tensor.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunState {
    /// Completed epochs.
    pub epochs_done: usize,
    /// Completed optimisation steps (drives the cosine schedule).
    pub steps_done: usize,
    /// Per peer: (best epoch, 1-based; its validation mAP).
    pub best: Vec<Option<(usize, f64)>>,
    /// What the checkpoint was trained as, checked by `--resume` (absent in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<RunShape>,
    /// The metrics line of every completed epoch, in order (`metrics.jsonl` is written from it;
    /// empty in checkpoints of older versions, whose log is then read back from `metrics.jsonl`).
    #[serde(default)]
    pub log: Vec<EpochLog>,
    /// The configuration the checkpoint was trained with (as in `config.toml`; absent in older
    /// checkpoints): `--resume` refuses a `config.toml` that changes what training does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// The [`OBJECTIVE_REVISION`] the checkpoint was trained under (absent: revision 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<u32>,
}

/// The revision of the training objectives. A change of what a method's loss computes (for the
/// same configuration) raises it, and [`CHANGED_OBJECTIVES`] says which methods changed, so that
/// `--resume` refuses to continue such a run under another objective than it started with.
pub const OBJECTIVE_REVISION: u32 = 2;

/// Per revision, the methods whose objective changed on the way to it, and how.
pub const CHANGED_OBJECTIVES: &[(u32, &str, &str)] = &[
    (2, "epr", "the expected-positive regulariser (S̄ − k)² is divided by C"),
    (2, "role", "the expected-positive regulariser (S̄ − k)² is divided by C"),
    (2, "ll-cp", "a constant count of corrections per step from the second epoch"),
    (2, "an-ls", "targets 0.9 / 0.1 (were 0.95 / 0.05)"),
    (2, "asl", "the focal weights are detached (--asl-focal-grad keeps their gradient)"),
];

/// The objective revision of a checkpoint's `state`: recorded since revision 2 was numbered; before
/// that, revision 2 if its configuration has `asl_focal_grad` (the flag came with revision 2's loss
/// changes, a commit before them), else 1.
pub fn objective_revision(state: &RunState) -> u32 {
    state.objective.unwrap_or_else(|| {
        let has = |k: &str| state.config.as_ref().and_then(|c| c.get(k)).is_some();
        if has("asl_focal_grad") {
            2
        } else {
            1
        }
    })
}

/// Why a checkpoint of objective revision `saved` cannot continue as `method` today; None when
/// the method's objective is the same.
pub fn objective_change(method: &str, saved: u32) -> Option<String> {
    let what: Vec<&str> = CHANGED_OBJECTIVES
        .iter()
        .filter(|(rev, m, _)| *m == method && *rev > saved && *rev <= OBJECTIVE_REVISION)
        .map(|(_, _, what)| *what)
        .collect();
    (!what.is_empty()).then(|| what.join("; "))
}

/// The configuration fields that may differ between a checkpoint and the `config.toml` it is
/// resumed with: the documented overrides, where the data and caches are (a moved folder), and
/// what happens after training.
pub const MAY_CHANGE_ON_RESUME: &[&str] = &[
    "epochs",
    "stop_after",
    "device",
    "devices",
    "threads",
    "run_dir",
    "cache_dir",
    "data",
    "images",
    "val",
    "val_images",
    "test",
    "test_images",
    "classes",
    "observed",
    "export",
    "keep_epochs",
    // Neither changes what training computes: the images decoded per step are the cache's, and
    // calibration happens after the last epoch.
    "cache",
    "calibrate_min_positives",
    "calibrate_shrink",
];

/// The fields of `now` that differ from `saved` (both configurations as JSON), other than
/// [`MAY_CHANGE_ON_RESUME`], as `name = now (was saved)`.
pub fn config_changes(saved: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    let (Some(a), Some(b)) = (saved.as_object(), now.as_object()) else {
        return vec!["the whole configuration".into()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    // A key the saved configuration lacks is a flag added since: it had its default then.
    let defaults = serde_json::to_value(crate::config::TrainConfig::default()).unwrap_or_default();
    keys.into_iter()
        .filter(|k| !MAY_CHANGE_ON_RESUME.contains(&k.as_str()))
        .filter_map(|k| {
            let null = &serde_json::Value::Null;
            let x = a.get(k).or_else(|| defaults.get(k)).unwrap_or(null);
            let y = b.get(k).unwrap_or(null);
            (x != y).then(|| format!("{k} = {y} (was {x})"))
        })
        .collect()
}

/// The facts of a run that its checkpoint's tensors depend on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunShape {
    pub method: String,
    pub networks: usize,
    pub backbone: String,
    pub classes: usize,
    pub train_samples: usize,
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

/// Write `ck` as the run's checkpoint: into `checkpoint.tmp/`, then swapped in by renames. On an
/// error `checkpoint.tmp/` is removed and the previous checkpoint stays.
pub fn save(run_dir: &Path, ck: &Checkpoint) -> Result<()> {
    let tmp = run_dir.join("checkpoint.tmp");
    let written = {
        // Removed if a signal stops the process while it is written.
        let _guard = cls_core::fsio::register_temp(&tmp);
        let r = write_checkpoint_dir(run_dir, &tmp, ck);
        if r.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        r
    };
    written?;
    swap_in(run_dir).with_context(|| format!("installing the checkpoint in {}", run_dir.display()))
}

fn write_checkpoint_dir(run_dir: &Path, tmp: &Path, ck: &Checkpoint) -> Result<()> {
    if tmp.exists() {
        std::fs::remove_dir_all(tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for (k, p) in ck.peers.iter().enumerate() {
        save_tensors(&tmp.join(format!("peer{k}.safetensors")), p)?;
    }
    for (k, o) in ck.optimizers.iter().enumerate() {
        save_tensors(&tmp.join(format!("adam{k}.safetensors")), o)?;
    }
    if !ck.method.is_empty() {
        save_tensors(&tmp.join("method.safetensors"), &ck.method)?;
    }
    // Each peer's best weights: this epoch's when it is the best so far, else the previous
    // checkpoint's (files are never changed in place, so a hard link is a copy).
    let previous = latest(run_dir);
    for k in 0..ck.peers.len() {
        let name = best_name(k);
        let dst = tmp.join(&name);
        match ck.state.best.get(k).copied().flatten() {
            Some((epoch, _)) if epoch == ck.state.epochs_done => {
                link_or_copy(&tmp.join(format!("peer{k}.safetensors")), &dst)?
            }
            Some(_) => {
                let src = previous
                    .as_ref()
                    .map(|d| d.join(&name))
                    .filter(|p| p.is_file())
                    .unwrap_or_else(|| run_dir.join(&name));
                if src.is_file() {
                    link_or_copy(&src, &dst)?;
                }
            }
            None => {}
        }
    }
    let state = serde_json::to_vec_pretty(&ck.state).context("serialising the run state")?;
    let path = tmp.join("state.json");
    let mut f = std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(&state).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", path.display()))?;
    sync_dir(tmp);
    Ok(())
}

/// `checkpoint.tmp/` becomes `checkpoint/`; at every moment `checkpoint/` or `checkpoint.old/` is
/// a complete checkpoint (the one [`latest`] finds).
fn swap_in(run_dir: &Path) -> Result<()> {
    let tmp = run_dir.join("checkpoint.tmp");
    let cur = run_dir.join("checkpoint");
    let old = run_dir.join("checkpoint.old");
    if cur.exists() {
        // `checkpoint/` is complete, so `checkpoint.old/` is not needed.
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(&cur, &old)?;
    }
    // Without `checkpoint/`, `checkpoint.old/` (if any) is the latest complete one: it stays
    // until its successor is in place.
    std::fs::rename(&tmp, &cur)?;
    sync_dir(run_dir);
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    if std::fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    std::fs::copy(src, dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    Ok(())
}

/// `best-peer{k}.safetensors`.
pub fn best_name(k: usize) -> String {
    format!("best-peer{k}.safetensors")
}

/// Peer `k`'s weights at its best epoch: the checkpoint's, or (checkpoints of older versions) the
/// copy in the run folder.
pub fn best_file(run_dir: &Path, k: usize) -> PathBuf {
    latest(run_dir).map(|d| d.join(best_name(k))).filter(|p| p.is_file()).unwrap_or_else(|| run_dir.join(best_name(k)))
}

/// Copy the checkpoint's best weights of the peers in `peers` to `RUN_DIR/best-peer{k}.safetensors`
/// where that file differs (nothing is written for a file that already agrees).
pub fn publish_best(run_dir: &Path, peers: impl IntoIterator<Item = usize>) -> Result<()> {
    let Some(dir) = latest(run_dir) else { return Ok(()) };
    for k in peers {
        let src = dir.join(best_name(k));
        if !src.is_file() {
            continue;
        }
        let dst = run_dir.join(best_name(k));
        let same = |a: &Path, b: &Path| -> bool {
            let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else { return false };
            ma.len() == mb.len() && std::fs::read(a).ok() == std::fs::read(b).ok()
        };
        if same(&src, &dst) {
            continue;
        }
        cls_core::fsio::write_via_path(&dst, |tmp| {
            std::fs::copy(&src, tmp).with_context(|| format!("writing {}", dst.display()))?;
            Ok(())
        })?;
    }
    Ok(())
}

/// The folder of the last complete checkpoint, if any.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    ["checkpoint", "checkpoint.old"].iter().map(|n| run_dir.join(n)).find(|d| d.join("state.json").is_file())
}

/// The state of the checkpoint in `dir` (from [`latest`]).
pub fn read_state(dir: &Path) -> Result<RunState> {
    let p = dir.join("state.json");
    let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("reading {}", p.display()))
}

/// How many networks the checkpoint in `dir` holds (`peer0.safetensors`, `peer1.safetensors`, ...).
pub fn peer_count(dir: &Path) -> usize {
    (0..).take_while(|k| dir.join(format!("peer{k}.safetensors")).is_file()).count()
}

/// The last checkpoint of a run that trains `n_peers` networks; refused when it holds another
/// number of networks.
pub fn load(run_dir: &Path, n_peers: usize) -> Result<Checkpoint> {
    let Some(dir) = latest(run_dir) else { bail!("{}: no checkpoint to resume from", run_dir.display()) };
    let state = read_state(&dir)?;
    let saved = peer_count(&dir);
    if saved != n_peers {
        bail!(
            "{} holds {saved} network(s), but the configuration trains {n_peers}: config.toml does not match the checkpoint",
            dir.display()
        );
    }
    let peers = (0..n_peers).map(|k| load_tensors(&dir.join(format!("peer{k}.safetensors")))).collect::<Result<_>>()?;
    let optimizers =
        (0..n_peers).map(|k| load_tensors(&dir.join(format!("adam{k}.safetensors")))).collect::<Result<_>>()?;
    let m = dir.join("method.safetensors");
    let method = if m.exists() { load_tensors(&m)? } else { vec![] };
    Ok(Checkpoint { state, peers, optimizers, method })
}

/// Refuse `saved` unless it has exactly the names and shapes of `expected` (the tensors the run's
/// configuration builds); `what` names them in the message.
pub fn check_same_tensors(what: &str, saved: &[(String, Tensor)], expected: &[(String, Tensor)]) -> Result<()> {
    let map: std::collections::HashMap<&str, &Tensor> = saved.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for (name, want) in expected {
        let Some(got) = map.get(name.as_str()) else {
            bail!("{what}: the checkpoint lacks '{name}', which the configured network has");
        };
        if got.size() != want.size() {
            bail!(
                "{what}: '{name}' has shape {:?} in the checkpoint but {:?} in the configured network",
                got.size(),
                want.size()
            );
        }
    }
    if saved.len() != expected.len() {
        let names: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        let extra = saved.iter().map(|(n, _)| n.as_str()).find(|n| !names.contains(n)).unwrap_or("?");
        bail!("{what}: the checkpoint has '{extra}', which the configured network lacks");
    }
    Ok(())
}

/// Copy named tensors into a VarStore's variables; the names and shapes must be exactly the
/// VarStore's.
pub fn restore_vars(vs: &tch::nn::VarStore, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    check_same_tensors("weights", tensors, &vars)?;
    let map: std::collections::HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    tch::no_grad(|| -> Result<()> {
        for (name, var) in vars.iter_mut() {
            let Some(src) = map.get(name.as_str()) else { bail!("checkpoint lacks '{name}'") };
            var.f_copy_(&src.to_device(var.device()).to_kind(var.kind()))
                .with_context(|| format!("restoring '{name}'"))?;
        }
        Ok(())
    })
}

pub fn named_vars(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The text of `RUN_DIR/config.toml` for `cfg`: everything but `--stop-after`, which is for one
/// invocation.
pub fn config_text(cfg: &crate::config::TrainConfig) -> Result<String> {
    let mut cfg = cfg.clone();
    cfg.stop_after = None;
    toml::to_string_pretty(&cfg).context("serialising the configuration")
}

/// Save the resolved configuration as RUN_DIR/config.toml, unless the file already holds exactly
/// that (nothing is written then: a `--resume` on a full disk gets as far as it can). Returns
/// whether it wrote.
pub fn save_config(cfg: &crate::config::TrainConfig, run_dir: &Path) -> Result<bool> {
    let text = config_text(cfg)?;
    let path = run_dir.join("config.toml");
    if std::fs::read(&path).is_ok_and(|b| b == text.as_bytes()) {
        return Ok(false);
    }
    write_atomic(&path, text.as_bytes())?;
    Ok(true)
}

/// The weights of `peer` after `epoch` (1-based), kept with `--keep-epochs`.
pub fn epoch_file(run_dir: &Path, epoch: usize, peer: usize) -> PathBuf {
    run_dir.join("epochs").join(format!("epoch-{epoch:03}-peer{peer}.safetensors"))
}
