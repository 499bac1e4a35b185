//! End-to-end tests of `cls-train` (the release binary): every method trains two epochs on
//! generated data and writes a valid run folder; image backbones train from an image cache;
//! `--resume` after a stop or a kill ends with the same weights as an uninterrupted run.

use cls_tests::{bin, fails_cleanly, leftover_temps, output_within, snapshot, write_csv, write_images, RUN_LIMIT};
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn train(args: &[&str]) -> Output {
    let out = output_within(Command::new(bin("cls-train")).args(args), RUN_LIMIT);
    if !out.status.success() {
        panic!("cls-train {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    out
}

/// cls-train with `args` (run folder `tmp/<run>`, cache `tmp/cache`) fails with status 1, a
/// message and no panic, and finishes no run. Returns its stderr.
fn train_fails(args: &[&str], tmp: &Path, run: &str) -> String {
    let err = fails_cleanly(
        Command::new(bin("cls-train"))
            .args(args)
            .arg("--run-dir")
            .arg(tmp.join(run))
            .arg("--cache-dir")
            .arg(tmp.join("cache")),
        1,
    );
    assert!(!tmp.join(run).join("summary.json").exists());
    err
}

/// The arguments of a run on a `write_csv` table `tr` (4 classes, one thread) in `run`: with
/// `--test te` and `--cache-dir cache` when given, then `extra`.
fn table_run(tr: &Path, te: Option<&Path>, run: &Path, cache: Option<&Path>, extra: &[&str]) -> Vec<String> {
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let mut a: Vec<String> =
        ["--data", "--label-columns", "4", "--threads", "1", "--run-dir"].map(String::from).to_vec();
    a.insert(1, path(tr));
    a.push(path(run));
    for (flag, p) in [("--test", te), ("--cache-dir", cache)] {
        if let Some(p) = p {
            a.extend([flag.to_string(), path(p)]);
        }
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// The run folder is complete and its numbers are sane.
fn check_run(run: &Path, method: &str, epochs: usize, nets: usize) {
    for f in
        ["config.toml", "metrics.jsonl", "summary.json", "model.onnx", "plots/val_map.png", "checkpoint/state.json"]
    {
        let p = run.join(f);
        assert!(p.is_file() && std::fs::metadata(&p).unwrap().len() > 0, "{method}: missing {}", p.display());
    }
    let lines: Vec<Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), epochs, "{method}: one metrics line per epoch");
    for (e, l) in lines.iter().enumerate() {
        assert_eq!(l["epoch"], e + 1);
        assert_eq!(l["val"].as_array().unwrap().len(), nets, "{method}: a validation result per network");
        for v in l["val"].as_array().unwrap() {
            let m = v["mAP"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&m), "{method}: mAP {m}");
        }
        for loss in l["loss"].as_array().unwrap() {
            assert!(loss.as_f64().unwrap().is_finite(), "{method}: loss {loss}");
        }
    }
    let s = read_json(&run.join("summary.json"));
    assert_eq!(s["method"], method);
    assert!(s["best_peer"].as_u64().unwrap() < nets as u64);
    let best = s["best_epoch"].as_u64().unwrap() as usize;
    assert!((1..=epochs).contains(&best));
    // The summary's validation mAP is the best epoch's, as logged.
    let peer = s["best_peer"].as_u64().unwrap() as usize;
    let logged = lines[best - 1]["val"][peer]["mAP"].as_f64().unwrap();
    assert!((s["val"]["mAP"].as_f64().unwrap() - logged).abs() < 1e-6, "{method}: summary val mAP vs log");
    for k in ["mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"] {
        let v = s["test"][k].as_f64().unwrap_or_else(|| panic!("{method}: test {k} missing"));
        assert!((0.0..=1.0).contains(&v));
    }
}

const TWO_NET: &[&str] = &["cls", "cls-h", "cls-l", "clc", "co-teaching", "co-teaching-plus", "jocor"];
const ALL: &[&str] = &[
    "cls",
    "cls-h",
    "cls-l",
    "clc",
    "an",
    "an-ls",
    "wan",
    "epr",
    "role",
    "asl",
    "hill",
    "splc",
    "ll-r",
    "ll-ct",
    "ll-cp",
    "em",
    "co-teaching",
    "co-teaching-plus",
    "jocor",
];

#[test]
fn every_method_trains_two_epochs_and_writes_a_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let (tr, te) = (tmp.path().join("train.csv"), tmp.path().join("test.csv"));
    write_csv(&tr, 300, 1);
    write_csv(&te, 100, 2);
    for &m in ALL {
        let run = tmp.path().join(format!("run-{m}"));
        let extra =
            ["--method", m, "--epochs", "2", "--batch-size", "32", "--lr", "0.01", "--partial", "0.5", "--seed", "3"];
        let out = train(&strs(&table_run(&tr, Some(&te), &run, Some(&tmp.path().join("cache")), &extra)));
        // The log says what the protocol left, as the summary does.
        let err = String::from_utf8_lossy(&out.stderr);
        let summary = read_json(&run.join("summary.json"));
        let realised = summary["realised_fraction"].as_f64().unwrap();
        assert!(realised > 0.3 && realised < 0.9, "{realised}");
        let said = format!("{:.1}% of the true positives observed", 100.0 * realised);
        assert!(err.contains("training labels (0.5): ") && err.contains(&said), "{said} not in:\n{err}");
        assert!(summary["restored_images"].as_u64().is_some(), "{summary}");
        let nets = if TWO_NET.contains(&m) { 2 } else { 1 };
        check_run(&run, m, 2, nets);
        if m == "cls" {
            // Peer selection only starts after the first epoch (R_h(0) = 1); in the second it
            // flags entries and the log measures them against the hidden truth.
            // An `epoch + 1` slip in the wiring would flag entries in the first epoch already.
            let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
            let first: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
            assert_eq!(first["r_h"].as_f64(), Some(1.0), "{first}");
            let flagged_first: u64 = first["selection"]
                .as_array()
                .map_or(0, |nets| nets.iter().map(|n| n["flagged"].as_u64().unwrap()).sum());
            assert_eq!(flagged_first, 0, "peer selection flagged entries in the first epoch: {first}");
            let second: Value = serde_json::from_str(log.lines().nth(1).unwrap()).unwrap();
            assert!(second["r_h"].as_f64().unwrap() < 1.0);
            assert!(second["selection"][0]["flagged"].as_u64().unwrap() > 0, "{second}");
            assert!(run.join("plots/selection.png").is_file());
        }
    }
}

