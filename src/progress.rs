//! Progress of a one-shot command (`backfill`, `dlq replay`): a bar with rate and ETA on a
//! terminal; otherwise a plain line every 2 s and one at the end, so that logs of scripts and CI
//! stay readable.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

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
            Some(bar) => bar.finish_with_message(outcome.to_owned()),
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
