//! cls-infer: tag a folder of images with an exported CLS model on ONNX Runtime, and optionally
//! compute the metrics of method.md ("Metrics", through `cls_core::metrics`) against ground truth.
//!
//! Exit status: 0 success; 1 some images could not be read and `--strict` was given; 2 bad
//! usage, unreadable model, no images, or any other fatal error; 3 metric regression against
//! `--baseline` (takes precedence over 1).

mod model;
mod output;
mod pipeline;
mod run;
mod runtime;
mod shard;
mod truth;
mod walk;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// cls-infer: tag image folders with an exported CLS model (ONNX Runtime) and compute metrics.
#[derive(Parser, Debug)]
#[command(version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// The exported model (ONNX, with cls-train's metadata).
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// The folder of images (searched recursively).
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Decision threshold on probabilities [default: the model's, else 0.5].
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Report at most K labels per image.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: Option<u32>,
    /// Where to write the tags (JSON Lines) [default: standard output].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Ground truth: a JSONL manifest, a COCO instances JSON (file names relative to --images) or a VOC devkit.
    #[arg(long, value_name = "FILE")]
    pub ground_truth: Option<PathBuf>,
    /// Where to write the metrics (JSON); needs --ground-truth.
    #[arg(long, value_name = "FILE", requires = "ground_truth")]
    pub metrics_out: Option<PathBuf>,
    /// Metrics JSON to compare against (exit 3 when mAP, CF1 or OF1 drops by more than --tolerance).
    #[arg(long, value_name = "FILE", requires = "ground_truth")]
    pub baseline: Option<PathBuf>,
    /// Allowed drop against --baseline, as a fraction (0.01 = one point).
    #[arg(long, value_name = "T", default_value_t = 0.0, requires = "baseline")]
    pub tolerance: f64,
    /// Where to run the model.
    #[arg(long, value_enum, default_value_t = runtime::Device::Auto)]
    pub device: runtime::Device,
    /// Images per inference batch.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch: u32,
    /// Threads for ONNX Runtime and for decoding [default: all cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub threads: Option<u32>,
    /// Where to write the unreadable files (JSON Lines: path, reason).
    #[arg(long, value_name = "FILE")]
    pub errors: Option<PathBuf>,
    /// Tag only slice I of N (0-based); see the notes below for cluster array jobs.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Exit with status 1 when any image could not be read.
    #[arg(long)]
    pub strict: bool,
    /// Follow symbolic links to directories (loops are detected and reported).
    #[arg(long)]
    pub follow_links: bool,
    /// The ONNX Runtime library (libonnxruntime.so) to load.
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Class names, one a line, for a model without metadata (overrides the metadata).
    #[arg(long, value_name = "FILE")]
    pub classes: Option<PathBuf>,
    /// Input size HxW for a model without metadata (overrides the metadata).
    #[arg(long, value_name = "HxW")]
    pub size: Option<String>,
    /// Compute the metrics of these tag files (cls-infer's output, e.g. one per --shard of an
    /// array job) instead of running the model; image paths in them are relative to --images.
    #[arg(long, value_name = "FILE", num_args = 1.., requires = "ground_truth",
          conflicts_with_all = ["out", "errors", "shard", "strict", "top_k", "follow_links", "device", "batch", "threads", "ort_lib"])]
    pub from_tags: Vec<PathBuf>,
}

const AFTER_HELP: &str = "\
Output: one JSON line per image, ordered by path relative to --images:
  {\"image\": \"a/b.jpg\", \"labels\": [best first], \"scores\": {\"class\": p, ...}}
Whole-folder metrics of an array job: tag with --shard (or the variables below) and --out, then
  cls-infer --model M --images DIR --ground-truth GT --from-tags shard-*.jsonl
Sharding without --shard: SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (minus SLURM_ARRAY_TASK_MIN),
  or JOB_COMPLETION_INDEX with JOB_COMPLETION_COUNT (set it to the job's completions).
ONNX Runtime: --ort-lib, else ORT_DYLIB_PATH, else the project's .venv/onnxruntime, else the system's.
  Its log level is ORT_LOG (default warning).
Exit status: 0 ok; 1 unreadable images with --strict; 2 bad usage, unreadable model, no images;
  3 metric regression against --baseline.";

fn main() -> ExitCode {
    if std::env::var_os("ORT_LOG").is_none() {
        // Read by ort when the environment is created; nothing else runs yet.
        std::env::set_var("ORT_LOG", "warning");
    }
    let cli = Cli::parse();
    // Temporary output files are removed if the run is interrupted (SIGINT, SIGTERM, SIGHUP).
    if let Err(e) = cls_core::fsio::install_cleanup_handler() {
        eprintln!("cls-infer: warning: {e:#}");
    }
    // One line, no backtrace, for a bug; decoder panics are caught and reported per file.
    std::panic::set_hook(Box::new(|info| {
        if !std::thread::current().name().is_some_and(|n| n.starts_with("cls-decode")) {
            eprintln!("cls-infer: internal error (please report): {info}");
        }
    }));
    match std::panic::catch_unwind(|| run::run(&cli)) {
        Ok(Ok(status)) => ExitCode::from(status),
        Ok(Err(e)) => {
            eprintln!("cls-infer: error: {e:#}");
            ExitCode::from(2)
        }
        Err(_) => ExitCode::from(2),
    }
}