#[test]
fn image_backbone_trains_from_the_cache_and_frozen_features_work() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = write_images(tmp.path(), 48, 5, "train");
    let te = write_images(tmp.path(), 16, 6, "test");
    let cache = tmp.path().join("cache");
    let run = tmp.path().join("run-resnet");
    train(&[
        "--data",
        tr.to_str().unwrap(),
        "--test",
        te.to_str().unwrap(),
        "--backbone",
        "resnet18",
        "--pretrained",
        "none",
        "--resize",
        "40x40",
        "--crop",
        "32x32",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--partial",
        "full",
        "--threads",
        "2",
        "--run-dir",
        run.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    check_run(&run, "cls", 2, 2);
    let cached: Vec<_> = std::fs::read_dir(cache.join("images")).unwrap().collect();
    assert!(cached.len() >= 2, "train (40x40) and eval (32x32) caches");

    let run = tmp.path().join("run-frozen");
    train(&[
        "--data",
        tr.to_str().unwrap(),
        "--test",
        te.to_str().unwrap(),
        "--backbone",
        "efficientnet-lite0",
        "--pretrained",
        "none",
        "--freeze-backbone",
        "--crop",
        "32x32",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "1e-2",
        "--method",
        "an",
        "--run-dir",
        run.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    check_run(&run, "an", 2, 1);
    assert!(std::fs::read_dir(cache.join("features")).unwrap().count() >= 3, "train/val/test features cached");
}

/// The checkpoint's weights, optimizer moments and method state (ROLE's estimates and their
/// optimizer, LL-Cp's corrections), byte for byte; files a method does not write are skipped.
fn weights(run: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["peer0", "peer1", "adam0", "adam1", "method"] {
        let path = run.join(format!("checkpoint/{f}.safetensors"));
        if f == "peer0" || f == "adam0" || path.exists() {
            all.extend(std::fs::read(&path).unwrap());
        }
    }
    all
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    resume_reproduces("cls");
}

/// ROLE keeps an estimate matrix with its own Adam: both belong to the checkpoint.
#[test]
fn a_resumed_role_run_continues_its_estimates_and_their_optimizer() {
    resume_reproduces("role");
}

fn resume_reproduces(method: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (tr, te) = (tmp.path().join("train.csv"), tmp.path().join("test.csv"));
    write_csv(&tr, 400, 11);
    write_csv(&te, 100, 12);
    let cache = tmp.path().join("cache");
    let common = |run: &Path, extra: &[&str]| {
        let mut a = vec!["--epochs", "4", "--batch-size", "32", "--lr", "0.01", "--tau-h", "0.1", "--e-k", "2"];
        a.extend_from_slice(&["--seed", "7", "--method", method]);
        a.extend_from_slice(extra);
        table_run(&tr, Some(&te), run, Some(&cache), &a)
    };
    let whole = tmp.path().join("whole");
    train(&strs(&common(&whole, &[])));

    let parts = tmp.path().join("parts");
    train(&strs(&common(&parts, &["--stop-after", "2"])));
    assert!(!parts.join("summary.json").exists(), "stopped early: no summary yet");
    train(&["--resume", parts.to_str().unwrap()]);

    assert!(weights(&whole) == weights(&parts), "resumed weights differ from the uninterrupted run");
    let (sw, sp) = (read_json(&whole.join("summary.json")), read_json(&parts.join("summary.json")));
    assert_eq!(sw["val"], sp["val"]);
    assert_eq!(sw["test"], sp["test"]);
    assert_eq!(std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap().lines().count(), 4);
    assert_eq!(std::fs::read_to_string(parts.join("metrics.jsonl")).unwrap().lines().count(), 4);
}

#[test]
fn resume_after_a_kill_reproduces_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = write_images(tmp.path(), 64, 21, "train");
    let te = write_images(tmp.path(), 16, 22, "test");
    let args = |run: &Path| -> Vec<String> {
        [
            "--data",
            tr.to_str().unwrap(),
            "--test",
            te.to_str().unwrap(),
            "--backbone",
            "resnet18",
            "--pretrained",
            "none",
            "--resize",
            "36x36",
            "--crop",
            "32x32",
            "--epochs",
            "5",
            "--batch-size",
            "16",
            "--lr",
            "1e-3",
            "--threads",
            "1",
            "--seed",
            "2",
            "--run-dir",
            run.to_str().unwrap(),
            "--cache-dir",
            tmp.path().join("cache").to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let whole = tmp.path().join("whole");
    train(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>());

    let killed = tmp.path().join("killed");
    let mut child = Command::new(bin("cls-train")).args(args(&killed)).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while !killed.join("checkpoint/state.json").exists() {
        if t0.elapsed().as_secs() > 300 {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no checkpoint after 300 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(150)); // die somewhere inside epoch 2
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before it could be killed: make it longer");
    train(&["--resume", killed.to_str().unwrap()]);
    assert!(weights(&whole) == weights(&killed), "weights after kill + resume differ from the uninterrupted run");
    assert_eq!(read_json(&whole.join("summary.json"))["test"], read_json(&killed.join("summary.json"))["test"]);
}

#[test]
fn bad_input_gives_a_clear_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"image\": \"nope.png\", \"labels\": [\"a\"]}\n").unwrap();
    let err = fails_cleanly(
        Command::new(bin("cls-train"))
            .args(["--data", bad.to_str().unwrap(), "--pretrained", "none", "--run-dir"])
            .arg(tmp.path().join("r")),
        1,
    );
    assert!(err.contains("bad.jsonl"), "{err}");
    assert!(!tmp.path().join("r").exists(), "no run folder for data that cannot be read");

    let err = fails_cleanly(
        Command::new(bin("cls-train"))
            .args(["--method", "nope", "--data", bad.to_str().unwrap(), "--run-dir"])
            .arg(tmp.path().join("r2")),
        2,
    );
    assert!(err.contains("'nope' for '--method"), "{err}");
    assert!(!tmp.path().join("r2").exists(), "no run folder for a bad method name");

    let err = fails_cleanly(Command::new(bin("cls-train")).args(["--resume"]).arg(tmp.path().join("missing")), 1);
    assert!(err.contains("missing"), "{err}");

    // A validation set without a single positive label cannot pick an epoch: refused before
    // training, by name, with no run folder left behind.
    let tr = tmp.path().join("train.csv");
    write_csv(&tr, 60, 3);
    let val = tmp.path().join("val.csv");
    std::fs::write(&val, "f0,f1,f2,f3,f4,f5,f6,f7,a,b,c,d\n0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0,0,0,0\n").unwrap();
    let err = train_fails(
        &["--data", tr.to_str().unwrap(), "--val", val.to_str().unwrap(), "--label-columns", "4", "--epochs", "1"],
        tmp.path(),
        "r3",
    );
    assert!(err.contains("validation set (1 images) has no positive label"), "{err}");
}

/// Arguments of a small image run (ResNet-18 from random weights, 2 epochs), in `run` with its
/// cache in `cache` when given (`train_fails` adds its own).
fn image_run(tr: &Path, te: &Path, run: Option<(&Path, &Path)>, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--data",
        tr.to_str().unwrap(),
        "--test",
        te.to_str().unwrap(),
        "--backbone",
        "resnet18",
        "--pretrained",
        "none",
        "--resize",
        "40x40",
        "--crop",
        "32x32",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--seed",
        "3",
        "--threads",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some((run, cache)) = run {
        a.extend(["--run-dir".into(), run.display().to_string(), "--cache-dir".into(), cache.display().to_string()]);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// A metrics.jsonl line without its timings.
fn untimed(line: &str) -> Value {
    let mut v: Value = serde_json::from_str(line).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("seconds");
    o.remove("images_per_s");
    v
}

#[test]
fn cache_none_decodes_per_step_and_trains_the_same_run_as_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = write_images(tmp.path(), 40, 81, "train");
    let te = write_images(tmp.path(), 16, 82, "test");
    let cache = tmp.path().join("cache");
    let (a, b) = (tmp.path().join("cached"), tmp.path().join("streamed"));
    train(&strs(&image_run(&tr, &te, Some((&a, &cache)), &["--method", "cls"])));
    let cache_b = tmp.path().join("cache-b");
    let out = train(&strs(&image_run(&tr, &te, Some((&b, &cache_b)), &["--method", "cls", "--cache", "none"])));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("decoding "), "--cache none decoded into a cache:\n{err}");
    assert!(!tmp.path().join("cache-b/images").exists(), "--cache none wrote an image cache");
    assert!(weights(&a) == weights(&b), "the same seed gives other weights with --cache none");
    let lines = |run: &Path| -> Vec<Value> {
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(untimed).collect()
    };
    assert_eq!(lines(&a), lines(&b));
    let (sa, sb) = (read_json(&a.join("summary.json")), read_json(&b.join("summary.json")));
    for k in ["val", "test", "val_calibrated", "test_calibrated", "thresholds"] {
        if k == "thresholds" {
            assert_eq!(sa[k]["global"], sb[k]["global"]);
        } else {
            assert_eq!(sa[k], sb[k], "{k}");
        }
    }

    // An image that cannot be read ends the run with its name, whether it is met while training
    // or in a background batch.
    let broken = write_images(tmp.path(), 40, 81, "broken");
    std::fs::write(tmp.path().join("broken/017.png"), b"not a png").unwrap();
    let args = image_run(&broken, &te, None, &["--cache", "none", "--method", "an"]);
    let err = train_fails(&strs(&args), tmp.path(), "broken-run");
    assert!(err.contains("017.png") && err.contains("could not be read"), "{err}");

    // A failing step (the loss diverges) ends the run with its message while the decoders are
    // ahead of it: they are stopped, not waited on forever.
    let args = image_run(&tr, &te, None, &["--cache", "none", "--lr", "1e30", "--method", "an"]);
    let err = train_fails(&strs(&args), tmp.path(), "diverging-run");
    assert!(err.contains("the loss became"), "{err}");
}

#[test]
fn an_image_backbone_needs_pretrained_weights_or_none() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = write_images(tmp.path(), 24, 91, "train");
    let base = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> =
            ["--data", tr.to_str().unwrap(), "--epochs", "1"].iter().map(|s| s.to_string()).collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    for (extra, run) in [(&[][..], "a"), (&["--backbone", "resnet18"][..], "b")] {
        let err = train_fails(&strs(&base(extra)), tmp.path(), run);
        for word in ["--pretrained", "imagenet", "safetensors", "timm", "none"] {
            assert!(err.contains(word), "the refusal names {word}: {err}");
        }
        assert!(!tmp.path().join(run).exists(), "refused, yet a run folder was made");
    }
    let err = train_fails(&strs(&base(&["--backbone", "mlp", "--pretrained", "none"])), tmp.path(), "c");
    assert!(err.contains("--pretrained applies to image backbones"), "{err}");
    // On purpose: random weights.
    let run = tmp.path().join("d");
    train(&strs(&base(&[
        "--backbone",
        "resnet18",
        "--pretrained",
        "none",
        "--resize",
        "32x32",
        "--crop",
        "32x32",
        "--batch-size",
        "8",
        "--run-dir",
        run.to_str().unwrap(),
        "--cache-dir",
        tmp.path().join("cache").to_str().unwrap(),
    ])));
    assert_eq!(read_json(&run.join("summary.json"))["partial"], "given");
}

#[test]
fn a_tag_table_with_its_flags_trains_and_says_what_it_skipped() {
    // A tag table (Kaggle's layout) from a generated manifest: `;`-separated tags, one tag of a
    // class outside the class list, one image without a file.
    let tmp = tempfile::tempdir().unwrap();
    let tr = write_images(tmp.path(), 32, 95, "train");
    let mut table = String::from("image_name,tags\n");
    for (i, line) in std::fs::read_to_string(&tr).unwrap().lines().enumerate() {
        let e: Value = serde_json::from_str(line).unwrap();
        let mut tags: Vec<String> = serde_json::from_value(e["labels"].clone()).unwrap();
        if i == 3 {
            tags.push("purple".into());
        }
        table += &format!("{},\"{}\"\n", e["image"].as_str().unwrap(), tags.join(";"));
    }
    table += "train/missing.png,red\n";
    let csv = tmp.path().join("tags.csv");
    std::fs::write(&csv, table).unwrap();
    std::fs::write(tmp.path().join("classes.txt"), "red\ngreen\nblue\n").unwrap();
    let run = tmp.path().join("run");
    let common = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["--data", csv.to_str().unwrap(), "--tag-sep", ";", "--unlisted", "unknown"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(
            ["--backbone", "resnet18", "--pretrained", "none", "--resize", "32x32", "--crop", "32x32"]
                .map(String::from),
        );
        a.extend(["--epochs", "1", "--batch-size", "8", "--threads", "2"].map(String::from));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // Without the flags: refused, naming what is wrong.
    let err = train_fails(&strs(&common(&[])), tmp.path(), "refused");
    assert!(err.contains("purple") || err.contains("missing.png"), "{err}");
    let cache = tmp.path().join("cache");
    let extra = [
        "--skip-other-classes",
        "--drop-missing",
        "--run-dir",
        run.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    let out = train(&strs(&common(&extra)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("note: training data:") && err.contains("missing.png"), "{err}");
    let s = read_json(&run.join("summary.json"));
    assert_eq!(s["partial"], "given");
    let thresholds = read_json(&run.join("thresholds.json"));
    let names: Vec<&String> = thresholds.as_object().unwrap().keys().collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn a_diverging_loss_stops_the_run_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = tmp.path().join("train.csv");
    write_csv(&tr, 200, 9);
    // A learning rate this large sends the weights, and then the loss, to infinity or NaN.
    let args = [
        "--data",
        tr.to_str().unwrap(),
        "--label-columns",
        "4",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "1e30",
        "--method",
        "an",
    ];
    let err = train_fails(&args, tmp.path(), "run");
    assert!(err.contains("the loss became") && err.contains("checkpoint"), "{err}");
}

#[test]
fn runs_started_side_by_side_build_each_cache_once() {
    // Two runs on a cold cache: one decodes the images and computes the backbone features, the
    // other waits for the files (cache::BuildLock) instead of doing the same work again.
    let tmp = tempfile::tempdir().unwrap();
    let tr = write_images(tmp.path(), 240, 8, "train");
    let te = write_images(tmp.path(), 40, 9, "test");
    let cache = tmp.path().join("cache");
    let spawn = |k: usize| {
        Command::new(bin("cls-train"))
            .args(["--data", tr.to_str().unwrap(), "--test", te.to_str().unwrap(), "--backbone", "efficientnet-lite0"])
            .args([
                "--pretrained",
                "none",
                "--freeze-backbone",
                "--crop",
                "64x64",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--method",
                "an",
                "--threads",
                "1",
            ])
            .arg("--run-dir")
            .arg(tmp.path().join(format!("run{k}")))
            .arg("--cache-dir")
            .arg(&cache)
            .stderr(std::fs::File::create(tmp.path().join(format!("stderr{k}"))).unwrap())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(0), spawn(1));
    let mut stderr = String::new();
    for (k, mut child) in [a, b].into_iter().enumerate() {
        let status = cls_tests::wait_or_kill(&mut child, RUN_LIMIT, "cls-train");
        let text = std::fs::read_to_string(tmp.path().join(format!("stderr{k}"))).unwrap();
        assert!(status.success(), "{text}");
        stderr += &text;
    }
    let count = |what: &str| stderr.lines().filter(|l| l.starts_with(what)).count();
    assert_eq!(count("computing backbone features of"), 3, "train, validation and test features once each:\n{stderr}");
    assert_eq!(count("decoding "), 3, "train, validation and test images decoded once each:\n{stderr}");
    let (s0, s1) = (read_json(&tmp.path().join("run0/summary.json")), read_json(&tmp.path().join("run1/summary.json")));
    assert_eq!(s0["test"]["mAP"], s1["test"]["mAP"], "both runs read the same features");
}

#[test]
fn methods_that_need_k_say_where_it_came_from_on_unsimulated_labels() {
    // With --partial full the training labels are taken as given, maybe already partial, so the
    // default k (their mean) may be low: EPR says so unless --expected-positives is given.
    let tmp = tempfile::tempdir().unwrap();
    let tr = tmp.path().join("train.csv");
    write_csv(&tr, 80, 5);
    let run = |extra: &[&str], name: &str| {
        let out = train(
            &[
                &[
                    "--data",
                    tr.to_str().unwrap(),
                    "--label-columns",
                    "4",
                    "--epochs",
                    "1",
                    "--batch-size",
                    "16",
                    "--method",
                    "epr",
                ],
                extra,
                &[
                    "--run-dir",
                    tmp.path().join(name).to_str().unwrap(),
                    "--cache-dir",
                    tmp.path().join("cache").to_str().unwrap(),
                ],
            ]
            .concat(),
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(run(&["--partial", "full"], "a").contains("pass --expected-positives"));
    assert!(!run(&["--partial", "full", "--expected-positives", "2"], "b").contains("pass --expected-positives"));
    assert!(!run(&["--partial", "single"], "c").contains("pass --expected-positives"));
}

/// [`table_run`] of a small, fast MLP (batch 32, lr 0.01, 16 hidden units), no test set.
fn csv_run(tr: &Path, run: &Path, extra: &[&str]) -> Vec<String> {
    table_run(tr, None, run, None, &[&["--batch-size", "32", "--lr", "0.01", "--mlp-hidden", "16"], extra].concat())
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The epochs of `metrics.jsonl`'s lines, in order (every line must parse).
fn logged_epochs(run: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("metrics.jsonl line {l:?}: {e}")))
        .map(|v| v["epoch"].as_u64().unwrap())
        .collect()
}

/// `snapshot` without the lock file (a refused process may rewrite who holds it).
fn run_files(run: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut s = snapshot(run);
    s.remove(Path::new(".cls-train.lock"));
    s
}

#[test]
fn resume_takes_each_documented_override_and_refuses_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = tmp.path().join("train.csv");
    write_csv(&tr, 120, 4);
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    train(&strs(&csv_run(&tr, &run, &["--epochs", "2", "--stop-after", "1"])));
    assert_eq!(logged_epochs(&run), [1]);

    // Refused, by name, before anything in the folder changes.
    let before = run_files(&run);
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "lr = 0.5\n").unwrap();
    for (extra, flag) in [
        (vec!["--seed", "9"], "--seed"),
        (vec!["--lr", "0.5"], "--lr"),
        (vec!["--method", "an"], "--method"),
        (vec!["--config", cfg.to_str().unwrap()], "--config"),
    ] {
        let err = fails_cleanly(Command::new(bin("cls-train")).args(["--resume", r]).args(&extra), 1);
        assert!(err.contains(&format!("{flag} cannot be given with --resume")), "{extra:?}: {err}");
    }
    let err = fails_cleanly(Command::new(bin("cls-train")).args(["--resume", r, "--epochs", "0"]), 1);
    assert!(err.contains("--epochs 0"), "{err}");
    assert!(run_files(&run) == before, "a refused --resume changed the run folder");

    // Each documented override alone, one epoch at a time.
    for (extra, done) in [
        (vec!["--epochs", "5", "--stop-after", "1"], 2),
        (vec!["--stop-after", "1"], 3),
        (vec!["--device", "cpu", "--stop-after", "1"], 4),
        (vec!["--threads", "1"], 5),
    ] {
        train(&[&["--resume", r][..], &extra].concat());
        assert_eq!(logged_epochs(&run), (1..=done).collect::<Vec<_>>(), "after --resume {extra:?}");
    }
    assert!(run.join("summary.json").is_file());
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("epochs = 5") && saved.contains("device = \"cpu\""), "{saved}");
    assert!(!saved.contains("stop_after"), "--stop-after is for one invocation, not saved:\n{saved}");
    let err = fails_cleanly(Command::new(bin("cls-train")).args(["--resume", r, "--epochs", "3"]), 1);
    assert!(err.contains("already completed 5 epochs"), "{err}");
    // Extended: unfinished again until its new end (its summary of the 5-epoch end goes).
    train(&["--resume", r, "--epochs", "7", "--stop-after", "1"]);
    assert!(!run.join("summary.json").exists(), "an extended run is not finished");
    let report = tmp.path().join("report.md");
    train(&["report", r, "--out", report.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&report).unwrap().contains("unfinished: 6 epochs"));
    train(&["--resume", r]);
    assert_eq!(read_json(&run.join("summary.json"))["epochs_done"], 7);
}

/// A checkpoint written before a method's objective changed (state.json without the objective
/// revision and a configuration without `asl_focal_grad`, as versions before the change wrote
/// them) is refused by `--resume` for that method, saying what changed and leaving the folder as
/// it was; a method whose objective did not change continues, and so does a checkpoint written
/// after the change but before its revision was recorded (its configuration has the flag).
#[test]
fn resume_refuses_a_checkpoint_of_an_earlier_objective() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = tmp.path().join("train.csv");
    write_csv(&tr, 120, 7);
    let as_older_version = |run: &Path, before_the_change: bool| {
        let state = run.join("checkpoint/state.json");
        let mut v = read_json(&state);
        assert_eq!(v["objective"], 2, "the checkpoint records its objective revision");
        v.as_object_mut().unwrap().remove("objective");
        if before_the_change {
            assert!(v["config"].as_object_mut().unwrap().remove("asl_focal_grad").is_some());
        }
        std::fs::write(&state, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    for (method, before_the_change, refused) in
        [("epr", true, true), ("an-ls", true, true), ("an", true, false), ("ll-r", true, false), ("epr", false, false)]
    {
        let run = tmp.path().join(format!("{method}-{before_the_change}"));
        train(&strs(&csv_run(&tr, &run, &["--method", method, "--epochs", "2", "--stop-after", "1"])));
        as_older_version(&run, before_the_change);
        let before = run_files(&run);
        let resume = ["--resume", run.to_str().unwrap()];
        if refused {
            let err = fails_cleanly(Command::new(bin("cls-train")).args(resume), 1);
            assert!(err.contains(&format!("whose {method} objective differs")), "{method}: {err}");
            assert!(run_files(&run) == before, "{method}: a refused --resume changed the run folder");
        } else {
            train(&resume);
            assert_eq!(logged_epochs(&run), [1, 2], "{method}");
        }
    }
}

/// `--reduction mean` with weight decay: the run says that the decay now dominates (measured: 4-5
/// mAP lost on Corel5k) and what to give instead; not without decay, not with `sum`.
#[test]
fn mean_reduction_with_weight_decay_is_pointed_out() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = tmp.path().join("train.csv");
    write_csv(&tr, 60, 8);
    let note = |name: &str, extra: &[&str]| {
        let mut a = vec!["--method", "cls", "--epochs", "1"];
        a.extend_from_slice(extra);
        let out = train(&strs(&csv_run(&tr, &tmp.path().join(name), &a)));
        String::from_utf8_lossy(&out.stderr).contains("note: --reduction mean averages")
    };
    assert!(note("mean", &["--reduction", "mean"]));
    assert!(!note("mean-wd0", &["--reduction", "mean", "--weight-decay", "0"]));
    assert!(!note("sum", &["--reduction", "sum"]));
}

#[test]
fn one_process_at_a_time_per_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = tmp.path().join("train.csv");
    write_csv(&tr, 120, 6);
    // Two runs started together on one folder: one trains, the other is refused.
    let run = tmp.path().join("run");
    let spawn = |seed: &str, k: usize| {
        Command::new(bin("cls-train"))
            .args(csv_run(&tr, &run, &["--epochs", "30", "--seed", seed]))
            .stderr(std::fs::File::create(tmp.path().join(format!("err{k}"))).unwrap())
            .spawn()
            .unwrap()
    };
    let mut children = [spawn("1", 0), spawn("2", 1)];
    let status: Vec<_> = children.iter_mut().map(|c| cls_tests::wait_or_kill(c, RUN_LIMIT, "cls-train")).collect();
    let err: Vec<String> =
        (0..2).map(|k| std::fs::read_to_string(tmp.path().join(format!("err{k}"))).unwrap()).collect();
    let winners: Vec<usize> = (0..2).filter(|&k| status[k].success()).collect();
    assert_eq!(winners.len(), 1, "exactly one run may train: {status:?}\n{}\n{}", err[0], err[1]);
    let (w, l) = (winners[0], 1 - winners[0]);
    assert_eq!(status[l].code(), Some(1), "{}", err[l]);
    assert!(
        err[l].contains("in use by another cls-train") || err[l].contains("already holds a run"),
        "the loser says why: {}",
        err[l]
    );
    assert!(!err[l].contains("panicked"), "{}", err[l]);
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains(&format!("seed = {}", w + 1)), "config.toml is the winner's (seed {}):\n{saved}", w + 1);
    assert_eq!(logged_epochs(&run), (1..=30).collect::<Vec<_>>());

    // While a run trains, --resume and export of its folder are refused; a kill frees it.
    let long = tmp.path().join("long");
    let mut child = Command::new(bin("cls-train"))
        .args(csv_run(&tr, &long, &["--epochs", "2000"]))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !long.join("checkpoint/state.json").exists() {
        if t0.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no checkpoint within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let l = long.to_str().unwrap();
    let busy = [
        fails_cleanly(Command::new(bin("cls-train")).args(["--resume", l]), 1),
        fails_cleanly(Command::new(bin("cls-train")).args(["export", l, "--out"]).arg(tmp.path().join("x.onnx")), 1),
        fails_cleanly(Command::new(bin("cls-train")).args(csv_run(&tr, &long, &["--epochs", "3"])), 1),
    ];
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(still_running, "the long run ended before the checks: make it longer");
    for e in &busy[..2] {
        assert!(e.contains("in use by another cls-train"), "{e}");
    }
    assert!(busy[2].contains("in use by another cls-train") || busy[2].contains("already holds a run"), "{}", busy[2]);
    assert!(!tmp.path().join("x.onnx").exists());
    let done = check_agreement(&long);
    train(&["--resume", l, "--stop-after", "1"]);
    assert_eq!(logged_epochs(&long), (1..=done + 1).collect::<Vec<_>>());
}

#[test]
fn resume_refuses_a_config_that_does_not_match_the_checkpoint_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = tmp.path().join("train.csv");
    write_csv(&tr, 120, 8);
    let run = tmp.path().join("run");
    train(&strs(&csv_run(&tr, &run, &["--epochs", "3", "--stop-after", "1"])));
    let original = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let edits = [
        // A one-network method on a two-peer checkpoint.
        ("method = \"cls\"", "method = \"an\""),
        // Another two-network method.
        ("method = \"cls\"", "method = \"co-teaching\""),
        // Another class count (3 label columns: the fourth becomes a feature).
        ("label_columns = 4", "label_columns = 3"),
        // Another network width.
        ("mlp_hidden = 16", "mlp_hidden = 8"),
        // Another seed: other labels hidden, other shuffles; the tensors alone cannot tell.
        ("seed = 0", "seed = 3"),
    ];
    for (from, to) in edits {
        assert!(original.contains(from), "{original}");
        std::fs::write(run.join("config.toml"), original.replace(from, to)).unwrap();
        let before = run_files(&run);
        let err = fails_cleanly(Command::new(bin("cls-train")).arg("--resume").arg(&run), 1);
        assert!(err.contains("does not match the checkpoint"), "{to}: {err}");
        assert!(run_files(&run) == before, "{to}: the refused --resume changed the run folder");
    }
    // The data moved: the same run goes on.
    let moved = tmp.path().join("moved.csv");
    std::fs::rename(&tr, &moved).unwrap();
    std::fs::write(run.join("config.toml"), original.replace(tr.to_str().unwrap(), moved.to_str().unwrap())).unwrap();
    train(&["--resume", run.to_str().unwrap()]);
    assert_eq!(logged_epochs(&run), [1, 2, 3]);
}

/// The checkpoint of `run` (the latest complete one) as JSON, if any.
fn checkpoint_state(run: &Path) -> Option<Value> {
    ["checkpoint", "checkpoint.old"]
        .iter()
        .map(|d| run.join(d).join("state.json"))
        .find(|p| p.is_file())
        .map(|p| read_json(&p))
}

/// After any kill: `metrics.jsonl` is the log of the last checkpoint, or of the one before it
/// (killed after the checkpoint was swapped in, before the log was rewritten), line for line.
/// Returns the checkpoint's epochs.
fn check_agreement(run: &Path) -> u64 {
    let logged = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    let lines: Vec<Value> = logged
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a torn metrics.jsonl line {l:?}: {e}")))
        .collect();
    let Some(state) = checkpoint_state(run) else {
        assert!(lines.is_empty(), "metrics.jsonl without a checkpoint: {logged}");
        return 0;
    };
    let done = state["epochs_done"].as_u64().unwrap();
    let log = state["log"].as_array().unwrap();
    assert_eq!(log.len() as u64, done, "the checkpoint holds one line per epoch");
    let n = lines.len() as u64;
    assert!(n == done || n + 1 == done, "metrics.jsonl has {n} lines, the checkpoint {done} epochs");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["epoch"], i as u64 + 1, "each epoch once, in order");
        assert_eq!(l, &log[i], "metrics.jsonl line {} differs from the checkpoint's", i + 1);
    }
    done
}

