//! End to end through the exported file: train on generated images, export, and check that
//! ONNX Runtime (through cls-infer) reproduces the trainer's test metrics, that onnx's checker
//! accepts the files and Python onnxruntime runs them, and that `cls-train export` re-exports
//! (ensemble, a kept epoch) from a run folder.

use cls_tests::{bin, fails_cleanly, output_within, snapshot, venv_python, write_csv, write_images, RUN_LIMIT};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> std::process::Output {
    let out = output_within(cmd, RUN_LIMIT);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn infer_map(model: &Path, images: &Path, truth: &Path, out: &Path) -> Value {
    infer_map_with(model, images, truth, out, &[])
}

/// [`infer_map`] with more cls-infer flags (`--threshold 0.5`).
fn infer_map_with(model: &Path, images: &Path, truth: &Path, out: &Path, extra: &[&str]) -> Value {
    run(Command::new(bin("cls-infer"))
        .args(extra)
        .args(["--model"])
        .arg(model)
        .arg("--images")
        .arg(images)
        .arg("--ground-truth")
        .arg(truth)
        .arg("--metrics-out")
        .arg(out)
        .arg("--out")
        .arg(out.with_extension("tags.jsonl"))
        .args(["--device", "cpu"]));
    json(out)
}

/// onnx.checker (full check) accepts the file and Python onnxruntime's probabilities for a
/// random batch have the model's output shape and lie in [0, 1].
fn python_checks(model: &Path, classes: usize) {
    let script = format!(
        r#"
import sys, json, numpy as np, onnx, onnxruntime as ort
m = onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True)
meta = {{p.key: p.value for p in m.metadata_props}}
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
h, w = int(meta["height"]), int(meta["width"])
p = s.run(["probs"], {{"images": np.random.rand(3, 3, h, w).astype(np.float32)}})[0]
assert p.shape == (3, {classes}), p.shape
assert (p >= 0).all() and (p <= 1).all()
print(json.dumps(sorted(meta)))
"#
    );
    let out = run(Command::new(venv_python()).arg("-c").arg(script).arg(model));
    let keys: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "classes",
        "height",
        "width",
        "mean",
        "std",
        "threshold",
        "method",
        "backbone",
        "dataset",
        "partial",
        "val_metrics",
        "test_metrics",
        "config_sha256",
    ] {
        assert!(keys.iter().any(|x| x == k), "metadata lacks {k}: {keys:?}");
    }
}

