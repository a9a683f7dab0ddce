//! The settings of logs, Sentry and the log search, and [`ObservabilityConfig`].

use std::time::Duration;

use super::error::{ConfigError, Errors};
use super::parse::{invalid, non_empty, or_default, parse_secs};
use super::setting::define_settings;
use crate::logging::LogFormat;

define_settings! {
    /// The raw settings of logs and Sentry.
    ObservabilitySettings, heading "Logs and Sentry";
    environment => ENVIRONMENT {
        default: "local",
        about: "deployment name: `service.environment` in logs, `environment` in Sentry",
    },
    sentry_dsn => SENTRY_DSN { unset: "empty", about: "Sentry DSN; empty disables Sentry" },
    sentry_min_interval_secs => SENTRY_MIN_INTERVAL_SECS {
        default: "600",
        about: "least seconds between two Sentry events with the same fingerprint",
    },
    log_level => LOG_LEVEL { default: "info", about: "`error`, `warn`, `info`, `debug` or `trace`" },
    log_format => LOG_FORMAT {
        unset: "text on a terminal, else `json`",
        about: "`json` (ECS, one object per line, for Filebeat) or `text` (one short line per event, for a person); unset: text when the log stream is a terminal, else json",
    },
    log_search_url => LOG_SEARCH_URL {
        unset: "empty: trace ids are shown as text",
        about: "the log search's URL for one trace, with `{trace_id}` where the id goes (such as Kibana Discover's, see docs/operations.md); the status page links each image's and dead letter's trace id to it",
    },
}

/// `ENVIRONMENT`, `SENTRY_*`, `LOG_*`.
#[derive(Clone, Debug)]
pub struct ObservabilityConfig {
    pub environment: String,
    pub sentry_dsn: Option<String>,
    pub sentry_min_interval: Duration,
    pub log_level: slog::Level,
    /// None: decided by whether the log stream is a terminal.
    pub log_format: Option<LogFormat>,
    /// None: the page shows trace ids without a link.
    pub log_search_url: Option<LogSearchUrl>,
}

/// `LOG_SEARCH_URL`: the log search's query for one trace, `{trace_id}` standing for its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSearchUrl(String);

impl LogSearchUrl {
    const PLACEHOLDER: &'static str = "{trace_id}";

    /// The URL of the lines of the trace `trace_id` (32 hex digits: nothing to escape).
    pub fn for_trace(&self, trace_id: &str) -> String {
        self.0.replace(Self::PLACEHOLDER, trace_id)
    }
}

impl ObservabilityConfig {
    pub(super) fn from_settings(s: &ObservabilitySettings, e: &mut Errors) -> ObservabilityConfig {
        ObservabilityConfig {
            environment: or_default(&vars::ENVIRONMENT, &s.environment).to_owned(),
            sentry_dsn: e.take(parse_sentry_dsn(&s.sentry_dsn)),
            sentry_min_interval: e.take(parse_secs(&vars::SENTRY_MIN_INTERVAL_SECS, &s.sentry_min_interval_secs, 0, 86_400)),
            log_level: e.take_or(parse_log_level(&s.log_level), || slog::Level::Info),
            log_format: e.take(parse_log_format(&s.log_format)),
            log_search_url: e.take(parse_log_search_url(&s.log_search_url)),
        }
    }
}

fn parse_sentry_dsn(v: &Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(raw) = non_empty(v) else { return Ok(None) };
    match raw.parse::<sentry::types::Dsn>() {
        Ok(_) => Ok(Some(raw.to_owned())),
        Err(_) => Err(ConfigError::InvalidSecret {
            var: vars::SENTRY_DSN.var,
            accepted: "empty (Sentry off) or a DSN such as https://KEY@sentry.example.com/PROJECT_ID".into(),
        }),
    }
}

fn parse_log_search_url(v: &Option<String>) -> Result<Option<LogSearchUrl>, ConfigError> {
    let Some(raw) = non_empty(v) else { return Ok(None) };
    let template = LogSearchUrl(raw.to_owned());
    let sample = template.for_trace("4bf92f3577b34da6a3ce929d0e0e4736");
    let web = url::Url::parse(&sample).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
    if !raw.contains(LogSearchUrl::PLACEHOLDER) || !web {
        return Err(invalid(
            vars::LOG_SEARCH_URL.var,
            raw,
            "an http(s) URL with {trace_id} where the trace id goes, such as http://kibana:5601/app/discover#/?_a=(query:(language:kuery,query:'trace.id:\"{trace_id}\"'))",
        ));
    }
    Ok(Some(template))
}

fn parse_log_level(v: &Option<String>) -> Result<slog::Level, ConfigError> {
    let raw = or_default(&vars::LOG_LEVEL, v);
    match raw.to_ascii_lowercase().as_str() {
        "error" => Ok(slog::Level::Error),
        "warn" | "warning" => Ok(slog::Level::Warning),
        "info" => Ok(slog::Level::Info),
        "debug" => Ok(slog::Level::Debug),
        "trace" => Ok(slog::Level::Trace),
        _ => Err(invalid(vars::LOG_LEVEL.var, raw, "error, warn, info, debug or trace")),
    }
}

fn parse_log_format(v: &Option<String>) -> Result<Option<LogFormat>, ConfigError> {
    let Some(raw) = non_empty(v) else { return Ok(None) };
    match raw.to_ascii_lowercase().as_str() {
        "json" => Ok(Some(LogFormat::Json)),
        "text" => Ok(Some(LogFormat::Text)),
        _ => Err(invalid(vars::LOG_FORMAT.var, raw, "json or text (unset: text on a terminal, else json)")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Kibana Discover's query for one trace, as docs/operations.md shows it.
    pub(crate) fn kibana() -> LogSearchUrl {
        let kibana = "http://localhost:5601/app/discover#/?_a=(query:(language:kuery,query:'trace.id:\"{trace_id}\"'))";
        parse_log_search_url(&Some(kibana.into())).unwrap().unwrap()
    }

    #[test]
    fn the_log_search_url_puts_the_trace_id_in_its_place_and_must_have_one() {
        let url = kibana();
        assert_eq!(
            url.for_trace("4bf92f3577b34da6a3ce929d0e0e4736"),
            "http://localhost:5601/app/discover#/?_a=(query:(language:kuery,query:'trace.id:\"4bf92f3577b34da6a3ce929d0e0e4736\"'))"
        );
        assert_eq!(parse_log_search_url(&Some(" ".into())).unwrap(), None, "empty: no links");
        for wrong in ["http://localhost:5601/app/discover", "kibana/{trace_id}", "javascript:alert('{trace_id}')"] {
            let e = parse_log_search_url(&Some(wrong.into())).unwrap_err().to_string();
            assert!(e.contains("LOG_SEARCH_URL") && e.contains("{trace_id}"), "{e}");
        }
    }
}
