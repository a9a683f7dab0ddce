//! The handling of one event, outside the Subscriber actor: each event read is a task that runs
//! `handle_until_done` until the event is stored, found a duplicate, or dead-lettered; only
//! then is its offset committed. Transient failures retry the same event with backoff (a retry
//! line at most once a second per kind, [`RetryLines`]); permanent ones go to the dead-letter
//! topic. A panic while handling one event is caught, logged with the event's place and retried,
//! and dead-lettered (`panic`) after repeated panics.
//!
//! Each event is handled in the trace its `traceparent` header names (a fresh one when it has
//! none): the consume, download, store and dead-letter stages are spans of it, and every line
//! about the event carries its `trace.id` and the stage's `span.id`.

use futures::FutureExt;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use slog::{debug, error, info, warn, Logger};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::actors::downloader::{Download, Downloaded, Downloader, Held};
use crate::actors::storer::{IsStored, Store, Storer};
use crate::backoff::Backoff;
use crate::consumer::Delivery;
use crate::db::{clean_text, NewImage, Stored};
use crate::dlq::reason::Permanent;
use crate::dlq::record::{dead_letter_of, is_replay, replay_count_of};
use crate::errors::{EventError, Transient};
use crate::event::{self, IncomingEvent};
use crate::fault_injection::InjectedPanics;
use crate::kafka::LogContext;
use crate::metrics::METRICS;
use crate::supervision::Slot;
use crate::telemetry::{self, EventInfo};
use crate::trace::{self, Stage, TraceContext};

const CONSUMER_INCIDENT: &str = "consumer_retrying";
/// An event whose handling panicked this often goes to the dead-letter topic (`panic`).
const MAX_PANICS: u32 = 3;
/// An event whose row Postgres refused this often in a row, with Postgres answering, goes to
/// the dead-letter topic (`db_rejected`): the data itself is the problem.
const MAX_REFUSALS: u32 = 3;

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
    /// Panics armed through the admin endpoint.
    pub injected_panics: InjectedPanics,
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
    /// Whether an event failed with a transient error within `window` (the stall watch asks).
    pub(super) fn retried_within(&self, window: Duration) -> bool {
        self.last_retry.lock().expect("retry lock").is_some_and(|t| t.elapsed() < window)
    }
}

/// Handles one message until it is stored, found a duplicate, or dead-lettered, or until its
/// partition is revoked: then it is given up where it is (its permit and its download slot
/// freed for the partitions this member keeps), unfinished; the partition's new owner reads it
/// again from the offset committed at the revocation.
pub(super) async fn handle_until_done(delivery: Delivery, p: Pipeline) {
    let revoked = delivery.revoked.clone();
    tokio::select! {
        biased;
        _ = revoked.cancelled() => {}
        _ = handle_until_finished(delivery, p) => {}
    }
}

