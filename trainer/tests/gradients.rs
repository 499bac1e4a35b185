//! Gradient checks: ASL, Hill, SPLC, LL-R/LL-Ct/LL-Cp and JoCoR, compared against f64 references
//! that use no tch code.
//!
//! `tests/methods/` compares loss *values*. A loss can have the right value and the wrong gradient:
//! a weight that should be a constant is differentiated, a selection mask leaks gradient, a KL term
//! is detached. Here each method's `step` runs on small f32 logits created with `requires_grad`,
//! `loss.backward()` fills the logits' gradients, and those gradients are compared with
//! - a gradient derived by hand in f64, where the binding semantics are *not* the derivative of the
//!   loss value (ASL's detached focal weights) or where the gradient is short ((p − target)/B for
//!   the LL family);
//! - a central finite difference (h = 1e-5) of an f64 reference of the loss value, with every
//!   selection (SPLC's corrections, LL's picks, JoCoR's kept samples) held fixed.
//!
//! The semantics, from `docs/method.md` ("Baselines", "Reduction") and the official code of each
//! paper:
//! - every method: the sum over the entries that count, divided by the batch size B;
//! - ASL (Ridnik et al. 2021): `−[y (1−p)^γ+ log p + (1−y) p_m^γ− log(1−p_m)]`, `p_m = max(p−m, 0)`,
//!   γ+ = 0, γ− = 4, m = 0.05. The focal weights are constants of the step (official
//!   `disable_torch_grad_focal_loss=True`), so the gradient of a negative with p > m is
//!   `p_m^4 · p(1−p)/(1−p_m)`, not the derivative of the loss value; with
//!   `MethodConfig::asl_focal_grad` it is the derivative of the loss value;
//! - Hill (Zhang et al. 2021): positives `−(1−q)² log q`, q = σ(x−1); other entries `(1.5−p)p²`.
//!   The focal weight `(1−q)²` carries gradient: the official `Hill.forward` computes
//!   `focal_weight = pt ** gamma` from `sigmoid(logits - margin)` in the graph (no `no_grad`, no
//!   `detach`) and multiplies the loss by it;
//! - SPLC (same paper): observed positives as Hill's; from completed epoch 1 on an unannotated
//!   entry with p > 0.6 is a positive for the step, without margin: `−(1−p)² log p`; every other
//!   entry `−p² log(1−p)`. The focal weights carry gradient (official `SPLC.forward`:
//!   `focal_weight = pt**self.gamma` in the graph); the correction mask carries none. Observed
//!   negatives are never corrected;
//! - LL-R / LL-Ct / LL-Cp (Kim et al. 2022): among the unannotated entries of the flattened batch,
//!   the largest BCE-as-negative losses (ties to the lower flat index) are rejected (R), trained as
//!   positives for the step (Ct) or stored as positives for the image's later steps (Cp). Counts:
//!   R and Ct floor(e·Δ/100·B·C); Cp the constant ceil(Δ/100·B·C) from e ≥ 1, 0 before;
//! - JoCoR (Wei et al. 2020): per sample `(1−λ)(ℓ_f + ℓ_g) + λ(KL(p_f‖p_g) + KL(p_g‖p_f))`, the
//!   floor(R(e)·B) smallest kept, R(e) = 1 − min(e/E_k·τ, τ), loss = their sum / B (method.md; the
//!   official code takes the mean over the kept samples instead). Both KL directions carry
//!   gradient into both networks (official `kl_loss_compute` uses `F.kl_div` on both outputs
//!   without `detach`).
//!
//! Tolerance: |autograd − reference| ≤ 1e-5 + 1e-4·|reference|, which f32 arithmetic meets by a
//! wide margin; each test also asserts that the alternative it must tell apart (a differentiated
//! weight, a detached weight, a growing count) misses that tolerance on these inputs.

use std::collections::BTreeSet;

use cls_trainer::methods::{build, Method, MethodConfig, StepCtx};
use tch::{Device, Kind, Tensor};

// ---------- f64 reference pieces (no tch) ----------

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// −ln σ(x)
fn nlp(x: f64) -> f64 {
    softplus(-x)
}

/// −ln(1 − σ(x))
fn nl1p(x: f64) -> f64 {
    softplus(x)
}

/// Binary cross-entropy of logit `x` against target `t`.
fn bce(x: f64, t: f64) -> f64 {
    t * nlp(x) + (1.0 - t) * nl1p(x)
}

