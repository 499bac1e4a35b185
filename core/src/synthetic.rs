//! The built-in synthetic multi-label dataset: what `cls-train` uses without `--data`, and what
//! the README demo runs on. Small images of coloured shapes on textured backgrounds.
//!
//! Design (so that a small CNN on a CPU learns it in minutes, but not from colour alone):
//! - 12 classes, each a **shape × colour** conjunction. Every colour belongs to two classes and
//!   every shape to two classes (e.g. `red_disc` and `red_square`, `red_disc` and `cyan_disc`),
//!   so neither a colour histogram nor a shape detector alone separates them.
//! - 1–4 objects per image (mean 2.2), distinct classes, with a skewed class prior (frequent and
//!   rare classes) and three co-occurring pairs (the partner joins with probability 0.5).
//! - Random position and size, colour and brightness jitter, top-lit shading, 2×2 supersampled
//!   edges; later objects partly occlude earlier ones (centres are kept apart so none vanishes).
//! - Background: a tinted grey gradient with per-pixel noise and up to two grey line clutter.
//!
//! Files (the JSONL manifest format of [`crate::readers`]): `classes.txt`, `train.jsonl`,
//! `test.jsonl`, and quality-90 JPEGs `images/train/00001.jpg`… then `images/test/02401.jpg`… (so
//! the test images form a folder of their own to tag). Each image is
//! drawn from its own ChaCha8 stream (seed, image index), so output is byte-identical for a
//! seed whatever the number of threads.

use anyhow::{Context, Result};
use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// Class names, in label-space order.
pub const CLASSES: [&str; 12] = [
    "red_disc",
    "red_square",
    "blue_square",
    "blue_triangle",
    "green_triangle",
    "green_ring",
    "yellow_ring",
    "yellow_cross",
    "magenta_cross",
    "magenta_star",
    "cyan_star",
    "cyan_disc",
];

/// Relative class frequencies (a long-ish tail, like real label sets).
const PRIOR: [f32; 12] = [1.0, 0.9, 0.85, 0.8, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35];

/// Co-occurring pairs: when one is in an image, the other joins with probability 0.5.
const PAIRS: [(usize, usize); 3] = [(0, 6), (2, 9), (4, 11)];

/// How many objects an image holds: P(1..=4) = 0.3, 0.35, 0.2, 0.15 (mean 2.2).
const COUNT_CDF: [f32; 4] = [0.3, 0.65, 0.85, 1.0];

/// Bumped whenever the drawing changes, so an old `.complete` stamp is not trusted.
const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SyntheticSpec {
    pub n_train: usize,
    pub n_test: usize,
    /// Width and height of every image, in pixels.
    pub size: u32,
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec { n_train: 2400, n_test: 600, size: 64, seed: 0 }
    }
}

#[derive(Clone, Copy)]
enum Shape {
    Disc,
    Square,
    Triangle,
    Ring,
    Cross,
    Star,
}

/// The shape and base colour of a class.
fn identity(class: usize) -> (Shape, [f32; 3]) {
    const RED: [f32; 3] = [215.0, 40.0, 35.0];
    const BLUE: [f32; 3] = [40.0, 70.0, 220.0];
    const GREEN: [f32; 3] = [40.0, 175.0, 60.0];
    const YELLOW: [f32; 3] = [230.0, 210.0, 40.0];
    const MAGENTA: [f32; 3] = [205.0, 50.0, 200.0];
    const CYAN: [f32; 3] = [40.0, 200.0, 215.0];
    use Shape::*;
    [
        (Disc, RED),
        (Square, RED),
        (Square, BLUE),
        (Triangle, BLUE),
        (Triangle, GREEN),
        (Ring, GREEN),
        (Ring, YELLOW),
        (Cross, YELLOW),
        (Cross, MAGENTA),
        (Star, MAGENTA),
        (Star, CYAN),
        (Disc, CYAN),
    ][class]
}

/// Whether (u, v), in units of the object's radius around its centre, is inside the shape.
fn inside(shape: Shape, u: f32, v: f32) -> bool {
    let r2 = u * u + v * v;
    match shape {
        Shape::Disc => r2 <= 1.0,
        Shape::Square => u.abs().max(v.abs()) <= 0.82,
        // Apex up, base at the bottom.
        Shape::Triangle => (-0.9..=0.75).contains(&v) && u.abs() <= (v + 0.9) * 0.6,
        Shape::Ring => (0.25..=1.0).contains(&r2),
        Shape::Cross => (u.abs() <= 0.28 && v.abs() <= 0.95) || (v.abs() <= 0.28 && u.abs() <= 0.95),
        Shape::Star => {
            // Five points: radius 1 at the tips, 0.42 between them.
            let turn = (u.atan2(-v) / std::f32::consts::TAU * 5.0).rem_euclid(1.0);
            let tip = (2.0 * turn - 1.0).abs();
            r2.sqrt() <= 0.42 + 0.58 * tip
        }
    }
}

