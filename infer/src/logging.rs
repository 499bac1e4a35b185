//! Messages on stderr through `tracing`: `cls-infer: <message>` (warnings `cls-infer: warning:`,
//! errors `cls-infer: error:`), filtered by `-q`/`-v` (default: info; `-q` warnings and errors
//! only, `-qq` errors only, `-v` debug). Results printed as they are (the metrics table) use
//! [`report!`](crate::report), at info level.
//!
//! Progress: on a terminal, a bar (messages are printed above it); otherwise a line every
//! `--log-every` seconds (count, rate, ETA) at info level, so `-q` silences it.
//!
//! A failed write to stderr is ignored: a closed stderr must not end the run or panic.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// An info event printed without the `cls-infer: ` prefix (a table, a result).
#[macro_export]
macro_rules! report {
    ($($arg:tt)*) => { tracing::info!(raw = true, $($arg)*) };
}

/// The progress bar being drawn, if any: messages are printed with it suspended.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Write `text` to stderr (above the progress bar when one is drawn); errors are ignored.
fn write_stderr(text: &str) {
    let bar = BAR.lock().ok().and_then(|b| b.clone());
    let write = || {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    };
    match bar {
        Some(b) => b.suspend(write),
        None => write(),
    }
}

struct Message {
    text: String,
    raw: bool,
}

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.text = format!("{value:?}");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "raw" {
            self.raw = value;
        }
    }
}

struct StderrLayer;

impl<S: Subscriber> Layer<S> for StderrLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut m = Message { text: String::new(), raw: false };
        event.record(&mut m);
        let level = *event.metadata().level();
        let text = if m.raw {
            format!("{}\n", m.text)
        } else {
            let kind = match level {
                Level::ERROR => "error: ",
                Level::WARN => "warning: ",
                Level::DEBUG | Level::TRACE => "debug: ",
                Level::INFO => "",
            };
            format!("cls-infer: {kind}{}\n", m.text)
        };
        write_stderr(&text);
    }
}

/// Install the stderr subscriber at `level` (from `-q`/`-v`). Call once, first thing.
pub fn init(level: LevelFilter) {
    let subscriber = tracing_subscriber::registry().with(StderrLayer.with_filter(level));
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Progress of a run: a bar on a terminal, else a line every `every` (none when `every` is zero).
pub struct Progress {
    bar: Option<ProgressBar>,
    total: Option<u64>,
    done: u64,
    started: Instant,
    every: Duration,
    next_line: Instant,
}

impl Progress {
    /// `total`: the number of images, when known before tagging (not for tar shards).
    pub fn start(total: Option<u64>, every: Duration) -> Progress {
        let now = Instant::now();
        let on_terminal = std::io::stderr().is_terminal() && tracing::enabled!(Level::INFO);
        let bar = on_terminal.then(|| {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            let template = if total.is_some() {
                "{bar:40} {pos}/{len} images, {rate} images/s, ETA {eta}"
            } else {
                "{spinner} {pos} images, {rate} images/s"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1}", s.per_sec());
                }));
            }
            if let Ok(mut slot) = BAR.lock() {
                *slot = Some(bar.clone());
            }
            bar
        });
        Progress { bar, total, done: 0, started: now, every, next_line: now + every }
    }

    /// One more image done.
    pub fn inc(&mut self) {
        self.done += 1;
        if let Some(b) = &self.bar {
            b.inc(1);
            return;
        }
        if self.every.is_zero() {
            return;
        }
        let now = Instant::now();
        if now >= self.next_line {
            self.next_line = now + self.every;
            tracing::info!("{}", self.line(now));
        }
    }

    /// `1200/5000 images (24%), 81.2 images/s, ETA 47 s`.
    fn line(&self, now: Instant) -> String {
        let secs = now.duration_since(self.started).as_secs_f64().max(1e-9);
        let rate = self.done as f64 / secs;
        match self.total {
            Some(total) if total > 0 => {
                let left = total.saturating_sub(self.done) as f64 / rate.max(1e-9);
                format!(
                    "{}/{total} images ({:.0}%), {rate:.1} images/s, ETA {}",
                    self.done,
                    100.0 * self.done as f64 / total as f64,
                    duration(left)
                )
            }
            _ => format!("{} images, {rate:.1} images/s", self.done),
        }
    }

    /// Remove the bar.
    pub fn finish(self) {
        if let Some(b) = self.bar {
            if let Ok(mut slot) = BAR.lock() {
                *slot = None;
            }
            b.finish_and_clear();
        }
    }
}

/// `47 s`, `12 min 5 s`, `3 h 20 min`.
fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_durations() {
        assert_eq!(duration(47.2), "47 s");
        assert_eq!(duration(725.0), "12 min 5 s");
        assert_eq!(duration(12000.0), "3 h 20 min");
        let mut p = Progress::start(Some(10), Duration::ZERO);
        p.done = 5;
        let line = p.line(p.started + Duration::from_secs(5));
        assert_eq!(line, "5/10 images (50%), 1.0 images/s, ETA 5 s");
        p.total = None;
        assert_eq!(p.line(p.started + Duration::from_secs(5)), "5 images, 1.0 images/s");
    }
}
