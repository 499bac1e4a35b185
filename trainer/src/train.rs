//! The training loop (method.md Algorithm 1): each epoch, shuffle; each step, forward every
//! network on the same batch, let the method select labels and compute losses, back-propagate
//! and update each network with its own Adam; after each epoch, evaluate every peer on the
//! validation split, log, plot and checkpoint. At the end, export the better peer.

use anyhow::{bail, Context, Result};
use cls_core::metrics::{self, Metrics};
use cls_models::Arch;
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, Checkpoint, RunState};
use crate::config::{eval_batch, TrainConfig, EVAL_BATCH};
use crate::data::RunData;
use crate::inputs::Inputs;
use crate::methods::schedule::keep_rate;
use crate::methods::{Method, StepCtx, StepOut};
pub use crate::peer::Peer;
use crate::progress::{self, EpochProgress, Options, Plan, RunClock};
use crate::runlog;
pub use crate::runlog::{read as read_log, EpochLog, SelectionStats, ValSummary};
use crate::setup::{BatchNormUse, Setup};

/// Seeds derived per epoch and per step so that a resumed run draws exactly the numbers an
/// uninterrupted one would.
fn epoch_rng(seed: u64, epoch: usize, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_0000_0000);
    r.set_stream(stream.wrapping_mul(1_000_003) + epoch as u64);
    r
}

/// How many of the `n` training images an epoch trains on at batch size `batch`: all of them,
/// except when they would leave a final batch of one image and `drop_single` (BatchNorm trains:
/// `setup::BatchNormUse`), which drops it (PyTorch's `drop_last`, for that one image only).
/// Where a BatchNorm layer sees one value per channel (the MLP's hidden layer, a CNN at crops up
/// to 32×32) a batch of one gives it a variance of 0 and NaN running statistics; elsewhere it
/// updates them from one image. The shuffle picks which image waits, a different one each epoch.
pub fn trained_per_epoch(n: usize, batch: usize, drop_single: bool) -> usize {
    if drop_single && batch > 1 && n > batch && n % batch == 1 {
        n - 1
    } else {
        n
    }
}

/// The images of epoch `epoch` in training order: all `n` shuffled with the epoch's own seed,
/// cut to [`trained_per_epoch`].
pub fn epoch_order(n: usize, batch: usize, drop_single: bool, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut epoch_rng(seed, epoch, 1));
    order.truncate(trained_per_epoch(n, batch, drop_single));
    order
}

/// What a run that completed all its epochs hands on to the summary and export.
pub struct Trained {
    pub arch: Arch,
    pub data: RunData,
    pub peers: Vec<Peer>,
    pub state: RunState,
    pub val_inputs: Inputs,
    pub test_inputs: Option<Inputs>,
    pub head_only: bool,
    pub devices: Vec<Device>,
}

