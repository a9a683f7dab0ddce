//! Subscriber: owns the consumer group membership of this process and the work of every event
//! it read. Up to CONSUMER_MAX_IN_FLIGHT events are in flight, each a task of the Subscriber's
//! [`TaskTracker`]; per partition the committed offset never passes an unfinished event (see
//! `offsets`). Transient failures retry the same event with backoff; permanent ones go to the
//! dead-letter topic, and only then is it committed. A panic while handling one event is caught,
//! logged with the event's place and retried, and dead-lettered (`panic`) after repeated panics.
//!
//! Every few seconds the Subscriber compares the group's committed offsets with the end of every
//! partition (see `stall`): a consumer that holds nothing, or partitions that do not move, while
//! the broker answers, is a stall: logged, shown on `/readyz`, and healed by rejoining the group
//! as a new member (counted as a restart of the subscriber).

use actix::prelude::*;
use futures::FutureExt;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use serde::Serialize;
use slog::{error, info, warn, Logger};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::task::TaskTracker;

use super::downloader::{Download, Downloaded, Downloader, Held};
use super::storer::{IsStored, Store, Storer};
use crate::backoff::Backoff;
use crate::consumer::{Delivery, Member, MemberSettings};
use crate::db::{clean_text, NewImage, Stored};
use crate::dlq::reason::Permanent;
use crate::dlq::record::{dead_letter_of, is_replay, replay_count_of};
use crate::errors::{EventError, Transient};
use crate::event::{self, IncomingEvent};
use crate::kafka::{base_config, LogContext};
use crate::metrics::METRICS;
use crate::stall::{self, Own, Snapshot, Stall, StallWatch};
use crate::supervision::{Lifeline, RestartCounts, Slot};
use crate::telemetry::{self, EventInfo};

const CONSUMER_INCIDENT: &str = "consumer_retrying";
/// How often the group's progress is checked (and the lag metrics updated).
const WATCH_EVERY: Duration = Duration::from_secs(5);
/// Leaving the group at shutdown or on a rejoin may take this long.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// An event whose handling panicked this often goes to the dead-letter topic (`panic`).
const MAX_PANICS: u32 = 3;
/// An event whose row Postgres refused this often in a row, with Postgres answering, goes to
/// the dead-letter topic (`db_rejected`): the data itself is the problem.
const MAX_REFUSALS: u32 = 3;

/// Panics injected into the handling of the next events (admin endpoint, for fault tests).
static INJECTED_PANICS: AtomicU32 = AtomicU32::new(0);

/// Makes the handling of the next `n` events panic once each (fault injection).
pub fn inject_panics(n: u32) {
    INJECTED_PANICS.store(n, Ordering::SeqCst);
}

fn take_injected_panic() -> bool {
    INJECTED_PANICS.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

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
    /// When an event last failed with a transient error.
    pub last_retry: Arc<Mutex<Option<Instant>>>,
    /// Which retries get a log line (see [`RetryLines`]).
    pub retry_lines: Arc<Mutex<RetryLines>>,
}

/// A retry's WARN line is written at most once a second per kind of error; the next line says how
/// many retries of that kind it left out. With dozens of events in flight, an outage otherwise
/// writes a line per event and attempt (`nasa_ingest_retries_total` still counts every one).
#[derive(Debug, Default)]
pub struct RetryLines {
    last: std::collections::HashMap<&'static str, (Instant, u64)>,
}

/// At most one retry line per kind of error in this period.
const RETRY_LINE_EVERY: Duration = Duration::from_secs(1);

