//! Thresholds chosen on validation data: hand-computed cases (ties, unknown entries, rare
//! classes) and, on random data, a check against a brute-force search written here.

use cls_core::calibrate::{calibrate, DEFAULT_MIN_POSITIVES, DEFAULT_SHRINK};
use cls_core::metrics::evaluate_with;
use ndarray::{array, Array2};
use rand::{Rng, SeedableRng};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn ties_are_cut_together_and_the_highest_best_cut_wins() {
    // Class 0: scores 0.9 (pos), 0.7 (pos), 0.7 (neg), 0.3 (neg).
    //   cut at 0.9: TP 1 FP 0 FN 1 -> F1 2/3; at 0.7 (both tied entries): TP 2 FP 1 -> F1 4/5;
    //   at 0.3: TP 2 FP 2 -> 2/3. Best 0.7, threshold midway to 0.3 = 0.5.
    // Class 1: scores 0.6 (pos), 0.5 (neg), 0.4 (pos), 0.2 (neg).
    //   at 0.6: F1 2/3; at 0.5: TP1 FP1 FN1 -> 1/2; at 0.4: TP2 FP1 -> 4/5; at 0.2: 2/3.
    //   Best 0.4, threshold midway to 0.2 = 0.3.
    let scores = array![[0.9f32, 0.6], [0.7, 0.5], [0.7, 0.4], [0.3, 0.2]];
    let truth = array![[1i8, 1], [1, -1], [-1, 1], [-1, -1]];
    let c = calibrate(scores.view(), truth.view(), 1, 0.0).unwrap();
    assert!(close(c.per_class[0], 0.5), "{:?}", c.per_class);
    assert!(close(c.per_class[1], 0.3), "{:?}", c.per_class);
    assert_eq!(c.fallback, [false, false]);

    // Equal F1 at two cuts: positives at 0.8 and 0.2, negatives at 0.5 and 0.1.
    //   at 0.8: TP1 FN1 -> 2/3; at 0.5: TP1 FP1 FN1 -> 1/2; at 0.2: TP2 FP1 -> 4/5 ... make it tie:
    // positives 0.8, 0.2; negatives 0.5, 0.4: at 0.8: 2/3; at 0.2: TP2 FP2 -> 2/3. Highest wins.
    let scores = array![[0.8f32], [0.5], [0.4], [0.2]];
    let truth = array![[1i8], [-1], [-1], [1]];
    let c = calibrate(scores.view(), truth.view(), 1, 0.0).unwrap();
    assert!(close(c.per_class[0], 0.65), "{:?}", c.per_class); // midway between 0.8 and 0.5
}

#[test]
fn unknown_entries_are_left_out_and_rare_classes_use_the_global_threshold() {
    // An unknown entry with a high score must not count as a false positive.
    let scores = array![[0.9f32, 0.9], [0.6, 0.1], [0.2, 0.8], [0.1, 0.2]];
    let truth = array![[0i8, 1], [1, -1], [-1, 1], [-1, -1]];
    let c = calibrate(scores.view(), truth.view(), 1, 0.0).unwrap();
    assert!(close(c.per_class[0], 0.4), "{:?}", c.per_class); // 0.6 predicted, midway to 0.2
                                                              // With a minimum of 2 positives class 0 (one positive) falls back to the global threshold.
    let c = calibrate(scores.view(), truth.view(), 2, 0.0).unwrap();
    assert_eq!(c.fallback, [true, false]);
    assert_eq!(c.per_class[0], c.global);
    // Pooled observed entries: 0.9+ 0.9+? (class 1 row 0), ... the global cut maximises OF1.
    let m = evaluate_with(scores.view(), truth.view(), c.global, None).unwrap();
    assert!(m.of1 > 0.99, "global threshold {} gives OF1 {}", c.global, m.of1);
    // No positive at all: the neutral 0.5.
    let c = calibrate(array![[0.3f32]].view(), array![[-1i8]].view(), 1, 0.0).unwrap();
    assert_eq!((c.per_class[0], c.global), (0.5, 0.5));
    assert_eq!((DEFAULT_MIN_POSITIVES, DEFAULT_SHRINK), (1, 5.0));
}

