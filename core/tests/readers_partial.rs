//! The readers of partially labelled formats on small generated fixtures: JSONL manifests with
//! `negatives`, Open Images image-level labels, tag tables; format detection by `open`; and
//! malformed input (the error names the file and the line).

use cls_core::labels::{NEG, POS, UNK};
use cls_core::readers::{
    detect, open, open_detailed, read_jsonl, read_jsonl_with, read_open_images, read_open_images_classes,
    read_tag_table, DataError, Format, LabelColumns, ReadOptions, Unlisted,
};
use ndarray::array;
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
        assert!(text.contains(part), "{text:?} does not contain {part:?}");
    }
}

fn ids(ds: &cls_core::Dataset) -> Vec<&str> {
    ds.samples.iter().map(|s| s.id.as_str()).collect()
}

// ---------------------------------------------------------------- Unlisted

#[test]
fn unlisted_parses_and_prints_its_cli_spelling() {
    assert_eq!("unknown".parse::<Unlisted>(), Ok(Unlisted::Unknown));
    assert_eq!(" Negative ".parse::<Unlisted>(), Ok(Unlisted::Negative));
    assert_contains(&"maybe".parse::<Unlisted>().unwrap_err(), &["'maybe'", "unknown", "negative"]);
    for u in [Unlisted::Unknown, Unlisted::Negative] {
        assert_eq!(u.to_string().parse::<Unlisted>(), Ok(u));
    }
    assert_eq!((Unlisted::Unknown.state(), Unlisted::Negative.state()), (UNK, NEG));
    let opts = ReadOptions::default();
    assert_eq!((opts.unlisted, opts.tag_sep, opts.skip_other_classes, opts.drop_missing), (None, None, false, false));
}

// ---------------------------------------------------------------- JSONL negatives

#[test]
fn jsonl_negatives_make_unlisted_classes_unknown() {
    let dir = TempDir::new().unwrap();
    let manifest = write(
        dir.path(),
        "m/train.jsonl",
        "{\"image\": \"a.jpg\", \"labels\": [\"sky\"], \"negatives\": [\"sea\"]}\n\
         {\"image\": \"b.jpg\", \"labels\": [\"tree\"]}\n\
         {\"image\": \"c.jpg\", \"labels\": [], \"negatives\": [\"fog\", \"sky\"]}\n",
    );
    // The class union counts negatives too (fog is only ever a negative).
    let ds = read_jsonl(&manifest, None, false).unwrap();
    assert_eq!(ds.classes.names(), ["fog", "sea", "sky", "tree"]);
    assert_eq!(ds.targets, array![[UNK, NEG, POS, UNK], [UNK, UNK, UNK, POS], [NEG, UNK, NEG, UNK]]);
    // An explicit choice wins over the manifest's default.
    let neg = read_jsonl_with(&manifest, None, false, Some(Unlisted::Negative)).unwrap();
    assert_eq!(neg.targets, array![[NEG, NEG, POS, NEG], [NEG, NEG, NEG, POS], [NEG, NEG, NEG, NEG]]);
    // Through open(): the option reaches the reader.
    let opts = ReadOptions { check_images: false, unlisted: Some(Unlisted::Negative), ..ReadOptions::default() };
    assert_eq!(open(&manifest, &opts).unwrap().targets, neg.targets);

    // Without any `negatives` field: as before (everything not positive is negative), unless asked.
    let plain = write(
        dir.path(),
        "p/train.jsonl",
        "{\"image\": \"a.jpg\", \"labels\": [\"sky\"]}\n{\"image\": \"b.jpg\", \"labels\": [\"sea\"]}\n",
    );
    assert_eq!(read_jsonl(&plain, None, false).unwrap().targets, array![[NEG, POS], [POS, NEG]]);
    let unk = read_jsonl_with(&plain, None, false, Some(Unlisted::Unknown)).unwrap();
    assert_eq!(unk.targets, array![[UNK, POS], [POS, UNK]]);
    // An empty `negatives` list still marks the manifest as partial.
    let empty = write(dir.path(), "e/train.jsonl", "{\"image\": \"a.jpg\", \"labels\": [\"sky\"], \"negatives\": []}\n{\"image\": \"b.jpg\", \"labels\": [\"sea\"]}\n");
    assert_eq!(read_jsonl(&empty, None, false).unwrap().targets, array![[UNK, POS], [POS, UNK]]);
}

