//! `--report DIR`: an error-analysis page, `DIR/index.html`, self-contained and static (no network,
//! no CDN): the metrics, a sortable per-class table (AP, precision, recall, F1, support, threshold),
//! a precision-recall curve per class (inline SVG) with the operating point at the class's
//! threshold, each class's worst false positives and false negatives as thumbnails
//! (`DIR/thumbs/<hash>.jpg`, 128 px on the long side, linked to the originals), and a per-image
//! table of true against predicted labels (the [`MAX_IMAGE_ROWS`] images with the most errors when
//! there are more).
//!
//! Safety: every name on the page (file names, class names, notes) is HTML-escaped; thumbnails are
//! named by a hash of the image's path, never by the file's own name; links to the originals are
//! percent-encoded `file://` URLs. The page carries a Content-Security-Policy that allows no remote
//! load at all, images only from the page's own folder, and only its own style and script (by a
//! random nonce): markup injected through a name could neither load anything nor run, even if
//! escaping failed. Files are written atomically through [`cls_core::fsio`], only inside `DIR`.
//!
//! This file uses nothing of cls-infer but the crates (cls-core, anyhow, image, ndarray), so the
//! end-to-end tests include it as a module (`tests/report.rs`) and call [`write_report`] directly.
//! The page's pieces (escaping, sortable tables, SVG line charts, the page shell) come from
//! [`cls_core::html`], which `cls-train report`'s comparison page shares.

use anyhow::{bail, Context, Result};
use cls_core::fsio;
use cls_core::html;
use cls_core::labels::{NEG, POS, UNK};
use cls_core::metrics::{Counts, Metrics};
use cls_core::preprocess::{decode_file, squish, DEFAULT_MAX_PIXELS};
use ndarray::ArrayView2;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Worst false positives and false negatives shown per class.
pub const WORST_PER_CLASS: usize = 8;
/// Rows of the per-image table at most (the images with the most errors).
pub const MAX_IMAGE_ROWS: usize = 500;
/// The long side of a thumbnail, in pixels.
pub const THUMB_SIDE: u32 = 128;
/// The page's file name inside the report folder.
pub const INDEX: &str = "index.html";
/// The thumbnails' folder inside the report folder.
pub const THUMBS: &str = "thumbs";

/// One evaluated image.
#[derive(Debug, Clone)]
pub struct ReportImage {
    /// As shown (the image's name in cls-infer's output: relative to `--images`, escaped).
    pub name: String,
    /// The file to read for its thumbnail and to link to.
    pub path: PathBuf,
}

/// What the page shows. Row `i` of `scores` and `truth` belongs to `images[i]`, column `c` to
/// `classes[c]`; `metrics` is what [`cls_core::metrics::evaluate`] (or `evaluate_with`) computed
/// from them, and gives the threshold(s): `metrics.thresholds[c]` when present, else
/// `metrics.threshold`.
#[derive(Debug, Clone, Copy)]
pub struct ReportInput<'a> {
    pub classes: &'a [String],
    pub images: &'a [ReportImage],
    /// Scores (probabilities), images × classes.
    pub scores: ArrayView2<'a, f32>,
    /// Ground truth, images × classes: 1 positive, −1 negative, 0 unknown.
    pub truth: ArrayView2<'a, i8>,
    pub metrics: &'a Metrics,
    /// Lines of (label, value) shown under the title, e.g. ("model", "m.onnx"); plain text.
    pub about: &'a [(String, String)],
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq)]
#[allow(dead_code)] // Callers read what they tell the user.
pub struct ReportSummary {
    /// `DIR/index.html`.
    pub index: PathBuf,
    /// Thumbnails written.
    pub thumbnails: usize,
    /// Images whose thumbnail could not be made: (name, reason).
    pub unreadable: Vec<(String, String)>,
    /// Rows of the per-image table.
    pub image_rows: usize,
    /// Images with at least one missed or extra label.
    pub images_with_errors: usize,
}

