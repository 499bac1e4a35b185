//! Co-teaching, Co-teaching+ and JoCoR.

use super::common::*;
use cls_trainer::methods::*;

// ---------- two-network sample selection: Co-teaching, Co-teaching+, JoCoR ----------

fn per_sample_an(x: &M, y: &M) -> Vec<f64> {
    x.iter()
        .zip(y)
        .map(|(xr, yr)| xr.iter().zip(yr).map(|(&x, &y)| bce(x, if y == 1.0 { 1.0 } else { 0.0 })).sum())
        .collect()
}
/// Flat indices of the unannotated entries in samples not in `kept`.
fn removed_ref(y: &M, kept: &[usize]) -> Vec<usize> {
    let c = y[0].len();
    (0..y.len() * c).filter(|&k| y[k / c][k % c] == 0.0 && !kept.contains(&(k / c))).collect()
}

#[test]
fn coteaching_and_coteaching_plus_match_reference() {
    let mut rng = Lcg(44);
    let cfg = MethodConfig { forget_rate: 0.4, ..MethodConfig::default() };
    for case in 0..8 {
        let (b, c) = (3 + case % 5, 3 + case % 3);
        let (f, g, y) = (rng.logits(b, c), rng.logits(b, c), rng.labels(b, c));
        let (lf, lg) = (per_sample_an(&f, &y), per_sample_an(&g, &y));
        for plus in [false, true] {
            for epoch in [0, 1, 5, 30] {
                let name = if plus { "co-teaching-plus" } else { "co-teaching" };
                let candidates: Vec<usize> = (0..b)
                    .filter(|&i| !plus || epoch < 1 || (0..c).any(|j| (f[i][j] > 0.0) != (g[i][j] > 0.0)))
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
    let (loss, _, _) = run("co-teaching-plus", &MethodConfig::default(), &[f.clone(), g.clone()], &y, 2);
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
        let cfg = MethodConfig { jocor_lambda: lambda, forget_rate: 0.5, ..MethodConfig::default() };
        let (lf, lg) = (per_sample_an(&f, &y), per_sample_an(&g, &y));
        let part = |i: usize, a: &M, b_: &M, l: &[f64]| {
            (1.0 - lambda) * l[i] + lambda * (0..c).map(|j| kl_ref(a[i][j], b_[i][j])).sum::<f64>()
        };
        let pf: Vec<f64> = (0..b).map(|i| part(i, &f, &g, &lf)).collect();
        let pg: Vec<f64> = (0..b).map(|i| part(i, &g, &f, &lg)).collect();
        let joint: Vec<f64> = (0..b).map(|i| pf[i] + pg[i]).collect();
        for epoch in [0, 3, 10] {
            let kept = pick_ref(&joint, &(0..b).collect::<Vec<_>>(), count_ref(rate_ref(epoch, 0.5), b), false);
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