#[test]
fn kills_at_random_moments_leave_the_log_and_the_checkpoint_in_agreement() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = tmp.path().join("train.csv");
    write_csv(&tr, 96, 10);
    // Long enough that the 24 rounds (each killed within 0.9 s of its start, or just after a
    // checkpoint) end before the run does, also on a fast, idle machine: at 150 epochs an idle
    // machine finished the run by the tenth round, leaving the rest unkilled.
    const EPOCHS: usize = 400;
    let epochs = EPOCHS.to_string();
    let epochs = epochs.as_str();
    let args = |run: &Path| csv_run(&tr, run, &["--epochs", epochs, "--seed", "4", "--tau-h", "0.1", "--e-k", "2"]);
    let whole = tmp.path().join("whole");
    train(&strs(&args(&whole)));

    let run = tmp.path().join("killed");
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("kill moments drawn with seed {seed}");
    let mut rng = cls_tests::Lcg(seed);
    let mut kills = 0;
    for round in 0..24 {
        let mut cmd = Command::new(bin("cls-train"));
        if checkpoint_state(&run).is_some() {
            cmd.arg("--resume").arg(&run);
        } else {
            cmd.args(args(&run));
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        if round % 2 == 0 {
            // Anywhere: starting up, training, checkpointing, logging, plotting, exporting.
            let deadline = Instant::now() + Duration::from_micros((rng.next() * 900_000.0) as u64);
            while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(1));
            }
        } else {
            // Within a few milliseconds after a new checkpoint appears: where the checkpoint is
            // in place and what is written from it may not be yet.
            let ino = |p: &Path| std::fs::metadata(p.join("checkpoint/state.json")).map(|m| m.ino()).ok();
            let before = ino(&run);
            let t0 = Instant::now();
            while ino(&run) == before && child.try_wait().unwrap().is_none() && t0.elapsed() < RUN_LIMIT {
                std::hint::spin_loop();
            }
            let jitter = Instant::now() + Duration::from_micros((rng.next() * 3000.0) as u64);
            while Instant::now() < jitter {
                std::hint::spin_loop();
            }
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let status = child.wait().unwrap();
        assert!(status.code().is_none_or(|c| c == 0), "a run that was not killed failed: {status:?}");
        check_agreement(&run);
    }
    assert!(kills >= 12, "only {kills} of 24 runs were killed: lengthen the run");
    train(&["--resume", run.to_str().unwrap()]);
    assert_eq!(check_agreement(&run), EPOCHS as u64);
    assert_eq!(logged_epochs(&run), (1..=EPOCHS as u64).collect::<Vec<_>>(), "each epoch exactly once, in order");
    assert!(leftover_temps(&run).is_empty(), "temporary files left: {:?}", leftover_temps(&run));
    // The same numbers as the run that was never killed.
    let read = |r: &Path| -> Vec<Value> {
        std::fs::read_to_string(r.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    for (a, b) in read(&whole).iter().zip(read(&run)) {
        for k in ["epoch", "loss", "val", "r_h", "r_l", "selection", "lr"] {
            assert_eq!(a[k], b[k], "epoch {}: {k} differs from the uninterrupted run", a["epoch"]);
        }
    }
    assert_eq!(read_json(&whole.join("summary.json"))["val"], read_json(&run.join("summary.json"))["val"]);
}

#[test]
fn resume_completes_a_log_that_lags_the_checkpoint_and_drops_what_runs_ahead() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = tmp.path().join("train.csv");
    write_csv(&tr, 120, 12);
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    train(&strs(&csv_run(&tr, &run, &["--epochs", "4", "--stop-after", "2"])));
    let full = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<&str> = full.lines().collect();
    // What a kill between the checkpoint's swap and the log's write leaves: the log one epoch
    // behind. It used to stay one epoch short for good.
    std::fs::write(run.join("metrics.jsonl"), format!("{}\n", lines[0])).unwrap();
    train(&["--resume", r, "--stop-after", "1"]);
    assert_eq!(logged_epochs(&run), [1, 2, 3]);
    let now = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(now.starts_with(&full), "epochs 1 and 2 come back as they were logged");
    // A log ahead of the checkpoint, with a repeated and a torn line: cut back to the checkpoint.
    std::fs::write(run.join("metrics.jsonl"), format!("{now}{}\n{{\"epoch\": 4, \"lo", now.lines().last().unwrap()))
        .unwrap();
    train(&["--resume", r]);
    assert_eq!(logged_epochs(&run), [1, 2, 3, 4]);
    assert!(run.join("summary.json").is_file());
}

