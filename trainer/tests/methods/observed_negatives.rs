//! Observed negatives (y = −1, from the entry-wise protocol, `negatives` in a JSONL manifest or
//! the verified negatives of Open Images) in every method (method.md "Notation", "Baselines"):
//! never a selection candidate of CLS and its ablations (eq. 5–6 keep them), never corrected by
//! LL or SPLC, never flagged, and trained as negatives by every loss.
//!
//! The batch is built so that any selection that could take an observed negative would: the
//! observed negatives carry the largest logits of the batch (they look most like missing
//! positives), and the rates are far above the paper's.

use super::common::*;
use cls_trainer::methods::*;
use tch::{Device, Kind, Tensor};

const B: usize = 4;
const C: usize = 6;

/// (f, g, y): image i has its positive at class i; observed negatives at a few entries whose
/// logits are the batch's largest (x = 4 and 3.5); unannotated entries spread over [−3, 1].
fn batch() -> (M, M, M) {
    let mut y = vec![vec![0.0; C]; B];
    for (i, row) in y.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    for &(i, j) in &[(0, 5), (1, 4), (2, 5), (3, 0), (3, 1)] {
        y[i][j] = -1.0;
    }
    let logits = |shift: f64| -> M {
        (0..B)
            .map(|i| {
                (0..C)
                    .map(|j| match y[i][j] {
                        -1.0 => 4.0 - 0.5 * ((i + j) % 2) as f64,
                        1.0 => 0.5,
                        _ => ((i * C + j) as f64 * 0.37 + shift).rem_euclid(4.0) - 3.0,
                    })
                    .collect()
            })
            .collect()
    };
    let (f, g) = (logits(0.0), logits(1.3));
    (f, g, y)
}

/// Aggressive settings: peer and self removal of half the candidates, LL rejecting or
/// correcting 20% of all B·C entries per epoch (more than every unannotated entry by epoch 3),
/// Co-teaching and JoCoR dropping half the images.
fn aggressive() -> MethodConfig {
    MethodConfig { tau_h: 0.5, tau_l: 0.5, ll_delta: Some(20.0), forget_rate: 0.5, ..MethodConfig::default() }
}

struct Stepped {
    /// d loss / d logits, per network, flattened.
    grads: Vec<Vec<f64>>,
    /// Per network, the flagged entries (flat indices).
    flagged: Vec<Vec<usize>>,
    state: Vec<(String, Tensor)>,
}

fn step(name: &str, cfg: &MethodConfig, epoch: usize) -> Stepped {
    let (f, g, y) = batch();
    let mut m = build(name, cfg, B as i64, C as i64, Device::Cpu).unwrap();
    let nets: Vec<Tensor> =
        [f, g].iter().take(m.num_networks()).map(|l| t(l).set_requires_grad(true)).collect::<Vec<_>>();
    let (yt, it) = (t(&y), Tensor::arange(B as i64, (Kind::Int64, Device::Cpu)));
    let ctx = StepCtx { y: &yt, indices: &it, epoch, lr: 1e-3 };
    let out = m.step(&nets.iter().map(Tensor::shallow_clone).collect::<Vec<_>>(), &ctx);
    out.loss.backward();
    m.after_backward(&ctx);
    Stepped {
        grads: nets.iter().map(|x| vec_f(&x.grad())).collect(),
        flagged: out.flagged.iter().map(|f| set(&vec_b(f))).collect(),
        state: m.state(),
    }
}

fn observed_negatives() -> Vec<usize> {
    (0..B * C).filter(|&k| flat(&batch().2)[k] == -1.0).collect()
}

fn unannotated() -> Vec<usize> {
    (0..B * C).filter(|&k| flat(&batch().2)[k] == 0.0).collect()
}

