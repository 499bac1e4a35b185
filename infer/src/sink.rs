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
use crate::xmp::{self, Place};
use anyhow::{bail, Context, Result};
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
    Stream { out: Output, first: bool },
    File { dest: PathBuf, partial: PathBuf, w: BufWriter<File>, resume: bool, header: Option<Vec<u8>> },
    Sidecars { place: Place, names: Vec<String>, writer: SidecarWriter },
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

/// The complete rows of a partial file (rows after a torn one are not trusted): their keys and
/// the byte length they take. CSV files start with `header`.
fn read_partial(format: Format, bytes: &[u8], header: Option<&[u8]>) -> (HashSet<String>, usize) {
    let mut keys = HashSet::new();
    // Only what ends with a line end can be complete.
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let bytes = &bytes[..end];
    if format == Format::Csv {
        let Some(header) = header else { return (keys, 0) };
        let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(bytes);
        let mut rec = csv::ByteRecord::new();
        let mut good = 0usize;
        let mut first = true;
        // Up to the first record that does not parse (the torn end of a killed run).
        while let Ok(true) = r.read_byte_record(&mut rec) {
            let at = r.position().byte() as usize;
            if first {
                first = false;
                let mut h = csv::Writer::from_writer(Vec::new());
                let _ = h.write_byte_record(&rec);
                let written = h.into_inner().unwrap_or_default();
                if written.strip_suffix(b"\n").unwrap_or(&written) != header {
                    return (HashSet::new(), 0);
                }
            } else {
                keys.insert(String::from_utf8_lossy(&rec[0]).into_owned());
            }
            good = at;
        }
        return (keys, good);
    }
    let mut good = 0usize;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        match key_of_line(format, line) {
            Some(k) => {
                keys.insert(k);
                good += line.len();
            }
            None => break,
        }
    }
    (keys, good)
}

impl Sink {
    /// Open the destination of `format`. For a regular file, returns the keys of the rows
    /// already done when resuming (empty otherwise).
    pub fn open(
        format: Format,
        dest: Option<&Path>,
        resume: bool,
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
        let mut done = HashSet::new();
        let file = if resume {
            if dest.exists() {
                done = read_final(format, dest, header.as_deref())?;
            }
            match std::fs::read(&partial) {
                Ok(bytes) => {
                    let (keys, good) = read_partial(format, &bytes, header.as_deref());
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&partial)
                        .with_context(|| format!("cannot open {}", partial.display()))?;
                    f.set_len(good as u64).with_context(|| format!("cannot write {}", partial.display()))?;
                    f.seek(std::io::SeekFrom::End(0))?;
                    if good > 0 {
                        tracing::info!("resuming: {} rows in {}", keys.len(), partial.display());
                    }
                    done.extend(keys);
                    (f, good == 0)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (create(&partial)?, true),
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", partial.display())),
            }
        } else {
            (create(&partial)?, true)
        };
        let (file, fresh) = file;
        let mut w = BufWriter::with_capacity(1 << 16, file);
        if fresh {
            if let Some(h) = &header {
                w.write_all(h)
                    .and_then(|_| w.write_all(b"\n"))
                    .with_context(|| format!("cannot write {}", partial.display()))?;
            }
        }
        Ok((Sink { encoder, format, kind: Kind::File { dest: dest.to_path_buf(), partial, w, resume, header } }, done))
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
            Kind::File { partial, w, .. } => {
                if let Some(bytes) = self.encoder.row(t) {
                    w.write_all(bytes)
                        .and_then(|_| w.write_all(b"\n"))
                        .with_context(|| format!("cannot write {}", partial.display()))?;
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
            Kind::File { dest, partial, w, resume, header } => {
                let file = w
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(|| format!("cannot write {}", partial.display()))?;
                drop(file);
                assemble(self.format, &dest, &partial, resume, header.as_deref())?;
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

/// The keys of an existing output file (to resume it).
fn read_final(format: Format, dest: &Path, header: Option<&[u8]>) -> Result<HashSet<String>> {
    let mut keys = HashSet::new();
    for_each_final_row(format, dest, header, |key, _| {
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
                let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
                w.write_byte_record(&rec).with_context(what)?;
                let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
                let bytes = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
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
                f(String::from_utf8_lossy(&rec[0]).into_owned(), bytes)?;
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

/// Write `dest` (atomically) from the partial file, after the old rows when resuming.
fn assemble(format: Format, dest: &Path, partial: &Path, resume: bool, header: Option<&[u8]>) -> Result<()> {
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
    let (partial_keys, good) = read_partial(format, &partial_bytes, header);
    let mut body = &partial_bytes[..good];
    if let Some(h) = header {
        out.write_all(h).and_then(|_| out.write_all(b"\n")).with_context(|| format!("cannot write {name}"))?;
        // The partial file's own header.
        body = body.get(h.len() + 1..).unwrap_or(&[]);
    }
    if resume && dest.exists() {
        for_each_final_row(format, dest, header, |key, bytes| {
            if !partial_keys.contains(&key) {
                put(&mut out, bytes).with_context(|| format!("cannot write {name}"))?;
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

    fn run(format: Format, dest: &Path, resume: bool, names: &[&str]) -> HashSet<String> {
        let classes = ["a".to_string(), "b".to_string()];
        let (mut sink, done) = Sink::open(format, Some(dest), resume, Encoder::new(format, &classes, "cls")).unwrap();
        for n in names {
            let it = item(n);
            if done.contains(&key_of(format, &it)) {
                continue;
            }
            sink.row(&Tagged { item: &it, result: Ok((&[0.9, 0.1], &[0])) }).unwrap().unwrap();
        }
        sink.finish().unwrap();
        done
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
            std::fs::write(partial_of(&dest), &text[..text.len() - 5]).unwrap();
            std::fs::remove_file(&dest).unwrap();
            let done = run(format, &dest, true, &["1.jpg", "2.jpg", "3.jpg"]);
            if format != Format::Exiftool {
                assert_eq!(done.len(), 2, "{format:?}: {done:?}");
                assert_eq!(slurp(&dest), slurp(&whole), "{format:?}");
            }
        }
    }
}
