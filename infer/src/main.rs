//! cls-infer: tag a folder of images with an exported CLS model on ONNX Runtime, and optionally
//! compute the metrics of method.md ("Metrics", through `cls_core::metrics`) against ground truth.
//!
//! Exit status: 0 success; 1 some images could not be read and `--strict` was given, or more
//! than `--max-errors` failed; 2 bad usage, unreadable model, no images (or none readable), an
//! `--out` that another run is writing (`lock.rs`), `--resume` onto rows of another model or
//! labelling rule (`sink.rs`), or any other fatal error; 3 metric regression against `--baseline` (takes precedence over 1);
//! 141 (128 + SIGPIPE, what a shell reports for a tool the signal ended) without a message when
//! the reader of the output went away (`cls-infer ... | head -1`), after removing the temporary
//! files.
//!
//! Messages go to stderr through `tracing` (logging.rs: `-q`, `-v`); the panic hook and
//! `--generate` use [`say!`]. Neither panics on a closed stderr (`eprintln!` would).

/// `eprintln!` that never panics: a message that cannot be written is dropped.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod fromtags;
mod inputs;
mod lock;
mod logging;
mod model;
mod output;
mod pipeline;
mod report;
mod run;
mod runtime;
mod scoring;
mod shard;
mod sink;
mod stats;
mod tars;
mod thresholds;
mod truth;
mod walk;
mod xmp;

use clap::{CommandFactory, FromArgMatches, Parser};
use std::path::PathBuf;
use std::process::ExitCode;

