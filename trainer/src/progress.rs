//! What a run tells the person waiting for it (issue 27): how long it will take, measured on its
//! first batches; the time left on every epoch line; within an epoch, a progress bar on a
//! terminal, else a line every `--progress-every` seconds so that a log never goes silent; and,
//! on a CPU, when the run would take over 30 minutes, the faster options with their estimates
//! from the same measurement. `-q` silences all of it (warnings and errors still print).
//!
//! It imports nothing of the trainer: the loop hands it the run's shape ([`Plan`]).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How progress is shown (`-q`, `--progress-every`), set once by `main`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub quiet: bool,
    /// Off a terminal: a progress line within an epoch this often (`None`: never).
    pub every: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { quiet: false, every: Some(Duration::from_secs(DEFAULT_EVERY_SECS)) }
    }
}

/// `--progress-every`'s default, in seconds.
pub const DEFAULT_EVERY_SECS: u64 = 30;

/// A run estimated to take longer than this on a CPU is told its faster options.
pub const LONG_RUN: Duration = Duration::from_secs(30 * 60);

/// Batches timed for the first estimate (after the first batch, which pays for warm-up).
pub const TIMED_BATCHES: usize = 5;

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Set how progress is shown, for the whole process (the first call wins).
pub fn configure(settings: Settings) {
    let _ = SETTINGS.set(settings);
}

pub fn settings() -> Settings {
    SETTINGS.get().copied().unwrap_or_default()
}

/// Whether `-q` was given.
pub fn quiet() -> bool {
    settings().quiet
}

/// Print a progress message (not a warning) unless `-q`.
pub fn say(message: &str) {
    if !quiet() {
        eprintln!("{message}");
    }
}

/// `secs` as a person reads it: `0.14 s`, `8.4 s`, `4 min 05 s`, `2 h 15 min`.
pub fn human(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".into();
    }
    let secs = secs.max(0.0);
    if secs < 1.0 {
        return format!("{secs:.2} s");
    }
    if secs < 60.0 {
        return format!("{secs:.1} s");
    }
    let s = secs.round() as u64;
    if s < 3600 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, (s % 3600 + 30) / 60)
    }
}

/// The run's shape, as the estimate needs it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Epochs of the whole run, and those already done (a resumed run).
    pub epochs: usize,
    pub epochs_done: usize,
    pub steps_per_epoch: usize,
    pub batch: usize,
    /// Images evaluated after each epoch (validation), and at the end (validation and test again).
    pub val_images: usize,
    pub final_images: usize,
    /// Networks trained side by side (2 for the co-training methods).
    pub networks: usize,
    /// Training on a CPU: only then are faster options suggested.
    pub cpu: bool,
    /// What the faster options can change; `None`: suggest nothing (a head over features).
    pub options: Option<Options>,
}

/// The options a slow image run can change, for their estimates.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--freeze-backbone` is available (an image backbone trained end to end).
    pub can_freeze: bool,
    /// Every image of the run (train, validation, test): what a frozen backbone extracts once.
    pub all_images: usize,
    pub resize: (usize, usize),
    pub crop: (usize, usize),
}

/// The run's clock: times the first batches, prints the estimate once, and gives each epoch line
/// its time left.
pub struct RunClock {
    plan: Plan,
    batches: usize,
    timed_from: Option<Instant>,
    per_batch: Option<f64>,
    epoch_secs: Vec<f64>,
}

impl RunClock {
    pub fn new(plan: Plan) -> RunClock {
        RunClock { plan, batches: 0, timed_from: None, per_batch: None, epoch_secs: Vec::new() }
    }

    /// Seconds per training batch, once measured.
    pub fn per_batch(&self) -> Option<f64> {
        self.per_batch
    }

    /// After every training batch: once the first batches are timed, the estimate line (and, on
    /// a CPU for a long run, the faster options).
    pub fn batch_done(&mut self, start_of_first: Instant) {
        self.batches += 1;
        if self.per_batch.is_some() {
            return;
        }
        // The first batch pays for warm-up (allocations, threads, the decoders' start), so the
        // timing starts after it, unless an epoch has a single batch.
        let timed = TIMED_BATCHES.min(self.plan.steps_per_epoch.saturating_sub(1));
        if self.batches == 1 && timed > 0 {
            self.timed_from = Some(Instant::now());
            return;
        }
        let (from, n) = match self.timed_from {
            Some(t) => (t, self.batches - 1),
            None => (start_of_first, self.batches),
        };
        if n < timed.max(1) {
            return;
        }
        let per_batch = from.elapsed().as_secs_f64() / n as f64;
        self.per_batch = Some(per_batch);
        if !quiet() {
            for line in self.estimate_lines(per_batch) {
                eprintln!("{line}");
            }
        }
    }

