//! The per-epoch log of a run: the lines of `RUN_DIR/metrics.jsonl`.
//!
//! The lines are part of the checkpoint (`state.json` holds every epoch's line up to the
//! checkpoint's epoch), and `metrics.jsonl` is rewritten whole from them, atomically, after each
//! checkpoint: a run killed at any moment leaves a `metrics.jsonl` that is the log of the last
//! checkpoint or of the one before it, and `--resume` brings it back in line with the checkpoint
//! it continues from before anything else is written.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The per-epoch line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: Vec<f64>,
    pub val: Vec<ValSummary>,
    pub r_h: f64,
    pub r_l: f64,
    /// Per network: precision and recall of the entries the selection flagged as likely missing
    /// positives, against the hidden true labels (method.md, "Partial-label protocols").
    pub selection: Vec<SelectionStats>,
    pub lr: f64,
    pub images_per_s: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValSummary {
    #[serde(rename = "mAP")]
    pub map: f64,
    #[serde(rename = "CF1")]
    pub cf1: f64,
    #[serde(rename = "OF1")]
    pub of1: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SelectionStats {
    pub flagged: u64,
    pub hidden_positives_flagged: u64,
    pub hidden_positives: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

/// `RUN_DIR/metrics.jsonl`.
pub fn path(run_dir: &Path) -> PathBuf {
    run_dir.join("metrics.jsonl")
}

/// The text of `metrics.jsonl` for these lines: one JSON object a line.
pub fn text(log: &[EpochLog]) -> Result<String> {
    let mut s = String::new();
    for l in log {
        s += &serde_json::to_string(l).context("serialising a metrics line")?;
        s.push('\n');
    }
    Ok(s)
}

/// Replace `metrics.jsonl` by these lines, atomically.
pub fn write(run_dir: &Path, log: &[EpochLog]) -> Result<()> {
    cls_core::fsio::write_atomic(&path(run_dir), text(log)?.as_bytes())
}

/// Make `metrics.jsonl` hold exactly `log` (the checkpoint's lines); returns whether it had to
/// change. Nothing is written when it already agrees.
pub fn reconcile(run_dir: &Path, log: &[EpochLog]) -> Result<bool> {
    let want = text(log)?;
    let have = std::fs::read(path(run_dir)).unwrap_or_default();
    if have == want.as_bytes() {
        return Ok(false);
    }
    cls_core::fsio::write_atomic(&path(run_dir), want.as_bytes())?;
    Ok(true)
}

/// The lines of `metrics.jsonl`, every one of which must parse.
pub fn read(run_dir: &Path) -> Result<Vec<EpochLog>> {
    let p = path(run_dir);
    let text = std::fs::read_to_string(&p).with_context(|| format!("{}: no metrics.jsonl", run_dir.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}", p.display(), i + 1)))
        .collect()
}

/// The lines of epochs `1..=epochs` from `metrics.jsonl`, for a checkpoint written before the
/// log was part of it: unreadable lines, lines past `epochs` and repeated epochs (the last one
/// counts) are dropped. Also says whether every epoch is there.
pub fn recover(run_dir: &Path, epochs: usize) -> (Vec<EpochLog>, bool) {
    let text = std::fs::read_to_string(path(run_dir)).unwrap_or_default();
    let mut by_epoch = std::collections::BTreeMap::new();
    for l in text.lines().filter_map(|l| serde_json::from_str::<EpochLog>(l).ok()) {
        if (1..=epochs).contains(&l.epoch) {
            by_epoch.insert(l.epoch, l);
        }
    }
    let complete = by_epoch.len() == epochs;
    (by_epoch.into_values().collect(), complete)
}
