//! Sentry, and panics made visible.
//!
//! - `SENTRY_DSN` empty: Sentry is off (said once at start). Set: panics (with stack trace) and
//!   ERROR log lines become Sentry events, tagged with the actor, the role and the nasa_id.
//! - One event per incident, not per retry: an outage opens an [incident](incident_failed) that
//!   reports once, and once more when it is over ([incident_recovered]). Events with the same
//!   fingerprint are at most one per `SENTRY_MIN_INTERVAL_SECS`.
//! - Every panic is logged as one ECS ERROR line, then reported to Sentry; nothing else is printed.
//! - An event about one image carries the image's trace: its id as the event's trace context
//!   (`contexts.trace.trace_id`) and as the tag `trace.id`, the query of the log search. Set here:
//!   the SDK continues only its own `sentry-trace` header, not W3C's `traceparent`.

use slog::{error, info, Logger};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::trace::{SpanId, TraceContext, TraceId};

static MIN_INTERVAL: OnceLock<Duration> = OnceLock::new();
/// Fingerprint → when an event with it was last sent.
static LAST_SENT: LazyLock<Mutex<HashMap<String, Instant>>> = LazyLock::new(Default::default);
/// Incidents open now (fingerprints).
/// Open incidents: since when, and whether their start was reported.
static OPEN_INCIDENTS: LazyLock<Mutex<HashMap<String, (Instant, bool)>>> = LazyLock::new(Default::default);

pub struct SentrySettings<'a> {
    pub dsn: Option<&'a str>,
    pub environment: &'a str,
    pub role: &'a str,
    pub min_interval: Duration,
}

/// Starts Sentry when a DSN is set; keep the guard alive for the life of the process.
pub fn init_sentry(s: SentrySettings<'_>, log: &Logger) -> Option<sentry::ClientInitGuard> {
    let _ = MIN_INTERVAL.set(s.min_interval);
    let Some(dsn) = s.dsn else {
        info!(log, "Sentry disabled (SENTRY_DSN is empty)");
        return None;
    };
    let guard = sentry::init((
        dsn,
        sentry::ClientOptions {
            release: Some(concat!("nasa-ingest@", env!("CARGO_PKG_VERSION")).into()),
            environment: Some(s.environment.to_owned().into()),
            attach_stacktrace: true,
            ..Default::default()
        },
    ));
    sentry::configure_scope(|scope| scope.set_tag("role", s.role));
    info!(log, "Sentry enabled"; "labels.sentry_environment" => s.environment.to_owned(),
        "labels.sentry_min_interval_secs" => s.min_interval.as_secs());
    Some(guard)
}

fn enabled() -> bool {
    sentry::Hub::current().client().is_some_and(|c| c.is_enabled())
}

/// True when an event with `fingerprint` may be sent now (and records that it is).
fn rate_allows(fingerprint: &str) -> bool {
    let min = MIN_INTERVAL.get().copied().unwrap_or(Duration::from_secs(600));
    let mut last = LAST_SENT.lock().unwrap_or_else(|e| e.into_inner());
    match last.get(fingerprint) {
        Some(t) if t.elapsed() < min => false,
        _ => {
            last.insert(fingerprint.to_owned(), Instant::now());
            true
        }
    }
}

/// What an event is about: tags and the error, if any.
#[derive(Default, Clone, Debug)]
pub struct EventInfo {
    pub actor: Option<String>,
    pub nasa_id: Option<String>,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    /// The image's trace, and the span of the stage that reports (when about one image).
    pub trace: Option<(TraceId, SpanId)>,
}

impl EventInfo {
    /// The same, about the image whose stage `span` is.
    pub fn in_span(self, span: &TraceContext) -> EventInfo {
        EventInfo { trace: Some((span.trace_id, span.span_id)), ..self }
    }
}

/// Puts the image's trace on a Sentry event: its trace context, and the tag the log search is queried by.
fn set_trace(event: &mut sentry::protocol::Event<'static>, (trace_id, span_id): (TraceId, SpanId)) {
    event.tags.insert("trace.id".into(), trace_id.to_string());
    event.contexts.insert("trace".into(), trace_context(trace_id, span_id));
}

fn trace_context(trace_id: TraceId, span_id: SpanId) -> sentry::protocol::Context {
    sentry::protocol::TraceContext { trace_id: trace_id.0.into(), span_id: span_id.0.into(), ..Default::default() }.into()
}

fn send(level: sentry::Level, message: &str, fingerprint: &str, info: &EventInfo) {
    let mut event = sentry::protocol::Event {
        level,
        message: Some(message.to_owned()),
        fingerprint: vec![fingerprint.to_owned().into()].into(),
        ..Default::default()
    };
    if let Some(ty) = &info.error_type {
        event.exception.values.push(sentry::protocol::Exception {
            ty: ty.clone(),
            value: Some(info.error_message.clone().unwrap_or_else(|| message.to_owned())),
            stacktrace: sentry::integrations::backtrace::current_stacktrace(),
            ..Default::default()
        });
    }
    for (k, v) in [("actor", &info.actor), ("nasa_id", &info.nasa_id)] {
        if let Some(v) = v {
            event.tags.insert(k.into(), v.clone());
        }
    }
    if let Some(trace) = info.trace {
        set_trace(&mut event, trace);
    }
    sentry::capture_event(event);
}

