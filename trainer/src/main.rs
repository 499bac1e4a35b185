//! `cls-train`: Co-Label Selection (CLS), its ablations and the ML-PL baselines on libtorch.
//!
//! Exit status: 0 success (a run stopped by `--stop-after` included); 1 an error, printed as one
//! line `cls-train: error: ...` (a bug: `cls-train: internal error (please report): ...`); 2 a
//! usage error (an unknown flag or a value of the wrong shape, from the command-line parser);
//! 141, without a message, when the reader of the output went away (`cls-train man | head`).

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use cls_trainer::config::{backbone_flag, device_flag, Export, TrainConfig};
use cls_trainer::methods::MethodName;
use cls_trainer::summary::Weights;
use cls_trainer::{launch, sweep};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Train CLS (or an ablation or baseline) on multi-label data with partial labels, then export
/// the better peer to ONNX.
///
/// Without --data, the built-in synthetic dataset is generated and a fast demo configuration is
/// used (frozen ImageNet EfficientNet-Lite0 features, 15 epochs).
#[derive(Parser, Debug)]
#[command(name = "cls-train", version = VERSION, long_version = LONG_VERSION, about, long_about = None,
          after_help = AFTER_HELP, args_conflicts_with_subcommands = true, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Read options from a TOML file (keys are the long flags with underscores); flags given on
    /// the command line win.
    #[arg(long, global = false)]
    config: Option<PathBuf>,

    /// Continue the run in RUN_DIR from its last checkpoint (its config.toml is used; --epochs,
    /// --stop-after, --device and --threads may be given again); a run stopped before its first
    /// checkpoint starts again from its config.toml.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,

    /// No progress: no time estimate, no progress bar or lines, no epoch lines (warnings,
    /// errors and the run's results still print). Allowed with --resume.
    #[arg(short, long)]
    quiet: bool,

    /// When standard error is not a terminal (a log file, a batch job), print a progress line
    /// within each epoch every SECS seconds (0: never; on a terminal a progress bar is drawn).
    /// Allowed with --resume.
    #[arg(long, value_name = "SECS", default_value_t = cls_trainer::progress::DEFAULT_EVERY_SECS as f64,
          value_parser = progress_every_flag)]
    progress_every: f64,

    #[command(flatten)]
    train: TrainConfig,
}

/// How progress is shown: not part of a run's configuration (not in config.toml), so a resume
/// may change it.
const DISPLAY_FLAGS: [&str; 2] = ["quiet", "progress_every"];

/// `--progress-every`'s parser: seconds, finite, ≥ 0.
fn progress_every_flag(s: &str) -> Result<f64> {
    let v: f64 = s.parse().map_err(|_| anyhow::anyhow!("'{s}' is not a number of seconds"))?;
    if !v.is_finite() || !(0.0..=1e9).contains(&v) {
        bail!("'{s}': give seconds between 0 (never) and 1e9");
    }
    Ok(v)
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Re-export a run's model from its saved weights.
    Export {
        run_dir: PathBuf,
        /// Output file (default RUN_DIR/model.onnx).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Which model [default: the run's setting].
        #[arg(long, value_enum)]
        export: Option<Export>,
        /// Which weights: best (each peer's best validation epoch), last, or an epoch number
        /// (kept with --keep-epochs).
        #[arg(long, default_value = "best", value_parser = weights_flag)]
        checkpoint: Weights,
        /// Calibrate the thresholds again with this minimum of validation positives per class
        /// [default: the run's setting]; written to the run's own model.onnx, the run's
        /// config.toml records it (a later export or --resume keeps it).
        #[arg(long)]
        calibrate_min_positives: Option<usize>,
        /// Calibrate the thresholds again with this shrinkage toward the global threshold
        /// [default: the run's setting]; recorded like --calibrate-min-positives.
        #[arg(long)]
        calibrate_shrink: Option<f64>,
    },
    /// Print what libtorch sees (CUDA devices, threads) as JSON.
    Info,
    /// Time the training step alone on random data (the benchmark of scripts/bench-train).
    BenchStep {
        #[arg(long, default_value = "resnet50", value_parser = backbone_flag())]
        backbone: String,
        #[arg(long, value_enum, default_value_t = MethodName::Cls)]
        method: MethodName,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Input size HxW.
        #[arg(long, default_value = "224x224")]
        size: String,
        #[arg(long, default_value_t = 80)]
        classes: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value = "auto", value_parser = device_flag)]
        device: String,
        #[arg(long)]
        threads: Option<usize>,
        /// On CUDA: fp32 instead of bf16 autocast + channels-last.
        #[arg(long)]
        no_amp: bool,
    },
    /// Compare runs in one document with tables and plots (mAP per epoch, selection
    /// precision/recall per epoch, per-class AP): an HTML page or markdown, by --out's extension.
    Report {
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// FILE.html (or .htm): one self-contained HTML page, the same kind as cls-infer --report's
        /// (sortable tables, inline SVG charts, nothing else written); any other name: markdown,
        /// with PNG plots in <stem>_plots/ beside it.
        #[arg(long, default_value = "report.html")]
        out: PathBuf,
        #[arg(long, default_value = "CLS runs")]
        title: String,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on standard output.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) on standard output.
    Man,
    /// Train one run per grid point and pick the best on validation mAP (never test).
    Sweep {
        /// Folder for the runs, sweep.json and the sensitivity plots.
        #[arg(long)]
        out: PathBuf,
        /// τ_h values, comma separated (the paper's grid: 0,0.003,0.006,0.009,0.012,0.015,0.018,0.021).
        #[arg(long)]
        tau_h_grid: Option<String>,
        /// τ_l values, comma separated (the paper's grid: 0,0.02,0.04,...,0.14).
        #[arg(long)]
        tau_l_grid: Option<String>,
        /// LL-R/Ct/Cp Δ values (% of B·C per epoch), comma separated.
        #[arg(long)]
        ll_delta_grid: Option<String>,
        #[command(flatten)]
        train: Box<TrainConfig>,
    },
}

