//! `cls_core::fsio`: outputs never destroy a special file, never half-write, never overwrite an
//! input. Device nodes and FIFOs are made in a temporary folder (never the machine's own).

use cls_core::fsio::{self, Dest, Output};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;

/// The umask is per process: tests that create files serialise on it.
static UMASK: Mutex<()> = Mutex::new(());

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn mkfifo(p: &Path) {
    assert_eq!(unsafe { libc::mkfifo(cpath(p).as_ptr(), 0o644) }, 0, "mkfifo {}", p.display());
}

/// A character device node equal to /dev/null (1, 3) at `p`; false when not permitted.
fn mknod_null(p: &Path) -> bool {
    unsafe { libc::mknod(cpath(p).as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) == 0 }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn regular_files_appear_whole_only_when_finished() {
    let _u = UMASK.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.jsonl");
    std::fs::write(&dest, "old\n").unwrap();
    let mut out = Output::create(&dest).unwrap();
    out.line("new").unwrap();
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "old\n", "replaced before finish");
    out.finish().unwrap();
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "new\n");
    // Dropped unfinished (an error path): the old file stays, no temporary file is left.
    let mut out = Output::create(&dest).unwrap();
    out.line("half").unwrap();
    drop(out);
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "new\n");
    assert_eq!(names(dir.path()), ["out.jsonl"]);
}

#[test]
fn new_files_follow_the_umask_and_replaced_files_keep_their_mode() {
    let _u = UMASK.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let old = unsafe { libc::umask(0o022) };
    let fresh = dir.path().join("fresh.json");
    fsio::write_atomic(&fresh, b"{}").unwrap();
    let kept = dir.path().join("kept.json");
    std::fs::write(&kept, "x").unwrap();
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o640)).unwrap();
    fsio::write_atomic(&kept, b"y").unwrap();
    unsafe { libc::umask(old) };
    assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o644);
    assert_eq!(std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777, 0o640);
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "y");
}

#[test]
fn the_longest_valid_name_gets_a_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("n".repeat(255));
    fsio::write_atomic(&dest, b"ok").unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"ok");
    assert_eq!(names(dir.path()).len(), 1);
}

#[test]
fn a_fifo_is_written_straight_and_stays_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.jsonl");
    mkfifo(&fifo);
    assert!(matches!(fsio::classify(&fifo).unwrap(), Dest::Special(_)));
    let reader_path = fifo.clone();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::fs::File::open(reader_path).unwrap().read_to_string(&mut s).unwrap();
        s
    });
    let mut out = Output::create(&fifo).unwrap();
    out.line("through the pipe").unwrap();
    out.finish().unwrap();
    assert_eq!(reader.join().unwrap(), "through the pipe\n");
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert_eq!(names(dir.path()), ["pipe.jsonl"]);
}

#[test]
fn a_device_node_is_written_straight_and_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("null");
    if !mknod_null(&dev) {
        eprintln!("skipped: mknod is not permitted here (not root)");
        return;
    }
    fsio::write_atomic(&dev, b"discarded").unwrap();
    let meta = std::fs::symlink_metadata(&dev).unwrap();
    assert!(meta.file_type().is_char_device(), "the device node was replaced");
    assert_eq!(names(dir.path()), ["null"]);
    // Two outputs on one character device are fine; on one regular file they are not.
    fsio::refuse_overlap(&[("--out", &dev), ("--errors", &dev)], &[]).unwrap();
}

#[test]
fn a_symlink_is_followed_and_stays_a_link() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    let target = dir.path().join("real/tags.jsonl");
    std::fs::write(&target, "old").unwrap();
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink("real/tags.jsonl", &link).unwrap();
    fsio::write_atomic(&link, b"new").unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
    // A dangling link is created at its target.
    let dangling = dir.path().join("later.jsonl");
    std::os::unix::fs::symlink("real/new.jsonl", &dangling).unwrap();
    fsio::write_atomic(&dangling, b"made").unwrap();
    assert_eq!(std::fs::read_to_string(dir.path().join("real/new.jsonl")).unwrap(), "made");
    // A loop is an error, not a hang.
    let a = dir.path().join("a");
    std::os::unix::fs::symlink("b", &a).unwrap();
    std::os::unix::fs::symlink("a", dir.path().join("b")).unwrap();
    assert!(fsio::write_atomic(&a, b"x").is_err());
}

#[test]
fn directories_and_missing_folders_are_refused_before_work() {
    let dir = tempfile::tempdir().unwrap();
    let e = fsio::check_output("--out", dir.path()).unwrap_err();
    assert!(format!("{e:#}").contains("is a directory"), "{e:#}");
    let e = fsio::check_output("--out", &dir.path().join("no/such/out.jsonl")).unwrap_err();
    assert!(format!("{e:#}").contains("--out"), "{e:#}");
    fsio::check_output("--out", &dir.path().join("fine.jsonl")).unwrap();
    fsio::check_output("--out", Path::new("-")).unwrap();
    assert!(names(dir.path()).is_empty(), "the check left a file: {:?}", names(dir.path()));
}

#[test]
fn an_output_never_replaces_an_input_or_another_output() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::write(&model, "m").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let spelled = dir.path().join("sub/../model.onnx");
    let e = fsio::refuse_overlap(&[("--out", &spelled)], &[("--model", &model)]).unwrap_err();
    assert!(e.to_string().contains("--model"), "{e}");
    // A hard link is the same file under another name.
    let hard = dir.path().join("hard.onnx");
    std::fs::hard_link(&model, &hard).unwrap();
    assert!(fsio::refuse_overlap(&[("--out", &hard)], &[("--model", &model)]).is_err());
    // Two outputs that do not exist yet, spelled differently.
    let a = dir.path().join("x.jsonl");
    let b = dir.path().join("./sub/../x.jsonl");
    let e = fsio::refuse_overlap(&[("--out", &a), ("--errors", &b)], &[]).unwrap_err();
    assert!(e.to_string().contains("--errors"), "{e}");
    // Standard output once is fine, twice is not; distinct files are fine.
    let dash = Path::new("-");
    fsio::refuse_overlap(&[("--out", dash), ("--errors", &a)], &[("--model", &model)]).unwrap();
    assert!(fsio::refuse_overlap(&[("--out", dash), ("--errors", dash)], &[]).is_err());
}

#[test]
fn writing_to_standard_output_works() {
    let mut out = Output::create(Path::new("-")).unwrap();
    assert_eq!(out.name(), "standard output");
    out.write_all(b"").unwrap();
    out.finish().unwrap();
}
