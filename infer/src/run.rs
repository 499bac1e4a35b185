//! One cls-infer run, top to bottom: check every option and output location, read the model's
//! metadata, resolve `--images` to this shard's images, read the ground truth and baseline (so
//! bad input fails in the first second, before any work), open the outputs (skipping what a
//! resumed output holds), tag (ONNX Runtime loads the model while the first images decode), write
//! the stats, then evaluate and compare. With `--from-tags`, [`crate::fromtags`] reads earlier
//! outputs instead of tagging.

use crate::inputs::{self, Images, Item};
use crate::logging::Progress;
use crate::model::{self, ModelInfo};
use crate::output::{error_line, Encoder, Format, Output, Tagged};
use crate::pipeline::{self, Outcome, Plan, Runner, Work};
use crate::report::ReportImage;
use crate::scoring::{score_and_compare, Scored};
use crate::shard::Shard;
use crate::sink::{key_of, Sink};
use crate::stats::{self, Origin, Stats, ThresholdStats};
use crate::tars::TarBatches;
use crate::thresholds::Decision;
use crate::truth::{preview, Truth};
use crate::{runtime, Cli};
use anyhow::{bail, Context, Result};
use cls_core::fsio;
use cls_core::metrics::Metrics;
use cls_core::preprocess::Preprocess;
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Exit statuses other than the fatal one (2, from `main`).
pub const EXIT_OK: u8 = 0;
pub const EXIT_UNREADABLE: u8 = 1;
pub const EXIT_REGRESSION: u8 = 3;

fn read_baseline(path: &std::path::Path) -> Result<Metrics> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--baseline {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!("--baseline {}: not a metrics JSON written by cls-infer --metrics-out or cls-train", path.display())
    })
}

/// The sink's error when `--max-errors` is exceeded: the run stops, its outputs are kept.
#[derive(Debug)]
struct TooManyErrors(usize);

impl std::fmt::Display for TooManyErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped: more than {} images failed (--max-errors)", self.0)
    }
}

impl std::error::Error for TooManyErrors {}

