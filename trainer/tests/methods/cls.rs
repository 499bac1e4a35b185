//! CLS, CLS-H, CLS-L and CLC: losses eq. (7)–(8), gradients, flags.

use super::common::*;
use cls_trainer::methods::*;
use tch::{Device, Kind, Tensor};

// ---------- CLS family, eq. (7)–(8), ablations ----------

fn cls_cfg(reduction: Reduction) -> MethodConfig {
    MethodConfig { tau_h: 0.3, tau_l: 0.5, reduction, ..MethodConfig::default() }
}

/// Reference loss and d loss / d logits of one CLS-family network.
fn cls_net_ref(
    own: &[f64],
    other: &[f64],
    y: &[f64],
    b: usize,
    epoch: usize,
    variant: &str,
    mean: bool,
) -> (f64, Vec<f64>, Vec<bool>) {
    let (r_h, r_l) = (rate_ref(epoch, 0.3), rate_ref(epoch, 0.5));
    let l0 = |v: &[f64]| v.iter().map(|&x| nl1p(x)).collect::<Vec<_>>();
    let (keep, flagged) = cls_select_ref(&l0(own), &l0(other), y, r_h, r_l, variant != "cls-h", variant != "cls-l");
    let clc = variant == "clc";
    let c = y.len() / b;
    let (mut loss, mut grad) = (0.0, vec![0.0; y.len()]);
    for i in 0..b {
        let row = i * c..(i + 1) * c;
        let kept: Vec<usize> = row.filter(|&k| keep[k] || (clc && flagged[k])).collect();
        let denom = if mean { (b * kept.len().max(1)) as f64 } else { b as f64 };
        for &k in &kept {
            let target = if y[k] == 1.0 || (clc && flagged[k]) { 1.0 } else { 0.0 };
            loss += bce(own[k], target) / denom;
            grad[k] = (sig(own[k]) - target) / denom;
        }
    }
    (loss, grad, flagged)
}

/// Steps `name` with gradients; returns (per_net, [grad_f, grad_g], flagged).
fn run_grad(
    name: &str,
    cfg: &MethodConfig,
    f: &M,
    g: &M,
    y: &M,
    epoch: usize,
) -> (Vec<f64>, Vec<Vec<f64>>, Vec<Vec<bool>>) {
    let mut m = build(name, cfg, y.len() as i64, y[0].len() as i64, Device::Cpu).unwrap();
    let (ft, gt) = (t(f).set_requires_grad(true), t(g).set_requires_grad(true));
    let (yt, it) = (t(y), Tensor::arange(y.len() as i64, (Kind::Int64, Device::Cpu)));
    let out = m.step(&[ft.shallow_clone(), gt.shallow_clone()], &StepCtx { y: &yt, indices: &it, epoch, lr: 1e-3 });
    out.loss.backward();
    close(vec_f(&out.loss)[0], out.per_net.iter().sum(), "loss = sum of per_net");
    (out.per_net, vec![vec_f(&ft.grad()), vec_f(&gt.grad())], out.flagged.iter().map(vec_b).collect())
}

#[test]
fn cls_family_losses_gradients_and_flags_match_reference() {
    let mut rng = Lcg(11);
    for case in 0..10 {
        let (b, c) = (2 + case % 4, 3 + case % 5);
        let (f, g, y) = (rng.logits(b, c), rng.logits(b, c), rng.labels(b, c));
        for variant in ["cls", "cls-h", "cls-l", "clc"] {
            for (reduction, mean) in [(Reduction::Sum, false), (Reduction::Mean, true)] {
                for epoch in [0, 4, 12] {
                    let what = format!("case {case} {variant} {reduction} e={epoch}");
                    let (per_net, grads, flagged) = run_grad(variant, &cls_cfg(reduction), &f, &g, &y, epoch);
                    let (lf, gf, ff) = cls_net_ref(&flat(&f), &flat(&g), &flat(&y), b, epoch, variant, mean);
                    let (lg, gg, fg) = cls_net_ref(&flat(&g), &flat(&f), &flat(&y), b, epoch, variant, mean);
                    close(per_net[0], lf, &format!("{what} L^f"));
                    close(per_net[1], lg, &format!("{what} L^g"));
                    for k in 0..gf.len() {
                        close(grads[0][k], gf[k], &format!("{what} dL/df[{k}]"));
                        close(grads[1][k], gg[k], &format!("{what} dL/dg[{k}]"));
                    }
                    assert_eq!(flagged[0], ff, "{what} flagged_f");
                    assert_eq!(flagged[1], fg, "{what} flagged_g");
                }
            }
        }
    }
}

