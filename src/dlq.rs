//! The dead-letter topic (`KAFKA_TOPIC.dlq`): what is there, and sending it back once the cause
//! is fixed.
//!
//! - `nasa-ingest dlq list`: every dead letter (time, nasa_id, reason, error, where it came from,
//!   whether it was replayed), then the count of each reason.
//! - `nasa-ingest dlq replay` ([`replay`], also called from Rust): republishes matching dead
//!   letters to the events topic with their original key and payload and two headers,
//!   `replay_count` (the dead letter's own count plus one) and `replayed_from` (`partition/offset`
//!   on the dead-letter topic). Progress is the committed offset of the replay's own consumer group
//!   on the dead-letter topic, committed only after the broker acknowledged the republished event;
//!   a dead letter whose `replay_count` reached `--max-replays` is skipped, so an event that keeps
//!   failing cannot circle forever.
//! - [`DlqWatch`]: the daemon's view for the status page, read from the topic itself.
//!
//! Whether a dead letter was replayed is read from the events topic itself (a message there whose
//! `replayed_from` names it), not from a file or the group alone: that holds across filters,
//! across runs, and after a crash between an acknowledgement and the commit that follows it.

use chrono::{DateTime, TimeZone, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use slog::{info, warn, Logger};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Config, DlqArgs, DlqCommand, DlqFilter, DlqListArgs, DlqReplayArgs};
use crate::kafka::{self, base_config, LogContext};
use crate::oneshot::{Progress, Words, EXIT_INTERRUPTED};
use crate::shutdown::{self, CancellationToken};

/// Header of a replayed event (and of its dead letter if it fails again): how often it was replayed.
pub const REPLAY_COUNT: &str = "replay_count";
/// Header of a replayed event (and of its dead letter if it fails again): `partition/offset` of
/// the dead letter it was replayed from.
pub const REPLAYED_FROM: &str = "replayed_from";

/// A read that gets no message and no progress for this long has lost the broker.
const READ_PATIENCE: Duration = Duration::from_secs(30);
/// How long Kafka may take to acknowledge one republished event before the run stops.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Replayed events are looked for from this long before the oldest dead letter read: their
/// timestamps come from the replaying host's clock.
const CLOCK_MARGIN: chrono::Duration = chrono::Duration::hours(1);
/// Dead letters the status page lists.
pub const PANEL_LAST: usize = 20;

const WORDS: Words = Words { command: "replay", done: "replayed", skipped: "skipped", items: "dead letters" };
const DRY_RUN_WORDS: Words = Words { done: "would be replayed", ..WORDS };

/// Why a `dlq` command failed. [`DlqError::is_transient`]: running it again may succeed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("cannot reach Kafka at {brokers}: {message}; check KAFKA_BROKERS and that the broker runs, then run the command again")]
    Unreachable { brokers: String, message: String },
    #[error("topic {0} does not exist; check KAFKA_TOPIC (dead letters are on KAFKA_TOPIC.dlq, made by the daemon at start)")]
    NoTopic(String),
    #[error("Kafka did not acknowledge the replay of dead letter {place}: {message}; nothing from it on was committed: run the same command again to resume")]
    Publish { place: String, message: String },
    #[error("cannot commit the replay's progress (group {group}): {source}; what was replayed is found on the topic and not replayed again: run the same command again")]
    Commit { group: String, source: rdkafka::error::KafkaError },
    #[error("cannot create a Kafka client: {0}; check KAFKA_BROKERS")]
    Client(#[source] rdkafka::error::KafkaError),
}

impl DlqError {
    /// Whether the same command may succeed later without a change (Kafka was away).
    pub fn is_transient(&self) -> bool {
        !matches!(self, DlqError::NoTopic(_) | DlqError::Client(_))
    }
}

/// One message of the dead-letter topic, with the headers `subscriber::dead_letter` wrote.
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
    #[serde(skip)]
    key: Option<Vec<u8>>,
    #[serde(skip)]
    payload: Option<Vec<u8>>,
}

