//! The exported ONNX graph computes what the tch network computes: for every architecture, random
//! weights (with non-trivial batch-norm statistics) and random inputs, ONNX Runtime's
//! probabilities equal `sigmoid(net.forward_t(x, false))` within 1e-4; the two-peer export equals
//! the mean of both peers' probabilities; the metadata round-trips; `onnx.checker` accepts the file.

mod common;

use std::path::Path;

use cls_models::{export_onnx, Arch, ExportMeta, Net};
use common::*;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const CLASSES: i64 = 7;

fn meta(h: i64, w: i64) -> ExportMeta {
    ExportMeta {
        classes: (0..CLASSES).map(|i| format!("class {i}")).collect(),
        height: h,
        width: w,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        threshold: 0.5,
        thresholds: None,
        class_ids: None,
        extra: vec![("method".into(), "cls".into()), ("backbone".into(), "test".into())],
    }
}

fn input(arch: &Arch, n: i64, h: i64, w: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    match arch {
        Arch::Mlp { in_dim, .. } => Tensor::randn([n, *in_dim], (Kind::Float, Device::Cpu)),
        _ => Tensor::randn([n, 3, h, w], (Kind::Float, Device::Cpu)),
    }
}

fn input_name(arch: &Arch) -> &'static str {
    if arch.is_image() {
        "images"
    } else {
        "features"
    }
}