/// Bernoulli KL(σ(a) ‖ σ(b)).
fn kl(a: f64, b: f64) -> f64 {
    let p = sig(a);
    p * (nlp(b) - nlp(a)) + (1.0 - p) * (nl1p(b) - nl1p(a))
}

/// Central finite difference (h = 1e-5) of `f` at `x`, one coordinate at a time.
fn finite_diff(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    const H: f64 = 1e-5;
    (0..x.len())
        .map(|k| {
            let (mut plus, mut minus) = (x.to_vec(), x.to_vec());
            plus[k] += H;
            minus[k] -= H;
            (f(&plus) - f(&minus)) / (2.0 * H)
        })
        .collect()
}

/// The `count` entries of `candidates` with the largest (or smallest) `values`, ties to the lower
/// index, as a mask.
fn pick(values: &[f64], candidates: &[bool], count: usize, largest: bool) -> Vec<bool> {
    let mut order: Vec<usize> = (0..values.len()).filter(|&k| candidates[k]).collect();
    order.sort_by(|&a, &b| {
        let o = values[a].partial_cmp(&values[b]).unwrap();
        (if largest { o.reverse() } else { o }).then(a.cmp(&b))
    });
    let mut mask = vec![false; values.len()];
    for &k in order.iter().take(count) {
        mask[k] = true;
    }
    mask
}

fn flat<const C: usize>(rows: &[[f64; C]]) -> Vec<f64> {
    rows.iter().flatten().copied().collect()
}

// ---------- running a method ----------

struct Run {
    loss: f64,
    per_net: Vec<f64>,
    /// Per network, d loss / d logits, flat row-major.
    grads: Vec<Vec<f64>>,
    /// Per network, the flagged mask, flat row-major.
    flagged: Vec<Vec<bool>>,
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.detach().to_kind(Kind::Double).reshape([-1])).unwrap()
}

/// One `step` of `method` on one flat row-major B×C logit vector per network (B = indices.len()),
/// then `loss.backward()`.
fn run_step(method: &mut dyn Method, logits: &[Vec<f64>], y: &[f64], indices: &[i64], epoch: usize) -> Run {
    let (b, c) = (indices.len() as i64, (y.len() / indices.len()) as i64);
    let f32s = |v: &[f64]| -> Vec<f32> { v.iter().map(|&x| x as f32).collect() };
    let xs: Vec<Tensor> =
        logits.iter().map(|v| Tensor::from_slice(&f32s(v)).view([b, c]).set_requires_grad(true)).collect();
    let yt = Tensor::from_slice(&f32s(y)).view([b, c]);
    let it = Tensor::from_slice(indices);
    let ctx = StepCtx { y: &yt, indices: &it, epoch, lr: 1e-3 };
    let out = method.step(&xs, &ctx);
    out.loss.backward();
    Run {
        loss: out.loss.detach().double_value(&[]),
        per_net: out.per_net,
        grads: xs.iter().map(|x| to_vec(&x.grad())).collect(),
        flagged: out.flagged.iter().map(|f| to_vec(f).iter().map(|&v| v != 0.0).collect()).collect(),
    }
}

fn one_step(name: &str, cfg: &MethodConfig, logits: &[Vec<f64>], y: &[f64], b: usize, epoch: usize) -> Run {
    let c = y.len() / b;
    let mut method = build(name, cfg, b as i64, c as i64, Device::Cpu).unwrap();
    run_step(method.as_mut(), logits, y, &(0..b as i64).collect::<Vec<_>>(), epoch)
}

/// The logits as the f32 tensor holds them, so that references see the same inputs.
fn f32_exact(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| v as f32 as f64).collect()
}

// ---------- comparisons ----------

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-5 + 1e-4 * want.abs()
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!(close(got, want), "{what}: got {got}, reference {want}");
}

fn assert_grad(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: gradient length");
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(close(g, w), "{what}: d loss/d x[{k}] = {g} by autograd, {w} by the reference");
    }
}

/// The two gradients differ beyond the tolerance somewhere (so a test comparing with one of
/// them can tell the other apart).
fn assert_distinguishable(a: &[f64], b: &[f64], what: &str) {
    let worst = a.iter().zip(b).map(|(&a, &b)| (a - b).abs() / (1e-5 + 1e-4 * b.abs())).fold(0.0, f64::max);
    assert!(worst > 10.0, "{what}: the alternatives differ by only {worst} tolerances on these inputs");
}

