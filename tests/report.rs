//! The error-analysis page of `cls-infer --report` (infer/src/report.rs) in a real browser:
//! headless Chromium (Debian's `chromium`) opens a page written from a generated dataset whose
//! file and class names are hostile markup, and the test checks the DOM it built (rows,
//! thumbnails that loaded, names as text, no injected element, no injected script ran, sorting)
//! and that a screenshot is not blank. The same for `cls-train report --out FILE.html`'s
//! comparison page (trainer/src/report.rs) on real tiny runs with hostile run and class names.
//!
//! Without Chromium the tests say so and pass, unless `CI` is set (to anything but empty, `0` or
//! `false`): CI installs it (`.ci/run`), so there a missing browser fails;
//! `CHROMIUM=/path/to/chrome` picks another browser binary.
//!
//! The page writer lives in the cls-infer binary crate, which has no library target: it is
//! included here as a module (it needs only cls-core, anyhow, image and ndarray), so the test
//! calls `write_report` itself.

#[allow(dead_code)]
#[path = "../infer/src/report.rs"]
mod report;

use cls_core::metrics::{evaluate, Metrics};
use cls_tests::{output_within, Lcg, RUN_LIMIT};
use ndarray::Array2;
use report::{write_report, ReportImage, ReportInput, ReportSummary};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The browser, or `None` (with the reason printed) when it is missing outside CI.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let found = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"].iter().find_map(|name| {
        std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|d| d.join(name)).find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false")) {
            panic!("chromium is not installed, and CI is set: CI must install it (apt-get install -y chromium)");
        }
        eprintln!("SKIPPED: no chromium on PATH (apt-get install -y chromium), and CI is unset");
    }
    found
}

/// Run headless Chromium on `url` with `args` (its own profile folder under `scratch`);
/// returns its stdout.
fn run_chromium(browser: &Path, scratch: &Path, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir_in(scratch).unwrap();
    let mut cmd = Command::new(browser);
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
        .arg("--hide-scrollbars")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url);
    let out = output_within(&mut cmd, RUN_LIMIT);
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("the DOM is UTF-8")
}

fn file_url(p: &Path) -> String {
    cls_core::html::file_url(p)
}

const HOSTILE_FILES: [&str; 3] = [
    "<img src=x onerror=alert(1)>.jpg",
    "a\"b&c.jpg",
    "<img src=x onerror=document.documentElement.dataset.pwned=1>.png",
];
const CLASSES: [&str; 5] = [
    "red",
    "green",
    "blue",
    "<script>alert(1)</script>",
    "\"><img src=x onerror=document.documentElement.dataset.pwned=2><script>document.documentElement.dataset.pwned=3</script>",
];

/// A dataset of coloured squares on grey (classes red, green, blue by the squares present; the
/// two hostile classes at random), scores that make some false positives and negatives, the
/// hostile files among the worst errors. Returns the images and the report's inputs.
struct Data {
    classes: Vec<String>,
    images: Vec<ReportImage>,
    scores: Array2<f32>,
    truth: Array2<i8>,
    metrics: Metrics,
}

fn dataset(dir: &Path, n: usize) -> Data {
    let mut r = Lcg(7);
    let nc = CLASSES.len();
    let (mut scores, mut truth) = (Array2::<f32>::zeros((n, nc)), Array2::<i8>::zeros((n, nc)));
    let mut images = Vec::new();
    for i in 0..n {
        let name = if i < HOSTILE_FILES.len() { HOSTILE_FILES[i].to_string() } else { format!("img_{i:03}.png") };
        let mut img = image::RgbImage::from_pixel(48, 40, image::Rgb([128, 128, 128]));
        for c in 0..nc {
            let pos = r.next() < 0.45;
            truth[[i, c]] = if pos { 1 } else { -1 };
            // Positives score 0.35..0.95, negatives 0..0.6: errors on both sides.
            scores[[i, c]] = (if pos { 0.35 + 0.6 * r.next() } else { 0.6 * r.next() }) as f32;
            if pos && c < 3 {
                let (x0, y0) = ((r.next() * 30.0) as u32, (r.next() * 24.0) as u32);
                let mut px = [40u8, 40, 40];
                px[c] = 230;
                for y in y0..y0 + 16 {
                    for x in x0..x0 + 16 {
                        img.put_pixel(x, y, image::Rgb(px));
                    }
                }
            }
        }
        let path = dir.join(&name);
        img.save(&path).unwrap();
        images.push(ReportImage { name, path });
    }
    // The hostile files are the worst errors of some class each.
    truth[[0, 0]] = 1;
    scores[[0, 0]] = 0.001; // a false negative of "red"
    truth[[1, 3]] = -1;
    scores[[1, 3]] = 0.999; // a false positive of the <script> class
    truth[[2, 4]] = -1;
    scores[[2, 4]] = 0.998; // a false positive of the other hostile class
    let metrics = evaluate(scores.view(), truth.view(), 0.5).unwrap();
    Data { classes: CLASSES.iter().map(|c| c.to_string()).collect(), images, scores, truth, metrics }
}