#[test]
fn no_method_flags_an_observed_negative_and_every_loss_pushes_them_down() {
    let negs = observed_negatives();
    for method in MethodName::all() {
        let name = method.as_str();
        for epoch in [0, 1, 3, 12] {
            let s = step(name, &aggressive(), epoch);
            for (k, flagged) in s.flagged.iter().enumerate() {
                for n in &negs {
                    assert!(!flagged.contains(n), "{name} e={epoch}: network {k} flagged the observed negative {n}");
                }
            }
            for (k, grad) in s.grads.iter().enumerate() {
                for i in 0..B {
                    // An image a sample-selection method left out gets no gradient at all; every
                    // image that trains trains its observed negatives as negatives.
                    if grad[i * C..(i + 1) * C].iter().all(|&d| d == 0.0) {
                        assert!(
                            name.starts_with("co-teaching") || name == "jocor",
                            "{name} e={epoch}: image {i} of network {k} does not train"
                        );
                        continue;
                    }
                    for &n in negs.iter().filter(|&&n| n / C == i) {
                        assert!(
                            grad[n] > 0.0,
                            "{name} e={epoch}: network {k} does not push the observed negative {n} down (d/dx = {})",
                            grad[n]
                        );
                    }
                }
            }
        }
    }
}

/// How many removal or correction a method makes cannot change what an observed negative
/// trains on: its gradient is the one of the first epoch, when nothing is selected.
#[test]
fn selection_and_correction_leave_observed_negatives_as_they_are() {
    let negs = observed_negatives();
    for method in MethodName::all() {
        let name = method.as_str();
        if name.starts_with("co-teaching") || name == "jocor" {
            continue; // sample selection drops whole images, observed negatives with them
        }
        let first = step(name, &aggressive(), 0);
        for epoch in [1, 3, 12] {
            let later = step(name, &aggressive(), epoch);
            for (k, (g0, g1)) in first.grads.iter().zip(&later.grads).enumerate() {
                for &n in &negs {
                    close(g1[n], g0[n], &format!("{name} e={epoch} network {k}: d/dx at observed negative {n}"));
                }
            }
        }
    }
}

#[test]
fn cls_family_keeps_observed_negatives_out_of_the_candidates_and_in_the_label_sets() {
    let (f, g, _) = batch();
    let (negs, unann) = (observed_negatives(), unannotated());
    let n = unann.len();
    let cfg = aggressive();
    let epoch = 12; // the full rates: R_h = R_l = 0.5
    for variant in ["cls", "cls-h", "cls-l", "clc"] {
        let s = step(variant, &cfg, epoch);
        // Peer removal takes |N| − floor(R_h·|N|) entries, |N| counting unannotated entries only.
        let removed = if variant == "cls-h" { 0 } else { n - count_ref(0.5, n) };
        for (k, logits) in [&f, &g].iter().enumerate() {
            assert_eq!(s.flagged[k].len(), removed, "{variant} network {k}: flagged count");
            assert!(s.flagged[k].iter().all(|i| unann.contains(i)), "{variant}: flagged only unannotated entries");
            // Eq. (5)–(6): Y^f ⊇ P ∪ observed negatives, trained with target 0 (sum reduction).
            for &i in &negs {
                close(s.grads[k][i], sig(flat(logits)[i]) / B as f64, &format!("{variant} network {k} entry {i}"));
            }
        }
    }
}

#[test]
fn large_loss_and_splc_never_correct_an_observed_negative() {
    let (f, _, y) = batch();
    let negs = observed_negatives();
    let cfg = aggressive();
    // Epoch 3: LL takes floor(0.6·24) = 14 of the 15 unannotated entries; SPLC corrects every
    // unannotated entry with p > 0.6. The observed negatives (p ≈ 0.98) would be the first taken.
    for name in ["ll-r", "ll-ct", "ll-cp"] {
        let s = step(name, &cfg, 3);
        for &i in &negs {
            close(
                s.grads[0][i],
                sig(flat(&f)[i]) / B as f64,
                &format!("{name}: observed negative {i} trains as a negative"),
            );
        }
        if name == "ll-cp" {
            let stored = set(&vec_b(&s.state[0].1));
            assert!(!stored.is_empty(), "LL-Cp stored corrections");
            assert!(stored.iter().all(|k| flat(&y)[*k] == 0.0), "LL-Cp stored only unannotated entries: {stored:?}");
        }
    }
    let s = step("splc", &cfg, 3);
    for &i in &negs {
        // SPLC's negative term −p² log(1 − p), its derivative by central differences.
        let x = flat(&f)[i];
        let loss = |x: f64| -sig(x).powi(2) * (1.0 - sig(x)).ln() / B as f64;
        let h = 1e-5;
        close(s.grads[0][i], (loss(x + h) - loss(x - h)) / (2.0 * h), &format!("splc: observed negative {i}"));
    }
}