#[test]
fn jsonl_negatives_errors_name_the_line() {
    let dir = TempDir::new().unwrap();
    let both = write(
        dir.path(),
        "both.jsonl",
        "{\"image\": \"a.jpg\", \"labels\": [\"sky\"]}\n\n{\"image\": \"b.jpg\", \"labels\": [\"sky\", \"sea\"], \"negatives\": [\"sea\"]}\n",
    );
    assert_contains(&err_text(read_jsonl(&both, None, false)), &["both.jsonl:3", "'sea'", "labels", "negatives"]);
    write(dir.path(), "classes.txt", "sky\nsea\n");
    let unknown = write(
        dir.path(),
        "unknown.jsonl",
        "{\"image\": \"a.jpg\", \"labels\": [\"sky\"], \"negatives\": [\"zebra\"]}\n",
    );
    assert_contains(&err_text(read_jsonl(&unknown, None, false)), &["unknown.jsonl:1", "unknown class 'zebra'"]);
    let typed = write(dir.path(), "typed.jsonl", "{\"image\": \"a.jpg\", \"labels\": [], \"negatives\": \"sky\"}\n");
    assert_contains(&err_text(read_jsonl(&typed, None, false)), &["typed.jsonl:1:", "bad JSON"]);
}

// ---------------------------------------------------------------- Open Images

const DESCRIPTIONS: &str = "/m/01,Cat\n/m/02,\"Dog, domestic\"\n/m/03,Seal\n/m/04,Seal\n";

/// An Open Images layout: labels in `oi/labels`, descriptions (v6, with header) in `oi/meta`,
/// images `aaa`, `bbb`, `ccc` in `oi/images`. Returns (labels CSV, descriptions, images).
fn open_images(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let labels = write(
        dir,
        "oi/labels/oidv6-train-annotations-human-imagelabels.csv",
        "ImageID,Source,LabelName,Confidence\r\n\
         aaa,verification,/m/01,1\r\n\
         aaa,verification,/m/02,0\r\n\
         bbb,crowdsource-verification,/m/03,1\r\n\
         aaa,verification,/m/04,1.0\r\n\
         \r\n\
         ccc,verification,/m/02,1\r\n\
         ccc,verification,/m/02,0\r\n\
         bbb,verification,/m/03,1\r\n",
    );
    let desc = write(dir, "oi/meta/oidv6-class-descriptions.csv", format!("LabelName,DisplayName\n{DESCRIPTIONS}"));
    for id in ["aaa", "bbb", "ccc"] {
        write(dir, &format!("oi/images/{id}.jpg"), b"x");
    }
    (labels, desc, dir.join("oi/images"))
}

fn oi_opts(classes: &Path, images: &Path) -> ReadOptions {
    ReadOptions { classes: Some(classes.into()), images: Some(images.into()), ..ReadOptions::default() }
}

