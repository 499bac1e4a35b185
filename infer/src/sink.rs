//! Where the rows go, and `--resume`.
//!
//! - Standard output, a FIFO or a device: rows are written straight, as they come.
//! - A regular file `OUT`: rows go to `OUT.partial` as they come (handed to the system at least
//!   every quarter second), and when the run ends `OUT` is written from it atomically
//!   (`cls_core::fsio`: a temporary file renamed into place), then `OUT.partial` is removed. A run that is killed or fails leaves
//!   `OUT` as it was and `OUT.partial` with the rows done so far.
//! - `--resume`: the images already in `OUT` or in `OUT.partial` (its complete rows; a row cut
//!   short by a kill is dropped) are skipped, new rows are added to `OUT.partial`, and the new
//!   `OUT` holds the old rows (but those an image of the partial file replaces) then the partial
//!   file's. Without `--resume` a run starts over (an old partial file is removed).
//! - XMP sidecars: one file per image (see [`crate::xmp`]).
//!
//! The key of a row (what "already in it" compares): the `image` name for JSONL and CSV, the
//! `SourceFile` for exiftool's JSON.

use crate::inputs::Item;
use crate::output::{Encoder, Format, Output, Tagged};
use crate::stats::{self, Mismatch, Origin, Stats};
use crate::thresholds::Decision;
use crate::xmp::{self, Place};
use anyhow::{bail, Context, Result};
use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

/// Where rows go.
pub struct Sink {
    encoder: Encoder,
    format: Format,
    kind: Kind,
}

enum Kind {
    Stream {
        out: Output,
        first: bool,
    },
    File {
        dest: PathBuf,
        partial: PathBuf,
        w: BufWriter<File>,
        resume: bool,
        header: Option<Vec<u8>>,
        /// `--relabel`: the rule the rows already in `dest` are labelled again by.
        relabel: Option<Decision>,
        /// The rows in `partial` (kept from before and written since).
        rows: usize,
    },
    Sidecars {
        place: Place,
        names: Vec<String>,
        writer: SidecarWriter,
    },
}

/// Writes sidecars on a thread of its own: each is synced to disk before it is renamed into
/// place (about a millisecond), which would otherwise hold up inference.
struct SidecarWriter {
    tx: Option<crossbeam_channel::Sender<(PathBuf, Vec<u8>)>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl SidecarWriter {
    fn start() -> Result<SidecarWriter> {
        let (tx, rx) = crossbeam_channel::bounded::<(PathBuf, Vec<u8>)>(256);
        let thread = std::thread::Builder::new()
            .name("cls-sidecars".into())
            .spawn(move || -> Result<()> {
                for (target, bytes) in rx {
                    cls_core::fsio::write_atomic(&target, &bytes)?;
                }
                Ok(())
            })
            .context("cannot start the sidecar writer")?;
        Ok(SidecarWriter { tx: Some(tx), thread: Some(thread) })
    }

    /// Queue one sidecar; the writer's error, if it stopped on one.
    fn write(&mut self, target: PathBuf, bytes: Vec<u8>) -> Result<()> {
        let sent = self.tx.as_ref().map(|tx| tx.send((target, bytes)).is_ok()).unwrap_or(false);
        if sent {
            Ok(())
        } else {
            self.finish()
        }
    }

    /// Wait for every queued sidecar to be written.
    fn finish(&mut self) -> Result<()> {
        self.tx = None;
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => bail!("the sidecar writer crashed"),
            None => bail!("the sidecar writer stopped"),
        }
    }
}

/// `OUT.partial`.
pub fn partial_of(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_os_string();
    s.push(".partial");
    PathBuf::from(s)
}

/// The key of an item in `format`'s rows.
pub fn key_of(format: Format, item: &Item) -> String {
    match format {
        Format::Exiftool => item.path.to_string_lossy().into_owned(),
        _ => item.name.clone(),
    }
}

/// The key of one row of `format` (a line of JSONL or of the partial exiftool file).
fn key_of_line(format: Format, line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Json {
        image: Option<String>,
        #[serde(rename = "SourceFile")]
        source_file: Option<String>,
    }
    let j: Json = serde_json::from_slice(line).ok()?;
    match format {
        Format::Exiftool => j.source_file,
        _ => j.image,
    }
}

