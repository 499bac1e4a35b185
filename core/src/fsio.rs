//! Writing output files safely, the one way both binaries do it.
//!
//! - A regular file (or a name that does not exist yet) is written to a hidden temporary file in
//!   the same folder and renamed over the destination when complete, after the file and then the
//!   folder are flushed to disk: a killed run leaves the old file or the new one, never half of
//!   one. A replaced file keeps its permissions; a new one gets 0666 less the umask, like any
//!   file a shell redirection creates.
//! - A character or block device, a FIFO or a socket (`/dev/null`, `>(gzip > t.gz)`) is written
//!   straight: renaming over it would replace the device node by a regular file.
//! - `-` is standard output.
//! - A symbolic link is followed: its target is written (atomically, if regular); the link stays.
//! - Temporary files are removed when the writer is dropped unfinished (an error) and, once
//!   [`install_cleanup_handler`] ran, on SIGINT, SIGTERM and SIGHUP before the process dies.
//! - [`check_output`] and [`refuse_overlap`] validate output locations before any long work.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The longest file name the common Linux file systems accept, in bytes.
const NAME_MAX: usize = 255;
/// Symbolic links followed before giving up (the kernel's own limit).
const MAX_LINK_HOPS: usize = 40;

/// Temporary files and folders alive now, removed by the signal handler.
fn registry() -> &'static Mutex<Vec<PathBuf>> {
    static TEMPS: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
    TEMPS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Remove `path` (a file or a folder) if the process is stopped by a signal while it exists.
/// Drop the returned guard once the path is renamed into place or removed.
pub fn register_temp(path: &Path) -> TempGuard {
    if let Ok(mut temps) = registry().lock() {
        temps.push(path.to_path_buf());
    }
    TempGuard { path: path.to_path_buf() }
}

/// Unregisters a temporary path when dropped (see [`register_temp`]).
#[derive(Debug)]
pub struct TempGuard {
    path: PathBuf,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Ok(mut temps) = registry().lock() {
            if let Some(i) = temps.iter().rposition(|p| *p == self.path) {
                temps.swap_remove(i);
            }
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP: remove the registered temporary files, then die of the signal
/// as the default action would (so the exit status still says which signal). Call once, early in
/// `main`; calling again does nothing.
pub fn install_cleanup_handler() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    // A signal the parent set to be ignored (`nohup`, a background job of a script) stays ignored.
    let wanted: Vec<i32> = [SIGINT, SIGTERM, SIGHUP].into_iter().filter(|&s| !ignored(s)).collect();
    let mut signals = signal_hook::iterator::Signals::new(&wanted).context("cannot install the signal handler")?;
    std::thread::Builder::new()
        .name("cls-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                remove_registered();
                let _ = signal_hook::low_level::emulate_default_handler(sig);
                std::process::exit(128 + sig);
            }
        })
        .context("cannot start the signal thread")?;
    let _ = INSTALLED.set(());
    Ok(())
}

/// Whether `sig` is set to be ignored in this process (inherited from the parent).
fn ignored(sig: i32) -> bool {
    // SAFETY: sigaction with a null new action only reads the current disposition.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

fn remove_registered() {
    // A writer thread may hold the lock for a moment; never wait on it for long.
    for _ in 0..100 {
        if let Ok(temps) = registry().try_lock() {
            for p in temps.iter() {
                if p.is_dir() {
                    let _ = std::fs::remove_dir_all(p);
                } else {
                    let _ = std::fs::remove_file(p);
                }
            }
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A file type in words, for messages: "a regular file", "a directory", "a FIFO", "a character
/// device", ... (a symbolic link when the type was read without following links).
pub fn kind_name(t: std::fs::FileType) -> &'static str {
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "of an unknown kind"
    }
}

/// What kind of destination a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// `-`.
    Stdout,
    /// An existing device, FIFO or socket: written straight.
    Special(PathBuf),
    /// A regular file, existing or not, after following symbolic links: written atomically.
    Regular(PathBuf),
}

/// Follow symbolic links from `path` to the path they end at (which may not exist yet).
fn follow_links(path: &Path) -> io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINK_HOPS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p)?;
                p = if target.is_absolute() { target } else { p.parent().unwrap_or(Path::new(".")).join(target) };
            }
            _ => return Ok(p),
        }
    }
    Err(io::Error::other(format!("more than {MAX_LINK_HOPS} symbolic links")))
}

