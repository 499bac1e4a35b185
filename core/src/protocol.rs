//! Partial-label protocols (method.md, "Partial-label protocols"): turn complete ground truth
//! into the observed training labels a run learns from.
//!
//! Input is ground truth with [`POS`] / [`NEG`] / [`UNK`] (`UNK` = "not evaluated", e.g. VOC
//! difficult). Output uses the observed-label convention of method.md's notation: [`POS`] is an
//! observed positive, [`UNK`] is unannotated (`y = 0`: a true negative or a hidden positive) and
//! [`NEG`] is an explicitly observed negative (entry-wise protocol only).
//!
//! Every protocol is deterministic for a seed. Each image draws from its own ChaCha8 stream
//! (key = `seed`, stream = image index), so a mask never depends on the number of threads or
//! on how many images come before it, and is the same on every platform.

use crate::labels::{NEG, POS, UNK};
use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::str::FromStr;

/// Which labels of the training set stay observed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Partial {
    /// `--partial 0.75|0.5|0.25|…`: the fraction of positive labels **left**; each positive is
    /// hidden independently with probability `1 − fraction`. Must lie in (0, 1].
    Fraction(f64),
    /// `--partial single`: exactly one positive per image, uniformly at random.
    Single,
    /// `--partial full`: every positive kept (the upper bound).
    Full,
    /// `--partial entry:P` (Durand et al. 2019): every entry, positive or negative, becomes
    /// unknown with probability `P` in [0, 1]; the rest stay observed as `1` / `-1`.
    EntryWise(f64),
}

/// A string that is not a valid [`Partial`], or an external label matrix that does not fit.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error("invalid --partial value '{0}': expected a fraction in (0, 1] (e.g. 0.75, 0.5, 0.25), 'single', 'full' or 'entry:P' with P in [0, 1]")]
    BadPartial(String),
    #[error("observed labels have shape {observed:?} but the ground truth has shape {truth:?}")]
    ShapeMismatch { truth: (usize, usize), observed: (usize, usize) },
    #[error("observed label at image {row}, class {col} is {value}; expected 1, 0 or -1")]
    BadValue { row: usize, col: usize, value: i8 },
}

/// Parses the `--partial` spellings.
///
/// ```
/// use cls_core::protocol::Partial;
/// assert_eq!("0.25".parse::<Partial>(), Ok(Partial::Fraction(0.25)));
/// assert_eq!("Single".parse::<Partial>(), Ok(Partial::Single));
/// assert_eq!("entry:0.3".parse::<Partial>(), Ok(Partial::EntryWise(0.3)));
/// assert!("1.5".parse::<Partial>().is_err());
/// ```
impl FromStr for Partial {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || ProtocolError::BadPartial(s.to_string());
        match t.as_str() {
            "single" => Ok(Partial::Single),
            "full" => Ok(Partial::Full),
            _ => {
                if let Some(p) = t.strip_prefix("entry:") {
                    let p: f64 = p.trim().parse().map_err(|_| bad())?;
                    if (0.0..=1.0).contains(&p) {
                        return Ok(Partial::EntryWise(p));
                    }
                    return Err(bad());
                }
                let f: f64 = t.parse().map_err(|_| bad())?;
                // NaN fails both comparisons and is rejected here too.
                if f > 0.0 && f <= 1.0 {
                    Ok(Partial::Fraction(f))
                } else {
                    Err(bad())
                }
            }
        }
    }
}

impl fmt::Display for Partial {
    /// The same spelling [`FromStr`] accepts; `f64`'s `Display` is the shortest string that
    /// parses back to the same value, so `parse(display(x)) == x`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partial::Fraction(x) => write!(f, "{x}"),
            Partial::Single => f.write_str("single"),
            Partial::Full => f.write_str("full"),
            Partial::EntryWise(p) => write!(f, "entry:{p}"),
        }
    }
}

/// Observed training labels and what hiding did.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Images × classes: 1 observed positive, 0 unannotated, -1 observed negative.
    pub labels: Array2<i8>,
    /// Observed positives that are true positives, divided by the true positives
    /// (1.0 when the ground truth has no positive at all). Log this: method.md asks for it.
    pub realised_fraction: f64,
    /// Images that lost every positive and got one back (fraction protocol, not `allow_empty`).
    pub n_restored: usize,
    /// Observed positives that the ground truth does not call positive (external files only).
    pub n_observed_not_true: usize,
}

/// One RNG per image: key from `seed`, stream = image index.
fn image_rng(seed: u64, image: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(image as u64);
    rng
}

