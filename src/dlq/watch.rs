//! [`DlqWatch`]: the daemon's view of the dead-letter topic for the status page, read from the
//! topic itself on a thread of its own.

use chrono::{DateTime, Utc};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use slog::{warn, Logger};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::error::DlqError;
use super::read::{reader, unreachable, watermarks};
use super::record::DeadLetter;

/// Dead letters the status page lists.
pub const PANEL_LAST: usize = 20;

/// One dead letter as the status page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Brief {
    pub time: Option<DateTime<Utc>>,
    pub nasa_id: String,
    pub reason: String,
    pub error: String,
    pub place: String,
    pub replay_count: u32,
    /// The trace of its event (32 hex digits; None: written before traces).
    pub trace_id: Option<String>,
}

/// What the daemon knows of the dead-letter topic: everything on it, read from its start.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DlqPanel {
    /// Dead letters on the topic (within its retention), replayed ones included.
    pub on_topic: u64,
    pub by_reason: BTreeMap<String, u64>,
    /// The last [`PANEL_LAST`], newest first.
    pub last: Vec<Brief>,
    /// Whether the reader reached the end the topic had when it started.
    pub read_to_end: bool,
    /// Why the topic cannot be read, while it cannot.
    pub error: Option<String>,
}

impl DlqPanel {
    fn add(&mut self, l: DeadLetter) {
        self.on_topic += 1;
        *self.by_reason.entry(l.reason.clone()).or_insert(0) += 1;
        let brief = Brief {
            time: l.time,
            place: l.place(),
            trace_id: l.trace.map(|t| t.trace_id.to_string()),
            nasa_id: l.nasa_id,
            reason: l.reason,
            error: l.error,
            replay_count: l.replay_count,
        };
        let at = self.last.partition_point(|b| b.time > brief.time);
        self.last.insert(at, brief);
        self.last.truncate(PANEL_LAST);
    }
}

/// The daemon's view of the dead-letter topic, kept current by [`DlqWatch::start`].
#[derive(Clone, Default)]
pub struct DlqWatch(Arc<Mutex<DlqPanel>>);

impl DlqWatch {
    pub fn panel(&self) -> DlqPanel {
        self.0.lock().expect("dlq panel lock").clone()
    }

    fn update(&self, f: impl FnOnce(&mut DlqPanel)) {
        f(&mut self.0.lock().expect("dlq panel lock"))
    }

    /// Reads the dead-letter topic from its start, then follows it, on a thread of its own for
    /// the life of the process. The topic is the truth: it holds the dead letters of every
    /// process, and this one's restarts lose nothing.
    pub fn start(&self, brokers: String, dlq_topic: String, log: Logger) {
        let watch = self.clone();
        std::thread::Builder::new()
            .name("dlq-watch".into())
            .spawn(move || loop {
                if let Err(e) = watch.follow(&brokers, &dlq_topic, &log) {
                    warn!(log, "cannot read the dead-letter topic; trying again in 5 s"; "error.type" => "kafka", "error.message" => e.to_string());
                    watch.update(|p| p.error = Some(e.to_string()));
                    std::thread::sleep(Duration::from_secs(5));
                }
            })
            .expect("can start a thread");
    }

    /// Follows the topic until a read fails; a new call starts again from the start.
    fn follow(&self, brokers: &str, topic: &str, log: &Logger) -> Result<(), DlqError> {
        let c = reader(brokers, "nasa-ingest-dlq-watch", log)?;
        let ends = watermarks(&c, brokers, topic, log)?;
        let mut tpl = TopicPartitionList::new();
        for p in ends.keys() {
            tpl.add_partition_offset(topic, *p, Offset::Beginning).expect("a valid offset");
        }
        c.assign(&tpl).map_err(|e| unreachable(brokers, e))?;
        self.update(|p| *p = DlqPanel::default());
        let mut next: BTreeMap<i32, i64> = ends.iter().map(|(p, (low, _))| (*p, *low)).collect();
        loop {
            match c.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    next.insert(m.partition(), m.offset() + 1);
                    let letter = DeadLetter::from_message(&m);
                    self.update(|p| p.add(letter));
                }
                // librdkafka reconnects by itself, and its context logs the outage: not a WARN per poll.
                Some(Err(e)) => {
                    slog::debug!(log, "reading the dead-letter topic failed; reading on"; "error.type" => "kafka", "error.message" => e.to_string())
                }
                None => {}
            }
            let caught_up = next.iter().all(|(p, n)| *n >= ends[p].1);
            self.update(|p| {
                p.read_to_end |= caught_up;
                p.error = None;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_panel_keeps_the_newest_twenty_newest_first_and_counts_all() {
        let mut panel = DlqPanel::default();
        for i in 0..30 {
            // Two partitions read interleaved: times do not arrive in order.
            panel.add(DeadLetter::sample(
                i % 2,
                i as i64,
                if i % 3 == 0 { "too_large" } else { "host_not_allowed" },
                0,
                (i * 7 % 30) as i64,
            ));
        }
        assert_eq!(panel.on_topic, 30);
        assert_eq!(panel.by_reason["too_large"], 10);
        assert_eq!(panel.last.len(), PANEL_LAST);
        assert!(panel.last.windows(2).all(|w| w[0].time >= w[1].time));
        assert_eq!(panel.last[0].time, Utc.timestamp_opt(1_800_000_029, 0).single());
    }
}
