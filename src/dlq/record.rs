//! A dead letter: the failed event's key and payload, with headers that say why it failed and
//! where it was read. The consumer's pipeline writes it ([`dead_letter_of`]); `dlq list`,
//! `dlq replay` and the status page's watch read it ([`DeadLetter`]); a replay sends its event
//! back ([`replay_of`]). The header names are written and read only through [`header`], and
//! the trace's (`traceparent`, `tracestate`) through [`crate::trace`]: a dead letter stays in
//! the trace of its event, and so does its replay.

use chrono::{DateTime, TimeZone, Utc};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde::Serialize;

use super::reason::Permanent;
use crate::config::DlqFilter;
use crate::kafka::header_text;
use crate::trace::TraceContext;

/// The headers' names.
pub mod header {
    /// Of a dead letter: its reason's name ([`super::super::reason::Reason::as_str`]).
    pub const REASON: &str = "reason";
    /// Of a dead letter: the failure's message, which says what to do.
    pub const ERROR: &str = "error";
    /// Of a dead letter: the topic its event was read from.
    pub const SOURCE_TOPIC: &str = "source_topic";
    /// Of a dead letter: the partition its event was read from.
    pub const SOURCE_PARTITION: &str = "source_partition";
    /// Of a dead letter: its event's offset.
    pub const SOURCE_OFFSET: &str = "source_offset";
    /// Of a replayed event (and of its dead letter if it fails again): how often it was replayed.
    pub const REPLAY_COUNT: &str = "replay_count";
    /// Of a replayed event (and of its dead letter if it fails again): `partition/offset` of the
    /// dead letter it was replayed from.
    pub const REPLAYED_FROM: &str = "replayed_from";
}

/// The dead letter of `msg` for `dlq_topic`: its key and payload, why it failed and where it was
/// read, in `span` (the dead-letter stage's span of the event's trace). A replayed event keeps its
/// `replay_count` and `replayed_from`, so that `dlq replay` can tell how often it came back
/// already (its loop guard).
pub fn dead_letter_of<'a, M: Message>(
    msg: &'a M,
    why: &Permanent,
    dlq_topic: &'a str,
    span: &TraceContext,
) -> FutureRecord<'a, [u8], [u8]> {
    let (partition, offset) = (msg.partition().to_string(), msg.offset().to_string());
    let mut headers = OwnedHeaders::new()
        .insert(Header { key: header::REASON, value: Some(why.kind()) })
        .insert(Header { key: header::ERROR, value: Some(&why.to_string()) })
        .insert(Header { key: header::SOURCE_TOPIC, value: Some(msg.topic()) })
        .insert(Header { key: header::SOURCE_PARTITION, value: Some(&partition) })
        .insert(Header { key: header::SOURCE_OFFSET, value: Some(&offset) });
    headers = span.add_to(headers);
    for key in [header::REPLAY_COUNT, header::REPLAYED_FROM] {
        if let Some(value) = header_text(msg, key) {
            headers = headers.insert(Header { key, value: Some(&value) });
        }
    }
    let record = FutureRecord::<[u8], [u8]>::to(dlq_topic).payload(msg.payload().unwrap_or_default()).headers(headers);
    match msg.key() {
        Some(key) => record.key(key),
        None => record,
    }
}

/// The event a replay of `l` sends to `topic`: its original key and payload, one more
/// `replay_count`, `replayed_from` naming `l`, and `span` (the replay's span, in `l`'s trace).
pub fn replay_of<'a>(l: &'a DeadLetter, topic: &'a str, span: &TraceContext) -> FutureRecord<'a, [u8], [u8]> {
    let (count, from) = ((l.replay_count + 1).to_string(), l.place());
    let headers = OwnedHeaders::new()
        .insert(Header { key: header::REPLAY_COUNT, value: Some(&count) })
        .insert(Header { key: header::REPLAYED_FROM, value: Some(&from) });
    let headers = span.add_to(headers);
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
    if let Some(key) = &l.key {
        record = record.key(key);
    }
    if let Some(payload) = &l.payload {
        record = record.payload(payload);
    }
    record
}

/// The `replay_count` header of a message (0 without one, or when it is not a number).
pub fn replay_count_of<M: Message>(msg: &M) -> u32 {
    header_text(msg, header::REPLAY_COUNT).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Whether `msg` is a replayed event (it has a `replayed_from` header).
pub fn is_replay<M: Message>(msg: &M) -> bool {
    header_text(msg, header::REPLAYED_FROM).is_some()
}

/// One message of the dead-letter topic, read back from the headers [`dead_letter_of`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// When it was dead-lettered (the message's timestamp).
    pub time: Option<DateTime<Utc>>,
    /// The key, else the payload's `nasa_id`, else empty.
    pub nasa_id: String,
    pub reason: String,
    pub error: String,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    /// How often the event was replayed before it was dead-lettered this time (0: never).
    pub replay_count: u32,
    /// The dead letter the failed event had been replayed from, if it was a replay.
    pub replayed_from: Option<String>,
    /// How often this dead letter was replayed (messages on the events topic naming it).
    pub replayed: u32,
    /// The trace of its event, and the dead-letter stage's span (None: written before traces).
    #[serde(rename = "trace_id", serialize_with = "trace_id_of")]
    pub trace: Option<TraceContext>,
    #[serde(skip)]
    key: Option<Vec<u8>>,
    #[serde(skip)]
    payload: Option<Vec<u8>>,
}

