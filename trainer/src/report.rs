//! `cls-train report RUN_DIR [RUN_DIR ...] --out FILE`: one document comparing runs, in either of
//! two forms, by the extension of `FILE`:
//!
//! - `.html` (or `.htm`): one self-contained, static page, the same kind as `cls-infer --report`'s
//!   (`cls_core::html`: no network, a Content-Security-Policy that allows only the page's own style
//!   and script, every name escaped): a sortable table of the runs (method, protocol, seed, epochs,
//!   best epoch, validation and test mAP, CF1 and OF1 at the thresholds the exported model
//!   applies), validation mAP per epoch of every run as an inline SVG line chart, the selection's
//!   precision and recall per epoch for the runs that select, and a sortable table of per-class
//!   AP. Nothing is written but `FILE`.
//! - anything else: markdown with a table (method, protocol, best epoch, validation and test mAP /
//!   CF1 / OF1) and PNG plots in `<stem>_plots/` beside it: validation mAP per epoch (the paper's
//!   Figure 4), the selection's precision and recall per epoch (Figure 3 as a curve), and
//!   per-class test AP.
//!
//! Both read each run's `summary.json` (when the run is finished), `metrics.jsonl`, `config.toml`
//! (method, protocol, seed, epochs of an unfinished run) and `thresholds.json` (the class names).

use anyhow::{bail, Context, Result};
use cls_core::html;
use cls_core::metrics::Metrics;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::TrainConfig;
use crate::plots::{colour, line_chart, Series};
use crate::runlog::{read as read_log, EpochLog};
use crate::summary::Summary;

struct Run {
    dir: PathBuf,
    label: String,
    summary: Option<Summary>,
    log: Vec<EpochLog>,
    /// The run's `config.toml`, when it can be read.
    config: Option<TrainConfig>,
    /// The class names, in order (from `thresholds.json`), when the run has them.
    classes: Option<Vec<String>>,
}

/// The look of each run's curves (a style index of `cls_core::html::Series`): a colour per method,
/// in order of first appearance, and the second, third, ... run of a method (its other seeds or
/// settings) dashed, dotted, then long-dashed, so that several seeds of a few methods read as
/// groups.
fn run_styles(runs: &[Run]) -> Vec<usize> {
    let mut methods: Vec<String> = Vec::new();
    let mut seen: Vec<usize> = Vec::new();
    runs.iter()
        .map(|r| {
            let method = r
                .config
                .as_ref()
                .map(|c| c.method.to_string())
                .or_else(|| r.summary.as_ref().map(|s| s.method.clone()))
                .unwrap_or_else(|| r.label.clone());
            let m = methods.iter().position(|x| *x == method).unwrap_or_else(|| {
                methods.push(method);
                seen.push(0);
                methods.len() - 1
            });
            seen[m] += 1;
            m % html::PALETTE.len() + html::PALETTE.len() * (seen[m] - 1)
        })
        .collect()
}

impl Run {
    /// The network whose curves are shown: the exported (best) peer, or network 0 when unfinished.
    fn peer(&self) -> usize {
        self.summary.as_ref().map_or(0, |s| s.best_peer)
    }
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
    let config = TrainConfig::default().with_file(&dir.join("config.toml"), &[]).ok();
    let classes = class_names(&dir.join(crate::thresholds::FILE));
    Ok(Run { dir: dir.to_path_buf(), label, summary, log, config, classes })
}

/// The keys of `thresholds.json` (`{"class": threshold, ...}` in class order), in their order;
/// `None` when the file is missing or not such an object.
fn class_names(path: &Path) -> Option<Vec<String>> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object of class names and thresholds")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = map.next_entry::<String, f64>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice::<Keys>(&bytes).ok().map(|k| k.0)
}

/// `text` for a markdown table cell: HTML-escaped (markdown passes HTML through, and run names
/// come from users), `|` and line breaks neutralised.
fn md_text(text: &str) -> String {
    html::escape(text).replace('|', "&#124;").replace(['\n', '\r'], " ")
}

fn pct(v: f64) -> String {
    format!("{:.1}", 100.0 * v)
}

/// Whether `out` names an HTML page (`.html` or `.htm`, any case) rather than markdown.
pub fn is_html(out: &Path) -> bool {
    out.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"))
}

