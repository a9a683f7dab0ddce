//! `nasa-ingest dlq replay` ([`replay`], also called from Rust): republishes matching dead letters
//! to the events topic with their original key and payload and two headers, `replay_count` (the
//! dead letter's own count plus one) and `replayed_from` (`partition/offset` on the dead-letter
//! topic), in the trace of the dead letter (a replay span: its `traceparent`). Progress is the committed offset of the replay's own consumer group on the dead-letter
//! topic, committed only after the broker acknowledged the republished event; a dead letter whose
//! `replay_count` reached `--max-replays` is skipped, so an event that keeps failing cannot circle
//! forever.

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use slog::{info, warn, Logger};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::error::DlqError;
use super::read::{patiently, read_letters, reader, replays_on, watermarks, Ranges};
use super::record::{replay_of, DeadLetter};
use crate::config::{Config, DlqFilter, DlqReplayArgs, DEFAULT_MAX_REPLAYS};
use crate::kafka::{self, LogContext};
use crate::oneshot::{Progress, Words};
use crate::shutdown::CancellationToken;
use crate::trace::{Stage, TraceContext};

/// How long Kafka may take to acknowledge one republished event before the run stops.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

const WORDS: Words = Words { command: "replay", done: "replayed", skipped: "skipped", items: "dead letters" };
const DRY_RUN_WORDS: Words = Words { done: "would be replayed", ..WORDS };

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
    fn new(ranges: &Ranges) -> Progression {
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
    /// Republished in the replay's span; dealt with once the broker acknowledged it.
    Sent(&'a DeadLetter, TraceContext, DeliveryFuture),
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
            Some(Step::Sent(letter, span, delivery)) => {
                self.sent -= 1;
                acknowledged(letter, &span, delivery, self.log)?;
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
                    Some(producer) => {
                        let span = letter.replay_span();
                        let delivery = send(producer, &s.topic, letter, &span)?;
                        Step::Sent(letter, span, delivery)
                    }
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
                warn!(settler.log, "dead letter skipped: its event was replayed too often"; letter.replay_span(), "labels.nasa_id" => &letter.nasa_id,
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
fn replay_ranges(c: &BaseConsumer<LogContext>, s: &ReplaySettings, log: &Logger) -> Result<Ranges, DlqError> {
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
fn send(producer: &FutureProducer<LogContext>, topic: &str, l: &DeadLetter, span: &TraceContext) -> Result<DeliveryFuture, DlqError> {
    producer.send_result(replay_of(l, topic, span)).map_err(|(e, _)| DlqError::Publish { place: l.place(), message: e.to_string() })
}

/// Waits for the broker's acknowledgement of `l`'s republished event (sent in `span`).
fn acknowledged(l: &DeadLetter, span: &TraceContext, delivery: DeliveryFuture, log: &Logger) -> Result<(), DlqError> {
    let failed = |message: String| DlqError::Publish { place: l.place(), message };
    let delivered = futures::executor::block_on(delivery).map_err(|_| failed("the producer was closed".into()))?;
    let delivery = delivered.map_err(|(e, _)| failed(e.to_string()))?;
    info!(log, "replayed"; Stage::Replay, span, "labels.nasa_id" => &l.nasa_id, "labels.reason" => &l.reason, "labels.dlq_place" => l.place(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(partition: i32, offset: i64, reason: &str, replay_count: u32, secs: i64) -> DeadLetter {
        DeadLetter::sample(partition, offset, reason, replay_count, secs)
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
        let ranges: Ranges = [(0, (10, 20)), (1, (0, 5))].into();
        let mut p = Progression::new(&ranges);
        p.dealt_with(&letter(0, 10, "a", 0, 0));
        p.dealt_with(&letter(0, 11, "a", 0, 0));
        p.left(&letter(0, 12, "b", 0, 0));
        p.dealt_with(&letter(0, 13, "a", 0, 0));
        p.dealt_with(&letter(1, 0, "a", 0, 0));
        assert_eq!(p.next, [(0, 12), (1, 1)].into());
    }
}
