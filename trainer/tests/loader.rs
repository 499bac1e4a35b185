//! Images decoded per step (`--cache none`) against the decoded-image cache: the same batches for
//! the same random numbers (crops, flips, EXIF-less PNG and JPEG), and the error paths of the
//! background decoding end promptly with their message, never a hang.

use cls_core::Sample;
use cls_trainer::cache::{cache_key, ImageCache};
use cls_trainer::inputs::Inputs;
use cls_trainer::loader::ImageFiles;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

/// `n` small images, every third a JPEG, each a different pattern of sizes other than the
/// squish size (so the resize runs).
fn images(dir: &Path, n: usize) -> Vec<Sample> {
    (0..n)
        .map(|i| {
            let (w, h) = (30 + (i as u32 * 7) % 23, 26 + (i as u32 * 5) % 19);
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 9 + i as u32 * 31) as u8, (y * 13) as u8, ((x * y + i as u32) % 251) as u8])
            });
            let path = dir.join(if i % 3 == 0 { format!("{i}.jpg") } else { format!("{i}.png") });
            img.save(&path).unwrap();
            Sample { id: i.to_string(), path }
        })
        .collect()
}

fn files(samples: &[Sample], size: (u32, u32), threads: usize) -> ImageFiles {
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let key = cache_key(samples, size.0, size.1).unwrap();
    ImageFiles::new(paths, size.0, size.1, threads, "train", key).unwrap()
}

/// Every batch of one pass over `order`.
fn pass(inputs: &Inputs, order: &[usize], batch: usize, rng: Option<ChaCha8Rng>) -> Vec<(Vec<usize>, Tensor)> {
    let mut b = inputs.batches(order.to_vec(), batch, rng, Device::Cpu).unwrap();
    let mut out = Vec::new();
    while let Some(x) = b.next_batch().unwrap() {
        out.push(x);
    }
    out
}

#[test]
fn decoded_per_step_equals_the_cache_for_the_same_random_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = images(tmp.path(), 11);
    let size = (24u32, 20u32);
    let cache = ImageCache::open(&samples, size.0, size.1, &tmp.path().join("cache"), "train").unwrap();
    let cached = Inputs::Images { cache, crop: (16, 12), flip: true };
    let streamed = Inputs::Files { files: files(&samples, size, 2), crop: (16, 12), flip: true };
    let order: Vec<usize> = vec![7, 3, 10, 0, 5, 1, 9, 2, 8, 4, 6];
    for (batch, rng) in [(4, Some(ChaCha8Rng::seed_from_u64(3))), (5, None), (11, Some(ChaCha8Rng::seed_from_u64(9)))] {
        let a = pass(&cached, &order, batch, rng.clone());
        let b = pass(&streamed, &order, batch, rng.clone());
        assert_eq!(a.len(), order.len().div_ceil(batch));
        assert_eq!(a.len(), b.len());
        for ((ia, xa), (ib, xb)) in a.iter().zip(&b) {
            assert_eq!(ia, ib);
            assert_eq!(xa.size(), [ia.len() as i64, 3, 16, 12]);
            assert!(xa.equal(xb), "batch {ia:?} differs (batch size {batch})");
        }
        // And what `batch` gives chunk by chunk with the same generator.
        let mut r = rng.clone();
        for (idx, x) in &a {
            assert!(cached.batch(idx, r.as_mut(), Device::Cpu).unwrap().equal(x));
        }
    }
    // Random crops and flips do differ between two seeds (the comparison above means something).
    let one = pass(&streamed, &order, 11, Some(ChaCha8Rng::seed_from_u64(1)));
    let two = pass(&streamed, &order, 11, Some(ChaCha8Rng::seed_from_u64(2)));
    assert!(!one[0].1.equal(&two[0].1));
}

#[test]
fn an_unreadable_image_ends_the_pass_with_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut samples = images(tmp.path(), 9);
    let bad = tmp.path().join("broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff not a jpeg").unwrap();
    samples[6].path = bad;
    let streamed = Inputs::Files { files: files(&samples, (16, 16), 2), crop: (16, 16), flip: false };
    let mut b = streamed.batches((0..9).collect(), 2, None, Device::Cpu).unwrap();
    let mut seen = 0;
    let err = loop {
        match b.next_batch() {
            Ok(Some((idx, _))) => seen += idx.len(),
            Ok(None) => panic!("the pass ended without the error"),
            Err(e) => break format!("{e:#}"),
        }
    };
    assert_eq!(seen, 6, "the batches before the broken image arrive");
    assert!(err.contains("broken.jpg") && err.contains("could not be read"), "{err}");
    // The same error from the synchronous path.
    let err = streamed.batch(&[5, 6], None, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("broken.jpg"), "{err}");
}

#[test]
fn a_consumer_that_stops_early_releases_the_decoders_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = images(tmp.path(), 6);
    // Many batches of a large squish, so the producer is blocked on the full queue or busy
    // decoding when the consumer goes away (a failing training step).
    let many: Vec<Sample> = (0..400).map(|i| samples[i % 6].clone()).collect();
    let streamed = Inputs::Files { files: files(&many, (256, 256), 2), crop: (224, 224), flip: true };
    for taken in [0, 1, 3] {
        let t0 = Instant::now();
        {
            let mut b =
                streamed.batches((0..400).collect(), 8, Some(ChaCha8Rng::seed_from_u64(0)), Device::Cpu).unwrap();
            for _ in 0..taken {
                let _ = b.next_batch().unwrap().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50)); // let the queue fill
        } // dropped here: the producer must stop and be joined
        assert!(t0.elapsed() < Duration::from_secs(20), "stopping after {taken} batches took {:?}", t0.elapsed());
    }
}