/// Train the run in `run_dir` from `state`: a new run's empty state, or the state of the
/// checkpoint that `s` was restored from (see `launch`). The caller holds the folder's lock.
/// `after_epoch` runs after each epoch's checkpoint (the caller draws the plots). Returns the
/// trained peers when the run completed all its epochs, `None` when it stopped early.
pub fn run(
    cfg: &TrainConfig,
    run_dir: &Path,
    s: Setup,
    mut state: RunState,
    after_epoch: &mut dyn FnMut(&Path) -> Result<()>,
) -> Result<Option<Trained>> {
    let Setup {
        device,
        devices,
        data,
        arch,
        mcfg,
        mut method,
        mut peers,
        train_inputs,
        val_inputs,
        test_inputs,
        head_only,
        amp,
        batch_norm,
    } = s;
    let n_nets = peers.len();
    let n_train = data.train.len();
    let bs = cfg.batch_size.min(n_train).max(1);
    let drop_single = batch_norm != BatchNormUse::None;
    let n_trained = trained_per_epoch(n_train, bs, drop_single);
    let steps_per_epoch = n_trained.div_ceil(bs);
    let schedule = cfg.lr_schedule(steps_per_epoch);
    if state.best.len() != n_nets {
        state.best = vec![None; n_nets];
    }
    let config = serde_json::to_value(cfg).context("recording the configuration")?;
    let shape = checkpoint::RunShape {
        method: cfg.method.to_string(),
        networks: n_nets,
        backbone: arch.name(),
        classes: data.train.num_classes(),
        train_samples: n_train,
    };

    // Observed labels and the hidden truth, on the device.
    let y_all = i8_tensor(&data.observed.labels).to_kind(Kind::Float).to_device(device);
    let truth_pos = i8_tensor(&data.train.targets).eq(1).to_device(device);

    let stop_at = cfg.stop_after.map_or(cfg.epochs, |n| (state.epochs_done + n).min(cfg.epochs));
    let n_test = data.test.as_ref().map_or(0, |t| t.len());
    let mut clock = RunClock::new(Plan {
        epochs: cfg.epochs,
        epochs_done: state.epochs_done,
        steps_per_epoch,
        images_per_epoch: n_trained,
        batch: bs,
        val_images: data.val.len(),
        final_images: data.val.len() + n_test,
        networks: n_nets,
        cpu: !device.is_cuda(),
        options: match arch.is_image() {
            true => {
                let (resize, crop, _) = crate::config::image_sizes(cfg)?;
                let side = |(h, w): (u32, u32)| (h as usize, w as usize);
                Some(Options {
                    can_freeze: !head_only && cfg.pretrained.as_deref().is_some_and(|p| p != "none"),
                    all_images: n_train + data.val.len() + n_test,
                    resize: side(resize),
                    crop: side(crop),
                })
            }
            false => None,
        },
    });
    for epoch in state.epochs_done..stop_at {
        let t0 = Instant::now();
        let order = epoch_order(n_train, bs, drop_single, cfg.seed, epoch);
        let aug_rng = epoch_rng(cfg.seed, epoch, 2);
        let mut progress = EpochProgress::start(epoch + 1, cfg.epochs, steps_per_epoch);
        let mut loss_sum = vec![0.0; n_nets];
        let mut sel = vec![SelectionStats::default(); n_nets];
        let mut lr = cfg.lr;

        // Images decoded per step (`--cache none`) are decoded ahead, while the step runs; a
        // failing step drops `batches`, which stops the decoders (loader.rs).
        let mut batches = train_inputs.batches(order, bs, (!head_only).then_some(aug_rng), devices[0])?;
        let mut step = 0;
        while let Some((idx, x)) = batches.next_batch()? {
            lr = schedule.at(state.steps_done);
            let idx_t = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(device);
            let y = y_all.index_select(0, &idx_t);
            let ctx = StepCtx { y: &y, indices: &idx_t, epoch, lr };
            let out = match train_step(&mut peers, method.as_mut(), &x, &ctx, head_only, &devices, amp) {
                Ok(out) => out,
                Err(loss_value) => bail!(
                    "the loss became {loss_value} at epoch {} step {} (learning rate {lr:.3e}); stopping. \
                     The last good checkpoint (after epoch {}) is kept in {}: lower --lr or check the data, then --resume",
                    epoch + 1,
                    step + 1,
                    state.epochs_done,
                    run_dir.display()
                ),
            };
            for (k, v) in out.per_net.iter().enumerate() {
                loss_sum[k] += v;
            }
            let truth_b = truth_pos.index_select(0, &idx_t);
            let hidden = truth_b.logical_and(&y.eq(0.0));
            for (k, f) in out.flagged.iter().enumerate() {
                let f = f.to_kind(Kind::Bool);
                sel[k].flagged += f.sum(Kind::Int64).int64_value(&[]) as u64;
                sel[k].hidden_positives_flagged += f.logical_and(&hidden).sum(Kind::Int64).int64_value(&[]) as u64;
                sel[k].hidden_positives += hidden.sum(Kind::Int64).int64_value(&[]) as u64;
            }
            state.steps_done += 1;
            step += 1;
            progress.step(step, (step * bs).min(n_trained), out.per_net.iter().sum::<f64>() / n_nets as f64);
            clock.batch_done(t0, idx.len());
        }
        drop(batches);
        progress.finish();
        let train_secs = t0.elapsed().as_secs_f64();

        // Validation of every peer; the checkpoint keeps each peer's best weights.
        let mut val = Vec::new();
        let mut improved = Vec::new();
        for (k, p) in peers.iter().enumerate() {
            let m = evaluate(p, &val_inputs, &data.val.targets, head_only, devices[k])?;
            let better = state.best[k].is_none_or(|(_, b)| m.map > b);
            if better {
                state.best[k] = Some((epoch + 1, m.map));
                improved.push(k);
            }
            val.push(ValSummary { map: m.map, cf1: m.cf1, of1: m.of1 });
        }
        for s in sel.iter_mut() {
            s.precision = (s.flagged > 0).then(|| s.hidden_positives_flagged as f64 / s.flagged as f64);
            s.recall = (s.hidden_positives > 0).then(|| s.hidden_positives_flagged as f64 / s.hidden_positives as f64);
        }
        let (r_h, r_l) = (keep_rate(epoch, mcfg.e_k, mcfg.tau_h), keep_rate(epoch, mcfg.e_k, mcfg.tau_l));
        let log = EpochLog {
            epoch: epoch + 1,
            loss: loss_sum.iter().map(|l| l / steps_per_epoch as f64).collect(),
            val,
            r_h,
            r_l,
            selection: if sel.iter().any(|s| s.flagged > 0) { sel } else { vec![] },
            lr,
            images_per_s: n_trained as f64 / train_secs,
            seconds: t0.elapsed().as_secs_f64(),
        };
        if cfg.keep_epochs {
            // Before the checkpoint: a run killed in between trains this epoch again and writes
            // the same file again.
            let dir = run_dir.join("epochs");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (k, p) in peers.iter().enumerate() {
                checkpoint::save_tensors(
                    &checkpoint::epoch_file(run_dir, epoch + 1, k),
                    &checkpoint::named_vars(&p.vs),
                )?;
            }
        }
        // The epoch's line is part of the checkpoint; metrics.jsonl and the best weights outside
        // it are written from it once it is in place.
        state.epochs_done = epoch + 1;
        state.shape = Some(shape.clone());
        state.config = Some(config.clone());
        state.objective = Some(checkpoint::OBJECTIVE_REVISION);
        state.log.push(log.clone());
        checkpoint::save(
            run_dir,
            &Checkpoint {
                state: state.clone(),
                peers: peers.iter().map(|p| checkpoint::named_vars(&p.vs)).collect(),
                optimizers: peers.iter().map(|p| p.adam.state()).collect(),
                method: method.state(),
            },
        )?;
        runlog::write(run_dir, &state.log)?;
        checkpoint::publish_best(run_dir, improved)?;
        let left = clock.epoch_done(t0.elapsed().as_secs_f64(), cfg.epochs - (epoch + 1));
        if !progress::quiet() {
            print_epoch(&log, cfg.epochs, left);
        }
        after_epoch(run_dir)?;
    }

    if state.epochs_done < cfg.epochs {
        eprintln!(
            "stopped after epoch {} of {}; continue with: cls-train --resume {}",
            state.epochs_done,
            cfg.epochs,
            run_dir.display()
        );
        return Ok(None);
    }
    Ok(Some(Trained { arch, data, peers, state, val_inputs, test_inputs, head_only, devices }))
}

