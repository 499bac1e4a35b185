//! One process at a time per run folder: the lock a run (or `--resume`, or `export`) holds for
//! its whole life, and the clean-up of what an interrupted process left behind.
//!
//! The lock is an advisory `flock` on `RUN_DIR/.cls-train.lock` (std's `File::lock`, as the caches
//! use): the OS releases it when the process dies however it dies, so a killed run never leaves a
//! stale lock, and a second process on the same folder is refused at once instead of training
//! beside the first and mixing their files.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The lock file's name inside a run folder.
pub const LOCK_NAME: &str = ".cls-train.lock";

/// An exclusive lock on a run folder, released when dropped.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    dir: PathBuf,
    /// This process created the folder (so it may remove it if the run is refused).
    created: bool,
}

impl RunLock {
    /// For a new run: create `dir` (and its parents) when missing, then lock it.
    pub fn create(dir: &Path) -> Result<RunLock> {
        let created = !dir.exists();
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the run folder {}", dir.display()))?;
        Self::acquire(dir, created)
    }

    /// For a run folder that must exist already (`--resume`, `export`).
    pub fn open(dir: &Path) -> Result<RunLock> {
        if !dir.is_dir() {
            bail!("{}: no such run folder", dir.display());
        }
        Self::acquire(dir, false)
    }

    fn acquire(dir: &Path, created: bool) -> Result<RunLock> {
        let path = dir.join(LOCK_NAME);
        // A refused run removes its lock file (and the folder it created); a process that opened
        // the file just before must then lock the file that is now at the path, so check.
        for _ in 0..5 {
            let mut file =
                OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).with_context(
                    || format!("cannot create the lock file {} (is the run folder writable?)", path.display()),
                )?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    bail!(
                        "{} is in use by another cls-train{}: one process at a time per run folder \
                         (wait for it to end, or choose another --run-dir)",
                        dir.display(),
                        if holder.is_empty() { String::new() } else { format!(" (pid {holder})") }
                    );
                }
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}", path.display()));
                }
            }
            let same = match (file.metadata(), std::fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                if !dir.is_dir() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create the run folder {}", dir.display()))?;
                }
                continue;
            }
            // Who holds it, for the message of a process refused while this one runs.
            let _ = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| write!(file, "{}", std::process::id()));
            return Ok(RunLock { file, dir: dir.to_path_buf(), created });
        }
        bail!("cannot lock {}: its lock file keeps being replaced", path.display())
    }

    /// The locked folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A run refused before it wrote anything: remove the lock file and, when this process
    /// created the folder and nothing else is in it, the folder.
    pub fn abandon(self) {
        let _ = std::fs::remove_file(self.dir.join(LOCK_NAME));
        if self.created {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// Whether `name` is a temporary file of an atomic write: `cls_core::fsio`'s `.<name>.XXXXXX.tmp`,
/// or the `<stem>.tmp<pid>` of earlier versions.
fn is_temp_name(name: &str) -> bool {
    if name.starts_with('.') && name.ends_with(".tmp") && name.len() > ".x.tmp".len() {
        return true;
    }
    name.rsplit_once(".tmp")
        .is_some_and(|(stem, pid)| !stem.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Remove what interrupted processes left in a run folder: temporary files of atomic writes and
/// a half-written `checkpoint.tmp/`. Call only while holding the folder's [`RunLock`] (then no
/// other process is writing there). Returns how many entries were removed.
pub fn remove_stale_temps(run_dir: &Path) -> usize {
    let mut removed = 0;
    let tmp_ck = run_dir.join("checkpoint.tmp");
    if tmp_ck.exists() && std::fs::remove_dir_all(&tmp_ck).is_ok() {
        removed += 1;
    }
    for sub in ["", "checkpoint", "checkpoint.old", "epochs", "plots"] {
        let dir = if sub.is_empty() { run_dir.to_path_buf() } else { run_dir.join(sub) };
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let name = e.file_name();
            let is_file = e.file_type().is_ok_and(|t| t.is_file());
            if is_file && is_temp_name(&name.to_string_lossy()) && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// [`remove_stale_temps`], saying so on stderr when it removed anything.
pub fn clean(run_dir: &Path) {
    let n = remove_stale_temps(run_dir);
    if n > 0 {
        eprintln!("removed {n} temporary file(s) an interrupted run left in {}", run_dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names() {
        for t in [".metrics.jsonl.a1B2c3.tmp", "best-peer0.tmp1234", "config.tmp77", ".x.abcdef.tmp"] {
            assert!(is_temp_name(t), "{t}");
        }
        for t in ["metrics.jsonl", "model.onnx", "checkpoint.tmp", ".cls-train.lock", "a.tmpx", ".tmp", "tmp12"] {
            assert!(!is_temp_name(t), "{t}");
        }
    }

    #[test]
    fn a_second_lock_on_one_folder_is_refused_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let a = RunLock::create(&dir).unwrap();
        let err = RunLock::open(&dir).unwrap_err().to_string();
        assert!(err.contains("in use by another cls-train") && err.contains(&std::process::id().to_string()), "{err}");
        drop(a);
        let b = RunLock::open(&dir).unwrap();
        b.abandon();
        assert!(dir.exists(), "a folder this lock did not create stays");
        let c = RunLock::create(&tmp.path().join("new")).unwrap();
        c.abandon();
        assert!(!tmp.path().join("new").exists(), "a refused run leaves no folder it created");
    }
}
