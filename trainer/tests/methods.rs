//! Tests of trainer/src/methods against independent f64 references written here with plain loops
//! (method.md "One CLS step", "Schedules", "Ablations", "Baselines").

use cls_trainer::methods::losses::floor_count;
use cls_trainer::methods::schedule::keep_rate;
use cls_trainer::methods::selection::co_label_select;
use cls_trainer::methods::*;
use tch::{Device, Kind, Tensor};

type M = Vec<Vec<f64>>;

// ---------- f64 reference pieces ----------

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
fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
fn bce(x: f64, t: f64) -> f64 {
    t * nlp(x) + (1.0 - t) * nl1p(x)
}
fn flat(m: &M) -> Vec<f64> {
    m.iter().flatten().copied().collect()
}
/// Indices of `cands` ordered by value (ascending or descending), ties by index, first `count`.
fn pick_ref(vals: &[f64], cands: &[usize], count: usize, largest: bool) -> Vec<usize> {
    let mut c = cands.to_vec();
    c.sort_by(|&a, &b| {
        let o = vals[a].partial_cmp(&vals[b]).unwrap();
        (if largest { o.reverse() } else { o }).then(a.cmp(&b))
    });
    c.truncate(count);
    c
}
fn count_ref(r: f64, n: usize) -> usize {
    ((r * n as f64) + 1e-9).floor() as usize
}
fn rate_ref(e: usize, tau: f64) -> f64 {
    1.0 - (e as f64 / 10.0 * tau).min(tau)
}

// ---------- tensor plumbing ----------

fn t(m: &M) -> Tensor {
    let (b, c) = (m.len() as i64, m[0].len() as i64);
    let v: Vec<f32> = flat(m).iter().map(|&x| x as f32).collect();
    Tensor::from_slice(&v).reshape([b, c])
}
fn vec_f(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.detach().to_kind(Kind::Double).reshape([-1])).unwrap()
}
fn vec_b(t: &Tensor) -> Vec<bool> {
    vec_f(&t.to_kind(Kind::Double))
        .iter()
        .map(|&v| v != 0.0)
        .collect()
}
fn set(mask: &[bool]) -> Vec<usize> {
    mask.iter()
        .enumerate()
        .filter(|(_, &b)| b)
        .map(|(i, _)| i)
        .collect()
}
fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
        "{what}: got {a}, expected {b}"
    );
}

/// Runs one step of `name` and returns (loss, per_net, flagged as index sets).
fn run(
    name: &str,
    cfg: &MethodConfig,
    logits: &[M],
    y: &M,
    epoch: usize,
) -> (f64, Vec<f64>, Vec<Vec<usize>>) {
    let mut m = build(name, cfg, y.len() as i64, y[0].len() as i64, Device::Cpu).unwrap();
    run_on(
        m.as_mut(),
        logits,
        y,
        &(0..y.len() as i64).collect::<Vec<_>>(),
        epoch,
    )
}
fn run_on(
    m: &mut dyn Method,
    logits: &[M],
    y: &M,
    idx: &[i64],
    epoch: usize,
) -> (f64, Vec<f64>, Vec<Vec<usize>>) {
    let (yt, it) = (t(y), Tensor::from_slice(idx));
    let ctx = StepCtx {
        y: &yt,
        indices: &it,
        epoch,
        lr: 1e-3,
    };
    let ls: Vec<Tensor> = logits.iter().map(t).collect();
    let out = m.step(&ls, &ctx);
    assert_eq!(out.per_net.len(), m.num_networks());
    let flagged = out.flagged.iter().map(|f| set(&vec_b(f))).collect();
    (vec_f(&out.loss)[0], out.per_net, flagged)
}

/// A deterministic generator of quantised logits (many exact ties) and labels.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn logits(&mut self, b: usize, c: usize) -> M {
        (0..b)
            .map(|_| {
                (0..c)
                    .map(|_| (self.next() % 17) as f64 * 0.5 - 4.0)
                    .collect()
            })
            .collect()
    }
    fn labels(&mut self, b: usize, c: usize) -> M {
        (0..b)
            .map(|_| {
                (0..c)
                    .map(|_| [1.0, 0.0, 0.0, 0.0, 0.0, -1.0][(self.next() % 6) as usize])
                    .collect()
            })
            .collect()
    }
}

// ---------- schedule and selection, eq. (1)–(6) ----------

#[test]
fn schedule_ramps_over_completed_epochs() {
    assert_eq!(keep_rate(0, 10.0, 0.06), 1.0);
    close(keep_rate(1, 10.0, 0.06), 0.994, "e=1");
    close(keep_rate(10, 10.0, 0.06), 0.94, "e=10");
    close(keep_rate(11, 10.0, 0.06), 0.94, "e=11");
    close(keep_rate(5, 10.0, 0.012), 0.994, "e=5 tau_h");
    close(keep_rate(0, 0.0, 0.2), 0.8, "no ramp");
    assert_eq!(floor_count(0.988, 1000), 988);
    assert_eq!(floor_count(0.74, 4), 2);
}