/// Compare `runs` in `out`: an HTML page when [`is_html`], else markdown with PNG plots.
pub fn write(runs: &[PathBuf], out: &Path, title: &str) -> Result<()> {
    if runs.is_empty() {
        bail!("report: give at least one run folder");
    }
    if is_html(out) {
        return write_html(runs, out, title);
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
                    md_text(&r.dir.display().to_string()),
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
                let _ = writeln!(
                    md,
                    "| {} | (unfinished: {} epochs) | | | | | | | | | |",
                    md_text(&r.dir.display().to_string()),
                    r.log.len()
                );
            }
        }
    }

    // Validation mAP per epoch: the exported (best) peer of each run, or peer 0 when unfinished.
    let styles = run_styles(&runs);
    let curves: Vec<Series> = runs
        .iter()
        .zip(&styles)
        .map(|(r, &style)| Series { name: r.label.clone(), points: val_map_points(r), style: Some(style) })
        .collect();
    line_chart(&plot_dir.join("val_map.png"), "Validation mAP per epoch", "epoch", "mAP (%)", &curves)?;
    let _ = writeln!(md, "\n## Validation mAP per epoch\n\n![validation mAP]({stem}_plots/val_map.png)\n");

    // A colour per run that selected anything (its exported peer, as in the HTML report), the
    // precision solid and the recall dashed.
    let mut sel = Vec::new();
    for (colour, r) in runs.iter().filter(|r| r.log.iter().any(|l| !l.selection.is_empty())).enumerate() {
        for (what, prec) in [("precision", true), ("recall", false)] {
            let points = selection_points(r, prec);
            if !points.is_empty() {
                let style =
                    colour % cls_core::html::PALETTE.len() + if prec { 0 } else { cls_core::html::PALETTE.len() };
                sel.push(Series { name: format!("{} {what}", r.label), points, style: Some(style) });
            }
        }
    }
    if !sel.is_empty() {
        line_chart(&plot_dir.join("selection.png"), "Flagged entries that are hidden positives", "epoch", "%", &sel)?;
        let _ = writeln!(md, "## Selection precision and recall per epoch\n\nOf the unannotated entries a method flagged as likely missing positives (removed or corrected), the share that are truly hidden positives (precision), and the share of hidden positives flagged (recall), of the exported peer (network 0 while unfinished).\n\n![selection]({stem}_plots/selection.png)\n");
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
            let color = colour(ri);
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

/// A percentage cell (sorted by the fraction; `–` when there is none).
fn pct_cell(v: Option<f64>) -> html::Cell {
    match v {
        Some(v) if v.is_finite() => html::Cell::num(v, pct(v)),
        _ => html::Cell::num(f64::NAN, "–".into()),
    }
}

/// The metrics at the thresholds the exported model applies: the calibrated ones when the run
/// chose them, else those at 0.5.
fn applied<'a>(plain: Option<&'a Metrics>, calibrated: Option<&'a Metrics>) -> Option<&'a Metrics> {
    calibrated.or(plain)
}

/// The run's validation mAP per epoch (in %) of [`Run::peer`].
fn val_map_points(r: &Run) -> Vec<(f64, f64)> {
    let k = r.peer();
    r.log.iter().filter_map(|l| l.val.get(k).map(|v| (l.epoch as f64, 100.0 * v.map))).collect()
}

/// The run's selection precision (`precision`) or recall per epoch (in %) of [`Run::peer`]; empty
/// for a run that does not select.
fn selection_points(r: &Run, precision: bool) -> Vec<(f64, f64)> {
    let k = r.peer();
    r.log
        .iter()
        .filter_map(|l| {
            l.selection
                .get(k)
                .and_then(|s| if precision { s.precision } else { s.recall })
                .map(|v| (l.epoch as f64, 100.0 * v))
        })
        .collect()
}

/// A y range for percentages `ys`: whole tens around them, within 0..=100, at least 10 wide.
fn percent_range(ys: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        ys.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return (0.0, 100.0);
    }
    let (mut lo, mut hi) =
        (((lo / 10.0).floor() * 10.0).clamp(0.0, 100.0), ((hi / 10.0).ceil() * 10.0).clamp(0.0, 100.0));
    if hi - lo < 10.0 {
        if hi >= 100.0 {
            lo = 90.0;
        } else {
            hi = lo + 10.0;
        }
    }
    (lo, hi)
}