/// The version and the commit it was built from (build/version.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("CLS_GIT_COMMIT"), ")");
/// `--version`: also the libtorch it was built against.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CLS_GIT_COMMIT"),
    ")\nlibtorch ",
    env!("CLS_LIBTORCH_VERSION"),
    " (tch 0.24.0; CUDA is looked for at start: `cls-train info`)"
);

const AFTER_HELP: &str = "\
Exit status: 0 ok (also a run stopped by --stop-after, resumable with --resume); 1 an error
  (one line: cls-train: error: ...); 2 a usage error (unknown flag, value of the wrong shape);
  141 the reader of the output went away (cls-train man | head).
Shell completions: cls-train completions bash|zsh|fish|elvish|powershell; man page: cls-train man.";

/// `--checkpoint`'s parser.
fn weights_flag(s: &str) -> Result<Weights> {
    s.parse().map_err(|e| anyhow::anyhow!("{e}"))
}

/// libtorch's OpenMP threads (GNU libgomp) spin while they wait, by default for about 300,000
/// iterations before they sleep; on a shared or busy machine that stalls every parallel operation.
/// Measured on 2 cores (BENCHMARKS.md), EfficientNet-Lite0's AN training step: alone 715 ms
/// spinning, 814 waiting passively, 709 with a spin of 1,000 iterations; two processes side by
/// side 5,288 / 4,539 (libgomp's default of 300,000, roughly) / 1,325 / 1,395 ms. libgomp reads its
/// settings when it is loaded, before `main`, so setting them here would change nothing: when the
/// user has chosen neither `OMP_WAIT_POLICY` nor `GOMP_SPINCOUNT` (an empty value is no choice, as
/// for libgomp), a command that runs libtorch's threads (training, `sweep`, `bench-step`, `export`,
/// and `info`, which reports what they would see) runs the binary again with `GOMP_SPINCOUNT=1000`
/// (about 0.2 s); the others (`report`, `man`, `completions`, help) start once. Not when the
/// binary was started through the dynamic loader (`ld.so ./cls-train`): its path is the loader's.
fn wait_briefly(matches: &ArgMatches) {
    let chosen = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if chosen("OMP_WAIT_POLICY") || chosen("GOMP_SPINCOUNT") {
        return;
    }
    if !matches!(matches.subcommand_name(), None | Some("sweep" | "bench-step" | "export" | "info")) {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let Ok(exe) = std::env::current_exe() else { return };
        let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with("ld-") || name.starts_with("ld.so") {
            return;
        }
        // This binary's path (so that ps and pgrep still say cls-train); /proc/self/exe when the
        // file was replaced since it started (it still names the running file).
        let exe = if exe.to_string_lossy().ends_with(" (deleted)") { "/proc/self/exe".into() } else { exe };
        let mut args = std::env::args_os();
        let argv0 = args.next().unwrap_or_else(|| "cls-train".into());
        let err = std::process::Command::new(exe).arg0(argv0).args(args).env("GOMP_SPINCOUNT", "1000").exec();
        // Only reached when exec failed: train with libgomp's default instead.
        eprintln!(
            "cls-train: note: could not restart with GOMP_SPINCOUNT=1000 ({err}); OpenMP threads spin while waiting"
        );
    }
}

