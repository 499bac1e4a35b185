//! Finding the images under a folder: recursive, by extension (case-insensitive), in a
//! deterministic order (sorted by path relative to the folder, component by component).
//!
//! Symbolic links to directories are not followed unless asked; when they are, walkdir detects
//! loops and reports them as a problem instead of recursing forever. A symbolic link to a file
//! with an image extension is an image either way (opening it reads its target).

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use walkdir::WalkDir;

/// The file extensions treated as images (compared case-insensitively).
pub const EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff"];

/// One image found under the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Path relative to the root, with `/` separators: the `image` field of the output.
    pub rel: String,
    /// Path to open (the root joined with the relative path).
    pub path: PathBuf,
}

/// Something under the root that could not be listed (an unreadable directory, a link loop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkProblem {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Listing {
    pub images: Vec<ImageFile>,
    pub problems: Vec<WalkProblem>,
}

/// Whether a file name has one of [`EXTENSIONS`] (case-insensitive).
pub fn is_image_name(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// `rel` as a string with `/` between components, whatever the platform.
fn rel_string(rel: &Path) -> String {
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// List the images under `root`, sorted by relative path.
pub fn list_images(root: &Path, follow_links: bool) -> Result<Listing> {
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("--images {}: not a directory", root.display()),
        Err(e) => bail!("--images {}: {e}", root.display()),
    }
    let mut listing = Listing::default();
    let mut found: Vec<(PathBuf, PathBuf)> = Vec::new();
    for entry in WalkDir::new(root).follow_links(follow_links).sort_by_file_name() {
        match entry {
            Ok(e) => {
                if e.file_type().is_dir() || !is_image_name(e.path()) {
                    continue;
                }
                let rel = e.path().strip_prefix(root).unwrap_or(e.path()).to_path_buf();
                found.push((rel, e.into_path()));
            }
            Err(err) => {
                let path = err.path().map(|p| rel_string(p.strip_prefix(root).unwrap_or(p))).unwrap_or_default();
                let reason = match err.loop_ancestor() {
                    Some(a) => format!("symbolic link loop back to {}", a.display()),
                    None => err.io_error().map(|e| e.to_string()).unwrap_or_else(|| err.to_string()),
                };
                listing.problems.push(WalkProblem { path, reason });
            }
        }
    }
    // walkdir's per-directory sort already gives this order; sorting again makes it a guarantee.
    found.sort_by(|a, b| a.0.cmp(&b.0));
    listing.images = found.into_iter().map(|(rel, path)| ImageFile { rel: rel_string(&rel), path }).collect();
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"x").unwrap();
    }

    #[test]
    fn extensions_are_case_insensitive() {
        for yes in ["a.jpg", "a.JPG", "b.JpEg", "c.png", "d.BMP", "e.webp", "f.tif", "g.TIFF"] {
            assert!(is_image_name(Path::new(yes)), "{yes}");
        }
        for no in ["a.gif", "a.txt", "jpg", "a.jpg.bak", "a"] {
            assert!(!is_image_name(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn lists_sorted_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        for rel in ["b.png", "a/z.jpg", "a.jpg", "a/b/c.JPEG", "notes.txt", "A.tif"] {
            touch(dir.path(), rel);
        }
        let listing = list_images(dir.path(), false).unwrap();
        let rels: Vec<&str> = listing.images.iter().map(|i| i.rel.as_str()).collect();
        // Component-wise order: the directory "a" sorts before the file "a.jpg".
        assert_eq!(rels, ["A.tif", "a/b/c.JPEG", "a/z.jpg", "a.jpg", "b.png"]);
        assert_eq!(listing.images[1].path, dir.path().join("a/b/c.JPEG"));
        assert!(listing.problems.is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn symlink_loops_terminate() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "sub/x.png");
        std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/loop")).unwrap();
        let plain = list_images(dir.path(), false).unwrap();
        assert_eq!(plain.images.len(), 1);
        assert!(plain.problems.is_empty());
        let followed = list_images(dir.path(), true).unwrap();
        assert_eq!(followed.images.len(), 1);
        assert_eq!(followed.problems.len(), 1, "{:?}", followed.problems);
        assert!(followed.problems[0].reason.contains("loop"));
    }

    #[test]
    fn missing_root_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list_images(&dir.path().join("nope"), false).is_err());
        touch(dir.path(), "f.jpg");
        assert!(list_images(&dir.path().join("f.jpg"), false).is_err());
    }
}
