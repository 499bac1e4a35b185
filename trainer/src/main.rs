//! `cls-train`: Co-Label Selection (CLS), its ablations and the ML-PL baselines on libtorch.

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use cls_trainer::checkpoint;
use cls_trainer::config::TrainConfig;
use cls_trainer::sweep;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Train CLS (or an ablation or baseline) on multi-label data with partial labels, then export
/// the better peer to ONNX.
///
/// Without --data, the built-in synthetic dataset is generated and a fast demo configuration is
/// used (frozen ImageNet EfficientNet-Lite0 features, 15 epochs).
#[derive(Parser, Debug)]
#[command(name = "cls-train", version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Read options from a TOML file (keys are the long flags with underscores); flags given on
    /// the command line win.
    #[arg(long, global = false)]
    config: Option<PathBuf>,

    /// Continue the run in RUN_DIR from its last checkpoint (its config.toml is used; --epochs,
    /// --stop-after, --device and --threads may be given again).
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,

    #[command(flatten)]
    train: TrainConfig,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Re-export a run's model from its saved weights.
    Export {
        run_dir: PathBuf,
        /// Output file (default RUN_DIR/model.onnx).
        #[arg(long)]
        out: Option<PathBuf>,
        /// better | ensemble (default: the run's setting).
        #[arg(long)]
        export: Option<String>,
        /// Which weights: best (each peer's best validation epoch), last, or an epoch number
        /// (kept with --keep-epochs).
        #[arg(long, default_value = "best")]
        checkpoint: String,
    },
    /// Print what libtorch sees (CUDA devices, threads) as JSON.
    Info,
    /// Time the training step alone on random data (the benchmark of scripts/bench-train).
    BenchStep {
        #[arg(long, default_value = "resnet50")]
        backbone: String,
        #[arg(long, default_value = "cls")]
        method: String,
        #[arg(long, default_value_t = 32)]
        batch_size: i64,
        /// Input size HxW.
        #[arg(long, default_value = "224x224")]
        size: String,
        #[arg(long, default_value_t = 80)]
        classes: i64,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long)]
        threads: Option<i32>,
        /// On CUDA: fp32 instead of bf16 autocast + channels-last.
        #[arg(long)]
        no_amp: bool,
    },
    /// Compare runs in one markdown file with tables and plots (mAP per epoch, selection
    /// precision/recall per epoch, per-class AP).
    Report {
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The markdown file (plots go to <stem>_plots/ beside it).
        #[arg(long, default_value = "report.md")]
        out: PathBuf,
        #[arg(long, default_value = "CLS runs")]
        title: String,
    },
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

fn main() -> ExitCode {
    // libtorch's OpenMP threads spin while waiting; on a shared or busy machine that turns small
    // operations into long stalls (measured here: a linear-head epoch took 4-12 s instead of
    // 0.4 s with another process on the cores). Passive waiting unless the user chose otherwise;
    // set before libtorch starts its thread pool.
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        std::env::set_var("OMP_WAIT_POLICY", "PASSIVE");
    }
    let matches = Cli::command().get_matches();
    // Temporary files (checkpoints, caches, outputs) are removed if the run is interrupted.
    if let Err(e) = cls_core::fsio::install_cleanup_handler() {
        eprintln!("warning: {e:#}");
    }
    match Cli::from_arg_matches(&matches).map_err(anyhow::Error::from).and_then(|cli| run(cli, &matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Field names of the options given explicitly on the command line.
fn explicit_keys(m: &ArgMatches) -> Vec<String> {
    m.ids()
        .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.as_str().to_string())
        .collect()
}

/// The demo configuration used with the built-in synthetic data, for every option not given.
const SYNTHETIC_PRESET: &str = r#"
backbone = "efficientnet-lite0"
pretrained = "imagenet"
freeze_backbone = true
resize = "128x128"
crop = "128x128"
epochs = 15
lr = 0.003
"#;

fn run(cli: Cli, matches: &ArgMatches) -> Result<()> {
    let explicit = explicit_keys(matches);
    match cli.command {
        Some(Command::Export { run_dir, out, export, checkpoint }) => {
            let which = checkpoint.parse().map_err(|e| anyhow::anyhow!("--checkpoint {e}"))?;
            return cls_trainer::summary::reexport(&run_dir, out.as_deref(), export.as_deref(), &which);
        }
        Some(Command::Sweep { out, tau_h_grid, tau_l_grid, ll_delta_grid, train }) => {
            let sub = matches.subcommand_matches("sweep").expect("sweep matches");
            let cfg = resolve(*train, cli.config.as_deref(), &explicit_keys(sub))?;
            let grid =
                |g: Option<String>| g.as_deref().map(sweep::parse_grid).transpose().map(Option::unwrap_or_default);
            sweep::run(&cfg, &out, &grid(tau_h_grid)?, &grid(tau_l_grid)?, &grid(ll_delta_grid)?)?;
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
            if let Some(n) = threads {
                tch::set_num_threads(n);
            }
            let arch: cls_models::Arch = backbone.parse().map_err(|e| anyhow::anyhow!("--backbone: {e}"))?;
            let (h, w) = cls_trainer::config::parse_size(&size)?;
            let device = cls_trainer::setup::parse_device(&device)?;
            let r = cls_trainer::bench::bench_step(
                &arch,
                &method,
                batch_size,
                (h as i64, w as i64),
                classes,
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
                "version": env!("CARGO_PKG_VERSION"),
            });
            println!("{info}");
            return Ok(());
        }
        Some(Command::Report { runs, out, title }) => return cls_trainer::report::write(&runs, &out, &title),
        None => {}
    }
    if let Some(run_dir) = cli.resume {
        let saved = run_dir.join("config.toml");
        let mut cfg = TrainConfig::default()
            .with_file(&saved, &[])
            .with_context(|| format!("{} is not a run folder", run_dir.display()))?;
        for key in &explicit {
            match key.as_str() {
                "epochs" => cfg.epochs = cli.train.epochs,
                "stop_after" => cfg.stop_after = cli.train.stop_after,
                "device" => cfg.device = cli.train.device.clone(),
                "threads" => cfg.threads = cli.train.threads,
                "resume" => {}
                other => {
                    bail!("--{} cannot change on --resume (the run's config.toml holds it)", other.replace('_', "-"))
                }
            }
        }
        if checkpoint::latest(&run_dir).is_none() {
            bail!(
                "{}: no checkpoint yet (the run stopped before its first epoch ended); start it again",
                run_dir.display()
            );
        }
        checkpoint::save_config(&cfg, &run_dir)?;
        cls_trainer::train::run(cfg, &run_dir, true)?;
        return Ok(());
    }

    let cfg = resolve(cli.train, cli.config.as_deref(), &explicit)?;
    if !cls_trainer::methods::METHODS.contains(&cfg.method.as_str()) {
        bail!("unknown method {:?}; known methods: {}", cfg.method, cls_trainer::methods::METHODS.join(", "));
    }
    let run_dir = match &cfg.run_dir {
        Some(d) => d.clone(),
        None => {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            PathBuf::from("runs").join(format!("{}-{}-s{}-{t}", cfg.method, cfg.partial.replace(':', ""), cfg.seed))
        }
    };
    if checkpoint::latest(&run_dir).is_some() {
        bail!("{} already holds a run: continue it with --resume {0}, or choose another --run-dir", run_dir.display());
    }
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    checkpoint::save_config(&cfg, &run_dir)?;
    eprintln!("run folder: {}", run_dir.display());
    cls_trainer::train::run(cfg, &run_dir, false)?;
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
