//! The `--cache none` loader alone: images/s of decoding, squishing, cropping, flipping and
//! normalising training batches in the background (`loader::Prefetch`), with nothing else
//! running, on the files of a JSONL manifest (BENCHMARKS.md, "Data larger than the cache").
//!
//! ```sh
//! cargo run --release -p cls-trainer --example bench_loader -- MANIFEST.jsonl CROP THREADS [REPS]
//! ```
//!
//! CROP is the training crop (224: squished to 256, cropped to 224, the paper's recipe; 448:
//! squished to 512). Prints one JSON line per repetition and their median.

use anyhow::{Context, Result};
use cls_trainer::inputs::Inputs;
use cls_trainer::loader::ImageFiles;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [manifest, crop, threads, rest @ ..] = &args[..] else {
        anyhow::bail!("usage: bench_loader MANIFEST.jsonl CROP THREADS [REPS]");
    };
    let crop: u32 = crop.parse().context("CROP")?;
    let threads: usize = threads.parse().context("THREADS")?;
    let reps: usize = rest.first().map(|r| r.parse()).transpose().context("REPS")?.unwrap_or(3);
    let ds = cls_core::readers::open(manifest.as_ref(), &cls_core::readers::ReadOptions::default())?;
    let size = crop * 8 / 7; // 224 → 256, 448 → 512
    let paths = ds.samples.iter().map(|s| s.path.clone()).collect();
    let files = ImageFiles::new(paths, size, size, threads, "bench", String::new())?;
    let n = files.len();
    let inputs = Inputs::Files { files, crop: (crop as usize, crop as usize), flip: true };
    let mut rates = Vec::new();
    for rep in 0..reps {
        let t0 = Instant::now();
        let order: Vec<usize> = (0..n).collect();
        let mut batches = inputs.batches(order, 64, Some(ChaCha8Rng::seed_from_u64(rep as u64)), tch::Device::Cpu)?;
        let mut seen = 0;
        while let Some((idx, x)) = batches.next_batch()? {
            seen += idx.len();
            let _ = std::hint::black_box(x);
        }
        let secs = t0.elapsed().as_secs_f64();
        let rate = seen as f64 / secs;
        println!(
            "{}",
            serde_json::json!({"crop": crop, "squish": size, "threads": threads, "images": seen, "seconds": secs, "images_per_s": rate})
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({"crop": crop, "threads": threads, "median_images_per_s": rates[rates.len() / 2]})
    );
    Ok(())
}
