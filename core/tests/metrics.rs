//! Tests of `cls_core::metrics`: tiny cases computed by hand, error values, serialisation, and
//! golden cases from scikit-learn (`scripts/gen-metrics-golden` → `tests/data/metrics_golden.json`).

use cls_core::metrics::{
    average_precision, comparison_table, evaluate, regressions, Metrics, MetricsError, ThresholdMetrics,
};
use ndarray::{array, s, Array2};
use serde::Deserialize;

const TOL: f64 = 1e-9;

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= TOL, "{what}: got {got}, want {want}");
}

// ---------------------------------------------------------------- average precision by hand

#[test]
fn ap_of_a_simple_ranking() {
    // Ranks 1 and 3 are positive: precisions 1 and 2/3.
    let ap = average_precision(&[0.9, 0.8, 0.7, 0.6], &[1, -1, 1, -1]).unwrap();
    close(ap, (1.0 + 2.0 / 3.0) / 2.0, "AP");
}

#[test]
fn ap_ignores_input_order() {
    let ap = average_precision(&[0.6, 0.7, 0.8, 0.9], &[-1, 1, -1, 1]).unwrap();
    close(ap, (1.0 + 2.0 / 3.0) / 2.0, "AP");
}

#[test]
fn ap_groups_tied_scores() {
    // One group holding everything: precision 2/4 at recall 1.
    close(average_precision(&[0.5; 4], &[1, -1, -1, 1]).unwrap(), 0.5, "all tied");
    // Groups {0.9: neg}, {0.5: pos, neg}, {0.1: pos}:
    // recall 1/2 at precision 1/3, then recall 1 at precision 2/4.
    let ap = average_precision(&[0.9, 0.5, 0.5, 0.1], &[-1, 1, -1, 1]).unwrap();
    close(ap, 0.5 * (1.0 / 3.0) + 0.5 * 0.5, "tie in the middle");
    // The order inside a tie group must not matter.
    let ap2 = average_precision(&[0.5, 0.1, 0.9, 0.5], &[-1, 1, -1, 1]).unwrap();
    close(ap2, ap, "tie group reordered");
}

#[test]
fn ap_skips_unknown_entries() {
    close(average_precision(&[0.9, 0.8, 0.7], &[0, 1, -1]).unwrap(), 1.0, "unknown on top");
    close(average_precision(&[0.9, 0.8, 0.7], &[-1, 1, -1]).unwrap(), 0.5, "negative on top");
}

#[test]
fn ap_is_none_without_positives_or_on_bad_input() {
    assert_eq!(average_precision(&[0.9, 0.1], &[-1, -1]), None);
    assert_eq!(average_precision(&[0.9, 0.1], &[0, -1]), None);
    assert_eq!(average_precision(&[], &[]), None);
    assert_eq!(average_precision(&[0.9, 0.1], &[1]), None);
    assert_eq!(average_precision(&[f32::NAN, 0.1], &[1, -1]), None);
    // A NaN on an unknown entry is not looked at.
    close(average_precision(&[f32::NAN, 0.1], &[0, 1]).unwrap(), 1.0, "NaN unknown");
}

// ---------------------------------------------------------------- evaluate by hand

/// 3 images × 4 classes; class 2 has no positive (its only non-negative entry is unknown).
/// Image 2 ties all four classes, so its top 3 are classes 0, 1, 2.
fn small() -> (Array2<f32>, Array2<i8>) {
    let scores = array![[0.9f32, 0.8, 0.7, 0.6], [0.2, 0.6, 0.6, 0.6], [0.55, 0.55, 0.55, 0.55],];
    let truth = array![[1i8, -1, -1, 1], [-1, 1, 0, 1], [-1, -1, -1, -1]];
    (scores, truth)
}

