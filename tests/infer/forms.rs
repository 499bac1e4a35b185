//! cls-infer in pipelines (issue 15): every input form, every output format parsed back, resume
//! after SIGKILL, stats, progress lines, hostile names. Included by `tests/infer.rs`.

use super::*;
use cls_tests::{jpeg_with_orientation, output_within_input, venv_python};
use std::collections::BTreeSet;

/// A folder `dir/name` of `n` solid-colour images (PNG and JPEG, in two subfolders).
fn coloured(dir: &Path, name: &str, n: usize) -> PathBuf {
    let root = dir.join(name);
    for i in 0..n {
        let sub = if i % 3 == 0 { "b" } else { "a" };
        fs::create_dir_all(root.join(sub)).unwrap();
        let c = [(i * 53 % 256) as u8, (i * 97 % 256) as u8, (i * 31 % 256) as u8];
        let ext = if i % 2 == 0 { "png" } else { "jpg" };
        solid(c, 10 + i as u32 % 5, 9).save(root.join(format!("{sub}/{i:03}.{ext}"))).unwrap();
    }
    root
}

/// Run cls-infer with `stdin`.
fn cls_infer_stdin(args: &[&str], stdin: &[u8]) -> Run {
    let mut cmd = Command::new(binary());
    cmd.args(args).env_remove("SLURM_ARRAY_TASK_ID").env_remove("JOB_COMPLETION_INDEX");
    let Output { status, stdout, stderr } = output_within_input(&mut cmd, RUN_LIMIT, stdin.to_vec());
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into(),
        stderr: String::from_utf8_lossy(&stderr).into(),
    }
}

/// Image name → its scores, from JSONL rows (failed rows left out).
fn scores_by_name(rows: &[Value]) -> BTreeMap<String, Vec<f64>> {
    rows.iter()
        .filter(|v| v.get("error").is_none())
        .map(|v| {
            let s = CLASSES.iter().map(|c| v["scores"][c].as_f64().unwrap()).collect();
            (v["image"].as_str().unwrap().to_string(), s)
        })
        .collect()
}

