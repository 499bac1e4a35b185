//! Everything a run needs before its first step: the device(s), the data and observed labels,
//! τ resolved for the dataset, the method, the peers (built, pretrained weights loaded, Adam over
//! their trainable tensors) and the inputs each split is read from.

use anyhow::{bail, Context, Result};
use cls_core::labels::UNK;
use cls_models::{load_pretrained, Arch, Net};
use std::path::{Path, PathBuf};
use tch::{nn, Device};

use crate::cache::ImageCache;
pub use crate::config::image_sizes;
use crate::config::{CacheMode, Labels, TrainConfig};
use crate::data::{self, RunData};
use crate::inputs::{self, Inputs};
use crate::loader::ImageFiles;
use crate::methods::{self, Method, MethodConfig};
use crate::optim::Adam;
use crate::peer::Peer;

pub struct Setup {
    /// Where losses are computed (the first peer's device).
    pub device: Device,
    /// One device per peer.
    pub devices: Vec<Device>,
    pub data: RunData,
    pub arch: Arch,
    pub mcfg: MethodConfig,
    pub method: Box<dyn Method>,
    pub peers: Vec<Peer>,
    pub train_inputs: Inputs,
    pub val_inputs: Inputs,
    pub test_inputs: Option<Inputs>,
    /// Inputs are backbone features (frozen backbone) or feature rows fed to the classifier only.
    pub head_only: bool,
    /// bf16 autocast and channels-last on CUDA (`--no-amp` turns it off).
    pub amp: bool,
    /// What a batch of one image does to the BatchNorm layers that train.
    pub batch_norm: BatchNormUse,
}

/// What a batch of one image does to the network's BatchNorm layers in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchNormUse {
    /// No BatchNorm trains: a frozen backbone's linear head, an MLP without a hidden layer.
    None,
    /// BatchNorm trains and sees several values per channel even in a batch of one image (a
    /// CNN whose feature maps stay larger than 1×1). One image's statistics are a poor batch
    /// statistic all the same.
    Trains,
    /// Some BatchNorm sees one value per channel per image: the MLP's hidden layer, or a CNN
    /// whose last feature map is 1×1 (both sides of the crop at most 32: five stride-2 stages).
    /// A batch of one gives it a variance of 0 and NaN running statistics.
    OneValuePerImage,
}

impl BatchNormUse {
    pub fn of(arch: &Arch, head_only: bool, crop: (u32, u32)) -> BatchNormUse {
        match arch {
            _ if head_only => BatchNormUse::None,
            Arch::Mlp { hidden: 0, .. } => BatchNormUse::None,
            Arch::Mlp { .. } => BatchNormUse::OneValuePerImage,
            _ if crop.0 <= 32 && crop.1 <= 32 => BatchNormUse::OneValuePerImage,
            _ => BatchNormUse::Trains,
        }
    }
}

/// The most entries (images × classes) of the training labels: 4 GiB as f32.
pub const MAX_LABEL_ENTRIES: u64 = 1 << 30;

/// `auto` | `cpu` | `cuda` | `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    cls_models::init_cuda();
    Ok(match s {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => {
            if !tch::Cuda::is_available() {
                bail!("--device cuda: CUDA is not available (libtorch sees no GPU; is the CUDA torch wheel installed? scripts/setup --gpu)");
            }
            Device::Cuda(0)
        }
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => {
                if (i as i64) >= tch::Cuda::device_count() {
                    bail!("--device {other}: only {} CUDA device(s) visible", tch::Cuda::device_count());
                }
                Device::Cuda(i)
            }
            _ => bail!("bad device '{other}': expected auto, cpu, cuda or cuda:N"),
        },
    })
}

/// The backbone when none is given: an MLP for feature tables, else the paper's ResNet-50.
pub fn arch_for(cfg: &TrainConfig, data: &RunData) -> Result<Arch> {
    let name = cfg.backbone.clone().unwrap_or_else(|| {
        if data.train.features.is_some() {
            "mlp".into()
        } else {
            "resnet50".into()
        }
    });
    let arch: Arch = name.parse().map_err(|e| anyhow::anyhow!("--backbone: {e}"))?;
    match (&data.train.features, arch.is_image()) {
        (Some(f), false) => Ok(Arch::Mlp { in_dim: f.ncols() as i64, hidden: cfg.mlp_hidden }),
        (None, true) => Ok(arch),
        (Some(_), true) => bail!("--backbone {name} needs images, but the data is a feature table: use --backbone mlp"),
        (None, false) => bail!("--backbone {name} needs a feature table (CSV), but the data are images"),
    }
}