/// The first line of `OUT.partial`: the origin of the rows after it.
#[derive(serde::Serialize, serde::Deserialize)]
struct PartialHead {
    cls_infer_partial: Origin,
}

/// The first line of a partial file of rows of `origin` (with its line end).
fn head_line(origin: &Origin) -> Result<Vec<u8>> {
    let mut line = serde_json::to_vec(&PartialHead { cls_infer_partial: origin.clone() })?;
    line.push(b'\n');
    Ok(line)
}

/// What a partial file holds, up to its last complete row.
#[derive(Debug)]
struct Partial {
    /// From its first line; `None` for a partial file of earlier versions (no such line).
    origin: Option<Origin>,
    keys: HashSet<String>,
    /// The complete rows.
    rows: usize,
    /// Where the rows start (after the first line and CSV's header).
    body: usize,
    /// Where the complete rows end (a row cut short by a kill, and any after it, are not trusted).
    good: usize,
}

/// Read a partial file (see [`Partial`]). CSV rows start with `header`; a CSV partial file with
/// another header has no trusted rows.
fn read_partial(format: Format, bytes: &[u8], header: Option<&[u8]>, raw: bool) -> Partial {
    let mut p = Partial { origin: None, keys: HashSet::new(), rows: 0, body: 0, good: 0 };
    // Only what ends with a line end can be complete.
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let bytes = &bytes[..end];
    if let Some(first) = bytes.split_inclusive(|&b| b == b'\n').next() {
        if let Ok(head) = serde_json::from_slice::<PartialHead>(first) {
            p.origin = Some(head.cls_infer_partial);
            p.body = first.len();
            p.good = first.len();
        }
    }
    let start = p.body;
    if format == Format::Csv {
        let Some(header) = header else { return p };
        let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(&bytes[start..]);
        let mut rec = csv::ByteRecord::new();
        let mut first = true;
        // Up to the first record that does not parse (the torn end of a killed run).
        while let Ok(true) = r.read_byte_record(&mut rec) {
            let at = start + r.position().byte() as usize;
            if first {
                first = false;
                let mut h = csv::Writer::from_writer(Vec::new());
                let _ = h.write_byte_record(&rec);
                let written = h.into_inner().unwrap_or_default();
                if written.strip_suffix(b"\n").unwrap_or(&written) != header {
                    return Partial { keys: HashSet::new(), rows: 0, good: start, ..p };
                }
                p.body = at;
            } else {
                p.keys.insert(cell_text(raw, &rec[0]));
                p.rows += 1;
            }
            p.good = at;
        }
        return p;
    }
    for line in bytes[start..].split_inclusive(|&b| b == b'\n') {
        match key_of_line(format, line) {
            Some(k) => {
                p.keys.insert(k);
                p.rows += 1;
                p.good += line.len();
            }
            None => break,
        }
    }
    p
}

/// Each row of `body` (rows of `format` as a partial file holds them, CSV without its header):
/// its key and its bytes (without a line end).
fn for_each_partial_row(
    format: Format,
    body: &[u8],
    raw: bool,
    mut f: impl FnMut(String, &[u8]) -> Result<()>,
) -> Result<()> {
    if format == Format::Csv {
        let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(body);
        let mut rec = csv::ByteRecord::new();
        while r.read_byte_record(&mut rec)? {
            let bytes = csv_bytes(&rec)?;
            f(cell_text(raw, &rec[0]), &bytes)?;
        }
        return Ok(());
    }
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        f(key_of_line(format, line).unwrap_or_default(), line)?;
    }
    Ok(())
}

/// The text of a CSV cell that names an image (its leading `'` removed unless `raw`).
fn cell_text(raw: bool, cell: &[u8]) -> String {
    let cell = String::from_utf8_lossy(cell);
    if raw {
        cell.into_owned()
    } else {
        crate::output::unprotect(&cell).to_string()
    }
}

/// One CSV record as the csv crate writes it, without its line end.
fn csv_bytes(rec: &csv::ByteRecord) -> Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
    w.write_byte_record(rec)?;
    let mut bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Ok(bytes)
}

