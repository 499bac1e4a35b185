//! `cls-train bench-step`: time the training step alone (both peers' forward, the method's
//! selection and loss, backward, Adam) on random in-memory data, with the same code as the loop
//! ([`crate::train::train_step`]). `scripts/bench-train` runs it beside a PyTorch script doing
//! the same step, and `scripts/gpu-check` on a GPU.

use anyhow::{bail, Result};
use cls_models::{Arch, Net};
use serde::Serialize;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

use crate::methods::{self, MethodConfig, StepCtx};
use crate::optim::Adam;
use crate::train::{train_step, Peer};

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub backbone: String,
    pub method: String,
    pub batch: i64,
    pub height: i64,
    pub width: i64,
    pub classes: i64,
    pub steps: usize,
    pub ms_per_step: f64,
    pub images_per_s: f64,
    pub device: String,
    pub threads: i32,
    /// bf16 autocast + channels-last (CUDA only).
    pub amp: bool,
}

/// bench-step's sizes and counts, checked before anything is allocated.
pub struct Limits {
    pub batch_size: usize,
    pub size: (u32, u32),
    pub classes: usize,
    pub steps: usize,
    pub warmup: usize,
    pub threads: Option<usize>,
}

impl Limits {
    pub fn check(&self) -> Result<()> {
        use crate::config::{check_batch_values, MAX_BATCH, MAX_THREADS};
        let count = |flag: &str, v: usize, lo: usize, hi: usize| -> Result<()> {
            if v < lo || v > hi {
                bail!("--{flag} {v}: must be between {lo} and {hi}");
            }
            Ok(())
        };
        count("batch-size", self.batch_size, 1, MAX_BATCH)?;
        count("classes", self.classes, 1, 100_000)?;
        count("steps", self.steps, 1, 1_000_000)?;
        count("warmup", self.warmup, 0, 1_000_000)?;
        if let Some(n) = self.threads {
            count("threads", n, 1, MAX_THREADS)?;
        }
        check_batch_values("--batch-size with --size", self.batch_size, self.size)
    }
}

#[allow(clippy::too_many_arguments)]
pub fn bench_step(
    arch: &Arch,
    method: &str,
    batch: i64,
    size: (i64, i64),
    classes: i64,
    steps: usize,
    warmup: usize,
    device: Device,
    amp: bool,
) -> Result<BenchResult> {
    if !arch.is_image() {
        bail!("bench-step times image backbones");
    }
    let mut m = methods::build(method, &MethodConfig::default(), batch, classes, device)?;
    let mut peers: Vec<Peer> = (0..m.num_networks())
        .map(|k| {
            tch::manual_seed(k as i64);
            let vs = nn::VarStore::new(device);
            let net = Net::try_new(&vs.root(), arch, classes, Some(0.01)).map_err(|e| anyhow::anyhow!("{e}"))?;
            let params =
                vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).map(|(n, t)| (n, t, 1.0)).collect();
            Ok(Peer { adam: Adam::new(params, 1e-4), vs, net })
        })
        .collect::<Result<_>>()?;
    let amp = amp && device.is_cuda();
    if amp {
        cls_models::use_bf16_autocast();
        for p in &peers {
            cls_models::to_channels_last(&p.vs);
        }
    }
    tch::manual_seed(42);
    let x = Tensor::f_randn([batch, 3, size.0, size.1], (Kind::Float, device))
        .map_err(|e| anyhow::anyhow!("allocating a batch of {batch} images of {}x{}: {e}", size.0, size.1))?;
    let y = Tensor::f_rand([batch, classes], (Kind::Float, device))
        .map_err(|e| anyhow::anyhow!("allocating the labels: {e}"))?
        .lt(0.05)
        .to_kind(Kind::Float);
    let idx = Tensor::arange(batch, (Kind::Int64, device));
    let devices = vec![device; peers.len()];
    // Epoch 20: the full selection rates apply (R_h, R_l < 1), the realistic steady state.
    let ctx = StepCtx { y: &y, indices: &idx, epoch: 20, lr: 1e-4 };
    let mut t = Instant::now();
    for i in 0..warmup + steps {
        if i == warmup {
            if let Device::Cuda(_) = device {
                tch::Cuda::synchronize(0);
            }
            t = Instant::now();
        }
        if let Err(v) = train_step(&mut peers, m.as_mut(), &x, &ctx, false, &devices, amp) {
            bail!("loss {v} in the benchmark step");
        }
    }
    if let Device::Cuda(_) = device {
        tch::Cuda::synchronize(0);
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(BenchResult {
        backbone: arch.name(),
        method: method.to_string(),
        batch,
        height: size.0,
        width: size.1,
        classes,
        steps,
        ms_per_step: 1000.0 * secs / steps as f64,
        images_per_s: (batch as f64 * steps as f64) / secs,
        device: format!("{device:?}"),
        threads: tch::get_num_threads(),
        amp,
    })
}
