//! Adam with L2 weight decay (PyTorch's `torch.optim.Adam` semantics) whose moments are plain
//! named tensors, so a checkpoint holds the complete optimizer state and `--resume` continues
//! bit-for-bit (tch's built-in optimizer cannot save its state).

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use tch::Tensor;

use crate::config::{Schedule, TrainConfig};

/// The learning rate of every step of a run (`--lr`, `--schedule`, `--warmup-epochs`,
/// `--lr-step-epochs`, `--lr-gamma`). Steps count from 0 over the whole run, so a resumed run
/// continues the same curve (unless a resume changes `--epochs`: the cosine then stretches; the
/// step schedule's interval is resolved into config.toml when the run starts).
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    pub base: f64,
    pub kind: Schedule,
    pub steps_per_epoch: usize,
    pub epochs: usize,
    pub warmup_epochs: usize,
    /// `--schedule step`: epochs between decays, and the factor of each.
    pub step_epochs: usize,
    pub gamma: f64,
}

impl LrSchedule {
    pub fn new(cfg: &TrainConfig, steps_per_epoch: usize) -> LrSchedule {
        LrSchedule {
            base: cfg.lr,
            kind: cfg.schedule,
            steps_per_epoch: steps_per_epoch.max(1),
            epochs: cfg.epochs,
            warmup_epochs: cfg.warmup_epochs,
            step_epochs: cfg.lr_step_interval(),
            gamma: cfg.lr_gamma,
        }
    }

    /// The rate of step `step` (0-based): a linear warm-up to `base` over the warm-up epochs'
    /// steps (its first step at base/steps), then the schedule over the remaining steps: cosine
    /// from `base` towards 0 (reached one step past the last), constant, or decayed by `gamma`
    /// every `step_epochs` epochs counted from the end of the warm-up.
    pub fn at(&self, step: usize) -> f64 {
        let warm = self.warmup_epochs * self.steps_per_epoch;
        if step < warm {
            return self.base * (step + 1) as f64 / warm as f64;
        }
        let t = step - warm;
        match self.kind {
            Schedule::Constant => self.base,
            Schedule::Cosine => {
                let span = (self.epochs * self.steps_per_epoch).saturating_sub(warm).max(1);
                self.base * 0.5 * (1.0 + (std::f64::consts::PI * t.min(span) as f64 / span as f64).cos())
            }
            Schedule::Step => {
                let decays = t / self.steps_per_epoch / self.step_epochs.max(1);
                self.base * self.gamma.powi(decays.min(i32::MAX as usize) as i32)
            }
        }
    }
}

pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    /// Multiplier on the base learning rate (the classifier gets `--head-lr-mult`).
    pub lr_mult: f64,
    m: Tensor,
    v: Tensor,
}

