//! End-to-end tests of the `cls-infer` release binary (build it first: `cargo build --release`).
//!
//! The model is built here with `cls_onnx::GraphBuilder`: images → GlobalAveragePool → Flatten
//! → Gemm (fixed weights) → Sigmoid, so a pure red image scores high on "red" and low on the
//! others, and every score is a known function of the image's mean colour.

use cls_core::metrics::{evaluate, Metrics};
use cls_onnx::builder::{Attr, Dim};
use cls_onnx::GraphBuilder;
use cls_tests::{bin, leftover_temps, output_within, wait_or_kill, RUN_LIMIT};
use image::{ImageBuffer, Luma, Rgb, RgbImage, Rgba};
use ndarray::Array2;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CLASSES: [&str; 4] = ["red", "green", "blue", "bright"];
const SIZE: u32 = 16;

fn binary() -> PathBuf {
    bin("cls-infer")
}

/// The test model; `metadata` false gives a bare graph without any of cls-train's keys.
fn model_bytes(metadata: bool) -> Vec<u8> {
    model_bytes_with_batch(metadata, Dim::Named("N".into()))
}

fn model_bytes_with_batch(metadata: bool, batch: Dim) -> Vec<u8> {
    model_bytes_ending(metadata, batch, |g, logits, batch| {
        g.node("Sigmoid", &[logits], &["probs"], &[]);
        g.output_f32("probs", &[batch, Dim::Fixed(4)]);
    })
}

/// The test model with `end(graph, logits, batch dim)` making its output from the logits.
fn model_bytes_ending(metadata: bool, batch: Dim, end: impl FnOnce(&mut GraphBuilder, &str, Dim)) -> Vec<u8> {
    let mut g = GraphBuilder::new("colour");
    g.input_f32("images", &[batch.clone(), Dim::Fixed(3), Dim::Fixed(SIZE as i64), Dim::Fixed(SIZE as i64)]);
    // Inputs are normalised with mean 0.5, std 0.25: a channel at 255 averages +2, at 0 −2.
    #[rustfmt::skip]
    let w = [
        3.0, -1.0, -1.0, // red
        -1.0, 3.0, -1.0, // green
        -1.0, -1.0, 3.0, // blue
        1.0, 1.0, 1.0,   // bright
    ];
    let w = g.initializer_f32("w", &[4, 3], &w);
    let b = g.initializer_f32("b", &[4], &[-1.0, -1.0, -1.0, 0.0]);
    let pooled = g.op("GlobalAveragePool", &["images"], &[]);
    let flat = g.op("Flatten", &[&pooled], &[("axis", Attr::Int(1))]);
    let logits = g.op("Gemm", &[&flat, &w, &b], &[("transB", Attr::Int(1))]);
    end(&mut g, &logits, batch);
    if metadata {
        g.metadata("classes", serde_json::to_string(&CLASSES).unwrap());
        g.metadata("height", SIZE.to_string());
        g.metadata("width", SIZE.to_string());
        g.metadata("mean", "[0.5, 0.5, 0.5]");
        g.metadata("std", "[0.25, 0.25, 0.25]");
        g.metadata("threshold", "0.5");
    }
    g.to_bytes()
}

fn write_model(dir: &Path, metadata: bool) -> PathBuf {
    let p = dir.join(if metadata { "model.onnx" } else { "bare.onnx" });
    fs::write(&p, model_bytes(metadata)).unwrap();
    p
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cls_infer(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(binary());
    cmd.args(args).env_remove("SLURM_ARRAY_TASK_ID").env_remove("JOB_COMPLETION_INDEX");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // Every run under a time limit: a hang (on an error path, say) fails the test instead of CI.
    let Output { status, stdout, stderr } = output_within(&mut cmd, RUN_LIMIT);
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into(),
        stderr: String::from_utf8_lossy(&stderr).into(),
    };
    assert!(!run.stderr.contains("panicked") && !run.stderr.contains("RUST_BACKTRACE"), "a panic:\n{}", run.stderr);
    run
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read_jsonl(p: &Path) -> Vec<Value> {
    fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn solid(rgb: [u8; 3], w: u32, h: u32) -> RgbImage {
    ImageBuffer::from_pixel(w, h, Rgb(rgb))
}

/// A PNG whose header claims `w × h` pixels (valid chunk CRCs, an empty IDAT).
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for chunk in [ihdr, b"IDAT".to_vec(), b"IEND".to_vec()] {
        out.extend((chunk.len() as u32 - 4).to_be_bytes());
        out.extend(&chunk);
        out.extend(crc32(&chunk).to_be_bytes());
    }
    out
}

/// An 8×8 CMYK JPEG (Adobe APP14) made once with Pillow; the `image` crate cannot write CMYK.
const CMYK_JPEG_HEX: &str = "ffd8ffee000e41646f626500640000000000ffdb0043000302020302020303030304030304050805050404050a070706080c0a0c0c0b0a0b0b0d0e12100d0e110e0b0b1016101113141515150c0f171816141812141514ffc000140800080008044311004d11005911004b1100ffc4001f0000010501010101010100000000000000000102030405060708090a0bffc400b5100002010303020403050504040000017d01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffda000e0443004d0059004b00003f00fd53af8f2be3cafd53afffd9";

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect()
}

fn is_root() -> bool {
    // Permission bits do not stop root; find out by trying.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("probe");
    fs::write(&p, b"x").unwrap();
    set_mode(&p, 0o000);
    fs::read(&p).is_ok()
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A folder with good images of every flavour next to every kind of unreadable file.
/// Returns (good relative paths, bad relative paths), both sorted.
fn make_zoo(root: &Path) -> (Vec<String>, Vec<String>) {
    fs::create_dir_all(root.join("nested/deeper")).unwrap();
    let mut good = vec![];
    let mut bad = vec![];
    let add = |list: &mut Vec<String>, rel: &str, bytes: Vec<u8>| {
        fs::write(root.join(rel), bytes).unwrap();
        list.push(rel.to_string());
    };
    let encode = |img: image::DynamicImage, fmt: image::ImageFormat| {
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, fmt).unwrap();
        buf.into_inner()
    };
    use image::{DynamicImage as D, ImageFormat as F};
    let red_jpg = encode(D::ImageRgb8(solid([250, 10, 10], 40, 30)), F::Jpeg);
    let blue_png = encode(D::ImageRgb8(solid([0, 0, 255], 20, 20)), F::Png);
    add(&mut good, "red.jpg", red_jpg.clone());
    add(&mut good, "blue.png", blue_png.clone());
    add(&mut good, "gray.png", encode(D::ImageLuma8(ImageBuffer::from_pixel(9, 7, Luma([200u8]))), F::Png));
    add(&mut good, "rgba.png", encode(D::ImageRgba8(ImageBuffer::from_pixel(8, 8, Rgba([0u8, 255, 0, 128]))), F::Png));
    add(&mut good, "deep16.png", encode(D::ImageRgb16(ImageBuffer::from_pixel(5, 6, Rgb([65535u16, 0, 0]))), F::Png));
    add(&mut good, "cmyk.jpg", unhex(CMYK_JPEG_HEX));
    add(&mut good, "UPPER.JPG", red_jpg.clone());
    add(&mut good, "Mixed.Png", blue_png.clone());
    add(&mut good, "pic.bmp", encode(D::ImageRgb8(solid([0, 200, 0], 12, 12)), F::Bmp));
    add(&mut good, "pic.tiff", encode(D::ImageRgb8(solid([30, 30, 30], 12, 12)), F::Tiff));
    add(&mut good, "pic.webp", encode(D::ImageRgb8(solid([255, 255, 255], 12, 12)), F::WebP));
    add(&mut good, "pic.gif", encode(D::ImageRgb8(solid([250, 0, 0], 12, 12)), F::Gif));
    add(&mut good, "nested/deeper/green.jpeg", encode(D::ImageRgb8(solid([10, 240, 10], 33, 17)), F::Jpeg));
    add(&mut bad, "corrupt.jpg", [&red_jpg[..20], &[0x5a; 200][..]].concat());
    add(&mut bad, "truncated.png", blue_png[..blue_png.len() / 2].to_vec());
    add(&mut bad, "empty.png", vec![]);
    add(&mut bad, "notes.jpg", b"this is a text file, not a JPEG\n".to_vec());
    add(&mut bad, "huge.png", png_header_only(100_000, 100_000));
    add(&mut bad, "nested/locked.jpg", red_jpg.clone());
    set_mode(&root.join("nested/locked.jpg"), 0o000);
    if is_root() {
        eprintln!("NOTICE: running as root, so a chmod 000 file is readable: not testing the no-permission case");
        bad.retain(|b| b != "nested/locked.jpg");
        good.push("nested/locked.jpg".into());
    }
    fs::write(root.join("readme.txt"), "ignored: not an image extension").unwrap();
    std::os::unix::fs::symlink("..", root.join("nested/loop")).unwrap();
    good.sort();
    bad.sort();
    (good, bad)
}