/// Run with the parsed command line; returns the exit status, or an error (exit 2).
pub fn run(cli: &Cli) -> Result<u8> {
    if !(cli.log_every.is_finite() && cli.log_every >= 0.0) {
        bail!("--log-every {} must be a non-negative number of seconds", cli.log_every);
    }
    if !(cli.tolerance.is_finite() && cli.tolerance >= 0.0) {
        bail!("--tolerance {} must be a non-negative number", cli.tolerance);
    }
    let size = cli.size.as_deref().map(model::parse_size).transpose()?;
    check_outputs(cli)?;
    // One run at a time per output, held to the end (the stats included): a second run on the
    // same --out is refused here, before it touches OUT.partial.
    let _lock = match cli.out.as_deref() {
        Some(out) if cli.from_tags.is_empty() => crate::lock::OutLock::acquire(out, cli.format == Format::Xmp)?,
        _ => None,
    };
    let classes = cli.classes.as_deref().map(model::read_classes).transpose()?;
    if !cli.from_tags.is_empty() {
        let (_, info) = model_info(cli, classes, size)?;
        let decision = decision(cli, &info)?;
        let base = inputs::base_of(&cli.images);
        let (truth, baseline) = truth_and_baseline(cli, &base, &info.classes)?;
        let truth = truth.context("--from-tags needs --ground-truth")?;
        let scored = crate::fromtags::read(&cli.from_tags, &base, &info.classes, &truth)?;
        return Ok(if score(cli, &truth, baseline.as_ref(), &info.classes, &decision, scored)? {
            EXIT_REGRESSION
        } else {
            EXIT_OK
        });
    }
    let shard = Shard::resolve(cli.shard.as_deref(), |k| std::env::var(k).ok())?;
    let threads =
        cli.threads.map(|t| t as usize).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // A missing --ort-lib (or ORT_DYLIB_PATH) now, not once the decoders run.
    runtime::check_library(cli.ort_lib.as_deref())?;

    // The model: its description from the file's metadata, read without ONNX Runtime, so that
    // the first batches decode while ONNX Runtime builds the session (in `open`, below).
    let (head, info) = model_info(cli, classes, size)?;
    if let Some(c) = head.output_width.filter(|&c| c != info.classes.len()) {
        bail!(
            "--model {}: the model's output has {c} classes, but {} class names were given",
            cli.model.display(),
            info.classes.len()
        );
    }
    let decision = decision(cli, &info)?;
    // The model's SHA-256 (for --resume and the stats), while the images are listed.
    let model_path = cli.model.clone();
    let hashing = std::thread::spawn(move || stats::sha256(&model_path));
    if cli.csv_raw && cli.format != Format::Csv {
        bail!("--csv-raw is for --format csv");
    }
    if cli.format == Format::Csv {
        if let Some(c) = info.classes.iter().find(|c| ["image", "labels", "error"].contains(&c.as_str())) {
            bail!("--format csv: the model has a class named {c:?}, as one of the CSV's own columns (image, labels, error); use --format jsonl");
        }
    }
    let batch = batch_size(cli, &head, &info)?;

    // The images (a list or standard input is read now; only this shard's files are opened).
    let input = inputs::resolve(&cli.images, shard, cli.follow_links, std::io::stdin().lock())?;
    if matches!(input.images, Images::Tars(_))
        && cli.format == Format::Xmp
        && cli.out.as_deref() == Some(Path::new("."))
    {
        bail!("--format xmp --out .: tar members have no folder to put a sidecar beside; give --out DIR");
    }

    // Ground truth and baseline, before any work; the ground truth must name some of the images.
    let (truth, baseline) = truth_and_baseline(cli, &input.base, &info.classes)?;
    let all: HashSet<OsString> = match (&truth, &input.images) {
        (Some(t), Images::Files(items)) => items.iter().map(|f| t.key_of(&f.path)).collect(),
        _ => HashSet::new(),
    };
    if let (Some(t), Images::Files(items)) = (&truth, &input.images) {
        if shard.is_whole() && t.entries_in(&all) == 0 {
            bail!(
                "none of the images of --ground-truth {} is among --images {}: no metrics; {}",
                cli.ground_truth.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                cli.images.display(),
                t.where_it_looked(items.first().map(|it| it.path.as_path()))
            );
        }
    }

    // The outputs; with --resume, what they hold already is skipped, once they are known to come
    // from the same model and rule (the model's SHA-256, computed meanwhile, is needed now).
    let model_sha256 = hashing.join().map_err(|_| anyhow::anyhow!("the hashing thread crashed"))??;
    let origin = Origin {
        model: cli.model.display().to_string(),
        model_sha256,
        classes: info.classes.clone(),
        thresholds: ThresholdStats::of(&decision, &info.classes),
        csv_raw: Some(cli.csv_raw),
    };
    let encoder = Encoder::new(cli.format, &info.classes, &cli.keyword_root).with_csv_raw(cli.csv_raw);
    let relabel = cli.relabel.then_some(&decision);
    let (mut sink, done) = Sink::open(cli.format, cli.out.as_deref(), cli.resume, relabel, &origin, encoder)?;
    let mut errors_out = cli.errors.as_deref().map(Output::create).transpose()?;
    let format = cli.format;
    let skipped = Arc::new(AtomicUsize::new(0));
    let mut tar_status = None;
    let (batches, known): (Box<dyn Iterator<Item = Vec<Work>> + Send>, Option<usize>) = match input.images {
        Images::Files(mut items) => {
            let before = items.len();
            items.retain(|it| !done.contains(&key_of(format, it)));
            skipped.store(before - items.len(), Ordering::Relaxed);
            let n = items.len();
            let mut items = items.into_iter();
            let chunks = std::iter::from_fn(move || {
                let chunk: Vec<Work> = items.by_ref().take(batch).map(Work::of).collect();
                (!chunk.is_empty()).then_some(chunk)
            });
            (Box::new(chunks), Some(n))
        }
        Images::Tars(tars) => {
            let counter = skipped.clone();
            let skip = move |it: &Item| {
                let hit = done.contains(&key_of(format, it));
                if hit {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                hit
            };
            let (tar_batches, status) = TarBatches::start(tars, batch, Box::new(skip))?;
            tar_status = Some(status);
            (Box::new(tar_batches), None)
        }
    };
    let n_skipped_now = skipped.load(Ordering::Relaxed);
    if n_skipped_now > 0 {
        tracing::info!(
            "resuming: {n_skipped_now} images already in {} are skipped",
            cli.out.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
        );
    }
    // Loading ONNX Runtime (tens of ms) and building the session run while the first batches
    // decode.
    let kind = input.kind.clone();
    let open = || -> Result<Runner> {
        let (env, lib) = runtime::init(cli.ort_lib.as_deref())?;
        let (session, provider) = runtime::session(&env, &cli.model, cli.device, threads)?;
        let io = model::io(&session, &info).with_context(|| format!("--model {}", cli.model.display()))?;
        if let Some(n) = io.fixed_batch.filter(|_| io.fixed_batch != head.fixed_batch) {
            bail!(
                "--model {}: ONNX Runtime fixes the input's batch size at {n}, which cls-infer could not read from the file's graph",
                cli.model.display()
            );
        }
        let count = match known {
            Some(n) => format!("{n} images"),
            None => "the images".to_string(),
        };
        tracing::info!(
            "{count}{} on {provider}, batch {batch}, {threads} threads (ONNX Runtime from {lib}); input: {kind}",
            if shard.is_whole() {
                String::new()
            } else {
                format!(" (shard {}/{} of {})", shard.index, shard.count, input.total)
            },
        );
        Ok(Runner { session, input: io.input, output: io.output })
    };

    // Tag.
    let mut n_errors = 0usize;
    let max_errors = cli.max_errors;
    let mut report = |name: &str, reason: &str, errors_out: &mut Option<Output>| -> Result<()> {
        n_errors += 1;
        tracing::warn!("skipped {name}: {reason}");
        errors_out.as_mut().map_or(Ok(()), |o| o.line(&error_line(name, reason)))?;
        match max_errors {
            Some(max) if n_errors > max => Err(TooManyErrors(max).into()),
            _ => Ok(()),
        }
    };
    let pre = Preprocess {
        height: info.height,
        width: info.width,
        mean: info.mean,
        std: info.std,
        exif_orientation: !cli.no_exif_orientation,
        ..Preprocess::imagenet(info.height, info.width)
    };
    let plan =
        Plan { pre: &pre, batch, decode_threads: threads, num_classes: info.classes.len(), pad_to: head.fixed_batch };
    let mut chosen = Vec::new();
    let mut scored = Scored::default();
    let mut bar = Progress::start(known.map(|n| n as u64), Duration::from_secs_f64(cli.log_every));
    let started = Instant::now();
    let mut last_flush = Instant::now();
    let mut tagged = 0usize;
    let result = pipeline::run(batches, &plan, open, |item, outcome| {
        bar.inc();
        if last_flush.elapsed() > Duration::from_millis(250) {
            sink.flush()?;
            last_flush = Instant::now();
        }
        match outcome {
            Outcome::Scores(scores) => {
                decision.choose(scores, &mut chosen);
                if let Err(reason) = sink.row(&Tagged { item, result: Ok((scores, &chosen)) })? {
                    return report(&item.name, &reason, &mut errors_out);
                }
                tagged += 1;
                if let Some(t) = &truth {
                    match t.row_of(&t.key_of(&item.path)) {
                        Some(row) => {
                            scored.rows.push(row);
                            scored.scores.extend_from_slice(scores);
                            if cli.report.is_some() {
                                scored.images.push(ReportImage { name: item.name.clone(), path: item.path.clone() });
                            }
                        }
                        None => scored.no_truth += 1,
                    }
                }
                Ok(())
            }
            Outcome::Failed(reason) => {
                // A failed image's row (no sidecar can fail: it has none).
                let _ = sink.row(&Tagged { item, result: Err(reason) })?;
                report(&item.name, reason, &mut errors_out)
            }
        }
    });
    bar.finish();
    let (timing, stopped) = match result {
        Ok(t) => (Some(t), None),
        Err(e) => match e.downcast::<TooManyErrors>() {
            Ok(stop) => (None, Some(stop)),
            Err(e) => return Err(e),
        },
    };
    // The batches are gone (their reader joined): a tar reader that died must not pass for a
    // complete run (OUT stays as it was; OUT.partial holds what was tagged).
    if let (Some(status), None) = (&tar_status, &stopped) {
        status.check()?;
    }
    // OUT.stats.json, written beside a regular --out file or an xmp --out folder.
    let stats_file = cli
        .out
        .as_deref()
        .filter(|o| *o != Path::new(".") && *o != Path::new("-"))
        .filter(|o| matches!(fsio::classify(o), Ok(fsio::Dest::Regular(_))) || cli.format == Format::Xmp)
        .map(|o| (o, stats::stats_path(o)));
    // The stats of an earlier run must not outlive the OUT they describe: removed before the new
    // OUT goes into place, so that a kill between that and the new stats leaves OUT without
    // stats (which --resume refuses) rather than beside another run's.
    if let Some((_, stale)) = &stats_file {
        if let Err(e) = std::fs::remove_file(stale) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e).with_context(|| format!("cannot remove the earlier {}", stale.display()));
            }
        }
    }
    sink.finish()?;
    if let Some(e) = errors_out {
        e.finish()?;
    }
    let secs = started.elapsed().as_secs_f64();
    let n_skipped = skipped.load(Ordering::Relaxed);
    tracing::info!(
        "tagged {tagged} images, {n_errors} unreadable{}, in {secs:.1} s ({:.1} images/s)",
        if n_skipped > 0 { format!(", {n_skipped} skipped (already in the output)") } else { String::new() },
        tagged as f64 / secs.max(1e-9)
    );
    if let Some(t) = &timing {
        tracing::info!("{}", t.summary());
    }
    if let Some((out, path)) = &stats_file {
        let s = Stats {
            images: cli.images.display().to_string(),
            out: out.display().to_string(),
            format: cli.format.name().to_string(),
            shard: Stats::shard(shard),
            images_tagged: tagged,
            images_failed: n_errors,
            images_skipped: n_skipped,
            seconds: secs,
            images_per_second: tagged as f64 / secs.max(1e-9),
            model: origin.model.clone(),
            model_sha256: origin.model_sha256.clone(),
            thresholds: origin.thresholds.clone(),
            complete: stopped.is_none(),
            cls_infer: crate::VERSION.to_string(),
            classes: origin.classes.clone(),
            csv_raw: origin.csv_raw,
        };
        crate::output::write_file(path, &serde_json::to_string_pretty(&s)?)?;
    }
    if let Some(stop) = stopped {
        tracing::error!("{stop}; the rows so far are written (--resume continues)");
        return Ok(EXIT_UNREADABLE);
    }
    if tagged == 0 && n_errors > 0 {
        bail!("none of the {n_errors} images could be read (the reasons are above)");
    }

    // Metrics.
    let mut status = if cli.strict && n_errors > 0 { EXIT_UNREADABLE } else { EXIT_OK };
    if let Some(t) = &truth {
        if shard.is_whole() && !all.is_empty() {
            let orphans = t.entries_without_image(&all);
            if !orphans.is_empty() {
                tracing::info!(
                    "{} ground-truth entries have no image among {}: {}",
                    orphans.len(),
                    cli.images.display(),
                    preview(&orphans)
                );
            }
        }
        if scored.rows.is_empty() && !shard.is_whole() {
            // Normal in an array job over a folder that is only partly labelled.
            tracing::info!("none of this shard's images is in the ground truth: no metrics for it (all shards' outputs together: --from-tags)");
        } else if score(cli, t, baseline.as_ref(), &info.classes, &decision, scored)? {
            status = EXIT_REGRESSION;
        }
    }
    Ok(status)
}

