//! End-to-end tests of `cls-train` (the release binary): every method trains two epochs on
//! generated data and writes a valid run folder; image backbones train from an image cache;
//! `--resume` after a stop or a kill ends with the same weights as an uninterrupted run.

use cls_tests::{bin, write_csv, write_images};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn train(args: &[&str]) -> Output {
    let out = Command::new(bin("cls-train")).args(args).output().expect("running cls-train");
    if !out.status.success() {
        panic!("cls-train {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    out
}

/// cls-train with `args` (run folder `tmp/<run>`, cache `tmp/cache`) fails with status 1, a
/// message and no panic, and finishes no run. Returns its stderr.
fn train_fails(args: &[&str], tmp: &Path, run: &str) -> String {
    let out = Command::new(bin("cls-train"))
        .args(args)
        .arg("--run-dir")
        .arg(tmp.join(run))
        .arg("--cache-dir")
        .arg(tmp.join("cache"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!tmp.join(run).join("summary.json").exists());
    err
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
        train(&[
            "--data",
            tr.to_str().unwrap(),
            "--label-columns",
            "4",
            "--test",
            te.to_str().unwrap(),
            "--method",
            m,
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--lr",
            "0.01",
            "--partial",
            "0.5",
            "--seed",
            "3",
            "--threads",
            "1",
            "--run-dir",
            run.to_str().unwrap(),
            "--cache-dir",
            tmp.path().join("cache").to_str().unwrap(),
        ]);
        let nets = if TWO_NET.contains(&m) { 2 } else { 1 };
        check_run(&run, m, 2, nets);
        if m == "cls" {
            // Peer selection only starts after the first epoch (R_h(0) = 1); in the second it
            // flags entries and the log measures them against the hidden truth.
            let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
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

fn weights(run: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["checkpoint/peer0.safetensors", "checkpoint/peer1.safetensors", "checkpoint/adam0.safetensors"] {
        all.extend(std::fs::read(run.join(f)).unwrap());
    }
    all
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (tr, te) = (tmp.path().join("train.csv"), tmp.path().join("test.csv"));
    write_csv(&tr, 400, 11);
    write_csv(&te, 100, 12);
    let common = |run: &Path| -> Vec<String> {
        [
            "--data",
            tr.to_str().unwrap(),
            "--label-columns",
            "4",
            "--test",
            te.to_str().unwrap(),
            "--epochs",
            "4",
            "--batch-size",
            "32",
            "--lr",
            "0.01",
            "--tau-h",
            "0.1",
            "--e-k",
            "2",
            "--seed",
            "7",
            "--threads",
            "1",
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
    let a: Vec<String> = common(&whole);
    train(&a.iter().map(String::as_str).collect::<Vec<_>>());

    let parts = tmp.path().join("parts");
    let mut b = common(&parts);
    b.extend(["--stop-after".into(), "2".into()]);
    train(&b.iter().map(String::as_str).collect::<Vec<_>>());
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
    let mut child =
        Command::new(bin("cls-train")).args(args(&killed)).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !killed.join("checkpoint/state.json").exists() {
        assert!(t0.elapsed().as_secs() < 300, "no checkpoint after 300 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
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
    let out = Command::new(bin("cls-train"))
        .args(["--data", bad.to_str().unwrap(), "--run-dir"])
        .arg(tmp.path().join("r"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl") && !err.contains("panicked"), "{err}");

    let out = Command::new(bin("cls-train"))
        .args(["--method", "nope", "--data", bad.to_str().unwrap(), "--run-dir"])
        .arg(tmp.path().join("r2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown method"));
    assert!(!tmp.path().join("r2").exists(), "no run folder for a bad method name");

    let out = Command::new(bin("cls-train")).args(["--resume"]).arg(tmp.path().join("missing")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("missing") && !err.contains("panicked"), "{err}");

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
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(0), spawn(1));
    let mut stderr = String::new();
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{text}");
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
