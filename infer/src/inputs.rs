//! What `--images` names, and the images of this task's shard, in a deterministic order.
//!
//! | `--images` | images | tagged name (`image`) | base (names are relative to it) |
//! |---|---|---|---|
//! | a folder | the image files under it (recursive, by extension, sorted by path) | path relative to the folder | the folder |
//! | a folder of `.tar` files (at its top, and no image there) | WebDataset shards, sorted | `shard.tar/key.jpg` | the folder |
//! | an image file | itself | its file name | its folder |
//! | a `.tar` file | a WebDataset shard | `shard.tar/key.jpg` | its folder |
//! | a quoted glob, `'photos/**/*.jpg'` | the matching image files (or `.tar` files), sorted | path relative to the glob's fixed folders | `photos` |
//! | `@list.txt` | one path a line, relative to the list's folder unless absolute; blank lines and `#` comments skipped; in list order | the line | the list's folder |
//! | `-` | paths on standard input, one a line, relative to the current folder | the line | the current folder |
//!
//! Braces expand first, in order: `shards/{000000..000099}.tar` (numbers keep their zero padding)
//! and `{a,b}`. Paths that all end in `.tar` are WebDataset shards (see [`crate::tars`]).
//!
//! Shards (`--shard I/N`): a contiguous slice of the items, or for tar shards of the `.tar` files;
//! a list, standard input or a set of tars is only counted, and only this shard's own items are
//! opened. Names are text: bytes that are not UTF-8 are written `\xNN` (see [`walk::escape`]).

use crate::shard::Shard;
use crate::walk;
use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// One image to tag: its name in the outputs and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The `image` of the output rows.
    pub name: String,
    /// The file (for a tar member: the path it would have if the tar were unpacked under the
    /// base, which names it for matching ground truth and for mirrored outputs).
    pub path: PathBuf,
    /// Why it cannot be tagged, when that is known before decoding (a FIFO found by the walk).
    pub failed: Option<String>,
}

/// One WebDataset shard to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarFile {
    /// Its name relative to the base (the first part of its members' names).
    pub name: String,
    pub path: PathBuf,
}

/// This task's images.
#[derive(Debug)]
pub enum Images {
    Files(Vec<Item>),
    Tars(Vec<TarFile>),
}

/// What `--images` resolved to, with this shard's part of it.
#[derive(Debug)]
pub struct Input {
    pub images: Images,
    /// Items (or tar files) in the whole input, all shards together.
    pub total: usize,
    /// The folder names are relative to.
    pub base: PathBuf,
    /// In words, for stderr: "folder photos", "list l.txt", "12 tar shards".
    pub kind: String,
}

/// Whether `text` has glob characters.
fn is_glob(text: &[u8]) -> bool {
    text.iter().any(|b| matches!(b, b'*' | b'?' | b'['))
}

fn is_tar(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("tar"))
}

/// Expand `{a,b}` and `{N..M}` (zero padding kept when either end has it), left to right.
pub fn expand_braces(text: &str) -> Result<Vec<String>> {
    let Some(open) = text.find('{') else { return Ok(vec![text.to_string()]) };
    let close = text[open..].find('}').map(|c| open + c).with_context(|| format!("{text:?}: a '{{' without '}}'"))?;
    let (head, body, tail) = (&text[..open], &text[open + 1..close], &text[close + 1..]);
    let choices: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (lo, hi): (u64, u64) = (
            a.parse().with_context(|| format!("{text:?}: {a:?} is not a number"))?,
            b.parse().with_context(|| format!("{text:?}: {b:?} is not a number"))?,
        );
        if hi < lo {
            bail!("{text:?}: the range {{{a}..{b}}} runs backwards");
        }
        if hi - lo >= 10_000_000 {
            bail!("{text:?}: the range {{{a}..{b}}} has more than 10 million values");
        }
        let width = if a.starts_with('0') || b.starts_with('0') { a.len().max(b.len()) } else { 0 };
        (lo..=hi).map(|n| format!("{n:0width$}")).collect()
    } else {
        body.split(',').map(str::to_string).collect()
    };
    let tails = expand_braces(tail)?;
    Ok(choices.iter().flat_map(|c| tails.iter().map(move |t| format!("{head}{c}{t}"))).collect())
}

/// The folders of `pattern` before its first component with a glob character.
fn glob_base(pattern: &Path) -> PathBuf {
    let mut base = PathBuf::new();
    for c in pattern.components() {
        if is_glob(c.as_os_str().as_bytes()) {
            break;
        }
        base.push(c);
    }
    if base == pattern {
        base.pop();
    }
    base
}

