//! Subscriber: reads `images` in a consumer group and drives each event through the Storer and
//! the Downloader. Up to DOWNLOAD_CONCURRENCY events are in flight; per partition the committed
//! offset never passes an unfinished event (see `offsets`). Transient failures retry the same
//! event with backoff; permanent ones go to the dead-letter topic, and only then is it committed.

use actix::prelude::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use slog::{info, warn, Logger};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::downloader::{Download, Downloader};
use super::storer::{IsStored, Store, Storer};
use crate::backoff::Backoff;
use crate::db::{clean_text, NewImage, Stored};
use crate::errors::{EventError, Permanent, Transient};
use crate::event::{self, IncomingEvent};
use crate::kafka::{base_config, LogContext};
use crate::metrics::METRICS;
use crate::offsets::{OffsetTracker, Ticket};
use crate::telemetry::{self, EventInfo};
use crate::supervision::{Lifeline, Slot};

type Tracker = Arc<Mutex<OffsetTracker>>;

const CONSUMER_INCIDENT: &str = "consumer_retrying";

/// librdkafka callbacks of the consumer: logs, and a final commit when partitions are revoked.
pub struct SubscriberContext {
    logs: LogContext,
    topic: String,
    tracker: Tracker,
}

impl ClientContext for SubscriberContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        self.logs.log(level, fac, msg)
    }
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.logs.error(error, reason)
    }
}

impl ConsumerContext for SubscriberContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions = topic_partitions(tpl, &self.topic);
            let commits = self.tracker.lock().expect("tracker lock").all_commits(Some(&partitions));
            if !commits.is_empty() {
                let result = consumer.commit(&offsets_list(&self.topic, &commits), CommitMode::Sync);
                log_commit(&self.logs.log, "revoke", &commits, result);
            }
            self.tracker.lock().expect("tracker lock").revoke(&partitions);
            info!(self.logs.log, "partitions revoked"; "labels.partitions" => format!("{partitions:?}"));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions = topic_partitions(tpl, &self.topic);
            info!(self.logs.log, "partitions assigned"; "labels.partitions" => format!("{partitions:?}"));
        }
    }
}

fn topic_partitions(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements_for_topic(topic).iter().map(|e| e.partition()).collect()
}

