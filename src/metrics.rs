//! Counters for `/metrics` (Prometheus text format). One process-wide registry: every actor
//! counts what it does, the HTTP endpoint renders it.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::collections::VecDeque;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

pub struct Metrics {
    registry: Registry,
    pub fetched: IntCounter,
    pub published: IntCounter,
    pub consumed: IntCounter,
    pub stored: IntCounter,
    pub duplicates: IntCounter,
    pub dead_lettered: IntCounterVec,
    pub replays: IntCounterVec,
    pub bytes_downloaded: IntCounter,
    pub retries: IntCounterVec,
    pub restarts: IntCounterVec,
    pub outbox_pending: IntGauge,
    pub consumer_lag: IntGaugeVec,
    pub processing_seconds: Histogram,
    /// Rows per statement the Storer wrote.
    pub store_batch_rows: Histogram,
}

/// The label values [`Metrics::expect`] starts at 0.
pub struct KnownLabels<'a> {
    pub actors: &'a [&'a str],
    pub dead_letter_reasons: &'a [&'a str],
    pub retry_causes: &'a [&'a str],
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The window of the rates on /status and the page.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// fetched, published, consumed and stored at one moment.
type Sample = (Instant, [u64; 4]);

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(format!("nasa_ingest_{name}"), help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(format!("nasa_ingest_{name}"), help), &[label]).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let outbox_pending =
            IntGauge::new("nasa_ingest_outbox_pending_events", "Events written to the outbox, not yet acknowledged by Kafka").unwrap();
        r.register(Box::new(outbox_pending.clone())).unwrap();
        let consumer_lag =
            IntGaugeVec::new(Opts::new("nasa_ingest_consumer_lag", "High watermark minus the group's committed offset"), &["partition"])
                .unwrap();
        r.register(Box::new(consumer_lag.clone())).unwrap();
        let processing_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "nasa_ingest_processing_seconds",
                "From reading a message to finishing it (stored, skipped or dead-lettered)",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
        )
        .unwrap();
        r.register(Box::new(processing_seconds.clone())).unwrap();
        let store_batch_rows = Histogram::with_opts(
            HistogramOpts::new("nasa_ingest_store_batch_rows", "Rows the Storer wrote in one statement")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )
        .unwrap();
        r.register(Box::new(store_batch_rows.clone())).unwrap();
        // process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds, ...
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())).unwrap();
        let build_info = IntGaugeVec::new(Opts::new("nasa_ingest_build_info", "Always 1; the version is the label"), &["version"]).unwrap();
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        r.register(Box::new(build_info)).unwrap();
        Metrics {
            fetched: counter(&r, "events_fetched_total", "Images found on the NASA API and turned into events"),
            published: counter(&r, "events_published_total", "Events acknowledged by Kafka"),
            consumed: counter(&r, "events_consumed_total", "Messages read from the images topic"),
            stored: counter(&r, "events_stored_total", "Images inserted into Postgres"),
            duplicates: counter(&r, "events_duplicate_total", "Events skipped because their nasa_id was stored already"),
            dead_lettered: counter_vec(&r, "events_dead_lettered_total", "Messages sent to the dead-letter topic", "reason"),
            replays: counter_vec(
                &r,
                "events_replayed_total",
                "Replayed dead letters (`dlq replay`) this consumer finished, by outcome: stored, duplicate, dead_lettered",
                "outcome",
            ),
            bytes_downloaded: counter(&r, "bytes_downloaded_total", "Image bytes downloaded"),
            retries: counter_vec(&r, "retries_total", "Retries after a transient failure", "cause"),
            restarts: counter_vec(&r, "actor_restarts_total", "Restarts of an actor by the supervisor", "actor"),
            outbox_pending,
            consumer_lag,
            processing_seconds,
            store_batch_rows,
            registry: r,
        }
    }

    /// Every label value known in advance is exposed at 0 from the start: a rate or an alert on
    /// `increase(...)` then sees the first incident, and a dashboard lists every series. The
    /// daemon names them: the lists live with what they name, above this module.
    pub fn expect(&self, known: KnownLabels<'_>) {
        for actor in known.actors {
            self.restarts.with_label_values(&[actor]);
        }
        for reason in known.dead_letter_reasons {
            self.dead_lettered.with_label_values(&[reason]);
        }
        for cause in known.retry_causes {
            self.retries.with_label_values(&[cause]);
        }
    }

    fn counts(&self) -> [u64; 4] {
        [self.fetched.get(), self.published.get(), self.consumed.get(), self.stored.get()]
    }

    /// Dead letters over every reason.
    pub fn dead_lettered_total(&self) -> u64 {
        use prometheus::core::Collector;
        self.dead_lettered.collect().iter().flat_map(|f| f.get_metric()).map(|m| m.get_counter().get_value() as u64).sum()
    }

    pub fn set_lag(&self, partition: i32, lag: i64) {
        self.consumer_lag.with_label_values(&[&partition.to_string()]).set(lag);
    }

    /// Lag per partition, read back from the gauge (for the status page).
    pub fn lag(&self) -> std::collections::BTreeMap<i32, i64> {
        use prometheus::core::Collector;
        let families = self.consumer_lag.collect();
        families
            .iter()
            .flat_map(|f| f.get_metric())
            .filter_map(|m| {
                let partition = m.get_label().iter().find(|l| l.name() == "partition")?.value().parse().ok()?;
                Some((partition, m.get_gauge().get_value() as i64))
            })
            .collect()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding never fails");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Samples of the counters over the last minute, for the per-minute rates of /status and the
/// page. A handle: the daemon's sampling loop writes it, the status reads it.
#[derive(Clone, Default)]
pub struct Rates(Arc<Mutex<VecDeque<Sample>>>);

/// Events per minute over the last minute, to one decimal.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct RatesPerMinute {
    pub fetched: f64,
    pub published: f64,
    pub consumed: f64,
    pub stored: f64,
}

