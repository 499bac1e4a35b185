//! Finding the images under a folder: recursive, by extension (case-insensitive), in a
//! deterministic order (sorted by path relative to the folder, component by component).
//!
//! Symbolic links to directories are not followed unless asked; when they are, walkdir detects
//! loops and reports them as a problem instead of recursing forever. A symbolic link to a file
//! with an image extension is an image either way (opening it reads its target). Only regular
//! files are images: a FIFO, device or socket with an image's name (or a link to one, or a link
//! to nothing) is reported as a problem and skipped.
//!
//! Names: the `image` field of the output is the path relative to the folder with `/` between
//! components. A name that is not UTF-8 is written losslessly: each byte that is not part of
//! valid UTF-8 as `\xNN` (two lower-case hex digits), and a backslash as `\\`, so two files
//! never share a name and [`unescape`] gives the path back (`--from-tags`).

use anyhow::{bail, Result};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use walkdir::WalkDir;

/// The file extensions treated as images (compared case-insensitively): those of the formats
/// this build's `image` crate decodes.
pub fn extensions() -> &'static [&'static str] {
    cls_core::preprocess::image_extensions()
}

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

/// Whether a file name has one of [`extensions`] (case-insensitive).
pub fn is_image_name(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| extensions().iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// `name` as text, losslessly: valid UTF-8 as it is except `\` (written `\\`), every other
/// byte as `\xNN`.
pub fn escape(name: &OsStr) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The name that [`escape`] wrote. A backslash that starts neither escape stands for itself (as
/// in names written before escaping).
pub fn unescape(text: &str) -> OsString {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
                continue;
            }
            if bytes.get(i + 1) == Some(&b'x') {
                let hex = bytes.get(i + 2..i + 4).and_then(|h| std::str::from_utf8(h).ok());
                if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

/// `rel` as a string with `/` between components, whatever the platform, each escaped.
pub fn rel_string(rel: &Path) -> String {
    rel.components().map(|c| escape(c.as_os_str())).collect::<Vec<_>>().join("/")
}

/// What a path is when it is not a regular file (after following links), for messages.
fn not_a_file(path: &Path) -> Option<String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some("a symbolic link to nothing".to_string());
        }
        Err(e) => return Some(e.to_string()),
    };
    let t = meta.file_type();
    if t.is_file() {
        return None;
    }
    let kind = cls_core::fsio::kind_name(t);
    Some(format!("not a regular file ({kind})"))
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
                // A link is judged by its target; anything else by itself, without a system call.
                let problem = if e.file_type().is_file() { None } else { not_a_file(e.path()) };
                match problem {
                    None => found.push((rel, e.into_path())),
                    Some(reason) => listing.problems.push(WalkProblem { path: rel_string(&rel), reason }),
                }
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
    // Distinct paths give distinct names (the escape is one-to-one); a repeat would be a bug.
    if let Some(w) = listing.images.windows(2).find(|w| w[0].rel == w[1].rel) {
        bail!("internal error: two files under {} are both named {:?}", root.display(), w[0].rel);
    }
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
        assert!(is_image_name(Path::new("anim.GIF")), "every decodable format is listed");
        for no in ["a.txt", "jpg", "a.jpg.bak", "a", "a.dds"] {
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
    fn names_escape_losslessly() {
        let names: [&[u8]; 7] = [
            b"plain.jpg",
            b"caf\xe9.png",
            "caf\u{fffd}.png".as_bytes(),
            b"a\\b.png",
            b"a\\xe9.png",
            b"\xff\xfe",
            b"\\",
        ];
        let escaped: Vec<String> = names.iter().map(|n| escape(OsStr::from_bytes(n))).collect();
        assert_eq!(escaped[0], "plain.jpg");
        assert_eq!(escaped[1], "caf\\xe9.png");
        assert_eq!(escaped[2], "caf\u{fffd}.png");
        assert_eq!(escaped[3], "a\\\\b.png");
        assert_eq!(escaped[4], "a\\\\xe9.png");
        for (n, e) in names.iter().zip(&escaped) {
            assert_eq!(unescape(e).as_bytes(), *n, "{e}");
        }
        let distinct: std::collections::HashSet<&String> = escaped.iter().collect();
        assert_eq!(distinct.len(), names.len());
        // A backslash starting no escape stands for itself.
        assert_eq!(unescape("a\\b\\x4.png").as_bytes(), b"a\\b\\x4.png");
    }

    #[test]
    fn only_regular_files_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "a.jpg");
        fs::create_dir_all(dir.path().join("d.png")).unwrap();
        let fifo = dir.path().join("x.jpg");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        std::os::unix::fs::symlink("a.jpg", dir.path().join("good-link.png")).unwrap();
        std::os::unix::fs::symlink("x.jpg", dir.path().join("fifo-link.png")).unwrap();
        std::os::unix::fs::symlink("gone.jpg", dir.path().join("dangling.jpg")).unwrap();
        let listing = list_images(dir.path(), false).unwrap();
        let rels: Vec<&str> = listing.images.iter().map(|i| i.rel.as_str()).collect();
        assert_eq!(rels, ["a.jpg", "good-link.png"]);
        let problems: Vec<(&str, &str)> =
            listing.problems.iter().map(|p| (p.path.as_str(), p.reason.as_str())).collect();
        assert_eq!(
            problems,
            [
                ("dangling.jpg", "a symbolic link to nothing"),
                ("fifo-link.png", "not a regular file (a FIFO)"),
                ("x.jpg", "not a regular file (a FIFO)")
            ]
        );
    }

    #[test]
    fn missing_root_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list_images(&dir.path().join("nope"), false).is_err());
        touch(dir.path(), "f.jpg");
        assert!(list_images(&dir.path().join("f.jpg"), false).is_err());
    }
}
