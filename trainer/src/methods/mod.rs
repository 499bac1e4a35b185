//! Every training method's label selection and loss, as pure tensor code.
//!
//! The training loop forwards one or two networks, hands their logits to [`Method::step`] with a
//! [`StepCtx`], back-propagates [`StepOut::loss`] and calls [`Method::after_backward`]. Nothing in
//! this module touches optimizers of the networks, data loading or logging.
//!
//! All formulas follow `docs/method.md` ("One CLS step", "Schedules", "Ablations",
//! "Baselines"); equation numbers in doc comments refer to the paper's equations as listed there.
//! Every method except the CLS family (whose `--reduction` is a flag) uses the *sum* reduction:
//! the sum over the entries that count, divided by the batch size B.

pub mod an;
pub mod asl;
pub mod cls;
pub mod coteaching;
pub mod em;
pub mod epr;
pub mod hill;
pub mod jocor;
pub mod ll;
pub mod losses;
pub mod role;
pub mod schedule;
pub mod selection;
pub mod splc;

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

/// Hyper-parameters of every method (one struct so the CLI and the run record stay simple).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MethodConfig {
    /// τ_h: final peer-removal rate of CLS ("Schedules"), default 0.012.
    pub tau_h: f64,
    /// τ_l: final self-removal rate of CLS ("Schedules"), default 0.06.
    pub tau_l: f64,
    /// E_k: epochs over which every rate ramps up linearly, default 10.
    pub e_k: f64,
    /// Reduction of eq. (7)–(8) for the CLS family; every other method always uses [`Reduction::Sum`].
    pub reduction: Reduction,
    /// k, the expected number of positives per image (EPR, ROLE, `--tau-h auto`); 3.0 in the
    /// default config, while the trainer passes `--expected-positives` or the training set's mean.
    pub expected_positives: f64,
    /// LL-R/LL-Ct/LL-Cp growth of the rejected fraction per epoch, in percent of the B·C entries;
    /// `None` → the method's default (0.5 / 0.2 / 0.1).
    pub ll_delta: Option<f64>,
    /// Co-teaching / Co-teaching+ / JoCoR forget rate τ, default 0.2.
    pub forget_rate: f64,
    /// JoCoR's λ, default 0.5.
    pub jocor_lambda: f64,
    /// EM's entropy weight α, default 0.1 (the trainer passes 0.2 for VOC).
    pub em_alpha: f64,
    /// Epochs of plain Co-teaching before Co-teaching+ restricts itself to disagreements, default 1.
    pub coteach_plus_warmup: usize,
    /// AN-LS smoothing ε (targets become ε and 1 − ε), default 0.1.
    pub label_smoothing: f64,
    /// ROLE's estimate learning rate as a multiple of the network's, default 10.
    pub role_lr_mult: f64,
    /// ASL: let the gradient flow through the focal weights (the official training detaches them).
    pub asl_focal_grad: bool,
}

impl Default for MethodConfig {
    fn default() -> Self {
        MethodConfig {
            tau_h: 0.012,
            tau_l: 0.06,
            e_k: 10.0,
            reduction: Reduction::Sum,
            expected_positives: 3.0,
            ll_delta: None,
            forget_rate: 0.2,
            jocor_lambda: 0.5,
            em_alpha: 0.1,
            coteach_plus_warmup: 1,
            label_smoothing: 0.1,
            role_lr_mult: 10.0,
            asl_focal_grad: false,
        }
    }
}

impl MethodConfig {
    /// Rejects values outside their meaningful ranges, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        let unit = [
            ("tau_h", self.tau_h),
            ("tau_l", self.tau_l),
            ("forget_rate", self.forget_rate),
            ("jocor_lambda", self.jocor_lambda),
            ("label_smoothing", self.label_smoothing),
        ];
        for (name, v) in unit {
            if !(0.0..=1.0).contains(&v) {
                bail!("method config: {name} = {v} must lie in [0, 1]");
            }
        }
        let non_negative = [
            ("e_k", self.e_k),
            ("expected_positives", self.expected_positives),
            ("em_alpha", self.em_alpha),
            ("ll_delta", self.ll_delta.unwrap_or(0.0)),
        ];
        for (name, v) in non_negative {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("method config: {name} = {v} must be a finite number >= 0");
            }
        }
        if !(self.role_lr_mult > 0.0 && self.role_lr_mult.is_finite()) {
            bail!("method config: role_lr_mult = {} must be > 0", self.role_lr_mult);
        }
        Ok(())
    }
}

