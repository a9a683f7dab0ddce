//! The producer's NASA API settings and [`NasaConfig`].

use std::time::Duration;
use url::Url;

use super::error::{ConfigError, Errors};
use super::parse::{default_of, invalid, non_empty, or_default, parse_secs};
use super::setting::define_settings;
use crate::image::ImageVariant;

define_settings! {
    /// The raw settings of the producer's searches.
    NasaSettings, heading "Producer: NASA API";
    nasa_api_url => NASA_API_URL { default: "https://images-api.nasa.gov", about: "base URL of the NASA Images API" },
    query => QUERY {
        unset: "empty",
        about: "search term; empty picks one of moon, mars, earth, nebula, galaxy, saturn, jupiter, apollo each time",
    },
    interval_seconds => INTERVAL_SECONDS { default: "30", about: "seconds between fetched images (1 to 86400)" },
    image_variant => IMAGE_VARIANT {
        default: "orig",
        about: "`orig`, `large`, `medium`, `small` or `thumb`; when that jpg is missing, the next smaller",
    },
    nasa_timeout_seconds => NASA_TIMEOUT_SECONDS { default: "20", about: "time limit of one NASA API request, in seconds" },
}

/// Topics the fetcher picks from when `QUERY` is empty.
pub const RANDOM_TOPICS: [&str; 8] = ["moon", "mars", "earth", "nebula", "galaxy", "saturn", "jupiter", "apollo"];

/// `NASA_API_URL`, `QUERY`, `INTERVAL_SECONDS`, `IMAGE_VARIANT`, `NASA_TIMEOUT_SECONDS`.
#[derive(Clone, Debug)]
pub struct NasaConfig {
    pub api_url: Url,
    /// None: a random one of [`RANDOM_TOPICS`] each time.
    pub query: Option<String>,
    pub interval: Duration,
    pub image_variant: ImageVariant,
    pub timeout: Duration,
}

impl NasaConfig {
    pub(super) fn from_settings(s: &NasaSettings, e: &mut Errors) -> NasaConfig {
        NasaConfig {
            api_url: e.take_or(parse_http_url(&s.nasa_api_url), || Url::parse(default_of(&vars::NASA_API_URL)).expect("a valid URL")),
            query: non_empty(&s.query).map(str::to_owned),
            interval: e.take(parse_secs(&vars::INTERVAL_SECONDS, &s.interval_seconds, 1, 86_400)),
            image_variant: e.take_or(parse_variant(&s.image_variant), || ImageVariant::Orig),
            timeout: e.take(parse_secs(&vars::NASA_TIMEOUT_SECONDS, &s.nasa_timeout_seconds, 1, 600)),
        }
    }
}

fn parse_http_url(v: &Option<String>) -> Result<Url, ConfigError> {
    let raw = or_default(&vars::NASA_API_URL, v);
    match Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(u),
        _ => Err(invalid(vars::NASA_API_URL.var, raw, "an http:// or https:// URL such as https://images-api.nasa.gov")),
    }
}

fn parse_variant(v: &Option<String>) -> Result<ImageVariant, ConfigError> {
    let raw = or_default(&vars::IMAGE_VARIANT, v);
    raw.parse().map_err(|_| invalid(vars::IMAGE_VARIANT.var, raw, "orig, large, medium, small or thumb"))
}
