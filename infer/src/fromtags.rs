//! `--from-tags`: the metrics of tag files cls-infer wrote earlier (one per shard of an array
//! job, say), without running the model. JSONL or CSV (by the `.csv` extension); names are
//! relative to the base of `--images` as written (see [`crate::inputs`]; a CSV text cell without
//! the leading `'` that protects it from spreadsheets, see [`crate::output`]); rows with an `error`
//! are failed images and left out. The `<file>.stats.json` beside each file says which shard it
//! is: shards of the job that none of the files is are named.

use crate::scoring::Scored;
use crate::stats;
use crate::truth::{preview, Truth};
use crate::walk;
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Read `files` against `truth`: the scores of the tagged images with ground truth.
pub fn read(files: &[PathBuf], base: &Path, classes: &[String], truth: &Truth) -> Result<Scored> {
    let mut scored = Scored::default();
    // Where each image was tagged, to refuse an image tagged twice (overlapping shards).
    let mut seen: HashMap<OsString, (usize, usize)> = HashMap::new();
    let place = |f: usize, n: usize| format!("{} row {}", files[f].display(), n + 1);
    let mut failed = 0usize;
    for (f, file) in files.iter().enumerate() {
        let mut add = |n: usize, image: String, row: Option<Vec<f32>>| -> Result<()> {
            let Some(row) = row else {
                failed += 1;
                return Ok(());
            };
            // Names are written escaped (walk::escape): back to the file's own bytes.
            let key = truth.key_of(&base.join(walk::unescape(&image)));
            let row_in_truth = truth.row_of(&key);
            if let Some((f0, n0)) = seen.insert(key, (f, n)) {
                bail!("--from-tags: {image} is tagged twice, in {} and in {}", place(f0, n0), place(f, n));
            }
            match row_in_truth {
                Some(r) => {
                    scored.rows.push(r);
                    scored.scores.extend_from_slice(&row);
                    let path = base.join(walk::unescape(&image));
                    scored.images.push(crate::report::ReportImage { name: image.clone(), path });
                }
                None => scored.no_truth += 1,
            }
            Ok(())
        };
        let open = || std::fs::File::open(file).with_context(|| format!("--from-tags {}", file.display()));
        if file.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
            // Text cells carry a leading ' against spreadsheet formulas, unless written --csv-raw
            // (or by an earlier version, whose stats do not say: it wrote them as they are).
            let raw = stats::read_beside(file).is_some_and(|s| s.csv_raw != Some(false));
            read_csv(open()?, classes, raw, |n, image, row| {
                add(n, image, row).with_context(|| format!("--from-tags {}", place(f, n)))
            })?;
        } else {
            // Streamed: the tags of a huge folder need not fit in memory.
            let reader = std::io::BufReader::new(open()?);
            for (n, line) in std::io::BufRead::lines(reader).enumerate() {
                let line = line.with_context(|| format!("--from-tags {}", file.display()))?;
                if line.trim().is_empty() {
                    continue;
                }
                let (image, row) =
                    parse_tag_line(&line, classes).with_context(|| format!("--from-tags {}", place(f, n)))?;
                add(n, image, row)?;
            }
        }
    }
    tracing::info!(
        "read {} tagged images from {} files{}",
        seen.len(),
        files.len(),
        if failed > 0 { format!(" ({failed} rows of failed images left out)") } else { String::new() }
    );
    let shard_stats: Vec<Option<stats::Stats>> = files.iter().map(|f| stats::read_beside(f)).collect();
    let without: Vec<String> =
        files.iter().zip(&shard_stats).filter(|(_, s)| s.is_none()).map(|(f, _)| f.display().to_string()).collect();
    if let Some((count, missing)) = stats::missing_shards(&shard_stats) {
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(|i| format!("{i}/{count}")).collect();
            let list: Vec<&str> = list.iter().map(String::as_str).collect();
            tracing::warn!(
                "{} of {count} shards have no tag file here (by the .stats.json beside the files): {}",
                missing.len(),
                preview(&list)
            );
        }
        for s in shard_stats.iter().flatten().filter(|s| !s.complete) {
            tracing::warn!("shard {}/{} ({}) stopped early (--max-errors)", s.shard.index, s.shard.count, s.out);
        }
    }
    if !without.is_empty() && without.len() < files.len() {
        let list: Vec<&str> = without.iter().map(String::as_str).collect();
        tracing::info!("{} tag files have no .stats.json beside them: {}", without.len(), preview(&list));
    }
    let present: HashSet<OsString> = seen.into_keys().collect();
    let orphans = truth.entries_without_image(&present);
    if !orphans.is_empty() {
        tracing::info!("{} ground-truth entries were not tagged: {}", orphans.len(), preview(&orphans));
    }
    Ok(scored)
}

/// One line of cls-infer's JSONL: the image's name and its scores in `classes` order (`None`
/// for a failed image's row).
fn parse_tag_line(line: &str, classes: &[String]) -> Result<(String, Option<Vec<f32>>)> {
    #[derive(serde::Deserialize)]
    struct Line {
        image: String,
        scores: Option<HashMap<String, Option<f64>>>,
        error: Option<String>,
    }
    let l: Line =
        serde_json::from_str(line).context("not a line of cls-infer's output ({\"image\": ..., \"scores\": {...}})")?;
    if l.error.is_some() {
        return Ok((l.image, None));
    }
    let scores = l.scores.with_context(|| format!("{}: no scores and no error", l.image))?;
    let row = classes
        .iter()
        .map(|c| match scores.get(c) {
            Some(Some(p)) => Ok(*p as f32),
            Some(None) => bail!("{}: the score of {c:?} is not a number", l.image),
            None => bail!("{}: no score for the model's class {c:?} (tagged by another model?)", l.image),
        })
        .collect::<Result<Vec<f32>>>()?;
    Ok((l.image, Some(row)))
}

/// The rows of cls-infer's CSV: header `image,labels,<classes>,error`.
fn read_csv(
    file: std::fs::File,
    classes: &[String],
    raw: bool,
    mut add: impl FnMut(usize, String, Option<Vec<f32>>) -> Result<()>,
) -> Result<()> {
    let mut r = csv::Reader::from_reader(std::io::BufReader::new(file));
    let text = |cell: &'_ str| -> String { if raw { cell } else { crate::output::unprotect(cell) }.to_string() };
    let header: Vec<String> = r.headers().context("no CSV header")?.iter().map(text).collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let (Some(image), Some(error)) = (col("image"), col("error")) else {
        bail!("not cls-infer's CSV (its header needs image, labels, the classes and error)");
    };
    let columns: Vec<usize> = classes
        .iter()
        .map(|c| col(c).with_context(|| format!("no column for the model's class {c:?} (tagged by another model?)")))
        .collect::<Result<_>>()?;
    for (n, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("row {}", n + 2))?;
        let name = text(rec.get(image).unwrap_or_default());
        if !rec.get(error).unwrap_or_default().is_empty() {
            add(n, name, None)?;
            continue;
        }
        let row = columns
            .iter()
            .zip(classes)
            .map(|(&c, class)| {
                let cell = rec.get(c).unwrap_or_default();
                cell.parse::<f32>().with_context(|| format!("{name}: the score of {class:?} is {cell:?}, not a number"))
            })
            .collect::<Result<Vec<f32>>>()?;
        add(n, name, Some(row))?;
    }
    Ok(())
}
