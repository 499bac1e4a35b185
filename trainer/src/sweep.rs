//! `cls-train sweep`: train one run per grid point (τ_h × τ_l, or LL's Δ) and pick the point
//! with the best **validation** mAP (method.md: "a sweep, picking on validation mAP, never on
//! test"). Writes `sweep.json` (every point, the choice) and a sensitivity plot per swept knob
//! (the paper's Figures 7 and 8).

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::TrainConfig;
use crate::launch::{self, Overrides};
use crate::plots::{line_chart, Series};
use crate::rundir::RunLock;
use crate::summary::Summary;

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub tau_h: Option<f64>,
    pub tau_l: Option<f64>,
    pub ll_delta: Option<f64>,
    pub run_dir: PathBuf,
    pub val_map: f64,
    pub test_map: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct SweepResult {
    pub method: String,
    pub points: Vec<Point>,
    /// Index into `points` of the best validation mAP.
    pub best: usize,
}

pub fn parse_grid(s: &str) -> Result<Vec<f64>> {
    s.split(',').map(|v| v.trim().parse::<f64>().with_context(|| format!("bad grid value '{v}' in '{s}'"))).collect()
}

/// The fields that do not change what a run computes: left out of a point's key.
const NOT_IN_KEY: &[&str] = &[
    "run_dir",
    "stop_after",
    "device",
    "devices",
    "threads",
    "cache_dir",
    // The thresholds are chosen after training: the validation mAP a sweep picks on does not
    // depend on them.
    "calibrate_min_positives",
    "calibrate_shrink",
];

/// A short hash of everything in `cfg` that decides a run's result: two configurations with the
/// same key train the same run.
pub fn config_key(cfg: &TrainConfig) -> Result<String> {
    let mut v = serde_json::to_value(cfg)?;
    if let Some(fields) = v.as_object_mut() {
        for k in NOT_IN_KEY {
            fields.remove(*k);
        }
    }
    Ok(hex::encode(&Sha256::digest(serde_json::to_vec(&v)?)[..5]))
}

/// The summary of the finished run of `cfg` in `dir`, if there is one. A folder holding a run of
/// another configuration is an error (its name carries the configuration's key, so only an edited
/// folder can).
fn finished_summary(dir: &Path, cfg: &TrainConfig) -> Result<Option<Summary>> {
    let summary_path = dir.join("summary.json");
    if !summary_path.is_file() {
        return Ok(None);
    }
    let saved = TrainConfig::read_saved(&dir.join("config.toml"))
        .with_context(|| format!("{}: a summary without a readable config.toml", dir.display()))?;
    if config_key(&saved)? != config_key(cfg)? {
        bail!("{} holds a run of another configuration than this sweep point's: move it away", dir.display());
    }
    crate::summary::finished_summary(dir)
}

