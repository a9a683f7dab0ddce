//! The Kafka settings (`KAFKA_*`) and [`KafkaConfig`].

use super::error::{ConfigError, Errors};
use super::parse::{invalid, non_empty, or_default};
use super::setting::{define_settings, Setting};

define_settings! {
    /// The raw `KAFKA_*` settings.
    KafkaSettings, heading "Kafka";
    kafka_brokers => KAFKA_BROKERS {
        default: "127.0.0.1:9092",
        about: "bootstrap servers, `host:port[,host:port]`; `KAFKA_BOOTSTRAP_SERVERS` and `KAFKA_BOOTSTRAP` (the earlier version's names) are read when it is unset",
    },
    kafka_topic => KAFKA_TOPIC { default: "images", about: "topic of the events; dead letters go to `<topic>.dlq`" },
    kafka_group_id => KAFKA_GROUP_ID { default: "images-writer", about: "consumer group of the consumer role" },
}

/// `KAFKA_*`.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    /// `<topic>.dlq`.
    pub dlq_topic: String,
    pub group_id: String,
}

impl KafkaConfig {
    pub(super) fn from_settings(s: &KafkaSettings, e: &mut Errors) -> KafkaConfig {
        let brokers = e.take(parse_brokers(&kafka_brokers_setting(s)));
        let topic = e.take(parse_name(&vars::KAFKA_TOPIC, &s.kafka_topic));
        let group_id = e.take(parse_name(&vars::KAFKA_GROUP_ID, &s.kafka_group_id));
        KafkaConfig { brokers, dlq_topic: format!("{topic}.dlq"), topic, group_id }
    }
}

/// KAFKA_BROKERS, else the names the earlier Python version used.
fn kafka_brokers_setting(s: &KafkaSettings) -> Option<String> {
    non_empty(&s.kafka_brokers).map(str::to_owned).or_else(|| {
        ["KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP"].iter().find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    })
}

fn parse_brokers(v: &Option<String>) -> Result<String, ConfigError> {
    let raw = or_default(&vars::KAFKA_BROKERS, v);
    let valid = raw
        .split(',')
        .map(str::trim)
        .all(|hp| hp.rsplit_once(':').map(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)).unwrap_or(false));
    if valid {
        Ok(raw.split(',').map(str::trim).collect::<Vec<_>>().join(","))
    } else {
        Err(invalid(vars::KAFKA_BROKERS.var, raw, "host:port[,host:port...]"))
    }
}

/// A topic's or a group's name.
fn parse_name(setting: &Setting, v: &Option<String>) -> Result<String, ConfigError> {
    let raw = or_default(setting, v);
    let ok = raw.len() <= 200 && raw.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(invalid(setting.var, raw, "letters, digits, '.', '_' and '-' (at most 200)"))
    }
}