fn write(data: &Data, dir: &Path) -> ReportSummary {
    let about = vec![("ground truth".to_string(), "<b>generated</b>".to_string())];
    let input = ReportInput {
        classes: &data.classes,
        images: &data.images,
        scores: data.scores.view(),
        truth: data.truth.view(),
        metrics: &data.metrics,
        about: &about,
    };
    write_report(dir, &input).unwrap()
}

/// A start or end tag of serialised HTML, found by a small tokenizer that knows quoted
/// attribute values, comments and the raw text of `<script>` and `<style>`: text never yields a
/// tag (the serialiser writes its `<` as `&lt;`).
#[derive(Debug)]
enum Tag {
    Start { name: String, attrs: Vec<(String, String)> },
    End { name: String },
}

impl Tag {
    fn attr(&self, key: &str) -> Option<&str> {
        match self {
            Tag::Start { attrs, .. } => attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()),
            Tag::End { .. } => None,
        }
    }
    fn is_start(&self, tag: &str) -> bool {
        matches!(self, Tag::Start { name, .. } if name == tag)
    }
    fn is_end(&self, tag: &str) -> bool {
        matches!(self, Tag::End { name } if name == tag)
    }
}

fn tags(html: &str) -> Vec<Tag> {
    let b = html.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        if html[i..].starts_with("<!--") {
            i += html[i..].find("-->").map_or(b.len() - i, |e| e + 3);
            continue;
        }
        if html[i..].starts_with("<!") {
            i += html[i..].find('>').map_or(b.len() - i, |e| e + 1);
            continue;
        }
        let end = b.get(i + 1) == Some(&b'/');
        let mut j = i + 1 + usize::from(end);
        let start = j;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'-') {
            j += 1;
        }
        if j == start {
            panic!("a bare '<' in the serialised DOM at byte {i}: {}", &html[i..(i + 80).min(html.len())]);
        }
        let name = html[start..j].to_ascii_lowercase();
        let mut attrs = Vec::new();
        loop {
            while j < b.len() && (b[j].is_ascii_whitespace() || b[j] == b'/') {
                j += 1;
            }
            if j >= b.len() || b[j] == b'>' {
                j += 1;
                break;
            }
            let k0 = j;
            while j < b.len() && !b[j].is_ascii_whitespace() && !matches!(b[j], b'=' | b'>' | b'/') {
                j += 1;
            }
            let key = html[k0..j].to_ascii_lowercase();
            let mut value = String::new();
            if b.get(j) == Some(&b'=') {
                j += 1;
                if let Some(&q @ (b'"' | b'\'')) = b.get(j) {
                    let close = html[j + 1..].find(q as char).expect("an unclosed attribute value") + j + 1;
                    value = html[j + 1..close].to_string();
                    j = close + 1;
                } else {
                    let v0 = j;
                    while j < b.len() && !b[j].is_ascii_whitespace() && b[j] != b'>' {
                        j += 1;
                    }
                    value = html[v0..j].to_string();
                }
            }
            attrs.push((key, value));
        }
        if end {
            out.push(Tag::End { name });
        } else {
            let raw = name == "script" || name == "style";
            out.push(Tag::Start { name: name.clone(), attrs });
            if raw {
                let close = format!("</{name}");
                j += html[j..].find(&close).unwrap_or(b.len() - j);
            }
        }
        i = j;
    }
    out
}