/// A header's value as text.
pub fn header_text<M: Message>(msg: &M, key: &str) -> Option<String> {
    let headers = msg.headers()?;
    headers.iter().find(|h| h.key == key).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The `replay_count` header of a message (0 without one, or when it is not a number).
pub fn replay_count_of<M: Message>(msg: &M) -> u32 {
    header_text(msg, REPLAY_COUNT).and_then(|v| v.parse().ok()).unwrap_or(0)
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
            reason: text("reason").unwrap_or_else(|| "unknown".into()),
            error: text("error").unwrap_or_default(),
            source_topic: text("source_topic"),
            source_partition: text("source_partition").and_then(|v| v.parse().ok()),
            source_offset: text("source_offset").and_then(|v| v.parse().ok()),
            replay_count: replay_count_of(m),
            replayed_from: text(REPLAYED_FROM),
            replayed: 0,
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
        }
    }

    /// Where it is on the dead-letter topic: `partition/offset` (the `replayed_from` header's form).
    pub fn place(&self) -> String {
        format!("{}/{}", self.partition, self.offset)
    }

    fn matches(&self, filter: &DlqFilter) -> bool {
        filter.reason.as_ref().is_none_or(|r| *r == self.reason) && filter.since.is_none_or(|t| self.time.is_some_and(|at| at >= t))
    }

    /// One line of `dlq list`.
    fn line(&self) -> String {
        let time = self.time.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_else(|| "-".into());
        let source = match (&self.source_topic, self.source_partition, self.source_offset) {
            (Some(t), Some(p), Some(o)) => format!("{t}/{p}/{o}"),
            _ => "-".into(),
        };
        let mut line = format!("{time}  {}  {}  from {source}  dlq {}", show_id(&self.nasa_id), self.reason, self.place());
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
}

fn show_id(nasa_id: &str) -> String {
    match nasa_id {
        "" => "(no nasa_id)".into(),
        id if id.chars().count() > 60 => format!("{}…", id.chars().take(60).collect::<String>()),
        id => id.to_owned(),
    }
}

// ---------------------------------------------------------------- reading topics

/// A client that reads partitions it is given; it joins no group (it only commits when told).
fn reader(brokers: &str, group: &str, log: &Logger) -> Result<BaseConsumer<LogContext>, DlqError> {
    base_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(LogContext { log: log.clone() })
        .map_err(DlqError::Client)
}

fn unreachable(brokers: &str, e: impl std::fmt::Display) -> DlqError {
    DlqError::Unreachable { brokers: brokers.to_owned(), message: e.to_string() }
}

/// Asks again while the broker answers with an error that passes (a partition without a leader
/// just after the topic was made, the group coordinator loading after a restart), with growing
/// delays, for up to [`READ_PATIENCE`].
fn patiently<T>(brokers: &str, log: &Logger, what: &str, mut ask: impl FnMut() -> rdkafka::error::KafkaResult<T>) -> Result<T, DlqError> {
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
fn watermarks(c: &BaseConsumer<LogContext>, brokers: &str, topic: &str, log: &Logger) -> Result<BTreeMap<i32, (i64, i64)>, DlqError> {
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
    ranges: &BTreeMap<i32, (i64, i64)>,
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
fn read_letters(
    c: &BaseConsumer<LogContext>,
    brokers: &str,
    dlq_topic: &str,
    ranges: &BTreeMap<i32, (i64, i64)>,
    stop: &CancellationToken,
) -> Result<Option<Vec<DeadLetter>>, DlqError> {
    let mut letters = Vec::new();
    let complete = read_range(c, brokers, dlq_topic, ranges, stop, |m| letters.push(DeadLetter::from_message(m)))?;
    letters.sort_by_key(|l| (l.partition, l.offset));
    Ok(complete.then_some(letters))
}

/// How often each dead letter (`partition/offset`) was replayed: the messages on the events topic
/// whose `replayed_from` names it, read from a little before `oldest`.
fn replays_on(
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
    let ranges: BTreeMap<i32, (i64, i64)> = ends
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
        if let Some(from) = header_text(m, REPLAYED_FROM) {
            *found.entry(from).or_insert(0) += 1;
        }
    })?;
    Ok(found)
}

// ---------------------------------------------------------------- list

/// What `dlq list` reads.
#[derive(Clone, Debug)]
pub struct ListSettings {
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: String,
    pub filter: DlqFilter,
    /// Only the last N matching dead letters (the counts cover every match).
    pub limit: Option<usize>,
}

