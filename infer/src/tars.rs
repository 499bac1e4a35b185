//! WebDataset shards: tar files whose members are grouped by key (`images/0001.jpg`,
//! `images/0001.json`, `images/0001.txt`: key `images/0001`, the member path up to the first `.`
//! of its file name). Each group's image is its first member with an image extension; the
//! others are not read. An image is tagged as `shard.tar/key.jpg`.
//!
//! The shards come from strangers, so nothing in one is trusted:
//! - A member name is made relative (a leading `/` dropped: `/etc/x.jpg` is `etc/x.jpg`); a name
//!   with a `..` component is refused (an error row), so no output named after a member can land
//!   outside its folder. Links, devices and other non-file members with an image's name are
//!   error rows; nothing is ever extracted.
//! - A member whose header claims more bytes than the archive holds (a truncated tar) is an error
//!   row and ends that shard (an error row for the rest); one larger than [`MAX_MEMBER_BYTES`] is
//!   an error row, skipped unread. Memory is allocated only for what the file really holds.
//! - A shard that is not a tar, or is corrupt, is an error row naming the shard; the next shard
//!   is read.
//! - Bytes read ahead are bounded: members are read in batches of at most `batch` images and
//!   [`MAX_BATCH_BYTES`] bytes (a larger member alone), one batch ahead of the decoders.

use crate::inputs::{contained, Item, TarFile};
use crate::pipeline::{Job, Work};
use crate::walk;
use crossbeam_channel::{bounded, Receiver};
use std::ffi::OsStr;
use std::io::{BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The largest member read as an image.
pub const MAX_MEMBER_BYTES: u64 = 512 << 20;
/// The most bytes of members in one batch (unless one member alone is larger).
pub const MAX_BATCH_BYTES: u64 = 256 << 20;

/// Batches of work from a list of shards, read by a thread of their own, one batch ahead.
pub struct TarBatches {
    rx: Option<Receiver<Vec<Work>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Whether the shards were read to the end: the reading thread says so when it finishes, so a
/// reader that died (a panic in a decoder of a hostile archive) cannot pass for a complete run.
#[derive(Clone, Default)]
pub struct TarStatus(std::sync::Arc<std::sync::Mutex<Option<Result<(), String>>>>);

impl TarStatus {
    fn set(&self, r: Result<(), String>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(r);
        }
    }

    /// After the batches ran out: an error unless every shard was read (or the run stopped
    /// the reader itself, which is not a failure of the reader).
    pub fn check(&self) -> anyhow::Result<()> {
        match self.0.lock().map(|s| s.clone()) {
            Ok(Some(Ok(()))) => Ok(()),
            Ok(Some(Err(e))) => anyhow::bail!("reading the tar shards failed: {e}"),
            _ => anyhow::bail!("the tar shards were not read to the end (their reader stopped)"),
        }
    }
}

/// Members to pass over unread (already in a resumed output).
pub type Skip = Box<dyn Fn(&Item) -> bool + Send>;

impl TarBatches {
    pub fn start(tars: Vec<TarFile>, batch: usize, skip: Skip) -> anyhow::Result<(TarBatches, TarStatus)> {
        let (tx, rx) = bounded::<Vec<Work>>(1);
        let status = TarStatus::default();
        let done = status.clone();
        let thread = std::thread::Builder::new()
            .name("cls-tar".into())
            .spawn(move || {
                let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut reader = Batcher { tx, pending: Vec::new(), bytes: 0, batch: batch.max(1), skip };
                    for tar in &tars {
                        if read_tar(tar, &mut reader).is_err() {
                            return; // the pipeline stopped: not the reader's failure
                        }
                    }
                    let _ = reader.flush();
                }));
                done.set(read.map_err(|_| "the tar reader crashed".to_string()));
            })
            .map_err(|e| anyhow::anyhow!("cannot start the tar reader: {e}"))?;
        Ok((TarBatches { rx: Some(rx), thread: Some(thread) }, status))
    }
}

impl Iterator for TarBatches {
    type Item = Vec<Work>;