#[test]
fn open_images_reads_three_states_and_names_classes() {
    let dir = TempDir::new().unwrap();
    let (labels, desc, images) = open_images(dir.path());
    let loaded = read_open_images(&labels, &oi_opts(&desc, &images)).unwrap();
    let ds = &loaded.dataset;
    assert_eq!(ds.classes.names(), ["Cat", "Dog, domestic", "Seal (/m/03)", "Seal (/m/04)"]);
    assert_eq!(loaded.class_ids.as_deref().unwrap(), ["/m/01", "/m/02", "/m/03", "/m/04"]);
    assert_eq!(loaded.format, Format::OpenImages);
    assert_eq!(ids(ds), ["aaa", "bbb", "ccc"]);
    assert_eq!(ds.samples[1].path, images.join("bbb.jpg"));
    // Unlisted: unknown; ccc has Confidence 1 and 0 for /m/02: unknown.
    assert_eq!(ds.targets, array![[POS, NEG, UNK, POS], [UNK, UNK, POS, UNK], [UNK, UNK, UNK, UNK]]);
    assert_eq!(ds.name, "openimages-train");
    let notes = loaded.notes.join("\n");
    assert_contains(&notes, &["1 (image, class) pairs", "3 images × 4 classes: 3 positives, 1 verified negatives"]);

    let opts = ReadOptions { unlisted: Some(Unlisted::Negative), ..oi_opts(&desc, &images) };
    let neg = read_open_images(&labels, &opts).unwrap().dataset;
    assert_eq!(neg.targets, array![[POS, NEG, NEG, POS], [NEG, NEG, POS, NEG], [NEG, UNK, NEG, NEG]]);

    // Older releases: descriptions without a header.
    let old = write(dir.path(), "old/class-descriptions.csv", DESCRIPTIONS);
    let from_old = read_open_images(&labels, &oi_opts(&old, &images)).unwrap();
    assert_eq!(from_old.dataset.classes.names(), ds.classes.names());
    assert_eq!(from_old.dataset.targets, ds.targets);

    // open() detects the format by the header and passes the options on.
    assert_eq!(detect(&labels, &ReadOptions::default()).unwrap(), Format::OpenImages);
    let opened = open_detailed(&labels, &oi_opts(&desc, &images)).unwrap();
    assert_eq!((opened.dataset.targets, opened.class_ids), (ds.targets.clone(), loaded.class_ids.clone()));
    assert_contains(&err_text(open(&labels, &ReadOptions::default())), &["human-imagelabels.csv", "--classes"]);
    let no_images = ReadOptions { classes: Some(desc.clone()), ..ReadOptions::default() };
    assert_contains(&err_text(open(&labels, &no_images)), &["human-imagelabels.csv", "--images"]);
}

#[test]
fn open_images_trainable_list_is_a_subset() {
    let dir = TempDir::new().unwrap();
    let (labels, _, images) = open_images(dir.path());
    // A trainable-classes list with the (headerless) descriptions next to it.
    write(dir.path(), "oi/meta/old/class-descriptions.csv", DESCRIPTIONS);
    let list = write(dir.path(), "oi/meta/old/classes-trainable.txt", "/m/03\n\n/m/01\n");
    let classes = read_open_images_classes(&list, Some(&labels)).unwrap();
    assert!(classes.subset);
    assert_eq!(classes.descriptions.as_deref(), Some(dir.path().join("oi/meta/old/class-descriptions.csv").as_path()));

    let loaded = read_open_images(&labels, &oi_opts(&list, &images)).unwrap();
    let ds = &loaded.dataset;
    assert_eq!(ds.classes.names(), ["Seal (/m/03)", "Cat"]);
    assert_eq!(loaded.class_ids.as_deref().unwrap(), ["/m/03", "/m/01"]);
    // ccc has rows of /m/02 only: left out.
    assert_eq!(ids(ds), ["aaa", "bbb"]);
    assert_eq!(ds.targets, array![[UNK, POS], [POS, UNK]]);
    assert_contains(&loaded.notes.join("\n"), &["skipped 4 rows of 2 classes", "classes-trainable.txt"]);

    let keep = ReadOptions { keep_empty: true, ..oi_opts(&list, &images) };
    let kept = read_open_images(&labels, &keep).unwrap().dataset;
    assert_eq!(ids(&kept), ["aaa", "bbb", "ccc"]);
    assert_eq!(kept.targets.row(2).to_vec(), [UNK, UNK]);

    // No descriptions near the list or the labels: the MIDs are the names.
    let bare = write(dir.path(), "bare/trainable.txt", "/m/04\n/m/01\n");
    let loaded = read_open_images(&labels, &oi_opts(&bare, &images)).unwrap();
    assert_eq!(loaded.dataset.classes.names(), ["/m/04", "/m/01"]);
    assert_eq!(loaded.dataset.targets, array![[POS, POS]]);
    assert_contains(&loaded.notes.join("\n"), &["named by their MIDs"]);

    // A descriptions CSV is the full list: an unknown LabelName is an error, unless skipped.
    let partial = write(dir.path(), "partial.csv", "/m/01,Cat\n/m/03,Seal\n");
    assert_contains(
        &err_text(read_open_images(&labels, &oi_opts(&partial, &images))),
        &["human-imagelabels.csv:3", "unknown class '/m/02'", "partial.csv"],
    );
    let skip = ReadOptions { skip_other_classes: true, ..oi_opts(&partial, &images) };
    let skipped = read_open_images(&labels, &skip).unwrap();
    assert_eq!(skipped.dataset.classes.names(), ["Cat", "Seal"]);
    assert_eq!(skipped.dataset.targets, array![[POS, UNK], [UNK, POS]]);
}