/// A chart of per-epoch series (x: epochs, whole-number ticks; y: percent).
fn epoch_chart(
    title: &str,
    y_label: &str,
    width: f64,
    series: Vec<html::Series>,
    y_range: (f64, f64),
    marks: Vec<html::Mark>,
) -> String {
    let last = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0f64, f64::max);
    let x_range = (1.0, last.max(2.0));
    html::line_chart(&html::Chart {
        title: title.into(),
        x_label: "epoch".into(),
        y_label: y_label.into(),
        x_range,
        y_range,
        width,
        height: 280.0,
        series,
        marks,
        legend: true,
        x_ticks: Some(html::integer_ticks(x_range.0, x_range.1, 12)),
        y_ticks: Some(html::integer_ticks(y_range.0, y_range.1, 6)),
    })
}

/// The page's body (escaped markup) for `runs`.
fn html_body(runs: &[Run], title: &str) -> String {
    use html::{escape, Cell, Column};
    let mut b = format!("<h1>{}</h1>\n", escape(title));
    // With their index among all runs: a run keeps its colour in every chart.
    let selecting: Vec<(usize, &Run)> = runs
        .iter()
        .enumerate()
        .filter(|(_, r)| !selection_points(r, true).is_empty() || !selection_points(r, false).is_empty())
        .collect();
    let with_ap: Vec<(&Run, &[Option<f64>], &str)> = runs
        .iter()
        .filter_map(|r| {
            let s = r.summary.as_ref()?;
            let (m, split) = match &s.test {
                Some(t) => (t, "test"),
                None => (&s.val, "validation"),
            };
            (!m.per_class_ap.is_empty()).then_some((r, m.per_class_ap.as_slice(), split))
        })
        .collect();
    b += "<nav><a href=\"#runs\">Runs</a> · <a href=\"#val-map\">Validation mAP per epoch</a>";
    if !selecting.is_empty() {
        b += " · <a href=\"#selection\">Selection per epoch</a>";
    }
    if !with_ap.is_empty() {
        b += " · <a href=\"#per-class\">Per-class AP</a>";
    }
    b += "</nav>\n";

    // The runs.
    let _ = writeln!(
        b,
        "<h2 id=\"runs\">Runs</h2>\n<p class=\"note\">{} run{}. mAP does not depend on a threshold; CF1 and OF1 are at the thresholds the exported model applies: those calibrated on validation when the run chose them (so validation CF1 and OF1 are optimistic), else 0.5. Metrics in %; a click on a header sorts.</p>",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" }
    );
    let columns = [
        Column::text("run", "run"),
        Column::text("method", "method"),
        Column::text("protocol", "protocol"),
        Column::num("seed", "seed"),
        Column::num("epochs", "epochs"),
        Column::num("best_epoch", "best epoch"),
        Column::num("val_map", "val mAP"),
        Column::num("val_cf1", "val CF1"),
        Column::num("val_of1", "val OF1"),
        Column::num("test_map", "test mAP"),
        Column::num("test_cf1", "test CF1"),
        Column::num("test_of1", "test OF1"),
        Column::text("thresholds", "thresholds"),
    ];
    let rows: Vec<Vec<Cell>> = runs
        .iter()
        .map(|r| {
            let s = r.summary.as_ref();
            let cfg = r.config.as_ref();
            let method = s.map(|s| s.method.clone()).or_else(|| cfg.map(|c| c.method.to_string()));
            let protocol = s.map(|s| s.partial.clone()).or_else(|| cfg.map(|c| c.partial.clone()));
            let done = s.and_then(|s| s.epochs_done).unwrap_or(r.log.len());
            let of = s.and_then(|s| s.epochs).or(cfg.map(|c| c.epochs));
            let mut epochs = match of {
                Some(of) => format!("{done}/{of}"),
                None => done.to_string(),
            };
            if s.is_none() {
                epochs += " (unfinished)";
            }
            let val = s.and_then(|s| applied(Some(&s.val), s.val_calibrated.as_ref()));
            let test = s.and_then(|s| applied(s.test.as_ref(), s.test_calibrated.as_ref()));
            let thresholds = match s {
                None => "–".to_string(),
                Some(s) => match &s.thresholds {
                    Some(t) if s.val_calibrated.is_some() => {
                        if t.shrink > 0.0 {
                            format!(
                                "calibrated (global {}; {} classes their own, shrunk toward it, K {})",
                                significant(t.global),
                                t.per_class,
                                t.shrink
                            )
                        } else {
                            format!("calibrated (global {}; {} classes their own)", significant(t.global), t.per_class)
                        }
                    }
                    _ => format!("{}", s.val.threshold),
                },
            };
            let text = |v: Option<String>| Cell::text(v.as_deref().unwrap_or("–"));
            vec![
                Cell::markup(
                    &r.dir.display().to_string(),
                    format!("<span title=\"{}\">{}</span>", escape(&r.label), escape(&r.dir.display().to_string())),
                ),
                text(method),
                text(protocol),
                match cfg {
                    Some(c) => Cell::num(c.seed as f64, c.seed.to_string()),
                    None => Cell::num(f64::NAN, "–".into()),
                },
                Cell::num(done as f64, epochs),
                match s {
                    Some(s) => Cell::num(s.best_epoch as f64, s.best_epoch.to_string()),
                    None => Cell::num(f64::NAN, "–".into()),
                },
                pct_cell(s.map(|s| s.val.map)),
                pct_cell(val.map(|m| m.cf1)),
                pct_cell(val.map(|m| m.of1)),
                pct_cell(s.and_then(|s| s.test.as_ref()).map(|m| m.map)),
                pct_cell(test.map(|m| m.cf1)),
                pct_cell(test.map(|m| m.of1)),
                Cell::text(&thresholds),
            ]
        })
        .collect();
    b += &html::table("runs-table", &columns, &rows);

    // Validation mAP per epoch.
    let styles = run_styles(runs);
    let series: Vec<html::Series> = runs
        .iter()
        .zip(&styles)
        .map(|(r, &style)| html::Series { label: r.label.clone(), points: val_map_points(r), style: Some(style) })
        .collect();
    let marks: Vec<html::Mark> = runs
        .iter()
        .enumerate()
        .filter_map(|(k, r)| {
            let s = r.summary.as_ref()?;
            Some(html::Mark {
                x: s.best_epoch as f64,
                y: 100.0 * s.val.map,
                label: format!("{}: best epoch {}, validation mAP {}", r.label, s.best_epoch, pct(s.val.map)),
                series: Some(k),
            })
        })
        .collect();
    let range = percent_range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let _ = writeln!(
        b,
        "<h2 id=\"val-map\">Validation mAP per epoch</h2>\n<p class=\"note\">Of the exported network (the better peer) of each finished run, of network 0 of an unfinished one; the dot marks the best epoch, whose weights were exported.</p>"
    );
    b += &epoch_chart("Validation mAP per epoch", "mAP (%)", 640.0, series, range, marks);

    // The selection.
    if !selecting.is_empty() {
        let _ = writeln!(
            b,
            "<h2 id=\"selection\">Selection precision and recall per epoch</h2>\n<p class=\"note\">Of the unannotated entries a method flagged as likely missing positives (removed or corrected), the share that are truly hidden positives (precision), and the share of the hidden positives flagged (recall); of the same network as above. Only runs whose labels hide known positives (a simulated protocol) can be measured.</p>\n<div class=\"row\">"
        );
        for (what, precision) in [("precision", true), ("recall", false)] {
            let series: Vec<html::Series> = selecting
                .iter()
                .map(|&(k, r)| html::Series {
                    label: r.label.clone(),
                    points: selection_points(r, precision),
                    style: Some(styles[k]),
                })
                .collect();
            b += &epoch_chart(
                &format!("Selection {what} per epoch"),
                &format!("{what} (%)"),
                420.0,
                series,
                (0.0, 100.0),
                Vec::new(),
            );
        }
        b += "</div>\n";
    }

    // Per-class AP.
    if let Some(&(_, first, _)) = with_ap.first() {
        let n = first.len();
        let same: Vec<&(&Run, &[Option<f64>], &str)> = with_ap.iter().filter(|(_, ap, _)| ap.len() == n).collect();
        let names: Vec<String> = same
            .iter()
            .find_map(|(r, _, _)| r.classes.clone().filter(|c| c.len() == n))
            .unwrap_or_else(|| (1..=n).map(|c| format!("class {c}")).collect());
        let left_out = with_ap.len() - same.len();
        let _ = writeln!(
            b,
            "<h2 id=\"per-class\">Per-class AP</h2>\n<p class=\"note\">AP (%) of every class on the test split (validation when a run has no test split){}; – for a class without a positive there.{}</p>",
            if same.iter().any(|(_, _, split)| *split == "validation") { ", per run as its header says" } else { "" },
            if left_out > 0 { format!(" {left_out} run(s) with another number of classes left out.") } else { String::new() }
        );
        let mut columns = vec![Column::num("index", "#"), Column::text("class", "class")];
        for (k, (r, _, split)) in same.iter().enumerate() {
            let title = if *split == "test" { r.label.clone() } else { format!("{} ({split})", r.label) };
            columns.push(Column { key: format!("r{k}"), title, numeric: true });
        }
        let rows: Vec<Vec<Cell>> = (0..n)
            .map(|c| {
                let mut row = vec![Cell::num((c + 1) as f64, (c + 1).to_string()), Cell::text(&names[c])];
                row.extend(same.iter().map(|(_, ap, _)| pct_cell(ap[c])));
                row
            })
            .collect();
        b += &html::table("per-class-table", &columns, &rows);
    }
    b
}

