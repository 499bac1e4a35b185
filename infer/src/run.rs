//! One cls-infer run, top to bottom: check every option and output location, list and shard the
//! folder, read the model's metadata and the ground truth and baseline (so bad input fails in the
//! first second, before any work), tag (ONNX Runtime loads the model while the first images
//! decode), then evaluate and compare. With `--from-tags`, the evaluation reads earlier outputs
//! instead of tagging.

use crate::logging::Progress;
use crate::model::{self, ModelInfo};
use crate::output::{self, error_line, Output, Tagger};
use crate::pipeline::{self, Outcome, Plan, Runner};
use crate::scoring::{score_and_compare, Scored};
use crate::shard::Shard;
use crate::thresholds::Decision;
use crate::truth::{preview, Truth};
use crate::walk;
use crate::{runtime, Cli};
use anyhow::{bail, Context, Result};
use cls_core::fsio;
use cls_core::metrics::Metrics;
use cls_core::preprocess::Preprocess;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::Path;
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
    let classes = cli.classes.as_deref().map(model::read_classes).transpose()?;
    if !cli.from_tags.is_empty() {
        return evaluate_tags(cli, classes, size);
    }
    let shard = Shard::resolve(cli.shard.as_deref(), |k| std::env::var(k).ok())?;
    let threads =
        cli.threads.map(|t| t as usize).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // A missing --ort-lib (or ORT_DYLIB_PATH) now, not once the decoders run.
    runtime::check_library(cli.ort_lib.as_deref())?;

    // The folder.
    let listing = walk::list_images(&cli.images, cli.follow_links)?;
    if listing.images.is_empty() {
        bail!(
            "no images under {} (looked for the extensions {} in any case){}",
            cli.images.display(),
            walk::extensions().join(", "),
            if listing.problems.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} files could not be listed, the first: {}: {}",
                    listing.problems.len(),
                    listing.problems[0].path,
                    listing.problems[0].reason
                )
            }
        );
    }
    let range = shard.range(listing.images.len());
    let files = &listing.images[range.clone()];

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
    let batch = batch_size(cli, &head, &info)?;
    // Loading ONNX Runtime (tens of ms) and building the session run while the first batches
    // decode.
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
        tracing::info!(
            "{} images{} on {provider}, batch {batch}, {threads} threads (ONNX Runtime from {lib})",
            files.len(),
            if shard.is_whole() {
                String::new()
            } else {
                format!(" (shard {}/{} of {})", shard.index, shard.count, listing.images.len())
            },
        );
        Ok(Runner { session, input: io.input, output: io.output })
    };

    // Ground truth and baseline, before any work; the ground truth must name some of the images.
    let (truth, baseline) = truth_and_baseline(cli, &info.classes)?;
    // Resolved once, for matching the ground truth before tagging and for its report after.
    let all: HashSet<OsString> = match &truth {
        Some(t) => listing.images.iter().map(|f| t.key_of(&f.path)).collect(),
        None => HashSet::new(),
    };
    if let Some(t) = &truth {
        if t.entries_in(&all) == 0 {
            bail!(
                "none of the images of --ground-truth {} is under --images {}: no metrics (are the paths relative to the right folder?)",
                cli.ground_truth.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                cli.images.display()
            );
        }
    }

    // Tag.
    let mut out = output::open(cli.out.as_deref())?;
    let mut errors_out = cli.errors.as_deref().map(Output::create).transpose()?;
    let mut n_errors = 0usize;
    let mut report = |path: &str, reason: &str, errors_out: &mut Option<Output>| -> Result<()> {
        n_errors += 1;
        tracing::warn!("skipped {path}: {reason}");
        errors_out.as_mut().map_or(Ok(()), |o| o.line(&error_line(path, reason)))
    };
    if shard.index == 0 {
        for p in &listing.problems {
            report(&p.path, &p.reason, &mut errors_out)?;
        }
    }
    let pre = Preprocess {
        height: info.height,
        width: info.width,
        mean: info.mean,
        std: info.std,
        ..Preprocess::imagenet(info.height, info.width)
    };
    let plan =
        Plan { pre: &pre, batch, decode_threads: threads, num_classes: info.classes.len(), pad_to: head.fixed_batch };
    let mut tagger = Tagger::new(&info.classes);
    let mut scored = Scored::default();
    let mut bar = Progress::start(Some(files.len() as u64), Duration::from_secs_f64(cli.log_every));
    let started = Instant::now();
    let mut tagged = 0usize;
    let timing = pipeline::run(files, &plan, open, |i, outcome| {
        bar.inc();
        match outcome {
            Outcome::Scores(scores) => {
                tagged += 1;
                out.line(tagger.line(&files[i].rel, scores, &decision))?;
                if let Some(t) = &truth {
                    match t.row_of(&t.key_of(&files[i].path)) {
                        Some(row) => {
                            scored.rows.push(row);
                            scored.scores.extend_from_slice(scores);
                        }
                        None => scored.no_truth += 1,
                    }
                }
                Ok(())
            }
            Outcome::Failed(reason) => report(&files[i].rel, reason, &mut errors_out),
        }
    })?;
    bar.finish();
    out.finish()?;
    if let Some(e) = errors_out {
        e.finish()?;
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        "tagged {tagged} images, {n_errors} unreadable, in {secs:.1} s ({:.1} images/s)",
        tagged as f64 / secs.max(1e-9)
    );
    tracing::info!("{}", timing.summary());
    if tagged == 0 && !files.is_empty() {
        bail!("none of the {} images could be read (the reasons are above)", files.len());
    }

    // Metrics.
    let mut status = if cli.strict && n_errors > 0 { EXIT_UNREADABLE } else { EXIT_OK };
    if let Some(t) = &truth {
        let orphans = t.entries_without_image(&all);
        if !orphans.is_empty() {
            tracing::info!(
                "{} ground-truth entries have no image under {}: {}",
                orphans.len(),
                cli.images.display(),
                preview(&orphans)
            );
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
    let outputs: Vec<(&str, &Path)> =
        [("--out", &cli.out), ("--errors", &cli.errors), ("--metrics-out", &cli.metrics_out)]
            .into_iter()
            .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p)))
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
    score_and_compare(gt, cli.metrics_out.as_deref(), truth, baseline, cli.tolerance, classes, decision, scored)
}