/// One row (of jsonl or csv, as written) labelled again by `decision` from its scores; a failed
/// image's row is kept as it is.
fn relabel_row(format: Format, encoder: &mut Encoder, decision: &Decision, row: &[u8]) -> Result<Vec<u8>> {
    let classes = encoder.classes().to_vec();
    let (name, scores): (String, Vec<f32>) = match format {
        Format::Jsonl => {
            #[derive(serde::Deserialize)]
            struct Row {
                image: String,
                scores: Option<std::collections::HashMap<String, Option<f64>>>,
                error: Option<String>,
            }
            let r: Row = serde_json::from_slice(row).context("not a row of cls-infer's JSONL")?;
            let Some(scores) = r.scores.filter(|_| r.error.is_none()) else { return Ok(row.to_vec()) };
            let scores = classes
                .iter()
                .map(|c| match scores.get(c) {
                    // Written as the shortest text of an f32, so read back exactly.
                    Some(p) => Ok(p.map_or(f32::NAN, |p| p as f32)),
                    None => bail!("the row of {} has no score for {c:?}", r.image),
                })
                .collect::<Result<_>>()?;
            (r.image, scores)
        }
        Format::Csv => {
            let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(row);
            let mut rec = csv::StringRecord::new();
            if !r.read_record(&mut rec)? || rec.len() != classes.len() + 3 {
                bail!("not a row of cls-infer's CSV with {} classes", classes.len());
            }
            let name = encoder.text_of_cell(&rec[0]).to_string();
            if !rec[classes.len() + 2].is_empty() {
                return Ok(row.to_vec()); // a failed image: no scores
            }
            let scores = (0..classes.len())
                .map(|c| match &rec[2 + c] {
                    "" => Ok(f32::NAN),
                    cell => cell.parse::<f32>().with_context(|| format!("the row of {name}: {cell:?} is not a score")),
                })
                .collect::<Result<_>>()?;
            (name, scores)
        }
        Format::Exiftool | Format::Xmp => bail!("{}", NO_SCORES),
    };
    let mut chosen = Vec::new();
    decision.choose(&scores, &mut chosen);
    let item = Item { name, path: PathBuf::new(), failed: None };
    Ok(encoder.row(&Tagged { item: &item, result: Ok((&scores, &chosen)) }).map(<[u8]>::to_vec).unwrap_or_default())
}

/// Why `--relabel` cannot work on exiftool's JSON.
pub const NO_SCORES: &str = "--relabel labels the rows again from their scores, and exiftool's JSON keeps none (only the labels; images without labels are left out): tag again without --resume, or use --format jsonl or csv";

/// Refuse to resume rows of origin `then` (`what`: where they are) with this run's `now`, unless
/// only the labelling rule differs and `relabel` is given.
fn check_origin(format: Format, what: &str, then: &Origin, now: &Origin, relabel: bool) -> Result<()> {
    match now.compare(then) {
        None => Ok(()),
        Some(Mismatch::Model(m)) => bail!(
            "--resume: the rows in {what} come from {m}: this run's rows would be mixed with them in one file; tag again without --resume (or --out another file)"
        ),
        Some(Mismatch::Rule(_)) if relabel => Ok(()),
        Some(Mismatch::Rule(m)) if format == Format::Exiftool => bail!(
            "--resume: the rows in {what} were labelled by {m}: this run's rows would follow another rule in the same file, and exiftool's JSON keeps no scores to label them again by; tag again without --resume"
        ),
        Some(Mismatch::Rule(m)) => bail!(
            "--resume: the rows in {what} were labelled by {m}: add --relabel to label them again from their stored scores by this run's rule (so the file follows one rule), or tag again without --resume"
        ),
    }
}

