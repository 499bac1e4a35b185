//! The decoded-image cache: every image of a dataset is decoded once, in parallel, squished to
//! one size and stored as uint8 HWC in a memory-mapped file keyed by the dataset and the size.
//! Later runs with the same images and size reuse the file; each training step crops and flips
//! from it, so no JPEG is decoded twice in a run (issue 3, "Data"). Images are turned upright as
//! their EXIF orientation says (`cls_core::preprocess::decode_and_squish`, the function cls-infer
//! uses too). Data larger than the cache can be decoded per step instead (`--cache none`,
//! `loader.rs`), with the same pixels.

use anyhow::{bail, Context, Result};
use cls_core::preprocess::{decode_and_squish, Preprocess};
use cls_core::Sample;
use indicatif::{ProgressBar, ProgressStyle};
use memmap2::Mmap;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bump when the cache layout, the resize filter or the decoding changes (v2: EXIF orientation).
const CACHE_VERSION: &str = "images-v2";
/// The largest image cache file.
const MAX_CACHE_BYTES: u64 = 1 << 44;

pub struct ImageCache {
    map: Mmap,
    pub n: usize,
    pub height: usize,
    pub width: usize,
    pub path: PathBuf,
}

impl ImageCache {
    /// HWC uint8 pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let sz = self.height * self.width * 3;
        &self.map[i * sz..(i + 1) * sz]
    }

    /// Open the cache for `samples` at `height`×`width`, building it first when missing.
    pub fn open(samples: &[Sample], height: u32, width: u32, dir: &Path, label: &str) -> Result<ImageCache> {
        let key = cache_key(samples, height, width)?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating cache folder {}", dir.display()))?;
        let path = dir.join(format!("{key}.u8"));
        let (h, w) = (height as usize, width as usize);
        let bytes =
            samples.len().checked_mul(h * w * 3).filter(|&b| b as u64 <= MAX_CACHE_BYTES).with_context(|| {
                format!("{} {label} images at {height}x{width} would make an image cache over 16 TiB", samples.len())
            })?;
        if !path.exists() {
            // Runs started side by side with a cold cache would all decode the same images: the
            // first takes the lock and builds, the others wait and then find the file.
            let _lock = BuildLock::acquire(&path)?;
            if !path.exists() {
                build(samples, height, width, &path, bytes, label)?;
            }
        }
        let file = std::fs::File::open(&path).with_context(|| format!("opening image cache {}", path.display()))?;
        // SAFETY: the cache file is written once (to a temporary name, then renamed) and never
        // modified afterwards; we only read it.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        if map.len() != bytes {
            bail!("image cache {} has {} bytes, expected {bytes}: delete it and rerun", path.display(), map.len());
        }
        Ok(ImageCache { map, n: samples.len(), height: h, width: w, path })
    }
}

/// The key: image paths with their sizes and modification times, and the squish size.
pub fn cache_key(samples: &[Sample], height: u32, width: u32) -> Result<String> {
    let mut h = Sha256::new();
    h.update(format!("{CACHE_VERSION} {height}x{width}\n"));
    for s in samples {
        let meta = std::fs::metadata(&s.path).with_context(|| format!("image {}", s.path.display()))?;
        let mtime =
            meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        // The canonical path, so `../data/x.jpg` and `/abs/data/x.jpg` share one cache.
        let path = std::fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone());
        h.update(format!("{}\t{}\t{mtime}\n", path.display(), meta.len()));
    }
    Ok(hex::encode(&h.finalize()[..12]))
}

fn build(samples: &[Sample], height: u32, width: u32, path: &Path, bytes: usize, label: &str) -> Result<()> {
    // A temporary file beside the cache, renamed into place when complete (removed on an error
    // or a signal), so a killed run never leaves a half-built cache or a stray temporary file.
    cls_core::fsio::write_via_path(path, |tmp| fill(samples, height, width, tmp, bytes, label))
}

fn fill(samples: &[Sample], height: u32, width: u32, tmp: &Path, bytes: usize, label: &str) -> Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .truncate(true)
        .open(tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    // Written with positioned writes, not through a memory map: a full disk is then an error
    // of the write, where a mapped page would kill the process with SIGBUS.
    file.set_len(bytes as u64).with_context(|| format!("writing {}", tmp.display()))?;
    let sz = (height * width * 3) as usize;
    let max_pixels = Preprocess::imagenet(height, width).max_pixels;
    let bar = progress(samples.len(), &format!("decoding {label}"));
    let t0 = std::time::Instant::now();
    eprintln!("decoding {} {label} images into the cache at {height}x{width}", samples.len());
    let write_error = std::sync::Mutex::new(None::<std::io::Error>);
    let errors: Vec<String> = samples
        .par_iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let r = decode_and_squish(&s.path, max_pixels, width, height, true);
            bar.inc(1);
            match r {
                Ok(img) => {
                    if let Err(e) = file.write_all_at(img.as_raw(), (i * sz) as u64) {
                        if let Ok(mut slot) = write_error.lock() {
                            slot.get_or_insert(e);
                        }
                    }
                    None
                }
                // The error names the file already.
                Err(e) => Some(e.to_string()),
            }
        })
        .collect();
    bar.finish_and_clear();
    if let Some(e) = write_error.into_inner().ok().flatten() {
        return Err(e).with_context(|| format!("writing the image cache {}", tmp.display()));
    }
    if !errors.is_empty() {
        let shown: Vec<&str> = errors.iter().take(5).map(String::as_str).collect();
        bail!("{} image(s) of {label} could not be read:\n  {}", errors.len(), shown.join("\n  "));
    }
    eprintln!("decoded {} {label} images in {:.1} s", samples.len(), t0.elapsed().as_secs_f64());
    Ok(())
}

/// An exclusive advisory lock on `<cache file>.lock`, held while that cache file is built and
/// released on drop (the OS releases it too if the process dies, so a killed run never leaves a
/// stale lock behind).
pub struct BuildLock {
    file: std::fs::File,
}

impl BuildLock {
    pub fn acquire(cache_file: &Path) -> Result<BuildLock> {
        let path = cache_file.with_extension("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("creating the lock file {}", path.display()))?;
        if file.try_lock().is_err() {
            eprintln!("waiting for another cls-train run to finish {}", cache_file.display());
            file.lock().with_context(|| format!("locking {}", path.display()))?;
        }
        Ok(BuildLock { file })
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

pub fn progress(n: usize, msg: &str) -> ProgressBar {
    if crate::progress::quiet() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>18} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(msg.to_string());
    bar
}