// ---------- ASL ----------

const ASL_GAMMA_POS: i32 = 0;
const ASL_GAMMA_NEG: i32 = 4;
const ASL_M: f64 = 0.05;

fn asl_loss(x: &[f64], y: &[f64], b: usize) -> f64 {
    let per_entry = |x: f64, y: f64| {
        let p = sig(x);
        let p_m = (p - ASL_M).max(0.0);
        if y == 1.0 {
            (1.0 - p).powi(ASL_GAMMA_POS) * nlp(x)
        } else {
            -p_m.powi(ASL_GAMMA_NEG) * (1.0 - p_m).ln()
        }
    };
    x.iter().zip(y).map(|(&x, &y)| per_entry(x, y)).sum::<f64>() / b as f64
}

/// ASL's gradient with the focal weights held constant: w · d(−log p)/dx = w (p − 1) for a
/// positive, w · d(−log(1 − p_m))/dx = w p(1 − p)/(1 − p_m) for a negative with p > m (0 below).
fn asl_grad_detached(x: &[f64], y: &[f64], b: usize) -> Vec<f64> {
    x.iter()
        .zip(y)
        .map(|(&x, &y)| {
            let p = sig(x);
            let p_m = (p - ASL_M).max(0.0);
            let g = if y == 1.0 {
                (1.0 - p).powi(ASL_GAMMA_POS) * (p - 1.0)
            } else if p > ASL_M {
                p_m.powi(ASL_GAMMA_NEG) * p * (1.0 - p) / (1.0 - p_m)
            } else {
                0.0
            };
            g / b as f64
        })
        .collect()
}

#[test]
fn asl_gradient_detaches_focal_weights_unless_asked() {
    let b = 4;
    let y = flat(&[
        [1.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0, 1.0],
        [0.0, 0.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0, 0.0, 0.0],
    ]);
    // p < m = 0.05 for x < −2.944: −3.5, −4, −3.25, −3, −5 are unannotated below the margin.
    let x = f32_exact(&flat(&[
        [2.0, -3.5, 0.5, 1.5, -4.0],
        [-1.0, 0.75, 2.5, -3.25, -0.5],
        [3.0, -2.0, -3.0, 0.0, 1.0],
        [-1.5, 4.0, -2.5, 0.25, -5.0],
    ]));
    let detached = asl_grad_detached(&x, &y, b);
    let full = finite_diff(&x, |x| asl_loss(x, &y, b));
    assert_distinguishable(&detached, &full, "ASL detached vs differentiated weights");

    // Default: the official training's constant weights.
    let run = one_step("asl", &MethodConfig::default(), std::slice::from_ref(&x), &y, b, 0);
    assert_close(run.loss, asl_loss(&x, &y, b), "ASL loss");
    assert_grad(&run.grads[0], &detached, "ASL gradient, focal weights detached");
    for k in (0..x.len()).filter(|&k| y[k] == 0.0 && sig(x[k]) < ASL_M) {
        assert_eq!(run.grads[0][k], 0.0, "ASL: negative {k} with p < m has no gradient");
    }

    // --asl-focal-grad: the gradient of the loss value itself.
    let cfg = MethodConfig { asl_focal_grad: true, ..MethodConfig::default() };
    let run = one_step("asl", &cfg, std::slice::from_ref(&x), &y, b, 0);
    assert_close(run.loss, asl_loss(&x, &y, b), "ASL loss, focal grad");
    assert_grad(&run.grads[0], &full, "ASL gradient, focal weights differentiated");
    for k in (0..x.len()).filter(|&k| y[k] == 0.0 && sig(x[k]) < ASL_M) {
        assert_eq!(run.grads[0][k], 0.0, "ASL focal grad: negative {k} with p < m has no gradient");
    }
}

// ---------- Hill ----------

fn hill_loss(x: &[f64], y: &[f64], b: usize) -> f64 {
    let per_entry = |x: f64, y: f64| {
        if y == 1.0 {
            let q = sig(x - 1.0);
            (1.0 - q).powi(2) * nlp(x - 1.0)
        } else {
            let p = sig(x);
            (1.5 - p) * p * p
        }
    };
    x.iter().zip(y).map(|(&x, &y)| per_entry(x, y)).sum::<f64>() / b as f64
}

