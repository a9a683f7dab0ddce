//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the one home of the `traceparent`
//! and `tracestate` headers, their parsing and writing, and the spans of the stages an image goes
//! through.
//!
//! Each image found (by the Fetcher or `backfill`) starts a trace; every stage that handles it
//! (fetch, publish, consume, download, store, dead-letter, replay) is a span of that trace with an
//! id of its own ([`TraceContext::child`]). The trace crosses Kafka in the record headers, and its
//! lines carry ECS `trace.id` and `span.id` (a [`TraceContext`] is a slog key-value); the line that
//! says a stage is done also names it in ECS `event.action` (a [`Stage`]). An event without a
//! header (the earlier Python version) starts a fresh trace at the consumer.
//!
//! A small module rather than the OpenTelemetry crates: the daemon only propagates ids and writes
//! them into its log lines; it exports no spans.

use rdkafka::message::{Header, Message, OwnedHeaders};
use std::cell::RefCell;
use std::fmt;
use std::future::Future;

/// The record header that carries the trace and the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// The record header that carries vendors' trace data; passed on unchanged.
pub const TRACESTATE: &str = "tracestate";

/// The trace's id: 16 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span's id: 8 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

impl TraceId {
    /// A trace id as lines and the page show it (32 lowercase hex digits).
    pub fn parse(text: &str) -> Option<TraceId> {
        lower_hex(text).filter(|b: &[u8; 16]| b.iter().any(|&x| x != 0)).map(TraceId)
    }
}

impl SpanId {
    /// A span id as lines show it (16 lowercase hex digits).
    pub fn parse(text: &str) -> Option<SpanId> {
        lower_hex(text).filter(|b: &[u8; 8]| b.iter().any(|&x| x != 0)).map(SpanId)
    }
}

/// `N` bytes from exactly `2N` lowercase hex digits (the spec allows no upper case).
fn lower_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Random bytes that are not all zero (an all-zero id is invalid).
fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = rand::random();
        if id.iter().any(|&b| b != 0) {
            return id;
        }
    }
}

/// Why a `traceparent` header is not one; the consumer then starts a fresh trace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceparentError {
    #[error("not version-traceid-parentid-flags")]
    Shape,
    #[error("version ff is invalid")]
    ForbiddenVersion,
    #[error("a version 00 traceparent has nothing after its flags")]
    TrailingData,
    #[error("the trace id is not 32 lowercase hex digits, or is all zero")]
    TraceId,
    #[error("the parent id is not 16 lowercase hex digits, or is all zero")]
    ParentId,
}

/// The trace context of one stage: the trace, this stage's span, the flags and the vendors' state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The trace flags (bit 0: sampled), passed on as received.
    pub flags: u8,
    /// The `tracestate` received, passed on unchanged.
    pub state: Option<String>,
}

/// Sampled: the daemon records every image's lines.
const SAMPLED: u8 = 0x01;

impl TraceContext {
    /// A new trace, with its first span.
    pub fn new_root() -> TraceContext {
        TraceContext { trace_id: TraceId(random_id()), span_id: SpanId(random_id()), flags: SAMPLED, state: None }
    }

    /// The next stage's span: the same trace, a new span id.
    pub fn child(&self) -> TraceContext {
        TraceContext { span_id: SpanId(random_id()), ..self.clone() }
    }

    /// The context of a `traceparent` header (and `tracestate`, kept only with a valid
    /// traceparent). A version after 00 is read as far as 00 defines it, as the spec asks.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Result<TraceContext, TraceparentError> {
        let text = traceparent.trim();
        let mut parts = text.splitn(5, '-');
        let (Some(version), Some(trace_id), Some(parent_id), Some(flags)) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TraceparentError::Shape);
        };
        let [version] = lower_hex::<1>(version).ok_or(TraceparentError::Shape)?;
        if version == 0xff {
            return Err(TraceparentError::ForbiddenVersion);
        }
        if version == 0 && parts.next().is_some() {
            return Err(TraceparentError::TrailingData);
        }
        let trace_id = TraceId::parse(trace_id).ok_or(TraceparentError::TraceId)?;
        let span_id = SpanId::parse(parent_id).ok_or(TraceparentError::ParentId)?;
        let [flags] = lower_hex::<1>(flags).ok_or(TraceparentError::Shape)?;
        let state = tracestate.map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
        Ok(TraceContext { trace_id, span_id, flags, state })
    }

    /// The `traceparent` header naming this span as the parent (always version 00).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }

    /// The context in `msg`'s headers; None without a valid `traceparent`.
    pub fn of_message<M: Message>(msg: &M) -> Option<TraceContext> {
        let traceparent = crate::kafka::header_text(msg, TRACEPARENT)?;
        TraceContext::parse(&traceparent, crate::kafka::header_text(msg, TRACESTATE).as_deref()).ok()
    }

    /// The span that continues the trace of `msg`, or the first span of a fresh trace when `msg`
    /// has none (an event from a producer that sends no header).
    pub fn continuing(msg: &impl Message) -> TraceContext {
        TraceContext::of_message(msg).map_or_else(TraceContext::new_root, |parent| parent.child())
    }

    /// `headers` with this span as the parent of whoever reads the record.
    pub fn add_to(&self, headers: OwnedHeaders) -> OwnedHeaders {
        let headers = headers.insert(Header { key: TRACEPARENT, value: Some(&self.traceparent()) });
        match &self.state {
            Some(state) => headers.insert(Header { key: TRACESTATE, value: Some(state) }),
            None => headers,
        }
    }

    /// A logger whose every line is written in this span.
    pub fn logger(&self, log: &slog::Logger) -> slog::Logger {
        log.new(slog::o!(self.clone()))
    }
}