impl Sink {
    /// Open the destination of `format`. For a regular file, returns the keys of the rows
    /// already done when resuming (empty otherwise). `origin`: what this run's rows come from;
    /// with `resume`, the rows already written must come from the same (else an error), but for
    /// the labelling rule when `relabel` is given: then they are labelled again by it.
    pub fn open(
        format: Format,
        dest: Option<&Path>,
        resume: bool,
        relabel: Option<&Decision>,
        origin: &Origin,
        mut encoder: Encoder,
    ) -> Result<(Sink, HashSet<String>)> {
        if format == Format::Xmp {
            let dest = dest.context(
                "--format xmp needs --out DIR (sidecars mirroring the images' names) or --out . (beside the images)",
            )?;
            if resume {
                bail!("--resume is for --format jsonl, csv and exiftool; sidecars are merged, so running again adds nothing twice");
            }
            let place = if dest == Path::new(".") { Place::Beside } else { Place::Under(dest.to_path_buf()) };
            if let Place::Under(dir) = &place {
                if !dir.is_dir() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("--out {}: cannot make the folder", dir.display()))?;
                }
            }
            let kind = Kind::Sidecars { place, names: Vec::new(), writer: SidecarWriter::start()? };
            return Ok((Sink { encoder, format, kind }, HashSet::new()));
        }
        if relabel.is_some() && format == Format::Exiftool {
            bail!("{NO_SCORES}");
        }
        let regular = match dest {
            Some(d) => matches!(cls_core::fsio::classify(d)?, cls_core::fsio::Dest::Regular(_)),
            None => false,
        };
        let dest = match dest {
            Some(d) if regular => d,
            _ => {
                if resume {
                    bail!("--resume needs --out FILE (a regular file, to find the images already tagged in)");
                }
                let mut out = match dest {
                    None => Output::stdout(),
                    Some(d) => Output::create(d)?,
                };
                if let Some(h) = encoder.header() {
                    out.write_all(&h)
                        .and_then(|_| out.write_all(b"\n"))
                        .with_context(|| format!("cannot write to {}", out.name()))?;
                }
                return Ok((Sink { encoder, format, kind: Kind::Stream { out, first: true } }, HashSet::new()));
            }
        };
        let partial = partial_of(dest);
        let header = encoder.header();
        let raw = encoder.csv_raw();
        let head = head_line(origin)?;
        let mut done = HashSet::new();
        let mut rows = 0usize;
        let fresh = || -> Result<File> {
            let mut f = create(&partial)?;
            f.write_all(&head)
                .and_then(|_| header.as_ref().map_or(Ok(()), |h| f.write_all(h).and_then(|_| f.write_all(b"\n"))))
                .with_context(|| format!("cannot write {}", partial.display()))?;
            Ok(f)
        };
        let file = if resume {
            if dest.exists() {
                // The rows of OUT come from what its stats file records.
                let stats = stats::stats_path(dest);
                let text = match std::fs::read_to_string(&stats) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                        "--resume: {} has no {} beside it, so the model and thresholds of its rows cannot be checked; tag again without --resume (or put the stats file back)",
                        dest.display(),
                        stats.display()
                    ),
                    Err(e) => return Err(e).with_context(|| format!("--resume: cannot read {}", stats.display())),
                };
                let then: Stats = serde_json::from_str(&text)
                    .with_context(|| format!("--resume: {} is not the stats cls-infer writes", stats.display()))?;
                check_origin(format, &dest.display().to_string(), &then.origin(), origin, relabel.is_some())?;
                done = read_final(format, dest, header.as_deref(), &mut encoder, relabel)?;
            }
            match std::fs::read(&partial) {
                Ok(bytes) => {
                    let p = read_partial(format, &bytes, header.as_deref(), raw);
                    let Some(then) = &p.origin else {
                        bail!(
                            "--resume: {} does not say which model and thresholds its rows come from (left by an earlier version of cls-infer?); remove it, or tag again without --resume",
                            partial.display()
                        );
                    };
                    check_origin(format, &partial.display().to_string(), then, origin, relabel.is_some())?;
                    if p.rows > 0 {
                        tracing::info!("resuming: {} rows in {}", p.rows, partial.display());
                    }
                    rows = p.rows;
                    done.extend(p.keys);
                    if let Some(decision) = relabel {
                        // Its rows by this run's rule, under this run's first line, atomically.
                        let mut text = head.clone();
                        if let Some(h) = &header {
                            text.extend_from_slice(h);
                            text.push(b'\n');
                        }
                        for_each_partial_row(format, &bytes[p.body..p.good], raw, |_, row| {
                            text.extend(relabel_row(format, &mut encoder, decision, row)?);
                            text.push(b'\n');
                            Ok(())
                        })
                        .with_context(|| format!("--relabel: {}", partial.display()))?;
                        cls_core::fsio::write_atomic(&partial, &text)?;
                        std::fs::OpenOptions::new()
                            .append(true)
                            .open(&partial)
                            .with_context(|| format!("cannot open {}", partial.display()))?
                    } else if p.rows == 0 {
                        // Nothing to keep (a file cut inside CSV's header, say): start it again.
                        fresh()?
                    } else {
                        let mut f = std::fs::OpenOptions::new()
                            .write(true)
                            .open(&partial)
                            .with_context(|| format!("cannot open {}", partial.display()))?;
                        f.set_len(p.good as u64).with_context(|| format!("cannot write {}", partial.display()))?;
                        f.seek(std::io::SeekFrom::End(0))?;
                        f
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => fresh()?,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", partial.display())),
            }
        } else {
            fresh()?
        };
        let w = BufWriter::with_capacity(1 << 16, file);
        let relabel = relabel.cloned();
        Ok((
            Sink {
                encoder,
                format,
                kind: Kind::File { dest: dest.to_path_buf(), partial, w, resume, header, relabel, rows },
            },
            done,
        ))
    }

    /// Write one image's row (or sidecar). `Ok(Err(reason))`: this image's output could not be
    /// written (a sidecar refused); `Err`: a fatal error.
    pub fn row(&mut self, t: &Tagged) -> Result<std::result::Result<(), String>> {
        match &mut self.kind {
            Kind::Stream { out, first } => {
                let Some(bytes) = self.encoder.row(t) else { return Ok(Ok(())) };
                let name = out.name().to_string();
                let w: &mut Output = out;
                let framed = if self.format == Format::Exiftool {
                    w.write_all(if *first { b"[\n" } else { b",\n" })
                } else {
                    Ok(())
                };
                *first = false;
                framed
                    .and_then(|_| w.write_all(bytes))
                    .and_then(|_| if self.format == Format::Exiftool { Ok(()) } else { w.write_all(b"\n") })
                    .with_context(|| format!("cannot write to {name}"))?;
                Ok(Ok(()))
            }
            Kind::File { partial, w, rows, .. } => {
                if let Some(bytes) = self.encoder.row(t) {
                    w.write_all(bytes)
                        .and_then(|_| w.write_all(b"\n"))
                        .with_context(|| format!("cannot write {}", partial.display()))?;
                    *rows += 1;
                }
                Ok(Ok(()))
            }
            Kind::Sidecars { place, names, writer } => {
                let Ok((_, chosen)) = t.result else { return Ok(Ok(())) };
                if chosen.is_empty() {
                    return Ok(Ok(())); // no keyword: no sidecar to make or change
                }
                names.clear();
                // The classes' names, from the encoder's list.
                let all = self.encoder.classes();
                names.extend(chosen.iter().map(|&c| all[c].clone()));
                let hier: Vec<String> = names.iter().map(|n| format!("{}{n}", self.encoder.prefix())).collect();
                let name = PathBuf::from(crate::walk::unescape(&t.item.name));
                let target = match xmp::sidecar_path(place, &name, &t.item.path) {
                    Ok(p) => p,
                    Err(e) => return Ok(Err(format!("{e:#}"))),
                };
                match xmp::prepare(&target, names.as_slice(), &hier) {
                    Ok(Some(bytes)) => writer.write(target, bytes)?,
                    Ok(None) => {}
                    Err(e) => return Ok(Err(format!("{e:#}"))),
                }
                Ok(Ok(()))
            }
        }
    }

    /// Hand the rows so far to the system (after each batch): a killed run keeps them.
    pub fn flush(&mut self) -> Result<()> {
        if let Kind::File { partial, w, .. } = &mut self.kind {
            w.flush().with_context(|| format!("cannot write {}", partial.display()))?;
        }
        Ok(())
    }

    /// Complete the output (for a file: write it from the partial file, atomically).
    pub fn finish(self) -> Result<()> {
        match self.kind {
            Kind::Stream { mut out, first } => {
                if self.format == Format::Exiftool {
                    let end: &[u8] = if first { b"[]\n" } else { b"\n]\n" };
                    out.write_all(end).with_context(|| format!("cannot write to {}", out.name()))?;
                }
                out.finish()
            }
            Kind::File { dest, partial, w, resume, header, relabel, rows } => {
                let file = w
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(|| format!("cannot write {}", partial.display()))?;
                drop(file);
                let mut encoder = self.encoder;
                assemble(&mut encoder, &dest, &partial, resume, header.as_deref(), relabel.as_ref(), rows)?;
                std::fs::remove_file(&partial).with_context(|| format!("cannot remove {}", partial.display()))?;
                Ok(())
            }
            Kind::Sidecars { mut writer, .. } => writer.finish(),
        }
    }
}