/// Run the grid; `out` holds one run folder per point plus `sweep.json` and the plots.
///
/// A point's folder is named by its grid values and the key of its whole configuration
/// ([`config_key`]): a finished run is reused only for exactly its training configuration (the
/// calibration settings aside: a reused point keeps the thresholds it was calibrated with), an
/// interrupted one is resumed, and a sweep with other options (epochs, learning rate, seed, data,
/// ...) trains its own runs beside the earlier ones. The key covers every option, so a cls-train
/// that adds one trains earlier sweeps' points again. Every point's configuration is checked
/// before the first one trains.
pub fn run(base: &TrainConfig, out: &Path, tau_h: &[f64], tau_l: &[f64], ll_delta: &[f64]) -> Result<SweepResult> {
    if tau_h.is_empty() && tau_l.is_empty() && ll_delta.is_empty() {
        bail!("sweep: give at least one of --tau-h-grid, --tau-l-grid, --ll-delta-grid");
    }
    if base.stop_after.is_some() {
        bail!("sweep: --stop-after does not apply (every point trains to the end; an interrupted sweep continues when run again)");
    }
    if base.run_dir.is_some() {
        bail!("sweep: --run-dir does not apply (the points' folders are made under --out)");
    }
    let opt = |v: &[f64]| -> Vec<Option<f64>> {
        if v.is_empty() {
            vec![None]
        } else {
            v.iter().copied().map(Some).collect()
        }
    };
    let mut plan = Vec::new();
    for th in opt(tau_h) {
        for tl in opt(tau_l) {
            for d in opt(ll_delta) {
                let mut cfg = base.clone();
                let mut name = vec![cfg.method.to_string()];
                if let Some(v) = th {
                    cfg.tau_h = Some(v.to_string());
                    name.push(format!("tauh{v}"));
                }
                if let Some(v) = tl {
                    cfg.tau_l = Some(v);
                    name.push(format!("taul{v}"));
                }
                if let Some(v) = d {
                    cfg.ll_delta = Some(v);
                    name.push(format!("delta{v}"));
                }
                cfg.validate_new_run().with_context(|| format!("sweep point {}", name.join(" ")))?;
                name.push(config_key(&cfg)?);
                let dir = out.join(name.join("-"));
                cfg.run_dir = Some(dir.clone());
                plan.push((th, tl, d, cfg, dir));
            }
        }
    }
    if base.tau_h.as_deref() == Some("auto") {
        eprintln!("note: in a sweep, --tau-h auto is the single-run rule τ_h = h/2 at every point (give --tau-h-grid to sweep it)");
    }
    std::fs::create_dir_all(out).with_context(|| format!("sweep: cannot create --out {}", out.display()))?;
    let sweep_json = out.join("sweep.json");
    cls_core::fsio::check_output("--out", &sweep_json)?;

    let mut points = Vec::new();
    for (th, tl, d, cfg, dir) in plan {
        let summary = match finished_summary(&dir, &cfg)? {
            Some(s) => {
                eprintln!("sweep point {}: finished earlier, reused", dir.display());
                s
            }
            None => {
                if crate::checkpoint::latest(&dir).is_some() {
                    eprintln!("sweep point {}: resuming", dir.display());
                    let o = Overrides { device: Some(cfg.device.clone()), threads: cfg.threads, ..Default::default() };
                    launch::resume(&dir, &o)?;
                } else {
                    eprintln!("sweep point {}", dir.display());
                    launch::start(cfg.clone())?;
                }
                finished_summary(&dir, &cfg)?
                    .with_context(|| format!("{}: the run ended without a summary", dir.display()))?
            }
        };
        points.push(Point {
            tau_h: th,
            tau_l: tl,
            ll_delta: d,
            run_dir: dir,
            val_map: summary.val.map,
            test_map: summary.test.map(|t| t.map),
        });
    }
    let best = points
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.val_map.total_cmp(&b.1.val_map))
        .map(|(i, _)| i)
        .context("sweep: no point")?;
    let result = SweepResult { method: base.method.to_string(), points, best };
    crate::checkpoint::write_atomic(&sweep_json, serde_json::to_string_pretty(&result)?.as_bytes())?;
    plot(&result, out)?;
    let b = &result.points[best];
    eprintln!(
        "best on validation: τ_h {:?} τ_l {:?} Δ {:?}: val mAP {:.2}{}",
        b.tau_h,
        b.tau_l,
        b.ll_delta,
        100.0 * b.val_map,
        b.test_map.map_or(String::new(), |t| format!(", test mAP {:.2}", 100.0 * t))
    );
    Ok(result)
}

/// The candidates `--tau-h auto` validates: h/2, h, 2h and 3h (h the share of unannotated
/// entries that are hidden positives) and the default 0.012, within [0, 0.5], ascending, once
/// each. Measured (BENCHMARKS.md): h/2 alone was below the default on Corel5k and scene, and the τ_h
/// validation preferred lay between h and 3h.
pub fn auto_tau_h_grid(h: f64) -> Vec<f64> {
    let mut grid: Vec<f64> =
        [h / 2.0, h, 2.0 * h, 3.0 * h, 0.012].iter().map(|v| (v.clamp(0.0, 0.5) * 1e6).round() / 1e6).collect();
    grid.sort_by(f64::total_cmp);
    grid.dedup();
    grid
}

/// Train a new run whose `--tau-h` is `auto`. Where training is cheap (a frozen backbone or a
/// feature table) and the method removes high-loss negatives, the candidates of
/// [`auto_tau_h_grid`] are trained first, under `RUN_DIR/tau-h-auto/` (a sweep: resumable,
/// `sweep.json`, picked on validation mAP, never test), and the run then trains at the chosen τ_h,
/// which its config.toml records. Otherwise the single-run rule applies (τ_h = h/2, in `setup`).
pub fn start_with_auto_tau_h(cfg: TrainConfig) -> Result<PathBuf> {
    if cfg.tau_h.as_deref() != Some("auto") || !cfg.method.uses_tau_h() {
        return launch::start(cfg);
    }
    cfg.validate_new_run()?;
    let data = crate::data::load(&cfg)?;
    let cheap = cfg.freeze_backbone || !crate::setup::arch_for(&cfg, &data)?.is_image();
    if !cheap {
        eprintln!(
            "note: --tau-h auto on end-to-end training uses the rule τ_h = h/2 (a validation sweep would train the \
             network {} times); `cls-train sweep --tau-h-grid …` validates candidates",
            auto_tau_h_grid(0.01).len()
        );
        return launch::start(cfg);
    }
    if cfg.stop_after.is_some() {
        bail!(
            "--stop-after does not apply with --tau-h auto here: the candidates of τ_h train to the end first; \
             drop --stop-after, or give --tau-h a number"
        );
    }
    let h = crate::setup::hidden_positive_share(&cfg, &data);
    drop(data);
    let grid = auto_tau_h_grid(h);
    let run_dir = cfg.run_dir.clone().unwrap_or_else(|| launch::default_run_dir(&cfg));
    launch::refuse_existing(&run_dir)?;
    // One process per run folder, the sweep included; config.toml (τ_h still "auto") lets
    // `--resume RUN_DIR` continue an interrupted sweep ([`resume`]).
    let lock = RunLock::create(&run_dir)?;
    launch::refuse_existing(&run_dir)?;
    let mut recorded = cfg.clone();
    recorded.run_dir = Some(run_dir.clone());
    recorded.stop_after = None;
    crate::checkpoint::save_config(&recorded, &run_dir)?;
    eprintln!(
        "--tau-h auto: h = {h:.4} of the unannotated entries are hidden positives; validating τ_h in {grid:?} under {}",
        run_dir.join("tau-h-auto").display()
    );
    let mut base = cfg.clone();
    base.tau_h = None;
    base.run_dir = None;
    base.stop_after = None;
    let result = run(&base, &run_dir.join("tau-h-auto"), &grid, &[], &[])?;
    let chosen = result.points[result.best].tau_h.context("the τ_h sweep chose no value")?;
    eprintln!("--tau-h auto: τ_h {chosen} has the best validation mAP; training the run with it");
    let mut cfg = cfg;
    cfg.tau_h = Some(chosen.to_string());
    cfg.run_dir = Some(run_dir);
    launch::start_locked(cfg, lock)
}