/// Every output location, before any work: each must be writable, and none may be an input or
/// another output.
fn check_outputs(cli: &Cli) -> Result<()> {
    let out = cli.out.as_deref().filter(|_| cli.format != Format::Xmp);
    let outputs: Vec<(&str, &Path)> =
        [("--out", out), ("--errors", cli.errors.as_deref()), ("--metrics-out", cli.metrics_out.as_deref())]
            .into_iter()
            .filter_map(|(flag, p)| p.map(|p| (flag, p)))
            .collect();
    let mut inputs: Vec<(&str, &Path)> = vec![("--model", &cli.model)];
    inputs.extend(cli.ground_truth.as_deref().map(|p| ("--ground-truth", p)));
    inputs.extend(cli.baseline.as_deref().map(|p| ("--baseline", p)));
    inputs.extend(cli.classes.as_deref().map(|p| ("--classes", p)));
    inputs.extend(cli.gt_classes.as_deref().map(|p| ("--gt-classes", p)));
    inputs.extend(cli.thresholds.as_deref().map(|p| ("--thresholds", p)));
    inputs.extend(cli.from_tags.iter().map(|p| ("--from-tags", p.as_path())));
    fsio::refuse_overlap(&outputs, &inputs)?;
    for (flag, p) in &outputs {
        fsio::check_output(flag, p)?;
    }
    if let Some(dir) = &cli.report {
        crate::report::check_dir(dir).context("--report")?;
        // Thumbnails written inside the tagged folder would be tagged by the next run.
        if cli.images.is_dir() {
            fsio::refuse_inside("--report", dir, "--images", &cli.images)?;
        }
    }
    Ok(())
}