#[test]
fn sweep_reuses_a_point_only_for_its_whole_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = tmp.path().join("train.csv");
    write_csv(&tr, 120, 14);
    let out = tmp.path().join("sweep");
    let sweep = |extra: &[&str]| -> (Value, String) {
        let mut a = vec!["sweep", "--out", out.to_str().unwrap(), "--tau-h-grid", "0,0.05"];
        a.extend(["--data", tr.to_str().unwrap(), "--label-columns", "4", "--batch-size", "32", "--threads", "1"]);
        a.extend(["--mlp-hidden", "16", "--lr", "0.01"]);
        a.extend(extra);
        let o = train(&a);
        (read_json(&out.join("sweep.json")), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let dirs = |v: &Value| -> Vec<String> {
        v["points"].as_array().unwrap().iter().map(|p| p["run_dir"].as_str().unwrap().to_string()).collect()
    };
    let (first, _) = sweep(&["--epochs", "1"]);
    assert_eq!(first["points"].as_array().unwrap().len(), 2);
    let (again, err) = sweep(&["--epochs", "1"]);
    assert_eq!(err.matches("reused").count(), 2, "the same configuration is reused:\n{err}");
    assert!(!err.contains("epoch   1/"), "nothing trained again:\n{err}");
    assert_eq!(dirs(&first), dirs(&again));
    assert_eq!(first["points"], again["points"]);
    for (extra, epochs) in [(vec!["--epochs", "2"], 2), (vec!["--epochs", "1", "--seed", "5"], 1)] {
        let (other, err) = sweep(&extra);
        assert!(!err.contains("reused"), "{extra:?} is another configuration:\n{err}");
        for (d, old) in dirs(&other).iter().zip(dirs(&first)) {
            assert_ne!(d, &old, "{extra:?}: trained into a folder of its own");
            assert_eq!(read_json(&Path::new(d).join("summary.json"))["epochs"], epochs);
        }
    }
    assert!(Path::new(&dirs(&first)[0]).join("summary.json").is_file(), "earlier points stay");
}

#[test]
fn bad_options_are_refused_at_once_with_no_run_folder_and_no_panic() {
    let tmp = tempfile::tempdir().unwrap();
    // Data that would fail to load: every refusal below must come before the data are read.
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"image\": \"nope.png\", \"labels\": [\"a\"]}\n").unwrap();
    let threads0 = tmp.path().join("threads0.toml");
    std::fs::write(&threads0, "threads = 0\n").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--threads", "0"], "--threads 0"),
        (&["--config", threads0.to_str().unwrap()], "--threads 0"),
        (&["--bias-prior", "NaN"], "--bias-prior NaN"),
        (&["--bias-prior", "1"], "--bias-prior 1"),
        (&["--batch-size", "0"], "--batch-size 0"),
        (&["--lr", "0"], "--lr 0"),
        (&["--lr=-1"], "--lr -1"),
        (&["--lr", "inf"], "--lr inf"),
        (&["--lr", "NaN"], "--lr NaN"),
        (&["--weight-decay", "NaN"], "--weight-decay NaN"),
        (&["--head-lr-mult", "0"], "--head-lr-mult 0"),
        (&["--export", "nope"], "'nope' for '--export"),
        (&["--export", "ensemble", "--method", "an"], "--export ensemble needs a two-network method"),
        (&["--resize", "16384x16384"], "each side 1 to 4096"),
        (&["--crop", "100000"], "each side 1 to 4096"),
        (&["--batch-size", "1000", "--resize", "2048", "--crop", "2048"], "GiB"),
        (&["--epochs", "0"], "--epochs 0"),
        (&["--stop-after", "0"], "--stop-after 0"),
        (&["--mlp-hidden=-1"], "--mlp-hidden -1"),
        (&["--val-fraction", "1"], "--val-fraction 1"),
        (&["--tau-h", "2"], "--tau-h 2"),
        (&["--tau-h", "x"], "'x' for '--tau-h"),
        (&["--tau-l", "NaN"], "--tau-l NaN"),
        (&["--e-k", "NaN"], "e_k"),
        (&["--devices", "cpu"], "--devices lists 1"),
        (&["--device", "gpu"], "'gpu' for '--device"),
        (&["--partial", "0"], "'0' for '--partial"),
        (&["--reduction", "max"], "'max' for '--reduction"),
        (&["--label-columns", "0"], "--label-columns 0"),
        (&["--backbone", "resnet18", "--pretrained", "imagenet"], "efficientnet-lite0 only"),
        (&["--pretrained", "nope.safetensors"], "nope.safetensors"),
        (&["--backbone", "mlp", "--freeze-backbone"], "--freeze-backbone"),
        (&["--test", "missing.jsonl"], "missing.jsonl"),
    ];
    for (i, (extra, says)) in cases.iter().enumerate() {
        let run = format!("r{i}");
        let t0 = Instant::now();
        // A value of the wrong shape is a usage error of the command-line parser (status 2).
        let usage = says.contains("' for '--") || ["--tau-h 2"].contains(says);
        let err = fails_cleanly(
            Command::new(bin("cls-train"))
                .args(["--data", bad.to_str().unwrap()])
                .args(*extra)
                .arg("--run-dir")
                .arg(tmp.path().join(&run))
                .arg("--cache-dir")
                .arg(tmp.path().join("cache")),
            if usage { 2 } else { 1 },
        );
        assert!(err.contains(says), "{extra:?} should say {says:?}: {err}");
        assert!(!err.contains("nope.png"), "{extra:?} was checked only after reading the data: {err}");
        assert!(!tmp.path().join(&run).exists(), "{extra:?} left a run folder");
        assert!(t0.elapsed() < Duration::from_secs(30), "{extra:?} took {:?} to be refused", t0.elapsed());
    }
    // An output that cannot be written: refused before anything is loaded.
    std::fs::write(tmp.path().join("file"), "").unwrap();
    let err = fails_cleanly(
        Command::new(bin("cls-train"))
            .args(["--data", bad.to_str().unwrap(), "--pretrained", "none", "--run-dir"])
            .arg(tmp.path().join("file/run")),
        1,
    );
    assert!(err.contains("cannot create the run folder") && !err.contains("nope.png"), "{err}");
    // bench-step's sizes are bounded too (it used to abort on an allocation failure).
    for (extra, says) in [(["--size", "16384x16384"], "each side 1 to 4096"), (["--batch-size", "0"], "--batch-size 0")]
    {
        let err = fails_cleanly(Command::new(bin("cls-train")).arg("bench-step").args(extra), 1);
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn training_labels_without_a_positive_train_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let (tr, val) = (tmp.path().join("train.csv"), tmp.path().join("val.csv"));
    write_csv(&val, 40, 15);
    let mut zeros = String::from("f0,f1,f2,f3,f4,f5,f6,f7,a,b,c,d\n");
    for i in 0..40 {
        zeros += &format!("{},0.5,0.5,0.5,0.5,0.5,0.5,0.5,0,0,0,0\n", i as f64 / 40.0);
    }
    std::fs::write(&tr, zeros).unwrap();
    let run = tmp.path().join("run");
    let out = train(&strs(&csv_run(
        &tr,
        &run,
        &["--val", val.to_str().unwrap(), "--epochs", "1", "--method", "an", "--partial", "full"],
    )));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: the training labels hold no positive at all"), "{err}");
}

