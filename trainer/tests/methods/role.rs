//! ROLE.

use super::common::*;
use cls_trainer::methods::*;
use tch::{Device, Tensor};

// ---------- ROLE ----------

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
    let ctx = StepCtx { y: &yt, indices: &it, epoch: 0, lr: 1e-3 };
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
                    assert!(v >= logit(0.4) - 1e-6 && v <= logit(0.6) + 1e-6, "estimate {v} out of range");
                    assert_eq!(v, before[r * c + j]);
                }
            }
        }
    }
    // The loss against an f64 reference built from those estimates.
    let e: M = idx.iter().map(|&r| (0..c).map(|j| est[r as usize * c + j]).collect()).collect();
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
            let mean: f64 = (0..3).map(|r| (0..c).map(|k| sig(x[r][k])).sum::<f64>()).sum::<f64>() / 3.0;
            let reg = 0.5 * 2.0 * (mean - 3.0) / c as f64 / 3.0 * p * (1.0 - p);
            let own = match y[i][j] {
                1.0 => 0.5 * (p - 1.0) + 0.5 * (p - sig(q)),
                0.0 => 0.5 * (p - sig(q)),
                _ => 0.5 * p,
            };
            close(grad[i * c + j], own / 3.0 + reg, &format!("ROLE dL/dx[{i},{j}]"));
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
