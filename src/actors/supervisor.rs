//! The composition root: checks the dependencies, starts the actors of the enabled roles, wires
//! their addresses, and shuts them down in order on SIGTERM/SIGINT.

use actix::prelude::*;
use slog::{info, warn, Logger};
use std::future::Future;
use std::time::Duration;

use super::downloader::Downloader;
use super::fetcher::{Fetcher, StopFetching};
use super::publisher::{Flush, Publisher};
use super::storer::Storer;
use super::subscriber::{Drain, Pipeline, Subscriber};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::db;
use crate::kafka;
use crate::logging::for_component;
use crate::nasa::NasaClient;
use crate::outbox::Outbox;

/// How long librdkafka retries one send before the Publisher hears of the failure and backs off.
const PUBLISH_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// In-flight events get this long to finish at shutdown (the whole exit stays under 10 s).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(6);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Outbox(#[from] crate::outbox::OutboxError),
    #[error("cannot create a Kafka client: {0}; check KAFKA_BROKERS")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

struct Running {
    fetcher: Option<Addr<Fetcher>>,
    publisher: Option<Addr<Publisher>>,
    subscriber: Option<Addr<Subscriber>>,
}

/// Runs the daemon until a signal; returns the process exit code.
pub async fn run(config: Config, log: Logger) -> u8 {
    let log = for_component(&log, "supervisor");
    info!(log, "starting"; "labels.roles" => config.roles(), "labels.kafka_brokers" => &config.kafka_brokers,
        "labels.database" => config.database_url.as_ref().map(|u| u.redacted()));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let running = tokio::select! {
        r = start(&config, &log) => r,
        _ = &mut shutdown => { info!(log, "signal received during start-up; exiting"); return 0; }
    };
    let running = match running {
        Ok(r) => r,
        Err(e) => {
            slog::error!(log, "cannot start"; "error.type" => "start", "error.message" => e.to_string());
            return 1;
        }
    };
    info!(log, "started"; "labels.roles" => config.roles());
    shutdown.await;
    stop(running, &log).await;
    0
}

async fn start(config: &Config, log: &Logger) -> Result<Running, StartError> {
    let retry = Backoff::new(config.retry_min_backoff, config.retry_max_backoff, 0.2);
    let topics = [config.kafka_topic.as_str(), config.kafka_dlq_topic.as_str()];
    retry_until_ok(log, "Kafka unavailable", retry, || kafka::ensure_topics(&config.kafka_brokers, &topics, log)).await;

    let mut running = Running { fetcher: None, publisher: None, subscriber: None };
    if config.consumer_enabled {
        running.subscriber = Some(start_consumer_role(config, log, retry).await?);
    }
    if config.producer_enabled {
        let (fetcher, publisher) = start_producer_role(config, log, retry)?;
        running.fetcher = Some(fetcher);
        running.publisher = Some(publisher);
    }
    Ok(running)
}

async fn start_consumer_role(config: &Config, log: &Logger, retry: Backoff) -> Result<Addr<Subscriber>, StartError> {
    let url = config.database_url.as_ref().expect("validated: the consumer role has a DATABASE_URL");
    let pool = db::pool(url.expose(), config.download_concurrency as u32 + 2);
    let migrations = || {
        let pool = pool.clone();
        async move { tokio::task::spawn_blocking(move || db::migrate(&pool)).await.expect("migrations do not panic") }
    };
    let applied = retry_until_ok(log, "Postgres unavailable", retry, migrations).await;
    info!(log, "database ready"; "labels.migrations_applied" => applied.len());

    let storer = Storer::new(pool).start();
    let downloader =
        Downloader::new(config.allowed_image_hosts.clone(), config.max_image_bytes, config.download_timeout).start();
    let sub_log = for_component(log, "subscriber");
    let pipeline = Pipeline {
        storer,
        downloader,
        dlq: kafka::producer(&config.kafka_brokers, PUBLISH_ATTEMPT_TIMEOUT, sub_log.clone())?,
        topic: config.kafka_topic.clone(),
        dlq_topic: config.kafka_dlq_topic.clone(),
        backoff: retry,
        log: sub_log,
    };
    let subscriber = Subscriber::new(&config.kafka_brokers, &config.kafka_group_id, pipeline, config.download_concurrency)?;
    Ok(subscriber.start())
}

fn start_producer_role(config: &Config, log: &Logger, retry: Backoff) -> Result<(Addr<Fetcher>, Addr<Publisher>), StartError> {
    let pub_log = for_component(log, "publisher");
    let producer = kafka::producer(&config.kafka_brokers, PUBLISH_ATTEMPT_TIMEOUT, pub_log.clone())?;
    let publish_backoff = Backoff::new(config.publish_min_backoff, config.publish_max_backoff, 0.2);
    let outbox = Outbox::open(&config.data_dir)?;
    let publisher = Publisher::new(producer, config.kafka_topic.clone(), outbox, publish_backoff, pub_log).start();
    let nasa = NasaClient::new(config.nasa_api_url.clone(), config.image_variant);
    let fetcher =
        Fetcher::new(nasa, publisher.clone(), config.query.clone(), config.interval, retry, for_component(log, "fetcher"))
            .start();
    Ok((fetcher, publisher))
}

/// Stop fetching, flush the producer, let in-flight events finish and commit them.
async fn stop(running: Running, log: &Logger) {
    info!(log, "shutting down");
    if let Some(f) = running.fetcher {
        let _ = f.send(StopFetching).await;
    }
    if let Some(p) = running.publisher {
        // try_send: a publisher busy retrying a pending event must not hold up the exit; its event stays in the outbox.
        let _ = p.try_send(Flush(Duration::from_secs(2)));
    }
    if let Some(s) = running.subscriber {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), s.send(Drain(DRAIN_TIMEOUT))).await;
    }
    info!(log, "stopped");
}

/// Retries `attempt` with backoff until it succeeds, logging each failure as a WARN.
async fn retry_until_ok<T, E, F, Fut>(log: &Logger, what: &'static str, backoff: Backoff, mut attempt: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut n: u32 = 0;
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) => {
                let delay = backoff.delay(n);
                n += 1;
                warn!(log, "{}", what; "error.message" => e.to_string(), "labels.attempt" => n,
                    "labels.delay_ms" => delay.as_millis() as u64);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("can listen for SIGTERM");
    let mut int = signal(SignalKind::interrupt()).expect("can listen for SIGINT");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