#[test]
fn trainer_and_infer_agree_on_the_test_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = write_images(tmp.path(), 48, 31, "train");
    let te = write_images(tmp.path(), 24, 32, "test");
    let rd = tmp.path().join("run");
    run(Command::new(bin("cls-train"))
        .arg("--data")
        .arg(&tr)
        .arg("--test")
        .arg(&te)
        .args([
            "--backbone",
            "resnet18",
            "--pretrained",
            "none",
            "--resize",
            "36x36",
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
            "--keep-epochs",
        ])
        .arg("--run-dir")
        .arg(&rd)
        .arg("--cache-dir")
        .arg(tmp.path().join("cache")));
    let summary = json(&rd.join("summary.json"));

    // cls-infer applies the model's calibrated thresholds by default, and 0.5 when told.
    let m = infer_map(&rd.join("model.onnx"), &tmp.path().join("test"), &te, &tmp.path().join("m.json"));
    let half = infer_map_with(
        &rd.join("model.onnx"),
        &tmp.path().join("test"),
        &te,
        &tmp.path().join("half.json"),
        &["--threshold", "0.5"],
    );
    for k in ["mAP", "CF1", "OF1"] {
        let (a, b) = (summary["test_calibrated"][k].as_f64().unwrap(), m[k].as_f64().unwrap());
        assert!((a - b).abs() <= 0.0005, "{k} at the calibrated thresholds: cls-train {a} vs cls-infer {b}");
        let (a, b) = (summary["test"][k].as_f64().unwrap(), half[k].as_f64().unwrap());
        assert!((a - b).abs() <= 0.0005, "{k} at 0.5: cls-train {a} vs cls-infer {b}");
    }
    assert_eq!(summary["test"]["threshold"], 0.5);
    assert_eq!(summary["test_calibrated"]["threshold"], summary["thresholds"]["global"]);
    assert_eq!(summary["test"]["mAP"], summary["test_calibrated"]["mAP"], "thresholds leave mAP alone");
    assert_eq!(m["n_images"], 24);
    python_checks(&rd.join("model.onnx"), 3);

    // Re-export both peers as one averaging graph.
    let ens = tmp.path().join("ens.onnx");
    run(Command::new(bin("cls-train")).arg("export").arg(&rd).args(["--export", "ensemble", "--out"]).arg(&ens));
    python_checks(&ens, 3);
    let me = infer_map(&ens, &tmp.path().join("test"), &te, &tmp.path().join("me.json"));
    let se = json(&ens.with_extension("summary.json"));
    assert_eq!(se["export"], "ensemble");
    assert!((0.0..=1.0).contains(&me["mAP"].as_f64().unwrap()));
    assert_eq!(json(&rd.join("summary.json")), summary, "a re-export elsewhere leaves the run's summary alone");

    // A kept epoch, and a clear error for one that was not kept.
    let e1 = tmp.path().join("e1.onnx");
    run(Command::new(bin("cls-train")).arg("export").arg(&rd).args(["--checkpoint", "1", "--out"]).arg(&e1));
    assert_eq!(json(&e1.with_extension("summary.json"))["best_epoch"], 1);
    let err = fails_cleanly(
        Command::new(bin("cls-train"))
            .arg("export")
            .arg(&rd)
            .args(["--checkpoint", "7", "--out"])
            .arg(tmp.path().join("x.onnx")),
        1,
    );
    assert!(err.contains("--checkpoint 7: the run has completed 2 epoch(s)"), "{err}");
}

#[test]
fn frozen_pretrained_efficientnet_export_matches_the_trainer() {
    // (A frozen *random* backbone at this size gives near-constant, saturated probabilities,
    // where AP hinges on float rounding; ImageNet features give a well-conditioned model.)
    let tmp = tempfile::tempdir().unwrap();
    let tr = write_images(tmp.path(), 32, 41, "train");
    let te = write_images(tmp.path(), 16, 42, "test");
    let rd = tmp.path().join("run");
    run(Command::new(bin("cls-train"))
        .arg("--data")
        .arg(&tr)
        .arg("--test")
        .arg(&te)
        .args([
            "--backbone",
            "efficientnet-lite0",
            "--pretrained",
            "imagenet",
            "--freeze-backbone",
            "--crop",
            "64x64",
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--lr",
            "3e-3",
            "--method",
            "an",
        ])
        .arg("--run-dir")
        .arg(&rd)
        .arg("--cache-dir")
        .arg(tmp.path().join("cache")));
    python_checks(&rd.join("model.onnx"), 3);
    let summary = json(&rd.join("summary.json"));
    let m = infer_map(&rd.join("model.onnx"), &tmp.path().join("test"), &te, &tmp.path().join("m.json"));
    for k in ["mAP", "CF1", "OF1"] {
        let (a, b) = (summary["test_calibrated"][k].as_f64().unwrap(), m[k].as_f64().unwrap());
        assert!((a - b).abs() <= 0.0005, "frozen efficientnet {k}: cls-train {a} vs cls-infer {b}");
    }
}