#[test]
fn open_images_errors_name_file_and_line() {
    let dir = TempDir::new().unwrap();
    let (_, desc, images) = open_images(dir.path());
    let opts = oi_opts(&desc, &images);
    let header = "ImageID,Source,LabelName,Confidence\n";
    let cases = [
        ("conf.csv", "aaa,verification,/m/01,1\n\naaa,verification,/m/02,0.7\n", vec!["conf.csv:4:4", "'0.7'"]),
        ("word.csv", "aaa,verification,/m/01,yes\n", vec!["word.csv:2:4", "'yes'"]),
        (
            "label.csv",
            "aaa,verification,/m/01,1\nbbb,verification,/m/77,0\n",
            vec!["label.csv:3", "unknown class '/m/77'"],
        ),
        ("width.csv", "aaa,verification,/m/01\n", vec!["width.csv:2", "expected 4 columns, found 3"]),
        ("noid.csv", "aaa,verification,/m/01,1\n,verification,/m/01,1\n", vec!["noid.csv:3:1", "ImageID"]),
        ("path.csv", "../etc,verification,/m/01,1\n", vec!["path.csv:2:1", "not a file name"]),
        ("rows.csv", "", vec!["rows.csv", "empty"]),
    ];
    for (name, rows, expected) in cases {
        let path = write(dir.path(), name, format!("{header}{rows}"));
        assert_contains(&err_text(read_open_images(&path, &opts)), &expected);
    }
    let no_conf = write(dir.path(), "noconf.csv", "ImageID,Source,LabelName\naaa,x,/m/01\n");
    assert_contains(&err_text(read_open_images(&no_conf, &opts)), &["noconf.csv:1", "'Confidence'"]);

    let dup = write(dir.path(), "dup/classes.csv", "LabelName,DisplayName\n/m/01,Cat\n/m/01,Kitten\n");
    let ok = write(dir.path(), "ok.csv", format!("{header}aaa,v,/m/01,1\n"));
    assert_contains(&err_text(read_open_images(&ok, &oi_opts(&dup, &images))), &["classes.csv:3", "twice", "line 2"]);
    let wide = write(dir.path(), "wide/classes.csv", "/m/01,Cat\n/m/02\n");
    assert_contains(&err_text(read_open_images(&ok, &oi_opts(&wide, &images))), &["classes.csv:2", "columns"]);
}