/// Images per batch: `--batch`, or the batch the model's graph fixes, such that a batch's input
/// tensor stays within [`pipeline::MAX_BATCH_BYTES`] (a smaller `--batch` is used, with a note).
fn batch_size(cli: &Cli, head: &model::Head, info: &ModelInfo) -> Result<usize> {
    let per_image = 3 * 4 * info.height as usize * info.width as usize;
    let fit = (pipeline::MAX_BATCH_BYTES / per_image).max(1);
    let batch = cli.batch as usize;
    if let Some(fixed) = head.fixed_batch {
        if fixed > fit {
            bail!(
                "--model {}: the graph fixes the batch at {fixed} images of {}x{}, which would take {} MiB a batch; cls-infer allows {} MiB ({fit} images): export the model with a smaller or a dynamic batch",
                cli.model.display(),
                info.height,
                info.width,
                (fixed as u128 * per_image as u128) >> 20,
                pipeline::MAX_BATCH_BYTES >> 20
            );
        }
        if fixed != batch {
            tracing::info!("note: the model's batch size is fixed at {fixed}; using it instead of --batch {batch}");
        }
        return Ok(fixed);
    }
    if batch > fit {
        tracing::info!(
            "note: a batch of {batch} images of {}x{} would take more than {} MiB; using batches of {fit}",
            info.height,
            info.width,
            pipeline::MAX_BATCH_BYTES >> 20
        );
        return Ok(fit);
    }
    Ok(batch)
}

