//! Reading a raw setting as a value of a common kind (a switch, a number, a duration, a backoff's
//! range); a bad value becomes a [`ConfigError`] naming the variable, the value and what is
//! accepted. The kinds only one group has are parsed in that group's file.

use std::time::Duration;

use super::error::{ConfigError, Errors};
use super::setting::Setting;

/// The value given, trimmed; None when unset or empty.
pub(super) fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The setting's built-in value: what an unset or empty setting is read as.
pub(super) fn default_of(setting: &Setting) -> &'static str {
    setting.default_value().unwrap_or_else(|| panic!("{} has a default value", setting.var))
}

/// The value given, else the setting's default.
pub(super) fn or_default<'a>(setting: &Setting, v: &'a Option<String>) -> &'a str {
    non_empty(v).unwrap_or_else(|| default_of(setting))
}

pub(super) fn invalid(var: &'static str, value: &str, accepted: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { var, value: value.to_owned(), accepted: accepted.into() }
}

pub(super) fn parse_bool(setting: &Setting, v: &Option<String>) -> Result<bool, ConfigError> {
    match or_default(setting, v).to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(setting.var, v.as_deref().unwrap_or(""), "true or false (also 1/0, yes/no, on/off)")),
    }
}

pub(super) fn parse_number(setting: &Setting, v: &Option<String>, min: u64, max: u64) -> Result<u64, ConfigError> {
    let raw = or_default(setting, v);
    match raw.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(setting.var, raw, format!("a whole number from {min} to {max}"))),
    }
}

/// A number of seconds from `min` to `max`.
pub(super) fn parse_secs(setting: &Setting, v: &Option<String>, min: u64, max: u64) -> Result<Duration, ConfigError> {
    parse_number(setting, v, min, max).map(Duration::from_secs)
}

/// A number of milliseconds, from 1 ms to an hour.
pub(super) fn parse_millis(setting: &Setting, v: &Option<String>) -> Result<Duration, ConfigError> {
    parse_number(setting, v, 1, 3_600_000).map(Duration::from_millis)
}

/// A backoff's first and longest delay (`*_MIN_BACKOFF_MS`, `*_MAX_BACKOFF_MS`), each in ms; the
/// longest is at least the first.
pub(super) fn parse_backoff(
    e: &mut Errors,
    (min_setting, min): (&Setting, &Option<String>),
    (max_setting, max): (&Setting, &Option<String>),
) -> (Duration, Duration) {
    match (parse_millis(min_setting, min), parse_millis(max_setting, max)) {
        (Ok(min), Ok(max)) => (min, e.take(at_least(max_setting, max, min))),
        // One line per value that is not a number, and none about a range it never had.
        (min, max) => (e.take(min), e.take(max)),
    }
}

fn at_least(setting: &Setting, max: Duration, min: Duration) -> Result<Duration, ConfigError> {
    if max < min {
        return Err(invalid(setting.var, &max.as_millis().to_string(), format!("at least the minimum backoff, {} ms", min.as_millis())));
    }
    Ok(max)
}
