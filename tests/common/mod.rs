//! Helpers for the end-to-end tests: locate the release binaries, generate small datasets.

use std::path::{Path, PathBuf};

/// `target/<profile>/<name>`, next to the test executable's `deps/` folder.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let p = dir.join(name);
    assert!(p.exists(), "{} not built: run `cargo build --release` first (scripts/test does)", p.display());
    p
}

/// A tiny deterministic generator (no dependency on the crates under test).
pub struct Lcg(pub u64);
impl Lcg {
    #[allow(clippy::should_implement_trait)] // one uniform draw in [0, 1), not an iterator's item
    pub fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A learnable feature table: 4 labels, label j on when feature j (plus noise) is high.
pub fn write_csv(path: &Path, n: usize, seed: u64) {
    let mut r = Lcg(seed);
    let mut s = String::from("f0,f1,f2,f3,f4,f5,f6,f7,a,b,c,d\n");
    for _ in 0..n {
        let f: Vec<f64> = (0..8).map(|_| r.next()).collect();
        let mut labels: Vec<u8> = (0..4).map(|j| u8::from(f[j] + 0.2 * r.next() > 0.7)).collect();
        if labels.iter().all(|&l| l == 0) {
            labels[0] = 1;
        }
        let row: Vec<String> = f.iter().map(|v| format!("{v:.5}")).chain(labels.iter().map(u8::to_string)).collect();
        s += &(row.join(",") + "\n");
    }
    std::fs::write(path, s).unwrap();
}

/// A small image dataset: coloured squares on grey, classes "red", "green", "blue" by the
/// squares present: PNGs in `dir/<name>/` and the JSONL manifest `dir/<name>.jsonl`.
pub fn write_images(dir: &Path, n: usize, seed: u64, name: &str) -> PathBuf {
    let mut r = Lcg(seed);
    std::fs::create_dir_all(dir.join(name)).unwrap();
    let mut manifest = String::new();
    for i in 0..n {
        let mut img = image::RgbImage::from_pixel(40, 40, image::Rgb([128, 128, 128]));
        let mut labels = Vec::new();
        for (c, cname) in ["red", "green", "blue"].iter().enumerate() {
            if r.next() < 0.45 || (c == 2 && labels.is_empty()) {
                labels.push(format!("\"{cname}\""));
                let (x0, y0) = ((r.next() * 28.0) as u32, (r.next() * 28.0) as u32);
                let mut px = [40u8, 40, 40];
                px[c] = 230;
                for y in y0..y0 + 12 {
                    for x in x0..x0 + 12 {
                        img.put_pixel(x, y, image::Rgb(px));
                    }
                }
            }
        }
        let file = format!("{name}/{i:03}.png");
        img.save(dir.join(&file)).unwrap();
        manifest += &format!("{{\"image\": \"{file}\", \"labels\": [{}]}}\n", labels.join(", "));
    }
    let m = dir.join(format!("{name}.jsonl"));
    std::fs::write(&m, manifest).unwrap();
    m
}

/// The project's Python (the `.venv` that scripts/setup makes, with onnx and onnxruntime).
pub fn venv_python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(p.exists(), "{} missing: run scripts/setup", p.display());
    p
}

/// How long one run of a binary may take in the end-to-end tests before it counts as hung. Generous
/// (a loaded 2-core machine), since the bug it catches is a run that never ends.
pub const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// `child`'s exit status, or `None` (with the child killed and reaped) when it runs past `limit`.
fn wait_until(child: &mut std::process::Child, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Wait for `child` until `limit`; on timeout kill it and fail the test (a hang must fail, not
/// block CI).
pub fn wait_or_kill(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> std::process::ExitStatus {
    wait_until(child, limit).unwrap_or_else(|| panic!("{what} did not end within {limit:?}: killed (a hang)"))
}

/// `cmd.output()` under a time limit: stdin is empty, stdout and stderr are collected (by threads,
/// so a full pipe cannot stall the child); a run past `limit` is killed and fails the test, with
/// what it printed on stderr so far.
pub fn output_within(cmd: &mut std::process::Command, limit: std::time::Duration) -> std::process::Output {
    run_within(cmd, limit, None)
}

/// `cmd` (a cls-train or cls-infer run that must be refused) under [`RUN_LIMIT`]: it exits with
/// `code`, says why in one message and neither panics nor prints a backtrace. Returns its stderr.
pub fn fails_cleanly(cmd: &mut std::process::Command, code: i32) -> String {
    let out = output_within(cmd, RUN_LIMIT);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "{cmd:?}:\n{err}");
    for bad in ["panicked", "internal error", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(!err.contains(bad), "{cmd:?} printed {bad:?}:\n{err}");
    }
    err
}

/// Every file under `dir` (recursively) with its contents: compare two snapshots to see that a
/// refused run changed nothing.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())).flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

/// Temporary files of atomic writes left under `dir` (recursively): `cls_core::fsio`'s
/// `.<name>.XXXXXX.tmp`, older `<stem>.tmp<pid>` names and `checkpoint.tmp/` folders.
pub fn leftover_temps(dir: &Path) -> Vec<PathBuf> {
    let is_temp = |name: &str| {
        (name.starts_with('.') && name.ends_with(".tmp"))
            || name == "checkpoint.tmp"
            || name
                .rsplit_once(".tmp")
                .is_some_and(|(s, pid)| !s.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if is_temp(&e.file_name().to_string_lossy()) {
                found.push(p.clone());
            }
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    found
}

/// [`output_within`] with `input` on the child's standard input (written by a thread, so a child
/// that does not read it cannot stall the test).
pub fn output_within_input(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
    input: Vec<u8>,
) -> std::process::Output {
    run_within(cmd, limit, Some(input))
}

/// The one implementation of [`output_within`] and [`output_within_input`].
fn run_within(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
    input: Option<Vec<u8>>,
) -> std::process::Output {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut stdin = child.stdin.take();
    let feeder = std::thread::spawn(move || {
        if let (Some(s), Some(bytes)) = (stdin.as_mut(), input) {
            let _ = s.write_all(&bytes);
        }
    });
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let Some(status) = wait_until(&mut child, limit) else {
        let stderr = err.join().unwrap_or_default();
        panic!(
            "{what} did not end within {limit:?}: killed (a hang). Its stderr:\n{}",
            String::from_utf8_lossy(&stderr)
        );
    };
    let _ = feeder.join();
    std::process::Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

/// A JPEG of `img` whose EXIF (an APP1 segment right after SOI) says `orientation` (1 to 8).
pub fn jpeg_with_orientation(img: &image::RgbImage, orientation: u16) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95).encode_image(img).unwrap();
    let jpeg = buf.into_inner();
    let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01".to_vec();
    exif.extend([0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1]);
    exif.extend(orientation.to_be_bytes());
    exif.extend([0, 0, 0, 0, 0, 0]);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xff, 0xe1]);
    out.extend(((exif.len() + 2) as u16).to_be_bytes());
    out.extend(exif);
    out.extend(&jpeg[2..]);
    out
}