/// The model's head and description (its metadata, or `--classes` / `--size`), notes printed.
fn model_info(cli: &Cli, classes: Option<Vec<String>>, size: Option<(u32, u32)>) -> Result<(model::Head, ModelInfo)> {
    if !cli.model.is_file() {
        bail!("--model {}: {}", cli.model.display(), if cli.model.exists() { "not a file" } else { "no such file" });
    }
    let head = model::read_head(&cli.model)?;
    let info = model::describe(|k| head.metadata.get(k).cloned(), classes, size)
        .with_context(|| format!("--model {}", cli.model.display()))?;
    for note in &info.notes {
        tracing::info!("note: {note}");
    }
    Ok((head, info))
}

/// The decision rule from the model and the flags, said on stderr.
fn decision(cli: &Cli, info: &ModelInfo) -> Result<Decision> {
    let d = Decision::resolve(
        &info.classes,
        info.threshold,
        info.thresholds.as_deref(),
        cli.threshold,
        cli.thresholds.as_deref(),
        cli.min_labels as usize,
        cli.top_k.map(|k| k as usize),
    )?;
    tracing::info!("thresholds: {}", d.source);
    Ok(d)
}

/// [`score_and_compare`] with the run's flags.
fn score(
    cli: &Cli,
    truth: &Truth,
    baseline: Option<&Metrics>,
    classes: &[String],
    decision: &Decision,
    scored: Scored,
) -> Result<bool> {
    let gt = cli.ground_truth.as_deref().unwrap_or(Path::new(""));
    let about: Vec<(String, String)> = [
        ("model", Some(cli.model.display().to_string())),
        ("images", Some(cli.images.display().to_string())),
        ("ground truth", Some(gt.display().to_string())),
        ("thresholds", Some(decision.source.clone())),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
    .collect();
    let report = cli.report.as_deref().map(|dir| (dir, about.as_slice()));
    score_and_compare(gt, cli.metrics_out.as_deref(), report, truth, baseline, cli.tolerance, classes, decision, scored)
}

/// `--ground-truth` mapped onto the model's classes (notes printed; image names relative to
/// `base`) and `--baseline`, each if given.
fn truth_and_baseline(cli: &Cli, base: &Path, classes: &[String]) -> Result<(Option<Truth>, Option<Metrics>)> {
    let truth =
        cli.ground_truth.as_deref().map(|gt| Truth::load(gt, base, cli.gt_classes.as_deref(), classes)).transpose()?;
    for note in truth.iter().flat_map(|t| &t.notes) {
        tracing::info!("note: {note}");
    }
    let baseline = cli.baseline.as_deref().map(read_baseline).transpose()?;
    Ok((truth, baseline))
}