fn parse_rows(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn every_input_form_tags_the_same_images_and_shards_concatenate() {
    let dir = tempfile::tempdir().unwrap();
    let root = coloured(dir.path(), "p", 12);
    let model = write_model(dir.path(), true);
    let base = ["--model", s(&model), "--device", "cpu", "--batch", "5", "--threads", "2"];
    let run = |images: &str, extra: &[&str], stdin: &[u8]| {
        let r = cls_infer_stdin(&[&base[..], &["--images", images], extra].concat(), stdin);
        assert_eq!(r.code, 0, "{images}: {}", r.stderr);
        r.stdout
    };
    let folder = run(s(&root), &[], b"");
    let want = scores_by_name(&parse_rows(&folder));
    assert_eq!(want.len(), 12);
    // One file.
    let one = parse_rows(&run(s(&root.join("a/001.jpg")), &[], b""));
    assert_eq!(images_of(&one), ["001.jpg"]);
    assert_eq!(scores_by_name(&one)["001.jpg"], want["a/001.jpg"]);
    // A glob (quoted: cls-infer expands it), names relative to its fixed folders.
    let glob = format!("{}/**/*.png", root.display());
    let got = scores_by_name(&parse_rows(&run(&glob, &[], b"")));
    assert_eq!(got, want.iter().filter(|(k, _)| k.ends_with(".png")).map(|(k, v)| (k.clone(), v.clone())).collect());
    // A list: relative to its folder, absolute, comments and blank lines; in list order.
    let list = dir.path().join("list.txt");
    fs::write(&list, format!("# three images\np/b/000.png\n\n{}\n  p/a/002.png  \n", root.join("a/001.jpg").display()))
        .unwrap();
    let rows = parse_rows(&run(&format!("@{}", list.display()), &[], b""));
    let abs = root.join("a/001.jpg").display().to_string();
    assert_eq!(images_of(&rows), ["p/b/000.png", abs.as_str(), "p/a/002.png"]);
    let got = scores_by_name(&rows);
    assert_eq!(got["p/b/000.png"], want["b/000.png"]);
    assert_eq!(got[&abs], want["a/001.jpg"]);
    // Standard input, relative to the current folder.
    let stdin = format!("{}\n{}\n", root.join("a/002.png").display(), root.join("b/003.jpg").display());
    let rows = parse_rows(&run("-", &[], stdin.as_bytes()));
    assert_eq!(
        scores_by_name(&rows).values().cloned().collect::<Vec<_>>(),
        [want["a/002.png"].clone(), want["b/003.jpg"].clone()]
    );
    // Shards over every form concatenate to the whole run.
    let all_list = dir.path().join("all.txt");
    let mut names: Vec<&String> = want.keys().collect();
    names.sort();
    fs::write(&all_list, names.iter().map(|n| format!("p/{n}\n")).collect::<String>()).unwrap();
    let all_stdin: String = names.iter().map(|n| format!("{}\n", root.join(n).display())).collect();
    let forms: [(&str, String, &[u8]); 4] = [
        ("folder", s(&root).to_string(), b""),
        ("glob", format!("{}/*/*.*", root.display()), b""),
        ("list", format!("@{}", all_list.display()), b""),
        ("stdin", "-".to_string(), all_stdin.as_bytes()),
    ];
    for (form, images, input) in forms {
        let whole = run(&images, &[], input);
        let mut joined = String::new();
        for i in 0..3 {
            joined.push_str(&run(&images, &["--shard", &format!("{i}/3")], input));
        }
        assert_eq!(joined, whole, "{form}");
        assert_eq!(parse_rows(&whole).len(), 12, "{form}");
    }
}

/// A raw ustar header for `name` (any bytes, `..` included) claiming `size` bytes.
fn raw_header(name: &[u8], size: u64, kind: u8, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    let sz = format!("{size:011o}\0");
    h[124..136].copy_from_slice(sz.as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Append a member with a raw name.
fn raw_member(tar: &mut Vec<u8>, name: &[u8], data: &[u8]) {
    tar.extend(raw_header(name, data.len() as u64, b'0', b""));
    tar.extend(data);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
}

fn encode_png(c: [u8; 3]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(solid(c, 8, 8)).write_to(&mut buf, image::ImageFormat::Png).unwrap();
    buf.into_inner()
}

#[test]
fn tar_shards_with_mixed_hostile_and_broken_members() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("shards");
    fs::create_dir_all(&shards).unwrap();
    let (red, green, blue) = (encode_png([250, 10, 10]), encode_png([10, 250, 10]), encode_png([10, 10, 250]));
    // Shard 0, written by the tar crate: samples of image + json + txt, one without an image.
    {
        let mut b = tar::Builder::new(fs::File::create(shards.join("000000.tar")).unwrap());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        };
        add("s/0001.png", &red);
        add("s/0001.json", b"{\"caption\": \"red\"}");
        add("s/0001.txt", b"red");
        add("s/0002.json", b"{}");
        add("s/0002.txt", b"no image");
        add("s/0003.jpg", b"\xff\xd8 not really a JPEG");
        add("s/0003.cls", b"1");
        add("s/0004.png", &green);
        add("s/0004.webp", &blue); // a second image of the same sample: not read
        b.finish().unwrap();
    }
    // Shard 1, raw: hostile names, a link, then a member claiming far more than the file holds.
    let mut t = Vec::new();
    raw_member(&mut t, b"../../escape.png", &red);
    raw_member(&mut t, b"/etc/abs.png", &blue);
    t.extend(raw_header(b"link.png", 0, b'2', b"/etc/passwd"));
    raw_member(&mut t, b"ok.png", &green);
    t.extend(raw_header(b"huge.png", 8_000_000_000, b'0', b""));
    t.extend(&red[..40]);
    fs::write(shards.join("000001.tar"), &t).unwrap();
    // Shard 2: not a tar at all.
    fs::write(shards.join("000002.tar"), b"garbage, not a tar archive, long enough to need a header....").unwrap();

    let model = write_model(dir.path(), true);
    let base = ["--model", s(&model), "--device", "cpu", "--batch", "3", "--threads", "2"];
    let run = |images: &str, extra: &[&str]| {
        let r = cls_infer(&[&base[..], &["--images", images], extra].concat(), &[]);
        assert_eq!(r.code, 0, "{images}: {}", r.stderr);
        r
    };
    let r = run(s(&shards), &[]);
    let rows = parse_rows(&r.stdout);
    let by_name: BTreeMap<&str, &Value> = rows.iter().map(|v| (v["image"].as_str().unwrap(), v)).collect();
    let label = |n: &str| by_name[n]["labels"][0].as_str().unwrap_or("").to_string();
    assert_eq!(label("000000.tar/s/0001.png"), "red");
    assert_eq!(label("000000.tar/s/0004.png"), "green");
    assert_eq!(label("000001.tar/ok.png"), "green");
    // An absolute name is made relative; `..` is refused; the rest are error rows.
    assert_eq!(label("000001.tar/etc/abs.png"), "blue");
    let error = |n: &str| {
        by_name
            .get(n)
            .and_then(|v| v["error"].as_str())
            .unwrap_or_else(|| panic!("no error row {n}: {rows:?}"))
            .to_string()
    };
    assert!(error("000000.tar/s/0002").contains("no image among"), "{}", error("000000.tar/s/0002"));
    assert!(error("000000.tar/s/0003.jpg").contains("decode") || error("000000.tar/s/0003.jpg").contains("JPEG"));
    assert!(error("000001.tar/../../escape.png").contains(".."));
    assert!(error("000001.tar/link.png").contains("not a regular file"));
    assert!(error("000001.tar/huge.png").contains("truncated"), "{}", error("000001.tar/huge.png"));
    assert!(error("000002.tar").contains("tar"), "{}", error("000002.tar"));
    assert!(!by_name.contains_key("000000.tar/s/0004.webp"));
    assert_eq!(rows.len(), 10, "{rows:#?}");
    // The same image from a tar and from a file scores the same.
    let loose = dir.path().join("loose");
    fs::create_dir_all(&loose).unwrap();
    fs::write(loose.join("red.png"), &red).unwrap();
    let file_rows = parse_rows(&run(s(&loose.join("red.png")), &[]).stdout);
    assert_eq!(file_rows[0]["scores"], by_name["000000.tar/s/0001.png"]["scores"]);
    // Braces name the same shards; a missing one is an error row; shards split by tar file.
    let braces = format!("{}/{{000000..000003}}.tar", shards.display());
    let b = parse_rows(&run(&braces, &[]).stdout);
    assert_eq!(b.len(), 11);
    assert!(b.last().unwrap()["error"].as_str().unwrap().contains("cannot read the shard"));
    let mut joined = String::new();
    for i in 0..2 {
        joined.push_str(&run(s(&shards), &["--shard", &format!("{i}/2")]).stdout);
    }
    assert_eq!(joined, r.stdout);
    // XMP sidecars under --out: all inside it, nothing for the refused name.
    let side = dir.path().join("side");
    let x = run(s(&shards), &["--format", "xmp", "--out", s(&side)]);
    assert!(side.join("000000.tar/s/0001.png.xmp").is_file(), "{}", x.stderr);
    assert!(side.join("000001.tar/etc/abs.png.xmp").is_file());
    assert!(!dir.path().join("escape.png.xmp").exists() && !side.join("escape.png.xmp").exists());
    let mut written = Vec::new();
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if e.path().extension().is_some_and(|x| x == "xmp") {
                written.push(e.path());
            }
        }
    }
    assert!(written.iter().all(|p| p.starts_with(&side)), "{written:?}");
    assert_eq!(written.len(), 4, "{written:?}");
    // Beside the images is impossible for tar members.
    exits_2_saying(&[&base[..], &["--images", s(&shards), "--format", "xmp", "--out", "."]].concat(), "--out DIR");
}