#[test]
fn evaluate_small_case_by_hand() {
    let (scores, truth) = small();
    let m = evaluate(scores.view(), truth.view(), 0.5).unwrap();

    // AP: class 0 → 1, class 1 → 1/2 (negative ranked first), class 3 → 1 (tied positives).
    assert_eq!(m.per_class_ap.len(), 4);
    close(m.per_class_ap[0].unwrap(), 1.0, "AP0");
    close(m.per_class_ap[1].unwrap(), 0.5, "AP1");
    assert_eq!(m.per_class_ap[2], None);
    close(m.per_class_ap[3].unwrap(), 1.0, "AP3");
    close(m.map, 2.5 / 3.0, "mAP");
    assert_eq!((m.n_images, m.n_classes_evaluated, m.n_classes_excluded), (3, 3, 1));

    // Everything >= 0.5 predicted. TP/FP/FN per class: c0 1/1/0, c1 1/2/0, c2 0/2/0, c3 2/1/0.
    close(m.cp, (1.0 / 2.0 + 1.0 / 3.0 + 2.0 / 3.0) / 3.0, "CP");
    close(m.cr, 1.0, "CR");
    close(m.cf1, 2.0 / 3.0, "CF1");
    // Pooled over all four classes (class 2's false positives count): TP 4, FP 6, FN 0.
    close(m.op, 0.4, "OP");
    close(m.or, 1.0, "OR");
    close(m.of1, 4.0 / 7.0, "OF1");

    // Top 3: image 0 loses class 3 (a positive), image 2 loses class 3 by the index tie-break.
    // c0 1/1/0, c1 1/2/0, c2 0/2/0, c3 1/0/1.
    let t = m.top3;
    close(t.cp, (1.0 / 2.0 + 1.0 / 3.0 + 1.0) / 3.0, "top3 CP");
    close(t.cr, (1.0 + 1.0 + 0.5) / 3.0, "top3 CR");
    close(t.cf1, 55.0 / 78.0, "top3 CF1");
    close(t.op, 3.0 / 8.0, "top3 OP");
    close(t.or, 3.0 / 4.0, "top3 OR");
    close(t.of1, 0.5, "top3 OF1");
}

#[test]
fn evaluate_with_nothing_predicted_gives_zero_precision_and_f1() {
    let (scores, truth) = small();
    let m = evaluate(scores.view(), truth.view(), 0.95).unwrap();
    for (name, v) in [("CP", m.cp), ("CR", m.cr), ("CF1", m.cf1), ("OP", m.op), ("OR", m.or)] {
        assert_eq!(v, 0.0, "{name}");
    }
    assert_eq!(m.of1, 0.0);
    assert_eq!(m.top3.of1, 0.0);
    close(m.map, 2.5 / 3.0, "mAP does not depend on the threshold");
}

#[test]
fn evaluate_rejects_bad_input() {
    let (scores, truth) = small();
    let short = truth.slice(s![..2, ..]);
    assert_eq!(
        evaluate(scores.view(), short, 0.5).unwrap_err(),
        MetricsError::ShapeMismatch { scores: (3, 4), truth: (2, 4) }
    );

    let mut nan = scores.clone();
    nan[[1, 2]] = f32::NAN;
    let err = evaluate(nan.view(), truth.view(), 0.5).unwrap_err();
    assert_eq!(err, MetricsError::NanScore { image: 1, class: 2 });
    assert!(err.to_string().contains("image 1, class 2"), "{err}");

    let mut bad = truth.clone();
    bad[[2, 3]] = 2;
    assert_eq!(
        evaluate(scores.view(), bad.view(), 0.5).unwrap_err(),
        MetricsError::BadTruth { image: 2, class: 3, value: 2 }
    );

    let negatives = Array2::<i8>::from_elem((3, 4), -1);
    assert_eq!(
        evaluate(scores.view(), negatives.view(), 0.5).unwrap_err(),
        MetricsError::NoPositives { n_images: 3, n_classes: 4 }
    );

    assert!(matches!(evaluate(scores.view(), truth.view(), f64::NAN), Err(MetricsError::BadThreshold(_))));
}

#[test]
fn fewer_classes_than_top_k() {
    // With 2 classes, the top-3 variant equals the plain threshold metrics.
    let scores = array![[0.9f32, 0.6], [0.4, 0.7], [0.8, 0.1]];
    let truth = array![[1i8, -1], [-1, 1], [1, 1]];
    let m = evaluate(scores.view(), truth.view(), 0.5).unwrap();
    assert_eq!(m.top3, m.threshold_metrics());
}

// ---------------------------------------------------------------- serialisation and reports

#[test]
fn json_uses_the_paper_names_and_round_trips() {
    let (scores, truth) = small();
    let m = evaluate(scores.view(), truth.view(), 0.5).unwrap();
    let v = serde_json::to_value(&m).unwrap();
    for key in ["mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "top3", "per_class_AP", "threshold"] {
        assert!(v.get(key).is_some(), "missing key {key} in {v}");
    }
    for key in ["CP", "CR", "CF1", "OP", "OR", "OF1"] {
        assert!(v["top3"].get(key).is_some(), "missing top3.{key}");
    }
    assert!(v["per_class_AP"][2].is_null());
    assert_eq!(v["n_classes_excluded"], 1);
    let back: Metrics = serde_json::from_value(v).unwrap();
    assert_eq!(back, m);
}