impl RetryLines {
    /// `Some(left out since the last line)` when this retry of `kind` is to be logged now.
    fn admit(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        match self.last.get_mut(kind) {
            Some((at, left_out)) if now.duration_since(*at) < RETRY_LINE_EVERY => {
                *left_out += 1;
                None
            }
            Some((at, left_out)) => {
                *at = now;
                Some(std::mem::take(left_out))
            }
            None => {
                self.last.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

impl Pipeline {
    fn retried_within(&self, window: Duration) -> bool {
        self.last_retry.lock().expect("retry lock").is_some_and(|t| t.elapsed() < window)
    }
}

/// What `/status` and `/readyz` show of the consumer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConsumerReport {
    pub client_id: String,
    /// The group member id the broker gave this member (from the group's description).
    pub member_id: Option<String>,
    pub assigned_partitions: Vec<i32>,
    pub broker_reachable: bool,
    /// Why the consumer is stalled, if it is.
    pub stall: Option<String>,
    /// Rejoins of the group because of a stall.
    pub rejoins: u64,
}

#[derive(Clone, Default)]
pub struct ConsumerStatus(Arc<Mutex<ConsumerReport>>);

impl ConsumerStatus {
    pub fn report(&self) -> ConsumerReport {
        self.0.lock().expect("status lock").clone()
    }
    fn update(&self, f: impl FnOnce(&mut ConsumerReport)) {
        f(&mut self.0.lock().expect("status lock"))
    }
}

/// What outlives a restart of the Subscriber: the group membership, the tasks of the events in
/// flight and the permits they hold, and what the stall watch has seen.
#[derive(Clone)]
pub struct ConsumerState {
    settings: MemberSettings,
    member: Arc<Mutex<Arc<Member>>>,
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
    deliveries: mpsc::UnboundedSender<Delivery>,
    /// Reads the group's offsets and description; replaced when it stops answering.
    observer: Arc<Mutex<Observer>>,
    watch: Arc<Mutex<StallWatch>>,
    pipeline: Pipeline,
    pub status: ConsumerStatus,
    restarts: RestartCounts,
}

impl ConsumerState {
    /// Joins the consumer group and starts handing its messages to event tasks. Must run on the
    /// actix system: the tasks are spawned on it.
    pub fn new(
        settings: MemberSettings,
        concurrency: usize,
        stall_window: Duration,
        pipeline: Pipeline,
        restarts: RestartCounts,
        status: ConsumerStatus,
    ) -> rdkafka::error::KafkaResult<ConsumerState> {
        let permits = Arc::new(Semaphore::new(concurrency));
        let tasks = TaskTracker::new();
        let (deliveries, mut incoming) = mpsc::unbounded_channel::<Delivery>();
        let (spawner, handling) = (tasks.clone(), pipeline.clone());
        actix::spawn(async move {
            while let Some(delivery) = incoming.recv().await {
                spawner.spawn_local(handle_until_done(delivery, handling.clone()));
            }
        });
        let observer = Observer::new(&settings)?;
        let state = ConsumerState {
            member: Arc::new(Mutex::new(Arc::new(join(&settings, &permits, &deliveries)?))),
            settings,
            permits,
            tasks,
            deliveries,
            observer: Arc::new(Mutex::new(observer)),
            watch: Arc::new(Mutex::new(StallWatch::new(stall_window))),
            pipeline,
            status,
            restarts,
        };
        Ok(state)
    }

    fn member(&self) -> Arc<Member> {
        self.member.lock().expect("member lock").clone()
    }

    /// Leaves the group and joins it again as a new member.
    async fn rejoin(&self) -> rdkafka::error::KafkaResult<()> {
        let old = self.member();
        old.stop_fetching();
        old.close(CLOSE_TIMEOUT).await;
        let new = join(&self.settings, &self.permits, &self.deliveries)?;
        *self.member.lock().expect("member lock") = Arc::new(new);
        Ok(())
    }
}

/// A client of the group that never joins it, for the stall watch. A long-lived librdkafka
/// client was seen to stay blind for minutes after broker faults in a cluster (timeouts, unknown
/// partitions) while a fresh one answered at once: after [`OBSERVER_PATIENCE`] failed reads in
/// a row it is replaced.
struct Observer {
    client: Arc<BaseConsumer<LogContext>>,
    failures: u32,
}

/// Failed reads of the group in a row (one every 5 s) before the observer is made anew.
const OBSERVER_PATIENCE: u32 = 6;

impl Observer {
    fn new(settings: &MemberSettings) -> rdkafka::error::KafkaResult<Observer> {
        let client = base_config(&settings.brokers)
            .set("group.id", &settings.group_id)
            .create_with_context(LogContext { log: settings.log.clone() })?;
        Ok(Observer { client: Arc::new(client), failures: 0 })
    }

    fn answered(&mut self) {
        self.failures = 0;
    }

    fn failed(&mut self, settings: &MemberSettings) {
        self.failures += 1;
        if self.failures >= OBSERVER_PATIENCE {
            match Observer::new(settings) {
                Ok(fresh) => {
                    info!(settings.log, "the group's observer did not answer for 30 s; made a new one");
                    let old = std::mem::replace(self, fresh);
                    // Its destructor closes it with the brokers: not on the actor thread.
                    std::thread::spawn(move || drop(old));
                }
                Err(e) => warn!(settings.log, "cannot make a new observer of the group"; "error.type" => "kafka",
                    "error.message" => e.to_string()),
            }
        }
    }
}

fn join(
    settings: &MemberSettings,
    permits: &Arc<Semaphore>,
    deliveries: &mpsc::UnboundedSender<Delivery>,
) -> rdkafka::error::KafkaResult<Member> {
    let out = deliveries.clone();
    Member::join(settings, permits.clone(), move |d| {
        // Only fails when the actix system is gone: the process is ending.
        let _ = out.send(d);
    })
}

pub struct Subscriber {
    state: ConsumerState,
    lifeline: Lifeline,
    watching: bool,
    last_stall: Option<Stall>,
}

crate::crashable!(Subscriber);

impl Subscriber {
    pub fn new(state: ConsumerState, lifeline: Lifeline) -> Subscriber {
        Subscriber { state, lifeline, watching: false, last_stall: None }
    }

    /// Reads the group's progress off the actor thread, then judges it.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        if self.watching {
            return;
        }
        self.watching = true;
        let s = &self.state;
        let observer = s.observer.lock().expect("observer lock").client.clone();
        let (topic, group) = (s.settings.topic.clone(), s.settings.group_id.clone());
        let read = tokio::task::spawn_blocking(move || stall::snapshot(&observer, &topic, &group, Duration::from_secs(2)));
        ctx.spawn(read.into_actor(self).map(|result, act, ctx| {
            act.watching = false;
            act.judge(result.ok().and_then(Result::ok), ctx);
        }));
    }

    fn judge(&mut self, snapshot: Option<Snapshot>, ctx: &mut Context<Self>) {
        let member = self.state.member();
        let view = member.view();
        let window = self.state.watch.lock().expect("watch lock").window();
        let Some(snap) = snapshot else {
            self.state.watch.lock().expect("watch lock").unobserved();
            self.state.observer.lock().expect("observer lock").failed(&self.state.settings);
            self.state.status.update(|r| {
                r.client_id = view.client_id.clone();
                r.assigned_partitions = view.assigned.clone();
                r.broker_reachable = false;
            });
            return;
        };
        self.state.observer.lock().expect("observer lock").answered();
        for &p in snap.partitions.keys() {
            METRICS.set_lag(p, snap.lag(p));
        }
        let own = Own {
            assigned: view.assigned.clone(),
            busy: member.busy_partitions(),
            saturated: self.state.permits.available_permits() == 0,
            retrying: self.state.pipeline.retried_within(window),
        };
        let verdict = self.state.watch.lock().expect("watch lock").observe(&snap, &own, Instant::now());
        let reason = verdict.stall.as_ref().map(|s| s.describe(window));
        self.state.status.update(|r| {
            r.member_id = snap.members.get(&view.client_id).cloned();
            r.client_id = view.client_id.clone();
            r.assigned_partitions = view.assigned.clone();
            r.broker_reachable = true;
            r.stall = reason.clone();
        });
        let log = &self.state.pipeline.log;
        if let (Some(stall), Some(reason)) = (&verdict.stall, &reason) {
            if verdict.rejoin || self.last_stall.as_ref() != Some(stall) {
                warn!(log, "consumer stalled"; "error.type" => "consumer_stall", "error.message" => reason,
                    "labels.rejoin" => verdict.rejoin, "labels.assigned" => format!("{:?}", view.assigned));
            }
        } else if self.last_stall.is_some() {
            info!(log, "consumer moving again"; "labels.assigned" => format!("{:?}", view.assigned));
        }
        self.last_stall = verdict.stall;
        if verdict.rejoin {
            self.rejoin(reason.unwrap_or_default(), ctx);
        }
    }

    /// A new group member instead of this one: counted as a restart of the subscriber.
    fn rejoin(&mut self, reason: String, ctx: &mut Context<Self>) {
        let count = self.state.restarts.record("subscriber", &format!("rejoined the consumer group: {reason}"));
        METRICS.restarts.with_label_values(&["subscriber"]).inc();
        self.state.status.update(|r| r.rejoins += 1);
        warn!(self.state.pipeline.log, "consumer rejoining the group as a new member"; "labels.restart_count" => count);
        let (state, log) = (self.state.clone(), self.state.pipeline.log.clone());
        ctx.spawn(
            async move {
                if let Err(e) = state.rejoin().await {
                    warn!(log, "cannot create the new consumer; the next check tries again"; "error.type" => "kafka",
                        "error.message" => e.to_string());
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for Subscriber {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(WATCH_EVERY, |act, ctx| act.watch(ctx));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.lifeline.stopped();
    }
}

/// Handles one message until it is stored, found a duplicate, or dead-lettered; then lets its
/// offset be committed. A transient failure retries the same message: it is never skipped. A
/// panic is caught here, so that the event is retried and its partition's commits go on.
async fn handle_until_done(delivery: Delivery, p: Pipeline) {
    // Its time starts when it was handed out: its wait for this task to start counts too.
    let Delivery { msg, ticket, tracker, permit: _permit, handed_out: started } = delivery;
    let mut attempt: u32 = 0;
    let (mut panics, mut refusals) = (0u32, 0u32);
    loop {
        let outcome = AssertUnwindSafe(handle_once(&msg, &p, started)).catch_unwind().await;
        let result = match outcome {
            Ok(Ok(stored)) => Ok(Finished::from(stored)),
            Ok(Err(EventError::Permanent(e))) => dead_letter(&msg, &e, &p).await,
            Ok(Err(EventError::Transient(Transient::DatabaseRefused(reason)))) => {
                refusals += 1;
                if refusals >= MAX_REFUSALS {
                    dead_letter(&msg, &Permanent::DbRejected(reason), &p).await
                } else {
                    Err(Transient::DatabaseRefused(reason))
                }
            }
            Ok(Err(EventError::Transient(e))) => Err(e),
            Err(panic) => {
                panics += 1;
                let message = caught_panic(&msg, panic, panics, &p.log);
                if panics >= MAX_PANICS {
                    dead_letter(&msg, &Permanent::Panicked(message), &p).await
                } else {
                    Err(Transient::Panicked(message))
                }
            }
        };
        match result {
            Ok(finished) => {
                if attempt > 0 {
                    telemetry::incident_recovered(CONSUMER_INCIDENT, "events are handled again", &EventInfo::default());
                }
                if is_replay(&msg) {
                    METRICS.replays.with_label_values(&[finished.outcome()]).inc();
                }
                break;
            }
            Err(e) => {
                let delay = p.backoff.delay(attempt);
                attempt += 1;
                *p.last_retry.lock().expect("retry lock") = Some(Instant::now());
                METRICS.retries.with_label_values(&[e.kind()]).inc();
                let info = EventInfo {
                    actor: Some("subscriber".into()),
                    nasa_id: None,
                    error_type: Some(e.kind().into()),
                    error_message: Some(e.to_string()),
                };
                telemetry::incident_failed(CONSUMER_INCIDENT, "events fail and are retried", &info);
                if let Some(left_out) = p.retry_lines.lock().expect("retry lines lock").admit(e.kind(), Instant::now()) {
                    warn!(p.log, "event failed, will retry the same message"; "error.type" => e.kind(),
                        "error.message" => e.to_string(), "labels.partition" => msg.partition(), "labels.offset" => msg.offset(),
                        "labels.attempt" => attempt, "labels.delay_ms" => delay.as_millis() as u64,
                        "labels.retries_not_logged" => left_out);
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
    METRICS.processing_seconds.observe(started.elapsed().as_secs_f64());
    // Committed by the member's next tick (every 200 ms), together with its neighbours.
    tracker.lock().expect("tracker lock").finish(ticket);
}

/// How the handling of one event ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finished {
    Stored,
    Duplicate,
    DeadLettered,
}

impl From<Stored> for Finished {
    fn from(s: Stored) -> Finished {
        match s {
            Stored::Inserted => Finished::Stored,
            Stored::Duplicate => Finished::Duplicate,
        }
    }
}

impl Finished {
    /// The `outcome` label of `nasa_ingest_replays_total`.
    fn outcome(self) -> &'static str {
        match self {
            Finished::Stored => "stored",
            Finished::Duplicate => "duplicate",
            Finished::DeadLettered => "dead_lettered",
        }
    }
}

/// Logs a panic caught while handling `msg` (the panic hook logged the panic itself) and
/// returns its message. No actor died of it, so the supervisor must not hear of it.
fn caught_panic(msg: &OwnedMessage, panic: Box<dyn std::any::Any + Send>, panics: u32, log: &Logger) -> String {
    crate::supervision::forget_panic();
    let message = telemetry::panic_message(&*panic);
    let nasa_id = event::decode(msg.payload()).map(|e| e.nasa_id).unwrap_or_default();
    error!(log, "event handling panicked; the event is retried"; "error.type" => "panic", "error.message" => &message,
        "labels.nasa_id" => nasa_id, "labels.partition" => msg.partition(), "labels.offset" => msg.offset(),
        "labels.panics" => panics, "labels.max_panics" => MAX_PANICS);
    message
}

/// One try: skip what is stored, else download and store.
async fn handle_once(msg: &OwnedMessage, p: &Pipeline, read_at: Instant) -> Result<Stored, EventError> {
    let event = event::decode(msg.payload())?;
    if take_injected_panic() {
        panic!("injected panic while handling {} (admin endpoint)", event.nasa_id);
    }
    let labels = |log: &Logger| {
        log.new(slog::o!("labels.nasa_id" => event.nasa_id.clone(), "labels.partition" => msg.partition(),
            "labels.offset" => msg.offset()))
    };
    let log = labels(&p.log);
    let began = Instant::now();
    if p.storer.send(IsStored(event.nasa_id.clone())).await?? {
        info!(log, "duplicate skipped"; "labels.stage" => "before download");
        METRICS.duplicates.inc();
        return Ok(Stored::Duplicate);
    }
    let checked = Instant::now();
    let image = p.downloader.send(Download(event.image_url.clone())).await??;
    let bytes = image.bytes.len();
    let downloaded = Instant::now();
    let (row, held) = new_row(&event, image, msg);
    let stored = p.storer.send(Store(row)).await??;
    drop(held);
    match stored {
        Stored::Inserted => {
            METRICS.stored.inc();
            // Where the time went: its turn to start and earlier tries, the check, the download, the insert (each with its waits).
            info!(log, "saved to DB"; "labels.bytes" => bytes, "labels.latency_ms" => read_at.elapsed().as_millis() as u64,
                "labels.before_ms" => millis(began - read_at), "labels.check_ms" => millis(checked - began),
                "labels.download_ms" => millis(downloaded - checked), "labels.store_ms" => millis(downloaded.elapsed()))
        }
        Stored::Duplicate => {
            METRICS.duplicates.inc();
            info!(log, "duplicate skipped"; "labels.stage" => "insert")
        }
    }
    Ok(stored)
}

/// A duration in ms, to a tenth.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The row, and the image bytes' share of the download budget, to keep until it is stored.
fn new_row(event: &IncomingEvent, image: Downloaded, msg: &OwnedMessage) -> (NewImage, Held) {
    let row = NewImage {
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
    };
    (row, image.held)
}

/// Sends the original message, with why it failed, to the dead-letter topic (see
/// [`dead_letter_of`]).
async fn dead_letter(msg: &OwnedMessage, reason: &Permanent, p: &Pipeline) -> Result<Finished, Transient> {
    let record = dead_letter_of(msg, reason, &p.dlq_topic);
    p.dlq.send(record, Duration::ZERO).await.map_err(|(e, _)| Transient::Kafka(format!("dead-letter topic: {e}")))?;
    METRICS.dead_lettered.with_label_values(&[reason.kind()]).inc();
    warn!(p.log, "sent to dead-letter topic"; "error.type" => reason.kind(), "error.message" => reason.to_string(),
        "labels.topic" => &p.dlq_topic, "labels.partition" => msg.partition(), "labels.offset" => msg.offset(),
        "labels.replay_count" => replay_count_of(msg));
    Ok(Finished::DeadLettered)
}

/// Shutdown: stop reading, give in-flight events until `within` runs out (less the time to
/// leave the group), commit what is done and leave the group.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain(pub Duration);

impl Handler<Drain> for Subscriber {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, Drain(within): Drain, _: &mut Context<Self>) -> Self::Result {
        let (member, tasks) = (self.state.member(), self.state.tasks.clone());
        Box::pin(
            async move {
                member.stop_fetching();
                tasks.close();
                let _ = tokio::time::timeout(within.saturating_sub(CLOSE_TIMEOUT), tasks.wait()).await;
                member.close(CLOSE_TIMEOUT).await;
            }
            .into_actor(self),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_lines_are_one_a_second_per_kind_and_count_what_they_left_out() {
        let (mut lines, t0) = (RetryLines::default(), Instant::now());
        assert_eq!(lines.admit("postgres", t0), Some(0), "the first retry of a kind is logged");
        for ms in [1, 10, 500, 999] {
            assert_eq!(lines.admit("postgres", t0 + Duration::from_millis(ms)), None, "{ms} ms later: left out");
        }
        assert_eq!(lines.admit("image_http_5xx", t0 + Duration::from_millis(2)), Some(0), "another kind has its own second");
        assert_eq!(lines.admit("postgres", t0 + Duration::from_millis(1000)), Some(4), "a second later: logged, with the 4 left out");
        assert_eq!(lines.admit("postgres", t0 + Duration::from_millis(2500)), Some(0));
    }
}
