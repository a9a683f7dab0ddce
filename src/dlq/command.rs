//! The `dlq` command's glue: runs `dlq list` or `dlq replay` with the configuration and the
//! command line, and turns the outcome into an exit code.

use slog::Logger;

use super::error::DlqError;
use super::list::{list, print_listing, ListSettings};
use super::replay::{replay, ReplaySettings};
use crate::config::{Config, DlqArgs, DlqCommand, DlqListArgs, DlqReplayArgs};
use crate::oneshot::EXIT_INTERRUPTED;
use crate::shutdown;

/// Runs `dlq list` or `dlq replay`; returns the exit code.
pub fn run(config: &Config, args: DlqArgs, log: Logger) -> u8 {
    let result = match args.command {
        DlqCommand::List(a) => run_list(config, &a, &log),
        DlqCommand::Replay(a) => run_replay(config, &a, &log),
    };
    result.unwrap_or_else(|e| {
        slog::error!(log, "dlq command failed"; "error.type" => "dlq", "error.message" => e.to_string(), "labels.transient" => e.is_transient());
        eprintln!("nasa-ingest dlq: {e}");
        1
    })
}

fn run_list(config: &Config, a: &DlqListArgs, log: &Logger) -> Result<u8, DlqError> {
    let settings = ListSettings {
        brokers: config.kafka.brokers.clone(),
        topic: config.kafka.topic.clone(),
        dlq_topic: config.kafka.dlq_topic.clone(),
        filter: a.filter.clone(),
        limit: a.limit,
    };
    print_listing(&list(&settings, log)?, a.json);
    Ok(0)
}

fn run_replay(config: &Config, a: &DlqReplayArgs, log: &Logger) -> Result<u8, DlqError> {
    let stop = shutdown::on_signal(log.clone(), "stopping once the dead letters in flight are acknowledged and committed");
    let summary = replay(&ReplaySettings::new(config, a), &stop, log)?;
    Ok(if summary.interrupted { EXIT_INTERRUPTED } else { 0 })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    #[test]
    fn since_takes_a_time_or_an_age() {
        use crate::config::parse_since;
        assert_eq!(parse_since("2026-11-27T18:00:00Z").unwrap().to_rfc3339(), "2026-11-27T18:00:00+00:00");
        let two_hours = Utc::now() - parse_since("2h").unwrap();
        assert!((two_hours.num_seconds() - 7200).abs() < 5);
        assert!(parse_since("yesterday").unwrap_err().to_string().contains("RFC 3339"));
        assert!(parse_since("5w").is_err());
    }
}