    fn next(&mut self) -> Option<Vec<Work>> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for TarBatches {
    fn drop(&mut self) {
        // The reader's next send fails and it ends.
        self.rx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Collects work into batches and sends them; `Err` when the receiver is gone.
struct Batcher {
    tx: crossbeam_channel::Sender<Vec<Work>>,
    pending: Vec<Work>,
    bytes: u64,
    batch: usize,
    skip: Skip,
}

impl Batcher {
    fn push(&mut self, work: Work) -> Result<(), ()> {
        let size = match &work.job {
            Job::Bytes(b) => b.len() as u64,
            _ => 0,
        };
        if !self.pending.is_empty() && self.bytes + size > MAX_BATCH_BYTES {
            self.flush()?;
        }
        self.bytes += size;
        self.pending.push(work);
        if self.pending.len() >= self.batch {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        self.tx.send(std::mem::take(&mut self.pending)).map_err(|_| ())
    }

    fn failed(&mut self, name: String, path: PathBuf, reason: String) -> Result<(), ()> {
        self.push(Work { item: Item { name, path, failed: None }, job: Job::Failed(reason) })
    }
}

/// The key of a member path (up to the first `.` of its file name) and its extension (after the
/// last `.`).
fn key_and_ext(path: &[u8]) -> (&[u8], &[u8]) {
    let file_start = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    let key_end = path[file_start..].iter().position(|&b| b == b'.').map_or(path.len(), |i| file_start + i);
    let ext = path[file_start..]
        .iter()
        .rposition(|&b| b == b'.')
        .map_or(&path[path.len()..], |i| &path[file_start + i + 1..]);
    (&path[..key_end], ext)
}

fn is_image_ext(ext: &[u8]) -> bool {
    std::str::from_utf8(ext).is_ok_and(|e| walk::extensions().iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Read one shard into `out`. `Err` only when the pipeline stopped.
fn read_tar(tar: &TarFile, out: &mut Batcher) -> Result<(), ()> {
    let whole = |reason: String| (tar.name.clone(), tar.path.clone(), reason);
    let file = match std::fs::File::open(&tar.path) {
        Ok(f) => f,
        Err(e) => {
            let (n, p, r) = whole(format!("cannot read the shard: {e}"));
            return out.failed(n, p, r);
        }
    };
    let len = match file.metadata() {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => {
            let (n, p, r) = whole("not a regular file".to_string());
            return out.failed(n, p, r);
        }
        Err(e) => {
            let (n, p, r) = whole(format!("cannot read the shard: {e}"));
            return out.failed(n, p, r);
        }
    };
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 16, file));
    let entries = match archive.entries_with_seek() {
        Ok(e) => e,
        Err(e) => {
            let (n, p, r) = whole(format!("not a readable tar: {e}"));
            return out.failed(n, p, r);
        }
    };
    // The current group: its key, whether it had an image, its members' extensions.
    let mut group: Option<(Vec<u8>, bool, Vec<String>)> = None;
    let close_group = |group: &mut Option<(Vec<u8>, bool, Vec<String>)>, out: &mut Batcher| -> Result<(), ()> {
        if let Some((key, false, exts)) = group.take() {
            let name = format!("{}/{}", tar.name, walk::escape(OsStr::from_bytes(&key)));
            let path = tar.path.join(OsStr::from_bytes(&key));
            out.failed(name, path, format!("no image among the sample's members ({})", exts.join(", ")))?;
        }
        Ok(())
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                close_group(&mut group, out)?;
                let (n, p, r) = whole(format!("corrupt or truncated tar, the rest of the shard is not read: {e}"));
                return out.failed(n, p, r);
            }
        };
        let kind = entry.header().entry_type();
        if kind.is_dir() || kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let raw = raw.strip_prefix(b"./").unwrap_or(&raw).to_vec();
        let (key, ext) = key_and_ext(&raw);
        let (key, ext) = (key.to_vec(), String::from_utf8_lossy(ext).into_owned());
        if group.as_ref().is_none_or(|g| g.0 != key) {
            close_group(&mut group, out)?;
            group = Some((key.clone(), false, Vec::new()));
        }
        let Some(g) = group.as_mut() else { continue }; // set just above
        g.2.push(ext.clone());
        if g.1 || !is_image_ext(ext.as_bytes()) {
            continue; // not the group's image: never read
        }
        g.1 = true;
        let shown = walk::escape(OsStr::from_bytes(&raw));
        let Some(rel) = contained(Path::new(OsStr::from_bytes(&raw))) else {
            let reason = "refused: the member's name climbs out of its folder (..)".to_string();
            out.failed(format!("{}/{shown}", tar.name), tar.path.clone(), reason)?;
            continue;
        };
        let name = format!("{}/{}", tar.name, walk::rel_string(&rel));
        let path = tar.path.join(&rel);
        if (out.skip)(&Item { name: name.clone(), path: path.clone(), failed: None }) {
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            out.failed(name, path, format!("not a regular file in the tar ({kind:?})"))?;
            continue;
        }
        let size = entry.size();
        let start = entry.raw_file_position();
        if start.saturating_add(size) > len {
            let reason = format!(
                "truncated tar: the member claims {size} bytes but the shard ends {} bytes after its start; the rest of the shard is not read",
                len.saturating_sub(start)
            );
            return out.failed(name, path, reason);
        }
        if size > MAX_MEMBER_BYTES {
            out.failed(
                name,
                path,
                format!("the member is {size} bytes, more than an image may be ({MAX_MEMBER_BYTES})"),
            )?;
            continue;
        }
        let mut bytes = Vec::new();
        if bytes.try_reserve_exact(size as usize).is_err() {
            out.failed(name, path, format!("cannot allocate {size} bytes for the member"))?;
            continue;
        }
        match entry.by_ref().take(size).read_to_end(&mut bytes) {
            Ok(n) if n as u64 == size => {}
            Ok(n) => {
                let reason =
                    format!("truncated tar: the member has {n} of its {size} bytes; the rest of the shard is not read");
                return out.failed(name, path, reason);
            }
            Err(e) => {
                let reason = format!("cannot read the member: {e}; the rest of the shard is not read");
                return out.failed(name, path, reason);
            }
        }
        out.push(Work { item: Item { name, path, failed: None }, job: Job::Bytes(bytes) })?;
    }
    close_group(&mut group, out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_reader_that_did_not_finish_is_an_error() {
        let status = TarStatus::default();
        assert!(status.check().is_err(), "never finished");
        status.set(Err("the tar reader crashed".into()));
        assert!(format!("{:#}", status.check().unwrap_err()).contains("crashed"));
        status.set(Ok(()));
        assert!(status.check().is_ok());
    }

    use super::*;

    #[test]
    fn keys_and_extensions() {
        assert_eq!(key_and_ext(b"a/b.c.jpg"), (&b"a/b"[..], &b"jpg"[..]));
        assert_eq!(key_and_ext(b"x.y/0001.JPG"), (&b"x.y/0001"[..], &b"JPG"[..]));
        assert_eq!(key_and_ext(b"noext"), (&b"noext"[..], &b""[..]));
        assert!(is_image_ext(b"JPEG") && is_image_ext(b"gif") && !is_image_ext(b"json"));
    }
}
