//! Every reader on small fixtures written to temporary folders: valid input (classes, ids,
//! targets) and malformed input (the error names the file and the line or entry).

use cls_core::labels::{NEG, POS, UNK};
use cls_core::readers::{
    open, read_coco, read_csv, read_jsonl, read_nuswide, read_observed_npy, read_observed_txt, read_tag_table,
    read_voc, DataError, LabelColumns, ReadOptions, VOC_CLASSES,
};
use ndarray::{array, Array2};
use std::fs;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// Write `content` to `dir/rel`, creating folders; returns the full path.
fn write(dir: &Path, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, content).unwrap();
    path
}

/// The error message of a result that must be an error.
fn err_text<T>(result: Result<T, DataError>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "error {text:?} does not contain {part:?}");
    }
}

// ---------------------------------------------------------------- JSONL

fn corel_like(dir: &Path) -> PathBuf {
    for img in ["a.jpg", "b.jpg", "c.jpg"] {
        write(dir, &format!("imgs/{img}"), b"x");
    }
    write(
        dir,
        "train.jsonl",
        "{\"image\": \"imgs/a.jpg\", \"labels\": [\"sky\", \"city\"]}\n\n\
         {\"image\": \"imgs/b.jpg\", \"labels\": [], \"extra\": 1}\n\
         {\"image\": \"imgs/c.jpg\", \"labels\": [\"tree\"]}\n",
    )
}

#[test]
fn jsonl_uses_classes_txt_next_to_manifest() {
    let dir = TempDir::new().unwrap();
    let manifest = corel_like(dir.path());
    write(dir.path(), "classes.txt", "tree\nsky\ncity\n");
    let ds = read_jsonl(&manifest, None, true).unwrap();
    assert_eq!(ds.classes.names(), ["tree", "sky", "city"]);
    assert_eq!(
        ds.samples.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["imgs/a.jpg", "imgs/b.jpg", "imgs/c.jpg"]
    );
    assert_eq!(ds.samples[1].path, dir.path().join("imgs/b.jpg"));
    assert_eq!(ds.targets, array![[NEG, POS, POS], [NEG, NEG, NEG], [POS, NEG, NEG]]);
    assert!(ds.features.is_none());
    assert!(ds.name.ends_with("-train"), "{}", ds.name);
}

#[test]
fn jsonl_without_class_list_takes_sorted_union_and_explicit_list_wins() {
    let dir = TempDir::new().unwrap();
    let manifest = corel_like(dir.path());
    let ds = read_jsonl(&manifest, None, false).unwrap();
    assert_eq!(ds.classes.names(), ["city", "sky", "tree"]);
    assert_eq!(ds.targets, array![[POS, POS, NEG], [NEG, NEG, NEG], [NEG, NEG, POS]]);

    write(dir.path(), "classes.txt", "tree\nsky\ncity\n");
    let list = write(dir.path(), "other/list.txt", "city\ntree\nsky\nsun\n");
    let ds = read_jsonl(&manifest, Some(&list), false).unwrap();
    assert_eq!(ds.classes.names(), ["city", "tree", "sky", "sun"]);
    assert_eq!(ds.targets.row(0).to_vec(), [POS, NEG, POS, NEG]);
}