/// Classify `path` as an output destination. A directory is an error.
pub fn classify(path: &Path) -> Result<Dest> {
    if path.as_os_str() == "-" {
        return Ok(Dest::Stdout);
    }
    let target = follow_links(path).with_context(|| format!("{}", path.display()))?;
    match std::fs::metadata(&target) {
        Ok(m) if m.is_dir() => bail!("{} is a directory", path.display()),
        Ok(m) if m.is_file() => Ok(Dest::Regular(target)),
        Ok(m) => {
            let t = m.file_type();
            if t.is_char_device() || t.is_block_device() || t.is_fifo() || t.is_socket() {
                Ok(Dest::Special(target))
            } else {
                bail!("{}: not a file this program can write", path.display())
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Dest::Regular(target)),
        Err(e) => Err(e).with_context(|| format!("{}", path.display())),
    }
}

/// The folder a file lives in (`.` for a bare name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A hidden temporary file beside `dest`, its name within [`NAME_MAX`] whatever `dest`'s name,
/// with `dest`'s permissions if it exists, else 0666 less the umask.
fn temp_beside(dest: &Path) -> Result<tempfile::NamedTempFile> {
    use std::os::unix::ffi::OsStrExt;
    let dir = folder_of(dest);
    let name = dest.file_name().map(|n| n.as_bytes()).unwrap_or(b"out");
    // "." + name + "." + 6 random characters + ".tmp"
    let keep = name.len().min(NAME_MAX - 1 - 1 - 6 - 4);
    let prefix = [b".", &name[..keep], b"."].concat();
    let mode = std::fs::metadata(dest).map(|m| m.permissions().mode() & 0o7777).ok();
    let tmp = tempfile::Builder::new()
        .prefix(std::ffi::OsStr::from_bytes(&prefix))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {} (for {})", dir.display(), dest.display()))?;
    if let Some(mode) = mode {
        // Not masked by the umask: the replaced file's own permissions.
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the permissions of a file in {}", dir.display()))?;
    }
    Ok(tmp)
}

/// Flush a folder's entries (a rename in it) to disk. Some file systems refuse; that is no error.
fn sync_folder(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

enum Sink {
    Stdout(BufWriter<io::Stdout>),
    Direct(BufWriter<File>),
    Atomic { writer: BufWriter<tempfile::NamedTempFile>, dest: PathBuf, _guard: TempGuard },
}

/// An output being written: standard output, a device or FIFO written straight, or a regular file
/// that appears under its name only when [`Output::finish`] succeeds.
pub struct Output {
    sink: Sink,
    /// The name the user gave, for messages.
    name: String,
}

impl Output {
    /// Open `dest` for writing (see the module's doc for what each kind of path does).
    pub fn create(dest: &Path) -> Result<Output> {
        let name = if dest.as_os_str() == "-" { "standard output".to_string() } else { dest.display().to_string() };
        let sink = match classify(dest)? {
            Dest::Stdout => Sink::Stdout(BufWriter::with_capacity(1 << 16, io::stdout())),
            Dest::Special(target) => {
                let f = OpenOptions::new().write(true).open(&target).with_context(|| format!("cannot open {name}"))?;
                Sink::Direct(BufWriter::with_capacity(1 << 16, f))
            }
            Dest::Regular(target) => {
                let tmp = temp_beside(&target)?;
                let guard = register_temp(tmp.path());
                Sink::Atomic { writer: BufWriter::with_capacity(1 << 16, tmp), dest: target, _guard: guard }
            }
        };
        Ok(Output { sink, name })
    }

    /// Standard output.
    pub fn stdout() -> Output {
        Output { sink: Sink::Stdout(BufWriter::with_capacity(1 << 16, io::stdout())), name: "standard output".into() }
    }

    /// The destination as the user named it (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Write `text` and a newline.
    pub fn line(&mut self, text: &str) -> Result<()> {
        let name = &self.name;
        let w: &mut dyn Write = match &mut self.sink {
            Sink::Stdout(w) => w,
            Sink::Direct(w) => w,
            Sink::Atomic { writer, .. } => writer,
        };
        w.write_all(text.as_bytes()).and_then(|_| w.write_all(b"\n")).with_context(|| format!("cannot write to {name}"))
    }

    /// Flush everything; a regular file is synced and renamed into place (and its folder synced).
    pub fn finish(self) -> Result<()> {
        let name = self.name;
        match self.sink {
            Sink::Stdout(mut w) => w.flush().with_context(|| format!("cannot write to {name}")),
            Sink::Direct(w) => {
                w.into_inner().map_err(|e| e.into_error()).with_context(|| format!("cannot write to {name}"))?;
                Ok(())
            }
            Sink::Atomic { writer, dest, _guard } => {
                let tmp =
                    writer.into_inner().map_err(|e| e.into_error()).with_context(|| format!("cannot write {name}"))?;
                tmp.as_file().sync_all().with_context(|| format!("cannot write {name}"))?;
                tmp.persist(&dest)
                    .map_err(|e| e.error)
                    .with_context(|| format!("cannot rename the finished file to {name}"))?;
                sync_folder(folder_of(&dest));
                Ok(())
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.sink {
            Sink::Stdout(w) => w.write(buf),
            Sink::Direct(w) => w.write(buf),
            Sink::Atomic { writer, .. } => writer.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.sink {
            Sink::Stdout(w) => w.write_all(buf),
            Sink::Direct(w) => w.write_all(buf),
            Sink::Atomic { writer, .. } => writer.write_all(buf),
        }
    }

    /// Flushes the buffer only: the file appears under its name at [`Output::finish`].
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Stdout(w) => w.flush(),
            Sink::Direct(w) => w.flush(),
            Sink::Atomic { writer, .. } => writer.flush(),
        }
    }
}

/// Write a whole file at once (see [`Output`]).
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut out = Output::create(dest)?;
    out.write_all(bytes).with_context(|| format!("cannot write {}", dest.display()))?;
    out.finish()
}

/// Write a regular file through a library that only takes a path (safetensors, ONNX): `fill`
/// writes the temporary path it is given; the result is synced and renamed to `dest`. On an error
/// (or a signal) the temporary file is removed and `dest` is untouched.
pub fn write_via_path(dest: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let target = match classify(dest)? {
        Dest::Regular(t) => t,
        _ => bail!("{}: only a regular file can be written here", dest.display()),
    };
    let tmp = temp_beside(&target)?;
    let _guard = register_temp(tmp.path());
    fill(tmp.path())?;
    // `fill` may have replaced the file at the path: reopen it to sync what is there now.
    File::open(tmp.path()).and_then(|f| f.sync_all()).with_context(|| format!("cannot write {}", dest.display()))?;
    tmp.persist(&target)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot rename the finished file to {}", dest.display()))?;
    sync_folder(folder_of(&target));
    Ok(())
}

/// Fail now, not after hours of work, when `dest` (given as `flag`) cannot be written: its folder
/// is missing or not writable, or it is a directory. Creates nothing that stays.
pub fn check_output(flag: &str, dest: &Path) -> Result<()> {
    match classify(dest).with_context(|| flag.to_string())? {
        Dest::Stdout | Dest::Special(_) => Ok(()),
        Dest::Regular(target) => {
            let dir = folder_of(&target);
            if !dir.is_dir() {
                bail!("{flag} {}: the folder {} does not exist", dest.display(), dir.display());
            }
            let probe = temp_beside(&target).with_context(|| format!("{flag} {}", dest.display()))?;
            drop(probe);
            Ok(())
        }
    }
}

/// `path` made absolute and lexically normal, with the symbolic links of its existing part
/// resolved: two spellings of one location compare equal.
fn normalise(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")).join(path)
    };
    let target = follow_links(&abs).unwrap_or(abs);
    // The longest existing ancestor, canonicalised, then the rest lexically.
    let mut rest = Vec::new();
    let mut base = target.as_path();
    loop {
        if let Ok(c) = base.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return lexical(&out);
        }
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                base = parent;
            }
            _ => return lexical(&target),
        }
    }
}

