//! `cls-train report RUN_DIR [RUN_DIR ...] --out report.md`: one markdown file comparing runs,
//! with a table (method, protocol, best epoch, validation and test mAP / CF1 / OF1) and PNG
//! plots side by side: validation mAP per epoch (the paper's Figure 4), the selection's
//! precision and recall per epoch (Figure 3 as a curve), and per-class test AP.

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::plots::{line_chart, Series};
use crate::runlog::{read as read_log, EpochLog};
use crate::summary::Summary;

struct Run {
    dir: PathBuf,
    label: String,
    summary: Option<Summary>,
    log: Vec<EpochLog>,
}

fn load(dir: &Path) -> Result<Run> {
    let log = read_log(dir)?;
    // Only a finished run's summary counts (older versions wrote one on an export of an
    // unfinished run; a run extended with --resume --epochs is unfinished again).
    let summary = crate::summary::finished_summary(dir)?;
    let label = match &summary {
        Some(s) => {
            format!("{} ({})", s.method, dir.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned()))
        }
        None => dir.display().to_string(),
    };
    Ok(Run { dir: dir.to_path_buf(), label, summary, log })
}

fn pct(v: f64) -> String {
    format!("{:.1}", 100.0 * v)
}

pub fn write(runs: &[PathBuf], out: &Path, title: &str) -> Result<()> {
    if runs.is_empty() {
        bail!("report: give at least one run folder");
    }
    let stem = out.file_stem().map_or("report".into(), |s| s.to_string_lossy().into_owned());
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let plot_dir = parent.join(format!("{stem}_plots"));
    // The outputs are checked before anything is read or drawn: writable, and never a file of a
    // run being reported on.
    cls_core::fsio::check_output("--out", out)?;
    for r in runs {
        cls_core::fsio::refuse_inside("--out", out, "the run folder", r)?;
        cls_core::fsio::refuse_inside("--out", &plot_dir, "the run folder", r)?;
    }
    let runs: Vec<Run> = runs.iter().map(|d| load(d)).collect::<Result<_>>()?;
    std::fs::create_dir_all(&plot_dir).with_context(|| format!("creating {}", plot_dir.display()))?;

    let mut md = format!("# {title}\n\n");
    md += "| run | method | partial | best peer | best epoch | val mAP | val CF1 | val OF1 | test mAP | test CF1 | test OF1 |\n";
    md += "|---|---|---|---|---|---|---|---|---|---|---|\n";
    for r in &runs {
        match &r.summary {
            Some(s) => {
                let t = s.test.as_ref();
                let cell = |f: &dyn Fn(&cls_core::metrics::Metrics) -> f64| t.map_or("-".into(), |m| pct(f(m)));
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.dir.display(),
                    s.method,
                    s.partial,
                    s.best_peer,
                    s.best_epoch,
                    pct(s.val.map),
                    pct(s.val.cf1),
                    pct(s.val.of1),
                    cell(&|m| m.map),
                    cell(&|m| m.cf1),
                    cell(&|m| m.of1)
                );
            }
            None => {
                let _ =
                    writeln!(md, "| {} | (unfinished: {} epochs) | | | | | | | | | |", r.dir.display(), r.log.len());
            }
        }
    }

    // Validation mAP per epoch: the exported (best) peer of each run, or peer 0 when unfinished.
    let curves: Vec<Series> = runs
        .iter()
        .map(|r| {
            let k = r.summary.as_ref().map_or(0, |s| s.best_peer);
            Series {
                name: r.label.clone(),
                points: r.log.iter().filter_map(|l| l.val.get(k).map(|v| (l.epoch as f64, 100.0 * v.map))).collect(),
            }
        })
        .collect();
    line_chart(&plot_dir.join("val_map.png"), "Validation mAP per epoch", "epoch", "mAP (%)", &curves)?;
    let _ = writeln!(md, "\n## Validation mAP per epoch\n\n![validation mAP]({stem}_plots/val_map.png)\n");

    let mut sel = Vec::new();
    for r in &runs {
        for (what, prec) in [("precision", true), ("recall", false)] {
            let points: Vec<(f64, f64)> = r
                .log
                .iter()
                .filter_map(|l| {
                    l.selection
                        .first()
                        .and_then(|s| if prec { s.precision } else { s.recall })
                        .map(|v| (l.epoch as f64, 100.0 * v))
                })
                .collect();
            if !points.is_empty() {
                sel.push(Series { name: format!("{} {what}", r.label), points });
            }
        }
    }
    if !sel.is_empty() {
        line_chart(&plot_dir.join("selection.png"), "Flagged entries that are hidden positives", "epoch", "%", &sel)?;
        let _ = writeln!(md, "## Selection precision and recall per epoch\n\nOf the unannotated entries a method flagged as likely missing positives (removed or corrected), the share that are truly hidden positives (precision), and the share of hidden positives flagged (recall), network 0.\n\n![selection]({stem}_plots/selection.png)\n");
    }

    let with_ap: Vec<(&Run, Vec<Option<f64>>)> = runs
        .iter()
        .filter_map(|r| {
            r.summary.as_ref().and_then(|s| s.test.as_ref().or(Some(&s.val))).map(|m| (r, m.per_class_ap.clone()))
        })
        .collect();
    if !with_ap.is_empty() {
        per_class_plot(&plot_dir.join("per_class_ap.png"), &with_ap)?;
        let _ = writeln!(md, "## Per-class AP\n\nTest AP (validation when no test split) of every evaluated class, classes sorted by the first run's AP.\n\n![per-class AP]({stem}_plots/per_class_ap.png)\n");
    }
    crate::checkpoint::write_atomic(out, md.as_bytes())?;
    eprintln!("wrote {} and {}", out.display(), plot_dir.display());
    Ok(())
}

/// Bars of per-class AP, one colour per run, classes in the first run's descending AP order.
fn per_class_plot(path: &Path, runs: &[(&Run, Vec<Option<f64>>)]) -> Result<()> {
    let first = &runs[0].1;
    let mut order: Vec<usize> = (0..first.len()).filter(|&c| first[c].is_some()).collect();
    order.sort_by(|&a, &b| first[b].unwrap_or(0.0).total_cmp(&first[a].unwrap_or(0.0)));
    let width = (900 + order.len() as u32 * 2).min(4000);
    crate::plots::save_png(path, (width, 500), |root| {
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let n = order.len().max(1) as f64;
        let mut chart = ChartBuilder::on(root)
            .caption("Per-class AP", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..n, 0.0..100.0)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("class (sorted)")
            .y_desc("AP (%)")
            .disable_x_mesh()
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let k = runs.len() as f64;
        for (ri, (run, ap)) in runs.iter().enumerate() {
            let color = Palette99::pick(ri).to_rgba();
            chart
                .draw_series(order.iter().enumerate().map(|(x, &c)| {
                    let x0 = x as f64 + ri as f64 / k;
                    Rectangle::new(
                        [(x0, 0.0), (x0 + 1.0 / k, 100.0 * ap.get(c).copied().flatten().unwrap_or(0.0))],
                        color.filled(),
                    )
                }))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(run.label.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    })
}
