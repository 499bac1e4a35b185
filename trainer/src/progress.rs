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
        return format!("{} min {:02} s", s / 60, s % 60);
    }
    let minutes = (s + 30) / 60;
    format!("{} h {:02} min", minutes / 60, minutes % 60)
}

/// The run's shape, as the estimate needs it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Epochs of the whole run, and those already done (a resumed run).
    pub epochs: usize,
    pub epochs_done: usize,
    pub steps_per_epoch: usize,
    /// Images trained per epoch.
    pub images_per_epoch: usize,
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
    /// `--freeze-backbone` helps: an image backbone with pretrained weights trained end to end.
    pub can_freeze: bool,
    /// Every image of the run (train, validation, test): what a frozen backbone extracts once.
    pub all_images: usize,
    pub resize: (usize, usize),
    pub crop: (usize, usize),
}

/// The run's clock: times the first batches, prints the estimate once, and gives each epoch line
/// its time left. Time is measured per training image, so a short last batch among the timed
/// ones does not skew it.
pub struct RunClock {
    plan: Plan,
    batches: usize,
    images: usize,
    timed_from: Option<(Instant, usize)>,
    /// Seconds and images of the process's first batch, which pays for warm-up (on a GPU,
    /// cuDNN's first calls: 14 s of a Lite0 epoch of 18 s on the H200, BENCHMARKS.md).
    first_batch: Option<(f64, usize)>,
    per_image: Option<f64>,
    epoch_secs: Vec<f64>,
}

impl RunClock {
    pub fn new(plan: Plan) -> RunClock {
        RunClock {
            plan,
            batches: 0,
            images: 0,
            timed_from: None,
            first_batch: None,
            per_image: None,
            epoch_secs: Vec::new(),
        }
    }

    /// After every training batch of `images` images (`start_of_first`: when the process's first
    /// batch began): once the first batches are timed, the estimate line (and, on a CPU for a
    /// long run, the faster options).
    pub fn batch_done(&mut self, start_of_first: Instant, images: usize) {
        self.batches += 1;
        self.images += images;
        if self.per_image.is_some() {
            return;
        }
        // The first batch pays for warm-up (allocations, threads, the decoders' start), so the
        // timing starts after it, unless an epoch has a single batch.
        let timed = TIMED_BATCHES.min(self.plan.steps_per_epoch.saturating_sub(1));
        if self.batches == 1 {
            self.first_batch = Some((start_of_first.elapsed().as_secs_f64(), images));
            if timed > 0 {
                self.timed_from = Some((Instant::now(), self.images));
                return;
            }
        }
        let (from, before) = self.timed_from.unwrap_or((start_of_first, 0));
        let batches = if self.timed_from.is_some() { self.batches - 1 } else { self.batches };
        if batches < timed.max(1) {
            return;
        }
        let per_image = from.elapsed().as_secs_f64() / (self.images - before).max(1) as f64;
        self.per_image = Some(per_image);
        if !quiet() {
            for line in self.estimate_lines(per_image) {
                eprintln!("{line}");
            }
        }
    }

    /// How many batches the measurement covers (all but the warm-up batch, where there was one).
    fn timed_batches(&self) -> usize {
        if self.timed_from.is_some() {
            self.batches - 1
        } else {
            self.batches
        }
    }

    /// Seconds of the rest of the run until epoch `epochs` from `per_image` (training one image):
    /// the training images left, every validation left and the final evaluation, all at `area`
    /// times the pixels. Evaluating an image costs about a third of training on it (a forward
    /// pass against forward and backward).
    fn rest_of_run(&self, per_image: f64, epochs: usize, area: f64) -> f64 {
        let p = &self.plan;
        let left = epochs.saturating_sub(p.epochs_done);
        let train = (left * p.images_per_epoch).saturating_sub(self.images);
        let evaluated = left * p.val_images + p.final_images;
        (train as f64 * per_image + evaluated as f64 * per_image / 3.0) * area
    }