/// The weights file behind `--pretrained`: `imagenet` means the converted EfficientNet-Lite0
/// weights that scripts/setup writes to `weights/` beside the project.
pub fn pretrained_file(spec: &str, arch: &Arch) -> Result<PathBuf> {
    if spec != "imagenet" {
        let p = PathBuf::from(spec);
        if !p.is_file() {
            bail!("--pretrained {spec}: {}", crate::config::PRETRAINED_CHOICES);
        }
        return Ok(p);
    }
    if !matches!(arch, Arch::EfficientNetLite0) {
        bail!(
            "--pretrained imagenet is available offline for efficientnet-lite0 only; for {} give a .safetensors file \
             (convert torchvision weights with scripts/convert-torchvision; timm's names load as they are), or `none` \
             to train from scratch",
            arch.name()
        );
    }
    let name = "efficientnet-lite0-imagenet.safetensors";
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("CLS_WEIGHTS_DIR") {
        candidates.push(PathBuf::from(d).join(name));
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/release/cls-train → project root.
        for up in exe.ancestors().skip(1).take(4) {
            candidates.push(up.join("weights").join(name));
        }
    }
    candidates.push(PathBuf::from("weights").join(name));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| format!("ImageNet weights for efficientnet-lite0 not found (looked for {name} in CLS_WEIGHTS_DIR and weights/): run scripts/setup"))
}

/// k, the expected number of positives per image: --expected-positives, else the training set's
/// true mean (known in simulation; with labels as given, the observed mean).
pub fn expected_positives(cfg: &TrainConfig, data: &RunData) -> f64 {
    let n = data.train.len().max(1) as f64;
    cfg.expected_positives.unwrap_or_else(|| data.train.targets.iter().filter(|&&v| v == 1).count() as f64 / n)
}

/// k_obs, the observed positives per training image.
fn observed_per_image(data: &RunData) -> f64 {
    let obs = &data.observed.labels;
    obs.iter().filter(|&&v| v == 1).count() as f64 / obs.nrows().max(1) as f64
}

/// h, the share of the unannotated training entries that are hidden positives
/// (`methods::hidden_positive_share` with k from [`expected_positives`]).
pub fn hidden_positive_share(cfg: &TrainConfig, data: &RunData) -> f64 {
    let c = data.observed.labels.ncols() as f64;
    methods::hidden_positive_share(expected_positives(cfg, data), observed_per_image(data), c)
}

fn resolve_tau(cfg: &TrainConfig, data: &RunData, expected_positives: f64) -> Result<(f64, f64)> {
    let tau_l = cfg.tau_l.or(methods::paper_tau_l(&data.family)).unwrap_or(0.06);
    let tau_h = match cfg.tau_h.as_deref() {
        None => methods::default_tau(&data.family, &cfg.partial).map_or(0.012, |t| t.0),
        Some("auto") => {
            methods::auto_tau_h(expected_positives, observed_per_image(data), data.observed.labels.ncols() as f64)
        }
        Some(v) => v.parse::<f64>().with_context(|| format!("--tau-h {v}: expected a number or `auto`"))?,
    };
    Ok((tau_h, tau_l))
}

/// Below this many observed positives a class is named in the labels line.
const FEW_POSITIVES: usize = 5;