/// The rows of the body of the table with `id`: each row's tags.
fn table_rows<'a>(all: &'a [Tag], id: &str) -> Vec<&'a [Tag]> {
    let start = all.iter().position(|t| t.is_start("table") && t.attr("id") == Some(id)).expect("the table");
    let end = start + all[start..].iter().position(|t| t.is_end("table")).expect("its end");
    let body = start + all[start..end].iter().position(|t| t.is_start("tbody")).expect("its body");
    let mut rows = Vec::new();
    let mut k = body;
    while k < end {
        if all[k].is_start("tr") {
            let close = k + all[k..end].iter().position(|t| t.is_end("tr")).expect("the row's end");
            rows.push(&all[k..close]);
            k = close;
        }
        k += 1;
    }
    rows
}

/// Pixels that are not near-white, and the count of distinct colours, of a PNG screenshot.
fn looks(png: &Path) -> (f64, usize, image::RgbImage) {
    let img = image::open(png).unwrap_or_else(|e| panic!("{}: {e}", png.display())).to_rgb8();
    let total = (img.width() * img.height()) as f64;
    let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    let inked = img.pixels().filter(|p| p.0.iter().any(|&v| v < 235)).count() as f64;
    (inked / total, colours.len(), img)
}

/// The checks every page must pass in the browser: its own script ran and nothing else (one
/// script, by nonce; no event-handler attribute, no foreign element, no remote or `javascript:`
/// URL, no `data-pwned` mark from an injected handler). Returns the tags.
fn check_safe(dom: &str) -> Vec<Tag> {
    let all = tags(dom);
    let root = all.iter().find(|t| t.is_start("html")).expect("an <html> element");
    // The page's own script ran (so scripts do run here) and no injected one did.
    assert_eq!(root.attr("data-js"), Some("ready"), "the page's script did not run:\n{dom}");
    assert!(root.attr("data-pwned").is_none() && !dom.contains("data-pwned="), "injected markup ran:\n{dom}");
    let scripts: Vec<&Tag> = all.iter().filter(|t| t.is_start("script")).collect();
    assert_eq!(scripts.len(), 1, "one script, the page's own: {scripts:?}");
    assert!(scripts[0].attr("nonce").is_some_and(|n| n.len() == 32));
    for t in &all {
        if let Tag::Start { name, attrs } = t {
            let meta_ok = attrs.iter().all(|(k, _)| ["charset", "http-equiv", "content", "name"].contains(&k.as_str()));
            assert!(
                !["iframe", "object", "embed", "base", "form", "link", "meta"].contains(&name.as_str())
                    || (name == "meta" && meta_ok),
                "an unexpected element: {t:?}"
            );
            for (k, v) in attrs {
                assert!(!k.starts_with("on"), "an event handler attribute: {t:?}");
                assert!(!v.contains("javascript:"), "a javascript: URL: {t:?}");
                if k == "href" || k == "src" {
                    assert!(!v.starts_with("http") && !v.starts_with("//"), "a remote URL: {t:?}");
                }
            }
        }
    }
    all
}

/// The checks every error-analysis page must pass in the browser: [`check_safe`], `texts` are in
/// the DOM as escaped text, `originals` are linked by percent-encoded `file://` URLs, the tables
/// have their rows, and every `<img>` is a hash-named thumbnail under `thumbs/` that exists and
/// loaded. Returns the tags and the distinct thumbnail files.
fn check_page(
    dom: &str,
    report_dir: &Path,
    texts: &[&str],
    originals: &[&Path],
    class_rows: usize,
    image_rows: usize,
) -> (Vec<Tag>, HashSet<String>) {
    let all = check_safe(dom);
    let root = all.iter().find(|t| t.is_start("html")).expect("an <html> element");
    for text in texts {
        assert!(dom.contains(text), "{text} is not in the DOM as text");
    }
    let hrefs: HashSet<&str> = all.iter().filter_map(|t| t.attr("href")).collect();
    for p in originals {
        let url = file_url(p);
        assert!(url.is_ascii() && !url.contains(['<', '>', '"', '&', ' ']), "{url}");
        assert!(hrefs.contains(url.as_str()), "no link to {} ({url})", p.display());
    }
    assert_eq!(table_rows(&all, "class-table").len(), class_rows);
    assert_eq!(table_rows(&all, "image-table").len(), image_rows);
    // Thumbnails: every <img> is one, named by a hash, present on disk, and every one loaded.
    let imgs: Vec<&Tag> = all.iter().filter(|t| t.is_start("img")).collect();
    let mut files = HashSet::new();
    for t in &imgs {
        assert_eq!(t.attr("class"), Some("thumb"), "{t:?}");
        let src = t.attr("src").unwrap();
        let file = src.strip_prefix("thumbs/").unwrap_or_else(|| panic!("a thumbnail outside thumbs/: {src}"));
        assert!(
            file.len() == 36 && file.ends_with(".jpg") && file[..32].bytes().all(|b| b.is_ascii_hexdigit()),
            "{src}"
        );
        assert!(report_dir.join(src).is_file(), "{src} missing");
        files.insert(file.to_string());
    }
    assert_eq!(root.attr("data-thumbs-loaded"), Some(imgs.len().to_string().as_str()), "thumbnails did not load");
    (all, files)
}

