//! PNG plots of a run (plotters): validation mAP per epoch for every peer, and the precision and
//! recall of the selection's flagged entries against the hidden true labels (the paper's
//! Figure 3 as a curve). Written after every epoch into `RUN_DIR/plots/`.

use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::Path;

use crate::runlog::{read as read_log, EpochLog};

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draw a `width`×`height` picture with `draw` and write it to `path` as a PNG, atomically (a
/// run killed while plotting leaves the previous picture, never half of one).
pub fn save_png(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    register_font();
    let mut buf = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
    }
    let img = image::RgbImage::from_raw(width, height, buf).context("a picture of the wrong size")?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).with_context(|| format!("encoding {}", path.display()))?;
    crate::checkpoint::write_atomic(path, png.get_ref())
}

/// One named curve of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Its colour and line as those of the series at this index (as in `cls_core::html::Series`:
    /// the palette's colour `k % 8`, solid for `k < 8`, then dashed, then dotted). `None`: its own
    /// index.
    pub style: Option<usize>,
}

/// The `k`th colour of the palette the HTML pages use (`cls_core::html::PALETTE`: dark enough to
/// read on white), for the PNGs.
pub fn colour(k: usize) -> RGBColor {
    let palette = cls_core::html::PALETTE;
    let hex = palette[k % palette.len()];
    let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap_or(0);
    RGBColor((v >> 16) as u8, (v >> 8) as u8, v as u8)
}

/// A line chart with a legend; y in percent when `percent`. An `epoch` axis is labelled at whole
/// epochs only.
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
    let (corner, top, band) = legend_place(series, (x0, x1), (y0 - pad, y1 + pad), PLOT_AREA);
    save_png(path, (900, 540 + band), |root| {
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 24))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, (y0 - pad)..top)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let whole_epochs = x_label == "epoch";
        let x_format = move |x: &f64| {
            if !whole_epochs {
                format!("{x}")
            } else if x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_label_formatter(&x_format)
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (i, s) in series.iter().enumerate() {
            let k = s.style.unwrap_or(i);
            let color = colour(k).to_rgba();
            let line = color.stroke_width(2);
            let points = s.points.iter().copied();
            // The pattern as (dash, gap) pixels, and the legend's sample of it as three (start,
            // end) pieces, joined for a solid line.
            let ((dash, gap), sample): ((u32, u32), [(i32, i32); 3]) = match cls_core::html::line_kind(k) {
                0 => ((0, 0), [(0, 6), (6, 12), (12, 18)]),
                1 => ((7, 4), [(0, 7), (11, 18), (18, 18)]),
                2 => ((2, 4), [(0, 2), (8, 10), (16, 18)]),
                _ => ((14, 5), [(0, 14), (0, 14), (0, 14)]),
            };
            let drawn = if dash == 0 {
                chart.draw_series(LineSeries::new(points, line))
            } else {
                chart.draw_series(DashedLineSeries::new(points, dash, gap, line))
            };
            drawn.map_err(|e| anyhow::anyhow!("{e}"))?.label(s.name.clone()).legend(move |(x, y)| {
                let piece = |(a, b): (i32, i32)| PathElement::new(vec![(a, 0), (b, 0)], line);
                EmptyElement::at((x, y)) + piece(sample[0]) + piece(sample[1]) + piece(sample[2])
            });
            chart
                .draw_series(s.points.iter().map(|&(x, y)| Circle::new((x, y), 3, color.filled())))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .position(corner)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    })
}

/// The plot area of [`line_chart`] in pixels, about (the picture less its margins, caption and
/// axis labels): what the legend's size is measured against.
const PLOT_AREA: (f64, f64) = (812.0, 420.0);