#[test]
fn jsonl_errors_name_file_and_line() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "imgs/a.jpg", b"x");
    write(dir.path(), "classes.txt", "sky\n");
    let cases = [
        ("unknown.jsonl", "{\"image\": \"imgs/a.jpg\", \"labels\": [\"sky\"]}\n\n{\"image\": \"imgs/b.jpg\", \"labels\": [\"zebra\"]}\n", vec!["unknown.jsonl:3", "unknown class 'zebra'"]),
        ("dup.jsonl", "{\"image\": \"imgs/a.jpg\", \"labels\": []}\n{\"image\": \"imgs/a.jpg\", \"labels\": []}\n", vec!["dup.jsonl:2", "duplicate image 'imgs/a.jpg'", "line 1"]),
        ("json.jsonl", "{\"image\": \"imgs/a.jpg\", \"labels\": []}\n{\"image\": \"imgs/a.jpg\", \n", vec!["json.jsonl:2:", "bad JSON"]),
        ("field.jsonl", "{\"image\": \"imgs/a.jpg\"}\n", vec!["field.jsonl:1", "missing field `labels`"]),
        ("empty.jsonl", "\n  \n", vec!["empty.jsonl", "empty"]),
    ];
    for (name, content, expected) in cases {
        let path = write(dir.path(), name, content);
        assert_contains(&err_text(read_jsonl(&path, None, false)), &expected);
    }
    let missing = write(
        dir.path(),
        "missing.jsonl",
        "{\"image\": \"imgs/a.jpg\", \"labels\": []}\n{\"image\": \"imgs/nope.jpg\", \"labels\": []}\n",
    );
    assert_contains(&err_text(read_jsonl(&missing, None, true)), &["missing.jsonl:2", "nope.jpg", "does not exist"]);
    assert!(read_jsonl(&missing, None, false).is_ok());
    let dup_classes = write(dir.path(), "dupclasses.txt", "sky\nsea\nsky\n");
    assert_contains(&err_text(read_jsonl(&missing, Some(&dup_classes), false)), &["dupclasses.txt:3", "twice"]);
    assert_contains(&err_text(read_jsonl(&dir.path().join("absent.jsonl"), None, false)), &["absent.jsonl"]);
}

// ---------------------------------------------------------------- COCO

const COCO: &str = r#"{
  "info": {"year": 2017}, "licenses": [{"id": 1, "name": "x"}],
  "images": [
    {"id": 42, "file_name": "000042.jpg", "width": 640, "height": 480},
    {"id": 7, "file_name": "000007.jpg", "width": 640, "height": 480},
    {"id": 9, "file_name": "000009.jpg", "width": 640, "height": 480}
  ],
  "annotations": [
    {"id": 1, "image_id": 42, "category_id": 90, "segmentation": [[1.0, 2.0, 3.0, 4.0]], "bbox": [0, 0, 1, 1], "area": 1.0, "iscrowd": 0},
    {"id": 2, "image_id": 42, "category_id": 1, "segmentation": {"counts": [1, 2], "size": [2, 2]}, "bbox": [0, 0, 1, 1], "area": 1.0, "iscrowd": 1},
    {"id": 3, "image_id": 9, "category_id": 3, "segmentation": [], "bbox": [0, 0, 1, 1], "area": 1.0, "iscrowd": 0},
    {"id": 4, "image_id": 9, "category_id": 3, "segmentation": [], "bbox": [0, 0, 1, 1], "area": 1.0, "iscrowd": 0}
  ],
  "categories": [
    {"supercategory": "indoor", "id": 90, "name": "toothbrush"},
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 3, "name": "car"}
  ]
}"#;

#[test]
fn coco_maps_sparse_category_ids_and_drops_unannotated_images() {
    let dir = TempDir::new().unwrap();
    let json = write(dir.path(), "annotations/instances_val2017.json", COCO);
    let root = dir.path().join("val2017");
    let ds = read_coco(&json, &root, false, false).unwrap();
    assert_eq!(ds.classes.names(), ["person", "car", "toothbrush"]);
    assert_eq!(ds.samples.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["000042.jpg", "000009.jpg"]);
    assert_eq!(ds.samples[0].path, root.join("000042.jpg"));
    assert_eq!(ds.targets, array![[POS, NEG, POS], [NEG, POS, NEG]]);
    assert_eq!(ds.name, "coco-val2017");

    let all = read_coco(&json, &root, true, false).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all.samples[1].id, "000007.jpg");
    assert_eq!(all.targets.row(1).to_vec(), [NEG, NEG, NEG]);
}