/// `--ground-truth` mapped onto the model's classes (notes printed) and `--baseline`, each if given.
fn truth_and_baseline(cli: &Cli, classes: &[String]) -> Result<(Option<Truth>, Option<Metrics>)> {
    let truth = cli
        .ground_truth
        .as_deref()
        .map(|gt| Truth::load(gt, &cli.images, cli.gt_classes.as_deref(), classes))
        .transpose()?;
    for note in truth.iter().flat_map(|t| &t.notes) {
        tracing::info!("note: {note}");
    }
    let baseline = cli.baseline.as_deref().map(read_baseline).transpose()?;
    Ok((truth, baseline))
}

/// `--from-tags`: the metrics of tag files cls-infer wrote earlier (one per shard of an array
/// job, say), without running the model. Image paths are relative to `--images`, as written;
/// the model gives the class order and the default threshold.
fn evaluate_tags(cli: &Cli, classes: Option<Vec<String>>, size: Option<(u32, u32)>) -> Result<u8> {
    let (_, info) = model_info(cli, classes, size)?;
    let decision = decision(cli, &info)?;
    let (truth, baseline) = truth_and_baseline(cli, &info.classes)?;
    let truth = truth.context("--from-tags needs --ground-truth")?;
    let mut scored = Scored { rows: Vec::new(), scores: Vec::new(), no_truth: 0 };
    // Where each image was tagged, to refuse an image tagged twice (overlapping shards).
    let mut seen: HashMap<OsString, (usize, usize)> = HashMap::new();
    let place = |f: usize, n: usize| format!("{} line {}", cli.from_tags[f].display(), n + 1);
    for (f, file) in cli.from_tags.iter().enumerate() {
        // Streamed: the tags of a huge folder need not fit in memory.
        let reader = std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("--from-tags {}", file.display()))?,
        );
        for (n, line) in std::io::BufRead::lines(reader).enumerate() {
            let line = line.with_context(|| format!("--from-tags {}", file.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let (image, row) =
                parse_tag_line(&line, &info.classes).with_context(|| format!("--from-tags {}", place(f, n)))?;
            // Names are written escaped (walk::escape): back to the file's own bytes.
            let key = truth.key_of(&cli.images.join(walk::unescape(&image)));
            let row_in_truth = truth.row_of(&key);
            if let Some((f0, n0)) = seen.insert(key, (f, n)) {
                bail!("--from-tags: {image} is tagged twice, in {} and in {}", place(f0, n0), place(f, n));
            }
            match row_in_truth {
                Some(r) => {
                    scored.rows.push(r);
                    scored.scores.extend_from_slice(&row);
                }
                None => scored.no_truth += 1,
            }
        }
    }
    tracing::info!("read {} tagged images from {} files", seen.len(), cli.from_tags.len());
    let present: HashSet<OsString> = seen.into_keys().collect();
    let orphans = truth.entries_without_image(&present);
    if !orphans.is_empty() {
        tracing::info!("{} ground-truth entries were not tagged: {}", orphans.len(), preview(&orphans));
    }
    Ok(if score(cli, &truth, baseline.as_ref(), &info.classes, &decision, scored)? { EXIT_REGRESSION } else { EXIT_OK })
}

/// One line of cls-infer's output: the image's path and its scores in `classes` order.
fn parse_tag_line(line: &str, classes: &[String]) -> Result<(String, Vec<f32>)> {
    #[derive(serde::Deserialize)]
    struct Line {
        image: String,
        scores: HashMap<String, Option<f64>>,
    }
    let l: Line =
        serde_json::from_str(line).context("not a line of cls-infer's output ({\"image\": ..., \"scores\": {...}})")?;
    let row = classes
        .iter()
        .map(|c| match l.scores.get(c) {
            Some(Some(p)) => Ok(*p as f32),
            Some(None) => bail!("{}: the score of {c:?} is not a number", l.image),
            None => bail!("{}: no score for the model's class {c:?} (tagged by another model?)", l.image),
        })
        .collect::<Result<Vec<f32>>>()?;
    Ok((l.image, row))
}