    /// Seconds of the rest of the run from `per_batch`: the training batches left, every
    /// validation left and the final evaluation. Evaluating an image costs about a third of
    /// training on it (a forward pass against forward and backward).
    fn rest_of_run(&self, per_batch: f64, epochs: usize, area: f64) -> f64 {
        let p = &self.plan;
        let left = epochs.saturating_sub(p.epochs_done);
        let batches = (left * p.steps_per_epoch).saturating_sub(self.batches);
        let eval_image = per_batch / p.batch.max(1) as f64 / 3.0;
        (batches as f64 * per_batch + (left * p.val_images + p.final_images) as f64 * eval_image) * area
    }

    fn estimate_lines(&self, per_batch: f64) -> Vec<String> {
        let p = &self.plan;
        let total = self.rest_of_run(per_batch, p.epochs, 1.0);
        let left = p.epochs.saturating_sub(p.epochs_done);
        let mut lines = vec![format!(
            "time: {} per batch of {} ({:.1} images/s, measured on the first {} batches): about {} for the {} \
             epoch{} left ({} batches each) and their evaluation",
            human(per_batch),
            p.batch,
            p.batch as f64 / per_batch,
            self.batches,
            human(total),
            left,
            if left == 1 { "" } else { "s" },
            p.steps_per_epoch
        )];
        if p.cpu && total > LONG_RUN.as_secs_f64() {
            let faster = self.faster_options(per_batch, total);
            if !faster.is_empty() {
                lines.push(format!(
                    "note: that is long for a CPU; faster, estimated from the same measurement: {}",
                    faster.join("; ")
                ));
            }
        }
        lines
    }

    /// The faster options that apply, each with its estimate.
    fn faster_options(&self, per_batch: f64, total: f64) -> Vec<String> {
        let p = &self.plan;
        let mut out = Vec::new();
        if let Some(o) = &p.options {
            if o.can_freeze {
                // One forward pass of one network per image, once; the head then trains in seconds.
                let per_image = per_batch / p.batch.max(1) as f64 / p.networks.max(1) as f64 / 3.0;
                out.push(format!(
                    "--freeze-backbone (the backbone's features once, then only the head trains): about {}",
                    human(o.all_images as f64 * per_image)
                ));
            }
            let (ch, cw) = o.crop;
            if ch.min(cw) >= 128 {
                let half = |v: usize| (v / 2 / 16 * 16).max(16);
                let (h2, w2) = (half(ch), half(cw));
                let area = (h2 * w2) as f64 / (ch * cw) as f64;
                let (rh, rw) = o.resize;
                out.push(format!(
                    "--resize {}x{} --crop {h2}x{w2}: about {}",
                    (rh * h2 / ch).max(h2),
                    (rw * w2 / cw).max(w2),
                    human(self.rest_of_run(per_batch, p.epochs, area))
                ));
            }
        }
        let left = p.epochs.saturating_sub(p.epochs_done);
        if left > 1 {
            let per_epoch = total / left as f64;
            let fit = ((LONG_RUN.as_secs_f64() / per_epoch) as usize).clamp(1, left - 1);
            let epochs = p.epochs_done + fit;
            out.push(format!("--epochs {epochs}: about {}", human(self.rest_of_run(per_batch, epochs, 1.0))));
        }
        out
    }

    /// After each epoch (`secs`: its whole time, evaluation and checkpoint included): the time
    /// left for the run's remaining `epochs_left` epochs, from the mean epoch so far.
    pub fn epoch_done(&mut self, secs: f64, epochs_left: usize) -> f64 {
        self.epoch_secs.push(secs);
        let mean = self.epoch_secs.iter().sum::<f64>() / self.epoch_secs.len() as f64;
        mean * epochs_left as f64
    }
}