/// Refuse, before any work, a report folder that cannot be used: an existing non-directory, a
/// missing path under a non-directory, or an `index.html` or `thumbs` there that is a symbolic
/// link or not the kind of file the report writes (writing through it could land outside the
/// folder). Creates nothing.
pub fn check_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("--report {}: exists and is not a directory", dir.display()),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            // Created with its parents at the end: the nearest existing ancestor must be a folder.
            let mut up = dir.parent();
            while let Some(p) = up.filter(|p| !p.as_os_str().is_empty()) {
                match std::fs::metadata(p) {
                    Ok(m) if m.is_dir() => return Ok(()),
                    Ok(_) => bail!("--report {}: {} is not a directory", dir.display(), p.display()),
                    Err(_) => up = p.parent(),
                }
            }
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("--report {}", dir.display())),
    }
    for (name, want_dir) in [(INDEX, false), (THUMBS, true)] {
        let p = dir.join(name);
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            let ok = if want_dir { m.is_dir() } else { m.is_file() };
            if !ok {
                bail!(
                    "--report {}: {} is {}, not a {}: remove it or choose another folder",
                    dir.display(),
                    p.display(),
                    kind_of(&m),
                    if want_dir { "folder" } else { "regular file" }
                );
            }
        }
    }
    Ok(())
}

fn kind_of(m: &std::fs::Metadata) -> &'static str {
    fsio::kind_name(m.file_type())
}

/// Write the page and its thumbnails into `dir` (created if missing; see [`check_dir`]). The
/// thumbnails come first and the page last, so a page never names a thumbnail not yet written;
/// thumbnails of an earlier report in `dir` that this one does not use are removed.
pub fn write_report(dir: &Path, input: &ReportInput) -> Result<ReportSummary> {
    validate(input)?;
    check_dir(dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("--report {}: cannot create the folder", dir.display()))?;
    let thumbs_dir = dir.join(THUMBS);
    if !thumbs_dir.is_dir() {
        std::fs::create_dir(&thumbs_dir).with_context(|| format!("cannot create {}", thumbs_dir.display()))?;
    }
    check_dir(dir)?;

    let n_classes = input.classes.len();
    let stats: Vec<ClassStats> = par_map(n_classes, |c| class_stats(input, c));

    // Thumbnails of every image shown in a class's worst lists, each made once.
    let shown: BTreeSet<usize> = stats.iter().flat_map(|s| s.worst_fp.iter().chain(&s.worst_fn).copied()).collect();
    let shown: Vec<usize> = shown.into_iter().collect();
    let made: Vec<Result<Thumb, String>> = par_map(shown.len(), |k| {
        let image = &input.images[shown[k]];
        let thumb = make_thumbnail(&image.path)?;
        let dest = thumbs_dir.join(&thumb.file);
        // Never through a link or into a FIFO another process left under the thumbnail's name.
        if let Ok(m) = std::fs::symlink_metadata(&dest) {
            if !m.is_file() {
                return Err(format!("{} is {}; not replaced", dest.display(), kind_of(&m)));
            }
        }
        fsio::write_atomic(&dest, &thumb.jpeg).map_err(|e| format!("{e:#}"))?;
        Ok(thumb)
    });
    let mut thumbs: BTreeMap<usize, Result<Thumb, String>> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for (&i, t) in shown.iter().zip(made) {
        if let Err(reason) = &t {
            unreadable.push((input.images[i].name.clone(), reason.clone()));
        }
        thumbs.insert(i, t);
    }
    let written: BTreeSet<String> = thumbs.values().filter_map(|t| t.as_ref().ok()).map(|t| t.file.clone()).collect();

    let per_image = image_rows(input);
    let body = page_body(input, &stats, &thumbs, &per_image);
    let page = html::page("Error analysis", &body);
    let index = dir.join(INDEX);
    fsio::write_atomic(&index, page.as_bytes())?;
    remove_stale_thumbs(&thumbs_dir, &written);
    Ok(ReportSummary {
        index,
        thumbnails: written.len(),
        unreadable,
        image_rows: per_image.rows.len(),
        images_with_errors: per_image.with_errors,
    })
}

fn validate(input: &ReportInput) -> Result<()> {
    let shape = (input.images.len(), input.classes.len());
    if input.scores.dim() != shape || input.truth.dim() != shape {
        bail!(
            "report: scores {:?} and ground truth {:?} must both be {:?} (images × classes)",
            input.scores.dim(),
            input.truth.dim(),
            shape
        );
    }
    if input.metrics.per_class_ap.len() != shape.1 {
        bail!("report: the metrics have {} classes, not {}", input.metrics.per_class_ap.len(), shape.1);
    }
    if let Some(t) = &input.metrics.thresholds {
        if t.len() != shape.1 {
            bail!("report: {} per-class thresholds for {} classes", t.len(), shape.1);
        }
    }
    if let Some(((i, c), _)) = input.scores.indexed_iter().find(|(_, s)| s.is_nan()) {
        bail!("report: the score of {} for {:?} is NaN", input.images[i].name, input.classes[c]);
    }
    Ok(())
}