/// cls-infer: tag image folders with an exported CLS model (ONNX Runtime) and compute metrics.
#[derive(Parser, Debug)]
#[command(version = VERSION, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// The exported model (ONNX, with cls-train's metadata).
    #[arg(long, value_name = "FILE", help_heading = "Input")]
    pub model: PathBuf,
    /// The images: a folder (searched recursively), an image file, a quoted glob
    /// ('photos/**/*.jpg'), @list.txt (one path a line), - (paths on standard input), or
    /// WebDataset tar shards (shards/{000000..000099}.tar, or a folder of .tar files).
    #[arg(long, value_name = "WHERE", help_heading = "Input")]
    pub images: PathBuf,
    /// Tag only slice I of N (0-based); see the notes below for cluster array jobs.
    #[arg(long, value_name = "I/N", help_heading = "Input")]
    pub shard: Option<String>,
    /// Follow symbolic links to directories (loops are detected and reported).
    #[arg(long, help_heading = "Input")]
    pub follow_links: bool,
    /// Do not turn images upright by their EXIF orientation.
    #[arg(long, help_heading = "Input")]
    pub no_exif_orientation: bool,

    /// Where to write the tags [default: standard output]; for --format xmp a folder (sidecars
    /// mirroring the images' names), or . (beside the images).
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub out: Option<PathBuf>,
    /// The output's format: jsonl (image, labels, scores), csv (image, labels, a score column
    /// per class, error), xmp (one <name>.<ext>.xmp sidecar per image, existing ones merged),
    /// exiftool (the JSON that `exiftool -json=FILE DIR` imports).
    #[arg(long, value_enum, default_value_t = output::Format::Jsonl, hide_possible_values = true, help_heading = "Output")]
    pub format: output::Format,
    /// The root of the hierarchical keywords (lr:hierarchicalSubject) of xmp and exiftool:
    /// ROOT|label.
    #[arg(long, value_name = "ROOT", default_value = "cls", help_heading = "Output")]
    pub keyword_root: String,
    /// Skip the images already in --out (or in the OUT.partial an interrupted run left) and add
    /// the new rows; refused when those rows come from another model (by its SHA-256) or
    /// labelling rule (see --relabel).
    #[arg(long, help_heading = "Output")]
    pub resume: bool,
    /// With --resume, when the rows already written were labelled by other thresholds
    /// (--threshold, --thresholds, --min-labels, --top-k): label them again from their stored
    /// scores by this run's rule, so the file follows one rule (jsonl and csv; exiftool's JSON
    /// keeps no scores).
    #[arg(long, requires = "resume", help_heading = "Output")]
    pub relabel: bool,
    /// --format csv: write text cells as they are. By default a cell that starts with = + - @, a
    /// tab or a carriage return (which a spreadsheet would run as a formula), or with ', gets a
    /// leading ' (remove one leading ' from a text cell to read its text).
    #[arg(long, help_heading = "Output")]
    pub csv_raw: bool,
    /// Where to write the images that failed (JSON Lines: path, reason); they are rows of --out
    /// too.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub errors: Option<PathBuf>,
    /// Exit with status 1 when any image could not be read.
    #[arg(long, help_heading = "Output")]
    pub strict: bool,
    /// Stop (exit 1) once more than N images have failed: an input that is mostly broken.
    #[arg(long, value_name = "N", help_heading = "Output")]
    pub max_errors: Option<usize>,

    /// One global decision threshold for every class, instead of the model's (per-class)
    /// thresholds [default: the model's per-class thresholds, else its threshold, else 0.5].
    #[arg(long, value_name = "T", help_heading = "Labels")]
    pub threshold: Option<f64>,
    /// Per-class thresholds overriding the others for the classes it names: a JSON object
    /// {"class name": threshold, ...}.
    #[arg(long, value_name = "FILE", help_heading = "Labels")]
    pub thresholds: Option<PathBuf>,
    /// Give every image at least its K best labels, whatever their scores.
    #[arg(long, value_name = "K", default_value_t = 0, help_heading = "Labels")]
    pub min_labels: u32,
    /// Report at most K labels per image.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Labels")]
    pub top_k: Option<u32>,

    /// Ground truth, in any format cls-train reads: a JSONL manifest (image names relative to the
    /// manifest's own folder, as cls-train reads it), a COCO instances JSON or a tag table CSV
    /// (image names relative to --images: the folder, or the folder of the file, glob or list), a
    /// VOC devkit, Open Images image-level labels (matched by ImageID = file stem; needs
    /// --gt-classes).
    #[arg(long, value_name = "FILE", help_heading = "Evaluation")]
    pub ground_truth: Option<PathBuf>,
    /// The ground truth's classes: Open Images class descriptions (LabelName,DisplayName) or
    /// trainable-classes list; for a JSONL manifest or tag table, a class list (one a line).
    #[arg(long, value_name = "FILE", requires = "ground_truth", help_heading = "Evaluation")]
    pub gt_classes: Option<PathBuf>,
    /// Where to write the metrics (JSON, with per-class AP, precision, recall, F1, support and
    /// threshold); needs --ground-truth.
    #[arg(long, value_name = "FILE", requires = "ground_truth", help_heading = "Evaluation")]
    pub metrics_out: Option<PathBuf>,
    /// Write an error-analysis page to DIR/index.html (per-class table and precision-recall
    /// curves, each class's worst false positives and negatives as thumbnails under DIR/thumbs/,
    /// predicted against true labels per image); self-contained, opens offline in a browser.
    #[arg(long, value_name = "DIR", requires = "ground_truth", help_heading = "Evaluation")]
    pub report: Option<PathBuf>,
    /// Metrics JSON to compare against (exit 3 when mAP, CF1 or OF1 drops by more than
    /// --tolerance).
    #[arg(long, value_name = "FILE", requires = "ground_truth", help_heading = "Evaluation")]
    pub baseline: Option<PathBuf>,
    /// Allowed drop against --baseline, as a fraction (0.01 = one point).
    #[arg(long, value_name = "T", default_value_t = 0.0, requires = "baseline", help_heading = "Evaluation")]
    pub tolerance: f64,
    /// Compute the metrics of these tag files (JSONL or CSV written by cls-infer, e.g. one per
    /// --shard of an array job) instead of running the model; names in them are relative to
    /// --images. Shards missing among them are named (from the .stats.json beside each).
    #[arg(long, value_name = "FILE", num_args = 1.., requires = "ground_truth", help_heading = "Evaluation",
          conflicts_with_all = ["out", "errors", "shard", "strict", "top_k", "min_labels", "follow_links", "batch", "threads", "ort_lib", "resume", "format", "max_errors", "csv_raw"])]
    pub from_tags: Vec<PathBuf>,

    /// Where to run the model: auto (CUDA when present), cpu, cuda, cuda:N.
    #[arg(long, value_name = "DEVICE", default_value = "auto", help_heading = "System")]
    pub device: runtime::Device,
    /// Images per inference batch.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65536), help_heading = "System")]
    pub batch: u32,
    /// Threads for ONNX Runtime and for decoding [default: all cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096), help_heading = "System")]
    pub threads: Option<u32>,
    /// The ONNX Runtime library (libonnxruntime.so) to load.
    #[arg(long, value_name = "PATH", help_heading = "System")]
    pub ort_lib: Option<PathBuf>,
    /// Without a terminal on stderr, a progress line every this many seconds (0: none).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, help_heading = "System")]
    pub log_every: f64,
    #[command(flatten, next_help_heading = "System")]
    pub verbosity: clap_verbosity_flag::Verbosity<clap_verbosity_flag::InfoLevel>,

    /// Class names, one a line, for a model without metadata (overrides the metadata).
    #[arg(long, value_name = "FILE", help_heading = "Model without metadata")]
    pub classes: Option<PathBuf>,
    /// Input size HxW for a model without metadata (overrides the metadata; at most 8192 a side).
    #[arg(long, value_name = "HxW", help_heading = "Model without metadata")]
    pub size: Option<String>,

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) or the man page
    /// (man) on standard output, and exit.
    #[arg(long, value_name = "KIND", value_enum, exclusive = true)]
    pub generate: Option<Generate>,
}

