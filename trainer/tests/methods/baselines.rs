//! Single-network baselines, SPLC and LL-R/Ct/Cp.

use super::common::*;
use cls_trainer::methods::*;
use tch::{Device, Kind, Tensor};

// ---------- single-network baselines ----------

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
            ("an", sum_ref(&x, &y, |x, y| bce(x, if pos(y) { 1.0 } else { 0.0 }))),
            // Cole et al.'s smoothing: 1 − ε and ε.
            ("an-ls", sum_ref(&x, &y, |x, y| bce(x, if pos(y) { 0.9 } else { 0.1 }))),
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
        let (loss, _, flagged) = run("splc", &MethodConfig::default(), std::slice::from_ref(&x), &y, epoch);
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
    let an: Vec<f64> = xf.iter().zip(&yf).map(|(&x, &y)| bce(x, if y == 1.0 { 1.0 } else { 0.0 })).collect();
    let n: Vec<usize> = (0..yf.len()).filter(|&k| yf[k] == 0.0).collect();
    // LL-R/Ct grow by Δ each epoch (floor); LL-Cp corrects the constant ceil(Δ·B·C) per step from
    // the second epoch on (the official code).
    let count = if mode == "ll-cp" {
        if epoch == 0 {
            0
        } else {
            (delta / 100.0 * yf.len() as f64 - 1e-9).ceil() as usize
        }
    } else {
        count_ref((epoch as f64 * delta / 100.0).min(1.0), yf.len())
    }
    .min(n.len());
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
        for (name, delta) in
            [("ll-r", 0.5), ("ll-ct", 0.2), ("ll-cp", 0.1), ("ll-r", 4.0), ("ll-ct", 7.0), ("ll-cp", 9.0)]
        {
            let cfg = MethodConfig { ll_delta: Some(delta), ..MethodConfig::default() };
            for epoch in [0, 1, 3, 6] {
                let (loss, _, flagged) = run(name, &cfg, std::slice::from_ref(&x), &y, epoch);
                let (want, large) = ll_ref(&x, &y, epoch, delta, name);
                close(loss, want, &format!("case {case} {name} Δ={delta} e={epoch}"));
                assert_eq!(flagged[0], large, "case {case} {name} Δ={delta} e={epoch} flagged");
            }
        }
    }
    // Defaults: Δ = 0.5 % for LL-R, so 2 completed epochs on a 10×20 batch reject floor(0.01·200) = 2.
    let x: M = (0..10).map(|i| (0..20).map(|j| ((i * 20 + j) % 13) as f64 * 0.3 - 2.0).collect()).collect();
    let y: M = (0..10).map(|i| (0..20).map(|j| if j == i { 1.0 } else { 0.0 }).collect()).collect();
    let (loss, _, flagged) = run("ll-r", &MethodConfig::default(), std::slice::from_ref(&x), &y, 2);
    let (want, large) = ll_ref(&x, &y, 2, 0.5, "ll-r");
    assert_eq!(large.len(), 2);
    assert_eq!(flagged[0], large);
    close(loss, want, "ll-r default Δ");
}

#[test]
fn ll_cp_corrections_persist_and_round_trip_through_state() {
    let cfg = MethodConfig { ll_delta: Some(25.0), ..MethodConfig::default() };
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
    close(loss, sum_ref(&x, &y_corrected, |x, y| bce(x, if y == 1.0 { 1.0 } else { 0.0 })), "stored corrections");
    assert_eq!(flagged[0], vec![2, 5]);
    assert!(restored.load_state(&[]).is_err());
    let wrong = vec![("ll-cp.corrected".to_string(), Tensor::zeros([2, 2], (Kind::Bool, Device::Cpu)))];
    assert!(restored.load_state(&wrong).is_err());
}