/// A tmpfs of `size` mounted on `dir` for the life of the value (root only).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fill the file system of `dir` with `file` until it refuses more.
fn fill_disk(file: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(file).unwrap();
    let chunk = vec![7u8; 4096];
    while f.write_all(&chunk).and_then(|_| f.sync_all()).is_ok() {}
}

#[test]
fn a_full_disk_fails_cleanly_and_resume_continues_once_there_is_room() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = match SmallDisk::mount(&tmp.path().join("disk"), "2m") {
        Ok(d) => d,
        Err(why) => {
            eprintln!(
                "SKIPPED: cannot mount a small tmpfs to fill ({why}); run the tests as root to check a full disk"
            );
            return;
        }
    };
    let tr = tmp.path().join("train.csv");
    write_csv(&tr, 120, 16);
    let run = disk.0.join("run");
    let r = run.to_str().unwrap();
    let mut args = csv_run(&tr, &run, &["--epochs", "4", "--stop-after", "1", "--cache-dir"]);
    args.push(tmp.path().join("cache").to_str().unwrap().to_string());
    train(&strs(&args));
    let config = std::fs::read(run.join("config.toml")).unwrap();

    // No room at all: the resumed epoch cannot be saved. A clean error, the run as it was.
    fill_disk(&disk.0.join("filler"));
    let err = fails_cleanly(Command::new(bin("cls-train")).args(["--resume", r]), 1);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!err.contains("config.toml"), "an unchanged config.toml is not rewritten: {err}");
    assert_eq!(std::fs::read(run.join("config.toml")).unwrap(), config);
    assert!(leftover_temps(&run).is_empty(), "temporary files left on the full disk: {:?}", leftover_temps(&run));
    assert_eq!(check_agreement(&run), 1);
    assert_eq!(logged_epochs(&run), [1]);

    // Room again, but what an earlier process killed on the full disk left behind takes most of
    // it: --resume removes those leftovers first.
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    std::fs::create_dir_all(run.join("checkpoint.tmp")).unwrap();
    for stale in [
        run.join(".metrics.jsonl.a1b2c3.tmp"),
        run.join("checkpoint.tmp/peer0.safetensors"),
        run.join("best-peer0.tmp123"),
    ] {
        std::fs::write(&stale, vec![1u8; 300_000]).unwrap();
    }
    fill_disk(&disk.0.join("filler"));
    let filler = std::fs::OpenOptions::new().write(true).open(disk.0.join("filler")).unwrap();
    filler.set_len(filler.metadata().unwrap().len().saturating_sub(40_000)).unwrap(); // too little room for an epoch
    train(&["--resume", r]);
    assert_eq!(logged_epochs(&run), [1, 2, 3, 4]);
    assert_eq!(check_agreement(&run), 4);
    assert!(leftover_temps(&run).is_empty(), "{:?}", leftover_temps(&run));
    assert!(run.join("summary.json").is_file());
}