const AFTER_HELP: &str = "\
Images: in a folder, the regular files named like a format this build decodes (JPEG, PNG, GIF,
  BMP, WebP, TIFF; any case), sorted by path; FIFOs, devices and broken links so named fail.
  A glob is sorted; a list (@list.txt: relative to its folder unless absolute, # comments) or -
  keeps its order. Tar shards are read member by member, grouped by key, the image chosen by
  extension, and named shard.tar/key.jpg; a member named with .. is refused.
Output: jsonl (the default), one line per image, in input order:
  {\"image\": \"a/b.jpg\", \"labels\": [best first], \"scores\": {\"class\": p, ...}}
  and a failed image {\"image\": ..., \"labels\": [], \"error\": reason}. csv: image, labels
  (joined by ;), one score column per class, error; a text cell that starts with = + - @, a tab,
  a carriage return or ' gets a leading ' against spreadsheet formulas (--csv-raw: as they are).
  exiftool: [{\"SourceFile\": ...,
  \"XMP-dc:Subject\": [...], \"XMP-lr:HierarchicalSubject\": [...]}, ...]. xmp: sidecars
  mirroring the names under --out DIR (or beside the images, --out .), merged into existing
  ones. Names are relative to the folder, glob or list; bytes that are not UTF-8 are written
  \\xNN and a backslash \\\\, so --from-tags finds the files again.
  Into a file OUT, rows go to OUT.partial first and OUT is written at the end: an interrupted
  run leaves OUT as it was, and --resume continues. OUT.stats.json records the run (the model's
  SHA-256 and classes, the thresholds). One run at a time per OUT: a second is refused, naming
  the first (the lock file OUT.lock; DIR.lock for --format xmp --out DIR). --resume refuses rows
  of another model, or of other thresholds unless --relabel.
Whole-folder metrics of an array job: tag with --shard (or the variables below) and --out, then
  cls-infer --model M --images DIR --ground-truth GT --from-tags shard-*.jsonl
Sharding without --shard: SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (minus SLURM_ARRAY_TASK_MIN),
  or JOB_COMPLETION_INDEX with JOB_COMPLETION_COUNT (set it to the job's completions).
ONNX Runtime: --ort-lib, else ORT_DYLIB_PATH, else the project's .venv/onnxruntime, else the
  system's. Its log level is ORT_LOG (default warning).
Exit status: 0 ok; 1 unreadable images with --strict, or more than --max-errors; 2 bad usage,
  unreadable model, no images or none readable, an --out another run is writing, --resume onto
  rows of another model or rule; 3 metric regression against --baseline; 141,
  quietly, when the output's reader went away (as in `cls-infer ... | head`).";

/// What `--generate` prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Generate {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
    Man,
}

/// The version and the commit it was built from (build/version.rs).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("CLS_GIT_COMMIT"), ")");

/// `--version`: this program's version and commit, and the ONNX Runtime library it would load
/// (loaded here, so a library that cannot be loaded says why).
fn long_version() -> String {
    let ort = match runtime::init(None) {
        Ok((_, lib)) => {
            // libonnxruntime.so.1.31.1: the version is in the resolved file name.
            let real = std::fs::canonicalize(&lib).unwrap_or_else(|_| PathBuf::from(&lib));
            let name = real.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let version = name.split_once(".so.").map_or("of unknown version", |(_, v)| v).to_string();
            format!("{version} ({lib})")
        }
        Err(e) => format!("not loadable: {e:#}"),
    };
    format!("{VERSION}\nONNX Runtime: {ort}\nort crate: 2.0.0-rc.15 (ONNX Runtime API 1.30 or newer)")
}

/// `--generate KIND`: a completion script or the man page, on standard output.
fn generate(kind: Generate) -> std::io::Result<()> {
    use clap_complete::Shell;
    let mut cmd = Cli::command();
    let mut out = std::io::stdout();
    let shell = match kind {
        Generate::Man => return clap_mangen::Man::new(cmd).render(&mut out),
        Generate::Bash => Shell::Bash,
        Generate::Zsh => Shell::Zsh,
        Generate::Fish => Shell::Fish,
        Generate::Elvish => Shell::Elvish,
        Generate::Powershell => Shell::PowerShell,
    };
    // clap_complete panics on a failed write: render into memory, then write.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "cls-infer", &mut script);
    std::io::Write::write_all(&mut out, &script)
}

fn main() -> ExitCode {
    if std::env::var_os("ORT_LOG").is_none() {
        // Read by ort when the environment is created; nothing else runs yet.
        std::env::set_var("ORT_LOG", "warning");
    }
    // `--version` loads ONNX Runtime to report its version; nothing else needs it before a run.
    let asks_version = std::env::args_os().skip(1).any(|a| a == "--version" || a == "-V");
    let command = if asks_version {
        Cli::command().long_version(&*Box::leak(long_version().into_boxed_str()))
    } else {
        Cli::command()
    };
    let matches = command.get_matches();
    // `--generate` stands alone (exclusive), so the required flags are missing: before the rest.
    if let Some(&kind) = matches.get_one::<Generate>("generate") {
        return match generate(kind) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(EXIT_BROKEN_PIPE),
            Err(e) => {
                say!("cls-infer: error: cannot write: {e}");
                ExitCode::from(2)
            }
        };
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    logging::init(cli.verbosity.tracing_level_filter());
    // Temporary output files are removed if the run is interrupted (SIGINT, SIGTERM, SIGHUP).
    if let Err(e) = cls_core::fsio::install_cleanup_handler() {
        tracing::warn!("{e:#}");
    }
    // One line, no backtrace, for a bug; decoder panics are caught and reported per file.
    std::panic::set_hook(Box::new(|info| {
        if !std::thread::current().name().is_some_and(|n| n.starts_with("cls-decode")) {
            say!("cls-infer: internal error (please report): {info}");
        }
    }));
    match std::panic::catch_unwind(|| run::run(&cli)) {
        Ok(Ok(status)) => ExitCode::from(status),
        // Rust ignores SIGPIPE, so a write to a pipe nobody reads fails with EPIPE: end quietly,
        // as a Unix tool the signal would have ended (the outputs' temporary files are gone by now).
        Ok(Err(e)) if broken_pipe(&e) => ExitCode::from(EXIT_BROKEN_PIPE),
        Ok(Err(e)) => {
            tracing::error!("{e:#}");
            ExitCode::from(2)
        }
        Err(_) => ExitCode::from(2),
    }
}

/// The exit status when the output's reader went away: 128 + SIGPIPE.
const EXIT_BROKEN_PIPE: u8 = 141;

/// Whether `e` comes from writing to a pipe (or FIFO) whose reader is gone.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
