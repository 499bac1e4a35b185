//! PNG plots of a run (plotters): validation mAP per epoch for every peer, and the precision and
//! recall of the selection's flagged entries against the hidden true labels (the paper's
//! Figure 3 as a curve). Written after every epoch into `RUN_DIR/plots/`.

use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::Path;

use crate::train::read_log;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One named curve of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart with a legend; y in percent when `percent`.
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    register_font();
    let all: Vec<(f64, f64)> =
        series.iter().flat_map(|s| s.points.iter().copied()).filter(|p| p.1.is_finite()).collect();
    if all.is_empty() {
        return Ok(());
    }
    let (x0, x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = ((y1 - y0) * 0.08).max(0.5);
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(s.points.iter().map(|&(x, y)| Circle::new((x, y), 3, color.filled())))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `plots/val_map.png` and (for methods that select labels) `plots/selection.png`.
pub fn write_run_plots(run_dir: &Path) -> Result<()> {
    let log = read_log(run_dir)?;
    let dir = run_dir.join("plots");
    std::fs::create_dir_all(&dir)?;
    let n_peers = log.first().map_or(0, |l| l.val.len());
    let maps: Vec<Series> = (0..n_peers)
        .map(|k| Series {
            name: format!("peer {k}"),
            points: log.iter().map(|l| (l.epoch as f64, 100.0 * l.val[k].map)).collect(),
        })
        .collect();
    line_chart(&dir.join("val_map.png"), "Validation mAP per epoch", "epoch", "mAP (%)", &maps)?;
    let n_sel = log.iter().map(|l| l.selection.len()).max().unwrap_or(0);
    if n_sel > 0 {
        let mut series = Vec::new();
        for k in 0..n_sel {
            for (what, f) in [("precision", true), ("recall", false)] {
                series.push(Series {
                    name: format!("{what}, net {k}"),
                    points: log
                        .iter()
                        .filter_map(|l| l.selection.get(k))
                        .zip(log.iter().map(|l| l.epoch))
                        .filter_map(|(s, e)| if f { s.precision } else { s.recall }.map(|v| (e as f64, 100.0 * v)))
                        .collect(),
                });
            }
        }
        line_chart(
            &dir.join("selection.png"),
            "Flagged unannotated entries that are hidden positives",
            "epoch",
            "%",
            &series,
        )?;
    }
    Ok(())
}
