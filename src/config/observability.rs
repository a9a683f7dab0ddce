//! The settings of logs and Sentry, and [`ObservabilityConfig`].

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
}

impl ObservabilityConfig {
    pub(super) fn from_settings(s: &ObservabilitySettings, e: &mut Errors) -> ObservabilityConfig {
        ObservabilityConfig {
            environment: or_default(&vars::ENVIRONMENT, &s.environment).to_owned(),
            sentry_dsn: e.take(parse_sentry_dsn(&s.sentry_dsn)),
            sentry_min_interval: e.take(parse_secs(&vars::SENTRY_MIN_INTERVAL_SECS, &s.sentry_min_interval_secs, 0, 86_400)),
            log_level: e.take_or(parse_log_level(&s.log_level), || slog::Level::Info),
            log_format: e.take(parse_log_format(&s.log_format)),
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
