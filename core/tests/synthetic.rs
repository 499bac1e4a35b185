//! The built-in synthetic dataset: determinism, label statistics, files, idempotence.

use cls_core::preprocess::{decode_file, DEFAULT_MAX_PIXELS};
use cls_core::synthetic::{generate, sample, SyntheticSpec, CLASSES};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

fn small(seed: u64) -> SyntheticSpec {
    SyntheticSpec { n_train: 40, n_test: 12, size: 32, seed }
}

/// Every file under `dir` (relative path → bytes).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// (image path, label names) of each manifest line.
fn read_manifest(path: &Path) -> Vec<(String, Vec<String>)> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let labels = v["labels"].as_array().unwrap();
            let labels = labels.iter().map(|x| x.as_str().unwrap().to_string()).collect();
            (v["image"].as_str().unwrap().to_string(), labels)
        })
        .collect()
}

#[test]
fn same_seed_gives_identical_bytes() {
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    generate(a.path(), &small(3)).unwrap();
    generate(b.path(), &small(3)).unwrap();
    generate(c.path(), &small(4)).unwrap();
    let (sa, sb, sc) = (snapshot(a.path()), snapshot(b.path()), snapshot(c.path()));
    // 52 images + classes.txt + two manifests + the stamp.
    assert_eq!(sa.len(), 52 + 4);
    assert_eq!(sa, sb);
    assert_eq!(sa.keys().collect::<Vec<_>>(), sc.keys().collect::<Vec<_>>());
    assert_ne!(sa["train.jsonl"], sc["train.jsonl"]);
    assert_ne!(sa["images/train/00001.jpg"], sc["images/train/00001.jpg"]);
    // An image does not depend on how many come before or after it.
    let bigger = SyntheticSpec { n_train: 90, ..small(3) };
    assert_eq!(sample(&bigger, 7), sample(&small(3), 7));
}

#[test]
fn manifests_classes_and_images_are_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let spec = small(0);
    let train = generate(dir.path(), &spec).unwrap();
    assert_eq!(train, dir.path().join("train.jsonl"));
    let classes = fs::read_to_string(dir.path().join("classes.txt")).unwrap();
    assert_eq!(classes.lines().collect::<Vec<_>>(), CLASSES);
    let tr = read_manifest(&train);
    let te = read_manifest(&dir.path().join("test.jsonl"));
    assert_eq!((tr.len(), te.len()), (40, 12));
    assert_eq!(tr[0].0, "images/train/00001.jpg");
    assert_eq!(te[0].0, "images/test/00041.jpg");
    for (i, (img, labels)) in tr.iter().chain(&te).enumerate() {
        let rgb = decode_file(dir.path().join(img), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(rgb.dimensions(), (32, 32));
        // The manifest says what sample() drew, in class order.
        let (_, idx) = sample(&spec, i);
        let names: Vec<String> = idx.iter().map(|&c| CLASSES[c].to_string()).collect();
        assert_eq!(labels, &names);
    }
}

#[test]
fn label_statistics_look_like_a_multi_label_dataset() {
    let spec = SyntheticSpec { n_train: 3000, n_test: 0, size: 16, seed: 1 };
    let sets: Vec<Vec<usize>> = (0..spec.n_train).map(|i| sample(&spec, i).1).collect();
    let mut freq = [0usize; 12];
    for s in &sets {
        assert!((1..=4).contains(&s.len()), "{s:?}");
        assert!(s.windows(2).all(|w| w[0] < w[1]), "labels must be sorted and distinct: {s:?}");
        for &c in s {
            freq[c] += 1;
        }
    }
    let mean = sets.iter().map(Vec::len).sum::<usize>() as f64 / sets.len() as f64;
    assert!((2.0..2.4).contains(&mean), "mean labels per image {mean}");
    assert!(freq.iter().all(|&f| f > 100), "every class used often: {freq:?}");
    // Co-occurring pair red_disc + yellow_ring: far more often together than independence says.
    let n = sets.len() as f64;
    let p = |c: usize| freq[c] as f64 / n;
    let both = sets.iter().filter(|s| s.contains(&0) && s.contains(&6)).count() as f64 / n;
    assert!(both > 2.0 * p(0) * p(6), "P(both) {both} vs {}", p(0) * p(6));
}

#[test]
fn objects_are_visible_in_their_colour() {
    // Each labelled class's base hue must show up: count strongly red pixels in images
    // labelled with a red class, against images with no red class.
    let spec = SyntheticSpec { n_train: 200, n_test: 0, size: 48, seed: 2 };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..spec.n_train {
        let (img, labels) = sample(&spec, i);
        let red = img.pixels().filter(|p| p[0] > 150 && p[1] < 90 && p[2] < 90).count();
        if labels.contains(&0) || labels.contains(&1) {
            with.push(red);
        } else {
            without.push(red);
        }
    }
    assert!(with.iter().all(|&r| r >= 20), "a red object must cover some pixels: {with:?}");
    assert!(without.iter().all(|&r| r < 5), "no red without a red class: {without:?}");
}

#[test]
fn generation_is_idempotent_and_redone_for_another_spec() {
    let dir = tempfile::tempdir().unwrap();
    let first = small(5);
    generate(dir.path(), &first).unwrap();
    let probe = dir.path().join("images/train/00003.jpg");
    let original = fs::read(&probe).unwrap();

    // Same spec: returns at once without touching anything (the deleted file stays deleted).
    fs::remove_file(&probe).unwrap();
    generate(dir.path(), &first).unwrap();
    assert!(!probe.exists());

    // Another spec: everything is rewritten.
    generate(dir.path(), &small(6)).unwrap();
    assert!(probe.exists());
    assert_ne!(fs::read(&probe).unwrap(), original);

    // A stamp from an interrupted or corrupted run is not trusted.
    fs::write(dir.path().join(".complete"), "garbage").unwrap();
    fs::remove_file(&probe).unwrap();
    generate(dir.path(), &small(6)).unwrap();
    assert!(probe.exists());
}

#[test]
fn tiny_sizes_are_refused_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = generate(dir.path(), &SyntheticSpec { size: 4, ..small(0) }).unwrap_err();
    assert!(err.to_string().contains("size 4"), "{err}");
}