/// An ERROR line: one Sentry event per fingerprint (message + error type) per interval.
pub fn report_error(message: &str, info: &EventInfo) {
    if !enabled() {
        return;
    }
    let fingerprint = format!("{}:{}", message, info.error_type.as_deref().unwrap_or(""));
    if rate_allows(&fingerprint) {
        send(sentry::Level::Error, message, &fingerprint, info);
    }
}

/// Something is failing (an outage): reported once when the incident opens, not per retry.
pub fn incident_failed(fingerprint: &str, message: &str, info: &EventInfo) {
    let mut open = OPEN_INCIDENTS.lock().unwrap_or_else(|e| e.into_inner());
    if open.contains_key(fingerprint) {
        return;
    }
    let reported = enabled() && rate_allows(fingerprint);
    open.insert(fingerprint.to_owned(), (Instant::now(), reported));
    drop(open);
    if reported {
        send(sentry::Level::Error, message, fingerprint, info);
    }
}

/// The incident is over: one event saying so, if its start was reported (an incident whose
/// start the rate limit held back ends quietly too).
pub fn incident_recovered(fingerprint: &str, message: &str, info: &EventInfo) {
    let opened = OPEN_INCIDENTS.lock().unwrap_or_else(|e| e.into_inner()).remove(fingerprint);
    if let Some((since, true)) = opened {
        if enabled() {
            let info = EventInfo { error_type: None, ..info.clone() };
            let message = format!("{message} (after {} s)", since.elapsed().as_secs());
            send(sentry::Level::Info, &message, &format!("{fingerprint}:recovered"), &info);
        }
    }
}

/// The text a panic was raised with (`panic!` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// The actor a panic belongs to, from where it happened: `src/actors/<actor>.rs`.
pub fn actor_of_location(file: &str) -> Option<&str> {
    file.split("src/actors/").nth(1)?.strip_suffix(".rs")
}

/// Logs every panic as one ERROR line and, with Sentry on, reports it to Sentry with the
/// panicking actor as a tag. Nothing else is written: the hook that was there is replaced, not
/// chained, because both Rust's default hook and Sentry's (which chains to the default) print the
/// panic as plain text on stderr, which is not a JSON line (a container's log is parsed as ndjson).
pub fn log_panics(log: Logger) {
    // Dropped: Rust's default hook, or Sentry's, whose reporting is called directly below.
    let _previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = panic_message(info.payload());
        let file = info.location().map(|l| l.file()).unwrap_or("");
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let actor = actor_of_location(file).unwrap_or("none").to_owned();
        crate::supervision::record_panic(format!("{message} at {location}"));
        // A panic while an image is handled is in that image's trace.
        let span = crate::trace::current();
        let log = span.as_ref().map_or_else(|| log.clone(), |span| span.logger(&log));
        error!(log, "panic"; "error.type" => "panic", "error.message" => &message,
            "labels.location" => &location, "labels.actor" => &actor);
        let scope = |scope: &mut sentry::Scope| {
            scope.set_tag("actor", &actor);
            if let Some(span) = &span {
                scope.set_tag("trace.id", span.trace_id);
                scope.set_context("trace", trace_context(span.trace_id, span.span_id));
            }
        };
        // Captures and flushes the event when Sentry's panic integration is on; a no-op otherwise.
        sentry::with_scope(scope, || sentry::integrations::panic::panic_handler(info));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_in_actor_files_name_the_actor() {
        assert_eq!(actor_of_location("src/actors/fetcher.rs"), Some("fetcher"));
        assert_eq!(actor_of_location("/build/src/actors/storer.rs"), Some("storer"));
        assert_eq!(actor_of_location("src/nasa.rs"), None);
    }

    #[test]
    fn an_event_about_an_image_carries_its_trace_as_context_and_tag() {
        let span = TraceContext::new_root();
        let info = EventInfo { actor: Some("publisher".into()), error_type: Some("kafka".into()), ..Default::default() };
        let events = sentry::test::with_captured_events(|| {
            send(sentry::Level::Error, "Kafka unavailable", "test:traced", &info.clone().in_span(&span));
            send(sentry::Level::Error, "Kafka unavailable", "test:untraced", &info);
        });
        assert_eq!(events.len(), 2);
        let Some(sentry::protocol::Context::Trace(trace)) = events[0].contexts.get("trace") else { panic!("{:?}", events[0].contexts) };
        assert_eq!((trace.trace_id.to_string(), trace.span_id.to_string()), (span.trace_id.to_string(), span.span_id.to_string()));
        assert_eq!(events[0].tags.get("trace.id"), Some(&span.trace_id.to_string()));
        assert!(!events[1].tags.contains_key("trace.id"), "an event about no image has no trace tag");
    }

    #[test]
    fn one_event_per_fingerprint_per_interval() {
        let _ = MIN_INTERVAL.set(Duration::from_secs(600));
        assert!(rate_allows("test:a"));
        assert!(!rate_allows("test:a"));
        assert!(rate_allows("test:b"));
    }
}