impl DeadLetter {
    pub fn from_message<M: Message>(m: &M) -> DeadLetter {
        let text = |k: &str| header_text(m, k);
        let nasa_id = m
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .or_else(|| crate::event::decode(m.payload()).ok().map(|e| e.nasa_id))
            .unwrap_or_default();
        DeadLetter {
            partition: m.partition(),
            offset: m.offset(),
            time: m.timestamp().to_millis().and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
            nasa_id,
            reason: text(header::REASON).unwrap_or_else(|| "unknown".into()),
            error: text(header::ERROR).unwrap_or_default(),
            source_topic: text(header::SOURCE_TOPIC),
            source_partition: text(header::SOURCE_PARTITION).and_then(|v| v.parse().ok()),
            source_offset: text(header::SOURCE_OFFSET).and_then(|v| v.parse().ok()),
            replay_count: replay_count_of(m),
            replayed_from: text(header::REPLAYED_FROM),
            replayed: 0,
            trace: TraceContext::of_message(m),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
        }
    }

    /// The span of a replay of it: in its trace, or a fresh one for a dead letter written before traces.
    pub fn replay_span(&self) -> TraceContext {
        self.trace.as_ref().map_or_else(TraceContext::new_root, TraceContext::child)
    }

    /// Where it is on the dead-letter topic: `partition/offset` (the `replayed_from` header's form).
    pub fn place(&self) -> String {
        format!("{}/{}", self.partition, self.offset)
    }

    pub(super) fn matches(&self, filter: &DlqFilter) -> bool {
        filter.reason.as_ref().is_none_or(|r| *r == self.reason) && filter.since.is_none_or(|t| self.time.is_some_and(|at| at >= t))
    }

    /// One line of `dlq list` (and of `dlq replay --dry-run`).
    pub(super) fn line(&self) -> String {
        let time = self.time.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_else(|| "-".into());
        let source = match (&self.source_topic, self.source_partition, self.source_offset) {
            (Some(t), Some(p), Some(o)) => format!("{t}/{p}/{o}"),
            _ => "-".into(),
        };
        let mut line = format!("{time}  {}  {}  from {source}  dlq {}", show_id(&self.nasa_id), self.reason, self.place());
        if let Some(trace) = &self.trace {
            line += &format!("  trace {}", trace.trace_id);
        }
        if self.replay_count > 0 {
            line += &format!("  (failed after {} replay(s))", self.replay_count);
        }
        line += &match self.replayed {
            0 => String::new(),
            1 => "  replayed".into(),
            n => format!("  replayed {n} times"),
        };
        format!("{line}  {}", self.error)
    }

    /// A dead letter with only what the tests of its readers look at.
    #[cfg(test)]
    pub(super) fn sample(partition: i32, offset: i64, reason: &str, replay_count: u32, secs: i64) -> DeadLetter {
        DeadLetter {
            partition,
            offset,
            time: Utc.timestamp_opt(1_800_000_000 + secs, 0).single(),
            nasa_id: format!("id-{partition}-{offset}"),
            reason: reason.into(),
            error: String::new(),
            source_topic: None,
            source_partition: None,
            source_offset: None,
            replay_count,
            replayed_from: None,
            replayed: 0,
            trace: None,
            key: None,
            payload: None,
        }
    }
}

/// A dead letter's trace as `dlq list --json` shows it: the trace id alone.
fn trace_id_of<S: serde::Serializer>(trace: &Option<TraceContext>, s: S) -> Result<S::Ok, S::Error> {
    trace.as_ref().map(|t| t.trace_id.to_string()).serialize(s)
}

fn show_id(nasa_id: &str) -> String {
    match nasa_id {
        "" => "(no nasa_id)".into(),
        id if id.chars().count() > 60 => format!("{}…", id.chars().take(60).collect::<String>()),
        id => id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{OwnedMessage, Timestamp};

    /// The writer's headers are what the reader reads: a dead letter of a replayed event round-trips.
    #[test]
    fn a_dead_letter_reads_back_what_was_written() {
        let replayed = OwnedHeaders::new()
            .insert(Header { key: header::REPLAY_COUNT, value: Some("2") })
            .insert(Header { key: header::REPLAYED_FROM, value: Some("1/7") });
        let event = OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"PIA1".to_vec()),
            "images".into(),
            Timestamp::NotAvailable,
            3,
            42,
            Some(replayed),
        );
        let span = TraceContext::new_root();
        let record = dead_letter_of(&event, &Permanent::TooLarge { limit: 10 }, "images.dlq", &span);
        let (payload, key) = (record.payload.map(<[u8]>::to_vec), record.key.map(<[u8]>::to_vec));
        let written = OwnedMessage::new(payload, key, record.topic.into(), Timestamp::CreateTime(1_800_000_000_000), 0, 9, record.headers);
        let l = DeadLetter::from_message(&written);
        assert_eq!((l.nasa_id.as_str(), l.reason.as_str(), l.place()), ("PIA1", "too_large", "0/9".into()));
        assert_eq!((l.source_topic.as_deref(), l.source_partition, l.source_offset), (Some("images"), Some(3), Some(42)));
        assert_eq!((l.replay_count, l.replayed_from.as_deref()), (2, Some("1/7")));
        assert!(l.error.contains("MAX_IMAGE_BYTES"));
        assert_eq!(l.trace, Some(span.clone()), "the dead letter is in its event's trace");
        let replay = l.replay_span();
        assert_eq!(replay.trace_id, span.trace_id);
        let again = replay_of(&l, "images", &replay);
        let sent = OwnedMessage::new(None, None, "images".into(), Timestamp::NotAvailable, 0, 0, again.headers);
        assert_eq!((replay_count_of(&sent), header_text(&sent, header::REPLAYED_FROM).as_deref()), (3, Some("0/9")));
        assert_eq!(TraceContext::of_message(&sent), Some(replay), "the replay continues the trace");
        assert_eq!((again.key, again.payload), (Some(&b"PIA1"[..]), Some(&b"{}"[..])));
    }
}