/// One epoch's progress within the epoch: a bar on a terminal, a line every
/// [`Settings::every`] off one, nothing with `-q`.
pub struct EpochProgress {
    bar: ProgressBar,
    every: Option<Duration>,
    start: Instant,
    last_line: Instant,
    epoch: usize,
    epochs: usize,
    steps: usize,
}

impl EpochProgress {
    /// Epoch `epoch` (1-based) of `epochs`, `steps` batches.
    pub fn start(epoch: usize, epochs: usize, steps: usize) -> EpochProgress {
        let s = settings();
        let terminal = std::io::stderr().is_terminal();
        let bar = if s.quiet || !terminal {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new(steps as u64);
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "epoch {epoch}/{epochs} [{{bar:30}}] {{pos}}/{{len}} {{msg}} eta {{eta}}"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        };
        let every = if s.quiet || terminal { None } else { s.every };
        let now = Instant::now();
        EpochProgress { bar, every, start: now, last_line: now, epoch, epochs, steps }
    }

    /// After batch `done` (1-based), `images` trained so far this epoch, the mean loss of the
    /// batch.
    pub fn step(&mut self, done: usize, images: usize, loss: f64) {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = images as f64 / secs.max(1e-9);
        self.bar.set_message(format!("loss {loss:.4}  {rate:.0} img/s"));
        self.bar.set_position(done as u64);
        if let Some(every) = self.every {
            if self.last_line.elapsed() >= every && done < self.steps {
                self.last_line = Instant::now();
                let left = secs / done as f64 * (self.steps - done) as f64;
                eprintln!(
                    "epoch {}/{}: batch {done}/{} ({:.0}%), loss {loss:.4}, {rate:.1} images/s, the epoch's training \
                     ends in {}",
                    self.epoch,
                    self.epochs,
                    self.steps,
                    100.0 * done as f64 / self.steps.max(1) as f64,
                    human(left)
                );
            }
        }
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_person_reads_them() {
        assert_eq!(human(8.44), "8.4 s");
        assert_eq!(human(245.0), "4 min 05 s");
        assert_eq!(human(2.0 * 3600.0 + 15.0 * 60.0 + 10.0), "2 h 15 min");
        assert_eq!(human(0.137), "0.14 s");
        assert_eq!(human(-1.0), "0.00 s");
        assert_eq!(human(f64::NAN), "?");
    }

    fn plan(cpu: bool) -> Plan {
        Plan {
            epochs: 100,
            epochs_done: 0,
            steps_per_epoch: 10,
            batch: 32,
            val_images: 64,
            final_images: 128,
            networks: 2,
            cpu,
            options: Some(Options { can_freeze: true, all_images: 500, resize: (256, 256), crop: (224, 224) }),
        }
    }

    #[test]
    fn the_estimate_counts_every_batch_and_evaluation_left() {
        let clock = RunClock::new(plan(true));
        // 1000 batches of 2 s, 100 × 64 + 128 images evaluated at 2 / 32 / 3 s each.
        let want = 1000.0 * 2.0 + (6400.0 + 128.0) * (2.0 / 32.0 / 3.0);
        assert!((clock.rest_of_run(2.0, 100, 1.0) - want).abs() < 1e-9);
        let lines = clock.estimate_lines(2.0);
        assert!(lines[0].contains("about 35 min") && lines[0].contains("100 epochs left"), "{lines:?}");
        assert_eq!(lines.len(), 2, "over 30 minutes on a CPU: the faster options");
        let faster = &lines[1];
        // Features: 500 images × 2 / 32 / 2 / 3 s; half the side: a quarter; 30 minutes: 84 epochs.
        assert!(faster.contains("--freeze-backbone") && faster.contains("about 5.2 s"), "{faster}");
        assert!(faster.contains("--resize 128x128 --crop 112x112") && faster.contains("--epochs 84"), "{faster}");
        // On a GPU, or under 30 minutes: the estimate alone.
        assert_eq!(RunClock::new(plan(false)).estimate_lines(2.0).len(), 1);
        assert_eq!(RunClock::new(plan(true)).estimate_lines(0.5).len(), 1);
    }

    #[test]
    fn time_left_is_the_mean_epoch_times_the_epochs_left() {
        let mut clock = RunClock::new(plan(false));
        assert_eq!(clock.epoch_done(10.0, 3), 30.0);
        assert_eq!(clock.epoch_done(14.0, 2), 24.0);
        assert_eq!(clock.epoch_done(12.0, 0), 0.0);
    }
}
