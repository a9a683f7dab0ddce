//! Why handling an event can fail. Whether a failure is worth retrying is decided by its type:
//! a [`Transient`] failure is retried with backoff on the same message and never committed past;
//! a [`Permanent`] one sends the message to the dead-letter topic and moves on (its reasons are
//! listed in `crate::dlq::reason`).

use thiserror::Error;

use crate::dlq::reason::Permanent;

/// A failure expected to clear up: the same message is retried after a backoff.
///
/// Its causes are kept as text, not as sources: a statement that fails answers every event of its
/// batch with the same failure, so this is `Clone`, which reqwest's and diesel's errors are not.
/// Its reader is the retry's log line, which needs the text only.
#[derive(Debug, Clone, Error)]
pub enum Transient {
    #[error("image server answered {status} for {url}; retrying")]
    ServerStatus { status: u16, url: String },
    #[error("image download failed: {0}; retrying")]
    Download(String),
    #[error("Postgres unavailable: {0}; retrying until it is back")]
    Database(String),
    /// Postgres answered, and refused this row for a reason it does not classify (a row too
    /// large for an index, say). Retried a few times, in case it was passing (a deadlock, a
    /// timeout); then the event is dead-lettered as `db_rejected`.
    #[error("Postgres refused the row: {0}; retrying a few times before it is dead-lettered")]
    DatabaseRefused(String),
    #[error("handling the event panicked: {0}; retrying")]
    Panicked(String),
    #[error("Kafka unavailable: {0}; retrying until it is back")]
    Kafka(String),
    #[error("actor {0} is not running; retrying until it is restarted")]
    ActorDown(&'static str),
}

impl Transient {
    /// Every `kind()`, so that /metrics shows each cause at 0 before the first retry.
    pub const KINDS: [&'static str; 7] =
        ["image_http_5xx", "image_download", "postgres", "postgres_refused", "panic", "kafka", "actor_down"];

    pub fn kind(&self) -> &'static str {
        match self {
            Transient::ServerStatus { .. } => "image_http_5xx",
            Transient::Download(_) => "image_download",
            Transient::Database(_) => "postgres",
            Transient::DatabaseRefused(_) => "postgres_refused",
            Transient::Panicked(_) => "panic",
            Transient::Kafka(_) => "kafka",
            Transient::ActorDown(_) => "actor_down",
        }
    }
}

impl From<crate::supervision::ActorDown> for Transient {
    fn from(e: crate::supervision::ActorDown) -> Self {
        Transient::ActorDown(e.0)
    }
}

impl From<crate::supervision::ActorDown> for EventError {
    fn from(e: crate::supervision::ActorDown) -> Self {
        Transient::from(e).into()
    }
}

/// Either kind of failure of one event.
#[derive(Debug, Error)]
pub enum EventError {
    #[error(transparent)]
    Transient(#[from] Transient),
    #[error(transparent)]
    Permanent(#[from] Permanent),
}

impl EventError {
    pub fn kind(&self) -> &'static str {
        match self {
            EventError::Transient(t) => t.kind(),
            EventError::Permanent(p) => p.kind(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_lists_every_kind() {
        let transient = [
            Transient::ServerStatus { status: 503, url: String::new() },
            Transient::Download(String::new()),
            Transient::Database(String::new()),
            Transient::DatabaseRefused(String::new()),
            Transient::Panicked(String::new()),
            Transient::Kafka(String::new()),
            Transient::ActorDown("x"),
        ];
        assert_eq!(transient.iter().map(Transient::kind).collect::<Vec<_>>(), Transient::KINDS);
    }
}
