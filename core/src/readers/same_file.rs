//! When two spellings name one image file: the one rule both binaries use (issue 26). A
//! manifest that lists `a.jpg` and `./a.jpg`, or an image through a symlinked folder and through
//! its real one, lists one image twice; the trainer would train on it twice and weigh its labels
//! double, and cls-infer's ground truth would give it two label sets. Readers refuse such an
//! image with both places named ([`SameFile`]); the trainer also counts the test images that are
//! training images ([`overlap`]).

use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The file `path` names, as one path: the canonical path (symbolic links, `.` and `..`
/// resolved) when the file exists, else the absolute path with `.` and `..` folded lexically (a
/// missing file then matches only the same spelling of itself, up to those).
pub fn canonical_image_path(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| crate::fsio::lexical(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())))
}

/// Images seen so far, by the file each names ([`canonical_image_path`]). Folders are resolved
/// once each, so a manifest of a million images in a few folders costs one `lstat` per image.
#[derive(Debug, Default)]
pub struct SameFile {
    first: HashMap<PathBuf, usize>,
    folders: HashMap<PathBuf, PathBuf>,
}

impl SameFile {
    /// The file `path` names, as [`canonical_image_path`] gives it: a file that is itself a
    /// symbolic link is resolved whole, any other through its folder's canonical path.
    pub fn key(&mut self, path: &Path) -> PathBuf {
        let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        match (path.parent(), path.file_name()) {
            (Some(folder), Some(name)) if !link => {
                let folder = if folder.as_os_str().is_empty() { Path::new(".") } else { folder };
                let resolved = self.folders.entry(folder.to_path_buf()).or_insert_with(|| canonical_image_path(folder));
                resolved.join(name)
            }
            _ => canonical_image_path(path),
        }
    }

    /// Record image `index` at `path`; `Some(first)` when an image seen before, `first`, is the
    /// same file.
    pub fn insert(&mut self, path: &Path, index: usize) -> Option<usize> {
        let key = self.key(path);
        match self.first.get(&key) {
            Some(&first) => Some(first),
            None => {
                self.first.insert(key, index);
                None
            }
        }
    }
}

/// Images of `other` that are also in `base`: how many are the same file
/// ([`canonical_image_path`]), and how many more have the same content under another name (the
/// same size and the same bytes; only files whose size some file of `base` has are read).
/// Unreadable files count as neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overlap {
    pub same_file: usize,
    pub same_content: usize,
}

impl Overlap {
    pub fn total(&self) -> usize {
        self.same_file + self.same_content
    }
}

/// See [`Overlap`]. Paths that are empty (feature-table rows) are skipped. Files are read only
/// where sizes match: their first 64 KiB first, the whole file when those agree; in parallel.
pub fn overlap(base: &[&Path], other: &[&Path]) -> Overlap {
    let mut seen = SameFile::default();
    let base_keys: Vec<PathBuf> = base.iter().filter(|p| !p.as_os_str().is_empty()).map(|p| seen.key(p)).collect();
    let other_keys: Vec<PathBuf> = other.iter().filter(|p| !p.as_os_str().is_empty()).map(|p| seen.key(p)).collect();
    let size = |p: &PathBuf| std::fs::metadata(p).ok().map(|m| m.len());
    let base_sizes: Vec<Option<u64>> = base_keys.par_iter().map(size).collect();
    let known: HashSet<&PathBuf> = base_keys.iter().collect();
    let mut by_size: HashMap<u64, Vec<&PathBuf>> = HashMap::new();
    for (key, s) in base_keys.iter().zip(&base_sizes) {
        if let Some(s) = s {
            by_size.entry(*s).or_default().push(key);
        }
    }
    let same_file = other_keys.iter().filter(|k| known.contains(k)).count();
    let same_content = other_keys
        .par_iter()
        .filter(|k| !known.contains(k))
        .filter(|k| {
            let Some(candidates) = size(k).and_then(|s| by_size.get(&s)) else { return false };
            let Some(head) = digest(k, Some(HEAD_BYTES)) else { return false };
            let mut whole = None;
            candidates.iter().any(|c| {
                digest(c, Some(HEAD_BYTES)) == Some(head)
                    && *whole.get_or_insert_with(|| digest(k, None)) == digest(c, None)
                    && whole.is_some_and(|w| w.is_some())
            })
        })
        .count();
    Overlap { same_file, same_content }
}

/// How much of a file is compared before the whole of it.
const HEAD_BYTES: u64 = 64 << 10;

/// Two independent 64-bit hashes (a 128-bit fingerprint) of a file's first `limit` bytes (all of
/// them with `None`), or `None` when it cannot be read.
fn digest(path: &Path, limit: Option<u64>) -> Option<(u64, u64)> {
    let f = std::fs::File::open(path).ok()?;
    let mut r = f.take(limit.unwrap_or(u64::MAX));
    let mut a = std::collections::hash_map::DefaultHasher::new();
    let mut b = std::collections::hash_map::DefaultHasher::new();
    b.write_u64(0x9E37_79B9_7F4A_7C15);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        a.write(&buf[..n]);
        b.write(&buf[..n]);
    }
    Some((a.finish(), b.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_file_are_one_image() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("real")).unwrap();
        std::fs::write(d.join("real/a.jpg"), b"a").unwrap();
        std::fs::write(d.join("real/b.jpg"), b"b").unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("linked")).unwrap();
        std::os::unix::fs::symlink(d.join("real/a.jpg"), d.join("alias.jpg")).unwrap();
        let mut seen = SameFile::default();
        assert_eq!(seen.insert(&d.join("real/a.jpg"), 0), None);
        assert_eq!(seen.insert(&d.join("real/./a.jpg"), 1), Some(0));
        assert_eq!(seen.insert(&d.join("real/../real/a.jpg"), 2), Some(0));
        assert_eq!(seen.insert(&d.join("linked/a.jpg"), 3), Some(0), "through a symlinked folder");
        assert_eq!(seen.insert(&d.join("alias.jpg"), 4), Some(0), "a symlink to the file");
        assert_eq!(seen.insert(&d.join("real/b.jpg"), 5), None);
        // Missing files: equal up to `.` and `..`, nothing more.
        assert_eq!(seen.insert(&d.join("gone/x.jpg"), 6), None);
        assert_eq!(seen.insert(&d.join("gone/./x.jpg"), 7), Some(6));
        assert_eq!(seen.insert(&d.join("gone/y.jpg"), 8), None);
    }

    #[test]
    fn overlap_counts_the_same_file_and_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (name, bytes) in [("t1", "one"), ("t2", "two"), ("t3", "six"), ("copy", "two"), ("other", "ten")] {
            std::fs::write(d.join(name), bytes).unwrap();
        }
        let p = |n: &str| d.join(n);
        let (t1, t2, t3, copy, other, t1b) = (p("t1"), p("t2"), p("t3"), p("copy"), p("other"), p("./t1"));
        let base = [t1.as_path(), t2.as_path(), t3.as_path()];
        let got = overlap(&base, &[t1b.as_path(), copy.as_path(), other.as_path(), Path::new("")]);
        // ./t1 is t1; copy has t2's bytes; other has the size of all three and bytes of none.
        assert_eq!(got, Overlap { same_file: 1, same_content: 1 });
        assert_eq!(got.total(), 2);
        assert_eq!(overlap(&base, &[other.as_path()]), Overlap::default());
    }
}
