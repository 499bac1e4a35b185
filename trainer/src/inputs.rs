//! What the networks read: either rows of a matrix (CSV features, or backbone features computed
//! once for `--freeze-backbone`) or images from a uint8 cache, cropped, flipped and normalised
//! per step.

use anyhow::{Context, Result};
use cls_core::preprocess::crop_flip_normalize;
use cls_models::Net;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::path::Path;
use tch::{Device, Kind, Tensor};

use crate::cache::{progress, BuildLock, ImageCache};
use crate::loader::{augment_params, ImageFiles, Prefetch};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

pub enum Inputs {
    /// One row per sample, already on the training device.
    Rows(Tensor),
    /// Images from a decoded cache; `crop` is the training crop (equal to the cache size at
    /// evaluation), `flip` random horizontal flips.
    Images { cache: ImageCache, crop: (usize, usize), flip: bool },
    /// Images decoded each time they are read (`--cache none`), with the same crop and flip.
    Files { files: ImageFiles, crop: (usize, usize), flip: bool },
}

impl Inputs {
    pub fn len(&self) -> usize {
        match self {
            Inputs::Rows(t) => t.size().first().map_or(0, |&n| n as usize),
            Inputs::Images { cache, .. } => cache.n,
            Inputs::Files { files, .. } => files.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The (height, width) of the images before the crop, if these are images.
    pub fn image_size(&self) -> Option<(usize, usize)> {
        match self {
            Inputs::Rows(_) => None,
            Inputs::Images { cache, .. } => Some((cache.height, cache.width)),
            Inputs::Files { files, .. } => Some((files.height, files.width)),
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
                let params = augment_params(rng, idx.len(), (h, w), *crop, *flip);
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
                Ok(images_tensor(&buf, idx.len(), *crop, device))
            }
            Inputs::Files { files, crop, flip } => {
                let params = augment_params(rng, idx.len(), (files.height, files.width), *crop, *flip);
                let buf = files.decode(idx, &params, *crop)?;
                Ok(images_tensor(&buf, idx.len(), *crop, device))
            }
        }
    }

    /// The batches of `order` (in chunks of `batch`, the last one shorter), one by one through
    /// [`Batches::next`]: what calling [`Inputs::batch`] on each chunk in turn with `rng` gives,
    /// and the same random numbers. Images decoded per step are decoded in the background, ahead
    /// of the caller's use of each batch (see `loader::Prefetch`).
    pub fn batches(
        &self,
        order: Vec<usize>,
        batch: usize,
        rng: Option<ChaCha8Rng>,
        device: Device,
    ) -> Result<Batches<'_>> {
        let batch = batch.max(1);
        let prefetch = match self {
            Inputs::Files { files, crop, flip } => {
                Some(Prefetch::start(files, order.clone(), batch, *crop, *flip, rng.clone())?)
            }
            _ => None,
        };
        Ok(Batches { inputs: self, order, batch, next: 0, rng, device, prefetch })
    }
}

/// `n` CHW images of `crop` as an `[n, 3, h, w]` tensor on `device`.
fn images_tensor(buf: &[f32], n: usize, crop: (usize, usize), device: Device) -> Tensor {
    Tensor::from_slice(buf).view([n as i64, 3, crop.0 as i64, crop.1 as i64]).to_device(device)
}

/// The batches of one pass over some samples (see [`Inputs::batches`]).
pub struct Batches<'a> {
    inputs: &'a Inputs,
    order: Vec<usize>,
    batch: usize,
    /// Where the next batch starts in `order`.
    next: usize,
    rng: Option<ChaCha8Rng>,
    device: Device,
    prefetch: Option<Prefetch>,
}

impl Batches<'_> {
    /// The next batch's sample indices and inputs; `None` after the last.
    pub fn next_batch(&mut self) -> Result<Option<(Vec<usize>, Tensor)>> {
        if self.next >= self.order.len() {
            return Ok(None);
        }
        let end = (self.next + self.batch).min(self.order.len());
        let idx = self.order[self.next..end].to_vec();
        self.next = end;
        let x = match (&mut self.prefetch, self.inputs) {
            (Some(p), Inputs::Files { crop, .. }) => {
                let buf = p.next_batch()?.context("the image prefetch ended early")?;
                let x = images_tensor(&buf, idx.len(), *crop, self.device);
                p.recycle(buf);
                x
            }
            _ => self.inputs.batch(&idx, self.rng.as_mut(), self.device)?,
        };
        Ok(Some((idx, x)))
    }
}

/// Backbone features of every image of `images` (evaluation mode, no augmentation), computed in
/// batches and cached on disk under `dir` keyed by the images (the image cache's file, or the files
/// and their size when they are decoded per step) and `model_key`.
pub fn features(
    net: &Net,
    images: &Inputs,
    device: Device,
    dir: &Path,
    model_key: &str,
    label: &str,
) -> Result<Tensor> {
    let (identity, (height, width)) = match images {
        Inputs::Images { cache, .. } => (cache.path.display().to_string(), (cache.height, cache.width)),
        Inputs::Files { files, .. } => (format!("files {}", files.key), (files.height, files.width)),
        Inputs::Rows(_) => anyhow::bail!("backbone features need images"),
    };
    let n = images.len();
    let mut h = Sha256::new();
    h.update(format!("features-v1 {identity} {model_key}"));
    let key = hex::encode(&h.finalize()[..12]);
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{key}.safetensors"));
    // A file of another shape (damaged, or from an older version) is computed again.
    let dim = net.arch().feature_dim();
    let cached = || -> Option<Tensor> {
        let (_, t) = Tensor::read_safetensors(&path).ok()?.pop()?;
        (t.size() == [n as i64, dim] && t.kind() == Kind::Float).then_some(t)
    };
    if let Some(t) = cached() {
        return Ok(t.to_device(device));
    }
    // One run computes, runs started beside it wait for the file (see cache::BuildLock).
    let _lock = BuildLock::acquire(&path)?;
    if let Some(t) = cached() {
        return Ok(t.to_device(device));
    }
    let bar = progress(n, &format!("features {label}"));
    let t0 = std::time::Instant::now();
    eprintln!("computing backbone features of {n} {label} images (cached for later runs)");
    let mut parts = Vec::new();
    let bs = crate::config::eval_batch(height, width).min(64);
    tch::no_grad(|| -> Result<()> {
        let mut batches = images.batches((0..n).collect(), bs, None, device)?;
        while let Some((idx, x)) = batches.next_batch()? {
            parts.push(net.features_t(&x, false).to_kind(Kind::Float).to_device(Device::Cpu));
            bar.inc(idx.len() as u64);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("features of {n} {label} images in {secs:.2} s ({:.1} images/s)", n as f64 / secs.max(1e-9));
    let all = Tensor::cat(&parts, 0);
    cls_core::fsio::write_via_path(&path, |tmp| {
        Tensor::write_safetensors(&[("features", &all)], tmp).context("writing the feature cache")
    })?;
    Ok(all.to_device(device))
}
