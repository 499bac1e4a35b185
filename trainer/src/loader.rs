//! Images decoded per step (`--cache none`), for data larger than the decoded-image cache.
//!
//! The same pixels as the cache (`cache.rs`): each file goes through
//! `cls_core::preprocess::decode_and_squish` to the cache's size, then through the same crop, flip
//! and normalisation with the same random numbers, drawn by [`augment_params`] in sample order.
//! A run with `--cache none` therefore computes what a cached run computes, step for step.
//!
//! [`Prefetch`] overlaps decoding with the training step, as cls-infer's pipeline does: a
//! producer thread decodes one batch at a time on a rayon pool, straight into the batch's buffer,
//! and hands finished batches to the loop through a bounded queue ([`QUEUE`] ahead, so memory
//! stays flat); used buffers come back for the next batch.
//!
//! Stopping: an image that cannot be read ends the epoch with its message (the producer sends
//! the error and stops). Whatever ends the consumer early (a failing step, a non-finite loss)
//! drops the [`Prefetch`]: the queue's receiving end goes first, so a producer blocked on the
//! full queue fails its send, and a stop flag makes a producer busy decoding skip the rest of its
//! batch; the producer is joined before the drop returns. Either way the run ends with its
//! message, never a hang.

use anyhow::{anyhow, bail, Context, Result};
use cls_core::preprocess::{crop_flip_normalize, decode_and_squish, DEFAULT_MAX_PIXELS, IMAGENET_MEAN, IMAGENET_STD};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Batches decoded ahead of the one the step uses.
pub const QUEUE: usize = 2;

/// At most this many unreadable files are named in an error.
const ERRORS_SHOWN: usize = 5;

/// Crop origin (top, left) and horizontal flip of one sample.
pub type Aug = (usize, usize, bool);

/// The crop and flip of each of `n` samples of a `size` image cropped to `crop`: random (drawn
/// in sample order, so a batch never depends on how the work is scheduled) with `rng`, else the
/// centre without a flip. The one function of the cached and the decoded-per-step paths.
pub fn augment_params(
    rng: Option<&mut ChaCha8Rng>,
    n: usize,
    size: (usize, usize),
    crop: (usize, usize),
    flip: bool,
) -> Vec<Aug> {
    let ((h, w), (ch, cw)) = (size, crop);
    match rng {
        Some(rng) => (0..n)
            .map(|_| (rng.random_range(0..=h - ch), rng.random_range(0..=w - cw), flip && rng.random_bool(0.5)))
            .collect(),
        None => vec![((h - ch) / 2, (w - cw) / 2, false); n],
    }
}

/// The image files of one split, decoded and squished to `height × width` each time they are read.
pub struct ImageFiles {
    pub paths: Arc<Vec<PathBuf>>,
    pub height: usize,
    pub width: usize,
    /// Which split, for messages ("train", "validation").
    pub label: String,
    /// Identifies the files and the size (for the backbone-feature cache's key).
    pub key: String,
    pool: Arc<rayon::ThreadPool>,
}

impl ImageFiles {
    /// `paths` at `height × width`, decoded by `threads` threads.
    pub fn new(paths: Vec<PathBuf>, height: u32, width: u32, threads: usize, label: &str, key: String) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("cls-decode-{i}"))
            .build()
            .context("cannot start the image decoding threads")?;
        Ok(ImageFiles {
            paths: Arc::new(paths),
            height: height as usize,
            width: width as usize,
            label: label.to_string(),
            key,
            pool: Arc::new(pool),
        })
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Decode the samples `idx` with their crop and flip `params` into one buffer (on this
    /// thread's pool, not in the background).
    pub fn decode(&self, idx: &[usize], params: &[Aug], crop: (usize, usize)) -> Result<Vec<f32>> {
        let job = Job::of(self, crop);
        let stop = AtomicBool::new(false);
        self.pool.install(|| job.decode(idx, params, Vec::new(), &stop)).map_err(|e| anyhow!(e))
    }
}

/// What the decoders need, shareable with the producer thread.
#[derive(Clone)]
struct Job {
    paths: Arc<Vec<PathBuf>>,
    size: (usize, usize),
    crop: (usize, usize),
    label: String,
}

impl Job {
    fn of(files: &ImageFiles, crop: (usize, usize)) -> Job {
        Job { paths: files.paths.clone(), size: (files.height, files.width), crop, label: files.label.clone() }
    }