/// The classes of one image: a count, a first class from the prior, partners of the
/// co-occurring pairs with probability 0.5, the rest from the prior. Sorted, distinct.
fn draw_classes(rng: &mut ChaCha8Rng) -> Vec<usize> {
    let u: f32 = rng.random();
    let k = COUNT_CDF.iter().position(|&c| u < c).unwrap_or(3) + 1;
    let mut chosen: Vec<usize> = Vec::with_capacity(k);
    while chosen.len() < k {
        let partner = chosen
            .iter()
            .flat_map(|&c| {
                PAIRS.iter().filter_map(move |&(a, b)| {
                    if c == a {
                        Some(b)
                    } else if c == b {
                        Some(a)
                    } else {
                        None
                    }
                })
            })
            .find(|p| !chosen.contains(p));
        let next = match partner {
            Some(p) if rng.random_bool(0.5) => p,
            _ => {
                let total: f32 = (0..12).filter(|c| !chosen.contains(c)).map(|c| PRIOR[c]).sum();
                let mut x = rng.random::<f32>() * total;
                let mut pick = 11;
                for c in (0..12).filter(|c| !chosen.contains(c)) {
                    pick = c;
                    x -= PRIOR[c];
                    if x < 0.0 {
                        break;
                    }
                }
                pick
            }
        };
        chosen.push(next);
    }
    // Drawing order stays random (occlusion); the label list is sorted.
    chosen
}

fn clamp_u8(x: f32) -> u8 {
    x.round().clamp(0.0, 255.0) as u8
}

/// Render image `index` of a spec and return it with its sorted class indices.
/// Pure function of (`spec.seed`, `spec.size`, `index`).
pub fn sample(spec: &SyntheticSpec, index: usize) -> (RgbImage, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    rng.set_stream(index as u64);
    let s = spec.size.max(1);
    let sf = s as f32;
    let mut px = background(&mut rng, s);
    let order = draw_classes(&mut rng);

    let mut placed: Vec<(f32, f32, f32)> = Vec::new();
    for &class in &order {
        let (shape, base) = identity(class);
        let r = sf * rng.random_range(0.10..0.20);
        let (mut cx, mut cy) = (sf / 2.0, sf / 2.0);
        for _ in 0..40 {
            cx = rng.random_range(0.6 * r..sf - 0.6 * r);
            cy = rng.random_range(0.6 * r..sf - 0.6 * r);
            let apart = placed.iter().all(|&(x, y, q)| ((x - cx).powi(2) + (y - cy).powi(2)).sqrt() >= 0.75 * (q + r));
            if apart {
                break;
            }
        }
        placed.push((cx, cy, r));
        let gain: f32 = rng.random_range(0.8..1.1);
        let color: Vec<f32> = base.iter().map(|&c| (c + rng.random_range(-20.0..20.0)) * gain).collect();
        let (x0, x1) = ((cx - r - 1.0).max(0.0) as u32, ((cx + r + 1.0) as u32).min(s - 1));
        let (y0, y1) = ((cy - r - 1.0).max(0.0) as u32, ((cy + r + 1.0) as u32).min(s - 1));
        for y in y0..=y1 {
            for x in x0..=x1 {
                let mut cover = 0.0;
                for (dx, dy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                    let (u, v) = ((x as f32 + dx - cx) / r, (y as f32 + dy - cy) / r);
                    cover += if inside(shape, u, v) { 0.25 } else { 0.0 };
                }
                if cover == 0.0 {
                    continue;
                }
                let shade = 1.0 - 0.15 * (y as f32 - cy) / r;
                let p = &mut px[(y * s + x) as usize];
                for c in 0..3 {
                    p[c] = p[c] * (1.0 - cover) + color[c] * shade * cover;
                }
            }
        }
    }
    let mut labels = order;
    labels.sort_unstable();
    let img = RgbImage::from_fn(s, s, |x, y| {
        let p = px[(y * s + x) as usize];
        image::Rgb([clamp_u8(p[0]), clamp_u8(p[1]), clamp_u8(p[2])])
    });
    (img, labels)
}