/// An environment variable as this process started with it (what libgomp read), not as changed
/// since.
fn env_at_start(name: &str) -> Option<String> {
    let environ = std::fs::read("/proc/self/environ").ok()?;
    let prefix = format!("{name}=");
    environ
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    wait_briefly(&matches);
    // Temporary files (checkpoints, caches, outputs) are removed if the run is interrupted.
    if let Err(e) = cls_core::fsio::install_cleanup_handler() {
        eprintln!("cls-train: warning: {e:#}");
    }
    // A bug is one line, not a backtrace (a panic of a rayon worker reaches this thread too).
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        // libtorch's messages carry a C++ backtrace on the following lines: the first says it.
        let first = payload.lines().find(|l| !l.trim().is_empty()).unwrap_or("a panic").trim();
        let at = info.location().map_or(String::new(), |l| format!(" (at {}:{})", l.file(), l.line()));
        eprintln!("cls-train: internal error (please report): {first}{at}");
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Cli::from_arg_matches(&matches).map_err(anyhow::Error::from).and_then(|cli| run(cli, &matches))
    }));
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        // A reader that went away (`cls-train man | head`): end quietly, as the signal would have.
        Ok(Err(e)) if broken_pipe(&e) => ExitCode::from(141),
        Ok(Err(e)) => {
            eprintln!("cls-train: error: {e:#}");
            ExitCode::from(1)
        }
        Err(_) => ExitCode::from(1),
    }
}

/// Whether `e` comes from writing to a pipe whose reader is gone.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Names of the options given explicitly on the command line, as field names (`stop_after`).
/// Only arguments count: clap also reports the group of a flattened struct (`TrainConfig`) as
/// present, which is no option anyone gave.
fn explicit_keys(m: &ArgMatches, cmd: &clap::Command) -> Vec<String> {
    cmd.get_arguments()
        .map(|a| a.get_id().as_str())
        .filter(|id| m.value_source(id) == Some(ValueSource::CommandLine))
        .map(str::to_string)
        .collect()
}

/// The demo configuration used with the built-in synthetic data, for every option not given.
const SYNTHETIC_PRESET: &str = r#"
backbone = "efficientnet-lite0"
pretrained = "imagenet"
partial = "single"
freeze_backbone = true
resize = "128x128"
crop = "128x128"
epochs = 15
lr = 0.003
"#;