    fn estimate_lines(&self, per_image: f64) -> Vec<String> {
        let p = &self.plan;
        let total = self.rest_of_run(per_image, p.epochs, 1.0);
        let left = p.epochs.saturating_sub(p.epochs_done);
        let mut lines = vec![format!(
            "time: {} per batch of {} ({:.1} images/s, measured on {} batch{} after the first): about {} for \
             the {} epoch{} left ({} batches each) and their evaluation, not counting each epoch's checkpoint \
             (the epoch lines give the time left with everything)",
            human(per_image * p.batch as f64),
            p.batch,
            1.0 / per_image,
            self.timed_batches(),
            if self.timed_batches() == 1 { "" } else { "es" },
            human(total),
            left,
            if left == 1 { "" } else { "s" },
            p.steps_per_epoch
        )];
        if p.cpu && total > LONG_RUN.as_secs_f64() {
            let faster = self.faster_options(per_image, total);
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
    fn faster_options(&self, per_image: f64, total: f64) -> Vec<String> {
        let p = &self.plan;
        let mut out = Vec::new();
        // A resumed run keeps its configuration: only --epochs may change.
        if let Some(o) = p.options.as_ref().filter(|_| p.epochs_done == 0) {
            if o.can_freeze {
                // One forward pass of one network per image, once; the head then trains in seconds.
                let forward = per_image / p.networks.max(1) as f64 / 3.0;
                out.push(format!(
                    "--freeze-backbone (the backbone's features once, then only the head trains): about {}",
                    human(o.all_images as f64 * forward)
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
                    human(self.rest_of_run(per_image, p.epochs, area))
                ));
            }
        }
        let left = p.epochs.saturating_sub(p.epochs_done);
        if left > 1 {
            let per_epoch = total / left as f64;
            let fit = ((LONG_RUN.as_secs_f64() / per_epoch) as usize).clamp(1, left - 1);
            let epochs = p.epochs_done + fit;
            out.push(format!("--epochs {epochs}: about {}", human(self.rest_of_run(per_image, epochs, 1.0))));
        }
        out
    }

    /// After each epoch (`secs`: its whole time, evaluation and checkpoint included): the time
    /// left for the run's remaining `epochs_left` epochs. From the mean of this process's epochs
    /// after its first; after the first alone, from the first less its first batch's warm-up
    /// (the time that batch took beyond the measured time per image).
    pub fn epoch_done(&mut self, secs: f64, epochs_left: usize) -> f64 {
        self.epoch_secs.push(secs);
        let per_epoch = match &self.epoch_secs[..] {
            [first] => {
                let warm_up = match (self.first_batch, self.per_image) {
                    (Some((t, n)), Some(p)) => (t - p * n as f64).max(0.0),
                    _ => 0.0,
                };
                (first - warm_up).max(0.0)
            }
            [_, later @ ..] => later.iter().sum::<f64>() / later.len() as f64,
            [] => 0.0,
        };
        per_epoch * epochs_left as f64
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
        assert_eq!(human(7170.0), "2 h 00 min", "rounded up into the next hour");
        assert_eq!(human(3599.6), "1 h 00 min");
        assert_eq!(human(-1.0), "0.00 s");
        assert_eq!(human(f64::NAN), "?");
    }

    fn plan(cpu: bool) -> Plan {
        Plan {
            epochs: 100,
            epochs_done: 0,
            steps_per_epoch: 10,
            images_per_epoch: 320,
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
        // 1000 batches of 32 images at 2 s, 100 × 64 + 128 images evaluated at 2 / 32 / 3 s each.
        let want = 1000.0 * 2.0 + (6400.0 + 128.0) * (2.0 / 32.0 / 3.0);
        assert!((clock.rest_of_run(2.0 / 32.0, 100, 1.0) - want).abs() < 1e-9);
        let lines = clock.estimate_lines(2.0 / 32.0);
        assert!(lines[0].contains("about 35 min") && lines[0].contains("100 epochs left"), "{lines:?}");
        assert_eq!(lines.len(), 2, "over 30 minutes on a CPU: the faster options");
        let faster = &lines[1];
        // Features: 500 images × 2 / 32 / 2 / 3 s; half the side: a quarter; 30 minutes: 84 epochs.
        assert!(faster.contains("--freeze-backbone") && faster.contains("about 5.2 s"), "{faster}");
        assert!(faster.contains("--resize 128x128 --crop 112x112") && faster.contains("--epochs 84"), "{faster}");
        // On a GPU, or under 30 minutes: the estimate alone.
        assert_eq!(RunClock::new(plan(false)).estimate_lines(2.0 / 32.0).len(), 1);
        assert_eq!(RunClock::new(plan(true)).estimate_lines(0.5 / 32.0).len(), 1);
    }

    #[test]
    fn time_left_is_the_mean_epoch_after_the_first_times_the_epochs_left() {
        let mut clock = RunClock::new(plan(false));
        // The first batch of 32 took 8 s where 32 images take 2 s: 6 s of warm-up.
        (clock.first_batch, clock.per_image) = (Some((8.0, 32)), Some(2.0 / 32.0));
        assert_eq!(clock.epoch_done(26.0, 3), 60.0);
        assert_eq!(clock.epoch_done(14.0, 2), 28.0);
        assert_eq!(clock.epoch_done(12.0, 0), 0.0);
        assert_eq!(clock.epoch_done(13.0, 1), 13.0);
    }
}
