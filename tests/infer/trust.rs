//! Outputs cls-infer can be trusted with (issue 26): one run per output (a lock), `--resume` only
//! onto rows of the same model and labelling rule (else refused, or `--relabel`), CSV cells that a
//! spreadsheet cannot run as formulas, ground truth that says where it looked. Included by
//! `tests/infer.rs`.

use super::*;
use cls_tests::{venv_python, wait_or_kill};
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

/// Wait until the lock file `path` names its holder (while `child` runs), within [`RUN_LIMIT`].
fn wait_for(path: &Path, child: &mut Child, err: &Path) {
    let t0 = Instant::now();
    // The lock is taken once its file names its holder (the file exists a moment before).
    while !fs::read_to_string(path).is_ok_and(|t| t.starts_with("cls-infer pid ")) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the run ended ({status}) before {} appeared:\n{}",
                path.display(),
                fs::read_to_string(err).unwrap()
            );
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
            let want = format!("--out {} is being written by another cls-infer (pid {pid} on host ", out.display());
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

/// The test model with an extra metadata entry: other bytes (another SHA-256), the same classes
/// and thresholds.
fn other_model(dir: &Path) -> PathBuf {
    let bytes = model_bytes_ending(true, Dim::Named("N".into()), |g, logits, batch| {
        g.node("Sigmoid", &[logits], &["probs"], &[]);
        g.output_f32("probs", &[batch, Dim::Fixed(4)]);
        g.metadata("trained_by", "someone else");
    });
    let p = dir.join("other.onnx");
    fs::write(&p, bytes).unwrap();
    p
}

/// `dir/imgs` of `n` images of many colours, and `@list` files of its first half and of all of it.
fn half_and_whole(dir: &Path, n: usize) -> (PathBuf, PathBuf, PathBuf) {
    let imgs = dir.join("imgs");
    fs::create_dir_all(&imgs).unwrap();
    let mut names = Vec::new();
    for i in 0..n {
        let c = [(i * 53 % 256) as u8, (i * 97 % 256) as u8, (i * 31 % 256) as u8];
        let name = format!("img{i:02}.png");
        solid(c, 6, 6).save(imgs.join(&name)).unwrap();
        names.push(name);
    }
    let half = imgs.join("half.txt");
    fs::write(&half, names[..n / 2].join("\n")).unwrap();
    let whole = imgs.join("whole.txt");
    fs::write(&whole, names.join("\n")).unwrap();
    (imgs, half, whole)
}