/// Hill's gradient by hand, with `focal_grad` false for the alternative in which the positive's
/// focal weight (1 − q)² is a constant.
/// Positive: d/dx[(1 − q)² (−log q)] = −2q(1 − q)² (−log q) − (1 − q)³ (the first term from the
/// weight). Other: d/dx[(1.5 − p)p²] = (3p − 3p²) · p(1 − p) = 3p²(1 − p)².
fn hill_grad(x: &[f64], y: &[f64], b: usize, focal_grad: bool) -> Vec<f64> {
    x.iter()
        .zip(y)
        .map(|(&x, &y)| {
            let g = if y == 1.0 {
                let q = sig(x - 1.0);
                let weight_term = if focal_grad { -2.0 * q * (1.0 - q).powi(2) * nlp(x - 1.0) } else { 0.0 };
                weight_term - (1.0 - q).powi(3)
            } else {
                let p = sig(x);
                3.0 * p * p * (1.0 - p) * (1.0 - p)
            };
            g / b as f64
        })
        .collect()
}

#[test]
fn hill_gradient_matches_hand_derivation_and_finite_difference() {
    let b = 4;
    let y = flat(&[
        [1.0, 0.0, 0.0, 0.0, 1.0],
        [0.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 1.0, 0.0],
    ]);
    let x = f32_exact(&flat(&[
        [-1.0, -3.0, 0.5, 2.0, 3.5],
        [4.0, 0.0, 1.25, -0.75, 5.0],
        [-2.0, 2.5, 1.0, -4.0, 0.3],
        [2.0, -1.5, 3.0, -2.5, 1.7],
    ]));
    let by_hand = hill_grad(&x, &y, b, true);
    let fd = finite_diff(&x, |x| hill_loss(x, &y, b));
    assert_grad(&by_hand, &fd, "Hill: hand derivation vs finite difference of the reference");
    assert_distinguishable(&hill_grad(&x, &y, b, false), &fd, "Hill detached vs differentiated focal weight");

    let run = one_step("hill", &MethodConfig::default(), std::slice::from_ref(&x), &y, b, 0);
    assert_close(run.loss, hill_loss(&x, &y, b), "Hill loss");
    assert_grad(&run.grads[0], &fd, "Hill gradient");
}

// ---------- SPLC ----------

const SPLC_TAU: f64 = 0.6;

/// SPLC's per-step corrections: unannotated entries with p > τ from completed epoch 1 on.
fn splc_corrected(x: &[f64], y: &[f64], epoch: usize) -> Vec<bool> {
    x.iter().zip(y).map(|(&x, &y)| epoch >= 1 && y == 0.0 && sig(x) > SPLC_TAU).collect()
}

fn splc_loss(x: &[f64], y: &[f64], corrected: &[bool], b: usize) -> f64 {
    let per_entry = |k: usize| {
        let (x, p) = (x[k], sig(x[k]));
        if y[k] == 1.0 {
            let q = sig(x - 1.0);
            (1.0 - q).powi(2) * nlp(x - 1.0)
        } else if corrected[k] {
            (1.0 - p).powi(2) * nlp(x)
        } else {
            p * p * nl1p(x)
        }
    };
    (0..x.len()).map(per_entry).sum::<f64>() / b as f64
}

/// SPLC's gradient by hand, with `focal_grad` false for the alternative in which the focal
/// weights are constants (the first term of each line dropped): observed positive as Hill's;
/// corrected: −2p(1 − p)² (−log p) − (1 − p)³; negative: d/dx[p² (−log(1 − p))] =
/// 2p²(1 − p)(−log(1 − p)) + p³.
fn splc_grad(x: &[f64], y: &[f64], corrected: &[bool], b: usize, focal_grad: bool) -> Vec<f64> {
    let w = if focal_grad { 1.0 } else { 0.0 };
    (0..x.len())
        .map(|k| {
            let (x, p) = (x[k], sig(x[k]));
            let g = if y[k] == 1.0 {
                let q = sig(x - 1.0);
                -w * 2.0 * q * (1.0 - q).powi(2) * nlp(x - 1.0) - (1.0 - q).powi(3)
            } else if corrected[k] {
                -w * 2.0 * p * (1.0 - p).powi(2) * nlp(x) - (1.0 - p).powi(3)
            } else {
                w * 2.0 * p * p * (1.0 - p) * nl1p(x) + p.powi(3)
            };
            g / b as f64
        })
        .collect()
}