fn create(path: &Path) -> Result<File> {
    File::create(path).with_context(|| format!("cannot create {}", path.display()))
}

/// The keys of an existing output file (to resume it); with `relabel`, each row is checked to be
/// one that can be labelled again (now, not once the images are tagged).
fn read_final(
    format: Format,
    dest: &Path,
    header: Option<&[u8]>,
    encoder: &mut Encoder,
    relabel: Option<&Decision>,
) -> Result<HashSet<String>> {
    let mut keys = HashSet::new();
    let raw = encoder.csv_raw();
    for_each_final_row(format, dest, header, raw, |key, row| {
        if let Some(d) = relabel {
            relabel_row(format, encoder, d, row).with_context(|| format!("--relabel: {}", dest.display()))?;
        }
        keys.insert(key);
        Ok(())
    })?;
    Ok(keys)
}

/// Each row of an existing output file: its key and its bytes (without a line end).
fn for_each_final_row(
    format: Format,
    dest: &Path,
    header: Option<&[u8]>,
    raw: bool,
    mut f: impl FnMut(String, &[u8]) -> Result<()>,
) -> Result<()> {
    let what = || format!("--resume: {}", dest.display());
    let file = File::open(dest).with_context(what)?;
    match format {
        Format::Jsonl => {
            for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
                let line = line.with_context(what)?;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let key = key_of_line(format, &line).with_context(|| {
                    format!("--resume: {} line {} is not a row of cls-infer's JSONL", dest.display(), n + 1)
                })?;
                f(key, &line)?;
            }
        }
        Format::Csv => {
            let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(BufReader::new(file));
            let mut rec = csv::ByteRecord::new();
            let mut first = true;
            while r.read_byte_record(&mut rec).with_context(what)? {
                let bytes = csv_bytes(&rec).with_context(what)?;
                let bytes = bytes.as_slice();
                if first {
                    first = false;
                    if Some(bytes) != header {
                        bail!(
                            "--resume: {} has another header than this run's (another model's classes?)",
                            dest.display()
                        );
                    }
                    continue;
                }
                f(cell_text(raw, &rec[0]), bytes)?;
            }
        }
        Format::Exiftool => {
            let rows: Vec<serde_json::Value> = serde_json::from_reader(BufReader::new(file))
                .with_context(|| format!("--resume: {} is not exiftool JSON written by cls-infer", dest.display()))?;
            for row in rows {
                let key = row["SourceFile"].as_str().map(str::to_string).unwrap_or_default();
                f(key, serde_json::to_string(&row)?.as_bytes())?;
            }
        }
        Format::Xmp => {}
    }
    Ok(())
}

