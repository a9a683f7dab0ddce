//! Why an event is dead-lettered. [`Permanent`] is a failure that retrying the same message
//! cannot fix; its [`Reason`] is the short name in the dead letter's `reason` header, the label of
//! `nasa_ingest_dead_lettered_total` and the `error.type` of the log line.
//!
//! A new reason is a variant of [`Permanent`] (its message says what to do) and its line in
//! `reasons!` below (its name, what happened and what to do, for the docs); the code that raises it is the only
//! other change. [`Reason::ALL`] (every reason at 0 on /metrics) and the table in
//! docs/dead-letters.md follow from that line: `cargo run --example config-docs -- --write`
//! regenerates the table, and a test fails while it is stale.

use thiserror::Error;

use crate::event::BadEvent;

/// A failure that will not go away by retrying the same message: the event is dead-lettered.
#[derive(Debug, Error)]
pub enum Permanent {
    #[error("message is not JSON ({0}); fix the producer that wrote it")]
    NotJson(String),
    #[error("message lacks field `{0}`; fix the producer that wrote it")]
    MissingField(&'static str),
    #[error("message has event_type {0:?}, expected \"image_discovered\" or \"image_saved\"")]
    UnknownEventType(String),
    #[error("image URL {0:?} is not a valid http(s) URL")]
    BadUrl(String),
    #[error("image host {0:?} is not in ALLOWED_IMAGE_HOSTS; add it there if it is trusted")]
    HostNotAllowed(String),
    #[error("image server answered {status} for {url}; the image is gone or the URL is wrong")]
    ClientStatus { status: u16, url: String },
    #[error("image is larger than MAX_IMAGE_BYTES ({limit} bytes); raise the limit to accept it")]
    TooLarge { limit: u64 },
    #[error("downloaded bytes are not an image (no JPEG, PNG, TIFF, GIF or WebP signature)")]
    NotAnImage,
    #[error("Postgres refused the row, again and again while it answered other queries: {0}; the data itself is the problem")]
    DbRejected(String),
    #[error("handling the event panicked, again and again: {0}; this is a bug, please report it with the event")]
    Panicked(String),
}

/// A payload that is no event goes under the reason of the same name; its message says what to do.
impl From<BadEvent> for Permanent {
    fn from(e: BadEvent) -> Permanent {
        match e {
            BadEvent::NotJson(cause) => Permanent::NotJson(cause),
            BadEvent::MissingField(field) => Permanent::MissingField(field),
            BadEvent::UnknownEventType(found) => Permanent::UnknownEventType(found),
        }
    }
}

impl Permanent {
    /// The reason's name: the `reason` header, the metric's label, the `error.type` log field.
    pub fn kind(&self) -> &'static str {
        self.reason().as_str()
    }
}

/// Makes [`Reason`] (a variant per line, in this order), [`Reason::ALL`], the name of each and
/// what it tells the operator, and [`Permanent::reason`]. Each line names a variant of
/// [`Permanent`]: its match is exhaustive, so a failure without a reason does not compile.
macro_rules! reasons {
    ($($variant:ident => $name:literal: $happened:literal, $to_do:literal;)+) => {
        /// Why an event was dead-lettered, without the details of the failure: one per variant of [`Permanent`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $(#[doc = $happened] $variant,)+
        }

        impl Reason {
            /// Every reason, in the order of the list.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)+];

            /// The short, stable name (`not_json`, `too_large`, ...).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)+
                }
            }

            /// What happened to the event, for whoever reads the dead letters (the docs' table).
            pub fn what_happened(self) -> &'static str {
                match self {
                    $(Reason::$variant => $happened,)+
                }
            }

            /// What to do about it before a replay (the docs' table).
            pub fn what_to_do(self) -> &'static str {
                match self {
                    $(Reason::$variant => $to_do,)+
                }
            }
        }

        impl Permanent {
            pub fn reason(&self) -> Reason {
                match self {
                    $(Permanent::$variant { .. } => Reason::$variant,)+
                }
            }
        }
    };
}

reasons! {
    NotJson => "not_json":
        "the message is not JSON", "fix the producer that wrote it";
    MissingField => "missing_field":
        "the event lacks a required field", "fix the producer that wrote it";
    UnknownEventType => "unknown_event_type":
        "`event_type` is neither `image_discovered` nor `image_saved`", "fix the producer that wrote it";
    BadUrl => "bad_url":
        "`image_url` is not a valid http(s) URL", "fix the producer that wrote it";
    HostNotAllowed => "host_not_allowed":
        "the image host is not in `ALLOWED_IMAGE_HOSTS`", "add the host there if it is trusted";
    ClientStatus => "image_http_4xx":
        "the image server answered 4xx", "the image is gone or the URL is wrong; replay once the host serves it";
    TooLarge => "too_large":
        "the image is larger than `MAX_IMAGE_BYTES`", "raise the limit to accept it";
    NotAnImage => "not_an_image":
        "the bytes have no JPEG, PNG, TIFF, GIF or WebP signature", "look at what the image host serves";
    DbRejected => "db_rejected":
        "Postgres refused the row three times while it answered other queries",
        "the data itself is the problem: read Postgres's message in `error`";
    Panicked => "panic":
        "handling the event panicked three times", "a bug: report it with the event";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_short_and_stable_where_they_differ_from_the_variant() {
        let names: std::collections::BTreeSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len(), "two reasons share a name");
        assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')), "{names:?}");
        let texts = Reason::ALL.iter().flat_map(|r| [r.what_happened(), r.what_to_do()]);
        assert!(texts.into_iter().all(|t| !t.is_empty() && !t.contains('|')), "a text is empty or breaks the table");
        // Operators filter on these names (`dlq replay --reason`): a rename is a breaking change.
        assert_eq!(Permanent::ClientStatus { status: 404, url: String::new() }.kind(), "image_http_4xx");
        assert_eq!(Permanent::Panicked(String::new()).kind(), "panic");
        assert_eq!(Permanent::NotAnImage.kind(), "not_an_image");
        assert_eq!(Permanent::MissingField("x").reason(), Reason::MissingField);
    }
}
