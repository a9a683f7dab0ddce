//! Downloader: fetches image bytes from allowed hosts only, with timeouts and a size cap, and
//! checks that they are an image. Failures say whether a retry can help (see `errors`).

use actix::prelude::*;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

use crate::errors::{EventError, Permanent, Transient};
use crate::image::sniff_content_type;
use crate::supervision::Lifeline;

pub struct Downloader {
    http: reqwest::Client,
    rules: Arc<Rules>,
    lifeline: Lifeline,
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
    pub fn new(allowed_hosts: Vec<String>, max_bytes: u64, timeout: Duration, lifeline: Lifeline) -> Downloader {
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
        Downloader { http, rules, lifeline }
    }
}

impl Actor for Downloader {
    type Context = Context<Self>;
    fn stopped(&mut self, _: &mut Context<Self>) {
        self.lifeline.stopped();
    }
}

#[derive(Debug, Clone)]
pub struct Downloaded {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub sha256: String,
}

#[derive(Message)]
#[rtype(result = "Result<Downloaded, EventError>")]
pub struct Download(pub String);

impl Handler<Download> for Downloader {
    type Result = ResponseFuture<Result<Downloaded, EventError>>;
    fn handle(&mut self, msg: Download, _: &mut Context<Self>) -> Self::Result {
        Box::pin(download(self.http.clone(), self.rules.clone(), msg.0))
    }
}

async fn download(http: reqwest::Client, rules: Arc<Rules>, raw_url: String) -> Result<Downloaded, EventError> {
    let url =
        Url::parse(&raw_url).ok().filter(|u| matches!(u.scheme(), "http" | "https")).ok_or_else(|| Permanent::BadUrl(raw_url.clone()))?;
    if !rules.host_allowed(&url) {
        return Err(Permanent::HostNotAllowed(url.host_str().unwrap_or("").to_owned()).into());
    }
    let mut resp = http.get(url).send().await.map_err(|e| Transient::Download(e.to_string()))?;
    check_status(resp.status().as_u16(), &raw_url)?;
    if resp.content_length().is_some_and(|n| n > rules.max_bytes) {
        return Err(Permanent::TooLarge { limit: rules.max_bytes }.into());
    }
    let mut bytes = Vec::with_capacity(resp.content_length().unwrap_or(0).min(rules.max_bytes) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(|e| Transient::Download(e.to_string()))? {
        // Stop reading as soon as the cap is passed: a lying or missing Content-Length cannot make us buffer more.
        if (bytes.len() + chunk.len()) as u64 > rules.max_bytes {
            return Err(Permanent::TooLarge { limit: rules.max_bytes }.into());
        }
        bytes.extend_from_slice(&chunk);
    }
    crate::metrics::METRICS.bytes_downloaded.inc_by(bytes.len() as u64);
    let content_type = sniff_content_type(&bytes).ok_or(Permanent::NotAnImage)?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok(Downloaded { bytes, content_type, sha256 })
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