pub struct Adam {
    params: Vec<Param>,
    step: i64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl Adam {
    /// `params`: (name, tensor, learning-rate multiplier) for every trainable tensor.
    pub fn new(params: Vec<(String, Tensor, f64)>, weight_decay: f64) -> Adam {
        let params = params
            .into_iter()
            .map(|(name, tensor, lr_mult)| {
                let (m, v) = (tensor.zeros_like(), tensor.zeros_like());
                Param { name, tensor, lr_mult, m, v }
            })
            .collect();
        Adam { params, step: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    /// One Adam update with base learning rate `lr`; tensors without a gradient are skipped.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let t = self.step.min(i32::MAX as i64) as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let g = if self.weight_decay > 0.0 { g + &p.tensor * self.weight_decay } else { g };
                let _ = p.m.g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
                let _ = p.v.g_mul_scalar_(b2).g_add_(&(&g * &g * (1.0 - b2)));
                let denom = p.v.sqrt() / bc2.sqrt() + self.eps;
                let update = &p.m / &denom * (lr * p.lr_mult / bc1);
                let _ = p.tensor.g_sub_(&update);
            }
        });
    }

    /// The state as named tensors: `m.<name>`, `v.<name>` and `step`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from_slice(&[self.step]))];
        for p in &self.params {
            out.push((format!("m.{}", p.name), p.m.shallow_clone()));
            out.push((format!("v.{}", p.name), p.v.shallow_clone()));
        }
        out
    }

    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let map: HashMap<&str, &Tensor> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let Some(step) = map.get("step") else { bail!("optimizer state has no 'step'") };
        if step.numel() != 1 {
            bail!("optimizer state: 'step' has shape {:?}, expected one number", step.size());
        }
        let step = step.f_int64_value(&[0]).context("optimizer state: reading 'step'")?;
        if step < 0 {
            bail!("optimizer state: 'step' is {step}");
        }
        if map.len() != 1 + 2 * self.params.len() {
            bail!(
                "optimizer state holds {} tensors; this network's optimizer has {}",
                map.len(),
                1 + 2 * self.params.len()
            );
        }
        // Every tensor checked before any is copied.
        for p in &self.params {
            for key in [format!("m.{}", p.name), format!("v.{}", p.name)] {
                let Some(src) = map.get(key.as_str()) else { bail!("optimizer state lacks '{key}'") };
                if src.size() != p.tensor.size() {
                    bail!("optimizer state: '{key}' has shape {:?}, the parameter {:?}", src.size(), p.tensor.size());
                }
            }
        }
        self.step = step;
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                for (key, dst) in [(format!("m.{}", p.name), &mut p.m), (format!("v.{}", p.name), &mut p.v)] {
                    let Some(src) = map.get(key.as_str()) else { bail!("optimizer state lacks '{key}'") };
                    dst.f_copy_(&src.to_device(dst.device()).to_kind(dst.kind()))
                        .with_context(|| format!("optimizer state: restoring '{key}'"))?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    fn schedule(kind: Schedule, warmup_epochs: usize) -> LrSchedule {
        LrSchedule { base: 1.0, kind, steps_per_epoch: 10, epochs: 10, warmup_epochs, step_epochs: 3, gamma: 0.1 }
    }

    #[test]
    fn cosine_starts_at_the_rate_and_reaches_zero_one_step_past_the_end() {
        let s = schedule(Schedule::Cosine, 0);
        assert_eq!(s.at(0), 1.0);
        assert!((s.at(50) - 0.5).abs() < 1e-12);
        assert!(s.at(99) > 0.0 && s.at(99) < 1e-3);
        assert!(s.at(100).abs() < 1e-12);
        assert!((1..100).all(|i| s.at(i) < s.at(i - 1)));
    }

    #[test]
    fn constant_and_step_follow_the_epochs() {
        let c = schedule(Schedule::Constant, 0);
        assert!((0..100).all(|i| c.at(i) == 1.0));
        let s = schedule(Schedule::Step, 0);
        // Epochs 1-3 at 1, 4-6 at 0.1, 7-9 at 0.01, 10 at 0.001 (PyTorch's StepLR(3, 0.1)).
        let per_epoch: Vec<f64> = (0..10).map(|e| s.at(e * 10 + 9)).collect();
        let want = [1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001];
        for (got, want) in per_epoch.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{per_epoch:?}");
        }
        assert_eq!(s.at(29), 1.0);
        assert!((s.at(30) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn warmup_rises_linearly_then_the_schedule_starts_at_the_full_rate() {
        let s = schedule(Schedule::Cosine, 2);
        assert!((s.at(0) - 0.05).abs() < 1e-12);
        assert!((s.at(19) - 1.0).abs() < 1e-12);
        assert_eq!(s.at(20), 1.0);
        // The cosine spans the 80 steps after the warm-up.
        assert!((s.at(60) - 0.5).abs() < 1e-12);
        let st = schedule(Schedule::Step, 1);
        assert_eq!(st.at(39), 1.0);
        assert!((st.at(40) - 0.1).abs() < 1e-12);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Adam steps on f(x) = Σ x² against the closed form of torch.optim.Adam.
    #[test]
    fn matches_torch_adam_by_hand() {
        let x = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut opt = Adam::new(vec![("x".into(), x.shallow_clone(), 1.0)], 0.0);
        let mut expect = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for t in 1..=2 {
            opt.zero_grad();
            (&x * &x).sum(tch::Kind::Float).backward();
            opt.step(0.1);
            for i in 0..2 {
                let g = 2.0 * expect[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                expect[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got: Vec<f32> = Vec::try_from(&x.detach()).unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - expect[i]).abs() < 1e-5, "{got:?} vs {expect:?}");
        }
        // The state round-trips.
        let mut other = Adam::new(vec![("x".into(), x.detach().set_requires_grad(true), 1.0)], 0.0);
        other.load_state(&opt.state()).unwrap();
        assert_eq!(other.step, 2);
    }
}
