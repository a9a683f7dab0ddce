//! Logs: one JSON object per line on stdout in Elastic Common Schema, for Filebeat to ship to ELK;
//! or, for a person at a terminal, one short text line per event (`LOG_FORMAT`).
//!
//! `@timestamp`, `log.level` and `message` come first, then the service fields. Call sites add
//! `log.logger` (the actor), `error.type` / `error.message`, and pipeline facts as `labels.*`;
//! a line about one image carries its trace, `trace.id` and `span.id` (see `trace`).
//! Keys are dotted at the top level, as ECS allows; Filebeat's `expand_keys` nests them.

use chrono::{SecondsFormat, Utc};
use slog::{o, Drain, FnValue, Level, Logger, PushFnValue, Record};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

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

/// How log lines are written: `LOG_FORMAT`, else text on a terminal and JSON otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    /// The format given, else the one that suits the stream: text when a person watches it.
    pub fn or_for(given: Option<LogFormat>, stream_is_terminal: bool) -> LogFormat {
        given.unwrap_or(if stream_is_terminal { LogFormat::Text } else { LogFormat::Json })
    }
}

/// The daemon's logger, writing to stdout; its WARN and ERROR lines are kept in `problems`.
pub fn stdout_logger(level: Level, environment: &str, format: Option<LogFormat>, problems: &RecentProblems) -> Logger {
    use std::io::IsTerminal;
    logger_in(std::io::stdout(), LogFormat::or_for(format, std::io::stdout().is_terminal()), level, environment, problems)
}

/// The backfill's logger: stderr, since stdout has its progress bar; lines go above the bar.
pub fn backfill_logger(level: Level, environment: &str, format: Option<LogFormat>, problems: &RecentProblems) -> Logger {
    use std::io::IsTerminal;
    let format = LogFormat::or_for(format, std::io::stderr().is_terminal());
    logger_in(crate::oneshot::AboveTheBar::new(std::io::stderr()), format, level, environment, problems)
}

/// A logger writing `format` lines to `out`.
pub fn logger_in<W: Write + Send + 'static>(
    out: W,
    format: LogFormat,
    level: Level,
    environment: &str,
    problems: &RecentProblems,
) -> Logger {
    match format {
        LogFormat::Json => logger(out, level, environment, problems),
        LogFormat::Text => {
            let drain = SentryDrain { inner: TextDrain(Mutex::new(out)), problems: problems.clone() };
            Logger::root(drain.filter_level(level).ignore_res(), o!())
        }
    }
}

/// `18:49:15.123 WARN  startup      Kafka unreachable at 127.0.0.1:1  address=127.0.0.1:1 error="..."`:
/// the time (UTC), the level, the actor, the message, then the `labels.*` and the error message.
struct TextDrain<W>(Mutex<W>);

impl<W: Write> Drain for TextDrain<W> {
    type Ok = ();
    type Err = std::io::Error;

    fn log(&self, record: &Record, values: &slog::OwnedKVList) -> Result<(), std::io::Error> {
        let mut fields = Fields::default();
        let _ = slog::KV::serialize(&record.kv(), record, &mut fields);
        // slog hands a record's pairs over last first: put them back in the order written.
        fields.0.reverse();
        let _ = slog::KV::serialize(values, record, &mut fields);
        let line = text_line(&Utc::now().format("%H:%M:%S%.3f").to_string(), record.level(), &record.msg().to_string(), &fields);
        let mut out = self.0.lock().unwrap_or_else(|e| e.into_inner());
        out.write_all(line.as_bytes())?;
        out.flush()
    }
}

fn text_line(time: &str, level: Level, message: &str, fields: &Fields) -> String {
    let actor = fields.get("log.logger").unwrap_or_default();
    let mut line = format!("{time} {:<5} {actor:<12} {message}", ecs_level(level).to_ascii_uppercase());
    for (key, value) in &fields.0 {
        let name = match key.strip_prefix("labels.") {
            Some(name) => name,
            None if *key == "error.message" => "error",
            None => continue,
        };
        if value.is_empty() {
            continue;
        }
        let quoted = value.contains([' ', '"', '=']);
        let value = if quoted { format!("{value:?}") } else { value.clone() };
        line.push_str(&format!("  {name}={value}"));
    }
    line.push('\n');
    line
}

/// A logger writing ECS lines to `out`. Writes are synchronous (a mutex, no async queue) so that
/// nothing logged before a crash or exit is lost; a write error is ignored rather than crashing.
pub fn logger<W: Write + Send + 'static>(out: W, level: Level, environment: &str, problems: &RecentProblems) -> Logger {
    // One add_key_value per key: slog-json writes them in the order they were added.
    let json = slog_json::Json::new(WholeLines::new(out))
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
    let drain = SentryDrain { inner: Mutex::new(json).ignore_res(), problems: problems.clone() };
    let drain = drain.filter_level(level).ignore_res();
    Logger::root(drain, o!())
}

/// The bytes a log line's buffer keeps between lines (most lines are well under 1 KiB).
const LINE_CAPACITY: usize = 4096;