/// The metadata of an ONNX file (through the venv's onnx).
fn metadata(model: &Path) -> serde_json::Map<String, Value> {
    let script = "import sys, json, onnx\nm = onnx.load(sys.argv[1])\nprint(json.dumps({p.key: p.value for p in m.metadata_props}))";
    let out = run(Command::new(venv_python()).arg("-c").arg(script).arg(model));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The thresholds of a run or an export, three ways: `thresholds.json` (by class name), the
/// model's metadata (`thresholds` in class order, `threshold` the global one) and `summary.json`.
/// They must agree; returns the per-class thresholds in class order.
fn check_thresholds(model: &Path, file: &Path, summary: &Value, classes: &[&str]) -> Vec<f64> {
    let meta = metadata(model);
    let names: Vec<String> = serde_json::from_str(meta["classes"].as_str().unwrap()).unwrap();
    assert_eq!(names, classes);
    let per_class: Vec<f64> = serde_json::from_str(meta["thresholds"].as_str().expect("thresholds metadata")).unwrap();
    assert_eq!(per_class.len(), classes.len());
    assert!(per_class.iter().all(|t| (0.0..=1.0).contains(t)), "{per_class:?}");
    let by_name = json(file);
    for (c, t) in classes.iter().zip(&per_class) {
        assert_eq!(by_name[*c].as_f64(), Some(*t), "{c} in {}", file.display());
    }
    assert_eq!(by_name.as_object().unwrap().len(), classes.len());
    let global: f64 = meta["threshold"].as_str().unwrap().parse().unwrap();
    assert_eq!(summary["thresholds"]["global"].as_f64(), Some(global));
    for split in ["val_calibrated", "test_calibrated"] {
        let t: Vec<f64> = serde_json::from_value(summary[split]["thresholds"].clone()).unwrap();
        assert_eq!(t, per_class, "{split} at the exported thresholds");
    }
    per_class
}

/// An Open Images-style copy of a manifest that [`write_images`] wrote: each image as
/// `<dir>/<prefix><i>.jpg`, a labels CSV (`ImageID,Source,LabelName,Confidence`) with the
/// positives (Confidence 1) and, for absent classes, verified negatives (Confidence 0) on about
/// half the entries (the rest unknown); classes by MID (`/m/red`, ...).
fn open_images_from(manifest: &Path, dir: &Path, prefix: &str, csv: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rows = String::from("ImageID,Source,LabelName,Confidence\n");
    let root = manifest.parent().unwrap();
    for (i, line) in std::fs::read_to_string(manifest).unwrap().lines().enumerate() {
        let entry: Value = serde_json::from_str(line).unwrap();
        let id = format!("{prefix}{i:03}");
        image::open(root.join(entry["image"].as_str().unwrap()))
            .unwrap()
            .to_rgb8()
            .save(dir.join(format!("{id}.jpg")))
            .unwrap();
        let labels: Vec<&str> = entry["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
        for (k, class) in ["red", "green", "blue"].iter().enumerate() {
            if labels.contains(class) {
                rows += &format!("{id},verification,/m/{class},1\n");
            } else if (i + k) % 2 == 0 {
                rows += &format!("{id},verification,/m/{class},0\n");
            }
        }
    }
    std::fs::write(csv, rows).unwrap();
}

/// Common flags of the small image runs below.
const TINY: &[&str] = &[
    "--backbone",
    "resnet18",
    "--pretrained",
    "none",
    "--resize",
    "36x36",
    "--crop",
    "32x32",
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--lr",
    "1e-3",
    "--threads",
    "2",
    "--calibrate-min-positives",
    "2",
];

#[test]
fn an_open_images_csv_trains_as_given_and_exports_its_thresholds_and_mids() {
    let tmp = tempfile::tempdir().unwrap();
    let (tr, te) = (write_images(tmp.path(), 48, 61, "train"), write_images(tmp.path(), 24, 62, "test"));
    let oi = tmp.path().join("oi");
    let (tr_csv, te_csv) = (tmp.path().join("train-labels.csv"), tmp.path().join("test-labels.csv"));
    open_images_from(&tr, &oi, "tr", &tr_csv);
    open_images_from(&te, &oi, "te", &te_csv);
    let desc = tmp.path().join("class-descriptions.csv");
    std::fs::write(&desc, "LabelName,DisplayName\n/m/red,red\n/m/green,green\n/m/blue,blue\n").unwrap();
    let rd = tmp.path().join("run");
    let out = run(Command::new(bin("cls-train"))
        .arg("--data")
        .arg(&tr_csv)
        .arg("--test")
        .arg(&te_csv)
        .arg("--images")
        .arg(&oi)
        .arg("--classes")
        .arg(&desc)
        .args(TINY)
        .arg("--run-dir")
        .arg(&rd)
        .arg("--cache-dir")
        .arg(tmp.path().join("cache")));
    let err = String::from_utf8_lossy(&out.stderr);
    let summary = json(&rd.join("summary.json"));
    assert_eq!(summary["partial"], "given", "the labels as given by default");
    assert!(err.contains("validation at 0.5") && err.contains("test at the calibrated thresholds"), "{err}");
    let classes = ["red", "green", "blue"];
    check_thresholds(&rd.join("model.onnx"), &rd.join("thresholds.json"), &summary, &classes);
    let meta = metadata(&rd.join("model.onnx"));
    let mids: Vec<String> = serde_json::from_str(meta["class_ids"].as_str().expect("class_ids")).unwrap();
    assert_eq!(mids, ["/m/red", "/m/green", "/m/blue"]);
    // Unknown entries are left out of the metrics, as Open Images' own evaluation does.
    assert!(summary["test"]["n_unknown"].as_u64().unwrap() > 0);

    // `cls-train export` writes the same thresholds again, beside the new file.
    let again = tmp.path().join("again.onnx");
    run(Command::new(bin("cls-train")).arg("export").arg(&rd).arg("--out").arg(&again));
    let s2 = json(&again.with_extension("summary.json"));
    let t1 = check_thresholds(&rd.join("model.onnx"), &rd.join("thresholds.json"), &summary, &classes);
    let t2 = check_thresholds(&again, &again.with_extension("thresholds.json"), &s2, &classes);
    assert_eq!(t1, t2);
    assert_eq!(metadata(&again)["class_ids"], meta["class_ids"]);

    // Calibrated again with the classes' own optima (--calibrate-shrink 0): the default
    // thresholds lie between each class's own and the global one, strictly where they differ.
    let own = tmp.path().join("own.onnx");
    run(Command::new(bin("cls-train")).arg("export").arg(&rd).arg("--out").arg(&own).args(["--calibrate-shrink", "0"]));
    let s3 = json(&own.with_extension("summary.json"));
    let t3 = check_thresholds(&own, &own.with_extension("thresholds.json"), &s3, &classes);
    let global = s3["thresholds"]["global"].as_f64().unwrap();
    assert_eq!(summary["thresholds"]["global"].as_f64(), Some(global));
    assert!(t3.iter().any(|&t| (t - global).abs() > 1e-6), "no class has its own optimum: {t3:?} {global}");
    for ((&shrunk, &own), c) in t1.iter().zip(&t3).zip(classes) {
        let (lo, hi) = (own.min(global), own.max(global));
        assert!(lo <= shrunk && shrunk <= hi, "{c}: {shrunk} not between {own} and {global}");
        assert!(own == global || (shrunk != own && shrunk != global), "{c}: {shrunk} {own} {global}");
    }
    assert_eq!((summary["thresholds"]["shrink"].as_f64(), s3["thresholds"]["shrink"].as_f64()), (Some(5.0), Some(0.0)));
    assert_eq!(metadata(&own)["calibrate_shrink"], "0");
    let bad = tmp.path().join("bad.onnx");
    let err = fails_cleanly(
        Command::new(bin("cls-train")).arg("export").arg(&rd).arg("--out").arg(&bad).arg("--calibrate-shrink=-1"),
        1,
    );
    assert!(err.contains("--calibrate-shrink -1") && !bad.exists(), "{err}");
    // The run's own model calibrated again: config.toml records it, so a plain export keeps it;
    // the export kind given with it applies to that export alone.
    run(Command::new(bin("cls-train")).arg("export").arg(&rd).args([
        "--calibrate-shrink",
        "0",
        "--export",
        "ensemble",
    ]));
    let saved = std::fs::read_to_string(rd.join("config.toml")).unwrap();
    assert!(saved.contains("calibrate_shrink = 0") && saved.contains("export = \"better\""), "{saved}");
    run(Command::new(bin("cls-train")).arg("export").arg(&rd));
    let t4 = check_thresholds(
        &rd.join("model.onnx"),
        &rd.join("thresholds.json"),
        &json(&rd.join("summary.json")),
        &classes,
    );
    assert_eq!(t4, t3, "the own optima, as recorded");
}

#[test]
fn a_jsonl_with_negatives_trains_as_given_and_warns_of_conservative_thresholds() {
    let tmp = tempfile::tempdir().unwrap();
    let (tr, te) = (write_images(tmp.path(), 48, 71, "train"), write_images(tmp.path(), 24, 72, "test"));
    // Verified negatives for red and green only: blue's validation labels are positives and
    // unknown entries, so its unknown entries count as negatives and the run says so.
    let text: String = std::fs::read_to_string(&tr)
        .unwrap()
        .lines()
        .map(|line| {
            let mut e: Value = serde_json::from_str(line).unwrap();
            let labels: Vec<String> = serde_json::from_value(e["labels"].clone()).unwrap();
            let negatives: Vec<&str> =
                ["red", "green"].into_iter().filter(|c| !labels.iter().any(|l| l == c)).collect();
            e["negatives"] = serde_json::json!(negatives);
            e.to_string() + "\n"
        })
        .collect();
    let with_neg = tmp.path().join("train-neg.jsonl");
    std::fs::write(&with_neg, text).unwrap();
    let rd = tmp.path().join("run");
    let out = run(Command::new(bin("cls-train"))
        .arg("--data")
        .arg(&with_neg)
        .arg("--test")
        .arg(&te)
        .args(TINY)
        .args(["--method", "cls"])
        .arg("--run-dir")
        .arg(&rd)
        .arg("--cache-dir")
        .arg(tmp.path().join("cache")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 of 3 classes have no verified negative") && err.contains("conservative"), "{err}");
    let summary = json(&rd.join("summary.json"));
    assert_eq!(summary["thresholds"]["conservative"], 1);
    assert_eq!(summary["partial"], "given");
    let classes = ["blue", "green", "red"]; // the sorted union of the names
    check_thresholds(&rd.join("model.onnx"), &rd.join("thresholds.json"), &summary, &classes);
    assert!(metadata(&rd.join("model.onnx")).get("class_ids").is_none(), "no MIDs in a JSONL manifest");
    // The exported model tags with its thresholds in cls-infer by default: the trainer's numbers.
    let m = infer_map(&rd.join("model.onnx"), &tmp.path().join("test"), &te, &tmp.path().join("m.json"));
    for k in ["mAP", "CF1", "OF1"] {
        let (a, b) = (summary["test_calibrated"][k].as_f64().unwrap(), m[k].as_f64().unwrap());
        assert!((a - b).abs() <= 0.0005, "{k}: cls-train {a} vs cls-infer {b}");
    }
}

#[test]
fn an_unfinished_run_is_exported_only_beside_it_and_outputs_are_checked_first() {
    let tmp = tempfile::tempdir().unwrap();
    let tr = tmp.path().join("train.csv");
    write_csv(&tr, 120, 51);
    let rd = tmp.path().join("run");
    let train = |extra: &[&str]| {
        run(Command::new(bin("cls-train"))
            .arg("--data")
            .arg(&tr)
            .args([
                "--label-columns",
                "4",
                "--batch-size",
                "32",
                "--lr",
                "0.01",
                "--threads",
                "1",
                "--mlp-hidden",
                "16",
            ])
            .arg("--run-dir")
            .arg(&rd)
            .args(extra))
    };
    train(&["--epochs", "3", "--stop-after", "1"]);
    let export = |args: &[&str]| {
        let mut c = Command::new(bin("cls-train"));
        c.arg("export").arg(&rd).args(args);
        c
    };
    let files = || {
        let mut s = snapshot(&rd);
        s.remove(Path::new(".cls-train.lock"));
        s
    };
    let before = files();

    // With data that cannot be read, every refusal below must come before they are loaded.
    let hidden = tmp.path().join("hidden.csv");
    std::fs::rename(&tr, &hidden).unwrap();
    std::fs::write(&tr, "not,a\nfeature table\n").unwrap();
    let err = fails_cleanly(&mut export(&[]), 1);
    assert!(err.contains("unfinished (epoch 1 of 3)") && err.contains("--out"), "{err}");
    for f in [
        "checkpoint/peer0.safetensors",
        "checkpoint/state.json",
        "metrics.jsonl",
        "config.toml",
        "best-peer1.safetensors",
    ] {
        let out = rd.join(f);
        let err = fails_cleanly(&mut export(&["--out", out.to_str().unwrap()]), 1);
        let refused = ["would overwrite", "keeps that name", "inside the run's folder"];
        assert!(refused.iter().any(|r| err.contains(r)) && !err.contains("train.csv"), "--out {f}: {err}");
    }
    // Names the run keeps for files it has not written yet, however spelled.
    let spelled = tmp.path().join(".").join("run").join("summary.json");
    for out in [rd.join("summary.json"), spelled, rd.join("plots/new.onnx"), rd.join("checkpoint/x.onnx")] {
        let err = fails_cleanly(&mut export(&["--out", out.to_str().unwrap()]), 1);
        let refused = ["keeps that name", "inside the run's folder"];
        assert!(refused.iter().any(|r| err.contains(r)) && !err.contains("train.csv"), "{err}");
    }
    let nowhere = tmp.path().join("no-such-folder/m.onnx");
    // Values of the wrong shape are usage errors (status 2) of the command-line parser.
    let cases: [(&[&str], &str, i32); 4] = [
        (&["--export", "nope", "--out", "x.onnx"], "'nope' for '--export", 2),
        (&["--export", "ensemble", "--checkpoint", "x"], "'x' for '--checkpoint", 2),
        (&["--checkpoint", "2", "--out", "x.onnx"], "--checkpoint 2: the run has completed 1 epoch(s)", 1),
        (&["--out", nowhere.to_str().unwrap()], "does not exist", 1),
    ];
    for (args, says, code) in cases {
        let err = fails_cleanly(&mut export(args), code);
        assert!(err.contains(says) && !err.contains("train.csv"), "{args:?}: {err}");
    }
    let err =
        fails_cleanly(Command::new(bin("cls-train")).arg("report").arg(&rd).arg("--out").arg(rd.join("report.md")), 1);
    assert!(err.contains("inside the run folder"), "{err}");
    assert!(files() == before, "a refused export or report changed the run folder");
    std::fs::rename(&hidden, &tr).unwrap();

    // Beside it: a model and its own summary saying how far the run got; the run stays unfinished.
    let now = tmp.path().join("now.onnx");
    run(&mut export(&["--out", now.to_str().unwrap()]));
    let s = json(&now.with_extension("summary.json"));
    assert_eq!((s["epochs_done"].as_u64(), s["epochs"].as_u64()), (Some(1), Some(3)));
    assert!(!rd.join("summary.json").exists() && !rd.join("model.onnx").exists());
    let report = tmp.path().join("report.md");
    run(Command::new(bin("cls-train")).arg("report").arg(&rd).arg("--out").arg(&report));
    assert!(std::fs::read_to_string(&report).unwrap().contains("unfinished: 1 epochs"));

    // Finished: the run's own summary and model, and a re-export in place.
    run(Command::new(bin("cls-train")).arg("--resume").arg(&rd));
    assert_eq!(json(&rd.join("summary.json"))["epochs_done"], 3);
    run(&mut export(&[]));
    assert_eq!(json(&rd.join("summary.json"))["epochs_done"], 3);
}