/// A version-1 `.npy` of `rows` × `cols` f32 values (numpy's format, written by hand).
fn write_npy(path: &Path, values: &[Vec<f32>]) {
    let (rows, cols) = (values.len(), values[0].len());
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    for v in values.iter().flatten() {
        bytes.extend(v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// The 0/1 labels of a `write_csv` table (its last four columns), row by row.
fn csv_labels(path: &Path) -> Vec<Vec<f32>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().skip(1).map(|l| l.split(',').skip(8).map(|v| v.parse().unwrap()).collect()).collect()
}

/// An `--observed` .npy covers every image of --data (a published split); with the default
/// hold-out its held-out rows are left out, aligned by row: observed labels equal to the truth
/// then leave every positive observed. A file that fits neither --data nor the training rows
/// says what it needs.
#[test]
fn observed_labels_for_all_of_data_follow_the_holdout() {
    let tmp = tempfile::tempdir().unwrap();
    let (tr, te) = (tmp.path().join("train.csv"), tmp.path().join("test.csv"));
    write_csv(&tr, 200, 31);
    write_csv(&te, 60, 32);
    let npy = tmp.path().join("observed.npy");
    write_npy(&npy, &csv_labels(&tr));
    let run = tmp.path().join("run");
    let cache = tmp.path().join("cache");
    let args = |run: &Path, npy: &Path| {
        table_run(
            &tr,
            Some(&te),
            run,
            Some(&cache),
            &["--observed", npy.to_str().unwrap(), "--epochs", "1", "--batch-size", "32"],
        )
    };
    let out = train(&strs(&args(&run, &npy)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--observed gives the labels of the 160 training images"), "{err}");
    let summary = read_json(&run.join("summary.json"));
    assert_eq!(summary["realised_fraction"].as_f64(), Some(1.0), "{summary}");

    let short = tmp.path().join("short.npy");
    write_npy(&short, &csv_labels(&tr)[..7]);
    let a = args(&tmp.path().join("run-short"), &short);
    let err = fails_cleanly(Command::new(bin("cls-train")).args(&a), 1);
    for want in ["200 images", "40 of them are held out for validation", "one row per image of --data", "--val"] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(!tmp.path().join("run-short/summary.json").exists());

    // A file of the right shape with a wrong value says so, not what shape it needs.
    let mut labels = csv_labels(&tr);
    labels[3][2] = 2.0;
    let bad = tmp.path().join("bad.npy");
    write_npy(&bad, &labels);
    let err = fails_cleanly(Command::new(bin("cls-train")).args(args(&tmp.path().join("run-bad"), &bad)), 1);
    assert!(err.contains("row 3, class 2") && err.contains("value 2 is not 1, 0 or -1"), "{err}");
    assert!(!err.contains("one row per image"), "{err}");
    // One row per training image (after the hold-out) is taken as it is.
    let train_rows = tmp.path().join("train-rows.npy");
    write_npy(&train_rows, &csv_labels(&tr)[..160]);
    train(&strs(&args(&tmp.path().join("run-train-rows"), &train_rows)));
    assert!(tmp.path().join("run-train-rows/summary.json").is_file());
}

/// The learning rate each epoch logs (that of its last step) follows --schedule: constant keeps
/// --lr, step multiplies it by --lr-gamma every --lr-step-epochs, a warm-up rises to it first;
/// flags of another schedule are refused before anything is created.
#[test]
fn learning_rate_schedules_reach_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (tr, te) = (tmp.path().join("train.csv"), tmp.path().join("test.csv"));
    write_csv(&tr, 100, 41);
    write_csv(&te, 30, 42);
    let cache = tmp.path().join("cache");
    let lrs = |name: &str, extra: &[&str]| -> Vec<f64> {
        let run = tmp.path().join(name);
        let mut a = vec!["--epochs", "4", "--batch-size", "20", "--lr", "0.01"];
        a.extend_from_slice(extra);
        train(&strs(&table_run(&tr, Some(&te), &run, Some(&cache), &a)));
        let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        log.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["lr"].as_f64().unwrap()).collect()
    };
    let close = |got: &[f64], want: &[f64]| {
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?} against {want:?}");
        }
    };
    close(&lrs("constant", &["--schedule", "constant"]), &[0.01; 4]);
    close(
        &lrs("step", &["--schedule", "step", "--lr-step-epochs", "1", "--lr-gamma", "0.5"]),
        &[0.01, 0.005, 0.0025, 0.00125],
    );
    // Warm-up over the first two epochs (10 steps): the first epoch's last step is at half the rate.
    close(&lrs("warm", &["--schedule", "constant", "--warmup-epochs", "2"]), &[0.005, 0.01, 0.01, 0.01]);
    // The step interval is resolved when the run starts (a resume with another --epochs keeps it).
    lrs("step-default", &["--schedule", "step", "--lr-gamma", "0.5"]);
    let config = std::fs::read_to_string(tmp.path().join("step-default/config.toml")).unwrap();
    assert!(config.contains("lr_step_epochs = 1"), "{config}");
    let cosine = lrs("cosine", &[]);
    assert!(cosine.windows(2).all(|w| w[1] < w[0]) && cosine[3] < 1e-4, "{cosine:?}");

    let base = ["--data", tr.to_str().unwrap(), "--label-columns", "4", "--epochs", "4", "--threads", "1"];
    for (extra, want) in [
        (&["--lr-gamma", "0.5"][..], "apply to --schedule step"),
        (&["--schedule", "constant", "--lr-step-epochs", "2"][..], "apply to --schedule step"),
        (&["--warmup-epochs", "4"][..], "--warmup-epochs 4"),
        (&["--schedule", "step", "--lr-gamma", "1.5"][..], "--lr-gamma 1.5"),
    ] {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        let err = train_fails(&a, tmp.path(), "refused");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!tmp.path().join("refused").exists(), "{extra:?} created the run folder");
    }
}