/// Write `dest` (atomically) from the partial file, after the old rows when resuming (labelled
/// again by `relabel`'s rule if given). `expected`: how many rows the partial file must hold (those
/// kept when it was opened and those written since): fewer means that something else changed it
/// meanwhile, and `dest` is left as it was.
fn assemble(
    encoder: &mut Encoder,
    dest: &Path,
    partial: &Path,
    resume: bool,
    header: Option<&[u8]>,
    relabel: Option<&Decision>,
    expected: usize,
) -> Result<()> {
    let (format, raw) = (encoder.format(), encoder.csv_raw());
    let mut out = Output::create(dest)?;
    let name = dest.display().to_string();
    let mut rows = 0usize;
    let mut put = |out: &mut Output, bytes: &[u8]| -> std::io::Result<()> {
        if format == Format::Exiftool {
            out.write_all(if rows == 0 { b"[\n" } else { b",\n" })?;
            out.write_all(bytes)?;
        } else {
            out.write_all(bytes)?;
            out.write_all(b"\n")?;
        }
        rows += 1;
        Ok(())
    };
    let partial_bytes = std::fs::read(partial).with_context(|| format!("cannot read {}", partial.display()))?;
    let p = read_partial(format, &partial_bytes, header, raw);
    if p.rows < expected || p.origin.is_none() {
        bail!(
            "{} was changed while this run wrote it ({expected} rows written, {} there): by another process? {name} is left as it was",
            partial.display(),
            p.rows
        );
    }
    let body = &partial_bytes[p.body..p.good];
    if let Some(h) = header {
        out.write_all(h).and_then(|_| out.write_all(b"\n")).with_context(|| format!("cannot write {name}"))?;
    }
    if resume && dest.exists() {
        for_each_final_row(format, dest, header, raw, |key, bytes| {
            if !p.keys.contains(&key) {
                let row = match relabel {
                    Some(decision) => Cow::Owned(relabel_row(format, encoder, decision, bytes)?),
                    None => Cow::Borrowed(bytes),
                };
                put(&mut out, &row).with_context(|| format!("cannot write {name}"))?;
            }
            Ok(())
        })?;
    }
    if format == Format::Exiftool {
        for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            put(&mut out, line).with_context(|| format!("cannot write {name}"))?;
        }
        let end: &[u8] = if rows == 0 { b"[]\n" } else { b"\n]\n" };
        out.write_all(end).with_context(|| format!("cannot write {name}"))?;
    } else {
        out.write_all(body).with_context(|| format!("cannot write {name}"))?;
    }
    out.finish()
}