/// What `dlq list` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    /// Matching dead letters, oldest first (the last `limit` of them).
    pub dead_letters: Vec<DeadLetter>,
    /// Every matching dead letter, by reason.
    pub by_reason: BTreeMap<String, u64>,
    pub total: u64,
    /// Matching dead letters that were replayed at least once.
    pub replayed: u64,
}

/// Every matching dead letter on the topic, and whether each was replayed.
pub fn list(s: &ListSettings, log: &Logger) -> Result<Listing, DlqError> {
    // A listing reads to the end and is not interrupted: its token is never cancelled.
    let never = CancellationToken::new();
    let c = reader(&s.brokers, "nasa-ingest-dlq-reader", log)?;
    let ranges = watermarks(&c, &s.brokers, &s.dlq_topic, log)?;
    let mut letters = read_letters(&c, &s.brokers, &s.dlq_topic, &ranges, &never)?.unwrap_or_default();
    letters.retain(|l| l.matches(&s.filter));
    letters.sort_by_key(|l| (l.time, l.partition, l.offset));
    let replays = replays_on(&s.brokers, &s.topic, letters.iter().filter_map(|l| l.time).min(), &never, log)?;
    for l in &mut letters {
        l.replayed = replays.get(&l.place()).copied().unwrap_or(0);
    }
    let listing = Listing {
        by_reason: count_by_reason(letters.iter().map(|l| l.reason.as_str())),
        total: letters.len() as u64,
        replayed: letters.iter().filter(|l| l.replayed > 0).count() as u64,
        dead_letters: letters.split_off(letters.len().saturating_sub(s.limit.unwrap_or(usize::MAX))),
    };
    Ok(listing)
}

fn count_by_reason<'a>(reasons: impl Iterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for r in reasons {
        *counts.entry(r.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// `reason  count  ####`, widest bar 40.
fn histogram(counts: &BTreeMap<String, u64>) -> String {
    let widest = counts.values().copied().max().unwrap_or(0).max(1);
    let name_width = counts.keys().map(String::len).max().unwrap_or(0);
    counts
        .iter()
        .map(|(reason, n)| {
            let bar = "#".repeat(((n * 40).div_ceil(widest)) as usize);
            format!("  {reason:<name_width$}  {n:>6}  {bar}\n")
        })
        .collect()
}

fn print_listing(listing: &Listing, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(listing).expect("a listing serializes"));
        return;
    }
    for l in &listing.dead_letters {
        println!("{}", l.line());
    }
    if listing.dead_letters.len() as u64 != listing.total {
        println!("(the last {} of {})", listing.dead_letters.len(), listing.total);
    }
    println!("{} dead letter(s), {} replayed; by reason:", listing.total, listing.replayed);
    print!("{}", histogram(&listing.by_reason));
}

// ---------------------------------------------------------------- replay

/// What [`replay`] does. [`ReplaySettings::new`] fills it from the configuration and the
/// command line; other callers (the chaos run) fill it themselves.
#[derive(Clone, Debug)]
pub struct ReplaySettings {
    pub brokers: String,
    /// Where replayed events go (the daemon's `KAFKA_TOPIC`).
    pub topic: String,
    pub dlq_topic: String,
    /// The consumer group whose committed offsets on `dlq_topic` are the progress.
    pub group: String,
    pub filter: DlqFilter,
    pub nasa_id: Option<String>,
    /// Replay at most this many in this run.
    pub max: Option<u64>,
    /// Dead letters of events replayed this often already are skipped.
    pub max_replays: u32,
    pub dry_run: bool,
    /// Read from the start of the topic, not from the group's committed offsets.
    pub from_start: bool,
    /// Print progress and a summary on stdout (the command does; a library caller may not want it).
    pub show_progress: bool,
}

impl ReplaySettings {
    pub fn new(config: &Config, args: &DlqReplayArgs) -> ReplaySettings {
        ReplaySettings {
            brokers: config.kafka.brokers.clone(),
            topic: config.kafka.topic.clone(),
            dlq_topic: config.kafka.dlq_topic.clone(),
            group: args.group.clone().unwrap_or_else(|| default_replay_group(&config.kafka.group_id)),
            filter: args.filter.clone(),
            nasa_id: args.nasa_id.clone(),
            max: args.max,
            max_replays: args.max_replays,
            dry_run: args.dry_run,
            from_start: args.from_start,
            show_progress: true,
        }
    }

