//! Why an event is dead-lettered. [`Permanent`] is a failure that retrying the same message
//! cannot fix; its [`Reason`] is the short name in the dead letter's `reason` header, the label of
//! `nasa_ingest_dead_lettered_total` and the `error.type` of the log line.
//!
//! A new reason is a variant of [`Permanent`] (its message says what to do) and its line in
//! `reasons!` below (its name, and what it means for the docs); the code that raises it is the only
//! other change. [`Reason::ALL`] (every reason at 0 on /metrics) and the table in
//! docs/dead-letters.md follow from that line: `cargo run --example config-docs -- --write`
//! regenerates the table, and a test fails while it is stale.

use thiserror::Error;

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

impl Permanent {
    /// The reason's name: the `reason` header, the metric's label, the `error.type` log field.
    pub fn kind(&self) -> &'static str {
        self.reason().as_str()
    }
}

/// Makes [`Reason`] (a variant per line, in this order), [`Reason::ALL`], the name and the
/// description of each, and [`Permanent::reason`]. Each line names a variant of [`Permanent`]:
/// its match is exhaustive, so a failure without a reason does not compile.
macro_rules! reasons {
    ($($variant:ident => $name:literal: $about:literal,)+) => {
        /// Why an event was dead-lettered, without the details of the failure: one per variant of [`Permanent`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $(#[doc = $about] $variant,)+
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

            /// What it means and what to do, for whoever reads the dead letters (the docs' table).
            pub fn about(self) -> &'static str {
                match self {
                    $(Reason::$variant => $about,)+
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
        "The message is not a JSON object, or has no payload. Fix the producer that wrote it: a replay of the same bytes fails again.",
    MissingField => "missing_field":
        "The event lacks a field it needs (`event_type`, `nasa_id`, `image_url`; `event_id` for `image_discovered`). Fix the producer that wrote it.",
    UnknownEventType => "unknown_event_type":
        "The event's `event_type` is neither `image_discovered` nor `image_saved`. Fix the producer, or run a consumer that knows the newer type.",
    BadUrl => "bad_url":
        "The image URL is not a valid http(s) URL. Fix the producer that wrote it.",
    HostNotAllowed => "host_not_allowed":
        "The image URL's host is not in `ALLOWED_IMAGE_HOSTS`. If the host is trusted, add it there, restart the consumers, then replay.",
    ClientStatus => "image_http_4xx":
        "The image server answered 4xx: the image is gone or the URL is wrong. Replay if it comes back.",
    TooLarge => "too_large":
        "The image is larger than `MAX_IMAGE_BYTES`. To accept it, raise the limit, restart the consumers, then replay.",
    NotAnImage => "not_an_image":
        "The downloaded bytes have no JPEG, PNG, TIFF, GIF or WebP signature. Check what the URL serves; replay once it serves the image.",
    DbRejected => "db_rejected":
        "Postgres refused the row three times while it answered other queries: the data itself is the problem (`error` says how). Fix the producer or the schema, then replay.",
    Panicked => "panic":
        "Handling the event panicked three times: a bug. Report it with the event (`dlq list --json`); replay once it is fixed.",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_short_and_stable_where_they_differ_from_the_variant() {
        let names: std::collections::BTreeSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len(), "two reasons share a name");
        assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')), "{names:?}");
        assert!(Reason::ALL.iter().all(|r| !r.about().is_empty() && !r.about().contains('|')));
        // Operators filter on these names (`dlq replay --reason`): a rename is a breaking change.
        assert_eq!(Permanent::ClientStatus { status: 404, url: String::new() }.kind(), "image_http_4xx");
        assert_eq!(Permanent::Panicked(String::new()).kind(), "panic");
        assert_eq!(Permanent::NotAnImage.kind(), "not_an_image");
        assert_eq!(Permanent::MissingField("x").reason(), Reason::MissingField);
    }
}
