//! The producer's outbox and publishing settings, and [`OutboxConfig`].

use std::path::PathBuf;
use std::time::Duration;

use super::error::Errors;
use super::parse::{or_default, parse_backoff, parse_millis};
use super::retries::JITTER;
use super::setting::define_settings;
use crate::backoff::Backoff;

define_settings! {
    /// The raw settings of the producer's outbox and its publishing.
    OutboxSettings, heading "Producer: outbox and publishing";
    data_dir => DATA_DIR {
        default: "data",
        about: "local state: the producer's outbox (`outbox/pending.json`), held by one process at a time; `/data` in the container image",
    },
    publish_timeout_ms => PUBLISH_TIMEOUT_MS {
        default: "5000",
        about: "how long a send may go unacknowledged before `Kafka unavailable` is logged, in ms; the same send goes on (librdkafka retries it with the same sequence number, so the broker keeps one copy of the event however often it was retried)",
    },
    publish_min_backoff_ms => PUBLISH_MIN_BACKOFF_MS {
        default: "500",
        about: "first delay of the Publisher's retries while Kafka is unavailable, in ms",
    },
    publish_max_backoff_ms => PUBLISH_MAX_BACKOFF_MS { default: "30000", about: "longest delay of the Publisher's retries, in ms" },
}

/// `DATA_DIR`, `PUBLISH_TIMEOUT_MS`, `PUBLISH_*_BACKOFF_MS`.
#[derive(Clone, Debug)]
pub struct OutboxConfig {
    pub data_dir: PathBuf,
    pub publish_timeout: Duration,
    pub publish_min_backoff: Duration,
    pub publish_max_backoff: Duration,
}

impl OutboxConfig {
    pub(super) fn from_settings(s: &OutboxSettings, e: &mut Errors) -> OutboxConfig {
        let publish_timeout = e.take(parse_millis(&vars::PUBLISH_TIMEOUT_MS, &s.publish_timeout_ms));
        let (publish_min_backoff, publish_max_backoff) = parse_backoff(
            e,
            (&vars::PUBLISH_MIN_BACKOFF_MS, &s.publish_min_backoff_ms),
            (&vars::PUBLISH_MAX_BACKOFF_MS, &s.publish_max_backoff_ms),
        );
        OutboxConfig {
            data_dir: PathBuf::from(or_default(&vars::DATA_DIR, &s.data_dir)),
            publish_timeout,
            publish_min_backoff,
            publish_max_backoff,
        }
    }

    /// The Publisher's retries while Kafka is unavailable (`PUBLISH_*_BACKOFF_MS`).
    pub fn publish_backoff(&self) -> Backoff {
        Backoff::new(self.publish_min_backoff, self.publish_max_backoff, JITTER)
    }
}
