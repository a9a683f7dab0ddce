//! Fetcher: every INTERVAL_SECONDS, asks the NASA API for a random image and hands the event to
//! the Publisher. It makes no new event while one is pending, and backs off on API errors.

use actix::prelude::*;
use rand::seq::IndexedRandom;
use slog::{info, warn, Logger};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::publisher::{Publish, Publisher, WaitIdle};
use crate::backoff::Backoff;
use crate::config::RANDOM_TOPICS;
use crate::deps::{Dependencies, Dependency};
use crate::event::ImageEvent;
use crate::metrics::METRICS;
use crate::nasa::{NasaClient, NasaError};
use crate::supervision::{Lifeline, Slot};
use crate::telemetry::{self, EventInfo};
use crate::trace::Stage;

const NASA_INCIDENT: &str = "nasa_api_unavailable";

pub struct Fetcher {
    nasa: NasaClient,
    publisher: Slot<Publisher>,
    query: Option<String>,
    interval: Duration,
    backoff: Backoff,
    failures: u32,
    /// An event the Publisher did not take (it was down): offered again before anything new.
    unsent: Option<Box<ImageEvent>>,
    reports: FetcherReports,
    log: Logger,
    lifeline: Lifeline,
}

crate::crashable!(Fetcher);

enum Cycle {
    Published,
    NoHits(String),
    NasaFailed(NasaError),
    PublisherFailed(String, Option<Box<ImageEvent>>),
}

impl Cycle {
    /// What came of the cycle, in a few words (for /status).
    fn summary(&self) -> String {
        match self {
            Cycle::Published => "published".into(),
            Cycle::NoHits(query) => format!("no images for {query:?}"),
            Cycle::NasaFailed(e) => format!("failed: {e}"),
            Cycle::PublisherFailed(reason, _) => format!("publisher unavailable: {reason}"),
        }
    }
}

/// When the Fetcher last finished a cycle, what came of it, and when the next one starts.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Fetches {
    pub last_at: Option<String>,
    pub last_outcome: Option<String>,
    pub next_at: Option<String>,
}

impl Fetches {
    fn finished(&mut self, outcome: String, next_in: Duration) {
        let now = chrono::Utc::now();
        let next = now + chrono::Duration::from_std(next_in).unwrap_or_default();
        let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        *self = Fetches { last_at: Some(time(now)), last_outcome: Some(outcome), next_at: Some(time(next)) };
    }
}

/// The Fetcher's latest cycle. A handle made by the daemon: it outlives the Fetcher's restarts.
#[derive(Clone, Default)]
pub struct LastFetch(Arc<Mutex<Fetches>>);