/// `--tau-h auto` on a feature table (cheap to train) validates candidates around h before the
/// run: the sweep under RUN_DIR/tau-h-auto picks the best validation mAP, and the run trains with
/// that τ_h (its config records the number, so --resume needs no sweep) and reproduces the point.
#[test]
fn tau_h_auto_validates_candidates_where_training_is_cheap() {
    let tmp = tempfile::tempdir().unwrap();
    let (tr, te) = (tmp.path().join("train.csv"), tmp.path().join("test.csv"));
    write_csv(&tr, 200, 51);
    write_csv(&te, 60, 52);
    let run = tmp.path().join("run");
    let extra = ["--epochs", "3", "--batch-size", "32", "--partial", "single", "--tau-h", "auto", "--e-k", "1"];
    let out = train(&strs(&table_run(&tr, Some(&te), &run, Some(&tmp.path().join("cache")), &extra)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tau-h auto: h = ") && err.contains("validating τ_h in"), "{err}");
    let sweep = read_json(&run.join("tau-h-auto/sweep.json"));
    let points = sweep["points"].as_array().unwrap();
    assert!(points.len() >= 3, "{sweep}");
    let best = &points[sweep["best"].as_u64().unwrap() as usize];
    let top = points.iter().map(|p| p["val_map"].as_f64().unwrap()).fold(f64::MIN, f64::max);
    assert_eq!(best["val_map"].as_f64(), Some(top));
    let chosen = best["tau_h"].as_f64().unwrap();
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains(&format!("tau_h = \"{chosen}\"")), "τ_h {chosen} not recorded:\n{config}");
    let summary = read_json(&run.join("summary.json"));
    assert_eq!(summary["val"]["mAP"].as_f64(), best["val_map"].as_f64(), "the run reproduces its sweep point");

    // Stopped after the sweep chose, before the run's first checkpoint: --resume trains the run
    // from its start (the sweep is not repeated).
    std::fs::remove_dir_all(run.join("checkpoint")).unwrap();
    std::fs::remove_file(run.join("summary.json")).unwrap();
    let out = train(&["--resume", run.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("the --tau-h auto sweep chose τ_h {chosen}")) && !err.contains("validating τ_h"),
        "{err}"
    );
    assert_eq!(read_json(&run.join("summary.json"))["val"]["mAP"].as_f64(), best["val_map"].as_f64());

    // --stop-after cannot stop the candidates: refused before anything trains.
    let mut a = extra.to_vec();
    a.extend(["--stop-after", "1"]);
    let refused = tmp.path().join("refused");
    let err = fails_cleanly(
        Command::new(bin("cls-train")).args(table_run(&tr, Some(&te), &refused, Some(&tmp.path().join("cache")), &a)),
        1,
    );
    assert!(err.contains("--stop-after does not apply with --tau-h auto"), "{err}");
    assert!(!refused.join("tau-h-auto").exists(), "a candidate trained");
}

/// A `--tau-h auto` run killed during its sweep: a second process is refused while the first
/// holds the folder, and `--resume RUN_DIR` continues the sweep (the finished candidates reused)
/// and then trains the run at the chosen τ_h.
#[test]
fn an_interrupted_tau_h_auto_sweep_continues_with_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let (tr, te) = (tmp.path().join("train.csv"), tmp.path().join("test.csv"));
    write_csv(&tr, 2000, 53);
    write_csv(&te, 60, 54);
    let run = tmp.path().join("run");
    // Small batches, so that a candidate takes a second or two: the kill must come mid-sweep.
    let extra = ["--epochs", "6", "--batch-size", "4", "--partial", "single", "--tau-h", "auto", "--e-k", "1"];
    let args = table_run(&tr, Some(&te), &run, Some(&tmp.path().join("cache")), &extra);
    let mut child = Command::new(bin("cls-train")).args(&args).stderr(Stdio::null()).spawn().unwrap();
    let first_done = || {
        std::fs::read_dir(run.join("tau-h-auto"))
            .map(|d| d.flatten().any(|e| e.path().join("summary.json").is_file()))
            .unwrap_or(false)
    };
    let start = Instant::now();
    while !first_done() {
        if start.elapsed() > RUN_LIMIT || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("no candidate of the sweep finished");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Frozen mid-sweep (SIGSTOP), so that the checks below cannot race the sweep's end.
    assert!(Command::new("kill").args(["-STOP", &child.id().to_string()]).status().unwrap().success());
    let err = fails_cleanly(Command::new(bin("cls-train")).args(&args), 1);
    assert!(err.contains(&format!("{} is in use by another cls-train", run.display())), "a second process: {err}");
    child.kill().unwrap();
    let status = cls_tests::wait_or_kill(&mut child, RUN_LIMIT, "cls-train");
    assert!(!status.success(), "the run finished before it could be killed: make it longer");
    assert!(!run.join("summary.json").exists() && !run.join("checkpoint").exists());

    let out = train(&["--resume", run.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("continuing the --tau-h auto sweep") && err.contains("finished earlier, reused"), "{err}");
    let sweep = read_json(&run.join("tau-h-auto/sweep.json"));
    let best = &sweep["points"][sweep["best"].as_u64().unwrap() as usize];
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains(&format!("tau_h = \"{}\"", best["tau_h"].as_f64().unwrap())), "{config}");
    assert_eq!(read_json(&run.join("summary.json"))["val"]["mAP"].as_f64(), best["val_map"].as_f64());
}

#[test]
fn a_new_run_leaves_a_users_folder_alone_and_resume_restarts_a_run_without_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = tmp.path().join("train.csv");
    write_csv(&tr, 80, 6);
    // Folders holding what a run would write, none of it a cls-train run's: refused, untouched.
    let cases: [(&str, &str); 3] =
        [("model.onnx", "the user's model"), ("config.toml", "method = \"an\"\nepochs = 3\n"), ("plots", "")];
    for (name, text) in cases {
        let dir = tmp.path().join(format!("user-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        if text.is_empty() {
            std::fs::create_dir(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("val_map.png"), "the user's plot").unwrap();
        } else {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let before = snapshot(&dir);
        let err = fails_cleanly(Command::new(bin("cls-train")).args(csv_run(&tr, &dir, &["--epochs", "1"])), 1);
        assert!(err.contains(&format!("it holds {name}, which no cls-train run wrote")), "{name}: {err}");
        assert_eq!(snapshot(&dir), before, "{name}: the folder changed");
        assert!(!dir.join(".cls-train.lock").exists(), "{name}");
    }
    // A FIFO named config.toml is refused without being opened (which would block).
    let fifo_dir = tmp.path().join("user-fifo");
    std::fs::create_dir(&fifo_dir).unwrap();
    assert!(Command::new("mkfifo").arg(fifo_dir.join("config.toml")).status().unwrap().success());
    let err = fails_cleanly(Command::new(bin("cls-train")).args(csv_run(&tr, &fifo_dir, &["--epochs", "1"])), 1);
    assert!(err.contains("it holds config.toml"), "{err}");
    let err = fails_cleanly(Command::new(bin("cls-train")).arg("--resume").arg(&fifo_dir), 1);
    assert!(err.contains("config.toml"), "{err}");

    // A run that stopped before its first checkpoint leaves only its config.toml (and perhaps a
    // log line or a model from an earlier attempt): --resume starts it again from that file.
    let done = tmp.path().join("done");
    train(&strs(&csv_run(&tr, &done, &["--epochs", "2", "--seed", "4"])));
    let early = tmp.path().join("early");
    std::fs::create_dir(&early).unwrap();
    std::fs::copy(done.join("config.toml"), early.join("config.toml")).unwrap();
    std::fs::write(early.join("metrics.jsonl"), "{\"epoch\":1}\n").unwrap();
    let out = train(&["--resume", early.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no checkpoint yet") && err.contains("starts again from its config.toml"), "{err}");
    assert_eq!(logged_epochs(&early), [1, 2]);
    assert!(early.join("summary.json").is_file() && early.join("model.onnx").is_file());
    let saved = std::fs::read_to_string(early.join("config.toml")).unwrap();
    assert!(
        saved.contains("seed = 4") && saved.contains(&format!("run_dir = {:?}", early.to_str().unwrap())),
        "{saved}"
    );
    // The same weights as the run it was copied from (same configuration and seed).
    assert_eq!(weights(&early), weights(&done));
}

/// A training split of k × batch + 1 images (issue 26): the final batch of one image is dropped
/// (BatchNorm cannot train on one image: every run used to end in "score of image 0, class 0 is
/// NaN"), for the MLP and a CNN, with the cache and streamed, and `--resume` continues it. A batch
/// size of one is refused where BatchNorm trains, and allowed where none does.
#[test]
fn a_final_batch_of_one_image_trains_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let finite_map = |run: &Path| {
        let s = read_json(&run.join("summary.json"));
        let m = s["val"]["mAP"].as_f64().unwrap_or(f64::NAN);
        assert!(m.is_finite() && m > 0.0, "{}: validation mAP {m}", run.display());
    };

    // MLP: 41 rows, 8 held out for validation, 33 = 2 × 16 + 1 to train.
    let (tr, te) = (tmp.path().join("train.csv"), tmp.path().join("test.csv"));
    write_csv(&tr, 41, 5);
    write_csv(&te, 20, 6);
    let cache = tmp.path().join("cache");
    let mlp = tmp.path().join("mlp");
    let args = ["--method", "an", "--epochs", "3", "--batch-size", "16", "--stop-after", "1"];
    let args = table_run(&tr, Some(&te), &mlp, Some(&cache), &args);
    let out = train(&strs(&args));
    assert!(!mlp.join("summary.json").exists(), "stopped after one epoch");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("33 images"), "the split is 2 x 16 + 1:\n{err}");
    train(&["--resume", mlp.to_str().unwrap()]);
    check_run(&mlp, "an", 3, 1);
    finite_map(&mlp);

    // --batch-size 1 with BatchNorm: refused before anything is written; without a hidden layer
    // (no BatchNorm) it trains.
    let bs1 = table_run(&tr, None, &tmp.path().join("bs1"), None, &["--batch-size", "1"]);
    let err = train_fails(&strs(&bs1), tmp.path(), "bs1");
    assert!(err.contains("--batch-size 1") && err.contains("BatchNorm") && err.contains("2 or more"), "{err}");
    assert!(!tmp.path().join("bs1/config.toml").exists(), "refused before config.toml");
    // A CNN at 64 × 64 keeps a 2 × 2 map before its last BatchNorm: a batch of one trains.
    let cnn1 = tmp.path().join("cnn-bs1");
    let imgs = write_images(tmp.path(), 12, 93, "few");
    let few = ["--method", "an", "--batch-size", "1", "--epochs", "1", "--resize", "64x64", "--crop", "64x64"];
    train(&strs(&image_run(&imgs, &imgs, Some((&cnn1, &cache)), &few)));
    finite_map(&cnn1);
    let linear = tmp.path().join("linear");
    let args = ["--method", "an", "--batch-size", "1", "--epochs", "1", "--mlp-hidden", "0"];
    train(&strs(&table_run(&tr, None, &linear, Some(&cache), &args)));
    finite_map(&linear);

    // A CNN at 32 × 32 (a 1 × 1 map before its last BatchNorm): 21 images, 4 held out, 17 = 2 × 8 + 1,
    // from the image cache and decoded per step.
    let tr = write_images(tmp.path(), 21, 91, "train");
    let te = write_images(tmp.path(), 8, 92, "test");
    for (name, extra) in [("cnn", &[][..]), ("cnn-streamed", &["--cache", "none"][..])] {
        let run = tmp.path().join(name);
        let extra = [&["--method", "an"][..], extra].concat();
        train(&strs(&image_run(&tr, &te, Some((&run, &cache)), &extra)));
        check_run(&run, "an", 2, 1);
        finite_map(&run);
    }
}

/// Issue 26: one image listed twice under two spellings in a training manifest is refused with
/// both lines named; test images that are also training images (by path, or the same bytes
/// under another name) are counted in a warning; a validation split under 20 images is pointed
/// out.
#[test]
fn duplicate_and_overlapping_images_are_refused_or_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = write_images(tmp.path(), 30, 61, "train");
    let te = write_images(tmp.path(), 10, 62, "test");
    let cache = tmp.path().join("cache");

    // The same file twice: `train/003.png` and `./train/003.png`.
    let manifest = std::fs::read_to_string(&tr).unwrap();
    let line3 = manifest.lines().nth(3).unwrap().replace("\"train/003.png\"", "\"./train/003.png\"");
    let dup = tmp.path().join("dup.jsonl");
    std::fs::write(&dup, format!("{manifest}{line3}\n")).unwrap();
    let err = train_fails(&strs(&image_run(&dup, &te, None, &["--method", "an"])), tmp.path(), "dup");
    assert!(err.contains("dup.jsonl:31") && err.contains("'./train/003.png'") && err.contains("line 4"), "{err}");

    // The test set holds 3 training images: one by another spelling, one through a symlinked
    // folder, one copied under a new name.
    std::os::unix::fs::symlink(tmp.path().join("train"), tmp.path().join("alias")).unwrap();
    std::fs::copy(tmp.path().join("train/007.png"), tmp.path().join("test/copy.png")).unwrap();
    let labels = |i: usize| manifest.lines().nth(i).unwrap().split("\"labels\"").nth(1).unwrap().to_string();
    let mut test = std::fs::read_to_string(&te).unwrap();
    test += &format!("{{\"image\": \"./train/001.png\", \"labels\"{}\n", labels(1));
    test += &format!("{{\"image\": \"alias/002.png\", \"labels\"{}\n", labels(2));
    test += &format!("{{\"image\": \"test/copy.png\", \"labels\"{}\n", labels(7));
    let leaky = tmp.path().join("leaky.jsonl");
    std::fs::write(&leaky, test).unwrap();
    let run = tmp.path().join("leaky-run");
    let out = train(&strs(&image_run(&tr, &leaky, Some((&run, &cache)), &["--method", "an", "--epochs", "1"])));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "3 of the 13 test images are also training or validation images (2 the same file, 1 the same bytes"
        ),
        "{err}"
    );
    // 30 images hold out 6 for validation.
    assert!(err.contains("the validation split has 6 images (fewer than 20)"), "{err}");

    // A clean test set and a validation set of 20: neither warning.
    let val = write_images(tmp.path(), 20, 63, "val");
    let clean = tmp.path().join("clean-run");
    let args = image_run(
        &tr,
        &te,
        Some((&clean, &cache)),
        &["--method", "an", "--epochs", "1", "--val", val.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&train(&strs(&args)).stderr).to_string();
    assert!(!err.contains("are also") && !err.contains("fewer than 20"), "{err}");
}

