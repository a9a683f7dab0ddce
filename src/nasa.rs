//! The NASA Image and Video Library API: search, asset manifests, and choosing the image URL.
//!
//! Parsing is tolerant (items of collection version 1.0 and 1.1, optional fields) and kept apart
//! from HTTP so that every fixture can be checked without a server.

use rand::Rng;
use serde::Deserialize;
use std::time::Duration;
use thiserror::Error;
use url::Url;

use crate::deps::{Dependency, DependencyError};
use crate::image::ImageVariant;

/// The API serves at most this many results for one search, however it is paged.
pub const MAX_RESULTS: u64 = 10_000;
pub const ASSETS_HOST: &str = "images-assets.nasa.gov";

#[derive(Debug, Error)]
pub enum NasaError {
    #[error("NASA API unreachable: {}", with_causes(.0))]
    Unreachable(#[source] reqwest::Error),
    #[error("NASA API timed out: {}", with_causes(.0))]
    Timeout(#[source] reqwest::Error),
    #[error("NASA API rate-limited the request (429)")]
    RateLimited,
    #[error("NASA API answered {status}: {reason}")]
    Status { status: u16, reason: String },
    #[error("NASA API answered with JSON this program does not understand: {0}")]
    BadJson(#[from] serde_json::Error),
    #[error("NASA API answered without what this program needs: {0}")]
    Incomplete(String),
}

/// reqwest's own text says only "error sending request"; the causes beneath say why, so the
/// message (a log line's `error.message`) carries them too.
fn with_causes(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl NasaError {
    /// Every `kind()`, so that /metrics shows each cause at 0 before the first retry.
    pub const KINDS: [&'static str; 5] = ["nasa_unreachable", "nasa_timeout", "nasa_rate_limited", "nasa_status", "nasa_bad_json"];

    pub fn kind(&self) -> &'static str {
        match self {
            NasaError::Unreachable(_) => "nasa_unreachable",
            NasaError::Timeout(_) => "nasa_timeout",
            NasaError::RateLimited => "nasa_rate_limited",
            NasaError::Status { .. } => "nasa_status",
            NasaError::BadJson(_) | NasaError::Incomplete(_) => "nasa_bad_json",
        }
    }

    /// The failure as a dependency state: unreachable (with the cause), a wrong NASA_API_URL
    /// (404 on the API's own paths), or another failure.
    pub fn as_dependency_error(&self, address: &str) -> DependencyError {
        let dependency = Dependency::NasaApi;
        match self {
            NasaError::Unreachable(e) => {
                let text = with_causes(e);
                let cause = if text.to_ascii_lowercase().contains("connection refused") { "connection refused".into() } else { text };
                DependencyError::Unreachable { dependency, address: address.to_owned(), cause }
            }
            NasaError::Timeout(_) => DependencyError::Unreachable { dependency, address: address.to_owned(), cause: "timed out".into() },
            NasaError::Status { status: 404, reason } => DependencyError::Misconfigured {
                dependency,
                variable: "NASA_API_URL",
                problem: format!("404 {reason}"),
                fix: "the API's base URL, such as https://images-api.nasa.gov",
            },
            other => DependencyError::Failed { dependency, message: other.to_string() },
        }
    }

    fn from_reqwest(e: reqwest::Error) -> NasaError {
        if e.is_timeout() {
            NasaError::Timeout(e)
        } else {
            NasaError::Unreachable(e)
        }
    }
}

#[derive(Deserialize, Debug)]
pub struct SearchResponse {
    pub collection: SearchCollection,
}

#[derive(Deserialize, Debug)]
pub struct SearchCollection {
    pub version: Option<String>,
    #[serde(default)]
    pub items: Vec<Item>,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub links: Vec<Link>,
}

impl SearchCollection {
    /// Whether the API says there is a next page.
    pub fn has_next(&self) -> bool {
        self.links.iter().any(|l| l.rel.as_deref() == Some("next"))
    }
}

/// One search: the query, optionally narrowed to years, at a page and page size.
#[derive(Clone, Debug, PartialEq)]
pub struct Search<'a> {
    pub query: &'a str,
    pub years: Option<(u32, u32)>,
    pub page: u64,
    pub page_size: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
pub struct Metadata {
    #[serde(default)]
    pub total_hits: u64,
}

#[derive(Deserialize, Debug, Clone)]
pub struct Item {
    #[serde(default)]
    pub data: Vec<ItemData>,
    #[serde(default)]
    pub links: Vec<Link>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ItemData {
    pub nasa_id: String,
    pub title: Option<String>,
    pub media_type: Option<String>,
    pub center: Option<String>,
    pub date_created: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct Link {
    pub href: String,
    #[serde(default)]
    pub rel: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct AssetResponse {
    pub collection: AssetCollection,
}

#[derive(Deserialize, Debug)]
pub struct AssetCollection {
    #[serde(default)]
    pub items: Vec<Link>,
}

#[derive(Deserialize, Debug)]
struct ErrorBody {
    reason: String,
}

/// An image the Fetcher found, ready to become an event.
#[derive(Clone, Debug, PartialEq)]
pub struct FoundImage {
    pub nasa_id: String,
    pub image_url: String,
    pub title: Option<String>,
    pub center: Option<String>,
    pub date_created: Option<String>,
}

pub fn parse_search(body: &[u8]) -> Result<SearchCollection, NasaError> {
    serde_json::from_slice::<SearchResponse>(body).map(|r| r.collection).map_err(NasaError::from)
}

pub fn parse_asset(body: &[u8]) -> Result<Vec<String>, NasaError> {
    serde_json::from_slice::<AssetResponse>(body).map(|r| r.collection.items.into_iter().map(|l| l.href).collect()).map_err(NasaError::from)
}

/// How many pages may be asked for, given page 1: the API stops at 10,000 results.
pub fn page_count(total_hits: u64, page_len: usize) -> u64 {
    if page_len == 0 {
        return 0;
    }
    total_hits.min(MAX_RESULTS).div_ceil(page_len as u64)
}

/// The image items of a page (media_type image, or no media_type at all as in old answers).
pub fn image_items(collection: &SearchCollection) -> Vec<&Item> {
    collection.items.iter().filter(|i| i.data.first().is_some_and(|d| d.media_type.as_deref().is_none_or(|m| m == "image"))).collect()
}

/// The href of the wanted variant's jpg, else of the next smaller one that exists.
pub fn pick_variant<'a>(hrefs: impl IntoIterator<Item = &'a str> + Clone, wanted: ImageVariant) -> Option<&'a str> {
    wanted.this_and_smaller().find_map(|v| hrefs.clone().into_iter().find(|h| is_jpg_of(h, v)))
}

fn is_jpg_of(href: &str, variant: ImageVariant) -> bool {
    let lower = href.to_ascii_lowercase();
    let stem = format!("~{}.", variant.as_str());
    lower.ends_with(&format!("{stem}jpg")) || lower.ends_with(&format!("{stem}jpeg"))
}

/// Parses an href into a URL: non-ASCII characters get percent-encoded, and `http://` on NASA's
/// assets host becomes `https://` (the files are served over https too).
pub fn normalize_image_url(href: &str) -> Option<String> {
    let mut url = Url::parse(href.trim()).ok()?;
    if url.scheme() == "http" && url.host_str() == Some(ASSETS_HOST) {
        url.set_scheme("https").ok()?;
    }
    Some(url.to_string())
}

/// Client of the NASA API with a shared connection pool.
#[derive(Clone)]
pub struct NasaClient {
    http: reqwest::Client,
    base: Url,
    variant: ImageVariant,
}

impl NasaClient {
    pub fn new(base: Url, variant: ImageVariant, timeout: Duration) -> NasaClient {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .timeout(timeout)
            .user_agent(concat!("nasa-ingest/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client's settings are static and valid");
        NasaClient { http, base, variant }
    }

    /// host:port of the API, for logs and /status.
    pub fn address(&self) -> String {
        format!("{}:{}", self.base.host_str().unwrap_or(""), self.base.port_or_known_default().unwrap_or(443))
    }

    /// A random image for `query`: a random page within the API's cap, a random image item.
    /// `Ok(None)` when the search has no image hits.
    pub async fn random_image(&self, query: &str) -> Result<Option<FoundImage>, NasaError> {
        let first = self.search(query, 1).await?;
        let pages = page_count(first.metadata.total_hits, first.items.len());
        let page_no = if pages > 1 { rand::rng().random_range(1..=pages) } else { 1 };
        let page = match page_no {
            1 => first,
            // The 400 "refine your search" answer of deep paging: page 1 is still a fine pick.
            n => match self.search(query, n).await {
                Err(NasaError::Status { status: 400, .. }) => first,
                other => other?,
            },
        };
        let items = image_items(&page);
        if items.is_empty() {
            return Ok(None);
        }
        let item = items[rand::rng().random_range(0..items.len())];
        Ok(Some(self.resolve(item).await?))
    }

    pub async fn search(&self, query: &str, page: u64) -> Result<SearchCollection, NasaError> {
        self.search_with(&Search { query, years: None, page, page_size: None }).await
    }

    pub async fn search_with(&self, s: &Search<'_>) -> Result<SearchCollection, NasaError> {
        let mut url = self.endpoint(&["search"]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("q", s.query).append_pair("media_type", "image").append_pair("page", &s.page.to_string());
            if let Some(size) = s.page_size {
                q.append_pair("page_size", &size.to_string());
            }
            if let Some((start, end)) = s.years {
                q.append_pair("year_start", &start.to_string()).append_pair("year_end", &end.to_string());
            }
        }
        parse_search(&self.get(url).await?)
    }

    /// The image of a search item, resolved like the Fetcher does.
    pub async fn found_image(&self, item: &Item) -> Result<FoundImage, NasaError> {
        self.resolve(item).await
    }

    pub async fn asset_hrefs(&self, nasa_id: &str) -> Result<Vec<String>, NasaError> {
        parse_asset(&self.get(self.endpoint(&["asset", nasa_id])).await?)
    }

    /// The image URL of an item: from its own links when they hold the wanted variant, else from
    /// the asset manifest (older items list only a thumbnail), else the best of its links.
    async fn resolve(&self, item: &Item) -> Result<FoundImage, NasaError> {
        let data = item.data.first().ok_or_else(|| NasaError::Incomplete("an item without data".into()))?;
        let links: Vec<&str> = item.links.iter().map(|l| l.href.as_str()).collect();
        let exact = links.iter().copied().find(|h| is_jpg_of(h, self.variant));
        let href = match exact {
            Some(h) => Some(h.to_owned()),
            None => {
                let manifest = self.asset_hrefs(&data.nasa_id).await.unwrap_or_default();
                pick_variant(manifest.iter().map(String::as_str), self.variant)
                    .or_else(|| pick_variant(links.iter().copied(), self.variant))
                    .map(str::to_owned)
            }
        };
        let image_url = href
            .as_deref()
            .and_then(normalize_image_url)
            .ok_or_else(|| NasaError::Incomplete(format!("no jpg image listed for {}", data.nasa_id)))?;
        Ok(FoundImage {
            nasa_id: data.nasa_id.clone(),
            image_url,
            title: data.title.clone(),
            center: data.center.clone(),
            date_created: data.date_created.clone(),
        })
    }

    /// base + path segments, each percent-encoded (ids may hold any character).
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("NASA_API_URL is an http(s) URL").pop_if_empty().extend(segments);
        url
    }

    async fn get(&self, url: Url) -> Result<Vec<u8>, NasaError> {
        let resp = self.http.get(url).send().await.map_err(NasaError::from_reqwest)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(NasaError::from_reqwest)?;
        if status.as_u16() == 429 {
            return Err(NasaError::RateLimited);
        }
        if !status.is_success() {
            let reason = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.reason)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
            return Err(NasaError::Status { status: status.as_u16(), reason });
        }
        Ok(body.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nasa")
    }

    fn files(dir: &str) -> Vec<PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(fixtures().join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    }

    #[test]
    fn every_search_fixture_parses_and_its_pages_agree_with_total_hits() {
        let all = files("search");
        assert!(all.len() >= 8);
        for path in all {
            let c = parse_search(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            let name = path.file_name().unwrap().to_str().unwrap();
            if name.starts_with("empty") {
                assert_eq!((c.metadata.total_hits, c.items.len()), (0, 0));
                continue;
            }
            assert_eq!(c.version.as_deref(), Some("1.1"), "{name}");
            assert!(!image_items(&c).is_empty(), "{name}");
            for item in &c.items {
                assert!(!item.data[0].nasa_id.is_empty());
                assert!(!item.links.is_empty(), "{name}");
            }
        }
    }

    #[test]
    fn every_asset_fixture_parses_to_a_jpg_of_every_wanted_size() {
        for path in files("asset") {
            let hrefs = parse_asset(&std::fs::read(&path).unwrap()).unwrap();
            for wanted in ImageVariant::LARGEST_FIRST {
                let href = pick_variant(hrefs.iter().map(String::as_str), wanted).unwrap();
                let url = normalize_image_url(href).unwrap();
                assert!(url.starts_with("https://images-assets.nasa.gov/image/"), "{url}");
                assert!(url.ends_with(".jpg"), "{url}");
            }
        }
    }

    #[test]
    fn tif_original_falls_back_to_the_large_jpg() {
        let hrefs = parse_asset(&std::fs::read(fixtures().join("asset/PIA00573.json")).unwrap()).unwrap();
        assert!(hrefs.iter().any(|h| h.ends_with("~orig.tif")));
        let href = pick_variant(hrefs.iter().map(String::as_str), ImageVariant::Orig).unwrap();
        assert_eq!(normalize_image_url(href).unwrap(), "https://images-assets.nasa.gov/image/PIA00573/PIA00573~large.jpg");
    }

    #[test]
    fn old_items_with_only_a_thumbnail_link_yield_the_thumbnail_at_most() {
        let c = parse_search(&std::fs::read(fixtures().join("search/moon-page3.json")).unwrap()).unwrap();
        let links: Vec<&str> = c.items[0].links.iter().map(|l| l.href.as_str()).collect();
        assert_eq!(pick_variant(links.iter().copied(), ImageVariant::Large).map(|h| h.ends_with("~thumb.jpg")), Some(true));
    }

    #[test]
    fn non_ascii_ids_are_percent_encoded_and_http_becomes_https() {
        let url = normalize_image_url("http://images-assets.nasa.gov/image/moon-mosaic-ü-2020/moon-mosaic-ü-2020~orig.jpg").unwrap();
        assert_eq!(url, "https://images-assets.nasa.gov/image/moon-mosaic-%C3%BC-2020/moon-mosaic-%C3%BC-2020~orig.jpg");
        // Other hosts keep their scheme: only NASA's assets host is known to serve https.
        assert_eq!(normalize_image_url("http://127.0.0.1:9/a~orig.jpg").unwrap(), "http://127.0.0.1:9/a~orig.jpg");
    }

    #[test]
    fn pages_stop_at_the_apis_ten_thousand_results() {
        assert_eq!(page_count(14_212, 100), 100);
        assert_eq!(page_count(7, 3), 3);
        assert_eq!(page_count(0, 0), 0);
    }

    #[test]
    fn version_1_0_items_without_media_type_count_as_images() {
        let body = br#"{"collection": {"version": "1.0", "items": [{"href": "x",
            "data": [{"nasa_id": "S65-34635", "title": "Gemini"}],
            "links": [{"href": "https://images-assets.nasa.gov/image/S65-34635/S65-34635~thumb.jpg", "rel": "preview"}]}],
            "metadata": {"total_hits": 1}}}"#;
        let c = parse_search(body).unwrap();
        assert_eq!(image_items(&c).len(), 1);
        let video = br#"{"collection": {"items": [{"data": [{"nasa_id": "v", "media_type": "video"}]}]}}"#;
        assert!(image_items(&parse_search(video).unwrap()).is_empty());
    }

    #[test]
    fn error_bodies_are_not_search_results() {
        for name in ["search-too-deep.json", "search-no-params.json", "asset-not-found.json"] {
            let body = std::fs::read(fixtures().join("errors").join(name)).unwrap();
            assert!(serde_json::from_slice::<ErrorBody>(&body).unwrap().reason.len() > 10);
            assert!(matches!(parse_search(&body), Err(NasaError::BadJson(_))));
        }
    }
}