/// How eq. (7)–(8) reduce the per-entry losses of a label set ("One CLS step", Reduction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Reduction {
    /// Each sample's loss is the sum over its kept entries; the batch loss divides by B.
    #[default]
    Sum,
    /// Each sample's loss is the mean over its kept entries, then averaged over B.
    Mean,
}

impl FromStr for Reduction {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sum" => Ok(Reduction::Sum),
            "mean" => Ok(Reduction::Mean),
            other => bail!("unknown reduction {other:?}: expected \"sum\" or \"mean\""),
        }
    }
}

impl fmt::Display for Reduction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reduction::Sum => "sum",
            Reduction::Mean => "mean",
        })
    }
}

/// What the loop passes each step.
pub struct StepCtx<'a> {
    /// [B, C] f32 observed labels: 1 observed positive, 0 unannotated, -1 observed negative.
    pub y: &'a Tensor,
    /// [B] i64 training-set row of each sample (ROLE / LL-Cp state).
    pub indices: &'a Tensor,
    /// Completed epochs e (0 during the first epoch).
    pub epoch: usize,
    /// The network's current learning rate (ROLE's estimate lr = role_lr_mult × lr).
    pub lr: f64,
}

/// What a method returns each step.
pub struct StepOut {
    /// One scalar to back-propagate: the sum over networks of their losses (their parameters are
    /// disjoint, so each network gets the gradient of its own loss).
    pub loss: Tensor,
    /// Each network's loss value, for logging.
    pub per_net: Vec<f64>,
    /// Per network, a [B, C] bool mask of the unannotated entries that the selection removed or
    /// corrected as likely positives; empty when the method selects nothing.
    pub flagged: Vec<Tensor>,
}

/// A training method: selection plus loss over one or two networks' logits.
pub trait Method: Send {
    /// The method's name, one of [`MethodName`]'s.
    fn name(&self) -> &'static str;
    /// How many networks the loop must train (1 or 2).
    fn num_networks(&self) -> usize;
    /// One step; `logits` holds one [B, C] tensor per network (any float kind: computed in f32).
    fn step(&mut self, logits: &[Tensor], ctx: &StepCtx) -> StepOut;
    /// Called after `loss.backward()`; ROLE steps its estimate optimizer here.
    fn after_backward(&mut self, _ctx: &StepCtx) {}
    /// Persistent state saved in checkpoints (ROLE's estimates, LL-Cp's corrected labels).
    fn state(&self) -> Vec<(String, Tensor)> {
        vec![]
    }
    /// Restores what [`Method::state`] returned.
    fn load_state(&mut self, _state: &[(String, Tensor)]) -> Result<()> {
        Ok(())
    }
}

/// Every method [`build`] knows, in the order of method.md: the one list (the `--method` flag's
/// choices, `config.toml`'s spelling and [`build`]'s dispatch all come from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MethodName {
    /// CLS: co-label selection (eq. 5-8).
    Cls,
    /// CLS-H: CLS without the peer's removal of high-loss negatives (self removal only).
    ClsH,
    /// CLS-L: CLS without the self removal of low-loss negatives (peer removal only).
    ClsL,
    /// CLC: co-label correction (flagged entries relabelled positive).
    Clc,
    /// AN: assume negative.
    An,
    /// AN with label smoothing.
    AnLs,
    /// Weighted AN.
    Wan,
    /// Expected positive regularisation.
    Epr,
    /// Regularised online label estimation.
    Role,
    /// Asymmetric loss.
    Asl,
    /// Hill loss.
    Hill,
    /// Self-paced loss correction.
    Splc,
    /// Large loss rejection.
    LlR,
    /// Large loss correction, temporary.
    LlCt,
    /// Large loss correction, permanent.
    LlCp,
    /// Entropy maximisation.
    Em,
    /// Co-teaching.
    CoTeaching,
    /// Co-teaching+.
    CoTeachingPlus,
    /// JoCoR.
    Jocor,
}

