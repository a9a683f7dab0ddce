//! Retries of the dependencies and restarts of actors: their settings, [`RetryConfig`] and
//! [`SupervisorConfig`].

use std::time::Duration;

use super::error::Errors;
use super::parse::{parse_backoff, parse_number, parse_secs};
use super::setting::define_settings;
use crate::backoff::Backoff;
use crate::supervision::Policy;

define_settings! {
    /// The raw settings of retries and restarts.
    RetrySettings, heading "Retries and restarts";
    retry_min_backoff_ms => RETRY_MIN_BACKOFF_MS {
        default: "500",
        about: "first delay of the other retries (NASA API, downloads, Postgres, start-up), in ms",
    },
    retry_max_backoff_ms => RETRY_MAX_BACKOFF_MS { default: "30000", about: "longest delay of the other retries, in ms" },
    supervisor_min_backoff_ms => SUPERVISOR_MIN_BACKOFF_MS {
        default: "500",
        about: "first delay before an actor that died is restarted, in ms",
    },
    supervisor_max_backoff_ms => SUPERVISOR_MAX_BACKOFF_MS { default: "30000", about: "longest delay before a restart, in ms" },
    supervisor_max_restarts => SUPERVISOR_MAX_RESTARTS {
        default: "5",
        about: "restarts of one actor allowed within the window; one more shuts the process down in order with exit code 1",
    },
    supervisor_restart_window_secs => SUPERVISOR_RESTART_WINDOW_SECS {
        default: "60",
        about: "the restart window, in seconds; an actor that ran this long starts again from the minimum backoff",
    },
    startup_timeout_secs => STARTUP_TIMEOUT_SECS {
        default: "0",
        about: "seconds start-up may wait for Kafka and Postgres (topics, login, migrations) before the process exits 1 with one ERROR line naming each dependency not usable and its last error; `0` waits forever",
    },
}

/// Every retry delay is stretched by up to this fraction at random, so that processes retrying the
/// same outage do not hit the dependency in step.
pub const JITTER: f64 = 0.2;

/// `RETRY_*_BACKOFF_MS`, `STARTUP_TIMEOUT_SECS`.
#[derive(Clone, Debug)]
pub struct RetryConfig {
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// None: start-up waits for the dependencies forever.
    pub startup_timeout: Option<Duration>,
}

impl RetryConfig {
    pub(super) fn from_settings(s: &RetrySettings, e: &mut Errors) -> RetryConfig {
        let (min_backoff, max_backoff) = parse_backoff(
            e,
            (&vars::RETRY_MIN_BACKOFF_MS, &s.retry_min_backoff_ms),
            (&vars::RETRY_MAX_BACKOFF_MS, &s.retry_max_backoff_ms),
        );
        let startup_timeout =
            Some(e.take(parse_secs(&vars::STARTUP_TIMEOUT_SECS, &s.startup_timeout_secs, 0, 86_400))).filter(|t| !t.is_zero());
        RetryConfig { min_backoff, max_backoff, startup_timeout }
    }

    /// Retries of Kafka, Postgres, the NASA API and image downloads (`RETRY_*_BACKOFF_MS`).
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.min_backoff, self.max_backoff, JITTER)
    }
}

/// `SUPERVISOR_*`.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub max_restarts: u32,
    pub restart_window: Duration,
}

impl SupervisorConfig {
    pub(super) fn from_settings(s: &RetrySettings, e: &mut Errors) -> SupervisorConfig {
        let (min_backoff, max_backoff) = parse_backoff(
            e,
            (&vars::SUPERVISOR_MIN_BACKOFF_MS, &s.supervisor_min_backoff_ms),
            (&vars::SUPERVISOR_MAX_BACKOFF_MS, &s.supervisor_max_backoff_ms),
        );
        SupervisorConfig {
            min_backoff,
            max_backoff,
            max_restarts: e.take(parse_number(&vars::SUPERVISOR_MAX_RESTARTS, &s.supervisor_max_restarts, 0, 10_000)) as u32,
            restart_window: e.take(parse_secs(&vars::SUPERVISOR_RESTART_WINDOW_SECS, &s.supervisor_restart_window_secs, 1, 86_400)),
        }
    }

    /// How the supervisor restarts an actor.
    pub fn restart_policy(&self) -> Policy {
        Policy {
            backoff: Backoff::new(self.min_backoff, self.max_backoff, JITTER),
            stable_after: self.restart_window,
            max_restarts: self.max_restarts,
            window: self.restart_window,
        }
    }
}