/// Apply a protocol to ground truth `truth` (images × classes, values 1 / -1 / 0).
///
/// - `Fraction(f)`: each true positive stays with probability `f`; an image left with none
///   gets one of its positives back, uniformly at random, unless `allow_empty`. Everything
///   that is not an observed positive becomes 0.
/// - `Single`: one true positive per image, uniformly at random; images with no positive get
///   none. Everything else 0.
/// - `Full`: true positives kept, everything else 0.
/// - `EntryWise(p)`: each positive or negative entry becomes 0 with probability `p`, the rest
///   keep their sign. `allow_empty` does not apply.
///
/// Ground-truth 0 always stays 0. Values other than 1 / -1 / 0 count as 0.
///
/// ```
/// use cls_core::protocol::{apply, Partial};
/// use ndarray::array;
/// let truth = array![[1i8, 1, -1, 1], [-1, 1, -1, -1]];
/// // Single positive: one of each image's positives stays, everything else becomes unknown (0).
/// let single = apply(truth.view(), &"single".parse::<Partial>().unwrap(), 7, false);
/// assert_eq!(single.labels.row(0).iter().filter(|&&v| v == 1).count(), 1);
/// assert_eq!(single.labels.row(1).to_vec(), [0, 1, 0, 0]);
/// assert!(single.labels.iter().all(|&v| v == 0 || v == 1));
/// assert_eq!(single.realised_fraction, 2.0 / 4.0);
/// // Deterministic for a seed.
/// assert_eq!(apply(truth.view(), &Partial::Single, 7, false), single);
/// // Labels as given: positives kept, the rest unknown.
/// let full = apply(truth.view(), &Partial::Full, 0, false);
/// assert_eq!(full.labels, array![[1i8, 1, 0, 1], [0, 1, 0, 0]]);
/// ```
pub fn apply(truth: ArrayView2<i8>, partial: &Partial, seed: u64, allow_empty: bool) -> Observed {
    let mut labels = Array2::<i8>::zeros(truth.raw_dim());
    let mut n_restored = 0;
    for (i, (t, out)) in truth.outer_iter().zip(labels.outer_iter_mut()).enumerate() {
        let mut rng = image_rng(seed, i);
        match *partial {
            Partial::Full => keep_positives(t, out, |_| true),
            Partial::Fraction(f) => {
                if hide_fraction(t, out, f, allow_empty, &mut rng) {
                    n_restored += 1;
                }
            }
            Partial::Single => {
                let pos = positives(t);
                if !pos.is_empty() {
                    let pick = pos[rng.random_range(0..pos.len())];
                    keep_positives(t, out, |j| j == pick);
                }
            }
            Partial::EntryWise(p) => {
                for (o, &v) in out.into_iter().zip(t.iter()) {
                    if (v == POS || v == NEG) && rng.random::<f64>() >= p {
                        *o = v;
                    }
                }
            }
        }
    }
    let (realised_fraction, n_observed_not_true) = count(truth, labels.view());
    Observed { labels, realised_fraction, n_restored, n_observed_not_true }
}

/// Column indices of the true positives of one image.
fn positives(t: ArrayView1<i8>) -> Vec<usize> {
    t.iter().enumerate().filter(|(_, &v)| v == POS).map(|(j, _)| j).collect()
}

fn keep_positives(t: ArrayView1<i8>, mut out: ArrayViewMut1<i8>, keep: impl Fn(usize) -> bool) {
    for (j, &v) in t.iter().enumerate() {
        out[j] = if v == POS && keep(j) { POS } else { UNK };
    }
}

/// The fraction protocol for one image; returns whether a positive had to be restored.
fn hide_fraction(
    t: ArrayView1<i8>,
    mut out: ArrayViewMut1<i8>,
    fraction: f64,
    allow_empty: bool,
    rng: &mut ChaCha8Rng,
) -> bool {
    let pos = positives(t);
    let mut kept = 0;
    for &j in &pos {
        // One draw per true positive, in class order.
        if rng.random::<f64>() < fraction {
            out[j] = POS;
            kept += 1;
        }
    }
    if kept == 0 && !pos.is_empty() && !allow_empty {
        out[pos[rng.random_range(0..pos.len())]] = POS;
        return true;
    }
    false
}

/// (observed true positives / true positives, observed positives that are not true positives).
fn count(truth: ArrayView2<i8>, observed: ArrayView2<i8>) -> (f64, usize) {
    let (mut n_true, mut n_hit, mut n_false) = (0usize, 0usize, 0usize);
    for (&t, &o) in truth.iter().zip(observed.iter()) {
        n_true += usize::from(t == POS);
        n_hit += usize::from(t == POS && o == POS);
        n_false += usize::from(t != POS && o == POS);
    }
    let frac = if n_true == 0 { 1.0 } else { n_hit as f64 / n_true as f64 };
    (frac, n_false)
}

/// Take an externally supplied observed-label matrix (a published SPML / SPLC split) as is:
/// check its shape against the ground truth and its values, and count what it keeps.
pub fn merge_external(truth: ArrayView2<i8>, observed: ArrayView2<i8>) -> Result<Observed, ProtocolError> {
    if truth.dim() != observed.dim() {
        return Err(ProtocolError::ShapeMismatch { truth: truth.dim(), observed: observed.dim() });
    }
    if let Some(((row, col), &value)) = observed.indexed_iter().find(|(_, &v)| v != POS && v != NEG && v != UNK) {
        return Err(ProtocolError::BadValue { row, col, value });
    }
    let (realised_fraction, n_observed_not_true) = count(truth, observed);
    Ok(Observed { labels: observed.to_owned(), realised_fraction, n_restored: 0, n_observed_not_true })
}