#[test]
fn splc_gradient_corrects_confident_unannotated_entries_from_epoch_one() {
    let b = 5;
    // One observed negative (−1) at flat 9 with p = 0.88: never corrected.
    let y = flat(&[
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, -1.0],
        [0.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]);
    // logit(0.6) = 0.405: the unannotated 0.5, 1.5, 3, 0.75, 2.25, 1, 4 cross it (7 entries);
    // 0.25 (p = 0.562), 0.375 (p = 0.593) and 0 do not.
    let x = f32_exact(&flat(&[
        [2.0, 0.5, -1.0, 1.5],
        [0.25, -0.5, 3.0, 2.0],
        [-2.0, 0.375, 0.0, 0.75],
        [-1.0, -3.0, 2.25, 0.0],
        [1.0, -1.5, 4.0, 0.5],
    ]));
    for epoch in [0, 1, 4] {
        let what = format!("SPLC e={epoch}");
        let corrected = splc_corrected(&x, &y, epoch);
        let n_corrected = corrected.iter().filter(|&&c| c).count();
        assert_eq!(n_corrected, if epoch == 0 { 0 } else { 7 }, "{what}: test data");
        let fd = finite_diff(&x, |x| splc_loss(x, &y, &corrected, b));
        assert_grad(
            &splc_grad(&x, &y, &corrected, b, true),
            &fd,
            &format!("{what}: hand derivation vs finite difference"),
        );
        assert_distinguishable(
            &splc_grad(&x, &y, &corrected, b, false),
            &fd,
            &format!("{what}: detached focal weights"),
        );

        let run = one_step("splc", &MethodConfig::default(), std::slice::from_ref(&x), &y, b, epoch);
        assert_close(run.loss, splc_loss(&x, &y, &corrected, b), &format!("{what} loss"));
        assert_grad(&run.grads[0], &fd, &format!("{what} gradient"));
        assert_eq!(run.flagged.len(), 1, "{what}: one flagged mask");
        assert_eq!(run.flagged[0], corrected, "{what}: flagged = corrected");
    }
    // The corrections change the gradient (the test tells epoch 0 from epoch 1 apart).
    let (none, some) = (splc_corrected(&x, &y, 0), splc_corrected(&x, &y, 1));
    assert_distinguishable(&splc_grad(&x, &y, &none, b, true), &splc_grad(&x, &y, &some, b, true), "SPLC e=0 vs e=1");
}

// ---------- LL-R, LL-Ct, LL-Cp ----------

/// The LL count per step (module doc): R and Ct floor(e·Δ/100·B·C), Cp ceil(Δ/100·B·C) from
/// e ≥ 1 and 0 before.
fn ll_count(name: &str, epoch: usize, delta: f64, entries: usize) -> usize {
    let n = entries as f64;
    match name {
        "ll-cp" if epoch == 0 => 0,
        "ll-cp" => (delta / 100.0 * n).ceil() as usize,
        _ => ((epoch as f64 * delta / 100.0).min(1.0) * n + 1e-9).floor() as usize,
    }
}

/// An LL step in f64: the picked entries, and the loss and gradient of the BCE with per-entry
/// target t and weight w: Σ w·bce(x, t)/B and w(p − t)/B.
struct LlRef {
    picked: Vec<bool>,
    loss: f64,
    grad: Vec<f64>,
}

/// `positive`: entries trained as positives before the pick (observed or stored corrections);
/// `candidates`: the unannotated entries that may be picked.
fn ll_ref(name: &str, x: &[f64], positive: &[bool], candidates: &[bool], count: usize, b: usize) -> LlRef {
    let as_negative: Vec<f64> = x.iter().map(|&x| bce(x, 0.0)).collect();
    let picked = pick(&as_negative, candidates, count, true);
    let (mut loss, mut grad) = (0.0, vec![0.0; x.len()]);
    for k in 0..x.len() {
        let (t, w) = match (picked[k], name) {
            (true, "ll-r") => (0.0, 0.0),
            (true, _) => (1.0, 1.0),
            (false, _) => (if positive[k] { 1.0 } else { 0.0 }, 1.0),
        };
        loss += w * bce(x[k], t) / b as f64;
        grad[k] = w * (sig(x[k]) - t) / b as f64;
    }
    LlRef { picked, loss, grad }
}

