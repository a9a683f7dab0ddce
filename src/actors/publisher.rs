//! Publisher: sends each event to Kafka (key = nasa_id, its trace in a `traceparent` header) and
//! answers only once the broker has acknowledged it. While Kafka is unavailable it retries THE SAME event with backoff; the event
//! waits in the on-disk outbox meanwhile, so a crash does not lose it.

use actix::prelude::*;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use slog::{error, info, warn, Logger};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backoff::Backoff;
use crate::event::ImageEvent;
use crate::kafka::LogContext;
use crate::metrics::METRICS;
use crate::outbox::{Outbox, OutboxError};
use crate::supervision::Lifeline;
use crate::telemetry::{self, EventInfo};
use crate::trace::Stage;

const KAFKA_INCIDENT: &str = "kafka_unavailable";

/// Makes a new producer. A send that fails outright replaces the producer: a fresh one has no
/// stale idempotence state (producer id, sequence numbers) that an imperfect broker rejects.
pub type ProducerFactory = Arc<dyn Fn() -> rdkafka::error::KafkaResult<FutureProducer<LogContext>> + Send + Sync>;

/// A factory of idempotent producers for `brokers`.
pub fn producer_factory(brokers: String, log: Logger) -> ProducerFactory {
    Arc::new(move || crate::kafka::idempotent_producer(&brokers, log.clone()))
}

pub struct Publisher {
    producer: Arc<Mutex<FutureProducer<LogContext>>>,
    new_producer: ProducerFactory,
    topic: String,
    outbox: Outbox,
    backoff: Backoff,
    /// How long a send may go unacknowledged before `Kafka unavailable` is first logged.
    publish_timeout: Duration,
    log: Logger,
    lifeline: Lifeline,
    /// The event this incarnation delivered from the outbox at start: a Fetcher that offers it
    /// again (its Publish died with the previous incarnation) is told it is delivered.
    recovered: Option<uuid::Uuid>,
}

crate::crashable!(Publisher);

impl Publisher {
    pub fn new(
        new_producer: ProducerFactory,
        topic: String,
        outbox: Outbox,
        backoff: Backoff,
        publish_timeout: Duration,
        log: Logger,
        lifeline: Lifeline,
    ) -> rdkafka::error::KafkaResult<Self> {
        let producer = Arc::new(Mutex::new(new_producer()?));
        Ok(Publisher { producer, new_producer, topic, outbox, backoff, publish_timeout, log, lifeline, recovered: None })
    }

