//! The Kafka settings (`KAFKA_*`) and [`KafkaConfig`].

use std::time::Duration;

use super::error::{ConfigError, Errors};
use super::parse::{invalid, non_empty, or_default, parse_secs};
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
    kafka_group_protocol => KAFKA_GROUP_PROTOCOL {
        default: "consumer",
        about: "the consumer group protocol: `consumer` (Kafka 4.0+, KIP-848: the broker moves only the partitions that must move) or `classic` (older brokers, or brokers with it turned off; cooperative-sticky assignment)",
    },
    kafka_session_timeout_secs => KAFKA_SESSION_TIMEOUT_SECS {
        default: "10",
        about: "seconds (1 to 3600) after which the broker gives a dead member's partitions to the others; under `consumer` set for the group through the admin API, within the broker's `group.consumer.min/max.session.timeout.ms`",
    },
    kafka_group_instance_id => KAFKA_GROUP_INSTANCE_ID {
        unset: "(off)",
        about: "static membership: a name unique to this member that stays the same across its restarts (a StatefulSet pod's name, say); a restart within the session timeout gets its partitions back without moving them",
    },
}

/// Which consumer group protocol the member speaks (`group.protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupProtocol {
    /// KIP-848: the broker assigns partitions and moves only those that must move.
    Consumer,
    /// The protocol of brokers before 4.0: the members assign, here with cooperative-sticky.
    Classic,
}

impl std::str::FromStr for GroupProtocol {
    type Err = ();
    fn from_str(s: &str) -> Result<GroupProtocol, ()> {
        match s.trim().to_ascii_lowercase().as_str() {
            "consumer" => Ok(GroupProtocol::Consumer),
            "classic" => Ok(GroupProtocol::Classic),
            _ => Err(()),
        }
    }
}

impl GroupProtocol {
    /// Its name, as `group.protocol` and KAFKA_GROUP_PROTOCOL spell it.
    pub fn name(self) -> &'static str {
        match self {
            GroupProtocol::Consumer => "consumer",
            GroupProtocol::Classic => "classic",
        }
    }
}

/// `KAFKA_*`.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    /// `<topic>.dlq`.
    pub dlq_topic: String,
    pub group_id: String,
    pub group_protocol: GroupProtocol,
    /// How long the broker waits for a silent member before it gives its partitions to others.
    pub session_timeout: Duration,
    /// `group.instance.id` (static membership), when set.
    pub group_instance_id: Option<String>,
}

impl KafkaConfig {
    pub(super) fn from_settings(s: &KafkaSettings, e: &mut Errors) -> KafkaConfig {
        let brokers = e.take(parse_brokers(&kafka_brokers_setting(s)));
        let topic = e.take(parse_name(&vars::KAFKA_TOPIC, &s.kafka_topic));
        let group_id = e.take(parse_name(&vars::KAFKA_GROUP_ID, &s.kafka_group_id));
        let group_protocol = e.take_or(parse_protocol(&s.kafka_group_protocol), || GroupProtocol::Consumer);
        let session_timeout = e.take(parse_secs(&vars::KAFKA_SESSION_TIMEOUT_SECS, &s.kafka_session_timeout_secs, 1, 3600));
        // Off when unset (parse_name reads a value only).
        let group_instance_id =
            non_empty(&s.kafka_group_instance_id).map(|_| e.take(parse_name(&vars::KAFKA_GROUP_INSTANCE_ID, &s.kafka_group_instance_id)));
        KafkaConfig { brokers, dlq_topic: format!("{topic}.dlq"), topic, group_id, group_protocol, session_timeout, group_instance_id }
    }
}

fn parse_protocol(v: &Option<String>) -> Result<GroupProtocol, ConfigError> {
    let raw = or_default(&vars::KAFKA_GROUP_PROTOCOL, v);
    raw.parse().map_err(|()| invalid(vars::KAFKA_GROUP_PROTOCOL.var, raw, "consumer or classic"))
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

/// A topic's, a group's or a group member's name.
fn parse_name(setting: &Setting, v: &Option<String>) -> Result<String, ConfigError> {
    let raw = or_default(setting, v);
    let ok = raw.len() <= 200 && raw.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(invalid(setting.var, raw, "letters, digits, '.', '_' and '-' (at most 200)"))
    }
}