#[test]
fn ll_r_and_ll_ct_gradients_follow_their_picks() {
    let b = 6;
    // Single positives, one observed negative (−1) with the largest logit (flat 13): never picked.
    let y = flat(&[
        [1.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, -1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 1.0],
        [1.0, 0.0, 0.0, 0.0, 0.0],
    ]);
    // Unannotated by decreasing loss: 2.5 (flat 7, 21), 2.25 (27), 1.5 (1, 10, 19), 1.25 (29),
    // 1.0 (17, 28), ... Ties at the cut for counts 4 (1 over 10, 19) and 8 (17 over 28).
    let x = f32_exact(&flat(&[
        [2.0, 1.5, -1.0, 0.5, -2.0],
        [-0.5, 1.0, 2.5, -1.5, 0.0],
        [1.5, -2.5, 0.5, 3.0, -1.0],
        [0.75, -0.25, 1.0, 2.0, 1.5],
        [-3.0, 2.5, -0.75, 0.25, 1.0],
        [1.0, 0.5, 2.25, 1.0, 1.25],
    ]));
    let positive: Vec<bool> = y.iter().map(|&y| y == 1.0).collect();
    let unannotated: Vec<bool> = y.iter().map(|&y| y == 0.0).collect();
    let cases = [
        // (method, Δ, epoch, expected count)
        ("ll-r", Some(14.0), 0, 0),
        ("ll-r", Some(14.0), 1, 4),
        ("ll-r", Some(14.0), 2, 8),
        ("ll-r", None, 7, 1), // default Δ 0.5: floor(7 · 0.005 · 30) = 1
        ("ll-ct", Some(14.0), 0, 0),
        ("ll-ct", Some(14.0), 1, 4),
        ("ll-ct", Some(14.0), 2, 8),
        ("ll-ct", None, 17, 1), // default Δ 0.2: floor(17 · 0.002 · 30) = 1
    ];
    for (name, delta, epoch, want_count) in cases {
        let what = format!("{name} Δ={delta:?} e={epoch}");
        let default_delta = if name == "ll-r" { 0.5 } else { 0.2 };
        let count = ll_count(name, epoch, delta.unwrap_or(default_delta), x.len());
        assert_eq!(count, want_count, "{what}: reference count");
        let want = ll_ref(name, &x, &positive, &unannotated, count, b);
        if count == 4 {
            assert!(want.picked[1] && !want.picked[10] && !want.picked[19], "{what}: tie to the lower index");
        }
        if count == 8 {
            assert!(want.picked[17] && !want.picked[28], "{what}: tie to the lower index");
        }
        let cfg = MethodConfig { ll_delta: delta, ..MethodConfig::default() };
        let run = one_step(name, &cfg, std::slice::from_ref(&x), &y, b, epoch);
        assert_eq!(run.flagged.len(), 1, "{what}: one flagged mask");
        assert_eq!(run.flagged[0], want.picked, "{what}: flagged entries");
        assert_close(run.loss, want.loss, &format!("{what} loss"));
        assert_grad(&run.grads[0], &want.grad, &format!("{what} gradient"));
        if name == "ll-r" {
            for k in (0..x.len()).filter(|&k| want.picked[k]) {
                assert_eq!(run.grads[0][k], 0.0, "{what}: rejected entry {k} has no gradient");
            }
        }
    }
}