    /// Every matching dead letter of `dlq_topic` back to `topic`, from `group`'s progress, with the
    /// command's defaults and no output: for callers other than the command (the chaos run).
    pub fn quiet(brokers: &str, topic: &str, dlq_topic: &str, group: &str) -> ReplaySettings {
        ReplaySettings {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            dlq_topic: dlq_topic.to_owned(),
            group: group.to_owned(),
            filter: DlqFilter::default(),
            nasa_id: None,
            max: None,
            max_replays: DEFAULT_MAX_REPLAYS,
            dry_run: false,
            from_start: false,
            show_progress: false,
        }
    }
}

/// `--max-replays` when not given.
pub const DEFAULT_MAX_REPLAYS: u32 = 3;

/// The replay's own group, beside the daemon's: `<KAFKA_GROUP_ID>.dlq-replay`.
pub fn default_replay_group(consumer_group: &str) -> String {
    format!("{consumer_group}.dlq-replay")
}

/// What a replay did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Dead letters read past the group's committed offsets (all of the topic with `from_start`).
    pub read: u64,
    /// Republished and acknowledged (with `dry_run`: would be).
    pub replayed: u64,
    /// Replayed by reason.
    pub replayed_by_reason: BTreeMap<String, u64>,
    /// Matching, but a message on the events topic shows they were replayed already.
    pub replayed_before: u64,
    /// Matching, but their event was replayed `max_replays` times already (the loop guard).
    pub over_max_replays: u64,
    /// Not matching the filter: left for another run.
    pub not_matching: u64,
    /// Matching, left for the next run because of `max`.
    pub left_by_max: u64,
    pub dry_run: bool,
    /// Stopped by Ctrl-C (or `stop`) before the end; the next run goes on.
    pub interrupted: bool,
}

/// What is done with one dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Replay,
    ReplayedBefore,
    OverMaxReplays,
    NotMatching,
}

fn verdict(l: &DeadLetter, s: &ReplaySettings, replays: &HashMap<String, u32>) -> Verdict {
    if !l.matches(&s.filter) || s.nasa_id.as_ref().is_some_and(|id| *id != l.nasa_id) {
        Verdict::NotMatching
    } else if replays.contains_key(&l.place()) {
        Verdict::ReplayedBefore
    } else if l.replay_count >= s.max_replays {
        Verdict::OverMaxReplays
    } else {
        Verdict::Replay
    }
}

/// Per partition of the dead-letter topic, the offset to commit: past every dead letter dealt
/// with (replayed, replayed before, over the loop guard), up to the first one left (not matching
/// the filter, or past `max`), so that no later run misses it.
struct Progression {
    start: BTreeMap<i32, i64>,
    next: BTreeMap<i32, i64>,
    blocked: BTreeMap<i32, bool>,
    committed: BTreeMap<i32, i64>,
}

impl Progression {
    fn new(ranges: &BTreeMap<i32, (i64, i64)>) -> Progression {
        let start: BTreeMap<i32, i64> = ranges.iter().map(|(p, (s, _))| (*p, *s)).collect();
        Progression { next: start.clone(), committed: start.clone(), start, blocked: BTreeMap::new() }
    }

    fn dealt_with(&mut self, l: &DeadLetter) {
        if !self.blocked.get(&l.partition).copied().unwrap_or(false) {
            self.next.insert(l.partition, l.offset + 1);
        }
    }

    fn left(&mut self, l: &DeadLetter) {
        self.blocked.insert(l.partition, true);
    }