impl Rates {
    /// Takes a sample of `metrics`' counters; rates are computed over the samples of the last minute.
    pub fn sample(&self, metrics: &Metrics) {
        let mut samples = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        samples.push_back((now, metrics.counts()));
        while samples.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
            samples.pop_front();
        }
    }

    /// Events per minute over the last minute (or since the first sample). Zero until two
    /// samples exist.
    pub fn per_minute(&self) -> RatesPerMinute {
        let samples = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (Some((t0, first)), Some((t1, last))) = (samples.front(), samples.back()) else { return RatesPerMinute::default() };
        let minutes = t1.duration_since(*t0).as_secs_f64() / 60.0;
        if minutes <= 0.0 {
            return RatesPerMinute::default();
        }
        let per_minute = |i: usize| ((last[i] - first[i]) as f64 / minutes * 10.0).round() / 10.0;
        RatesPerMinute { fetched: per_minute(0), published: per_minute(1), consumed: per_minute(2), stored: per_minute(3) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_labels_start_at_zero_with_process_and_build_info() {
        METRICS.expect(KnownLabels { actors: &["storer"], dead_letter_reasons: &["too_large"], retry_causes: &["nasa_timeout"] });
        let text = METRICS.render();
        for series in [
            "nasa_ingest_actor_restarts_total{actor=\"storer\"}",
            "nasa_ingest_events_dead_lettered_total{reason=\"too_large\"}",
            "nasa_ingest_retries_total{cause=\"nasa_timeout\"}",
        ] {
            assert!(text.lines().any(|l| l.starts_with(series)), "{series} missing:\n{text}");
        }
        assert!(text.contains(&format!("nasa_ingest_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))), "{text}");
        assert!(text.contains("process_resident_memory_bytes") && text.contains("process_open_fds"), "{text}");
    }

    #[test]
    fn lag_reads_back_what_the_gauge_holds() {
        METRICS.set_lag(7, 42);
        METRICS.set_lag(7, 3);
        assert_eq!(METRICS.lag().get(&7), Some(&3));
        assert!(METRICS.render().contains("nasa_ingest_consumer_lag{partition=\"7\"} 3"));
    }
}