/// LL-Cp over several steps of the same images, with an f64 store of corrected (image, class)
/// pairs: corrections are trained as positives in every later step, and each step from epoch 1
/// on corrects the constant ceil(Δ/100·B·C) new entries.
fn check_ll_cp(delta: Option<f64>, want_per_step: usize) {
    let (b, c, n_train) = (6usize, 5usize, 10i64);
    let delta_v = delta.unwrap_or(0.1);
    let indices: Vec<i64> = vec![7, 2, 9, 0, 4, 5];
    let y0 = flat(&[
        [1.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 1.0],
        [1.0, 0.0, 1.0, 0.0, 0.0],
    ]);
    let cfg = MethodConfig { ll_delta: delta, ..MethodConfig::default() };
    let mut method = build("ll-cp", &cfg, n_train, c as i64, Device::Cpu).unwrap();
    let mut store: BTreeSet<(i64, usize)> = BTreeSet::new();
    // (epoch, step's logit seed, rows reversed): the third step sees the images in reverse order.
    for (step, (epoch, seed, reversed)) in
        [(0, 0, false), (1, 1, false), (2, 2, true), (5, 3, false)].into_iter().enumerate()
    {
        let what = format!("ll-cp Δ={delta:?} step {step} e={epoch}");
        let rows: Vec<usize> = if reversed { (0..b).rev().collect() } else { (0..b).collect() };
        let idx: Vec<i64> = rows.iter().map(|&r| indices[r]).collect();
        let y: Vec<f64> = rows.iter().flat_map(|&r| y0[r * c..(r + 1) * c].to_vec()).collect();
        // Quantised logits in [−2.5, 2.5] (exact in f32; many ties, broken by flat index).
        let x: Vec<f64> = (0..b * c).map(|k| ((k * 7 + seed * 5 + k / c * 3) % 11) as f64 * 0.5 - 2.5).collect();

        let earlier: Vec<bool> = (0..b * c).map(|k| y[k] == 0.0 && store.contains(&(idx[k / c], k % c))).collect();
        let positive: Vec<bool> = (0..b * c).map(|k| y[k] == 1.0 || earlier[k]).collect();
        let candidates: Vec<bool> = (0..b * c).map(|k| y[k] == 0.0 && !earlier[k]).collect();
        let count = ll_count("ll-cp", epoch, delta_v, b * c);
        assert_eq!(count, if epoch == 0 { 0 } else { want_per_step }, "{what}: reference count");
        let want = ll_ref("ll-cp", &x, &positive, &candidates, count, b);

        let run = run_step(method.as_mut(), std::slice::from_ref(&x), &y, &idx, epoch);
        let new: Vec<bool> = (0..b * c).map(|k| run.flagged[0][k] && !earlier[k]).collect();
        assert_eq!(new.iter().filter(|&&n| n).count(), count, "{what}: new corrections this step");
        assert_eq!(new, want.picked, "{what}: newly corrected entries");
        let flagged_want: Vec<bool> = (0..b * c).map(|k| earlier[k] || want.picked[k]).collect();
        assert_eq!(run.flagged[0], flagged_want, "{what}: flagged = earlier and new corrections");
        assert_close(run.loss, want.loss, &format!("{what} loss"));
        assert_grad(&run.grads[0], &want.grad, &format!("{what} gradient"));
        if step >= 2 {
            assert!(earlier.iter().any(|&e| e), "{what}: earlier corrections are in the batch");
            for k in (0..b * c).filter(|&k| earlier[k]) {
                assert!(run.grads[0][k] < 0.0, "{what}: stored correction {k} is pushed up as a positive");
            }
        }
        for k in (0..b * c).filter(|&k| want.picked[k]) {
            store.insert((idx[k / c], k % c));
        }
    }
    assert_eq!(store.len(), 3 * want_per_step, "ll-cp Δ={delta:?}: corrections after four steps");
}

#[test]
fn ll_cp_gradient_trains_stored_corrections_with_a_constant_count() {
    // ceil(5 % · 30) = 2 per step, where a growing floor(e · 5 % · 30) would give 1, 3, 7.
    check_ll_cp(Some(5.0), 2);
    // Default Δ 0.1: ceil(0.03) = 1 per step, where a growing count would give 0 at e = 1, 2, 5.
    check_ll_cp(None, 1);
}

// ---------- JoCoR ----------

const JOCOR_LAMBDA: f64 = 0.5;

/// Per-sample joint loss of JoCoR and f's part of it ((1 − λ)ℓ_f + λ KL(p_f‖p_g)).
fn jocor_samples(f: &[f64], g: &[f64], y: &[f64], b: usize) -> (Vec<f64>, Vec<f64>) {
    let c = y.len() / b;
    let mut joint = vec![0.0; b];
    let mut part_f = vec![0.0; b];
    for k in 0..b * c {
        let t = if y[k] == 1.0 { 1.0 } else { 0.0 };
        let pf = (1.0 - JOCOR_LAMBDA) * bce(f[k], t) + JOCOR_LAMBDA * kl(f[k], g[k]);
        let pg = (1.0 - JOCOR_LAMBDA) * bce(g[k], t) + JOCOR_LAMBDA * kl(g[k], f[k]);
        joint[k / c] += pf + pg;
        part_f[k / c] += pf;
    }
    (joint, part_f)
}

/// The loss over the kept samples, Σ joint / B, as a function of f and g concatenated.
fn jocor_loss(fg: &[f64], y: &[f64], kept: &[bool], b: usize) -> f64 {
    let (f, g) = fg.split_at(y.len());
    let (joint, _) = jocor_samples(f, g, y, b);
    (0..b).filter(|&i| kept[i]).map(|i| joint[i]).sum::<f64>() / b as f64
}

