//! Adam with L2 weight decay (PyTorch's `torch.optim.Adam` semantics) whose moments are plain
//! named tensors, so a checkpoint holds the complete optimizer state and `--resume` continues
//! bit-for-bit (tch's built-in optimizer cannot save its state).

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use tch::Tensor;

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