/// The training labels in one line, for the log (docs/method.md, protocols: log the realised
/// fraction): what is known of them. The share of the true positives
/// observed is said only where the truth is known: a simulation protocol (or an `--observed`
/// file) over labels that have no unknown entry; labels as given say what they hold instead
/// (positives, verified negatives, unknown entries per image, classes short of positives).
fn labels_line(cfg: &TrainConfig, data: &RunData) -> Result<String> {
    let observed = &data.observed;
    let obs = &observed.labels;
    let n = obs.nrows().max(1);
    let count = |v: i8| obs.iter().filter(|&&x| x == v).count();
    let (pos, neg, unk) = (count(1), count(-1), count(0));
    let source = cfg.observed.as_ref().map_or(cfg.partial.clone(), |f| format!("--observed {}", f.display()));
    let mut line = format!(
        "training labels ({source}): {pos} observed positives in {} images ({:.2} per image), {neg} verified \
         negatives, {unk} unannotated entries ({:.1} per image)",
        obs.nrows(),
        pos as f64 / n as f64,
        unk as f64 / n as f64
    );
    let simulated = cfg.observed.is_some() || matches!(cfg.labels()?, Labels::Simulated(_));
    let data_unknown = data.train.targets.iter().filter(|&&v| v == UNK).count();
    if simulated && data_unknown == 0 {
        line += &format!(", {:.1}% of the true positives observed", 100.0 * observed.realised_fraction);
    } else if simulated {
        line += &format!(
            ", {:.1}% of the data's positives observed (the data's own labels have {data_unknown} unknown entries, \
             so the true share is not known)",
            100.0 * observed.realised_fraction
        );
    }
    let names = data.train.classes.names();
    let per_class: Vec<usize> = obs.columns().into_iter().map(|c| c.iter().filter(|&&v| v == 1).count()).collect();
    let listed = |pick: &dyn Fn(usize) -> bool| -> (usize, String) {
        let hit: Vec<&str> = names.iter().zip(&per_class).filter(|(_, &k)| pick(k)).map(|(n, _)| n.as_str()).collect();
        let shown = hit.iter().take(5).copied().collect::<Vec<_>>().join(", ");
        (hit.len(), if hit.len() > 5 { format!("{shown}, …") } else { shown })
    };
    let (none, none_names) = listed(&|k| k == 0);
    let (few, few_names) = listed(&|k| k > 0 && k < FEW_POSITIVES);
    if none > 0 {
        line += &format!("; {none} classes have no observed positive ({none_names})");
    }
    if few > 0 {
        line += &format!("; {few} have fewer than {FEW_POSITIVES} ({few_names})");
    }
    if observed.n_restored > 0 {
        line += &format!(
            "; {} images that lost every positive got one back (--allow-empty keeps them empty)",
            observed.n_restored
        );
    }
    if observed.n_observed_not_true > 0 {
        line += &format!("; {} observed positives the ground truth does not list", observed.n_observed_not_true);
    }
    Ok(line)
}