fn threshold_of(m: &Metrics, c: usize) -> f64 {
    m.thresholds.as_ref().map_or(m.threshold, |t| t[c])
}

/// `f(0..n)` on the machine's cores (scoped threads taking indices in turn), in order.
fn par_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(n).max(1);
    if threads == 1 {
        return (0..n).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut parts: Vec<Vec<(usize, T)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return done;
                        }
                        done.push((i, f(i)));
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let mut all: Vec<(usize, T)> = parts.iter_mut().flat_map(std::mem::take).collect();
    all.sort_unstable_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

/// One class at its threshold.
#[derive(Debug, Clone, PartialEq)]
struct ClassStats {
    ap: Option<f64>,
    threshold: f64,
    /// TP, FP, FN at the threshold (`cls_core::metrics::Counts`, as the metrics file counts).
    counts: Counts,
    /// Known negatives.
    negatives: usize,
    unknown: usize,
    /// (recall, precision) over the distinct score thresholds, from (0, 1); empty without positives.
    curve: Vec<(f64, f64)>,
    /// False positives, highest score first (at most [`WORST_PER_CLASS`]).
    worst_fp: Vec<usize>,
    /// False negatives, lowest score first (at most [`WORST_PER_CLASS`]).
    worst_fn: Vec<usize>,
}

fn class_stats(input: &ReportInput, c: usize) -> ClassStats {
    let t = threshold_of(input.metrics, c);
    let scores = input.scores.column(c);
    let truth = input.truth.column(c);
    let mut known: Vec<(f32, usize, bool)> = Vec::with_capacity(scores.len());
    let mut unknown = 0;
    for (i, (&s, &y)) in scores.iter().zip(truth.iter()).enumerate() {
        match y {
            UNK => unknown += 1,
            _ => known.push((s, i, y == POS)),
        }
    }
    // Highest score first; equal scores in image order.
    known.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let predicted = |s: f32| f64::from(s) >= t;
    let counts = Counts::of_class(scores, truth, t);
    let negatives = known.len() - counts.support();
    let worst_fp = known.iter().filter(|k| !k.2 && predicted(k.0)).take(WORST_PER_CLASS).map(|k| k.1).collect();
    // Lowest score first; equal scores in image order.
    let mut missed: Vec<&(f32, usize, bool)> = known.iter().filter(|k| k.2 && !predicted(k.0)).collect();
    missed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let worst_fn = missed.iter().take(WORST_PER_CLASS).map(|k| k.1).collect();
    let curve = pr_curve(&known.iter().map(|k| (k.0, k.2)).collect::<Vec<_>>());
    ClassStats {
        ap: input.metrics.per_class_ap[c],
        threshold: t,
        counts,
        negatives,
        unknown,
        curve,
        worst_fp,
        worst_fn,
    }
}

/// Precision against recall over the distinct score thresholds of `ranked` (score, positive),
/// sorted by decreasing score: one point where each group of equal scores ends, after the
/// starting point (recall 0, precision 1), as scikit-learn's `precision_recall_curve`. Empty
/// when there is no positive.
fn pr_curve(ranked: &[(f32, bool)]) -> Vec<(f64, f64)> {
    let n_pos = ranked.iter().filter(|r| r.1).count();
    if n_pos == 0 {
        return Vec::new();
    }
    let mut out = vec![(0.0, 1.0)];
    let (mut tp, mut seen) = (0usize, 0usize);
    for (i, &(s, pos)) in ranked.iter().enumerate() {
        tp += usize::from(pos);
        seen += 1;
        if ranked.get(i + 1).is_none_or(|next| next.0 != s) {
            out.push((tp as f64 / n_pos as f64, tp as f64 / seen as f64));
        }
    }
    out
}

