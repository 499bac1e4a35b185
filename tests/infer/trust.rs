//! Outputs cls-infer can be trusted with (issue 26): one run per output (a lock), ground truth
//! that says where it looked. Included by `tests/infer.rs`.

use super::*;
use cls_tests::wait_or_kill;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// cls-infer started in `cwd` with `args` and standard input a pipe held open (so a run on
/// `--images -` holds its lock until the list is given), stderr into `err`.
fn start_held(args: &[&str], cwd: &Path, err: &Path) -> Child {
    Command::new(binary())
        .args(args)
        .current_dir(cwd)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(fs::File::create(err).unwrap())
        .spawn()
        .unwrap()
}

/// Wait until `path` exists (while `child` runs), within [`RUN_LIMIT`].
fn wait_for(path: &Path, child: &mut Child, err: &Path) {
    let t0 = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before {} appeared:\n{}", path.display(), fs::read_to_string(err).unwrap());
        }
        assert!(t0.elapsed() < RUN_LIMIT, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Give a held run its list of images (closing its standard input) and wait for it.
fn release(mut child: Child, list: &str, err: &Path) -> String {
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(list.as_bytes()).unwrap();
    drop(stdin);
    let status = wait_or_kill(&mut child, RUN_LIMIT, "the held run");
    let stderr = fs::read_to_string(err).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    stderr
}

/// The names of the images in `imgs`, one a line.
fn list_of(imgs: &Path) -> String {
    let mut names: Vec<String> =
        fs::read_dir(imgs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names.join("\n") + "\n"
}

#[test]
fn a_second_run_on_the_same_out_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = many_images(dir.path(), 40);
    let model = write_model(dir.path(), true);
    let base = ["--model", s(&model), "--device", "cpu", "--batch", "4", "--threads", "1"];
    for format in ["jsonl", "csv", "exiftool", "xmp"] {
        let out = dir.path().join(format!("out-{format}"));
        let lock = dir.path().join(format!("out-{format}.lock"));
        let err = dir.path().join(format!("first-{format}.err"));
        // The first run holds the lock while it waits for its list on standard input.
        let args: Vec<&str> = [&base[..], &["--images", "-", "--format", format, "--out", s(&out)]].concat();
        let mut first = start_held(&args, &imgs, &err);
        wait_for(&lock, &mut first, &err);
        let pid = first.id();
        let mut attempts = vec![vec!["--images", s(&imgs)]];
        if format != "xmp" {
            attempts.push(vec!["--images", s(&imgs), "--resume"]);
        }
        for extra in attempts {
            let args: Vec<&str> = [&base[..], &extra[..], &["--format", format, "--out", s(&out)]].concat();
            let r = cls_infer(&args, &[]);
            assert_eq!(r.code, 2, "{format} {extra:?}: a second run was not refused:\n{}", r.stderr);
            let want = format!(
                "--out {} is being written by another cls-infer (pid {pid} on host ",
                out.display()
            );
            assert!(r.stderr.contains(&want), "{format}: {}", r.stderr);
            assert!(r.stderr.contains(&format!("lock file {}", lock.display())), "{}", r.stderr);
            assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
        }
        assert!(!partial_of(&out).exists() || format == "xmp", "{format}: the refused run wrote a partial file");
        // The first run then tags every image into a complete output, and leaves no lock file.
        release(first, &list_of(&imgs), &err);
        match format {
            "jsonl" => assert_eq!(read_jsonl(&out).len(), 40),
            "csv" => assert_eq!(csv::Reader::from_path(&out).unwrap().records().count(), 40),
            "exiftool" => {
                let v: Value = serde_json::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
                assert_eq!(v.as_array().unwrap().len(), 40);
            }
            _ => assert_eq!(fs::read_dir(&out).unwrap().count(), 40),
        }
        assert!(!lock.exists(), "{format}: the lock file was left behind");
    }

    // A lock whose process was killed (SIGKILL) does not block the next run.
    let out = dir.path().join("killed.jsonl");
    let err = dir.path().join("killed.err");
    let mut held = start_held(&[&base[..], &["--images", "-", "--out", s(&out)]].concat(), &imgs, &err);
    let lock = dir.path().join("killed.jsonl.lock");
    wait_for(&lock, &mut held, &err);
    held.kill().unwrap();
    wait_or_kill(&mut held, RUN_LIMIT, "the killed run");
    assert!(lock.exists());
    let r = cls_infer(&[&base[..], &["--images", s(&imgs), "--out", s(&out)]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(read_jsonl(&out).len(), 40);
    assert!(!lock.exists());

    // Someone else's file where the lock goes: refused, and left as it was.
    fs::write(&lock, "my notes\n").unwrap();
    exits_2_saying(&[&base[..], &["--images", s(&imgs), "--out", s(&out)]].concat(), "not a cls-infer lock file");
    assert_eq!(fs::read_to_string(&lock).unwrap(), "my notes\n");
}

/// `OUT.partial`.
fn partial_of(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.partial", out.display()))
}

#[test]
fn ground_truth_that_names_no_image_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = many_images(dir.path(), 3);
    let model = write_model(dir.path(), true);
    // Names written relative to --images, in a manifest kept in another folder.
    let labels = dir.path().join("labels");
    fs::create_dir_all(&labels).unwrap();
    let gt = labels.join("gt.jsonl");
    fs::write(&gt, "{\"image\": \"img0000.png\", \"labels\": [\"blue\"]}\n").unwrap();
    let r = cls_infer(&["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--ground-truth", s(&gt)], &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let real = |p: &Path| fs::canonicalize(p).unwrap();
    for needle in [
        format!("a JSONL manifest's image names are relative to the manifest's own folder, {}", real(&labels).display()),
        format!("its first entry, \"img0000.png\", was looked for at {}", real(&labels).join("img0000.png").display()),
        format!("the first image is {}", real(&imgs).join("img0000.png").display()),
    ] {
        assert!(r.stderr.contains(&needle), "expected {needle:?} in\n{}", r.stderr);
    }
    // The help says the same.
    let help = cls_infer(&["--help"], &[]);
    let help = help.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(help.contains("a JSONL manifest (image names relative to the manifest's own folder"), "{help}");
    // A duplicate key in --thresholds FILE is refused by name.
    let t = dir.path().join("t.json");
    fs::write(&t, r#"{"red": 0.2, "red": 0.9}"#).unwrap();
    exits_2_saying(&["--model", s(&model), "--images", s(&imgs), "--thresholds", s(&t)], "\"red\" is given twice");
}