/// The hostile names as Chromium serialises their text.
const HOSTILE_TEXTS: [&str; 5] = [
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&lt;img src=x onerror=alert(1)&gt;.jpg",
    "a\"b&amp;c.jpg",
    "&lt;img src=x onerror=document.documentElement.dataset.pwned=1&gt;.png",
    "\"&gt;&lt;img src=x onerror=document.documentElement.dataset.pwned=2&gt;&lt;script&gt;",
];

/// [`check_page`] and what is known of the generated dataset's page.
fn check_dom(dom: &str, data: &Data, summary: &ReportSummary, report_dir: &Path) {
    let texts: Vec<&str> = HOSTILE_TEXTS.iter().copied().chain(["&lt;b&gt;generated&lt;/b&gt;"]).collect();
    let originals: Vec<&Path> =
        HOSTILE_FILES.iter().map(|f| data.images.iter().find(|i| i.name == *f).unwrap().path.as_path()).collect();
    let (all, files) = check_page(dom, report_dir, &texts, &originals, CLASSES.len(), data.images.len());
    assert_eq!(summary.image_rows, data.images.len());
    assert_eq!(files.len(), summary.thumbnails);
    assert!(all.iter().filter(|t| t.is_start("img")).count() >= 2 * CLASSES.len());
    // Opened at #sort=ap-asc: the class table is in increasing AP.
    let order: Vec<usize> = table_rows(&all, "class-table")
        .iter()
        .map(|row| {
            let a = row.iter().find_map(|t| t.attr("href").filter(|h| h.starts_with("#class-"))).expect("a class link");
            a["#class-".len()..].parse().unwrap()
        })
        .collect();
    let mut expected: Vec<usize> = (0..CLASSES.len()).collect();
    expected.sort_by(|&a, &b| data.metrics.per_class_ap[a].unwrap().total_cmp(&data.metrics.per_class_ap[b].unwrap()));
    assert_eq!(order, expected, "the class table is not sorted by AP (#sort=ap-asc)");
    // One section per class, each with its curve and its operating point.
    assert_eq!(all.iter().filter(|t| t.is_start("section")).count(), CLASSES.len());
    assert_eq!(all.iter().filter(|t| t.is_start("polyline")).count(), CLASSES.len());
    assert_eq!(all.iter().filter(|t| t.is_start("circle")).count(), CLASSES.len());
}