/// Hands each log line to its writer in one piece. slog-json writes a line as many small pieces
/// (every key, value and comma) and then flushes; straight to stdout, each piece took stdout's
/// lock and looked for a newline: logging was 7.9% of the daemon's CPU under a 20 KB backlog, and
/// 4.2% with the line collected here and written on the flush at once (one syscall).
struct WholeLines<W: Write> {
    line: Vec<u8>,
    out: W,
}

impl<W: Write> WholeLines<W> {
    fn new(out: W) -> Self {
        WholeLines { line: Vec::with_capacity(LINE_CAPACITY), out }
    }
}

impl<W: Write> Write for WholeLines<W> {
    fn write(&mut self, piece: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(piece);
        Ok(piece.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let written = self.out.write_all(&self.line);
        self.line.clear();
        // A rare long line (an error's whole message) does not keep its buffer for the process's life.
        self.line.shrink_to(LINE_CAPACITY);
        written?;
        self.out.flush()
    }
}

impl<W: Write> Drop for WholeLines<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Sends ERROR and CRITICAL lines to Sentry (when enabled), with their actor, nasa_id, error and
/// trace, and keeps the last WARN and ERROR lines in `problems` for `/status` and the page.
/// Panics are left to Sentry's panic hook, which has their stack trace.
struct SentryDrain<D> {
    inner: D,
    problems: RecentProblems,
}

impl<D: Drain> Drain for SentryDrain<D> {
    type Ok = D::Ok;
    type Err = D::Err;

    fn log(&self, record: &Record, values: &slog::OwnedKVList) -> Result<D::Ok, D::Err> {
        if record.level().is_at_least(Level::Warning) {
            let mut fields = Fields::default();
            let _ = slog::KV::serialize(&record.kv(), record, &mut fields);
            let _ = slog::KV::serialize(values, record, &mut fields);
            // Kept for the page: the lines LOG_LEVEL lets through (the level filter wraps this drain).
            self.problems.remember(record, &fields);
            if record.level().is_at_least(Level::Error) && fields.get("error.type").as_deref() != Some("panic") {
                let info = crate::telemetry::EventInfo {
                    actor: fields.get("log.logger"),
                    nasa_id: fields.get("labels.nasa_id"),
                    error_type: Some(fields.get("error.type").unwrap_or_else(|| "error".into())),
                    error_message: fields.get("error.message"),
                    trace: fields.trace(),
                };
                crate::telemetry::report_error(&record.msg().to_string(), &info);
            }
        }
        self.inner.log(record, values)
    }
}

/// How many WARN and ERROR lines `/status` and the page show.
pub const RECENT_PROBLEMS: usize = 20;

/// A WARN or ERROR line, as `/status` shows it.
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct Problem {
    pub time: String,
    pub level: &'static str,
    pub actor: String,
    pub message: String,
    pub error: Option<String>,
}

/// The last WARN and ERROR lines of a logger. A handle: `main` makes one before the root logger,
/// whose drain writes it, and the daemon hands it to the status, which reads it.
#[derive(Clone, Default)]
pub struct RecentProblems(Arc<Mutex<VecDeque<Problem>>>);

impl RecentProblems {
    fn remember(&self, record: &Record, fields: &Fields) {
        let problem = Problem {
            time: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            level: ecs_level(record.level()),
            actor: fields.get("log.logger").unwrap_or_default(),
            message: record.msg().to_string(),
            error: fields.get("error.message"),
        };
        let mut problems = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if problems.len() == RECENT_PROBLEMS {
            problems.pop_front();
        }
        problems.push_back(problem);
    }

    /// The last WARN and ERROR lines (at most [`RECENT_PROBLEMS`]), newest first.
    pub fn newest_first(&self) -> Vec<Problem> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().rev().cloned().collect()
    }
}

/// The key-values of a record, as text.
#[derive(Default)]
struct Fields(Vec<(slog::Key, String)>);

impl Fields {
    fn get(&self, key: &str) -> Option<String> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    }

    /// The image's trace and the stage's span, when the line is about an image.
    fn trace(&self) -> Option<(crate::trace::TraceId, crate::trace::SpanId)> {
        let trace_id = crate::trace::TraceId::parse(&self.get("trace.id")?)?;
        Some((trace_id, crate::trace::SpanId::parse(&self.get("span.id")?)?))
    }
}

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        self.0.push((key, val.to_string()));
        Ok(())
    }
}

/// Routes the `log` facade (reqwest, hyper, ...) into `log`, with the crate as `log.logger`.
pub fn bridge_log_crate(log: &Logger, level: Level) {
    struct Bridge(Logger);
    impl log::Log for Bridge {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            let logger = self.0.new(o!("log.logger" => r.target().to_owned()));
            if closed_consumer_dropped(r) {
                return slog::debug!(logger, "{}", r.args());
            }
            match r.level() {
                // A library's "error" is usually a failure this program retries and reports itself.
                log::Level::Error | log::Level::Warn => slog::warn!(logger, "{}", r.args()),
                log::Level::Info => slog::info!(logger, "{}", r.args()),
                log::Level::Debug => slog::debug!(logger, "{}", r.args()),
                log::Level::Trace => slog::trace!(logger, "{}", r.args()),
            }
        }
        fn flush(&self) {}
    }
    let max = match level {
        Level::Critical | Level::Error => log::LevelFilter::Error,
        Level::Warning => log::LevelFilter::Warn,
        Level::Info => log::LevelFilter::Info,
        Level::Debug => log::LevelFilter::Debug,
        Level::Trace => log::LevelFilter::Trace,
    };
    if log::set_boxed_logger(Box::new(Bridge(log.clone()))).is_ok() {
        log::set_max_level(max);
    }
}

