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
//! [`html`] holds the reusable pieces (escaping, sortable tables, SVG line charts, the page shell)
//! and depends on `std` only.

use anyhow::{bail, Context, Result};
use cls_core::fsio;
use cls_core::labels::{NEG, POS, UNK};
use cls_core::metrics::Metrics;
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
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a device"
    }
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
    tp: usize,
    fp: usize,
    fn_: usize,
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

impl ClassStats {
    fn support(&self) -> usize {
        self.tp + self.fn_
    }
    /// TP / (TP + FP), 0 when nothing is predicted (as `cls_core::metrics` and `--metrics-out`).
    fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    /// TP / (TP + FN), 0 without positives.
    fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    /// The harmonic mean of precision and recall, 0 when both are.
    fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
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
    let (mut tp, mut fp, mut fn_, mut negatives) = (0, 0, 0, 0);
    for &(s, _, pos) in &known {
        match (pos, predicted(s)) {
            (true, true) => tp += 1,
            (true, false) => fn_ += 1,
            (false, true) => fp += 1,
            (false, false) => {}
        }
        negatives += usize::from(!pos);
    }
    let worst_fp = known.iter().filter(|k| !k.2 && predicted(k.0)).take(WORST_PER_CLASS).map(|k| k.1).collect();
    // Lowest score first; equal scores in image order.
    let mut missed: Vec<&(f32, usize, bool)> = known.iter().filter(|k| k.2 && !predicted(k.0)).collect();
    missed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let worst_fn = missed.iter().take(WORST_PER_CLASS).map(|k| k.1).collect();
    let curve = pr_curve(&known.iter().map(|k| (k.0, k.2)).collect::<Vec<_>>());
    ClassStats {
        ap: input.metrics.per_class_ap[c],
        threshold: t,
        tp,
        fp,
        fn_,
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
                pct(Some(s.precision())),
                pct(Some(s.recall())),
                pct(Some(s.f1())),
                count(s.support()),
                count(s.negatives),
                count(s.tp),
                count(s.fp),
                count(s.fn_),
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
            if s.tp + s.fp > 0 {
                let (p, r) = (s.precision(), s.recall());
                marks.push(html::Mark {
                    x: r,
                    y: p,
                    label: format!("threshold {:.4}: precision {:.3}, recall {:.3}", s.threshold, p, r),
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
                series: vec![html::Series { label: "precision-recall".into(), points: thin(&s.curve, w, h, 600) }],
                marks,
                legend: false,
            };
            b += &html::line_chart(&chart);
        }
        let _ = writeln!(b, "<div class=\"worst\">");
        for (what, list, total) in [("False positives", &s.worst_fp, s.fp), ("False negatives", &s.worst_fn, s.fn_)] {
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

/// The pieces of a static, self-contained HTML page: escaping, `file://` links, sortable
/// tables, inline SVG line charts and the page shell (Content-Security-Policy, style, the
/// sorting script). `std` only, so that any crate of the workspace can take it over.
#[allow(dead_code)] // A toolkit: not every piece is used by this page (cls-train's comparison page).
pub mod html {
    use std::fmt::Write as _;
    use std::path::Path;

    /// `text` safe as HTML text and inside a double- or single-quoted attribute value.
    ///
    /// ```ignore
    /// assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    /// ```
    pub fn escape(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for ch in text.chars() {
            match ch {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                // Control characters (other than tab and newline) have no business on the page;
                // NUL would be dropped or replaced by the parser.
                c if c.is_control() && c != '\t' && c != '\n' => out.push('\u{FFFD}'),
                c => out.push(c),
            }
        }
        out
    }

    /// A `file://` URL of `path` (made absolute, links resolved where it exists): every byte but
    /// the unreserved characters (`A-Z a-z 0-9 - . _ ~`) and `/` percent-encoded, so the URL is
    /// plain ASCII whatever the name. Escape it with [`escape`] like any attribute value.
    pub fn file_url(path: &Path) -> String {
        use std::os::unix::ffi::OsStrExt;
        let abs = std::fs::canonicalize(path).unwrap_or_else(|_| {
            if path.is_absolute() {
                path.to_path_buf()
            } else {
                std::env::current_dir().unwrap_or_else(|_| "/".into()).join(path)
            }
        });
        let mut out = String::from("file://");
        for &b in abs.as_os_str().as_bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
                out.push(b as char);
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
        out
    }

    /// A column of a [`table`]: `key` names it in `#sort=KEY` (ASCII letters, digits, `_`).
    #[derive(Debug, Clone)]
    pub struct Column {
        pub key: String,
        pub title: String,
        pub numeric: bool,
    }

    impl Column {
        pub fn text(key: &str, title: &str) -> Column {
            Column { key: key.into(), title: title.into(), numeric: false }
        }
        pub fn num(key: &str, title: &str) -> Column {
            Column { key: key.into(), title: title.into(), numeric: true }
        }
    }

    /// A table cell: its markup and the value it sorts by.
    #[derive(Debug, Clone)]
    pub struct Cell {
        /// Markup, already escaped.
        pub html: String,
        /// Sort key (`data-v`): a number for numeric columns (NaN sorts last descending), a
        /// string otherwise; `None` sorts by the cell's text.
        pub sort: Option<String>,
    }

    impl Cell {
        /// Plain text (escaped here).
        pub fn text(text: &str) -> Cell {
            Cell { html: escape(text), sort: None }
        }
        /// A number shown as `shown` (escaped here), sorted by `value`.
        pub fn num(value: f64, shown: String) -> Cell {
            let sort = if value.is_finite() { format!("{value}") } else { String::new() };
            Cell { html: escape(&shown), sort: Some(sort) }
        }
        /// Markup the caller escaped, sorted by the plain text `sort_by` (or the cell's text when
        /// empty).
        pub fn markup(sort_by: &str, html: String) -> Cell {
            Cell { html, sort: (!sort_by.is_empty()).then(|| sort_by.to_string()) }
        }
    }

    /// A table the page's script sorts by clicking a header (or opening the page at
    /// `#sort=KEY` or `#sort=KEY-asc`); `id` must be a plain identifier.
    pub fn table(id: &str, columns: &[Column], rows: &[Vec<Cell>]) -> String {
        let mut out = format!("<table class=\"sortable\" id=\"{}\"><thead><tr>", escape(id));
        for c in columns {
            let _ = write!(
                out,
                "<th data-key=\"{}\"{}>{}</th>",
                escape(&c.key),
                if c.numeric { " class=\"num\"" } else { "" },
                escape(&c.title)
            );
        }
        out.push_str("</tr></thead>\n<tbody>\n");
        for row in rows {
            out.push_str("<tr>");
            for (cell, col) in row.iter().zip(columns) {
                let class = if col.numeric { " class=\"num\"" } else { "" };
                match &cell.sort {
                    Some(v) => {
                        let _ = write!(out, "<td{class} data-v=\"{}\">{}</td>", escape(v), cell.html);
                    }
                    None => {
                        let _ = write!(out, "<td{class}>{}</td>", cell.html);
                    }
                }
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</tbody></table>\n");
        out
    }

    /// A series of a [`Chart`], drawn as a polyline in data coordinates.
    #[derive(Debug, Clone)]
    pub struct Series {
        pub label: String,
        pub points: Vec<(f64, f64)>,
    }

    /// A marked point, with its label as a tooltip.
    #[derive(Debug, Clone)]
    pub struct Mark {
        pub x: f64,
        pub y: f64,
        pub label: String,
    }

    /// A line chart: series coloured from a fixed palette in order, optional legend.
    #[derive(Debug, Clone)]
    pub struct Chart {
        pub title: String,
        pub x_label: String,
        pub y_label: String,
        pub x_range: (f64, f64),
        pub y_range: (f64, f64),
        /// The plot area, in pixels (axes and labels add a margin).
        pub width: f64,
        pub height: f64,
        pub series: Vec<Series>,
        pub marks: Vec<Mark>,
        pub legend: bool,
    }

    /// The colours of the series, in order (then again).
    pub const PALETTE: [&str; 8] =
        ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7b83", "#57606a"];

    fn tick(v: f64) -> String {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s.is_empty() || s == "-" {
            "0".into()
        } else {
            s.into()
        }
    }

    /// An inline `<svg>` of `chart` (text escaped; no style attributes, so the page's CSP holds).
    pub fn line_chart(chart: &Chart) -> String {
        let (left, top, right, bottom) = (46.0, 26.0, 12.0, 40.0);
        let legend_h = if chart.legend { 18.0 * chart.series.len() as f64 } else { 0.0 };
        let (w, h) = (chart.width, chart.height);
        let (tw, th) = (left + w + right, top + h + bottom + legend_h);
        let span = |r: (f64, f64)| if r.1 > r.0 { r.1 - r.0 } else { 1.0 };
        let x = |v: f64| left + (v - chart.x_range.0) / span(chart.x_range) * w;
        let y = |v: f64| top + h - (v - chart.y_range.0) / span(chart.y_range) * h;
        let mut out = format!(
            "<svg class=\"chart\" width=\"{tw:.0}\" height=\"{th:.0}\" viewBox=\"0 0 {tw:.0} {th:.0}\" role=\"img\" aria-label=\"{}\">\n<title>{}</title>\n",
            escape(&chart.title),
            escape(&chart.title)
        );
        let _ = writeln!(out, "<text class=\"title\" x=\"{left:.1}\" y=\"16\">{}</text>", escape(&chart.title));
        let _ =
            writeln!(out, "<rect class=\"frame\" x=\"{left:.1}\" y=\"{top:.1}\" width=\"{w:.1}\" height=\"{h:.1}\"/>");
        for k in 0..=4 {
            let f = k as f64 / 4.0;
            let xv = chart.x_range.0 + f * span(chart.x_range);
            let yv = chart.y_range.0 + f * span(chart.y_range);
            let (px, py) = (x(xv), y(yv));
            let _ = writeln!(
                out,
                "<line class=\"grid\" x1=\"{px:.1}\" y1=\"{top:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\"/><line class=\"grid\" x1=\"{left:.1}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\"/>",
                top + h,
                left + w
            );
            let _ = writeln!(
                out,
                "<text class=\"tick\" x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text><text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                top + h + 14.0,
                tick(xv),
                left - 4.0,
                py + 4.0,
                tick(yv)
            );
        }
        let _ = writeln!(
            out,
            "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            left + w / 2.0,
            top + h + 32.0,
            escape(&chart.x_label)
        );
        let _ = writeln!(
            out,
            "<text class=\"axis\" x=\"12\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 12 {:.1})\">{}</text>",
            top + h / 2.0,
            top + h / 2.0,
            escape(&chart.y_label)
        );
        for (k, s) in chart.series.iter().enumerate() {
            let colour = PALETTE[k % PALETTE.len()];
            let pts: Vec<String> = s
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b)))
                .collect();
            let _ = writeln!(
                out,
                "<polyline class=\"series\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.6\" points=\"{}\"><title>{}</title></polyline>",
                pts.join(" "),
                escape(&s.label)
            );
            if chart.legend {
                let ly = top + h + bottom + 18.0 * k as f64 + 6.0;
                let _ = writeln!(
                    out,
                    "<line x1=\"{left:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"3\"/><text class=\"legend\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                    left + 24.0,
                    left + 30.0,
                    ly + 4.0,
                    escape(&s.label)
                );
            }
        }
        for m in chart.marks.iter().filter(|m| m.x.is_finite() && m.y.is_finite()) {
            let _ = writeln!(
                out,
                "<circle class=\"mark\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4.5\"><title>{}</title></circle>",
                x(m.x),
                y(m.y),
                escape(&m.label)
            );
        }
        out.push_str("</svg>\n");
        out
    }

    /// 128 random bits, hex: the page's CSP nonce (unguessable to whoever named the files).
    pub fn nonce() -> String {
        use std::hash::{BuildHasher, Hasher};
        let part = |salt: u64| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(salt);
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
            );
            h.finish()
        };
        format!("{:016x}{:016x}", part(1), part(2))
    }

    /// The page's stylesheet.
    pub const STYLE: &str = "
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em 2em;color:#1f2328;background:#fff}
h1{font-size:1.6em;margin:.2em 0 .5em}h2{margin-top:1.6em;border-bottom:1px solid #d0d7de;padding-bottom:.2em}
h3{margin:.2em 0}h4{margin:.6em 0 .3em;font-size:1em}
dl.about{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:0 0 1em}dl.about dt{font-weight:600}dl.about dd{margin:0;word-break:break-all}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa;white-space:nowrap}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.sortable thead th{cursor:pointer;user-select:none}table.sortable thead th:hover{background:#eaeef2}
th[aria-sort=ascending]::after{content:' \\25B2'}th[aria-sort=descending]::after{content:' \\25BC'}
table.metrics td{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#f9fafb}
.note{color:#57606a;max-width:60em}nav{margin:1em 0}
section.class{border:1px solid #d0d7de;border-radius:6px;padding:.6em 1em;margin:1em 0}
.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.thumbs{display:flex;flex-wrap:wrap;gap:.5em}
figure{margin:0;width:136px;font-size:12px;text-align:center}
figure img{display:block;margin:0 auto;border:1px solid #d0d7de;max-width:128px;max-height:128px;width:auto;height:auto}
figcaption .name{word-break:break-all}
.nothumb{display:flex;align-items:center;justify-content:center;width:128px;height:96px;background:#f6f8fa;border:1px dashed #8c959f;color:#57606a}
.lab{white-space:nowrap}.lab.missed{color:#cf222e;font-weight:600}.lab.extra{color:#9a6700;font-weight:600}
td{overflow-wrap:anywhere}
svg.chart{background:#fff}svg.chart .frame{fill:none;stroke:#8c959f}svg.chart .grid{stroke:#eaeef2}
svg.chart text{font-size:11px;fill:#57606a}svg.chart .title{font-size:12px;font-weight:600;fill:#1f2328}
svg.chart .mark{fill:#d1242f;stroke:#fff;stroke-width:1.5}
";

    /// The page's script: sorting of `table.sortable` (click or Enter on a header; `#sort=KEY` or
    /// `#sort=KEY-asc` in the URL on opening), then `data-js="ready"` and, once everything has
    /// loaded, `data-thumbs-loaded` (thumbnails that decoded) on the root element.
    pub const SCRIPT: &str = r#"
(function () {
  'use strict';
  var root = document.documentElement;
  function key(cell, numeric) {
    var v = cell.getAttribute('data-v');
    if (v === null) v = cell.textContent;
    if (!numeric) return v.toLowerCase();
    var f = parseFloat(v);
    return isNaN(f) ? -Infinity : f;
  }
  function sortBy(th, dir) {
    var row = th.parentNode, body = row.closest('table').tBodies[0];
    var idx = Array.prototype.indexOf.call(row.children, th);
    var numeric = th.classList.contains('num');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[idx], numeric), y = key(b.cells[idx], numeric);
      return (x < y ? -1 : x > y ? 1 : 0) * dir;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(row.children, function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
  }
  document.querySelectorAll('table.sortable thead th').forEach(function (th) {
    th.tabIndex = 0;
    function go() {
      var cur = th.getAttribute('aria-sort');
      sortBy(th, cur ? (cur === 'ascending' ? -1 : 1) : (th.classList.contains('num') ? -1 : 1));
    }
    th.addEventListener('click', go);
    th.addEventListener('keydown', function (e) {
      if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); go(); }
    });
  });
  var m = /^#sort=([A-Za-z0-9_]+)(?:-(asc|desc))?$/.exec(location.hash);
  if (m) {
    var th = document.querySelector('table.sortable thead th[data-key="' + m[1] + '"]');
    if (th) sortBy(th, m[2] === 'asc' ? 1 : -1);
  }
  root.setAttribute('data-js', 'ready');
  window.addEventListener('load', function () {
    var ok = 0;
    document.querySelectorAll('img.thumb').forEach(function (i) { if (i.complete && i.naturalWidth > 0) ok++; });
    root.setAttribute('data-thumbs-loaded', String(ok));
  });
})();
"#;

    /// A whole page around `body` (markup, escaped by the caller): UTF-8, a Content-Security-Policy
    /// that forbids every remote load, plugins, forms, `<base>` and any script or style but the
    /// page's own ([`STYLE`], [`SCRIPT`], by nonce), and allows images from the page's folder
    /// only.
    pub fn page(title: &str, body: &str) -> String {
        let nonce = nonce();
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; object-src 'none'; base-uri 'none'; form-action 'none'\">\n<meta name=\"referrer\" content=\"no-referrer\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style nonce=\"{nonce}\">{STYLE}</style>\n</head>\n<body>\n{body}\n<script nonce=\"{nonce}\">{SCRIPT}</script>\n</body>\n</html>\n",
            escape(title)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::html::{escape, file_url};
    use super::*;
    use cls_core::metrics::evaluate_with;
    use ndarray::{array, Array2};

    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(escape("<script>alert(1)</script>"), "&lt;script&gt;alert(1)&lt;/script&gt;");
        assert_eq!(escape("plain é 漢"), "plain é 漢");
        assert_eq!(escape("a\0b\u{1b}c\td"), "a\u{FFFD}b\u{FFFD}c\td");
    }

    #[test]
    fn file_urls_are_percent_encoded_ascii() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new("/data/<img src=x onerror=alert(1)>.jpg");
        assert_eq!(file_url(p), "file:///data/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.jpg");
        assert_eq!(file_url(Path::new("/d/a\"b&c #?%.jpg")), "file:///d/a%22b%26c%20%23%3F%25.jpg");
        let odd = std::ffi::OsStr::from_bytes(b"/d/\xff\xc3\xa9.png");
        assert_eq!(file_url(Path::new(odd)), "file:///d/%FF%C3%A9.png");
        let rel = file_url(Path::new("no/such/dir/x.png"));
        assert!(rel.starts_with("file:///") && rel.ends_with("/no/such/dir/x.png"), "{rel}");
    }

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