/// cls-infer with `args` exits 2 (bad input) with `needle` in its message.
fn exits_2_saying(args: &[&str], needle: &str) {
    let r = cls_infer(args, &[]);
    assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
    assert!(r.stderr.contains(needle), "{args:?}: expected {needle:?} in\n{}", r.stderr);
}

fn images_of(out: &[Value]) -> Vec<String> {
    out.iter().map(|v| v["image"].as_str().unwrap().to_string()).collect()
}

#[test]
fn tags_every_good_image_and_lists_every_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    let (good, bad) = make_zoo(&imgs);
    let model = write_model(dir.path(), true);
    let (out, errs) = (dir.path().join("out.jsonl"), dir.path().join("errors.jsonl"));
    let args = [
        "--model",
        s(&model),
        "--images",
        s(&imgs),
        "--out",
        s(&out),
        "--errors",
        s(&errs),
        "--device",
        "cpu",
        "--batch",
        "4",
        "--threads",
        "2",
    ];
    let r = cls_infer(&args, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = read_jsonl(&out);
    // Every file is a row, in path order; the failed ones carry their reason (and no scores).
    let mut all = [good.clone(), bad.clone()].concat();
    all.sort_by(|a, b| Path::new(a).cmp(Path::new(b)));
    assert_eq!(images_of(&rows), all, "every file once, in path order");
    for row in &rows {
        let failed = bad.iter().any(|b| row["image"] == b.as_str());
        assert_eq!(row.get("error").is_some(), failed, "{row}");
        assert_eq!(row.get("scores").is_none(), failed, "{row}");
    }
    let tags: Vec<Value> = rows.into_iter().filter(|v| v.get("error").is_none()).collect();
    let mut expect_order = good.clone();
    expect_order.sort_by(|a, b| Path::new(a).cmp(Path::new(b)));
    assert_eq!(images_of(&tags), expect_order, "every good image once, in path order");
    let errors: Vec<String> = read_jsonl(&errs).iter().map(|v| v["path"].as_str().unwrap().to_string()).collect();
    let mut errors_sorted = errors.clone();
    errors_sorted.sort();
    assert_eq!(errors_sorted, bad, "every bad file once");
    for b in &bad {
        assert_eq!(r.stderr.matches(&format!("skipped {b}:")).count(), 1, "{b} reported once on stderr:\n{}", r.stderr);
    }
    let reason = |p: &str| {
        read_jsonl(&errs).into_iter().find(|v| v["path"] == p).unwrap()["reason"].as_str().unwrap().to_string()
    };
    assert!(reason("huge.png").contains("limit"), "{}", reason("huge.png"));
    // Colours come through: the solid images get their colour's label and nothing else.
    let by_name: BTreeMap<String, &Value> =
        tags.iter().map(|v| (v["image"].as_str().unwrap().to_string(), v)).collect();
    for (img, label) in [
        ("red.jpg", "red"),
        ("blue.png", "blue"),
        ("nested/deeper/green.jpeg", "green"),
        ("deep16.png", "red"),
        ("cmyk.jpg", "red"),
        ("pic.gif", "red"),
    ] {
        assert_eq!(by_name[img]["labels"][0], label, "{img}: {}", by_name[img]);
        assert_eq!(by_name[img]["scores"].as_object().unwrap().len(), CLASSES.len());
    }
    // White: logits bright 6, the others 1 each (tied: class order).
    assert_eq!(by_name["pic.webp"]["labels"], serde_json::json!(["bright", "red", "green", "blue"]));
    // --strict turns unreadable files into exit status 1; --follow-links meets the loop and ends.
    let strict = cls_infer(&[&args[..], &["--strict", "--follow-links"]].concat(), &[]);
    assert_eq!(strict.code, 1, "{}", strict.stderr);
    assert!(strict.stderr.contains("loop"), "{}", strict.stderr);
    let ok_rows: Vec<Value> = read_jsonl(&out).into_iter().filter(|v| v.get("error").is_none()).collect();
    assert_eq!(images_of(&ok_rows), expect_order);
    // One image a batch: the time report counts only the batches that reached ONNX Runtime.
    let mut one_a_batch = args.to_vec();
    let at = one_a_batch.iter().position(|a| *a == "--batch").unwrap();
    one_a_batch[at + 1] = "1";
    let single = cls_infer(&one_a_batch, &[]);
    assert_eq!(single.code, 0, "{}", single.stderr);
    let batches = format!("({} batches,", good.len());
    assert!(single.stderr.contains(&batches), "expected {batches:?} in\n{}", single.stderr);
}

#[test]
fn top_k_threshold_and_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    fs::create_dir_all(&imgs).unwrap();
    solid([255, 255, 0], 10, 10).save(imgs.join("yellow.png")).unwrap();
    let model = write_model(dir.path(), true);
    let r = cls_infer(&["--model", s(&model), "--images", s(&imgs), "--device", "cpu"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    // Mean colour (2, 2, −2): logits red 5, green 5, bright 2, blue −11; ties go by class order.
    assert_eq!(v["labels"], serde_json::json!(["red", "green", "bright"]));
    let p = |c: &str| v["scores"][c].as_f64().unwrap();
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    for (c, logit) in [("red", 5.0), ("green", 5.0), ("bright", 2.0), ("blue", -11.0)] {
        assert!((p(c) - sigmoid(logit)).abs() < 1e-5, "{c}: {v}");
    }
    let r = cls_infer(
        &["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--top-k", "1", "--threshold", "0.9"],
        &[],
    );
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["labels"], serde_json::json!(["red"]));
}