#[test]
fn ablations_differ_from_cls_exactly_where_they_should() {
    let mut rng = Lcg(5);
    let (b, c) = (4, 6);
    let (f, g) = (rng.logits(b, c), rng.logits(b, c));
    let y: M = (0..b).map(|i| (0..c).map(|j| if j == i { 1.0 } else { 0.0 }).collect()).collect();
    let cfg = cls_cfg(Reduction::Sum);
    let (_, cls, cls_flags) = run_grad("cls", &cfg, &f, &g, &y, 20);
    let (_, cls_l, _) = run_grad("cls-l", &cfg, &f, &g, &y, 20);
    let (_, clc, _) = run_grad("clc", &cfg, &f, &g, &y, 20);
    let (_, cls_h, h_flags) = run_grad("cls-h", &cfg, &f, &g, &y, 20);
    let ff = &cls_flags[0];
    let n = flat(&y).iter().filter(|&&v| v == 0.0).count(); // 20 unannotated
    assert_eq!(set(ff).len(), n - count_ref(0.7, n)); // peer removes 20 − floor(0.7·20) = 6
    let self_removed = count_ref(0.7, n) - count_ref(0.5, count_ref(0.7, n)); // 14 − 7 = 7
                                                                              // CLS removes its entries: zero gradient exactly at the peer- and self-removed ones.
    assert_eq!(cls[0].iter().filter(|&&d| d == 0.0).count(), set(ff).len() + self_removed);
    for k in 0..b * c {
        let x = flat(&f)[k];
        if ff[k] {
            assert_eq!(cls[0][k], 0.0);
            assert_eq!(cls_l[0][k], 0.0, "CLS-L still removes the peer-flagged entry {k}");
            close(clc[0][k], (sig(x) - 1.0) / b as f64, "CLC trains flagged entries as positives");
        } else {
            assert_eq!(clc[0][k], cls[0][k], "CLC equals CLS off the flagged entries ({k})");
            if cls[0][k] == 0.0 {
                close(cls_l[0][k], sig(x) / b as f64, "CLS-L keeps the self-removed entries");
            } else {
                assert_eq!(cls_l[0][k], cls[0][k]);
            }
        }
    }
    // CLS-H flags nothing and keeps floor(0.5·|N|) negatives plus the positives.
    assert!(set(&h_flags[0]).is_empty());
    assert_eq!(cls_h[0].iter().filter(|&&d| d != 0.0).count(), count_ref(0.5, n) + b);
}

#[test]
fn first_epoch_of_cls_is_plain_bce_on_everything() {
    let mut rng = Lcg(3);
    let (f, g, y) = (rng.logits(3, 5), rng.logits(3, 5), rng.labels(3, 5));
    let (cls, _, flags) = run("cls", &MethodConfig::default(), &[f.clone(), g.clone()], &y, 0);
    let (an_f, _, _) = run("an", &MethodConfig::default(), &[f], &y, 0);
    let (an_g, _, _) = run("an", &MethodConfig::default(), &[g], &y, 0);
    close(cls, an_f + an_g, "epoch 0 keeps every entry");
    assert!(flags.iter().all(|f| f.is_empty()));
}