#[test]
fn open_images_missing_images_are_one_error_or_dropped() {
    let dir = TempDir::new().unwrap();
    let (_, desc, images) = open_images(dir.path());
    let mut csv = String::from("ImageID,Source,LabelName,Confidence\n");
    for i in 0..8 {
        csv.push_str(&format!("m{i},verification,/m/01,1\n"));
        csv.push_str("aaa,verification,/m/03,0\n");
    }
    let labels = write(dir.path(), "oidv6-validation-annotations-human-imagelabels.csv", csv);
    let text = err_text(read_open_images(&labels, &oi_opts(&desc, &images)));
    assert_contains(
        &text,
        &[
            "imagelabels.csv:2",
            "8 of 9 images have no file",
            "m0 (line 2)",
            "m1 (line 4)",
            "m4 (line 10)",
            "…",
            "--drop-missing",
        ],
    );
    assert!(!text.contains("m5"), "{text}");

    let drop = ReadOptions { drop_missing: true, ..oi_opts(&desc, &images) };
    let loaded = read_open_images(&labels, &drop).unwrap();
    assert_eq!(ids(&loaded.dataset), ["aaa"]);
    assert_eq!(loaded.dataset.targets, array![[UNK, UNK, NEG, UNK]]);
    assert_eq!(loaded.dataset.name, "openimages-validation");
    assert_contains(&loaded.notes.join("\n"), &["left out 8 of 9 images"]);

    let unchecked = ReadOptions { check_images: false, ..oi_opts(&desc, &images) };
    assert_eq!(read_open_images(&labels, &unchecked).unwrap().dataset.len(), 9);
}

// ---------------------------------------------------------------- tag tables

#[test]
fn tag_table_planet_layout_with_extension_probe() {
    let dir = TempDir::new().unwrap();
    let table = write(
        dir.path(),
        "planet/train_v2.csv",
        "image_name,tags\ntrain_0,haze primary\ntrain_1,agriculture clear primary water\n\ntrain_2,\n\"train_3\",\"clear  primary\"\n",
    );
    let jpgs = dir.path().join("planet/train-jpg");
    for f in ["train_0.jpg", "train_1.jpg", "train_2.jpeg", "train_3.png"] {
        write(&jpgs, f, b"x");
    }
    assert_eq!(detect(&table, &ReadOptions::default()).unwrap(), Format::TagTable);
    let opts = ReadOptions { images: Some(jpgs.clone()), ..ReadOptions::default() };
    let loaded = read_tag_table(&table, &opts).unwrap();
    let ds = &loaded.dataset;
    assert_eq!(ds.classes.names(), ["agriculture", "clear", "haze", "primary", "water"]);
    assert_eq!(ids(ds), ["train_0", "train_1", "train_2", "train_3"]);
    let paths: Vec<PathBuf> = ds.samples.iter().map(|s| s.path.clone()).collect();
    assert_eq!(paths, ["train_0.jpg", "train_1.jpg", "train_2.jpeg", "train_3.png"].map(|f| jpgs.join(f)));
    assert_eq!(
        ds.targets,
        array![
            [NEG, NEG, POS, POS, NEG],
            [POS, POS, NEG, POS, POS],
            [NEG, NEG, NEG, NEG, NEG],
            [NEG, POS, NEG, POS, NEG]
        ]
    );
    assert_eq!(ds.name, "planet-train_v2");
    assert!(loaded.notes.is_empty(), "{:?}", loaded.notes);
    assert_eq!(open(&table, &opts).unwrap().targets, ds.targets);

    let unknown = ReadOptions { unlisted: Some(Unlisted::Unknown), ..opts.clone() };
    assert_eq!(read_tag_table(&table, &unknown).unwrap().dataset.targets.row(2).to_vec(), [UNK; 5]);

    // Without --images the table's folder is the base: nothing there.
    let text = err_text(read_tag_table(&table, &ReadOptions::default()));
    assert_contains(&text, &["train_v2.csv:2", "4 of 4 images have no file", "train_0 (line 2)", "train_3 (line 6)"]);
    // None has a file: an error even with --drop-missing.
    let drop = ReadOptions { drop_missing: true, ..ReadOptions::default() };
    assert_contains(&err_text(read_tag_table(&table, &drop)), &["train_v2.csv:2", "4 of 4 images", "image folder"]);
}