/// Handles one message until it is stored, found a duplicate, or dead-lettered; then lets its
/// offset be committed. A transient failure retries the same message: it is never skipped. A
/// panic is caught here, so that the event is retried and its partition's commits go on.
async fn handle_until_finished(delivery: Delivery, p: Pipeline) {
    // Its time starts when it was handed out: its wait for this task to start counts too.
    let Delivery { msg, ticket, tracker, permit: _permit, handed_out: started, revoked } = delivery;
    let consume = TraceContext::continuing(&msg);
    let log = consume.logger(&p.log);
    let mut attempt: u32 = 0;
    let (mut panics, mut refusals) = (0u32, 0u32);
    loop {
        // The consume span is current while the event is handled: a panic is reported in its trace.
        let outcome =
            AssertUnwindSafe(trace::within(consume.clone(), handle_once(&msg, &p, &consume, started, &revoked))).catch_unwind().await;
        let result = match outcome {
            Ok(Ok(stored)) => Ok(Finished::from(stored)),
            Ok(Err(EventError::Permanent(e))) => dead_letter(&msg, &e, &p, &consume).await,
            Ok(Err(EventError::Transient(Transient::DatabaseRefused(reason)))) => {
                refusals += 1;
                if refusals >= MAX_REFUSALS {
                    dead_letter(&msg, &Permanent::DbRejected(reason.to_string()), &p, &consume).await
                } else {
                    Err(Transient::DatabaseRefused(reason))
                }
            }
            Ok(Err(EventError::Transient(e))) => Err(e),
            // Its partition was revoked: not finished, not committed (handle_until_done has
            // seen the cancellation first already).
            Ok(Err(EventError::Abandoned)) => return,
            Err(panic) => {
                panics += 1;
                let message = caught_panic(&msg, panic, panics, &log);
                if panics >= MAX_PANICS {
                    dead_letter(&msg, &Permanent::Panicked(message), &p, &consume).await
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
                    // An incident of every event in flight, not of this one.
                    trace: None,
                };
                telemetry::incident_failed(CONSUMER_INCIDENT, "events fail and are retried", &info);
                if let Some(left_out) = p.retry_lines.lock().expect("retry lines lock").admit(e.kind(), Instant::now()) {
                    warn!(log, "event failed, will retry the same message"; "error.type" => e.kind(),
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

/// One try: skip what is stored, else download (given up when `revoked` is cancelled) and store
/// (each a span of `consume`'s trace).
async fn handle_once(
    msg: &OwnedMessage,
    p: &Pipeline,
    consume: &TraceContext,
    read_at: Instant,
    revoked: &CancellationToken,
) -> Result<Stored, EventError> {
    let event = event::decode(msg.payload()).map_err(Permanent::from)?;
    if p.injected_panics.take() {
        panic!("injected panic while handling {} (admin endpoint)", event.nasa_id);
    }
    let labels = |log: &Logger| {
        log.new(slog::o!("labels.nasa_id" => event.nasa_id.clone(), "labels.partition" => msg.partition(),
            "labels.offset" => msg.offset()))
    };
    let log = labels(&p.log);
    debug!(log, "consumed"; Stage::Consume, consume, "labels.event_id" => event.event_id.map(|id| id.to_string()));
    let began = Instant::now();
    if p.storer.send(IsStored(event.nasa_id.clone())).await?? {
        info!(log, "duplicate skipped"; consume, "labels.stage" => "before download");
        METRICS.duplicates.inc();
        return Ok(Stored::Duplicate);
    }
    let checked = Instant::now();
    let download = consume.child();
    let image = p.downloader.send(Download { url: event.image_url.clone(), given_up: revoked.clone() }).await??;
    let bytes = image.bytes.len();
    let downloaded = Instant::now();
    debug!(log, "downloaded"; Stage::Download, &download, "labels.bytes" => bytes, "labels.content_type" => image.content_type,
        "labels.download_ms" => millis(downloaded - checked));
    let store = consume.child();
    let (row, held) = new_row(&event, image, msg, &store);
    let stored = p.storer.send(Store(row)).await??;
    drop(held);
    match stored {
        Stored::Inserted => {
            METRICS.stored.inc();
            // Where the time went: its turn to start and earlier tries, the check, the download, the insert (each with its waits).
            info!(log, "saved to DB"; Stage::Store, &store, "labels.bytes" => bytes, "labels.latency_ms" => read_at.elapsed().as_millis() as u64,
                "labels.before_ms" => millis(began - read_at), "labels.check_ms" => millis(checked - began),
                "labels.download_ms" => millis(downloaded - checked), "labels.store_ms" => millis(downloaded.elapsed()))
        }
        Stored::Duplicate => {
            METRICS.duplicates.inc();
            info!(log, "duplicate skipped"; &store, "labels.stage" => "insert")
        }
    }
    Ok(stored)
}

/// A duration in ms, to a tenth.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The row, and the image bytes' share of the download budget, to keep until it is stored.
fn new_row(event: &IncomingEvent, image: Downloaded, msg: &OwnedMessage, store: &TraceContext) -> (NewImage, Held) {
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
        trace_id: Some(store.trace_id.to_string()),
    };
    (row, image.held)
}

/// Sends the original message, with why it failed, to the dead-letter topic (see
/// [`dead_letter_of`]), in a span of the event's trace.
async fn dead_letter(msg: &OwnedMessage, reason: &Permanent, p: &Pipeline, consume: &TraceContext) -> Result<Finished, Transient> {
    let span = consume.child();
    let record = dead_letter_of(msg, reason, &p.dlq_topic, &span);
    p.dlq.send(record, Duration::ZERO).await.map_err(|(source, _)| Transient::Kafka { context: "dead-letter topic", source })?;
    METRICS.dead_lettered.with_label_values(&[reason.kind()]).inc();
    warn!(p.log, "sent to dead-letter topic"; Stage::DeadLetter, &span, "error.type" => reason.kind(), "error.message" => reason.to_string(),
        "labels.topic" => &p.dlq_topic, "labels.partition" => msg.partition(), "labels.offset" => msg.offset(),
        "labels.replay_count" => replay_count_of(msg));
    Ok(Finished::DeadLettered)
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