/// A folder of solid-colour images with a JSONL ground truth whose labels are noisy, so the
/// metrics are neither perfect nor trivial.
fn make_labelled(root: &Path) -> PathBuf {
    let imgs = root.join("imgs");
    fs::create_dir_all(&imgs).unwrap();
    let mut lines = String::new();
    for i in 0..24u32 {
        let c = [(i * 37 % 256) as u8, (i * 91 % 256) as u8, (i * 53 % 256) as u8];
        solid(c, 12, 9).save(imgs.join(format!("img{i:02}.png"))).unwrap();
        let mut labels: Vec<&str> = vec![];
        for (k, name) in CLASSES[..3].iter().enumerate() {
            if c[k] > 128 || (i % 5 == k as u32) {
                labels.push(name);
            }
        }
        if i % 7 == 0 {
            labels.push("bright");
        }
        lines.push_str(&serde_json::json!({"image": format!("imgs/img{i:02}.png"), "labels": labels}).to_string());
        lines.push('\n');
    }
    // An entry with no image, and an image with no entry.
    lines.push_str("{\"image\": \"imgs/missing.png\", \"labels\": [\"red\"]}\n");
    solid([1, 2, 3], 4, 4).save(imgs.join("unlabelled.png")).unwrap();
    let gt = root.join("gt.jsonl");
    fs::write(&gt, lines).unwrap();
    gt
}

fn metrics_of(out: &Path, gt: &Path) -> Metrics {
    // Recompute with cls-core from the scores cls-infer wrote.
    let truth: BTreeMap<String, Vec<String>> = fs::read_to_string(gt)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| {
            (
                v["image"].as_str().unwrap().trim_start_matches("imgs/").to_string(),
                serde_json::from_value(v["labels"].clone()).unwrap(),
            )
        })
        .collect();
    let rows: Vec<Value> =
        read_jsonl(out).into_iter().filter(|v| truth.contains_key(v["image"].as_str().unwrap())).collect();
    let mut scores = Array2::<f32>::zeros((rows.len(), CLASSES.len()));
    let mut targets = Array2::<i8>::from_elem((rows.len(), CLASSES.len()), -1);
    for (i, v) in rows.iter().enumerate() {
        for (c, name) in CLASSES.iter().enumerate() {
            scores[[i, c]] = v["scores"][name].as_f64().unwrap() as f32;
            if truth[v["image"].as_str().unwrap()].iter().any(|l| l == name) {
                targets[[i, c]] = 1;
            }
        }
    }
    evaluate(scores.view(), targets.view(), 0.5).unwrap()
}