#[test]
fn coco_errors_name_the_entry() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("imgs");
    let bad_cat = write(
        dir.path(),
        "badcat.json",
        COCO.replace("\"image_id\": 42, \"category_id\": 1", "\"image_id\": 42, \"category_id\": 2"),
    );
    assert_contains(
        &err_text(read_coco(&bad_cat, &root, false, false)),
        &["badcat.json", "annotations[1]", "unknown category_id 2"],
    );
    let bad_img = write(dir.path(), "badimg.json", COCO.replace("\"image_id\": 9, \"category_id\": 3, \"segmentation\": [], \"bbox\": [0, 0, 1, 1], \"area\": 1.0, \"iscrowd\": 0},", "\"image_id\": 5, \"category_id\": 3},"));
    assert_contains(
        &err_text(read_coco(&bad_img, &root, false, false)),
        &["badimg.json", "annotations[2]", "unknown image_id 5"],
    );
    let dup = write(
        dir.path(),
        "dup.json",
        COCO.replace("\"id\": 9, \"file_name\": \"000009.jpg\"", "\"id\": 9, \"file_name\": \"000042.jpg\""),
    );
    assert_contains(
        &err_text(read_coco(&dup, &root, false, false)),
        &["dup.json", "images[2]", "duplicate image '000042.jpg'"],
    );
    let broken =
        write(dir.path(), "broken.json", "{\n  \"images\": [\n    {\"id\": 1,, \"file_name\": \"a.jpg\"}\n  ]\n}");
    assert_contains(&err_text(read_coco(&broken, &root, false, false)), &["broken.json:3:", "bad JSON"]);
    let json = write(dir.path(), "ok.json", COCO);
    assert_contains(
        &err_text(read_coco(&json, &root, false, true)),
        &["ok.json", "images[0]", "000042.jpg", "does not exist"],
    );
    assert_contains(&err_text(open(&json, &ReadOptions::default())), &["ok.json", "--images"]);
}

// ---------------------------------------------------------------- VOC

/// A VOC2007 devkit with three images; `000002` is "difficult" for dog.
fn voc_devkit(dir: &Path) -> PathBuf {
    let year = dir.join("VOCdevkit").join("VOC2007");
    let ids = ["000001", "000002", "000005"];
    write(&year, "ImageSets/Main/trainval.txt", "000001\n000002\n000005\n");
    for id in ids {
        write(&year, &format!("JPEGImages/{id}.jpg"), b"x");
    }
    for class in VOC_CLASSES {
        let labels: [&str; 3] = match class {
            "dog" => ["1", " 0", "-1"],
            "person" => ["1", "1", "-1"],
            "tvmonitor" => ["-1", "-1", "1"],
            _ => ["-1", "-1", "-1"],
        };
        let text: String = ids.iter().zip(labels).map(|(id, l)| format!("{id} {l}\n")).collect();
        write(&year, &format!("ImageSets/Main/{class}_trainval.txt"), text);
    }
    year
}

#[test]
fn voc_reads_devkit_with_difficult_as_unknown() {
    let dir = TempDir::new().unwrap();
    let year = voc_devkit(dir.path());
    for root in [year.clone(), dir.path().join("VOCdevkit")] {
        let ds = read_voc(&root, "trainval", true).unwrap();
        assert_eq!(ds.classes.names(), VOC_CLASSES);
        assert_eq!(ds.samples.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["000001", "000002", "000005"]);
        assert_eq!(ds.samples[2].path, year.join("JPEGImages/000005.jpg"));
        assert_eq!(ds.name, "voc2007-trainval");
        let (dog, person, tv) = (11, 14, 19);
        let mut expected = Array2::from_elem((3, 20), NEG);
        expected[[0, dog]] = POS;
        expected[[1, dog]] = UNK;
        expected[[0, person]] = POS;
        expected[[1, person]] = POS;
        expected[[2, tv]] = POS;
        assert_eq!(ds.targets, expected);
    }
}