/// `--resume RUN_DIR`. A run folder without a checkpoint (no epoch ended) starts again from its
/// config.toml: a `--tau-h auto` sweep continues (config.toml still says auto; its finished
/// candidates are reused) and the run then trains; a run whose sweep chose τ_h (config.toml has
/// the number), or any other run, trains from its start. A run with a checkpoint continues from it.
pub fn resume(run_dir: &Path, o: &Overrides) -> Result<()> {
    if crate::checkpoint::latest(run_dir).is_some() || !launch::runs_config(run_dir) {
        return launch::resume(run_dir, o);
    }
    let mut cfg = launch::resumed_config(run_dir, o)?;
    cfg.run_dir = Some(run_dir.to_path_buf());
    let auto = cfg.tau_h.as_deref() == Some("auto");
    let sweep = run_dir.join("tau-h-auto");
    if auto && sweep.is_dir() {
        eprintln!("{}: continuing the --tau-h auto sweep", run_dir.display());
    } else if !auto && sweep.join("sweep.json").is_file() {
        eprintln!(
            "{}: the --tau-h auto sweep chose τ_h {}; the run stopped before its first epoch ended and starts again",
            run_dir.display(),
            cfg.tau_h.as_deref().unwrap_or("?")
        );
    } else {
        eprintln!(
            "{}: no checkpoint yet (the run stopped before its first epoch ended); it starts again from its config.toml",
            run_dir.display()
        );
    }
    start_with_auto_tau_h(cfg)?;
    Ok(())
}

/// One sensitivity curve per swept knob, the others fixed at the best point's values.
fn plot(r: &SweepResult, out: &Path) -> Result<()> {
    let b = &r.points[r.best];
    type Get = fn(&Point) -> Option<f64>;
    let knobs: [(&str, Get); 3] = [("tau_h", |p| p.tau_h), ("tau_l", |p| p.tau_l), ("ll_delta", |p| p.ll_delta)];
    for (i, (name, get)) in knobs.iter().enumerate() {
        let others: Vec<&(&str, Get)> = knobs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, k)| k).collect();
        let mut pts: Vec<&Point> =
            r.points.iter().filter(|p| get(p).is_some() && others.iter().all(|(_, g)| g(p) == g(b))).collect();
        if pts.len() < 2 {
            continue;
        }
        pts.sort_by(|a, c| get(a).unwrap_or(0.0).total_cmp(&get(c).unwrap_or(0.0)));
        let mut series = vec![Series {
            name: "validation".into(),
            points: pts.iter().map(|p| (get(p).unwrap_or(0.0), 100.0 * p.val_map)).collect(),
            style: None,
        }];
        if pts.iter().all(|p| p.test_map.is_some()) {
            series.push(Series {
                name: "test".into(),
                points: pts.iter().map(|p| (get(p).unwrap_or(0.0), 100.0 * p.test_map.unwrap_or(0.0))).collect(),
                style: None,
            });
        }
        line_chart(
            &out.join(format!("sensitivity-{name}.png")),
            &format!("{}: mAP against {name}", r.method),
            name,
            "mAP (%)",
            &series,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_grid_brackets_h_and_keeps_the_default() {
        // Corel5k single positive: h ≈ 0.0064.
        assert_eq!(auto_tau_h_grid(0.0064), vec![0.0032, 0.0064, 0.012, 0.0128, 0.0192]);
        // A dense label set: the large candidates stop at 0.5, each once.
        assert_eq!(auto_tau_h_grid(0.25), vec![0.012, 0.125, 0.25, 0.5]);
        // Nothing hidden: 0 and the default.
        assert_eq!(auto_tau_h_grid(0.0), vec![0.0, 0.012]);
    }
}