#[test]
fn metrics_equal_core_and_regressions_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let gt = make_labelled(dir.path());
    let imgs = dir.path().join("imgs");
    let model = write_model(dir.path(), true);
    let (out, mfile) = (dir.path().join("out.jsonl"), dir.path().join("metrics.json"));
    let base = ["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--ground-truth", s(&gt)];
    let r = cls_infer(&[&base[..], &["--out", s(&out), "--metrics-out", s(&mfile)]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("mAP"), "a table on stderr:\n{}", r.stderr);
    assert!(r.stderr.contains("1 ground-truth entries have no image"), "{}", r.stderr);
    assert!(r.stderr.contains("1 tagged images have no ground truth"), "{}", r.stderr);
    let got: Metrics = serde_json::from_str(&fs::read_to_string(&mfile).unwrap()).unwrap();
    let want = metrics_of(&out, &gt);
    assert_eq!(got, want);
    assert_eq!(got.n_images, 24);
    assert!(got.map > 0.3 && got.map < 1.0, "non-trivial mAP {}", got.map);

    // The regression check: a baseline 0.02 above in one headline metric.
    let json: Value = serde_json::from_str(&fs::read_to_string(&mfile).unwrap()).unwrap();
    for metric in ["mAP", "CF1", "OF1"] {
        let mut b = json.clone();
        b[metric] = (json[metric].as_f64().unwrap() + 0.02).into();
        let bfile = dir.path().join(format!("baseline-{metric}.json"));
        fs::write(&bfile, b.to_string()).unwrap();
        for (tol, code) in [("0.01", 3), ("0.03", 0), ("0", 3)] {
            let r =
                cls_infer(&[&base[..], &["--out", s(&out), "--baseline", s(&bfile), "--tolerance", tol]].concat(), &[]);
            assert_eq!(r.code, code, "{metric} tolerance {tol}:\n{}", r.stderr);
            if code == 3 {
                assert!(r.stderr.contains(&format!("REGRESSION {metric}")), "{}", r.stderr);
            }
        }
    }
    // Better than the baseline, and a baseline equal to the result, both pass at tolerance 0.
    let mut b = json.clone();
    for m in ["mAP", "CF1", "OF1", "CP"] {
        b[m] = (json[m].as_f64().unwrap() - 0.1).into();
    }
    fs::write(dir.path().join("lower.json"), b.to_string()).unwrap();
    for f in ["lower.json", "metrics.json"] {
        let r = cls_infer(&[&base[..], &["--out", s(&out), "--baseline", s(&dir.path().join(f))]].concat(), &[]);
        assert_eq!(r.code, 0, "{f}: {}", r.stderr);
    }
    // A baseline that is not a metrics file is bad input.
    fs::write(dir.path().join("junk.json"), "{\"mAP\": 1}").unwrap();
    let r = cls_infer(&[&base[..], &["--out", s(&out), "--baseline", s(&dir.path().join("junk.json"))]].concat(), &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn shards_partition_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    make_labelled(dir.path());
    let imgs = dir.path().join("imgs");
    let model = write_model(dir.path(), true);
    let base = ["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--batch", "3"];
    let whole = cls_infer(&base, &[]);
    assert_eq!(whole.code, 0, "{}", whole.stderr);
    let mut joined = String::new();
    for i in 0..3 {
        let r = cls_infer(&[&base[..], &["--shard", &format!("{i}/3")]].concat(), &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(!r.stdout.is_empty());
        joined.push_str(&r.stdout);
    }
    assert_eq!(joined, whole.stdout);
    // The same slices from a SLURM array (ids 1..=3) and a Kubernetes indexed job.
    let mut slurm = String::new();
    let mut k8s = String::new();
    for i in 0..3 {
        let (id, idx) = ((i + 1).to_string(), i.to_string());
        slurm.push_str(
            &cls_infer(
                &base,
                &[("SLURM_ARRAY_TASK_ID", &id), ("SLURM_ARRAY_TASK_COUNT", "3"), ("SLURM_ARRAY_TASK_MIN", "1")],
            )
            .stdout,
        );
        k8s.push_str(&cls_infer(&base, &[("JOB_COMPLETION_INDEX", &idx), ("JOB_COMPLETION_COUNT", "3")]).stdout);
    }
    assert_eq!(slurm, whole.stdout);
    assert_eq!(k8s, whole.stdout);
    assert_eq!(cls_infer(&[&base[..], &["--shard", "3/3"]].concat(), &[]).code, 2);
}

#[test]
fn metrics_of_shard_outputs_equal_the_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let gt = make_labelled(dir.path());
    let imgs = dir.path().join("imgs");
    let model = write_model(dir.path(), true);
    let base = ["--model", s(&model), "--images", s(&imgs), "--ground-truth", s(&gt)];
    let whole_metrics = dir.path().join("whole.json");
    let r = cls_infer(
        &[
            &base[..],
            &["--device", "cpu", "--out", s(&dir.path().join("whole.jsonl")), "--metrics-out", s(&whole_metrics)],
        ]
        .concat(),
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut parts = Vec::new();
    for i in 0..3 {
        let part = dir.path().join(format!("part{i}.jsonl"));
        let r = cls_infer(
            &[&base[..], &["--device", "cpu", "--batch", "4", "--shard", &format!("{i}/3"), "--out", s(&part)]]
                .concat(),
            &[],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        parts.push(part);
    }
    let parts: Vec<&str> = parts.iter().map(|p| s(p)).collect();

    // All three shards: the whole run's metrics, exactly (scores are written in full precision).
    let merged = dir.path().join("merged.json");
    let r = cls_infer(&[&base[..], &["--metrics-out", s(&merged), "--from-tags"], &parts[..]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("read 25 tagged images from 3 files"), "{}", r.stderr);
    assert!(r.stderr.contains("1 ground-truth entries were not tagged"), "{}", r.stderr);
    let want: Metrics = serde_json::from_str(&fs::read_to_string(&whole_metrics).unwrap()).unwrap();
    let got: Metrics = serde_json::from_str(&fs::read_to_string(&merged).unwrap()).unwrap();
    assert_eq!(got, want);

    // Two shards of three: fewer images, the rest reported.
    let r = cls_infer(&[&base[..], &["--metrics-out", s(&merged), "--from-tags"], &parts[..2]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let two: Metrics = serde_json::from_str(&fs::read_to_string(&merged).unwrap()).unwrap();
    assert!(two.n_images < want.n_images && two.n_images > 0, "{} of {}", two.n_images, want.n_images);
    // The entries of the third shard are reported, with the one that never had an image.
    let untagged = format!("{} ground-truth entries were not tagged", want.n_images - two.n_images + 1);
    assert!(r.stderr.contains(&untagged), "expected {untagged:?} in\n{}", r.stderr);

    // The regression gate works on tag files too.
    let mut b: Value = serde_json::from_str(&fs::read_to_string(&whole_metrics).unwrap()).unwrap();
    b["mAP"] = (b["mAP"].as_f64().unwrap() + 0.05).into();
    let bfile = dir.path().join("higher.json");
    fs::write(&bfile, b.to_string()).unwrap();
    let r = cls_infer(
        &[&base[..], &["--baseline", s(&bfile), "--tolerance", "0.01", "--from-tags"], &parts[..]].concat(),
        &[],
    );
    assert_eq!(r.code, 3, "{}", r.stderr);

    // Overlapping inputs, tags of another model, and tagging options are refused.
    let check = |extra: &[&str], needle: &str| exits_2_saying(&[&base[..], extra].concat(), needle);
    check(&["--from-tags", parts[0], parts[1], parts[0]], "tagged twice");
    let other = dir.path().join("other.jsonl");
    fs::write(&other, "{\"image\": \"img00.png\", \"labels\": [], \"scores\": {\"cat\": 0.5}}\n").unwrap();
    check(&["--from-tags", s(&other)], "no score for the model's class");
    fs::write(&other, "not json\n").unwrap();
    check(&["--from-tags", s(&other)], "line 1");
    check(&["--from-tags", parts[0], "--shard", "0/3"], "--shard");

    // A shard without ground truth (the last of 25 holds only unlabelled.png) is no error; a whole
    // folder without any is.
    let r = cls_infer(&[&base[..], &["--device", "cpu", "--shard", "24/25"]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("unlabelled.png") && r.stderr.contains("no metrics for it"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    let elsewhere = dir.path().join("elsewhere.jsonl");
    fs::write(&elsewhere, "{\"image\": \"nowhere/x.png\", \"labels\": [\"red\"]}\n").unwrap();
    let r = cls_infer(
        &["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--ground-truth", s(&elsewhere)],
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    // Found before tagging.
    assert!(r.stderr.contains("none of the images of --ground-truth"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    // Images that are in the ground truth but all unreadable: found after tagging.
    let broken = dir.path().join("broken");
    fs::create_dir_all(&broken).unwrap();
    fs::write(broken.join("x.png"), b"not a PNG").unwrap();
    solid([1, 2, 3], 4, 4).save(broken.join("y.png")).unwrap();
    let gt = dir.path().join("broken.jsonl");
    fs::write(&gt, "{\"image\": \"broken/x.png\", \"labels\": [\"red\"]}\n").unwrap();
    let r =
        cls_infer(&["--model", s(&model), "--images", s(&broken), "--device", "cpu", "--ground-truth", s(&gt)], &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("none of the tagged images is in the ground truth"), "{}", r.stderr);
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), true);
    let empty = dir.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    fs::write(empty.join("notes.txt"), "x").unwrap();
    let r = cls_infer(&["--model", s(&model), "--images", s(&empty)], &[]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no images"), "{}", r.stderr);

    let imgs = dir.path().join("imgs");
    fs::create_dir_all(&imgs).unwrap();
    solid([255, 0, 0], 8, 8).save(imgs.join("a.png")).unwrap();
    let check = exits_2_saying;
    check(&["--model", s(&dir.path().join("none.onnx")), "--images", s(&imgs)], "none.onnx");
    fs::write(dir.path().join("junk.onnx"), b"not a model").unwrap();
    check(&["--model", s(&dir.path().join("junk.onnx")), "--images", s(&imgs), "--device", "cpu"], "junk.onnx");
    fs::write(dir.path().join("zero.onnx"), b"").unwrap();
    check(&["--model", s(&dir.path().join("zero.onnx")), "--images", s(&imgs)], "zero.onnx: the file is empty");
    check(&["--model", s(&imgs), "--images", s(&imgs)], "not a file");
    check(&["--model", s(&model), "--images", s(&dir.path().join("nope"))], "nope");
    check(&["--model", s(&model), "--images", s(&imgs), "--ort-lib", "/nonexistent/libonnxruntime.so"], "ONNX Runtime");
    check(&["--model", s(&model), "--images", s(&imgs), "--batch", "0"], "--batch");
    check(&["--model", s(&model), "--images", s(&imgs), "--shard", "x"], "--shard");
    check(&["--model", s(&model), "--images", s(&imgs), "--baseline", "b.json"], "--ground-truth");
    check(&["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--size", "8x8"], "axis");

    // A model without metadata is refused clearly, and runs with --classes and --size.
    let bare = write_model(dir.path(), false);
    check(&["--model", s(&bare), "--images", s(&imgs), "--device", "cpu"], "--classes");
    let classes = dir.path().join("classes.txt");
    fs::write(&classes, CLASSES.join("\n")).unwrap();
    check(&["--model", s(&bare), "--images", s(&imgs), "--device", "cpu", "--classes", s(&classes)], "--size");
    fs::write(dir.path().join("three.txt"), "a\nb\nc\n").unwrap();
    check(
        &[
            "--model",
            s(&bare),
            "--images",
            s(&imgs),
            "--device",
            "cpu",
            "--classes",
            s(&dir.path().join("three.txt")),
            "--size",
            "16x16",
        ],
        "4 classes",
    );
    let r = cls_infer(
        &["--model", s(&bare), "--images", s(&imgs), "--device", "cpu", "--classes", s(&classes), "--size", "16x16"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["image"], "a.png");
    assert_eq!(v["labels"][0], "red");
}

#[test]
fn a_model_with_a_fixed_batch_size_tags_every_image() {
    // cls-infer reads the batch size from the file before ONNX Runtime loads it (decoding starts
    // meanwhile), so a wrong reading would feed ONNX Runtime batches of the wrong size.
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    fs::create_dir_all(&imgs).unwrap();
    let colours = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 0, 0], [0, 255, 0]];
    for (i, c) in colours.iter().enumerate() {
        solid(*c, 8, 8).save(imgs.join(format!("{i}.png"))).unwrap();
    }
    let model = dir.path().join("fixed.onnx");
    fs::write(&model, model_bytes_with_batch(true, Dim::Fixed(3))).unwrap();
    let r = cls_infer(&["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--batch", "32"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("fixed at 3"), "{}", r.stderr);
    let lines: Vec<Value> = r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let tops: Vec<&str> = lines.iter().map(|v| v["labels"][0].as_str().unwrap()).collect();
    assert_eq!(tops, ["red", "green", "blue", "red", "green"]);
    // The time report counts the batches ONNX Runtime ran: 5 images in batches of 3.
    let timing =
        r.stderr.lines().find(|l| l.contains("ONNX Runtime: session")).unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(timing.contains("(2 batches, the first"), "{timing}");
    let secs: Vec<f64> = timing.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let (session, inference, first) = (secs[0], secs[1], secs[2]);
    assert!(session > 0.0 && first <= inference, "{timing}");
}

/// `n` small solid images (copies of one PNG) in `dir/imgs`, enough to fill the pipeline's queue
/// many times over with `--batch 1`.
fn many_images(dir: &Path, n: usize) -> PathBuf {
    let imgs = dir.join("imgs");
    fs::create_dir_all(&imgs).unwrap();
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(solid([0, 0, 255], 8, 8)).write_to(&mut png, image::ImageFormat::Png).unwrap();
    for i in 0..n {
        fs::write(imgs.join(format!("img{i:04}.png")), png.get_ref()).unwrap();
    }
    imgs
}

#[test]
fn device_choice_is_reported() {
    // Many batches: a failure while the decoders have batches queued used to hang (the first
    // version of this test had one image, so the decoders never waited on the queue).
    let dir = tempfile::tempdir().unwrap();
    let imgs = many_images(dir.path(), 40);
    let model = write_model(dir.path(), true);
    let base = ["--model", s(&model), "--images", s(&imgs), "--batch", "1", "--threads", "2"];
    let auto = cls_infer(&base, &[]);
    assert_eq!(auto.code, 0, "{}", auto.stderr);
    assert!(auto.stderr.contains("ExecutionProvider"), "{}", auto.stderr);
    let cuda = cls_infer(&[&base[..], &["--device", "cuda"]].concat(), &[]);
    if auto.stderr.contains("on CUDAExecutionProvider") {
        assert_eq!(cuda.code, 0, "{}", cuda.stderr);
    } else {
        assert_eq!(cuda.code, 2, "{}", cuda.stderr);
        assert!(cuda.stderr.contains("CUDA"), "{}", cuda.stderr);
        assert!(cuda.stdout.is_empty(), "{}", cuda.stdout);
    }
}

#[test]
fn failures_with_batches_queued_end_the_run() {
    // Each of these fails after the decoders have started, with far more batches than the queue
    // holds; each used to hang with the decoders blocked on the full queue.
    let dir = tempfile::tempdir().unwrap();
    let imgs = many_images(dir.path(), 60);
    let model = write_model(dir.path(), true);
    let args = |m: &Path, extra: &[&str]| -> Vec<String> {
        let base = ["--model", s(m), "--images", s(&imgs), "--device", "cpu", "--batch", "1", "--threads", "2"];
        base.iter().chain(extra).map(|a| a.to_string()).collect()
    };
    let fails = |m: &Path, extra: &[&str], needle: &str| {
        let a = args(m, extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let r = cls_infer(&a, &[]);
        assert_eq!(r.code, 2, "{extra:?}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{extra:?}: expected {needle:?} in\n{}", r.stderr);
        r
    };
    // ONNX Runtime cannot build the session: an operator it does not know.
    let unknown = dir.path().join("unknown-op.onnx");
    fs::write(
        &unknown,
        model_bytes_ending(true, Dim::Named("N".into()), |g, logits, batch| {
            g.node("NoSuchOperator", &[logits], &["probs"], &[]);
            g.output_f32("probs", &[batch, Dim::Fixed(4)]);
        }),
    )
    .unwrap();
    fails(&unknown, &[], "cannot load the model");
    // ONNX Runtime fails on a batch: a reshape that only fits batches of a multiple of 3.
    let reshape = dir.path().join("reshape.onnx");
    fs::write(
        &reshape,
        model_bytes_ending(true, Dim::Named("N".into()), |g, logits, batch| {
            let shape = g.initializer_i64("shape", &[2], &[3, -1]);
            let probs = g.op("Sigmoid", &[logits], &[]);
            g.node("Reshape", &[&probs, &shape], &["probs"], &[]);
            g.output_f32("probs", &[batch, Dim::Fixed(4)]);
        }),
    )
    .unwrap();
    fails(&reshape, &[], "ONNX Runtime failed on the batch starting at img0000.png");
    // A library that is not ONNX Runtime.
    let not_a_lib = dir.path().join("libonnxruntime.so");
    fs::write(&not_a_lib, b"not a library").unwrap();
    fails(&model, &["--ort-lib", s(&not_a_lib)], "ONNX Runtime");
    // The disk fills under --out: a "full" device node (like /dev/full), made here.
    let full = dir.path().join("full");
    let made = Command::new("mknod").args([s(&full), "c", "1", "7"]).status().map(|st| st.success()).unwrap_or(false);
    if made {
        let r = fails(&model, &["--out", s(&full)], "No space left on device");
        assert!(!r.stderr.contains("tagged 60 images"), "{}", r.stderr);
    } else {
        eprintln!("NOTICE: cannot mknod (not root?): not testing a full disk");
    }
}

#[test]
fn a_closed_standard_output_ends_the_run_quietly() {
    // `cls-infer ... | head -1`: far more output (400 kB) than the pipe and cls-infer's buffer
    // hold, and the reader leaves after a line.
    let dir = tempfile::tempdir().unwrap();
    let imgs = many_images(dir.path(), 3000);
    let model = write_model(dir.path(), true);
    let mut child = Command::new(binary())
        .args(["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--batch", "4", "--threads", "2"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut first).unwrap();
    assert!(first.starts_with("{\"image\": \"img0000.png\""), "{first}");
    // The reader (and with it the pipe's only read end) is gone now.
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr_pipe, &mut text);
        text
    });
    let status = wait_or_kill(&mut child, RUN_LIMIT, "cls-infer with its standard output closed");
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(141), "{status:?}\n{stderr}");
    assert!(!stderr.contains("error") && !stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("tagged 3000 images"), "{stderr}");
}

#[test]
fn inputs_that_are_not_regular_files_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    fs::create_dir_all(&imgs).unwrap();
    solid([255, 0, 0], 8, 8).save(imgs.join("a.png")).unwrap();
    // A FIFO nobody writes (opening it would block) and an endless character device (reading it
    // would never end): made here, in the test's own folder.
    assert!(Command::new("mkfifo").arg(imgs.join("x.jpg")).status().unwrap().success());
    let zero = Command::new("mknod").args([s(&imgs.join("z.png")), "c", "1", "5"]).status();
    let zero_made = zero.map(|st| st.success()).unwrap_or(false);
    std::os::unix::fs::symlink("x.jpg", imgs.join("link-to-fifo.png")).unwrap();
    let model = write_model(dir.path(), true);
    let errs = dir.path().join("errors.jsonl");
    let r = cls_infer(
        &["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--errors", s(&errs), "--threads", "2"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows: Vec<Value> = r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let tagged: Vec<Value> = rows.iter().filter(|v| v.get("error").is_none()).cloned().collect();
    assert_eq!(images_of(&tagged), ["a.png"]);
    assert!(rows
        .iter()
        .filter(|v| v.get("error").is_some())
        .all(|v| v["error"].as_str().unwrap().contains("not a regular file")));
    let errors = read_jsonl(&errs);
    let mut skipped: Vec<&str> = errors.iter().map(|v| v["path"].as_str().unwrap()).collect();
    skipped.sort();
    let mut want = vec!["link-to-fifo.png", "x.jpg"];
    if zero_made {
        want.push("z.png");
    }
    assert_eq!(skipped, want, "{}", r.stderr);
    for e in &errors {
        assert!(e["reason"].as_str().unwrap().contains("not a regular file"), "{e}");
    }
}

#[test]
fn file_names_that_are_not_utf8_stay_apart_and_map_back() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    fs::create_dir_all(&imgs).unwrap();
    // "caf\xe9.png" (Latin-1) and "caf\u{fffd}.png" both printed as "caf\u{fffd}.png" when the
    // bytes were replaced; a backslash must not make an escape.
    let latin1 = imgs.join(OsStr::from_bytes(b"caf\xe9.png"));
    solid([255, 0, 0], 8, 8).save_with_format(&latin1, image::ImageFormat::Png).unwrap();
    solid([0, 255, 0], 8, 8).save(imgs.join("caf\u{fffd}.png")).unwrap();
    solid([0, 0, 255], 8, 8).save(imgs.join("back\\x41slash.png")).unwrap();
    let model = write_model(dir.path(), true);
    let out = dir.path().join("tags.jsonl");
    let r = cls_infer(&["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--out", s(&out)], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let tags = read_jsonl(&out);
    let names = images_of(&tags);
    assert_eq!(names, ["back\\\\x41slash.png", "caf\\xe9.png", "caf\u{fffd}.png"], "{names:?}");
    let label = |n: &str| tags.iter().find(|v| v["image"] == n).unwrap()["labels"][0].clone();
    assert_eq!(label("caf\\xe9.png"), "red");
    assert_eq!(label("caf\u{fffd}.png"), "green");
    // --from-tags maps the names back to the files: each matches its own ground truth.
    let gt = dir.path().join("gt.jsonl");
    fs::write(
        &gt,
        "{\"image\": \"imgs/caf\u{fffd}.png\", \"labels\": [\"green\"]}\n\
         {\"image\": \"imgs/back\\\\x41slash.png\", \"labels\": [\"blue\"]}\n",
    )
    .unwrap();
    let r =
        cls_infer(&["--model", s(&model), "--images", s(&imgs), "--ground-truth", s(&gt), "--from-tags", s(&out)], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("read 3 tagged images"), "{}", r.stderr);
    assert!(r.stderr.contains("1 tagged images have no ground truth"), "{}", r.stderr);
    assert!(!r.stderr.contains("were not tagged"), "{}", r.stderr);
}

#[test]
fn bad_ground_truth_and_outputs_fail_before_tagging() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = many_images(dir.path(), 30);
    let model = write_model(dir.path(), true);
    let base = ["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--batch", "1"];
    let before_tagging = |extra: &[&str], needle: &str| {
        let r = cls_infer(&[&base[..], extra].concat(), &[]);
        assert_eq!(r.code, 2, "{extra:?}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{extra:?}: expected {needle:?} in\n{}", r.stderr);
        assert!(r.stdout.is_empty() && !r.stderr.contains("images on CPU"), "{extra:?}: tagging began:\n{}", r.stderr);
    };
    // The same image twice, spelled two ways.
    let twice = dir.path().join("twice.jsonl");
    fs::write(
        &twice,
        "{\"image\": \"imgs/./img0001.png\", \"labels\": [\"blue\"]}\n{\"image\": \"imgs/img0001.png\", \"labels\": [\"red\"]}\n",
    )
    .unwrap();
    before_tagging(&["--ground-truth", s(&twice)], "twice");
    // Ground truth with none of the model's classes, or none of the folder's images.
    let other = dir.path().join("other.jsonl");
    fs::write(&other, "{\"image\": \"imgs/img0001.png\", \"labels\": [\"cat\"]}\n").unwrap();
    before_tagging(&["--ground-truth", s(&other)], "none of the model's classes");
    let elsewhere = dir.path().join("elsewhere.jsonl");
    fs::write(&elsewhere, "{\"image\": \"nowhere/x.png\", \"labels\": [\"red\"]}\n").unwrap();
    before_tagging(&["--ground-truth", s(&elsewhere)], "none of the images");
    // Outputs that cannot be written, or that would overwrite an input or each other.
    let gt = dir.path().join("gt.jsonl");
    fs::write(&gt, "{\"image\": \"imgs/img0001.png\", \"labels\": [\"blue\"]}\n").unwrap();
    let missing = dir.path().join("no/such/folder/m.json");
    before_tagging(&["--ground-truth", s(&gt), "--metrics-out", s(&missing)], "--metrics-out");
    before_tagging(&["--out", s(&missing)], "--out");
    before_tagging(&["--errors", s(&imgs)], "--errors");
    before_tagging(&["--ground-truth", s(&gt), "--out", s(&gt)], "--ground-truth");
    before_tagging(&["--out", s(&model)], "--model");
    let same = dir.path().join("same.jsonl");
    before_tagging(&["--out", s(&same), "--errors", s(&same)], "--errors");
    before_tagging(&["--ort-lib", s(&dir.path().join("nowhere/libonnxruntime.so"))], "--ort-lib");
    assert!(!same.exists());
    assert_eq!(leftover_temps(dir.path()), Vec::<PathBuf>::new());
}

#[test]
fn a_run_that_tags_nothing_fails() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    fs::create_dir_all(&imgs).unwrap();
    fs::write(imgs.join("a.jpg"), b"not a JPEG").unwrap();
    fs::write(imgs.join("b.png"), b"").unwrap();
    let model = write_model(dir.path(), true);
    let errs = dir.path().join("errors.jsonl");
    let r = cls_infer(&["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--errors", s(&errs)], &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("none of the 2 images could be read"), "{}", r.stderr);
    // What went wrong is still written down.
    assert_eq!(read_jsonl(&errs).len(), 2);
}

#[test]
fn sizes_from_the_model_and_flags_are_bounded() {
    // Each used to abort on a failed allocation (or take all the memory).
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    fs::create_dir_all(&imgs).unwrap();
    solid([255, 0, 0], 8, 8).save(imgs.join("a.png")).unwrap();
    let model = write_model(dir.path(), true);
    let check = exits_2_saying;
    check(&["--model", s(&model), "--images", s(&imgs), "--size", "16384x16384"], "--size");
    check(&["--model", s(&model), "--images", s(&imgs), "--size", "8192x8192"], "--size");
    let tall = dir.path().join("tall.onnx");
    let mut g = GraphBuilder::new("t");
    g.input_f32("images", &[Dim::Named("N".into()), Dim::Fixed(3), Dim::Fixed(4), Dim::Fixed(4)]);
    g.node("Identity", &["images"], &["probs"], &[]);
    g.output_f32("probs", &[Dim::Named("N".into()), Dim::Fixed(4)]);
    g.metadata("classes", serde_json::to_string(&CLASSES).unwrap());
    g.metadata("height", "100000");
    g.metadata("width", "224");
    fs::write(&tall, g.to_bytes()).unwrap();
    check(&["--model", s(&tall), "--images", s(&imgs)], "\"height\"");
    let huge_batch = dir.path().join("huge-batch.onnx");
    fs::write(&huge_batch, model_bytes_with_batch(true, Dim::Fixed(10_000_000))).unwrap();
    check(&["--model", s(&huge_batch), "--images", s(&imgs), "--device", "cpu"], "10000000");
    // A large fixed batch that fits is used as it is.
    let big_batch = dir.path().join("big-batch.onnx");
    fs::write(&big_batch, model_bytes_with_batch(true, Dim::Fixed(5000))).unwrap();
    let r = cls_infer(&["--model", s(&big_batch), "--images", s(&imgs), "--device", "cpu"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.lines().count(), 1);
}

/// The test model with per-class `thresholds` metadata (text as given, to test bad values too).
fn model_with_thresholds(dir: &Path, thresholds: &str) -> PathBuf {
    let p = dir.join("calibrated.onnx");
    let bytes = model_bytes_ending(true, Dim::Named("N".into()), |g, logits, batch| {
        g.node("Sigmoid", &[logits], &["probs"], &[]);
        g.output_f32("probs", &[batch, Dim::Fixed(4)]);
        g.metadata("thresholds", thresholds);
    });
    fs::write(&p, bytes).unwrap();
    p
}

/// Scores and targets of `out`'s rows that `gt` (a JSONL manifest under `imgs/`) labels.
fn scores_and_targets(out: &Path, gt: &Path) -> (Array2<f32>, Array2<i8>) {
    let truth: BTreeMap<String, Vec<String>> = fs::read_to_string(gt)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| {
            let image = v["image"].as_str().unwrap().trim_start_matches("imgs/").to_string();
            (image, serde_json::from_value(v["labels"].clone()).unwrap())
        })
        .collect();
    let rows: Vec<Value> =
        read_jsonl(out).into_iter().filter(|v| truth.contains_key(v["image"].as_str().unwrap())).collect();
    let mut scores = Array2::<f32>::zeros((rows.len(), CLASSES.len()));
    let mut targets = Array2::<i8>::from_elem((rows.len(), CLASSES.len()), -1);
    for (i, v) in rows.iter().enumerate() {
        for (c, name) in CLASSES.iter().enumerate() {
            scores[[i, c]] = v["scores"][name].as_f64().unwrap() as f32;
            if truth[v["image"].as_str().unwrap()].iter().any(|l| l == name) {
                targets[[i, c]] = 1;
            }
        }
    }
    (scores, targets)
}

/// The labels `row` should have at `thresholds`: best first, ties by class order.
fn labels_at(row: &Value, thresholds: &[f64]) -> Vec<String> {
    let p = |c: usize| row["scores"][CLASSES[c]].as_f64().unwrap() as f32;
    let mut chosen: Vec<usize> = (0..CLASSES.len()).filter(|&c| f64::from(p(c)) >= thresholds[c]).collect();
    chosen.sort_by(|&a, &b| p(b).total_cmp(&p(a)).then(a.cmp(&b)));
    chosen.into_iter().map(|c| CLASSES[c].to_string()).collect()
}

#[test]
fn per_class_thresholds_from_the_model_tag_and_score() {
    use cls_core::metrics::evaluate_with;
    let dir = tempfile::tempdir().unwrap();
    let gt = make_labelled(dir.path());
    let imgs = dir.path().join("imgs");
    let per = [0.3, 0.6, 0.9, 0.95];
    let model = model_with_thresholds(dir.path(), "[0.3, 0.6, 0.9, 0.95]");
    let (out, mfile) = (dir.path().join("out.jsonl"), dir.path().join("metrics.json"));
    let base = ["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--ground-truth", s(&gt)];
    let r = cls_infer(&[&base[..], &["--out", s(&out), "--metrics-out", s(&mfile)]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("thresholds: the model's per-class thresholds (0.3 to 0.95"), "{}", r.stderr);
    let rows = read_jsonl(&out);
    for row in &rows {
        assert_eq!(row["labels"], serde_json::json!(labels_at(row, &per)), "{row}");
    }
    // The metrics at the per-class thresholds, as cls-core computes them from the written scores.
    let json: Value = serde_json::from_str(&fs::read_to_string(&mfile).unwrap()).unwrap();
    let got: Metrics = serde_json::from_value(json.clone()).unwrap();
    let (scores, targets) = scores_and_targets(&out, &gt);
    let want = evaluate_with(scores.view(), targets.view(), 0.5, Some(&per)).unwrap();
    assert_eq!(got, want);
    assert_eq!(got.thresholds.as_deref(), Some(&per[..]));
    assert!(json["thresholds_source"].as_str().unwrap().contains("per-class"), "{json}");
    // Per class, keyed by name in class order: AP, precision, recall, F1, support, threshold.
    let per_class = json["per_class"].as_object().unwrap();
    assert_eq!(per_class.keys().collect::<Vec<_>>().len(), 4);
    let mut evaluated = 0;
    let (mut precision, mut recall) = (0.0, 0.0);
    for (c, name) in CLASSES.iter().enumerate() {
        let m = &per_class[*name];
        assert_eq!(m["threshold"].as_f64().unwrap(), per[c], "{name}: {m}");
        assert_eq!(m["AP"].as_f64(), got.per_class_ap[c], "{name}");
        let support = targets.column(c).iter().filter(|&&t| t == 1).count();
        assert_eq!(m["support"].as_u64().unwrap() as usize, support, "{name}");
        let (p, rc, f1) = (m["precision"].as_f64().unwrap(), m["recall"].as_f64().unwrap(), m["F1"].as_f64().unwrap());
        let hm = if p + rc == 0.0 { 0.0 } else { 2.0 * p * rc / (p + rc) };
        assert!((f1 - hm).abs() < 1e-12, "{name}: {m}");
        if support > 0 {
            evaluated += 1;
            precision += p;
            recall += rc;
        }
    }
    // CP and CR are the means over the evaluated classes; CF1 is their harmonic mean.
    assert!((precision / evaluated as f64 - got.cp).abs() < 1e-12);
    assert!((recall / evaluated as f64 - got.cr).abs() < 1e-12);

    // --threshold: one global threshold instead; the metrics carry no per-class thresholds.
    let r =
        cls_infer(&[&base[..], &["--out", s(&out), "--metrics-out", s(&mfile), "--threshold", "0.5"]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("thresholds: one global threshold 0.5 (--threshold)"), "{}", r.stderr);
    let got: Metrics = serde_json::from_str(&fs::read_to_string(&mfile).unwrap()).unwrap();
    assert_eq!(got, metrics_of(&out, &gt));
    assert_eq!(got.thresholds, None);
    for row in read_jsonl(&out) {
        assert_eq!(row["labels"], serde_json::json!(labels_at(&row, &[0.5; 4])), "{row}");
    }

    // --thresholds FILE overrides the classes it names; the rest keep the model's.
    let tfile = dir.path().join("t.json");
    fs::write(&tfile, r#"{"blue": 0.2, "bright": 0.05}"#).unwrap();
    let r = cls_infer(
        &[&base[..], &["--out", s(&out), "--metrics-out", s(&mfile), "--thresholds", s(&tfile)]].concat(),
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let over = [0.3, 0.6, 0.2, 0.05];
    let got: Metrics = serde_json::from_str(&fs::read_to_string(&mfile).unwrap()).unwrap();
    assert_eq!(got.thresholds.as_deref(), Some(&over[..]));
    for row in read_jsonl(&out) {
        assert_eq!(row["labels"], serde_json::json!(labels_at(&row, &over)), "{row}");
    }
    fs::write(&tfile, r#"{"cat": 0.2}"#).unwrap();
    exits_2_saying(&[&base[..], &["--thresholds", s(&tfile)]].concat(), "\"cat\" is not a class of the model");

    // --min-labels and --top-k bound the count, best first.
    let r = cls_infer(&[&base[..], &["--out", s(&out), "--threshold", "1", "--min-labels", "2"]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for row in read_jsonl(&out) {
        let mut best: Vec<usize> = (0..4).collect();
        let p = |c: usize| row["scores"][CLASSES[c]].as_f64().unwrap() as f32;
        best.sort_by(|&a, &b| p(b).total_cmp(&p(a)).then(a.cmp(&b)));
        let want: Vec<&str> = best[..2].iter().map(|&c| CLASSES[c]).collect();
        assert_eq!(row["labels"], serde_json::json!(want), "{row}");
    }
    let r = cls_infer(&[&base[..], &["--out", s(&out), "--threshold", "0", "--top-k", "3"]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(read_jsonl(&out).iter().all(|row| row["labels"].as_array().unwrap().len() == 3));
    exits_2_saying(
        &[&base[..], &["--min-labels", "3", "--top-k", "2"]].concat(),
        "--min-labels 3 is more than --top-k 2",
    );
    exits_2_saying(&[&base[..], &["--threshold", "1.5"]].concat(), "--threshold 1.5");

    // Thresholds that do not fit the model are refused before any work.
    for (bad, needle) in [("[0.5, 0.5]", "2 values for 4 classes"), ("[0.5, 0.5, 0.5, 7]", "class 3 is 7")] {
        let m = model_with_thresholds(dir.path(), bad);
        exits_2_saying(&["--model", s(&m), "--images", s(&imgs), "--device", "cpu"], needle);
    }
}

#[test]
fn open_images_and_tag_table_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    fs::create_dir_all(imgs.join("sub")).unwrap();
    // Images named by ImageID; one in a subfolder (matched by stem all the same).
    let colours =
        [("0a1b", [250, 10, 10]), ("0c2d", [10, 250, 10]), ("sub/0e3f", [10, 10, 250]), ("1f40", [250, 250, 10])];
    for (id, c) in colours {
        solid(c, 8, 8).save(imgs.join(format!("{id}.jpg"))).unwrap();
    }
    // The model is trained on display names (its classes); the labels file speaks MIDs.
    let desc = dir.path().join("oidv6-class-descriptions.csv");
    fs::write(&desc, "LabelName,DisplayName\n/m/r,red\n/m/g,green\n/m/b,blue\n/m/x,Cat\n").unwrap();
    let labels = dir.path().join("labels.csv");
    fs::write(
        &labels,
        "ImageID,Source,LabelName,Confidence\n\
         0a1b,verification,/m/r,1\n0a1b,verification,/m/g,0\n\
         0c2d,verification,/m/g,1\n0c2d,verification,/m/r,0\n\
         0e3f,verification,/m/b,1\n\
         1f40,verification,/m/r,1\n1f40,verification,/m/g,1\n1f40,verification,/m/b,0\n\
         9999,verification,/m/x,1\n",
    )
    .unwrap();
    let model = write_model(dir.path(), true);
    let (out, mfile) = (dir.path().join("out.jsonl"), dir.path().join("m.json"));
    let base = ["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--ground-truth", s(&labels)];
    exits_2_saying(&base, "--gt-classes");
    let r = cls_infer(
        &[&base[..], &["--gt-classes", s(&desc), "--out", s(&out), "--metrics-out", s(&mfile)]].concat(),
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("ImageID = file stem"), "{}", r.stderr);
    let got: Metrics = serde_json::from_str(&fs::read_to_string(&mfile).unwrap()).unwrap();
    // The expected targets: rows as listed, classes not verified for an image unknown (0), the
    // model's "bright" not in the ground truth (negative); the image 9999 has no file.
    let order: Vec<String> = images_of(&read_jsonl(&out));
    assert_eq!(order, ["0a1b.jpg", "0c2d.jpg", "1f40.jpg", "sub/0e3f.jpg"]);
    let rows: BTreeMap<&str, [i8; 4]> = [
        ("0a1b.jpg", [1, -1, 0, -1]),
        ("0c2d.jpg", [-1, 1, 0, -1]),
        ("1f40.jpg", [1, 1, -1, -1]),
        ("sub/0e3f.jpg", [0, 0, 1, -1]),
    ]
    .into();
    let tags = read_jsonl(&out);
    let mut scores = Array2::<f32>::zeros((4, 4));
    let mut targets = Array2::<i8>::zeros((4, 4));
    for (i, v) in tags.iter().enumerate() {
        for (c, name) in CLASSES.iter().enumerate() {
            scores[[i, c]] = v["scores"][name].as_f64().unwrap() as f32;
            targets[[i, c]] = rows[v["image"].as_str().unwrap()][c];
        }
    }
    assert_eq!(got, evaluate(scores.view(), targets.view(), 0.5).unwrap());
    assert_eq!(got.n_unknown, 4);
    assert!(r.stderr.contains("1 ground-truth entries have no image"), "{}", r.stderr);

    // A tag table (Kaggle layout), image names relative to --images: every positive listed.
    let table = dir.path().join("tags.csv");
    fs::write(&table, "image_name,tags\n0a1b.jpg,red\n0c2d.jpg,green\nsub/0e3f.jpg,blue\n1f40.jpg,red green\n")
        .unwrap();
    let r = cls_infer(
        &[
            "--model",
            s(&model),
            "--images",
            s(&imgs),
            "--device",
            "cpu",
            "--ground-truth",
            s(&table),
            "--metrics-out",
            s(&mfile),
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got: Metrics = serde_json::from_str(&fs::read_to_string(&mfile).unwrap()).unwrap();
    for (i, v) in tags.iter().enumerate() {
        for c in 0..4 {
            targets[[i, c]] = if rows[v["image"].as_str().unwrap()][c] == 1 { 1 } else { -1 };
        }
    }
    assert_eq!(got, evaluate(scores.view(), targets.view(), 0.5).unwrap());
    assert_eq!(got.n_unknown, 0);
}

#[path = "infer/forms.rs"]
mod forms;
#[path = "infer/trust.rs"]
mod trust;