#[test]
fn page_renders_in_chromium_and_hostile_names_stay_text() {
    let Some(browser) = chromium() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let data = dataset(&images, 40);
    let out = tmp.path().join("report");
    let summary = write(&data, &out);
    assert!(summary.unreadable.is_empty(), "{:?}", summary.unreadable);
    // Only the report folder was written (beside the images).
    let mut top: Vec<String> =
        std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    top.sort();
    assert_eq!(top, ["images", "report"]);
    assert_eq!(std::fs::read_dir(&images).unwrap().count(), data.images.len());
    let page = format!("{}#sort=ap-asc", file_url(&summary.index));

    let dom = run_chromium(&browser, tmp.path(), &page, &["--dump-dom"]);
    check_dom(&dom, &data, &summary, &out);

    // Screenshots: the top of the page (metrics, class table), and a tall one down to the
    // first classes' thumbnails (coloured squares: green ones only there; the page's own colours
    // have no such green).
    let shot = tmp.path().join("top.png");
    let url = file_url(&summary.index);
    run_chromium(&browser, tmp.path(), &url, &[&format!("--screenshot={}", shot.display()), "--window-size=1200,900"]);
    let (inked, colours, img) = looks(&shot);
    assert_eq!(img.dimensions(), (1200, 900));
    assert!(inked > 0.01 && inked < 0.9 && colours > 16, "a blank screenshot: {inked} inked, {colours} colours");
    let shot = tmp.path().join("tall.png");
    run_chromium(&browser, tmp.path(), &url, &[&format!("--screenshot={}", shot.display()), "--window-size=1200,2400"]);
    let (inked, colours, img) = looks(&shot);
    assert!(inked > 0.05 && colours > 16, "a blank screenshot: {inked} inked, {colours} colours");
    let green = img.pixels().filter(|p| p.0[1] > 180 && p.0[0] < 90 && p.0[2] < 90).count();
    assert!(green > 1000, "no thumbnail on screen ({green} green pixels)");
}

#[test]
fn huge_sets_show_the_worst_images_with_a_note() {
    let Some(browser) = chromium() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let n = report::MAX_IMAGE_ROWS + 40;
    let data = dataset(&images, n);
    let out = tmp.path().join("report");
    let summary = write(&data, &out);
    assert_eq!(summary.image_rows, report::MAX_IMAGE_ROWS);
    let dom = run_chromium(&browser, tmp.path(), &file_url(&summary.index), &["--dump-dom"]);
    let all = tags(&dom);
    let rows = table_rows(&all, "image-table");
    assert_eq!(rows.len(), report::MAX_IMAGE_ROWS);
    assert!(dom.contains(&format!("{n} images; shown: the {} with the most", report::MAX_IMAGE_ROWS)));
    // Most errors first: the errors column (the second cell's data-v) never increases.
    let errors: Vec<usize> = rows
        .iter()
        .map(|r| r.iter().filter(|t| t.is_start("td")).nth(1).and_then(|t| t.attr("data-v")).unwrap().parse().unwrap())
        .collect();
    assert!(errors.windows(2).all(|w| w[0] >= w[1]), "{errors:?}");
    // The images left out have no more errors than the last one shown.
    let per_image = |i: usize| {
        (0..CLASSES.len())
            .filter(|&c| {
                let p = f64::from(data.scores[[i, c]]) >= data.metrics.threshold;
                (data.truth[[i, c]] == 1) != p
            })
            .count()
    };
    let mut all_errors: Vec<usize> = (0..n).map(per_image).collect();
    all_errors.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(errors, all_errors[..report::MAX_IMAGE_ROWS]);
}

/// The colour model of tests/infer.rs (GlobalAveragePool → Gemm → Sigmoid: a red image scores
/// high on "red"), its fourth class named `class4`.
fn model_bytes(class4: &str) -> Vec<u8> {
    use cls_onnx::builder::{Attr, Dim};
    let mut g = cls_onnx::GraphBuilder::new("colour");
    g.input_f32("images", &[Dim::Named("N".into()), Dim::Fixed(3), Dim::Fixed(16), Dim::Fixed(16)]);
    #[rustfmt::skip]
    let w = [
        3.0, -1.0, -1.0,
        -1.0, 3.0, -1.0,
        -1.0, -1.0, 3.0,
        1.0, 1.0, 1.0,
    ];
    let w = g.initializer_f32("w", &[4, 3], &w);
    let b = g.initializer_f32("b", &[4], &[-1.0, -1.0, -1.0, 0.0]);
    let pooled = g.op("GlobalAveragePool", &["images"], &[]);
    let flat = g.op("Flatten", &[&pooled], &[("axis", Attr::Int(1))]);
    let logits = g.op("Gemm", &[&flat, &w, &b], &[("transB", Attr::Int(1))]);
    g.node("Sigmoid", &[&logits], &["probs"], &[]);
    g.output_f32("probs", &[Dim::Named("N".into()), Dim::Fixed(4)]);
    g.metadata("classes", serde_json::to_string(&["red", "green", "blue", class4]).unwrap());
    g.metadata("height", "16");
    g.metadata("width", "16");
    g.metadata("mean", "[0.5, 0.5, 0.5]");
    g.metadata("std", "[0.25, 0.25, 0.25]");
    g.metadata("threshold", "0.5");
    g.to_bytes()
}