pub fn prepare(cfg: &TrainConfig) -> Result<Setup> {
    cfg.validate()?;
    if let Some(n) = cfg.threads {
        tch::set_num_threads(n as i32);
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
    let device = parse_device(&cfg.device)?;
    let data = data::load(cfg)?;
    eprintln!("{}", labels_line(cfg, &data)?);
    let arch = arch_for(cfg, &data)?;
    let (n_train, n_classes) = (data.train.len(), data.train.num_classes());
    // The label matrices go to the device as f32 (and ROLE keeps one more of that size).
    if n_train as u64 * n_classes as u64 > MAX_LABEL_ENTRIES {
        bail!(
            "the training set's label matrix has {n_train} × {n_classes} entries, more than the {MAX_LABEL_ENTRIES} this trainer holds in memory"
        );
    }
    if !data.observed.labels.iter().any(|&v| v == 1) {
        eprintln!(
            "warning: the training labels hold no positive at all ({n_train} images, {n_classes} classes): \
             every method then learns to say no to everything; check --data, --partial and --observed"
        );
    }

    if cfg.method.is_co_label() && cfg.reduction()? == methods::Reduction::Mean && cfg.weight_decay > 0.0 {
        // Measured (BENCHMARKS.md, "The ablation with both reductions"): 4-5 mAP lost on Corel5k.
        eprintln!(
            "note: --reduction mean averages each image's loss over its {n_classes} entries, so its gradient is about \
             {n_classes} times smaller than with sum while --weight-decay {} stays: the decay dominates; consider \
             --weight-decay {:.1e} (or 0)",
            cfg.weight_decay,
            cfg.weight_decay / n_classes as f64
        );
    }
    let expected_positives = expected_positives(cfg, &data);
    let uses_k = cfg.method.uses_expected_positives() || cfg.tau_h.as_deref() == Some("auto");
    if uses_k && cfg.expected_positives.is_none() && cfg.labels()? == Labels::Given && cfg.observed.is_none() {
        // Without simulation the training labels may themselves be the partial ones.
        eprintln!(
            "note: k, the expected number of positives per image, defaults to the mean of the training labels ({expected_positives:.2}); \
             if those are incomplete the true mean is higher: pass --expected-positives"
        );
    }
    let (tau_h, tau_l) = resolve_tau(cfg, &data, expected_positives)?;
    let mut mcfg = cfg.method_config(tau_h, tau_l, expected_positives)?;
    mcfg.em_alpha = cfg.em_alpha.unwrap_or(methods::paper_em_alpha(&data.family));
    // Seeded: a method's own random state (ROLE's initial estimates) is part of the run.
    tch::manual_seed((cfg.seed as i64).wrapping_mul(7919).wrapping_sub(1));
    let method = methods::build(cfg.method.as_str(), &mcfg, n_train as i64, n_classes as i64, device)?;
    let n_nets = method.num_networks();
    let devices: Vec<Device> = match &cfg.devices {
        Some(list) => {
            let d = list.split(',').map(|s| parse_device(s.trim())).collect::<Result<Vec<_>>>()?;
            if d.len() != n_nets {
                bail!("--devices lists {} device(s) but {} trains {n_nets} network(s)", d.len(), cfg.method);
            }
            d
        }
        None => vec![device; n_nets],
    };
    let device = devices[0];
    // The classifier bias starts at the prior (docs/method.md, fine-tuning): --bias-prior, else
    // k/C with k the expected positives per image (--expected-positives, else the training
    // labels' mean, as EPR takes it): 0.009 on Corel5k, 0.18 on scene.
    let prior = cfg.bias_prior.unwrap_or(expected_positives / n_classes as f64).clamp(1e-4, 0.5);

    if cfg.pretrained.is_some() && !arch.is_image() {
        bail!("--pretrained applies to image backbones; the MLP of a feature table starts from random weights");
    }
    let pretrained =
        cfg.pretrained.as_deref().filter(|p| *p != "none").map(|p| pretrained_file(p, &arch)).transpose()?;
    if cfg.freeze_backbone && !arch.is_image() {
        bail!("--freeze-backbone applies to image backbones; the MLP of a feature table always trains whole");
    }
    let head_only = cfg.freeze_backbone;
    // A final batch of one is dropped each epoch (train::trained_per_epoch), but here every
    // batch would be one image.
    let crop = if arch.is_image() { crate::config::image_sizes(cfg)?.1 } else { (1, 1) };
    let batch_norm = BatchNormUse::of(&arch, head_only, crop);
    if batch_norm == BatchNormUse::OneValuePerImage && cfg.batch_size.min(n_train) < 2 {
        let where_ = if arch.is_image() {
            format!("{} at {}x{}, whose last feature map is 1x1", arch.name(), crop.0, crop.1)
        } else {
            "the MLP's hidden layer".to_string()
        };
        bail!(
            "{}: every batch would hold one image, and BatchNorm (in {where_}) sees one value per channel in a batch \
             of one (variance 0, NaN statistics); {}",
            if n_train < 2 { format!("the training split has {n_train} image") } else { "--batch-size 1".to_string() },
            if n_train < 2 { "give more training data" } else { "use --batch-size 2 or more" }
        );
    }
    let mut peers = Vec::new();
    for (k, &dev) in devices.iter().enumerate() {
        tch::manual_seed((cfg.seed as i64).wrapping_mul(7919).wrapping_add(k as i64));
        let mut vs = nn::VarStore::new(dev);
        let net = Net::try_new(&vs.root(), &arch, n_classes as i64, Some(prior)).map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(file) = &pretrained {
            load_pretrained(&mut vs, file, false).with_context(|| format!("loading {}", file.display()))?;
        }
        peers.push((vs, net));
    }
    if cfg.freeze_backbone && peers.len() > 1 {
        // Frozen, randomly initialised backbones would differ: share the first peer's, so the
        // cached features serve both and the exported model is what was trained.
        let (first, rest) = peers.split_at_mut(1);
        let src = first[0].0.variables();
        let fc = first[0].1.classifier_prefix().to_string();
        for (vs, _) in rest {
            tch::no_grad(|| {
                for (name, mut v) in vs.variables() {
                    if !name.starts_with(&fc) {
                        v.copy_(&src[&name].to_device(v.device()));
                    }
                }
            });
        }
    }
    let peers: Vec<Peer> = peers
        .into_iter()
        .map(|(vs, net)| {
            let fc = format!("{}.", net.classifier_prefix());
            let mut params: Vec<(String, tch::Tensor, f64)> = vs
                .variables()
                .into_iter()
                .filter(|(_, t)| t.requires_grad())
                .filter(|(name, _)| !head_only || name.starts_with(&fc))
                .map(|(name, t)| {
                    // With a frozen backbone the classifier is all that trains: --lr is its rate.
                    let mult = if name.starts_with(&fc) && !head_only { cfg.head_lr_mult } else { 1.0 };
                    (name, t, mult)
                })
                .collect();
            params.sort_by(|a, b| a.0.cmp(&b.0));
            let adam = Adam::new(params, cfg.weight_decay);
            Peer { vs, net, adam }
        })
        .collect();

    let (train_inputs, val_inputs, test_inputs) =
        build_inputs(cfg, &data, &arch, &peers, device, pretrained.as_deref())?;
    if cfg.threads.is_none() && (head_only || !arch.is_image()) {
        // A linear head or an MLP is made of small operations where waking a second OpenMP
        // thread costs more than it saves: measured on 2 cores with another process running,
        // an epoch of Corel5k's linear head took 0.4 s on one thread and 12 s on two.
        tch::set_num_threads(1);
    }
    let amp = !cfg.no_amp && devices.iter().any(|d| d.is_cuda());
    if amp {
        if !cls_models::use_bf16_autocast() {
            bail!("libtorch refused bfloat16 autocast on CUDA; run with --no-amp");
        }
        for p in &peers {
            cls_models::to_channels_last(&p.vs);
        }
    }
    Ok(Setup {
        device,
        devices,
        data,
        arch,
        mcfg,
        method,
        peers,
        train_inputs,
        val_inputs,
        test_inputs,
        head_only,
        amp,
        batch_norm,
    })
}

fn build_inputs(
    cfg: &TrainConfig,
    data: &RunData,
    arch: &Arch,
    peers: &[Peer],
    device: Device,
    pretrained: Option<&Path>,
) -> Result<(Inputs, Inputs, Option<Inputs>)> {
    let rows = |ds: &cls_core::Dataset| -> Result<Inputs> {
        let f = ds.features.as_ref().context("feature table without features")?;
        let v: Vec<f32> = f.iter().copied().collect();
        Ok(Inputs::Rows(tch::Tensor::from_slice(&v).view([f.nrows() as i64, f.ncols() as i64]).to_device(device)))
    };
    if !arch.is_image() {
        return Ok((rows(&data.train)?, rows(&data.val)?, data.test.as_ref().map(rows).transpose()?));
    }
    let cache = data::cache_dir(cfg);
    let (resize, crop, eval) = image_sizes(cfg)?;
    let threads = cfg.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // The images of a split, squished to `size` and cropped to `crop`: from the decoded-image
    // cache, or decoded each time they are read (`--cache none`).
    let open =
        |ds: &cls_core::Dataset, size: (u32, u32), crop: (usize, usize), flip: bool, label: &str| -> Result<Inputs> {
            Ok(match cfg.cache {
                CacheMode::Images => {
                    let cache = ImageCache::open(&ds.samples, size.0, size.1, &cache.join("images"), label)?;
                    Inputs::Images { cache, crop, flip }
                }
                CacheMode::None => {
                    let key = crate::cache::cache_key(&ds.samples, size.0, size.1)?;
                    let paths = ds.samples.iter().map(|s| s.path.clone()).collect();
                    let files = ImageFiles::new(paths, size.0, size.1, threads, label, key)?;
                    Inputs::Files { files, crop, flip }
                }
            })
        };
    let whole = |size: (u32, u32)| (size.0 as usize, size.1 as usize);
    let eval_inputs =
        |ds: &cls_core::Dataset, label: &str| -> Result<Inputs> { open(ds, eval, whole(eval), false, label) };
    let val = eval_inputs(&data.val, "validation")?;
    let test = data.test.as_ref().map(|t| eval_inputs(t, "test")).transpose()?;
    if cfg.freeze_backbone {
        let train = eval_inputs(&data.train, "train")?;
        let key =
            format!("{} {}", arch.name(), pretrained.map_or_else(|| format!("random-seed{}", cfg.seed), file_identity));
        let dir = cache.join("features");
        let feats = |inp: &Inputs, label: &str| {
            inputs::features(&peers[0].net, inp, device, &dir, &key, label).map(Inputs::Rows)
        };
        return Ok((
            feats(&train, "train")?,
            feats(&val, "validation")?,
            test.as_ref().map(|t| feats(t, "test")).transpose()?,
        ));
    }
    let train = open(&data.train, resize, whole(crop), !cfg.no_flip, "train")?;
    Ok((train, val, test))
}

fn file_identity(p: &Path) -> String {
    let meta = std::fs::metadata(p).ok();
    format!("{} {} {:?}", p.display(), meta.as_ref().map_or(0, |m| m.len()), meta.and_then(|m| m.modified().ok()))
}