/// Runs `onnx.checker.check_model(full_check=True)` when the venv's Python has `onnx`.
fn python_check(path: &Path) {
    let Some(python) = venv_python() else {
        eprintln!("NOTICE: no .venv/bin/python; onnx.checker skipped");
        return;
    };
    let has_onnx = std::process::Command::new(&python)
        .args(["-c", "import onnx"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_onnx {
        eprintln!("NOTICE: `import onnx` fails in {}; onnx.checker skipped", python.display());
        return;
    }
    let out = std::process::Command::new(&python)
        .args(["-c", "import onnx, sys; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True)"])
        .arg(path)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "onnx.checker rejected {}:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds one random network, exports it, and compares ONNX Runtime with tch.
fn check_single(arch: Arch, h: i64, w: i64) {
    let vs = VarStore::new(Device::Cpu);
    let net = Net::new(&vs.root(), &arch, CLASSES, Some(0.01));
    randomise(&vs, 1);
    let x = input(&arch, 2, h, w, 2);
    calibrate_head(&net, &vs, &x);
    let expected = tch::no_grad(|| net.forward_t(&x, false).sigmoid());
    let expected = Vec::<f32>::try_from(&expected.view(-1)).unwrap();
    // Not saturated: the comparison below means something.
    assert!(expected.iter().any(|p| *p > 0.05 && *p < 0.95), "{arch}: probabilities all saturated: {expected:?}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    let m = meta(h, w);
    export_onnx(&[(&net, &vs)], &arch, &m, &path).unwrap();
    python_check(&path);
    let Some(env) = ort_env() else { return };
    let (shape, probs, metadata) = run_onnx(env, &path, input_name(&arch), &x).unwrap();
    assert_eq!(shape, vec![2, CLASSES]);
    let diff = max_abs_diff(&probs, &expected);
    assert!(diff < 1e-4, "{arch}: ONNX Runtime and tch differ by {diff}");

    let get = |k: &str| metadata.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let classes: Vec<String> = serde_json::from_str(&get("classes").expect("classes")).unwrap();
    assert_eq!(classes, m.classes);
    assert_eq!(get("height"), Some(h.to_string()));
    assert_eq!(get("width"), Some(w.to_string()));
    let mean: Vec<f32> = serde_json::from_str(&get("mean").unwrap()).unwrap();
    assert_eq!(mean, m.mean.to_vec());
    let std: Vec<f32> = serde_json::from_str(&get("std").unwrap()).unwrap();
    assert_eq!(std, m.std.to_vec());
    assert_eq!(get("threshold").unwrap().parse::<f64>().unwrap(), 0.5);
    assert_eq!(get("method").as_deref(), Some("cls"));
    assert_eq!(get("input").as_deref(), Some(input_name(&arch)));
}

#[test]
fn resnet18_matches_tch() {
    check_single(Arch::ResNet18, 64, 64);
}

#[test]
fn resnet34_matches_tch() {
    check_single(Arch::ResNet34, 40, 56);
}

#[test]
fn resnet50_matches_tch() {
    check_single(Arch::ResNet50, 64, 64);
}

#[test]
fn efficientnet_lite0_matches_tch_at_odd_sizes() {
    // 61×75: every stride-2 "same" convolution pads asymmetrically on some side.
    check_single(Arch::EfficientNetLite0, 61, 75);
}

#[test]
fn mlp_matches_tch() {
    check_single(Arch::Mlp { in_dim: 20, hidden: 16 }, 0, 0);
}

#[test]
fn linear_head_matches_tch() {
    check_single(Arch::Mlp { in_dim: 20, hidden: 0 }, 0, 0);
}

#[test]
fn ensemble_is_the_mean_of_both_peers() {
    // Both peers in one VarStore under their own sub-paths, as a co-training trainer may hold them.
    let arch = Arch::ResNet18;
    let vs = VarStore::new(Device::Cpu);
    let a = Net::new(&(vs.root() / "peer_a"), &arch, CLASSES, None);
    let b = Net::new(&(vs.root() / "peer_b"), &arch, CLASSES, None);
    randomise(&vs, 3);
    let x = input(&arch, 3, 48, 40, 4);
    calibrate_head(&a, &vs, &x);
    calibrate_head(&b, &vs, &x);
    let (pa, pb) = tch::no_grad(|| (a.forward_t(&x, false).sigmoid(), b.forward_t(&x, false).sigmoid()));
    let da = Vec::<f32>::try_from(&pa.view(-1)).unwrap();
    let db = Vec::<f32>::try_from(&pb.view(-1)).unwrap();
    assert!(max_abs_diff(&da, &db) > 1e-2, "the two peers should differ");
    let expected: Vec<f32> = da.iter().zip(&db).map(|(p, q)| (p + q) / 2.0).collect();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ensemble.onnx");
    export_onnx(&[(&a, &vs), (&b, &vs)], &arch, &meta(48, 40), &path).unwrap();
    python_check(&path);
    let Some(env) = ort_env() else { return };
    let (shape, probs, _) = run_onnx(env, &path, "images", &x).unwrap();
    assert_eq!(shape, vec![3, CLASSES]);
    let diff = max_abs_diff(&probs, &expected);
    assert!(diff < 1e-4, "ensemble: ONNX Runtime and the tch mean differ by {diff}");
}

#[test]
fn export_rejects_wrong_class_count_and_arch() {
    let vs = VarStore::new(Device::Cpu);
    let arch = Arch::Mlp { in_dim: 4, hidden: 0 };
    let net = Net::new(&vs.root(), &arch, CLASSES, None);
    let dir = tempfile::tempdir().unwrap();
    let mut m = meta(0, 0);
    m.classes.pop();
    let err = export_onnx(&[(&net, &vs)], &arch, &m, &dir.path().join("x.onnx")).unwrap_err();
    assert!(err.to_string().contains("6 class names"), "{err}");
    let err = export_onnx(&[(&net, &vs)], &Arch::ResNet18, &meta(0, 0), &dir.path().join("y.onnx")).unwrap_err();
    assert!(err.to_string().contains("resnet18"), "{err}");
    assert!(export_onnx(&[], &arch, &meta(0, 0), &dir.path().join("z.onnx")).is_err());
}

/// The metadata as written into the file (decoded with the ONNX protobuf types, no runtime).
fn metadata_of(bytes: &[u8]) -> Vec<(String, String)> {
    use prost::Message;
    let model = cls_onnx::ModelProto::decode(bytes).expect("a valid ONNX protobuf");
    model.metadata_props.into_iter().map(|e| (e.key.unwrap_or_default(), e.value.unwrap_or_default())).collect()
}

#[test]
fn calibrated_thresholds_and_class_ids_round_trip_through_the_metadata() {
    let vs = VarStore::new(Device::Cpu);
    let arch = Arch::Mlp { in_dim: 4, hidden: 0 };
    let net = Net::new(&vs.root(), &arch, CLASSES, None);
    let mut m = meta(0, 0);
    // Values that print with many digits: the file must give back the same f64s.
    let per_class: Vec<f64> = (0..CLASSES).map(|i| 0.1 + i as f64 / 30.0 + 1e-13).collect();
    m.thresholds = Some(per_class.clone());
    m.threshold = 0.237_000_000_000_001;
    m.class_ids = Some((0..CLASSES).map(|i| format!("/m/0{i}x")).collect());
    let meta_of = |m: &ExportMeta| metadata_of(&cls_models::onnx_bytes(&[(&net, &vs)], &arch, m).unwrap());
    let got = meta_of(&m);
    let get = |k: &str| got.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let thresholds: Vec<f64> = serde_json::from_str(&get("thresholds").expect("thresholds")).unwrap();
    assert_eq!(thresholds, per_class, "bit for bit");
    assert_eq!(get("threshold").unwrap().parse::<f64>().unwrap(), m.threshold);
    let ids: Vec<String> = serde_json::from_str(&get("class_ids").expect("class_ids")).unwrap();
    assert_eq!(Some(ids), m.class_ids);
    // Every key once (ONNX requires unique keys).
    let mut keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    let n = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), n, "{keys:?}");

    // Without them: neither key, and the one threshold.
    let plain = meta_of(&meta(0, 0));
    assert!(plain.iter().all(|(k, _)| k != "thresholds" && k != "class_ids"), "{plain:?}");

    // Refused: a count that is not the class count, a value that is not a probability.
    let refused = |m: &ExportMeta| cls_models::onnx_bytes(&[(&net, &vs)], &arch, m).unwrap_err().to_string();
    let mut bad = m.clone();
    bad.thresholds.as_mut().unwrap().pop();
    assert!(refused(&bad).contains("6 per-class thresholds for 7 classes"), "{}", refused(&bad));
    let mut bad = m.clone();
    bad.thresholds.as_mut().unwrap()[3] = f64::NAN;
    assert!(refused(&bad).contains("class 3"), "{}", refused(&bad));
    let mut bad = m.clone();
    bad.threshold = 1.5;
    assert!(refused(&bad).contains("1.5"), "{}", refused(&bad));
    let mut bad = m.clone();
    bad.class_ids.as_mut().unwrap().push("/m/extra".into());
    assert!(refused(&bad).contains("8 class ids"), "{}", refused(&bad));
}

#[test]
fn efficientnet_lite0_matches_tch_at_small_even_sizes() {
    // 40×40 and 32×32: the spatial size reaches 5 and 3, where "same" padding is odd again.
    check_single(Arch::EfficientNetLite0, 40, 40);
    check_single(Arch::EfficientNetLite0, 32, 32);
}
