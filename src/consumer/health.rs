//! Whether the brokers answer the member, said once per change instead of once per queued error.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use slog::{info, warn, Logger};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::MemberView;

/// While the brokers are unreachable, how often a metadata request checks whether they are back.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(1);
/// After the brokers answered again, "all brokers down" errors are taken as stale for this long:
/// librdkafka queued them during the outage, or a restarting broker flapped. One that persists
/// past it is a new outage.
const RECOVERY_GRACE: Duration = Duration::from_secs(10);
/// Other consumer errors are logged at most this often per error code.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(30);

#[derive(Default)]
pub(super) struct Health {
    /// Since when every broker has been unreachable.
    down_since: Option<Instant>,
    /// When the brokers last answered again after an outage.
    recovered_at: Option<Instant>,
    last_probe: Option<Instant>,
    /// When each other error code (as its number) was last logged.
    logged: std::collections::HashMap<i32, Instant>,
}

impl Health {
    pub(super) fn error(&mut self, e: &KafkaError, log: &Logger, view: &Mutex<MemberView>) {
        let code = e.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            let stale = self.recovered_at.is_some_and(|t| t.elapsed() < RECOVERY_GRACE);
            if self.down_since.is_none() && !stale {
                self.down_since = Some(Instant::now());
                view.lock().expect("view lock").reachable = false;
                warn!(log, "Kafka consumer lost every broker; it keeps polling and serves the group as soon as one answers";
                    "error.type" => "kafka", "error.message" => e.to_string());
            }
            return;
        }
        // One broker's connection failing is librdkafka's to retry (and the outage, if it is one,
        // is said by the "all brokers down" that follows): not a WARN of its own.
        if code == Some(RDKafkaErrorCode::BrokerTransportFailure) {
            return;
        }
        let code = code.unwrap_or(RDKafkaErrorCode::Unknown) as i32;
        let due = self.logged.get(&code).is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY);
        if due && self.down_since.is_none() {
            self.logged.insert(code, Instant::now());
            warn!(log, "Kafka consumer error; librdkafka retries it"; "error.type" => "kafka", "error.message" => e.to_string());
        }
    }

    pub(super) fn should_probe(&mut self) -> bool {
        let due = self.down_since.is_some() && self.last_probe.is_none_or(|t| t.elapsed() >= PROBE_EVERY);
        if due {
            self.last_probe = Some(Instant::now());
        }
        due
    }

    pub(super) fn answered(&mut self, log: &Logger, view: &Mutex<MemberView>) {
        if let Some(since) = self.down_since.take() {
            self.recovered_at = Some(Instant::now());
            view.lock().expect("view lock").reachable = true;
            self.logged.clear();
            info!(log, "Kafka consumer recovered"; "labels.outage_ms" => since.elapsed().as_millis() as u64);
        }
    }
}