/// The CI gate compares a run with a metrics JSON written earlier: a run checked against its own
/// output at tolerance 0 must pass, so every f64 has to survive the JSON round trip bit for bit
/// (serde_json's default float parser is off by one unit in the last place for some values).
#[test]
fn metrics_survive_their_own_json_round_trip_exactly() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for trial in 0..300 {
        let (n, c) = (rng.random_range(5..60), rng.random_range(2..30));
        let scores = Array2::from_shape_fn((n, c), |_| rng.random::<f32>());
        let truth = Array2::from_shape_fn((n, c), |_| if rng.random_bool(0.3) { 1i8 } else { -1 });
        let Ok(m) = evaluate(scores.view(), truth.view(), rng.random_range(0.05..0.95)) else { continue };
        let text = serde_json::to_string_pretty(&m).unwrap();
        let back: Metrics = serde_json::from_str(&text).unwrap();
        for (name, a, b) in [("mAP", m.map, back.map), ("CF1", m.cf1, back.cf1), ("OF1", m.of1, back.of1)] {
            assert_eq!(a.to_bits(), b.to_bits(), "trial {trial}: {name} {a:?} came back as {b:?}");
        }
        assert_eq!(back, m, "trial {trial}");
        assert!(regressions(&back, &m, 0.0).is_empty(), "trial {trial}: equal metrics flagged as a regression");
    }
}

#[test]
fn table_shows_percent_with_one_decimal() {
    let (scores, truth) = small();
    let table = evaluate(scores.view(), truth.view(), 0.5).unwrap().table();
    assert!(table.contains("83.3"), "mAP 5/6:\n{table}"); // mAP
    assert!(table.contains("57.1"), "OF1 4/7:\n{table}"); // OF1
    assert!(table.contains("70.5"), "top-3 CF1 55/78:\n{table}");
    assert!(table.contains("top-3"), "{table}");
    assert!(table.contains("1 classes excluded"), "{table}");
}

fn with_headline(base: &Metrics, map: f64, cf1: f64, of1: f64) -> Metrics {
    Metrics { map, cf1, of1, ..base.clone() }
}

#[test]
fn regressions_flag_only_drops_beyond_tolerance() {
    let (scores, truth) = small();
    let base = evaluate(scores.view(), truth.view(), 0.5).unwrap();
    let (m, c, o) = (base.map, base.cf1, base.of1);

    assert!(regressions(&base, &base, 0.0).is_empty());
    let new = with_headline(&base, m - 0.02, c - 0.001, o + 0.05);
    let r = regressions(&base, &new, 0.005);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].metric, "mAP");
    close(r[0].old, m, "old");
    close(r[0].new, m - 0.02, "new");
    close(r[0].diff, -0.02, "diff");

    let worse = with_headline(&base, m, c - 0.1, o - 0.1);
    let names: Vec<_> = regressions(&base, &worse, 0.005).iter().map(|r| r.metric).collect();
    assert_eq!(names, ["CF1", "OF1"]);

    let table = comparison_table(&base, &new);
    assert!(table.contains("mAP") && table.contains("CF1") && table.contains("OF1"), "{table}");
    assert!(table.contains("-2.0"), "{table}");
    assert!(table.contains("+5.0"), "{table}");
}

// ---------------------------------------------------------------- golden cases (scikit-learn)

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    scores: Vec<Vec<f32>>,
    truth: Vec<Vec<i8>>,
    #[serde(rename = "per_class_AP")]
    per_class_ap: Vec<Option<f64>>,
    #[serde(rename = "mAP")]
    map: f64,
    n_images: usize,
    n_classes_evaluated: usize,
    n_classes_excluded: usize,
    at_threshold: Vec<AtThreshold>,
}

#[derive(Deserialize)]
struct AtThreshold {
    threshold: f64,
    #[serde(flatten)]
    plain: ThresholdMetrics,
    top3: ThresholdMetrics,
}

fn matrix<T: Copy>(rows: &[Vec<T>]) -> Array2<T> {
    let k = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == k));
    Array2::from_shape_vec((rows.len(), k), rows.concat()).unwrap()
}