/// At most about `max` points of a curve drawn `width × height` pixels: consecutive points that
/// fall on the same half pixel are merged (the first and the last are kept), then, if still too
/// many, every k-th is kept.
fn thin(points: &[(f64, f64)], width: f64, height: f64, max: usize) -> Vec<(f64, f64)> {
    let cell = |&(x, y): &(f64, f64)| ((x * width * 2.0).round() as i64, (y * height * 2.0).round() as i64);
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let last = i + 1 == points.len();
        if out.last().is_some_and(|q| cell(q) == cell(p)) && !last {
            continue;
        }
        out.push(*p);
    }
    if out.len() > max && max >= 2 {
        let step = out.len().div_ceil(max - 1);
        let last = *out.last().unwrap_or(&(0.0, 0.0));
        out = out.iter().step_by(step).copied().collect();
        if out.last() != Some(&last) {
            out.push(last);
        }
    }
    out
}

struct Thumb {
    file: String,
    width: u32,
    height: u32,
    jpeg: Vec<u8>,
}

/// The thumbnail's file name: a hash of the path's bytes (the same image, the same name).
fn thumb_name(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    // FNV-1a, 128 bits.
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for &b in path.as_os_str().as_bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    format!("{h:032x}.jpg")
}

/// `dims` scaled so that the long side is [`THUMB_SIDE`] (the short one at least 1).
fn thumb_size(w: u32, h: u32) -> (u32, u32) {
    let long = w.max(h).max(1) as f64;
    let scale = |v: u32| ((v as f64 * THUMB_SIDE as f64 / long).round() as u32).clamp(1, THUMB_SIDE);
    (scale(w), scale(h))
}

fn make_thumbnail(path: &Path) -> Result<Thumb, String> {
    let img = decode_file(path, DEFAULT_MAX_PIXELS).map_err(|e| e.to_string())?;
    let (width, height) = thumb_size(img.width(), img.height());
    let small = squish(&img, width, height);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
        .encode_image(&small)
        .map_err(|e| format!("cannot encode the thumbnail: {e}"))?;
    Ok(Thumb { file: thumb_name(path), width, height, jpeg })
}

/// Remove thumbnails (hash-named `.jpg` files) that the new page does not use.
fn remove_stale_thumbs(thumbs_dir: &Path, keep: &BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(thumbs_dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.len() == 36
            && name.ends_with(".jpg")
            && name[..32].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ours && !keep.contains(&name) && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The per-image table: which images, in which order.
struct ImageRows {
    /// (image, missed, extra), most errors first.
    rows: Vec<(usize, Vec<usize>, Vec<usize>)>,
    with_errors: usize,
}

fn image_rows(input: &ReportInput) -> ImageRows {
    let n_classes = input.classes.len();
    let mut rows: Vec<(usize, Vec<usize>, Vec<usize>)> = (0..input.images.len())
        .map(|i| {
            let (mut missed, mut extra) = (Vec::new(), Vec::new());
            for c in 0..n_classes {
                let predicted = f64::from(input.scores[[i, c]]) >= threshold_of(input.metrics, c);
                match (input.truth[[i, c]], predicted) {
                    (POS, false) => missed.push(c),
                    (NEG, true) => extra.push(c),
                    _ => {}
                }
            }
            (i, missed, extra)
        })
        .collect();
    let with_errors = rows.iter().filter(|r| !r.1.is_empty() || !r.2.is_empty()).count();
    // Most errors first; equal counts in input order (the sort is stable).
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.len() + r.2.len()));
    rows.truncate(MAX_IMAGE_ROWS);
    ImageRows { rows, with_errors }
}

fn pct(v: Option<f64>) -> html::Cell {
    match v {
        Some(v) => html::Cell::num(v, format!("{:.1}", 100.0 * v)),
        None => html::Cell::num(f64::NAN, "–".to_string()),
    }
}

fn count(v: usize) -> html::Cell {
    html::Cell::num(v as f64, v.to_string())
}

/// Class names, escaped, joined with commas (each in a span), or a dash.
fn labels(input: &ReportInput, classes: impl IntoIterator<Item = usize>, class: &str) -> String {
    let names: Vec<String> = classes
        .into_iter()
        .map(|c| format!("<span class=\"{class}\">{}</span>", html::escape(&input.classes[c])))
        .collect();
    if names.is_empty() {
        "–".to_string()
    } else {
        names.join(", ")
    }
}