/// rust-rdkafka's consumer closes itself again when dropped, and says so as an error when it was
/// closed already (the Subscriber closes its consumer, within a bound, before dropping it).
fn closed_consumer_dropped(r: &log::Record) -> bool {
    r.target().starts_with("rdkafka::consumer")
        && r.args().as_str().map_or_else(|| r.args().to_string(), str::to_owned).starts_with("Failed to close consumer queue on drop")
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

    /// What a logger wrote: each write call as a piece of its own.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<Vec<u8>>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().concat()).unwrap()
        }
    }

    #[test]
    fn text_lines_are_short_time_level_actor_message_labels() {
        let buf = Buf::default();
        let log = for_component(&logger_in(buf.clone(), LogFormat::Text, Level::Info, "test", &RecentProblems::default()), "startup");
        warn!(log, "Kafka unreachable at 127.0.0.1:1"; "labels.address" => "127.0.0.1:1", "error.type" => "unreachable",
            "error.message" => "connection refused");
        let text = buf.text();
        let (time, rest) = text.split_once(' ').unwrap();
        assert_eq!(time.len(), 12, "HH:MM:SS.mmm: {text}");
        assert_eq!(rest, "WARN  startup      Kafka unreachable at 127.0.0.1:1  address=127.0.0.1:1  error=\"connection refused\"\n");
        assert_eq!(LogFormat::or_for(None, true), LogFormat::Text);
        assert_eq!(LogFormat::or_for(None, false), LogFormat::Json);
        assert_eq!(LogFormat::or_for(Some(LogFormat::Json), true), LogFormat::Json);
    }

    #[test]
    fn lines_are_ecs_with_the_required_fields_first() {
        let buf = Buf::default();
        let log = for_component(&logger(buf.clone(), Level::Info, "test", &RecentProblems::default()), "fetcher");
        info!(log, "sent"; "labels.nasa_id" => "as11-40-5874");
        warn!(log, "retry"; "error.type" => "kafka", "error.message" => "down");
        slog::debug!(log, "filtered out");
        let text = buf.text();
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

    #[test]
    fn a_line_about_an_image_carries_its_trace_its_span_and_the_stage_it_ends() {
        use crate::trace::{Stage, TraceContext};
        let (buf, span) = (Buf::default(), TraceContext::new_root());
        let log = for_component(&logger(buf.clone(), Level::Info, "test", &RecentProblems::default()), "publisher");
        info!(span.logger(&log), "Kafka unavailable");
        info!(log, "sent"; Stage::Publish, &span, "labels.nasa_id" => "a");
        info!(log, "actor started");
        let lines: Vec<serde_json::Value> = buf.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        for line in &lines[..2] {
            assert_eq!(line["trace.id"], span.trace_id.to_string().as_str(), "{line}");
            assert_eq!(line["span.id"], span.span_id.to_string().as_str(), "{line}");
        }
        assert_eq!((lines[0].get("event.action"), &lines[1]["event.action"]), (None, &"publish".into()));
        assert!(lines[2].get("trace.id").is_none() && lines[2].get("span.id").is_none(), "{}", lines[2]);
    }

    #[test]
    fn the_handle_given_keeps_the_last_warn_and_error_lines_newest_first() {
        let problems = RecentProblems::default();
        let log = for_component(&logger(Buf::default(), Level::Info, "test", &problems), "storer");
        info!(log, "not a problem");
        for n in 0..RECENT_PROBLEMS + 2 {
            warn!(log, "retry {}", n; "error.message" => "Postgres down");
        }
        slog::error!(log, "gave up");
        let kept = problems.newest_first();
        assert_eq!(kept.len(), RECENT_PROBLEMS);
        assert_eq!((kept[0].level, kept[0].message.as_str(), kept[0].actor.as_str()), ("error", "gave up", "storer"));
        assert_eq!((kept[1].message.as_str(), kept[1].error.as_deref()), ("retry 21", Some("Postgres down")));
    }

    #[test]
    fn each_json_line_reaches_the_writer_in_one_write() {
        let buf = Buf::default();
        let log = for_component(&logger(buf.clone(), Level::Info, "test", &RecentProblems::default()), "storer");
        info!(log, "saved to DB"; "labels.nasa_id" => "a", "labels.bytes" => 20000u64, "labels.latency_ms" => 3u64);
        info!(log, "saved to DB"; "labels.nasa_id" => "b");
        let pieces = buf.0.lock().unwrap();
        assert_eq!(pieces.len(), 2, "one write per line");
        for piece in pieces.iter() {
            let line = std::str::from_utf8(piece).unwrap();
            assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "{line}");
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }
}