#[test]
fn selection_ties_go_to_the_lower_flat_index() {
    let equal = Tensor::full([2, 3], 0.7, (Kind::Float, Device::Cpu));
    let n = Tensor::ones([2, 3], (Kind::Bool, Device::Cpu));
    // Peer: floor(0.5·6) = 3 smallest of six equal losses → flat 0, 1, 2.
    // Self: floor(0.7·3) = 2 largest of those three → flat 0, 1.
    let s = co_label_select(&equal, &equal, &n, 0.5, 0.7, true, true);
    assert_eq!(set(&vec_b(&s.keep_f)), vec![0, 1]);
    assert_eq!(set(&vec_b(&s.keep_g)), vec![0, 1]);
    assert_eq!(set(&vec_b(&s.flagged_f)), vec![3, 4, 5]);
}

#[test]
fn selection_hand_computed_with_positives_and_observed_negatives() {
    // flat:          0    1    2    3     4    5
    let loss_f = vec![vec![0.6, 0.1, 0.2], vec![0.01, 0.8, 0.05]];
    let loss_g = vec![vec![0.1, 0.5, 0.3], vec![0.9, 0.2, 0.4]];
    let y = vec![vec![1.0, 0.0, 0.0], vec![0.0, -1.0, 0.0]]; // N = {1, 2, 3, 5}
    let n = t(&y).eq(0.0);
    let s = co_label_select(&t(&loss_f), &t(&loss_g), &n, 0.75, 0.67, true, true);
    // N_f: 3 smallest loss_g in N = {2 (0.3), 5 (0.4), 1 (0.5)}; N_f': 2 largest loss_f = {2, 1}.
    assert_eq!(set(&vec_b(&s.keep_f)), vec![0, 1, 2, 4]);
    assert_eq!(set(&vec_b(&s.flagged_f)), vec![3]);
    // N_g: 3 smallest loss_f in N = {3 (0.01), 5 (0.05), 1 (0.1)}; N_g': 2 largest loss_g = {3, 1}.
    assert_eq!(set(&vec_b(&s.keep_g)), vec![0, 1, 3, 4]);
    assert_eq!(set(&vec_b(&s.flagged_g)), vec![2]);
    // floor(0.74·4) = 2; without self selection N_f' = N_f = {2, 5}.
    let s = co_label_select(&t(&loss_f), &t(&loss_g), &n, 0.74, 0.67, true, false);
    assert_eq!(set(&vec_b(&s.keep_f)), vec![0, 2, 4, 5]);
    // Without peer selection nothing is flagged and N_f = N: 2 largest loss_f of N = {2, 1}.
    let s = co_label_select(&t(&loss_f), &t(&loss_g), &n, 0.5, 0.5, false, true);
    assert_eq!(set(&vec_b(&s.keep_f)), vec![0, 1, 2, 4]);
    assert!(set(&vec_b(&s.flagged_f)).is_empty());
}

/// Reference CLS selection for f (eq. 1, 3, 5): returns (kept flat indices' mask, flagged mask).
fn cls_select_ref(
    own: &[f64],
    other: &[f64],
    y: &[f64],
    r_h: f64,
    r_l: f64,
    peer: bool,
    self_: bool,
) -> (Vec<bool>, Vec<bool>) {
    let n: Vec<usize> = (0..y.len()).filter(|&i| y[i] == 0.0).collect();
    let nf = if peer {
        pick_ref(other, &n, count_ref(r_h, n.len()), false)
    } else {
        n.clone()
    };
    let nf2 = if self_ {
        pick_ref(own, &nf, count_ref(r_l, nf.len()), true)
    } else {
        nf.clone()
    };
    let keep = (0..y.len())
        .map(|i| y[i] != 0.0 || nf2.contains(&i))
        .collect();
    let flagged = (0..y.len())
        .map(|i| y[i] == 0.0 && !nf.contains(&i))
        .collect();
    (keep, flagged)
}

#[test]
fn selection_matches_reference_on_random_batches_with_ties() {
    let mut rng = Lcg(7);
    for case in 0..40 {
        let (b, c) = (1 + case % 5, 2 + case % 7);
        let (f, g, y) = (rng.logits(b, c), rng.logits(b, c), rng.labels(b, c));
        let (lf, lg): (Vec<f64>, Vec<f64>) = (
            flat(&f).iter().map(|&x| nl1p(x)).collect(),
            flat(&g).iter().map(|&x| nl1p(x)).collect(),
        );
        let (r_h, r_l) = (
            0.3 + 0.1 * (case % 6) as f64,
            0.5 + 0.05 * (case % 9) as f64,
        );
        let s = co_label_select(
            &t(&f).softplus(),
            &t(&g).softplus(),
            &t(&y).eq(0.0),
            r_h,
            r_l,
            true,
            true,
        );
        let (kf, ff) = cls_select_ref(&lf, &lg, &flat(&y), r_h, r_l, true, true);
        let (kg, fg) = cls_select_ref(&lg, &lf, &flat(&y), r_h, r_l, true, true);
        assert_eq!(vec_b(&s.keep_f), kf, "case {case} keep_f");
        assert_eq!(vec_b(&s.flagged_f), ff, "case {case} flagged_f");
        assert_eq!(vec_b(&s.keep_g), kg, "case {case} keep_g");
        assert_eq!(vec_b(&s.flagged_g), fg, "case {case} flagged_g");
    }
}