fn page_body(
    input: &ReportInput,
    stats: &[ClassStats],
    thumbs: &BTreeMap<usize, Result<Thumb, String>>,
    per_image: &ImageRows,
) -> String {
    use html::escape;
    let m = input.metrics;
    let mut b = String::new();
    let _ = writeln!(b, "<h1>Error analysis</h1>");
    // Summary.
    let _ = writeln!(b, "<dl class=\"about\">");
    for (k, v) in input.about {
        let _ = writeln!(b, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(v));
    }
    let threshold =
        if m.thresholds.is_some() { format!("per class (global {})", m.threshold) } else { m.threshold.to_string() };
    let _ = writeln!(
        b,
        "<dt>images</dt><dd>{} ({} with a missed or extra label)</dd><dt>classes</dt><dd>{} ({} evaluated, {} without positives)</dd><dt>threshold</dt><dd>{}</dd>",
        m.n_images,
        per_image.with_errors,
        input.classes.len(),
        m.n_classes_evaluated,
        m.n_classes_excluded,
        escape(&threshold)
    );
    if m.n_unknown > 0 {
        let _ = writeln!(b, "<dt>unknown</dt><dd>{} ground-truth entries (left out of their class)</dd>", m.n_unknown);
    }
    let _ = writeln!(b, "</dl>");
    let head = ["mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"];
    let top =
        [None, Some(m.top3.cp), Some(m.top3.cr), Some(m.top3.cf1), Some(m.top3.op), Some(m.top3.or), Some(m.top3.of1)];
    let at_t = [m.map, m.cp, m.cr, m.cf1, m.op, m.or, m.of1].map(Some);
    let _ = writeln!(b, "<table class=\"metrics\"><thead><tr><th></th>");
    for h in head {
        let _ = write!(b, "<th>{h} %</th>");
    }
    let _ = writeln!(b, "</tr></thead><tbody>");
    for (name, row) in [("at the threshold", at_t), ("top-3", top)] {
        let _ = write!(b, "<tr><th>{name}</th>");
        for v in row {
            let _ = write!(b, "<td>{}</td>", v.map_or("–".to_string(), |v| format!("{:.1}", 100.0 * v)));
        }
        let _ = writeln!(b, "</tr>");
    }
    let _ = writeln!(b, "</tbody></table>");
    let _ = writeln!(
        b,
        "<nav><a href=\"#classes\">Classes</a> · <a href=\"#curves\">Curves and worst errors</a> · <a href=\"#images\">Images</a></nav>"
    );

    // The class table.
    let _ = writeln!(
        b,
        "<h2 id=\"classes\">Classes</h2>\n<p class=\"note\">Percentages at each class's threshold, as in the metrics file; click a column to sort. Precision is 0 when nothing is predicted, recall 0 and AP undefined (–) when the class has no positive. Support: known positives.</p>"
    );
    use html::{Cell, Column};
    let columns = [
        Column::text("class", "class"),
        Column::num("ap", "AP %"),
        Column::num("precision", "precision %"),
        Column::num("recall", "recall %"),
        Column::num("f1", "F1 %"),
        Column::num("support", "support"),
        Column::num("negatives", "negatives"),
        Column::num("tp", "TP"),
        Column::num("fp", "FP"),
        Column::num("fn", "FN"),
        Column::num("threshold", "threshold"),
    ];
    let rows: Vec<Vec<Cell>> = stats
        .iter()
        .enumerate()
        .map(|(c, s)| {
            vec![
                Cell::markup(&input.classes[c], format!("<a href=\"#class-{c}\">{}</a>", escape(&input.classes[c]))),
                pct(s.ap),
                pct(Some(s.counts.precision())),
                pct(Some(s.counts.recall())),
                pct(Some(s.counts.f1())),
                count(s.counts.support()),
                count(s.negatives),
                count(s.counts.tp),
                count(s.counts.fp),
                count(s.counts.fn_),
                Cell::num(s.threshold, format!("{:.4}", s.threshold)),
            ]
        })
        .collect();
    b += &html::table("class-table", &columns, &rows);

    // Per class: the curve and the worst errors.
    let _ = writeln!(
        b,
        "<h2 id=\"curves\">Curves and worst errors</h2>\n<p class=\"note\">Precision against recall over every score threshold; the dot is the class's threshold. False positives: negatives scored at or above the threshold, highest first; false negatives: positives below it, lowest first; at most {WORST_PER_CLASS} each. A thumbnail links to the original.</p>"
    );
    for (c, s) in stats.iter().enumerate() {
        let name = escape(&input.classes[c]);
        let _ = writeln!(b, "<section class=\"class\" id=\"class-{c}\">\n<h3>{name}</h3>\n<div class=\"row\">");
        if s.curve.is_empty() {
            let _ = writeln!(b, "<p class=\"nocurve\">No positive: no precision-recall curve.</p>");
        } else {
            let (w, h) = (300.0, 220.0);
            let mut marks = Vec::new();
            // Nothing predicted: no operating point on the curve.
            if s.counts.tp + s.counts.fp > 0 {
                let (p, r) = (s.counts.precision(), s.counts.recall());
                marks.push(html::Mark {
                    x: r,
                    y: p,
                    label: format!("threshold {:.4}: precision {:.3}, recall {:.3}", s.threshold, p, r),
                    series: None,
                });
            }
            let chart = html::Chart {
                title: format!(
                    "{} — AP {}",
                    input.classes[c],
                    s.ap.map_or("–".to_string(), |a| format!("{:.1} %", 100.0 * a))
                ),
                x_label: "recall".into(),
                y_label: "precision".into(),
                x_range: (0.0, 1.0),
                y_range: (0.0, 1.0),
                width: w,
                height: h,
                series: vec![html::Series {
                    label: "precision-recall".into(),
                    points: thin(&s.curve, w, h, 600),
                    style: None,
                }],
                marks,
                ..Default::default()
            };
            b += &html::line_chart(&chart);
        }
        let _ = writeln!(b, "<div class=\"worst\">");
        for (what, list, total) in
            [("False positives", &s.worst_fp, s.counts.fp), ("False negatives", &s.worst_fn, s.counts.fn_)]
        {
            let _ = writeln!(b, "<h4>{what}: {total}</h4><div class=\"thumbs\">");
            if list.is_empty() {
                let _ = writeln!(b, "<p class=\"none\">none</p>");
            }
            for &i in list {
                b += &figure(input, i, c, thumbs.get(&i));
            }
            let _ = writeln!(b, "</div>");
        }
        let _ = writeln!(b, "</div></div></section>");
    }

    // Per image.
    let _ = writeln!(b, "<h2 id=\"images\">Images</h2>");
    let n = input.images.len();
    let _ = writeln!(
        b,
        "<p class=\"note\">{}Predicted: scored at or above the class's threshold. Missed: true but not predicted; extra: predicted but false (unknown entries are neither).</p>",
        if n > per_image.rows.len() {
            format!(
                "{n} images; shown: the {} with the most missed and extra labels ({} have any). ",
                per_image.rows.len(),
                per_image.with_errors
            )
        } else {
            format!("All {n} images, the most missed and extra labels first. ")
        }
    );
    let columns = [
        Column::text("image", "image"),
        Column::num("errors", "errors"),
        Column::text("true", "true labels"),
        Column::text("predicted", "predicted"),
        Column::text("missed", "missed"),
        Column::text("extra", "extra"),
    ];
    let rows: Vec<Vec<Cell>> = per_image
        .rows
        .iter()
        .map(|(i, missed, extra)| {
            let i = *i;
            let image = &input.images[i];
            let truth: Vec<usize> = (0..input.classes.len()).filter(|&c| input.truth[[i, c]] == POS).collect();
            let predicted: Vec<usize> = (0..input.classes.len())
                .filter(|&c| f64::from(input.scores[[i, c]]) >= threshold_of(input.metrics, c))
                .collect();
            vec![
                Cell::markup(
                    &image.name,
                    format!("<a href=\"{}\">{}</a>", escape(&html::file_url(&image.path)), escape(&image.name)),
                ),
                count(missed.len() + extra.len()),
                Cell::markup("", labels(input, truth, "lab")),
                Cell::markup("", labels(input, predicted, "lab")),
                Cell::markup("", labels(input, missed.iter().copied(), "lab missed")),
                Cell::markup("", labels(input, extra.iter().copied(), "lab extra")),
            ]
        })
        .collect();
    b += &html::table("image-table", &columns, &rows);
    b
}