/// Where the legend of `series` goes, and the top of the y axis: the corner of the plot area
/// where it hides none of their points and lines (sampled along each segment), in order lower
/// right, upper right, upper left, lower left; when every corner hides some, the legend goes in
/// a band of its height above the data at the upper right: the picture grows by that many pixels
/// (the third value) and the y axis upward from `y1`, so that the data keep their height. Its box
/// is estimated from the label font (15 px: about 8 px per character, 19 px per line, 40 px of
/// sample and padding).
fn legend_place(
    series: &[Series],
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
    area: (f64, f64),
) -> (SeriesLabelPosition, f64, u32) {
    let longest = series.iter().map(|s| s.name.chars().count()).max().unwrap_or(0) as f64;
    let band = series.len() as f64 * 19.0 + 12.0;
    let (w, h) = (((longest * 8.0 + 40.0) / area.0).min(1.0), (band / area.1).min(1.0));
    // Every point and 8 samples per segment, as fractions of the axes (0 to 1, y up).
    let frac =
        |(x, y): (f64, f64)| ((x - x0) / (x1 - x0).max(f64::MIN_POSITIVE), (y - y0) / (y1 - y0).max(f64::MIN_POSITIVE));
    let mut samples = Vec::new();
    for s in series {
        let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
        samples.extend(pts.iter().map(|&p| frac(p)));
        for pair in pts.windows(2) {
            let (a, b) = (frac(pair[0]), frac(pair[1]));
            samples.extend((1..8).map(|i| {
                let t = i as f64 / 8.0;
                (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1))
            }));
        }
    }
    // (position, the box's x range, y range)
    let corners = [
        (SeriesLabelPosition::LowerRight, (1.0 - w, 1.0), (0.0, h)),
        (SeriesLabelPosition::UpperRight, (1.0 - w, 1.0), (1.0 - h, 1.0)),
        (SeriesLabelPosition::UpperLeft, (0.0, w), (1.0 - h, 1.0)),
        (SeriesLabelPosition::LowerLeft, (0.0, w), (0.0, h)),
    ];
    let hidden = |(xs, ys): ((f64, f64), (f64, f64))| {
        samples.iter().filter(|p| xs.0 <= p.0 && p.0 <= xs.1 && ys.0 <= p.1 && p.1 <= ys.1).count()
    };
    for (pos, xs, ys) in corners {
        if hidden((xs, ys)) == 0 {
            return (pos, y1, 0);
        }
    }
    // The data keep the plot area's height; the band is added above them.
    (SeriesLabelPosition::UpperRight, y1 + (y1 - y0) * band / area.1, band.ceil() as u32)
}

/// Validation mAP (%) per epoch, one series per peer: each point is (a line's epoch, that line's
/// mAP of the peer); lines without the peer are left out.
pub fn val_map_series(log: &[EpochLog]) -> Vec<Series> {
    let n_peers = log.iter().map(|l| l.val.len()).max().unwrap_or(0);
    (0..n_peers)
        .map(|k| Series {
            name: format!("peer {k}"),
            points: log.iter().filter_map(|l| l.val.get(k).map(|v| (l.epoch as f64, 100.0 * v.map))).collect(),
            style: None,
        })
        .collect()
}

/// The selection's precision and recall (%) per epoch, two series per network that selected
/// anything. Each value is plotted at the epoch of its own line: epochs without a selection (the
/// first, where the removal rates are still 0) have no point, and shift nothing.
pub fn selection_series(log: &[EpochLog]) -> Vec<Series> {
    let n_sel = log.iter().map(|l| l.selection.len()).max().unwrap_or(0);
    let mut series = Vec::new();
    for k in 0..n_sel {
        for (what, precision) in [("precision", true), ("recall", false)] {
            series.push(Series {
                name: format!("{what}, net {k}"),
                points: log
                    .iter()
                    .filter_map(|l| {
                        let s = l.selection.get(k)?;
                        let v = if precision { s.precision } else { s.recall }?;
                        Some((l.epoch as f64, 100.0 * v))
                    })
                    .collect(),
                // A colour per network, the recall dashed.
                style: Some(k + if precision { 0 } else { cls_core::html::PALETTE.len() }),
            });
        }
    }
    series
}