#[test]
fn voc_errors_name_file_and_line() {
    let dir = TempDir::new().unwrap();
    let year = voc_devkit(dir.path());
    let cat = year.join("ImageSets/Main/cat_trainval.txt");
    fs::write(&cat, "000001 -1\n000002 2\n000005 -1\n").unwrap();
    assert_contains(&err_text(read_voc(&year, "trainval", false)), &["cat_trainval.txt:2:2", "'2'"]);
    fs::write(&cat, "000001 -1\n000005 -1\n").unwrap();
    assert_contains(&err_text(read_voc(&year, "trainval", false)), &["cat_trainval.txt", "000002"]);
    fs::write(&cat, "000001 -1\n000002 -1\n000005 -1\n000009 1\n").unwrap();
    assert_contains(&err_text(read_voc(&year, "trainval", false)), &["cat_trainval.txt:4", "'000009'"]);
    fs::write(&cat, "000001 -1 x\n").unwrap();
    assert_contains(
        &err_text(read_voc(&year, "trainval", false)),
        &["cat_trainval.txt:1", "expected 2 columns, found 3"],
    );
    assert_contains(&err_text(read_voc(&year, "test", false)), &["test.txt"]);
    fs::remove_file(year.join("JPEGImages/000002.jpg")).unwrap();
    assert_contains(&err_text(read_voc(&year, "trainval", true)), &["trainval.txt:2", "000002.jpg"]);
    assert_contains(&err_text(read_voc(dir.path(), "trainval", false)), &["not a VOC devkit"]);
}

// ---------------------------------------------------------------- NUS-WIDE

fn nuswide(dir: &Path) -> PathBuf {
    let root = dir.join("nus");
    write(&root, "Concepts81.txt", "animal\r\nsky\r\nwater\r\n");
    write(
        &root,
        "ImageList/TrainImagelist.txt",
        "actor\\0001_11.jpg\r\nC:\\ImageData\\Flickr\\beach\\0002_22.jpg\r\nzoo\\0003_33.jpg\r\n",
    );
    write(&root, "Flickr/actor/0001_11.jpg", b"x");
    write(&root, "images/0002_22.jpg", b"x");
    write(&root, "zoo/0003_33.jpg", b"x");
    write(&root, "Groundtruth/TrainTestLabels/Labels_animal_Train.txt", "1\r\n0\r\n1\r\n");
    write(&root, "Groundtruth/TrainTestLabels/Labels_sky_Train.txt", "0\r\n1\r\n0\r\n");
    write(&root, "Groundtruth/TrainTestLabels/Labels_water_Train.txt", "0\r\n1\r\n0\r\n");
    root
}

#[test]
fn nuswide_resolves_backslash_paths() {
    let dir = TempDir::new().unwrap();
    let root = nuswide(dir.path());
    let ds = read_nuswide(&root, "train", true).unwrap();
    assert_eq!(ds.classes.names(), ["animal", "sky", "water"]);
    let ids: Vec<&str> = ds.samples.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["actor/0001_11.jpg", "beach/0002_22.jpg", "zoo/0003_33.jpg"]);
    assert_eq!(ds.samples[0].path, root.join("Flickr/actor/0001_11.jpg"));
    assert_eq!(ds.samples[1].path, root.join("images/0002_22.jpg"));
    assert_eq!(ds.samples[2].path, root.join("zoo/0003_33.jpg"));
    assert_eq!(ds.targets, array![[POS, NEG, NEG], [NEG, POS, POS], [POS, NEG, NEG]]);
    assert_eq!(ds.name, "nuswide-train");

    let unchecked = read_nuswide(&root, "train", false).unwrap();
    assert_eq!(unchecked.samples[1].path, root.join("Flickr/beach/0002_22.jpg"));
}

#[test]
fn nuswide_errors_name_file_and_line() {
    let dir = TempDir::new().unwrap();
    let root = nuswide(dir.path());
    let sky = root.join("Groundtruth/TrainTestLabels/Labels_sky_Train.txt");
    fs::write(&sky, "0\n1\nyes\n").unwrap();
    assert_contains(&err_text(read_nuswide(&root, "train", false)), &["Labels_sky_Train.txt:3", "'yes'"]);
    fs::write(&sky, "0\n1\n").unwrap();
    assert_contains(&err_text(read_nuswide(&root, "train", false)), &["Labels_sky_Train.txt", "2 labels", "3 images"]);
    fs::remove_file(root.join("zoo/0003_33.jpg")).unwrap();
    assert_contains(&err_text(read_nuswide(&root, "train", true)), &["TrainImagelist.txt:3", "0003_33.jpg"]);
    assert_contains(&err_text(read_nuswide(&root, "test", false)), &["TestImagelist.txt"]);
    assert_contains(&err_text(read_nuswide(&root, "val", false)), &["'train' or 'test'"]);
}

