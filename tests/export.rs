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
    run(Command::new(bin("cls-infer"))
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

    let m = infer_map(&rd.join("model.onnx"), &tmp.path().join("test"), &te, &tmp.path().join("m.json"));
    for k in ["mAP", "CF1", "OF1"] {
        let (a, b) = (summary["test"][k].as_f64().unwrap(), m[k].as_f64().unwrap());
        assert!((a - b).abs() <= 0.0005, "{k}: cls-train {a} vs cls-infer {b}");
    }
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
    let (a, b) = (summary["test"]["mAP"].as_f64().unwrap(), m["mAP"].as_f64().unwrap());
    assert!((a - b).abs() <= 0.0005, "frozen efficientnet: cls-train {a} vs cls-infer {b}");
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
    let cases: [(&[&str], &str); 4] = [
        (&["--export", "nope", "--out", "x.onnx"], "--export nope"),
        (&["--export", "ensemble", "--checkpoint", "x"], "--checkpoint 'x'"),
        (&["--checkpoint", "2", "--out", "x.onnx"], "--checkpoint 2: the run has completed 1 epoch(s)"),
        (&["--out", nowhere.to_str().unwrap()], "does not exist"),
    ];
    for (args, says) in cases {
        let err = fails_cleanly(&mut export(args), 1);
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