fn run(cli: Cli, matches: &ArgMatches) -> Result<()> {
    let cmd = Cli::command();
    let explicit: Vec<String> =
        explicit_keys(matches, &cmd).into_iter().filter(|k| !DISPLAY_FLAGS.contains(&k.as_str())).collect();
    cls_trainer::progress::configure(cls_trainer::progress::Settings {
        quiet: cli.quiet,
        every: (cli.progress_every > 0.0).then(|| std::time::Duration::from_secs_f64(cli.progress_every)),
    });
    match cli.command {
        Some(Command::Export { run_dir, out, export, checkpoint, calibrate_min_positives, calibrate_shrink }) => {
            let export = export.map(|e| e.to_string());
            let calibration = (calibrate_min_positives, calibrate_shrink);
            return cls_trainer::summary::reexport(
                &run_dir,
                out.as_deref(),
                export.as_deref(),
                &checkpoint,
                calibration,
            );
        }
        Some(Command::Completions { shell }) => {
            // clap_complete writes through `write_all(..).expect(..)`: render into memory first.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "cls-train", &mut script);
            return std::io::Write::write_all(&mut std::io::stdout(), &script).context("writing the completions");
        }
        Some(Command::Man) => {
            return clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("writing the man page");
        }
        Some(Command::Sweep { out, tau_h_grid, tau_l_grid, ll_delta_grid, train }) => {
            let sub = matches.subcommand_matches("sweep").context("parsing the sweep's options")?;
            let sub_cmd = cmd.find_subcommand("sweep").context("parsing the sweep's options")?;
            let cfg = resolve(*train, cli.config.as_deref(), &explicit_keys(sub, sub_cmd))?;
            let grid = |flag: &str, g: Option<String>| -> Result<Vec<f64>> {
                g.as_deref()
                    .map(|g| sweep::parse_grid(g).with_context(|| format!("--{flag}")))
                    .transpose()
                    .map(Option::unwrap_or_default)
            };
            sweep::run(
                &cfg,
                &out,
                &grid("tau-h-grid", tau_h_grid)?,
                &grid("tau-l-grid", tau_l_grid)?,
                &grid("ll-delta-grid", ll_delta_grid)?,
            )?;
            return Ok(());
        }
        Some(Command::BenchStep {
            backbone,
            method,
            batch_size,
            size,
            classes,
            steps,
            warmup,
            device,
            threads,
            no_amp,
        }) => {
            let arch: cls_models::Arch = backbone.parse().map_err(|e| anyhow::anyhow!("--backbone: {e}"))?;
            let (h, w) = cls_trainer::config::parse_size(&size).context("--size")?;
            let limits = cls_trainer::bench::Limits { batch_size, size: (h, w), classes, steps, warmup, threads };
            limits.check()?;
            if let Some(n) = threads {
                tch::set_num_threads(n as i32);
            }
            let device = cls_trainer::setup::parse_device(&device)?;
            let r = cls_trainer::bench::bench_step(
                &arch,
                method.as_str(),
                batch_size as i64,
                (h as i64, w as i64),
                classes as i64,
                steps,
                warmup,
                device,
                !no_amp,
            )?;
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        Some(Command::Info) => {
            cls_models::init_cuda();
            let info = serde_json::json!({
                "cuda_available": tch::Cuda::is_available(),
                "cuda_devices": tch::Cuda::device_count(),
                "cudnn_available": tch::Cuda::cudnn_is_available(),
                "threads": tch::get_num_threads(),
                "omp_wait_policy": env_at_start("OMP_WAIT_POLICY"),
                "gomp_spincount": env_at_start("GOMP_SPINCOUNT"),
                "version": env!("CARGO_PKG_VERSION"),
            });
            println!("{info}");
            return Ok(());
        }
        Some(Command::Report { runs, out, title }) => return cls_trainer::report::write(&runs, &out, &title),
        None => {}
    }
    if let Some(run_dir) = cli.resume {
        let allowed = launch::RESUME_OVERRIDES;
        if let Some(other) = explicit.iter().find(|k| *k != "resume" && !allowed.contains(&k.as_str())) {
            bail!(
                "--{} cannot be given with --resume: the run's config.toml holds the configuration \
                 (only --epochs, --stop-after, --device and --threads may be given again, and -q, --progress-every)",
                other.replace('_', "-")
            );
        }
        let given = |k: &str| explicit.iter().any(|e| e == k);
        let overrides = launch::Overrides {
            epochs: given("epochs").then_some(cli.train.epochs),
            stop_after: if given("stop_after") { cli.train.stop_after } else { None },
            device: given("device").then(|| cli.train.device.clone()),
            threads: if given("threads") { cli.train.threads } else { None },
        };
        return sweep::resume(&run_dir, &overrides);
    }
    let cfg = resolve(cli.train, cli.config.as_deref(), &explicit)?;
    sweep::start_with_auto_tau_h(cfg)?;
    Ok(())
}

/// The configuration from the command line, a `--config` file under it, and the synthetic demo
/// preset under both when no `--data` is given.
fn resolve(mut cfg: TrainConfig, file: Option<&Path>, explicit: &[String]) -> Result<TrainConfig> {
    if let Some(file) = file {
        cfg = cfg.with_file(file, explicit)?;
    }
    if cfg.data.is_none() {
        let mut keep = explicit.to_vec();
        if explicit.iter().any(|k| k == "backbone") {
            keep.extend(["pretrained", "freeze_backbone", "resize", "crop"].map(String::from));
        }
        cfg = cfg.with_toml(SYNTHETIC_PRESET, "the synthetic-data preset", &keep)?;
    }
    Ok(cfg)
}