/// `plots/val_map.png` and (for methods that select labels) `plots/selection.png`.
pub fn write_run_plots(run_dir: &Path) -> Result<()> {
    let log = read_log(run_dir)?;
    let dir = run_dir.join("plots");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    line_chart(&dir.join("val_map.png"), "Validation mAP per epoch", "epoch", "mAP (%)", &val_map_series(&log))?;
    let series = selection_series(&log);
    if !series.is_empty() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runlog::{SelectionStats, ValSummary};

    fn line(epoch: usize, sel: Option<(f64, f64)>) -> EpochLog {
        EpochLog {
            epoch,
            loss: vec![1.0, 1.0],
            val: vec![ValSummary { map: 0.1 * epoch as f64, cf1: 0.0, of1: 0.0 }; 2],
            r_h: 1.0,
            r_l: 1.0,
            selection: sel.map_or(vec![], |(p, r)| {
                vec![SelectionStats { precision: Some(p), recall: Some(r), ..Default::default() }; 2]
            }),
            lr: 0.1,
            images_per_s: 1.0,
            seconds: 1.0,
        }
    }

    #[test]
    fn the_legend_goes_where_it_hides_no_point() {
        let curve = |name: &str, pts: &[(f64, f64)]| Series { name: name.into(), points: pts.to_vec(), style: None };
        let place = |series: &[Series]| {
            let (pos, top, band) = legend_place(series, (1.0, 10.0), (0.0, 100.0), PLOT_AREA);
            (format!("{pos:?}"), top, band)
        };
        let at = |p: SeriesLabelPosition| format!("{p:?}");
        // Rising curves leave the lower right free.
        let rising: Vec<Series> = (0..3)
            .map(|k| curve("a", &(1..=10).map(|e| (e as f64, 8.0 * e as f64 + k as f64)).collect::<Vec<_>>()))
            .collect();
        assert_eq!(place(&rising), (at(SeriesLabelPosition::LowerRight), 100.0, 0));
        // Curves along the bottom and the top from epoch 7: the upper left is free (the legend
        // is 55% of the width).
        let name = "a long run name (runs/corel5k-ft-single-jocor-s0)";
        let mut v = vec![
            curve(name, &(7..=10).map(|e| (e as f64, 2.0)).collect::<Vec<_>>()),
            curve("b", &(7..=10).map(|e| (e as f64, 98.0)).collect::<Vec<_>>()),
        ];
        assert_eq!(place(&v), (at(SeriesLabelPosition::UpperLeft), 100.0, 0));
        // Across the whole width: no corner is free, so the legend goes in a band above the data:
        // the picture and the axis grow by its height (2 lines), the data keep theirs.
        v[0].points.insert(0, (1.0, 2.0));
        v[1].points.insert(0, (1.0, 98.0));
        let (pos, top, band) = place(&v);
        assert_eq!((pos, band), (at(SeriesLabelPosition::UpperRight), 2 * 19 + 12));
        let per_pixel = 100.0 / PLOT_AREA.1;
        assert!((top - (100.0 + band as f64 * per_pixel)).abs() < 1e-9, "{top}");
    }

    #[test]
    fn every_plotted_value_sits_at_the_epoch_of_its_line() {
        // Epoch 1 selects nothing (R = 1), so its line has no selection.
        let log = vec![line(1, None), line(2, Some((0.5, 0.25))), line(3, Some((0.75, 0.5))), line(4, None)];
        let sel = selection_series(&log);
        assert_eq!(sel.len(), 4, "precision and recall for each of two networks");
        assert_eq!(sel[0].points, vec![(2.0, 50.0), (3.0, 75.0)], "precision, net 0");
        assert_eq!(sel[1].points, vec![(2.0, 25.0), (3.0, 50.0)], "recall, net 0");
        for s in &sel {
            for &(x, y) in &s.points {
                let l = &log[x as usize - 1];
                let st = &l.selection[0];
                assert!(y == 100.0 * st.precision.unwrap() || y == 100.0 * st.recall.unwrap());
            }
        }
        let maps = val_map_series(&log);
        assert_eq!(maps.len(), 2);
        for (i, &(x, y)) in maps[1].points.iter().enumerate() {
            assert_eq!(x, (i + 1) as f64);
            assert!((y - 100.0 * log[i].val[1].map).abs() < 1e-12);
        }
        // A line missing a peer's result is left out of that peer's curve, not a panic.
        let mut short = line(5, None);
        short.val.pop();
        let maps = val_map_series(&[log[0].clone(), short]);
        assert_eq!(maps[1].points.len(), 1);
    }
}