    /// Commits what moved since the last commit; a synchronous commit (the last) also repeats
    /// what asynchronous ones sent, whose failures nobody saw.
    fn commit(&mut self, c: &BaseConsumer<LogContext>, topic: &str, group: &str, mode: CommitMode) -> Result<(), DlqError> {
        let mut tpl = TopicPartitionList::new();
        for (p, n) in &self.next {
            if self.committed.get(p) != Some(n) || (matches!(mode, CommitMode::Sync) && n > &self.start[p]) {
                tpl.add_partition_offset(topic, *p, Offset::Offset(*n)).expect("a valid offset");
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        c.commit(&tpl, mode).map_err(|e| DlqError::Commit { group: group.to_owned(), source: e })?;
        self.committed = self.next.clone();
        Ok(())
    }
}

/// Republishes matching dead letters to `s.topic` (see the module's documentation). Blocking:
/// from async code, call it on a blocking thread. Setting `stop` ends the run after the dead
/// letter in flight; the next run goes on from there.
pub fn replay(s: &ReplaySettings, stop: &CancellationToken, log: &Logger) -> Result<ReplaySummary, DlqError> {
    let c = reader(&s.brokers, &s.group, log)?;
    let ranges = replay_ranges(&c, s, log)?;
    let mut summary = ReplaySummary { dry_run: s.dry_run, ..Default::default() };
    let Some(letters) = read_letters(&c, &s.brokers, &s.dlq_topic, &ranges, stop)? else {
        summary.interrupted = true;
        return Ok(summary);
    };
    let replays = replays_on(&s.brokers, &s.topic, letters.iter().filter_map(|l| l.time).min(), stop, log)?;
    let plan: Vec<(DeadLetter, Verdict)> = letters
        .into_iter()
        .map(|l| {
            let v = verdict(&l, s, &replays);
            (l, v)
        })
        .collect();
    summary.read = plan.len() as u64;
    let matching = plan.iter().filter(|(_, v)| *v != Verdict::NotMatching).count() as u64;
    info!(log, "replay planned"; "labels.group" => &s.group, "labels.read" => plan.len(), "labels.matching" => matching,
        "labels.dry_run" => s.dry_run);
    let mut progress = s.show_progress.then(|| Progress::new(matching, if s.dry_run { DRY_RUN_WORDS } else { WORDS }));
    let producer = match s.dry_run {
        true => None,
        false => Some(kafka::producer(&s.brokers, PUBLISH_TIMEOUT, log.clone()).map_err(DlqError::Client)?),
    };
    let mut settler = Settler {
        log,
        committer: &c,
        settings: s,
        progression: Progression::new(&ranges),
        queue: VecDeque::new(),
        sent: 0,
        last_commit: Instant::now(),
        progress: progress.as_mut(),
    };
    let outcome = go_through(&plan, s, stop, producer.as_ref(), &mut settler, &mut summary);
    // What was acknowledged is committed, also when a later send failed.
    let settled = settler.settle_all();
    if !s.dry_run {
        settler.progression.commit(&c, &s.dlq_topic, &s.group, CommitMode::Sync)?;
    }
    outcome.and(settled)?;
    if let Some(progress) = &progress {
        print_summary(progress, &summary, s);
    }
    info!(log, "replay finished"; "labels.replayed" => summary.replayed, "labels.replayed_before" => summary.replayed_before,
        "labels.over_max_replays" => summary.over_max_replays, "labels.not_matching" => summary.not_matching,
        "labels.interrupted" => summary.interrupted, "labels.dry_run" => s.dry_run);
    Ok(summary)
}

/// Republished events awaiting their acknowledgement at once: the broker's round trip is paid
/// once per window, not once per event.
const IN_FLIGHT: usize = 32;

/// One dead letter on its way through a run; steps are settled in the order they were read.
enum Step<'a> {
    /// Republished; dealt with once the broker acknowledged it.
    Sent(&'a DeadLetter, DeliveryFuture),
    /// Dealt with without a send: replayed before, or over the loop guard.
    Passed(&'a DeadLetter),
    /// Left for another run: not matching, or past `max`. A dry run leaves everything.
    Left(&'a DeadLetter),
}

/// Settles steps in order, so that the committed offset never passes an unacknowledged send.
struct Settler<'a, 'p> {
    log: &'a Logger,
    /// Commits the progress (on the dead-letter topic, for the replay's group).
    committer: &'a BaseConsumer<LogContext>,
    settings: &'a ReplaySettings,
    progression: Progression,
    queue: VecDeque<Step<'a>>,
    sent: usize,
    last_commit: Instant,
    progress: Option<&'p mut Progress>,
}

impl<'a> Settler<'a, '_> {
    fn push(&mut self, step: Step<'a>) -> Result<(), DlqError> {
        self.sent += usize::from(matches!(step, Step::Sent(..)));
        self.queue.push_back(step);
        while self.sent > IN_FLIGHT {
            self.settle_one()?;
        }
        Ok(())
    }

    fn settle_one(&mut self) -> Result<(), DlqError> {
        match self.queue.pop_front() {
            Some(Step::Sent(letter, delivery)) => {
                self.sent -= 1;
                acknowledged(letter, delivery, self.log)?;
                self.progression.dealt_with(letter);
                // At most every 200 ms (one request for many), asynchronous (the next
                // acknowledgement need not wait for it); the last commit is synchronous.
                if self.last_commit.elapsed() >= crate::consumer::COMMIT_EVERY {
                    let s = self.settings;
                    self.progression.commit(self.committer, &s.dlq_topic, &s.group, CommitMode::Async)?;
                    self.last_commit = Instant::now();
                }
                if let Some(p) = self.progress.as_mut() {
                    p.done();
                }
            }
            Some(Step::Passed(letter)) => {
                self.progression.dealt_with(letter);
                if let Some(p) = self.progress.as_mut() {
                    p.skipped();
                }
            }
            Some(Step::Left(letter)) => self.progression.left(letter),
            None => {}
        }
        Ok(())
    }

    fn settle_all(&mut self) -> Result<(), DlqError> {
        while !self.queue.is_empty() {
            self.settle_one()?;
        }
        Ok(())
    }
}

/// Decides and sends, dead letter after dead letter, until the plan ends, `stop` or `max`.
fn go_through<'a>(
    plan: &'a [(DeadLetter, Verdict)],
    s: &ReplaySettings,
    stop: &CancellationToken,
    producer: Option<&FutureProducer<LogContext>>,
    settler: &mut Settler<'a, '_>,
    summary: &mut ReplaySummary,
) -> Result<(), DlqError> {
    for (letter, verdict) in plan {
        if stop.is_cancelled() {
            summary.interrupted = true;
            break;
        }
        let full = s.max.is_some_and(|m| summary.replayed >= m);
        let step = match verdict {
            Verdict::NotMatching => {
                summary.not_matching += 1;
                Step::Left(letter)
            }
            Verdict::Replay if full => {
                summary.left_by_max += 1;
                Step::Left(letter)
            }
            Verdict::Replay => {
                summary.replayed += 1;
                *summary.replayed_by_reason.entry(letter.reason.clone()).or_insert(0) += 1;
                match producer {
                    Some(producer) => Step::Sent(letter, send(producer, &s.topic, letter)?),
                    None => {
                        if s.show_progress {
                            println!("would replay: {}", letter.line());
                        }
                        if let Some(p) = settler.progress.as_mut() {
                            p.done();
                        }
                        Step::Left(letter)
                    }
                }
            }
            Verdict::ReplayedBefore => {
                summary.replayed_before += 1;
                Step::Passed(letter)
            }
            Verdict::OverMaxReplays => {
                summary.over_max_replays += 1;
                warn!(settler.log, "dead letter skipped: its event was replayed too often"; "labels.nasa_id" => &letter.nasa_id,
                    "labels.dlq_place" => letter.place(), "labels.replay_count" => letter.replay_count, "error.type" => &letter.reason);
                Step::Passed(letter)
            }
        };
        settler.push(step)?;
    }
    Ok(())
}

/// Per partition, from the group's committed offset (or the start, with `from_start` or nothing
/// committed) to the end as it is now: dead letters written meanwhile wait for the next run.
fn replay_ranges(c: &BaseConsumer<LogContext>, s: &ReplaySettings, log: &Logger) -> Result<BTreeMap<i32, (i64, i64)>, DlqError> {
    let marks = watermarks(c, &s.brokers, &s.dlq_topic, log)?;
    let committed = if s.from_start {
        TopicPartitionList::new()
    } else {
        let mut tpl = TopicPartitionList::new();
        for p in marks.keys() {
            tpl.add_partition(&s.dlq_topic, *p);
        }
        patiently(&s.brokers, log, "committed offsets", || c.committed_offsets(tpl.clone(), Duration::from_secs(10)))?
    };
    Ok(marks
        .iter()
        .map(|(p, (low, high))| {
            let start = match committed.find_partition(&s.dlq_topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.max(*low),
                _ => *low,
            };
            (*p, (start, *high))
        })
        .collect())
}

/// Sends one dead letter's key and payload back to `topic`, with the replay's headers.
fn send(producer: &FutureProducer<LogContext>, topic: &str, l: &DeadLetter) -> Result<DeliveryFuture, DlqError> {
    let (count, from) = ((l.replay_count + 1).to_string(), l.place());
    let headers = OwnedHeaders::new()
        .insert(Header { key: REPLAY_COUNT, value: Some(&count) })
        .insert(Header { key: REPLAYED_FROM, value: Some(&from) });
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
    if let Some(key) = &l.key {
        record = record.key(key);
    }
    if let Some(payload) = &l.payload {
        record = record.payload(payload);
    }
    producer.send_result(record).map_err(|(e, _)| DlqError::Publish { place: from, message: e.to_string() })
}

/// Waits for the broker's acknowledgement of `l`'s republished event.
fn acknowledged(l: &DeadLetter, delivery: DeliveryFuture, log: &Logger) -> Result<(), DlqError> {
    let failed = |message: String| DlqError::Publish { place: l.place(), message };
    let delivered = futures::executor::block_on(delivery).map_err(|_| failed("the producer was closed".into()))?;
    let delivery = delivered.map_err(|(e, _)| failed(e.to_string()))?;
    info!(log, "replayed"; "labels.nasa_id" => &l.nasa_id, "labels.reason" => &l.reason, "labels.dlq_place" => l.place(),
        "labels.replay_count" => l.replay_count + 1, "labels.partition" => delivery.partition, "labels.offset" => delivery.offset);
    Ok(())
}

fn print_summary(progress: &Progress, s: &ReplaySummary, settings: &ReplaySettings) {
    let outcome = match (s.interrupted, s.dry_run) {
        (true, _) => "interrupted: run the same command again to resume",
        (false, true) => "dry run: nothing was published or committed",
        (false, false) => "done",
    };
    progress.finish(outcome);
    let reasons: Vec<String> = s.replayed_by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
    let verb = if s.dry_run { "would replay" } else { "replayed" };
    println!("{verb} by reason: {}", if reasons.is_empty() { "none".into() } else { reasons.join(", ") });
    println!(
        "skipped: {} replayed before, {} replayed {} times already (--max-replays); left: {} not matching, {} past --max",
        s.replayed_before, s.over_max_replays, settings.max_replays, s.not_matching, s.left_by_max
    );
}

// ---------------------------------------------------------------- the commands

/// Runs `dlq list` or `dlq replay`; returns the exit code.
pub fn run(config: &Config, args: DlqArgs, log: Logger) -> u8 {
    let result = match args.command {
        DlqCommand::List(a) => run_list(config, &a, &log),
        DlqCommand::Replay(a) => run_replay(config, &a, &log),
    };
    result.unwrap_or_else(|e| {
        slog::error!(log, "dlq command failed"; "error.type" => "dlq", "error.message" => e.to_string(), "labels.transient" => e.is_transient());
        eprintln!("nasa-ingest dlq: {e}");
        1
    })
}

fn run_list(config: &Config, a: &DlqListArgs, log: &Logger) -> Result<u8, DlqError> {
    let settings = ListSettings {
        brokers: config.kafka.brokers.clone(),
        topic: config.kafka.topic.clone(),
        dlq_topic: config.kafka.dlq_topic.clone(),
        filter: a.filter.clone(),
        limit: a.limit,
    };
    print_listing(&list(&settings, log)?, a.json);
    Ok(0)
}

fn run_replay(config: &Config, a: &DlqReplayArgs, log: &Logger) -> Result<u8, DlqError> {
    let stop = shutdown::on_signal(log.clone(), "stopping once the dead letters in flight are acknowledged and committed");
    let summary = replay(&ReplaySettings::new(config, a), &stop, log)?;
    Ok(if summary.interrupted { EXIT_INTERRUPTED } else { 0 })
}

// ---------------------------------------------------------------- the daemon's view

/// One dead letter as the status page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Brief {
    pub time: Option<DateTime<Utc>>,
    pub nasa_id: String,
    pub reason: String,
    pub error: String,
    pub place: String,
    pub replay_count: u32,
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
        let brief =
            Brief { time: l.time, place: l.place(), nasa_id: l.nasa_id, reason: l.reason, error: l.error, replay_count: l.replay_count };
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

    fn letter(partition: i32, offset: i64, reason: &str, replay_count: u32, secs: i64) -> DeadLetter {
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
            key: None,
            payload: None,
        }
    }

