//! What the one-shot commands (`backfill`, `dlq replay`) share:
//! - progress: a bar with rate and ETA on a terminal, with log lines scrolling above it
//!   ([`AboveTheBar`]); otherwise a plain line every 2 s and one at the end, so that logs of
//!   scripts and CI stay readable;
//! - the exit code after Ctrl-C (or SIGTERM), 130; the commands stop after the item in flight
//!   when [`crate::shutdown::on_signal`]'s token is cancelled.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Exit code after Ctrl-C (128 + SIGINT), as shells expect.
pub const EXIT_INTERRUPTED: u8 = 130;

/// The bar being drawn, if any: log lines are written above it.
static BAR: std::sync::Mutex<Option<ProgressBar>> = std::sync::Mutex::new(None);

/// A one-shot command's log stream: while a bar is drawn, each complete line is written with the
/// bar cleared first and redrawn after, so the lines scroll above the bar instead of through it.
/// (The JSON logger writes a line in pieces: they are held until the newline.)
pub struct AboveTheBar<W: Write> {
    out: W,
    pending: Vec<u8>,
}

impl<W: Write> AboveTheBar<W> {
    pub fn new(out: W) -> Self {
        AboveTheBar { out, pending: Vec::new() }
    }
}

impl<W: Write> Write for AboveTheBar<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if let Some(end) = self.pending.iter().rposition(|b| *b == b'\n') {
            let lines: Vec<u8> = self.pending.drain(..=end).collect();
            let bar = BAR.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match bar {
                Some(bar) => bar.suspend(|| self.out.write_all(&lines))?,
                None => self.out.write_all(&lines)?,
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// How one command names its work in the progress line, e.g. `backfill: 3 published, 4 published
/// before, of 7`.
#[derive(Clone, Copy, Debug)]
pub struct Words {
    /// The command, first on each line.
    pub command: &'static str,
    /// What a finished item is ("published", "replayed").
    pub done: &'static str,
    /// What an item passed over is ("published before", "skipped").
    pub skipped: &'static str,
    /// What the bar counts ("images", "dead letters").
    pub items: &'static str,
}

/// Shows progress: a bar on a terminal, else a plain line every 2 s and at the end.
pub struct Progress {
    words: Words,
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
    skipped: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    pub fn new(total: u64, words: Words) -> Progress {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout());
            let template = format!("{{spinner}} [{{bar:40}}] {{pos}}/{{len}} {} · {{per_sec}} · ETA {{eta}} {{msg}}", words.items);
            bar.set_style(ProgressStyle::with_template(&template).expect("a valid template").progress_chars("=> "));
            *BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
            bar
        });
        let now = Instant::now();
        Progress { words, bar, total, done: 0, skipped: 0, started: now, last_line: now }
    }

    /// One item finished.
    pub fn done(&mut self) {
        self.done += 1;
        self.show();
    }

    /// One item passed over.
    pub fn skipped(&mut self) {
        self.skipped += 1;
        if let Some(bar) = &self.bar {
            bar.set_message(format!("({} {})", self.skipped, self.words.skipped));
        }
    }

    fn rate(&self) -> f64 {
        self.done as f64 / self.started.elapsed().as_secs_f64().max(0.001)
    }

    /// `<command>: N <done>, N <skipped>, of N · R/s · ETA S`.
    pub fn line(&self) -> String {
        let left = self.total.saturating_sub(self.done + self.skipped);
        let eta = if self.rate() > 0.0 { format!("{:.0} s", left as f64 / self.rate()) } else { "?".into() };
        let w = &self.words;
        format!(
            "{}: {} {}, {} {}, of {} · {:.1}/s · ETA {eta}",
            w.command,
            self.done,
            w.done,
            self.skipped,
            w.skipped,
            self.total,
            self.rate()
        )
    }

    fn show(&mut self) {
        match &self.bar {
            Some(bar) => bar.set_position(self.done),
            None if self.last_line.elapsed() >= Duration::from_secs(2) => {
                println!("{}", self.line());
                self.last_line = Instant::now();
            }
            None => {}
        }
    }

    /// The summary: the last state of the bar, or the last plain line, with `outcome`.
    pub fn finish(&self, outcome: &str) {
        match &self.bar {
            Some(bar) => {
                bar.finish_with_message(outcome.to_owned());
                *BAR.lock().unwrap_or_else(|e| e.into_inner()) = None;
                // The finished bar stays; what follows starts on a line of its own.
                println!();
            }
            None => println!("{} · {outcome}", self.line()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_line_names_the_command_and_its_counts() {
        let words = Words { command: "replay", done: "replayed", skipped: "skipped", items: "dead letters" };
        let mut p = Progress { bar: None, ..Progress::new(5, words) };
        p.done();
        p.done();
        p.skipped();
        assert!(p.line().starts_with("replay: 2 replayed, 1 skipped, of 5 · "), "{}", p.line());
    }
}
