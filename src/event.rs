//! The event on the `images` topic (schema_version 1), and decoding of what the consumer reads,
//! including the earlier Python version's `image_saved` events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::trace::TraceContext;

pub const SCHEMA_VERSION: u32 = 1;
pub const EVENT_TYPE: &str = "image_discovered";
pub const LEGACY_EVENT_TYPE: &str = "image_saved";

/// One image found by the Fetcher. Serialized as JSON; the Kafka key is `nasa_id`; its trace
/// travels beside it, in the record's headers (and in the outbox's file), not in the JSON.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ImageEvent {
    pub schema_version: u32,
    pub event_id: Uuid,
    pub event_type: String,
    pub nasa_id: String,
    pub image_url: String,
    pub title: Option<String>,
    pub query: Option<String>,
    pub center: Option<String>,
    pub date_created: Option<String>,
    pub produced_at: DateTime<Utc>,
    /// The span of the stage that holds the event: the fetch's, then the publish's.
    #[serde(skip, default = "TraceContext::new_root")]
    pub trace: TraceContext,
}

impl ImageEvent {
    /// The event of an image found: the first span of a new trace (the fetch's).
    pub fn new(found: crate::nasa::FoundImage, query: &str) -> ImageEvent {
        ImageEvent {
            schema_version: SCHEMA_VERSION,
            event_id: Uuid::new_v4(),
            event_type: EVENT_TYPE.into(),
            nasa_id: found.nasa_id,
            image_url: found.image_url,
            title: found.title,
            query: Some(query.to_owned()),
            center: found.center,
            date_created: found.date_created,
            produced_at: Utc::now(),
            trace: TraceContext::new_root(),
        }
    }

    /// The event handed to the next stage, in a span of its own.
    pub fn in_next_span(self) -> ImageEvent {
        ImageEvent { trace: self.trace.child(), ..self }
    }
}

/// What the consumer needs of an event, whichever version wrote it.
#[derive(Clone, Debug, PartialEq)]
pub struct IncomingEvent {
    pub event_id: Option<Uuid>,
    pub nasa_id: String,
    pub image_url: String,
    pub title: Option<String>,
    pub query: Option<String>,
}

/// Why a payload is not an event. Every one is permanent (the same bytes will never decode): the
/// consumer dead-letters it under the reason of the same name (`dlq::reason`).
#[derive(Debug, thiserror::Error)]
pub enum BadEvent {
    #[error("not JSON ({0})")]
    NotJson(String),
    #[error("lacks field `{0}`")]
    MissingField(&'static str),
    #[error("unknown event_type {0:?}")]
    UnknownEventType(String),
}

/// Decodes a message payload.
pub fn decode(payload: Option<&[u8]>) -> Result<IncomingEvent, BadEvent> {
    let payload = payload.ok_or_else(|| BadEvent::NotJson("empty payload".into()))?;
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| BadEvent::NotJson(e.to_string()))?;
    let obj = value.as_object().ok_or_else(|| BadEvent::NotJson("not a JSON object".into()))?;
    let text = |name: &'static str| obj.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let required = |name: &'static str| text(name).filter(|s| !s.trim().is_empty()).ok_or(BadEvent::MissingField(name));

    let event_type = required("event_type")?;
    let event_id = match event_type.as_str() {
        EVENT_TYPE => Some(text("event_id").and_then(|s| s.parse::<Uuid>().ok()).ok_or(BadEvent::MissingField("event_id"))?),
        LEGACY_EVENT_TYPE => None,
        other => return Err(BadEvent::UnknownEventType(other.to_owned())),
    };
    Ok(IncomingEvent {
        event_id,
        nasa_id: required("nasa_id")?,
        image_url: required("image_url")?,
        title: text("title"),
        query: text("query"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_current_events() {
        let id = Uuid::new_v4();
        let json = serde_json::json!({"schema_version": 1, "event_id": id, "event_type": "image_discovered",
            "nasa_id": "as11-40-5874", "image_url": "https://images-assets.nasa.gov/x.jpg", "title": "Boot",
            "query": "moon", "center": "JSC", "date_created": "1969-07-20T00:00:00Z", "produced_at": "2026-01-01T00:00:00Z"});
        let e = decode(Some(json.to_string().as_bytes())).unwrap();
        assert_eq!(e.event_id, Some(id));
        assert_eq!(e.nasa_id, "as11-40-5874");
        assert_eq!(e.title.as_deref(), Some("Boot"));
    }

    #[test]
    fn decodes_the_earlier_versions_events() {
        let e = decode(Some(br#"{"event_type": "image_saved", "nasa_id": "PIA00405", "image_url": "http://a/b.jpg"}"#)).unwrap();
        assert_eq!((e.event_id, e.nasa_id.as_str()), (None, "PIA00405"));
    }

    #[test]
    fn names_what_is_wrong() {
        assert!(matches!(decode(Some(b"not json")), Err(BadEvent::NotJson(_))));
        assert!(matches!(decode(None), Err(BadEvent::NotJson(_))));
        assert!(matches!(decode(Some(b"[1]")), Err(BadEvent::NotJson(_))));
        let no_url = br#"{"event_type": "image_saved", "nasa_id": "x"}"#;
        assert!(matches!(decode(Some(no_url)), Err(BadEvent::MissingField("image_url"))));
        let other = br#"{"event_type": "video_found", "nasa_id": "x", "image_url": "y"}"#;
        assert!(matches!(decode(Some(other)), Err(BadEvent::UnknownEventType(_))));
    }
}