/// A tinted grey gradient, per-pixel noise and up to two grey lines, as f32 RGB.
fn background(rng: &mut ChaCha8Rng, s: u32) -> Vec<[f32; 3]> {
    let level: f32 = rng.random_range(70.0..170.0);
    let tint: Vec<f32> = (0..3).map(|_| rng.random_range(-20.0..20.0)).collect();
    let (gx, gy): (f32, f32) = (rng.random_range(-40.0..40.0), rng.random_range(-40.0..40.0));
    let mut px = Vec::with_capacity((s * s) as usize);
    for y in 0..s {
        for x in 0..s {
            let g = level + gx * (x as f32 / s as f32 - 0.5) + gy * (y as f32 / s as f32 - 0.5);
            let mut p = [0f32; 3];
            for c in 0..3 {
                p[c] = g + tint[c] + rng.random_range(-14.0..14.0);
            }
            px.push(p);
        }
    }
    let n_lines = rng.random_range(0..3);
    for _ in 0..n_lines {
        let grey: f32 = rng.random_range(30.0..230.0);
        let (mut x, mut y) = (rng.random_range(0.0..s as f32), rng.random_range(0.0..s as f32));
        let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
        let (dx, dy) = (angle.cos() * 0.5, angle.sin() * 0.5);
        for _ in 0..(s as f32 * 1.2) as usize {
            if x >= 0.0 && y >= 0.0 && (x as u32) < s && (y as u32) < s {
                px[(y as u32 * s + x as u32) as usize] = [grey; 3];
            }
            x += dx;
            y += dy;
        }
    }
    px
}

#[derive(Serialize)]
struct ManifestLine<'a> {
    image: String,
    labels: Vec<&'a str>,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct Stamp {
    format_version: u32,
    spec: SyntheticSpec,
}

/// Write the dataset under `dir` and return the path of `train.jsonl`.
///
/// Idempotent: if `dir/.complete` records the same spec (and drawing version), nothing is
/// written. Otherwise every file is (re)written and the stamp goes last, so an interrupted run
/// is redone. Files of an earlier, larger spec are not deleted.
pub fn generate(dir: &Path, spec: &SyntheticSpec) -> Result<PathBuf> {
    let train_path = dir.join("train.jsonl");
    let stamp_path = dir.join(".complete");
    let stamp = Stamp { format_version: FORMAT_VERSION, spec: *spec };
    if let Ok(text) = fs::read_to_string(&stamp_path) {
        if serde_json::from_str::<Stamp>(&text).is_ok_and(|s| s == stamp) && train_path.is_file() {
            return Ok(train_path);
        }
    }
    anyhow::ensure!(spec.size >= 8, "synthetic image size {} is below the minimum of 8", spec.size);
    for split in ["train", "test"] {
        let images = dir.join("images").join(split);
        fs::create_dir_all(&images)
            .with_context(|| format!("cannot create the synthetic dataset folder {}", images.display()))?;
    }
    if stamp_path.exists() {
        fs::remove_file(&stamp_path)
            .with_context(|| format!("cannot remove the stale stamp {}", stamp_path.display()))?;
    }

    let n = spec.n_train + spec.n_test;
    let labels: Vec<Vec<usize>> = (0..n)
        .into_par_iter()
        .map(|i| -> Result<Vec<usize>> {
            let (img, labels) = sample(spec, i);
            let path = dir.join(rel_path(spec, i));
            let mut bytes = Vec::new();
            JpegEncoder::new_with_quality(&mut bytes, 90)
                .encode_image(&img)
                .with_context(|| format!("cannot encode {}", path.display()))?;
            fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
            Ok(labels)
        })
        .collect::<Result<_>>()?;

    write_file(&dir.join("classes.txt"), &(CLASSES.join("\n") + "\n"))?;
    write_file(&train_path, &manifest(spec, &labels, 0..spec.n_train)?)?;
    write_file(&dir.join("test.jsonl"), &manifest(spec, &labels, spec.n_train..n)?)?;
    write_file(&stamp_path, &serde_json::to_string(&stamp)?)?;
    Ok(train_path)
}

/// `images/train/00001.jpg` for training images, `images/test/NNNNN.jpg` for test images
/// (numbered on from the training ones).
fn rel_path(spec: &SyntheticSpec, index: usize) -> String {
    let split = if index < spec.n_train { "train" } else { "test" };
    format!("images/{split}/{:05}.jpg", index + 1)
}

fn manifest(spec: &SyntheticSpec, labels: &[Vec<usize>], range: std::ops::Range<usize>) -> Result<String> {
    let mut out = String::new();
    for i in range {
        let line = ManifestLine { image: rel_path(spec, i), labels: labels[i].iter().map(|&c| CLASSES[c]).collect() };
        out += &serde_json::to_string(&line)?;
        out.push('\n');
    }
    Ok(out)
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