/// One optimisation step of every peer on the batch `x` (Algorithm 1, steps 1–6): forward
/// each network, let the method select labels and compute the losses, back-propagate once (the
/// peers' parameters are disjoint) and step each peer's Adam. A non-finite loss is returned as
/// `Err(value)` before any update. With `amp`, forward passes on CUDA run under bf16 autocast
/// with channels-last inputs (the losses are computed in f32 by the methods).
pub fn train_step(
    peers: &mut [Peer],
    method: &mut dyn Method,
    x: &Tensor,
    ctx: &StepCtx,
    head_only: bool,
    devices: &[Device],
    amp: bool,
) -> Result<StepOut, f64> {
    let loss_device = devices[0];
    let logits: Vec<Tensor> = peers
        .iter()
        .enumerate()
        .map(|(k, p)| forward(p, &x.to_device(devices[k]), true, head_only, amp).to_device(loss_device))
        .collect();
    let out = method.step(&logits, ctx);
    let loss_value = out.loss.double_value(&[]);
    if !loss_value.is_finite() {
        return Err(loss_value);
    }
    for p in peers.iter_mut() {
        p.adam.zero_grad();
    }
    out.loss.backward();
    method.after_backward(ctx);
    for p in peers.iter_mut() {
        p.adam.step(ctx.lr);
    }
    Ok(out)
}