// ---------------------------------------------------------------- CSV

#[test]
fn csv_splits_features_and_labels() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "scene/train.csv", "f0,f1,Beach,Urban\n0.5,-1e-2,1,0\n\n2,3,0,1\n");
    let ds = read_csv(&path, LabelColumns::Last(2)).unwrap();
    assert_eq!(ds.classes.names(), ["Beach", "Urban"]);
    assert_eq!(ds.features.as_ref().unwrap(), array![[0.5f32, -0.01], [2.0, 3.0]]);
    assert_eq!(ds.targets, array![[POS, NEG], [NEG, POS]]);
    assert_eq!(ds.samples.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["0", "1"]);
    assert!(ds.samples[0].path.as_os_str().is_empty());
    assert_eq!(ds.name, "scene-train");

    let middle = write(dir.path(), "mid.csv", "f0,Beach,f1,Urban\n0.5,1,7,0\n2,0,3,1\n");
    let by_name = read_csv(&middle, LabelColumns::Names(vec!["Urban".into(), "Beach".into()])).unwrap();
    assert_eq!(by_name.classes.names(), ["Urban", "Beach"]);
    assert_eq!(by_name.features.unwrap(), array![[0.5f32, 7.0], [2.0, 3.0]]);
    assert_eq!(by_name.targets, array![[NEG, POS], [POS, NEG]]);
    assert_contains(&err_text(read_csv(&path, LabelColumns::Names(vec!["Sky".into()]))), &["train.csv:1", "'Sky'"]);

    // RFC 4180 quoting (a class name holding a comma and a quote), CRLF line ends and a BOM.
    let quoted = write(dir.path(), "q.csv", "\u{feff}f0,\"Beach, sandy\",\"say \"\"hi\"\"\"\r\n 1.5 ,1,\"0\"\r\n");
    let q = read_csv(&quoted, LabelColumns::Last(2)).unwrap();
    assert_eq!(q.classes.names(), ["Beach, sandy", "say \"hi\""]);
    assert_eq!(q.features.unwrap(), array![[1.5f32]]);
    assert_eq!(q.targets, array![[POS, NEG]]);
    assert_contains(&err_text(read_csv(&path, LabelColumns::Last(4))), &["train.csv", "last 4"]);
}

#[test]
fn csv_errors_name_file_line_and_column() {
    let dir = TempDir::new().unwrap();
    let cases = [
        ("nan.csv", "a,b,l\n1,2,0\n1,x,1\n", vec!["nan.csv:3:2", "'x'", "not a number"]),
        ("cols.csv", "a,b,l\n1,2\n", vec!["cols.csv:2", "expected 3 columns, found 2"]),
        ("label.csv", "a,b,l\n1,2,0\n\n1,2,2\n", vec!["label.csv:4:3", "not 0 or 1"]),
        ("inf.csv", "a,b,l\n1,inf,0\n", vec!["inf.csv:2:2", "not finite"]),
        ("header.csv", "a,b,l\n", vec!["header.csv", "empty"]),
        ("blank.csv", "", vec!["blank.csv", "empty"]),
    ];
    for (name, content, expected) in cases {
        let path = write(dir.path(), name, content);
        assert_contains(&err_text(read_csv(&path, LabelColumns::Last(1))), &expected);
    }
    let path = dir.path().join("cols.csv");
    assert_contains(&err_text(open(&path, &ReadOptions::default())), &["cols.csv", "--label-columns"]);
}

// ---------------------------------------------------------------- open()