/// The position-sensitive test model: only the top-left quadrant counts.
fn quadrant_model(dir: &Path) -> PathBuf {
    let mut g = GraphBuilder::new("quadrant");
    g.input_f32("images", &[Dim::Named("N".into()), Dim::Fixed(3), Dim::Fixed(16), Dim::Fixed(16)]);
    let starts = g.initializer_i64("starts", &[2], &[0, 0]);
    let ends = g.initializer_i64("ends", &[2], &[8, 8]);
    let axes = g.initializer_i64("axes", &[2], &[2, 3]);
    #[rustfmt::skip]
    let w = g.initializer_f32("w", &[4, 3], &[3.0, -1.0, -1.0, -1.0, 3.0, -1.0, -1.0, -1.0, 3.0, 1.0, 1.0, 1.0]);
    let b = g.initializer_f32("b", &[4], &[-1.0, -1.0, -1.0, 0.0]);
    let corner = g.op("Slice", &["images", &starts, &ends, &axes], &[]);
    let pooled = g.op("GlobalAveragePool", &[&corner], &[]);
    let flat = g.op("Flatten", &[&pooled], &[("axis", Attr::Int(1))]);
    let logits = g.op("Gemm", &[&flat, &w, &b], &[("transB", Attr::Int(1))]);
    g.node("Sigmoid", &[&logits], &["probs"], &[]);
    g.output_f32("probs", &[Dim::Named("N".into()), Dim::Fixed(4)]);
    g.metadata("classes", serde_json::to_string(&CLASSES).unwrap());
    g.metadata("height", "16");
    g.metadata("width", "16");
    g.metadata("mean", "[0.5, 0.5, 0.5]");
    g.metadata("std", "[0.25, 0.25, 0.25]");
    let p = dir.join("quadrant.onnx");
    fs::write(&p, g.to_bytes()).unwrap();
    p
}

