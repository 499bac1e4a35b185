//! Schedule and selection, eq. (1)–(6).

use super::common::*;
use tch::{Device, Kind, Tensor};

use cls_trainer::methods::losses::floor_count;
use cls_trainer::methods::schedule::keep_rate;
use cls_trainer::methods::selection::co_label_select;

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

#[test]
fn selection_matches_reference_on_random_batches_with_ties() {
    let mut rng = Lcg(7);
    for case in 0..40 {
        let (b, c) = (1 + case % 5, 2 + case % 7);
        let (f, g, y) = (rng.logits(b, c), rng.logits(b, c), rng.labels(b, c));
        let (lf, lg): (Vec<f64>, Vec<f64>) =
            (flat(&f).iter().map(|&x| nl1p(x)).collect(), flat(&g).iter().map(|&x| nl1p(x)).collect());
        let (r_h, r_l) = (0.3 + 0.1 * (case % 6) as f64, 0.5 + 0.05 * (case % 9) as f64);
        let s = co_label_select(&t(&f).softplus(), &t(&g).softplus(), &t(&y).eq(0.0), r_h, r_l, true, true);
        let (kf, ff) = cls_select_ref(&lf, &lg, &flat(&y), r_h, r_l, true, true);
        let (kg, fg) = cls_select_ref(&lg, &lf, &flat(&y), r_h, r_l, true, true);
        assert_eq!(vec_b(&s.keep_f), kf, "case {case} keep_f");
        assert_eq!(vec_b(&s.flagged_f), ff, "case {case} flagged_f");
        assert_eq!(vec_b(&s.keep_g), kg, "case {case} keep_g");
        assert_eq!(vec_b(&s.flagged_g), fg, "case {case} flagged_g");
    }
}