fn golden() -> Golden {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/metrics_golden.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn same_threshold_metrics(got: &ThresholdMetrics, want: &ThresholdMetrics, what: &str) {
    close(got.cp, want.cp, &format!("{what} CP"));
    close(got.cr, want.cr, &format!("{what} CR"));
    close(got.cf1, want.cf1, &format!("{what} CF1"));
    close(got.op, want.op, &format!("{what} OP"));
    close(got.or, want.or, &format!("{what} OR"));
    close(got.of1, want.of1, &format!("{what} OF1"));
}

#[test]
fn golden_cases_match_scikit_learn() {
    let golden = golden();
    assert!(golden.cases.len() >= 5);
    for case in &golden.cases {
        let (scores, truth) = (matrix(&case.scores), matrix(&case.truth));
        assert!(scores.nrows() >= 500 && scores.ncols() >= 20, "{}", case.name);
        assert_eq!(case.at_threshold.len(), 2, "{}", case.name);
        for at in &case.at_threshold {
            let what = format!("{} at {}", case.name, at.threshold);
            let m = evaluate(scores.view(), truth.view(), at.threshold).unwrap();
            assert_eq!(m.per_class_ap.len(), case.per_class_ap.len(), "{what}");
            for (c, (got, want)) in m.per_class_ap.iter().zip(&case.per_class_ap).enumerate() {
                match (got, want) {
                    (Some(g), Some(w)) => close(*g, *w, &format!("{what} AP of class {c}")),
                    (None, None) => {}
                    _ => panic!("{what} class {c}: got {got:?}, want {want:?}"),
                }
            }
            close(m.map, case.map, &format!("{what} mAP"));
            assert_eq!(m.n_images, case.n_images, "{what}");
            assert_eq!(m.n_classes_evaluated, case.n_classes_evaluated, "{what}");
            assert_eq!(m.n_classes_excluded, case.n_classes_excluded, "{what}");
            same_threshold_metrics(&m.threshold_metrics(), &at.plain, &what);
            same_threshold_metrics(&m.top3, &at.top3, &format!("{what} top-3"));
        }
    }
}

#[test]
fn golden_metrics_do_not_depend_on_image_order() {
    let golden = golden();
    let case = golden.cases.iter().find(|c| c.name == "ties_1dec").expect("ties_1dec case");
    let (scores, truth) = (matrix(&case.scores), matrix(&case.truth));
    let a = evaluate(scores.view(), truth.view(), 0.5).unwrap();
    let b = evaluate(scores.slice(s![..;-1, ..]), truth.slice(s![..;-1, ..]), 0.5).unwrap();
    for (x, y) in a.per_class_ap.iter().zip(&b.per_class_ap) {
        assert_eq!(x.is_some(), y.is_some());
        close(x.unwrap_or(0.0), y.unwrap_or(0.0), "AP after reversing the images");
    }
    same_threshold_metrics(&b.threshold_metrics(), &a.threshold_metrics(), "reversed");
    same_threshold_metrics(&b.top3, &a.top3, "reversed top-3");
}

/// Ground truth with unknown entries (Open Images validation): AP and the threshold counts of a
/// class use only its observed entries. The reference is written out here from the definitions:
/// AP = the mean, over observed positives p, of the precision among observed entries scoring at
/// least p's score (scikit-learn's AP with ties grouped).
#[test]
fn three_state_truth_matches_an_independent_reference() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for trial in 0..40 {
        let (n, c) = (rng.random_range(8..50), rng.random_range(2..8));
        let scores = Array2::from_shape_fn((n, c), |_| (rng.random_range(0..30) as f32) / 30.0);
        let truth = Array2::from_shape_fn((n, c), |_| [1i8, -1, -1, 0][rng.random_range(0..4)]);
        let Ok(m) = evaluate(scores.view(), truth.view(), 0.5) else { continue };
        assert_eq!(m.n_unknown, truth.iter().filter(|&&t| t == 0).count());
        let mut aps = Vec::new();
        let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
        for k in 0..c {
            let obs: Vec<(f32, bool)> =
                (0..n).filter(|&i| truth[[i, k]] != 0).map(|i| (scores[[i, k]], truth[[i, k]] == 1)).collect();
            let pos: Vec<f32> = obs.iter().filter(|o| o.1).map(|o| o.0).collect();
            for &(s, y) in &obs {
                match (f64::from(s) >= 0.5, y) {
                    (true, true) => tp += 1,
                    (true, false) => fp += 1,
                    (false, true) => fn_ += 1,
                    _ => {}
                }
            }
            let ap = (!pos.is_empty()).then(|| {
                pos.iter()
                    .map(|&p| {
                        let above: Vec<&(f32, bool)> = obs.iter().filter(|o| o.0 >= p).collect();
                        above.iter().filter(|o| o.1).count() as f64 / above.len() as f64
                    })
                    .sum::<f64>()
                    / pos.len() as f64
            });
            close(m.per_class_ap[k].unwrap_or(-1.0), ap.unwrap_or(-1.0), &format!("trial {trial} AP of class {k}"));
            aps.extend(ap);
        }
        close(m.map, aps.iter().sum::<f64>() / aps.len() as f64, "mAP");
        close(m.op, if tp + fp == 0 { 0.0 } else { tp as f64 / (tp + fp) as f64 }, "OP");
        close(m.or, tp as f64 / (tp + fn_).max(1) as f64, "OR");
    }
}
