//! One cls-infer at a time per output: an advisory `flock` on `OUT.lock`, held for the whole run
//! (`--resume` too), the way cls-train locks a run folder (`trainer/src/rundir.rs`).
//!
//! Two runs writing one `OUT` (two shells, a retried job, two array tasks given the same name)
//! would share `OUT.partial`: one truncates what the other writes, and a run could end with a short
//! `OUT` and exit 0. The second run is refused at once instead, naming the first (the pid and host
//! written into the lock file). The kernel releases the lock when its process dies however it dies,
//! so a lock file that a killed run left is harmless: the next run takes it. A run removes its lock
//! file when it ends (and on SIGINT, SIGTERM and SIGHUP).
//!
//! Where: beside the file written (after following symbolic links, so two names of one file share
//! the lock), `OUT.lock`; for `--format xmp --out DIR`, `DIR.lock` beside the folder. Standard
//! output, devices and FIFOs are written straight and need none; neither does `--out .` (sidecars
//! beside the images). A file already at the lock's name that is not a cls-infer lock file is
//! never written or removed: the run is refused.

use anyhow::{bail, Context, Result};
use cls_core::fsio::{self, TempGuard};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What a lock file holds: this prefix, then the pid and the host of its process.
const MAGIC: &str = "cls-infer pid ";

/// The lock on one output, released (and its file removed) when dropped.
#[derive(Debug)]
pub struct OutLock {
    file: File,
    path: PathBuf,
    _guard: TempGuard,
}

/// `path` with `.lock` appended to its name (trailing slashes dropped: `side/` → `side.lock`).
pub fn lock_path(path: &Path) -> PathBuf {
    let bytes = path.as_os_str().as_bytes();
    let end = bytes.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    let mut name = bytes[..end].to_vec();
    name.extend_from_slice(b".lock");
    PathBuf::from(std::ffi::OsString::from_vec(name))
}

/// This host's name, for the lock file (empty when unknown).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    }
}

impl OutLock {
    /// Lock the output `out` (`--out` as given) of `format_is_xmp` or not; `None` when `out`
    /// needs no lock (standard output, a device, a FIFO, `--out .` for sidecars).
    pub fn acquire(out: &Path, xmp: bool) -> Result<Option<OutLock>> {
        let target = if xmp {
            if out == Path::new(".") {
                return Ok(None);
            }
            out.to_path_buf()
        } else {
            match fsio::classify(out).with_context(|| "--out".to_string())? {
                fsio::Dest::Regular(target) => target,
                fsio::Dest::Stdout | fsio::Dest::Special(_) => return Ok(None),
            }
        };
        let path = lock_path(&target);
        if xmp {
            // The folder's parent, for the lock beside it (the folder itself is made anyway).
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && !p.is_dir()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("--out {}: cannot make the folder {}", out.display(), parent.display()))?;
            }
        }
        // A lock file that a finishing run removes just after this one opened it is not the
        // lock any more: lock the file at the path, checked by its inode.
        for _ in 0..5 {
            let mut file = open(&path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => bail!(
                    "--out {} is being written by another cls-infer ({}; lock file {}): one run at a time per output; wait for it to end, or choose another --out",
                    out.display(),
                    holder(&mut file),
                    path.display()
                ),
                // A file system without flock (some network mounts): say so and go on unlocked.
                Err(TryLockError::Error(e))
                    if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EOPNOTSUPP | libc::ENOLCK)) =>
                {
                    tracing::warn!(
                        "cannot lock {} ({e}): this file system has no locks, so nothing stops a second cls-infer \
                         from writing --out {} at the same time",
                        path.display(),
                        out.display()
                    );
                    drop(file);
                    let _ = std::fs::remove_file(&path);
                    return Ok(None);
                }
                Err(TryLockError::Error(e)) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
            }
            if !is_at(&file, &path) {
                continue;
            }
            // Whose lock it is, for the message of a run refused meanwhile.
            let me = format!("{MAGIC}{} on host {}\n", std::process::id(), hostname());
            let _ = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| file.write_all(me.as_bytes()));
            let guard = fsio::register_temp(&path);
            return Ok(Some(OutLock { file, path, _guard: guard }));
        }
        bail!("cannot lock {}: its lock file keeps being replaced", path.display())
    }
}

