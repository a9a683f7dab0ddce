//! The consumer role's download settings and [`ConsumerConfig`].

use std::time::Duration;

use super::error::{ConfigError, Errors};
use super::parse::{invalid, or_default, parse_number, parse_secs};
use super::setting::define_settings;

define_settings! {
    /// The raw settings of the consumer role's downloads.
    ConsumerSettings, heading "Consumer: downloads";
    max_image_bytes => MAX_IMAGE_BYTES {
        default: "52428800",
        about: "largest image accepted, in bytes (52428800 is 50 MiB); larger images go to the dead-letter topic",
    },
    allowed_image_hosts => ALLOWED_IMAGE_HOSTS { default: "images-assets.nasa.gov", about: "comma-separated hosts images may come from" },
    download_concurrency => DOWNLOAD_CONCURRENCY {
        default: "8",
        about: "image downloads at once per image host; `DOWNLOAD_CONCURRENCY × MAX_IMAGE_BYTES`, plus the Storer's 24 MiB, also bounds the image bytes the events in flight hold",
    },
    consumer_max_in_flight => CONSUMER_MAX_IN_FLIGHT {
        default: "256",
        about: "events the consumer role handles at once (checked, downloading, or waiting to be stored): more than downloads, so that the Storer's statements carry many rows (1 to 4096)",
    },
    consumer_stall_secs => CONSUMER_STALL_SECS {
        default: "60",
        about: "a consumer that holds no partition while partitions have lag, or partitions with lag whose committed offset does not move, for this long (5 to 86400 seconds) counts as stalled: a WARN naming the partitions, `/readyz` 503, and the consumer rejoins its group as a new member (at most once per this period)",
    },
    download_timeout_seconds => DOWNLOAD_TIMEOUT_SECONDS {
        default: "60",
        about: "time limit of one whole image download, in seconds (connecting: 5 s)",
    },
}

/// `MAX_IMAGE_BYTES`, `ALLOWED_IMAGE_HOSTS`, `DOWNLOAD_CONCURRENCY`, `CONSUMER_MAX_IN_FLIGHT`, `CONSUMER_STALL_SECS`,
/// `DOWNLOAD_TIMEOUT_SECONDS`.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    pub max_image_bytes: u64,
    pub allowed_image_hosts: Vec<String>,
    /// Image downloads at once per image host.
    pub concurrency: usize,
    /// Events handled at once.
    pub max_in_flight: usize,
    pub stall: Duration,
    pub download_timeout: Duration,
}

impl ConsumerConfig {
    pub(super) fn from_settings(s: &ConsumerSettings, e: &mut Errors) -> ConsumerConfig {
        ConsumerConfig {
            max_image_bytes: e.take(parse_number(&vars::MAX_IMAGE_BYTES, &s.max_image_bytes, 1, 1 << 40)),
            allowed_image_hosts: e.take(parse_hosts(&s.allowed_image_hosts)),
            concurrency: e.take(parse_number(&vars::DOWNLOAD_CONCURRENCY, &s.download_concurrency, 1, 1024)) as usize,
            max_in_flight: e.take(parse_number(&vars::CONSUMER_MAX_IN_FLIGHT, &s.consumer_max_in_flight, 1, 4096)) as usize,
            stall: e.take(parse_secs(&vars::CONSUMER_STALL_SECS, &s.consumer_stall_secs, 5, 86_400)),
            download_timeout: e.take(parse_secs(&vars::DOWNLOAD_TIMEOUT_SECONDS, &s.download_timeout_seconds, 1, 3600)),
        }
    }
}

fn parse_hosts(v: &Option<String>) -> Result<Vec<String>, ConfigError> {
    let raw = or_default(&vars::ALLOWED_IMAGE_HOSTS, v);
    let hosts: Vec<String> = raw.split(',').map(|h| h.trim().to_ascii_lowercase()).collect();
    let valid = hosts.iter().all(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)));
    if valid {
        Ok(hosts)
    } else {
        Err(invalid(vars::ALLOWED_IMAGE_HOSTS.var, raw, "comma-separated host names such as images-assets.nasa.gov"))
    }
}
