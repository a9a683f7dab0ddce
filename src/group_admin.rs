//! The consumer group as the brokers keep it: which group protocols they accept, the group's
//! session timeout and heartbeat, and who holds which partition.
//!
//! Under the `consumer` protocol (KIP-848) the session timeout and the heartbeat are the
//! group's, not the member's: the daemon sets them at start as the group's configs
//! `consumer.session.timeout.ms` / `consumer.heartbeat.interval.ms` (the broker's defaults are
//! 45 s / 5 s, and its bounds `group.consumer.min.session.timeout.ms` and friends refuse less
//! unless lowered). Under `classic` the member asks for them when it joins, within the broker's
//! `group.min.session.timeout.ms` / `group.max.session.timeout.ms`.

mod native;

use slog::{info, warn, Logger};
use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{GroupProtocol, KafkaConfig};
use crate::kafka::{base_config, LogContext};
pub use native::{describe_group, AdminError, GroupDescription, MemberDescription};

/// A tenth of the session timeout, from 100 ms to 5 s (Kafka's default), on both protocols: a
/// member hears of a rebalance at its next heartbeat, so this bounds how long partitions wait
/// to move.
pub fn heartbeat_interval(session_timeout: Duration) -> Duration {
    (session_timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// How long one admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The fix for brokers that refuse the consumer protocol, said by `check` and at start.
pub const PROTOCOL_FIX: &str =
    "set KAFKA_GROUP_PROTOCOL=classic, or enable the consumer protocol on the brokers (Kafka 4.0+: group.coordinator.rebalance.protocols=classic,consumer)";

/// What the brokers allow a group, as one broker's configuration says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupLimits {
    /// `group.coordinator.rebalance.protocols`; brokers before Kafka 3.7 lack it and speak
    /// classic only.
    pub protocols: Vec<String>,
    /// The broker settings that bound the group's session timeout and heartbeat, as read
    /// (milliseconds by name; missing ones do not bound).
    bounds: HashMap<String, u64>,
}

/// A session timeout or heartbeat the brokers' bounds refuse, and the broker setting to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutOfBounds {
    /// The broker setting that refuses it.
    pub setting: &'static str,
    /// Its value.
    pub limit: Duration,
}

impl GroupLimits {
    /// Reads them from `configs`: a broker's configuration, name → value.
    pub fn from_configs<'a>(configs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> GroupLimits {
        let mut limits = GroupLimits::default();
        for (name, value) in configs {
            let Some(value) = value else { continue };
            if name == "group.coordinator.rebalance.protocols" {
                limits.protocols = value.split(',').map(|p| p.trim().to_ascii_lowercase()).filter(|p| !p.is_empty()).collect();
            } else if let (true, Ok(ms)) = (BOUNDS.iter().any(|b| b.0 == name || b.1 == name), value.parse()) {
                limits.bounds.insert(name.to_owned(), ms);
            }
        }
        if limits.protocols.is_empty() {
            limits.protocols = vec!["classic".to_owned()];
        }
        limits
    }

    pub fn accepts(&self, protocol: GroupProtocol) -> bool {
        self.protocols.iter().any(|p| p == protocol.name())
    }

    /// The protocols accepted, for a line.
    pub fn accepted(&self) -> String {
        self.protocols.join(",")
    }

    /// Whether the brokers' bounds refuse `session` (and its heartbeat, under `consumer`) for a
    /// group of `protocol`: the first bound that does.
    pub fn refuses(&self, protocol: GroupProtocol, session: Duration) -> Option<OutOfBounds> {
        let checks: &[(Duration, (&'static str, &'static str))] = match protocol {
            GroupProtocol::Consumer => &[(session, BOUNDS[0]), (heartbeat_interval(session), BOUNDS[1])],
            GroupProtocol::Classic => &[(session, BOUNDS[2])],
        };
        checks.iter().find_map(|&(value, (min, max))| {
            let bound =
                |name: &'static str| self.bounds.get(name).map(|&ms| OutOfBounds { setting: name, limit: Duration::from_millis(ms) });
            bound(min).filter(|b| value < b.limit).or_else(|| bound(max).filter(|b| value > b.limit))
        })
    }
}

/// (minimum, maximum) broker settings: the consumer protocol's session timeout and heartbeat,
/// and the classic protocol's session timeout.
const BOUNDS: [(&str, &str); 3] = [
    ("group.consumer.min.session.timeout.ms", "group.consumer.max.session.timeout.ms"),
    ("group.consumer.min.heartbeat.interval.ms", "group.consumer.max.heartbeat.interval.ms"),
    ("group.min.session.timeout.ms", "group.max.session.timeout.ms"),
];

