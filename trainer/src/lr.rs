//! The learning rate of every step of a run: the schedule's kind (`--schedule`) and the rate at
//! each step. It imports nothing of the trainer, so the configuration (which names the kind) and
//! the training loop (which asks for the rate) both sit above it.

use serde::{Deserialize, Serialize};

/// How the learning rate moves over the run (after `--warmup-epochs`, if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Cosine decay to 0 at the last step (the paper's).
    #[default]
    Cosine,
    /// The same rate throughout: end-to-end comparisons where a network's peak and decline must
    /// fall inside the run.
    Constant,
    /// Multiplied by --lr-gamma every --lr-step-epochs epochs (PyTorch's StepLR).
    Step,
}

/// The learning rate of every step of a run (`--lr`, `--schedule`, `--warmup-epochs`,
/// `--lr-step-epochs`, `--lr-gamma`). Steps count from 0 over the whole run, so a resumed run
/// continues the same curve (unless a resume changes `--epochs`: the cosine then stretches; the
/// step schedule's interval is resolved into config.toml when the run starts).
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    pub base: f64,
    pub kind: Schedule,
    pub steps_per_epoch: usize,
    pub epochs: usize,
    pub warmup_epochs: usize,
    /// `--schedule step`: epochs between decays, and the factor of each.
    pub step_epochs: usize,
    pub gamma: f64,
}

impl LrSchedule {
    /// The rate of step `step` (0-based): a linear warm-up to `base` over the warm-up epochs'
    /// steps (its first step at base/steps), then the schedule over the remaining steps: cosine
    /// from `base` towards 0 (reached one step past the last), constant, or decayed by `gamma`
    /// every `step_epochs` epochs counted from the end of the warm-up.
    pub fn at(&self, step: usize) -> f64 {
        let warm = self.warmup_epochs * self.steps_per_epoch;
        if step < warm {
            return self.base * (step + 1) as f64 / warm as f64;
        }
        let t = step - warm;
        match self.kind {
            Schedule::Constant => self.base,
            Schedule::Cosine => {
                let span = (self.epochs * self.steps_per_epoch).saturating_sub(warm).max(1);
                self.base * 0.5 * (1.0 + (std::f64::consts::PI * t.min(span) as f64 / span as f64).cos())
            }
            Schedule::Step => {
                let decays = t / self.steps_per_epoch / self.step_epochs.max(1);
                self.base * self.gamma.powi(decays.min(i32::MAX as usize) as i32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: Schedule, warmup_epochs: usize) -> LrSchedule {
        LrSchedule { base: 1.0, kind, steps_per_epoch: 10, epochs: 10, warmup_epochs, step_epochs: 3, gamma: 0.1 }
    }

    #[test]
    fn cosine_starts_at_the_rate_and_reaches_zero_one_step_past_the_end() {
        let s = schedule(Schedule::Cosine, 0);
        assert_eq!(s.at(0), 1.0);
        assert!((s.at(50) - 0.5).abs() < 1e-12);
        assert!(s.at(99) > 0.0 && s.at(99) < 1e-3);
        assert!(s.at(100).abs() < 1e-12);
        assert!((1..100).all(|i| s.at(i) < s.at(i - 1)));
    }

    #[test]
    fn constant_and_step_follow_the_epochs() {
        let c = schedule(Schedule::Constant, 0);
        assert!((0..100).all(|i| c.at(i) == 1.0));
        let s = schedule(Schedule::Step, 0);
        // Epochs 1-3 at 1, 4-6 at 0.1, 7-9 at 0.01, 10 at 0.001 (PyTorch's StepLR(3, 0.1)).
        let per_epoch: Vec<f64> = (0..10).map(|e| s.at(e * 10 + 9)).collect();
        let want = [1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001];
        for (got, want) in per_epoch.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{per_epoch:?}");
        }
        assert_eq!(s.at(29), 1.0);
        assert!((s.at(30) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn warmup_rises_linearly_then_the_schedule_starts_at_the_full_rate() {
        let s = schedule(Schedule::Cosine, 2);
        assert!((s.at(0) - 0.05).abs() < 1e-12);
        assert!((s.at(19) - 1.0).abs() < 1e-12);
        assert_eq!(s.at(20), 1.0);
        // The cosine spans the 80 steps after the warm-up.
        assert!((s.at(60) - 0.5).abs() < 1e-12);
        let st = schedule(Schedule::Step, 1);
        assert_eq!(st.at(39), 1.0);
        assert!((st.at(40) - 0.1).abs() < 1e-12);
    }
}