#[test]
fn tag_table_separators_and_quoting() {
    let dir = TempDir::new().unwrap();
    let opts = ReadOptions { check_images: false, ..ReadOptions::default() };
    // Commas inside quoted cells, extra columns, Kaggle's `Id` spelling.
    let comma = write(dir.path(), "comma.csv", "Id,Labels,extra\n\"a.jpg\",\"cat, dog\",\"x, y\"\nb.jpg,dog,z\n");
    let loaded = read_tag_table(&comma, &opts).unwrap();
    assert_eq!(loaded.dataset.classes.names(), ["cat", "dog"]);
    assert_eq!(loaded.dataset.targets, array![[POS, POS], [NEG, POS]]);
    assert_eq!(loaded.dataset.samples[0].path, dir.path().join("a.jpg"));
    assert_contains(&loaded.notes.join("\n"), &["separated by ','"]);

    let semi = write(dir.path(), "semi.csv", "image,tags\na.jpg,red car;blue sky ;\nb.jpg,blue sky\n");
    let ds = read_tag_table(&semi, &opts).unwrap().dataset;
    assert_eq!(ds.classes.names(), ["blue sky", "red car"]);
    assert_eq!(ds.targets, array![[POS, POS], [POS, NEG]]);

    let both = write(dir.path(), "both.csv", "image,tags\na.jpg,\"x,y\"\nb.jpg,x;y\n");
    assert_contains(&err_text(read_tag_table(&both, &opts)), &["both.csv", "--tag-sep"]);
    let sep = ReadOptions { tag_sep: Some(';'), ..opts.clone() };
    assert_eq!(read_tag_table(&both, &sep).unwrap().dataset.classes.names(), ["x", "x,y", "y"]);

    // An explicit class list (next to the table), and tags outside it skipped when asked.
    write(dir.path(), "listed/classes.txt", "dog\ncat\nbird\n");
    let listed = write(dir.path(), "listed/t.csv", "file,tag\na.jpg,cat fox\nb.jpg,\n");
    assert_contains(&err_text(read_tag_table(&listed, &opts)), &["t.csv:2:2", "unknown class 'fox'"]);
    let skip = ReadOptions { skip_other_classes: true, ..opts.clone() };
    let loaded = read_tag_table(&listed, &skip).unwrap();
    assert_eq!(loaded.dataset.classes.names(), ["dog", "cat", "bird"]);
    assert_eq!(loaded.dataset.targets, array![[NEG, POS, NEG], [NEG, NEG, NEG]]);
    assert_contains(&loaded.notes.join("\n"), &["skipped 1 tags of 1 classes"]);
}