impl MethodName {
    /// The name on the command line and in config.toml (`cls`, `ll-r`, `co-teaching-plus`, ...).
    pub fn as_str(self) -> &'static str {
        use clap::ValueEnum;
        static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        // clap's names, computed once, in declaration order (= the discriminants).
        let names = NAMES.get_or_init(|| {
            Self::all()
                .iter()
                .map(|m| m.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default())
                .collect()
        });
        &names[self as usize]
    }

    /// Every method, in the order of method.md.
    pub fn all() -> &'static [MethodName] {
        <MethodName as clap::ValueEnum>::value_variants()
    }

    /// The co-label family: CLS and its ablations CLS-H and CLS-L, and CLC (two peers, eq. 5-8).
    pub fn is_co_label(self) -> bool {
        matches!(self, Self::Cls | Self::ClsH | Self::ClsL | Self::Clc)
    }

    /// Whether the objective removes (or corrects) the peer's high-loss unannotated entries, so
    /// that τ_h applies (eq. 6): CLS, CLS-L and CLC, not CLS-H.
    pub fn uses_tau_h(self) -> bool {
        matches!(self, Self::Cls | Self::ClsL | Self::Clc)
    }

    /// Whether the objective needs the expected number of positives per image (EPR, ROLE).
    pub fn uses_expected_positives(self) -> bool {
        matches!(self, Self::Epr | Self::Role)
    }
}

impl fmt::Display for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MethodName {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        <MethodName as clap::ValueEnum>::from_str(s.trim(), true).map_err(|_| {
            let known: Vec<&str> = MethodName::all().iter().map(|m| m.as_str()).collect();
            anyhow::anyhow!("unknown method {s:?}; known methods: {}", known.join(", "))
        })
    }
}

/// Builds the method called `name`; `n_train` rows and `n_classes` columns size the persistent
/// state of ROLE and LL-Cp.
pub fn build(name: &str, cfg: &MethodConfig, n_train: i64, n_classes: i64, device: Device) -> Result<Box<dyn Method>> {
    let method: MethodName = name.parse()?;
    cfg.validate()?;
    if n_train <= 0 || n_classes <= 0 {
        bail!("method {name}: need a positive training-set size and class count, got {n_train} × {n_classes}");
    }
    use MethodName as M;
    let m: Box<dyn Method> = match method {
        M::Cls => Box::new(cls::Cls::new(cls::Variant::Cls, cfg)),
        M::ClsH => Box::new(cls::Cls::new(cls::Variant::ClsH, cfg)),
        M::ClsL => Box::new(cls::Cls::new(cls::Variant::ClsL, cfg)),
        M::Clc => Box::new(cls::Cls::new(cls::Variant::Clc, cfg)),
        M::An => Box::new(an::An::plain()),
        M::AnLs => Box::new(an::An::label_smoothing(cfg.label_smoothing)),
        M::Wan => Box::new(an::An::weighted(n_classes)),
        M::Epr => Box::new(epr::Epr::new(cfg.expected_positives)),
        M::Role => Box::new(role::Role::new(cfg, n_train, n_classes, device)?),
        M::Asl => Box::new(asl::Asl::new(cfg.asl_focal_grad)),
        M::Hill => Box::new(hill::Hill::default()),
        M::Splc => Box::new(splc::Splc::default()),
        M::LlR => Box::new(ll::LargeLoss::new(ll::Mode::Reject, cfg.ll_delta, n_train, n_classes, device)),
        M::LlCt => Box::new(ll::LargeLoss::new(ll::Mode::CorrectTemporary, cfg.ll_delta, n_train, n_classes, device)),
        M::LlCp => Box::new(ll::LargeLoss::new(ll::Mode::CorrectPermanent, cfg.ll_delta, n_train, n_classes, device)),
        M::Em => Box::new(em::Em::new(cfg.em_alpha)),
        M::CoTeaching => Box::new(coteaching::CoTeaching::new(cfg, false)),
        M::CoTeachingPlus => Box::new(coteaching::CoTeaching::new(cfg, true)),
        M::Jocor => Box::new(jocor::JoCoR::new(cfg)),
    };
    Ok(m)
}