/// A whole file (for tests).
#[cfg(test)]
fn slurp(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str) -> Item {
        Item { name: name.into(), path: PathBuf::from("d").join(name), failed: None }
    }

    fn classes() -> Vec<String> {
        vec!["a".to_string(), "b".to_string()]
    }

    fn rule(global: f64) -> Decision {
        Decision::resolve(&classes(), Some(global), None, None, None, 0, None).unwrap()
    }

    fn origin(d: &Decision) -> Origin {
        Origin {
            model: "m.onnx".into(),
            model_sha256: "0".repeat(64),
            classes: classes(),
            thresholds: stats::ThresholdStats::of(d, &classes()),
            csv_raw: Some(false),
        }
    }

    /// Tag `names` into `dest` with rule `d` (each image's scores from its name), as a run does,
    /// writing the stats beside it.
    fn tag(
        format: Format,
        dest: &Path,
        resume: bool,
        relabel: bool,
        d: &Decision,
        names: &[&str],
    ) -> Result<HashSet<String>> {
        let o = origin(d);
        let enc = Encoder::new(format, &classes(), "cls");
        let (mut sink, done) = Sink::open(format, Some(dest), resume, relabel.then_some(d), &o, enc)?;
        let mut chosen = Vec::new();
        for n in names {
            let it = item(n);
            if done.contains(&key_of(format, &it)) {
                continue;
            }
            let s = n.len() as f32 / 10.0;
            let scores = [s, 1.0 - s];
            d.choose(&scores, &mut chosen);
            sink.row(&Tagged { item: &it, result: Ok((&scores, &chosen)) })?.map_err(anyhow::Error::msg)?;
        }
        sink.finish()?;
        let st = Stats {
            images: String::new(),
            out: String::new(),
            format: format.name().into(),
            shard: stats::ShardStats { index: 0, count: 1 },
            images_tagged: 0,
            images_failed: 0,
            images_skipped: 0,
            seconds: 0.0,
            images_per_second: 0.0,
            model: o.model,
            model_sha256: o.model_sha256,
            thresholds: o.thresholds,
            complete: true,
            cls_infer: String::new(),
            classes: o.classes,
            csv_raw: Some(false),
        };
        std::fs::write(stats::stats_path(dest), serde_json::to_string(&st)?)?;
        Ok(done)
    }

    fn run(format: Format, dest: &Path, resume: bool, names: &[&str]) -> HashSet<String> {
        tag(format, dest, resume, false, &rule(0.5), names).unwrap()
    }

    #[test]
    fn resume_keeps_old_rows_and_adds_new_ones() {
        for format in [Format::Jsonl, Format::Csv, Format::Exiftool] {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("out");
            run(format, &dest, false, &["1.jpg", "2.jpg"]);
            let whole = dir.path().join("whole");
            run(format, &whole, false, &["1.jpg", "2.jpg", "3.jpg"]);
            let done = run(format, &dest, true, &["1.jpg", "2.jpg", "3.jpg"]);
            assert_eq!(done.len(), 2, "{format:?}");
            assert_eq!(slurp(&dest), slurp(&whole), "{format:?}");
            assert!(!partial_of(&dest).exists());
            // A partial file cut in the middle of a row: the complete rows count, the torn one not.
            let text = slurp(&whole);
            let head = String::from_utf8(head_line(&origin(&rule(0.5))).unwrap()).unwrap();
            std::fs::write(partial_of(&dest), format!("{head}{}", &text[..text.len() - 5])).unwrap();
            std::fs::remove_file(&dest).unwrap();
            let done = run(format, &dest, true, &["1.jpg", "2.jpg", "3.jpg"]);
            if format != Format::Exiftool {
                assert_eq!(done.len(), 2, "{format:?}: {done:?}");
                assert_eq!(slurp(&dest), slurp(&whole), "{format:?}");
            }
        }
    }

    #[test]
    fn resume_refuses_other_rules_unless_relabelled() {
        let names = ["1.jpg", "22.jpg", "333.jpg", "4444.jpg", "55555.jpg", "666666.jpg"];
        for format in [Format::Jsonl, Format::Csv, Format::Exiftool] {
            let dir = tempfile::tempdir().unwrap();
            let (dest, whole) = (dir.path().join("out"), dir.path().join("whole"));
            tag(format, &whole, false, false, &rule(0.7), &names).unwrap();
            // Half tagged at 0.5 (into OUT), a third more into a partial file left by a kill.
            tag(format, &dest, false, false, &rule(0.5), &names[..3]).unwrap();
            let kept = slurp(&dest);
            let err = format!("{:#}", tag(format, &dest, true, false, &rule(0.7), &names).unwrap_err());
            assert!(err.contains("threshold 0.5 then, 0.7 now"), "{format:?}: {err}");
            assert_eq!(slurp(&dest), kept, "{format:?}: a refused run changed OUT");
            if format == Format::Exiftool {
                assert!(err.contains("keeps no scores"), "{err}");
                let err = format!("{:#}", tag(format, &dest, true, true, &rule(0.7), &names).unwrap_err());
                assert!(err.contains("--relabel labels the rows again from their scores"), "{err}");
                continue;
            }
            assert!(err.contains("add --relabel"), "{err}");
            let o = origin(&rule(0.5));
            let mut head = head_line(&o).unwrap();
            let enc = |e: &mut Encoder| {
                e.header()
                    .map(|mut h| {
                        h.push(b'\n');
                        h
                    })
                    .unwrap_or_default()
            };
            head.extend(enc(&mut Encoder::new(format, &classes(), "cls")));
            let mut e = Encoder::new(format, &classes(), "cls");
            let mut chosen = Vec::new();
            for n in &names[3..4] {
                let s = n.len() as f32 / 10.0;
                rule(0.5).choose(&[s, 1.0 - s], &mut chosen);
                head.extend(e.row(&Tagged { item: &item(n), result: Ok((&[s, 1.0 - s], &chosen)) }).unwrap());
                head.push(b'\n');
            }
            std::fs::write(partial_of(&dest), &head).unwrap();
            // --relabel: every row (OUT's, the partial file's) by the new rule; as if tagged so.
            let done = tag(format, &dest, true, true, &rule(0.7), &names).unwrap();
            assert_eq!(done.len(), 4, "{format:?}");
            assert_eq!(slurp(&dest), slurp(&whole), "{format:?}");
            // Another model: refused even with --relabel.
            let mut other = origin(&rule(0.7));
            other.model_sha256 = "1".repeat(64);
            let enc = Encoder::new(format, &classes(), "cls");
            let err = Sink::open(format, Some(&dest), true, Some(&rule(0.7)), &other, enc).err().unwrap();
            assert!(format!("{err:#}").contains("another model"), "{err:#}");
        }
    }

    #[test]
    fn rows_lost_from_the_partial_file_fail_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let d = rule(0.5);
        let enc = Encoder::new(Format::Jsonl, &classes(), "cls");
        let (mut sink, _) = Sink::open(Format::Jsonl, Some(&dest), false, None, &origin(&d), enc).unwrap();
        for n in ["1.jpg", "2.jpg"] {
            sink.row(&Tagged { item: &item(n), result: Ok((&[0.9, 0.1], &[0])) }).unwrap().unwrap();
        }
        sink.flush().unwrap();
        // Another process starts the partial file over (as a second run on one OUT did).
        std::fs::write(partial_of(&dest), head_line(&origin(&d)).unwrap()).unwrap();
        let err = format!("{:#}", sink.finish().unwrap_err());
        assert!(err.contains("was changed while this run wrote it (2 rows written, 0 there)"), "{err}");
        assert!(!dest.exists(), "a short output was written");
    }
}