    /// Sends `event` until the broker acknowledges it, then clears the outbox.
    ///
    /// One send per producer: librdkafka retries it with the same producer id and sequence
    /// number until the broker acknowledges it (no message timeout), so a broker that wrote it
    /// without acknowledging it (a leader whose followers were down) keeps one copy, not one per
    /// retry. Meanwhile `Kafka unavailable` is logged with growing delays, the first after
    /// `PUBLISH_TIMEOUT_MS`. Only a send that fails outright (a fatal producer error: an
    /// imperfect broker) is sent again, by a fresh producer.
    fn deliver(&self, event: ImageEvent) -> impl std::future::Future<Output = Result<Delivered, OutboxError>> + 'static {
        let (shared, new_producer, topic, outbox, backoff, log, first_wait) = (
            self.producer.clone(),
            self.new_producer.clone(),
            self.topic.clone(),
            self.outbox.clone(),
            self.backoff,
            self.log.clone(),
            self.publish_timeout,
        );
        async move {
            let payload = serde_json::to_vec(&event).expect("events always serialize");
            let log = event.trace.logger(&log);
            let mut attempt: u32 = 0;
            let unavailable = |attempt: u32, delay: Duration, e: &dyn std::fmt::Display| {
                METRICS.retries.with_label_values(&["kafka"]).inc();
                let info = EventInfo {
                    actor: Some("publisher".into()),
                    nasa_id: Some(event.nasa_id.clone()),
                    error_type: Some("kafka".into()),
                    error_message: Some(e.to_string()),
                    trace: None,
                }
                .in_span(&event.trace);
                telemetry::incident_failed(KAFKA_INCIDENT, "Kafka unavailable", &info);
                warn!(log, "Kafka unavailable"; "labels.nasa_id" => &event.nasa_id,
                    "labels.event_id" => event.event_id.to_string(), "labels.attempt" => attempt,
                    "labels.delay_ms" => delay.as_millis() as u64, "error.type" => "kafka",
                    "error.message" => e.to_string());
            };
            loop {
                let producer = shared.lock().expect("producer lock").clone();
                let headers = event.trace.add_to(OwnedHeaders::new());
                let record = FutureRecord::to(&topic).key(&event.nasa_id).payload(&payload).headers(headers);
                let outcome = match producer.send_result(record) {
                    Ok(mut delivery) => {
                        let mut wait = first_wait;
                        loop {
                            match tokio::time::timeout(wait, &mut delivery).await {
                                Ok(Ok(result)) => break result.map_err(|(e, _)| e),
                                Ok(Err(_canceled)) => break Err(rdkafka::error::KafkaError::Canceled),
                                Err(_elapsed) => {
                                    wait = backoff.delay(attempt);
                                    attempt += 1;
                                    unavailable(attempt, wait, &"no acknowledgement from the broker yet; the same send goes on");
                                }
                            }
                        }
                    }
                    Err((e, _)) => Err(e),
                };
                match outcome {
                    Ok(d) => {
                        outbox.clear()?;
                        METRICS.outbox_pending.set(0);
                        METRICS.published.inc();
                        if attempt > 0 {
                            telemetry::incident_recovered(KAFKA_INCIDENT, "Kafka available again", &EventInfo::default());
                        }
                        info!(log, "sent"; Stage::Publish, "labels.nasa_id" => &event.nasa_id, "labels.event_id" => event.event_id.to_string(),
                            "labels.topic" => &topic, "labels.partition" => d.partition, "labels.offset" => d.offset,
                            "labels.attempts" => attempt + 1);
                        return Ok(Delivered { partition: d.partition, offset: d.offset });
                    }
                    Err(e) => {
                        let delay = backoff.delay(attempt);
                        attempt += 1;
                        unavailable(attempt, delay, &e);
                        match new_producer() {
                            Ok(fresh) => *shared.lock().expect("producer lock") = fresh,
                            Err(e) => warn!(log, "cannot create a new Kafka producer; keeping the old one";
                                "error.type" => "kafka", "error.message" => e.to_string()),
                        }
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
    }
}

impl Actor for Publisher {
    type Context = Context<Self>;

    /// A pending event from before a crash goes first; `ctx.wait` holds every message until it is sent.
    fn started(&mut self, ctx: &mut Context<Self>) {
        match self.outbox.pending() {
            Ok(None) => {}
            Ok(Some(event)) => {
                // In the span it was put in the outbox with, before the crash.
                let log = event.trace.logger(&self.log);
                info!(log, "publishing the event left pending by the previous run";
                    "labels.nasa_id" => &event.nasa_id, "labels.event_id" => event.event_id.to_string());
                let id = event.event_id;
                ctx.wait(self.deliver(event).into_actor(self).map(move |r, act, _| match r {
                    Ok(_) => act.recovered = Some(id),
                    Err(e) => error!(log, "cannot clear the outbox"; "error.type" => "outbox", "error.message" => e.to_string()),
                }));
            }
            Err(e) => error!(self.log, "pending event unreadable"; "error.type" => "outbox", "error.message" => e.to_string()),
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.lifeline.stopped();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// Publish one event; the answer comes once the broker has it.
#[derive(Message)]
#[rtype(result = "Result<Delivered, OutboxError>")]
pub struct Publish(pub ImageEvent);

impl Handler<Publish> for Publisher {
    // Atomic: the next message waits until this event is delivered (one pending event at a time).
    type Result = AtomicResponse<Self, Result<Delivered, OutboxError>>;

    fn handle(&mut self, Publish(event): Publish, _: &mut Context<Self>) -> Self::Result {
        if self.recovered == Some(event.event_id) {
            let already = Ok(Delivered { partition: -1, offset: -1 });
            return AtomicResponse::new(Box::pin(actix::fut::ready(already)));
        }
        // Durable first: once in the outbox, the event survives a crash before delivery (and
        // is sent in the span it was put there with).
        let event = event.in_next_span();
        let stored = self.outbox.put(&event);
        if stored.is_ok() {
            METRICS.outbox_pending.set(1);
        }
        let delivery = self.deliver(event);
        AtomicResponse::new(Box::pin(
            async move {
                stored?;
                delivery.await
            }
            .into_actor(self),
        ))
    }
}

/// Answers once no event is pending: the Fetcher asks before it makes a new one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WaitIdle;

impl Handler<WaitIdle> for Publisher {
    type Result = ();
    fn handle(&mut self, _: WaitIdle, _: &mut Context<Self>) {}
}

/// Flush librdkafka's queue before the process exits.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush(pub Duration);

impl Handler<Flush> for Publisher {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, Flush(timeout): Flush, _: &mut Context<Self>) -> Self::Result {
        let (producer, log) = (self.producer.lock().expect("producer lock").clone(), self.log.clone());
        // librdkafka's flush blocks: off the actor thread.
        Box::pin(async move {
            let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
            if let Ok(Err(e)) = flushed {
                warn!(log, "producer flush incomplete; the pending event stays in the outbox";
                    "error.type" => "kafka", "error.message" => e.to_string());
            }
        })
    }
}