#[test]
fn open_detects_each_format() {
    let dir = TempDir::new().unwrap();
    let manifest = corel_like(dir.path());
    let opts = ReadOptions { check_images: false, ..ReadOptions::default() };
    assert_eq!(open(&manifest, &opts).unwrap().num_classes(), 3);

    let csv = write(dir.path(), "t.csv", "a,l1,l2\n1,0,1\n");
    let opts_csv = ReadOptions { label_columns: Some(LabelColumns::Last(2)), ..opts.clone() };
    assert_eq!(open(&csv, &opts_csv).unwrap().features.unwrap().shape(), [1, 1]);

    let json = write(dir.path(), "instances_train2014.json", COCO);
    let opts_coco = ReadOptions { images: Some(dir.path().join("train2014")), keep_empty: true, ..opts.clone() };
    let coco = open(&json, &opts_coco).unwrap();
    assert_eq!((coco.len(), coco.name.as_str()), (3, "coco-train2014"));

    voc_devkit(dir.path());
    let opts_voc = ReadOptions { split: "trainval".into(), ..opts.clone() };
    assert_eq!(open(&dir.path().join("VOCdevkit"), &opts_voc).unwrap().name, "voc2007-trainval");

    let nus = nuswide(dir.path());
    assert_eq!(open(&nus, &opts).unwrap().name, "nuswide-train");

    let other = write(dir.path(), "data.parquet", b"x");
    assert_contains(&err_text(open(&other, &opts)), &["data.parquet", "supported", "jsonl", "VOC", "NUS-WIDE"]);
    assert_contains(&err_text(open(&dir.path().join("imgs"), &opts)), &["imgs", "supported"]);
    assert_contains(&err_text(open(&dir.path().join("nothing.jsonl"), &opts)), &["nothing.jsonl"]);
}

// ---------------------------------------------------------------- observed labels

