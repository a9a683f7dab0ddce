//! Why handling an event can fail. Whether a failure is worth retrying is decided by its type:
//! a [`Transient`] failure is retried with backoff on the same message and never committed past;
//! a [`Permanent`] one sends the message to the dead-letter topic and moves on (its reasons are
//! listed in `crate::dlq::reason`).

use std::sync::Arc;
use thiserror::Error;

use crate::dlq::reason::Permanent;

/// A failure expected to clear up: the same message is retried after a backoff.
///
/// It keeps its cause as the error's source, behind an `Arc`: a statement that fails answers
/// every event of its batch with the same failure, so this is `Clone`, which reqwest's and
/// diesel's errors are not. The text shows the cause too, as the retry's log line needs it.
#[derive(Debug, Clone, Error)]
pub enum Transient {
    #[error("image server answered {status} for {url}; retrying")]
    ServerStatus { status: u16, url: String },
    #[error("image download failed: {0}; retrying")]
    Download(#[source] Arc<reqwest::Error>),
    /// A Postgres failure worth waiting out. Its causes are of several types (the pool's, a
    /// statement's, the migrations', a blocking task's): build it with [`Transient::database`].
    #[error("Postgres unavailable: {0}; retrying until it is back")]
    Database(#[source] SharedError),
    /// Postgres answered, and refused this row for a reason it does not classify (a row too
    /// large for an index, say). Retried a few times, in case it was passing (a deadlock, a
    /// timeout); then the event is dead-lettered as `db_rejected`.
    #[error("Postgres refused the row: {0}; retrying a few times before it is dead-lettered")]
    DatabaseRefused(#[source] Arc<diesel::result::Error>),
    #[error("handling the event panicked: {0}; retrying")]
    Panicked(String),
    /// `context` says what Kafka was asked for (the dead-letter topic, say).
    #[error("Kafka unavailable: {context}: {source}; retrying until it is back")]
    Kafka { context: &'static str, source: rdkafka::error::KafkaError },
    #[error("actor {0} is not running; retrying until it is restarted")]
    ActorDown(&'static str),
}

/// A cause shared by the clones of one failure.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync>;

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
            Transient::Kafka { .. } => "kafka",
            Transient::ActorDown(_) => "actor_down",
        }
    }

    /// Postgres is unavailable: `cause` is why, kept as the source.
    pub fn database(cause: impl std::error::Error + Send + Sync + 'static) -> Transient {
        Transient::Database(Arc::new(cause))
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
    /// The event's partition was revoked while it was handled: it is given up unfinished, and
    /// the partition's new owner handles it.
    #[error("given up: its partition was revoked")]
    Abandoned,
}

impl EventError {
    pub fn kind(&self) -> &'static str {
        match self {
            EventError::Transient(t) => t.kind(),
            EventError::Permanent(p) => p.kind(),
            EventError::Abandoned => "abandoned",
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
            Transient::Download(Arc::new(a_reqwest_error())),
            Transient::database(diesel::result::Error::NotFound),
            Transient::DatabaseRefused(Arc::new(diesel::result::Error::NotFound)),
            Transient::Panicked(String::new()),
            Transient::Kafka { context: "x", source: rdkafka::error::KafkaError::Canceled },
            Transient::ActorDown("x"),
        ];
        assert_eq!(transient.iter().map(Transient::kind).collect::<Vec<_>>(), Transient::KINDS);
    }

    fn a_reqwest_error() -> reqwest::Error {
        reqwest::Client::new().get("not a URL").build().unwrap_err()
    }

    #[test]
    fn a_transient_failure_keeps_its_cause_as_the_source_and_shows_it() {
        use std::error::Error as _;
        let e = Transient::database(diesel::result::Error::NotFound);
        assert_eq!(e.to_string(), "Postgres unavailable: Record not found; retrying until it is back");
        let clone = e.clone();
        let Transient::Database(cause) = &clone else { unreachable!() };
        assert!(matches!(cause.downcast_ref(), Some(diesel::result::Error::NotFound)), "{cause:?}");
        assert_eq!(clone.source().map(ToString::to_string).as_deref(), Some("Record not found"));

        let cause = rdkafka::error::KafkaError::Canceled;
        let text = format!("Kafka unavailable: dead-letter topic: {cause}; retrying until it is back");
        assert_eq!(Transient::Kafka { context: "dead-letter topic", source: cause }.to_string(), text, "as before");
    }
}