    /// One image into `out`: decode, squish, turn upright, crop, flip, normalise. A panic of the
    /// decoder is reported like any other failure.
    fn one(&self, i: usize, (top, left, flip): Aug, out: &mut [f32]) -> Result<(), String> {
        let (h, w) = self.size;
        let (ch, cw) = self.crop;
        let path = &self.paths[i];
        let decoded = catch_unwind(AssertUnwindSafe(|| {
            decode_and_squish(path, DEFAULT_MAX_PIXELS, w as u32, h as u32, true).map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|_| Err(format!("{}: the image decoder crashed on this file", path.display())))?;
        crop_flip_normalize(decoded.as_raw(), h, w, top, left, ch, cw, flip, IMAGENET_MEAN, IMAGENET_STD, out);
        Ok(())
    }

    /// The batch of samples `idx` in `buf` (recycled, any contents), in parallel on the current
    /// pool. Once `stop` is raised the remaining images are skipped (the batch is thrown away).
    fn decode(&self, idx: &[usize], params: &[Aug], mut buf: Vec<f32>, stop: &AtomicBool) -> Result<Vec<f32>, String> {
        let per = 3 * self.crop.0 * self.crop.1;
        let len = idx.len().checked_mul(per).ok_or("a batch of images too large to address")?;
        buf.clear();
        buf.try_reserve_exact(len).map_err(|_| {
            format!(
                "not enough memory for a batch of {} images of {}x{} ({} MiB): lower --batch-size or the image size",
                idx.len(),
                self.crop.0,
                self.crop.1,
                (len * 4) >> 20
            )
        })?;
        buf.resize(len, 0.0);
        let errors: Vec<String> = buf
            .par_chunks_mut(per)
            .zip(idx.par_iter().zip(params.par_iter()))
            .filter_map(|(out, (&i, &aug))| {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                self.one(i, aug, out).err()
            })
            .collect();
        if stop.load(Ordering::Relaxed) {
            return Err("the run stopped".into());
        }
        if !errors.is_empty() {
            let shown: Vec<&str> = errors.iter().take(ERRORS_SHOWN).map(String::as_str).collect();
            return Err(format!(
                "{} image(s) of {} could not be read:\n  {}",
                errors.len(),
                self.label,
                shown.join("\n  ")
            ));
        }
        Ok(buf)
    }
}

/// Batches of `order` decoded in the background, [`QUEUE`] ahead of the consumer (see the
/// module's doc for how it stops).
pub struct Prefetch {
    rx: Option<Receiver<Result<Vec<f32>, String>>>,
    recycle: Sender<Vec<f32>>,
    stop: Arc<AtomicBool>,
    producer: Option<JoinHandle<()>>,
    batches: usize,
    received: usize,
}

impl Prefetch {
    /// Start decoding the samples of `order` in batches of `batch` (the last one shorter), cropped
    /// to `crop` with random crops and flips (`flip`) from `rng`, or centred without `rng`.
    pub fn start(
        files: &ImageFiles,
        order: Vec<usize>,
        batch: usize,
        crop: (usize, usize),
        flip: bool,
        mut rng: Option<ChaCha8Rng>,
    ) -> Result<Prefetch> {
        let batch = batch.max(1);
        let job = Job::of(files, crop);
        let pool = files.pool.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = sync_channel::<Result<Vec<f32>, String>>(QUEUE);
        let (recycle, recycled) = channel::<Vec<f32>>();
        let batches = order.len().div_ceil(batch);
        let flag = stop.clone();
        let producer = std::thread::Builder::new()
            .name("cls-prefetch".into())
            .spawn(move || {
                for chunk in order.chunks(batch) {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    let params = augment_params(rng.as_mut(), chunk.len(), job.size, job.crop, flip);
                    let buf = recycled.try_recv().unwrap_or_default();
                    let decoded = pool.install(|| job.decode(chunk, &params, buf, &flag));
                    let failed = decoded.is_err();
                    // The consumer went away (a failing step), or this batch failed: stop.
                    if tx.send(decoded).is_err() || failed {
                        break;
                    }
                }
            })
            .context("cannot start the image prefetch thread")?;
        Ok(Prefetch { rx: Some(rx), recycle, stop, producer: Some(producer), batches, received: 0 })
    }

    /// The next batch's normalised CHW values, `None` after the last. An image that could not
    /// be read is an error naming it.
    pub fn next_batch(&mut self) -> Result<Option<Vec<f32>>> {
        if self.received == self.batches {
            return Ok(None);
        }
        let rx = self.rx.as_ref().context("the prefetch queue is closed")?;
        match rx.recv() {
            Ok(Ok(buf)) => {
                self.received += 1;
                Ok(Some(buf))
            }
            Ok(Err(e)) => {
                self.received = self.batches;
                bail!(e)
            }
            Err(_) => {
                self.received = self.batches;
                bail!("the image decoding thread stopped before the last batch (it crashed)")
            }
        }
    }

    /// Hand a batch's buffer back for a later batch.
    pub fn recycle(&self, buf: Vec<f32>) {
        let _ = self.recycle.send(buf);
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // Receiver first: a producer blocked on the full queue then fails its send.
        self.stop.store(true, Ordering::Relaxed);
        drop(self.rx.take());
        if let Some(p) = self.producer.take() {
            let _ = p.join();
        }
    }
}