fn offsets_list(topic: &str, commits: &[(i32, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in commits {
        tpl.add_partition_offset(topic, p, Offset::Offset(o)).expect("offsets are valid");
    }
    tpl
}

fn log_commit(log: &Logger, why: &'static str, commits: &[(i32, i64)], result: KafkaResult<()>) {
    match result {
        Ok(()) => info!(log, "offsets committed"; "labels.reason" => why, "labels.offsets" => format!("{commits:?}")),
        Err(e) => warn!(log, "offset commit failed; the events will be read again"; "labels.reason" => why,
            "error.type" => "kafka", "error.message" => e.to_string()),
    }
}

pub type Consumer_ = StreamConsumer<SubscriberContext>;

/// Everything the handling of one event needs; cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    pub storer: Slot<Storer>,
    pub downloader: Slot<Downloader>,
    pub dlq: FutureProducer<LogContext>,
    pub topic: String,
    pub dlq_topic: String,
    pub backoff: Backoff,
    pub log: Logger,
}

/// What outlives a restart of the Subscriber: the group membership, the offsets of events still
/// in flight, and the permits they hold.
#[derive(Clone)]
pub struct ConsumerState {
    consumer: Arc<Consumer_>,
    tracker: Tracker,
    permits: Arc<Semaphore>,
}

pub struct Subscriber {
    state: ConsumerState,
    pipeline: Pipeline,
    reading: Option<SpawnHandle>,
    lifeline: Lifeline,
}

crate::crashable!(Subscriber);

impl Subscriber {
    pub fn new(state: ConsumerState, pipeline: Pipeline, lifeline: Lifeline) -> Subscriber {
        Subscriber { state, pipeline, reading: None, lifeline }
    }
}

impl ConsumerState {
    /// Joins the consumer group (auto-commit off) and subscribes to the topic.
    pub fn new(brokers: &str, group_id: &str, topic: &str, concurrency: usize, log: &Logger) -> KafkaResult<ConsumerState> {
        let tracker = Tracker::default();
        let context = SubscriberContext { logs: LogContext { log: log.clone() }, topic: topic.to_owned(), tracker: tracker.clone() };
        let consumer: Consumer_ = base_config(brokers)
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // librdkafka's prefetch is bounded too: memory never grows with the backlog.
            .set("queued.max.messages.kbytes", "16384")
            .create_with_context(context)?;
        consumer.subscribe(&[topic])?;
        Ok(ConsumerState { consumer: Arc::new(consumer), tracker, permits: Arc::new(Semaphore::new(concurrency)) })
    }
}

impl Actor for Subscriber {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let s = &self.state;
        let reading = read_loop(s.consumer.clone(), s.tracker.clone(), self.pipeline.clone(), s.permits.clone());
        self.reading = Some(ctx.spawn(reading.into_actor(self)));
        // One commit request for many finished events, not one per event.
        ctx.run_interval(COMMIT_EVERY, |act, _| {
            commit_finished(&act.state.consumer, &act.state.tracker, &act.pipeline.topic, &act.pipeline.log)
        });
        ctx.run_interval(LAG_EVERY, |act, _| {
            let (consumer, topic) = (act.state.consumer.clone(), act.pipeline.topic.clone());
            // Broker round trips: off the actor thread.
            actix::spawn(async move {
                let _ = tokio::task::spawn_blocking(move || update_lag(&consumer, &topic)).await;
            });
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.lifeline.stopped();
    }
}

const LAG_EVERY: Duration = Duration::from_secs(5);
/// How often finished events are committed.
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// The last commit at shutdown may take this long.
const FINAL_COMMIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Lag per assigned partition: high watermark minus the group's committed offset.
fn update_lag(consumer: &Consumer_, topic: &str) {
    let timeout = Duration::from_secs(2);
    let Ok(assignment) = consumer.assignment() else { return };
    let Ok(committed) = consumer.committed_offsets(assignment, timeout) else { return };
    for e in committed.elements_for_topic(topic) {
        let Ok((low, high)) = consumer.fetch_watermarks(topic, e.partition(), timeout) else { continue };
        let base = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        METRICS.set_lag(e.partition(), (high - base).max(0));
    }
}

/// Reads messages while a permit is free; each event is handled in its own task.
async fn read_loop(consumer: Arc<Consumer_>, tracker: Tracker, pipeline: Pipeline, permits: Arc<Semaphore>) {
    let mut errors: u32 = 0;
    loop {
        let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        match consumer.recv().await {
            Ok(m) => {
                errors = 0;
                let msg = m.detach();
                METRICS.consumed.inc();
                let ticket = tracker.lock().expect("tracker lock").begin(msg.partition(), msg.offset());
                actix::spawn(handle_until_done(msg, ticket, tracker.clone(), pipeline.clone(), permit));
            }
            Err(e) => {
                let delay = pipeline.backoff.delay(errors);
                errors += 1;
                warn!(pipeline.log, "Kafka consumer error, will retry"; "error.type" => "kafka", "error.message" => e.to_string(),
                    "labels.attempt" => errors, "labels.delay_ms" => delay.as_millis() as u64);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Handles one message until it is stored, found a duplicate, or dead-lettered; then lets its
/// offset be committed. A transient failure retries the same message: it is never skipped.
async fn handle_until_done(
    msg: OwnedMessage,
    ticket: Ticket,
    tracker: Tracker,
    p: Pipeline,
    _permit: OwnedSemaphorePermit,
) {
    let mut attempt: u32 = 0;
    let started = Instant::now();
    loop {
        let result = match handle_once(&msg, &p, started).await {
            Ok(_) => Ok(()),
            Err(EventError::Permanent(e)) => dead_letter(&msg, &e, &p).await,
            Err(EventError::Transient(e)) => Err(e),
        };
        match result {
            Ok(()) => {
                if attempt > 0 {
                    telemetry::incident_recovered(CONSUMER_INCIDENT, "events are handled again", &EventInfo::default());
                }
                break;
            }
            Err(e) => {
                let delay = p.backoff.delay(attempt);
                attempt += 1;
                METRICS.retries.with_label_values(&[e.kind()]).inc();
                let info = EventInfo {
                    actor: Some("subscriber".into()),
                    nasa_id: None,
                    error_type: Some(e.kind().into()),
                    error_message: Some(e.to_string()),
                };
                telemetry::incident_failed(CONSUMER_INCIDENT, "events fail and are retried", &info);
                warn!(p.log, "event failed, will retry the same message"; "error.type" => e.kind(),
                    "error.message" => e.to_string(), "labels.partition" => msg.partition(), "labels.offset" => msg.offset(),
                    "labels.attempt" => attempt, "labels.delay_ms" => delay.as_millis() as u64);
                tokio::time::sleep(delay).await;
            }
        }
    }
    METRICS.processing_seconds.observe(started.elapsed().as_secs_f64());
    // Committed by the Subscriber's next tick (COMMIT_EVERY), together with its neighbours.
    tracker.lock().expect("tracker lock").finish(ticket);
}

/// Commits, asynchronously, every partition whose committable offset moved since the last time.
fn commit_finished(consumer: &Consumer_, tracker: &Tracker, topic: &str, log: &Logger) {
    let commits = tracker.lock().expect("tracker lock").take_commits();
    if !commits.is_empty() {
        if let Err(e) = consumer.commit(&offsets_list(topic, &commits), CommitMode::Async) {
            warn!(log, "offset commit failed; will commit again later"; "error.type" => "kafka", "error.message" => e.to_string());
        }
    }
}

/// One try: skip what is stored, else download and store.
async fn handle_once(msg: &OwnedMessage, p: &Pipeline, read_at: Instant) -> Result<Stored, EventError> {
    let event = event::decode(msg.payload())?;
    let labels = |log: &Logger| {
        log.new(slog::o!("labels.nasa_id" => event.nasa_id.clone(), "labels.partition" => msg.partition(),
            "labels.offset" => msg.offset()))
    };
    let log = labels(&p.log);
    if p.storer.send(IsStored(event.nasa_id.clone())).await?? {
        info!(log, "duplicate skipped"; "labels.stage" => "before download");
        METRICS.duplicates.inc();
        return Ok(Stored::Duplicate);
    }
    let image = p.downloader.send(Download(event.image_url.clone())).await??;
    let bytes = image.bytes.len();
    let stored = p.storer.send(Store(new_row(&event, image, msg))).await??;
    match stored {
        Stored::Inserted => {
            METRICS.stored.inc();
            info!(log, "saved to DB"; "labels.bytes" => bytes, "labels.latency_ms" => read_at.elapsed().as_millis() as u64)
        }
        Stored::Duplicate => {
            METRICS.duplicates.inc();
            info!(log, "duplicate skipped"; "labels.stage" => "insert")
        }
    }
    Ok(stored)
}

fn new_row(event: &IncomingEvent, image: super::downloader::Downloaded, msg: &OwnedMessage) -> NewImage {
    NewImage {
        nasa_id: clean_text(&event.nasa_id),
        title: event.title.as_deref().map(clean_text),
        query: event.query.as_deref().map(clean_text),
        image_url: clean_text(&event.image_url),
        content_type: image.content_type.to_owned(),
        byte_size: image.bytes.len() as i64,
        sha256: image.sha256,
        image_bytes: image.bytes,
        event_id: event.event_id,
        kafka_partition: Some(msg.partition()),
        kafka_offset: Some(msg.offset()),
    }
}

/// Sends the original message, with why it failed, to the dead-letter topic.
async fn dead_letter(msg: &OwnedMessage, reason: &Permanent, p: &Pipeline) -> Result<(), Transient> {
    let (partition, offset) = (msg.partition().to_string(), msg.offset().to_string());
    let error = reason.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header { key: "reason", value: Some(reason.kind()) })
        .insert(Header { key: "error", value: Some(&error) })
        .insert(Header { key: "source_topic", value: Some(msg.topic()) })
        .insert(Header { key: "source_partition", value: Some(&partition) })
        .insert(Header { key: "source_offset", value: Some(&offset) });
    let payload = msg.payload().unwrap_or_default();
    let mut record = FutureRecord::<[u8], [u8]>::to(&p.dlq_topic).payload(payload).headers(headers);
    if let Some(key) = msg.key() {
        record = record.key(key);
    }
    p.dlq.send(record, Duration::ZERO).await.map_err(|(e, _)| Transient::Kafka(format!("dead-letter topic: {e}")))?;
    METRICS.dead_lettered.with_label_values(&[reason.kind()]).inc();
    warn!(p.log, "sent to dead-letter topic"; "error.type" => reason.kind(), "error.message" => error,
        "labels.topic" => &p.dlq_topic, "labels.partition" => msg.partition(), "labels.offset" => msg.offset());
    Ok(())
}

/// Shutdown: stop reading, give in-flight events until `deadline` to finish, commit what is done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain(pub Duration);

impl Handler<Drain> for Subscriber {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, Drain(within): Drain, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(h) = self.reading.take() {
            ctx.cancel_future(h);
        }
        let (tracker, consumer, log, topic) =
            (self.state.tracker.clone(), self.state.consumer.clone(), self.pipeline.log.clone(), self.pipeline.topic.clone());
        Box::pin(
            async move {
                let deadline = Instant::now() + within;
                while tracker.lock().expect("tracker lock").in_flight() > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let commits = tracker.lock().expect("tracker lock").all_commits(None);
                let final_log = log.clone();
                // librdkafka's sync commit waits without limit while Kafka is down: bound it.
                let close = tokio::task::spawn_blocking(move || {
                    if !commits.is_empty() {
                        let result = consumer.commit(&offsets_list(&topic, &commits), CommitMode::Sync);
                        log_commit(&final_log, "shutdown", &commits, result);
                    }
                    consumer.unsubscribe();
                });
                if tokio::time::timeout(FINAL_COMMIT_TIMEOUT, close).await.is_err() {
                    warn!(log, "final commit did not finish (is Kafka down?); unfinished events will be read again";
                        "labels.timeout_ms" => FINAL_COMMIT_TIMEOUT.as_millis() as u64);
                }
            }
            .into_actor(self),
        )
    }
}
