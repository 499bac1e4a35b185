//! Partial-label protocols: rates, invariants, determinism, parsing.

use cls_core::labels::{NEG, POS, UNK};
use cls_core::protocol::{apply, merge_external, Partial, ProtocolError};
use ndarray::{array, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// 10,000 images × 40 classes, each class positive with probability 3/40 (≈ 3 per image),
/// a few "difficult" (0) entries, the rest negative.
fn truth() -> Array2<i8> {
    let mut rng = ChaCha8Rng::seed_from_u64(12345);
    Array2::from_shape_fn((10_000, 40), |_| {
        let u: f64 = rng.random();
        if u < 3.0 / 40.0 {
            POS
        } else if u < 3.0 / 40.0 + 0.01 {
            UNK
        } else {
            NEG
        }
    })
}

fn count(a: &Array2<i8>, v: i8) -> usize {
    a.iter().filter(|&&x| x == v).count()
}

#[test]
fn fraction_left_matches_the_requested_rate() {
    let t = truth();
    let n_true = count(&t, POS) as f64;
    for f in [0.75, 0.5, 0.25] {
        // Without restoring, the hiding alone must give f (within 1% absolute).
        let e = apply(t.view(), &Partial::Fraction(f), 7, true);
        assert!((e.realised_fraction - f).abs() < 0.01, "f={f} allow_empty: {}", e.realised_fraction);
        assert_eq!(e.n_restored, 0);

        // Restoring adds one positive to each image that lost all of its k > 0 positives,
        // which happens with probability (1-f)^k: expected fraction f + Σ (1-f)^k / n_true.
        let o = apply(t.view(), &Partial::Fraction(f), 7, false);
        let extra: f64 = t
            .outer_iter()
            .map(|r| r.iter().filter(|&&v| v == POS).count() as i32)
            .filter(|&k| k > 0)
            .map(|k| (1.0 - f).powi(k))
            .sum();
        let expected = f + extra / n_true;
        assert!(
            (o.realised_fraction - expected).abs() < 0.01,
            "f={f}: realised {} expected {expected}",
            o.realised_fraction
        );
        assert!((o.n_restored as f64 - extra).abs() < 0.1 * extra);
        // The reported fraction is the one in the labels.
        let n_obs = count(&o.labels, POS) as f64;
        assert!((o.realised_fraction - n_obs / n_true).abs() < 1e-12);
        // Nothing but positives (and unannotated) after a fraction protocol.
        assert_eq!(count(&o.labels, NEG), 0);
        assert_eq!(o.n_observed_not_true, 0);
    }
}

#[test]
fn observed_positives_are_true_positives() {
    let t = truth();
    for p in [Partial::Fraction(0.5), Partial::Single, Partial::Full, Partial::EntryWise(0.3)] {
        let o = apply(t.view(), &p, 3, false);
        for (&ti, &oi) in t.iter().zip(o.labels.iter()) {
            if oi != UNK {
                assert_eq!(ti, oi, "{p}: an observed label disagrees with the truth");
            }
            if ti == UNK {
                assert_eq!(oi, UNK, "{p}: a difficult entry became observed");
            }
        }
    }
}

#[test]
fn no_image_loses_every_positive_unless_allowed() {
    let t = truth();
    let o = apply(t.view(), &Partial::Fraction(0.25), 11, false);
    let e = apply(t.view(), &Partial::Fraction(0.25), 11, true);
    let (mut empty_kept, mut empty_allowed, mut expected_restored) = (0, 0, 0);
    for ((tr, or), er) in t.outer_iter().zip(o.labels.outer_iter()).zip(e.labels.outer_iter()) {
        let has_pos = tr.iter().any(|&v| v == POS);
        let n_o = or.iter().filter(|&&v| v == POS).count();
        let n_e = er.iter().filter(|&&v| v == POS).count();
        if has_pos && n_o == 0 {
            empty_kept += 1;
        }
        if has_pos && n_e == 0 {
            empty_allowed += 1;
            // Same seed, same stream: the restored image differs by exactly one positive.
            assert_eq!(n_o, 1);
            expected_restored += 1;
        } else {
            assert_eq!(or, er, "images that kept a positive must not change");
        }
    }
    assert_eq!(empty_kept, 0);
    assert!(empty_allowed > 100, "0.25 left must empty many images, got {empty_allowed}");
    assert_eq!(o.n_restored, expected_restored);
}

#[test]
fn single_keeps_exactly_one_true_positive() {
    let t = truth();
    let o = apply(t.view(), &Partial::Single, 5, false);
    let mut firsts = vec![0usize; 40];
    for (tr, or) in t.outer_iter().zip(o.labels.outer_iter()) {
        let n_true = tr.iter().filter(|&&v| v == POS).count();
        let kept: Vec<usize> = (0..40).filter(|&j| or[j] == POS).collect();
        assert_eq!(kept.len(), usize::from(n_true > 0));
        if let Some(&j) = kept.first() {
            assert_eq!(tr[j], POS);
            firsts[j] += 1;
        }
        assert!(or.iter().all(|&v| v == POS || v == UNK));
    }
    // Uniform choice: every class gets picked, roughly equally (≈ 9,300 / 40 ≈ 230 each).
    assert!(firsts.iter().all(|&c| c > 150 && c < 320), "{firsts:?}");
}

#[test]
fn full_keeps_all_positives_and_nothing_else() {
    let t = array![[1, -1, 0, 1], [-1, -1, -1, -1]];
    let o = apply(t.view(), &Partial::Full, 0, false);
    assert_eq!(o.labels, array![[1, 0, 0, 1], [0, 0, 0, 0]]);
    assert_eq!(o.realised_fraction, 1.0);
    assert_eq!(o.n_restored, 0);
}

#[test]
fn entry_wise_hides_at_the_requested_rate() {
    let t = truth();
    let known = t.iter().filter(|&&v| v != UNK).count() as f64;
    for p in [0.1, 0.3, 0.7] {
        let o = apply(t.view(), &Partial::EntryWise(p), 9, false);
        let hidden = t.iter().zip(o.labels.iter()).filter(|(&a, &b)| a != UNK && b == UNK).count();
        let rate = hidden as f64 / known;
        assert!((rate - p).abs() < 0.01, "p={p}: rate {rate}");
        assert!((o.realised_fraction - (1.0 - p)).abs() < 0.01);
        assert!(count(&o.labels, NEG) > 0);
    }
}

#[test]
fn same_seed_same_mask_other_seed_other_mask() {
    let t = truth();
    for p in [Partial::Fraction(0.5), Partial::Single, Partial::EntryWise(0.5)] {
        let a = apply(t.view(), &p, 42, false);
        let b = apply(t.view(), &p, 42, false);
        let c = apply(t.view(), &p, 43, false);
        assert_eq!(a, b, "{p}");
        assert_ne!(a.labels, c.labels, "{p}");
    }
}

#[test]
fn an_image_mask_does_not_depend_on_the_other_images() {
    // One stream per image: the first 100 rows alone give the same mask as inside 10,000.
    let t = truth();
    let all = apply(t.view(), &Partial::Fraction(0.5), 1, false);
    let head = apply(t.slice(ndarray::s![..100, ..]), &Partial::Fraction(0.5), 1, false);
    assert_eq!(head.labels, all.labels.slice(ndarray::s![..100, ..]));
}

#[test]
fn partial_parses_and_round_trips() {
    assert_eq!("0.75".parse(), Ok(Partial::Fraction(0.75)));
    assert_eq!("0.5".parse(), Ok(Partial::Fraction(0.5)));
    assert_eq!(" 0.25 ".parse(), Ok(Partial::Fraction(0.25)));
    assert_eq!("1".parse(), Ok(Partial::Fraction(1.0)));
    assert_eq!("single".parse(), Ok(Partial::Single));
    assert_eq!("Full".parse(), Ok(Partial::Full));
    assert_eq!("entry:0.3".parse(), Ok(Partial::EntryWise(0.3)));
    for bad in ["0", "1.5", "-0.2", "nan", "half", "", "entry:", "entry:1.2", "entry:x"] {
        assert!(matches!(bad.parse::<Partial>(), Err(ProtocolError::BadPartial(_))), "'{bad}' must be rejected");
    }
    for p in
        [Partial::Fraction(0.75), Partial::Fraction(0.1 + 0.2), Partial::Single, Partial::Full, Partial::EntryWise(0.3)]
    {
        assert_eq!(p.to_string().parse::<Partial>(), Ok(p));
    }
    assert_eq!(Partial::Fraction(0.5).to_string(), "0.5");
    assert_eq!(Partial::EntryWise(0.3).to_string(), "entry:0.3");
}

#[test]
fn external_labels_are_checked_and_counted() {
    let t = array![[1, 1, -1, -1], [1, -1, -1, 0]];
    let obs = array![[1, 0, 1, 0], [0, 0, -1, 0]];
    let o = merge_external(t.view(), obs.view()).unwrap();
    assert_eq!(o.labels, obs);
    // 1 of 3 true positives observed; one observed positive is a true negative.
    assert!((o.realised_fraction - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(o.n_observed_not_true, 1);

    let wrong = Array2::<i8>::zeros((2, 3));
    assert_eq!(
        merge_external(t.view(), wrong.view()),
        Err(ProtocolError::ShapeMismatch { truth: (2, 4), observed: (2, 3) })
    );
    let bad = array![[1, 0, 2, 0], [0, 0, 0, 0]];
    let err = merge_external(t.view(), bad.view()).unwrap_err();
    assert_eq!(err, ProtocolError::BadValue { row: 0, col: 2, value: 2 });
    assert!(err.to_string().contains("image 0, class 2"));
}