#[test]
fn tag_table_errors_name_file_and_line() {
    let dir = TempDir::new().unwrap();
    let opts = ReadOptions { check_images: false, ..ReadOptions::default() };
    write(dir.path(), "classes.txt", "cat\ndog\n");
    // CRLF, a blank line and a quoted cell over two lines before the bad row: line 5 exactly.
    let multi = write(
        dir.path(),
        "multi.csv",
        "image,tags,note\r\na.jpg,cat,\"line one\r\nline two\"\r\n\r\nb.jpg,zebra,x\r\n",
    );
    assert_contains(&err_text(read_tag_table(&multi, &opts)), &["multi.csv:5:2", "unknown class 'zebra'"]);
    let cases = [
        ("dup.csv", "image,tags\na.jpg,cat\n\"a.jpg\",dog\n", vec!["dup.csv:3", "duplicate image 'a.jpg'", "line 2"]),
        ("width.csv", "image,tags\na.jpg,cat,dog\n", vec!["width.csv:2", "expected 2 columns, found 3"]),
        ("noimage.csv", "image,tags\na.jpg,cat\n ,dog\n", vec!["noimage.csv:3:1", "empty image cell"]),
        ("rows.csv", "image,tags\n\n", vec!["rows.csv", "empty"]),
        ("noheader.csv", "name,value\na,b\n", vec!["noheader.csv:1", "image column", "tags column"]),
    ];
    for (name, content, expected) in cases {
        let path = write(dir.path(), name, content);
        assert_contains(&err_text(read_tag_table(&path, &opts)), &expected);
    }
    let bad_utf8 = write(dir.path(), "utf8.csv", b"image,tags\na.jpg,cat\nb.jpg,d\xffg\n");
    assert_contains(&err_text(read_tag_table(&bad_utf8, &opts)), &["utf8.csv:3:2", "UTF-8"]);

    // Missing images: one error with the count and the first few; or left out.
    write(dir.path(), "imgs/b.jpg", b"x");
    let table = write(dir.path(), "imgs.csv", "image,tags\nimgs/a.jpg,cat\nimgs/b.jpg,dog\nimgs/c,cat\n");
    let text = err_text(read_tag_table(&table, &ReadOptions::default()));
    assert_contains(&text, &["imgs.csv:2", "2 of 3 images have no file", "imgs/a.jpg (line 2)", "imgs/c (line 4)"]);
    let drop = ReadOptions { drop_missing: true, ..ReadOptions::default() };
    let loaded = read_tag_table(&table, &drop).unwrap();
    assert_eq!(ids(&loaded.dataset), ["imgs/b.jpg"]);
    assert_eq!(loaded.dataset.targets, array![[NEG, POS]]);
    assert_contains(&loaded.notes.join("\n"), &["left out 2 of 3 images"]);
}

// ---------------------------------------------------------------- open()

#[test]
fn open_tells_csv_layouts_apart_by_header() {
    let dir = TempDir::new().unwrap();
    let opts = ReadOptions { check_images: false, ..ReadOptions::default() };
    let features = ReadOptions { label_columns: Some(LabelColumns::Last(1)), ..opts.clone() };
    let tags = write(dir.path(), "tags.csv", "ImageID,Tags\na.jpg,x y\n");
    assert_eq!(detect(&tags, &opts).unwrap(), Format::TagTable);
    assert_eq!(open_detailed(&tags, &opts).unwrap().format, Format::TagTable);
    // --label-columns makes any non-Open-Images CSV a feature table.
    let numeric = write(dir.path(), "num.csv", "id,label\n1,0\n2,1\n");
    assert_eq!(detect(&numeric, &features).unwrap(), Format::CsvFeatures);
    assert_eq!(open(&numeric, &features).unwrap().features.unwrap().shape(), [2, 1]);
    let table = write(dir.path(), "table.csv", "f0,f1,l\n1,2,0\n");
    assert_eq!(detect(&table, &features).unwrap(), Format::CsvFeatures);
    assert_contains(&err_text(detect(&table, &opts)), &["table.csv", "--label-columns", "tags column"]);
    let labels = write(dir.path(), "oi.csv", "\u{feff}imageid,source,labelname,confidence\n");
    assert_eq!(detect(&labels, &features).unwrap(), Format::OpenImages);
    let empty = write(dir.path(), "empty.csv", "\n\n");
    assert_contains(&err_text(detect(&empty, &opts)), &["empty.csv", "empty"]);
    let manifest = write(dir.path(), "m.jsonl", "{\"image\": \"a.jpg\", \"labels\": [\"x\"]}\n");
    assert_eq!(detect(&manifest, &opts).unwrap(), Format::Jsonl);
    assert_eq!(open_detailed(&manifest, &opts).unwrap().format, Format::Jsonl);
    assert!(detect(&dir.path().join("x.json"), &opts).map_err(|e| e.to_string()).unwrap_err().contains("x.json"),);
}