/// A version-1 `.npy` file: magic, header padded to a multiple of 64 bytes, then `data`.
fn npy_bytes(descr: &str, shape: &str, fortran: bool, data: &[u8]) -> Vec<u8> {
    let order = if fortran { "True" } else { "False" };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

#[test]
fn npy_reads_f4_and_i8_matrices() {
    let dir = TempDir::new().unwrap();
    let values = [1.0f32, 0.0, 0.0, 0.0, 1.0, -1.0];
    let f4: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = write(dir.path(), "obs_f4.npy", npy_bytes("<f4", "(2, 3)", false, &f4));
    assert_eq!(read_observed_npy(&path, 2, 3).unwrap(), array![[POS, UNK, UNK], [UNK, POS, NEG]]);

    let i8s: Vec<u8> = [0i64, 1, 1, 0, 0, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = write(dir.path(), "obs_i8.npy", npy_bytes("<i8", "(3, 2)", false, &i8s));
    assert_eq!(read_observed_npy(&path, 3, 2).unwrap(), array![[UNK, POS], [POS, UNK], [UNK, POS]]);

    let path = write(dir.path(), "obs_u1.npy", npy_bytes("|u1", "(1, 2)", false, &[1, 0]));
    assert_eq!(read_observed_npy(&path, 1, 2).unwrap(), array![[POS, UNK]]);

    // Big-endian and Fortran order (column by column) read as numpy reads them.
    let be: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    let path = write(dir.path(), "obs_be.npy", npy_bytes(">f4", "(2, 3)", false, &be));
    assert_eq!(read_observed_npy(&path, 2, 3).unwrap(), array![[POS, UNK, UNK], [UNK, POS, NEG]]);
    let path = write(dir.path(), "obs_f.npy", npy_bytes("<f4", "(2, 3)", true, &f4));
    assert_eq!(read_observed_npy(&path, 2, 3).unwrap(), array![[POS, UNK, POS], [UNK, UNK, NEG]]);
    let path = write(dir.path(), "obs_b1.npy", npy_bytes("|b1", "(1, 2)", false, &[0, 1]));
    assert_eq!(read_observed_npy(&path, 1, 2).unwrap(), array![[UNK, POS]]);
}

#[test]
fn npy_rejects_bad_files() {
    let dir = TempDir::new().unwrap();
    let f4 = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let cases = [
        ("shape.npy", npy_bytes("<f4", "(2, 3)", false, &f4(&[0.0; 6])), vec!["shape.npy", "shape [2, 3]", "3 images"]),
        (
            "half.npy",
            npy_bytes("<f4", "(3, 2)", false, &f4(&[0.0, 0.5, 0.0, 0.0, 0.0, 0.0])),
            vec!["half.npy", "row 0, class 1", "0.5"],
        ),
        ("short.npy", npy_bytes("<f4", "(3, 2)", false, &f4(&[0.0; 5])), vec!["short.npy", "truncated"]),
        ("complex.npy", npy_bytes("<c8", "(3, 2)", false, &[0; 48]), vec!["complex.npy", "unsupported dtype '<c8'"]),
        ("magic.npy", b"PK\x03\x04 not numpy".to_vec(), vec!["magic.npy", "magic"]),
    ];
    for (name, bytes, expected) in cases {
        let path = write(dir.path(), name, bytes);
        assert_contains(&err_text(read_observed_npy(&path, 3, 2)), &expected);
    }
}

#[test]
fn observed_txt_matches_images_by_id_file_name_or_stem() {
    let dir = TempDir::new().unwrap();
    let manifest = corel_like(dir.path());
    let ds = read_jsonl(&manifest, None, false).unwrap(); // classes city, sky, tree
    let path = write(dir.path(), "obs.txt", "imgs/a.jpg,0 2\n\nb.jpg,\nc,1\n");
    assert_eq!(read_observed_txt(&path, &ds).unwrap(), array![[POS, UNK, POS], [UNK, UNK, UNK], [UNK, POS, UNK]]);

    let cases = [
        ("unknown.txt", "imgs/a.jpg,0\nzebra.jpg,1\n", vec!["unknown.txt:2", "'zebra.jpg'", "not in the dataset"]),
        ("range.txt", "a.jpg,0 3\n", vec!["range.txt:1", "out of range", "3 classes"]),
        ("nan.txt", "a.jpg,0 x\n", vec!["nan.txt:1", "'x'"]),
        ("dup.txt", "a.jpg,0\n\nimgs/a.jpg,1\n", vec!["dup.txt:3", "line 1"]),
        ("comma.txt", "a.jpg 0 1\n", vec!["comma.txt:1", "name,i j k"]),
        ("empty.txt", "\n", vec!["empty.txt", "empty"]),
    ];
    for (name, content, expected) in cases {
        let path = write(dir.path(), name, content);
        assert_contains(&err_text(read_observed_txt(&path, &ds)), &expected);
    }
}

/// One image file under two spellings (issue 26): `a.jpg` and `./a.jpg`, or a folder and a
/// symbolic link to it, is refused by the JSONL and tag-table readers with both lines named, and
/// by `open` for the other formats.
#[test]
fn one_file_under_two_spellings_is_refused_with_both_lines() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "imgs/a.jpg", b"x");
    write(dir.path(), "imgs/b.jpg", b"y");
    std::os::unix::fs::symlink(dir.path().join("imgs"), dir.path().join("linked")).unwrap();
    write(dir.path(), "classes.txt", "sky\n");
    let line = |image: &str| format!("{{\"image\": \"{image}\", \"labels\": [\"sky\"]}}\n");
    for (name, second) in
        [("dot.jsonl", "./imgs/a.jpg"), ("up.jsonl", "imgs/../imgs/a.jpg"), ("link.jsonl", "linked/a.jpg")]
    {
        let path = write(dir.path(), name, format!("{}{}{}", line("imgs/a.jpg"), line("imgs/b.jpg"), line(second)));
        let want = [
            format!("{name}:3"),
            format!("duplicate image '{second}'"),
            "line 1 as 'imgs/a.jpg', the same file".into(),
        ];
        assert_contains(&err_text(read_jsonl(&path, None, true)), &want.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let fine = write(dir.path(), "fine.jsonl", format!("{}{}", line("imgs/a.jpg"), line("linked/b.jpg")));
    assert_eq!(read_jsonl(&fine, None, true).unwrap().len(), 2);

    let opts = ReadOptions::default();
    let table = write(dir.path(), "tags.csv", "image,tags\nimgs/a.jpg,sky\nimgs/b.jpg,sky\nlinked/a.jpg,sky\n");
    assert_contains(
        &err_text(read_tag_table(&table, &opts)),
        &["tags.csv:4", "duplicate image 'linked/a.jpg'", "line 2 as 'imgs/a.jpg', the same file"],
    );
}
