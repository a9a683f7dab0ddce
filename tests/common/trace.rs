//! Following one image by its W3C trace (issue 26): the trace a record's `traceparent` header
//! names, and the daemon's lines in one trace.

use super::{Daemon, Record};
use nasa_ingest::trace::{TraceContext, TRACEPARENT};

impl Record {
    /// The trace context its `traceparent` (and `tracestate`) header names; None without a valid one.
    pub fn trace(&self) -> Option<TraceContext> {
        let header = |key: &str| self.headers.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        TraceContext::parse(header(TRACEPARENT)?, header(nasa_ingest::trace::TRACESTATE)).ok()
    }

    /// The trace id its `traceparent` header names, as the log lines write it.
    pub fn trace_id(&self) -> Option<String> {
        self.trace().map(|t| t.trace_id.to_string())
    }
}

/// A line's `trace.id`, if it has one.
pub fn trace_id_of(line: &serde_json::Value) -> Option<&str> {
    line["trace.id"].as_str()
}

/// The `message`s of `lines`, in order.
pub fn messages(lines: &[serde_json::Value]) -> Vec<&str> {
    lines.iter().map(|l| l["message"].as_str().unwrap_or("")).collect()
}

impl Daemon {
    /// Its parsed lines in the trace `trace_id`, in the order written.
    pub fn lines_in_trace(&self, trace_id: &str) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| trace_id_of(v) == Some(trace_id))
            .collect()
    }
}

/// Each line, one per stage, has a span id (16 hex digits) of its own.
pub fn assert_a_span_per_stage(lines: &[serde_json::Value]) {
    let spans: std::collections::HashSet<&str> = lines
        .iter()
        .map(|l| {
            let span = l["span.id"].as_str().unwrap_or_else(|| panic!("a span.id beside the trace.id: {l}"));
            assert!(span.len() == 16 && span.bytes().all(|b| b.is_ascii_hexdigit()), "{l}");
            span
        })
        .collect();
    assert_eq!(spans.len(), lines.len(), "a span of its own for each stage: {lines:?}");
}