impl LastFetch {
    fn finished(&self, outcome: String, next_in: Duration) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).finished(outcome, next_in);
    }

    pub fn get(&self) -> Fetches {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Where the Fetcher reports for /status: its cycles, and the state of the NASA API.
#[derive(Clone)]
pub struct FetcherReports {
    pub fetches: LastFetch,
    pub dependencies: Dependencies,
}

pub struct FetcherSettings {
    pub query: Option<String>,
    pub interval: Duration,
    pub backoff: Backoff,
}

impl Fetcher {
    pub fn new(
        nasa: NasaClient,
        publisher: Slot<Publisher>,
        settings: FetcherSettings,
        reports: FetcherReports,
        log: Logger,
        lifeline: Lifeline,
    ) -> Self {
        let FetcherSettings { query, interval, backoff } = settings;
        Fetcher { nasa, publisher, query, interval, backoff, failures: 0, unsent: None, reports, log, lifeline }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>, delay: Duration) {
        ctx.run_later(delay, |act, ctx| act.cycle(ctx));
    }

    fn cycle(&mut self, ctx: &mut Context<Self>) {
        let started = Instant::now();
        let query = self.query.clone().unwrap_or_else(|| RANDOM_TOPICS.choose(&mut rand::rng()).expect("not empty").to_string());
        let work = fetch_and_publish(self.nasa.clone(), self.publisher.clone(), query, self.unsent.take(), self.log.clone());
        ctx.spawn(work.into_actor(self).map(move |outcome, act, ctx| {
            let summary = outcome.summary();
            let delay = act.next_delay(outcome, started);
            act.reports.fetches.finished(summary, delay);
            act.schedule(ctx, delay);
        }));
    }

    /// After success: the rest of the interval. After a failure: the backoff, growing each time.
    fn next_delay(&mut self, outcome: Cycle, started: Instant) -> Duration {
        let retry = |act: &mut Fetcher| {
            let d = act.backoff.delay(act.failures);
            act.failures += 1;
            d
        };
        let nasa_state = match &outcome {
            Cycle::Published | Cycle::NoHits(_) => Some(Ok(())),
            Cycle::NasaFailed(e) => Some(Err(e.as_dependency_error(&self.nasa.address()))),
            Cycle::PublisherFailed(..) => None,
        };
        if let Some(state) = nasa_state {
            // Each failure is logged below with its attempt; the state is for /status.
            self.reports.dependencies.record(Dependency::NasaApi, state.as_ref().map(|_| ()));
        }
        match outcome {
            Cycle::Published => {
                if self.failures > 0 {
                    telemetry::incident_recovered(NASA_INCIDENT, "NASA API available again", &EventInfo::default());
                }
                self.failures = 0;
                self.interval.saturating_sub(started.elapsed())
            }
            Cycle::NoHits(query) => {
                warn!(self.log, "NASA API has no images for this query"; "labels.query" => query);
                self.interval
            }
            Cycle::NasaFailed(e) => {
                let delay = retry(self);
                METRICS.retries.with_label_values(&[e.kind()]).inc();
                let info = EventInfo {
                    actor: Some("fetcher".into()),
                    error_type: Some(e.kind().into()),
                    error_message: Some(e.to_string()),
                    ..Default::default()
                };
                telemetry::incident_failed(NASA_INCIDENT, "NASA API unavailable", &info);
                warn!(self.log, "NASA API request failed, will retry"; "error.type" => e.kind(), "error.message" => e.to_string(),
                    "labels.attempt" => self.failures, "labels.delay_ms" => delay.as_millis() as u64);
                delay
            }
            Cycle::PublisherFailed(reason, unsent) => {
                // About the event it keeps, in that event's trace.
                let log = unsent.as_ref().map_or_else(|| self.log.clone(), |e| e.trace.logger(&self.log));
                self.unsent = unsent;
                let delay = retry(self);
                warn!(log, "publisher unavailable, will retry"; "error.type" => "publisher", "error.message" => reason,
                    "labels.attempt" => self.failures, "labels.delay_ms" => delay.as_millis() as u64);
                delay
            }
        }
    }
}

/// One cycle: wait until nothing is pending, find an image (or take the unsent one), publish it
/// and wait for delivery.
async fn fetch_and_publish(
    nasa: NasaClient,
    publisher: Slot<Publisher>,
    query: String,
    unsent: Option<Box<ImageEvent>>,
    log: Logger,
) -> Cycle {
    if let Err(e) = publisher.send(WaitIdle).await {
        return Cycle::PublisherFailed(e.to_string(), unsent);
    }
    let event = match unsent {
        Some(event) => *event,
        None => match nasa.random_image(&query).await {
            Ok(Some(found)) => {
                METRICS.fetched.inc();
                ImageEvent::new(found, &query)
            }
            Ok(None) => return Cycle::NoHits(query),
            Err(e) => return Cycle::NasaFailed(e),
        },
    };
    info!(log, "found image"; Stage::Fetch, &event.trace, "labels.nasa_id" => &event.nasa_id, "labels.query" => event.query.clone(),
        "labels.event_id" => event.event_id.to_string());
    match publisher.send(Publish(event.clone())).await {
        Ok(Ok(_)) => Cycle::Published,
        // The outbox could not be written: nothing is pending, keep the event and try again.
        Ok(Err(e)) => Cycle::PublisherFailed(e.to_string(), Some(Box::new(event))),
        Err(e) => Cycle::PublisherFailed(e.to_string(), Some(Box::new(event))),
    }
}

impl Actor for Fetcher {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.schedule(ctx, Duration::ZERO);
    }
    fn stopped(&mut self, _: &mut Context<Self>) {
        self.lifeline.stopped();
    }
}

/// Stop fetching (shutdown). A publish already handed over still completes or stays in the outbox.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopFetching;

impl Handler<StopFetching> for Fetcher {
    type Result = ();
    fn handle(&mut self, _: StopFetching, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
