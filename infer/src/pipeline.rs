//! The tagging pipeline: a producer thread decodes and resizes one batch of files at a time on a
//! rayon pool, straight into the batch's NCHW buffer, and hands finished batches to the
//! inference loop through a bounded channel. The first batches decode while ONNX Runtime builds
//! its session (the `open` argument), and batch k+1 while batch k is inferred;
//! at most `QUEUE + 2` batches exist at once, so memory stays flat however large the folder is.
//! Batches travel in order, so results come out in the order of the image list.
//!
//! Stopping: whatever ends the inference loop (the last batch, or an error on either side of the
//! queue: the session cannot be built, ONNX Runtime fails on a batch, an output cannot be
//! written) drops the queue's receiving end and raises a stop flag before the decoders are joined.
//! A decoder blocked on the full queue then fails its send, and one busy decoding skips the rest
//! of its batch, so the run ends within about one image's decode of the error.

use crate::inputs::Item;
use anyhow::{anyhow, bail, Context, Result};
use cls_core::preprocess::Preprocess;
use crossbeam_channel::{bounded, unbounded};
use ort::session::Session;
use ort::value::TensorRef;
use rayon::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Batches decoded ahead of the one being inferred.
const QUEUE: usize = 2;

/// The most one batch's input tensor may take, in bytes. With `QUEUE + 2` batches alive at once,
/// batch tensors never hold more than 2 GiB together, whatever the model's input size and batch.
pub const MAX_BATCH_BYTES: usize = 512 << 20;

/// Nice value of the decoding threads. Decoders and ONNX Runtime's intra-op threads share the
/// same cores; ONNX Runtime splits each operator across its threads and waits for the slowest, so
/// a decoder preempting one of them stalls the others. At a lower priority the decoders take the
/// cores while ONNX Runtime's threads wait, and still get all of them when inference waits for
/// images (the channel runs dry), so no time is lost either way. Measured on 2 cores with
/// EfficientNet-Lite0 (640x480 JPEGs, 4 runs each): median 79 images/s at nice 0, 82 at 10, 86
/// at 19 (the lowest priority).
const DECODE_NICE: i32 = 19;

/// Lower the calling thread's scheduling priority (Linux keeps the nice value per thread).
/// Best effort: a failure only costs speed.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, (now + DECODE_NICE).min(19));
    }
}

/// What to decode for one item.
pub enum Job {
    /// The item's file.
    File,
    /// Its bytes (a tar member).
    Bytes(Vec<u8>),
    /// Nothing: it failed already, for this reason.
    Failed(String),
}

/// One item of a batch and what to decode for it.
pub struct Work {
    pub item: Item,
    pub job: Job,
}

impl Work {
    /// An item of a listing: its file, unless the listing found it unreadable.
    pub fn of(item: Item) -> Work {
        let job = match &item.failed {
            Some(reason) => Job::Failed(reason.clone()),
            None => Job::File,
        };
        Work { item, job }
    }
}

/// One decoded batch: the successfully decoded images' tensors packed at the front of `data`.
struct Batch {
    items: Vec<Item>,
    /// Per item: `Ok(row)` (its row in `data`) or `Err(reason)`.
    rows: Vec<Result<usize, String>>,
    data: Vec<f32>,
}

/// What happened to one image, in list order.
pub enum Outcome<'a> {
    Scores(&'a [f32]),
    Failed(&'a str),
}

/// How to run: batch size, decode threads, and the model's output size.
pub struct Plan<'a> {
    pub pre: &'a Preprocess,
    pub batch: usize,
    pub decode_threads: usize,
    pub num_classes: usize,
    /// Pad every batch to this many rows (models whose graph fixes the batch size).
    pub pad_to: Option<usize>,
}

/// Decode, resize and normalise one file into `out` (3·H·W floats, CHW) with
/// `cls_core::preprocess`. The reason for a failure leaves out the path (the caller names the
/// file). Panics inside the decoders are caught and reported like any other failure.
fn load_into(pre: &Preprocess, work: &Work, out: &mut [f32]) -> Result<(), String> {
    let path: &Path = &work.item.path;
    let result = catch_unwind(AssertUnwindSafe(|| match &work.job {
        Job::File => pre.load_into(path, out),
        Job::Bytes(bytes) => pre.load_bytes_into(bytes, path, out),
        Job::Failed(_) => Ok(()),
    }));
    if let Job::Failed(reason) = &work.job {
        return Err(reason.clone());
    }
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            let text = e.to_string();
            let prefix = format!("{}: ", e.path().display());
            Err(text.strip_prefix(&prefix).unwrap_or(&text).to_string())
        }
        Err(_) => Err("the image decoder crashed on this file".to_string()),
    }
}