/// The datasets the paper gives defaults for, recognised case-insensitively by substring of a
/// dataset's path or name ("voc", "coco", "nus").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PaperFamily {
    Voc,
    Coco,
    NusWide,
}

fn paper_family(dataset_hint: &str) -> Option<PaperFamily> {
    let hint = dataset_hint.to_ascii_lowercase();
    if hint.contains("voc") {
        Some(PaperFamily::Voc)
    } else if hint.contains("coco") {
        Some(PaperFamily::Coco)
    } else if hint.contains("nus") {
        Some(PaperFamily::NusWide)
    } else {
        None
    }
}

/// τ_l's paper default for the dataset family ("Paper defaults"), whatever the protocol: 0.02
/// for VOC, 0.06 for COCO and NUS-WIDE; `None` for other data.
pub fn paper_tau_l(dataset_hint: &str) -> Option<f64> {
    paper_family(dataset_hint).map(|f| if f == PaperFamily::Voc { 0.02 } else { 0.06 })
}

/// EM's entropy weight α for the dataset family ("Baselines"): 0.2 for VOC, else 0.1.
pub fn paper_em_alpha(dataset_hint: &str) -> f64 {
    if paper_family(dataset_hint) == Some(PaperFamily::Voc) {
        0.2
    } else {
        0.1
    }
}

/// The paper's (τ_h, τ_l) for VOC 2007, COCO and NUS-WIDE ("Paper defaults").
///
/// `dataset_hint` is matched case-insensitively by substring ("voc", "coco", "nus");
/// `partial` is the fraction of positives left (0.75, 0.5, 0.25) or "single". `None` otherwise.
pub fn default_tau(dataset_hint: &str, partial: &str) -> Option<(f64, f64)> {
    let family = paper_family(dataset_hint)?;
    let tau_hs = match family {
        PaperFamily::Voc => [0.002, 0.003, 0.005, 0.005],
        PaperFamily::Coco => [0.005, 0.010, 0.012, 0.012],
        PaperFamily::NusWide => [0.006, 0.012, 0.020, 0.020],
    };
    let p = partial.trim().to_ascii_lowercase();
    let column = if p == "single" {
        3
    } else {
        let f: f64 = p.parse().ok()?;
        [0.75, 0.5, 0.25].iter().position(|&v| (v - f).abs() < 1e-9)?
    };
    Some((tau_hs[column], paper_tau_l(dataset_hint)?))
}

/// h = (k − k_obs)/(C − k_obs), the share of unannotated entries that are hidden positives, with
/// k the expected and k_obs the observed positives per image; in [0, 1], 0 when undefined.
pub fn hidden_positive_share(k_expected: f64, k_observed: f64, n_classes: f64) -> f64 {
    let h = (k_expected - k_observed) / (n_classes - k_observed);
    if h.is_finite() && n_classes > k_observed {
        h.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// `--tau-h auto` on a single run ("Paper defaults"): τ_h = h/2 ([`hidden_positive_share`]),
/// clamped to [0, 0.5]. Where training is cheap, `cls-train` validates candidates around h
/// instead (`sweep::auto_tau_h_grid`).
pub fn auto_tau_h(k_expected: f64, k_observed: f64, n_classes: f64) -> f64 {
    (hidden_positive_share(k_expected, k_observed, n_classes) / 2.0).clamp(0.0, 0.5)
}