    fn settings() -> ReplaySettings {
        ReplaySettings::quiet("", "images", "images.dlq", "g")
    }

    #[test]
    fn the_loop_guard_the_filter_and_earlier_replays_decide_what_is_replayed() {
        let mut s = settings();
        s.filter.reason = Some("host_not_allowed".into());
        let replays: HashMap<String, u32> = [("0/2".to_owned(), 1)].into();
        assert_eq!(verdict(&letter(0, 1, "host_not_allowed", 2, 0), &s, &replays), Verdict::Replay);
        assert_eq!(verdict(&letter(0, 1, "host_not_allowed", 3, 0), &s, &replays), Verdict::OverMaxReplays);
        assert_eq!(verdict(&letter(0, 2, "host_not_allowed", 0, 0), &s, &replays), Verdict::ReplayedBefore);
        assert_eq!(verdict(&letter(0, 3, "too_large", 0, 0), &s, &replays), Verdict::NotMatching);
        s.nasa_id = Some("id-0-4".into());
        assert_eq!(verdict(&letter(0, 4, "host_not_allowed", 0, 0), &s, &replays), Verdict::Replay);
        assert_eq!(verdict(&letter(0, 5, "host_not_allowed", 0, 0), &s, &replays), Verdict::NotMatching);
    }

