//! `nasa-ingest backfill --query Q [--limit N] [--year-start Y --year-end Y]`: pages through the
//! search results and publishes one event per image through the same Publisher and outbox as the
//! daemon.
//!
//! - The API serves at most 10,000 results per search: a larger search is split by year ranges.
//! - Resumable: every nasa_id published is appended (fsync'd) to `DATA_DIR/backfill/<query>.ids`;
//!   a later run skips them. Ctrl-C stops after the event being published; nothing is sent twice.
//!   (After a kill -9 between the broker's acknowledgement and that append, one event can be sent
//!   again; the consumer skips it as a duplicate.)
//! - Progress: a bar with rate and ETA on a terminal (log lines scroll above it), plain lines
//!   otherwise.
//! - Ctrl-C during a retry's backoff stops at once; while an event is being published, after it.

use actix::prelude::*;
use slog::{info, Logger};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;

use crate::actors::publisher::{self, Publish, Publisher};
use crate::backoff::retry;
use crate::config::{BackfillArgs, Config};
use crate::datadir::Owner;
use crate::deps::{Dependencies, Dependency};
use crate::event::ImageEvent;
use crate::kafka;
use crate::nasa::{image_items, NasaClient, NasaError, Search, MAX_RESULTS};
use crate::oneshot::{Progress, Words, EXIT_INTERRUPTED};
use crate::outbox::{Outbox, OutboxError};
use crate::shutdown;
use crate::supervision::Lifeline;
use crate::trace::Stage;

/// The API's largest page.
const PAGE_SIZE: u32 = 100;
/// Years NASA's library covers, when a search without years must be split.
const FIRST_YEAR: u32 = 1920;

/// How the progress line names a backfill's work.
const WORDS: Words = Words { command: "backfill", done: "published", skipped: "published before", items: "images" };

const NASA_RETRY: &str = "NASA API request failed, will retry";
const DISK_RETRY: &str = "cannot write to DATA_DIR, will retry when it is writable";

/// The nasa_ids a backfill of one search has published, kept on disk.
pub struct Published {
    ids: HashSet<String>,
    file: File,
}