/// `cls-infer --ground-truth GT --report DIR` end to end: hostile file names in the folder, a
/// hostile class name in the model and the ground truth, the page checked in Chromium.
#[test]
fn cls_infer_writes_the_report() {
    let Some(browser) = chromium() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    let hostile_class = CLASSES[3];
    let model = tmp.path().join("model.onnx");
    std::fs::write(&model, model_bytes(hostile_class)).unwrap();
    // Solid colours; labels that the model gets partly wrong (so every class has errors).
    let colours: [(&str, [u8; 3]); 4] =
        [("red", [240, 20, 20]), ("green", [20, 240, 20]), ("blue", [20, 20, 240]), ("white", [250, 250, 250])];
    let mut manifest = String::new();
    let mut names = Vec::new();
    for i in 0..16 {
        let name = if i < HOSTILE_FILES.len() { HOSTILE_FILES[i].to_string() } else { format!("img{i:02}.png") };
        let (colour, rgb) = colours[i % 4];
        image::RgbImage::from_pixel(24, 20, image::Rgb(rgb)).save(imgs.join(&name)).unwrap();
        let mut labels: Vec<&str> = match colour {
            "white" => vec![hostile_class],
            c => vec![c],
        };
        // Every third image also claims the next colour (a false negative), every fifth loses its
        // own (a false positive).
        if i % 3 == 0 {
            labels.push(["green", "blue", "red", "red"][i % 4]);
        }
        if i % 5 == 0 {
            labels.remove(0);
        }
        manifest += &serde_json::json!({"image": format!("imgs/{name}"), "labels": labels}).to_string();
        manifest.push('\n');
        names.push(name);
    }
    let gt = tmp.path().join("gt.jsonl");
    std::fs::write(&gt, manifest).unwrap();
    let report = tmp.path().join("report");
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let mut cmd = Command::new(cls_tests::bin("cls-infer"));
    cmd.args(["--model", &p(&model), "--images", &p(&imgs), "--device", "cpu", "--ground-truth", &p(&gt)]).args([
        "--out",
        &p(&tmp.path().join("tags.jsonl")),
        "--report",
        &p(&report),
    ]);
    let out = output_within(&mut cmd, RUN_LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}:\n{stderr}");
    // Only the report, the tags and the inputs: nothing written among the images.
    assert_eq!(std::fs::read_dir(&imgs).unwrap().count(), names.len());
    let index = report.join("index.html");
    let dom = run_chromium(&browser, tmp.path(), &file_url(&index), &["--dump-dom"]);
    let originals: Vec<PathBuf> = HOSTILE_FILES.iter().map(|f| imgs.join(f)).collect();
    let originals: Vec<&Path> = originals.iter().map(PathBuf::as_path).collect();
    let (_, files) = check_page(&dom, &report, &HOSTILE_TEXTS[..4], &originals, 4, names.len());
    assert!(!files.is_empty(), "no thumbnail on the page");
    let shot = tmp.path().join("shot.png");
    run_chromium(
        &browser,
        tmp.path(),
        &file_url(&index),
        &[&format!("--screenshot={}", shot.display()), "--window-size=1200,900"],
    );
    let (inked, colours, _) = looks(&shot);
    assert!(inked > 0.01 && colours > 16, "a blank screenshot: {inked} inked, {colours} colours");
}

/// The texts of the `<text class="tick">` elements of one serialised `<svg>`, in order.
fn tick_texts(svg: &str) -> Vec<String> {
    svg.split("<text class=\"tick\"")
        .skip(1)
        .filter_map(|t| t.split_once('>').and_then(|(_, rest)| rest.split_once('<')).map(|(text, _)| text.to_string()))
        .collect()
}

/// The serialised `<svg>` elements of `dom`, in order.
fn svgs(dom: &str) -> Vec<&str> {
    dom.match_indices("<svg").map(|(i, _)| &dom[i..i + dom[i..].find("</svg>").expect("the svg's end")]).collect()
}

