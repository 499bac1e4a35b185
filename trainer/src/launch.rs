//! Starting a run and resuming one: every check before anything is written, then the run
//! folder, locked for the life of the process (see [`crate::rundir`]).
//!
//! A new run validates its options, locks (creating) its folder, loads the data and builds the
//! networks; only then does it write `config.toml`. A run refused on the way leaves no folder it
//! created (`--tau-h auto`'s validation sweep, `crate::sweep`, is the exception: it records its
//! config.toml before the candidates train, so that `--resume` can continue it). `--resume` locks
//! the folder, checks the saved configuration with the overrides, checks it against the
//! checkpoint (method, number of networks, classes, every tensor's name and shape, the objective's
//! revision) and restores it, and only then touches the folder: stale temporary files go,
//! `metrics.jsonl` and the best weights are brought in line with the checkpoint, and `config.toml`
//! is rewritten only when an override changed it.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, RunState};
use crate::config::TrainConfig;
use crate::rundir::{self, RunLock};
use crate::setup::{self, Setup};
use crate::{plots, runlog, summary, train};

/// The options `--resume` accepts again (README: "--epochs, --stop-after, --device and --threads
/// may be given again").
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub epochs: Option<usize>,
    pub stop_after: Option<usize>,
    pub device: Option<String>,
    pub threads: Option<usize>,
}

/// The flags (field names) `--resume` accepts.
pub const RESUME_OVERRIDES: &[&str] = &["epochs", "stop_after", "device", "threads"];

/// The default run folder: `runs/<method>-<partial>-s<seed>-<unix time>`.
pub fn default_run_dir(cfg: &TrainConfig) -> PathBuf {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    PathBuf::from("runs").join(format!("{}-{}-s{}-{t}", cfg.method, cfg.partial.replace(':', ""), cfg.seed))
}

/// Whether `run_dir` holds a run that a new one must not overwrite.
fn holds_run(run_dir: &Path) -> bool {
    checkpoint::latest(run_dir).is_some() || run_dir.join("summary.json").exists()
}

/// What a run writes at the top of its folder, besides `config.toml`.
const RUN_OUTPUTS: [&str; 10] = [
    "metrics.jsonl",
    "model.onnx",
    "summary.json",
    crate::thresholds::FILE,
    "best-peer0.safetensors",
    "best-peer1.safetensors",
    "checkpoint",
    "checkpoint.old",
    "epochs",
    "plots",
];

/// Whether `run_dir/config.toml` is a cls-train run's: a regular file that parses as a saved
/// configuration naming its run folder (what [`start_locked`] writes). A run that stopped before
/// its first checkpoint leaves one; a user's own `config.toml` (or a `--config` file without
/// `run_dir`) is not one.
pub fn runs_config(run_dir: &Path) -> bool {
    let saved = run_dir.join("config.toml");
    // A run's config.toml is a few kilobytes: a large file is someone else's, and is not read.
    std::fs::symlink_metadata(&saved).is_ok_and(|m| m.is_file() && m.len() < 1 << 20)
        && TrainConfig::read_saved(&saved).is_ok_and(|c| c.run_dir.is_some())
}

/// Refuse a folder that holds a run (a new one must not overwrite it), or files a run would
/// write that no cls-train run left there (a new run must not replace a user's `model.onnx`,
/// `config.toml` or `plots/`). A folder with a run's `config.toml` and no checkpoint (a run
/// stopped in its first epoch, or a `--tau-h auto` sweep) is started again.
pub fn refuse_existing(run_dir: &Path) -> Result<()> {
    if holds_run(run_dir) {
        bail!("{} already holds a run: continue it with --resume {0}, or choose another --run-dir", run_dir.display());
    }
    if runs_config(run_dir) {
        return Ok(());
    }
    let present = |name: &str| std::fs::symlink_metadata(run_dir.join(name)).is_ok();
    if let Some(name) = std::iter::once("config.toml").chain(RUN_OUTPUTS).find(|n| present(n)) {
        bail!(
            "--run-dir {}: it holds {name}, which no cls-train run wrote, and a run writes its config.toml, \
             metrics.jsonl, model.onnx, summary.json, plots/ and checkpoint/ there; choose another --run-dir \
             (an empty or new folder)",
            run_dir.display()
        );
    }
    Ok(())
}

/// Train a new run with `cfg` (its `run_dir`, else [`default_run_dir`]); returns the folder.
pub fn start(cfg: TrainConfig) -> Result<PathBuf> {
    cfg.validate_new_run()?;
    let run_dir = cfg.run_dir.clone().unwrap_or_else(|| default_run_dir(&cfg));
    refuse_existing(&run_dir)?;
    if run_dir.exists() && !run_dir.is_dir() {
        bail!("--run-dir {}: not a folder", run_dir.display());
    }
    let lock = RunLock::create(&run_dir)?;
    start_locked(cfg, lock)
}