#[test]
fn exif_rotated_jpegs_are_tagged_as_their_upright_copies() {
    use image::metadata::Orientation;
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    fs::create_dir_all(&imgs).unwrap();
    // Upright: red top-left, then green, blue, white (48x32: whole JPEG blocks).
    let upright = RgbImage::from_fn(48, 32, |x, y| match (x < 24, y < 16) {
        (true, true) => Rgb([230, 20, 20]),
        (false, true) => Rgb([20, 230, 20]),
        (true, false) => Rgb([20, 20, 230]),
        (false, false) => Rgb([240, 240, 240]),
    });
    fs::write(imgs.join("upright.jpg"), jpeg_with_orientation(&upright, 1)).unwrap();
    for value in 1..=8u8 {
        let o = Orientation::from_exif(value).unwrap();
        let inverse = match o {
            Orientation::Rotate90 => Orientation::Rotate270,
            Orientation::Rotate270 => Orientation::Rotate90,
            other => other,
        };
        let mut stored = image::DynamicImage::ImageRgb8(upright.clone());
        stored.apply_orientation(inverse);
        fs::write(imgs.join(format!("o{value}.jpg")), jpeg_with_orientation(&stored.to_rgb8(), value as u16)).unwrap();
    }
    let model = quadrant_model(dir.path());
    let base = ["--model", s(&model), "--images", s(&imgs), "--device", "cpu"];
    let r = cls_infer(&base, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got = scores_by_name(&parse_rows(&r.stdout));
    let want = &got["upright.jpg"];
    assert!(want[0] > 0.9, "the upright copy's corner is red: {want:?}");
    for value in 1..=8 {
        let s = &got[&format!("o{value}.jpg")];
        assert!(s.iter().zip(want).all(|(a, b)| (a - b).abs() < 0.02), "orientation {value}: {s:?} vs {want:?}");
    }
    // Off: the stored pixels, so most orientations see another corner.
    let off = cls_infer(&[&base[..], &["--no-exif-orientation"]].concat(), &[]);
    let got = scores_by_name(&parse_rows(&off.stdout));
    let differ = (2..=8).filter(|v| (got[&format!("o{v}.jpg")][0] - want[0]).abs() > 0.3).count();
    assert!(differ >= 5, "{got:?}");
}

#[test]
fn csv_exiftool_and_xmp_outputs_parse_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = coloured(dir.path(), "p", 8);
    fs::write(root.join("a/broken.jpg"), b"not an image").unwrap();
    let model = write_model(dir.path(), true);
    let base = ["--model", s(&model), "--images", s(&root), "--device", "cpu", "--threads", "2"];
    let jsonl = dir.path().join("t.jsonl");
    let r = cls_infer(&[&base[..], &["--out", s(&jsonl)]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = read_jsonl(&jsonl);
    let want = scores_by_name(&rows);
    // CSV: the csv crate reads it back to the same names, labels and scores (f32 exact).
    let csv_out = dir.path().join("t.csv");
    let r = cls_infer(&[&base[..], &["--out", s(&csv_out), "--format", "csv"]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut reader = csv::Reader::from_path(&csv_out).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, ["image", "labels", "red", "green", "blue", "bright", "error"]);
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), rows.len());
    for (rec, row) in records.iter().zip(&rows) {
        assert_eq!(&rec[0], row["image"].as_str().unwrap());
        if let Some(e) = row.get("error") {
            assert_eq!(&rec[6], e.as_str().unwrap());
            assert!((2..6).all(|c| rec[c].is_empty()) && rec[1].is_empty());
            continue;
        }
        let labels: Vec<&str> = if rec[1].is_empty() { vec![] } else { rec[1].split(';').collect() };
        assert_eq!(serde_json::json!(labels), row["labels"]);
        for c in 0..4 {
            assert_eq!(rec[2 + c].parse::<f32>().unwrap(), want[&rec[0]][c] as f32, "{}", &rec[0]);
        }
        assert!(rec[6].is_empty());
    }
    // Python's csv module reads the same table.
    let py = Command::new(venv_python())
        .args([
            "-c",
            "import csv, json, sys; print(json.dumps(list(csv.DictReader(open(sys.argv[1], newline='')))))",
            s(&csv_out),
        ])
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let dicts: Vec<BTreeMap<String, String>> = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(dicts.len(), rows.len());
    for (d, row) in dicts.iter().zip(&rows) {
        assert_eq!(d["image"], row["image"].as_str().unwrap());
        if row.get("error").is_none() {
            assert_eq!(d["green"].parse::<f32>().unwrap(), want[&d["image"]][1] as f32);
        }
    }
    // exiftool's JSON: an array of SourceFile + keywords, tagged images with labels only.
    let exif = dir.path().join("t.json");
    let r =
        cls_infer(&[&base[..], &["--out", s(&exif), "--format", "exiftool", "--keyword-root", "auto"]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&fs::read_to_string(&exif).unwrap()).unwrap();
    let arr = v.as_array().unwrap();
    let labelled: Vec<&Value> =
        rows.iter().filter(|r| r.get("error").is_none() && !r["labels"].as_array().unwrap().is_empty()).collect();
    assert_eq!(arr.len(), labelled.len());
    for (e, row) in arr.iter().zip(labelled) {
        assert_eq!(e.as_object().unwrap().len(), 3, "{e}");
        assert_eq!(e["SourceFile"].as_str().unwrap(), root.join(row["image"].as_str().unwrap()).display().to_string());
        assert_eq!(e["XMP-dc:Subject"], row["labels"]);
        let hier: Vec<String> =
            row["labels"].as_array().unwrap().iter().map(|l| format!("auto|{}", l.as_str().unwrap())).collect();
        assert_eq!(e["XMP-lr:HierarchicalSubject"], serde_json::json!(hier));
    }

    // XMP sidecars: under --out DIR mirroring the tree, merged into one that another tool wrote.
    let side = dir.path().join("side");
    fs::create_dir_all(side.join("a")).unwrap();
    let first =
        rows.iter().find(|r| r.get("error").is_none() && r["image"].as_str().unwrap().starts_with("a/")).unwrap();
    let name = first["image"].as_str().unwrap();
    let existing = format!(
        r#"<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:darktable="http://darktable.sf.net/" xmp:Rating="4" darktable:history_end="3">
   <dc:subject>
    <rdf:Bag>
     <rdf:li>holiday</rdf:li>
     <rdf:li>{}</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <dc:creator><rdf:Seq><rdf:li>Ann &amp; Bob</rdf:li></rdf:Seq></dc:creator>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"#,
        first["labels"][0].as_str().unwrap()
    );
    fs::write(side.join(format!("{name}.xmp")), &existing).unwrap();
    let r = cls_infer(&[&base[..], &["--out", s(&side), "--format", "xmp"]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for row in rows.iter().filter(|r| r.get("error").is_none()) {
        let name = row["image"].as_str().unwrap();
        let labels: Vec<String> = serde_json::from_value(row["labels"].clone()).unwrap();
        let Ok(xml) = fs::read_to_string(side.join(format!("{name}.xmp"))) else {
            assert!(labels.is_empty(), "{name}: no sidecar");
            continue; // no keyword, no sidecar
        };
        let (subjects, hier, attrs) = xmp_keywords(&xml);
        for l in &labels {
            assert_eq!(subjects.iter().filter(|s| *s == l).count(), 1, "{name}: {subjects:?}");
            assert!(hier.contains(&format!("cls|{l}")), "{name}: {hier:?}");
        }
        if xml.contains("holiday") {
            // The other tool's data is all there, its keyword first.
            assert_eq!(subjects[0], "holiday");
            assert_eq!(attrs.get("xmp:Rating").map(String::as_str), Some("4"));
            assert_eq!(attrs.get("darktable:history_end").map(String::as_str), Some("3"));
            assert!(xml.contains("Ann &amp; Bob") && xml.contains("XMP Core 4.4.0-Exiv2"), "{xml}");
        } else {
            assert_eq!(subjects, labels, "{name}");
        }
    }
    assert!(!side.join("a/broken.jpg.xmp").exists());
    // Beside the images with --out .: the same sidecars next to each file.
    let beside = cls_infer(&[&base[..], &["--out", ".", "--format", "xmp"]].concat(), &[]);
    assert_eq!(beside.code, 0, "{}", beside.stderr);
    assert!(root.join(format!("{name}.xmp")).is_file());
    // A link in --out is not followed out of it.
    let out2 = dir.path().join("side2");
    fs::create_dir_all(&out2).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out2.join("a")).unwrap();
    let errs = dir.path().join("errs.jsonl");
    let r = cls_infer(&[&base[..], &["--out", s(&out2), "--format", "xmp", "--errors", s(&errs)]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0, "written through the link");
    assert!(read_jsonl(&errs).iter().any(|e| e["reason"].as_str().unwrap().contains("symbolic link")));
}

/// `dc:subject` and `lr:hierarchicalSubject` values and the rdf:Description's attributes of an
/// XMP sidecar, read with an XML parser.
fn xmp_keywords(xml: &str) -> (Vec<String>, Vec<String>, BTreeMap<String, String>) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let (mut subjects, mut hier, mut attrs) = (Vec::new(), Vec::new(), BTreeMap::new());
    let mut stack: Vec<String> = Vec::new();
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                if name == "rdf:Description" {
                    for a in e.attributes().flatten() {
                        attrs.insert(
                            String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                            a.unescape_value().unwrap().into_owned(),
                        );
                    }
                }
                stack.push(name);
            }
            Event::End(_) => {
                stack.pop();
            }
            Event::Text(t) => {
                let text = t.xml_content().unwrap().into_owned();
                let inside = |p: &str| stack.iter().any(|s| s == p) && stack.last().is_some_and(|s| s == "rdf:li");
                if inside("dc:subject") {
                    subjects.push(text);
                } else if inside("lr:hierarchicalSubject") {
                    hier.push(text);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    (subjects, hier, attrs)
}

#[test]
fn a_killed_run_resumes_to_the_uninterrupted_output() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = many_images(dir.path(), 3000);
    let model = write_model(dir.path(), true);
    let base = ["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--batch", "1", "--threads", "1"];
    for format in ["jsonl", "csv"] {
        let whole = dir.path().join(format!("whole.{format}"));
        let r = cls_infer(&[&base[..], &["--format", format, "--out", s(&whole)]].concat(), &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let out = dir.path().join(format!("out.{format}"));
        let partial = dir.path().join(format!("out.{format}.partial"));
        // Killed (SIGKILL) once rows have reached the partial file, twice over.
        for round in 0..2 {
            let mut args: Vec<&str> = [&base[..], &["--format", format, "--out", s(&out)]].concat();
            if round > 0 {
                args.push("--resume");
            }
            let mut child = Command::new(binary())
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let t0 = std::time::Instant::now();
            let need = 2000 * (round + 1) as u64;
            while fs::metadata(&partial).map_or(0, |m| m.len()) < need && t0.elapsed() < RUN_LIMIT {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let _ = child.kill(); // SIGKILL
            let status = wait_or_kill(&mut child, RUN_LIMIT, "the killed run");
            assert!(status.code().is_none(), "the run ended before the kill ({status:?}): make it slower");
            assert!(!out.exists(), "{format}: a killed run left an output");
            assert!(partial.exists());
        }
        let r = cls_infer(&[&base[..], &["--format", format, "--out", s(&out), "--resume"]].concat(), &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stderr.contains("skipped (already in the output)"), "{}", r.stderr);
        assert_eq!(fs::read(&out).unwrap(), fs::read(&whole).unwrap(), "{format}: resumed output differs");
        assert!(!partial.exists());
        // Resuming a complete output tags nothing and keeps it.
        let r = cls_infer(&[&base[..], &["--format", format, "--out", s(&out), "--resume"]].concat(), &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stderr.contains("tagged 0 images") && r.stderr.contains("3000 skipped"), "{}", r.stderr);
        assert_eq!(fs::read(&out).unwrap(), fs::read(&whole).unwrap());
        // A new image is added after the old rows.
        let stats: Value =
            serde_json::from_str(&fs::read_to_string(dir.path().join(format!("out.{format}.stats.json"))).unwrap())
                .unwrap();
        assert_eq!((stats["images_tagged"].as_u64(), stats["images_skipped"].as_u64()), (Some(0), Some(3000)));
    }
    exits_2_saying(&[&base[..], &["--resume"]].concat(), "--resume needs --out FILE");
}

#[test]
fn stats_files_and_missing_shards() {
    let dir = tempfile::tempdir().unwrap();
    let gt = make_labelled(dir.path());
    let imgs = dir.path().join("imgs");
    let model = write_model(dir.path(), true);
    let base = ["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--threads", "2"];
    let mut parts = Vec::new();
    for i in 0..4 {
        let part = dir.path().join(format!("part{i}.jsonl"));
        let r = cls_infer(&[&base[..], &["--shard", &format!("{i}/4"), "--out", s(&part)]].concat(), &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let st: Value =
            serde_json::from_str(&fs::read_to_string(dir.path().join(format!("part{i}.jsonl.stats.json"))).unwrap())
                .unwrap();
        assert_eq!(st["shard"], serde_json::json!({"index": i, "count": 4}));
        assert_eq!(st["images_tagged"].as_u64().unwrap() as usize, read_jsonl(&part).len());
        assert_eq!(st["images_failed"], 0);
        assert_eq!(st["complete"], true);
        assert!(st["images_per_second"].as_f64().unwrap() > 0.0 && st["seconds"].as_f64().unwrap() > 0.0);
        assert_eq!(st["thresholds"]["global"], 0.5);
        let sha = Command::new("sha256sum").arg(&model).output().unwrap();
        assert_eq!(
            st["model_sha256"].as_str().unwrap(),
            String::from_utf8_lossy(&sha.stdout).split_whitespace().next().unwrap()
        );
        parts.push(part);
    }
    let parts: Vec<&str> = parts.iter().map(|p| s(p)).collect();
    let eval = ["--model", s(&model), "--images", s(&imgs), "--ground-truth", s(&gt), "--from-tags"];
    let r = cls_infer(&[&eval[..], &[parts[0], parts[2]]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("2 of 4 shards have no tag file here") && r.stderr.contains("1/4, 3/4"), "{}", r.stderr);
    let r = cls_infer(&[&eval[..], &parts[..]].concat(), &[]);
    assert!(!r.stderr.contains("have no tag file"), "{}", r.stderr);
}

#[test]
fn progress_lines_without_a_terminal_and_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = many_images(dir.path(), 150);
    let model = write_model(dir.path(), true);
    let base = [
        "--model",
        s(&model),
        "--images",
        s(&imgs),
        "--device",
        "cpu",
        "--batch",
        "1",
        "--threads",
        "1",
        "--out",
        "/dev/null",
    ];
    let r = cls_infer(&[&base[..], &["--log-every", "0.02"]].concat(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| l.contains("/150 images (") && l.contains("ETA")).collect();
    assert!(!lines.is_empty(), "no progress line:\n{}", r.stderr);
    assert!(lines.iter().all(|l| l.starts_with("cls-infer: ")), "{lines:?}");
    // -q: warnings and errors only.
    let q = cls_infer(&[&base[..], &["--log-every", "0.02", "-q"]].concat(), &[]);
    assert_eq!(q.code, 0, "{}", q.stderr);
    assert!(q.stderr.is_empty(), "{}", q.stderr);
}

#[test]
fn max_errors_stops_a_broken_input_and_devices_parse() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    fs::create_dir_all(&imgs).unwrap();
    solid([250, 0, 0], 8, 8).save(imgs.join("000.png")).unwrap();
    for i in 1..40 {
        fs::write(imgs.join(format!("{i:03}.jpg")), b"broken").unwrap();
    }
    let model = write_model(dir.path(), true);
    let out = dir.path().join("t.jsonl");
    let base = ["--model", s(&model), "--images", s(&imgs), "--device", "cpu", "--batch", "2", "--out", s(&out)];
    let r = cls_infer(&[&base[..], &["--max-errors", "5"]].concat(), &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("more than 5 images failed"), "{}", r.stderr);
    let rows = read_jsonl(&out);
    assert!(rows.len() < 40 && rows.iter().filter(|v| v.get("error").is_some()).count() == 6, "{rows:?}");
    let st: Value = serde_json::from_str(&fs::read_to_string(dir.path().join("t.jsonl.stats.json")).unwrap()).unwrap();
    assert_eq!(st["complete"], false);
    let first = imgs.join("000.png");
    let one = ["--model", s(&model), "--images", s(&first)];
    exits_2_saying(&[&one[..], &["--device", "cuda:x"]].concat(), "cuda:N");
    exits_2_saying(&[&one[..], &["--device", "gpu"]].concat(), "cuda:N");
    let cuda = cls_infer(&[&one[..], &["--device", "cuda:0"]].concat(), &[]);
    assert!(cuda.code == 0 || (cuda.code == 2 && cuda.stderr.contains("--device cuda:0")), "{}", cuda.stderr);
}

#[test]
fn list_entries_that_climb_out_are_not_mirrored_out_of_out() {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("work/list");
    fs::create_dir_all(&inner).unwrap();
    solid([0, 250, 0], 8, 8).save(dir.path().join("work/g.png")).unwrap();
    solid([250, 0, 0], 8, 8).save(inner.join("r.png")).unwrap();
    let list = inner.join("l.txt");
    fs::write(&list, "../g.png\nr.png\n").unwrap();
    let model = write_model(dir.path(), true);
    let side = dir.path().join("work/side");
    let errs = dir.path().join("e.jsonl");
    let r = cls_infer(
        &[
            "--model",
            s(&model),
            "--images",
            &format!("@{}", list.display()),
            "--device",
            "cpu",
            "--format",
            "xmp",
            "--out",
            s(&side),
            "--errors",
            s(&errs),
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(side.join("r.png.xmp").is_file());
    assert!(!dir.path().join("work/g.png.xmp").exists());
    let e = read_jsonl(&errs);
    assert_eq!(e.len(), 1);
    assert!(e[0]["path"] == "../g.png" && e[0]["reason"].as_str().unwrap().contains("climbs out"), "{e:?}");
    let names: BTreeSet<String> =
        fs::read_dir(&side).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["r.png.xmp".to_string()].into());
}
