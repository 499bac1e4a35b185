//! What the networks read: either rows of a matrix (CSV features, or backbone features computed
//! once for `--freeze-backbone`) or images from a uint8 cache, cropped, flipped and normalised
//! per step.

use anyhow::{Context, Result};
use cls_core::preprocess::crop_flip_normalize;
use cls_models::Net;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::path::Path;
use tch::{Device, Kind, Tensor};

use crate::cache::{progress, BuildLock, ImageCache};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

pub enum Inputs {
    /// One row per sample, already on the training device.
    Rows(Tensor),
    /// Images from a decoded cache; `crop` is the training crop (equal to the cache size at
    /// evaluation), `flip` random horizontal flips.
    Images { cache: ImageCache, crop: (usize, usize), flip: bool },
}

impl Inputs {
    pub fn len(&self) -> usize {
        match self {
            Inputs::Rows(t) => t.size().first().map_or(0, |&n| n as usize),
            Inputs::Images { cache, .. } => cache.n,
        }
    }

    /// The inputs of samples `idx`. With `rng`, images get a random crop and flip (training);
    /// without, the centre crop of the cache (equal to the whole image at evaluation).
    pub fn batch(&self, idx: &[usize], rng: Option<&mut ChaCha8Rng>, device: Device) -> Result<Tensor> {
        match self {
            Inputs::Rows(t) => {
                let i = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(t.device());
                Ok(t.index_select(0, &i).to_device(device))
            }
            Inputs::Images { cache, crop, flip } => {
                let (ch, cw) = *crop;
                let (h, w) = (cache.height, cache.width);
                // Draw every random number up front, in sample order, so the batch does not
                // depend on how rayon schedules the work.
                let params: Vec<(usize, usize, bool)> = match rng {
                    Some(rng) => idx
                        .iter()
                        .map(|_| {
                            (rng.random_range(0..=h - ch), rng.random_range(0..=w - cw), *flip && rng.random_bool(0.5))
                        })
                        .collect(),
                    None => idx.iter().map(|_| ((h - ch) / 2, (w - cw) / 2, false)).collect(),
                };
                let per = 3 * ch * cw;
                let len = idx.len().checked_mul(per).context("a batch of images too large to address")?;
                let mut buf: Vec<f32> = Vec::new();
                buf.try_reserve_exact(len).map_err(|_| {
                    anyhow::anyhow!(
                        "not enough memory for a batch of {} images of {ch}x{cw} ({} MiB): lower --batch-size or the image size",
                        idx.len(),
                        (len * 4) >> 20
                    )
                })?;
                buf.resize(len, 0.0);
                buf.par_chunks_mut(per).zip(idx.par_iter().zip(params.par_iter())).for_each(
                    |(out, (&i, &(top, left, fl)))| {
                        crop_flip_normalize(
                            cache.image(i),
                            h,
                            w,
                            top,
                            left,
                            ch,
                            cw,
                            fl,
                            IMAGENET_MEAN,
                            IMAGENET_STD,
                            out,
                        );
                    },
                );
                Ok(Tensor::from_slice(&buf).view([idx.len() as i64, 3, ch as i64, cw as i64]).to_device(device))
            }
        }
    }
}

/// Backbone features of every image of `images` (evaluation mode, no augmentation), computed in
/// batches and cached on disk under `dir` keyed by the image cache and `model_key`.
pub fn features(
    net: &Net,
    images: &Inputs,
    device: Device,
    dir: &Path,
    model_key: &str,
    label: &str,
) -> Result<Tensor> {
    let Inputs::Images { cache, .. } = images else { anyhow::bail!("backbone features need images") };
    let mut h = Sha256::new();
    h.update(format!("features-v1 {} {model_key}", cache.path.display()));
    let key = hex::encode(&h.finalize()[..12]);
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{key}.safetensors"));
    // A file of another shape (damaged, or from an older version) is computed again.
    let width = net.arch().feature_dim();
    let cached = || -> Option<Tensor> {
        let (_, t) = Tensor::read_safetensors(&path).ok()?.pop()?;
        (t.size() == [cache.n as i64, width] && t.kind() == Kind::Float).then_some(t)
    };
    if let Some(t) = cached() {
        return Ok(t.to_device(device));
    }
    // One run computes, runs started beside it wait for the file (see cache::BuildLock).
    let _lock = BuildLock::acquire(&path)?;
    if let Some(t) = cached() {
        return Ok(t.to_device(device));
    }
    let bar = progress(cache.n, &format!("features {label}"));
    let t0 = std::time::Instant::now();
    eprintln!("computing backbone features of {} {label} images (cached for later runs)", cache.n);
    let mut parts = Vec::new();
    let bs = crate::config::eval_batch(cache.height, cache.width).min(64);
    tch::no_grad(|| -> Result<()> {
        for start in (0..cache.n).step_by(bs) {
            let idx: Vec<usize> = (start..(start + bs).min(cache.n)).collect();
            let x = images.batch(&idx, None, device)?;
            parts.push(net.features_t(&x, false).to_kind(Kind::Float).to_device(Device::Cpu));
            bar.inc(idx.len() as u64);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    eprintln!("features of {} {label} images in {:.1} s", cache.n, t0.elapsed().as_secs_f64());
    let all = Tensor::cat(&parts, 0);
    cls_core::fsio::write_via_path(&path, |tmp| {
        Tensor::write_safetensors(&[("features", &all)], tmp).context("writing the feature cache")
    })?;
    Ok(all.to_device(device))
}