/// ECS's tracing fields, `trace.id` and `span.id`, in every line that carries the context.
impl slog::KV for TraceContext {
    fn serialize(&self, _: &slog::Record, serializer: &mut dyn slog::Serializer) -> slog::Result {
        serializer.emit_arguments("span.id", &format_args!("{}", self.span_id))?;
        serializer.emit_arguments("trace.id", &format_args!("{}", self.trace_id))
    }
}

/// A stage an image goes through. The line that says it is done carries its name as ECS
/// `event.action` (a slog key-value): what the dashboard counts, by stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Fetch,
    Publish,
    Consume,
    Download,
    Store,
    DeadLetter,
    Replay,
}

impl Stage {
    pub const ALL: [Stage; 7] =
        [Stage::Fetch, Stage::Publish, Stage::Consume, Stage::Download, Stage::Store, Stage::DeadLetter, Stage::Replay];

    /// Its `event.action`.
    pub fn action(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Publish => "publish",
            Stage::Consume => "consume",
            Stage::Download => "download",
            Stage::Store => "store",
            Stage::DeadLetter => "dead-letter",
            Stage::Replay => "replay",
        }
    }
}

impl slog::KV for Stage {
    fn serialize(&self, _: &slog::Record, serializer: &mut dyn slog::Serializer) -> slog::Result {
        serializer.emit_str("event.action", self.action())
    }
}

thread_local! {
    /// The span whose work this thread is doing now (see [`within`]).
    static CURRENT: RefCell<Option<TraceContext>> = const { RefCell::new(None) };
}

/// The span whose work this thread is doing now, if any: the panic hook reads it, so that a panic
/// while an image is handled is reported in that image's trace.
pub fn current() -> Option<TraceContext> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs `work` as the [`current`] span: set while it is polled, and only then (other tasks share
/// the thread between its polls).
pub async fn within<F: Future>(span: TraceContext, work: F) -> F::Output {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(move |cx| {
        let _entered = Entered(CURRENT.with(|c| c.replace(Some(span.clone()))));
        work.as_mut().poll(cx)
    })
    .await
}

/// Puts back the span that was current, also when a poll panics.
struct Entered(Option<TraceContext>);

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = self.0.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's example header (section 3.2).
    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specs_examples_parse_and_write_back() {
        let t = TraceContext::parse(EXAMPLE, Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")).unwrap();
        assert_eq!(t.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(t.flags, 1);
        assert_eq!(t.state.as_deref(), Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        assert_eq!(t.traceparent(), EXAMPLE);
        let unsampled = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", None).unwrap();
        assert_eq!((unsampled.flags, unsampled.state), (0, None));
    }

    #[test]
    fn invalid_headers_are_refused_as_the_spec_says() {
        use TraceparentError as E;
        for (header, why) in [
            ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", E::TraceId),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", E::ParentId),
            ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", E::TraceId),
            ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", E::ForbiddenVersion),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", E::TrailingData),
            ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", E::TraceId),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", E::Shape),
            ("0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", E::Shape),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", E::Shape),
            ("", E::Shape),
        ] {
            assert_eq!(TraceContext::parse(header, Some("a=b")), Err(why), "{header}");
        }
    }

    #[test]
    fn a_later_version_is_read_as_far_as_version_00_defines_it_and_passed_on_as_00() {
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like";
        assert_eq!(TraceContext::parse(future, None).unwrap().traceparent(), EXAMPLE);
    }

    #[test]
    fn a_child_is_a_new_span_of_the_same_trace_with_its_flags_and_state() {
        let parent = TraceContext::parse(EXAMPLE, Some("rojo=1")).unwrap();
        let child = parent.child();
        assert_eq!((child.trace_id, child.flags, child.state.as_deref()), (parent.trace_id, 1, Some("rojo=1")));
        assert_ne!(child.span_id, parent.span_id);
        let (a, b) = (TraceContext::new_root(), TraceContext::new_root());
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(TraceContext::parse(&a.traceparent(), None).unwrap(), a, "a new trace writes a header it reads back");
    }

    #[test]
    fn headers_carry_the_context_across_a_record() {
        use rdkafka::message::{OwnedMessage, Timestamp};
        let span = TraceContext::parse(EXAMPLE, Some("rojo=1")).unwrap();
        let headers = span.add_to(OwnedHeaders::new());
        let msg = OwnedMessage::new(None, None, "images".into(), Timestamp::NotAvailable, 0, 0, Some(headers));
        assert_eq!(TraceContext::of_message(&msg), Some(span.clone()));
        let next = TraceContext::continuing(&msg);
        assert_eq!(next.trace_id, span.trace_id);
        assert_ne!(next.span_id, span.span_id);
        let bare = OwnedMessage::new(None, None, "images".into(), Timestamp::NotAvailable, 0, 1, None);
        assert_eq!(TraceContext::of_message(&bare), None);
        assert_ne!(TraceContext::continuing(&bare).trace_id, span.trace_id, "no header: a fresh trace");
    }

    #[test]
    fn the_current_span_is_set_only_while_its_work_is_polled() {
        let span = TraceContext::new_root();
        let seen = futures::executor::block_on(within(span.clone(), async { current() }));
        assert_eq!(seen, Some(span));
        assert_eq!(current(), None);
    }
}