impl Published {
    pub fn open(data_dir: &std::path::Path, args: &BackfillArgs) -> std::io::Result<Published> {
        let dir = data_dir.join("backfill");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(state_file_name(args));
        let ids = std::fs::read_to_string(&path).unwrap_or_default().lines().map(str::to_owned).collect();
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Published { ids, file })
    }

    pub fn contains(&self, nasa_id: &str) -> bool {
        self.ids.contains(nasa_id)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Records a published id durably before the next one is taken.
    pub fn record(&mut self, nasa_id: &str) -> std::io::Result<()> {
        if self.ids.insert(nasa_id.to_owned()) {
            writeln!(self.file, "{nasa_id}")?;
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// One state file per search: the query (made file-safe) and the years.
fn state_file_name(args: &BackfillArgs) -> PathBuf {
    let safe: String = args.query.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    let years = match (args.year_start, args.year_end) {
        (Some(s), Some(e)) => format!("-{s}-{e}"),
        _ => String::new(),
    };
    PathBuf::from(format!("{safe}{years}.ids"))
}

/// Splits `years` until each range has at most 10,000 hits (or is a single year).
/// `hits(range)` answers how many results a range has.
pub async fn plan_ranges<F, Fut>(years: (u32, u32), mut hits: F) -> Result<Vec<((u32, u32), u64)>, NasaError>
where
    F: FnMut((u32, u32)) -> Fut,
    Fut: Future<Output = Result<u64, NasaError>>,
{
    let mut todo = vec![years];
    let mut out = Vec::new();
    while let Some((start, end)) = todo.pop() {
        let n = hits((start, end)).await?;
        if n > MAX_RESULTS && start < end {
            let mid = start + (end - start) / 2;
            // Pushed in reverse so that ranges come out oldest first.
            todo.push((mid + 1, end));
            todo.push((start, mid));
        } else if n > 0 {
            out.push(((start, end), n));
        }
    }
    Ok(out)
}

/// Why a backfill cannot go on (transient faults are waited out; these are not).
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("cannot open or write the backfill's record of published images in DATA_DIR: {0}; check that DATA_DIR is writable")]
    State(#[source] std::io::Error),
    #[error("cannot create a Kafka producer: {0}; check KAFKA_BROKERS")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("cannot plan the search by years: {0}")]
    Plan(#[source] NasaError),
    #[error("the publisher stopped: {0}; this is a bug, please report it")]
    PublisherStopped(#[source] actix::MailboxError),
}

/// Runs a backfill; returns the exit code.
pub async fn run(config: Config, args: BackfillArgs, log: Logger) -> u8 {
    match backfill(&config, &args, &log).await {
        Ok(code) => code,
        Err(e) => {
            slog::error!(log, "backfill failed"; "error.type" => "backfill", "error.message" => e.to_string());
            eprintln!("nasa-ingest backfill: {e}");
            1
        }
    }
}

async fn backfill(config: &Config, args: &BackfillArgs, log: &Logger) -> Result<u8, BackfillError> {
    let stop = shutdown::on_signal(log.clone(), "stopping after the event being published");
    let outbox = Outbox::open(&config.outbox.data_dir, Owner::Backfill)?;
    let mut published = Published::open(&config.outbox.data_dir, args).map_err(BackfillError::State)?;
    // An event of this search left pending by an interrupted run: the Publisher sends it first.
    if let Ok(Some(pending)) = outbox.pending() {
        if pending.query.as_deref() == Some(args.query.as_str()) {
            published.record(&pending.nasa_id).map_err(BackfillError::State)?;
        }
    }
    let retry_backoff = config.retries.backoff();
    let topics = [config.kafka.topic.as_str(), config.kafka.dlq_topic.as_str()];
    let ensure_topics = || kafka::ensure_topics_checked(&config.kafka.brokers, &topics, log);
    // No status page shows the backfill's dependencies: the log says what is wrong.
    let kafka_state = Dependencies::default();
    if kafka_state.wait_until_usable(log, Dependency::Kafka, retry_backoff, &stop, ensure_topics).await.is_none() {
        return Ok(EXIT_INTERRUPTED);
    }
    let factory = publisher::producer_factory(config.kafka.brokers.clone(), log.clone());
    let publish_backoff = config.outbox.publish_backoff();
    let publisher = Publisher::new(
        factory,
        config.kafka.topic.clone(),
        outbox,
        publish_backoff,
        config.outbox.publish_timeout,
        log.clone(),
        Lifeline::unsupervised("publisher"),
    )
    .map_err(BackfillError::Producer)?
    .start();
    let nasa = NasaClient::new(config.nasa.api_url.clone(), config.nasa.image_variant, config.nasa.timeout);

    // Which searches to page through: one, or year ranges of at most 10,000 results each.
    let query = args.query.as_str();
    let hits = |years: Option<(u32, u32)>| {
        let nasa = nasa.clone();
        async move { nasa.search_with(&Search { query, years, page: 1, page_size: Some(PAGE_SIZE) }).await.map(|c| c.metadata.total_hits) }
    };
    let asked = args.year_start.zip(args.year_end);
    let Some(total) = retry(log, NASA_RETRY, retry_backoff, &stop, || hits(asked)).await else { return Ok(EXIT_INTERRUPTED) };
    let ranges: Vec<(Option<(u32, u32)>, u64)> = if total <= MAX_RESULTS {
        vec![(asked, total)]
    } else {
        let years = asked.unwrap_or((FIRST_YEAR, chrono::Datelike::year(&chrono::Utc::now()) as u32));
        let planned = plan_ranges(years, |r| hits(Some(r))).await.map_err(BackfillError::Plan)?;
        planned.into_iter().map(|(r, n)| (Some(r), n)).collect()
    };
    let reachable: u64 = ranges.iter().map(|(_, n)| (*n).min(MAX_RESULTS)).sum();
    let goal = args.limit.map_or(reachable, |l| l.min(reachable.saturating_sub(published.len() as u64)) + published.len() as u64);
    info!(log, "backfill planned"; "labels.query" => query, "labels.total_hits" => total, "labels.ranges" => ranges.len(),
        "labels.published_before" => published.len());

    let mut progress = Progress::new(goal, WORDS);
    let mut new_ones: u64 = 0;
    'ranges: for (years, _) in &ranges {
        for page in 1..=(MAX_RESULTS / PAGE_SIZE as u64) {
            let search = Search { query, years: *years, page, page_size: Some(PAGE_SIZE) };
            let Some(results) = retry(log, NASA_RETRY, retry_backoff, &stop, || nasa.search_with(&search)).await else { break 'ranges };
            for item in image_items(&results) {
                if stop.is_cancelled() || args.limit.is_some_and(|l| new_ones >= l) {
                    break 'ranges;
                }
                let id = &item.data[0].nasa_id;
                if published.contains(id) {
                    progress.skipped();
                    continue;
                }
                let Some(found) = retry(log, NASA_RETRY, retry_backoff, &stop, || nasa.found_image(item)).await else { break 'ranges };
                // Its trace starts here, as the Fetcher's do; one line per image only at debug (a backfill is many).
                let event = ImageEvent::new(found, query);
                slog::debug!(log, "found image"; Stage::Fetch, &event.trace, "labels.nasa_id" => &event.nasa_id, "labels.query" => query,
                    "labels.event_id" => event.event_id.to_string());
                // A full or read-only DATA_DIR is transient: the same event waits for the disk.
                let publish = || {
                    let (publisher, event) = (publisher.clone(), event.clone());
                    async move {
                        match publisher.send(Publish(event)).await {
                            Ok(Ok(_)) => Ok(Ok(())),
                            Ok(Err(outbox)) => Err(outbox),
                            Err(stopped) => Ok(Err(stopped)),
                        }
                    }
                };
                match retry(log, DISK_RETRY, retry_backoff, &stop, publish).await {
                    None => break 'ranges,
                    Some(Err(e)) => return Err(BackfillError::PublisherStopped(e)),
                    Some(Ok(())) => {}
                }
                let record = || std::future::ready(published.record(id));
                if retry(log, DISK_RETRY, retry_backoff, &stop, record).await.is_none() {
                    break 'ranges;
                }
                new_ones += 1;
                progress.done();
            }
            if !results.has_next() || results.items.is_empty() {
                break;
            }
        }
    }
    let interrupted = stop.is_cancelled();
    progress.finish(if interrupted { "interrupted: run the same command again to resume" } else { "done" });
    info!(log, "backfill finished"; "labels.published" => new_ones, "labels.interrupted" => interrupted);
    Ok(if interrupted { EXIT_INTERRUPTED } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_searches_are_split_by_years_until_each_part_fits() {
        // 3,000 results a year: 1990..=2009 has 60,000.
        let hits = |(s, e): (u32, u32)| std::future::ready(Ok::<u64, NasaError>((e - s + 1) as u64 * 3_000));
        let ranges = futures::executor::block_on(plan_ranges((1990, 2009), hits)).unwrap();
        assert!(ranges.iter().all(|(_, n)| *n <= MAX_RESULTS), "{ranges:?}");
        assert_eq!(ranges.iter().map(|(_, n)| n).sum::<u64>(), 60_000, "nothing lost in the split");
        assert_eq!(ranges.first().unwrap().0 .0, 1990);
        assert_eq!(ranges.last().unwrap().0 .1, 2009);
        for w in ranges.windows(2) {
            assert_eq!(w[0].0 .1 + 1, w[1].0 .0, "contiguous, oldest first");
        }
    }

    #[test]
    fn a_single_year_over_the_cap_is_kept_as_is() {
        let hits = |_: (u32, u32)| std::future::ready(Ok::<u64, NasaError>(50_000));
        let ranges = futures::executor::block_on(plan_ranges((2000, 2000), hits)).unwrap();
        assert_eq!(ranges, vec![((2000, 2000), 50_000)]);
    }

    #[test]
    fn published_ids_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let args = BackfillArgs { query: "Moon rocks!".into(), limit: None, year_start: None, year_end: None };
        let mut p = Published::open(dir.path(), &args).unwrap();
        p.record("as11-40-5874").unwrap();
        p.record("as11-40-5874").unwrap();
        let again = Published::open(dir.path(), &args).unwrap();
        assert!(again.contains("as11-40-5874") && again.len() == 1);
        assert!(dir.path().join("backfill/moon_rocks_.ids").exists());
    }
}