/// Seconds from the trainer's human-readable durations (`0.14 s`, `8.4 s`, `4 min 05 s`,
/// `2 h 15 min`).
fn seconds_of(text: &str) -> f64 {
    let w: Vec<&str> = text.split_whitespace().collect();
    match w.as_slice() {
        [s, "s", ..] => s.parse().unwrap(),
        [m, "min", s, "s", ..] => m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap(),
        [h, "h", m, "min", ..] => h.parse::<f64>().unwrap() * 3600.0 + m.parse::<f64>().unwrap() * 60.0,
        _ => panic!("not a duration: {text}"),
    }
}

/// Issue 27: a run says how long it will take after its first batches (within 2× of the time
/// its epochs then take), every epoch line gives the time left (decreasing to 0), off a terminal
/// a long epoch prints a progress line every `--progress-every` seconds, `-q` prints none of it,
/// and labels as given make no claim about the true positives.
#[test]
fn a_run_tells_how_long_it_takes_and_what_its_labels_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = write_images(tmp.path(), 60, 71, "train");
    let te = write_images(tmp.path(), 8, 72, "test");
    let cache = tmp.path().join("cache");
    // 48 training images (12 held out) in 12 batches of 4.
    let args = |run: &str, extra: &[&str]| -> Vec<String> {
        let base = ["--method", "an", "--epochs", "4", "--batch-size", "4"];
        let mut a = image_run(&tr, &te, Some((&tmp.path().join(run), &cache)), &base);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let out = train(&strs(&args("timed", &["--progress-every", "0.000001"])));
    let err = String::from_utf8_lossy(&out.stderr);

    // The estimate comes once, after the first batches (one of warm-up, then five timed), before
    // the first epoch line; it covers the rest of the run: half of the first epoch and the three
    // others (their training and validation, as logged).
    let estimate_at = err.find("time: ").unwrap_or_else(|| panic!("no estimate:\n{err}"));
    assert_eq!(err.matches("time: ").count(), 1, "{err}");
    assert!(estimate_at < err.find("epoch   1/4").unwrap(), "{err}");
    assert!(err[estimate_at..].contains("measured on 5 batches after the first"), "{err}");
    let estimate = seconds_of(err[estimate_at..].split("about ").nth(1).unwrap());
    let logged: Vec<f64> = std::fs::read_to_string(tmp.path().join("timed/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["seconds"].as_f64().unwrap())
        .collect();
    let rest = logged[0] / 2.0 + logged[1..].iter().sum::<f64>();
    assert!(estimate > rest / 2.0 && estimate < rest * 2.0, "estimate {estimate} s, the rest took {rest} s:\n{err}");

    // The time left on every epoch line, down to 0 at the last (from whole epochs, so it can
    // rise between two epochs that took different times, but three epochs left outweigh one).
    let left: Vec<f64> = err
        .lines()
        .filter(|l| l.starts_with("epoch ") && l.contains("val mAP"))
        .map(|l| seconds_of(l.split("left ").nth(1).unwrap()))
        .collect();
    assert_eq!(left.len(), 4, "{err}");
    assert!(left[0] > left[2] && left[2] > 0.0 && left[3] == 0.0, "{left:?}");

    // Off a terminal (stderr is a pipe here): a progress line once the interval has passed, so
    // with an interval of a microsecond after every batch but an epoch's last; with a long one,
    // or 0, none.
    let lines = |t: &str| t.lines().filter(|l| l.contains("the epoch's training ends in")).count();
    assert_eq!(lines(&err), 4 * 11, "{err}");
    let long = train(&strs(&args("long-interval", &["--progress-every", "1000", "--epochs", "1"])));
    assert_eq!(lines(&String::from_utf8_lossy(&long.stderr)), 0);
    let none = train(&strs(&args("no-lines", &["--progress-every", "0", "--epochs", "1"])));
    assert_eq!(lines(&String::from_utf8_lossy(&none.stderr)), 0);

    // -q: no estimate, no progress, no epoch lines; the results still print.
    let quiet = train(&strs(&args("quiet", &["-q", "--progress-every", "0.000001", "--epochs", "1"])));
    let q = String::from_utf8_lossy(&quiet.stderr);
    let epoch_lines = |t: &str| t.lines().filter(|l| l.starts_with("epoch ")).count();
    assert!(!q.contains("time: ") && !q.contains("ends in") && epoch_lines(&q) == 0 && !q.contains("left "), "{q}");
    assert!(q.contains("exported"), "{q}");
    // -q and --progress-every may be given with --resume.
    let part = tmp.path().join("part");
    train(&strs(&image_run(&tr, &te, Some((&part, &cache)), &["--method", "an", "--stop-after", "1"])));
    let resumed = train(&["--resume", part.to_str().unwrap(), "-q", "--progress-every", "5"]);
    assert_eq!(epoch_lines(&String::from_utf8_lossy(&resumed.stderr)), 0);

    // Labels as given with unknown entries: what they hold, no share of the true positives.
    let mut table = String::from("image,tags\n");
    for line in std::fs::read_to_string(&tr).unwrap().lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        let tags: Vec<String> = serde_json::from_value(e["labels"].clone()).unwrap();
        table += &format!("{},\"{}\"\n", e["image"].as_str().unwrap(), tags[..1].join(";"));
    }
    let csv = tmp.path().join("tags.csv");
    std::fs::write(&csv, table).unwrap();
    let run = tmp.path().join("given");
    let a =
        ["--data", csv.to_str().unwrap(), "--unlisted", "unknown", "--backbone", "resnet18", "--pretrained", "none"];
    let more = ["--crop", "32x32", "--method", "an", "--epochs", "1", "--run-dir", run.to_str().unwrap()];
    let out = train(&[&a[..], &more[..], &["--cache-dir", cache.to_str().unwrap()]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    let labels = err.lines().find(|l| l.starts_with("training labels")).unwrap();
    assert!(!labels.contains("true positives") && !labels.contains("% of"), "{labels}");
    assert!(labels.contains("unannotated entries (") && labels.contains("verified negatives"), "{labels}");
    // A simulation on complete labels knows the truth and says it.
    let sim = [
        "--partial",
        "single",
        "--epochs",
        "1",
        "--run-dir",
        tmp.path().join("sim").to_str().unwrap().to_string().leak(),
    ];
    let out = train(&strs(&image_run(
        &tr,
        &tr,
        None,
        &[&sim[..], &["--method", "an", "--cache-dir", cache.to_str().unwrap()]].concat(),
    )));
    assert!(String::from_utf8_lossy(&out.stderr).contains("% of the true positives observed"));
}

/// Issue 25: `--mask-seed` draws the hidden labels of a simulation protocol independently of
/// `--seed` (Cole et al. keep one mask for every training seed); without it the mask follows
/// `--seed` as before, and config.toml (and so a sweep point's key) is unchanged.
#[test]
fn a_mask_seed_keeps_the_hidden_labels_across_training_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = tmp.path().join("train.csv");
    write_csv(&tr, 300, 21);
    let observed = |name: &str, extra: &[&str]| -> String {
        let run = tmp.path().join(name);
        let mut a = vec!["--method", "an", "--epochs", "1", "--partial", "entry:0.3"];
        a.extend_from_slice(extra);
        let out = train(&strs(&table_run(&tr, None, &run, None, &a)));
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        let line = err.lines().find(|l| l.starts_with("training labels")).unwrap().to_string();
        let realised = read_json(&run.join("summary.json"))["realised_fraction"].as_f64().unwrap();
        format!("{line} / {realised}")
    };
    let a = observed("a", &["--seed", "1", "--mask-seed", "9"]);
    let b = observed("b", &["--seed", "2", "--mask-seed", "9"]);
    let c = observed("c", &["--seed", "1"]);
    let d = observed("d", &["--seed", "2"]);
    assert_eq!(a, b, "one mask seed, two training seeds: the same observed labels");
    assert_ne!(c, d, "without --mask-seed the mask follows --seed");
    assert_ne!(a, c);
    let config = |name: &str| std::fs::read_to_string(tmp.path().join(name).join("config.toml")).unwrap();
    assert!(config("a").contains("mask_seed = 9"), "{}", config("a"));
    assert!(!config("c").contains("mask_seed"), "{}", config("c"));
}