/// Reads the group limits of one of the brokers (they share them).
pub async fn read_limits(brokers: &str, log: &Logger) -> KafkaResult<GroupLimits> {
    let (brokers, log) = (brokers.to_owned(), log.clone());
    tokio::task::spawn_blocking(move || {
        let admin: AdminClient<LogContext> = base_config(&brokers).create_with_context(LogContext { log })?;
        let metadata = admin.inner().fetch_metadata(None, ADMIN_TIMEOUT)?;
        let broker = metadata.brokers().first().map(|b| b.id()).ok_or(KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerNotAvailable))?;
        let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
        let answer = futures::executor::block_on(admin.describe_configs(&[ResourceSpecifier::Broker(broker)], &options))?;
        let resource = answer.into_iter().next().ok_or(KafkaError::AdminOp(RDKafkaErrorCode::BadMessage))?;
        let resource = resource.map_err(KafkaError::AdminOp)?;
        Ok(GroupLimits::from_configs(resource.entries.iter().map(|e| (e.name.as_str(), e.value.as_deref()))))
    })
    .await
    .expect("reading the brokers' configuration does not panic")
}

/// KAFKA_GROUP_PROTOCOL=consumer against brokers that refuse that protocol.
#[derive(Debug, thiserror::Error)]
#[error("KAFKA_GROUP_PROTOCOL=consumer: the brokers accept only {accepted} (group.coordinator.rebalance.protocols); {PROTOCOL_FIX}")]
pub struct ProtocolRefused {
    pub accepted: String,
}

/// Before the member joins: the brokers accept its protocol, and the group's session timeout is
/// set as far as the brokers allow (one WARN line where they refuse it, naming the broker
/// setting). Returns the session timeout a classic member is to ask for. Brokers whose
/// configuration cannot be read (no DescribeConfigs permission, say) are taken at their word
/// when the member joins.
pub async fn prepare_group(kafka: &KafkaConfig, log: &Logger) -> Result<Duration, ProtocolRefused> {
    let limits = match read_limits(&kafka.brokers, log).await {
        Ok(limits) => Some(limits),
        Err(e) => {
            info!(log, "cannot read the brokers' group settings; the group's protocol and session timeout are left to the brokers to accept";
                "error.type" => "kafka", "error.message" => e.to_string());
            None
        }
    };
    if let Some(limits) = limits.as_ref().filter(|l| !l.accepts(kafka.group_protocol)) {
        return Err(ProtocolRefused { accepted: limits.accepted() });
    }
    let session = kafka.session_timeout;
    match kafka.group_protocol {
        GroupProtocol::Classic => Ok(classic_session(session, limits.as_ref(), log)),
        GroupProtocol::Consumer => {
            set_consumer_group_timeouts(kafka, log).await;
            Ok(session)
        }
    }
}

/// The session timeout within the broker's bounds, which would refuse the member's join.
fn classic_session(session: Duration, limits: Option<&GroupLimits>, log: &Logger) -> Duration {
    let Some(refusal) = limits.and_then(|l| l.refuses(GroupProtocol::Classic, session)) else { return session };
    warn!(log, "KAFKA_SESSION_TIMEOUT_SECS is outside the brokers' bounds; the member asks for the bound instead; change that broker setting to allow it";
        "labels.session_timeout_ms" => millis(session), "labels.broker_setting" => refusal.setting,
        "labels.broker_value_ms" => millis(refusal.limit));
    refusal.limit
}

