//! The keep-rate schedule of Algorithm 1, step 12 ("Schedules").

/// R(e) = 1 − min(e/E_k · τ, τ), with e the number of **completed** epochs: the first epoch keeps
/// everything and the full rate τ applies from e = E_k on. `e_k <= 0` means no ramp: R = 1 − τ
/// from the first epoch. Used for R_h (τ_h), R_l (τ_l) and the co-teaching forget rate.
pub fn keep_rate(epoch: usize, e_k: f64, tau: f64) -> f64 {
    let removed = if e_k > 0.0 { (epoch as f64 / e_k * tau).min(tau) } else { tau };
    1.0 - removed
}