// ---------- CLS family, eq. (7)–(8), ablations ----------

fn cls_cfg(reduction: Reduction) -> MethodConfig {
    MethodConfig {
        tau_h: 0.3,
        tau_l: 0.5,
        reduction,
        ..MethodConfig::default()
    }
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
    let (keep, flagged) = cls_select_ref(
        &l0(own),
        &l0(other),
        y,
        r_h,
        r_l,
        variant != "cls-h",
        variant != "cls-l",
    );
    let clc = variant == "clc";
    let c = y.len() / b;
    let (mut loss, mut grad) = (0.0, vec![0.0; y.len()]);
    for i in 0..b {
        let row = i * c..(i + 1) * c;
        let kept: Vec<usize> = row.filter(|&k| keep[k] || (clc && flagged[k])).collect();
        let denom = if mean {
            (b * kept.len().max(1)) as f64
        } else {
            b as f64
        };
        for &k in &kept {
            let target = if y[k] == 1.0 || (clc && flagged[k]) {
                1.0
            } else {
                0.0
            };
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
    let (yt, it) = (
        t(y),
        Tensor::arange(y.len() as i64, (Kind::Int64, Device::Cpu)),
    );
    let out = m.step(
        &[ft.shallow_clone(), gt.shallow_clone()],
        &StepCtx {
            y: &yt,
            indices: &it,
            epoch,
            lr: 1e-3,
        },
    );
    out.loss.backward();
    close(
        vec_f(&out.loss)[0],
        out.per_net.iter().sum(),
        "loss = sum of per_net",
    );
    (
        out.per_net,
        vec![vec_f(&ft.grad()), vec_f(&gt.grad())],
        out.flagged.iter().map(vec_b).collect(),
    )
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
                    let (per_net, grads, flagged) =
                        run_grad(variant, &cls_cfg(reduction), &f, &g, &y, epoch);
                    let (lf, gf, ff) =
                        cls_net_ref(&flat(&f), &flat(&g), &flat(&y), b, epoch, variant, mean);
                    let (lg, gg, fg) =
                        cls_net_ref(&flat(&g), &flat(&f), &flat(&y), b, epoch, variant, mean);
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
    let y: M = (0..b)
        .map(|i| (0..c).map(|j| if j == i { 1.0 } else { 0.0 }).collect())
        .collect();
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
    assert_eq!(
        cls[0].iter().filter(|&&d| d == 0.0).count(),
        set(ff).len() + self_removed
    );
    for k in 0..b * c {
        let x = flat(&f)[k];
        if ff[k] {
            assert_eq!(cls[0][k], 0.0);
            assert_eq!(
                cls_l[0][k], 0.0,
                "CLS-L still removes the peer-flagged entry {k}"
            );
            close(
                clc[0][k],
                (sig(x) - 1.0) / b as f64,
                "CLC trains flagged entries as positives",
            );
        } else {
            assert_eq!(
                clc[0][k], cls[0][k],
                "CLC equals CLS off the flagged entries ({k})"
            );
            if cls[0][k] == 0.0 {
                close(
                    cls_l[0][k],
                    sig(x) / b as f64,
                    "CLS-L keeps the self-removed entries",
                );
            } else {
                assert_eq!(cls_l[0][k], cls[0][k]);
            }
        }
    }
    // CLS-H flags nothing and keeps floor(0.5·|N|) negatives plus the positives.
    assert!(set(&h_flags[0]).is_empty());
    assert_eq!(
        cls_h[0].iter().filter(|&&d| d != 0.0).count(),
        count_ref(0.5, n) + b
    );
}

#[test]
fn first_epoch_of_cls_is_plain_bce_on_everything() {
    let mut rng = Lcg(3);
    let (f, g, y) = (rng.logits(3, 5), rng.logits(3, 5), rng.labels(3, 5));
    let (cls, _, flags) = run(
        "cls",
        &MethodConfig::default(),
        &[f.clone(), g.clone()],
        &y,
        0,
    );
    let (an_f, _, _) = run("an", &MethodConfig::default(), &[f], &y, 0);
    let (an_g, _, _) = run("an", &MethodConfig::default(), &[g], &y, 0);
    close(cls, an_f + an_g, "epoch 0 keeps every entry");
    assert!(flags.iter().all(|f| f.is_empty()));
}

// ---------- single-network baselines ----------

/// (1/B) Σ over all entries of `per_entry(x, y)`.
fn sum_ref(x: &M, y: &M, per_entry: impl Fn(f64, f64) -> f64) -> f64 {
    let s: f64 = flat(x)
        .iter()
        .zip(flat(y))
        .map(|(&x, y)| per_entry(x, y))
        .sum();
    s / x.len() as f64
}
fn epr_reg(p: &M, k: f64) -> f64 {
    let c = p[0].len() as f64;
    let mean: f64 = p.iter().map(|row| row.iter().sum::<f64>()).sum::<f64>() / p.len() as f64;
    (mean - k).powi(2) / (c * c)
}
fn sigm(x: &M) -> M {
    x.iter()
        .map(|r| r.iter().map(|&v| sig(v)).collect())
        .collect()
}

#[test]
fn single_network_baselines_match_their_formulas() {
    let mut rng = Lcg(21);
    let cfg = MethodConfig::default();
    for case in 0..6 {
        let (b, c) = (2 + case % 3, 4 + case % 4);
        let (x, y) = (rng.logits(b, c), rng.labels(b, c));
        let c_f = c as f64;
        let pos = |y: f64| y == 1.0;
        let expect = [
            (
                "an",
                sum_ref(&x, &y, |x, y| bce(x, if pos(y) { 1.0 } else { 0.0 })),
            ),
            (
                "an-ls",
                sum_ref(&x, &y, |x, y| bce(x, if pos(y) { 0.95 } else { 0.05 })),
            ),
            (
                "wan",
                sum_ref(&x, &y, |x, y| match y {
                    1.0 => nlp(x),
                    0.0 => nl1p(x) / (c_f - 1.0),
                    _ => nl1p(x),
                }),
            ),
            (
                "epr",
                sum_ref(&x, &y, |x, y| match y {
                    1.0 => nlp(x),
                    0.0 => 0.0,
                    _ => nl1p(x),
                }) + epr_reg(&sigm(&x), 3.0),
            ),
            (
                "asl",
                sum_ref(&x, &y, |x, y| {
                    let pm = (sig(x) - 0.05).max(0.0);
                    if pos(y) {
                        -sig(x).ln()
                    } else {
                        -pm.powi(4) * (1.0 - pm).ln()
                    }
                }),
            ),
            (
                "hill",
                sum_ref(&x, &y, |x, y| {
                    let p = sig(x);
                    if pos(y) {
                        -(1.0 - sig(x - 1.0)).powi(2) * sig(x - 1.0).ln()
                    } else {
                        (1.5 - p) * p * p
                    }
                }),
            ),
            (
                "em",
                sum_ref(&x, &y, |x, y| {
                    let p = sig(x);
                    match y {
                        1.0 => -p.ln(),
                        0.0 => 0.1 * (p * p.ln() + (1.0 - p) * (1.0 - p).ln()),
                        _ => -(1.0 - p).ln(),
                    }
                }),
            ),
        ];
        for (name, want) in expect {
            let (loss, per_net, flagged) = run(name, &cfg, std::slice::from_ref(&x), &y, 3);
            close(loss, want, &format!("case {case} {name}"));
            close(per_net[0], want, &format!("case {case} {name} per_net"));
            assert!(flagged.iter().all(|f| f.is_empty()), "{name} flags nothing");
        }
    }
}

#[test]
fn splc_corrects_confident_unannotated_entries_from_epoch_one() {
    let x = vec![vec![2.0, 0.4, 1.0, -1.0], vec![0.3, 3.0, -2.0, 0.41]];
    let y = vec![vec![1.0, 0.0, 0.0, 0.0], vec![0.0, -1.0, 0.0, 0.0]];
    // p > 0.6 ⇔ x > 0.405: flat 2 (x = 1) and 7 (x = 0.41) are unannotated and corrected, flat 1
    // (x = 0.4) is not;
    // flat 5 (x = 3) is an observed negative and never corrected.
    let entry = |x: f64, y: f64, corrected: bool| {
        let p = sig(x);
        if y == 1.0 {
            -(1.0 - sig(x - 1.0)).powi(2) * sig(x - 1.0).ln()
        } else if corrected {
            -(1.0 - p).powi(2) * p.ln()
        } else {
            -p * p * (1.0 - p).ln()
        }
    };
    for epoch in [0, 1, 5] {
        let (loss, _, flagged) = run(
            "splc",
            &MethodConfig::default(),
            std::slice::from_ref(&x),
            &y,
            epoch,
        );
        let mut want = 0.0;
        for k in 0..8 {
            let corrected = epoch >= 1 && (k == 2 || k == 7);
            want += entry(flat(&x)[k], flat(&y)[k], corrected) / 2.0;
        }
        close(loss, want, &format!("splc e={epoch}"));
        assert_eq!(flagged[0], if epoch == 0 { vec![] } else { vec![2, 7] });
    }
}

/// Reference LL: (loss, flagged) with `count` largest AN losses of the unannotated entries.
fn ll_ref(x: &M, y: &M, epoch: usize, delta: f64, mode: &str) -> (f64, Vec<usize>) {
    let (xf, yf) = (flat(x), flat(y));
    let an: Vec<f64> = xf
        .iter()
        .zip(&yf)
        .map(|(&x, &y)| bce(x, if y == 1.0 { 1.0 } else { 0.0 }))
        .collect();
    let n: Vec<usize> = (0..yf.len()).filter(|&k| yf[k] == 0.0).collect();
    let count = count_ref((epoch as f64 * delta / 100.0).min(1.0), yf.len()).min(n.len());
    let large = pick_ref(&an, &n, count, true);
    let mut loss = 0.0;
    for k in 0..yf.len() {
        loss += match (large.contains(&k), mode) {
            (false, _) => an[k],
            (true, "ll-r") => 0.0,
            (true, _) => nlp(xf[k]),
        };
    }
    let mut large = large;
    large.sort();
    (loss / x.len() as f64, large)
}

#[test]
fn large_loss_methods_match_reference() {
    let mut rng = Lcg(33);
    for case in 0..6 {
        let (b, c) = (3 + case % 3, 5 + case % 4);
        let (x, y) = (rng.logits(b, c), rng.labels(b, c));
        for (name, delta) in [
            ("ll-r", 0.5),
            ("ll-ct", 0.2),
            ("ll-cp", 0.1),
            ("ll-r", 4.0),
            ("ll-ct", 7.0),
            ("ll-cp", 9.0),
        ] {
            let cfg = MethodConfig {
                ll_delta: Some(delta),
                ..MethodConfig::default()
            };
            for epoch in [0, 1, 3] {
                let (loss, _, flagged) = run(name, &cfg, std::slice::from_ref(&x), &y, epoch);
                let (want, large) = ll_ref(&x, &y, epoch, delta, name);
                close(
                    loss,
                    want,
                    &format!("case {case} {name} Δ={delta} e={epoch}"),
                );
                assert_eq!(
                    flagged[0], large,
                    "case {case} {name} Δ={delta} e={epoch} flagged"
                );
            }
        }
    }
    // Defaults: Δ = 0.5 % for LL-R, so 2 completed epochs on a 10×20 batch reject floor(0.01·200) = 2.
    let x: M = (0..10)
        .map(|i| {
            (0..20)
                .map(|j| ((i * 20 + j) % 13) as f64 * 0.3 - 2.0)
                .collect()
        })
        .collect();
    let y: M = (0..10)
        .map(|i| (0..20).map(|j| if j == i { 1.0 } else { 0.0 }).collect())
        .collect();
    let (loss, _, flagged) = run(
        "ll-r",
        &MethodConfig::default(),
        std::slice::from_ref(&x),
        &y,
        2,
    );
    let (want, large) = ll_ref(&x, &y, 2, 0.5, "ll-r");
    assert_eq!(large.len(), 2);
    assert_eq!(flagged[0], large);
    close(loss, want, "ll-r default Δ");
}

#[test]
fn ll_cp_corrections_persist_and_round_trip_through_state() {
    let cfg = MethodConfig {
        ll_delta: Some(25.0),
        ..MethodConfig::default()
    };
    let x = vec![vec![3.0, -1.0, 2.0, 0.0], vec![-2.0, 1.0, 0.5, -3.0]];
    let y = vec![vec![1.0, 0.0, 0.0, 0.0], vec![0.0, 0.0, 0.0, -1.0]];
    let mut m = build("ll-cp", &cfg, 5, 4, Device::Cpu).unwrap();
    // Epoch 1: floor(0.25·8) = 2 largest unannotated losses: flat 2 (x = 2) and 5 (x = 1).
    let (_, _, flagged) = run_on(m.as_mut(), std::slice::from_ref(&x), &y, &[3, 1], 1);
    assert_eq!(flagged[0], vec![2, 5]);
    let state = m.state();
    assert_eq!(state.len(), 1);
    let stored = vec_b(&state[0].1);
    let expected: Vec<usize> = vec![4 + 1, 3 * 4 + 2]; // row 1 class 1, row 3 class 2
    assert_eq!(set(&stored), expected);
    // A fresh LL-Cp restored from that state trains those entries as positives at epoch 0 already.
    let mut restored = build("ll-cp", &cfg, 5, 4, Device::Cpu).unwrap();
    restored.load_state(&state).unwrap();
    let (loss, _, flagged) = run_on(restored.as_mut(), std::slice::from_ref(&x), &y, &[3, 1], 0);
    let mut y_corrected = y.clone();
    y_corrected[0][2] = 1.0;
    y_corrected[1][1] = 1.0;
    close(
        loss,
        sum_ref(&x, &y_corrected, |x, y| {
            bce(x, if y == 1.0 { 1.0 } else { 0.0 })
        }),
        "stored corrections",
    );
    assert_eq!(flagged[0], vec![2, 5]);
    assert!(restored.load_state(&[]).is_err());
    let wrong = vec![(
        "ll-cp.corrected".to_string(),
        Tensor::zeros([2, 2], (Kind::Bool, Device::Cpu)),
    )];
    assert!(restored.load_state(&wrong).is_err());
}

// ---------- two-network sample selection: Co-teaching, Co-teaching+, JoCoR ----------

fn per_sample_an(x: &M, y: &M) -> Vec<f64> {
    x.iter()
        .zip(y)
        .map(|(xr, yr)| {
            xr.iter()
                .zip(yr)
                .map(|(&x, &y)| bce(x, if y == 1.0 { 1.0 } else { 0.0 }))
                .sum()
        })
        .collect()
}
/// Flat indices of the unannotated entries in samples not in `kept`.
fn removed_ref(y: &M, kept: &[usize]) -> Vec<usize> {
    let c = y[0].len();
    (0..y.len() * c)
        .filter(|&k| y[k / c][k % c] == 0.0 && !kept.contains(&(k / c)))
        .collect()
}

#[test]
fn coteaching_and_coteaching_plus_match_reference() {
    let mut rng = Lcg(44);
    let cfg = MethodConfig {
        forget_rate: 0.4,
        ..MethodConfig::default()
    };
    for case in 0..8 {
        let (b, c) = (3 + case % 5, 3 + case % 3);
        let (f, g, y) = (rng.logits(b, c), rng.logits(b, c), rng.labels(b, c));
        let (lf, lg) = (per_sample_an(&f, &y), per_sample_an(&g, &y));
        for plus in [false, true] {
            for epoch in [0, 1, 5, 30] {
                let name = if plus {
                    "co-teaching-plus"
                } else {
                    "co-teaching"
                };
                let candidates: Vec<usize> = (0..b)
                    .filter(|&i| {
                        !plus || epoch < 1 || (0..c).any(|j| (f[i][j] > 0.0) != (g[i][j] > 0.0))
                    })
                    .collect();
                let count = count_ref(rate_ref(epoch, 0.4), candidates.len());
                let for_g = pick_ref(&lf, &candidates, count, false);
                let for_f = pick_ref(&lg, &candidates, count, false);
                let want_f: f64 = for_f.iter().map(|&i| lf[i]).sum::<f64>() / b as f64;
                let want_g: f64 = for_g.iter().map(|&i| lg[i]).sum::<f64>() / b as f64;
                let (loss, per_net, flagged) = run(name, &cfg, &[f.clone(), g.clone()], &y, epoch);
                let what = format!("case {case} {name} e={epoch}");
                close(per_net[0], want_f, &format!("{what} f"));
                close(per_net[1], want_g, &format!("{what} g"));
                close(loss, want_f + want_g, &what);
                assert_eq!(flagged[0], removed_ref(&y, &for_f), "{what} flagged f");
                assert_eq!(flagged[1], removed_ref(&y, &for_g), "{what} flagged g");
            }
        }
    }
}

#[test]
fn coteaching_plus_without_disagreement_trains_nothing() {
    let f = vec![vec![1.0, -2.0], vec![-1.0, 3.0]];
    let g = vec![vec![2.0, -1.0], vec![-3.0, 1.0]]; // same signs: no disagreement
    let y = vec![vec![1.0, 0.0], vec![0.0, 0.0]];
    let (loss, _, _) = run(
        "co-teaching-plus",
        &MethodConfig::default(),
        &[f.clone(), g.clone()],
        &y,
        2,
    );
    assert_eq!(loss, 0.0);
    let (loss, _, _) = run("co-teaching", &MethodConfig::default(), &[f, g], &y, 2);
    assert!(loss > 0.0);
}

fn kl_ref(a: f64, b: f64) -> f64 {
    let (p, q) = (sig(a), sig(b));
    p * (p / q).ln() + (1.0 - p) * ((1.0 - p) / (1.0 - q)).ln()
}

#[test]
fn jocor_matches_reference() {
    let mut rng = Lcg(55);
    for case in 0..6 {
        let (b, c) = (3 + case % 4, 2 + case % 4);
        let (f, g, y) = (rng.logits(b, c), rng.logits(b, c), rng.labels(b, c));
        let lambda = 0.3 + 0.1 * case as f64;
        let cfg = MethodConfig {
            jocor_lambda: lambda,
            forget_rate: 0.5,
            ..MethodConfig::default()
        };
        let (lf, lg) = (per_sample_an(&f, &y), per_sample_an(&g, &y));
        let part = |i: usize, a: &M, b_: &M, l: &[f64]| {
            (1.0 - lambda) * l[i] + lambda * (0..c).map(|j| kl_ref(a[i][j], b_[i][j])).sum::<f64>()
        };
        let pf: Vec<f64> = (0..b).map(|i| part(i, &f, &g, &lf)).collect();
        let pg: Vec<f64> = (0..b).map(|i| part(i, &g, &f, &lg)).collect();
        let joint: Vec<f64> = (0..b).map(|i| pf[i] + pg[i]).collect();
        for epoch in [0, 3, 10] {
            let kept = pick_ref(
                &joint,
                &(0..b).collect::<Vec<_>>(),
                count_ref(rate_ref(epoch, 0.5), b),
                false,
            );
            let want_f: f64 = kept.iter().map(|&i| pf[i]).sum::<f64>() / b as f64;
            let want_g: f64 = kept.iter().map(|&i| pg[i]).sum::<f64>() / b as f64;
            let (loss, per_net, flagged) = run("jocor", &cfg, &[f.clone(), g.clone()], &y, epoch);
            let what = format!("case {case} jocor e={epoch}");
            close(loss, want_f + want_g, &what);
            close(per_net[0], want_f, &format!("{what} f"));
            close(per_net[1], want_g, &format!("{what} g"));
            assert_eq!(flagged[0], removed_ref(&y, &kept));
            assert_eq!(flagged[1], removed_ref(&y, &kept));
        }
    }
}

// ---------- ROLE ----------

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

#[test]
fn role_loss_initialisation_updates_and_state_round_trip() {
    let cfg = MethodConfig::default();
    let (n_train, c) = (6usize, 5usize);
    let mut rng = Lcg(66);
    let (x, y) = (rng.logits(3, c), rng.labels(3, c));
    let idx = [4i64, 0, 2];
    let mut m = build("role", &cfg, n_train as i64, c as i64, Device::Cpu).unwrap();
    let before = vec_f(&m.state()[0].1);
    let xt = t(&x).set_requires_grad(true);
    let (yt, it) = (t(&y), Tensor::from_slice(&idx));
    let ctx = StepCtx {
        y: &yt,
        indices: &it,
        epoch: 0,
        lr: 1e-3,
    };
    let out = m.step(&[xt.shallow_clone()], &ctx);
    // Initialisation: observed positives of the batch rows at logit(0.995), the rest in
    // [logit(0.4), logit(0.6)].
    let est = vec_f(&m.state()[0].1);
    for r in 0..n_train {
        for j in 0..c {
            let v = est[r * c + j];
            match idx.iter().position(|&i| i as usize == r) {
                Some(bi) if y[bi][j] == 1.0 => close(v, logit(0.995), "positive estimate"),
                _ => {
                    assert!(
                        v >= logit(0.4) - 1e-6 && v <= logit(0.6) + 1e-6,
                        "estimate {v} out of range"
                    );
                    assert_eq!(v, before[r * c + j]);
                }
            }
        }
    }
    // The loss against an f64 reference built from those estimates.
    let e: M = idx
        .iter()
        .map(|&r| (0..c).map(|j| est[r as usize * c + j]).collect())
        .collect();
    let mut sum = 0.0;
    for i in 0..3 {
        for j in 0..c {
            let (a, q) = (x[i][j], e[i][j]);
            sum += match y[i][j] {
                1.0 => 0.5 * (nlp(a) + nlp(q)) + 0.5 * (bce(a, sig(q)) + bce(q, sig(a))),
                0.0 => 0.5 * (bce(a, sig(q)) + bce(q, sig(a))),
                _ => 0.5 * (nl1p(a) + nl1p(q)),
            };
        }
    }
    let want = sum / 3.0 + 0.5 * (epr_reg(&sigm(&x), 3.0) + epr_reg(&sigm(&e), 3.0));
    close(vec_f(&out.loss)[0], want, "ROLE loss");
    // Backward + the estimate step move exactly the batch rows (stop-gradients keep the network's
    // gradient to its own terms: it equals the gradient of the terms that involve p directly).
    out.loss.backward();
    m.after_backward(&ctx);
    let after = vec_f(&m.state()[0].1);
    for r in 0..n_train {
        let moved = (0..c).any(|j| after[r * c + j] != est[r * c + j]);
        assert_eq!(moved, idx.contains(&(r as i64)), "row {r} moved = {moved}");
    }
    let grad = vec_f(&xt.grad());
    for i in 0..3 {
        for j in 0..c {
            let (a, q) = (x[i][j], e[i][j]);
            let p = sig(a);
            let mean: f64 = (0..3)
                .map(|r| (0..c).map(|k| sig(x[r][k])).sum::<f64>())
                .sum::<f64>()
                / 3.0;
            let reg = 0.5 * 2.0 * (mean - 3.0) / (c * c) as f64 / 3.0 * p * (1.0 - p);
            let own = match y[i][j] {
                1.0 => 0.5 * (p - 1.0) + 0.5 * (p - sig(q)),
                0.0 => 0.5 * (p - sig(q)),
                _ => 0.5 * p,
            };
            close(
                grad[i * c + j],
                own / 3.0 + reg,
                &format!("ROLE dL/dx[{i},{j}]"),
            );
        }
    }
    // State round trip.
    let state = m.state();
    let mut other = build("role", &cfg, n_train as i64, c as i64, Device::Cpu).unwrap();
    other.load_state(&state).unwrap();
    for ((na, a), (nb, b)) in state.iter().zip(other.state()) {
        assert_eq!(na, &nb);
        assert_eq!(vec_f(a), vec_f(&b), "{na} round trip");
    }
    // Restored rows are already initialised: a second step leaves their estimates alone.
    let _ = other.step(&[t(&x)], &ctx);
    assert_eq!(vec_f(&other.state()[0].1), after);
    assert!(other.load_state(&state[..1]).is_err());
}

// ---------- registry, configuration, τ tables ----------

#[test]
fn build_knows_every_method_and_rejects_the_rest() {
    for &name in METHODS {
        let m = build(name, &MethodConfig::default(), 10, 4, Device::Cpu).unwrap();
        assert_eq!(m.name(), name);
        let two = [
            "cls",
            "cls-h",
            "cls-l",
            "clc",
            "co-teaching",
            "co-teaching-plus",
            "jocor",
        ]
        .contains(&name);
        assert_eq!(m.num_networks(), if two { 2 } else { 1 }, "{name}");
    }
    let err = build("cls-x", &MethodConfig::default(), 10, 4, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cls-x") && err.contains("co-teaching-plus"),
        "{err}"
    );
    let bad = MethodConfig {
        tau_h: 1.5,
        ..MethodConfig::default()
    };
    let err = build("cls", &bad, 10, 4, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tau_h"), "{err}");
    assert!(build("role", &MethodConfig::default(), 0, 4, Device::Cpu).is_err());
}

#[test]
fn reduction_parses_and_serialises_lowercase() {
    assert_eq!("sum".parse::<Reduction>().unwrap(), Reduction::Sum);
    assert_eq!("Mean".parse::<Reduction>().unwrap(), Reduction::Mean);
    assert!("avg".parse::<Reduction>().is_err());
    assert_eq!(serde_json::to_string(&Reduction::Mean).unwrap(), "\"mean\"");
    let cfg = MethodConfig {
        reduction: Reduction::Mean,
        ll_delta: Some(0.1),
        ..MethodConfig::default()
    };
    let back: MethodConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    let partial: MethodConfig = serde_json::from_str(r#"{"tau_h": 0.02}"#).unwrap();
    assert_eq!(partial.tau_h, 0.02);
    assert_eq!(partial.tau_l, 0.06);
    assert_eq!(partial.e_k, 10.0);
}

#[test]
fn paper_tau_table_and_auto_tau() {
    assert_eq!(default_tau("VOC2007", "0.75"), Some((0.002, 0.02)));
    assert_eq!(default_tau("voc", "single"), Some((0.005, 0.02)));
    assert_eq!(default_tau("coco2014", "0.5"), Some((0.010, 0.06)));
    assert_eq!(default_tau("COCO", "0.25"), Some((0.012, 0.06)));
    assert_eq!(default_tau("nus-wide", "0.50"), Some((0.012, 0.06)));
    assert_eq!(default_tau("nuswide", "single"), Some((0.020, 0.06)));
    assert_eq!(default_tau("corel5k", "single"), None);
    assert_eq!(default_tau("coco", "0.6"), None);
    assert_eq!(default_tau("coco", "full"), None);
    // h = (k − k_obs)/(C − k_obs): (2.9 − 1)/(80 − 1) = 0.02405; τ_h = h/2.
    close(auto_tau_h(2.9, 1.0, 80.0), 1.9 / 79.0 / 2.0, "COCO single");
    assert_eq!(auto_tau_h(1.0, 2.0, 80.0), 0.0);
    assert_eq!(auto_tau_h(3.0, 3.0, 3.0), 0.0);
    assert_eq!(auto_tau_h(70.0, 0.0, 60.0), 0.5);
}

#[test]
fn half_precision_logits_are_computed_in_f32() {
    let mut rng = Lcg(77);
    let (x, y) = (rng.logits(4, 6), rng.labels(4, 6));
    for name in ["an", "asl", "hill", "epr"] {
        let mut m = build(name, &MethodConfig::default(), 4, 6, Device::Cpu).unwrap();
        let (yt, it) = (t(&y), Tensor::arange(4, (Kind::Int64, Device::Cpu)));
        let ctx = StepCtx {
            y: &yt,
            indices: &it,
            epoch: 0,
            lr: 1e-3,
        };
        // The quantised logits are exact in bf16, so the losses agree to f32 precision.
        let full = m.step(&[t(&x)], &ctx);
        let half = m.step(&[t(&x).to_kind(Kind::BFloat16)], &ctx);
        assert_eq!(half.loss.kind(), Kind::Float);
        close(vec_f(&half.loss)[0], vec_f(&full.loss)[0], name);
    }
}
