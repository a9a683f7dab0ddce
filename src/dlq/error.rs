//! Why a `dlq` command failed, and whether running it again may help.

/// Why a `dlq` command failed. [`DlqError::is_transient`]: running it again may succeed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("cannot reach Kafka at {brokers}: {message}; check KAFKA_BROKERS and that the broker runs, then run the command again")]
    Unreachable { brokers: String, message: String },
    #[error("topic {0} does not exist; check KAFKA_TOPIC (dead letters are on KAFKA_TOPIC.dlq, made by the daemon at start)")]
    NoTopic(String),
    #[error("Kafka did not acknowledge the replay of dead letter {place}: {message}; nothing from it on was committed: run the same command again to resume")]
    Publish { place: String, message: String },
    #[error("cannot commit the replay's progress (group {group}): {source}; what was replayed is found on the topic and not replayed again: run the same command again")]
    Commit { group: String, source: rdkafka::error::KafkaError },
    #[error("cannot create a Kafka client: {0}; check KAFKA_BROKERS")]
    Client(#[source] rdkafka::error::KafkaError),
}

impl DlqError {
    /// Whether the same command may succeed later without a change (Kafka was away).
    pub fn is_transient(&self) -> bool {
        !matches!(self, DlqError::NoTopic(_) | DlqError::Client(_))
    }
}