/// The HTML form of [`write`]: one self-contained page, written atomically.
fn write_html(runs: &[PathBuf], out: &Path, title: &str) -> Result<()> {
    cls_core::fsio::check_output("--out", out)?;
    for r in runs {
        cls_core::fsio::refuse_inside("--out", out, "the run folder", r)?;
    }
    let runs: Vec<Run> = runs.iter().map(|d| load(d)).collect::<Result<_>>()?;
    let page = html::page(title, &html_body(&runs, title));
    cls_core::fsio::write_atomic(out, page.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// A threshold with three significant digits (calibrated thresholds can be far below 0.001).
fn significant(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = (2 - x.abs().log10().floor() as i32).max(0) as usize;
    format!("{x:.digits$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_one_method_share_a_colour_and_differ_in_line() {
        let run = |method: &str| Run {
            dir: PathBuf::from(method),
            label: method.into(),
            summary: None,
            log: Vec::new(),
            config: None,
            classes: None,
        };
        let runs: Vec<Run> = ["cls", "an", "cls", "an", "cls", "ll-r"].iter().map(|m| run(m)).collect();
        let n = html::PALETTE.len();
        // Colours by method (cls 0, an 1, ll-r 2); the second and third run of a method dashed, dotted.
        assert_eq!(run_styles(&runs), [0, 1, n, 1 + n, 2 * n, 2]);
    }

    #[test]
    fn the_extension_picks_the_form() {
        assert!(is_html(Path::new("r.html")) && is_html(Path::new("a/b.HTM")) && is_html(Path::new("x.Html")));
        assert!(!is_html(Path::new("report.md")) && !is_html(Path::new("html")) && !is_html(Path::new("a.html.md")));
    }

    #[test]
    fn markdown_cells_carry_no_markup() {
        assert_eq!(md_text("run<img src=x onerror=alert(1)>|x\ny"), "run&lt;img src=x onerror=alert(1)&gt;&#124;x y");
    }

    #[test]
    fn class_names_keep_the_file_order() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("thresholds.json");
        std::fs::write(&p, "{\"zebra\": 0.3, \"<b>a</b>\": 0.5, \"m\": 0.25}").unwrap();
        assert_eq!(class_names(&p).unwrap(), ["zebra", "<b>a</b>", "m"]);
        std::fs::write(&p, "[0.3]").unwrap();
        assert!(class_names(&p).is_none());
        assert!(class_names(&tmp.path().join("missing.json")).is_none());
    }

    #[test]
    fn percent_ranges_are_whole_tens() {
        assert_eq!(percent_range([72.5, 88.1].into_iter()), (70.0, 90.0));
        assert_eq!(percent_range([99.5].into_iter()), (90.0, 100.0));
        assert_eq!(percent_range([0.0].into_iter()), (0.0, 10.0));
        assert_eq!(percent_range([50.0, f64::NAN].into_iter()), (50.0, 60.0));
        assert_eq!(percent_range(std::iter::empty()), (0.0, 100.0));
    }

    #[test]
    fn thresholds_keep_three_significant_digits() {
        assert_eq!(super::significant(5.103e-5), "0.0000510");
        assert_eq!(super::significant(0.4567), "0.457");
        assert_eq!(super::significant(0.5), "0.500");
    }
}