/// `path` with `.` and `..` folded lexically (no file system access).
pub(crate) fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Whether two paths name one file: the same inode when both exist, else the same normalised path.
fn same_location(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(ma), Ok(mb)) => ma.dev() == mb.dev() && ma.ino() == mb.ino(),
        (Err(_), Err(_)) => normalise(a) == normalise(b),
        _ => false,
    }
}

/// Whether writing `path` twice (or writing what is read) is harmless: a character device such
/// as `/dev/null`.
fn shareable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}

/// Refuse, before any work, an output that is one of the inputs or another output. Each entry is
/// (the flag that named it, its path); `-` (standard output) may appear once among the outputs.
pub fn refuse_overlap(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> Result<()> {
    for (i, (flag, out)) in outputs.iter().enumerate() {
        let stdout = out.as_os_str() == "-";
        for (other_flag, other) in &outputs[..i] {
            let both_stdout = stdout && other.as_os_str() == "-";
            if both_stdout || (!stdout && !shareable(out) && same_location(out, other)) {
                bail!("{flag} {} is also {other_flag}: give each output its own file", out.display());
            }
        }
        if stdout || shareable(out) {
            continue;
        }
        for (in_flag, input) in inputs {
            if same_location(out, input) {
                bail!(
                    "{flag} {} would overwrite {in_flag} {}: choose another output file",
                    out.display(),
                    input.display()
                );
            }
        }
    }
    Ok(())
}

/// Refuse an output path inside (or equal to) a folder the program reads from or manages, e.g. a
/// file of a run folder. Compares normalised paths.
pub fn refuse_inside(flag: &str, out: &Path, what: &str, folder: &Path) -> Result<()> {
    if out.as_os_str() == "-" || shareable(out) {
        return Ok(());
    }
    let (o, f) = (normalise(out), normalise(folder));
    if o.starts_with(&f) {
        bail!("{flag} {} is inside {what} {}: choose a path outside it", out.display(), folder.display());
    }
    Ok(())
}