/// F1 of one class at threshold t over observed entries, written out plainly.
fn f1_at(scores: &[f32], truth: &[i8], t: f64) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
    for (&s, &y) in scores.iter().zip(truth) {
        let predicted = f64::from(s) >= t;
        match (predicted, y) {
            (_, 0) => {}
            (true, 1) => tp += 1.0,
            (true, _) => fp += 1.0,
            (false, 1) => fn_ += 1.0,
            _ => {}
        }
    }
    if tp == 0.0 {
        0.0
    } else {
        2.0 * tp / (2.0 * tp + fp + fn_)
    }
}

#[test]
fn chosen_thresholds_reach_the_brute_force_optimum() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for trial in 0..50 {
        let (n, k) = (rng.random_range(10..80), rng.random_range(1..6));
        // Coarse scores so that ties are common.
        let scores = Array2::from_shape_fn((n, k), |_| (rng.random_range(0..20) as f32) / 20.0);
        let truth = Array2::from_shape_fn((n, k), |(i, c)| {
            let p = if scores[[i, c]] > 0.5 { 0.7 } else { 0.2 };
            match rng.random_range(0..10) {
                0 => 0i8,
                _ if rng.random_bool(p) => 1,
                _ => -1,
            }
        });
        let cal = calibrate(scores.view(), truth.view(), 1, 0.0).unwrap();
        for c in 0..k {
            let s = scores.column(c).to_vec();
            let y = truth.column(c).to_vec();
            if !y.contains(&1) {
                continue;
            }
            let best = s.iter().map(|&t| f1_at(&s, &y, f64::from(t))).fold(0.0, f64::max);
            let got = f1_at(&s, &y, cal.per_class[c]);
            assert!(
                (got - best).abs() < 1e-12,
                "trial {trial} class {c}: F1 {got} at {}, best {best}",
                cal.per_class[c]
            );
        }
    }
}

/// Shrinkage pulls each class's own optimum toward the global threshold, the more the fewer
/// positives the class has: always between the two, a rare class close to the global one, a
/// frequent one close to its own; 0 leaves the own optima.
#[test]
fn shrinkage_weighs_a_class_by_its_positives() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    // Class 0: 3 positives among 400 images; class 1: 150 positives. Scores informative but noisy.
    let n = 400;
    let mut scores = Array2::<f32>::zeros((n, 2));
    let mut truth = Array2::<i8>::from_elem((n, 2), -1);
    for i in 0..n {
        for (c, positives) in [(0, 3), (1, 150)] {
            let pos = i < positives;
            truth[[i, c]] = if pos { 1 } else { -1 };
            let base: f32 = if pos { 0.6 } else { 0.2 };
            scores[[i, c]] = (base + rng.random_range(-0.2f32..0.2) + if c == 0 { 0.3 } else { 0.0 }).clamp(0.0, 1.0);
        }
    }
    let own = calibrate(scores.view(), truth.view(), 1, 0.0).unwrap();
    let shrunk = calibrate(scores.view(), truth.view(), 1, 5.0).unwrap();
    assert_eq!(own.global, shrunk.global);
    let g = own.global;
    let share = |c: usize| (shrunk.per_class[c] - own.per_class[c]) / (g - own.per_class[c]);
    for c in 0..2 {
        let (lo, hi) = if own.per_class[c] < g { (own.per_class[c], g) } else { (g, own.per_class[c]) };
        assert!(lo <= shrunk.per_class[c] && shrunk.per_class[c] <= hi, "class {c}: {shrunk:?} against {own:?}");
        assert!((own.per_class[c] - g).abs() > 0.02, "class {c} must differ from the global cut: {own:?}");
    }
    // Moved most of the way for 3 positives (weight 5 of 8), little for 150 (5 of 155).
    assert!(share(0) > 0.4 && share(1) < 0.1, "shares {} {}", share(0), share(1));
    assert_eq!((shrunk.shrink, own.shrink), (5.0, 0.0));
}