    #[test]
    fn progress_stops_at_the_first_dead_letter_left_for_another_run() {
        let ranges: BTreeMap<i32, (i64, i64)> = [(0, (10, 20)), (1, (0, 5))].into();
        let mut p = Progression::new(&ranges);
        p.dealt_with(&letter(0, 10, "a", 0, 0));
        p.dealt_with(&letter(0, 11, "a", 0, 0));
        p.left(&letter(0, 12, "b", 0, 0));
        p.dealt_with(&letter(0, 13, "a", 0, 0));
        p.dealt_with(&letter(1, 0, "a", 0, 0));
        assert_eq!(p.next, [(0, 12), (1, 1)].into());
    }

    #[test]
    fn the_panel_keeps_the_newest_twenty_newest_first_and_counts_all() {
        let mut panel = DlqPanel::default();
        for i in 0..30 {
            // Two partitions read interleaved: times do not arrive in order.
            panel.add(letter(i % 2, i as i64, if i % 3 == 0 { "too_large" } else { "host_not_allowed" }, 0, (i * 7 % 30) as i64));
        }
        assert_eq!(panel.on_topic, 30);
        assert_eq!(panel.by_reason["too_large"], 10);
        assert_eq!(panel.last.len(), PANEL_LAST);
        assert!(panel.last.windows(2).all(|w| w[0].time >= w[1].time));
        assert_eq!(panel.last[0].time, Utc.timestamp_opt(1_800_000_029, 0).single());
    }

    #[test]
    fn since_takes_a_time_or_an_age() {
        use crate::config::parse_since;
        assert_eq!(parse_since("2026-11-27T18:00:00Z").unwrap().to_rfc3339(), "2026-11-27T18:00:00+00:00");
        let two_hours = Utc::now() - parse_since("2h").unwrap();
        assert!((two_hours.num_seconds() - 7200).abs() < 5);
        assert!(parse_since("yesterday").unwrap_err().to_string().contains("RFC 3339"));
        assert!(parse_since("5w").is_err());
    }

    #[test]
    fn the_histogram_scales_to_the_largest_reason() {
        let counts: BTreeMap<String, u64> = [("host_not_allowed".to_owned(), 4), ("too_large".to_owned(), 1)].into();
        assert_eq!(
            histogram(&counts),
            format!("  host_not_allowed       4  {}\n  too_large              1  {}\n", "#".repeat(40), "#".repeat(10))
        );
    }
}