/// `path` relative to `base` as a name.
fn name_under(path: &Path, base: &Path) -> String {
    walk::rel_string(path.strip_prefix(base).unwrap_or(path))
}

/// The folder names of `spec` are relative to (see the module table), without listing it.
pub fn base_of(spec: &Path) -> PathBuf {
    let text = spec.as_os_str().as_bytes();
    if text == b"-" {
        return PathBuf::new();
    }
    if let Some(list) = text.strip_prefix(b"@") {
        return Path::new(OsStr::from_bytes(list)).parent().unwrap_or(Path::new("")).to_path_buf();
    }
    match std::fs::metadata(spec) {
        Ok(m) if m.is_dir() => spec.to_path_buf(),
        Ok(_) => spec.parent().unwrap_or(Path::new("")).to_path_buf(),
        Err(_) => {
            let first = std::str::from_utf8(text)
                .ok()
                .and_then(|t| expand_braces(t).ok())
                .and_then(|v| v.into_iter().next())
                .map(PathBuf::from)
                .unwrap_or_else(|| spec.to_path_buf());
            glob_base(&first)
        }
    }
}

/// Resolve `--images` (`spec`) and take `shard`'s part. `stdin` is read for `-`.
pub fn resolve(spec: &Path, shard: Shard, follow_links: bool, stdin: impl Read) -> Result<Input> {
    let text = spec.as_os_str().as_bytes();
    if text == b"-" {
        let cwd = PathBuf::new();
        let entries = read_list(stdin, "standard input")?;
        return Ok(listed(entries, &cwd, shard, "standard input".to_string()));
    }
    if let Some(list) = text.strip_prefix(b"@") {
        let list = Path::new(OsStr::from_bytes(list));
        let file = std::fs::File::open(list).with_context(|| format!("--images @{}", list.display()))?;
        let entries = read_list(file, &format!("@{}", list.display()))?;
        let base = list.parent().unwrap_or(Path::new("")).to_path_buf();
        return Ok(listed(entries, &base, shard, format!("list {}", list.display())));
    }
    match std::fs::metadata(spec) {
        Ok(m) if m.is_dir() => return folder(spec, shard, follow_links),
        Ok(_) => {
            let base = spec.parent().unwrap_or(Path::new("")).to_path_buf();
            if is_tar(spec) {
                let tar = TarFile { name: name_under(spec, &base), path: spec.to_path_buf() };
                return Ok(tars(vec![tar], base, shard, "1 tar shard".to_string()));
            }
            let item = Item { name: name_under(spec, &base), path: spec.to_path_buf(), failed: None };
            return Ok(Input {
                images: Images::Files(vec![item]),
                total: 1,
                base,
                kind: format!("file {}", spec.display()),
            });
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => bail!("--images {}: {e}", spec.display()),
        Err(_) => {}
    }
    let utf8 = std::str::from_utf8(text).ok();
    let expanded = match utf8 {
        Some(t) if t.contains('{') => expand_braces(t).context("--images")?,
        _ => vec![spec.to_string_lossy().into_owned()],
    };
    if !is_glob(text) && !text.contains(&b'{') {
        bail!("--images {}: no such file or folder", spec.display());
    }
    let base = glob_base(Path::new(&expanded[0]));
    let mut paths: Vec<PathBuf> = Vec::new();
    for pattern in &expanded {
        if is_glob(pattern.as_bytes()) {
            let mut found: Vec<PathBuf> = glob::glob(pattern)
                .with_context(|| format!("--images {pattern:?}: not a valid glob"))?
                .filter_map(|r| r.ok())
                .filter(|p| !p.is_dir())
                .collect();
            found.sort();
            paths.extend(found);
        } else {
            // A path from braces: kept even when missing (a missing shard is reported).
            paths.push(PathBuf::from(pattern));
        }
    }
    if !paths.is_empty() && paths.iter().all(|p| is_tar(p)) {
        let n = paths.len();
        let list = paths.into_iter().map(|p| TarFile { name: name_under(&p, &base), path: p }).collect();
        return Ok(tars(list, base, shard, format!("{n} tar shards")));
    }
    let images: Vec<PathBuf> = paths.into_iter().filter(|p| walk::is_image_name(p) || !p.exists()).collect();
    if images.is_empty() {
        bail!(
            "--images {}: matches no image (looked for the extensions {} in any case) and no .tar file",
            spec.display(),
            walk::extensions().join(", ")
        );
    }
    let total = images.len();
    let items = images[shard.range(total)]
        .iter()
        .map(|p| Item { name: name_under(p, &base), path: p.clone(), failed: None })
        .collect();
    Ok(Input { images: Images::Files(items), total, base, kind: format!("glob {}", spec.display()) })
}

/// A folder: its images, or its tar shards when it holds `.tar` files and no image at its top.
fn folder(root: &Path, shard: Shard, follow_links: bool) -> Result<Input> {
    let mut top_tars = Vec::new();
    let mut top_images = false;
    for e in std::fs::read_dir(root).with_context(|| format!("--images {}", root.display()))?.flatten() {
        let p = e.path();
        if is_tar(&p) && p.is_file() {
            top_tars.push(p);
        } else if walk::is_image_name(&p) {
            top_images = true;
        }
    }
    if !top_tars.is_empty() && !top_images {
        top_tars.sort();
        let n = top_tars.len();
        let list = top_tars.into_iter().map(|p| TarFile { name: name_under(&p, root), path: p }).collect();
        return Ok(tars(list, root.to_path_buf(), shard, format!("{n} tar shards in {}", root.display())));
    }
    let listing = walk::list_images(root, follow_links)?;
    let mut all: Vec<(PathBuf, Item)> = listing
        .images
        .into_iter()
        .map(|f| (PathBuf::from(walk::unescape(&f.rel)), Item { name: f.rel, path: f.path, failed: None }))
        .collect();
    for p in listing.problems {
        let rel = PathBuf::from(walk::unescape(&p.path));
        let item = Item { name: p.path, path: root.join(&rel), failed: Some(p.reason) };
        all.push((rel, item));
    }
    // One order for images and problems: by relative path, component by component.
    all.sort_by(|a, b| a.0.cmp(&b.0));
    if all.is_empty() {
        bail!(
            "no images under {} (looked for the extensions {} in any case)",
            root.display(),
            walk::extensions().join(", ")
        );
    }
    let total = all.len();
    let items = all.drain(shard.range(total)).map(|(_, item)| item).collect();
    Ok(Input {
        images: Images::Files(items),
        total,
        base: root.to_path_buf(),
        kind: format!("folder {}", root.display()),
    })
}

fn tars(list: Vec<TarFile>, base: PathBuf, shard: Shard, kind: String) -> Input {
    let total = list.len();
    let mine = list[shard.range(total)].to_vec();
    Input { images: Images::Tars(mine), total, base, kind }
}

/// The entries of a list: one path a line (bytes, so any file name), blank lines and lines
/// starting with `#` skipped, surrounding whitespace (and a Windows line end) removed.
fn read_list(mut from: impl Read, what: &str) -> Result<Vec<Vec<u8>>> {
    let mut bytes = Vec::new();
    from.read_to_end(&mut bytes).with_context(|| format!("--images {what}"))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    Ok(bytes
        .split(|&b| b == b'\n')
        .map(|l| l.trim_ascii())
        .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
        .map(<[u8]>::to_vec)
        .collect())
}

/// Items of a list: each entry relative to `base` unless absolute. Tar entries make tar shards.
fn listed(entries: Vec<Vec<u8>>, base: &Path, shard: Shard, kind: String) -> Input {
    let total = entries.len();
    let path_of = |e: &[u8]| base.join(OsStr::from_bytes(e));
    if total > 0 && entries.iter().all(|e| is_tar(Path::new(OsStr::from_bytes(e)))) {
        let list = entries[shard.range(total)]
            .iter()
            .map(|e| TarFile { name: walk::escape(OsStr::from_bytes(e)), path: path_of(e) })
            .collect();
        return Input { images: Images::Tars(list), total, base: base.to_path_buf(), kind };
    }
    let items = entries[shard.range(total)]
        .iter()
        .map(|e| Item { name: walk::escape(OsStr::from_bytes(e)), path: path_of(e), failed: None })
        .collect();
    Input { images: Images::Files(items), total, base: base.to_path_buf(), kind }
}

/// `name` as a path that stays inside whatever folder it is joined to: a leading `/` and `.`
/// components dropped; `None` when a `..` component would climb out (or nothing is left).
pub fn contained(name: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
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

    fn names(input: &Input) -> Vec<&str> {
        match &input.images {
            Images::Files(items) => items.iter().map(|i| i.name.as_str()).collect(),
            Images::Tars(t) => t.iter().map(|t| t.name.as_str()).collect(),
        }
    }

    #[test]
    fn braces() {
        assert_eq!(expand_braces("s/{000..002}.tar").unwrap(), ["s/000.tar", "s/001.tar", "s/002.tar"]);
        assert_eq!(expand_braces("{8..10}").unwrap(), ["8", "9", "10"]);
        assert_eq!(expand_braces("{a,b}/{1..2}").unwrap(), ["a/1", "a/2", "b/1", "b/2"]);
        assert_eq!(expand_braces("plain").unwrap(), ["plain"]);
        for bad in ["{3..1}", "{a..b}", "{1..2", "{0..99999999}"] {
            assert!(expand_braces(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_form_lists_in_order_and_shards() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for rel in ["p/b.jpg", "p/a.png", "p/sub/c.JPG", "p/notes.txt"] {
            touch(root, rel);
        }
        let whole = Shard { index: 0, count: 1 };
        let folder = resolve(&root.join("p"), whole, false, std::io::empty()).unwrap();
        assert_eq!(names(&folder), ["a.png", "b.jpg", "sub/c.JPG"]);
        let file = resolve(&root.join("p/b.jpg"), whole, false, std::io::empty()).unwrap();
        assert_eq!((names(&file), file.base.clone()), (vec!["b.jpg"], root.join("p")));
        let glob = resolve(&root.join("p/**/*.[jJ]*"), whole, false, std::io::empty()).unwrap();
        assert_eq!(names(&glob), ["b.jpg", "sub/c.JPG"]);
        assert_eq!(glob.base, root.join("p"));
        fs::write(
            root.join("l.txt"),
            format!("# images\np/b.jpg\n\n  {}  \r\nmissing.jpg\n", root.join("p/a.png").display()),
        )
        .unwrap();
        let list =
            resolve(Path::new(&format!("@{}", root.join("l.txt").display())), whole, false, std::io::empty()).unwrap();
        let Images::Files(items) = &list.images else { panic!() };
        assert_eq!(items[0].path, root.join("p/b.jpg"));
        assert_eq!(items[1].path, root.join("p/a.png"));
        assert_eq!(items[2].name, "missing.jpg");
        let stdin = resolve(Path::new("-"), whole, false, &b"x.jpg\ny.png\n"[..]).unwrap();
        assert_eq!(names(&stdin), ["x.jpg", "y.png"]);
        // Shards of a list: contiguous slices, together the whole list.
        let parts: Vec<Vec<String>> = (0..2)
            .map(|i| {
                let s = Shard { index: i, count: 2 };
                let input = resolve(Path::new("-"), s, false, &b"1.jpg\n2.jpg\n3.jpg\n"[..]).unwrap();
                assert_eq!(input.total, 3);
                names(&input).into_iter().map(String::from).collect()
            })
            .collect();
        assert_eq!(parts, [vec!["1.jpg"], vec!["2.jpg", "3.jpg"]]);
        assert!(resolve(&root.join("nothing/*.jpg"), whole, false, std::io::empty()).is_err());
        assert!(resolve(&root.join("nope"), whole, false, std::io::empty()).is_err());
        assert_eq!(base_of(&root.join("p")), root.join("p"));
        assert_eq!(base_of(&root.join("p/**/*.jpg")), root.join("p"));
        assert_eq!(base_of(Path::new(&format!("@{}", root.join("l.txt").display()))), root.to_path_buf());
    }

    #[test]
    fn tar_shards_by_folder_pattern_and_braces() {
        let dir = tempfile::tempdir().unwrap();
        for rel in ["s/000001.tar", "s/000000.tar", "s/000002.tar", "s/readme.md"] {
            touch(dir.path(), rel);
        }
        let whole = Shard { index: 0, count: 1 };
        let f = resolve(&dir.path().join("s"), whole, false, std::io::empty()).unwrap();
        assert_eq!(names(&f), ["000000.tar", "000001.tar", "000002.tar"]);
        let b = resolve(&dir.path().join("s/{000000..000003}.tar"), whole, false, std::io::empty()).unwrap();
        assert_eq!(names(&b), ["000000.tar", "000001.tar", "000002.tar", "000003.tar"]);
        let g = resolve(&dir.path().join("s/*.tar"), Shard { index: 1, count: 2 }, false, std::io::empty()).unwrap();
        assert_eq!((names(&g), g.total), (vec!["000001.tar", "000002.tar"], 3));
    }

    #[test]
    fn contained_names() {
        assert_eq!(contained(Path::new("/etc/x.jpg")), Some(PathBuf::from("etc/x.jpg")));
        assert_eq!(contained(Path::new("./a/./b.jpg")), Some(PathBuf::from("a/b.jpg")));
        assert_eq!(contained(Path::new("../../x.jpg")), None);
        assert_eq!(contained(Path::new("a/../../x.jpg")), None);
        assert_eq!(contained(Path::new("/")), None);
    }
}
