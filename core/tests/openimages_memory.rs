//! Peak memory of the Open Images reader on a generated 200,000-line labels CSV (20,000 images
//! × 10 rows, the rows of each image spread over the whole file). The reader streams: what it
//! holds grows with the images and the kept classes (the dense targets, the ImageID index,
//! the samples), not with the file.
//!
//! This file holds one test so that its process is alone: the peak resident set (`VmHWM` in
//! `/proc/self/status`, reset through `/proc/self/clear_refs` where the kernel allows) then
//! measures this reader. Run with `--nocapture` to see the numbers; `CLS_OI_ROWS_PER_IMAGE=N`
//! writes N rows per image instead of 10 (a longer file over the same images and classes: the
//! growth should not change).

use cls_core::labels::{NEG, POS, UNK};
use cls_core::readers::{read_open_images, ReadOptions};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use tempfile::TempDir;

const IMAGES: usize = 20_000;
const ROWS_PER_IMAGE: usize = 10;
const CLASSES: usize = 200;
const MB: f64 = 1024.0 * 1024.0;

/// A field of `/proc/self/status` in bytes (`VmHWM`, `VmRSS`).
fn status_bytes(field: &str) -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Reset the peak resident set to the current one (Linux ≥ 4.0); false where not allowed.
fn reset_peak() -> bool {
    fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[test]
fn open_images_reader_peak_memory_is_flat() {
    if status_bytes("VmHWM").is_none() {
        eprintln!("skipped: no /proc/self/status VmHWM on this system");
        return;
    }
    let dir = TempDir::new().unwrap();
    let desc = dir.path().join("oidv6-class-descriptions.csv");
    let mut w = BufWriter::new(File::create(&desc).unwrap());
    writeln!(w, "LabelName,DisplayName").unwrap();
    for c in 0..CLASSES {
        writeln!(w, "/m/0c{c:04x},Class {c}").unwrap();
    }
    w.flush().unwrap();
    drop(w);

    // Written row by row: the generator holds no more than the reader should.
    let labels = dir.path().join("oidv6-train-annotations-human-imagelabels.csv");
    let mut w = BufWriter::new(File::create(&labels).unwrap());
    writeln!(w, "ImageID,Source,LabelName,Confidence").unwrap();
    let id = |i: usize| format!("{:016x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let rows_per_image: usize =
        std::env::var("CLS_OI_ROWS_PER_IMAGE").ok().and_then(|v| v.parse().ok()).unwrap_or(ROWS_PER_IMAGE);
    for j in 0..rows_per_image {
        for i in 0..IMAGES {
            let class = (i * 7 + j * 19) % CLASSES;
            let source = if (i + j) % 2 == 0 { "verification" } else { "crowdsource-verification" };
            let confidence = if (i + j) % 3 == 0 { 0 } else { 1 };
            writeln!(w, "{},{source},/m/0c{class:04x},{confidence}", id(i)).unwrap();
        }
    }
    w.flush().unwrap();
    drop(w);
    let csv_bytes = fs::metadata(&labels).unwrap().len();
    let lines = IMAGES * rows_per_image + 1;

    let reset = reset_peak();
    let before = if reset { status_bytes("VmRSS") } else { status_bytes("VmHWM") }.unwrap();
    let opts = ReadOptions {
        classes: Some(desc.clone()),
        images: Some(dir.path().join("images")),
        check_images: false,
        ..ReadOptions::default()
    };
    let loaded = read_open_images(&labels, &opts).unwrap();
    let peak = status_bytes("VmHWM").unwrap();

    let ds = &loaded.dataset;
    assert_eq!((ds.len(), ds.num_classes()), (IMAGES, CLASSES));
    assert_eq!(ds.samples[1].id, id(1));
    let count = |state: i8| ds.targets.iter().filter(|&&v| v == state).count();
    let listed = count(POS) + count(NEG);
    assert_eq!(listed + count(UNK), IMAGES * CLASSES);
    assert!(listed > 0 && listed <= IMAGES * rows_per_image);

    let growth = peak.saturating_sub(before);
    let dense = (IMAGES * CLASSES) as u64;
    let bound = dense as f64 * 1.5 + 30.0 * MB;
    println!(
        "Open Images reader, {lines} lines ({:.1} MB CSV), {IMAGES} images × {CLASSES} classes: \
         peak RSS growth {:.1} MB (dense targets {:.1} MB; bound 1.5 × dense + 30 MB = {:.1} MB; \
         growth / CSV size = {:.2}; baseline {} {:.1} MB)",
        csv_bytes as f64 / MB,
        growth as f64 / MB,
        dense as f64 / MB,
        bound / MB,
        growth as f64 / csv_bytes as f64,
        if reset { "VmRSS after clear_refs" } else { "VmHWM" },
        before as f64 / MB,
    );
    assert!((growth as f64) < bound, "peak RSS grew {growth} bytes, over the bound {bound}");
}