#[test]
fn jocor_gradient_reaches_both_networks_through_both_kl_terms() {
    let (b, c) = (6, 4);
    let y = flat(&[
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 1.0],
        [0.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
        [0.0, 1.0, 0.0, 0.0],
    ]);
    // Samples 2 and 4: the networks disagree and are wrong (the largest joint losses).
    let f = f32_exact(&flat(&[
        [1.5, -1.0, -2.0, 0.5],
        [-0.5, 2.0, -1.5, 1.0],
        [3.0, 2.0, -3.0, 1.5],
        [2.5, 0.0, -1.0, -2.0],
        [-1.0, 2.5, 1.5, -3.0],
        [-2.0, 1.0, 0.5, -1.5],
    ]));
    let g = f32_exact(&flat(&[
        [1.0, -0.5, -1.5, -0.5],
        [0.5, 1.5, -2.0, 2.0],
        [-2.5, -1.0, 2.0, -3.0],
        [2.0, -1.5, 0.25, -1.0],
        [2.0, -2.0, -1.0, 2.5],
        [-1.0, 2.0, -0.5, 0.0],
    ]));
    let fg: Vec<f64> = f.iter().chain(&g).copied().collect();
    let (joint, part_f) = jocor_samples(&f, &g, &y, b);
    let everyone = vec![true; b];
    // KL detached on its second argument (stop-gradient on the peer): must differ from the
    // reference gradient, so the test can tell the official non-detached JoCoR apart.
    let detached_kl_grad = {
        let mut grad = finite_diff(&fg, |fg| {
            let (fp, gp) = fg.split_at(y.len());
            (0..b * c)
                .map(|k| {
                    let t = if y[k] == 1.0 { 1.0 } else { 0.0 };
                    (1.0 - JOCOR_LAMBDA) * (bce(fp[k], t) + bce(gp[k], t))
                        + JOCOR_LAMBDA * (kl(fp[k], g[k]) + kl(gp[k], f[k]))
                })
                .sum::<f64>()
                / b as f64
        });
        grad.truncate(b * c);
        grad
    };
    let full_f = finite_diff(&fg, |fg| jocor_loss(fg, &y, &everyone, b))[..b * c].to_vec();
    assert_distinguishable(&detached_kl_grad, &full_f, "JoCoR detached vs differentiated KL");

    for (epoch, want_kept) in [(0, 6), (5, 5), (10, 4), (30, 4)] {
        let what = format!("jocor e={epoch}");
        // R(e) = 1 − min(e/10 · 0.2, 0.2) with E_k = 10, τ = 0.2.
        let rate = 1.0 - (epoch as f64 / 10.0 * 0.2).min(0.2);
        let count = (rate * b as f64 + 1e-9).floor() as usize;
        assert_eq!(count, want_kept, "{what}: reference count");
        let kept = pick(&joint, &everyone, count, false);
        // The kept set is stable: a clear gap between the last kept and the first dropped sample.
        let mut sorted = joint.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if count < b {
            assert!(sorted[count] - sorted[count - 1] > 0.1, "{what}: test data has a clear cut, {sorted:?}");
        }
        let fd = finite_diff(&fg, |fg| jocor_loss(fg, &y, &kept, b));

        let run = one_step("jocor", &MethodConfig::default(), &[f.clone(), g.clone()], &y, b, epoch);
        assert_close(run.loss, jocor_loss(&fg, &y, &kept, b), &format!("{what} loss (sum over kept / B)"));
        let want_f: f64 = (0..b).filter(|&i| kept[i]).map(|i| part_f[i]).sum::<f64>() / b as f64;
        assert_close(run.per_net[0], want_f, &format!("{what} per_net f"));
        assert_close(run.per_net[0] + run.per_net[1], run.loss, &format!("{what} per_net sum"));
        assert_grad(&run.grads[0], &fd[..b * c], &format!("{what} gradient wrt f"));
        assert_grad(&run.grads[1], &fd[b * c..], &format!("{what} gradient wrt g"));
        for k in (0..b * c).filter(|&k| !kept[k / c]) {
            assert_eq!((run.grads[0][k], run.grads[1][k]), (0.0, 0.0), "{what}: dropped sample {} trains", k / c);
        }
        let removed: Vec<bool> = (0..b * c).map(|k| y[k] == 0.0 && !kept[k / c]).collect();
        assert_eq!(run.flagged, vec![removed.clone(), removed], "{what}: flagged = unannotated of dropped samples");
    }
}