/// [`start`] in the folder `lock` holds (`--tau-h auto` keeps it locked from its sweep to the run),
/// for a `cfg` already checked with `validate_new_run` (before the folder was locked, so that a
/// refused run leaves none behind).
pub fn start_locked(mut cfg: TrainConfig, lock: RunLock) -> Result<PathBuf> {
    let run_dir = lock.dir().to_path_buf();
    // Another process may have made a run here between the check and the lock.
    if let Err(e) = refuse_existing(&run_dir) {
        drop(lock);
        return Err(e);
    }
    let s = match setup::prepare(&cfg) {
        Ok(s) => s,
        Err(e) => {
            lock.abandon();
            return Err(e);
        }
    };
    // The folder of a run that stopped before its first checkpoint: start it again from scratch.
    rundir::clean(&run_dir);
    if runs_config(&run_dir) {
        for stale in ["metrics.jsonl", "model.onnx", "best-peer0.safetensors", "best-peer1.safetensors"] {
            let _ = std::fs::remove_file(run_dir.join(stale));
        }
    }
    cfg.run_dir = Some(run_dir.clone());
    // Resolved once, so that a resume with another --epochs keeps the same decays.
    if cfg.schedule == crate::lr::Schedule::Step {
        cfg.lr_step_epochs = Some(cfg.lr_step_interval());
    }
    if let Err(e) = checkpoint::save_config(&cfg, &run_dir) {
        lock.abandon();
        return Err(e);
    }
    eprintln!("run folder: {}", run_dir.display());
    let r = train_and_finish(&cfg, &run_dir, s, RunState::default());
    finish_process(&run_dir, r)?;
    drop(lock);
    Ok(run_dir)
}

/// The epoch loop (plots after every epoch), then, once every epoch is done, the summary and the
/// export of the better peer to `RUN_DIR/model.onnx`.
fn train_and_finish(cfg: &TrainConfig, run_dir: &Path, s: Setup, state: RunState) -> Result<()> {
    let mut plot = |dir: &Path| plots::write_run_plots(dir).context("writing plots");
    let Some(t) = train::run(cfg, run_dir, s, state, &mut plot)? else { return Ok(()) };
    let mut peers = t.peers;
    summary::finish(
        cfg,
        run_dir,
        &t.arch,
        &t.data,
        &mut peers,
        &t.state,
        &t.val_inputs,
        t.test_inputs.as_ref(),
        t.head_only,
        &t.devices,
        &run_dir.join("model.onnx"),
        &summary::Weights::Best,
    )
}

/// After a failed run: remove what the failure left (the lock is still held, so every temporary
/// file in the folder is this process's).
fn finish_process(run_dir: &Path, r: Result<()>) -> Result<()> {
    if r.is_err() {
        rundir::remove_stale_temps(run_dir);
    }
    r
}

/// The saved configuration of `run_dir` with the overrides applied.
pub fn resumed_config(run_dir: &Path, o: &Overrides) -> Result<TrainConfig> {
    let saved = run_dir.join("config.toml");
    if !saved.is_file() {
        bail!("{} is not a run folder (it has no config.toml)", run_dir.display());
    }
    let mut cfg =
        TrainConfig::read_saved(&saved).with_context(|| format!("{} is not a run folder", run_dir.display()))?;
    if let Some(e) = o.epochs {
        cfg.epochs = e;
    }
    // For one invocation only (older versions saved it).
    cfg.stop_after = o.stop_after;
    if let Some(d) = &o.device {
        cfg.device = d.clone();
    }
    if o.threads.is_some() {
        cfg.threads = o.threads;
    }
    Ok(cfg)
}

