//! Kafka plumbing shared by the actors: client settings, librdkafka's logs routed into ours,
//! and creating the topics (the broker may not auto-create them).

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use slog::{debug, info, warn, Logger};
use std::time::Duration;

use crate::deps::{probe_tcp, Dependency, DependencyError};

/// Partitions of the topics this program creates when they are missing.
pub const TOPIC_PARTITIONS: i32 = 3;

/// Sends librdkafka's own logs into the daemon's log stream. Connection trouble is retried by
/// librdkafka itself, so it is a WARN here, never an ERROR.
#[derive(Clone)]
pub struct LogContext {
    pub log: Logger,
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let log = &self.log;
        if facility == "FAIL" {
            // Connection failures also reach error() below; the actors log the outage themselves.
            debug!(log, "{}", message; "labels.facility" => facility.to_owned());
            return;
        }
        match level {
            RDKafkaLogLevel::Debug => debug!(log, "{}", message; "labels.facility" => facility.to_owned()),
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Notice => {
                info!(log, "{}", message; "labels.facility" => facility.to_owned())
            }
            _ => warn!(log, "{}", message; "labels.facility" => facility.to_owned()),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let expected_in_outage =
            matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown));
        if expected_in_outage {
            // Retried by librdkafka and reported by the actors as `Kafka unavailable`: not a WARN per reconnect.
            debug!(self.log, "Kafka client error: {}", reason; "error.type" => "kafka", "error.message" => error.to_string());
        } else {
            warn!(self.log, "Kafka client error: {}", reason; "error.type" => "kafka", "error.message" => error.to_string());
        }
    }
}

impl rdkafka::consumer::ConsumerContext for LogContext {}

/// A record header's value as text.
pub fn header_text<M: Message>(msg: &M, key: &str) -> Option<String> {
    let headers = msg.headers()?;
    headers.iter().find(|h| h.key == key).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

pub fn base_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers).set("log_level", "6").set("socket.keepalive.enable", "true");
    c
}

/// A producer that waits for all in-sync replicas. `message_timeout` bounds how long librdkafka
/// retries one send before it reports a failure (the dead-letter producer then retries the event).
pub fn producer(brokers: &str, message_timeout: Duration, log: Logger) -> KafkaResult<FutureProducer<LogContext>> {
    producer_config(brokers).set("message.timeout.ms", message_timeout.as_millis().to_string()).create_with_context(LogContext { log })
}

/// The Publisher's producer: idempotent, and librdkafka retries each send until the broker
/// acknowledges it (no message timeout), with the same sequence number, so the broker keeps one
/// copy of an event however often it was retried.
pub fn idempotent_producer(brokers: &str, log: Logger) -> KafkaResult<FutureProducer<LogContext>> {
    producer_config(brokers).set("message.timeout.ms", "0").create_with_context(LogContext { log })
}

fn producer_config(brokers: &str) -> ClientConfig {
    let mut c = base_config(brokers);
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // Notice a returning broker within 2 s, not librdkafka's default 10 s.
        .set("reconnect.backoff.max.ms", "2000");
    c
}

/// Creates the topics that are missing, with the broker's `default.replication.factor` (so a
/// three-broker cluster set up for it gets three replicas). Ok when they all exist afterwards.
pub async fn ensure_topics(brokers: &str, topics: &[&str], log: &Logger) -> KafkaResult<()> {
    let admin: AdminClient<LogContext> = base_config(brokers).create_with_context(LogContext { log: log.clone() })?;
    let new: Vec<NewTopic> = topics.iter().map(|t| NewTopic::new(t, TOPIC_PARTITIONS, TopicReplication::Fixed(-1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5))).request_timeout(Some(Duration::from_secs(5)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(topic) => info!(log, "created topic"; "labels.topic" => topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| warn!(log, "cannot create topic"; "labels.topic" => topic))
            }
        }
    }
    Ok(())
}

/// The brokers of KAFKA_BROKERS, each as host:port.
pub fn broker_addresses(brokers: &str) -> Vec<String> {
    brokers.split(',').map(|b| b.trim().to_owned()).filter(|b| !b.is_empty()).collect()
}

/// The topics exist (created when missing), typed by whether retrying can help: nothing
/// listening at any broker address is an outage with the address and the cause; a refused
/// authorization is a misconfiguration. A TCP probe first, because librdkafka only says
/// `OperationTimedOut` after 5 s when nothing listens.
pub async fn ensure_topics_checked(brokers: &str, topics: &[&str], log: &Logger) -> Result<(), DependencyError> {
    let addresses = broker_addresses(brokers);
    let probe = addresses.clone();
    tokio::task::spawn_blocking(move || probe_tcp(Dependency::Kafka, &probe, Duration::from_secs(2)))
        .await
        .expect("the probe does not panic")?;
    match ensure_topics(brokers, topics, log).await {
        Ok(()) => Ok(()),
        Err(e) => Err(classify(&e, &addresses, topics)),
    }
}

/// Types a Kafka client error by whether retrying can help.
pub fn classify(e: &KafkaError, addresses: &[String], topics: &[&str]) -> DependencyError {
    use RDKafkaErrorCode as C;
    let code = e.rdkafka_error_code();
    match code {
        Some(C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed | C::GroupAuthorizationFailed) => DependencyError::Misconfigured {
            dependency: Dependency::Kafka,
            variable: "KAFKA_TOPIC",
            problem: format!("{e} (topics {})", topics.join(", ")),
            fix: "the broker's ACLs must let this client describe, create, read and write these topics",
        },
        Some(C::SaslAuthenticationFailed | C::Authentication) => DependencyError::Misconfigured {
            dependency: Dependency::Kafka,
            variable: "KAFKA_BROKERS",
            problem: e.to_string(),
            fix: "the brokers' listener: this client speaks PLAINTEXT without credentials",
        },
        Some(C::BrokerTransportFailure | C::AllBrokersDown) => {
            DependencyError::Unreachable { dependency: Dependency::Kafka, address: addresses.join(","), cause: "no broker answers".into() }
        }
        _ => DependencyError::Failed { dependency: Dependency::Kafka, message: e.to_string() },
    }
}