/// Whether the open `file` is the one at `path` now (not removed or replaced since it was opened).
fn is_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Open (or create) the lock file: a regular file that is empty or a cls-infer lock file; a link,
/// a folder, a FIFO or a file with other contents is refused and left as it is.
fn open(path: &Path) -> Result<File> {
    let foreign = |what: &str| {
        anyhow::anyhow!(
            "{} is {what}, not a cls-infer lock file: cls-infer locks the output there; move it away or choose another --out",
            path.display()
        )
    };
    let mut file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(foreign("a symbolic link")),
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => return Err(foreign("a directory")),
        Err(e) => return Err(e).with_context(|| format!("cannot create the lock file {}", path.display())),
    };
    let meta = file.metadata().with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        return Err(foreign(fsio::kind_name(meta.file_type())));
    }
    // Small: a lock file is one line. Read a little more than that to tell.
    let mut head = Vec::new();
    let _ = (&mut file).take(4096).read_to_end(&mut head);
    // Also a lock file whose line is being written this instant (a prefix of the marker).
    if !head.is_empty() && !head.starts_with(MAGIC.as_bytes()) && !MAGIC.as_bytes().starts_with(&head) {
        return Err(foreign("a file with other contents"));
    }
    Ok(file)
}

/// Who holds the lock, from its file: `pid N on host H` (written just after it was taken, so a
/// moment's wait for a lock taken this instant).
fn holder(file: &mut File) -> String {
    for _ in 0..20 {
        let mut text = String::new();
        let _ = file.rewind().and_then(|_| file.read_to_string(&mut text));
        if let Some(rest) = text.trim().strip_prefix(MAGIC) {
            return format!("pid {rest}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    "a process that has not written its pid yet".to_string()
}

impl Drop for OutLock {
    fn drop(&mut self) {
        // Only this process can replace the file while it holds the lock: remove it if it is
        // still the one at the path, then release the lock (by closing the file).
        if is_at(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_per_output_and_foreign_files_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tags.jsonl");
        let lock = OutLock::acquire(&out, false).unwrap().unwrap();
        let path = dir.path().join("tags.jsonl.lock");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&format!("cls-infer pid {} on host ", std::process::id())), "{text}");
        // A second lock (another open file description, as another process has) is refused,
        // naming the holder; through a symbolic link to the output too.
        let err = format!("{:#}", OutLock::acquire(&out, false).unwrap_err());
        assert!(
            err.contains("being written by another cls-infer") && err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        std::os::unix::fs::symlink("tags.jsonl", dir.path().join("link.jsonl")).unwrap();
        assert!(OutLock::acquire(&dir.path().join("link.jsonl"), false).is_err());
        drop(lock);
        assert!(!path.exists(), "the lock file is removed at the end");
        // A lock file left by a killed run does not block.
        std::fs::write(&path, "cls-infer pid 999999 on host gone\n").unwrap();
        let again = OutLock::acquire(&out, false).unwrap().unwrap();
        drop(again);
        assert!(!path.exists());
        // Standard output and devices need no lock; --out . for sidecars neither.
        assert!(OutLock::acquire(Path::new("-"), false).unwrap().is_none());
        assert!(OutLock::acquire(Path::new("/dev/null"), false).unwrap().is_none());
        assert!(OutLock::acquire(Path::new("."), true).unwrap().is_none());
        // A sidecar folder's lock is beside it.
        let side = OutLock::acquire(&dir.path().join("side/"), true).unwrap().unwrap();
        assert!(dir.path().join("side.lock").is_file());
        drop(side);
        // Someone else's file at the lock's name: refused, untouched.
        std::fs::write(&path, "my notes\n").unwrap();
        let err = format!("{:#}", OutLock::acquire(&out, false).unwrap_err());
        assert!(err.contains("not a cls-infer lock file"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "my notes\n");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("elsewhere", &path).unwrap();
        let err = format!("{:#}", OutLock::acquire(&out, false).unwrap_err());
        assert!(err.contains("a symbolic link"), "{err}");
        assert!(!dir.path().join("elsewhere").exists());
    }
}
