//! Logs: one JSON object per line on stdout in Elastic Common Schema, for Filebeat to ship to ELK.
//!
//! `@timestamp`, `log.level` and `message` come first, then the service fields. Call sites add
//! `log.logger` (the actor), `error.type` / `error.message`, and pipeline facts as `labels.*`.
//! Keys are dotted at the top level, as ECS allows; Filebeat's `expand_keys` nests them.

use chrono::{SecondsFormat, Utc};
use slog::{o, Drain, FnValue, Level, Logger, PushFnValue, Record};
use std::io::Write;
use std::sync::Mutex;

pub const ECS_VERSION: &str = "8.11.0";
pub const SERVICE_NAME: &str = "nasa-ingest";

/// The ECS name of a slog level.
pub fn ecs_level(level: Level) -> &'static str {
    match level {
        Level::Critical => "critical",
        Level::Error => "error",
        Level::Warning => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// The daemon's logger, writing to stdout.
pub fn stdout_logger(level: Level, environment: &str) -> Logger {
    logger(std::io::stdout(), level, environment)
}

/// A logger writing ECS lines to `out`. Writes are synchronous (a mutex, no async queue) so that
/// nothing logged before a crash or exit is lost; a write error is ignored rather than crashing.
pub fn logger<W: Write + Send + 'static>(out: W, level: Level, environment: &str) -> Logger {
    // One add_key_value per key: slog-json writes them in the order they were added.
    let json = slog_json::Json::new(out)
        .set_newlines(true)
        .set_flush(true)
        .add_key_value(o!("@timestamp" => PushFnValue(|_: &Record, ser| {
            ser.emit(Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true))
        })))
        .add_key_value(o!("log.level" => FnValue(|r: &Record| ecs_level(r.level()))))
        .add_key_value(o!("message" => PushFnValue(|r: &Record, ser| ser.emit(r.msg()))))
        .add_key_value(o!("ecs.version" => ECS_VERSION))
        .add_key_value(o!("service.name" => SERVICE_NAME))
        .add_key_value(o!("service.version" => env!("CARGO_PKG_VERSION")))
        .add_key_value(o!("service.environment" => environment.to_owned()))
        .add_key_value(o!("event.dataset" => format!("{SERVICE_NAME}.log")))
        .build();
    let drain = Mutex::new(json).ignore_res();
    let drain = drain.filter_level(level).ignore_res();
    Logger::root(drain, o!())
}

/// The logger of one actor or component: every line gets `log.logger`.
pub fn for_component(log: &Logger, name: &'static str) -> Logger {
    log.new(o!("log.logger" => name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use slog::{info, warn};
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_ecs_with_the_required_fields_first() {
        let buf = Buf::default();
        let log = for_component(&logger(buf.clone(), Level::Info, "test"), "fetcher");
        info!(log, "sent"; "labels.nasa_id" => "as11-40-5874");
        warn!(log, "retry"; "error.type" => "kafka", "error.message" => "down");
        slog::debug!(log, "filtered out");
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with(r#"{"@timestamp":""#), "{}", lines[0]);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        let at = |key: &str| lines[0].find(&format!("\"{key}\":")).unwrap_or_else(|| panic!("no {key}"));
        assert!(at("@timestamp") < at("log.level") && at("log.level") < at("message"), "{}", lines[0]);
        assert!(at("message") < at("ecs.version") && at("ecs.version") < at("log.logger"), "{}", lines[0]);
        assert_eq!(v["log.level"], "info");
        assert_eq!(v["message"], "sent");
        assert_eq!(v["log.logger"], "fetcher");
        assert_eq!(v["labels.nasa_id"], "as11-40-5874");
        assert_eq!(v["service.environment"], "test");
        let ts = v["@timestamp"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z') && ts.len() == 24, "{ts}");
        let w: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!((w["log.level"].as_str(), w["error.type"].as_str()), (Some("warn"), Some("kafka")));
    }
}
