//! Reading the topics: ranges of the dead-letter topic, and the replays on the events topic that
//! name a dead letter. Each read asks again while Kafka answers with an error that passes, and
//! gives up as [`DlqError::Unreachable`] after [`READ_PATIENCE`].

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use slog::{warn, Logger};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::error::DlqError;
use super::record::{header, DeadLetter};
use crate::kafka::{base_config, header_text, LogContext};
use crate::shutdown::CancellationToken;

/// Per partition, the offsets from (inclusive) and to (exclusive).
pub(super) type Ranges = BTreeMap<i32, (i64, i64)>;

/// A read that gets no message and no progress for this long has lost the broker.
const READ_PATIENCE: Duration = Duration::from_secs(30);
/// Replayed events are looked for from this long before the oldest dead letter read: their
/// timestamps come from the replaying host's clock.
const CLOCK_MARGIN: chrono::Duration = chrono::Duration::hours(1);

/// A client that reads partitions it is given; it joins no group (it only commits when told).
pub(super) fn reader(brokers: &str, group: &str, log: &Logger) -> Result<BaseConsumer<LogContext>, DlqError> {
    base_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(LogContext { log: log.clone() })
        .map_err(DlqError::Client)
}

pub(super) fn unreachable(brokers: &str, e: impl std::fmt::Display) -> DlqError {
    DlqError::Unreachable { brokers: brokers.to_owned(), message: e.to_string() }
}

/// Asks again while the broker answers with an error that passes (a partition without a leader
/// just after the topic was made, the group coordinator loading after a restart), with growing
/// delays, for up to [`READ_PATIENCE`].
pub(super) fn patiently<T>(
    brokers: &str,
    log: &Logger,
    what: &str,
    mut ask: impl FnMut() -> rdkafka::error::KafkaResult<T>,
) -> Result<T, DlqError> {
    let backoff = crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(3), crate::config::JITTER);
    let started = Instant::now();
    for attempt in 0.. {
        match ask() {
            Ok(answer) => return Ok(answer),
            Err(e) if started.elapsed() < READ_PATIENCE => {
                warn!(log, "Kafka did not answer; asking again"; "labels.what" => what, "error.type" => "kafka",
                    "error.message" => e.to_string(), "labels.attempt" => attempt);
                std::thread::sleep(backoff.delay(attempt));
            }
            Err(e) => return Err(unreachable(brokers, e)),
        }
    }
    unreachable!("the loop returns")
}

/// Each partition of `topic` with its low and high watermark.
pub(super) fn watermarks(c: &BaseConsumer<LogContext>, brokers: &str, topic: &str, log: &Logger) -> Result<Ranges, DlqError> {
    let metadata = patiently(brokers, log, "metadata", || c.fetch_metadata(Some(topic), Duration::from_secs(10)))?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions()).map(|p| p.id()).collect();
    if partitions.is_empty() {
        return Err(DlqError::NoTopic(topic.to_owned()));
    }
    partitions
        .into_iter()
        .map(|p| patiently(brokers, log, "end offsets", || c.fetch_watermarks(topic, p, Duration::from_secs(10))).map(|w| (p, w)))
        .collect()
}

/// Reads `topic` from each partition's start to its end (exclusive), giving every message to
/// `each` in each partition's order. False when `stop` was set first.
fn read_range(
    c: &BaseConsumer<LogContext>,
    brokers: &str,
    topic: &str,
    ranges: &Ranges,
    stop: &CancellationToken,
    mut each: impl FnMut(&BorrowedMessage),
) -> Result<bool, DlqError> {
    let mut next: BTreeMap<i32, i64> = ranges.iter().filter(|(_, (s, e))| s < e).map(|(p, (s, _))| (*p, *s)).collect();
    let mut tpl = TopicPartitionList::new();
    for (p, start) in &next {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*start)).expect("a valid offset");
    }
    c.assign(&tpl).map_err(|e| unreachable(brokers, e))?;
    let finished = |next: &BTreeMap<i32, i64>| next.iter().all(|(p, n)| *n >= ranges[p].1);
    let mut last_progress = Instant::now();
    while !finished(&next) {
        if stop.is_cancelled() {
            return Ok(false);
        }
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if m.offset() < ranges[&m.partition()].1 {
                    each(&m);
                }
                next.insert(m.partition(), m.offset() + 1);
                last_progress = Instant::now();
            }
            Some(Err(e)) if last_progress.elapsed() > READ_PATIENCE => return Err(unreachable(brokers, e)),
            _ => {
                // Offsets without a message (transaction markers) end a partition short of its end.
                if let Ok(positions) = c.position() {
                    for e in positions.elements_for_topic(topic) {
                        if let (Offset::Offset(o), Some(n)) = (e.offset(), next.get_mut(&e.partition())) {
                            *n = (*n).max(o);
                        }
                    }
                }
                if last_progress.elapsed() > READ_PATIENCE {
                    return Err(unreachable(brokers, format!("no message from {topic} for {} s", READ_PATIENCE.as_secs())));
                }
            }
        }
    }
    Ok(true)
}

/// Dead letters in `ranges`, in each partition's order, partitions one after the other.
pub(super) fn read_letters(
    c: &BaseConsumer<LogContext>,
    brokers: &str,
    dlq_topic: &str,
    ranges: &Ranges,
    stop: &CancellationToken,
) -> Result<Option<Vec<DeadLetter>>, DlqError> {
    let mut letters = Vec::new();
    let complete = read_range(c, brokers, dlq_topic, ranges, stop, |m| letters.push(DeadLetter::from_message(m)))?;
    letters.sort_by_key(|l| (l.partition, l.offset));
    Ok(complete.then_some(letters))
}

/// How often each dead letter (`partition/offset`) was replayed: the messages on the events topic
/// whose `replayed_from` names it, read from a little before `oldest`.
pub(super) fn replays_on(
    brokers: &str,
    topic: &str,
    oldest: Option<DateTime<Utc>>,
    stop: &CancellationToken,
    log: &Logger,
) -> Result<HashMap<String, u32>, DlqError> {
    let mut found = HashMap::new();
    let Some(oldest) = oldest else { return Ok(found) };
    let c = reader(brokers, "nasa-ingest-dlq-reader", log)?;
    let ends = watermarks(&c, brokers, topic, log)?;
    let from = (oldest - CLOCK_MARGIN).timestamp_millis();
    let mut asked = TopicPartitionList::new();
    for p in ends.keys() {
        asked.add_partition_offset(topic, *p, Offset::Offset(from)).expect("a valid timestamp");
    }
    let starts = patiently(brokers, log, "offsets by time", || c.offsets_for_times(asked.clone(), Duration::from_secs(10)))?;
    let ranges: Ranges = ends
        .iter()
        .map(|(p, (low, high))| {
            let start = match starts.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.max(*low),
                // No message that recent.
                _ => *high,
            };
            (*p, (start, *high))
        })
        .collect();
    read_range(&c, brokers, topic, &ranges, stop, |m| {
        if let Some(from) = header_text(m, header::REPLAYED_FROM) {
            *found.entry(from).or_insert(0) += 1;
        }
    })?;
    Ok(found)
}
