//! Downloader: fetches image bytes from allowed hosts only, with timeouts and a size cap, and
//! checks that they are an image. Failures say whether a retry can help (see `errors`).
//!
//! It owns the HTTP client and two limits ([`DownloadLimits`]): at most `DOWNLOAD_CONCURRENCY`
//! downloads at once per image host, and at most `DOWNLOAD_CONCURRENCY × MAX_IMAGE_BYTES` (plus
//! what the Storer takes in at once, 24 MiB) of image bytes held by the events in flight, from
//! the response headers until the row is stored.
//! So the consumer may have many more events in flight than downloads (the Storer's batches need
//! them) while its memory stays bounded as it was with one download per event.

use actix::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::dlq::reason::Permanent;
use crate::errors::{EventError, Transient};
use crate::image::sniff_content_type;
use crate::supervision::Lifeline;

pub struct Downloader {
    http: reqwest::Client,
    rules: Arc<Rules>,
    limits: DownloadLimits,
    lifeline: Lifeline,
}

/// The limits of every incarnation of the Downloader: made once by the wiring, so that a restart
/// does not forget the downloads and bytes of the events still in flight.
#[derive(Clone, Debug)]
pub struct DownloadLimits {
    per_host: usize,
    hosts: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    /// KiB of image bytes the events in flight may hold.
    bytes: Arc<Semaphore>,
}

impl DownloadLimits {
    /// `per_host` downloads at once per host; `per_host × max_image_bytes + storer_bytes` bytes
    /// held at once. `storer_bytes` is what the Storer takes in at once (its statements running and
    /// the batch waiting): without it, images of a few hundred KB filled the budget before the
    /// Storer's second statement did, and downloads waited for inserts instead of overlapping them.
    pub fn new(per_host: usize, max_image_bytes: u64, storer_bytes: u64) -> DownloadLimits {
        let per_host = per_host.max(1);
        let budget = per_host as u64 * kib(max_image_bytes) as u64 + kib(storer_bytes) as u64;
        let budget = budget.min(Semaphore::MAX_PERMITS as u64) as usize;
        DownloadLimits { per_host, hosts: Arc::default(), bytes: Arc::new(Semaphore::new(budget)) }
    }

    async fn host_slot(&self, host: &str) -> OwnedSemaphorePermit {
        let host = host.to_ascii_lowercase();
        let slots = self.hosts.lock().expect("hosts lock").entry(host).or_insert_with(|| Arc::new(Semaphore::new(self.per_host))).clone();
        slots.acquire_owned().await.expect("the semaphore is never closed")
    }

    async fn hold(&self, bytes: u64) -> OwnedSemaphorePermit {
        self.bytes.clone().acquire_many_owned(kib(bytes)).await.expect("the semaphore is never closed")
    }
}

/// Bytes in whole KiB, the unit of the byte budget (a permit count is a u32).
fn kib(bytes: u64) -> u32 {
    bytes.div_ceil(1024).min(u32::MAX as u64) as u32
}

crate::crashable!(Downloader);

struct Rules {
    allowed_hosts: Vec<String>,
    max_bytes: u64,
}

impl Rules {
    fn host_allowed(&self, url: &Url) -> bool {
        url.host_str().is_some_and(|h| self.allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(h)))
    }
}

impl Downloader {
    pub fn new(allowed_hosts: Vec<String>, max_bytes: u64, timeout: Duration, limits: DownloadLimits, lifeline: Lifeline) -> Downloader {
        let rules = Arc::new(Rules { allowed_hosts, max_bytes });
        let redirect_rules = rules.clone();
        // A redirect may only lead to another allowed host; otherwise the 3xx is the answer.
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 || !redirect_rules.host_allowed(attempt.url()) {
                attempt.stop()
            } else {
                attempt.follow()
            }
        });
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .redirect(redirects)
            .pool_max_idle_per_host(64)
            .user_agent(concat!("nasa-ingest/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client's settings are static and valid");
        Downloader { http, rules, limits, lifeline }
    }
}

impl Actor for Downloader {
    type Context = Context<Self>;
    fn stopped(&mut self, _: &mut Context<Self>) {
        self.lifeline.stopped();
    }
}

#[derive(Debug)]
pub struct Downloaded {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub sha256: String,
    /// The bytes' share of the budget: keep it until the row is stored.
    pub held: Held,
}

/// A share of the Downloader's byte budget, given back when dropped.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] OwnedSemaphorePermit);

/// Download the image at `url`, unless `given_up` is cancelled first (the event's partition was
/// revoked): then its download slot and bytes go at once to the events still wanted.
#[derive(Message)]
#[rtype(result = "Result<Downloaded, EventError>")]
pub struct Download {
    pub url: String,
    pub given_up: CancellationToken,
}