/// Sets the group's `consumer.session.timeout.ms` and `consumer.heartbeat.interval.ms`. Where the
/// brokers refuse the heartbeat, the session timeout alone; where they refuse that too, the
/// group keeps theirs. One line either way.
async fn set_consumer_group_timeouts(kafka: &KafkaConfig, log: &Logger) {
    let (session, heartbeat) = (kafka.session_timeout, heartbeat_interval(kafka.session_timeout));
    let both =
        [("consumer.session.timeout.ms", millis(session).to_string()), ("consumer.heartbeat.interval.ms", millis(heartbeat).to_string())];
    let (brokers, group, log2) = (kafka.brokers.clone(), kafka.group_id.clone(), log.clone());
    let outcome = tokio::task::spawn_blocking(move || {
        let admin: AdminClient<LogContext> = base_config(&brokers).create_with_context(LogContext { log: log2 })?;
        let set = |configs: &[(&str, String)]| native::alter_group_configs(admin.inner(), &group, configs, ADMIN_TIMEOUT);
        Ok::<_, KafkaError>(set(&both).map_err(|refused| (refused, set(&both[..1]))))
    })
    .await
    .expect("setting the group's configs does not panic");
    let labels = slog::o!("labels.group" => kafka.group_id.clone(), "labels.session_timeout_ms" => millis(session),
        "labels.heartbeat_interval_ms" => millis(heartbeat));
    let log = log.new(labels);
    match outcome {
        Ok(Ok(())) => info!(log, "consumer group session timeout set"),
        Ok(Err((refused, Ok(())))) => warn!(log,
            "the brokers refused the group's heartbeat interval (the session timeout is set): members hear of rebalances at the brokers' heartbeat interval (5 s by default); lower group.consumer.min.heartbeat.interval.ms on the brokers to allow it";
            "error.type" => "kafka", "error.message" => refused.to_string()),
        Ok(Err((_, Err(refused)))) => warn!(log,
            "the brokers refused the group's session timeout: a dead member's partitions move after the brokers' group.consumer.session.timeout.ms (45 s by default); lower group.consumer.min.session.timeout.ms (and group.consumer.min.heartbeat.interval.ms) on the brokers to allow KAFKA_SESSION_TIMEOUT_SECS";
            "error.type" => "kafka", "error.message" => refused.to_string()),
        Err(e) => warn!(log, "cannot set the group's session timeout; the group keeps the brokers' (45 s by default)";
            "error.type" => "kafka", "error.message" => e.to_string()),
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(configs: &[(&str, &str)]) -> GroupLimits {
        GroupLimits::from_configs(configs.iter().map(|&(k, v)| (k, Some(v))))
    }

    #[test]
    fn the_protocols_accepted_are_the_brokers_and_classic_without_the_setting() {
        let kafka_4 = limits(&[("group.coordinator.rebalance.protocols", "classic,consumer,streams")]);
        assert!(kafka_4.accepts(GroupProtocol::Consumer) && kafka_4.accepts(GroupProtocol::Classic));
        let turned_off = limits(&[("group.coordinator.rebalance.protocols", "classic")]);
        assert!(!turned_off.accepts(GroupProtocol::Consumer));
        let before_3_7 = limits(&[("group.max.size", "100")]);
        assert_eq!(before_3_7.accepted(), "classic");
        assert!(!before_3_7.accepts(GroupProtocol::Consumer));
    }

    #[test]
    fn a_session_timeout_outside_the_brokers_bounds_names_the_bound() {
        let defaults = limits(&[
            ("group.consumer.min.session.timeout.ms", "45000"),
            ("group.consumer.max.session.timeout.ms", "60000"),
            ("group.consumer.min.heartbeat.interval.ms", "5000"),
            ("group.consumer.max.heartbeat.interval.ms", "15000"),
            ("group.min.session.timeout.ms", "6000"),
            ("group.max.session.timeout.ms", "1800000"),
        ]);
        let ten = Duration::from_secs(10);
        let refused = defaults.refuses(GroupProtocol::Consumer, ten).unwrap();
        assert_eq!(refused, OutOfBounds { setting: "group.consumer.min.session.timeout.ms", limit: Duration::from_secs(45) });
        assert_eq!(defaults.refuses(GroupProtocol::Classic, ten), None, "classic allows 6 s to 30 min");
        assert_eq!(defaults.refuses(GroupProtocol::Classic, Duration::from_secs(2)).unwrap().setting, "group.min.session.timeout.ms");
        assert_eq!(defaults.refuses(GroupProtocol::Consumer, Duration::from_secs(50)), None, "50 s, and a 5 s heartbeat");

        let short_sessions_only =
            limits(&[("group.consumer.min.session.timeout.ms", "2000"), ("group.consumer.min.heartbeat.interval.ms", "5000")]);
        let heartbeat = short_sessions_only.refuses(GroupProtocol::Consumer, ten).unwrap();
        assert_eq!(heartbeat.setting, "group.consumer.min.heartbeat.interval.ms", "10 s is allowed, its 1 s heartbeat is not");
        let ours = limits(&[("group.consumer.min.session.timeout.ms", "2000"), ("group.consumer.min.heartbeat.interval.ms", "200")]);
        assert_eq!(ours.refuses(GroupProtocol::Consumer, ten), None, "the project's brokers allow 10 s and its 1 s heartbeat");
    }
}