/// One thumbnail (or why there is none), linked to the original, with its name and score.
fn figure(input: &ReportInput, i: usize, c: usize, thumb: Option<&Result<Thumb, String>>) -> String {
    use html::escape;
    let image = &input.images[i];
    let name = escape(&image.name);
    let href = escape(&html::file_url(&image.path));
    let inner = match thumb {
        Some(Ok(t)) => format!(
            "<img class=\"thumb\" src=\"{THUMBS}/{}\" width=\"{}\" height=\"{}\" alt=\"{name}\">",
            t.file, t.width, t.height
        ),
        Some(Err(reason)) => format!("<span class=\"nothumb\" title=\"{}\">no thumbnail</span>", escape(reason)),
        None => "<span class=\"nothumb\">no thumbnail</span>".to_string(),
    };
    format!(
        "<figure><a href=\"{href}\" title=\"{name}\">{inner}</a><figcaption><span class=\"name\">{name}</span><br>{:.4}</figcaption></figure>\n",
        input.scores[[i, c]]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cls_core::metrics::evaluate_with;
    use ndarray::{array, Array2};

    #[test]
    fn pr_curve_follows_the_distinct_thresholds() {
        // Positives at ranks 1 and 3; a tie of one positive and one negative at the end.
        let ranked = [(0.9, true), (0.8, false), (0.7, true), (0.5, true), (0.5, false)];
        let c = pr_curve(&ranked);
        assert_eq!(c, vec![(0.0, 1.0), (1.0 / 3.0, 1.0), (1.0 / 3.0, 0.5), (2.0 / 3.0, 2.0 / 3.0), (1.0, 0.6)]);
        assert!(pr_curve(&[(0.5, false)]).is_empty());
        // Thinning keeps the ends and bounds the count.
        let many: Vec<(f64, f64)> = (0..10_000).map(|i| (i as f64 / 9999.0, 1.0 - (i % 7) as f64 / 50.0)).collect();
        let t = thin(&many, 300.0, 220.0, 600);
        assert!(t.len() <= 601, "{}", t.len());
        assert_eq!((t[0], *t.last().unwrap()), (many[0], *many.last().unwrap()));
    }

    #[test]
    fn thumbnail_names_and_sizes() {
        let a = thumb_name(Path::new("/x/<img src=x onerror=alert(1)>.jpg"));
        assert_eq!(a.len(), 36);
        assert!(a.ends_with(".jpg") && a[..32].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, thumb_name(Path::new("/x/a.jpg")));
        assert_eq!(a, thumb_name(Path::new("/x/<img src=x onerror=alert(1)>.jpg")));
        assert_eq!(thumb_size(400, 300), (128, 96));
        assert_eq!(thumb_size(30, 40), (96, 128));
        assert_eq!(thumb_size(4000, 2), (128, 1));
    }

    /// Three images, a hostile class name, per-class thresholds.
    fn fixture(dir: &Path) -> (Vec<String>, Vec<ReportImage>, Array2<f32>, Array2<i8>, Metrics) {
        let classes = vec!["cat".to_string(), "<script>alert(1)</script>".to_string()];
        let mut images = Vec::new();
        for (k, name) in ["<img src=x onerror=alert(1)>.png", "a\"b&c.png", "plain.png"].iter().enumerate() {
            let p = dir.join(name);
            image::RgbImage::from_pixel(40 + 10 * k as u32, 30, image::Rgb([200, 30 * k as u8, 10])).save(&p).unwrap();
            images.push(ReportImage { name: name.to_string(), path: p });
        }
        let scores = array![[0.9f32, 0.8], [0.7, 0.1], [0.2, 0.6]];
        let truth = array![[1i8, -1], [-1, 1], [1, 0]];
        let metrics = evaluate_with(scores.view(), truth.view(), 0.5, Some(&[0.5, 0.3])).unwrap();
        (classes, images, scores, truth, metrics)
    }

    #[test]
    fn writes_an_escaped_page_and_hash_named_thumbnails() {
        let tmp = tempfile::tempdir().unwrap();
        let (classes, images, scores, truth, metrics) = fixture(tmp.path());
        let about = vec![("model".to_string(), "<b>m</b>.onnx".to_string())];
        let input = ReportInput {
            classes: &classes,
            images: &images,
            scores: scores.view(),
            truth: truth.view(),
            metrics: &metrics,
            about: &about,
        };
        let dir = tmp.path().join("nested/report");
        let summary = write_report(&dir, &input).unwrap();
        assert_eq!(summary.index, dir.join("index.html"));
        // cat: image 1 is a false positive (0.7 ≥ 0.5), image 2 a false negative (0.2 < 0.5);
        // the hostile class: image 0 a false positive (0.8 ≥ 0.3), image 1 a false negative.
        assert_eq!(summary.thumbnails, 3);
        assert!(summary.unreadable.is_empty());
        assert_eq!((summary.image_rows, summary.images_with_errors), (3, 3));
        let page = std::fs::read_to_string(&summary.index).unwrap();
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;.png"));
        assert!(page.contains("a&quot;b&amp;c.png"));
        assert!(page.contains("&lt;b&gt;m&lt;/b&gt;.onnx"));
        assert!(!page.contains("<img src=x") && !page.contains("<script>alert") && !page.contains("<b>m"));
        assert_eq!(page.matches("<script").count(), 1);
        assert!(page.contains("http-equiv=\"Content-Security-Policy\"") && page.contains("default-src 'none'"));
        assert!(page.contains("%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.png") && page.contains("a%22b%26c.png"));
        // No URL but the links to the originals.
        assert!(!page.contains("http:") && !page.contains("https:") && !page.contains("//www"));
        let mut thumbs: Vec<String> = std::fs::read_dir(dir.join("thumbs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        thumbs.sort();
        assert_eq!(thumbs.len(), 3);
        for t in &thumbs {
            assert_eq!(t.len(), 36, "{t}");
            assert!(page.contains(&format!("src=\"thumbs/{t}\"")));
            let img = image::open(dir.join("thumbs").join(t)).unwrap();
            assert_eq!(img.width().max(img.height()), THUMB_SIDE);
        }
        // Again: the same thumbnails, stale ones removed, nothing else in the folder.
        std::fs::write(dir.join("thumbs").join(format!("{:032x}.jpg", 7)), b"old").unwrap();
        std::fs::write(dir.join("thumbs").join("keep.txt"), b"not ours").unwrap();
        write_report(&dir, &input).unwrap();
        let mut again: Vec<String> = std::fs::read_dir(dir.join("thumbs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        again.sort();
        thumbs.push("keep.txt".into());
        thumbs.sort();
        assert_eq!(again, thumbs);
    }

    #[test]
    fn refuses_unsafe_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let (classes, images, scores, truth, metrics) = fixture(tmp.path());
        let input = ReportInput {
            classes: &classes,
            images: &images,
            scores: scores.view(),
            truth: truth.view(),
            metrics: &metrics,
            about: &[],
        };
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = format!("{:#}", write_report(&file, &input).unwrap_err());
        assert!(e.contains("not a directory"), "{e}");
        let e = format!("{:#}", write_report(&file.join("sub"), &input).unwrap_err());
        assert!(e.contains("not a directory"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
        // index.html or thumbs as links out of the folder.
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim.html"), b"keep").unwrap();
        let d1 = tmp.path().join("d1");
        std::fs::create_dir(&d1).unwrap();
        std::os::unix::fs::symlink(outside.join("victim.html"), d1.join("index.html")).unwrap();
        let e = format!("{:#}", write_report(&d1, &input).unwrap_err());
        assert!(e.contains("symbolic link"), "{e}");
        let d2 = tmp.path().join("d2");
        std::fs::create_dir(&d2).unwrap();
        std::os::unix::fs::symlink(&outside, d2.join("thumbs")).unwrap();
        let e = format!("{:#}", write_report(&d2, &input).unwrap_err());
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        assert_eq!(std::fs::read(outside.join("victim.html")).unwrap(), b"keep");
        // Mismatched shapes.
        let short = ReportInput { images: &images[..2], ..input };
        assert!(write_report(&tmp.path().join("d3"), &short).is_err());
    }

    #[test]
    fn unreadable_images_get_a_placeholder() {
        let tmp = tempfile::tempdir().unwrap();
        let (classes, mut images, scores, truth, metrics) = fixture(tmp.path());
        std::fs::write(&images[1].path, b"not a png").unwrap();
        images[2].path = tmp.path().join("missing.png");
        let input = ReportInput {
            classes: &classes,
            images: &images,
            scores: scores.view(),
            truth: truth.view(),
            metrics: &metrics,
            about: &[],
        };
        let s = write_report(&tmp.path().join("r"), &input).unwrap();
        assert_eq!(s.thumbnails, 1);
        assert_eq!(s.unreadable.len(), 2);
        let page = std::fs::read_to_string(&s.index).unwrap();
        assert_eq!(page.matches("class=\"nothumb\"").count(), 2 + 1, "image 1 is shown twice");
    }
}
