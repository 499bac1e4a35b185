//! `cls-train`: Co-Label Selection (CLS), its ablations and the ML-PL baselines on libtorch.

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use cls_trainer::checkpoint;
use cls_trainer::config::TrainConfig;
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
    },
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
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
    if let Some(Command::Export { run_dir, out, export }) = cli.command {
        return cls_trainer::summary::reexport(&run_dir, out.as_deref(), export.as_deref());
    }
    if let Some(run_dir) = cli.resume {
        let saved = run_dir.join("config.toml");
        let mut cfg = TrainConfig::default().with_file(&saved, &[]).with_context(|| format!("{} is not a run folder", run_dir.display()))?;
        for key in &explicit {
            match key.as_str() {
                "epochs" => cfg.epochs = cli.train.epochs,
                "stop_after" => cfg.stop_after = cli.train.stop_after,
                "device" => cfg.device = cli.train.device.clone(),
                "threads" => cfg.threads = cli.train.threads,
                "resume" => {}
                other => bail!("--{} cannot change on --resume (the run's config.toml holds it)", other.replace('_', "-")),
            }
        }
        if checkpoint::latest(&run_dir).is_none() {
            bail!("{}: no checkpoint yet (the run stopped before its first epoch ended); start it again", run_dir.display());
        }
        save_config(&cfg, &run_dir)?;
        cls_trainer::train::run(cfg, &run_dir, true)?;
        return Ok(());
    }

    let mut cfg = cli.train;
    if let Some(file) = &cli.config {
        cfg = cfg.with_file(file, &explicit)?;
    }
    if cfg.data.is_none() {
        let preset = std::env::temp_dir().join(format!("cls-preset-{}.toml", std::process::id()));
        std::fs::write(&preset, SYNTHETIC_PRESET)?;
        let mut keep = explicit.clone();
        if explicit.iter().any(|k| k == "backbone") {
            keep.extend(["pretrained", "freeze_backbone", "resize", "crop"].map(String::from));
        }
        let merged = cfg.with_file(&preset, &keep);
        let _ = std::fs::remove_file(&preset);
        cfg = merged?;
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
    save_config(&cfg, &run_dir)?;
    eprintln!("run folder: {}", run_dir.display());
    cls_trainer::train::run(cfg, &run_dir, false)?;
    Ok(())
}

fn save_config(cfg: &TrainConfig, run_dir: &Path) -> Result<()> {
    let text = toml::to_string_pretty(cfg).context("serialising the configuration")?;
    checkpoint::write_atomic(&run_dir.join("config.toml"), text.as_bytes())
}