/// Decode `files` (one batch) in parallel; failed slots are squeezed out of the buffer.
/// `data` is a recycled buffer (any contents). Once `stop` is raised the remaining files are
/// skipped (the batch is thrown away). Fails only when the buffer cannot be allocated.
fn decode_batch(
    pre: &Preprocess,
    works: Vec<Work>,
    per_image: usize,
    mut data: Vec<f32>,
    stop: &AtomicBool,
) -> Result<Batch, String> {
    let len = works.len() * per_image;
    data.clear();
    data.try_reserve_exact(len)
        .map_err(|_| format!("cannot allocate {} MiB for a batch of {} images", (len * 4) >> 20, works.len()))?;
    data.resize(len, 0.0);
    let results: Vec<Result<(), String>> = data
        .par_chunks_mut(per_image)
        .zip(works.par_iter())
        .map(|(slot, w)| {
            if stop.load(Ordering::Relaxed) {
                return Err("not decoded: the run stopped".to_string());
            }
            load_into(pre, w, slot)
        })
        .collect();
    // The encoded bytes (tar members) are not needed any more.
    let items: Vec<Item> = works.into_iter().map(|w| w.item).collect();
    let mut rows = Vec::with_capacity(items.len());
    let mut next = 0;
    for (slot, r) in results.into_iter().enumerate() {
        match r {
            Ok(()) => {
                if slot != next {
                    data.copy_within(slot * per_image..(slot + 1) * per_image, next * per_image);
                }
                rows.push(Ok(next));
                next += 1;
            }
            Err(reason) => rows.push(Err(reason)),
        }
    }
    data.truncate(next * per_image);
    Ok(Batch { items, rows, data })
}

/// Where the inference thread's time went, in seconds: it tells a slow run's bottleneck.
/// Waiting for images means decoding is the bottleneck (a slow disk, large images, a fast GPU);
/// ONNX Runtime's first batch runs slower than the rest (its memory arena grows).
#[derive(Debug, Default, Clone, Copy)]
pub struct Timing {
    /// Loading ONNX Runtime and building the session (the decoders run meanwhile).
    pub session: f64,
    /// Waiting for decoded batches, after the session was ready.
    pub waiting: f64,
    /// `session.run`, all batches.
    pub inference: f64,
    /// `session.run` of the first batch.
    pub first_batch: f64,
    /// Batches run (a batch of unreadable files only is not).
    pub batches: usize,
}

impl Timing {
    pub fn summary(&self) -> String {
        format!(
            "ONNX Runtime: session {:.3} s, inference {:.3} s ({} batches, the first {:.3} s), waiting for images {:.3} s",
            self.session, self.inference, self.batches, self.first_batch, self.waiting
        )
    }
}

/// A ready ONNX Runtime session and the names of the input it is fed and the output read.
pub struct Runner {
    pub session: Session,
    pub input: String,
    pub output: String,
}