impl Handler<Download> for Downloader {
    type Result = ResponseFuture<Result<Downloaded, EventError>>;
    fn handle(&mut self, msg: Download, _: &mut Context<Self>) -> Self::Result {
        let work = download(self.http.clone(), self.rules.clone(), self.limits.clone(), msg.url);
        Box::pin(async move {
            tokio::select! {
                biased;
                _ = msg.given_up.cancelled() => Err(EventError::Abandoned),
                downloaded = work => downloaded,
            }
        })
    }
}

async fn download(http: reqwest::Client, rules: Arc<Rules>, limits: DownloadLimits, raw_url: String) -> Result<Downloaded, EventError> {
    let url =
        Url::parse(&raw_url).ok().filter(|u| matches!(u.scheme(), "http" | "https")).ok_or_else(|| Permanent::BadUrl(raw_url.clone()))?;
    if !rules.host_allowed(&url) {
        return Err(Permanent::HostNotAllowed(url.host_str().unwrap_or("").to_owned()).into());
    }
    let slot = limits.host_slot(url.host_str().unwrap_or("")).await;
    let mut resp = http.get(url).send().await.map_err(|e| Transient::Download(e.into()))?;
    check_status(resp.status().as_u16(), &raw_url)?;
    if resp.content_length().is_some_and(|n| n > rules.max_bytes) {
        return Err(Permanent::TooLarge { limit: rules.max_bytes }.into());
    }
    // Reserve the announced size, or the cap when none is announced, before reading the body;
    // what was not used goes back at the end.
    let reserved = resp.content_length().unwrap_or(rules.max_bytes);
    let mut held = limits.hold(reserved).await;
    let mut bytes = Vec::with_capacity(resp.content_length().unwrap_or(0).min(rules.max_bytes) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(|e| Transient::Download(e.into()))? {
        // Stop reading as soon as the cap is passed: a lying or missing Content-Length cannot make us buffer more.
        if (bytes.len() + chunk.len()) as u64 > rules.max_bytes {
            return Err(Permanent::TooLarge { limit: rules.max_bytes }.into());
        }
        bytes.extend_from_slice(&chunk);
    }
    crate::metrics::METRICS.bytes_downloaded.inc_by(bytes.len() as u64);
    drop(slot);
    // Give back what was reserved and not used.
    drop(held.split(kib(reserved).saturating_sub(kib(bytes.len() as u64)) as usize));
    let content_type = sniff_content_type(&bytes).ok_or(Permanent::NotAnImage)?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok(Downloaded { bytes, content_type, sha256, held: Held(held) })
}

/// 5xx, 408 and 429 may pass; any other non-2xx answer will not.
fn check_status(status: u16, url: &str) -> Result<(), EventError> {
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(Transient::ServerStatus { status, url: url.to_owned() }.into()),
        _ => Err(Permanent::ClientStatus { status, url: url.to_owned() }.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures::FutureExt;

    #[test]
    fn each_host_has_its_own_download_slots_and_held_bytes_wait_for_the_budget() {
        let limits = DownloadLimits::new(2, 10 * 1024, 0);
        let first = limits.host_slot("a.example").now_or_never().expect("a free slot");
        let _second = limits.host_slot("A.example").now_or_never().expect("a free slot (hosts ignore case)");
        assert!(limits.host_slot("a.example").now_or_never().is_none(), "a third download from one host waits");
        assert!(limits.host_slot("b.example").now_or_never().is_some(), "another host has slots of its own");
        drop(first);
        assert!(limits.host_slot("a.example").now_or_never().is_some(), "a finished download frees its slot");

        // The budget is 2 × 10 KiB.
        let held = limits.hold(15 * 1024).now_or_never().expect("within the budget");
        assert!(limits.hold(10 * 1024).now_or_never().is_none(), "past the budget: waits for a row to be stored");
        assert!(limits.hold(5 * 1024).now_or_never().is_some(), "what is left can be held");
        drop(held);
        assert!(limits.hold(10 * 1024).now_or_never().is_some(), "a stored row gives its bytes back");
    }

    #[test]
    fn statuses_are_sorted_into_transient_and_permanent() {
        assert!(check_status(200, "u").is_ok());
        for s in [404, 403, 410, 301] {
            assert!(matches!(check_status(s, "u"), Err(EventError::Permanent(_))), "{s}");
        }
        for s in [500, 503, 408, 429] {
            assert!(matches!(check_status(s, "u"), Err(EventError::Transient(_))), "{s}");
        }
    }
}
