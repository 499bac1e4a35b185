//! Shared by the methods tests: independent f64 references written with plain loops, tensor
//! plumbing and a tiny deterministic generator of quantised logits (many exact ties).

use cls_trainer::methods::*;
use tch::{Device, Kind, Tensor};

pub type M = Vec<Vec<f64>>;

// ---------- f64 reference pieces ----------

pub fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}
/// −ln σ(x)
pub fn nlp(x: f64) -> f64 {
    softplus(-x)
}
/// −ln(1 − σ(x))
pub fn nl1p(x: f64) -> f64 {
    softplus(x)
}
pub fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
pub fn bce(x: f64, t: f64) -> f64 {
    t * nlp(x) + (1.0 - t) * nl1p(x)
}
pub fn flat(m: &M) -> Vec<f64> {
    m.iter().flatten().copied().collect()
}
/// Indices of `cands` ordered by value (ascending or descending), ties by index, first `count`.
pub fn pick_ref(vals: &[f64], cands: &[usize], count: usize, largest: bool) -> Vec<usize> {
    let mut c = cands.to_vec();
    c.sort_by(|&a, &b| {
        let o = vals[a].partial_cmp(&vals[b]).unwrap();
        (if largest { o.reverse() } else { o }).then(a.cmp(&b))
    });
    c.truncate(count);
    c
}
pub fn count_ref(r: f64, n: usize) -> usize {
    ((r * n as f64) + 1e-9).floor() as usize
}
pub fn rate_ref(e: usize, tau: f64) -> f64 {
    1.0 - (e as f64 / 10.0 * tau).min(tau)
}

// ---------- tensor plumbing ----------

pub fn t(m: &M) -> Tensor {
    let (b, c) = (m.len() as i64, m[0].len() as i64);
    let v: Vec<f32> = flat(m).iter().map(|&x| x as f32).collect();
    Tensor::from_slice(&v).reshape([b, c])
}
pub fn vec_f(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.detach().to_kind(Kind::Double).reshape([-1])).unwrap()
}
pub fn vec_b(t: &Tensor) -> Vec<bool> {
    vec_f(&t.to_kind(Kind::Double)).iter().map(|&v| v != 0.0).collect()
}
pub fn set(mask: &[bool]) -> Vec<usize> {
    mask.iter().enumerate().filter(|(_, &b)| b).map(|(i, _)| i).collect()
}
pub fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what}: got {a}, expected {b}");
}

/// Runs one step of `name` and returns (loss, per_net, flagged as index sets).
pub fn run(name: &str, cfg: &MethodConfig, logits: &[M], y: &M, epoch: usize) -> (f64, Vec<f64>, Vec<Vec<usize>>) {
    let mut m = build(name, cfg, y.len() as i64, y[0].len() as i64, Device::Cpu).unwrap();
    run_on(m.as_mut(), logits, y, &(0..y.len() as i64).collect::<Vec<_>>(), epoch)
}
pub fn run_on(m: &mut dyn Method, logits: &[M], y: &M, idx: &[i64], epoch: usize) -> (f64, Vec<f64>, Vec<Vec<usize>>) {
    let (yt, it) = (t(y), Tensor::from_slice(idx));
    let ctx = StepCtx { y: &yt, indices: &it, epoch, lr: 1e-3 };
    let ls: Vec<Tensor> = logits.iter().map(t).collect();
    let out = m.step(&ls, &ctx);
    assert_eq!(out.per_net.len(), m.num_networks());
    let flagged = out.flagged.iter().map(|f| set(&vec_b(f))).collect();
    (vec_f(&out.loss)[0], out.per_net, flagged)
}

/// A deterministic generator of quantised logits (many exact ties) and labels.
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn logits(&mut self, b: usize, c: usize) -> M {
        (0..b).map(|_| (0..c).map(|_| (self.next() % 17) as f64 * 0.5 - 4.0).collect()).collect()
    }
    pub fn labels(&mut self, b: usize, c: usize) -> M {
        (0..b).map(|_| (0..c).map(|_| [1.0, 0.0, 0.0, 0.0, 0.0, -1.0][(self.next() % 6) as usize]).collect()).collect()
    }
}

// ---------- references shared by several files ----------

/// Reference CLS selection for f (eq. 1, 3, 5): returns (kept flat indices' mask, flagged mask).
pub fn cls_select_ref(
    own: &[f64],
    other: &[f64],
    y: &[f64],
    r_h: f64,
    r_l: f64,
    peer: bool,
    self_: bool,
) -> (Vec<bool>, Vec<bool>) {
    let n: Vec<usize> = (0..y.len()).filter(|&i| y[i] == 0.0).collect();
    let nf = if peer { pick_ref(other, &n, count_ref(r_h, n.len()), false) } else { n.clone() };
    let nf2 = if self_ { pick_ref(own, &nf, count_ref(r_l, nf.len()), true) } else { nf.clone() };
    let keep = (0..y.len()).map(|i| y[i] != 0.0 || nf2.contains(&i)).collect();
    let flagged = (0..y.len()).map(|i| y[i] == 0.0 && !nf.contains(&i)).collect();
    (keep, flagged)
}

/// (1/B) Σ over all entries of `per_entry(x, y)`.
pub fn sum_ref(x: &M, y: &M, per_entry: impl Fn(f64, f64) -> f64) -> f64 {
    let s: f64 = flat(x).iter().zip(flat(y)).map(|(&x, y)| per_entry(x, y)).sum();
    s / x.len() as f64
}

pub fn epr_reg(p: &M, k: f64) -> f64 {
    let c = p[0].len() as f64;
    let mean: f64 = p.iter().map(|row| row.iter().sum::<f64>()).sum::<f64>() / p.len() as f64;
    // Cole et al.'s /C² times C: the data term here sums over C classes instead of averaging.
    (mean - k).powi(2) / c
}

pub fn sigm(x: &M) -> M {
    x.iter().map(|r| r.iter().map(|&v| sig(v)).collect()).collect()
}

pub fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}