/// `cls-train report RUN... --out FILE.html`: two tiny finished runs (one that selects, one that
/// does not) and an unfinished one, with hostile run-folder and class names, compared on one page
/// that Chromium renders: one row per run, the charts' lines, whole-number epoch ticks, the
/// names as text, nothing injected ran, only the page written, and a screenshot that is not blank.
#[test]
fn cls_train_report_writes_a_comparison_page() {
    let Some(browser) = chromium() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Four label columns, two named with markup.
    let hostile_classes = ["<script>alert(2)</script>", "<img src=x onerror=document.documentElement.dataset.pwned=4>"];
    for (name, n, seed) in [("train.csv", 200, 1), ("test.csv", 80, 2)] {
        let p = dir.join(name);
        cls_tests::write_csv(&p, n, seed);
        let text = std::fs::read_to_string(&p).unwrap();
        let (_, rows) = text.split_once('\n').unwrap();
        let header = format!("f0,f1,f2,f3,f4,f5,f6,f7,a,{},c,{}\n", hostile_classes[0], hostile_classes[1]);
        std::fs::write(&p, header + rows).unwrap();
    }
    // Run folders named with markup ('/' cannot be in a name, so no closing tags).
    let runs = ["run<img src=x onerror=document.documentElement.dataset.pwned=1>", "run\"a&b'", "unfinished<b>"];
    let train = |run: &str, method: &str, seed: &str, extra: &[&str]| {
        let mut cmd = Command::new(cls_tests::bin("cls-train"));
        cmd.current_dir(dir)
            .args(["--data", "train.csv", "--test", "test.csv", "--label-columns", "4", "--backbone", "mlp"])
            .args(["--mlp-hidden", "16", "--batch-size", "32", "--lr", "0.01", "--partial", "0.5", "--epochs", "2"])
            .args(["--threads", "1", "--method", method, "--seed", seed, "--run-dir", run])
            .args(extra);
        let out = output_within(&mut cmd, RUN_LIMIT);
        assert!(out.status.success(), "{cmd:?}:\n{}", String::from_utf8_lossy(&out.stderr));
    };
    train(runs[0], "cls", "1", &[]);
    train(runs[1], "an", "2", &[]);
    train(runs[2], "an", "3", &["--stop-after", "1"]);
    let out_dir = dir.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let mut cmd = Command::new(cls_tests::bin("cls-train"));
    cmd.current_dir(dir).arg("report").args(runs).args([
        "--out",
        "out/compare.html",
        "--title",
        "<script>alert(3)</script>",
    ]);
    let out = output_within(&mut cmd, RUN_LIMIT);
    assert!(out.status.success(), "{cmd:?}:\n{}", String::from_utf8_lossy(&out.stderr));
    // The page and nothing else: no plot folder, no temporary file.
    let written: Vec<String> =
        std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(written, ["compare.html"]);
    assert!(!dir.join("compare_plots").exists() && !out_dir.join("compare_plots").exists());
    assert!(cls_tests::leftover_temps(dir).is_empty(), "{:?}", cls_tests::leftover_temps(dir));
    // A page inside a run folder is refused, and nothing is written there.
    let before = cls_tests::snapshot(&dir.join(runs[1]));
    let err = cls_tests::fails_cleanly(
        Command::new(cls_tests::bin("cls-train"))
            .current_dir(dir)
            .arg("report")
            .args(runs)
            .args(["--out", &format!("{}/compare.html", runs[1])]),
        1,
    );
    assert!(err.contains("--out"), "{err}");
    assert!(cls_tests::snapshot(&dir.join(runs[1])) == before, "a refused report changed the run folder");
    let page = out_dir.join("compare.html");
    let source = std::fs::read_to_string(&page).unwrap();
    assert!(source.contains("http-equiv=\"Content-Security-Policy\"") && source.contains("default-src 'none'"));

    let dom = run_chromium(&browser, dir, &file_url(&page), &["--dump-dom"]);
    let all = check_safe(&dom);
    // One row per run, in the order given, each naming its folder as text.
    let rows = table_rows(&all, "runs-table");
    assert_eq!(rows.len(), runs.len());
    for text in [
        "&lt;script&gt;alert(3)&lt;/script&gt;",
        "run&lt;img src=x onerror=document.documentElement.dataset.pwned=1&gt;",
        "run\"a&amp;b'",
        "unfinished&lt;b&gt;",
        "&lt;script&gt;alert(2)&lt;/script&gt;",
        "&lt;img src=x onerror=document.documentElement.dataset.pwned=4&gt;",
        "1/2 (unfinished)",
    ] {
        assert!(dom.contains(text), "{text} is not in the DOM as text");
    }
    let cells: Vec<Vec<String>> = dom
        .split("<tbody>")
        .nth(1)
        .unwrap()
        .split("</tbody>")
        .next()
        .unwrap()
        .split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|c| c.split_once('>').unwrap().1.split("</td>").next().unwrap().to_string())
                .collect()
        })
        .collect();
    assert_eq!(cells.len(), runs.len());
    assert!(cells[0][0].contains("run&lt;img src=x") && cells[1][0].contains("run\"a&amp;b'"), "{cells:?}");
    assert_eq!((cells[0][1].as_str(), cells[1][1].as_str(), cells[2][1].as_str()), ("cls", "an", "an"));
    assert_eq!((cells[0][3].as_str(), cells[1][3].as_str(), cells[2][3].as_str()), ("1", "2", "3"), "seeds");
    assert_eq!((cells[0][4].as_str(), cells[1][4].as_str()), ("2/2", "2/2"), "epochs");
    for row in &cells[..2] {
        // val and test mAP, CF1, OF1: percentages.
        for v in &row[6..12] {
            let v: f64 = v.parse().unwrap_or_else(|_| panic!("not a number: {v} in {row:?}"));
            assert!((0.0..=100.0).contains(&v), "{row:?}");
        }
        assert!(row[12].starts_with("calibrated"), "{row:?}");
    }
    // Charts: validation mAP (a line per run: two epochs each, a dot for the unfinished run's one),
    // the selection's precision and recall (only the cls run selects).
    let charts = svgs(&dom);
    assert_eq!(charts.len(), 3, "validation mAP, selection precision and recall");
    let lines = |svg: &str| -> Vec<usize> {
        svg.split("<polyline")
            .skip(1)
            .map(|p| p.split("points=\"").nth(1).unwrap().split('"').next().unwrap().split_whitespace().count())
            .collect()
    };
    assert_eq!(lines(charts[0]), [2, 2, 1]);
    assert_eq!(charts[0].matches("<circle class=\"point\"").count(), 1, "the unfinished run's single epoch");
    assert_eq!(charts[0].matches("<circle class=\"mark-of\"").count(), 2, "the finished runs' best epochs");
    assert_eq!(lines(charts[1]), [1]);
    assert_eq!(lines(charts[2]), [1]);
    assert_eq!(all.iter().filter(|t| t.is_start("polyline")).count(), 5);
    // Whole-number epoch ticks on x, then the y ticks.
    for svg in &charts {
        let ticks = tick_texts(svg);
        assert_eq!(&ticks[..2], ["1", "2"], "{ticks:?}");
        assert!(ticks[2..].iter().all(|t| t.parse::<f64>().is_ok_and(|v| v.fract() == 0.0)), "{ticks:?}");
    }
    // Per-class AP: a row per class, a column per finished run.
    assert_eq!(table_rows(&all, "per-class-table").len(), 4);

    // A screenshot: not blank, and the first two runs' lines in their colours.
    let shot = dir.join("shot.png");
    run_chromium(
        &browser,
        dir,
        &file_url(&page),
        &[&format!("--screenshot={}", shot.display()), "--window-size=1200,1400"],
    );
    let (inked, colours, img) = looks(&shot);
    assert!(inked > 0.01 && inked < 0.9 && colours > 16, "a blank screenshot: {inked} inked, {colours} colours");
    for hex in ["#1f6feb", "#d1242f"] {
        let v = u32::from_str_radix(&hex[1..], 16).unwrap();
        let rgb = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        let near = img.pixels().filter(|p| p.0.iter().zip(rgb).all(|(&a, b)| a.abs_diff(b) < 40)).count();
        assert!(near > 100, "no line in {hex} on screen ({near} pixels)");
    }
}