/// One network's logits: the classifier alone on features (`head_only`), else the whole net
/// (channels-last inside, see `Net::features_t`). On CUDA with `amp` the backbone runs in bf16
/// autocast and the classifier in f32 on its features cast back: bf16 logits would put large
/// groups of entries at equal loss, where the selection's cut falls (docs/method.md).
pub fn forward(p: &Peer, x: &Tensor, train: bool, head_only: bool, amp: bool) -> Tensor {
    if head_only {
        return p.net.head(x);
    }
    if amp && x.device().is_cuda() {
        let features = cls_models::cuda_autocast(true, || p.net.features_t(x, train));
        return p.net.head(&features.to_kind(Kind::Float));
    }
    p.net.forward_t(x, train)
}

/// Probabilities of `peer` on every sample of `inputs`, in order, computed in f32 whatever the
/// training precision.
pub fn predict(peer: &Peer, inputs: &Inputs, head_only: bool, device: Device) -> Result<Array2<f32>> {
    let n = inputs.len();
    let c = peer.net.num_classes() as usize;
    let mut out = Array2::<f32>::zeros((n, c));
    tch::no_grad(|| -> Result<()> {
        let bs = inputs.image_size().map_or(EVAL_BATCH, |(h, w)| eval_batch(h, w));
        let mut batches = inputs.batches((0..n).collect(), bs, None, device)?;
        while let Some((idx, x)) = batches.next_batch()? {
            let start = idx[0];
            // Always f32 (no autocast): evaluation must agree with the f32 ONNX export.
            let logits = forward(peer, &x, false, head_only, false);
            let p = logits.to_kind(Kind::Float).sigmoid().to_device(Device::Cpu).contiguous();
            let v: Vec<f32> = Vec::try_from(p.view([-1])).context("reading the probabilities")?;
            let rows = ndarray::ArrayView2::from_shape((idx.len(), c), &v).context("the network's output shape")?;
            out.slice_mut(ndarray::s![start..start + idx.len(), ..]).assign(&rows);
        }
        Ok(())
    })?;
    Ok(out)
}

pub fn evaluate(peer: &Peer, inputs: &Inputs, truth: &Array2<i8>, head_only: bool, device: Device) -> Result<Metrics> {
    let probs = predict(peer, inputs, head_only, device)?;
    metrics::evaluate(probs.view(), truth.view(), 0.5).map_err(|e| match e {
        metrics::MetricsError::NanScore { .. } => anyhow::anyhow!("evaluation: {e}: {}", nan_cause(peer)),
        e => anyhow::anyhow!("evaluation: {e}"),
    })
}

/// Why a network's output is NaN: the first of its tensors (weights and BatchNorm statistics,
/// by name) that holds a NaN or an infinity, else the input or the forward pass.
pub fn nan_cause(peer: &Peer) -> String {
    let mut vars: Vec<(String, Tensor)> = peer.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let bad = vars.iter().find(|(_, t)| t.isfinite().all().int64_value(&[]) == 0);
    match bad {
        Some((name, _)) if name.contains("running_") => format!(
            "the network's BatchNorm statistics `{name}` hold NaN or infinite values (a training batch in which \
             BatchNorm saw one value per channel, or a step that diverged)"
        ),
        Some((name, _)) => {
            format!("the network's weights `{name}` hold NaN or infinite values: training diverged (lower --lr)")
        }
        None => "every weight of the network is finite, so the input or the forward pass overflowed (check the \
                 features or images)"
            .to_string(),
    }
}

pub fn i8_tensor(a: &Array2<i8>) -> Tensor {
    let (n, c) = a.dim();
    let v: Vec<i8> = a.iter().copied().collect();
    Tensor::from_slice(&v).view([n as i64, c as i64])
}

/// The epoch's line; `left`: the run's time left, from the mean epoch so far.
fn print_epoch(log: &EpochLog, epochs: usize, left: f64) {
    let val: Vec<String> = log.val.iter().map(|v| format!("{:.1}", 100.0 * v.map)).collect();
    let sel = log
        .selection
        .first()
        .and_then(|s| {
            s.precision.map(|p| format!("  sel.prec {:.1}% rec {:.1}%", 100.0 * p, 100.0 * s.recall.unwrap_or(0.0)))
        })
        .unwrap_or_default();
    eprintln!(
        "epoch {:>3}/{epochs}  loss {}  val mAP {}  R_h {:.4} R_l {:.4}{sel}  {:.0} img/s  {:.1}s  left {}",
        log.epoch,
        log.loss.iter().map(|l| format!("{l:.4}")).collect::<Vec<_>>().join("/"),
        val.join("/"),
        log.r_h,
        log.r_l,
        log.images_per_s,
        log.seconds,
        progress::human(left)
    );
}