/// Continue the run in `run_dir` from its last checkpoint.
pub fn resume(run_dir: &Path, o: &Overrides) -> Result<()> {
    if !run_dir.join("config.toml").is_file() {
        bail!("{} is not a run folder (it has no config.toml)", run_dir.display());
    }
    let lock = RunLock::open(run_dir)?;
    let mut cfg = resumed_config(run_dir, o)?;
    cfg.validate().with_context(|| format!("{}", run_dir.join("config.toml").display()))?;
    let Some(ck_dir) = checkpoint::latest(run_dir) else {
        bail!(
            "{}: no checkpoint (no epoch of this run has ended) and its config.toml is not a cls-train run's; \
             start a run with the options you want",
            run_dir.display()
        );
    };
    let state = checkpoint::read_state(&ck_dir)?;
    // The cheap checks first, before the data are loaded.
    let networks = cfg.networks()?;
    let saved_networks = checkpoint::peer_count(&ck_dir);
    if saved_networks != networks {
        bail!(
            "config.toml does not match the checkpoint: method {} trains {networks} network(s), the checkpoint in {} holds {saved_networks}",
            cfg.method,
            ck_dir.display()
        );
    }
    if let Some(shape) = &state.shape {
        if shape.method != cfg.method.as_str() {
            bail!(
                "config.toml does not match the checkpoint: it says method {}, the checkpoint was trained with {}",
                cfg.method,
                shape.method
            );
        }
    }
    if let Some(what) = checkpoint::objective_change(cfg.method.as_str(), checkpoint::objective_revision(&state)) {
        bail!(
            "{}: the checkpoint was trained by an earlier cls-train, whose {} objective differs from today's ({what}): \
             continuing would mix two objectives in one run. Start the run again (or export the weights it has: \
             cls-train export {})",
            run_dir.display(),
            cfg.method,
            run_dir.display()
        );
    }
    if let Some(saved) = &state.config {
        let now = serde_json::to_value(&cfg).context("recording the configuration")?;
        let changes = checkpoint::config_changes(saved, &now);
        if !changes.is_empty() {
            bail!(
                "config.toml does not match the checkpoint: it changes what training does since the checkpoint: {}",
                changes.join(", ")
            );
        }
    }
    if state.best.len() != networks {
        bail!("{}: the run state records {} network(s), not {networks}", ck_dir.display(), state.best.len());
    }
    if cfg.epochs < state.epochs_done {
        bail!(
            "--epochs {}: the run has already completed {} epochs (give at least that many)",
            cfg.epochs,
            state.epochs_done
        );
    }
    let mut s = setup::prepare(&cfg)?;
    let state = restore(&mut s, run_dir)?;

    // Everything checked: now the folder may change.
    rundir::clean(run_dir);
    // Each written only when it disagrees with the checkpoint: a resume after a full disk must
    // not fail on rewriting what is already there.
    let log_changed = runlog::reconcile(run_dir, &state.log)?;
    if log_changed {
        eprintln!("metrics.jsonl brought back in line with the checkpoint (epochs 1 to {})", state.epochs_done);
    }
    checkpoint::publish_best(run_dir, 0..networks)?;
    if !state.log.is_empty() && (log_changed || !run_dir.join("plots").join("val_map.png").is_file()) {
        plots::write_run_plots(run_dir).context("writing plots")?;
    }
    if state.epochs_done < cfg.epochs && run_dir.join("summary.json").exists() {
        // Of an earlier end (now extended with --epochs) or an older version's export of the
        // unfinished run: the run's summary means a finished run, written again at its end.
        std::fs::remove_file(run_dir.join("summary.json")).context("removing the stale summary.json")?;
        eprintln!("summary.json removed: the run is unfinished until epoch {}", cfg.epochs);
    }
    cfg.run_dir = Some(run_dir.to_path_buf());
    checkpoint::save_config(&cfg, run_dir)?;
    eprintln!("resuming {} after epoch {}", run_dir.display(), state.epochs_done);
    let r = train_and_finish(&cfg, run_dir, s, state);
    finish_process(run_dir, r)?;
    drop(lock);
    Ok(())
}

/// Load the last checkpoint into the networks, optimizers and method of `s`, refusing one that
/// does not match the configuration. Returns its state, with its log (recovered from
/// `metrics.jsonl` for checkpoints of older versions).
fn restore(s: &mut Setup, run_dir: &Path) -> Result<RunState> {
    let mismatch = || format!("config.toml does not match the checkpoint in {}", run_dir.display());
    let ck = checkpoint::load(run_dir, s.peers.len()).with_context(mismatch)?;
    if let Some(shape) = &ck.state.shape {
        let (classes, samples) = (s.data.train.num_classes(), s.data.train.len());
        if shape.classes != classes || shape.train_samples != samples || shape.backbone != s.arch.name() {
            bail!(
                "{}: the checkpoint is of a {} with {} classes trained on {} images; the configuration builds a {} with {classes} classes on {samples} images",
                mismatch(),
                shape.backbone,
                shape.classes,
                shape.train_samples,
                s.arch.name()
            );
        }
    }
    // Every tensor checked before any is copied.
    for (k, p) in s.peers.iter().enumerate() {
        checkpoint::check_same_tensors(&format!("network {k}"), &ck.peers[k], &checkpoint::named_vars(&p.vs))
            .with_context(mismatch)?;
    }
    checkpoint::check_same_tensors("the method's state", &ck.method, &s.method.state()).with_context(mismatch)?;
    for (k, p) in s.peers.iter_mut().enumerate() {
        checkpoint::restore_vars(&p.vs, &ck.peers[k]).with_context(mismatch)?;
        p.adam.load_state(&ck.optimizers[k]).with_context(mismatch)?;
    }
    s.method.load_state(&ck.method).with_context(mismatch)?;
    let mut state = ck.state;
    if state.log.is_empty() && state.epochs_done > 0 {
        // A checkpoint of an older version: its log is metrics.jsonl.
        let (log, complete) = runlog::recover(run_dir, state.epochs_done);
        if !complete {
            eprintln!(
                "warning: metrics.jsonl lacks some of the checkpoint's {} epochs (a run of an older version, killed); \
                 the log continues from the {} line(s) it has",
                state.epochs_done,
                log.len()
            );
        }
        state.log = log;
    } else if state.log.len() != state.epochs_done || state.log.last().is_some_and(|l| l.epoch != state.epochs_done) {
        eprintln!(
            "warning: the checkpoint records {} epochs and {} metrics lines; the log continues from those lines",
            state.epochs_done,
            state.log.len()
        );
    }
    Ok(state)
}