#[test]
fn resume_refuses_rows_of_another_model_or_rule_unless_relabelled() {
    let dir = tempfile::tempdir().unwrap();
    let (_imgs, half, whole) = half_and_whole(dir.path(), 16);
    let model = write_model(dir.path(), true);
    let other = other_model(dir.path());
    let copy = dir.path().join("copy.onnx");
    fs::copy(&model, &copy).unwrap();
    let half = format!("@{}", half.display());
    let whole = format!("@{}", whole.display());
    let thresholds = dir.path().join("t.json");
    fs::write(&thresholds, r#"{"green": 0.9}"#).unwrap();
    let same_rule = dir.path().join("same.json");
    fs::write(&same_rule, r#"{"red": 0.5, "blue": 0.5}"#).unwrap();
    let base = ["--device", "cpu", "--threads", "2"];
    for format in ["jsonl", "csv", "exiftool"] {
        let out = dir.path().join(format!("out.{format}"));
        let stats = dir.path().join(format!("out.{format}.stats.json"));
        let tag = |model: &Path, images: &str, extra: &[&str]| {
            let args =
                [&base[..], &["--model", s(model), "--images", images, "--format", format, "--out", s(&out)], extra];
            cls_infer(&args.concat(), &[])
        };
        let r = tag(&model, &half, &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let (rows, stats_before) = (fs::read(&out).unwrap(), fs::read(&stats).unwrap());
        // Another model: refused, OUT and its stats as they were.
        let r = tag(&other, &whole, &["--resume"]);
        assert_eq!(r.code, 2, "{format}: resumed with another model:\n{}", r.stderr);
        let want = format!("the rows in {} come from another model: sha256 ", out.display());
        assert!(r.stderr.contains(&want) && r.stderr.contains(s(&model)), "{format}: {}", r.stderr);
        assert!(r.stderr.contains(&format!("while this run's {} is ", other.display())), "{}", r.stderr);
        // Other thresholds, label bounds: refused (with --relabel named where it can work).
        for extra in
            [&["--threshold", "0.7"][..], &["--thresholds", s(&thresholds)], &["--min-labels", "1"], &["--top-k", "1"]]
        {
            let r = tag(&model, &whole, &[&["--resume"], extra].concat());
            assert_eq!(r.code, 2, "{format} {extra:?}: resumed with another rule:\n{}", r.stderr);
            assert!(r.stderr.contains("were labelled by other labelling rules"), "{}", r.stderr);
            let hint = if format == "exiftool" { "keeps no scores" } else { "add --relabel" };
            assert!(r.stderr.contains(hint), "{format}: {}", r.stderr);
        }
        assert_eq!(fs::read(&out).unwrap(), rows, "{format}: a refused run changed OUT");
        assert_eq!(fs::read(&stats).unwrap(), stats_before, "{format}: a refused run changed the stats");
        // The same model under another name, the same rule spelled another way: resumed.
        let r = tag(&copy, &whole, &["--resume", "--thresholds", s(&same_rule)]);
        assert_eq!(r.code, 0, "{format}: {}", r.stderr);
        assert!(r.stderr.contains(" skipped (already in the output)"), "{}", r.stderr);
        let fresh = dir.path().join(format!("fresh.{format}"));
        let args = [&base[..], &["--model", s(&model), "--images", &whole, "--format", format, "--out", s(&fresh)]];
        assert_eq!(cls_infer(&args.concat(), &[]).code, 0);
        assert_eq!(fs::read(&out).unwrap(), fs::read(&fresh).unwrap(), "{format}");
        if format == "exiftool" {
            let r = tag(&model, &whole, &["--resume", "--relabel", "--threshold", "0.7"]);
            assert_eq!(r.code, 2, "{}", r.stderr);
            assert!(r.stderr.contains("exiftool's JSON keeps none"), "{}", r.stderr);
            continue;
        }
        // --relabel: the half tagged at 0.5 is labelled again at 0.7 from its scores, and the
        // file is the one a run at 0.7 writes.
        fs::write(&out, &rows).unwrap();
        fs::write(&stats, &stats_before).unwrap();
        let r = tag(&model, &whole, &["--resume", "--relabel", "--threshold", "0.7", "--top-k", "2"]);
        assert_eq!(r.code, 0, "{format}: {}", r.stderr);
        let args = [
            &base[..],
            &["--model", s(&model), "--images", &whole, "--format", format, "--out", s(&fresh)],
            &["--threshold", "0.7", "--top-k", "2"],
        ];
        assert_eq!(cls_infer(&args.concat(), &[]).code, 0);
        assert_ne!(fs::read(&fresh).unwrap()[..rows.len()], rows[..], "{format}: the rule changed no label");
        assert_eq!(fs::read(&out).unwrap(), fs::read(&fresh).unwrap(), "{format}: relabelled output differs");
        let st: Value = serde_json::from_slice(&fs::read(&stats).unwrap()).unwrap();
        assert_eq!((st["thresholds"]["global"].as_f64(), st["thresholds"]["top_k"].as_u64()), (Some(0.7), Some(2)));
        assert_eq!(st["model_sha256"], serde_json::from_slice::<Value>(&stats_before).unwrap()["model_sha256"]);
        // --relabel without --resume is a usage error.
        let r = tag(&model, &whole, &["--relabel"]);
        assert_eq!(r.code, 2, "{}", r.stderr);
    }
}

#[test]
fn a_killed_run_resumed_with_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = many_images(dir.path(), 3000);
    let model = write_model(dir.path(), true);
    let other = other_model(dir.path());
    let out = dir.path().join("out.jsonl");
    let partial = partial_of(&out);
    let args = |m: &Path| -> Vec<String> {
        ["--model", s(m), "--images", s(&imgs), "--device", "cpu", "--batch", "1", "--threads", "1", "--out", s(&out)]
            .iter()
            .map(|a| a.to_string())
            .collect()
    };
    let mut child =
        Command::new(binary()).args(args(&model)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while fs::metadata(&partial).map_or(0, |m| m.len()) < 3000 && t0.elapsed() < RUN_LIMIT {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let status = wait_or_kill(&mut child, RUN_LIMIT, "the killed run");
    assert!(status.code().is_none(), "the run ended before the kill ({status:?}): make it slower");
    let kept = fs::read(&partial).unwrap();
    let resume = |m: &Path, extra: &[&str]| {
        let a: Vec<String> = args(m);
        let mut a: Vec<&str> = a.iter().map(String::as_str).collect();
        a.push("--resume");
        a.extend_from_slice(extra);
        cls_infer(&a, &[])
    };
    let r = resume(&other, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("the rows in {} come from another model", partial.display())), "{}", r.stderr);
    let r = resume(&model, &["--top-k", "1"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--top-k none then, 1 now") && r.stderr.contains("add --relabel"), "{}", r.stderr);
    assert_eq!(fs::read(&partial).unwrap(), kept, "a refused run changed the partial file");
    assert!(!out.exists());
    let r = resume(&model, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(read_jsonl(&out).len(), 3000);
}

#[test]
fn csv_cells_that_start_like_formulas_are_protected() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    fs::create_dir_all(&imgs).unwrap();
    let names = [
        "=HYPERLINK(\"http:evil\",\"x\").png",
        "+1+2.png",
        "-3.png",
        "@SUM(1).png",
        "\tt.png",
        "\rr.png",
        "'q.png",
        "plain.png",
    ];
    for (i, n) in names.iter().enumerate() {
        solid([(i * 60 % 256) as u8, 200, 30], 6, 6).save_with_format(imgs.join(n), image::ImageFormat::Png).unwrap();
    }
    fs::write(imgs.join("=broken.jpg"), b"not an image").unwrap();
    // A model whose classes start like formulas too (a model without metadata, --classes).
    let bare = write_model(dir.path(), false);
    let classes = ["=red", "green", "+blue", "@bright"];
    let class_file = dir.path().join("classes.txt");
    fs::write(&class_file, classes.join("\n")).unwrap();
    let base = [
        "--model",
        s(&bare),
        "--classes",
        s(&class_file),
        "--size",
        "16x16",
        "--images",
        s(&imgs),
        "--device",
        "cpu",
        "--threads",
        "2",
        "--threshold",
        "0.3",
    ];
    let csv_out = dir.path().join("t.csv");
    let r = cls_infer(&[&base[..], &["--format", "csv", "--out", s(&csv_out)]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let raw_out = dir.path().join("raw.csv");
    let r = cls_infer(&[&base[..], &["--format", "csv", "--csv-raw", "--out", s(&raw_out)]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Python's csv module reads both; in the protected file no text cell starts like a formula,
    // and removing one leading ' gives each name back. Scores are numbers, as they were.
    let read = |p: &Path| -> Vec<Vec<String>> {
        let py = Command::new(venv_python())
            .args([
                "-c",
                "import csv, json, sys; print(json.dumps(list(csv.reader(open(sys.argv[1], newline='')))))",
                s(p),
            ])
            .output()
            .unwrap();
        assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
        serde_json::from_slice(&py.stdout).unwrap()
    };
    let (safe, raw) = (read(&csv_out), read(&raw_out));
    assert_eq!(safe.len(), names.len() + 2);
    let text_cells = |row: &Vec<String>| -> Vec<String> {
        [&row[..2], &row[row.len() - 1..]].concat().into_iter().filter(|c| !c.is_empty()).collect()
    };
    for row in &safe {
        for cell in text_cells(row).iter().chain(if row[0] == "image" { &row[2..6] } else { &[][..] }) {
            assert!(!cell.starts_with(['=', '+', '-', '@', '\t', '\r']), "a formula: {cell:?} in {row:?}");
        }
    }
    let unprotect = |c: &str| c.strip_prefix('\'').unwrap_or(c).to_string();
    assert_eq!(
        safe[0].iter().map(|c| unprotect(c)).collect::<Vec<_>>(),
        ["image", "labels", "=red", "green", "+blue", "@bright", "error"]
    );
    assert_eq!(raw[0], ["image", "labels", "=red", "green", "+blue", "@bright", "error"]);
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).chain(["=broken.jpg".to_string()]).collect();
    want.sort();
    let mut got: Vec<String> = safe[1..].iter().map(|r| unprotect(&r[0])).collect();
    got.sort();
    assert_eq!(got, want);
    let mut got_raw: Vec<String> = raw[1..].iter().map(|r| r[0].clone()).collect();
    got_raw.sort();
    assert_eq!(got_raw, want);
    for (a, b) in safe[1..].iter().zip(&raw[1..]) {
        assert_eq!(unprotect(&a[0]), b[0]);
        assert_eq!(a[2..6], b[2..6], "scores are left as they are");
        assert_eq!(unprotect(&a[1]), b[1], "labels");
        assert!(b[1].split(';').all(|l| l.is_empty() || classes.contains(&l)), "{b:?}");
    }
    assert!(safe
        .iter()
        .any(|r| r[1].starts_with("'=red") || r[1].starts_with("'+blue") || r[1].starts_with("'@bright")));
    // The protected file resumes (its names are found again) and --from-tags reads it as the
    // JSONL: the same metrics.
    let r = cls_infer(&[&base[..], &["--format", "csv", "--out", s(&csv_out), "--resume"]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("tagged 0 images") && r.stderr.contains("9 skipped"), "{}", r.stderr);
    let gt = imgs.join("gt.jsonl");
    let lines: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| serde_json::json!({"image": n, "labels": [classes[i % 4]]}).to_string())
        .collect();
    fs::write(&gt, lines.join("\n") + "\n").unwrap();
    let jsonl = dir.path().join("t.jsonl");
    let r = cls_infer(&[&base[..], &["--out", s(&jsonl)]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut metrics = Vec::new();
    for tags in [&jsonl, &csv_out, &raw_out] {
        let m = dir.path().join("m.json");
        let args = [
            "--model",
            s(&bare),
            "--classes",
            s(&class_file),
            "--size",
            "16x16",
            "--images",
            s(&imgs),
            "--threshold",
            "0.3",
            "--ground-truth",
            s(&gt),
            "--metrics-out",
            s(&m),
            "--from-tags",
            s(tags),
        ];
        let r = cls_infer(&args, &[]);
        assert_eq!(r.code, 0, "{}: {}", tags.display(), r.stderr);
        assert!(r.stderr.contains("read 8 tagged images"), "{}", r.stderr);
        metrics.push(fs::read_to_string(&m).unwrap());
    }
    assert_eq!(metrics[0], metrics[1]);
    assert_eq!(metrics[0], metrics[2]);
    exits_2_saying(&[&base[..], &["--csv-raw"]].concat(), "--csv-raw is for --format csv");
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
        format!(
            "a JSONL manifest's image names are relative to the manifest's own folder, {}",
            real(&labels).display()
        ),
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