/// Tag the items of `batches` (each at most `plan.batch` long) with the session that `open`
/// builds (on the calling thread, while the decoders start), calling `sink(item, outcome)` once
/// per item in order. Returns where the inference thread's time went. Any error (from `open`,
/// ONNX Runtime or `sink`) stops the decoders and is returned once they have stopped.
pub fn run(
    batches: impl Iterator<Item = Vec<Work>> + Send,
    plan: &Plan,
    open: impl FnOnce() -> Result<Runner>,
    sink: impl FnMut(&Item, Outcome) -> Result<()>,
) -> Result<Timing> {
    let (h, w) = (plan.pre.height as usize, plan.pre.width as usize);
    let per_image = 3 * h * w;
    let batch = plan.pad_to.unwrap_or(plan.batch).max(1);
    if batch.saturating_mul(per_image).saturating_mul(4) > MAX_BATCH_BYTES {
        // The caller bounds the batch; this keeps the bound whoever calls.
        bail!("a batch of {batch} images of {h}x{w} would take more than {} MiB", MAX_BATCH_BYTES >> 20);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(plan.decode_threads.max(1))
        .thread_name(|i| format!("cls-decode-{i}"))
        .start_handler(|_| lower_priority())
        .build()
        .context("cannot start the decoding threads")?;
    let stop = AtomicBool::new(false);
    // Used buffers go back to the producer, so the same few allocations serve the whole run.
    let (recycle_tx, recycle_rx) = unbounded::<Vec<f32>>();
    std::thread::scope(|scope| -> Result<Timing> {
        // Created in the scope and moved into `infer`, so that the receiving end is gone (and a
        // producer blocked on the full queue released) before the scope joins the producer.
        let (tx, rx) = bounded::<Result<Batch, String>>(QUEUE);
        let stop = &stop;
        let producer = scope.spawn(move || {
            for chunk in batches {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if chunk.len() > batch {
                    // A caller bug; the tensor would not fit the bound.
                    let _ =
                        tx.send(Err(format!("internal error: a batch of {} images (at most {batch})", chunk.len())));
                    break;
                }
                let buffer = recycle_rx.try_recv().unwrap_or_default();
                let b = pool.install(|| decode_batch(plan.pre, chunk, per_image, buffer, stop));
                let failed = b.is_err();
                if tx.send(b).is_err() || failed {
                    break; // the inference loop stopped, or this batch could not be allocated
                }
            }
        });
        let result = infer(plan, per_image, rx, recycle_tx, open, sink);
        // `rx` is dropped: a pending send fails. The flag stops a batch being decoded.
        stop.store(true, Ordering::Relaxed);
        let joined = producer.join();
        let timing = result?;
        joined.map_err(|_| anyhow!("the decoding thread crashed"))?;
        Ok(timing)
    })
}

/// The inference loop: build the session, then run each batch from `rx` and hand its rows to
/// `sink`. Takes `rx` by value: returning, by any path, closes the queue.
fn infer(
    plan: &Plan,
    per_image: usize,
    rx: crossbeam_channel::Receiver<Result<Batch, String>>,
    recycle_tx: crossbeam_channel::Sender<Vec<f32>>,
    open: impl FnOnce() -> Result<Runner>,
    mut sink: impl FnMut(&Item, Outcome) -> Result<()>,
) -> Result<Timing> {
    let (h, w) = (plan.pre.height as usize, plan.pre.width as usize);
    let mut timing = Timing::default();
    let clock = Instant::now();
    let Runner { mut session, input, output } = open()?;
    timing.session = clock.elapsed().as_secs_f64();
    loop {
        let clock = Instant::now();
        // Err: the producer is done (or crashed: its join says so).
        let Ok(b) = rx.recv() else { break };
        let mut b = b.map_err(|e| anyhow!(e))?;
        timing.waiting += clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let n = b.data.len() / per_image;
        let mut probs: &[f32] = &[];
        let outputs;
        if n > 0 {
            let rows = plan.pad_to.unwrap_or(n);
            let len = rows * per_image;
            b.data
                .try_reserve_exact(len.saturating_sub(b.data.len()))
                .map_err(|_| anyhow!("cannot allocate {} MiB for a batch of {rows} images", (len * 4) >> 20))?;
            b.data.resize(len, 0.0);
            let tensor = TensorRef::from_array_view(([rows, 3, h, w], b.data.as_slice()))
                .map_err(|e| anyhow!("cannot make the input tensor: {e}"))?;
            outputs = session
                .run(ort::inputs![input.as_str() => tensor])
                .map_err(|e| anyhow!("ONNX Runtime failed on the batch starting at {}: {e}", first_decoded(&b)))?;
            let value = outputs.get(&output).with_context(|| format!("the model produced no output {output:?}"))?;
            let (shape, data) =
                value.try_extract_tensor::<f32>().map_err(|e| anyhow!("the output {output:?} is not float32: {e}"))?;
            if shape.len() != 2 || shape[0] != rows as i64 || shape[1] != plan.num_classes as i64 {
                bail!("the output {output:?} has shape {:?}; expected [{rows}, {}]", &shape[..], plan.num_classes);
            }
            probs = data;
            let secs = clock.elapsed().as_secs_f64();
            timing.inference += secs;
            if timing.batches == 0 {
                timing.first_batch = secs;
            }
            timing.batches += 1;
        }
        for (item, row) in b.items.iter().zip(&b.rows) {
            let outcome = match row {
                Ok(r) => Outcome::Scores(&probs[r * plan.num_classes..(r + 1) * plan.num_classes]),
                Err(reason) => Outcome::Failed(reason),
            };
            sink(item, outcome)?;
        }
        let _ = recycle_tx.send(b.data);
    }
    Ok(timing)
}

/// The name of a batch's first decoded image (for messages).
fn first_decoded(b: &Batch) -> &str {
    b.items.iter().zip(&b.rows).find(|(_, r)| r.is_ok()).map_or("", |(i, _)| i.name.as_str())
}
